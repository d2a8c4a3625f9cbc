"""The oracle checks itself: its hand-written backward against central finite differences in float64,
and its equations against a second, loop-based reading of the paper."""

import numpy as np
import pytest

from lambda_bench import reference, weights
from lambda_bench.specs import LambdaSpec

SPECS = {
    "global": LambdaSpec(d_in=5, d_out=6, k=3, heads=2, u=2, position="global", size=(3, 4)),
    "conv_bias": LambdaSpec(d_in=4, d_out=4, k=2, heads=2, u=1, position="conv", r=3, conv_bias=True),
    "content_only": LambdaSpec(d_in=4, d_out=6, k=2, heads=3, position="none"),
    "position_only_pool3": LambdaSpec(d_in=3, d_out=4, k=2, heads=1, u=2, position="conv", r=3,
                                      content=False, stride=2, pool=3),
    "global_pool2": LambdaSpec(d_in=3, d_out=4, k=2, heads=2, position="global", size=(5, 3), stride=2),
}


def _problem(spec, height=3, width=4, batch=2, seed=0):
    if spec.size is not None:
        height, width = spec.size
    rng = np.random.default_rng(seed)
    w = {k: v.astype(np.float64) for k, v in weights.randomize_state(weights.init_lambda(spec, seed), seed).items()}
    x = rng.normal(size=(batch, height, width, spec.d_in))
    ho, wo = spec.output_size(height, width)
    g = rng.normal(size=(batch, ho, wo, spec.d_out))
    return w, x, g


@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("name", list(SPECS))
def test_backward_matches_finite_differences(name, train):
    spec = SPECS[name]
    w, x, g = _problem(spec)
    _, grads, _ = reference.forward_backward(spec, w, x, g, train=train)

    def loss(w_, x_):
        return float((reference.forward(spec, w_, x_, train)[0] * g).sum())

    eps = 1e-6
    targets = {"input": x, **{k: v for k, v in w.items() if not weights.is_buffer(k)}}
    assert set(grads) == set(targets)
    for name_, value in targets.items():
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


def test_forward_matches_a_loop_over_positions():
    """y[n] = sum_h-blocks q_n^T (lambda_c + lambda_p_n), written with explicit loops over n and m."""
    spec = LambdaSpec(d_in=3, d_out=4, k=2, heads=2, u=2, position="global", size=(2, 3))
    w, x, _ = _problem(spec)
    y, _ = reference.forward(spec, w, x, train=False)
    b, height, width, _ = x.shape
    bn = lambda a, p: (a - w[p + ".running_mean"]) / np.sqrt(w[p + ".running_var"] + spec.bn_eps) * w[p + ".weight"] + w[p + ".bias"]
    for bi in range(b):
        pos = [(yy, xx) for yy in range(height) for xx in range(width)]
        q = [bn(w["to_q.weight"] @ x[bi, p[0], p[1]], "norm_q").reshape(spec.heads, spec.k) for p in pos]
        vals = [bn(w["to_v.weight"] @ x[bi, p[0], p[1]], "norm_v").reshape(spec.u, spec.v) for p in pos]
        logits = np.array([(w["to_k.weight"] @ x[bi, p[0], p[1]]).reshape(spec.u, spec.k) for p in pos])
        keys = np.exp(logits) / np.exp(logits).sum(axis=0)
        content = sum(keys[m, uu][:, None] * vals[m][uu][None, :] for m in range(len(pos)) for uu in range(spec.u))
        for ni, (ny, nx) in enumerate(pos):
            lam_p = np.zeros((spec.k, spec.v))
            for mi, (my, mx) in enumerate(pos):
                e = w["rel_pos_emb"][my - ny + height - 1, mx - nx + width - 1]  # (k, u)
                for uu in range(spec.u):
                    lam_p += e[:, uu][:, None] * vals[mi][uu][None, :]
            expect = np.concatenate([q[ni][hh] @ (content + lam_p) for hh in range(spec.heads)])
            np.testing.assert_allclose(y[bi, ny, nx], expect, rtol=1e-12, atol=1e-12)


def test_train_mode_running_statistics():
    spec = SPECS["global"]
    w, x, _ = _problem(spec)
    _, running = reference.forward(spec, w, x, train=True)
    q = x.reshape(-1, spec.d_in) @ w["to_q.weight"].T
    m = spec.bn_momentum
    np.testing.assert_allclose(running["norm_q.running_mean"], (1 - m) * w["norm_q.running_mean"] + m * q.mean(0))
    np.testing.assert_allclose(running["norm_q.running_var"], (1 - m) * w["norm_q.running_var"] + m * q.var(0, ddof=1))
