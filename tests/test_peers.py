"""Outside oracles: lambda layers that nobody here wrote, against our canonical layout and equations.

For each peer (timm's LambdaLayer, lucidrains' lambda-networks in PyTorch and in Keras) we build the
peer from a fixed seed, randomise its BatchNorm affine parameters and running statistics (so that
eval mode is not an identity normalisation), map its weights with lambda_bench.peers.from_* into
canonical weights, and run the same input through the peer and through lambda_bench.reference
(float64). Output error max|peer - ref| / max|ref| must be <= 1e-5 in eval mode and in train mode
(batch statistics); after a train step the peer's running statistics must be the reference's.
Where our PyTorch implementation is importable it loads the same mapped weights and must match the
peer too.

Where the peers' conventions differ from ours (details in lambda_bench/peers.py):
  * timm fuses q, k, v into one 1x1 conv with channels [heads*k | k | v] and fixes |u| = 1; its
    lambda convolution is Conv3d(1, k, (r, r, 1)) over values viewed (B, 1, H, W, |v|) with a bias;
    stride 2 is AvgPool2d(2, 2) after the layer. Its forward reshapes the output with the *input*
    channel count, so it only runs with dim == dim_out: every timm case here has dim == dim_out.
  * lucidrains (torch) matches our channel orders exactly; its lambda convolution is
    Conv3d(u, k, (1, r, r)) with a bias; its global form takes square n x n inputs only.
  * lucidrains (Keras) uses Keras BatchNormalization defaults (epsilon 1e-3, momentum 0.99, i.e.
    bn_eps=1e-3, bn_momentum=0.01 in our PyTorch convention) and updates the moving variance with
    the biased batch variance (PyTorch and our spec: unbiased). Its lambda convolution is a
    channels-last Conv3D with kernel (1, r, r, u, k) and a bias (zero-initialised: we randomise it).
    Its global form is not tested: its pos_emb is an ABSOLUTE (n, n, k, u) table over n = H*W
    positions, a free embedding per (query, context) pair rather than a relative one, so it has
    no canonical form (from_lucidrains_keras refuses it).
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import pytest

from conftest import require_or_skip  # noqa: E402

require_or_skip("timm", "peers")  # skipped without the peers extra; CI's full env requires it
require_or_skip("lambda_networks", "peers")

import torch  # noqa: E402  (timm and lambda-networks both need it)
from lambda_networks import LambdaLayer as LucidrainsLambda  # noqa: E402
from timm.layers.lambda_layer import LambdaLayer as TimmLambda  # noqa: E402

from lambda_bench import peers, reference  # noqa: E402
from lambda_bench.backend import get_backend  # noqa: E402
from lambda_bench.equivalence import relative_error  # noqa: E402
from lambda_bench.layout import relative_index  # noqa: E402
from lambda_bench.weights import validate  # noqa: E402

pytestmark = pytest.mark.peers

TOL = 1e-5  # max|peer - ref| / max|ref|, peers in float32
SEED = 0


# --- building randomised peers ------------------------------------------------------------------


def timm_layer(**kwargs) -> Callable[[tuple], Any]:
    def make(_shape):
        torch.manual_seed(SEED)
        return peers.randomise_torch_batchnorm(TimmLambda(**kwargs), SEED)  # conv_lambda.bias: torch's random init
    return make


def lucidrains_layer(dim: int, **kwargs) -> Callable[[tuple], Any]:
    def make(_shape):
        torch.manual_seed(SEED)
        with warnings.catch_warnings():  # its calc_rel_pos calls torch.meshgrid without indexing=
            warnings.simplefilter("ignore", UserWarning)
            return peers.randomise_torch_batchnorm(LucidrainsLambda(dim, **kwargs), SEED)
    return make


def keras_layer(dim: int, **kwargs) -> Callable[[tuple], Any]:
    def make(shape):
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        tf = require_or_skip("tensorflow", "tensorflow")  # not part of the peers extra
        from lambda_networks.tfkeras import LambdaLayer as KerasLambda

        tf.keras.utils.set_random_seed(SEED)
        layer = KerasLambda(**kwargs)
        layer(tf.zeros((*shape, dim)), training=False)  # Keras creates the weights on the first call
        rng = np.random.default_rng(SEED + 1)
        for bn in (layer.norm_q, layer.norm_v):
            c = bn.gamma.shape[0]
            bn.gamma.assign(rng.uniform(0.5, 1.5, c).astype(np.float32))
            bn.beta.assign(rng.normal(0.0, 0.2, c).astype(np.float32))
            bn.moving_mean.assign(rng.normal(0.0, 0.2, c).astype(np.float32))
            bn.moving_variance.assign(rng.uniform(0.5, 1.5, c).astype(np.float32))
        layer.pos_conv.bias.assign(rng.normal(0.0, 0.2, layer.pos_conv.bias.shape).astype(np.float32))
        return layer
    return make


def run_torch(module, x: np.ndarray, train: bool) -> np.ndarray:
    module.train(train)
    with torch.no_grad():
        y = module(torch.from_numpy(x).permute(0, 3, 1, 2).contiguous())  # peers are NCHW
    return y.permute(0, 2, 3, 1).numpy()


def run_keras(layer, x: np.ndarray, train: bool) -> np.ndarray:
    import tensorflow as tf

    return layer(tf.constant(x), training=train).numpy()  # NHWC already


@dataclass(frozen=True)
class Case:
    make: Callable[[tuple], Any]  # input shape (b, h, w) -> a randomised peer
    to_canonical: Callable[[Any], tuple]  # peer -> (spec, weights)
    run: Callable[[Any, np.ndarray, bool], np.ndarray]  # (peer, x NHWC, train) -> y NHWC
    shape: tuple[int, int, int]  # (batch, height, width)
    expect: dict = field(default_factory=dict)  # spec fields the mapping must infer
    biased_running_var: bool = False  # Keras: moving variance updated with the biased batch variance


CASES = {
    # lambda convolution, odd non-square input; timm's Conv3d has a bias -> conv_bias=True
    "timm-conv-r5": Case(timm_layer(dim=32, dim_out=32, num_heads=4, dim_head=16, r=5), peers.from_timm,
                         run_torch, (2, 7, 9), dict(position="conv", r=5, u=1, conv_bias=True, stride=1)),
    # stride 2: timm's AvgPool2d(2, 2) (floor: 7x9 -> 3x4) is our pool=2
    "timm-conv-r7-stride2": Case(timm_layer(dim=32, num_heads=4, dim_head=16, r=7, stride=2), peers.from_timm,
                                 run_torch, (2, 7, 9), dict(position="conv", r=7, stride=2, pool=2)),
    # global relative embeddings (timm marks this path "not fully verified"): our table convention
    "timm-global-5x6": Case(timm_layer(dim=32, num_heads=4, dim_head=8, r=None, feat_size=(5, 6)),
                            peers.from_timm, run_torch, (2, 5, 6), dict(position="global", size=(5, 6))),
    "lucidrains-conv-r5-u1": Case(lucidrains_layer(24, dim_k=16, r=5, heads=4, dim_out=32, dim_u=1),
                                  peers.from_lucidrains, run_torch, (2, 7, 9),
                                  dict(position="conv", r=5, u=1, d_in=24, d_out=32, conv_bias=True)),
    "lucidrains-conv-r7-u4": Case(lucidrains_layer(24, dim_k=8, r=7, heads=2, dim_out=16, dim_u=4),
                                  peers.from_lucidrains, run_torch, (2, 7, 9),
                                  dict(position="conv", r=7, u=4, d_in=24, d_out=16, conv_bias=True)),
    # lucidrains' global form: square n x n inputs only
    "lucidrains-global-n5-u1": Case(lucidrains_layer(24, dim_k=16, n=5, heads=4, dim_out=32, dim_u=1),
                                    peers.from_lucidrains, run_torch, (2, 5, 5),
                                    dict(position="global", size=(5, 5), u=1)),
    "lucidrains-global-n5-u4": Case(lucidrains_layer(24, dim_k=8, n=5, heads=2, dim_out=16, dim_u=4),
                                    peers.from_lucidrains, run_torch, (2, 5, 5),
                                    dict(position="global", size=(5, 5), u=4)),
    # Keras: conv form only (see the module docstring); BatchNormalization defaults
    "keras-conv-r5-u1": Case(keras_layer(24, dim_k=16, r=5, heads=4, dim_out=32, dim_u=1),
                             peers.from_lucidrains_keras, run_keras, (2, 7, 9),
                             dict(position="conv", r=5, u=1, conv_bias=True, bn_eps=1e-3, bn_momentum=0.01),
                             biased_running_var=True),
    "keras-conv-r3-u4": Case(keras_layer(24, dim_k=8, r=3, heads=2, dim_out=16, dim_u=4),
                             peers.from_lucidrains_keras, run_keras, (2, 7, 9),
                             dict(position="conv", r=3, u=4, conv_bias=True, bn_eps=1e-3, bn_momentum=0.01),
                             biased_running_var=True),
}
TRAIN = pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])


def _setup(name: str):
    case = CASES[name]
    peer = case.make(case.shape)
    spec, w = case.to_canonical(peer)
    validate(spec, w)
    for key, value in case.expect.items():  # the mapping infers the spec from the peer alone
        actual = getattr(spec, key)
        same = actual == pytest.approx(value) if isinstance(value, float) else actual == value
        assert same, f"{name}: mapped spec has {key}={actual!r}, expected {value!r}"
    x = np.random.default_rng(SEED).normal(size=(*case.shape, spec.d_in)).astype(np.float32)
    return case, peer, spec, w, x


def _expected_peer_running(case: Case, spec, w: dict, ref_running: dict, count: int) -> dict:
    """The reference's running statistics in the peer's convention. Keras feeds the biased batch
    variance into its moving variance: recover the unbiased batch term from the reference's update
    and scale it by (N-1)/N."""
    if not case.biased_running_var:
        return ref_running
    m = spec.bn_momentum
    out = dict(ref_running)
    for prefix in ("norm_q", "norm_v"):
        old = w[f"{prefix}.running_var"].astype(np.float64)
        unbiased = (ref_running[f"{prefix}.running_var"] - (1 - m) * old) / m
        out[f"{prefix}.running_var"] = (1 - m) * old + m * unbiased * (count - 1) / count
    return out


# --- the tests ----------------------------------------------------------------------------------


@TRAIN
@pytest.mark.parametrize("name", list(CASES))
def test_peer_matches_reference(name, train):
    case, peer, spec, w, x = _setup(name)
    y_peer = case.run(peer, x, train)
    y_ref, ref_running = reference.forward(spec, w, x, train)
    assert y_peer.shape == y_ref.shape
    err = relative_error(y_peer, y_ref)
    assert err <= TOL, f"{name} {'train' if train else 'eval'}: output error {err:.2e}"

    _, after = case.to_canonical(peer)  # the peer's state after the forward, mapped again
    if train:
        expected = _expected_peer_running(case, spec, w, ref_running, count=int(np.prod(case.shape)))
        for key, value in expected.items():
            err = relative_error(after[key], value)
            assert err <= TOL, f"{name}: running statistic {key} error {err:.2e}"
    else:
        for key in ("norm_q.running_mean", "norm_q.running_var", "norm_v.running_mean", "norm_v.running_var"):
            np.testing.assert_array_equal(after[key], w[key], err_msg=f"eval mode changed {key}")


@TRAIN
@pytest.mark.parametrize("name", list(CASES))
def test_torch_backend_matches_peer(name, train):
    """Our PyTorch layer with the peer's mapped weights: the same output as the peer, and after a
    train-mode forward the running statistics of the spec's convention (the reference's)."""
    be = get_backend("torch")
    case, peer, spec, w, x = _setup(name)
    be.configure()
    model = be.build(spec)
    be.load_weights(model, w)
    y_ours = be.forward(model, x, train=train)
    y_peer = case.run(peer, x, train)
    err = relative_error(y_ours, y_peer)
    assert err <= TOL, f"{name} {'train' if train else 'eval'}: ours vs peer output error {err:.2e}"
    if train:
        _, ref_running = reference.forward(spec, w, x, True)
        ours = be.export_weights(model)
        for key, value in ref_running.items():
            err = relative_error(ours[key], value)
            assert err <= TOL, f"{name}: running statistic {key} error {err:.2e}"


def test_peer_relative_tables_use_our_index():
    """Both torch peers' global forms index their (2H-1)x(2W-1) table at pos(m) - pos(n) + (H-1, W-1)
    for query n and context m, row-major positions: lambda_bench.layout.relative_index exactly."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        timm = TimmLambda(dim=8, num_heads=2, dim_head=4, r=None, feat_size=(3, 5))
        lucid = LucidrainsLambda(8, dim_k=4, n=4, heads=2)
    idx = timm.rel_pos_indices.numpy()  # (2, M, M): (dy, dx) already shifted
    np.testing.assert_array_equal(idx[0] * (2 * 5 - 1) + idx[1], relative_index(3, 5))
    rel = lucid.rel_pos.numpy()  # (M, M, 2)
    np.testing.assert_array_equal(rel[..., 0] * (2 * 4 - 1) + rel[..., 1], relative_index(4, 4))


def test_unmappable_peers_are_refused():
    """Configurations with no canonical form raise ValueError instead of mapping silently wrong."""
    with pytest.raises(ValueError, match="qkv_bias"):
        peers.from_timm(TimmLambda(dim=8, num_heads=2, dim_head=4, r=3, qkv_bias=True))
    layer = LucidrainsLambda(8, dim_k=4, r=3, heads=2)
    layer.norm_v.momentum = None  # cumulative moving average
    with pytest.raises(ValueError, match="momentum=None"):
        peers.from_lucidrains(layer)


def test_keras_global_form_is_refused():
    """lucidrains' Keras global form learns an absolute (n, n, k, u) table over n = H*W positions (here
    16 x 16 for a 4x4 input): a free embedding per (query, context) pair, not a relative one."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    tf = require_or_skip("tensorflow", "tensorflow")
    from lambda_networks.tfkeras import LambdaLayer as KerasLambda

    layer = KerasLambda(dim_k=4, n=16, heads=2, dim_out=8)
    layer(tf.zeros((1, 4, 4, 8)))
    assert tuple(layer.pos_emb.shape) == (16, 16, 4, 1)
    with pytest.raises(ValueError, match="absolute"):
        peers.from_lucidrains_keras(layer)
