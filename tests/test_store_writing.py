"""Writing a run directory: `--out` is checked before anything is measured; a row that cannot be
written (full disk, a file system gone read-only) stops the sweep with one line, leaves no partial
line, loses no stored row, and `--resume` finishes; a CSV view that lags is rebuilt."""

from __future__ import annotations

import errno
import os
import subprocess
import time

import pytest

from helpers.store import LAYERS, SMALL, fake_env, fake_worker, one_line, run_cli, start_cli, started, tmpfs
from lambda_bench import cli, results

# 15 cases
MANY = [*LAYERS, "--models", "lambda_conv,mhsa,sasa,axial,lambda", "--image-size", "8,16,32"]


def _check_intact(out):
    """Every line of the store is a row, no temporary file is left, and the CSV view is the rows."""
    rows, bad = results.scan_rows(out)
    assert bad == []
    assert not list(out.glob("*.tmp"))
    csv_lines = (out / "results.csv").read_text().strip().splitlines()
    return rows, len(csv_lines) - 1


@pytest.mark.parametrize("where", ["under a file", "a file"])
def test_out_under_a_file_is_refused_before_measuring(tmp_path, fake_worker, capsys, where):
    (tmp_path / "f").write_text("not a directory")
    out = tmp_path / "f" / "run" if where == "under a file" else tmp_path / "f"
    assert cli.main([*SMALL, "--out", str(out)]) == 2
    line = one_line(capsys.readouterr().err)
    assert line.startswith("lambda-bench: error: out=") and "not a directory" in line
    assert where in line if where == "under a file" else "is a file" in line
    assert started(fake_worker) == []


def test_read_only_out_is_refused_before_measuring(tmp_path, fake_worker, capsys):
    ro = tmp_path / "ro"
    if os.geteuid() == 0:  # root writes through file modes: a read-only file system instead
        context, reason = tmpfs(ro, "64k", read_only=True), "read-only file system"
    else:
        ro.mkdir()
        ro.chmod(0o555)
        context, reason = _nothing(), "no write permission"
    with context:
        for out in (ro, ro / "run", ro / "a" / "b"):
            assert cli.main([*SMALL, "--out", str(out)]) == 2
            line = one_line(capsys.readouterr().err)
            assert f"out={str(out)!r}: cannot write in" in line and reason in line
    assert started(fake_worker) == []


class _nothing:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def test_full_disk_stops_cleanly_and_resume_finishes(tmp_path, fake_worker, capsys):
    with tmpfs(tmp_path / "small", "256k") as disk:
        filler = disk / "filler"
        # leave room for the lock, env.json and a few rows: the disk fills in mid-sweep
        free = os.statvfs(disk).f_bavail * os.statvfs(disk).f_frsize
        filler.write_bytes(b"x" * (free - 24 * 1024))
        out = disk / "run"
        assert cli.main([*MANY, "--out", str(out)]) == 2
        line = one_line(capsys.readouterr().err)
        assert "No space left on device" in line and "--resume" in line and "the sweep stopped" in line
        rows, csv_rows = _check_intact(out)
        assert 0 < len(rows) < 15
        if "could not write row" in line:  # the JSON line failed: the rows before it are all there
            n = len(rows) + 1
            assert f"could not write row {n} " in line and f"rows 1..{n - 1} are intact" in line
        else:  # the line was written, the CSV view was not: it is rebuilt on the next start
            assert f"row {len(rows)} " in line and "is stored in results.jsonl" in line
        assert len(started(fake_worker)) == len(rows) + ("could not write row" in line)
        filler.unlink()
        assert cli.main([*MANY, "--out", str(out), "--resume"]) == 0
        rows, csv_rows = _check_intact(out)
        ids = [r["case_id"] for r in rows]
        assert len(ids) == 15 == len(set(ids)) == csv_rows


def test_a_write_cut_short_by_a_full_disk_leaves_no_partial_line(tmp_path):
    """The disk fills in the middle of a row's line (part of it fits in the file's last page): the
    part written is cut off again and the error names the row."""
    with tmpfs(tmp_path / "small", "128k") as disk:
        out = disk / "run"
        with results.Store(out) as store:
            store.append({"case_id": "a", "status": "ok", "error": "x" * 2500})
            size = (out / "results.jsonl").stat().st_size
            assert size < 4096  # the file's one page has room for ~1.5 kB more, the disk for none
            with open(disk / "filler", "wb", buffering=0) as filler:
                try:
                    while filler.write(b"x" * 4096):
                        pass
                except OSError:
                    pass
            with pytest.raises(results.StoreWriteError, match=r"could not write row 2 \(case b\): No space left on "
                                                              r"device; rows 1..1 are intact"):
                store.append({"case_id": "b", "status": "ok", "error": "y" * 3000})
            assert (out / "results.jsonl").stat().st_size == size
            (disk / "filler").unlink()
            store.append({"case_id": "c", "status": "ok"})
        rows, csv_rows = _check_intact(out)
        assert [r["case_id"] for r in rows] == ["a", "c"] and csv_rows == 2


class _DiskFillsMidLine:
    """``os`` for lambda_bench.results, except that the disk fills during the next write: half the
    bytes go to the file, then ENOSPC (as a write that crosses the last free block does). Runs
    where no small file system can be mounted."""

    def __init__(self):
        self.calls = 0

    def __getattr__(self, name):
        return getattr(os, name)

    def write(self, fd, data):
        self.calls += 1
        if self.calls == 1:
            return os.write(fd, bytes(data[: len(data) // 2]))
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_a_short_write_is_cut_off_again_wherever_it_happens(tmp_path, monkeypatch):
    with results.Store(tmp_path) as store:
        store.append({"case_id": "a", "status": "ok"})
        size = (tmp_path / "results.jsonl").stat().st_size
        fake_os = _DiskFillsMidLine()
        monkeypatch.setattr(results, "os", fake_os)
        with pytest.raises(results.StoreWriteError, match=r"could not write row 2 \(case b\): No space left on device; "
                                                          r"rows 1..1 are intact"):
            store.append({"case_id": "b", "status": "ok"})
        assert fake_os.calls == 2  # the half line was written, then cut off
        monkeypatch.undo()
        assert (tmp_path / "results.jsonl").stat().st_size == size
        store.append({"case_id": "c", "status": "ok"})
    rows, csv_rows = _check_intact(tmp_path)
    assert [r["case_id"] for r in rows] == ["a", "c"] and csv_rows == 2


def _write_access(paths, allow: bool) -> None:
    """Take away (or give back) write access to ``paths``. Root writes through file modes, so as
    root the files are made immutable instead (chattr)."""
    if os.geteuid() != 0:
        for path in paths:
            path.chmod((0o755 if path.is_dir() else 0o644) if allow else (0o555 if path.is_dir() else 0o444))
        return
    try:
        done = subprocess.run(["chattr", "-i" if allow else "+i", *map(str, paths)], capture_output=True, text=True)
    except OSError as exc:
        pytest.skip(f"no chattr to take write access away from root: {exc}")
    if done.returncode != 0:
        pytest.skip(f"chattr does not work here: {done.stderr.strip()}")


def test_write_permission_lost_mid_sweep(tmp_path):
    """The run directory stops being writable after row 1: the sweep stops at row 2 with one line,
    row 1 is intact, and --resume (once writable again) finishes."""
    probe = tmp_path / "probe"
    probe.write_text("")
    _write_access([probe], allow=False)  # skips here, before anything runs, where this cannot work
    _write_access([probe], allow=True)
    out = tmp_path / "run"
    args = [*LAYERS, "--models", "lambda_conv,mhsa,sasa", "--out", str(out)]
    proc = start_cli(args, fake_env({"mhsa": "slow", "sasa": "slow"}))
    deadline = time.time() + 60
    csv_view = out / "results.csv"  # rewritten after the row's line: row 1 is then wholly stored
    while time.time() < deadline and proc.poll() is None and not (
            csv_view.exists() and len(csv_view.read_text().splitlines()) >= 2):
        time.sleep(0.02)
    locked = [out / "results.jsonl", out]
    _write_access(locked, allow=False)
    try:
        _, err = proc.communicate(timeout=120)
    finally:
        _write_access(locked, allow=True)
    assert proc.returncode == 2
    line = one_line(err)
    assert "could not write row 2 (case mhsa|" in line
    assert "Permission denied" in line or "Operation not permitted" in line
    assert "rows 1..1 are intact" in line and "--resume" in line
    assert [r["model"] for r in results.read_rows(out)] == ["lambda_conv"]
    assert run_cli([*args, "--resume"], fake_env()).returncode == 0
    rows, csv_rows = _check_intact(out)
    assert [r["model"] for r in rows] == ["lambda_conv", "mhsa", "sasa"] and csv_rows == 3


def test_a_lagging_csv_view_and_leftover_temporary_files_are_repaired_on_open(tmp_path):
    with results.Store(tmp_path) as store:
        for case in "abc":
            store.append({"case_id": case, "status": "ok"})
    csv_path = tmp_path / "results.csv"
    csv_path.write_text("\n".join(csv_path.read_text().splitlines()[:2]) + "\n")  # a view one row behind
    (tmp_path / "results.csv.tmp").write_text("")  # as a rewrite that failed on a full disk left it
    (tmp_path / "env.json.tmp").write_text("")
    results.Store(tmp_path).close()
    rows, csv_rows = _check_intact(tmp_path)
    assert len(rows) == 3 == csv_rows


def test_run_id_is_the_directory_name_even_for_dot(tmp_path, fake_worker, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert cli.main([*SMALL, "--out", "."]) == 0
    assert {r["run_id"] for r in results.read_rows(tmp_path)} == {tmp_path.name}
    with pytest.raises(ValueError, match="needs a name"):
        results.check_out_dir("/")
