"""Interference detection and the re-measurement policy (lambda_bench.measure.interference).

The arithmetic and the policy run on injected /proc/stat samples (deterministic on any machine);
real processes pinned to one CPU show that a busy neighbour makes the detector fire, in the monitor
and in a real worker through the runner. No assertion here depends on how fast anything runs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from lambda_bench import results, runner
from lambda_bench.measure import interference
from lambda_bench.measure.interference import CpuSample, Monitor, others_fraction, time_with_policy
from lambda_bench.measure.timing import TimingConfig

# its assertions depend on CPU time or on timed workers finishing in time: run alone (tox.ini's
# second pass), not beside another test process
pytestmark = pytest.mark.serial

linux = pytest.mark.skipif(not os.path.exists("/proc/stat") or not hasattr(os, "sched_setaffinity"),
                           reason="needs Linux /proc/stat and CPU affinity")

STAT = """cpu  100 0 50 1000 10 0 0 0 0 0
cpu0 60 0 30 400 5 0 0 0 0 0
cpu1 40 0 20 600 5 1 2 3 0 0
intr 1 2 3
"""

BUSY_CHILD = "import os, sys; os.sched_setaffinity(0, {int(sys.argv[1])}); print('ready', flush=True)\nwhile True: pass"


# --- arithmetic ---------------------------------------------------------------------------------

def test_cpu_ticks_reads_only_the_pinned_cpus():
    assert interference.cpu_ticks([0], STAT) == (90, 495)
    # cpu1: user+nice+system+irq+softirq+steal busy; idle+iowait idle
    assert interference.cpu_ticks([1], STAT) == (66, 671)
    assert interference.cpu_ticks([0, 1], STAT) == (156, 1166)


def test_steal_is_busy_time_and_is_read_apart():
    assert interference.cpu_counters([1], STAT) == (66, 671, 3)
    before = CpuSample(busy_ticks=1000, total_ticks=10_000, own_s=5.0, wall_s=0.0, n_cpus=2, steal_ticks=100)
    after = CpuSample(busy_ticks=1100, total_ticks=10_200, own_s=5.0, wall_s=1.0, n_cpus=2, steal_ticks=180)
    assert interference.steal_fraction(before, after) == pytest.approx(0.40)
    assert others_fraction(before, after, tick_hz=100) == pytest.approx(0.49)  # steal is inside others


def test_a_flag_says_when_the_cpu_time_went_to_other_virtual_machines():
    cfg = TimingConfig(max_rel_iqr=100.0)
    timing = interference.Timing(times_s=[1.0, 1.0, 1.0], first_call_s=1.0, recompilations=0)
    stolen = interference.Attempt(timing, 0.30, steal=0.25)
    local = interference.Attempt(timing, 0.30, steal=0.01)
    assert stolen.problems(cfg) == ["busy machine: 30% of CPU time used by other processes "
                                    "(25% stolen by the hypervisor for other virtual machines)"]
    assert local.problems(cfg) == ["busy machine: 30% of CPU time used by other processes"]


def test_cpu_ticks_names_a_missing_cpu():
    with pytest.raises(ValueError, match="cpu7"):
        interference.cpu_ticks([0, 7], STAT)


def test_others_fraction_subtracts_the_workers_own_time():
    before = CpuSample(busy_ticks=1000, total_ticks=10_000, own_s=5.0, wall_s=0.0, n_cpus=2)
    # 1 s on 2 CPUs at 100 Hz: 200 ticks, all busy; the worker itself used 1.2 CPU-seconds; one
    # tick per CPU is rounding: (200 - 120 - 2) / 200
    busy = CpuSample(busy_ticks=1200, total_ticks=10_200, own_s=6.2, wall_s=1.0, n_cpus=2)
    assert others_fraction(before, busy, tick_hz=100) == pytest.approx(0.39)
    # the worker alone: its own time is all the busy time (a tick's rounding either way is clamped)
    alone = CpuSample(busy_ticks=1201, total_ticks=10_200, own_s=7.0, wall_s=1.0, n_cpus=2)
    assert others_fraction(before, alone, tick_hz=100) == 0.0
    # the worker asleep while something else burns one CPU of two
    idle_worker = CpuSample(busy_ticks=1100, total_ticks=10_200, own_s=5.0, wall_s=1.0, n_cpus=2)
    assert others_fraction(before, idle_worker, tick_hz=100) == pytest.approx(0.49)
    # a 5 ms window that caught one stray tick on each CPU is not "busy"
    stray = CpuSample(busy_ticks=1002, total_ticks=10_002, own_s=5.004, wall_s=0.005, n_cpus=2)
    assert others_fraction(before, stray, tick_hz=100) == 0.0
    assert others_fraction(before, before, tick_hz=100) is None  # no tick counted: nothing to say


# --- the policy, on injected samples ------------------------------------------------------------

class ScriptedCpus:
    """Stands in for interference.sample: each monitored window reads the next scripted share of
    other processes (the worker's own time is taken as zero)."""

    def __init__(self, shares):
        self.shares, self.calls, self.busy, self.total = list(shares), 0, 0, 0

    def __call__(self, cpus):
        self.calls += 1
        if self.calls % 2 == 0:  # the end of a window
            self.busy += round(100 * self.shares.pop(0))
            self.total += 100
        return CpuSample(self.busy, self.total, 0.0, time.perf_counter(), n_cpus=0)  # exact counts: no rounding


def _policy(monkeypatch, shares, calm=True, **config):
    script = ScriptedCpus(shares)
    monkeypatch.setattr(interference, "sample", script)
    waits = []

    def wait(cpus, threshold, max_wait_s):
        waits.append((threshold, max_wait_s))
        return calm, 0.0, 0.0

    events = []
    cfg = TimingConfig(warmup_steps=0, min_steps=3, min_time_s=0.0, max_rel_iqr=100.0, **config)
    outcome = time_with_policy(lambda: None, cfg, [0], wait=wait, after_warmup=lambda: events.append("reset"),
                               after_first_window=lambda: events.append("read memory"))
    return outcome, waits, events


def test_a_quiet_window_is_kept_as_it_is(monkeypatch):
    outcome, waits, events = _policy(monkeypatch, [0.02])
    assert outcome.remeasured == 0 and outcome.flags == [] and waits == []
    assert outcome.columns()["interference"] == pytest.approx(0.02)
    assert outcome.columns()["flags"] == ""
    assert outcome.columns()["probe_s"] > 0  # the machine-speed probe ran right after the window


def test_a_busy_window_is_timed_again_once_the_machine_is_calm(monkeypatch):
    outcome, waits, events = _policy(monkeypatch, [0.40, 0.03], calm_wait_s=7.0)
    assert outcome.remeasured == 1 and outcome.flags == []
    assert outcome.kept is outcome.attempts[1] and outcome.kept.interference == pytest.approx(0.03)
    assert waits == [(0.05, 7.0)]  # calm: half the bound, waited for at most calm_wait_s
    # memory: peaks reset once before the first window and read once after it, never re-measured
    assert events == ["reset", "read memory"]
    assert outcome.columns()["first_call_s"] is not None


def test_a_machine_that_stays_busy_gives_a_flagged_row(monkeypatch):
    outcome, waits, _ = _policy(monkeypatch, [0.45, 0.38, 0.60], remeasure=2)
    assert outcome.remeasured == 2 and len(waits) == 2
    assert outcome.kept.interference == pytest.approx(0.38)  # the least doubtful window
    assert outcome.flags == ["busy machine: 38% of CPU time used by other processes"]
    assert outcome.columns()["flags"] == "busy machine: 38% of CPU time used by other processes"


def test_no_calm_means_no_retiming(monkeypatch):
    outcome, waits, _ = _policy(monkeypatch, [0.5], calm=False)
    assert len(waits) == 1 and outcome.remeasured == 0
    assert outcome.flags and outcome.flags[0].startswith("busy machine: 50%")


def test_remeasure_zero_only_detects(monkeypatch):
    outcome, waits, _ = _policy(monkeypatch, [0.5], remeasure=0)
    assert waits == [] and outcome.remeasured == 0 and outcome.flags


def test_no_retiming_past_the_deadline(monkeypatch):
    script = ScriptedCpus([0.5, 0.0])
    monkeypatch.setattr(interference, "sample", script)
    outcome = time_with_policy(lambda: None, TimingConfig(warmup_steps=0, min_steps=3, min_time_s=0.0), [0],
                               deadline=time.perf_counter() + 1.0, wait=lambda *a: (True, 0.0, 0.0))
    assert outcome.remeasured == 0 and outcome.flags  # calm_wait_s (10 s) alone would overrun


def test_an_unstable_window_is_flagged_with_its_iqr(monkeypatch):
    monkeypatch.setattr(interference, "sample", ScriptedCpus([0.0, 0.0]))
    delays = iter([0.001, 0.03] * 10)
    cfg = TimingConfig(warmup_steps=0, min_steps=4, max_steps=4, min_time_s=0.0, remeasure=1, max_rel_iqr=0.25)
    outcome = time_with_policy(lambda: time.sleep(next(delays)), cfg, [0], wait=lambda *a: (True, 0.0, 0.0))
    assert outcome.remeasured == 1
    (flag,) = outcome.flags
    assert flag.startswith("unstable: IQR ") and flag.endswith("% of median")
    assert outcome.columns()["rel_iqr"] > 0.25


def test_gpu_neighbours_are_flagged(monkeypatch):
    monkeypatch.setattr(interference, "sample", ScriptedCpus([0.0]))
    monkeypatch.setattr(interference, "gpu_other_processes", lambda index: 2)
    cfg = TimingConfig(warmup_steps=0, min_steps=3, min_time_s=0.0, max_rel_iqr=100.0)
    outcome = time_with_policy(lambda: None, cfg, [0], gpu_index=0)
    assert outcome.flags == ["shared GPU: 2 other process(es) on it"]


def test_policy_options_are_validated():
    for bad, match in (({"max_interference": 1.5}, "max_interference=1.5"), ({"remeasure": -1}, "remeasure=-1"),
                       ({"calm_wait_s": "soon"}, "calm_wait_s='soon'"), ({"max_rel_iqr": -0.1}, "max_rel_iqr")):
        with pytest.raises(ValueError, match=match):
            TimingConfig(**bad)
    with pytest.raises(ValueError, match="max_interference"):
        runner.build_sweep({"models": ["lambda_conv"], "timing": {"max_interference": 2}})


def test_the_new_columns_are_in_the_schema_and_summarised():
    for col in ("interference", "rel_iqr", "remeasured", "flags", "thread_policy"):
        assert col in results.COLUMNS and results.COLUMNS[col]
    rows = [results.blank_row(case_id="a", status="ok", remeasured=1, flags=""),
            results.blank_row(case_id="b", status="ok", remeasured=2, flags="unstable: IQR 45% of median"),
            results.blank_row(case_id="c", status="ok"),  # an older row: no such columns filled
            results.blank_row(case_id="d", status="oom")]
    text = runner.stability_summary(rows)
    assert "re-measured (busy or unstable window): 2 of 3 ok cases" in text
    assert "flagged (figure doubtful, see the flags column): 1" in text
    assert "b: unstable: IQR 45% of median" in text


# --- real processes -----------------------------------------------------------------------------

def _busy_child(cpu: int) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", BUSY_CHILD, str(cpu)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    return proc


def _stop(proc: subprocess.Popen) -> None:
    proc.kill()
    proc.wait()


@linux
def test_a_busy_process_on_the_pinned_cpu_makes_the_monitor_fire():
    cpu = sorted(os.sched_getaffinity(0))[0]
    child = _busy_child(cpu)
    try:
        monitor = Monitor([cpu])
        monitor.start()
        time.sleep(1.0)  # the worker idle, the neighbour burning its CPU
        fraction = monitor.stop()
    finally:
        _stop(child)
    assert fraction is not None and fraction > 0.5


@linux
def test_the_workers_own_busy_time_is_not_interference():
    """Our own busy loop on the pinned CPU must not count as others: what the monitor reports is
    at most what is left after our own share (anything there is other processes on this box)."""
    cpu = sorted(os.sched_getaffinity(0))[0]
    old = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {cpu})
    try:
        before = interference.sample([cpu])
        end = time.perf_counter() + 1.0
        while time.perf_counter() < end:
            pass
        after = interference.sample([cpu])
    finally:
        os.sched_setaffinity(0, old)
    own = (after.own_s - before.own_s) * interference._TICK_HZ
    total = after.total_ticks - before.total_ticks
    fraction = others_fraction(before, after)
    assert own / total > 0.05  # we did run (more than a few ticks, even on a crowded CPU)
    # the own time was subtracted: others + own cannot exceed the CPU's time (a tick of rounding)
    assert fraction + own / total <= 1.0 + 1 / total


@linux
def test_a_real_worker_next_to_a_busy_process_gives_a_flagged_row(tmp_path):
    pytest.importorskip("torch")
    cpu = sorted(os.sched_getaffinity(0))[0]  # threads=1 pins the worker to the first usable CPU
    child = _busy_child(cpu)
    try:
        sweep = runner.build_sweep({"models": ["lambda_conv"], "frameworks": ["torch"], "image_sizes": [8],
                                    "batch_sizes": [2], "modes": ["infer"], "threads": 1,
                                    "timing": {"warmup_steps": 1, "min_steps": 3, "min_time_s": 0.5,
                                               "remeasure": 1, "calm_wait_s": 1.0}})
        runner.run(sweep, tmp_path / "run")
    finally:
        _stop(child)
    (row,) = results.read_rows(tmp_path / "run")
    assert row["status"] == "ok", row
    assert row["interference"] > 0.25, row
    assert "busy machine: " in row["flags"] and "% of CPU time used by other processes" in row["flags"]
    assert row["remeasured"] == 0  # the neighbour never stopped: no calm, no pointless re-timing
    assert row["thread_policy"].startswith(f"1 thread on CPU {cpu} of ")


def test_cli_policy_options_reach_the_rows_and_env(tmp_path, monkeypatch):
    pytest.importorskip("torch")
    from lambda_bench import cli

    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)  # restored after the test: the CLI sets it
    out = tmp_path / "run"
    assert cli.main(["run", "--models", "lambda_conv", "--frameworks", "torch", "--image-size", "8",
                     "--batch-size", "2", "--threads", "1", "--remeasure", "0", "--max-interference", "0.5",
                     "--omp-wait-policy", "passive", "--out", str(out)]) == 0
    env = json.loads((out / results.ENV_FILE).read_text())
    assert env["omp_wait_policy"] == "PASSIVE"
    assert env["config"]["timing"]["remeasure"] == 0 and env["config"]["timing"]["max_interference"] == 0.5
    (row,) = results.read_rows(out)
    assert row["thread_policy"].endswith("OMP_WAIT_POLICY=passive") and row["remeasured"] == 0
    assert row["rel_iqr"] == pytest.approx(row["step_time_iqr_s"] / row["step_time_median_s"])


def test_cli_bad_policy_option_is_one_line(capsys):
    from lambda_bench import cli

    assert cli.main(["run", "--models", "lambda_conv", "--remeasure", "-1", "--out", "/nonexistent/x"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("lambda-bench: error: remeasure=-1") and len(err.strip().splitlines()) == 1


@linux
def test_wait_for_calm_waits_while_a_neighbour_burns_and_gives_up_in_time():
    cpu = sorted(os.sched_getaffinity(0))[0]
    child = _busy_child(cpu)
    try:
        calm, waited, fraction = interference.wait_for_calm([cpu], threshold=0.05, max_wait_s=1.2, interval_s=0.3)
    finally:
        _stop(child)
    assert not calm and fraction > 0.05
    assert 0.9 <= waited <= 3.0  # bounded by max_wait_s (plus one interval of slack on a slow box)
    calm, waited, _ = interference.wait_for_calm([cpu], threshold=1.0, max_wait_s=5.0, interval_s=0.1)
    assert calm and waited < 2.0  # any interval passes a bound of 100%


def test_gpu_neighbours_counted_from_nvml(monkeypatch):
    import types

    fake = types.SimpleNamespace(nvmlInit=lambda: None, nvmlDeviceGetHandleByIndex=lambda i: i,
                                 nvmlDeviceGetComputeRunningProcesses=lambda h: ["ours", "theirs", "another"])
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    assert interference.gpu_other_processes(0) == 2
    fake.nvmlDeviceGetComputeRunningProcesses = lambda h: []  # a container that hides every process
    assert interference.gpu_other_processes(0) == 0

    def no_gpu(i):
        raise RuntimeError("NVML: no such device")

    fake.nvmlDeviceGetHandleByIndex = no_gpu
    assert interference.gpu_other_processes(0) is None
