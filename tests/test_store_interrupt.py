"""Ctrl-C during a sweep: the worker is stopped, one line says how many cases are stored and how to
resume, exit 130; `--resume` then finishes the sweep."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from helpers.store import LAYERS, ROOT, SMALL, fake_env, one_line, run_cli, start_cli
from lambda_bench import results, runner

# its assertions depend on CPU time or on timed workers finishing in time: run alone (tox.ini's
# second pass), not beside another test process
pytestmark = pytest.mark.serial


def _wait_for(predicate, timeout=120):
    deadline = time.time() + timeout
    while not predicate():
        if time.time() > deadline:
            raise AssertionError("timed out")
        time.sleep(0.02)


def test_sigint_mid_case_one_line_exit_130_then_resume_finishes(tmp_path):
    out, log = tmp_path / "D", tmp_path / "started.log"
    args = [*LAYERS, "--out", str(out)]
    proc = start_cli(args, fake_env({"sasa": "hang"}, log=log))
    _wait_for(lambda: log.exists() and "sasa" in log.read_text())
    worker_pid = json.loads(log.read_text().splitlines()[-1])["pid"]
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130
    line = one_line(err)
    assert line.startswith("lambda-bench: interrupted: 3 of 5 cases stored in ")
    assert line.endswith(f"continue with: lambda-bench {' '.join(args)} --resume")
    with pytest.raises(ProcessLookupError):
        os.kill(worker_pid, 0)  # the worker is stopped with the run
    assert not (out / "writer.lock").exists()
    assert len(results.read_rows(out)) == 3

    done = run_cli([*args, "--resume"], fake_env())
    assert done.returncode == 0, done.stderr
    ids = [r["case_id"] for r in results.read_rows(out)]
    assert len(ids) == 5 == len(set(ids))


def test_sigint_with_the_real_worker(tmp_path):
    """`python -m lambda_bench run` on the smallest real case, interrupted while its worker runs."""
    out = tmp_path / "D"
    args = [sys.executable, "-m", "lambda_bench", *SMALL, "--out", str(out)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout.readline().startswith("lambda-bench run: 1 cases")
    assert proc.stdout.readline().startswith("[1/1] resnet26 torch")  # the worker is starting now
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130
    assert "interrupted: 0 of 1 cases stored" in one_line(err)
    done = subprocess.run([*args, "--resume"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    (row,) = results.read_rows(out)
    assert row["model"] == "resnet26" and row["status"] == "ok", row["error"]


def test_sigint_while_a_row_is_written_takes_effect_after_it():
    with pytest.raises(KeyboardInterrupt):
        with runner._sigint_deferred():
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)
            written = True  # reached: the signal waits for the end of the block
    assert written
