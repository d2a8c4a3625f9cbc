"""The mirrored implementation files diff cleanly: every framework has the same files, and a mirrored
file defines the same top-level classes and functions in the same order, the lambda kernels with the
same arguments. Read from the source (ast): no framework needs to be installed."""

from __future__ import annotations

import ast
import pathlib

import pytest

from lambda_bench.backend import FRAMEWORKS

ROOT = pathlib.Path(__file__).resolve().parent.parent / "implementations"
MIRRORED = ("lambda_layer.py", "lambda_kernels.py", "attention.py", "resnet.py")
# a top-level name only one framework needs, with the reason
ONLY_IN = {
    ("torch", "lambda_kernels.py", "_Recomputed"):
        "recomputed()'s mechanism: torch.utils.checkpoint imports torch._dynamo, which crashes a process "
        "that has loaded TensorFlow; TensorFlow and JAX have tf.recompute_grad and jax.checkpoint",
}
CALL = {"forward": "__call__", "call": "__call__", "__call__": "__call__"}  # torch, Keras, flax: inputs differ


def tree(framework: str, filename: str) -> ast.Module:
    return ast.parse((ROOT / framework / filename).read_text())


def top_level(module: ast.Module) -> list[str]:
    return [node.name for node in module.body if isinstance(node, (ast.ClassDef, ast.FunctionDef))]


def arguments(function: ast.FunctionDef) -> list[str]:
    names = [a.arg for a in (*function.args.posonlyargs, *function.args.args, *function.args.kwonlyargs)]
    return [name for name in names if name not in ("self", "ctx")]


def shared(framework: str, filename: str) -> list[str]:
    return [name for name in top_level(tree(framework, filename)) if (framework, filename, name) not in ONLY_IN]


def test_every_framework_has_the_same_files():
    files = {fw: sorted(p.name for p in (ROOT / fw).glob("*.py")) for fw in FRAMEWORKS}
    assert files["tensorflow"] == files["torch"] and files["jax"] == files["torch"], files
    assert {"_numerics.py", "lambda_kernels.py", "lambda_layer.py", "backend.py"} <= set(files["torch"])


@pytest.mark.parametrize("filename", MIRRORED)
def test_mirrored_files_define_the_same_names_in_the_same_order(filename):
    names = {fw: shared(fw, filename) for fw in FRAMEWORKS}
    assert names["tensorflow"] == names["torch"], filename
    assert names["jax"] == names["torch"], filename


def test_an_exception_names_something_that_exists():
    for fw, filename, name in ONLY_IN:
        assert name in top_level(tree(fw, filename))


def test_numerics_share_their_common_helpers_in_one_order():
    """Each _numerics.py holds its framework's counterparts; what two of them share comes in one order."""
    names = {fw: top_level(tree(fw, "_numerics.py")) for fw in FRAMEWORKS}
    assert names["tensorflow"][:3] == names["jax"][:3] == ["as_float", "assign", "keep_float64"]
    assert names["torch"][0] == "as_float"


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
            elif isinstance(node, ast.ClassDef) and (fw, "lambda_kernels.py", node.name) not in ONLY_IN:
                entry = "forward" if fw == "torch" else "apply"
                [method] = [f for f in node.body if isinstance(f, ast.FunctionDef) and f.name == entry]
                found[node.name] = arguments(method)
        signatures[fw] = found
    assert signatures["tensorflow"] == signatures["torch"] and signatures["jax"] == signatures["torch"]
    assert signatures["torch"]["ReorderedPosition"] == ["qn", "table", "vmu", "b", "h", "chunk", "lean",
                                                         "height", "width"]
