"""The float64 NumPy oracle: the lambda layer written from the paper's equations, forward and backward.

Plain on purpose: dense (n, m) embeddings even for the lambda convolution, one einsum per equation,
a hand-derived backward pass (checked against finite differences in tests/test_reference.py).
Layout NHWC; weights use the canonical names and layouts of lambda_bench.weights.

Notation (paper, section 3): n query positions, m context positions (all of them: the convolution is
a dense E that is zero outside the r x r window), k query/key depth, v value depth, h heads (queries
sharing one lambda), u intra-depth.
    q = BN(x W_Q)                      (b, n, h, k)
    K = softmax_m(x W_K)               (b, m, u, k)   softmax over context positions, per (u, k)
    V = BN(x W_V)                      (b, m, u, v)
    content lambda     l_c  = sum_{m,u} K V                    (b, k, v)
    position lambdas   l_p  = sum_{m,u} E[n, m] V   (+ bias)   (b, n, k, v)
    y[n, h, v] = sum_k q[n, h, k] (l_c + l_p[n])[k, v]; output channel = h * |v| + v
then an average pool when stride = 2.

The self-attention baselines (AttentionSpec) are one dense masked attention with relative logits,
per head (dh = d_out / heads, channel = head * dh + j):
    logit[n, m] = (q_n . k_m + q_n . rel[n, m]) / sqrt(dh),  rel[n, m] = sum of table rows at (dy, dx)
    a[n, :] = softmax over the keys m that mask[n, m] allows;  out_n = sum_m a[n, m] v_m
mhsa is one such attention over all positions, sasa one whose mask is the window (inside the image),
axial two in a row: same column (rel over dy), then same row (rel over dx), each with its projections.

forward / forward_backward take either spec type.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

from .layout import relative_index
from .specs import AttentionSpec, LambdaSpec, pool_padding

Weights = Mapping[str, np.ndarray]


def _f64(a) -> np.ndarray:
    return np.asarray(a, dtype=np.float64)


# --- pieces -----------------------------------------------------------------------------------


def embeddings(spec: LambdaSpec, w: Weights, height: int, width: int) -> np.ndarray:
    """Dense E of shape (n, m, k, u), for either position form."""
    if spec.position == "global":
        table = _f64(w["rel_pos_emb"])  # (2H-1, 2W-1, k, u)
        flat = table.reshape(-1, spec.k, spec.u)
        return flat[relative_index(height, width)]
    kernel = _f64(w["pos_conv.weight"])  # (k, u, r, r), cross-correlation as in torch conv
    c = spec.r // 2
    n = height * width
    e = np.zeros((n, n, spec.k, spec.u))
    ys, xs = np.divmod(np.arange(n), width)
    for i in range(n):
        dy = ys - ys[i]
        dx = xs - xs[i]
        inside = (np.abs(dy) <= c) & (np.abs(dx) <= c)
        e[i, inside] = kernel[:, :, dy[inside] + c, dx[inside] + c].transpose(2, 0, 1)
    return e


def _scatter_embedding_grad(spec: LambdaSpec, d_e: np.ndarray, height: int, width: int) -> dict:
    if spec.position == "global":
        h2, w2 = 2 * height - 1, 2 * width - 1
        flat = np.zeros((h2 * w2, spec.k, spec.u))
        np.add.at(flat, relative_index(height, width), d_e)
        return {"rel_pos_emb": flat.reshape(h2, w2, spec.k, spec.u)}
    c = spec.r // 2
    n = height * width
    grad = np.zeros((spec.k, spec.u, spec.r, spec.r))
    ys, xs = np.divmod(np.arange(n), width)
    for i in range(n):
        dy = ys - ys[i]
        dx = xs - xs[i]
        inside = (np.abs(dy) <= c) & (np.abs(dx) <= c)
        np.add.at(grad, (slice(None), slice(None), dy[inside] + c, dx[inside] + c),
                  d_e[i, inside].transpose(1, 2, 0))
    return {"pos_conv.weight": grad}


def _batch_norm(x, w: Weights, prefix: str, spec: LambdaSpec, train: bool):
    """x: (b, n, c). Returns (y, cache, new running stats or None)."""
    gamma, beta = _f64(w[prefix + ".weight"]), _f64(w[prefix + ".bias"])
    if train:
        count = x.shape[0] * x.shape[1]
        mean = x.mean(axis=(0, 1))
        var = x.var(axis=(0, 1))
        m = spec.bn_momentum
        unbiased = var * count / max(count - 1, 1)
        running = {
            prefix + ".running_mean": (1 - m) * _f64(w[prefix + ".running_mean"]) + m * mean,
            prefix + ".running_var": (1 - m) * _f64(w[prefix + ".running_var"]) + m * unbiased,
        }
    else:
        mean = _f64(w[prefix + ".running_mean"])
        var = _f64(w[prefix + ".running_var"])
        running = None
    inv_std = 1.0 / np.sqrt(var + spec.bn_eps)
    x_hat = (x - mean) * inv_std
    return x_hat * gamma + beta, (x_hat, inv_std, gamma, train), running


def _batch_norm_backward(dy, cache):
    x_hat, inv_std, gamma, train = cache
    d_gamma = (dy * x_hat).sum(axis=(0, 1))
    d_beta = dy.sum(axis=(0, 1))
    dx_hat = dy * gamma
    if not train:
        return dx_hat * inv_std, d_gamma, d_beta
    count = dy.shape[0] * dy.shape[1]
    dx = inv_std / count * (
        count * dx_hat - dx_hat.sum(axis=(0, 1)) - x_hat * (dx_hat * x_hat).sum(axis=(0, 1))
    )
    return dx, d_gamma, d_beta


def _pool_windows(spec: LambdaSpec, height: int, width: int):
    pad = pool_padding(spec.pool)
    ho, wo = spec.output_size(height, width)
    ones = np.pad(np.ones((height, width)), pad)
    counts = np.zeros((ho, wo))
    for i in range(spec.pool):
        for j in range(spec.pool):
            counts += ones[i : i + 2 * ho : 2, j : j + 2 * wo : 2]
    return pad, ho, wo, counts


def avg_pool(spec: LambdaSpec, y: np.ndarray) -> np.ndarray:
    """Stride-2 average pool of an NHWC array; padded cells are not counted."""
    _, height, width, _ = y.shape
    pad, ho, wo, counts = _pool_windows(spec, height, width)
    yp = np.pad(y, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    out = np.zeros((y.shape[0], ho, wo, y.shape[3]))
    for i in range(spec.pool):
        for j in range(spec.pool):
            out += yp[:, i : i + 2 * ho : 2, j : j + 2 * wo : 2]
    return out / counts[None, :, :, None]


def _avg_pool_backward(spec: LambdaSpec, d_out: np.ndarray, height: int, width: int) -> np.ndarray:
    pad, ho, wo, counts = _pool_windows(spec, height, width)
    share = d_out / counts[None, :, :, None]
    d_padded = np.zeros((d_out.shape[0], height + 2 * pad, width + 2 * pad, d_out.shape[3]))
    for i in range(spec.pool):
        for j in range(spec.pool):
            d_padded[:, i : i + 2 * ho : 2, j : j + 2 * wo : 2] += share
    return d_padded[:, pad : pad + height, pad : pad + width]


def _softmax_over_positions(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


# --- the lambda layer -----------------------------------------------------------------------------


def lambda_forward(spec: LambdaSpec, w: Weights, x: np.ndarray, train: bool = False, *, _cache: dict | None = None):
    """Returns (y, new_running_stats). y is NHWC float64; running stats is {} in eval mode."""
    x = _f64(x)
    b, height, width = spec.check_input(x.shape, "NHWC")
    n = height * width
    h, k, u, v = spec.heads, spec.k, spec.u, spec.v
    xs = x.reshape(b, n, spec.d_in)

    q_lin = xs @ _f64(w["to_q.weight"]).T
    q_norm, q_cache, q_running = _batch_norm(q_lin, w, "norm_q", spec, train)
    q = q_norm.reshape(b, n, h, k)
    v_lin = xs @ _f64(w["to_v.weight"]).T
    v_norm, v_cache, v_running = _batch_norm(v_lin, w, "norm_v", spec, train)
    values = v_norm.reshape(b, n, u, v)

    lam = np.zeros((b, n, k, v))
    keys = e = None
    if spec.content:
        keys = _softmax_over_positions((xs @ _f64(w["to_k.weight"]).T).reshape(b, n, u, k))
        lam = lam + np.einsum("bmuk,bmuv->bkv", keys, values)[:, None]
    if spec.position != "none":
        e = embeddings(spec, w, height, width)
        lam = lam + np.einsum("nmku,bmuv->bnkv", e, values)
        if spec.conv_bias:
            lam = lam + _f64(w["pos_conv.bias"])[None, None, :, None]
    y = np.einsum("bnhk,bnkv->bnhv", q, lam).reshape(b, height, width, h * v)
    if spec.stride == 2:
        y = avg_pool(spec, y)

    if _cache is not None:
        _cache.update(xs=xs, q=q, q_cache=q_cache, values=values, v_cache=v_cache, keys=keys,
                      e=e, lam=lam, shape=(b, height, width))
    running = {**(q_running or {}), **(v_running or {})}
    return y, running


def lambda_forward_backward(spec: LambdaSpec, w: Weights, x: np.ndarray, cotangent: np.ndarray, train: bool = True):
    """Forward and the gradient of sum(y * cotangent) with respect to the input and every weight.

    Returns (y, grads, new_running_stats); grads is keyed "input" and canonical weight names
    (BatchNorm running statistics are buffers and get no gradient).
    """
    cache: dict = {}
    y, running = lambda_forward(spec, w, x, train, _cache=cache)
    b, height, width = cache["shape"]
    n = height * width
    h, k, u, v = spec.heads, spec.k, spec.u, spec.v
    xs, q, values, lam = cache["xs"], cache["q"], cache["values"], cache["lam"]

    dy = _f64(cotangent)
    if spec.stride == 2:
        dy = _avg_pool_backward(spec, dy, height, width)
    dy = dy.reshape(b, n, h, v)

    grads: dict[str, np.ndarray] = {}
    d_q = np.einsum("bnhv,bnkv->bnhk", dy, lam)
    d_lam = np.einsum("bnhk,bnhv->bnkv", q, dy)  # gradient of every query position's lambda
    d_values = np.zeros_like(values)
    d_x = np.zeros_like(xs)

    if spec.content:
        keys = cache["keys"]
        d_content = d_lam.sum(axis=1)  # the content lambda is shared by every n
        d_values += np.einsum("bmuk,bkv->bmuv", keys, d_content)
        d_keys = np.einsum("bmuv,bkv->bmuk", values, d_content)
        d_logits = keys * (d_keys - (d_keys * keys).sum(axis=1, keepdims=True))
        d_logits = d_logits.reshape(b, n, u * k)
        grads["to_k.weight"] = np.einsum("bnc,bnd->cd", d_logits, xs)
        d_x += d_logits @ _f64(w["to_k.weight"])
    if spec.position != "none":
        e = cache["e"]
        d_values += np.einsum("nmku,bnkv->bmuv", e, d_lam)
        grads.update(_scatter_embedding_grad(spec, np.einsum("bnkv,bmuv->nmku", d_lam, values), height, width))
        if spec.conv_bias:
            grads["pos_conv.bias"] = d_lam.sum(axis=(0, 1, 3))

    d_v_lin, grads["norm_v.weight"], grads["norm_v.bias"] = _batch_norm_backward(
        d_values.reshape(b, n, u * v), cache["v_cache"])
    d_q_lin, grads["norm_q.weight"], grads["norm_q.bias"] = _batch_norm_backward(
        d_q.reshape(b, n, h * k), cache["q_cache"])
    grads["to_q.weight"] = np.einsum("bnc,bnd->cd", d_q_lin, xs)
    grads["to_v.weight"] = np.einsum("bnc,bnd->cd", d_v_lin, xs)
    d_x += d_q_lin @ _f64(w["to_q.weight"]) + d_v_lin @ _f64(w["to_v.weight"])
    grads["input"] = d_x.reshape(b, height, width, spec.d_in)
    return y, grads, running


# --- the self-attention baselines ---------------------------------------------------------------


def relative_attention(q, k, v, rel, mask):
    """Dense masked attention with relative logits. q (b, n, h, dh), k and v (b, m, h, dh), rel (n, m, dh)
    the relative embedding of every (query, key) pair, mask (n, m) the keys each query may see.
    Returns out (b, n, h, dh) and the attention weights a (b, h, n, m), zero where masked."""
    dh = q.shape[-1]
    logits = (np.einsum("bnhd,bmhd->bhnm", q, k) + np.einsum("bnhd,nmd->bhnm", q, rel)) / np.sqrt(dh)
    logits = np.where(mask, logits, -np.inf)
    z = np.exp(logits - logits.max(axis=-1, keepdims=True))
    a = z / z.sum(axis=-1, keepdims=True)
    return np.einsum("bhnm,bmhd->bnhd", a, v), a


def relative_attention_backward(d_out, q, k, v, rel, a):
    """Gradients (d_q, d_k, d_v, d_rel) of sum(out * d_out) for relative_attention."""
    dh = q.shape[-1]
    d_a = np.einsum("bnhd,bmhd->bhnm", d_out, v)
    d_v = np.einsum("bhnm,bnhd->bmhd", a, d_out)
    d_logits = a * (d_a - (d_a * a).sum(axis=-1, keepdims=True)) / np.sqrt(dh)  # zero where masked
    d_q = np.einsum("bhnm,bmhd->bnhd", d_logits, k) + np.einsum("bhnm,nmd->bnhd", d_logits, rel)
    d_k = np.einsum("bhnm,bnhd->bmhd", d_logits, q)
    d_rel = np.einsum("bhnm,bnhd->nmd", d_logits, q)
    return d_q, d_k, d_v, d_rel


def attention_passes(spec: AttentionSpec, height: int, width: int) -> list:
    """The dense attentions the layer is, in order: (weight-name prefix, mask (n, m),
    {relative table name: row of that table for every (n, m)}). Rows where the mask is False are 0."""
    ys, xs = np.divmod(np.arange(height * width), width)
    dy = ys[None, :] - ys[:, None]  # (n, m): pos(m) - pos(n)
    dx = xs[None, :] - xs[:, None]
    if spec.kind == "axial":
        return [("height.", dx == 0, {"height.rel": np.where(dx == 0, dy + height - 1, 0)}),
                ("width.", dy == 0, {"width.rel": np.where(dy == 0, dx + width - 1, 0)})]
    reach_h, reach_w = spec.reach()
    mask = (np.abs(dy) <= reach_h) & (np.abs(dx) <= reach_w)  # all True for mhsa (reach = size - 1)
    return [("", mask, {"rel_h": np.where(mask, dy + reach_h, 0), "rel_w": np.where(mask, dx + reach_w, 0)})]


def attention_forward(spec: AttentionSpec, w: Weights, x: np.ndarray, train: bool = False, *,
                      _cache: list | None = None):
    """Returns (y, {}): y NHWC float64; attention has no running statistics, ``train`` changes nothing."""
    x = _f64(x)
    b, height, width = spec.check_input(x.shape, "NHWC")
    n, h, dh = height * width, spec.heads, spec.dh
    act = x.reshape(b, n, spec.d_in)
    for prefix, mask, rows in attention_passes(spec, height, width):
        q, k, v = (act @ _f64(w[f"{prefix}{p}.weight"]).T for p in ("to_q", "to_k", "to_v"))
        q, k, v = (t.reshape(b, n, h, dh) for t in (q, k, v))
        rel = sum(_f64(w[name])[row] for name, row in rows.items())  # (n, m, dh)
        out, a = relative_attention(q, k, v, rel, mask)
        if _cache is not None:
            _cache.append(dict(prefix=prefix, mask=mask, rows=rows, act=act, q=q, k=k, v=v, rel=rel, a=a))
        act = out.reshape(b, n, spec.d_out)  # channel = head * dh + j
    y = act.reshape(b, height, width, spec.d_out)
    if spec.stride == 2:
        y = avg_pool(spec, y)
    return y, {}


def attention_forward_backward(spec: AttentionSpec, w: Weights, x: np.ndarray, cotangent: np.ndarray,
                               train: bool = True):
    """Forward and the gradient of sum(y * cotangent): (y, grads keyed "input" and canonical names, {})."""
    passes: list = []
    y, running = attention_forward(spec, w, x, train, _cache=passes)
    b, height, width, _ = _f64(x).shape
    n, h, dh = height * width, spec.heads, spec.dh
    d_act = _f64(cotangent)
    if spec.stride == 2:
        d_act = _avg_pool_backward(spec, d_act, height, width)
    d_act = d_act.reshape(b, n, spec.d_out)

    grads: dict[str, np.ndarray] = {}
    for p in reversed(passes):
        d_q, d_k, d_v, d_rel = relative_attention_backward(
            d_act.reshape(b, n, h, dh), p["q"], p["k"], p["v"], p["rel"], p["a"])
        for name, row in p["rows"].items():
            grad = np.zeros_like(_f64(w[name]))
            np.add.at(grad, row[p["mask"]], d_rel[p["mask"]])
            grads[name] = grad
        d_act = np.zeros_like(p["act"])
        for proj, d_proj in (("to_q", d_q), ("to_k", d_k), ("to_v", d_v)):
            name = f"{p['prefix']}{proj}.weight"
            d_proj = d_proj.reshape(b, n, spec.d_out)
            grads[name] = np.einsum("bnc,bnd->cd", d_proj, p["act"])
            d_act += d_proj @ _f64(w[name])
    grads["input"] = d_act.reshape(b, height, width, spec.d_in)
    return y, grads, running


# --- any layer ------------------------------------------------------------------------------------


def _family(spec):
    from .families import family_of  # the registry refers to this module's functions

    family = family_of(spec)
    if family.kind != "layer":
        raise ValueError(f"spec of type {type(spec).__name__}: the reference covers single layers only")
    return family


def forward(spec, w: Weights, x: np.ndarray, train: bool = False):
    """Returns (y, new_running_stats): y NHWC float64; running stats {} in eval mode and for attention.
    The layer's family's reference (lambda_bench.families)."""
    return _family(spec).forward(spec, w, x, train)


def forward_backward(spec, w: Weights, x: np.ndarray, cotangent: np.ndarray, train: bool = True):
    """Forward and the gradient of sum(y * cotangent) with respect to the input and every weight:
    (y, grads keyed "input" and canonical weight names, new_running_stats)."""
    return _family(spec).forward_backward(spec, w, x, cotangent, train)
