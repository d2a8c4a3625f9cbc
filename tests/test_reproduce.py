"""`lambda-bench reproduce`: a run's cases measured again and compared case by case."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from lambda_bench import cli, reproduce, results, runner

# its assertions depend on CPU time or on timed workers finishing in time: run alone (tox.ini's
# second pass), not beside another test process
pytestmark = pytest.mark.serial

ROOT = Path(__file__).resolve().parent.parent
FAKE = (sys.executable, str(ROOT / "tests" / "helpers" / "fake_worker.py"))


def _row(case_id, median, status="ok", flags=""):
    return results.blank_row(case_id=case_id, status=status, step_time_median_s=median, flags=flags)


def _write(run_dir, rows):
    store = results.Store(run_dir)
    for r in rows:
        store.append(r)
    return run_dir


def test_agreement_figures():
    first = [_row(f"c{i}", 0.010) for i in range(10)] + [_row("gone", 0.01), _row("failed", 0.01, status="oom")]
    second = [_row(f"c{i}", 0.0105) for i in range(8)] + [_row("c8", 0.0125), _row("c9", 0.005, flags="unstable: x")]
    agreement = reproduce.compare(first, second)
    assert agreement.n == 10
    assert agreement.median_ratio == pytest.approx(1.05)
    assert agreement.share_within == pytest.approx(0.8)  # c8 (1.25x) and c9 (2x faster) are out
    assert agreement.worst == ("c9", pytest.approx(0.5))
    assert agreement.beyond_worst == ["c9"]
    assert agreement.only_in_a == ["gone"]
    assert not agreement.reproduces
    text = reproduce.format_agreement(agreement, "a", "b")
    assert "within 10%: 80% of cases" in text and "does NOT reproduce" in text and "[flagged: unstable: x]" in text


def test_a_run_within_the_bar_reproduces():
    first = [_row(f"c{i}", 0.010) for i in range(10)]
    second = [_row(f"c{i}", 0.0108) for i in range(9)] + [_row("c9", 0.0140)]  # one case 1.4x: allowed
    agreement = reproduce.compare(first, second)
    assert agreement.share_within == pytest.approx(0.9) and agreement.reproduces


def test_sweep_of_a_run_keeps_its_cases_and_settings(tmp_path):
    config = {"models": ["lambda_conv", "mhsa"], "frameworks": ["torch"], "image_sizes": [8, 16], "batch_sizes": [2],
              "threads": 1, "timeout_s": 77, "seed": 3,
              "timing": {"warmup_steps": 1, "min_steps": 3, "min_time_s": 0.0, "max_interference": 0.2}}
    sweep = runner.build_sweep(config)
    runner.run(sweep, tmp_path / "run", worker=FAKE)
    again = reproduce.sweep_of(tmp_path / "run")
    assert [c.case_id for c in again.cases] == [c.case_id for c in sweep.cases]
    assert (again.timeout_s, again.seed, again.timing, again.threads) == (77.0, 3, sweep.timing, 1)
    runner.run(again, tmp_path / "repro", worker=FAKE)
    agreement = reproduce.compare(results.read_rows(tmp_path / "run"), results.read_rows(tmp_path / "repro"))
    assert agreement.n == 4 and agreement.reproduces  # the fake worker reports the same figure every time


def test_cli_against_compares_two_runs(tmp_path, capsys):
    a = _write(tmp_path / "a", [_row("x", 0.01), _row("y", 0.02)])
    b = _write(tmp_path / "b", [_row("x", 0.0101), _row("y", 0.0199)])
    assert cli.main(["reproduce", str(a), "--against", str(b), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["cases"] == 2 and out["reproduces"] and out["worst_case"] == "x"
    c = _write(tmp_path / "c", [_row("x", 0.03), _row("y", 0.02)])
    assert cli.main(["reproduce", str(a), "--against", str(c)]) == 1
    assert "does NOT reproduce" in capsys.readouterr().out


def test_cli_bad_run_dir_is_one_line(tmp_path, capsys):
    assert cli.main(["reproduce", str(tmp_path / "nothing")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("lambda-bench: error: RUN_DIR") and len(err.strip().splitlines()) == 1


def test_cli_measures_again_with_the_real_worker(tmp_path, capsys):
    pytest.importorskip("torch")
    run = tmp_path / "run"
    assert cli.main(["run", "--models", "lambda_conv", "--frameworks", "torch", "--image-size", "8",
                     "--batch-size", "2", "--threads", "1", "--out", str(run)]) == 0
    capsys.readouterr()
    code = cli.main(["reproduce", str(run), "--json"])
    out = json.loads(capsys.readouterr().out)
    assert out["cases"] == 1 and out["second"] == str(run) + "-repro"
    assert code == (0 if out["reproduces"] else 1)  # timing on a shared box decides which; both are answers
    (row,) = results.read_rows(str(run) + "-repro")
    assert row["status"] == "ok" and row["case_id"] == results.read_rows(run)[0]["case_id"]


def test_interleaved_measures_each_case_twice_back_to_back_alternating(tmp_path, monkeypatch):
    sweep = runner.build_sweep({"models": ["lambda_conv", "mhsa", "sasa"], "frameworks": ["torch"],
                                "image_sizes": [8], "batch_sizes": [2], "threads": 1,
                                "timing": {"warmup_steps": 0, "min_steps": 3, "min_time_s": 0.0}})
    ids = [c.case_id for c in sweep.cases]
    calls, original = [], runner.run

    def spy(swp, out, **kwargs):
        calls.append((swp.cases[0].case_id, Path(out).name))
        return original(swp, out, **kwargs)

    monkeypatch.setattr(runner, "run", spy)
    a, b = tmp_path / "a", tmp_path / "b"
    reproduce.measure_interleaved(sweep, a, b, worker=FAKE)
    assert calls == [(ids[0], "a"), (ids[0], "b"), (ids[1], "b"), (ids[1], "a"), (ids[2], "a"), (ids[2], "b")]
    for d in (a, b):
        assert sorted(r["case_id"] for r in results.read_rows(d)) == sorted(ids)  # each case once
        assert sorted(json.loads((d / results.ENV_FILE).read_text())["config"]["cases"]) == sorted(ids)
    assert reproduce.compare(results.read_rows(a), results.read_rows(b)).n == 3
    with pytest.raises(ValueError, match="already holds results"):
        reproduce.measure_interleaved(sweep, a, b, worker=FAKE)
    calls.clear()
    reproduce.measure_interleaved(sweep, a, b, resume=True, worker=FAKE)
    assert calls == []  # everything is measured: a resumed run has nothing left to do


def test_cli_interleaved_and_against_do_not_go_together(tmp_path, capsys):
    a = _write(tmp_path / "a", [_row("x", 0.01)])
    assert cli.main(["reproduce", str(a), "--against", str(a), "--interleaved"]) == 2
    assert "give one of them" in capsys.readouterr().err


def test_the_machine_speed_probe_says_when_the_machine_itself_slowed_down():
    first = [results.blank_row(case_id=f"c{i}", status="ok", step_time_median_s=0.010, probe_s=0.0010)
             for i in range(5)]
    second = [results.blank_row(case_id=f"c{i}", status="ok", step_time_median_s=0.013, probe_s=0.0013)
              for i in range(5)]
    agreement = reproduce.compare(first, second)
    assert agreement.probe_ratio == pytest.approx(1.3) and not agreement.reproduces
    text = reproduce.format_agreement(agreement, "a", "b")
    assert "the machine itself ran 30% slower in the second" in text
    same = reproduce.compare(first, first)
    assert "probe_s, second / first, median): 1.000: alike" in reproduce.format_agreement(same, "a", "a")
    old = [_row(f"c{i}", 0.01) for i in range(5)]  # rows from before the probe: nothing to say
    assert reproduce.compare(old, old).probe_ratio is None
