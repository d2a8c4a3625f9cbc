"""FrameworkBackend.prepare() of the JAX backend: the step contract of lambda_bench.measure.steps."""

import math

import numpy as np
import pytest

pytest.importorskip("jax")

from implementations.jax.backend import BACKEND  # noqa: E402
from lambda_bench import counting, zoo  # noqa: E402
from lambda_bench.measure import steps  # noqa: E402

import jax  # noqa: E402


def leaves(tree):
    return [np.array(leaf) for leaf in jax.tree.leaves(tree)]


def changed(before, after):
    """How many leaves differ."""
    return sum(not np.array_equal(a, b) for a, b in zip(before, after, strict=True))


def run_losses(step, n):
    losses = []
    for _ in range(n):
        step.step()
        losses.append(step.loss())
    return losses


@pytest.fixture(scope="module")
def resnet_case():
    return zoo.case("resnet26", image_size=32, batch=2)


@pytest.fixture(scope="module")
def resnet_train(resnet_case):
    # batch 8: at batch 2 and 32 px the last stage's train-mode BatchNorm sees 2 values per channel
    # and the gradient is ill-conditioned noise the clipped step (steps.GRADIENT_CLIP_NORM) does not fit
    step = BACKEND.prepare(zoo.case("resnet26", image_size=32, batch=8), mode="train", seed=0)
    params, rest = step._state()
    losses = run_losses(step, 10)
    return step, leaves(params), leaves(rest), losses


def test_train_model_lowers_loss_updates_params_and_running_stats(resnet_train):
    step, params0, rest0, losses = resnet_train
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < 0.8 * losses[0], losses
    params, rest = step._state()
    # every parameter gets a gradient (fc, convolutions, BatchNorm affine)
    assert changed(params0, leaves(params)) == len(params0)
    assert len(rest0) > 0 and changed(rest0, leaves(rest)) == len(rest0)  # every running mean / var
    assert step.traces == 1  # ten steps, one trace: no recompilation


def test_train_layer_lowers_loss():
    case = zoo.case("lambda_conv", 8, 2)
    step = BACKEND.prepare(case, mode="train", seed=0)
    params0, rest0 = map(leaves, step._state())
    losses = run_losses(step, 12)
    assert losses[-1] < 0.5 * losses[0], losses
    params, rest = map(leaves, step._state())
    assert changed(params0, params) == len(params0)
    assert changed(rest0, rest) == len(rest0)
    assert step.traces == 1


@pytest.mark.parametrize("name, size", [("resnet26", 32), ("lambda_conv", 8), ("efficientnet_b0", 32)])
def test_infer_matches_forward_and_leaves_state(name, size):
    case = zoo.case(name, size, 2)
    step = BACKEND.prepare(case, mode="infer", seed=3)
    state0 = leaves(step._state())
    step.step()
    first = np.asarray(step._out)
    for _ in range(2):
        step.step()
    np.testing.assert_array_equal(np.asarray(step._out), first)  # deterministic
    assert changed(state0, leaves(step._state())) == 0
    assert step.traces == 1
    assert math.isnan(step.loss())
    assert step.peak_memory() == (None, "")  # CPU
    x, _ = steps.synthetic_batch(case, 3)
    expected = BACKEND.forward(BACKEND.build(case.spec, 3), x, train=False)
    assert first.shape == expected.shape == case.output_shape
    np.testing.assert_allclose(first, expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())
    np.testing.assert_array_equal(step._output(), first)


def test_bf16_close_to_fp32():
    case = zoo.case("lambda_conv", 8, 2)
    fp32 = BACKEND.prepare(case, mode="infer")._output()
    bf16 = BACKEND.prepare(case, mode="infer", precision="bf16")
    bf16.step()
    out = np.asarray(bf16._out)
    assert out.dtype == np.float32
    rel = np.abs(out - fp32).max() / np.abs(fp32).max()
    assert 0 < rel < 5e-2, rel  # not zero: the matmuls did run in bfloat16
    train = BACKEND.prepare(case, mode="train", precision="bf16")
    params0 = leaves(train._state()[0])
    losses = run_losses(train, 5)
    assert all(math.isfinite(v) for v in losses) and losses[-1] < losses[0], losses
    params = train._state()[0]
    assert all(p.dtype == np.float32 for p in leaves(params))  # the float32 master copy
    assert changed(params0, leaves(params)) == len(params0)
    assert train.traces == 1


def test_bf16_model_step_runs():
    case = zoo.case("resnet26", 32, 2)
    step = BACKEND.prepare(case, mode="infer", precision="bf16")
    step.step()
    out = np.asarray(step._out)
    expected = BACKEND.prepare(case, mode="infer")._output()
    assert np.isfinite(out).all()
    assert np.abs(out - expected).max() / np.abs(expected).max() < 5e-2


def test_count_flops_against_analytic(resnet_case):
    step = BACKEND.prepare(resnet_case)
    counted = step.count_flops()
    assert counted["counter"] == "XLA cost analysis"
    analytic = counting.flops(resnet_case.spec, 32, 32) * resnet_case.batch
    ratio = counted["flops"] / analytic
    # XLA counts a convolution over the taps inside the input only: at 32 px the last stages are
    # 2x2 and 1x1, where most 3x3 taps fall on padding, so it counts less than the analytic count
    # (which includes the padding) despite its elementwise ops: 0.86 measured
    assert 0.8 <= ratio <= 1.3, ratio
    assert step.traces == 0  # counting compiles its own forward, not the step


def test_recompilation_is_counted():
    case = zoo.case("lambda_conv", 8, 2)
    step = BACKEND.prepare(case)
    step.step()
    step._x = step._x[:1]  # a new input shape: the next step traces again
    step.step()
    assert step.traces == 2


@pytest.mark.parametrize("option, value", [("mode", "eval"), ("precision", "fp16"), ("compile", "eager"),
                                           ("device", "gpu")])
def test_bad_options_raise(option, value):
    with pytest.raises(ValueError, match=option):
        BACKEND.prepare(zoo.case("lambda_conv", 8, 2), **{option: value})


def test_missing_device_is_unsupported():
    if jax.devices()[0].platform == "gpu":
        pytest.skip("this machine has a GPU")
    with pytest.raises(steps.Unsupported, match="cuda"):
        BACKEND.prepare(zoo.case("lambda_conv", 8, 2), device="cuda")
