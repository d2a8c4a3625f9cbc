"""A case measured in several fresh worker processes (`--processes N`): the row keeps the median
process's figures and says how far the processes disagreed."""

from __future__ import annotations

import json

import pytest

from helpers.store import SMALL, fake_worker, one_line, started  # noqa: F401 - a fixture
from lambda_bench import cli, reproduce, results, runner


def _measured(median, **extra):
    return {"status": "ok", "step_time_median_s": median, "n_steps": 5, "remeasured": 1, "wall_s": 2.0,
            "peak_mem_bytes": int(median * 1e6), **extra}


def test_the_median_process_is_kept_and_the_spread_recorded():
    combined = runner.combine_processes([_measured(0.030), _measured(0.010), _measured(0.020)], 3)
    assert combined["step_time_median_s"] == 0.020
    assert combined["peak_mem_bytes"] == 20_000  # the whole row is the median process's
    assert combined["processes"] == 3
    assert combined["process_spread"] == pytest.approx((0.030 - 0.010) / 0.020)
    assert combined["remeasured"] == 3 and combined["wall_s"] == pytest.approx(6.0)


def test_an_even_count_keeps_the_lower_middle_process():
    combined = runner.combine_processes([_measured(0.04), _measured(0.01), _measured(0.03), _measured(0.02)], 4)
    assert combined["step_time_median_s"] == 0.02


def test_one_process_is_the_worker_s_own_figure():
    combined = runner.combine_processes([_measured(0.01, flags="unstable: IQR 30% of median")], 1)
    assert combined["processes"] == 1 and "process_spread" not in combined
    assert combined["flags"] == "unstable: IQR 30% of median" and combined["remeasured"] == 1


def test_a_failed_process_fails_the_case_and_is_named():
    crashed = {"status": "crashed", "error": "worker killed by SIGSEGV", "wall_s": 1.0}
    combined = runner.combine_processes([_measured(0.01), crashed], 3)
    assert combined["status"] == "crashed"
    assert combined["error"] == "process 2 of 3: worker killed by SIGSEGV"
    assert combined["wall_s"] == pytest.approx(3.0)


def test_the_runner_starts_that_many_workers_per_case_and_the_row_says_so(tmp_path, fake_worker):  # noqa: F811
    sweep = runner.build_sweep({"models": ["lambda", "mhsa"], "frameworks": ["torch"], "image_sizes": [8],
                                "batch_sizes": [1], "threads": 1, "processes": 3})
    assert sweep.processes == 3
    runner.run(sweep, tmp_path / "run")
    assert started(fake_worker) == ["lambda"] * 3 + ["mhsa"] * 3
    rows = results.read_rows(tmp_path / "run")
    assert [r["processes"] for r in rows] == [3, 3] and all(r["process_spread"] == 0.0 for r in rows)
    assert json.loads((tmp_path / "run" / results.ENV_FILE).read_text())["config"]["processes"] == 3
    frame = results.load(tmp_path / "run")
    assert list(frame["processes"]) == [3, 3]


def test_a_case_that_crashes_stops_after_its_first_process(tmp_path, fake_worker, monkeypatch):  # noqa: F811
    monkeypatch.setenv("FAKE_WORKER", json.dumps({"lambda": "exit3"}))
    sweep = runner.build_sweep({"models": ["lambda"], "frameworks": ["torch"], "image_sizes": [8],
                                "batch_sizes": [1], "threads": 1, "processes": 3})
    runner.run(sweep, tmp_path / "run")
    assert started(fake_worker) == ["lambda"]
    (row,) = results.read_rows(tmp_path / "run")
    assert row["status"] == "crashed" and row["error"].startswith("process 1 of 3: worker exited with code 3")


@pytest.mark.parametrize("value", ["0", "-2"])
def test_bad_processes_exit_2_with_one_line(tmp_path, fake_worker, capsys, value):  # noqa: F811
    code = cli.main([*SMALL, "--processes", value, "--out", str(tmp_path / "run")])
    assert code == 2
    assert one_line(capsys.readouterr().err) == f"lambda-bench: error: processes={value}: must be a positive integer"
    assert not (tmp_path / "run").exists()


def test_reproduce_measures_with_the_run_s_processes_or_the_ones_given(tmp_path, fake_worker):  # noqa: F811
    sweep = runner.build_sweep({"models": ["lambda"], "frameworks": ["torch"], "image_sizes": [8],
                                "batch_sizes": [1], "threads": 1, "processes": 2})
    runner.run(sweep, tmp_path / "run")
    assert reproduce.sweep_of(tmp_path / "run").processes == 2
    assert reproduce.sweep_of(tmp_path / "run", processes=3).processes == 3
    with pytest.raises(ValueError, match="--processes=0: must be a positive integer"):
        reproduce.sweep_of(tmp_path / "run", processes=0)
    code = cli.main(["reproduce", str(tmp_path / "run"), "--processes", "3", "--out", str(tmp_path / "again")])
    assert code == 0
    assert started(fake_worker) == ["lambda"] * 5
    assert [r["processes"] for r in results.read_rows(tmp_path / "again")] == [3]


def test_reproduce_says_how_far_the_machine_s_speed_and_the_processes_moved():
    def row(case, median, probe, spread):
        return results.blank_row(case_id=case, status="ok", step_time_median_s=median, probe_s=probe,
                                 process_spread=spread)

    agreement = reproduce.compare([row("a", 0.01, 0.0009, 0.1), row("b", 0.02, 0.0010, 0.3)],
                                  [row("a", 0.01, 0.0015, 0.2), row("b", 0.02, 0.0010, 0.2)])
    assert agreement.probe_range == pytest.approx(0.0015 / 0.0009)
    assert agreement.process_spread == pytest.approx(0.2)
    text = reproduce.format_agreement(agreement, "first", "second")
    assert "the machine's own speed moved 1.67x between rows" in text
    assert "median spread of their medians 20% of the kept one" in text


def test_the_progress_line_names_the_processes_and_their_spread():
    row = results.blank_row(status="ok", step_time_median_s=0.01, n_steps=5, images_per_s=200.0, first_call_s=0.1,
                            processes=3, process_spread=0.12)
    assert "median of 3 processes (spread 12%)" in runner._one_line(row)
