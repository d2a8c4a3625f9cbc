"""Timing a synchronised step: first call apart, warm-up, adaptive repeat count, robust statistics.

``step`` must return only once the device work is done (each backend's step synchronises), so
perf_counter around it is the step's wall time.
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

    def __post_init__(self) -> None:
        for name in ("warmup_steps", "min_steps", "max_steps"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < (0 if name == "warmup_steps" else 1):
                raise ValueError(f"{name}={value!r}: must be an integer >= {0 if name == 'warmup_steps' else 1}")
        value = self.min_time_s
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            raise ValueError(f"min_time_s={value!r}: must be a number >= 0")
        if self.max_steps < self.min_steps:
            raise ValueError(f"max_steps={self.max_steps}: must be >= min_steps={self.min_steps}")


@dataclass
class Timing:
    first_call_s: float
    times_s: list[float] = field(default_factory=list)
    recompilations: int = 0

    @property
    def n(self) -> int:
        return len(self.times_s)

    def summary(self) -> dict[str, float | int]:
        t = np.asarray(self.times_s, dtype=np.float64)
        p10, q1, median, q3, p90 = np.percentile(t, [10, 25, 50, 75, 90])
        return {"step_time_median_s": float(median), "step_time_iqr_s": float(q3 - q1),
                "step_time_p10_s": float(p10), "step_time_p90_s": float(p90), "n_steps": int(t.size),
                "first_call_s": self.first_call_s, "recompilations": self.recompilations}


def time_step(step: Callable[[], None], config: TimingConfig = TimingConfig(),
              traces: Callable[[], int] = lambda: 0, after_warmup: Callable[[], None] = lambda: None) -> Timing:
    """Time ``step``: the first call alone, ``warmup_steps`` untimed, then timed steps until both
    ``min_steps`` and ``min_time_s`` are reached (capped by ``max_steps``; the worker's timeout bounds the rest).

    ``traces()`` is read before and after the timed loop: a difference is a recompilation inside
    it, reported rather than hidden. ``after_warmup()`` runs just before the timed loop (memory
    trackers reset their peak there).
    """
    clock = time.perf_counter
    start = clock()
    step()
    timing = Timing(first_call_s=clock() - start)
    for _ in range(config.warmup_steps):
        step()
    after_warmup()
    traces_before = traces()
    loop_start = clock()
    while True:
        t0 = clock()
        step()
        timing.times_s.append(clock() - t0)
        n, elapsed = len(timing.times_s), clock() - loop_start
        if n >= config.max_steps:
            break
        if n >= config.min_steps and elapsed >= config.min_time_s:
            break
    timing.recompilations = traces() - traces_before
    return timing
