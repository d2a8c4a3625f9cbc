"""`lambda-bench check --all` fits a small machine: the float64 stage of JAX's EfficientNets runs its
depthwise convolutions as sums of strided slices, because XLA's CPU compiler rewrites a grouped
convolution in any type but float32/float16 into a dense one with a C x C filter (EfficientNet-B6's
check asked for a 26 GB buffer). Checked on one layer: the same numbers as the grouped convolution,
and a compiled forward+backward whose scratch memory grows with C, not with C squared."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import require_or_skip


@pytest.fixture(scope="module")
def jax_efficientnet():
    require_or_skip("jax", "jax")
    from implementations.jax import efficientnet
    return efficientnet


def _grouped(jax, x, kernel, stride):
    pad = kernel.shape[0] // 2
    return jax.lax.conv_general_dilated(x, kernel, (stride, stride), ((pad, pad), (pad, pad)),
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=x.shape[-1],
                                        precision=jax.lax.Precision.HIGHEST)


@pytest.mark.parametrize("k, stride, size", [(3, 1, 7), (5, 2, 8), (3, 2, 9)])
def test_float64_depthwise_is_the_grouped_convolution(jax_efficientnet, k, stride, size):
    import jax

    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, size, size, 6))
    kernel = rng.normal(size=(k, k, 1, 6))
    with jax.enable_x64(True):
        ours = np.asarray(jax_efficientnet.depthwise_conv2d(jax.numpy.asarray(x), jax.numpy.asarray(kernel), stride))
        assert ours.dtype == np.float64
        grouped = np.asarray(_grouped(jax, jax.numpy.asarray(x), jax.numpy.asarray(kernel), stride))  # float64: dense, small
    np.testing.assert_allclose(ours, grouped, rtol=1e-12, atol=1e-12)


def test_float64_depthwise_backward_needs_no_channel_squared_memory(jax_efficientnet):
    import jax
    import jax.numpy as jnp

    def scratch(dtype, channels):  # XLA's scratch buffer of the compiled forward+backward, bytes
        x = jnp.zeros((2, 8, 8, channels), dtype)
        kernel = jnp.zeros((5, 5, 1, channels), dtype)
        loss = lambda x, kernel: jnp.sum(jax_efficientnet.depthwise_conv2d(x, kernel, 1) ** 2)
        compiled = jax.jit(jax.grad(loss, argnums=(0, 1))).lower(x, kernel).compile()
        return compiled.memory_analysis().temp_size_in_bytes

    with jax.enable_x64(True):
        small, large = scratch(jnp.float64, 64), scratch(jnp.float64, 512)
    # 8x the channels: 8x the activations (and their k * k slices); a C x C filter would be 64x
    # (measured: 1.9 MB -> 15 MB; the grouped convolution 1.6 MB -> 105 MB)
    assert 0 < small and large <= 16 * small, (small, large)
