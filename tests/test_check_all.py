"""`lambda-bench check --all`: every preset in its own process, one JSON line each, resumable, a summary
table, exit 0 only if every preset passed."""

import json

import pytest

from lambda_bench import cli, equivalence, zoo


def test_all_cases_cover_every_registered_preset():
    names = [c.name for c in equivalence.all_cases()]
    assert sorted(names) == sorted(zoo.names() + list(zoo.MODELS))
    assert {"lambda_resnet50_content_only", "lambda_resnet50_position_only", "lambda_resnet420"} <= set(names)
    models = [c for c in equivalence.all_cases() if c.is_model]
    assert {(c.batch, c.height) for c in models} == {(2, zoo.CHECK_IMAGE_SIZE)}


def _record(name, ok=True, status=None):
    return {"preset": name, "family": "layer", "frameworks": ["torch"], "status": status or ("pass" if ok else "fail"),
            "ok": ok, "seconds": 1.0,
            "summary": [{"framework": "torch", "stage": "float32", "ok": ok, "worst": 1e-7 if ok else 0.5,
                         "worst_tensor": "grad x", "tensors": 4, "rounding_limited": 0 if ok else 1,
                         "float32_agreeing": 0}]}


def test_resume_file_with_a_cut_last_line_drops_it(tmp_path):
    path = tmp_path / "all.jsonl"
    path.write_text(json.dumps(_record("lambda")) + "\n" + '{"preset": "sas')
    assert list(equivalence.read_records(path)) == ["lambda"]
    assert path.read_text() == json.dumps(_record("lambda")) + "\n"  # the next append starts on a clean line
    path.write_text("not json\n" + json.dumps(_record("lambda")) + "\n")
    with pytest.raises(ValueError, match="line 1 is not JSON"):
        equivalence.read_records(path)


def test_summary_table_shows_status_per_framework_and_stage_and_worst_per_family():
    table = equivalence.summary_table({"lambda": _record("lambda"), "sasa": _record("sasa", ok=False)}, ["torch"])
    assert "ok 1.0e-07" in table and "FAIL 5.0e-01" in table
    assert "layer                float32  5.00e-01  (sasa torch grad x)" in table


def test_check_all_resumes_and_fails_on_a_failed_preset(tmp_path, monkeypatch, capsys):
    path = tmp_path / "all.jsonl"
    case = zoo.get("lambda_conv", height=5, width=6, d_in=16, d_out=16, r=3)
    monkeypatch.setattr(equivalence, "all_cases", lambda: [case])
    assert cli.main(["check", "--all", "--frameworks", "torch", "--resume", str(path)]) == 0
    lines = path.read_text().splitlines()
    assert len(lines) == 1 and json.loads(lines[0])["status"] == "pass"
    # resumed: nothing left to check, nothing appended
    assert cli.main(["check", "--all", "--frameworks", "torch", "--resume", str(path)]) == 0
    assert len(path.read_text().splitlines()) == 1
    assert "1 done in" in capsys.readouterr().out
    path.write_text(json.dumps(_record(case.name, ok=False)) + "\n")
    assert cli.main(["check", "--all", "--frameworks", "torch", "--resume", str(path)]) == 1


def test_check_all_stops_at_the_budget(tmp_path, monkeypatch, capsys):
    path = tmp_path / "all.jsonl"
    monkeypatch.setattr(equivalence, "all_cases", lambda: [zoo.get("lambda"), zoo.get("sasa")])
    monkeypatch.setattr(equivalence, "check_preset_in_subprocess",
                        lambda case, frameworks, **options: (__import__("time").sleep(0.1), _record(case.name))[1])
    assert cli.main(["check", "--all", "--frameworks", "torch", "--budget-minutes", "0.001", "--resume", str(path)]) == 1
    out = capsys.readouterr().out
    assert "budget spent" in out and f"--resume {path}" in out
    assert len(path.read_text().splitlines()) == 1


@pytest.mark.parametrize("argv", [["check", "--all", "lambda"], ["check", "--all", "--suite"],
                                  ["check", "lambda", "--resume", "x.jsonl"], ["check", "--all", "--budget-minutes", "0"],
                                  ["check", "--all", "--jobs", "0"], ["check", "lambda", "--jobs", "2"],
                                  ["check", "--all", "--recheck", "lambda,no_such_preset"],
                                  ["check", "lambda", "--recheck", "lambda"]])
def test_check_all_bad_input(argv, capsys):
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("lambda-bench: error:") and len(err.strip().splitlines()) == 1


def test_an_errored_preset_is_checked_again_on_resume(tmp_path, monkeypatch, capsys):
    path = tmp_path / "all.jsonl"
    path.write_text(json.dumps({**_record("lambda"), "status": "error", "ok": False, "error": "killed by signal 9"}) + "\n")
    monkeypatch.setattr(equivalence, "all_cases", lambda: [zoo.get("lambda")])
    checked = []
    monkeypatch.setattr(equivalence, "check_preset_in_subprocess",
                        lambda case, frameworks, **options: (checked.append(case.name), _record(case.name))[1])
    assert cli.main(["check", "--all", "--frameworks", "torch", "--resume", str(path)]) == 0
    assert checked == ["lambda"]
    assert equivalence.read_records(path)["lambda"]["status"] == "pass"


def test_check_all_records_commit_and_host(tmp_path, monkeypatch):
    path = tmp_path / "all.jsonl"
    monkeypatch.setattr(equivalence, "all_cases", lambda: [zoo.get("lambda")])
    monkeypatch.setattr(equivalence, "check_preset_in_subprocess", lambda case, frameworks, **options: _record(case.name))
    assert cli.main(["check", "--all", "--frameworks", "torch", "--resume", str(path)]) == 0
    record = equivalence.read_records(path)["lambda"]
    assert record["host"]
    assert record["commit"] is None or len(record["commit"].removesuffix("-dirty")) == 40


def test_summary_prints_the_file_as_markdown_and_checks_nothing(tmp_path, monkeypatch, capsys):
    path = tmp_path / "all.jsonl"
    records = [{**_record("lambda"), "commit": "abc", "host": "box", "checked_at": "2026-01-01T00:00:00Z",
                "input_shape": [2, 8, 10, 64]},
               {**_record("sasa", ok=False), "commit": "abc", "host": "box", "seconds": 7200.0},
               {**_record("mhsa"), "status": "error", "ok": False, "error": "killed by signal 9 (out of memory?)"}]
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    monkeypatch.setattr(equivalence, "check_preset_in_subprocess", lambda *a, **k: pytest.fail("checked something"))
    assert cli.main(["check", "--all", "--resume", str(path), "--summary"]) == 1  # not all passed
    out = capsys.readouterr().out
    assert "3 of " in out and "1 pass, 1 fail, 1 error" in out and "host box" in out and "commit abc, unknown" in out
    assert "| `lambda` | layer | 2×8×10×64 | 1 | ok 1.0e-07 | – | pass |" in out
    assert "| `sasa` | layer |  | 7200 | **FAIL** 5.0e-01 | – | fail |" in out
    assert "error: killed by signal 9 (out of memory?)" in out
    assert "| layer | 3 | 7202 | float32 | 12 | 1 | 0 | 5.00e-01 | `sasa` torch grad x |" in out
    assert path.read_text() == "".join(json.dumps(r) + "\n" for r in records)  # untouched


@pytest.mark.parametrize("argv", [["check", "--all", "--summary"], ["check", "lambda", "--summary"]])
def test_summary_needs_a_results_file(argv, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("lambda-bench: error:") and len(err.strip().splitlines()) == 1


def test_check_all_jobs_runs_presets_at_once_and_writes_each_once(tmp_path, monkeypatch, capsys):
    import threading
    import time

    path = tmp_path / "all.jsonl"
    names = ["lambda", "sasa", "mhsa", "axial"]
    monkeypatch.setattr(equivalence, "all_cases", lambda: [zoo.get(n) for n in names])
    lock, active, peak, seen = threading.Lock(), [0], [0], []

    def fake(case, frameworks, **options):
        with lock:
            active[0] += 1
            peak[0] = max(peak[0], active[0])
            seen.append(options["threads"])
        time.sleep(0.2)
        with lock:
            active[0] -= 1
        return _record(case.name)

    monkeypatch.setattr(equivalence, "check_preset_in_subprocess", fake)
    monkeypatch.setattr("lambda_bench.runner.usable_cpus", lambda: 4)
    assert cli.main(["check", "--all", "--frameworks", "torch", "--jobs", "2", "--resume", str(path)]) == 0
    assert peak[0] == 2  # two at a time, never more
    assert seen == [2] * 4  # 4 cores shared by 2 jobs
    assert sorted(equivalence.read_records(path)) == sorted(names)
    assert len(path.read_text().splitlines()) == 4
    assert "2 at a time" in capsys.readouterr().out


def test_check_all_records_the_commit_each_preset_started_at(tmp_path, monkeypatch):
    # a run resumed for hours may see the checkout move on: each record names the commit its
    # preset's process started from, not the one the run started at
    from lambda_bench import results

    path = tmp_path / "all.jsonl"
    commits = iter(["a" * 40, "b" * 40, "c" * 40])
    monkeypatch.setattr(results, "git_commit", lambda **options: next(commits))
    monkeypatch.setattr(equivalence, "all_cases", lambda: [zoo.get("lambda"), zoo.get("sasa")])
    monkeypatch.setattr(equivalence, "check_preset_in_subprocess", lambda case, frameworks, **options: _record(case.name))
    assert cli.main(["check", "--all", "--frameworks", "torch", "--jobs", "1", "--resume", str(path)]) == 0
    records = equivalence.read_records(path)
    assert (records["lambda"]["commit"], records["sasa"]["commit"]) == ("a" * 40, "b" * 40)


def test_the_results_file_does_not_make_the_commit_dirty(tmp_path):
    """check --all appends to its results file as it runs; inside the checkout that file alone must not
    mark the records "-dirty", while any other change still does."""
    import subprocess

    from lambda_bench import results

    def git(*args):
        subprocess.run(["git", "-C", str(tmp_path), "-c", "user.name=t", "-c", "user.email=t@t", *args],
                       check=True, capture_output=True)

    git("init", "-q")
    (tmp_path / "code.py").write_text("x = 1\n")
    (tmp_path / "all.jsonl").write_text("")
    git("add", "code.py", "all.jsonl")
    git("commit", "-q", "-m", "first")
    (tmp_path / "all.jsonl").write_text("{}\n")
    clean = results.git_commit(tmp_path, ignore=[tmp_path / "all.jsonl"])
    assert len(clean) == 40 and not clean.endswith("-dirty")
    assert results.git_commit(tmp_path).endswith("-dirty")
    (tmp_path / "code.py").write_text("x = 2\n")
    assert results.git_commit(tmp_path, ignore=[tmp_path / "all.jsonl"]).endswith("-dirty")


def test_recheck_checks_a_recorded_preset_again_and_keeps_the_old_line(tmp_path, monkeypatch, capsys):
    path = tmp_path / "all.jsonl"
    path.write_text(json.dumps(_record("lambda", ok=False)) + "\n" + json.dumps(_record("sasa")) + "\n")
    monkeypatch.setattr(equivalence, "all_cases", lambda: [zoo.get("lambda"), zoo.get("sasa")])
    checked = []
    monkeypatch.setattr(equivalence, "check_preset_in_subprocess",
                        lambda case, frameworks, **options: (checked.append(case.name), _record(case.name))[1])
    assert cli.main(["check", "--all", "--frameworks", "torch", "--resume", str(path)]) == 1  # the fail is kept
    assert checked == []
    assert cli.main(["check", "--all", "--frameworks", "torch", "--resume", str(path), "--recheck", "lambda"]) == 0
    assert checked == ["lambda"]  # sasa passed and is not named: not checked again
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [(r["preset"], r["status"]) for r in lines] == [("lambda", "fail"), ("sasa", "pass"), ("lambda", "pass")]
    assert equivalence.read_records(path)["lambda"]["status"] == "pass"
    assert cli.main(["check", "--all", "--frameworks", "torch", "--resume", str(path), "--summary"]) == 0
    assert "2 of 2 presets checked (2 pass, 0 fail" in capsys.readouterr().out


def test_a_preset_killed_beside_others_is_checked_again_alone(tmp_path, monkeypatch, capsys):
    import threading
    import time

    path = tmp_path / "all.jsonl"
    names = ["lambda", "sasa", "mhsa"]
    monkeypatch.setattr(equivalence, "all_cases", lambda: [zoo.get(n) for n in names])
    lock, active, calls = threading.Lock(), [0], []

    def fake(case, frameworks, **options):
        with lock:
            active[0] += 1
            beside = active[0] > 1
            calls.append((case.name, beside, options["threads"]))
        time.sleep(0.2)
        with lock:
            active[0] -= 1
        if case.name == "sasa" and beside:  # out of memory only when another preset runs too
            return {**_record(case.name), "status": "error", "ok": False, "error": "killed by signal 9 (out of memory?)"}
        return _record(case.name)

    monkeypatch.setattr(equivalence, "check_preset_in_subprocess", fake)
    monkeypatch.setattr("lambda_bench.runner.usable_cpus", lambda: 4)
    assert cli.main(["check", "--all", "--frameworks", "torch", "--jobs", "2", "--resume", str(path)]) == 0
    assert [c for c in calls if c[0] == "sasa"] == [("sasa", True, 2), ("sasa", False, None)]  # alone: every core
    assert equivalence.read_records(path)["sasa"]["status"] == "pass"
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [r["status"] for r in lines if r["preset"] == "sasa"] == ["error", "pass"]  # the kill is kept
    assert "checked again at the end, alone" in capsys.readouterr().out
