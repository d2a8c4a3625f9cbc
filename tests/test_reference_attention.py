"""The attention oracle checks itself: its hand-written backward against central finite differences in
float64 on every coordinate, and its forward against loops over queries and keys written from the
AttentionSpec docstring, not from the vectorised code."""

import numpy as np
import pytest

from lambda_bench import reference, weights
from lambda_bench.specs import AttentionSpec

# (spec, input height, width): tiny, so that every coordinate gets a finite difference
CASES = {
    "mhsa_nonsquare_h2": (AttentionSpec(kind="mhsa", d_in=3, d_out=4, heads=2, size=(2, 3)), 2, 3),
    "sasa_w3_4x5_h2_borders": (AttentionSpec(kind="sasa", d_in=3, d_out=4, heads=2, window=3), 4, 5),
    "axial_h2_din_ne_dout": (AttentionSpec(kind="axial", d_in=3, d_out=4, heads=2, size=(3, 4)), 3, 4),
    "sasa_w3_h1_stride2_pool2": (AttentionSpec(kind="sasa", d_in=2, d_out=3, heads=1, window=3,
                                               stride=2, pool=2), 4, 5),
    "mhsa_h1_stride2_pool3": (AttentionSpec(kind="mhsa", d_in=2, d_out=2, heads=1, size=(3, 4),
                                            stride=2, pool=3), 3, 4),
    "axial_h1_stride2_pool3": (AttentionSpec(kind="axial", d_in=2, d_out=2, heads=1, size=(3, 3),
                                             stride=2, pool=3), 3, 3),
}


def _problem(spec, height, width, batch=2, seed=0):
    rng = np.random.default_rng(seed)
    w = {k: v.astype(np.float64) for k, v in weights.init_attention(spec, seed).items()}
    x = rng.normal(size=(batch, height, width, spec.d_in))
    g = rng.normal(size=(batch, *spec.output_size(height, width), spec.d_out))
    return w, x, g


@pytest.mark.parametrize("name", list(CASES))
def test_backward_matches_finite_differences(name):
    spec, height, width = CASES[name]
    w, x, g = _problem(spec, height, width)
    y, grads, running = reference.forward_backward(spec, w, x, g)
    assert running == {}
    assert y.shape == g.shape

    def loss(w_, x_):
        return float((reference.forward(spec, w_, x_)[0] * g).sum())

    eps = 1e-6
    targets = {"input": x, **w}
    assert set(grads) == set(targets) == {"input", *weights.attention_shapes(spec)}
    for name_, value in targets.items():
        assert grads[name_].shape == value.shape, name_
        for i in range(value.size):  # every coordinate: the shapes are tiny
            idx = np.unravel_index(i, value.shape)
            plus, minus = value.copy(), value.copy()
            plus[idx] += eps
            minus[idx] -= eps
            if name_ == "input":
                fd = (loss(w, plus) - loss(w, minus)) / (2 * eps)
            else:
                fd = (loss({**w, name_: plus}, x) - loss({**w, name_: minus}, x)) / (2 * eps)
            assert grads[name_][idx] == pytest.approx(fd, rel=1e-5, abs=1e-7), (name_, idx)


def test_sasa_window_edges_get_no_gradient_when_unseen():
    """A 3x3 window on a 1-row image never sees dy = +-1: those rows of rel_h get exactly zero."""
    spec = AttentionSpec(kind="sasa", d_in=2, d_out=2, heads=1, window=3)
    w, x, g = _problem(spec, 1, 4)
    _, grads, _ = reference.forward_backward(spec, w, x, g)
    assert np.all(grads["rel_h"][[0, 2]] == 0) and np.any(grads["rel_h"][1] != 0)


# --- loops over queries and keys ------------------------------------------------------------------


def _attend_loop(x, wq, wk, wv, heads, keys_of, rel_of):
    """x (H, W, c). keys_of(y, x) -> visible key positions; rel_of(y, x, ky, kx) -> (dh,) embedding."""
    height, width, _ = x.shape
    d_out = wq.shape[0]
    dh = d_out // heads
    out = np.zeros((height, width, d_out))
    for qy in range(height):
        for qx in range(width):
            keys = keys_of(qy, qx)
            for hh in range(heads):
                sl = slice(hh * dh, (hh + 1) * dh)  # head-major channels
                q = (wq @ x[qy, qx])[sl]
                logits = []
                for ky, kx in keys:
                    kvec = (wk @ x[ky, kx])[sl]
                    logits.append((q @ kvec + q @ rel_of(qy, qx, ky, kx)) / np.sqrt(dh))
                weights_ = np.exp(np.array(logits) - max(logits))
                weights_ /= weights_.sum()
                for a, (ky, kx) in zip(weights_, keys):
                    out[qy, qx, sl] += a * (wv @ x[ky, kx])[sl]
    return out


def _pool_loop(y, pool):
    """Stride-2 average pool, padded cells not counted, by loops."""
    height, width, _ = y.shape
    pad = (pool - 1) // 2
    ho, wo = (height + 2 * pad - pool) // 2 + 1, (width + 2 * pad - pool) // 2 + 1
    out = np.zeros((ho, wo, y.shape[2]))
    for i in range(ho):
        for j in range(wo):
            cells = [(r, c) for r in range(2 * i - pad, 2 * i - pad + pool) for c in range(2 * j - pad, 2 * j - pad + pool)
                     if 0 <= r < height and 0 <= c < width]
            out[i, j] = np.mean([y[r, c] for r, c in cells], axis=0)
    return out


def _loop_forward(spec, w, x):
    height, width, _ = x.shape
    everywhere = [(r, c) for r in range(height) for c in range(width)]
    if spec.kind == "mhsa":
        rh, rw = height - 1, width - 1
        y = _attend_loop(x, w["to_q.weight"], w["to_k.weight"], w["to_v.weight"], spec.heads,
                         lambda qy, qx: everywhere,
                         lambda qy, qx, ky, kx: w["rel_h"][ky - qy + rh] + w["rel_w"][kx - qx + rw])
    elif spec.kind == "sasa":
        r = spec.window // 2
        y = _attend_loop(x, w["to_q.weight"], w["to_k.weight"], w["to_v.weight"], spec.heads,
                         lambda qy, qx: [(ky, kx) for ky, kx in everywhere if abs(ky - qy) <= r and abs(kx - qx) <= r],
                         lambda qy, qx, ky, kx: w["rel_h"][ky - qy + r] + w["rel_w"][kx - qx + r])
    else:
        mid = _attend_loop(x, w["height.to_q.weight"], w["height.to_k.weight"], w["height.to_v.weight"], spec.heads,
                           lambda qy, qx: [(ky, qx) for ky in range(height)],
                           lambda qy, qx, ky, kx: w["height.rel"][ky - qy + height - 1])
        y = _attend_loop(mid, w["width.to_q.weight"], w["width.to_k.weight"], w["width.to_v.weight"], spec.heads,
                         lambda qy, qx: [(qy, kx) for kx in range(width)],
                         lambda qy, qx, ky, kx: w["width.rel"][kx - qx + width - 1])
    return _pool_loop(y, spec.pool) if spec.stride == 2 else y


LOOP_CASES = [
    (AttentionSpec(kind="mhsa", d_in=3, d_out=4, heads=2, size=(2, 3)), 2, 3),
    (AttentionSpec(kind="sasa", d_in=3, d_out=4, heads=2, window=3), 4, 5),
    (AttentionSpec(kind="sasa", d_in=2, d_out=2, heads=1, window=5, stride=2, pool=3), 3, 4),
    (AttentionSpec(kind="axial", d_in=3, d_out=4, heads=2, size=(3, 4), stride=2, pool=2), 3, 4),
]


@pytest.mark.parametrize("spec,height,width", LOOP_CASES, ids=lambda v: getattr(v, "kind", None) or str(v))
def test_forward_matches_loops_over_queries_and_keys(spec, height, width):
    w, x, _ = _problem(spec, height, width)
    y, running = reference.forward(spec, w, x)
    assert running == {}
    for bi in range(x.shape[0]):
        np.testing.assert_allclose(y[bi], _loop_forward(spec, w, x[bi]), rtol=1e-12, atol=1e-12)


def test_dispatch_rejects_models():
    from lambda_bench.specs import ResNetSpec

    with pytest.raises(ValueError, match="single layers"):
        reference.forward(ResNetSpec(depth=26), {}, np.zeros((1, 32, 32, 3)))
