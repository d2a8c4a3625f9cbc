"""Sweeps on a Dask cluster (--executor dask): the same rows as the local executor, placement by
resources, a killed Dask worker, a killed client then --resume, an unreachable scheduler. Every
cluster is a local one on 127.0.0.1; the worker is tests/helpers/fake_worker.py, which sleeps and
records where it ran (FAKE_WORKER_LOG) instead of computing."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pandas as pd
import pytest

from conftest import require_or_skip
from lambda_bench import cli, executors, results, runner
from lambda_bench.report import environment

require_or_skip("distributed", "cluster")  # pytest.importorskip, unless CI requires the cluster extra
from lambda_bench.executors.dask import DaskExecutor, local_worker_specs  # noqa: E402

# its assertions depend on CPU time or on timed workers finishing in time: run alone (tox.ini's
# second pass), not beside another test process
pytestmark = pytest.mark.serial

ROOT = Path(__file__).resolve().parent.parent
FAKE = (sys.executable, str(ROOT / "tests" / "helpers" / "fake_worker.py"))
MODELS = ["lambda", "lambda_conv", "mhsa", "sasa", "axial"]


def _sweep(models, devices=("cpu",), **extra):
    return runner.build_sweep({"models": list(models), "frameworks": ["torch"], "image_sizes": [16],
                               "batch_sizes": [2], "devices": list(devices), **extra}, "test")


def _log(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _intervals(log: list[dict]) -> dict[str, tuple[float, float, dict]]:
    starts = {r["case"]: r for r in log if r["event"] == "start"}
    return {case: (starts[case]["time"], r["time"], starts[case]) for r in log if r["event"] == "end"
            for case in [r["case"]]}


def test_dask_sweep_gives_the_local_executor_s_cases_and_statuses(tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_WORKER", json.dumps({"lambda": "segfault", "mhsa": "hang", "sasa": "exit3"}))
    sweep = _sweep(MODELS, timeout_s=3)
    runner.run(sweep, tmp_path / "local", worker=FAKE)
    runner.run(sweep, tmp_path / "dask", worker=FAKE, executor=executors.make("dask", local_workers=2))
    local, dask = results.read_rows(tmp_path / "local"), results.read_rows(tmp_path / "dask")
    assert sorted(r["case_id"] for r in dask) == sorted(c.case_id for c in sweep.cases)  # each exactly once
    assert {r["case_id"]: r["status"] for r in dask} == {r["case_id"]: r["status"] for r in local}
    assert {r["status"] for r in dask} == {"ok", "crashed", "timeout"}
    for rows in (local, dask):
        assert {r["host"] for r in rows} == {socket.gethostname()} and {r["gpu_index"] for r in rows} == {None}
        assert {r["device_name"] for r in rows} == {results.cpu_name()}
    env = json.loads((tmp_path / "dask" / "env.json").read_text())
    assert list(env["hosts"]) == [socket.gethostname()] and env["hosts"][socket.gethostname()]["versions"]
    assert list(results.load(tmp_path / "dask").columns) == list(results.COLUMNS)


def test_local_workers_own_one_gpu_each_and_one_holds_the_machine():
    specs = local_worker_specs(3, n_gpus=2)
    assert [s["resources"] for s in specs] == [{"machine": 1, "GPU": 1}, {"GPU": 1}, {}]
    assert [s["env"].get("CUDA_VISIBLE_DEVICES") for s in specs] == ["0", "1", None]
    assert [s["resources"] for s in local_worker_specs(2, n_gpus=0)] == [{"machine": 1}, {}]


def test_placement_runs_up_to_the_resources_and_cpu_cases_alone(tmp_path, monkeypatch):
    log_path = tmp_path / "where.jsonl"
    monkeypatch.setenv("FAKE_WORKER_LOG", str(log_path))
    monkeypatch.setenv("FAKE_WORKER_SLEEP", "1.5")
    # three fake GPUs on one node; worker 0 also holds the node for CPU cases
    specs = [{"resources": {"machine": 1, "GPU": 1}, "env": {"CUDA_VISIBLE_DEVICES": "0"}},
             {"resources": {"GPU": 1}, "env": {"CUDA_VISIBLE_DEVICES": "1"}},
             {"resources": {"GPU": 1}, "env": {"CUDA_VISIBLE_DEVICES": "2"}}]
    sweep = _sweep(MODELS[:3], devices=("cpu", "cuda"), modes=["infer", "train"])  # 6 cuda + 6 cpu cases
    lines: list[str] = []
    runner.run(sweep, tmp_path / "run", worker=FAKE, executor=DaskExecutor(worker_specs=specs), progress=lines.append)
    rows = results.read_rows(tmp_path / "run")
    assert sorted(r["case_id"] for r in rows) == sorted(c.case_id for c in sweep.cases)
    assert {r["status"] for r in rows} == {"ok"}
    spans = _intervals(_log(log_path))
    assert len(spans) == 12

    def overlapping(a, b):
        return a[0] < b[1] and b[0] < a[1]

    gpu = {c: s for c, s in spans.items() if c.endswith("|cuda")}
    cpu = {c: s for c, s in spans.items() if c.endswith("|cpu")}
    # concurrency up to the three GPUs, never beyond, never two cases on one GPU
    peak = max(sum(s[0] <= t < s[1] for s in gpu.values()) for t, _, _ in gpu.values())
    assert 2 <= peak <= 3, peak
    for a, sa in gpu.items():
        for b, sb in gpu.items():
            if a < b and overlapping(sa, sb):
                assert sa[2]["cuda_visible_devices"] != sb[2]["cuda_visible_devices"], (a, b)
    # a CPU case has the node to itself: no other case of any kind runs beside it
    for a, sa in cpu.items():
        assert sa[2]["cuda_visible_devices"] == "0"  # the worker holding the machine resource
        for b, sb in spans.items():
            assert a == b or not overlapping(sa, sb), (a, b)
    # rows say which GPU: the one the fake worker saw
    for r in rows:
        seen = spans["|".join(str(r[k]) for k in ("model", "framework", "image_size", "mode", "device"))][2]
        assert r["gpu_index"] == (int(seen["cuda_visible_devices"]) if r["device"] == "cuda" else None)
    # progress: one line per case with where it ran, and what runs where
    assert sum(line.startswith("[") for line in lines) == 12
    assert any(" GPU " in line and "running:" in line for line in lines)


def _kill_when_started(log_path: Path, case_prefix: str, times: int, killed: list[int]) -> threading.Thread:
    """Kill the Dask worker process running ``case_prefix`` (the fake worker's parent) the first
    ``times`` times it starts."""
    def watch():
        deadline = time.time() + 120
        seen = 0
        while time.time() < deadline and len(killed) < times:
            starts = [r for r in _log(log_path) if r["event"] == "start" and r["case"].startswith(case_prefix)]
            if len(starts) > seen:
                seen = len(starts)
                time.sleep(0.3)  # well inside the case
                os.kill(starts[-1]["parent_pid"], signal.SIGKILL)
                killed.append(starts[-1]["parent_pid"])
            time.sleep(0.05)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


@pytest.mark.parametrize("retries", [0, 1])
def test_a_killed_dask_worker_is_one_crashed_row_naming_the_host(tmp_path, monkeypatch, retries):
    log_path = tmp_path / "where.jsonl"
    monkeypatch.setenv("FAKE_WORKER_LOG", str(log_path))
    monkeypatch.setenv("FAKE_WORKER", json.dumps({"mhsa": "sleep3"}))
    sweep = _sweep(["lambda", "mhsa", "sasa"])
    killed: list[int] = []
    watcher = _kill_when_started(log_path, "mhsa|", 1, killed)
    runner.run(sweep, tmp_path / "run", worker=FAKE, executor=executors.make("dask", local_workers=1, retries=retries))
    watcher.join(timeout=1)
    assert len(killed) == 1
    rows = {r["model"]: r for r in results.read_rows(tmp_path / "run")}
    assert len(results.read_rows(tmp_path / "run")) == 3 and set(rows) == {"lambda", "mhsa", "sasa"}
    assert rows["lambda"]["status"] == rows["sasa"]["status"] == "ok"  # the sweep went on
    starts = [r for r in _log(log_path) if r["event"] == "start" and r["case"].startswith("mhsa|")]
    if retries == 0:
        assert rows["mhsa"]["status"] == "crashed" and len(starts) == 1  # not retried
        assert socket.gethostname() in rows["mhsa"]["error"] and "died" in rows["mhsa"]["error"]
        assert rows["mhsa"]["host"] == socket.gethostname()
    else:
        assert rows["mhsa"]["status"] == "ok" and len(starts) == 2  # run again once, as asked
    # the case process died with its Dask worker: it never finished
    assert not any(r["event"] == "end" and r["pid"] == starts[0]["pid"] for r in _log(log_path))


def test_client_sigkill_then_resume_runs_every_case_once(tmp_path):
    out = tmp_path / "run"
    log_path = tmp_path / "where.jsonl"
    script = textwrap.dedent(f"""
        from lambda_bench import executors, runner
        sweep = runner.build_sweep({{"models": {MODELS!r}, "frameworks": ["torch", "jax"], "image_sizes": [16],
                                     "batch_sizes": [2], "devices": ["cuda"]}}, "test")
        from lambda_bench.executors.dask import DaskExecutor
        specs = [{{"resources": {{"GPU": 1}}, "env": {{"CUDA_VISIBLE_DEVICES": str(i)}}}} for i in range(2)]
        runner.run(sweep, {str(out)!r}, worker={FAKE!r}, executor=DaskExecutor(worker_specs=specs))
    """)
    env = {**os.environ, "FAKE_WORKER_SLEEP": "1", "FAKE_WORKER_LOG": str(log_path)}
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT, env=env, start_new_session=True)
    try:
        deadline = time.time() + 120
        while len(results.read_rows(out)) < 3 and time.time() < deadline:
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)  # the client only: its local cluster's processes are left to notice
        proc.wait()
        killed_at = len(results.read_rows(out))
        assert 3 <= killed_at < 10
        # a client's local cluster dies with it: nothing it started keeps running for a dead sweep
        deadline = time.time() + 60
        while time.time() < deadline and _group_alive(proc.pid):
            time.sleep(0.2)
        assert not _group_alive(proc.pid)
    finally:
        _kill_group(proc.pid)
    sweep = runner.build_sweep({"models": MODELS, "frameworks": ["torch", "jax"], "image_sizes": [16],
                                "batch_sizes": [2], "devices": ["cuda"]}, "test")
    specs = [{"resources": {"GPU": 1}, "env": {"CUDA_VISIBLE_DEVICES": str(i)}} for i in range(2)]
    runner.run(sweep, out, resume=True, worker=FAKE, executor=DaskExecutor(worker_specs=specs))
    ids = [r["case_id"] for r in results.read_rows(out)]
    assert sorted(ids) == sorted(c.case_id for c in sweep.cases)  # every case exactly once
    assert {r["status"] for r in results.read_rows(out)} == {"ok"}


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def test_unreachable_scheduler_is_one_line_and_exit_2(tmp_path, capsys):
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    address = f"tcp://127.0.0.1:{port}"
    out = tmp_path / "run"
    start = time.perf_counter()
    argv = ["run", "--models", "lambda", "--frameworks", "torch", "--image-size", "16", "--executor", "dask",
            "--scheduler", address, "--out", str(out)]
    assert cli.main(argv) == 2
    assert time.perf_counter() - start < 60
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and address in err and "Traceback" not in err, err
    assert not results.read_rows(out)  # nothing ran; the directory can be used again without --resume


def test_a_local_cluster_that_does_not_start_is_one_line_and_exit_2(tmp_path, capsys, monkeypatch):
    def refuse(self):
        raise RuntimeError("Nanny failed to start.\nSee the worker's log")

    monkeypatch.setattr(DaskExecutor, "_local_cluster", refuse)
    out = tmp_path / "run"
    argv = ["run", "--models", "lambda", "--frameworks", "torch", "--image-size", "16", "--executor", "dask",
            "--local-workers", "1", "--out", str(out)]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "did not start" in err and "Nanny failed" in err, err
    assert "Traceback" not in err
    assert not results.read_rows(out)


def test_a_case_task_quiets_the_dask_worker_it_runs_on():
    from lambda_bench.executors import dask as dask_executor

    class Callback:
        def __init__(self):
            self.running = True

        def stop(self):
            self.running = False

    class Worker:
        periodic_callbacks = {"profile": Callback(), "profile-cycle": Callback(), "tick": Callback(),
                              "heartbeat": Callback()}

    worker = Worker()
    dask_executor._quiet_worker(worker)
    dask_executor._quiet_worker(worker)  # twice: a second case on the same worker
    running = {name: cb.running for name, cb in worker.periodic_callbacks.items()}
    assert running == {"profile": False, "profile-cycle": False, "tick": False, "heartbeat": True}


@pytest.mark.parametrize("argv,message", [
    (["--scheduler", "tcp://127.0.0.1:8786"], "need --executor dask"),
    (["--executor", "dask", "--local-workers", "0"], "local workers=0"),
    (["--executor", "dask", "--retries", "-1"], "retries=-1"),
    (["--executor", "dask", "--local-workers", "2", "--scheduler", "tcp://127.0.0.1:8786"], "give one of them"),
])
def test_executor_options_that_do_not_fit_fail_before_anything_runs(tmp_path, capsys, argv, message):
    out = tmp_path / "run"
    assert cli.main(["run", "--models", "lambda", "--frameworks", "torch", "--out", str(out), *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and message in err, err
    assert not out.exists()


def test_report_says_when_hosts_differ_in_versions(tmp_path):
    base = {"host": "a", "python": "3.11.7", "git_commit": "abc", "cpu": "x", "gpus": []}
    envs = [("runs/r1", {**base, "hosts": {"a": {**base, "versions": {"torch": "2.14.1", "jax": "0.5"}},
                                           "b": {**base, "host": "b", "versions": {"torch": "2.13.0", "jax": "0.5"}}}}),
            ("runs/r2", {**base, "hosts": {"a": {**base, "versions": {"torch": "2.14.1"}},
                                           "c": {**base, "host": "c", "versions": {"torch": "2.14.1"}}}})]
    rows = pd.DataFrame({"run_id": ["r1"], "threads": [2], "status": ["ok"], "recompilations": [0],
                         "mem_source": ["RSS"], **{c: [None] for c in ("case_id", "framework", "model", "mode",
                                                                       "image_size", "batch_size", "device_name",
                                                                       "precision", "compile", "error", "flags",
                                                                       "step_time_median_s", "rel_iqr",
                                                                       "interference", "remeasured")}})
    texts = [getattr(b, "text", "") for b in environment.section(rows, envs, "published")]
    differ = [t for t in texts if "differ" in t]
    assert len(differ) == 1 and "runs/r1" in differ[0] and "torch 2.14.1 on a" in differ[0]
    assert "torch 2.13.0 on b" in differ[0] and "jax" not in differ[0]
    table = environment.env_table(envs, rows)
    assert list(table["hosts"]) == ["a, b", "a, c"]


def test_the_local_executor_is_the_default_and_imports_no_dask(tmp_path):
    script = textwrap.dedent(f"""
        import sys
        from lambda_bench import cli, runner
        sweep = runner.build_sweep({{"models": ["lambda"], "frameworks": ["torch"], "image_sizes": [16]}}, "test")
        runner.run(sweep, {str(tmp_path / "run")!r}, worker={FAKE!r})
        print(sorted(m for m in sys.modules if m.split(".")[0] in ("dask", "distributed")))
    """)
    out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "[]"
    row, = results.read_rows(tmp_path / "run")
    assert row["status"] == "ok" and row["host"] == socket.gethostname()


def test_cli_dask_run_with_the_real_worker(tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["run", "--models", "lambda_conv", "--frameworks", "torch", "--image-size", "16", "--batch-size", "2",
            "--threads", "1", "--executor", "dask", "--local-workers", "1", "--out", str(out)]
    assert cli.main(argv) == 0
    row, = results.read_rows(out)
    assert row["status"] == "ok", row["error"]
    assert row["step_time_median_s"] > 0 and row["host"] == socket.gethostname() and row["gpu_index"] is None
    printed = capsys.readouterr().out
    assert "executor: dask, 1 local worker on 127.0.0.1" in printed and f"on {socket.gethostname()} -> ok" in printed


def test_the_case_process_does_not_inherit_the_dask_nanny_s_tuning(tmp_path, monkeypatch):
    log_path = tmp_path / "where.jsonl"
    monkeypatch.setenv("FAKE_WORKER_LOG", str(log_path))
    monkeypatch.delenv("MALLOC_TRIM_THRESHOLD_", raising=False)
    runner.run(_sweep(["lambda"]), tmp_path / "run", worker=FAKE, executor=executors.make("dask", local_workers=1))
    start, = [r for r in _log(log_path) if r["event"] == "start"]
    assert start["malloc_trim_threshold"] is None  # the nanny sets 65536 for its own worker process


def _worker_settings():
    import dask

    return {key: dask.config.get(key) for key in ("distributed.worker.profile.enabled",
                                                  "distributed.admin.tick.interval")}


def test_a_local_cluster_s_workers_run_without_profiler_and_fast_tick():
    from lambda_bench.executors import dask as dask_executor

    with DaskExecutor(local_workers=1) as executor:
        settings = list(executor.client.run(_worker_settings).values())
        callbacks = list(executor.client.run(
            lambda dask_worker: sorted(dask_worker.periodic_callbacks)).values())
    assert settings == [{"distributed.worker.profile.enabled": False, "distributed.admin.tick.interval": "1s"}]
    assert "profile" not in callbacks[0]
    assert dask_executor.QUIET_CONFIG["distributed.admin.tick.interval"] == "1s"


def test_ctrl_c_stops_the_cases_running_on_a_cluster_and_keeps_the_store(tmp_path, monkeypatch):
    from distributed import Client, LocalCluster

    log_path = tmp_path / "where.jsonl"
    monkeypatch.setenv("FAKE_WORKER_LOG", str(log_path))
    monkeypatch.setenv("FAKE_WORKER", json.dumps({"mhsa": "sleep60", "sasa": "sleep60"}))
    out = tmp_path / "run"
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address="127.0.0.1:0", resources={"GPU": 1}, memory_limit=0) as cluster:
        with Client(cluster, set_as_default=False) as client:
            allowed = client.run_on_scheduler(lambda dask_scheduler: dask_scheduler.allowed_failures)
        script = textwrap.dedent(f"""
            import signal
            from lambda_bench import runner
            from lambda_bench.executors.dask import DaskExecutor
            signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a terminal
            sweep = runner.build_sweep({{"models": ["lambda", "mhsa", "sasa", "axial"], "frameworks": ["torch"],
                                         "image_sizes": [16], "devices": ["cuda"]}}, "test")
            runner.run(sweep, {str(out)!r}, worker={FAKE!r}, executor=DaskExecutor(scheduler={cluster.scheduler_address!r}))
        """)
        proc = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT, start_new_session=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            deadline = time.time() + 60
            long_cases: list[dict] = []
            while time.time() < deadline and len(long_cases) < 2:  # both 60 s cases running, one per worker
                time.sleep(0.1)
                long_cases = [r for r in _log(log_path) if r["event"] == "start" and r["case"].split("|")[0] in
                              ("mhsa", "sasa")]
            assert len(long_cases) == 2, _log(log_path)
            proc.send_signal(signal.SIGINT)
            _, err = proc.communicate(timeout=30)
            assert "KeyboardInterrupt" in err
        finally:
            _kill_group(proc.pid)
        deadline = time.time() + 10
        while time.time() < deadline and any(_alive(r["pid"]) for r in long_cases):
            time.sleep(0.1)
        assert not any(_alive(r["pid"]) for r in long_cases)  # stopped, not left to run 60 s
        rows = results.read_rows(out)
        assert {r["model"] for r in rows} <= {"lambda", "axial"} and all(r["status"] == "ok" for r in rows)
        with Client(cluster, set_as_default=False) as client:  # the cluster's own setting is back
            assert client.run_on_scheduler(lambda dask_scheduler: dask_scheduler.allowed_failures) == allowed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie waiting for its parent counts as gone
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def test_cuda_cases_without_a_gpu_worker_stop_with_one_line(tmp_path, capsys):
    sweep = _sweep(["lambda"], devices=("cuda",))
    executor = DaskExecutor(worker_specs=local_worker_specs(1, n_gpus=0))
    with pytest.raises(ValueError, match="no worker of the Dask cluster offers the 'GPU' resource that the 1 cuda"):
        runner.run(sweep, tmp_path / "run", worker=FAKE, executor=executor)
    assert not results.read_rows(tmp_path / "run")
