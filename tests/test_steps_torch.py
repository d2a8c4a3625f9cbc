"""The torch backend's measured step (FrameworkBackend.prepare -> TorchStep) against the contract of
lambda_bench.measure.steps: modes, precisions, compile modes, traces, FLOP counting, bad options.

Small cases only; one compiled case (torch.compile costs ~10-25 s on a 2-core CPU)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from conftest import require_or_skip

torch = require_or_skip("torch", "torch")  # pytest.importorskip, unless CI requires torch

from implementations.torch.backend import BACKEND, TorchStep  # noqa: E402
from lambda_bench import counting, zoo  # noqa: E402
from lambda_bench.measure import steps  # noqa: E402

SMALL = {"resnet26": (32, 2), "efficientnet_b0": (32, 2), "lambda_conv": (8, 2), "lambda": (8, 2),
         "lambda_resnet26": (32, 2)}


def small(name: str) -> zoo.Case:
    size, batch = SMALL[name]
    return zoo.case(name, image_size=size, batch=batch)


def state(module) -> dict[str, torch.Tensor]:
    """Every parameter and buffer, copied."""
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def changed(before: dict[str, torch.Tensor], after: dict[str, torch.Tensor]) -> set[str]:
    return {k for k in before if not torch.equal(before[k], after[k])}


# --- options ------------------------------------------------------------------------------------

@pytest.mark.parametrize("option, value", [("mode", "eval"), ("precision", "fp16"), ("compile", "xla"),
                                           ("compile", "jit"), ("device", "gpu")])
def test_bad_option_is_a_value_error_naming_it(option, value):
    with pytest.raises(ValueError, match=rf"^{option}={value!r}") as info:
        BACKEND.prepare(small("lambda_conv"), **{option: value})
    assert not isinstance(info.value, steps.Unsupported)  # a bad value, not an unsupported one


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_cuda_is_unsupported():
    with pytest.raises(steps.Unsupported, match="cuda"):
        BACKEND.prepare(small("lambda_conv"), device="cuda")


def test_tpu_is_unsupported():
    with pytest.raises(steps.Unsupported, match="tpu"):
        BACKEND.prepare(small("lambda_conv"), device="tpu")


# --- train --------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["resnet26", "efficientnet_b0", "lambda_conv"])
def test_train_steps_lower_the_loss_and_update_everything(name):
    # models at batch 8: at batch 2 and 32 px the last stage's train-mode BatchNorm sees 2 values per
    # channel (1x1 maps), and the gradient is ill-conditioned noise (norm ~1e6-1e9) that the clipped
    # step (steps.GRADIENT_CLIP_NORM) does not fit
    case = small(name)
    s = BACKEND.prepare(zoo.case(name, case.height, 8) if case.is_model else case, mode="train", seed=3)
    assert isinstance(s, TorchStep) and s.traces == 0 and math.isnan(s.loss())
    assert s.module.training
    before = state(s.module)
    losses = []
    for _ in range(10):
        s.step()
        losses.append(s.loss())
    assert all(math.isfinite(v) for v in losses), losses
    assert losses[-1] < 0.8 * losses[0], losses  # the same batch every step: SGD fits it
    after = state(s.module)
    params = {k for k, _ in s.module.named_parameters()}
    assert params and changed(before, after) >= params, sorted(params - changed(before, after))
    stats = {k for k in before if k.endswith(("running_mean", "running_var"))}
    assert stats and changed(before, after) >= stats, sorted(stats - changed(before, after))
    assert s.traces == 0  # eager


def test_train_loss_is_the_contract_loss():
    """Models: mean cross-entropy against the synthetic labels; layers: 0.5 mean(y^2) of the output.
    The first step's loss is that of the freshly built model in training mode on the synthetic batch."""
    for name in ("resnet26", "lambda_conv"):
        case = small(name)
        s = BACKEND.prepare(case, mode="train", seed=1)
        x, labels = steps.synthetic_batch(case, 1)
        model = BACKEND.build(case.spec, 1).cpu().train()
        with torch.no_grad():
            out = model(torch.from_numpy(x).permute(0, 3, 1, 2).contiguous())
        if case.is_model:
            expected = torch.nn.functional.cross_entropy(out, torch.from_numpy(labels).long()).item()
        else:
            expected = 0.5 * float(out.square().mean())
        s.step()
        assert s.loss() == pytest.approx(expected, rel=1e-5)


# --- infer --------------------------------------------------------------------------------------

def test_infer_leaves_the_model_unchanged_and_is_deterministic():
    s = BACKEND.prepare(small("resnet26"), mode="infer")
    assert not s.module.training
    before = state(s.module)
    s.step()
    first = s._output()
    s.step()
    assert first.shape == (2, 1000) and np.isfinite(first).all()
    np.testing.assert_array_equal(s._output(), first)
    assert not changed(before, state(s.module))
    assert math.isnan(s.loss()) and s.traces == 0


def test_same_seed_same_step_other_seed_other_input():
    a, b, c = (BACKEND.prepare(small("lambda_conv"), seed=seed) for seed in (5, 5, 6))
    for s in (a, b, c):
        s.step()
    np.testing.assert_array_equal(a._output(), b._output())
    assert not np.array_equal(a._output(), c._output())
    assert a.x.shape == (2, 64, 8, 8) and a.x.is_contiguous()  # NCHW, prepared once


# --- compiled -----------------------------------------------------------------------------------

def test_compiled_infer_matches_eager_and_counts_traces():
    case = small("lambda_conv")
    eager = BACKEND.prepare(case)
    eager.step()
    compiled = BACKEND.prepare(case, compile="compiled")
    assert compiled.traces == 0  # nothing compiled before the first step
    compiled.step()
    assert compiled.traces >= 1
    traces = compiled.traces
    compiled.step()
    compiled.step()
    assert compiled.traces == traces  # same input: no recompilation
    want, got = eager._output(), compiled._output()
    assert got.shape == want.shape == (2, 64, 8, 8)
    assert np.abs(got - want).max() <= 1e-5 * np.abs(want).max()
    assert eager.traces == 0
    # a recompilation (here: a new input shape) inside a timed loop shows in traces
    compiled.x = compiled.x[:1].contiguous()
    compiled.step()
    assert compiled.traces == traces + 1
    assert compiled.count_flops()["flops"] > 0  # on the uncompiled module: no new trace
    assert compiled.traces == traces + 1


# --- precision ----------------------------------------------------------------------------------

def test_bf16_train_step_runs_with_fp32_parameters():
    s = BACKEND.prepare(small("resnet26"), mode="train", precision="bf16")
    for _ in range(2):
        s.step()
        assert math.isfinite(s.loss())
    assert s._out.dtype == torch.bfloat16  # autocast ran the forward in bf16
    assert all(p.dtype == torch.float32 for p in s.module.parameters())
    assert s._loss.dtype == torch.float32  # cross-entropy kept in fp32


def test_bf16_infer_is_close_to_fp32():
    fp32, bf16 = (BACKEND.prepare(small("lambda_conv"), precision=p) for p in ("fp32", "bf16"))
    fp32.step()
    bf16.step()
    want, got = fp32._output(), bf16._output()
    assert bf16._out.dtype == torch.float32  # projections in bf16, the lambdas (and output) in fp32
    assert np.abs(got - want).max() <= 0.05 * np.abs(want).max()
    assert not np.array_equal(got, want)


@pytest.mark.parametrize("name", ["lambda_conv", "lambda", "lambda_resnet26"])
def test_bf16_train_step_of_lambda_layers(name):
    case = small(name)
    s = BACKEND.prepare(zoo.case(name, case.height, 8) if case.is_model else case, mode="train", precision="bf16")
    losses = []
    for _ in range(3):
        s.step()
        losses.append(s.loss())
    assert all(math.isfinite(x) for x in losses) and losses[-1] < losses[0]


# --- memory and FLOPs ---------------------------------------------------------------------------

def test_peak_memory_on_cpu_is_none():
    s = BACKEND.prepare(small("lambda_conv"))
    s.reset_peak_memory()
    s.step()
    assert s.peak_memory() == (None, "")


@pytest.mark.parametrize("name", ["resnet26", "efficientnet_b0"])
def test_count_flops_equals_the_analytic_count(name):
    """FlopCounterMode counts exactly what lambda_bench.counting counts for convolution models:
    convolutions (zero padding included) and the classifier, 2 per multiply-add."""
    case = small(name)
    s = BACKEND.prepare(case, mode="train")
    result = s.count_flops()
    assert result["counter"] == "torch FlopCounterMode"
    assert "softmax" in result["note"] and "BatchNorm" in result["note"]
    assert result["flops"] == counting.flops(case.spec, case.height, case.width) * case.batch
    assert s.module.training  # restored: the train step is unaffected
    before = state(s.module)
    s.count_flops()
    assert not changed(before, state(s.module))  # eval forward: running stats untouched
