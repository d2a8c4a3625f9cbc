"""The self-attention baselines (mhsa, sasa, axial) in every framework: the same function as the float64
reference (outputs in eval and train mode, every gradient), canonical weights that round-trip bit for
bit, and the same ValueError for the same bad input or spec."""

import ast
from pathlib import Path

import numpy as np
import pytest

from lambda_bench import equivalence, zoo
from lambda_bench.backend import get_backend
from lambda_bench.specs import AttentionSpec
from lambda_bench.weights import attention_shapes, init_attention

from conftest import framework_params

# Small inputs, few cases (JAX compiles every op of an unjitted step: ~10 s a case on 2 cores):
# non-square, both pools, heads 1 and 2, d_in != d_out, batch 1, a window larger than the image
# along one axis and with its edges outside it along the other.
CASES = {
    "mhsa_h2_din_ne_dout_stride2_pool3_b1": ("mhsa", dict(heads=2, d_in=24, d_out=32, height=5, width=7,
                                                          batch=1, stride=2, pool=3)),
    "sasa_w5_h1_stride2_pool2_3x6": ("sasa", dict(window=5, heads=1, d_in=16, d_out=8, height=3, width=6,
                                                  stride=2, pool=2)),
    "axial_h2_din_ne_dout": ("axial", dict(heads=2, d_in=24, d_out=16, height=4, width=7)),
}


@pytest.mark.parametrize("framework", framework_params())
@pytest.mark.parametrize("case_id", list(CASES))
def test_matches_reference(case_id, framework):
    name, overrides = CASES[case_id]
    case = zoo.get(name, **overrides)
    rows = equivalence.check_case(case, [framework])
    tensors = {r.tensor for r in rows}
    expected = {"output (eval)", "output (train)", "grad input"}
    expected |= {f"grad {n}" for n in attention_shapes(case.spec)}
    assert tensors == expected  # every gradient, and no running statistics: attention has none
    bad = [(r.tensor, f"{r.rel_error:.2e}") for r in rows if not r.ok]
    assert not bad, f"{framework} differs from the reference on {case.describe()}: {bad}"


@pytest.mark.parametrize("framework", framework_params())
@pytest.mark.parametrize("name", ["mhsa", "sasa", "axial"])
def test_export_load_export_is_bit_exact(name, framework):
    spec = zoo.get(name, heads=2, d_in=8, d_out=12, height=3, width=4).spec
    be = get_backend(framework)
    first = be.export_weights(be.build(spec, seed=0))
    initial = init_attention(spec, 0)
    assert list(first) == list(initial)  # canonical names, in the documented order
    for key, value in first.items():
        assert value.dtype == np.float32 and value.shape == initial[key].shape, key
        assert np.array_equal(value, initial[key]), key
    other = be.build(spec, seed=1)
    be.load_weights(other, first)
    again = be.export_weights(other)
    for key in first:
        assert again[key].tobytes() == first[key].tobytes(), key


@pytest.mark.parametrize("framework", framework_params())
def test_sasa_takes_any_size(framework):
    be = get_backend(framework)
    model = be.build(zoo.get("sasa", d_in=8, d_out=8, heads=2).spec)
    assert be.forward(model, np.zeros((1, 1, 5, 8), np.float32)).shape == (1, 1, 5, 8)


# --- bad input and bad specs -------------------------------------------------------------------


def _call(framework, model, x_nhwc):
    """Call the layer directly in its own layout (torch NCHW), bypassing the backend's checks."""
    if framework == "torch":
        import torch
        x = x_nhwc.transpose(0, 3, 1, 2) if x_nhwc.ndim == 4 else x_nhwc
        return model(torch.from_numpy(np.ascontiguousarray(x)))
    if framework == "tensorflow":
        import tensorflow as tf
        return model(tf.constant(x_nhwc), training=False)
    import jax.numpy as jnp
    return model(jnp.asarray(x_nhwc), train=False)


BAD_INPUTS = [  # NHWC shapes; the preset layers have d_in=64, mhsa and axial size 8x10
    ("mhsa", (2, 8, 10), r"input rank=3"),
    ("mhsa", (2, 8, 10, 32), r"input channels=32.*d_in=64"),
    ("mhsa", (2, 9, 10, 64), r"input size=9x10.*size=8x10"),
    ("axial", (1, 2, 8, 10, 64), r"input rank=5"),
    ("axial", (2, 8, 10, 63), r"input channels=63"),
    ("axial", (2, 8, 11, 64), r"input size=8x11.*size=8x10"),
    ("sasa", (2, 9, 11, 3), r"input channels=3"),
]


@pytest.mark.parametrize("framework", framework_params())
@pytest.mark.parametrize("name,shape,message", BAD_INPUTS, ids=[f"{n}:{m}" for n, _, m in BAD_INPUTS])
def test_invalid_input(framework, name, shape, message):
    model = get_backend(framework).build(zoo.get(name).spec)
    with pytest.raises(ValueError, match=message):
        _call(framework, model, np.zeros(shape, np.float32))


BAD_SPECS = [
    (dict(kind="sasa", d_in=16, d_out=16, window=4), r"window=4.*odd"),
    (dict(kind="sasa", d_in=16, d_out=16, window=0), r"window=0"),
    (dict(kind="mhsa", d_in=16, d_out=30, heads=4, size=(4, 4)), r"d_out=30.*heads=4"),
    (dict(kind="axial", d_in=16, d_out=16, heads=3, size=(4, 4)), r"d_out=16.*heads=3"),
    (dict(kind="mhsa", d_in=16, d_out=16), r"size=None.*'mhsa'"),
    (dict(kind="axial", d_in=16, d_out=16), r"size=None.*'axial'"),
    (dict(kind="local", d_in=16, d_out=16), r"kind='local'"),
    (dict(kind="mhsa", d_in=16, d_out=16, size=(4, 0)), r"size\[1\].*=0"),
    (dict(kind="sasa", d_in=16, d_out=16, stride=3), r"stride=3"),
]


@pytest.mark.parametrize("kwargs,message", BAD_SPECS, ids=[m for _, m in BAD_SPECS])
def test_invalid_spec(kwargs, message):
    with pytest.raises(ValueError, match=message):
        AttentionSpec(**kwargs)


def test_files_are_mirrored():
    """The three attention.py files define the same classes, methods and functions in the same order."""
    root = Path(__file__).resolve().parents[1] / "implementations"

    def outline(framework):
        tree = ast.parse((root / framework / "attention.py").read_text())
        names = []
        for node in tree.body:
            if isinstance(node, (ast.ClassDef, ast.FunctionDef)):
                names.append(node.name)
            if isinstance(node, ast.ClassDef):
                names += [f"{node.name}.{f.name}" for f in node.body if isinstance(f, ast.FunctionDef)]
        return names

    torch_outline = outline("torch")
    # the call method has each framework's own name
    rename = {"call": "forward", "__call__": "forward"}
    for framework in ("tensorflow", "jax"):
        names = [".".join(rename.get(p, p) for p in n.split(".")) for n in outline(framework)]
        assert names == torch_outline, framework
