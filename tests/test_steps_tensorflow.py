"""The TensorFlow measured step (implementations/tensorflow/backend.py: prepare / TensorFlowStep)
against the contract of lambda_bench.measure.steps. Small cases only."""

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

from implementations.tensorflow.backend import BACKEND, TensorFlowStep  # noqa: E402
from lambda_bench import counting, zoo  # noqa: E402
from lambda_bench import weights as canonical  # noqa: E402
from lambda_bench.measure import steps  # noqa: E402

RESNET = ("resnet26", 32, 2)
LAYER = ("lambda_conv", 8, 2)


def _case(name, size, batch):
    return zoo.case(name, image_size=size, batch=batch)


def _state(step: TensorFlowStep) -> dict[str, np.ndarray]:
    return {name: np.array(value) for name, value in step.model.export_canonical().items()}


def _params(state):
    return {k: v for k, v in state.items() if not canonical.is_buffer(k)}


def _buffers(state):
    return {k: v for k, v in state.items() if canonical.is_buffer(k)}


def _changed(before, after):
    return sorted(k for k in before if not np.array_equal(before[k], after[k]))


@pytest.mark.parametrize("name,size,batch,compile", [
    (*RESNET, "compiled"), (*LAYER, "compiled"), (*LAYER, "eager"), (*LAYER, "xla")])
def test_train_lowers_the_loss_and_updates_parameters_and_running_stats(name, size, batch, compile):
    # a model at batch 8: at batch 2 and 32 px the last stage's train-mode BatchNorm sees 2 values per
    # channel and the gradient is ill-conditioned noise the clipped step (steps.GRADIENT_CLIP_NORM) does not fit
    batch = 8 if name in zoo.MODELS else batch
    step = BACKEND.prepare(_case(name, size, batch), mode="train", compile=compile)
    before = _state(step)
    assert np.isnan(step.loss())  # no step yet
    losses = []
    for _ in range(12):
        step.step()
        losses.append(step.loss())
    assert all(np.isfinite(losses)), losses
    assert losses[-1] < 0.8 * losses[0], losses
    after = _state(step)
    params, buffers = _params(before), _buffers(before)
    assert buffers  # every case here has BatchNorm
    assert _changed(params, _params(after)) == sorted(params)  # every parameter moved
    assert _changed(buffers, _buffers(after)) == sorted(buffers)  # every running statistic moved
    assert step.traces == (0 if compile == "eager" else 1)


def test_train_steps_are_sgd_with_momentum():
    """buf = momentum * buf + grad; p -= lr * buf, with grad that of 0.5 * mean(y**2) (forward_backward
    with the cotangent y / y.size at the same weights, in training mode), scaled to a global norm of at
    most steps.GRADIENT_CLIP_NORM."""
    case = _case(*LAYER)
    x, _ = steps.synthetic_batch(case, 0)
    step = BACKEND.prepare(case, mode="train", compile="compiled")
    buf = None
    for _ in range(2):
        state = _state(step)
        step.step()
        y = step._output()  # the training-mode output of this step
        reference = BACKEND.build(case.spec, 0)
        BACKEND.load_weights(reference, state)
        _, grads = BACKEND.forward_backward(reference, x, y / y.size)
        norm = np.sqrt(sum(np.sum(np.square(grads[k], dtype=np.float64)) for k in _params(state)))
        grads = {k: g * steps.GRADIENT_CLIP_NORM / max(norm, steps.GRADIENT_CLIP_NORM) for k, g in grads.items()}
        buf = {k: grads[k] if buf is None else steps.MOMENTUM * buf[k] + grads[k] for k in _params(state)}
        after = _params(_state(step))
        for name, before in _params(state).items():
            np.testing.assert_allclose(after[name], before - steps.LEARNING_RATE * buf[name], rtol=1e-4,
                                       atol=1e-6, err_msg=name)
        assert step.loss() == pytest.approx(0.5 * np.mean(y.astype(np.float64) ** 2), rel=1e-5)


@pytest.mark.parametrize("name,size,batch", [RESNET, LAYER])
def test_infer_leaves_state_alone_and_is_deterministic(name, size, batch):
    step = BACKEND.prepare(_case(name, size, batch), mode="infer", compile="compiled")
    before = _state(step)
    step.step()
    first = step._output()
    for _ in range(3):
        step.step()
    after = _state(step)
    assert _changed(before, after) == []
    np.testing.assert_array_equal(step._output(), first)
    assert np.isnan(step.loss())
    assert step.traces == 1  # repeated steps do not retrace


@pytest.mark.parametrize("name,size,batch", [RESNET, LAYER])
def test_eager_compiled_and_xla_agree(name, size, batch):
    case = _case(name, size, batch)
    outputs, traces = {}, {}
    for compile in ("eager", "compiled", "xla"):
        step = BACKEND.prepare(case, mode="infer", compile=compile)
        step.step()
        step.step()
        outputs[compile], traces[compile] = step._output(), step.traces
    assert traces == {"eager": 0, "compiled": 1, "xla": 1}
    scale = np.max(np.abs(outputs["eager"]))
    for compile in ("compiled", "xla"):
        assert outputs[compile].shape == case.output_shape
        np.testing.assert_allclose(outputs[compile], outputs["eager"], rtol=1e-5, atol=1e-5 * scale,
                                   err_msg=compile)
    # the same numbers as the plain forward of the harness
    x, _ = steps.synthetic_batch(case, 0)
    np.testing.assert_allclose(outputs["eager"], BACKEND.forward(BACKEND.build(case.spec, 0), x),
                               rtol=1e-5, atol=1e-5 * scale)


def test_count_flops_is_xla_cost_analysis_of_the_forward():
    pytest.importorskip("jax")
    name, size, batch = RESNET
    counted = BACKEND.prepare(_case(name, size, batch)).count_flops()
    assert counted["counter"] == "XLA cost analysis (TF HLO)"
    assert "elementwise" in counted["note"]
    flops = counted["flops"]
    assert isinstance(flops, int)
    analytic = counting.flops(_case(*RESNET).spec, size, size) * batch
    # XLA counts only the kernel taps that fall inside the input (padding excluded), which at 32 px
    # (stage 5 is 1x1: a padded 3x3 conv there has 1 tap of 9) outweighs the elementwise ops it adds:
    # measured 0.857 of the analytic count here (0.98 at 224 px).
    assert 0.8 * analytic <= flops <= 1.3 * analytic, flops / analytic
    # per-example work: twice the batch, twice the flops (less the per-channel work of the inference
    # BatchNorm, rsqrt(var + eps) * weight, which does not grow with the batch)
    doubled = BACKEND.prepare(_case(name, size, 2 * batch)).count_flops()["flops"]
    assert 2 * flops * 0.999 < doubled < 2 * flops


def test_count_flops_includes_elementwise_work():
    """EfficientNet's elementwise work (SiLU, SE, BatchNorm) puts XLA's count above the analytic one."""
    pytest.importorskip("jax")
    case = _case("efficientnet_b0", 32, 2)
    flops = BACKEND.prepare(case).count_flops()["flops"]
    analytic = counting.flops(case.spec, 32, 32) * 2
    assert analytic <= flops <= 1.3 * analytic, flops / analytic


@pytest.mark.parametrize("option,value", [
    ("mode", "backward"), ("precision", "fp16"), ("compile", "jit"), ("device", "gpu")])
def test_bad_options_raise_value_error_naming_them(option, value):
    with pytest.raises(ValueError, match=f"^{option}="):
        BACKEND.prepare(_case(*LAYER), **{option: value})


def test_unavailable_device_and_bf16_are_unsupported():
    if tf.config.list_physical_devices("GPU"):
        pytest.skip("a GPU is visible")
    with pytest.raises(steps.Unsupported, match="device='cuda'.*no GPU"):
        BACKEND.prepare(_case(*LAYER), device="cuda")
    with pytest.raises(steps.Unsupported, match="device='tpu'"):
        BACKEND.prepare(_case(*LAYER), device="tpu")
    with pytest.raises(steps.Unsupported, match="precision='bf16': not implemented for tensorflow"):
        BACKEND.prepare(_case(*LAYER), precision="bf16")


def test_memory_on_cpu_is_left_to_the_worker():
    step = BACKEND.prepare(_case(*LAYER), compile="eager")
    step.reset_peak_memory()
    step.step()
    assert step.peak_memory() == (None, "")
