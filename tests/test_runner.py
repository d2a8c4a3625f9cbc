"""The sweep runner: config validation, isolation of failures (crash, hang, exit), resumability after
SIGKILL, the store's torn-line repair. The worker is a stand-in here (tests/helpers/fake_worker.py);
tests/test_worker.py runs the real one."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from lambda_bench import cli, results, runner

# its assertions depend on CPU time or on timed workers finishing in time: run alone (tox.ini's
# second pass), not beside another test process
pytestmark = pytest.mark.serial

ROOT = Path(__file__).resolve().parent.parent
FAKE = (sys.executable, str(ROOT / "tests" / "helpers" / "fake_worker.py"))


def _sweep(models, **extra):
    config = {"models": models, "frameworks": ["torch"], "image_sizes": [16], "batch_sizes": [2], **extra}
    return runner.build_sweep(config, "test")


def test_failures_become_rows_and_the_sweep_goes_on(tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_WORKER", json.dumps({"lambda": "segfault", "mhsa": "hang", "sasa": "exit3"}))
    sweep = _sweep(["lambda", "mhsa", "sasa", "axial"], timeout_s=3)
    start = time.perf_counter()
    runner.run(sweep, tmp_path / "run", worker=FAKE)
    assert time.perf_counter() - start < 20
    rows = {r["model"]: r for r in results.read_rows(tmp_path / "run")}
    assert rows["lambda"]["status"] == "crashed" and "SIGSEGV" in rows["lambda"]["error"]
    assert rows["mhsa"]["status"] == "timeout" and "3 s" in rows["mhsa"]["error"]
    assert rows["sasa"]["status"] == "crashed" and "code 3" in rows["sasa"]["error"]
    assert "fake worker: sasa -> exit3" in rows["sasa"]["error"]  # the worker's last output is kept
    assert rows["axial"]["status"] == "ok" and rows["axial"]["images_per_s"] == pytest.approx(200)
    frame = results.load(tmp_path / "run")
    assert list(frame.columns) == list(results.COLUMNS) and len(frame) == 4
    assert (tmp_path / "run" / "results.csv").read_text().count("\n") == 5
    env = json.loads((tmp_path / "run" / "env.json").read_text())
    assert env["config"]["cases"] == [c.case_id for c in sweep.cases] and env["versions"]


def test_sigkill_mid_sweep_then_resume_gives_every_case_once(tmp_path):
    out = tmp_path / "run"
    models = ["lambda", "lambda_conv", "mhsa", "sasa", "axial"]
    script = textwrap.dedent(f"""
        import sys
        from lambda_bench import runner
        sweep = runner.build_sweep({{"models": {models!r}, "frameworks": ["torch", "jax"], "image_sizes": [16],
                                     "batch_sizes": [2]}}, "test")
        runner.run(sweep, {str(out)!r}, worker={FAKE!r})
    """)
    env = {**os.environ, "FAKE_WORKER": json.dumps({m: "slow" for m in models})}
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT, env=env)
    deadline = time.time() + 60
    while len(results.read_rows(out)) < 3 and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = len(results.read_rows(out))
    assert 3 <= killed_at < 10
    # a torn write, as a kill inside write() would leave it
    with open(out / "results.jsonl", "a") as f:
        f.write('{"case_id": "torn')
    sweep = runner.build_sweep({"models": models, "frameworks": ["torch", "jax"], "image_sizes": [16],
                                "batch_sizes": [2]}, "test")
    with pytest.raises(ValueError, match="--resume"):
        runner.run(sweep, out, worker=FAKE)
    os.environ["FAKE_WORKER"] = "{}"
    try:
        runner.run(sweep, out, resume=True, worker=FAKE)
    finally:
        del os.environ["FAKE_WORKER"]
    ids = [r["case_id"] for r in results.read_rows(out)]
    assert sorted(ids) == sorted(c.case_id for c in sweep.cases)  # every case exactly once
    assert len(json.loads((out / "env.json").read_text())["resumed"]) == 1


@pytest.mark.parametrize("config,message", [
    ({"models": ["resnet51"]}, "model 'resnet51': not registered"),
    ({"models": ["resnet26"], "frameworks": ["mxnet"]}, "framework 'mxnet'"),
    ({"models": ["resnet26"], "image_sizes": [0]}, "image size=0"),
    ({"models": ["resnet26"], "batch_sizes": [-2]}, "batch size=-2"),
    ({"models": ["resnet26"], "modes": ["eval"]}, "mode 'eval'"),
    ({"models": ["resnet26"], "compiles": ["jit"]}, "compile 'jit'"),
    ({"models": ["resnet26"], "frameworks": ["jax"], "compiles": ["eager"]}, "no cases"),
    ({"models": ["resnet26"], "colour": "red"}, "key 'colour'"),
    ({"models": ["resnet26"], "timing": {"min_steps": 0}}, "min_steps=0"),
    ({"groups": [{"models": ["resnet26"], "sizes": [3]}]}, "key 'sizes'"),
])
def test_bad_configs_fail_before_anything_runs(config, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace("'", "'")):
        runner.build_sweep(config)


def test_cli_bad_input_is_one_line_and_exit_2(tmp_path, capsys):
    bad_toml = tmp_path / "bad.toml"
    bad_toml.write_text("models = [resnet26\n")
    for argv, message in (
            (["run", "--preset", "fastest"], "preset 'fastest'"),
            (["run", "--models", "resnet26", "--frameworks", "torch", "--batch-size", "two"], "--batch-size 'two'"),
            (["run", "--config", str(bad_toml)], "malformed TOML"),
            (["run", "--config", str(tmp_path / "missing.toml")], "cannot read"),
            (["run", "--models", "nope"], "model 'nope'"),
            (["flops", "nope"], "name='nope'"),
            (["ingest", str(bad_toml), "--out", str(tmp_path / "x")], "not JSON"),
    ):
        assert cli.main(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and message in err and "Traceback" not in err, (argv, err)
    assert not (tmp_path / "x").exists()


def test_toml_config_groups_and_command_line_overrides(tmp_path):
    path = tmp_path / "sweep.toml"
    path.write_text(textwrap.dedent("""
        threads = 1
        frameworks = ["torch", "tensorflow"]
        modes = ["infer"]
        [[groups]]
        models = ["resnet26"]
        image_sizes = [32, 64]
        [[groups]]
        models = ["lambda_conv", "sasa"]
        image_sizes = [16]
        modes = ["infer", "train"]
    """))
    sweep = runner.build_sweep(runner.load_config(path))
    assert len(sweep.cases) == 2 * 2 + 2 * 2 * 2 and sweep.threads == 1
    assert {c.compile for c in sweep.cases if c.framework == "tensorflow"} == {"compiled"}
    narrowed = runner.build_sweep(runner.override(runner.load_config(path), frameworks=["torch"], batch_sizes=[4]))
    assert {c.framework for c in narrowed.cases} == {"torch"} and {c.batch_size for c in narrowed.cases} == {4}


def test_presets_are_valid_and_quick_covers_every_family_mixer_and_framework():
    quick = runner.build_sweep(runner.preset("quick"))
    runner.build_sweep(runner.preset("paper"))
    from lambda_bench import zoo
    families = {zoo.family(zoo.MODELS[c.model]) for c in quick.cases if c.model in zoo.MODELS}
    assert {"resnet", "lambda_resnet", "efficientnet", "mhsa_resnet", "sasa_resnet", "axial_resnet"} <= families
    layers = {c.model for c in quick.cases if c.model in zoo.PRESETS}
    assert layers == set(zoo.PRESETS)
    assert {c.framework for c in quick.cases} == {"torch", "tensorflow", "jax"}
    for layer in layers:
        assert len({c.image_size for c in quick.cases if c.model == layer}) >= 3  # a scaling curve


def test_store_repairs_a_torn_line_before_appending(tmp_path):
    with results.Store(tmp_path) as store:
        store.append({"case_id": "a", "status": "ok"})
    with open(tmp_path / "results.jsonl", "a") as f:
        f.write('{"case_id": "b", "sta')
    with pytest.warns(results.StoreWarning, match=r"results.jsonl:2: incomplete last line.*case b"):
        assert [r["case_id"] for r in results.read_rows(tmp_path)] == ["a"]
    notes = []
    with results.Store(tmp_path, note=notes.append) as store:
        assert len(notes) == 1 and "results.jsonl:2: incomplete last line" in notes[0] and "cut" in notes[0]
        store.append({"case_id": "c", "status": "oom"})
        with pytest.raises(ValueError, match="column 'nonsense'"):
            store.append({"nonsense": 1})
    assert [r["case_id"] for r in results.read_rows(tmp_path)] == ["a", "c"]
    with pytest.raises(ValueError, match="not a lambda-bench run directory"):
        results.load(tmp_path / "nowhere")
