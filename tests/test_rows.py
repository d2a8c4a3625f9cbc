"""The one row builder, results.make_row: a case and what was measured -> a full row (labels, case_id,
derived figures, analytic counts, every column); the runner, ingest and the pytest-benchmark suite
build their rows with it, so their case ids agree; rows written before the implementation column
load as ours and resume."""

from __future__ import annotations

import dataclasses
import json
import re

import pytest

from helpers.store import fake_worker, started  # noqa: F401 - a fixture
from lambda_bench import counting, ingest, results, runner, zoo

# what a worker reports for an ok train case: raw figures only
MEASURED = {"status": "ok", "step_time_median_s": 0.05, "step_time_iqr_s": 0.002, "step_time_p10_s": 0.049,
            "step_time_p90_s": 0.06, "n_steps": 7, "first_call_s": 1.5, "recompilations": 0, "rel_iqr": 0.04,
            "interference": 0.0, "remeasured": 0, "flags": "", "peak_mem_bytes": 12345, "mem_source": "test",
            "framework_version": "9.9", "flops_counted": 1.0e6, "flops_counter": "test counter",
            "thread_policy": "2 threads on CPUs 0,1 of 2 usable; OMP_WAIT_POLICY=unset", "pinned_cpus": [0, 1]}


def _case(model="lambda_resnet26", **changes):
    config = {"models": [model], "frameworks": ["torch"], "image_sizes": [32], "batch_sizes": [2],
              "modes": ["train"], "threads": 1, **changes}
    (case,) = runner.build_sweep(config).cases
    return case


def test_a_row_has_every_column_the_labels_and_the_derived_figures():
    case = _case()
    row = results.make_row(case, MEASURED, run_id="run1", commit="abc", device_name="Test CPU",
                           timestamp="2026-01-01T00:00:00+00:00")
    assert list(row) == list(results.COLUMNS)  # every column, nothing else, in the CSV's order
    assert (row["kind"], row["family"], row["mixer"]) == ("model", "lambda_resnet", "lambda_conv")
    assert row["implementation"] == "ours" and row["case_id"] == case.case_id
    assert row["images_per_s"] == pytest.approx(2 / 0.05)
    assert row["train_s_per_1024"] == pytest.approx(0.05 * 1024 / 2)
    spec = zoo.case("lambda_resnet26", 32, 2).spec
    assert row["params"] == counting.params(spec) and row["flops_analytic"] == counting.flops(spec, 32, 32)
    assert row["threads"] == 2  # the CPUs the worker was pinned to ...
    assert row["case_id"].endswith("|t1")  # ... while the case keeps what it asked for
    assert (row["run_id"], row["git_commit"], row["device_name"]) == ("run1", "abc", "Test CPU")
    assert row["step_time_median_s"] == 0.05 and row["mem_source"] == "test"


def test_infer_rows_have_no_training_figure_and_failed_rows_no_throughput():
    infer = results.make_row(_case(modes=["infer"]), MEASURED, run_id="r", commit=None)
    assert infer["images_per_s"] == pytest.approx(40) and infer["train_s_per_1024"] is None
    crashed = results.make_row(_case(), {"status": "crashed", "error": "x" * 10_000, "wall_s": 3.0},
                               run_id="r", commit=None)
    assert crashed["images_per_s"] is None and crashed["train_s_per_1024"] is None
    assert len(crashed["error"]) == results.ERROR_LIMIT and crashed["error"].endswith("...")
    assert crashed["params"] > 0  # what follows from the spec is there for a case that never ran


def test_the_measurement_names_the_device_and_its_counts_win():
    row = results.make_row(_case("lambda_conv"), {**MEASURED, "device_name": "node-2 CPU", "params": 5},
                           run_id="r", commit=None, device_name="this machine's CPU")
    assert row["device_name"] == "node-2 CPU" and row["params"] == 5
    assert row["flops_analytic"] == counting.flops(zoo.case("lambda_conv", 32, 2).spec, 32, 32)
    assert (row["kind"], row["family"], row["mixer"]) == ("layer", "layer", "lambda_conv")


@pytest.mark.parametrize("key,message", [
    ("speed", "not a column of the result schema"),
    ("images_per_s", "derived from the case and the step time"),
    ("family", "derived from the case and the step time"),
    ("batch_size", "a field of the case"),
])
def test_a_measurement_gives_only_measured_columns(key, message):
    with pytest.raises(ValueError, match=f"measured {key!r}: {message}"):
        results.make_row(_case(), {**MEASURED, key: 1}, run_id="r", commit=None)


def test_a_status_outside_the_schema_is_refused():
    with pytest.raises(ValueError, match="measured status 'fine': must be one of ok, oom"):
        results.make_row(_case(), {**MEASURED, "status": "fine"}, run_id="r", commit=None)
    with pytest.raises(ValueError, match="measured status None"):
        results.make_row(_case(), {"error": "no status"}, run_id="r", commit=None)


def test_case_ids_name_a_peer_and_keep_the_ids_of_earlier_runs():
    fields = {"model": "lambda", "framework": "torch", "image_size": 16, "batch_size": 2, "mode": "train",
              "precision": "fp32", "compile": "eager", "device": "cpu", "threads": 2}
    old = "lambda|torch|16|2|train|fp32|eager|cpu|t2"  # what runs before the implementation column stored
    assert results.case_id(fields) == old
    assert results.case_id({**fields, "implementation": "ours"}) == old
    assert results.case_id({**fields, "implementation": "timm"}) == old + "|timm"
    row = results.make_row({**fields, "implementation": "timm"}, MEASURED, run_id="r", commit=None)
    assert row["implementation"] == "timm" and row["case_id"] == old + "|timm"
    assert results.make_row(fields, MEASURED, run_id="r", commit=None)["implementation"] == "ours"


def _benchmark_json(extra, median=0.05):
    return {"machine_info": {"node": "bench-host", "cpu": {"brand_raw": "Bench CPU"}}, "commit_info": {"id": "c1"},
            "datetime": "2026-01-01T00:00:00", "benchmarks": [{
                "name": "test_step", "extra_info": extra,
                "stats": {"median": median, "iqr": 0.001, "rounds": 5, "data": [median] * 5}}]}


def test_runner_ingest_and_the_benchmark_suite_build_the_same_row():
    case = _case()
    measured = {k: v for k, v in MEASURED.items() if k != "pinned_cpus"}
    runner_row = results.make_row(case, measured, run_id="r", commit="c1", device_name="Bench CPU")
    # what tests/benchmarks/test_models.py puts in extra_info: its row without the timing
    untimed = {k: v for k, v in measured.items() if not k.startswith("step_time") and k != "n_steps"}
    extra = {k: v for k, v in results.make_row(dataclasses.asdict(case), untimed, run_id=None, commit="c1").items()
             if v is not None and k not in ("run_id", "timestamp")}
    (ingested,) = ingest.rows_from_benchmark_json(_benchmark_json(extra), "r")
    assert ingested["case_id"] == runner_row["case_id"] == case.case_id
    for col in ("kind", "family", "mixer", "implementation", "params", "flops_analytic", "images_per_s",
                "train_s_per_1024", "peak_mem_bytes", "flops_counted", "threads", "git_commit"):
        expected = runner_row[col]
        assert ingested[col] == (pytest.approx(expected) if isinstance(expected, float) else expected), col
    assert ingested["host"] == "bench-host" and ingested["device_name"] == "Bench CPU"
    assert list(ingested) == list(results.COLUMNS)


def test_ingest_derives_again_what_a_benchmark_file_says_of_labels_and_throughput():
    stale = {**dataclasses.asdict(_case()), "family": "attention_resnet", "images_per_s": 1.0, "case_id": "old"}
    (row,) = ingest.rows_from_benchmark_json(_benchmark_json(stale, median=0.1), "r")
    assert row["family"] == "lambda_resnet" and row["images_per_s"] == pytest.approx(20)
    assert row["case_id"] == _case().case_id and row["implementation"] == "ours"


def test_every_family_the_zoo_produces_is_documented_and_no_other():
    listed = results.COLUMNS["family"].split(";")[0]
    documented = set(re.findall(r"[a-z_]+", listed)) | {"layer"}
    produced = {zoo.family(spec) for spec in zoo.MODELS.values()} | {results.model_labels(p)["family"]
                                                                      for p in zoo.PRESETS}
    assert documented == produced


def test_old_rows_load_as_ours_and_resume_by_their_old_case_ids(tmp_path, fake_worker):  # noqa: F811
    sweep = runner.build_sweep({"models": ["lambda", "mhsa"], "frameworks": ["torch"], "image_sizes": [16],
                                "batch_sizes": [2], "threads": 1})
    lam = sweep.cases[0]
    old = {k: v for k, v in results.make_row(lam, MEASURED, run_id="run", commit=None).items()
           if k != "implementation"}  # a row of a version without the column
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / results.ROWS_FILE).write_text(json.dumps(old) + "\n")
    frame = results.load(run_dir)
    assert list(frame["implementation"]) == ["ours"]
    runner.run(sweep, run_dir, resume=True)
    assert started(fake_worker) == ["mhsa"]  # the old row's case is done: only the other one ran
    frame = results.load(run_dir)
    assert sorted(frame["case_id"]) == sorted(c.case_id for c in sweep.cases)
    assert list(frame["implementation"]) == ["ours", "ours"]


def test_rows_without_labels_or_a_case_id_are_completed_by_the_same_rules():
    measured = {k: v for k, v in MEASURED.items() if k != "pinned_cpus"}  # threads = what the case asked
    row = results.make_row(_case(), measured, run_id="r", commit=None)
    bare = {k: v for k, v in row.items() if k not in ("kind", "family", "mixer", "case_id", "images_per_s",
                                                      "train_s_per_1024", "implementation")}
    assert results.complete_row(bare) == row


def test_the_runner_s_rows_keep_a_measurement_from_another_version():
    # a worker of another version (a Dask node not yet updated): the row is kept, what it cannot hold named
    row = results.make_row(_case(), {**MEASURED, "future_column": 1.5}, run_id="r", commit=None, strict=False)
    assert row["status"] == "ok" and row["step_time_median_s"] == MEASURED["step_time_median_s"]
    assert "future_column" not in row and "left out measured key(s)" in row["error"] and "future_column" in row["error"]
    odd = results.make_row(_case(), {**MEASURED, "status": "fine"}, run_id="r", commit=None, strict=False)
    assert odd["status"] == "error" and "measured status 'fine'" in odd["error"]
