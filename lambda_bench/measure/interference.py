"""Interference: how much of the worker's CPUs other processes used while a case was timed, and the
re-measurement policy built on it.

The kernel counts, per CPU, the time spent busy and idle (/proc/stat, in clock ticks); it also
counts the CPU time of every thread of this process (CLOCK_PROCESS_CPUTIME_ID). The worker is
pinned to its CPUs, so over a timed window

    others = (busy time of the pinned CPUs - this process's CPU time) / total time of the pinned CPUs

is the share of those CPUs that went to anything else: another benchmark, a compiler, a browser,
the kernel's interrupt handling. It is the figure that matters for PyTorch on CPU: its OpenMP
threads spin-wait at every parallel region, so a thread that loses its core to another process
holds up every other thread, and a step can take 10-200x longer while others use a third of the
cores. /proc/stat counts in ticks (usually 10 ms), so over a 0.5 s window on 2 CPUs the figure is
good to about +-2%; one tick per CPU is put down to rounding (a lower bound, so that a window of a
few ticks cannot read as busy from one stray tick).

On an NVIDIA GPU, the number of other processes holding a context on the case's GPU (NVML) is
recorded as well: they share its compute, and nothing the worker does can wait them out.

The policy (TimingConfig: max_interference, max_rel_iqr, remeasure, calm_wait_s): a window with
others above max_interference, or with IQR / median above max_rel_iqr, is timed again in the same
process after the CPUs have been quiet for a moment (sampled, bounded by calm_wait_s); at most
``remeasure`` times. The first window that passes is kept; if none does, the least doubtful one is
kept and the row says why in ``flags``. Peak memory is read from the first window only (the fresh
process's figure: CPU contention does not change what a step allocates).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

from .timing import Timing, TimingConfig, time_step

PROC_STAT = Path("/proc/stat")
# /proc/stat's per-CPU fields: user nice system idle iowait irq softirq steal guest guest_nice.
# Guest time is already inside user/nice; steal is a hypervisor giving the CPU to another guest.
_BUSY_FIELDS = (0, 1, 2, 5, 6, 7)
_IDLE_FIELDS = (3, 4)


@dataclass(frozen=True)
class CpuSample:
    """Cumulative counters at one instant: the pinned CPUs' busy and total ticks, this process's CPU
    seconds (all threads), the wall clock."""
    busy_ticks: int
    total_ticks: int
    own_s: float
    wall_s: float
    n_cpus: int = 1  # the tick rounding: up to one tick per CPU per window is not counted as others
    steal_ticks: int = 0  # part of busy_ticks: a hypervisor ran another virtual machine on these CPUs


def cpu_ticks(cpus: Iterable[int], stat_text: str | None = None) -> tuple[int, int]:
    """(busy, total) clock ticks of ``cpus`` since boot, from /proc/stat (or ``stat_text``)."""
    busy, total, _ = cpu_counters(cpus, stat_text)
    return busy, total


def cpu_counters(cpus: Iterable[int], stat_text: str | None = None) -> tuple[int, int, int]:
    """(busy, total, steal) clock ticks of ``cpus`` since boot; steal is part of busy."""
    wanted = {f"cpu{c}" for c in cpus}
    text = PROC_STAT.read_text() if stat_text is None else stat_text
    busy = total = steal = 0
    found = set()
    for line in text.splitlines():
        name, _, rest = line.partition(" ")
        if name not in wanted:
            continue
        values = [int(v) for v in rest.split()]
        values += [0] * (8 - len(values))  # old kernels lack steal
        b = sum(values[i] for i in _BUSY_FIELDS)
        busy += b
        steal += values[7]
        total += b + sum(values[i] for i in _IDLE_FIELDS)
        found.add(name)
    if found != wanted:
        missing = sorted(wanted - found)
        raise ValueError(f"/proc/stat has no line for {', '.join(missing)}")
    return busy, total, steal


def sample(cpus: Sequence[int]) -> CpuSample:
    busy, total, steal = cpu_counters(cpus)
    return CpuSample(busy, total, time.process_time(), time.perf_counter(), len(cpus), steal)


def others_fraction(before: CpuSample, after: CpuSample, tick_hz: float | None = None) -> float | None:
    """Share (0..1) of the pinned CPUs' time between the samples used by other processes; None when
    the kernel counted no time at all (a window shorter than a tick).

    Conservative: the CPUs' busy time is counted in whole ticks and the process's own time exactly,
    so one tick per CPU of busy time is put down to rounding, not to others (without that, a 5 ms
    window could read 70% "others" from one stray tick)."""
    hz = tick_hz or _TICK_HZ
    total = after.total_ticks - before.total_ticks
    if total <= 0:
        return None
    busy = after.busy_ticks - before.busy_ticks
    own = (after.own_s - before.own_s) * hz
    return min(1.0, max(0.0, (busy - own - after.n_cpus) / total))


def steal_fraction(before: CpuSample, after: CpuSample) -> float | None:
    """Share (0..1) of the pinned CPUs' time between the samples that the hypervisor gave to other
    virtual machines (/proc/stat's steal; 0 on bare metal). It is inside ``others_fraction``: stolen
    time is time the case did not run; this says how much of it came from outside the machine."""
    total = after.total_ticks - before.total_ticks
    if total <= 0:
        return None
    return min(1.0, max(0.0, (after.steal_ticks - before.steal_ticks) / total))


_TICK_HZ = float(os.sysconf("SC_CLK_TCK")) if hasattr(os, "sysconf") else 100.0


class Monitor:
    """Brackets a timed window: ``start()`` just before it, ``stop()`` just after; ``fraction`` is
    then the share of the pinned CPUs other processes used (None where /proc/stat is unreadable)."""

    def __init__(self, cpus: Sequence[int] | None = None) -> None:
        self.cpus = list(cpus) if cpus is not None else sorted(os.sched_getaffinity(0))
        self.fraction: float | None = None
        self.steal: float | None = None
        self._before: CpuSample | None = None

    def start(self) -> None:
        try:
            self._before = sample(self.cpus)
        except (OSError, ValueError):
            self._before = None

    def stop(self) -> float | None:
        if self._before is None:
            return None
        try:
            after = sample(self.cpus)
            self.fraction = others_fraction(self._before, after)
            self.steal = steal_fraction(self._before, after)
        except (OSError, ValueError):
            self.fraction = self.steal = None
        return self.fraction


def wait_for_calm(cpus: Sequence[int], threshold: float, max_wait_s: float, interval_s: float = 0.5,
                  sleep: Callable[[float], None] = time.sleep) -> tuple[bool, float, float | None]:
    """Sample the pinned CPUs every ``interval_s`` (the worker idle meanwhile) until one interval
    has others at or below ``threshold``, or ``max_wait_s`` has passed.
    Returns (calm, seconds waited, the last interval's fraction)."""
    start = time.perf_counter()
    fraction = None
    while True:
        monitor = Monitor(cpus)
        monitor.start()
        sleep(interval_s)
        fraction = monitor.stop()
        waited = time.perf_counter() - start
        if fraction is None or fraction <= threshold:
            return True, waited, fraction
        if waited + interval_s > max_wait_s:
            return False, waited, fraction


def gpu_other_processes(index: int = 0) -> int | None:
    """Processes other than this one with a compute context on GPU ``index`` (NVML); None without
    NVML or a GPU. Counted as all compute processes minus one (this worker's own context), because
    inside a container NVML reports host process ids that never match os.getpid()."""
    try:
        import pynvml

        pynvml.nvmlInit()
        handle = pynvml.nvmlDeviceGetHandleByIndex(index)
        procs = pynvml.nvmlDeviceGetComputeRunningProcesses(handle)
    except Exception:  # no library, driver or GPU: nothing to say
        return None
    return max(0, len(procs) - 1)


def speed_probe(repeats: int = 5, size: int = 20_000) -> float:
    """Seconds of a fixed pure-Python workload (the best of ``repeats``; ~1-2 ms each on a current
    core): the speed of the CPU this process runs on, right now. The same figure in two rows means
    the same machine speed; a slower one means the machine itself was slower (a host's other
    guests, a lower clock), which the interference figure, counting only this machine's processes
    and steal, cannot see."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        total = 0
        for i in range(size):
            total += i * i % 7
        best = min(best, time.perf_counter() - start)
    return best


# --- the policy ---------------------------------------------------------------------------------

@dataclass
class Attempt:
    timing: Timing
    interference: float | None
    gpu_others: int | None = None
    duration_s: float = 0.0  # warm-up and timed loop: what another window costs
    steal: float | None = None  # the part of ``interference`` that a hypervisor gave to other VMs
    probe_s: float | None = None  # speed_probe() right after the window

    def problems(self, config: TimingConfig) -> list[str]:
        """Human-readable reasons this window's figure is doubtful ([] when none)."""
        out = []
        if self.interference is not None and self.interference > config.max_interference:
            where = ""
            if self.steal is not None and self.steal >= 0.5 * self.interference:
                # nothing on this machine to stop: the host runs other virtual machines on these CPUs
                stolen = min(self.steal, self.interference)  # others is net of tick rounding; steal is not
                where = f" ({stolen:.0%} stolen by the hypervisor for other virtual machines)"
            out.append(f"busy machine: {self.interference:.0%} of CPU time used by other processes{where}")
        if self.timing.rel_iqr > config.max_rel_iqr:
            out.append(f"unstable: IQR {self.timing.rel_iqr:.0%} of median")
        return out

    def badness(self, config: TimingConfig) -> float:
        """How far outside the bounds (max over both ratios; <= 1 inside)."""
        ratios = [self.timing.rel_iqr / config.max_rel_iqr if config.max_rel_iqr else float(self.timing.rel_iqr > 0)]
        if self.interference is not None:
            ratios.append(self.interference / config.max_interference if config.max_interference
                          else float(self.interference > 0))
        return max(ratios)


@dataclass
class Outcome:
    """The kept window and what happened on the way to it."""
    kept: Attempt
    attempts: list[Attempt] = field(default_factory=list)
    waited_s: float = 0.0
    flags: list[str] = field(default_factory=list)

    @property
    def remeasured(self) -> int:
        return len(self.attempts) - 1

    def columns(self) -> dict[str, object]:
        """The row's timing columns plus interference, rel_iqr, remeasured and flags."""
        row = dict(self.kept.timing.summary())
        row["first_call_s"] = self.attempts[0].timing.first_call_s
        # a recompilation in any window is the step's behaviour, whichever window is kept
        row["recompilations"] = sum(a.timing.recompilations for a in self.attempts)
        row["interference"] = self.kept.interference
        row["probe_s"] = self.kept.probe_s
        row["remeasured"] = self.remeasured
        row["flags"] = "; ".join(self.flags)
        return row


def time_with_policy(step: Callable[[], None], config: TimingConfig, cpus: Sequence[int] | None = None, *,
                     traces: Callable[[], int] = lambda: 0, after_warmup: Callable[[], None] = lambda: None,
                     after_first_window: Callable[[], None] = lambda: None, gpu_index: int | None = None,
                     deadline: float | None = None, wait: Callable[..., tuple[bool, float, float | None]] = wait_for_calm,
                     probe: Callable[[], float | None] = speed_probe) -> Outcome:
    """Time ``step`` (timing.time_step) with the interference monitor around the timed loop, then
    re-time it while the window is doubtful and the policy allows: at most ``config.remeasure``
    times, each after waiting for calm (bounded by ``config.calm_wait_s``; a machine that stays busy
    ends the retries), never starting one that could run past ``deadline`` (a perf_counter value).

    ``after_warmup`` runs before the first timed loop only (memory peaks reset there);
    ``after_first_window`` runs right after it (peak memory is read there, before any re-timing).
    """
    cpus = list(cpus) if cpus is not None else sorted(os.sched_getaffinity(0))
    monitor = Monitor(cpus)

    def window(first: bool) -> Attempt:
        def begin() -> None:
            if first:
                after_warmup()
            monitor.start()

        timing = time_step(step, config, traces=traces, after_warmup=begin, first_call=first)
        fraction = monitor.stop()
        duration = sum(timing.times_s) + config.warmup_steps * timing.median_s
        return Attempt(timing, fraction, gpu_other_processes(gpu_index) if gpu_index is not None else None, duration,
                       monitor.steal, probe())

    first = window(True)
    after_first_window()
    outcome = Outcome(kept=first, attempts=[first])
    current = first
    while current.problems(config) and outcome.remeasured < config.remeasure:
        cost = config.calm_wait_s + 1.5 * current.duration_s
        if deadline is not None and time.perf_counter() + cost > deadline:
            break
        # calm means well under the bound, so that the next window has room to stay under it
        calm, waited, _ = wait(cpus, config.max_interference / 2, config.calm_wait_s)
        outcome.waited_s += waited
        if not calm:
            break  # still busy: re-timing now would measure the same interference
        current = window(False)
        outcome.attempts.append(current)
    passing = [a for a in outcome.attempts if not a.problems(config)]
    outcome.kept = passing[0] if passing else min(outcome.attempts, key=lambda a: a.badness(config))
    outcome.flags = outcome.kept.problems(config)
    if outcome.kept.gpu_others:
        outcome.flags.append(f"shared GPU: {outcome.kept.gpu_others} other process(es) on it")
    return outcome
