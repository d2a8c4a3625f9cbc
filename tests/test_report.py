"""The report: a synthetic run (two devices, torch and JAX, models, layers, an OOM and a crash)
rendered once; its files, tables and numbers checked against the rows that went in."""

from __future__ import annotations

import math
import re

import numpy as np
import pandas as pd
import pytest

from lambda_bench import results

pytest.importorskip("seaborn")
pytest.importorskip("matplotlib")

from lambda_bench.report import load_accuracy, render  # noqa: E402
from lambda_bench.report import pareto, scaling  # noqa: E402
from lambda_bench.report.render import SECTIONS  # noqa: E402

DEVICES = {"Test CPU A": ("cpu", 1.0), "Test GPU B": ("cuda", 20.0)}  # name -> (device, speed factor)
FRAMEWORKS = {"torch": ("eager", 1.0), "jax": ("compiled", 1.25)}
MODELS = {  # name -> (image size, family, params, images/s on Test CPU A / torch / infer)
    "resnet50": (224, "resnet", 25_557_032, 40.0),
    "lambda_resnet50": (224, "lambda_resnet", 15_000_000, 16.0),
    "lambda_resnet50_ccll": (224, "lambda_resnet", 16_000_000, 30.0),
    "efficientnet_b0": (224, "efficientnet", 5_288_548, 50.0),
    "efficientnet_b1": (240, "efficientnet", 7_794_184, 20.0),
}
LAYER_SIZES = (16, 32, 64)
EXPONENT = {"mhsa": 2.0, "lambda_conv": 1.0}  # in n = size²: what the synthetic layer rows follow
BATCH = 8
CRASH = ("efficientnet_b1", "jax", "train", "Test GPU B")


def _row(**values):
    return results.blank_row(run_id="fixture", git_commit="abc123", precision="fp32", threads=2,
                             timestamp="2025-01-01T00:00:00+00:00", **values)


def model_rows():
    for device_name, (device, speed) in DEVICES.items():
        for framework, (compile_mode, fw_speed) in FRAMEWORKS.items():
            for mode, mode_speed in (("infer", 1.0), ("train", 1 / 3)):
                for model, (size, family, params, base) in MODELS.items():
                    ips = base * speed * fw_speed * mode_speed
                    row = dict(model=model, family=family, kind="model", framework=framework, mode=mode,
                               image_size=size, batch_size=BATCH, compile=compile_mode, device=device,
                               device_name=device_name, status="ok", images_per_s=ips,
                               step_time_median_s=BATCH / ips, first_call_s=2.0 / fw_speed,
                               peak_mem_bytes=params * 16.0 * (3 if mode == "train" else 1),
                               mem_source="test", params=params, flops_analytic=4.0e9 * params / 25e6,
                               flops_counted=4.2e9 * params / 25e6, flops_counter=f"{framework} counter",
                               train_s_per_1024=1024 / ips if mode == "train" else None,
                               case_id=f"{model}|{framework}|{size}|{BATCH}|{mode}|fp32|{compile_mode}|{device}")
                    if (model, framework, mode, device_name) == CRASH:
                        row.update(status="crashed", error="worker died: Segmentation fault", images_per_s=None,
                                   step_time_median_s=None, train_s_per_1024=None, peak_mem_bytes=None)
                    yield _row(**row)


def layer_rows():
    for mixer, exponent in EXPONENT.items():
        for size in LAYER_SIZES + (128,):
            n = size * size
            row = dict(model=mixer, mixer=mixer, family="layer", kind="layer", framework="torch", mode="infer",
                       image_size=size, batch_size=2, compile="eager", device="cpu", device_name="Test CPU A",
                       status="ok", peak_mem_bytes=1000.0 * n ** exponent, step_time_median_s=1e-6 * n ** exponent,
                       mem_source="test", case_id=f"{mixer}|torch|{size}|2|infer|fp32|eager|cpu")
            if size == 128:
                if mixer != "mhsa":
                    continue
                row.update(status="oom", error="out of memory at 128", peak_mem_bytes=None, step_time_median_s=None)
            yield _row(**row)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("runs") / "fixture"
    store = results.Store(path)
    for row in [*model_rows(), *layer_rows()]:
        store.append(row)
    env = results.environment({"command": "lambda-bench run --models resnet50 --frameworks torch,jax"})
    store.write_env(env)
    return path


# between the fixture's two LambdaResNets (78.3 and 78.4): the measured speed-up of B1 becomes defined
USER_ACCURACY = "model,image_size,top1,source\nefficientnet_b1,240,78.35,my eval\n"


@pytest.fixture(scope="module")
def user_accuracy(tmp_path_factory):
    path = tmp_path_factory.mktemp("accuracy") / "acc.csv"
    path.write_text(USER_ACCURACY)
    return path


@pytest.fixture(scope="module")
def report(run_dir, user_accuracy, tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    md = render([run_dir], out, accuracy=user_accuracy)
    return out, md


def table(report, name):
    return pd.read_csv(report[0] / "tables" / f"{name}.csv")


def test_sections_figures_tables_exist(report):
    out, md = report
    assert md == out / "report.md"
    text = md.read_text()
    for heading in SECTIONS:
        assert f"## {heading}" in text
    figures = sorted(p.stem for p in (out / "figures").glob("*.png"))
    assert figures and all((out / "figures" / f"{f}.svg").exists() for f in figures)
    for name in ("pareto_train_test-cpu-a_torch_fp32", "pareto_infer_test-gpu-b_jax_fp32",
                 "pareto_paper_figure4", "frameworks_test-cpu-a_fp32", "flops_test-cpu-a_fp32"):
        assert name in figures, figures
    assert any(f.startswith("scaling_test-cpu-a_torch_fp32") for f in figures)
    for name in ("pareto_speedup", "pareto_paper_speedup", "pareto_measured", "scaling_exponents",
                 "scaling_limits", "scaling_rows", "paper_table3", "paper_table4", "paper_table12",
                 "frameworks", "flops_params", "environment", "not_measured"):
        assert (out / "tables" / f"{name}.csv").exists(), name
    for name in figures:
        assert f"figures/{name}.png" in text


def test_html_is_self_contained(report):
    out, _ = report
    html = (out / "report.html").read_text()
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", html, re.I)
    assert "<link" not in html and "<script" not in html
    n_png = len(list((out / "figures").glob("*.png")))
    assert html.count('src="data:image/png;base64,') == n_png
    for heading in SECTIONS:
        assert heading in html


def test_figures_never_mix_devices_or_precisions(report):
    out, _ = report
    for data in (out / "figures").glob("*.csv"):
        frame = pd.read_csv(data)
        for col in ("device_name", "precision"):
            if col in frame.columns:
                assert frame[col].nunique() == 1, (data.name, col)


def test_throughput_ratio_matches_rows(report):
    t12 = table(report, "paper_table12")
    row = t12[(t12["model"] == "lambda_resnet50_ccll") & (t12["device_name"] == "Test GPU B")
              & (t12["framework"] == "jax") & (t12["mode"] == "infer")].iloc[0]
    # the baseline is resnet50 (no cccc row in the fixture), same device, framework, mode, batch
    assert row["conv_baseline"] == "resnet50"
    assert row["throughput_vs_conv"] == pytest.approx(MODELS["lambda_resnet50_ccll"][3] / MODELS["resnet50"][3])
    assert row["memory_vs_conv"] == pytest.approx(16_000_000 / 25_557_032)
    assert row["paper_throughput_vs_conv"] == pytest.approx(4980 / 7240)
    assert row["params_m"] == pytest.approx(16.0)
    # the placements the fixture did not run; LLLL and CCCC are lambda_resnet50 and resnet50, measured
    assert (t12["status"] == "not measured").sum() == 5
    llll = t12[(t12["label"] == "LLLL") & (t12["framework"] == "jax") & (t12["device_name"] == "Test GPU B")
               & (t12["mode"] == "infer")].iloc[0]
    assert llll["throughput_vs_conv"] == pytest.approx(MODELS["lambda_resnet50"][3] / MODELS["resnet50"][3])


def test_fitted_exponents(report):
    slopes = table(report, "scaling_exponents")
    for mixer, exponent in EXPONENT.items():
        got = slopes[slopes["mixer"] == mixer].set_index("metric")["fitted_exponent_in_n"]
        assert got["peak_mem_bytes"] == pytest.approx(exponent, abs=0.01)
        assert got["step_time_median_s"] == pytest.approx(exponent, abs=0.01)
    mhsa = slopes[slopes["mixer"] == "mhsa"].iloc[0]
    assert mhsa["paper_exponent_in_n"] == 2.0 and "n²" in mhsa["paper_complexity"]
    sizes = np.array([16, 32, 64, 128])
    assert scaling.fit_exponent(sizes, 3.0 * (sizes**2.0) ** 2) == pytest.approx(2.0, abs=0.01)


def test_failed_rows_appear_with_status(report):
    out, md = report
    limits = table(report, "scaling_limits")
    mhsa = limits[limits["mixer"] == "mhsa"].iloc[0]
    assert mhsa["smallest_oom_size"] == 128 and mhsa["largest_ok_size"] == 64
    for name in ("scaling_rows", "not_measured"):
        assert "oom" in set(table(report, name)["status"])
    failed = table(report, "not_measured")
    assert set(failed["status"]) == {"oom", "crashed"}
    assert "Segmentation fault" in failed.loc[failed["status"] == "crashed", "error"].iloc[0]
    measured = table(report, "pareto_measured")
    assert "crashed" in set(measured["status"])
    frameworks = table(report, "frameworks")
    assert "crashed" in set(frameworks["status"])
    assert "lambda-bench run --models resnet50" in md.read_text()


def test_paper_speedup_reproduces_the_claim():
    paper = pareto.paper_speedups().set_index("efficientnet")
    assert paper.loc["efficientnet_b6", "speedup"] == pytest.approx(3.0 / math.sqrt(0.49 * 0.93))  # ~4.4x
    assert paper.loc["efficientnet_b7", "speedup"] == pytest.approx(6.0 / 1.92)  # ~3.1x (claim 3.2x)


def test_user_accuracy_overrides_paper(report, user_accuracy):
    paper = load_accuracy()
    assert paper.set_index(["model", "image_size"]).loc[("efficientnet_b1", 240), "top1"] == 79.1
    merged = load_accuracy(user_accuracy).set_index(["model", "image_size"])
    assert merged.loc[("efficientnet_b1", 240), "top1"] == 78.35
    assert merged.loc[("efficientnet_b1", 240), "source"] == "my eval"
    assert merged.loc[("resnet50", 224), "top1"] == 76.9
    assert len(merged) == len(paper)
    speed = table(report, "pareto_speedup")
    row = speed[(speed["efficientnet"] == "efficientnet_b1") & (speed["device_name"] == "Test CPU A")
                & (speed["framework"] == "torch")].iloc[0]
    t_ccll, t_lambda, t_b1 = (1024 / (MODELS[m][3] / 3) for m in ("lambda_resnet50_ccll", "lambda_resnet50",
                                                                  "efficientnet_b1"))
    assert row["top1"] == 78.35
    assert row["speedup"] == pytest.approx(t_b1 / math.sqrt(t_ccll * t_lambda))
    b0 = speed[speed["efficientnet"] == "efficientnet_b0"]
    assert b0["speedup"].isna().all() and b0["why_no_speedup"].str.contains("outside").all()


@pytest.mark.parametrize("content, problem", [
    ("model,top1\nresnet50,70\n", "missing column"),
    ("model,image_size,top1\nresnet50,224,abc\n", "top1 is not a number on line 2"),
    ("model,image_size,top1\nresnet50,224,170\n", "percentage"),
    ("model,image_size,top1\nresnet50,224,70\nresnet50,224,71\n", "appears twice"),
    ("", "not a readable CSV"),
])
def test_bad_accuracy_file(tmp_path, content, problem):
    path = tmp_path / "bad.csv"
    path.write_text(content)
    with pytest.raises(ValueError, match=problem) as err:
        load_accuracy(path)
    assert "bad.csv" in str(err.value)


def test_bad_run_input(tmp_path):
    with pytest.raises(ValueError, match="no such directory"):
        render([tmp_path / "missing"], tmp_path / "out")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="not a lambda-bench run"):
        render([tmp_path / "empty"], tmp_path / "out")
    (tmp_path / "norows").mkdir()
    (tmp_path / "norows" / results.ROWS_FILE).write_text("")
    with pytest.raises(ValueError, match="no result rows"):
        render([tmp_path / "norows"], tmp_path / "out")
    with pytest.raises(ValueError, match="no run directory"):
        render([], tmp_path / "out")
    with pytest.raises(ValueError, match="missing.csv"):
        load_accuracy(tmp_path / "missing.csv")


def test_no_accuracy_matched_models(tmp_path):
    store = results.Store(tmp_path / "small")
    store.append(_row(model="resnet50", family="resnet", kind="model", framework="torch", mode="train",
                      image_size=64, batch_size=2, compile="eager", device="cpu", device_name="Test CPU A",
                      status="ok", images_per_s=10.0, train_s_per_1024=102.4))
    text = render([tmp_path / "small"], tmp_path / "out").read_text()
    assert "No measured model (status ok) has a published top-1" in text
    assert "| Test CPU A | torch | fp32 | eager | train | resnet50 | resnet | 64 |" in text  # still listed
    assert "no layer rows" in text and "No model or layer was measured with the same settings" in text


def test_screenshot_without_browser(tmp_path, monkeypatch, capsys):
    from lambda_bench.report import screenshot

    page = tmp_path / "report.html"
    page.write_text("<html><body>x</body></html>")
    monkeypatch.setitem(__import__("sys").modules, "playwright", None)  # import fails as if not installed
    monkeypatch.setattr(screenshot.shutil, "which", lambda name: None)
    assert screenshot.main([str(page), str(tmp_path / "shot.png")]) == 1
    assert "no headless Chromium available" in capsys.readouterr().err
    assert screenshot.main([str(tmp_path / "missing.html"), str(tmp_path / "shot.png")]) == 2
