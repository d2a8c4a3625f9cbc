"""Invalid options and inputs: a ValueError that names the parameter and its value, the same check in
every framework (the checks live once, in LambdaSpec)."""

import numpy as np
import pytest

from lambda_bench import zoo
from lambda_bench.backend import get_backend
from lambda_bench.specs import LambdaSpec

from conftest import framework_params

BAD_SPECS = [
    (dict(d_in=16, d_out=30, heads=4, position="conv", r=3), r"d_out=30.*heads=4"),
    (dict(d_in=16, d_out=16, position="conv", r=4), r"r=4.*odd"),
    (dict(d_in=16, d_out=16, position="conv", r=0), r"r=0"),
    (dict(d_in=16, d_out=16, position="conv", r=-3), r"r=-3"),
    (dict(d_in=0, d_out=16, position="conv"), r"d_in=0"),
    (dict(d_in=16, d_out=16, k=-1, position="conv"), r"k=-1"),
    (dict(d_in=16, d_out=16, u=0, position="conv"), r"u=0"),
    (dict(d_in=16, d_out=16, heads=0, position="conv"), r"heads=0"),
    (dict(d_in=16, d_out=16, position="global"), r"size=None"),
    (dict(d_in=16, d_out=16, position="global", size=(0, 4)), r"size\[0\].*=0"),
    (dict(d_in=16, d_out=16, position="local"), r"position='local'"),
    (dict(d_in=16, d_out=16, position="none", content=False), r"content=False"),
    (dict(d_in=16, d_out=16, position="conv", stride=3), r"stride=3"),
    (dict(d_in=16, d_out=16, position="conv", pool=5), r"pool=5"),
    (dict(d_in=16, d_out=16, position="global", size=(4, 4), conv_bias=True), r"conv_bias=True"),
    (dict(d_in=16, d_out=16, position="conv", bn_eps=0.0), r"bn_eps=0.0"),
    (dict(d_in=16, d_out=16, position="conv", bn_momentum=1.5), r"bn_momentum=1.5"),
]


@pytest.mark.parametrize("kwargs,message", BAD_SPECS, ids=[m for _, m in BAD_SPECS])
def test_invalid_spec(kwargs, message):
    with pytest.raises(ValueError, match=message):
        LambdaSpec(**kwargs)


def _nhwc_to(framework, shape):
    """The framework's own layout: torch is NCHW, the others NHWC."""
    return (shape[0], shape[3], shape[1], shape[2]) if framework == "torch" else shape


def _call(framework, model, x_native):
    """Call the framework's layer directly, in its own layout, bypassing the backend's conversions."""
    if framework == "torch":
        import torch
        return model(torch.from_numpy(x_native))
    if framework == "tensorflow":
        import tensorflow as tf
        return model(tf.constant(x_native), training=False)
    import jax.numpy as jnp
    return model(jnp.asarray(x_native), train=False)


BAD_INPUTS = [
    ("lambda", (2, 8, 10), r"input rank=3"),
    ("lambda", (2, 8, 10, 32), r"input channels=32.*d_in=64"),
    ("lambda", (2, 9, 10, 64), r"input size=9x10.*size=8x10"),
    ("lambda_conv", (1, 2, 5, 5, 64), r"input rank=5"),
    ("lambda_conv", (1, 5, 5, 63), r"input channels=63"),
]


@pytest.mark.parametrize("framework", framework_params())
@pytest.mark.parametrize("name,shape,message", BAD_INPUTS, ids=[m for *_, m in BAD_INPUTS])
def test_invalid_input(framework, name, shape, message):
    be = get_backend(framework)
    model = be.build(zoo.get(name).spec)
    native = shape if len(shape) != 4 else _nhwc_to(framework, shape)
    with pytest.raises(ValueError, match=message):
        _call(framework, model, np.zeros(native, np.float32))


@pytest.mark.parametrize("framework", framework_params())
def test_conv_form_takes_any_size(framework):
    be = get_backend(framework)
    model = be.build(zoo.get("lambda_conv").spec)
    for h, w in ((3, 3), (12, 5)):
        assert be.forward(model, np.zeros((1, h, w, 64), np.float32)).shape == (1, h, w, 64)
