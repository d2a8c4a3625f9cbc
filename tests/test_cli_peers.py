"""`lambda-bench peers`: the peers preset run by the sweep engine, then its Peers table; the former
harness's flags say what replaces them (one line, exit 2)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lambda_bench import cli, runner


@pytest.mark.parametrize("argv,message", [
    (["--plans"], "--plans: gone"),
    (["--budget", "8"], "--budget: gone"),
    (["--groups", "torch"], "--groups: gone; give --frameworks"),
    (["--torch-compile"], "--torch-compile: gone; give --compile eager,compiled"),
    (["--no-memory"], "--no-memory: gone"),
    (["--configs", "conv_d64_56"], "--configs: gone"),
    (["--frameworks", "mxnet"], "framework 'mxnet'"),
])
def test_bad_or_former_flags_are_one_line_and_exit_2(argv, message, capsys, tmp_path):
    assert cli.main(["peers", "--out", str(tmp_path / "run"), *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err
    assert not (tmp_path / "run").exists()  # nothing ran


def _row(case: runner.Case, seconds: float) -> dict:
    return {"run_id": "run", "case_id": case.case_id, "framework": case.framework, "model": case.model,
            "implementation": case.implementation, "image_size": case.image_size, "batch_size": case.batch_size,
            "mode": case.mode, "precision": case.precision, "compile": case.compile, "device": case.device,
            "device_name": "Test CPU", "threads": case.threads, "status": "ok", "step_time_median_s": seconds,
            "n_steps": 5, "first_call_s": 0.1, "images_per_s": case.batch_size / seconds, "peak_mem_bytes": 1e6,
            "mem_source": "test", "flags": ""}


def test_runs_the_preset_and_prints_ours_against_the_fastest_peer(monkeypatch, tmp_path, capsys):
    seen = {}

    def fake_run(sweep, out, **kwargs):  # the engine's rows, as the preset's workers would write them
        seen["sweep"] = sweep
        out = Path(out)
        out.mkdir(parents=True)
        times = {"ours": 0.01, "timm": 0.02, "lambda_networks": 0.04}
        chosen = [c for c in sweep.cases if c.model == "lambda_conv" and c.image_size == 56 and c.mode == "train"]
        with open(out / "results.jsonl", "w") as f:
            for case in chosen:
                f.write(json.dumps(_row(case, times.get(case.implementation, 0.01))) + "\n")
        return out

    monkeypatch.setattr(runner, "run", fake_run)
    out = tmp_path / "peers"
    assert cli.main(["peers", "--out", str(out), "--frameworks", "torch"]) == 0
    assert {c.framework for c in seen["sweep"].cases} == {"torch"}
    assert {c.implementation for c in seen["sweep"].cases} == {"ours", "timm", "lambda_networks"}
    text = capsys.readouterr().out
    line = next(ln for ln in text.splitlines() if "timm" in ln and "0.50×" in ln)
    assert "lambda_conv" in line and "train" in line

    assert cli.main(["peers", "--out", str(tmp_path / "again"), "--frameworks", "torch", "--json"]) == 0
    table = json.loads(capsys.readouterr().out)
    assert [(t["fastest_peer"], round(t["time_ratio"], 3)) for t in table] == [("timm", 0.5)]


def test_run_takes_implementations(capsys, tmp_path):
    argv = ["run", "--models", "lambda_conv", "--image-size", "8", "--out", str(tmp_path / "run")]
    assert cli.main([*argv, "--implementations", "flax_lambda"]) == 2
    assert "implementation 'flax_lambda': must be one of ours, timm" in capsys.readouterr().err
