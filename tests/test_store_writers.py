"""One writer per run directory: a second `run` or `--resume` is refused (exit 2, one line naming
the holder) and every case is stored once; a lock left by a killed writer is taken over; readers
need no lock."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from helpers.store import LAYERS, ROOT, fake_env, one_line, run_cli, start_cli
from lambda_bench import results

# each case takes a second: the two commands overlap however slowly one of them starts
SLOW = {m: "slow" for m in ("lambda", "lambda_conv", "mhsa", "sasa", "axial")}


def _two_at_once(args, env):
    first, second = start_cli(args, env), start_cli(args, env)
    outs = [(p.wait(timeout=120), *p.communicate()) for p in (first, second)]
    return sorted(outs, key=lambda o: o[0])  # (exit code, stdout, stderr): the winner first


def test_two_concurrent_runs_one_refused_every_case_once(tmp_path):
    out = tmp_path / "D"
    args = [*LAYERS, "--out", str(out)]
    (ok, _, _), (refused, _, err) = _two_at_once(args, fake_env(SLOW))
    assert (ok, refused) == (0, 2)
    line = one_line(err)
    assert "another writer has this run directory" in line and f"pid " in line and "lambda-bench" in line
    ids = [r["case_id"] for r in results.read_rows(out)]
    assert len(ids) == 5 and len(set(ids)) == 5
    assert not (out / "writer.lock").exists()  # released on exit


def test_two_concurrent_resumes_one_refused_every_case_once(tmp_path):
    out = tmp_path / "D"
    env = fake_env({"lambda_conv": "exit3"})
    assert run_cli([*LAYERS, "--models", "lambda,lambda_conv", "--out", str(out)], env).returncode == 0
    args = [*LAYERS, "--out", str(out), "--resume"]
    (ok, _, _), (refused, _, err) = _two_at_once(args, fake_env(SLOW))
    assert (ok, refused) == (0, 2)
    assert "another writer has this run directory" in one_line(err)
    ids = [r["case_id"] for r in results.read_rows(out)]
    assert len(ids) == 5 and len(set(ids)) == 5


def test_two_processes_appending_through_the_api(tmp_path):
    """The second Store on a directory is refused while the first is open; afterwards it may write."""
    script = textwrap.dedent(f"""
        import sys, time
        from lambda_bench import results
        with results.Store({str(tmp_path)!r}) as store:
            store.append({{"case_id": "first", "status": "ok"}})
            print("open", flush=True)
            sys.stdin.readline()
    """)
    holder = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline().strip() == "open"
        with pytest.raises(results.StoreLocked, match=rf"another writer has this run directory \(pid {holder.pid} on "):
            results.Store(tmp_path)
        assert [r["case_id"] for r in results.read_rows(tmp_path)] == ["first"]  # readers need no lock
        assert len(results.load(tmp_path)) == 1
    finally:
        holder.communicate("\n", timeout=30)
    with results.Store(tmp_path) as store:
        store.append({"case_id": "second", "status": "ok"})
    assert [r["case_id"] for r in results.read_rows(tmp_path)] == ["first", "second"]
    assert not list(tmp_path.glob("*.tmp"))


def test_a_lock_left_by_a_killed_writer_is_taken_over_with_a_message(tmp_path):
    script = textwrap.dedent(f"""
        import time
        from lambda_bench import results
        store = results.Store({str(tmp_path)!r})
        store.append({{"case_id": "a", "status": "ok"}})
        print("open", flush=True)
        time.sleep(600)
    """)
    writer = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    assert writer.stdout.readline().strip() == "open"
    writer.send_signal(signal.SIGKILL)
    writer.wait()
    held = json.loads((tmp_path / "writer.lock").read_text())
    assert held["pid"] == writer.pid  # the file stays; the kernel dropped the lock with the process
    notes = []
    with results.Store(tmp_path, note=notes.append) as store:
        store.append({"case_id": "b", "status": "ok"})
        assert json.loads((tmp_path / "writer.lock").read_text())["pid"] == os.getpid()
    assert len(notes) == 1 and f"took over the lock left by pid {writer.pid}" in notes[0]
    assert "that writer is gone" in notes[0]
    assert [r["case_id"] for r in results.read_rows(tmp_path)] == ["a", "b"]


def test_refused_writer_changes_nothing(tmp_path):
    with results.Store(tmp_path) as store:
        store.append({"case_id": "a", "status": "ok"})
        before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
        started = time.perf_counter()
        with pytest.raises(results.StoreLocked):
            results.Store(tmp_path)
        assert time.perf_counter() - started < 5  # refused at once, never waits
        assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
