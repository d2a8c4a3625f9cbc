"""The registry of model families (lambda_bench.families): every spec type the zoo uses has a complete
entry whose implementation exists in every framework, the harness dispatches on the registry alone
(a family registered here and nowhere else is shaped, initialised, counted, described, referenced and
built), and no spec-type test is left outside it. Framework-free: implementation files are read as
source, and the fake family's implementation is a plain class."""

from __future__ import annotations

import ast
import dataclasses
import importlib
import pathlib
import sys
from dataclasses import dataclass

import numpy as np
import pytest

from lambda_bench import counting, families, reference, specs, weights, zoo
from lambda_bench.backend import FRAMEWORKS
from lambda_bench.families import Family

ROOT = pathlib.Path(__file__).resolve().parent.parent


def _used_spec_types() -> set[type]:
    """Types of every registered preset and model spec, and of every layer a model holds."""
    used = {type(c.spec) for c in zoo.PRESETS.values()}
    for spec in zoo.MODELS.values():
        used.add(type(spec))
        used |= {type(layer) for layer in families.family_of(spec).sublayers(spec).values()}
    return used


def test_every_spec_type_the_zoo_uses_has_a_complete_family():
    used = _used_spec_types()
    assert {specs.LambdaSpec, specs.AttentionSpec, specs.ResNetSpec, specs.EfficientNetSpec} <= used
    for cls in used:
        family = families.FAMILIES.get(cls)
        assert family is not None, f"{cls.__name__} has no family"
        assert family.spec_type is cls
        assert families.missing_fields(family) == [], family.name
    names = [f.name for f in families.FAMILIES.values()]
    assert len(names) == len(set(names))


def test_missing_fields_names_what_a_kind_needs():
    lam = families.FAMILIES[specs.LambdaSpec]
    assert families.missing_fields(dataclasses.replace(lam, forward=None, fixes_size=None)) == ["forward", "fixes_size"]
    # a model needs no reference; it needs to say which layers it holds
    resnet = families.FAMILIES[specs.ResNetSpec]
    assert resnet.forward is None and families.missing_fields(resnet) == []
    assert families.missing_fields(dataclasses.replace(resnet, sublayers=None)) == ["sublayers"]
    assert families.missing_fields(dataclasses.replace(resnet, kind="network")) == ["kind"]


def _top_level_names(path: pathlib.Path) -> set[str]:
    tree = ast.parse(path.read_text())
    return {node.name for node in tree.body if isinstance(node, (ast.ClassDef, ast.FunctionDef))}


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_every_family_names_an_implementation_each_framework_defines(framework):
    for family in families.FAMILIES.values():
        module, _, attribute = family.implementation.partition(":")
        path = ROOT / "implementations" / framework / f"{module}.py"
        assert path.is_file(), f"{family.name}: {path} missing"
        assert attribute in _top_level_names(path), f"{family.name}: {path} defines no {attribute}"


@pytest.mark.parametrize("name", list(zoo.PRESETS))
def test_a_layers_flop_terms_add_up_to_its_count(name):
    case = zoo.get(name)
    family = families.family_of(case.spec)
    terms = family.flop_terms(case.spec, case.height, case.width)
    assert sum(terms.values()) == counting.flops(case.spec, case.height, case.width) > 0


def test_an_unregistered_spec_type_is_named():
    @dataclass(frozen=True)
    class Stranger:
        d_in: int = 3

    for call in (lambda: weights.shapes(Stranger()), lambda: counting.flops(Stranger(), 4, 4),
                 lambda: zoo.family(Stranger()), lambda: reference.forward(Stranger(), {}, np.zeros((1, 4, 4, 3)))):
        with pytest.raises(ValueError, match="spec of type Stranger: no model family is registered"):
            call()
    with pytest.raises(ValueError, match="covers single layers only"):
        reference.forward(zoo.MODELS["resnet26"], {}, np.zeros((1, 4, 4, 3)))


# --- a family that exists only in the registry --------------------------------------------------

@dataclass(frozen=True)
class ScaleSpec:
    """A toy layer: y = x W^T (a 1x1 projection), channels last."""

    d_in: int
    d_out: int
    stride: int = 1
    fixed_size = None

    def check_input(self, shape, layout):
        return shape[0], shape[1], shape[2]

    def output_shape(self, batch, height, width):
        return (batch, height, width, self.d_out)


@dataclass(frozen=True)
class TinyNetSpec:
    """A toy model: a stem projection, one lambda layer as its mixer, a classifier."""

    image_size: int = 8
    num_classes: int = 3

    @property
    def mixer(self) -> specs.LambdaSpec:
        return specs.LambdaSpec(d_in=8, d_out=8, k=4, heads=2, position="conv", r=3)


def _scale_init(spec, seed):
    return {"proj.weight": np.random.default_rng(seed).normal(size=(spec.d_out, spec.d_in)).astype(np.float32)}


def _scale_forward(spec, w, x, train=False):
    return np.asarray(x, np.float64) @ np.asarray(w["proj.weight"], np.float64).T, {}


def _scale_forward_backward(spec, w, x, cotangent, train=True):
    y, _ = _scale_forward(spec, w, x)
    grads = {"input": cotangent @ w["proj.weight"],
             "proj.weight": np.einsum("bhwo,bhwi->oi", cotangent, np.asarray(x, np.float64))}
    return y, grads, {}


def _tiny_shapes(spec):
    return {"stem.weight": (8, 3), **{f"mixer.{k}": v for k, v in weights.lambda_shapes(spec.mixer).items()},
            "fc.weight": (spec.num_classes, 8), "fc.bias": (spec.num_classes,)}


SCALE = Family(
    name="scale", spec_type=ScaleSpec, kind="layer", label=lambda s: "layer",
    describe=lambda s: f"scale d {s.d_in}->{s.d_out}", shapes=lambda s: {"proj.weight": (s.d_out, s.d_in)},
    init=_scale_init, flops=lambda s, h, w: 2 * h * w * s.d_in * s.d_out, implementation="scale:ScaleLayer",
    flop_terms=lambda s, h, w, **_: {"scale": 2 * h * w * s.d_in * s.d_out},
    elementwise_flops=lambda s, h, w: {}, forward=_scale_forward, forward_backward=_scale_forward_backward,
    fixes_size=lambda s, changes: False, param_kind=lambda name: "scale projection")
TINY = Family(
    name="tinynet", spec_type=TinyNetSpec, kind="model", label=lambda s: "tinynet",
    describe=lambda s: "TinyNet", shapes=_tiny_shapes, init=weights.init_model,
    flops=lambda s, h, w: 1000 * h * h, implementation="tinynet:tinynet_class",
    sublayers=lambda s: {"mixer.": s.mixer})


@pytest.fixture
def registered(monkeypatch):
    monkeypatch.setitem(families.FAMILIES, ScaleSpec, SCALE)
    monkeypatch.setitem(families.FAMILIES, TinyNetSpec, TINY)


def test_a_registered_layer_family_is_dispatched_without_edits(registered, tmp_path):
    spec = ScaleSpec(d_in=3, d_out=5)
    # weights: names, shapes, init, validation, the safetensors file and its spec
    assert weights.shapes(spec) == {"proj.weight": (5, 3)}
    w = weights.init_weights(spec, 4)
    np.testing.assert_array_equal(w["proj.weight"], _scale_init(spec, 4)["proj.weight"])
    weights.validate(spec, w)
    with pytest.raises(ValueError, match="missing"):
        weights.validate(spec, {})
    spec2, w2 = weights.load(weights.save(tmp_path / "scale.safetensors", spec, w))
    assert spec2 == spec
    np.testing.assert_array_equal(w2["proj.weight"], w["proj.weight"])
    # counts
    assert counting.params(spec) == 15
    assert counting.flops(spec, 4, 6) == 2 * 24 * 15
    with pytest.raises(ValueError, match="height and width"):
        counting.flops(spec)
    assert counting.param_terms(spec) == {"scale projection": 15}
    # the zoo's labels
    case = zoo.Case("scale", spec, 2, 4, 6)
    assert not case.is_model
    assert case.describe() == "scale d 3->5, input 2x4x6"
    assert zoo.family(spec) == "layer"
    # the reference
    x = np.random.default_rng(0).normal(size=case.input_shape)
    y, running = reference.forward(spec, w, x)
    np.testing.assert_allclose(y, x @ w["proj.weight"].T.astype(np.float64))
    _, grads, _ = reference.forward_backward(spec, w, x, np.ones(case.output_shape))
    assert set(grads) == {"input", "proj.weight"}


def test_a_registered_model_family_holds_registered_layers(registered):
    spec = TinyNetSpec()
    w = weights.init_weights(spec, 5)
    weights.validate(spec, w)
    # the held lambda layer is initialised as its own family says, from a seed drawn for it
    sub_seed = int(np.random.default_rng(5).integers(2**31))
    for name, value in weights.init_lambda(spec.mixer, sub_seed).items():
        np.testing.assert_array_equal(w[f"mixer.{name}"], value)
    np.testing.assert_array_equal(w["mixer.norm_q.running_var"], 1.0)
    terms = counting.param_terms(spec)
    assert terms["lambda queries"] == 8 * 8 and terms["lambda embeddings"] == 4 * 3 * 3
    assert terms["classifier"] == 3 * 8 + 3 and terms["convolutions"] == 8 * 3
    assert sum(terms.values()) == counting.params(spec)
    assert counting.flops(spec) == 1000 * 8 * 8  # a model at its own size
    assert counting.flops(spec, 4) == 1000 * 4 * 4
    case = zoo.Case("tiny", spec, 1, 8, 8)
    assert case.is_model and zoo.family(spec) == "tinynet" and zoo.describe_model(spec) == "TinyNet"
    with pytest.raises(ValueError, match="covers single layers only"):
        reference.forward(spec, w, np.zeros((1, 8, 8, 3)))


def test_a_framework_builds_the_class_its_family_names(registered, tmp_path, monkeypatch):
    """What each backend's model_class does: the family's file in the framework's package."""
    package = tmp_path / "fakeframework"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "scale.py").write_text("class ScaleLayer:\n    pass\n")
    (package / "tinynet.py").write_text(
        "class Small:\n    pass\n\nclass Large:\n    pass\n\n"
        "def tinynet_class(spec):\n    return Large if spec.num_classes > 10 else Small\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        assert families.implementation_class(ScaleSpec(2, 2), "fakeframework").__name__ == "ScaleLayer"
        # a function of the spec picks the class
        assert families.implementation_class(TinyNetSpec(), "fakeframework").__name__ == "Small"
        assert families.implementation_class(TinyNetSpec(num_classes=100), "fakeframework").__name__ == "Large"
        (package / "scale.py").unlink()
        sys.modules.pop("fakeframework.scale", None)
        importlib.invalidate_caches()
        with pytest.raises(ValueError, match=r"fakeframework has no scale\.py"):
            families.implementation_class(ScaleSpec(2, 2), "fakeframework")
    finally:
        for name in [m for m in sys.modules if m == "fakeframework" or m.startswith("fakeframework.")]:
            del sys.modules[name]


# --- nothing outside the registry tells spec types apart ----------------------------------------

def _spec_type_tests(path: pathlib.Path) -> list[str]:
    """isinstance / issubclass / type(...) is comparisons against a spec type, by line."""
    names = {family.spec_type.__name__ for family in families.FAMILIES.values()}
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) in ("isinstance", "issubclass"):
            mentioned = {getattr(n, "id", getattr(n, "attr", None)) for n in ast.walk(node.args[1])}
            if mentioned & names:
                found.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    return found


def test_no_spec_type_dispatch_outside_the_registry():
    files = [p for p in (ROOT / "lambda_bench").rglob("*.py") if p.name != "families.py"]
    files += [ROOT / "implementations" / fw / "backend.py" for fw in FRAMEWORKS]
    assert [hit for path in files for hit in _spec_type_tests(path)] == []
