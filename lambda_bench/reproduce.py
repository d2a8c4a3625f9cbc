"""How far a run's figures reproduce on this machine: measure its cases again and compare per case.

``lambda-bench reproduce RUN_DIR`` reads the run's ok rows and its sweep settings (env.json: threads,
timing and re-measurement policy, timeout, seed), measures the same cases again, in the same order,
into a new run directory through the same runner, and prints the per-case agreement of the median
step times: the median ratio, the share of cases within 10%, the worst case, the cases beyond 1.5x.
``--against OTHER_RUN`` compares two existing runs without measuring.

The second pass runs after the first, not interleaved with it, so slow drift of the machine
(thermal state, other work starting, and on a virtual machine the host's other guests, which the
interference monitor cannot see) counts against agreement.

``--interleaved`` answers the narrower question "how repeatable is one case's figure": every case is
measured twice more, back to back (fresh worker each time, the order of the two passes alternating
from case to case), into ``OUT-a`` and ``OUT-b``, and those two are compared. Drift over minutes
then hits both measurements of a case alike; what remains is the case's own scatter.
"""

from __future__ import annotations

import dataclasses
import json
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

from . import results

WITHIN = 0.10        # a case "agrees" when the two medians are within 10% of each other ...
SHARE = 0.90         # ... the run reproduces when at least 90% of cases agree ...
WORST = 1.5          # ... and none is more than 1.5x off


@dataclass
class Agreement:
    pairs: list[tuple[Mapping[str, Any], Mapping[str, Any], float]] = field(default_factory=list)  # (a, b, b/a)
    only_in_a: list[str] = field(default_factory=list)
    only_in_b: list[str] = field(default_factory=list)

    @staticmethod
    def spread(ratio: float) -> float:
        """Symmetric disagreement: 1.25 for b 25% slower or 20% faster."""
        return max(ratio, 1 / ratio)

    @property
    def n(self) -> int:
        return len(self.pairs)

    @property
    def median_ratio(self) -> float:
        return statistics.median(r for _, _, r in self.pairs)

    @property
    def share_within(self) -> float:
        return sum(self.spread(r) <= 1 + WITHIN for _, _, r in self.pairs) / self.n

    @property
    def worst(self) -> tuple[str, float]:
        a, _, r = max(self.pairs, key=lambda p: self.spread(p[2]))
        return a["case_id"], r

    @property
    def beyond_worst(self) -> list[str]:
        return [a["case_id"] for a, _, r in self.pairs if self.spread(r) > WORST]

    @property
    def probe_ratio(self) -> float | None:
        """Median over cases of second / first machine-speed probe (rows' probe_s); None without probes."""
        ratios = [b["probe_s"] / a["probe_s"] for a, b, _ in self.pairs
                  if _positive(a.get("probe_s")) and _positive(b.get("probe_s"))]
        return statistics.median(ratios) if ratios else None

    @property
    def probe_range(self) -> float | None:
        """Slowest / fastest machine-speed probe over every compared row of both runs: how much the
        machine's own speed moved while they ran (None without probes)."""
        probes = [r["probe_s"] for a, b, _ in self.pairs for r in (a, b) if _positive(r.get("probe_s"))]
        return max(probes) / min(probes) if probes else None

    @property
    def process_spread(self) -> float | None:
        """Median over compared rows of process_spread (rows measured in several processes), else None."""
        spreads = [r["process_spread"] for a, b, _ in self.pairs for r in (a, b)
                   if isinstance(r.get("process_spread"), (int, float)) and math.isfinite(r["process_spread"])]
        return statistics.median(spreads) if spreads else None

    @property
    def reproduces(self) -> bool:
        return self.n > 0 and self.share_within >= SHARE and not self.beyond_worst

    def as_dict(self) -> dict[str, Any]:
        worst_id, worst_ratio = self.worst if self.n else (None, None)
        return {"cases": self.n, "median_ratio": self.median_ratio if self.n else None,
                "share_within_10pct": self.share_within if self.n else None,
                "worst_case": worst_id, "worst_ratio": worst_ratio, "beyond_1_5x": self.beyond_worst,
                "probe_ratio": self.probe_ratio if self.n else None,
                "probe_range": self.probe_range if self.n else None,
                "process_spread": self.process_spread if self.n else None,
                "reproduces": self.reproduces, "only_in_first": self.only_in_a, "only_in_second": self.only_in_b,
                "bar": {"within": WITHIN, "share": SHARE, "worst": WORST},
                "per_case": [{"case_id": a["case_id"], "first_s": a["step_time_median_s"],
                              "second_s": b["step_time_median_s"], "ratio": r,
                              "flags": "; ".join(dict.fromkeys(filter(None, (a.get("flags"), b.get("flags")))))}
                             for a, b, r in self.pairs]}


def _positive(x: Any) -> bool:
    return isinstance(x, (int, float)) and x > 0 and math.isfinite(x)


def _ok(rows: Iterable[Mapping[str, Any]]) -> dict[str, Mapping[str, Any]]:
    """case_id -> the last ok row with a positive median (a resumed run may hold a case once only)."""
    out = {}
    for r in rows:
        median = r.get("step_time_median_s")
        if r.get("status") == "ok" and isinstance(median, (int, float)) and median > 0 and math.isfinite(median):
            out[r["case_id"]] = r
    return out


def compare(rows_a: Iterable[Mapping[str, Any]], rows_b: Iterable[Mapping[str, Any]]) -> Agreement:
    a, b = _ok(rows_a), _ok(rows_b)
    agreement = Agreement(only_in_a=sorted(set(a) - set(b)), only_in_b=sorted(set(b) - set(a)))
    for case_id, row in a.items():  # the first run's order
        if case_id in b:
            agreement.pairs.append((row, b[case_id], b[case_id]["step_time_median_s"] / row["step_time_median_s"]))
    return agreement


def sweep_of(run_dir: Path | str, processes: int | None = None):
    """The ok cases of ``run_dir`` as a runner.Sweep with the run's own settings (env.json); ``processes``
    replaces the run's processes per case (ValueError unless a positive integer)."""
    from . import runner
    from .measure.timing import TimingConfig

    run_dir = Path(run_dir)
    rows = results.read_rows(run_dir)
    if not rows:
        raise ValueError(f"RUN_DIR {str(run_dir)!r}: no {results.ROWS_FILE} rows there; not a lambda-bench run")
    env_path = run_dir / results.ENV_FILE
    config = json.loads(env_path.read_text()).get("config", {}) if env_path.exists() else {}
    cases = []
    for row in _ok(rows).values():
        threads = row.get("threads")
        cases.append(runner.Case(row["model"], row["framework"], int(row["image_size"]), int(row["batch_size"]),
                                 row["mode"], row["precision"], row["compile"], row["device"],
                                 None if threads is None else int(threads), row.get("implementation") or "ours",
                                 runner.parse_spec_options(row.get("spec_options"))))
    if not cases:
        raise ValueError(f"RUN_DIR {str(run_dir)!r}: no ok rows to measure again")
    timing = TimingConfig(**config.get("timing", {}))
    if processes is None:
        processes = config.get("processes", 1)
        runner._positive(f"{env_path}: processes", processes)
    else:
        runner._positive("--processes", processes)
    return runner.Sweep(tuple(cases), threads=cases[0].threads, timeout_s=float(config.get("timeout_s", 600.0)),
                        seed=int(config.get("seed", 0)), timing=timing,
                        memory_limit_bytes=config.get("memory_limit_bytes"), source=f"reproduce {run_dir}",
                        processes=processes)


class _FirstCaseOnly:
    """An executor that runs only the first case it is handed: the runner's store, resume and rows
    stay as they are, and the caller decides the order of cases across two run directories."""

    def __init__(self) -> None:
        from .executors.local import LocalExecutor

        self._local = LocalExecutor()
        self.name, self.runs_here, self.concurrent = "local", True, False

    def __enter__(self) -> "_FirstCaseOnly":
        return self

    def __exit__(self, *exc: Any) -> None:
        pass

    def describe(self) -> str:
        return self._local.describe()

    def run(self, cases, sweep, worker=None, before=None):
        return self._local.run(list(cases)[:1], sweep, worker, before)

    def running(self) -> list[str]:
        return []


def measure_interleaved(sweep, dir_a: Path | str, dir_b: Path | str, *, resume: bool = False, command: str = "",
                        progress=None, worker: tuple[str, ...] | None = None) -> None:
    """Measure every case of ``sweep`` once into ``dir_a`` and once into ``dir_b``, case by case, the
    two back to back and their order alternating (a b, b a, a b, ...); resumable like any run."""
    from . import runner

    for d in (dir_a, dir_b):
        if not resume and results.read_rows(d):
            raise ValueError(f"out={str(d)!r}: already holds results; pass --resume to continue it or choose "
                             "a new directory")
    for i, case in enumerate(sweep.cases):
        # this case first, so that the runner (which measures the not yet stored cases in order) measures
        # it; every case stays in the sweep, so each directory's env.json describes the whole sweep
        first = dataclasses.replace(sweep, cases=(case, *(c for c in sweep.cases if c is not case)))
        for d in ((dir_a, dir_b) if i % 2 == 0 else (dir_b, dir_a)):
            if any(r.get("case_id") == case.case_id for r in results.read_rows(d)):
                continue  # measured before an interruption
            label = "a" if d == dir_a else "b"
            say = None if progress is None else (lambda line, label=label: progress(f"  {label}: {line.strip()}"))
            runner.run(first, d, resume=True, command=command, progress=say, worker=worker,
                       executor=_FirstCaseOnly())


def format_agreement(agreement: Agreement, name_a: str, name_b: str, top: int = 10) -> str:
    if not agreement.n:
        return f"no case is ok in both {name_a} and {name_b}: nothing to compare"
    worst_id, worst_ratio = agreement.worst
    lines = [f"{agreement.n} cases ok in both {name_a} and {name_b} (ratio = second / first median step time)",
             f"  median ratio {agreement.median_ratio:.3f}; within {WITHIN:.0%}: "
             f"{agreement.share_within:.0%} of cases; worst {worst_ratio:.3f} ({worst_id}); "
             f"beyond {WORST:g}x: {len(agreement.beyond_worst)}"]
    probe = agreement.probe_ratio
    if probe is not None:
        # the probe is pure Python on the case's CPUs: it moves with the machine, not with the harness
        verdict = ("alike" if abs(probe - 1) <= 0.05 else
                   f"the machine itself ran {abs(probe - 1):.0%} {'slower' if probe > 1 else 'faster'} in the second")
        lines.append(f"  machine speed (probe_s, second / first, median): {probe:.3f}: {verdict}")
        spread = agreement.probe_range
        if spread is not None and spread > 1 + WITHIN:
            # two figures taken while the machine ran at speeds this far apart cannot agree closer
            lines.append(f"  the machine's own speed moved {spread:.2f}x between rows (slowest / fastest probe_s): "
                         "a bound on how closely any two figures taken here can agree")
    processes = agreement.process_spread
    if processes is not None:
        lines.append(f"  processes per case: median spread of their medians {processes:.0%} of the kept one")
    ranked = sorted(agreement.pairs, key=lambda p: -Agreement.spread(p[2]))[:top]
    lines.append(f"  least reproducible {len(ranked)}:")
    for a, b, r in ranked:
        flags = "; ".join(dict.fromkeys(filter(None, (a.get("flags"), b.get("flags")))))
        lines.append(f"    {r:6.3f}  {a['step_time_median_s'] * 1e3:9.2f} -> {b['step_time_median_s'] * 1e3:9.2f} ms  "
                     f"{a['case_id']}" + (f"  [flagged: {flags}]" if flags else ""))
    for label, ids in (("only in the first", agreement.only_in_a), ("only in the second", agreement.only_in_b)):
        if ids:
            lines.append(f"  {label} (not ok in the other): {len(ids)}")
    verdict = "reproduces" if agreement.reproduces else "does NOT reproduce"
    lines.append(f"{verdict} (bar: >= {SHARE:.0%} of cases within {WITHIN:.0%}, none beyond {WORST:g}x)")
    return "\n".join(lines)
