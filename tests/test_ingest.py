"""`lambda-bench ingest`: pytest-benchmark JSON -> result rows (the format of pytest-benchmark 4/5)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from lambda_bench import cli, results

EXTRA = {"framework": "jax", "framework_version": "0.10.2", "model": "lambda_conv", "family": "layer",
         "kind": "layer", "image_size": 16, "batch_size": 2, "mode": "train", "precision": "fp32",
         "compile": "compiled", "device": "cpu", "device_name": "AMD EPYC", "threads": 2, "params": 7088,
         "flops_analytic": 1.0e7, "flops_counted": 9.0e6, "flops_counter": "XLA cost analysis: ...",
         "peak_mem_bytes": 123456, "mem_source": "cpu: in-process", "git_commit": "abc"}


def _bench_file(tmp_path, extra=EXTRA, data=(0.010, 0.011, 0.012, 0.013, 0.020)):
    stats = {"min": min(data), "max": max(data), "mean": float(np.mean(data)), "median": float(np.median(data)),
             "iqr": 0.002, "rounds": len(data), "data": list(data)}
    doc = {"machine_info": {"cpu": {"brand_raw": "AMD EPYC"}}, "commit_info": {"id": "abc"},
           "datetime": "2026-11-25T12:00:00", "version": "5.3.1",
           "benchmarks": [{"name": "test_step[jax-lambda_conv-train]", "fullname": "x", "group": "g",
                           "extra_info": dict(extra), "stats": stats}]}
    path = tmp_path / "bench.json"
    path.write_text(json.dumps(doc))
    return path


def test_ingest_turns_benchmarks_into_rows(tmp_path, capsys):
    path = _bench_file(tmp_path)
    assert cli.main(["ingest", str(path), "--out", str(tmp_path / "rows")]) == 0
    frame = results.load(tmp_path / "rows")
    (row,) = frame.to_dict("records")
    assert row["status"] == "ok" and row["model"] == "lambda_conv" and row["framework"] == "jax"
    assert row["step_time_median_s"] == pytest.approx(0.012)
    assert row["images_per_s"] == pytest.approx(2 / 0.012)
    assert row["train_s_per_1024"] == pytest.approx(0.012 * 512)
    assert row["step_time_p90_s"] == pytest.approx(np.percentile([0.010, 0.011, 0.012, 0.013, 0.020], 90))
    assert row["peak_mem_bytes"] == 123456 and row["flops_counted"] == 9.0e6 and row["n_steps"] == 5
    # ingesting again adds nothing (same case ids)
    assert cli.main(["ingest", str(path), "--out", str(tmp_path / "rows")]) == 0
    assert len(results.read_rows(tmp_path / "rows")) == 1


def test_ingest_refuses_foreign_benchmarks(tmp_path, capsys):
    extra = {k: v for k, v in EXTRA.items() if k != "mode"}
    path = _bench_file(tmp_path, extra=extra)
    assert cli.main(["ingest", str(path), "--out", str(tmp_path / "rows")]) == 2
    assert "extra_info lacks mode" in capsys.readouterr().err
