"""Index arithmetic shared by the reference and the three implementations (NumPy only)."""

from __future__ import annotations

import numpy as np


def relative_index(height: int, width: int) -> np.ndarray:
    """(n, m) int64 array: the flat row of the (2H-1)x(2W-1) relative table used for query n, context m.

    Positions are row-major (n = y * W + x). The table row for offset (dy, dx) = pos(m) - pos(n) is
    (dy + H - 1) * (2W - 1) + (dx + W - 1): the convention of lambda-networks' ``rel_pos_emb``.
    """
    ys, xs = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
    ys, xs = ys.reshape(-1), xs.reshape(-1)
    dy = ys[None, :] - ys[:, None] + height - 1
    dx = xs[None, :] - xs[:, None] + width - 1
    return (dy * (2 * width - 1) + dx).astype(np.int64)


def axis_relative_index(length: int) -> np.ndarray:
    """(L, L) int64: the row of a (2L-1)-row relative table for query i and key j along one axis,
    offset j - i stored at row j - i + L - 1 (the self-attention layers' rel_h, rel_w, height.rel)."""
    positions = np.arange(length)
    return (positions[None, :] - positions[:, None] + length - 1).astype(np.int64)
