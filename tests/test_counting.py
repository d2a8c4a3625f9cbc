"""Analytic parameter and FLOP counts: against the paper, against the built models in every framework,
and against torch's own FLOP counter where both count the same operations."""

import json
import subprocess
import sys

import numpy as np
import pytest

from lambda_bench import counting, zoo
from lambda_bench.backend import get_backend
from lambda_bench.specs import AttentionSpec, LambdaSpec

from conftest import framework_params


def test_paper_and_torchvision_parameter_counts():
    assert counting.params(zoo.MODELS["resnet50"]) == 25_557_032            # torchvision resnet50
    assert abs(counting.params(zoo.MODELS["lambda_resnet50"]) - 15.0e6) <= 0.05e6  # paper, Table 3
    assert counting.params(zoo.MODELS["efficientnet_b0"]) == 5_288_548     # timm efficientnet_b0


def test_flop_conventions():
    # ResNet-50 at 224: 4.09 GMACs (the figure every paper quotes), 2 FLOPs per multiply-add
    assert counting.flops(zoo.MODELS["resnet50"]) == pytest.approx(2 * 4.09e9, rel=0.01)
    # EfficientNet-B0: 0.39 GMACs (Tan & Le 2019)
    assert counting.flops(zoo.MODELS["efficientnet_b0"]) == pytest.approx(2 * 0.39e9, rel=0.02)
    # a lambda layer's position lambdas cost n*m*k*u*v multiply-adds (global) or n*k*u*v*r^2 (conv)
    g = LambdaSpec(d_in=8, d_out=8, k=4, heads=2, u=1, position="global", size=(3, 3), content=False)
    assert counting.flops(g, 3, 3) == 2 * 9 * 8 * (8 + 4) + 2 * 9 * 9 * 4 * 4 + 2 * 9 * 2 * 4 * 4
    with pytest.raises(ValueError, match="height and width"):
        counting.flops(g)


SMALL = {
    "lambda_layer": LambdaSpec(d_in=16, d_out=16, k=4, heads=2, u=2, position="conv", r=5, conv_bias=True),
    "mhsa_layer": AttentionSpec(kind="mhsa", d_in=16, d_out=16, heads=2, size=(5, 6)),
    "axial_layer": AttentionSpec(kind="axial", d_in=8, d_out=16, heads=2, size=(5, 6)),
    "lambda_resnet26": zoo.get("lambda_resnet26", image_size=32).spec,
    # Table 10's ablation: no position embeddings / no keys in every lambda layer
    "lambda_resnet26_content_only": zoo.get("lambda_resnet26", image_size=32, lambda_terms="content").spec,
    "lambda_resnet26_position_only": zoo.get("lambda_resnet26", image_size=32, lambda_terms="position").spec,
    "efficientnet_b0": zoo.get("efficientnet_b0", image_size=32).spec,
}


def _trainable_count(framework, model):
    if framework == "torch":
        return sum(p.numel() for p in model.parameters())
    if framework == "tensorflow":
        return int(sum(np.prod(v.shape) for v in model.trainable_weights))
    from flax import nnx

    return int(sum(np.prod(v.shape) for v in __import__("jax").tree_util.tree_leaves(nnx.state(model, nnx.Param))))


@pytest.mark.parametrize("framework", framework_params())
@pytest.mark.parametrize("name", list(SMALL))
def test_built_models_hold_the_analytic_parameter_count(framework, name):
    spec = SMALL[name]
    model = get_backend(framework).build(spec)
    assert _trainable_count(framework, model) == counting.params(spec)


@pytest.mark.parametrize("name", ["resnet26", "efficientnet_b0"])
def test_analytic_flops_equal_torch_flop_counter(name):
    """Conv-only models: torch's FlopCounterMode counts convolutions and matmuls, 2 per
    multiply-add, exactly what the analytic count counts."""
    torch = pytest.importorskip("torch")
    from torch.utils.flop_counter import FlopCounterMode

    spec = zoo.get(name, image_size=64).spec
    model = get_backend("torch").build(spec).eval()
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(torch.zeros(1, 3, 64, 64))
    assert counter.get_total_flops() == counting.flops(spec, 64)


def test_models_json_lists_every_preset():
    out = subprocess.run([sys.executable, "-m", "lambda_bench", "models", "--json"], capture_output=True,
                         text=True, check=True)
    rows = {r["name"]: r for r in json.loads(out.stdout)["models"]}
    assert set(rows) == set(zoo.MODELS)
    for p in zoo.TABLE12_PLACEMENTS:
        assert f"lambda_resnet50_{p}" in rows
    for depth in (101, 152, 200, 270, 350, 420):
        assert rows[f"lambda_resnet{depth}"]["family"] == "lambda_resnet"
    for mixer in ("mhsa", "sasa", "axial"):
        assert rows[f"{mixer}_resnet50"]["params"] > 0
    assert {f"efficientnet_b{i}" for i in range(8)} <= set(rows)
    assert rows["resnet50"]["params"] == 25_557_032
