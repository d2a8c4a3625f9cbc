"""Reading a run directory: every line that is not a result row is named (file and line) and kept
out of the data, `--resume` says which cases it measures again because their lines are unreadable,
and rows from older or newer versions load."""

from __future__ import annotations

import json
import warnings

import pytest

from helpers.store import LAYERS, fake_worker, started
from lambda_bench import cli, results, runner
from lambda_bench.report.runs import load_runs


def _lines(out):
    return (out / "results.jsonl").read_text().splitlines()


def _write_lines(out, lines):
    (out / "results.jsonl").write_text("".join(line + "\n" for line in lines))


def test_corrupt_middle_line_is_named_and_resume_measures_exactly_that_case(tmp_path, fake_worker, capsys):
    out = tmp_path / "D"
    assert cli.main([*LAYERS, "--out", str(out)]) == 0
    lines = _lines(out)
    victim = json.loads(lines[1])["case_id"]
    lines[1] = lines[1][: len(lines[1]) // 2]  # a line cut in the middle, as an editor or a sync leaves it
    _write_lines(out, lines)
    capsys.readouterr()

    with pytest.warns(results.StoreWarning, match=r"results.jsonl:2: not JSON") as caught:
        frame = results.load(out)
    assert len(caught) == 1 and victim in str(caught[0].message)
    assert len(frame) == 4 and victim not in set(frame.case_id)

    assert cli.main(["report", str(out), "--out", str(tmp_path / "report")]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("lambda-bench: warning: 1 line(s)") and "results.jsonl:2" in err[0]

    fake_worker.unlink()
    assert cli.main([*LAYERS, "--out", str(out), "--resume"]) == 0
    said = capsys.readouterr().out
    assert f"measured again because their lines are unreadable: {victim}" in said
    assert started(fake_worker) == [victim.split("|")[0]]  # that case and no other
    ids = [r["case_id"] for r in results.read_rows(out, problems=[])]
    assert sorted(ids) == sorted(c.case_id for c in runner.build_sweep(
        {"models": LAYERS[2].split(","), "frameworks": ["torch"], "image_sizes": [16], "batch_sizes": [2],
         "threads": 1}).cases)
    assert (out / "results.jsonl").read_text().splitlines()[1] == lines[1]  # the bad line is left as it was


def test_a_line_that_is_not_an_object_is_named_not_a_traceback(tmp_path, fake_worker, capsys):
    out = tmp_path / "D"
    assert cli.main([*LAYERS, "--out", str(out)]) == 0
    lines = _lines(out)
    victim = json.loads(lines[2])["case_id"]
    lines[2] = "123"
    lines.insert(4, '["a", "list"]')
    lines.insert(1, json.dumps({"name": "someone else's object"}))
    _write_lines(out, lines)
    with pytest.warns(results.StoreWarning) as caught:
        frame = results.load(out)
    (message,) = [str(w.message) for w in caught]
    assert "3 line(s)" in message and "results.jsonl:2: an object without a status" in message
    assert "results.jsonl:4: a JSON number, not a row object" in message
    assert "results.jsonl:6: a JSON array, not a row object" in message
    assert len(frame) == 4
    with pytest.warns(results.StoreWarning, match="3 line"):
        rows, envs = load_runs([out])  # what `report` reads
    assert len(rows) == 4

    capsys.readouterr()
    fake_worker.unlink()
    assert cli.main([*LAYERS, "--out", str(out), "--resume"]) == 0
    said = capsys.readouterr().out
    assert "results.jsonl:4: a JSON number" in said and "no case can be read from some of these lines" in said
    assert started(fake_worker) == [victim.split("|")[0]]


def test_a_file_of_foreign_objects_is_named_and_holds_no_rows(tmp_path, capsys):
    out = tmp_path / "foreign"
    out.mkdir()
    _write_lines(out, [json.dumps({"step": i, "loss": 1.0 / (i + 1)}) for i in range(3)])
    with pytest.warns(results.StoreWarning, match=r"3 line\(s\).*results.jsonl:1: an object without a status"):
        assert results.load(out).empty
    assert cli.main(["report", str(out), "--out", str(tmp_path / "report")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert any(line.startswith("lambda-bench: error:") and "no result rows" in line for line in err)
    assert any(line.startswith("lambda-bench: warning:") and "results.jsonl:3" in line for line in err)
    assert not any("Traceback" in line or "merge" in line for line in err)


def _old_row(model, size, **extra):
    """A row as an older version wrote it: no kind, family or mixer, no images_per_s."""
    row = results.blank_row(case_id=f"{model}|torch|{size}|2|train|fp32|eager|cpu|t2", model=model,
                            framework="torch", image_size=size, batch_size=2, mode="train", precision="fp32",
                            compile="eager", device="cpu", device_name="Old CPU", threads=2, status="ok",
                            step_time_median_s=0.01 * size, n_steps=5, first_call_s=0.1, peak_mem_bytes=1e6 * size,
                            mem_source="RSS", params=1000, flops_analytic=1e6, timestamp="2024-01-01T00:00:00+00:00")
    for key in ("run_id", "kind", "family", "mixer", "images_per_s", "train_s_per_1024"):
        del row[key]
    row.update(extra)
    return row


def test_rows_of_older_and_newer_versions_load(tmp_path, capsys):
    old, new = tmp_path / "old", tmp_path / "new"
    old.mkdir()
    new.mkdir()
    _write_lines(old, [json.dumps(_old_row(m, s)) for m in ("lambda_conv", "mhsa") for s in (8, 16, 32)]
                 + [json.dumps(_old_row("resnet26", 32))])
    _write_lines(new, [json.dumps(_old_row("lambda_resnet26", 32, power_watts="gpu-7", energy_j=1, kind="model"))])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        frame = results.load([old, new])
    store_warnings = [str(w.message) for w in caught if issubclass(w.category, results.StoreWarning)]
    assert len(store_warnings) == 1 and "column(s) power_watts, energy_j: not in this version's schema" in store_warnings[0]
    assert list(frame.columns) == [*results.COLUMNS, "power_watts", "energy_j"]
    assert frame.loc[frame.model == "lambda_resnet26", "power_watts"].item() == "gpu-7"
    by_model = frame.drop_duplicates("model").set_index("model")
    assert by_model.loc["mhsa", ["kind", "family", "mixer"]].tolist() == ["layer", "layer", "mhsa"]
    assert by_model.loc["resnet26", ["kind", "family", "mixer"]].tolist() == ["model", "resnet", "conv"]
    assert "lambda" in by_model.loc["lambda_resnet26", "mixer"]
    assert set(frame.run_id) == {"old", "new"}
    assert frame.images_per_s.tolist() == pytest.approx((2 / frame.step_time_median_s).tolist())
    assert frame.train_s_per_1024.tolist() == pytest.approx((frame.step_time_median_s * 512).tolist())
    assert "power_watts" in json.loads((new / "results.jsonl").read_text())  # the JSON keeps what it had
    # the report of the older run: it once failed on the missing mixer column
    assert cli.main(["report", str(old), "--out", str(tmp_path / "report")]) == 0
    text = (tmp_path / "report" / "report.md").read_text()
    assert "mhsa" in text and "lambda_conv" in text


def test_a_complete_last_row_without_its_newline_is_kept(tmp_path):
    with results.Store(tmp_path) as store:
        store.append({"case_id": "a", "status": "ok"})
        store.append({"case_id": "b", "status": "ok"})
    path = tmp_path / "results.jsonl"
    path.write_bytes(path.read_bytes().rstrip(b"\n"))  # an editor that drops the final newline
    notes = []
    with results.Store(tmp_path, note=notes.append) as store:
        store.append({"case_id": "c", "status": "ok"})
    assert not notes and [r["case_id"] for r in results.read_rows(tmp_path)] == ["a", "b", "c"]
