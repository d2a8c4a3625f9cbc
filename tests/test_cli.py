"""The command line: exit 0 when within tolerance, 1 when not, 2 (one line, no traceback) on bad input."""

import json
import subprocess
import sys

import pytest

from lambda_bench.cli import main
from lambda_bench.equivalence import installed_frameworks


def run(*args):
    return subprocess.run([sys.executable, "-m", "lambda_bench", *args], capture_output=True, text=True, timeout=600)


def test_importing_the_harness_imports_no_framework():
    code = ("import sys, lambda_bench, lambda_bench.cli, lambda_bench.equivalence, lambda_bench.zoo, "
            "lambda_bench.reference, lambda_bench.weights, lambda_bench.backend; "
            "print(sorted(m for m in ('torch', 'tensorflow', 'jax', 'flax', 'keras') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("args,message", [
    (["check", "nope"], "name='nope': not registered"),
    (["check", "lambda", "--set", "r=4", "--set", "position=conv"], "r=4"),
    (["check", "lambda", "--set", "heads=3"], "d_out=64: must be divisible by heads=3"),
    (["check", "lambda", "--set", "colour=red"], "--set colour: unknown option"),
    (["check", "lambda", "--set", "k=x"], "--set k=x"),
    (["check", "lambda", "--frameworks", "mxnet"], "'mxnet' is not one of"),
    (["check", "lambda", "--size", "7"], "--size '7'"),
    (["check", "lambda", "--batch", "0"], "batch=0"),
    (["check", "lambda", "--suite"], "--suite runs the fixed CI cases"),
    (["check", "lambda_conv", "--perturb", "rel_pos_emb", "--frameworks", "torch"], "perturb='rel_pos_emb'"),
])
def test_bad_input_exits_2_with_one_line(args, message, capsys):
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err and "Traceback" not in err


def test_list(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "lambda " in out and "lambda_conv" in out


@pytest.mark.skipif(not installed_frameworks(), reason="no framework installed")
def test_check_json_passes_and_perturbed_weight_fails():
    fws = ",".join(installed_frameworks())
    ok = run("check", "lambda", "lambda_conv", "--frameworks", fws, "--json")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    report = json.loads(ok.stdout)
    assert report["ok"] and set(report["worst"]) == set(installed_frameworks())
    assert all(row["rel_error"] <= 1e-5 for row in report["checks"])
    assert {row["case"] for row in report["checks"]} == {"lambda", "lambda_conv"}
    assert 0.1 < report["peak_memory_gib"] < 64  # a process that loaded a framework; KiB read as GiB

    bad = run("check", "lambda", "--frameworks", fws, "--perturb", "to_q.weight")
    assert bad.returncode == 1, bad.stdout + bad.stderr
    assert "NOT within tolerance" in bad.stdout and "Traceback" not in bad.stderr
