"""The documented end-to-end path on a tiny sweep: `lambda-bench run` (real workers, all three
frameworks, infer and train) -> rows with timing, memory and FLOPs -> `lambda-bench report`; and
`lambda-bench flops`."""

from __future__ import annotations

import json

import numpy as np
import pytest

from lambda_bench import cli, results


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    # --remeasure 0: a window the detector finds busy is flagged, not timed again after a calm wait;
    # this test checks the path and the rows' columns, not the figures
    out = tmp_path_factory.mktemp("runs") / "tiny"
    argv = ["run", "--models", "lambda_conv,resnet26", "--frameworks", "torch,tensorflow,jax", "--image-size", "16",
            "--batch-size", "2", "--mode", "infer,train", "--threads", "2", "--remeasure", "0", "--out", str(out)]
    assert cli.main(argv) == 0
    return out


def test_tiny_sweep_rows_are_complete(tiny_run, capsys):
    frame = results.load(tiny_run)
    assert len(frame) == 2 * 3 * 2
    assert set(frame.status) == {"ok"}, frame[frame.status != "ok"][["case_id", "error"]].to_string()
    assert set(frame.framework) == {"torch", "tensorflow", "jax"}
    for col in ("step_time_median_s", "step_time_iqr_s", "step_time_p10_s", "step_time_p90_s", "first_call_s",
                "images_per_s", "peak_mem_bytes", "params", "flops_analytic", "flops_counted"):
        assert frame[col].notna().all(), col
    assert (frame.step_time_p10_s <= frame.step_time_median_s).all()
    assert (frame.step_time_median_s <= frame.step_time_p90_s).all()
    assert (frame.n_steps >= 5).all() and (frame.threads == 2).all() and (frame.recompilations == 0).all()
    train = frame[frame["mode"] == "train"]
    assert np.allclose(train.train_s_per_1024, train.step_time_median_s * 512)
    torch_resnet = frame[(frame.framework == "torch") & (frame.model == "resnet26")]
    assert (torch_resnet.flops_counted == torch_resnet.flops_analytic).all()  # FlopCounterMode == analytic
    assert (frame.peak_mem_bytes > 0).all() and frame.mem_source.str.contains("RSS").all()
    env = json.loads((tiny_run / "env.json").read_text())
    assert env["config"]["command"].startswith("lambda-bench run") and env["versions"]["torch"]


def test_report_from_the_tiny_sweep(tiny_run, tmp_path):
    assert cli.main(["report", str(tiny_run), "--out", str(tmp_path / "report")]) == 0
    text = (tmp_path / "report" / "report.md").read_text()
    assert "resnet26" in text and (tmp_path / "report" / "report.html").stat().st_size > 10_000


def test_resume_of_a_finished_run_runs_nothing(tiny_run, capsys):
    before = results.read_rows(tiny_run)
    argv = ["run", "--models", "lambda_conv,resnet26", "--frameworks", "torch,tensorflow,jax", "--image-size", "16",
            "--batch-size", "2", "--mode", "infer,train", "--threads", "2", "--remeasure", "0", "--out", str(tiny_run),
            "--resume"]
    assert cli.main(argv) == 0
    assert results.read_rows(tiny_run) == before


def test_flops_command_json(capsys):
    assert cli.main(["flops", "resnet26", "lambda_conv", "--image-size", "32", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["model"] for r in rows] == ["resnet26", "lambda_conv"]
    resnet = rows[0]
    assert set(resnet["counted"]) == {"torch", "tensorflow", "jax"}
    assert resnet["counted"]["torch"]["ratio"] == 1.0
    for fw in ("tensorflow", "jax"):  # XLA: elementwise ops counted, padded conv taps not: near 1
        assert 0.8 < resnet["counted"][fw]["ratio"] < 1.3
        assert "XLA" in resnet["counted"][fw]["counter"] and resnet["counted"][fw]["note"]
