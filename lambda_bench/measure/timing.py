"""Timing a synchronised step: first call apart, warm-up, adaptive repeat count, robust statistics.

``step`` must return only once the device work is done (each backend's step synchronises), so
perf_counter around it is the step's wall time.

TimingConfig also holds the re-measurement policy the worker applies when another process shared
the CPUs during the timed window, or the step times scattered (lambda_bench.measure.interference).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np


@dataclass(frozen=True)
class TimingConfig:
    warmup_steps: int = 2           # after the first call, untimed
    min_steps: int = 5              # timed steps at least ...
    min_time_s: float = 1.0         # ... and at least this long in total ...
    max_steps: int = 1000           # ... but never more than this many
    # re-measurement policy: a timed window in which other processes used more than max_interference
    # of the pinned CPUs' time, or whose IQR exceeds max_rel_iqr of the median, is timed again in
    # the same worker (after waiting up to calm_wait_s for the CPUs to go quiet), at most remeasure
    # times; a figure still outside the bounds keeps status ok and says why in the row's flags
    max_interference: float = 0.10
    max_rel_iqr: float = 0.25
    remeasure: int = 2
    calm_wait_s: float = 10.0

    def __post_init__(self) -> None:
        for name in ("warmup_steps", "min_steps", "max_steps", "remeasure"):
            value = getattr(self, name)
            low = 0 if name in ("warmup_steps", "remeasure") else 1
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name}={value!r}: must be an integer >= {low}")
        for name in ("min_time_s", "calm_wait_s", "max_rel_iqr"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
                raise ValueError(f"{name}={value!r}: must be a number >= 0")
        value = self.max_interference
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
            raise ValueError(f"max_interference={value!r}: must be a fraction between 0 and 1")
        if self.max_steps < self.min_steps:
            raise ValueError(f"max_steps={self.max_steps}: must be >= min_steps={self.min_steps}")


@dataclass
class Timing:
    first_call_s: float | None
    times_s: list[float] = field(default_factory=list)
    recompilations: int = 0

    @property
    def n(self) -> int:
        return len(self.times_s)

    @property
    def median_s(self) -> float:
        return float(np.median(self.times_s))

    @property
    def rel_iqr(self) -> float:
        """IQR / median of the step times: the window's own stability."""
        q1, median, q3 = np.percentile(np.asarray(self.times_s, dtype=np.float64), [25, 50, 75])
        return float((q3 - q1) / median) if median > 0 else 0.0

    def summary(self) -> dict[str, float | int | None]:
        t = np.asarray(self.times_s, dtype=np.float64)
        p10, q1, median, q3, p90 = np.percentile(t, [10, 25, 50, 75, 90])
        return {"step_time_median_s": float(median), "step_time_iqr_s": float(q3 - q1),
                "step_time_p10_s": float(p10), "step_time_p90_s": float(p90), "n_steps": int(t.size),
                "first_call_s": self.first_call_s, "recompilations": self.recompilations,
                "rel_iqr": self.rel_iqr}


def time_step(step: Callable[[], None], config: TimingConfig = TimingConfig(),
              traces: Callable[[], int] = lambda: 0, after_warmup: Callable[[], None] = lambda: None,
              first_call: bool = True) -> Timing:
    """Time ``step``: the first call alone, ``warmup_steps`` untimed, then timed steps until both
    ``min_steps`` and ``min_time_s`` are reached (capped by ``max_steps``; the worker's timeout bounds the rest).

    ``traces()`` is read before and after the timed loop: a difference is a recompilation inside
    it, reported rather than hidden. ``after_warmup()`` runs just before the timed loop (memory
    trackers reset their peak there; the interference monitor starts there). ``first_call=False``
    times a step already called (a re-measurement): warm-up and timed loop only.
    """
    clock = time.perf_counter
    first_call_s = None
    if first_call:
        start = clock()
        step()
        first_call_s = clock() - start
    timing = Timing(first_call_s=first_call_s)
    for _ in range(config.warmup_steps):
        step()
    after_warmup()
    traces_before = traces()
    times = timing.times_s
    loop_start = clock()
    # the loop does nothing but call, read the clock and append: what a hand-written loop does
    while True:
        t0 = clock()
        step()
        t1 = clock()
        times.append(t1 - t0)
        n = len(times)
        if n >= config.max_steps or (n >= config.min_steps and t1 - loop_start >= config.min_time_s):
            break
    timing.recompilations = traces() - traces_before
    return timing
