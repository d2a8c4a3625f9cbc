"""Peers as implementations: each peer layer built from canonical weights (implementations/<framework>/
peers.py, through the inverse mappings of lambda_bench/peers.py) computes our function, the proof that
the peers preset compares like with like.

Against the float64 reference on the same weights (BatchNorm statistics and the convolution bias
randomised, so nothing is an identity): the output in eval and in train mode, the running statistics
after a train-mode forward, and the gradients of sum(y * cotangent) with respect to the input and every
parameter. Then the backends' prepare(..., implementation=...) wraps the peer in the ordinary step, which
starts from the same numbers as ours for one seed; and what a peer cannot compute is refused.
"""

from __future__ import annotations

import copy
import os

import numpy as np
import pytest

from conftest import require_or_skip
from lambda_bench import peers, reference, runner
from lambda_bench.equivalence import relative_error
from lambda_bench.measure import steps
from lambda_bench.specs import LambdaSpec
from lambda_bench.weights import init_lambda, randomize_state

OUTPUT_TOL = 1e-5  # max|peer - ref| / max|ref|, peers in float32
GRADIENT_TOL = 1e-4
SEED = 0

# id -> (implementation, spec, (batch, height, width)): both position forms, |u| > 1 where the peer has
# it, d_in != d_out, stride 2, non-square inputs where the peer takes them
CASES = {
    "timm-conv": ("timm", LambdaSpec(d_in=16, d_out=16, k=8, heads=2, position="conv", r=5, conv_bias=True),
                  (2, 5, 6)),
    "timm-conv-stride2": ("timm", LambdaSpec(d_in=16, d_out=16, k=8, heads=2, position="conv", r=3,
                                             conv_bias=True, stride=2, pool=2), (2, 6, 7)),
    "timm-global": ("timm", LambdaSpec(d_in=16, d_out=16, k=8, heads=2, position="global", size=(4, 5)),
                    (2, 4, 5)),
    "lambda_networks-conv-u2": ("lambda_networks", LambdaSpec(d_in=12, d_out=16, k=4, heads=2, u=2, position="conv",
                                                              r=3, conv_bias=True), (2, 5, 6)),
    "lambda_networks-global": ("lambda_networks", LambdaSpec(d_in=12, d_out=16, k=4, heads=2, position="global",
                                                             size=(4, 4)), (2, 4, 4)),
    "lambda_networks_keras-conv-u2": ("lambda_networks_keras", LambdaSpec(
        d_in=12, d_out=16, k=4, heads=2, u=2, position="conv", r=3, conv_bias=True, bn_eps=1e-3, bn_momentum=0.01),
        (2, 5, 6)),
}


def _require(implementation: str):
    framework = peers.PEERS[implementation]["framework"]
    require_or_skip(framework, framework)
    require_or_skip(peers.PEERS[implementation]["module"], "peers")


def _build(implementation: str, spec: LambdaSpec, weights: dict):
    if peers.PEERS[implementation]["framework"] == "torch":
        from implementations.torch.peers import PeerLayer
    else:
        from implementations.tensorflow.peers import PeerLayer
    layer = PeerLayer(implementation, spec, SEED)
    layer.load_canonical(weights)
    return layer


def _run_torch(layer, x: np.ndarray, cotangent: np.ndarray, train: bool):
    """(y NHWC, gradients keyed "input" and canonical names, the layer's canonical weights after)."""
    import torch

    layer.train(train)
    x_t = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous().requires_grad_()
    y = layer(x_t)
    params = list(layer.parameters())
    cot = torch.from_numpy(cotangent).permute(0, 3, 1, 2)
    d_x, *d_params = torch.autograd.grad(y, [x_t, *params], grad_outputs=cot)
    # the peer's parameters replaced by their gradients, read through the same mapping: the gradients
    # in canonical names and layouts (the mapping only slices and transposes)
    twin = copy.deepcopy(layer)
    with torch.no_grad():
        for p, g in zip(twin.parameters(), d_params):
            p.copy_(g)
    grads = {name: a for name, a in twin.export_canonical().items()
             if not name.endswith(("running_mean", "running_var"))}
    grads["input"] = d_x.permute(0, 2, 3, 1).numpy()
    return y.detach().permute(0, 2, 3, 1).numpy(), grads, layer.export_canonical()


def _run_keras(layer, x: np.ndarray, cotangent: np.ndarray, train: bool):
    """The TensorFlow backend's own forward / forward_backward: the peer fits its interface."""
    from lambda_bench.backend import get_backend

    backend = get_backend("tensorflow")
    if not train:
        return backend.forward(layer, x, train=False), None, layer.export_canonical()
    y, grads = backend.forward_backward(layer, x, cotangent)
    return y, grads, layer.export_canonical()


@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
@pytest.mark.parametrize("name", list(CASES))
def test_peer_built_from_canonical_weights_computes_our_function(name, train):
    implementation, spec, (b, h, w) = CASES[name]
    _require(implementation)
    assert peers.unsupported(implementation, spec) is None
    weights = randomize_state(init_lambda(spec, SEED), SEED)
    rng = np.random.default_rng(SEED)
    x = rng.standard_normal((b, h, w, spec.d_in)).astype(np.float32)
    cotangent = rng.standard_normal(spec.output_shape(b, h, w)).astype(np.float32)
    layer = _build(implementation, spec, weights)
    assert {k: v.shape for k, v in layer.export_canonical().items()} == {k: v.shape for k, v in weights.items()}
    run = _run_torch if peers.PEERS[implementation]["framework"] == "torch" else _run_keras
    y, grads, after = run(layer, x, cotangent, train)

    y_ref, ref_grads, ref_running = reference.forward_backward(spec, weights, x, cotangent, train=train)
    err = relative_error(y, y_ref)
    assert err <= OUTPUT_TOL, f"{name}: output error {err:.2e}"
    if grads is not None:
        assert set(grads) == set(ref_grads), name
        for key, ref in ref_grads.items():
            err = relative_error(grads[key], ref)
            assert err <= GRADIENT_TOL, f"{name}: gradient of {key} error {err:.2e}"
    if not train:
        for key in (k for k in weights if k.endswith(("running_mean", "running_var"))):
            np.testing.assert_array_equal(after[key], weights[key], err_msg=f"eval mode changed {key}")
        return
    for key, value in ref_running.items():
        expected = np.asarray(value, np.float64)
        if implementation == "lambda_networks_keras" and key.endswith("running_var"):
            # Keras feeds the biased batch variance into its moving variance (PyTorch and our spec the
            # unbiased one): the batch term scaled by (N - 1) / N, N = values per channel
            m, count, old = spec.bn_momentum, b * h * w, weights[key].astype(np.float64)
            expected = (1 - m) * old + (expected - (1 - m) * old) * (count - 1) / count
        err = relative_error(after[key], expected)
        assert err <= OUTPUT_TOL, f"{name}: running statistic {key} error {err:.2e}"


@pytest.mark.parametrize("implementation", list(peers.PEERS))
def test_prepare_measures_the_peer_from_the_same_weights_as_ours(implementation):
    """The backend's ordinary step around the peer: same synthetic batch, same starting weights as ours
    for the seed, so the infer steps agree; a train step runs and changes the weights."""
    _require(implementation)
    from lambda_bench.backend import get_backend

    framework = peers.PEERS[implementation]["framework"]
    backend = get_backend(framework)
    case = runner.zoo_case("lambda_conv", 8, 2, (("conv_bias", True), ("r", 5)))
    compile = steps.COMPILE_MODES[framework][0]
    mine = backend.prepare(case, mode="infer", compile=compile)
    theirs = backend.prepare(case, mode="infer", compile=compile, implementation=implementation)
    assert type(theirs) is type(mine)
    mine.step()
    theirs.step()
    err = relative_error(theirs._output(), mine._output())
    assert err <= OUTPUT_TOL, f"{implementation}: infer step output differs from ours by {err:.2e}"
    train = backend.prepare(case, mode="train", compile=compile, implementation=implementation)
    before = train._weights()
    train.step()
    assert np.isfinite(train.loss())
    after = train._weights()
    assert any(not np.array_equal(after[k], before[k]) for k in before if k.endswith("weight"))


def test_what_a_peer_cannot_compute_is_unsupported():
    conv = LambdaSpec(d_in=16, d_out=16, position="conv", r=5, conv_bias=True)
    assert peers.unsupported("timm", conv) is None
    assert "bias" in peers.unsupported("timm", conv.replace(conv_bias=False))
    assert "|u| is fixed at 1" in peers.unsupported("timm", conv.replace(u=2))
    assert "d_in must equal d_out" in peers.unsupported("timm", conv.replace(d_in=8))
    assert "no stride" in peers.unsupported("lambda_networks", conv.replace(stride=2))
    glob = LambdaSpec(d_in=16, d_out=16, position="global", size=(4, 5))
    assert "square" in peers.unsupported("lambda_networks", glob)
    assert "absolute" in peers.unsupported("lambda_networks_keras", glob.replace(size=(4, 4)))
    assert "position-only" in peers.unsupported("timm", conv.replace(content=False))
    from lambda_bench import zoo
    assert "lambda layer only" in peers.unsupported("timm", zoo.MODELS["resnet26"])
    assert peers.unsupported("ours", zoo.MODELS["resnet26"]) is None


@pytest.mark.parametrize("framework,implementation", [("jax", "timm"), ("torch", "lambda_networks_keras"),
                                                      ("tensorflow", "timm")])
def test_prepare_refuses_a_peer_the_framework_lacks(framework, implementation):
    require_or_skip(framework, framework)
    from lambda_bench.backend import get_backend

    case = runner.zoo_case("lambda_conv", 8, 1, (("conv_bias", True),))
    with pytest.raises(steps.Unsupported, match=framework):
        get_backend(framework).prepare(case, implementation=implementation)


def test_the_keras_peer_is_refused_for_a_global_layer_by_prepare():
    require_or_skip("tensorflow", "tensorflow")
    require_or_skip("lambda_networks", "peers")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from lambda_bench.backend import get_backend

    with pytest.raises(steps.Unsupported, match="absolute"):
        get_backend("tensorflow").prepare(runner.zoo_case("lambda", 8, 1), implementation="lambda_networks_keras")
