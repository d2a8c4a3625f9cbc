"""The check's data point stays off ReLU kinks (equivalence.clear_relu_kinks): a ReLU input a rounding
away from zero flips in one framework's float32 and not in another's, and moves train-mode gradients
by order 1e-2 although no implementation differs (LambdaResNet-50, content only: 225 gradients of
torch float32 off by up to 7.8e-2 from two such elements)."""

from __future__ import annotations

import numpy as np
import pytest

from lambda_bench import equivalence, zoo

CASE = zoo.get("resnet26", image_size=32, width=8, batch=2)


@pytest.mark.parametrize("z, margin", [([0.5, -0.2, 1e-5, 3.0], 1e-2), ([-1e-3, 2e-3, 0.0, -0.5], 1e-2),
                                       (np.linspace(-1, 1, 201), 4e-3), ([0.3, -0.4], 1e-2)])
def test_the_shift_is_the_smallest_that_clears_the_margin(z, margin):
    z = np.asarray(z, np.float64)
    d = equivalence.relu_kink_shift(z, margin)
    assert np.min(np.abs(z + d)) >= margin * (1 - 1e-9)
    if np.min(np.abs(z)) >= margin:
        assert d == 0.0
    # nothing nearer zero clears it: try a fine grid of smaller shifts
    for smaller in np.linspace(-abs(d), abs(d), 2001)[1:-1]:
        assert np.min(np.abs(z + smaller)) < margin or abs(smaller) >= abs(d) * (1 - 1e-9)


def _relu_margins(monkeypatch, w, x):
    """The smallest |input| / max|input| of every ReLU call in the torch float64 anchor's train-mode
    forward."""
    torch = pytest.importorskip("torch")
    from lambda_bench.backend import get_backend

    ratios = []
    relu = torch.nn.functional.relu

    def recording(t, *args, **kwargs):
        ratios.append(float(t.abs().min() / t.abs().max()))
        return relu(t, *args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "relu", recording)
    backend = get_backend("torch")
    model = backend.build(CASE.spec, 0, dtype="float64")
    backend.load_weights(model, w)
    backend.forward(model, x, train=True)
    return ratios


def test_every_relu_input_of_the_checked_forward_keeps_the_margin(monkeypatch):
    w, x, _ = equivalence.inputs(CASE)
    ratios = _relu_margins(monkeypatch, w, x)
    assert len(ratios) == 1 + 3 * 8  # the stem and three per block
    # float32 biases move the inputs by a rounding of the bias: a hair under the float64 margin
    assert min(ratios) >= 0.99 * equivalence.KINK_MARGIN, min(ratios)


def test_without_the_shift_some_relu_input_sits_inside_the_margin(monkeypatch):
    """The same data without clear_relu_kinks: the margin is not met by chance."""
    monkeypatch.setattr(equivalence, "clear_relu_kinks", lambda case, w, x: dict(w))
    w, x, _ = equivalence.inputs(CASE)
    assert min(_relu_margins(monkeypatch, w, x)) < equivalence.KINK_MARGIN


def test_only_batchnorm_biases_before_a_relu_move_and_by_little(monkeypatch):
    original, w = {}, {}

    def keep(case, weights, x):
        original.update(weights)
        w.update(cleared(case, weights, x))
        return dict(w)

    cleared = equivalence.clear_relu_kinks
    monkeypatch.setattr(equivalence, "clear_relu_kinks", keep)
    equivalence.inputs(CASE)
    moved = sorted(name for name in w if not np.array_equal(w[name], original[name]))
    assert moved and all(name.endswith((".bn1.bias", ".bn2.bias", ".bn3.bias")) or name == "bn1.bias" for name in moved)
    assert max(float(np.max(np.abs(w[n] - original[n]))) for n in moved) < 0.1


def _relu_inputs(case, w, x, dtype="float64"):
    seen = {}
    equivalence._relu_input_pass(case, w, x, lambda name, z: seen.__setitem__(name, z) or None, dtype=dtype)
    return seen


def _before_and_after_clearing(monkeypatch, case):
    """The weights the check clears the kinks of, the checked input, and the cleared weights."""
    seen = {}
    cleared = equivalence.clear_relu_kinks

    def keep(case, weights, x):
        seen.update(before=dict(weights), x=x, after=cleared(case, weights, x))
        return seen["after"]

    monkeypatch.setattr(equivalence, "clear_relu_kinks", keep)
    equivalence.inputs(case)
    return seen["before"], seen["x"], seen["after"]


def test_each_relu_keeps_the_margin_its_rounding_asks_for(monkeypatch):
    """Where the float32 probes move a ReLU's inputs far (here: made to, for the last block's output),
    the margin there grows to KINK_ROUNDING_FACTOR times that distance."""
    pytest.importorskip("torch")
    measured = equivalence.relu_rounding_movement
    last = CASE.spec.blocks()[-1].prefix[:-1]

    def larger(case, w, x):
        moved = measured(case, w, x)
        moved[last] = 1e-3
        return moved

    monkeypatch.setattr(equivalence, "relu_rounding_movement", larger)
    before, x, after = _before_and_after_clearing(monkeypatch, CASE)
    margins = equivalence.relu_kink_margins(CASE, before, x)
    assert margins[last] == pytest.approx(equivalence.KINK_ROUNDING_FACTOR * 1e-3)
    assert min(margins.values()) >= equivalence.KINK_MARGIN
    for name, z in _relu_inputs(CASE, after, x).items():
        assert np.abs(z).min() / np.abs(z).max() >= 0.99 * margins[name], name
    z = _relu_inputs(CASE, before, x)[last]
    assert np.abs(z).min() / np.abs(z).max() < margins[last]  # not met by chance


def test_float32_rounding_stays_inside_every_margin(monkeypatch):
    """lambda_resnet50_lccc at 64 px: torch float32 moves its last stage's ReLU inputs by up to 4e-4
    of their largest value, beyond the KINK_MARGIN floor (1e-4), and an element the shift had put
    exactly at the floor flipped in TensorFlow float32 (5 gradients failed). Every ReLU's margin now
    holds float32's movement with room (scripts/kink-margins prints the table)."""
    pytest.importorskip("torch")
    case = zoo.get("lambda_resnet50_lccc")
    before, x, after = _before_and_after_clearing(monkeypatch, case)
    margins = equivalence.relu_kink_margins(case, before, x)
    anchor, single = _relu_inputs(case, after, x), _relu_inputs(case, after, x, dtype="float32")
    moved = {name: np.abs(single[name] - z).max() / np.abs(z).max() for name, z in anchor.items()}
    assert max(moved.values()) > equivalence.KINK_MARGIN  # the floor alone would not hold it
    for name in anchor:
        assert moved[name] < margins[name] / 2, (name, moved[name], margins[name])
