"""How a lambda layer computes its position term, chosen per shape (framework-neutral, no imports).

The three implementations (implementations/*/lambda_layer.py) call ``plan_position`` with the same
arguments and follow the plan the same way, so they make the same choices for the same shape. No
plan changes the function: each is checked against the float64 reference (tests/test_plans.py).

Two algorithms for y_p[n] = sum_k q[n, k] * lambda_p[n, k, :] (per head):

``lambdas``    materialise the position lambdas lambda_p (b, n, k, v) as the paper writes it: for the
               lambda convolution, one r x r convolution of every value channel (no Conv3d, no
               per-value weight copies); for global embeddings the einsum E[n, m] V[m].
``reordered``  never build lambda_p: contract the queries with the embeddings first,
               P[b, h, n, u, m] = sum_k q[b, h, k, n] E[n, m, k, u], then y_p = P V (an
               attention-like product). For the lambda convolution E is the r x r kernel laid out
               as a dense (n, m) relative table (zero outside the window), so this only pays off
               on small maps. Cost b*h*n*m*u*(k+v) multiply-adds against b*n*m*k*u*v (global) or
               b*v*u*k*n*r^2 (convolution).

Memory: ``full`` keeps the intermediate (lambda_p, or P and E) for the backward pass;
``lean`` never holds more than LEAN_BYTES of it at once: the query positions are split into chunks
(output rows for the convolution) and the backward pass recomputes each chunk. Peak memory drops
to about one chunk's worth, for one extra forward computation of the position term.
``auto`` goes lean when the full intermediate is larger than LEAN_BYTES. Trade-off measured on the
2-core development CPU with our PyTorch layer's plan forced (``LambdaLayer(spec, memory=...)``;
torch, batch 8, fwd+bwd, interleaved, peak RSS above baseline): lambda convolution d 64 at 56x56, full
212 ms / 190 MB vs lean 280 ms / 66 MB; d 128 at 28x28, 90 ms / 67 MB vs 106 ms / 43 MB; reordered
d 256 at 16x16, 33 ms / 32 MB vs 43 ms / 25 MB; global d 256 at 16x16, 23 ms / 34 MB vs 29 ms / 24 MB. Lean costs 15-30% time (one
more convolution / product per chunk) and bounds the position intermediate to LEAN_BYTES. Below
LEAN_BYTES the memory saved is small and auto keeps the faster full plan.
"""

from __future__ import annotations

from dataclasses import dataclass

ALGORITHMS = ("auto", "lambdas", "reordered")
MEMORY_MODES = ("auto", "full", "lean")
LEAN_BYTES = 8 * 2**20  # at most this much position intermediate at once in lean mode (float32: 2M values)


@dataclass(frozen=True)
class PositionPlan:
    algorithm: str  # "lambdas" | "reordered"
    lean: bool  # chunked, recomputed in the backward pass
    chunk: int  # lambdas + conv: output rows per chunk; otherwise query positions per chunk
    chunks: int  # how many chunks (1: unchunked)
    lambdas_cost: int  # multiply-adds of the position term, each algorithm
    reordered_cost: int
    lambdas_bytes: int  # float32 bytes of the intermediate, each algorithm
    reordered_bytes: int


def plan_position(spec, batch: int, height: int, width: int, algorithm: str = "auto",
                  memory: str = "auto") -> PositionPlan:
    """The plan for ``spec`` (position "global" or "conv") on a batch x height x width input."""
    if algorithm not in ALGORITHMS:
        raise ValueError(f"algorithm={algorithm!r}: must be one of {', '.join(ALGORITHMS)}")
    if memory not in MEMORY_MODES:
        raise ValueError(f"memory={memory!r}: must be one of {', '.join(MEMORY_MODES)}")
    b, n = batch, height * width
    h, k, u, v = spec.heads, spec.k, spec.u, spec.v
    table = n * n * k * u  # the dense (n, m, k, u) embeddings
    reordered_cost = b * h * n * n * u * (k + v) + table
    if spec.position == "global":
        lambdas_cost = b * n * n * k * u * v
        lambdas_values = b * n * k * v + table
    else:
        lambdas_cost = b * v * u * k * n * spec.r * spec.r
        lambdas_values = b * n * k * v
    reordered_values = b * h * n * u * n + table
    if algorithm == "auto":
        cheaper = "reordered" if reordered_cost < lambdas_cost else "lambdas"
        # the cheaper one, unless it needs more than twice the other's memory
        mem = {"lambdas": lambdas_values, "reordered": reordered_values}
        other = "lambdas" if cheaper == "reordered" else "reordered"
        algorithm = cheaper if mem[cheaper] <= 2 * mem[other] else other
    values = lambdas_values if algorithm == "lambdas" else reordered_values
    lean = memory == "lean" or (memory == "auto" and 4 * values > LEAN_BYTES)
    per_position = max(1, values // n)  # intermediate values per query position
    rows = algorithm == "lambdas" and spec.position == "conv"
    unit = width if rows else 1  # chunks of whole output rows for the convolution
    total = height if rows else n
    if lean:
        chunk = max(1, min(total, (LEAN_BYTES // 4) // (per_position * unit)))
    else:
        chunk = total
    return PositionPlan(algorithm, lean, chunk, -(-total // chunk), lambdas_cost, reordered_cost,
                        4 * lambdas_values, 4 * reordered_values)


def conv_table_crop(r: int, size: int) -> tuple[int, int]:
    """The lambda convolution as a relative table of 2*size-1 offsets along one axis: returns
    (pad, crop) so that table = kernel[crop : r - crop] zero-padded by ``pad`` on both sides."""
    c = r // 2
    if size - 1 >= c:
        return size - 1 - c, 0
    return 0, c - (size - 1)
