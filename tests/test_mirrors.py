"""The mirrored implementation files diff cleanly: every framework has the same files, and a mirrored
file defines the same top-level names (classes, functions, constants) in the same order, its functions
and the lambda kernels with the same arguments. Read from the source (ast): no framework needs to be
installed.

What only one framework needs is pure framework mechanics and listed in ONLY_IN with its reason; the
private helpers of backend.py (its Step's) and peers.py (the peers' constructors) are mechanics by rule.
"""

from __future__ import annotations

import ast
import functools
import pathlib
import re

import pytest

from lambda_bench.backend import FRAMEWORKS

ROOT = pathlib.Path(__file__).resolve().parent.parent / "implementations"
MIRRORED = tuple(sorted(p.name for p in (ROOT / "torch").glob("*.py") if p.name != "__init__.py"))
PRIVATE_MECHANICS = ("backend.py", "peers.py")  # their private helpers: the Step's, the peers' builders
STEP = "each backend's measured step (lambda_bench.measure.steps.Step), named for its framework"
# a top-level name only one framework needs, with the reason
ONLY_IN = {
    ("torch", "backend.py", "TorchStep"): STEP,
    ("tensorflow", "backend.py", "TensorFlowStep"): STEP,
    ("jax", "backend.py", "JaxStep"): STEP,
    ("torch", "backend.py", "DEVICE"):
        "torch puts every tensor on a device explicitly; TensorFlow places by tf.device scope, JAX by device_put",
    ("jax", "_numerics.py", "HIGHEST"):
        "JAX's model files pass a precision to every matmul and convolution; torch and TensorFlow only have "
        "the process-wide setting FrameworkBackend.configure makes",
    ("jax", "lambda_kernels.py", "KERNEL_FFT_MIN_AREA"):
        "only XLA:CPU's kernel-gradient convolution is slow enough to need an FFT path (tests/test_plans.py)",
}
CALL = {"forward": "__call__", "call": "__call__", "__call__": "__call__"}  # torch, Keras, flax: inputs differ
NUMERICS = ["DTYPES", "as_float", "assign", "at_least_fp32", "build_in"]


def tree(framework: str, filename: str) -> ast.Module:
    return ast.parse((ROOT / framework / filename).read_text())


def top_level(module: ast.Module) -> list[str]:
    """Classes, functions and assigned names, in definition order."""
    names = []
    for node in module.body:
        if isinstance(node, (ast.ClassDef, ast.FunctionDef)):
            names.append(node.name)
        elif isinstance(node, ast.Assign):
            names += [t.id for t in node.targets if isinstance(t, ast.Name)]
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.append(node.target.id)
    return names


def arguments(function: ast.FunctionDef) -> list[str]:
    names = [a.arg for a in (*function.args.posonlyargs, *function.args.args, *function.args.kwonlyargs)]
    return [name for name in names if name not in ("self", "ctx")]


def is_mechanics(framework: str, filename: str, name: str) -> bool:
    return (framework, filename, name) in ONLY_IN or (filename in PRIVATE_MECHANICS and name.startswith("_"))


def shared(framework: str, filename: str) -> list[str]:
    return [name for name in top_level(tree(framework, filename)) if not is_mechanics(framework, filename, name)]


def test_every_framework_has_the_same_files():
    files = {fw: sorted(p.name for p in (ROOT / fw).glob("*.py")) for fw in FRAMEWORKS}
    assert files["tensorflow"] == files["torch"] and files["jax"] == files["torch"], files
    assert {"_numerics.py", "lambda_kernels.py", "lambda_layer.py", "backend.py", "efficientnet.py"} <= set(MIRRORED)


@pytest.mark.parametrize("filename", MIRRORED)
def test_mirrored_files_define_the_same_names_in_the_same_order(filename):
    names = {fw: shared(fw, filename) for fw in FRAMEWORKS}
    assert names["tensorflow"] == names["torch"], filename
    assert names["jax"] == names["torch"], filename


@pytest.mark.parametrize("filename", MIRRORED)
def test_mirrored_functions_take_the_same_arguments(filename):
    signatures = {}
    for fw in FRAMEWORKS:
        signatures[fw] = {node.name: arguments(node) for node in tree(fw, filename).body
                          if isinstance(node, ast.FunctionDef) and not is_mechanics(fw, filename, node.name)}
    assert signatures["tensorflow"] == signatures["torch"], filename
    assert signatures["jax"] == signatures["torch"], filename


def test_an_exception_names_something_only_its_framework_has():
    """Every ONLY_IN entry exists where it is listed and nowhere else (else it is drift, not mechanics)."""
    for fw, filename, name in ONLY_IN:
        assert name in top_level(tree(fw, filename)), (fw, filename, name)
        others = [other for other in FRAMEWORKS if other != fw and name in top_level(tree(other, filename))]
        assert not others, f"{name} is in {filename} of {fw} and {others}: not one framework's mechanics"


@functools.lru_cache(maxsize=None)
def _references(path: pathlib.Path) -> frozenset[str]:
    """Names ``path``'s code refers to: names, attributes, imports, and the words of its string
    constants (the family registry names classes in strings); not docstrings or comments."""
    module = ast.parse(path.read_text())
    docstrings = {id(node.value) for node in ast.walk(module) if isinstance(node, ast.Expr)
                  and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str)}
    found = set()
    for node in ast.walk(module):
        if isinstance(node, ast.Name):
            found.add(node.id)
        elif isinstance(node, ast.Attribute):
            found.add(node.attr)
        elif isinstance(node, ast.alias):
            found.add(node.name.rpartition(".")[2])
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
            found.update(re.findall(r"\w+", node.value))
    return frozenset(found)


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_mirrored_functions_are_used(framework):
    """A function or class kept only to match the other frameworks is dead code: each one is referred
    to by code (its own file, a sibling file or the harness in lambda_bench/), not only defined."""
    files = [*(ROOT / framework).glob("*.py"), *(ROOT.parent / "lambda_bench").rglob("*.py")]
    referenced = frozenset().union(*(_references(path) for path in files))
    unused = [f"{filename}:{node.name}" for filename in MIRRORED for node in tree(framework, filename).body
              if isinstance(node, (ast.ClassDef, ast.FunctionDef)) and node.name not in referenced]
    assert not unused, f"{framework}: defined and never used: {unused}"


def test_numerics_hold_one_set_of_helpers():
    """Each _numerics.py holds its framework's mechanics for the same few jobs, in one order."""
    for fw in FRAMEWORKS:
        assert shared(fw, "_numerics.py") == NUMERICS, fw


def test_lambda_layer_classes_have_the_same_methods_in_the_same_order():
    for cls in ("BatchNorm", "LambdaLayer"):
        methods = {}
        for fw in FRAMEWORKS:
            [node] = [n for n in tree(fw, "lambda_layer.py").body if isinstance(n, ast.ClassDef) and n.name == cls]
            methods[fw] = [(CALL.get(f.name, f.name), arguments(f) if f.name not in CALL else None)
                           for f in node.body if isinstance(f, ast.FunctionDef)]
        assert methods["tensorflow"] == methods["torch"] and methods["jax"] == methods["torch"], cls


def test_kernels_take_the_same_arguments_in_the_same_order():
    """Module functions and each kernel's entry point (torch: autograd.Function.forward without ctx;
    TensorFlow and JAX: apply). Static arguments JAX needs (sizes, flags) come last, in one order."""
    signatures = {}
    for fw in FRAMEWORKS:
        module = tree(fw, "lambda_kernels.py")
        found = {}
        for node in module.body:
            if isinstance(node, ast.FunctionDef):
                found[node.name] = arguments(node)
            elif isinstance(node, ast.ClassDef):
                entry = "forward" if fw == "torch" else "apply"
                [method] = [f for f in node.body if isinstance(f, ast.FunctionDef) and f.name == entry]
                found[node.name] = arguments(method)
        signatures[fw] = found
    assert signatures["tensorflow"] == signatures["torch"] and signatures["jax"] == signatures["torch"]
    assert signatures["torch"]["ReorderedPosition"] == ["qn", "table", "vmu", "b", "h", "chunk", "lean",
                                                         "height", "width"]
    assert signatures["torch"]["_Recomputed"] == ["fn"]
