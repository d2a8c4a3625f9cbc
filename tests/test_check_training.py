"""The training stage of `lambda-bench check` (lambda_bench.equivalence.training_checks): each
framework's measured train step (loss, backward, gradient clip, SGD with momentum) run several steps
in float32 and in float64 from the canonical initial weights, every step's loss against the torch
float64 anchor's. A narrow lambda ResNet-26 (width 8) keeps it quick, at the check's 64 px, batch 2
(layer4 2x2: train-mode BatchNorm over 8 values per channel). At 32 px its last BatchNorms see two
values per channel, and float32 rounding, amplified there, moved JAX's first loss by 1.5e-3, ten
times what the rounding probes moved the anchor's: a luck-driven pass or fail, not a test."""

from __future__ import annotations

import functools
import math

import pytest

from lambda_bench import cli, equivalence, zoo
from lambda_bench.measure import steps

CASE = zoo.get("lambda_resnet26", image_size=64, width=8, lambda_r=3, batch=2)
STEPS = 3
PERTURBED = "layer1.0.conv1.weight"


def _frameworks() -> list[str]:
    have = equivalence.installed_frameworks()
    if "torch" not in have:
        pytest.skip("the anchor is torch float64: torch not installed")
    return have


def _stages() -> list[tuple[str, float]]:
    return [("float32", equivalence.tolerance_for(CASE, "float32")), ("float64", equivalence.tolerance_for(CASE, "float64"))]


@functools.lru_cache(maxsize=None)
def _rows() -> tuple:
    return tuple(equivalence.training_checks(CASE, _frameworks(), _stages(), steps=STEPS))


def test_every_framework_trains_like_the_anchor_step_by_step():
    rows = _rows()
    names = [equivalence.training_name(i) for i in range(STEPS)]
    assert {(r.framework, r.stage, r.tensor) for r in rows} == {
        (fw, stage, t) for fw in _frameworks() for stage, _ in _stages() for t in names}
    bad = [(r.framework, r.stage, r.tensor, r.rel_error, r.status) for r in rows if not r.ok]
    assert bad == []
    # float64: the same function, step after step, free of float32 rounding
    assert max(r.rel_error for r in rows if r.stage == "float64") <= 1e-9


def test_the_anchor_losses_are_finite_and_training_moves_them():
    losses = equivalence.training_losses("torch", CASE, steps=STEPS, dtype="float64")
    assert all(math.isfinite(v) for v in losses), losses
    assert len(set(losses)) == STEPS, losses  # every step changed the weights


def test_a_perturbed_weight_fails_the_float64_training_stage():
    """A 1e-3 change of one initial weight in the framework's copy: its float64 losses leave the
    anchor's by far more than the tolerance, the rounding probes notwithstanding (torch: the rule is
    the same for every framework)."""
    _frameworks()
    rows = equivalence.training_checks(CASE, ["torch"], _stages()[1:], steps=STEPS, perturb=PERTURBED)
    assert rows and all(r.status == "FAIL" for r in rows), [(r.framework, r.tensor, r.rel_error) for r in rows]


def test_a_diverging_recipe_names_the_step(monkeypatch):
    _frameworks()
    monkeypatch.setattr(steps, "LEARNING_RATE", float("inf"))  # the first update makes the weights inf or NaN
    with pytest.raises(equivalence.NonFiniteError, match="training loss is .* at step .*the synthetic recipe diverges"):
        equivalence.training_checks(CASE, ["torch"], _stages()[1:], steps=STEPS)


def test_train_steps_must_not_be_negative(capsys):
    assert cli.main(["check", "resnet26", "--train-steps", "-1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("lambda-bench: error: --train-steps -1") and len(err.strip().splitlines()) == 1


_AFTER_TENSORFLOW = """
from lambda_bench import equivalence, zoo
equivalence.load_torch_training()
case = zoo.get("resnet26", image_size=32, width=8)
print(equivalence.training_losses("tensorflow", case, steps=1)[0], equivalence.training_losses("torch", case, steps=1)[0])
"""


def test_torch_trains_after_tensorflow_once_its_training_is_loaded():
    """torch's first optimizer step imports torch._dynamo, which kills a process that has loaded
    TensorFlow (signal 11: the check's training stage of EfficientNet-B0); the check loads it first.
    In a fresh process: the test session has imported torch's modules early (conftest)."""
    import subprocess
    import sys

    have = _frameworks()
    if "tensorflow" not in have:
        pytest.skip("needs tensorflow")
    done = subprocess.run([sys.executable, "-c", _AFTER_TENSORFLOW], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    tf_loss, torch_loss = map(float, done.stdout.split())
    assert abs(tf_loss - torch_loss) <= 1e-4 * abs(torch_loss)


def test_a_momentum_change_in_one_framework_fails_from_the_third_loss(monkeypatch):
    """What the first steps prove: loss 1 is the loss of the initial weights, loss 2 follows the first
    update (gradient, clip, learning rate), loss 3 the first update that uses momentum. A framework whose
    momentum differs (0.8 for 0.9) matches the anchor at losses 1 and 2 and fails the float64 stage from
    loss 3 on: the check's TRAINING_STEPS (5) sees it with steps to spare."""
    _frameworks()
    real, calls = equivalence.training_losses, []

    def framework_with_other_momentum(framework, case, **options):
        calls.append(framework)
        if len(calls) == 2:  # the first call trains the anchor, the second the checked framework
            with monkeypatch.context() as m:
                m.setattr(steps, "MOMENTUM", 0.8)
                return real(framework, case, **options)
        return real(framework, case, **options)

    monkeypatch.setattr(equivalence, "training_losses", framework_with_other_momentum)
    rows = equivalence.training_checks(CASE, ["torch"], _stages()[1:], steps=4)
    assert [r.status for r in rows] == ["ok", "ok", "FAIL", "FAIL"], [(r.tensor, r.rel_error) for r in rows]


def test_a_loss_gets_the_rounding_bar_of_the_steps_before_it(monkeypatch):
    """A chaotic recipe: rounding moves the anchor's losses far by step 2, and at step 3 the probes
    happen to land near the anchor's loss again. A framework as far off as rounding took it at step 2
    passes at step 3 too (the bar is the running maximum), while a loss off before rounding moved
    anything (step 1) still fails."""
    anchor = [2.0, 3.0, 4.0, 5.0]
    probe = [2.0, 3.3, 4.004, 5.5]  # moved 0, 1e-1, 1e-3, 1e-1

    def losses(framework, case, *, weights=None, **options):
        if framework == "torch" and options.get("dtype") == "float64":
            return list(anchor) if weights is None else list(probe)
        return [2.0 * (1 + 1e-2), 3.0, 4.0 * (1 + 0.5), 5.0]  # loss 1 off by 1e-2, loss 3 by 0.5

    monkeypatch.setattr(equivalence, "training_losses", losses)
    monkeypatch.setattr(equivalence, "load_torch_training", lambda: None)
    monkeypatch.setattr(equivalence.canonical, "init_weights", lambda spec, seed: {})
    monkeypatch.setattr(equivalence, "jittered", lambda spec, w, eps, seed: {"jittered": seed})
    rows = equivalence.training_checks(CASE, ["jax"], [("float32", 1e-4)], steps=4)
    assert [r.status for r in rows] == ["FAIL", "ok", "rounding-limited", "ok"], [(r.tensor, r.rounding_limit) for r in rows]
    limits = [r.rounding_limit for r in rows]
    assert limits[0] == 0.0 and limits[2] == pytest.approx(10 * 0.1) and limits[3] == pytest.approx(10 * 0.1)
