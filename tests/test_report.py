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
from helpers.report_rows import EXPONENT, MODELS, _row, layer_rows, model_rows, write_run  # noqa: E402


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    # written with the schema of rows before measurement-quality columns existed: they count as clean
    return write_run(tmp_path_factory.mktemp("runs") / "fixture", [*model_rows(), *layer_rows()])


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


# --- findings, tables for people, flags ------------------------------------------------------------

def findings_lines(md_text: str) -> list[str]:
    section = md_text.split("## Findings", 1)[1].split("\n## ", 1)[0]
    return [line for line in section.splitlines() if line.startswith("- **")]


def test_findings_come_first_with_a_verdict_per_claim(report):
    out, md = report
    text = md.read_text()
    assert text.index("## Findings") < min(text.index(f"## {h}") for h in SECTIONS[1:])
    lines = findings_lines(text)
    claims = ["EfficientNets at equal top-1", "less memory than self-attention", "more throughput than self-attention",
              "Table 12 ordering", "memory grows as n²", "step time grows as n²", "Parameter count of lambda layer, |u|=4"]
    for claim in claims:
        line = next((x for x in lines if claim in x), None)
        assert line is not None, claim
        assert re.search(r"\*\*(Holds|Does not hold|Cannot tell)\*\*: \S", line), line
        assert re.search(r"\(\[details\]\(#[a-z0-9-]+\)\)$", line), line
    html = (out / "report.html").read_text()
    first = re.search(r"<section id=\"([^\"]+)\"", html).group(1)
    assert first == "findings"
    # every link of the findings points at a section or heading of the page
    ids = set(re.findall(r'id="([^"]+)"', html))
    for target in re.findall(r'href="#([^"]+)"', html):
        assert target in ids, target


def test_findings_verdicts_follow_the_rows(report):
    lines = findings_lines(report[1].read_text())
    by = {claim: next(x for x in lines if claim in x) for claim in
          ("memory grows as n²", "Table 12 ordering", "|u|=4", "Parameter count of conv baseline",
           "EfficientNets at equal top-1")}
    # synthetic layers follow n^1 (lambda_conv) and n^2 (mhsa) exactly
    assert "lambda_conv n^1.00, mhsa n^2.00" in by["memory grows as n²"] and "**Holds**" in by["memory grows as n²"]
    # CCCC (resnet50) 40 > CCLL 30 > LLLL 16 images/s in every setting, as the paper orders them
    assert "**Holds**" in by["Table 12 ordering"]
    assert "16,531,880" in by["|u|=4"] and "16.0M" in by["|u|=4"] and "**Does not hold**" in by["|u|=4"]
    assert "1.033×" in by["|u|=4"]
    assert "25,557,032" in by["Parameter count of conv baseline"] and "**Holds**" in by["Parameter count of conv baseline"]
    # B1's top-1 (78.35, user file) sits between the two LambdaResNets: matched at 2.2x < 3.2x
    assert "**Does not hold**" in by["EfficientNets at equal top-1"]


def test_table3_shows_paper_and_ours_with_the_ratio(report):
    t3 = table(report, "paper_table3_params").set_index("model")
    assert t3.loc["lambda_resnet50_u4", "params"] == 16_531_880
    assert t3.loc["lambda_resnet50_u4", "paper_params_m"] == 16.0
    assert t3.loc["lambda_resnet50_u4", "ours_over_paper"] == pytest.approx(16.53188 / 16.0)
    text = report[1].read_text()
    assert "| lambda layer, \\|u\\|=4 | lambda_resnet50_u4 | 16.0 | 16,531,880 | 1.03× |" in text
    # the count beyond the paper's rounding is explained term by term beside the table
    section = text.split("### Table 3: parameters", 1)[1].split("### ", 1)[0]
    assert "lambda layer, |u|=4 (lambda_resnet50_u4): ours is +0.532M from the paper's 16.0M" in section
    for term in ("values +943,104", "keys +181,248", "embeddings +406,272", "BatchNorm +5,664"):
        assert term in section


def test_page_tables_are_small_with_units_and_settings_in_the_caption(report):
    out, md = report
    text = md.read_text()
    body = text.split("## Appendix", 1)[0]
    headers = [line for line in body.splitlines() if line.startswith("| ") and
               body.splitlines()[body.splitlines().index(line) + 1].startswith("|---")]
    assert headers
    for header in headers:
        assert header.count(" | ") + 1 <= 10, header
        for raw in ("peak_mem_bytes", "paper_throughput_vs_conv", "conv_baseline", "device_name"):
            assert raw not in header, header
    assert "Memory, ours (MB)" in body and "Throughput, ours (img/s)" in body and "÷ conv, ours" in body
    # the appendix keeps every column of the raw rows
    appendix = text.split("## Appendix", 1)[1]
    assert "step_time_median_s" in appendix and "peak_mem_bytes" in appendix


def test_one_number_format_per_column():
    from lambda_bench.report import fmt

    mb = fmt.mb(pd.Series([1.5e9, 2.0e6, 123_456.0, None]))
    assert list(mb) == ["1,500.00", "2.00", "0.12", ""]  # the smallest keeps 2 digits; thousands grouped
    assert list(fmt.ms(pd.Series([0.0123, 0.5]))) == ["12", "500"]
    assert list(fmt.ms(pd.Series([0.000012, 0.5]))) == ["0.012", "500.000"]
    assert list(fmt.ratio(pd.Series([1.0, 0.456]))) == ["1.00×", "0.46×"]
    assert list(fmt.unless_ok(pd.Series(["1", ""]), pd.Series(["ok", "oom"]))) == ["1", "oom"]
    cell, shared = fmt.settings(pd.DataFrame({"device_name": ["A", "A"], "framework": ["torch", "jax"],
                                              "batch_size": [8, 8]}))
    assert list(cell) == ["torch", "jax"] and shared == "A · batch 8"


def test_every_figure_has_a_takeaway(report):
    out, md = report
    text = md.read_text()
    for png in (out / "figures").glob("*.png"):
        after = text.split(f"(figures/{png.name})", 1)[1].lstrip().split("\n", 1)[0]
        assert after.startswith("**") and len(after) > 20, (png.name, after)
    assert "Peak memory grows as n^1.00 (lambda_conv), n^2.00 (mhsa)" in text


def test_fit_needs_three_sizes():
    sizes = np.array([16, 32])
    assert math.isnan(scaling.fit_exponent(sizes, sizes ** 2.0))
    assert scaling.fit_exponent(np.array([8, 16, 32]), np.array([8, 16, 32]) ** 2.0) == pytest.approx(1.0)


@pytest.fixture(scope="module")
def flagged_run(tmp_path_factory):
    from helpers.report_rows import flagged_rows, quality_schema

    with quality_schema():
        run = write_run(tmp_path_factory.mktemp("runs") / "flagged", flagged_rows())
        default = tmp_path_factory.mktemp("report-flagged")
        kept = tmp_path_factory.mktemp("report-flagged-kept")
        render([run], default)
        render([run], kept, include_flagged=True)
        yield run, default, kept


def test_flagged_rows_decide_nothing_by_default(flagged_run):
    _, out, _ = flagged_run
    lines = findings_lines((out / "report.md").read_text())
    speed = next(x for x in lines if "EfficientNets at equal top-1" in x)
    assert "**Cannot tell**: flagged measurements" in speed
    memory = next(x for x in lines if "less memory than self-attention" in x)
    assert "**Cannot tell**: flagged measurements (axial self-attention)" in memory
    slope = next(x for x in lines if "memory grows as n²" in x)
    assert "**Cannot tell**: flagged measurements" in slope
    fits = pd.read_csv(out / "tables" / "scaling_exponents.csv")
    mhsa = fits[(fits["mixer"] == "mhsa") & (fits["metric"] == "peak_mem_bytes")].iloc[0]
    assert math.isnan(mhsa["fitted_exponent_in_n"]) and mhsa["flagged_left_out"] == 1
    assert mhsa["note"].startswith("2 sizes: too few to fit")
    assert "2 sizes: too few to fit" in (out / "report.md").read_text()  # shown as such, not as an exponent
    speedups = pd.read_csv(out / "tables" / "pareto_speedup.csv")
    assert speedups.empty or speedups["speedup"].isna().all()


def test_flagged_rows_listed_with_their_reason_and_drawn_hollow(flagged_run):
    from helpers.report_rows import BUSY, UNSTABLE

    _, out, _ = flagged_run
    listed = pd.read_csv(out / "tables" / "flagged.csv")
    assert set(listed["model"]) == {"efficientnet_b5", "axial_resnet50", "mhsa"}
    assert set(listed["flags"]) == {BUSY, UNSTABLE}
    text = (out / "report.md").read_text()
    assert BUSY in text and UNSTABLE in text
    plotted = pd.read_csv(next((out / "figures").glob("scaling_*.csv")))
    hollow = plotted[plotted["flags"].fillna("") != ""]
    assert list(zip(hollow["mixer"], hollow["image_size"])) == [("mhsa", 64)]
    front = pd.read_csv(out / "figures" / "pareto_train_test-cpu-a_torch_fp32.csv").set_index("model")
    assert bool(front.loc["efficientnet_b5", "flagged"]) and not bool(front.loc["efficientnet_b5", "non_dominated"])


def test_include_flagged_lets_them_decide(flagged_run):
    _, _, kept = flagged_run
    lines = findings_lines((kept / "report.md").read_text())
    slope = next(x for x in lines if "memory grows as n²" in x)
    assert "**Holds**" in slope and "mhsa n^2.00" in slope
    speed = pd.read_csv(kept / "tables" / "pareto_speedup.csv")
    b5 = speed[speed["efficientnet"] == "efficientnet_b5"].iloc[0]
    # B5 (83.7) between LambdaResNet-152 at 224 (83.2, 512 s) and 256 (83.75, 682.7 s), log-interpolated
    t = math.exp(np.interp(83.7, [83.2, 83.75], [math.log(1024 / 2.0), math.log(1024 / 1.5)]))
    assert b5["speedup"] == pytest.approx((1024 / 0.5) / t)
    memory = next(x for x in lines if "less memory than self-attention" in x)
    assert "**Holds**" in memory and "axial 2.00×" in memory


# --- comparison of two runs -----------------------------------------------------------------------

@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    """A: the fixture's model rows. B: the same cases twice as fast with 10% more memory, one flagged,
    one missing and one new."""
    from helpers.report_rows import BUSY, quality_schema

    base = tmp_path_factory.mktemp("compare")
    a_rows = list(model_rows())
    b_rows = []
    for row in a_rows:
        row = dict(row)
        if row["model"] == "efficientnet_b1" and row["device_name"] == "Test CPU A":
            continue  # measured in A only
        if row["status"] == "ok":
            row.update(step_time_median_s=row["step_time_median_s"] / 2, images_per_s=row["images_per_s"] * 2,
                       peak_mem_bytes=row["peak_mem_bytes"] * 1.1)
        if row["case_id"] == "resnet50|torch|224|8|train|fp32|eager|cpu":
            row.update(step_time_median_s=row["step_time_median_s"] * 10, flags=BUSY)
        b_rows.append(row)
    b_rows.append({**a_rows[0], "batch_size": 64, "case_id": "resnet50|torch|224|64|infer|fp32|eager|cpu"})
    with quality_schema():
        a = write_run(base / "a", a_rows)
        b = write_run(base / "b", b_rows)
        from lambda_bench import cli
        assert cli.main(["report", str(a), str(b), "--compare", "--out", str(base / "out")]) == 0
        yield a, b, base / "out"


def test_compare_ratios_per_case(two_runs):
    _, _, out = two_runs
    table = pd.read_csv(out / "tables" / "compare.csv").set_index("case_id")
    clean = table[~table["flagged"]]
    assert clean["speed_b_over_a"].dropna().to_numpy() == pytest.approx(2.0)
    assert clean["memory_b_over_a"].dropna().to_numpy() == pytest.approx(1.1)
    busy = table.loc["resnet50|torch|224|8|train|fp32|eager|cpu"]
    assert busy["flagged"] and busy["speed_b_over_a"] == pytest.approx(0.2)
    assert table.loc[table["a_status"] == "crashed", "speed_b_over_a"].isna().all()
    unmatched = pd.read_csv(out / "tables" / "compare_unmatched.csv")
    assert sorted(unmatched["only_in"]) == ["A", "A", "A", "A", "B"]
    text = (out / "report.md").read_text()
    assert text.index("## Summary") < text.index("## Per case")
    assert "geometric mean 2.00×" in text and "1 flagged in either run" in text
    assert "B: busy machine" in text  # the flagged case is marked in the table with its reason
    assert "B is 2.00× A's speed" in text  # the figure's takeaway leaves the flagged case out


def test_compare_needs_two_runs(two_runs, tmp_path, capsys):
    from lambda_bench import cli

    a, b, _ = two_runs
    assert cli.main(["report", str(a), "--compare", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "exactly two run directories" in err and len(err.strip().splitlines()) == 1
    assert cli.main(["report", str(a), str(b), str(a), "--compare"]) == 2
    assert cli.main(["report", str(a), str(tmp_path / "missing"), "--compare", "--out", str(tmp_path / "y")]) == 2
    assert "no such directory" in capsys.readouterr().err


def test_screenshot_without_browser(tmp_path, monkeypatch, capsys):
    from lambda_bench.report import browser, screenshot

    page = tmp_path / "report.html"
    page.write_text("<html><body>x</body></html>")
    monkeypatch.setattr(browser.shutil, "which", lambda name: None)
    assert screenshot.main([str(page)]) == 1
    err = capsys.readouterr().err
    assert "no headless Chromium available" in err and ("apt-get install" in err or "pip install playwright" in err)
    assert screenshot.main([str(tmp_path / "missing.html")]) == 2
    with pytest.raises(browser.BrowserMissing, match="apt-get install -y chromium"):
        browser.chromium()


def test_figures_page_is_generated_text_with_its_provenance(run_dir, tmp_path):
    import json

    env = {"timestamp": "2026-12-01T10:00:00+00:00", "cpu": "Test CPU", "cpu_count": 2, "gpus": [],
           "git_commit": "0123456789abcdef", "versions": {"torch": "2.14.1"},
           "config": {"command": "lambda-bench run --preset quick"}}
    original = (run_dir / results.ENV_FILE).read_text()
    (run_dir / results.ENV_FILE).write_text(json.dumps(env))
    try:
        page = tmp_path / "docs" / "figures.md"
        command = f"lambda-bench report {run_dir} --figures {page}"
        render([run_dir], tmp_path / "r1", figures_page=page, command=command)
        text = page.read_text()
        render([run_dir], tmp_path / "r2", figures_page=tmp_path / "again.md", command=command)
        assert (tmp_path / "again.md").read_text() == text  # the same runs give the same page
    finally:
        (run_dir / results.ENV_FILE).write_text(original)  # the module's other tests read it
    assert text.startswith("<!-- generated by lambda-bench report --figures")
    assert f"Written by `{command}`" in text
    assert "| fixture | `lambda-bench run --preset quick` | Test CPU (2 CPUs), no GPU | `0123456789ab` | torch 2.14.1" in text
    assert "## Findings" in text and ("**Holds**" in text or "**Does not hold**" in text)
    assert "Appendix" not in text and "![" not in text  # no raw tables, no images: a page that diffs as text
    assert text.count("*Figure: ") >= 2  # each figure stands as its computed takeaway


def test_figures_page_must_be_markdown_and_is_checked_first(run_dir, tmp_path):
    with pytest.raises(ValueError, match="a Markdown page"):
        render([run_dir], tmp_path / "out", figures_page=tmp_path / "figures.html")
    assert not (tmp_path / "out").exists()
