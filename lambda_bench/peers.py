"""Other people's lambda layers ("peers") as implementations of our cases: which exist (``PEERS``), what
each can compute (``unsupported``), and the weight mappings both ways, framework-neutral.

Canonical -> peer: ``<peer>_arguments(spec)`` (the peer's constructor arguments) and ``to_<peer>(spec,
weights)`` (its state in its own names and layouts, NumPy; the Keras layer: ``KERAS_VARIABLES``);
implementations/<framework>/peers.py builds the peer from them, so that it starts from the same
numbers as our layer. Peer -> canonical: each ``from_*`` function reads a peer layer and returns
``(spec, weights)``: the LambdaSpec that describes the same computation and the canonical float32
weights, running statistics included. They are pure (the peer is not modified) and refuse, with
ValueError, any peer configuration the canonical format cannot express. Importing this module
imports no framework; the peer objects carry their own.

Peers (the conventions that differ from ours are handled here):

timm ``timm.layers.lambda_layer.LambdaLayer`` (Wightman), NCHW:
    * one fused 1x1 conv ``qkv`` whose output channels are [heads*k | k | v]: queries head-major
      (channel = head * k + key), then the keys and values of the single intra-depth slot (timm
      fixes |u| = 1). We split it into to_q / to_k / to_v. ``qkv_bias=True`` has no canonical form.
    * the lambda convolution is ``Conv3d(1, k, (r, r, 1))`` over the values viewed as
      (B, 1, H, W, |v|): an r x r kernel over (H, W), width 1 over the value axis, so the same
      kernel for every value channel. Its weight (k, 1, r, r, 1) is our (k, u=1, r, r); it has a
      bias (k,) -> conv_bias=True.
    * the global form (``r=None, feat_size=(H, W)``) has a (2H-1, 2W-1, k) table indexed at
      pos(m) - pos(n) + (H-1, W-1), our convention; we add the u = 1 axis.
    * stride 2 is ``AvgPool2d(2, 2)`` after the layer -> stride=2, pool=2.
    * BatchNorm2d defaults: eps 1e-5, momentum 0.1 (PyTorch convention, as ours).
lucidrains ``lambda_networks.LambdaLayer`` (torch), NCHW:
    * separate bias-free 1x1 convs to_q (h k), to_k (u k), to_v (u v): our channel orders exactly.
    * the lambda convolution is ``Conv3d(u, k, (1, r, r))`` over values (B, u, |v|, H, W):
      weight (k, u, 1, r, r) -> our (k, u, r, r); bias (k,) -> conv_bias=True.
    * global form: ``rel_pos_emb`` (2n-1, 2n-1, k, u), square n x n inputs only, indexed at
      pos(m) - pos(n) + (n-1, n-1): our layout as is.
lucidrains ``lambda_networks.tfkeras.LambdaLayer`` (Keras), NHWC:
    * Conv2D kernels (1, 1, d_in, out) -> our (out, d_in).
    * the lambda convolution is ``Conv3D(k, (1, r, r), padding="same")`` over values rearranged to
      (B, |v|, H, W, u) channels-last: kernel (1, r, r, u, k) -> our (k, u, r, r); bias (k,).
    * Keras BatchNormalization: epsilon 1e-3 and momentum 0.99 in Keras' convention
      (moving = momentum * moving + (1 - momentum) * batch) -> bn_eps=1e-3, bn_momentum=0.01.
      Keras updates the moving variance with the *biased* batch variance; PyTorch and our spec use
      the unbiased one, so running variances after a training step differ by a factor N/(N-1) on
      the batch term (outputs do not: both normalise with the biased variance).
    * its global form (``n=...``) holds an ABSOLUTE (n, n, k, u) table with n = H*W positions, one
      free embedding per (query, context) pair, not a relative one: it has no canonical form and
      ``from_lucidrains_keras`` refuses it.
"""

from __future__ import annotations

import importlib.util
from typing import Any

import numpy as np

from .specs import LambdaSpec

Weights = dict[str, np.ndarray]

# Whose code computes a case (a sweep's ``implementations``): ours, or a peer's layer built from the
# case's canonical weights by implementations/<framework>/peers.py. Each peer: its framework and the
# module it needs (the ``peers`` extra).
OURS = "ours"
PEERS: dict[str, dict[str, str]] = {
    "timm": {"framework": "torch", "module": "timm", "layer": "timm.layers.lambda_layer.LambdaLayer"},
    "lambda_networks": {"framework": "torch", "module": "lambda_networks", "layer": "lambda_networks.LambdaLayer"},
    "lambda_networks_keras": {"framework": "tensorflow", "module": "lambda_networks",
                              "layer": "lambda_networks.tfkeras.LambdaLayer"},
}
IMPLEMENTATIONS = (OURS, *PEERS)


def exists_in(implementation: str, framework: str) -> bool:
    """Whether ``implementation`` has code in ``framework`` (ours: every framework)."""
    return implementation == OURS or PEERS.get(implementation, {}).get("framework") == framework


def missing(implementation: str) -> str | None:
    """Why ``implementation`` cannot be imported here (its package not installed), or None."""
    if implementation == OURS:
        return None
    module = PEERS[implementation]["module"]
    if importlib.util.find_spec(module) is None:
        return f"implementation={implementation!r} needs {module}, not installed (pip install 'lambda-bench[peers]')"
    return None


def unsupported(implementation: str, spec: Any) -> str | None:
    """Why the peer cannot compute ``spec`` exactly, or None. A peer only builds a lambda layer whose
    every option it has; nothing is approximated (a missing bias is not zeroed in, a different pooling
    is not swapped for its own)."""
    if implementation == OURS:
        return None
    from . import families

    family = families.family_of(spec)
    if family.name != "lambda":
        return f"{implementation} has a lambda layer only, not a {family.name} {family.kind}"
    s = spec
    why = []
    if not s.content:
        why.append("no position-only form (content=false)")
    if s.position == "none":
        why.append("no content-only form (position='none')")
    if s.position == "conv" and not s.conv_bias:
        why.append("its lambda convolution always has a bias (set conv_bias=true)")
    if implementation == "timm":
        if s.u != 1:
            why.append(f"|u| is fixed at 1 (u={s.u})")
        if s.d_in != s.d_out:
            why.append(f"its forward reshapes the output to the input's channels: d_in must equal d_out "
                       f"({s.d_in} != {s.d_out})")
        if s.stride == 2 and s.pool != 2:
            why.append(f"stride 2 is a 2x2 average pool (pool={s.pool})")
    else:
        if s.stride != 1:
            why.append("no stride (no pooling after the layer)")
        if implementation == "lambda_networks" and s.position == "global" and s.size[0] != s.size[1]:
            why.append(f"its global form takes square inputs only (size {s.size[0]}x{s.size[1]})")
        if implementation == "lambda_networks_keras" and s.position == "global":
            why.append("its global form is an absolute (n, n, k, u) table over n = H*W positions, not relative "
                       "embeddings")
    return f"{implementation} cannot compute this layer: {'; '.join(why)}" if why else None


# --- canonical weights -> a peer (the inverse of the from_* mappings below) -------------------------


def timm_arguments(spec: LambdaSpec) -> dict[str, Any]:
    """timm LambdaLayer(**these) for ``spec``."""
    conv = spec.position == "conv"
    return dict(dim=spec.d_in, dim_out=spec.d_out, feat_size=None if conv else tuple(spec.size),
                stride=spec.stride, num_heads=spec.heads, dim_head=spec.k, r=spec.r if conv else None)


def to_timm(spec: LambdaSpec, w: Weights) -> Weights:
    """Canonical weights -> timm's state dict (NumPy): q, k, v fused into one 1x1 conv."""
    qkv = np.concatenate([w["to_q.weight"], w["to_k.weight"], w["to_v.weight"]])
    out: Weights = {"qkv.weight": qkv[:, :, None, None]}
    out.update(_norms(w))
    if spec.position == "conv":
        out["conv_lambda.weight"] = w["pos_conv.weight"][:, :, :, :, None]  # (k, 1, r, r, 1)
        out["conv_lambda.bias"] = w["pos_conv.bias"]
    else:
        out["pos_emb"] = w["rel_pos_emb"][..., 0]
    return out


def lucidrains_arguments(spec: LambdaSpec) -> dict[str, Any]:
    """lambda_networks.LambdaLayer(**these) for ``spec`` (the Keras layer: the same without ``dim``)."""
    conv = spec.position == "conv"
    return dict(dim=spec.d_in, dim_k=spec.k, n=None if conv else spec.size[0], r=spec.r if conv else None,
                heads=spec.heads, dim_out=spec.d_out, dim_u=spec.u)


def to_lucidrains(spec: LambdaSpec, w: Weights) -> Weights:
    """Canonical weights -> lambda_networks' state dict (NumPy): our names and channel orders."""
    out: Weights = {f"{name}.weight": w[f"{name}.weight"][:, :, None, None] for name in ("to_q", "to_k", "to_v")}
    out.update(_norms(w))
    if spec.position == "conv":
        out["pos_conv.weight"] = w["pos_conv.weight"][:, :, None]  # (k, u, 1, r, r)
        out["pos_conv.bias"] = w["pos_conv.bias"]
    else:
        out["rel_pos_emb"] = w["rel_pos_emb"]
    return out


# canonical name -> (Keras attribute path, canonical -> Keras layout, Keras -> canonical layout)
_KERAS_NORM = {"weight": "gamma", "bias": "beta", "running_mean": "moving_mean", "running_var": "moving_variance"}
KERAS_VARIABLES: dict[str, tuple[tuple[str, str], Any, Any]] = {
    **{f"{p}.weight": ((p, "kernel"), lambda a: a.T[None, None], lambda a: a[0, 0].T)  # (1, 1, in, out)
       for p in ("to_q", "to_k", "to_v")},
    **{f"{p}.{ours}": ((p, theirs), lambda a: a, lambda a: a) for p in ("norm_q", "norm_v")
       for ours, theirs in _KERAS_NORM.items()},
    "pos_conv.weight": (("pos_conv", "kernel"), lambda a: a.transpose(2, 3, 1, 0)[None],  # (1, r, r, u, k)
                        lambda a: a[0].transpose(3, 2, 0, 1)),
    "pos_conv.bias": (("pos_conv", "bias"), lambda a: a, lambda a: a),
}


def _norms(w: Weights) -> Weights:
    return {name: w[name] for name in w if name.startswith(("norm_q.", "norm_v."))}


def _np(t) -> np.ndarray:
    """A float32 NumPy copy of a torch tensor or a Keras/TF variable."""
    if hasattr(t, "detach"):  # torch
        t = t.detach().cpu().numpy()
    elif hasattr(t, "numpy"):  # Keras variable / tf.Tensor
        t = t.numpy()
    return np.array(t, dtype=np.float32)  # np.array copies


def _torch_bn(bn, prefix: str) -> tuple[Weights, float, float]:
    if not (bn.affine and bn.track_running_stats):
        raise ValueError(f"{prefix}: a BatchNorm without affine parameters or running statistics has no canonical form")
    if bn.momentum is None:
        raise ValueError(f"{prefix}: momentum=None (cumulative average) has no canonical form")
    w = {f"{prefix}.{name}": _np(getattr(bn, name)) for name in ("weight", "bias", "running_mean", "running_var")}
    return w, float(bn.eps), float(bn.momentum)


def _keras_bn(bn, prefix: str) -> tuple[Weights, float, float]:
    if not (bn.center and bn.scale) or getattr(bn, "renorm", False) or tuple(np.atleast_1d(bn.axis)) != (-1,):
        raise ValueError(f"{prefix}: only a channels-last BatchNormalization with center and scale maps")
    w = {
        f"{prefix}.weight": _np(bn.gamma),
        f"{prefix}.bias": _np(bn.beta),
        f"{prefix}.running_mean": _np(bn.moving_mean),
        f"{prefix}.running_var": _np(bn.moving_variance),
    }
    return w, float(bn.epsilon), 1.0 - float(bn.momentum)  # Keras' momentum is 1 - PyTorch's


def _same_bn(a: tuple[float, float], b: tuple[float, float]) -> tuple[float, float]:
    if not np.allclose(a, b, rtol=1e-7, atol=0):
        raise ValueError(f"norm_q and norm_v disagree on (eps, momentum): {a} vs {b}; the spec has one of each")
    return a


def _conv1x1(conv) -> np.ndarray:
    """torch Conv2d 1x1 weight (out, in, 1, 1) -> (out, in)."""
    if tuple(conv.kernel_size) != (1, 1) or conv.bias is not None:
        raise ValueError("projection: expected a bias-free 1x1 convolution")
    return _np(conv.weight)[:, :, 0, 0]


def from_timm(module) -> tuple[LambdaSpec, Weights]:
    """timm.layers.lambda_layer.LambdaLayer -> (spec, canonical weights)."""
    import torch.nn as nn

    heads, k, v = module.num_heads, module.dim_qk, module.dim_v
    if module.qkv.bias is not None:
        raise ValueError("timm qkv_bias=True: the canonical layer has bias-free projections")
    qkv = _conv1x1(module.qkv)  # (heads*k + k + v, d_in)
    if qkv.shape[0] != heads * k + k + v:
        raise ValueError(f"timm qkv has {qkv.shape[0]} output channels, expected heads*k + k + v")
    w: Weights = {
        "to_q.weight": qkv[: heads * k],
        "to_k.weight": qkv[heads * k : heads * k + k],  # u = 1
        "to_v.weight": qkv[heads * k + k :],
    }
    wq, *bn_q = _torch_bn(module.norm_q, "norm_q")
    wv, *bn_v = _torch_bn(module.norm_v, "norm_v")
    w.update(wq)
    w.update(wv)
    eps, momentum = _same_bn(bn_q, bn_v)

    if module.conv_lambda is not None:
        conv = module.conv_lambda  # Conv3d(1, k, (r, r, 1)) over (B, 1, H, W, V)
        r = conv.kernel_size[0]
        if (tuple(conv.kernel_size) != (r, r, 1) or tuple(conv.padding) != (r // 2, r // 2, 0)
                or tuple(conv.stride) != (1, 1, 1) or tuple(conv.dilation) != (1, 1, 1) or r % 2 == 0):
            raise ValueError(f"timm conv_lambda: kernel {conv.kernel_size}, padding {conv.padding} is not an r x r lambda convolution")
        w["pos_conv.weight"] = _np(conv.weight)[:, :, :, :, 0]  # (k, 1, r, r, 1) -> (k, u=1, r, r)
        position = dict(position="conv", r=r, conv_bias=conv.bias is not None)
        if conv.bias is not None:
            w["pos_conv.bias"] = _np(conv.bias)
    else:
        w["rel_pos_emb"] = _np(module.pos_emb)[..., None]  # (2H-1, 2W-1, k) -> (.., k, u=1)
        position = dict(position="global", size=tuple(module.feat_size))

    if isinstance(module.pool, nn.Identity):
        stride = dict(stride=1)
    elif (isinstance(module.pool, nn.AvgPool2d) and module.pool.kernel_size in (2, (2, 2))
          and module.pool.stride in (2, (2, 2)) and module.pool.padding in (0, (0, 0)) and not module.pool.ceil_mode):
        stride = dict(stride=2, pool=2)
    else:
        raise ValueError(f"timm pool={module.pool!r}: only Identity or AvgPool2d(2, 2) map")

    spec = LambdaSpec(d_in=qkv.shape[1], d_out=heads * v, k=k, heads=heads, u=1, **position, **stride,
                      bn_eps=eps, bn_momentum=momentum)
    return spec, w


def from_lucidrains(module) -> tuple[LambdaSpec, Weights]:
    """lambda_networks.LambdaLayer (PyTorch) -> (spec, canonical weights)."""
    heads, u = module.heads, module.u
    w: Weights = {name + ".weight": _conv1x1(getattr(module, name)) for name in ("to_q", "to_k", "to_v")}
    wq, *bn_q = _torch_bn(module.norm_q, "norm_q")
    wv, *bn_v = _torch_bn(module.norm_v, "norm_v")
    w.update(wq)
    w.update(wv)
    eps, momentum = _same_bn(bn_q, bn_v)
    k = w["to_q.weight"].shape[0] // heads

    if module.local_contexts:
        conv = module.pos_conv  # Conv3d(u, k, (1, r, r)) over (B, u, V, H, W)
        r = conv.kernel_size[1]
        if (tuple(conv.kernel_size) != (1, r, r) or tuple(conv.padding) != (0, r // 2, r // 2)
                or tuple(conv.stride) != (1, 1, 1) or tuple(conv.dilation) != (1, 1, 1)):
            raise ValueError(f"lucidrains pos_conv: kernel {conv.kernel_size}, padding {conv.padding} is not an r x r lambda convolution")
        w["pos_conv.weight"] = _np(conv.weight)[:, :, 0]  # (k, u, 1, r, r) -> (k, u, r, r)
        position = dict(position="conv", r=r, conv_bias=conv.bias is not None)
        if conv.bias is not None:
            w["pos_conv.bias"] = _np(conv.bias)
    else:
        table = _np(module.rel_pos_emb)  # (2n-1, 2n-1, k, u), already our layout
        n = (table.shape[0] + 1) // 2
        w["rel_pos_emb"] = table
        position = dict(position="global", size=(n, n))

    spec = LambdaSpec(d_in=w["to_q.weight"].shape[1], d_out=w["to_v.weight"].shape[0] // u * heads, k=k,
                      heads=heads, u=u, **position, bn_eps=eps, bn_momentum=momentum)
    return spec, w


def from_lucidrains_keras(layer) -> tuple[LambdaSpec, Weights]:
    """lambda_networks.tfkeras.LambdaLayer -> (spec, canonical weights). The layer must be built
    (called once), since Keras creates its weights on the first call."""
    if not layer.local_contexts:
        raise ValueError("lucidrains Keras global form: its pos_emb is an absolute (n, n, k, u) table over "
                         "n = H*W positions, not relative embeddings; it has no canonical form")
    if not layer.built:
        raise ValueError("the Keras layer is not built: call it on an input once first")
    heads, u = layer.heads, layer.u

    def kernel(conv) -> np.ndarray:
        kern = _np(conv.kernel)  # (1, 1, d_in, out)
        if kern.shape[:2] != (1, 1) or conv.use_bias:
            raise ValueError("projection: expected a bias-free 1x1 Conv2D")
        return kern[0, 0].T

    w: Weights = {name + ".weight": kernel(getattr(layer, name)) for name in ("to_q", "to_k", "to_v")}
    wq, *bn_q = _keras_bn(layer.norm_q, "norm_q")
    wv, *bn_v = _keras_bn(layer.norm_v, "norm_v")
    w.update(wq)
    w.update(wv)
    eps, momentum = _same_bn(bn_q, bn_v)

    conv = layer.pos_conv  # Conv3D(k, (1, r, r), padding="same") over (B, V, H, W, u), channels last
    r = conv.kernel_size[1]
    if (tuple(conv.kernel_size) != (1, r, r) or r % 2 == 0 or conv.padding != "same"
            or tuple(conv.strides) != (1, 1, 1) or tuple(conv.dilation_rate) != (1, 1, 1)
            or conv.data_format != "channels_last"):
        raise ValueError(f"lucidrains Keras pos_conv: kernel {conv.kernel_size}, padding {conv.padding!r} is not an r x r lambda convolution")
    w["pos_conv.weight"] = _np(conv.kernel)[0].transpose(3, 2, 0, 1)  # (1, r, r, u, k) -> (k, u, r, r)
    if conv.use_bias:
        w["pos_conv.bias"] = _np(conv.bias)

    k = w["to_q.weight"].shape[0] // heads
    spec = LambdaSpec(d_in=w["to_q.weight"].shape[1], d_out=layer.out_dim, k=k, heads=heads, u=u,
                      position="conv", r=r, conv_bias=bool(conv.use_bias), bn_eps=eps, bn_momentum=momentum)
    return spec, w


def randomise_torch_batchnorm(module, seed: int):
    """Random gamma, beta, running mean and variance on a torch peer's norm_q and norm_v, so that
    eval mode is not an identity normalisation. Returns the module."""
    import torch

    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for bn in (module.norm_q, module.norm_v):
            c = bn.num_features
            bn.weight.copy_(0.5 + torch.rand(c, generator=g))
            bn.bias.copy_(0.2 * torch.randn(c, generator=g))
            bn.running_mean.copy_(0.2 * torch.randn(c, generator=g))
            bn.running_var.copy_(0.5 + torch.rand(c, generator=g))
    return module
