"""Model checks run on calibrated weights (lambda_bench.equivalence.inputs): every checked tensor of
the anchor is finite, deep lambda ResNets included, and a NaN/Inf is reported with the first layer
where it appears."""

import numpy as np
import pytest

from lambda_bench import equivalence, zoo

pytest.importorskip("torch")


@pytest.mark.parametrize("name", ["lambda_resnet101", "lambda_resnet50_u4"])
def test_deep_lambda_resnets_stay_finite_in_eval_and_train(name):
    """LambdaResNet-101 gave NaN in eval mode in every framework before its lambda blocks' residual
    branches were damped (LAMBDA_BRANCH_GAIN); eval and train forwards of the anchor are finite."""
    case = zoo.get(name, batch=1) if name == "lambda_resnet101" else zoo.get(name, image_size=32)
    w, x, _ = equivalence.inputs(case)
    for train in (False, True):
        layer = equivalence.first_nonfinite_layer(case, w, x, train=train)
        assert layer is None, f"{name} ({'train' if train else 'eval'}): first non-finite output in {layer}"


def test_running_variances_are_bounded_away_from_zero():
    case = zoo.get("resnet26", image_size=32, width=16)
    w, _, _ = equivalence.inputs(case)
    for name, v in w.items():
        if name.endswith(".running_var"):
            assert v.min() >= equivalence.VARIANCE_FLOOR * np.median(v) * (1 - 1e-6), name
            assert np.all(np.isfinite(v))


def test_lambda_branches_are_damped_by_depth():
    spec = zoo.MODELS["lambda_resnet50_ccll"]
    w = {f"{b.prefix}bn3.{p}": np.ones(b.d_out, np.float32) for b in spec.blocks() for p in ("weight", "bias")}
    damped = equivalence.damp_lambda_branches(spec, w)
    lambda_blocks = [b for b in spec.blocks() if b.mixer == "lambda_conv"]
    assert len(lambda_blocks) == 9
    for b in spec.blocks():
        expected = equivalence.LAMBDA_BRANCH_GAIN / 9 if b.mixer == "lambda_conv" else 1.0
        np.testing.assert_allclose(damped[b.prefix + "bn3.weight"], expected, rtol=1e-6)


def test_a_nan_is_reported_with_the_first_layer_it_reaches():
    """A check never compares NaN with NaN silently: the anchor's non-finite tensors raise an error
    that names the first layer whose output is non-finite."""
    case = zoo.get("resnet26", image_size=32, width=16)
    w, x, cotangent = equivalence.inputs(case)
    w = dict(w)
    w["layer2.1.conv1.weight"] = w["layer2.1.conv1.weight"].copy()
    w["layer2.1.conv1.weight"][0, 0, 0, 0] = np.nan
    ref = equivalence.expected(case, w, x, cotangent)
    with pytest.raises(equivalence.NonFiniteError, match=r"eval: layer2\.1\.conv1.*train: layer2\.1\.conv1"):
        equivalence.check_finite(case, w, x, ref)
    clean, _, _ = equivalence.inputs(case)
    equivalence.check_finite(case, clean, x, equivalence.expected(case, clean, x, cotangent))  # no error
