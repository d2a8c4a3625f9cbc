"""Options a run is started with: bad values exit 2 with one line before anything starts; the
threads a row records are the threads its worker was pinned to; a sweep's cases that this machine
cannot run are found before any worker starts."""

from __future__ import annotations

import json

import numpy as np
import pytest

from helpers.store import SMALL, fake_worker, one_line, started
from lambda_bench import cli, preflight, results, runner, weights, zoo


USABLE = runner.usable_cpus()


@pytest.mark.parametrize("option,value,message", [
    ("--timeout", "nan", "timeout_s=nan: must be a finite positive number"),
    ("--timeout", "inf", "timeout_s=inf: must be a finite positive number"),
    ("--timeout", "0", "timeout_s=0.0: must be a finite positive number"),
    ("--timeout", "-5", "timeout_s=-5.0"),
    ("--threads", "0", "threads=0: must be a positive integer"),
    ("--threads", "-1", "threads=-1"),
    ("--threads", str(USABLE + 1), f"threads={USABLE + 1}: this process may use {USABLE} CPU(s); give 1..{USABLE}"),
    ("--threads", "64" if USABLE < 64 else "4096", "this process may use"),
])
def test_bad_options_exit_2_with_one_line(tmp_path, fake_worker, capsys, option, value, message):
    args = SMALL[: SMALL.index("--threads")]
    assert cli.main([*args, option, value, "--out", str(tmp_path / "run")]) == 2
    line = one_line(capsys.readouterr().err)
    assert line.startswith("lambda-bench: error: ") and message in line
    assert started(fake_worker) == [] and not (tmp_path / "run").exists()


def test_rows_record_the_threads_the_worker_was_pinned_to(tmp_path, fake_worker, monkeypatch):
    if USABLE < 2:
        pytest.skip("needs two usable CPUs to pin fewer than asked")
    monkeypatch.setenv("FAKE_WORKER", json.dumps({"mhsa": "pin1"}))
    sweep = runner.build_sweep({"models": ["lambda_conv", "mhsa"], "frameworks": ["torch"], "image_sizes": [16],
                                "batch_sizes": [2], "threads": 2})
    runner.run(sweep, tmp_path / "run")
    threads = {r["model"]: r["threads"] for r in results.read_rows(tmp_path / "run")}
    assert threads == {"lambda_conv": 2, "mhsa": 1}


def test_default_threads_are_the_usable_cores():
    assert runner.build_sweep({"models": ["mhsa"]}).threads == USABLE


def test_paper_preset_without_a_gpu_exits_2_at_once(tmp_path, fake_worker, capsys, monkeypatch):
    out = tmp_path / "paper"
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert cli.main(["run", "--preset", "paper", "--out", str(out)]) == 2
    line = one_line(capsys.readouterr().err)
    n = len(runner.build_sweep(runner.preset("paper")).cases)
    assert f"none of the {n} cases of the sweep can run here" in line
    assert "CUDA_VISIBLE_DEVICES='' hides every GPU" in line and f"({n} cases)" in line
    assert started(fake_worker) == [] and not out.exists()
    # a machine without any GPU, whatever the environment says
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    monkeypatch.setattr(preflight, "_gpu_present", lambda: False)
    assert cli.main(["run", "--preset", "paper", "--out", str(out)]) == 2
    assert "no GPU on this machine" in one_line(capsys.readouterr().err) and not out.exists()


def test_tpu_only_sweep_on_a_machine_without_tpu(tmp_path, fake_worker, capsys, monkeypatch):
    monkeypatch.setattr(preflight, "_tpu_present", lambda: False)
    assert cli.main([*SMALL, "--device", "tpu", "--out", str(tmp_path / "run")]) == 2
    assert "no TPU on this machine" in one_line(capsys.readouterr().err)


def test_mixed_sweep_stores_impossible_cases_without_starting_workers(tmp_path, fake_worker, capsys, monkeypatch):
    monkeypatch.setattr(preflight, "_gpu_present", lambda: False)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    out = tmp_path / "run"
    assert cli.main(["run", "--models", "lambda_conv,mhsa", "--frameworks", "torch", "--image-size", "16",
                     "--batch-size", "2", "--threads", "1", "--device", "cpu,cuda", "--out", str(out)]) == 0
    said = capsys.readouterr().out
    assert "2 of 4 cases cannot run here, stored without starting a worker: device='cuda': no GPU" in said
    rows = results.read_rows(out)
    assert sorted((r["device"], r["status"]) for r in rows) == [("cpu", "ok")] * 2 + [("cuda", "unsupported")] * 2
    assert started(fake_worker) == ["lambda_conv", "mhsa"]  # the CPU cases only
    cuda = [r for r in rows if r["device"] == "cuda"]
    assert all("no GPU on this machine" in r["error"] and r["params"] and r["mixer"] for r in cuda)


def test_framework_not_installed_is_unavailable_without_a_worker(tmp_path, fake_worker, monkeypatch):
    real = preflight.framework_missing
    monkeypatch.setattr(preflight, "framework_missing",
                        lambda fw: "jax is not installed (test)" if fw == "jax" else real(fw))
    sweep = runner.build_sweep({"models": ["mhsa"], "frameworks": ["torch", "jax"], "image_sizes": [16],
                                "batch_sizes": [2], "threads": 1})
    runner.run(sweep, tmp_path / "run")
    status = {r["framework"]: r["status"] for r in results.read_rows(tmp_path / "run")}
    assert status == {"torch": "ok", "jax": "unavailable"} and started(fake_worker) == ["mhsa"]


def test_preflight_reads_a_cpu_only_torch_build(tmp_path, monkeypatch):
    import importlib.util

    package = tmp_path / "torch"
    package.mkdir()
    (package / "version.py").write_text("cuda: Optional[str] = None\nhip: Optional[str] = None\n")
    spec = importlib.util.spec_from_file_location("torch", package / "__init__.py",
                                                  submodule_search_locations=[str(package)])
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: spec if name == "torch" else None)
    assert "CPU-only build" in preflight.framework_lacks("torch", "cuda")
    (package / "version.py").write_text("cuda: Optional[str] = '12.4'\nhip: Optional[str] = None\n")
    assert preflight.framework_lacks("torch", "cuda") is None


def test_a_spec_from_a_weights_file_names_the_file(tmp_path):
    from safetensors.numpy import save_file

    case = zoo.get("lambda_conv")
    tensors = {k: np.asarray(v, np.float32) for k, v in weights.init_weights(case.spec).items()}
    spec = json.loads(weights.spec_to_json(case.spec))
    path = tmp_path / "w.safetensors"
    save_file(tensors, str(path), metadata={"spec": json.dumps({**spec, "colour": "red"})})
    with pytest.raises(ValueError, match=r"weights file='.*w.safetensors': spec key 'colour': not a field of "
                                         r"LambdaSpec"):
        weights.load(path)
    del spec["d_in"]
    save_file(tensors, str(path), metadata={"spec": json.dumps(spec)})
    with pytest.raises(ValueError, match=r"weights file='.*w.safetensors': spec of type LambdaSpec: .*d_in"):
        weights.load(path)
    path.write_bytes(b"not safetensors at all")
    with pytest.raises(ValueError, match=r"weights file='.*w.safetensors': not a safetensors file"):
        weights.load(path)
