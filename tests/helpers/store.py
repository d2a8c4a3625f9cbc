"""Shared by tests/test_store_*.py: the command line with the stand-in worker, in this process or
in one of its own, and small file systems to fill or to make read-only."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FAKE = (sys.executable, str(ROOT / "tests" / "helpers" / "fake_worker.py"))
FAKE_CLI = str(ROOT / "tests" / "helpers" / "fake_cli.py")
# the smallest real case; with the stand-in worker only the case ids matter
SMALL = ["run", "--models", "resnet26", "--frameworks", "torch", "--image-size", "32", "--batch-size", "1",
         "--mode", "infer", "--threads", "1"]
LAYERS = ["run", "--models", "lambda,lambda_conv,mhsa,sasa,axial", "--frameworks", "torch", "--image-size", "16",
          "--batch-size", "2", "--threads", "1"]


@pytest.fixture
def fake_worker(monkeypatch, tmp_path):
    """`cli.main` and `runner.run` in this process start the stand-in worker, which logs each start
    to the returned path; the worker needs no framework, so none need be installed."""
    from lambda_bench import preflight, runner

    log = tmp_path / "started.log"
    monkeypatch.setattr(runner, "WORKER", FAKE)
    monkeypatch.setattr(preflight, "framework_missing", lambda framework: None)
    for key, value in fake_env(log=log).items():
        monkeypatch.setenv(key, value)
    return log


def fake_env(behaviour: dict[str, str] | None = None, log: Path | None = None) -> dict[str, str]:
    env = {**os.environ, "FAKE_WORKER": json.dumps(behaviour or {})}
    if log is not None:
        env["FAKE_WORKER_LOG"] = str(log)
    return env


def start_cli(args: list[str], env: dict[str, str]) -> subprocess.Popen:
    """`lambda-bench ARGS` with the stand-in worker, in a process of its own."""
    return subprocess.Popen([sys.executable, FAKE_CLI, *args], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def run_cli(args: list[str], env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, FAKE_CLI, *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)


def started(log: Path) -> list[str]:
    """The models the stand-in worker was started for, in order."""
    if not log.exists():
        return []
    events = (json.loads(line) for line in log.read_text().splitlines())
    return [e["model"] for e in events if e["event"] == "start"]


@contextlib.contextmanager
def tmpfs(path: Path, size: str, read_only: bool = False):
    """A tmpfs of ``size`` mounted at ``path`` (skips the test, with the reason, where mounting is
    not possible: not root, or a container without the capability)."""
    path.mkdir(parents=True, exist_ok=True)
    options = f"size={size}" + (",ro" if read_only else "")
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    try:
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True,
                              text=True)
    except OSError as exc:
        pytest.skip(f"cannot mount a tmpfs here: {exc}")
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip() or done.returncode}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def one_line(text: str) -> str:
    """``text`` (stderr) is exactly one line: return it."""
    lines = text.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in text, text
    return lines[0]
