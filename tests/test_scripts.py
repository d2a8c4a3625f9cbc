"""The scripts under scripts/ answer bad input as `lambda-bench` does: one line that names the problem,
exit 2, no traceback."""

import subprocess
import sys
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parent.parent / "scripts"


@pytest.mark.parametrize("args,message", [
    (["no_such_model"], "not a registered model: no_such_model (`lambda-bench models` lists them)"),
    (["lambda_conv"], "not a registered model: lambda_conv (`lambda-bench models` lists them)"),  # a layer, not a model
    (["resnet26", "--steps", "0"], "--steps must be at least 1, got 0"),
    (["resnet26", "--batch", "-2"], "--batch must be at least 1, got -2"),
    (["resnet26", "--learning-rate", "0"], "--learning-rate must be positive, got 0.0"),
    (["resnet26", "--learning-rate", "nan"], "--learning-rate must be positive, got nan"),
])
def test_training_sensitivity_bad_input(args, message):
    out = subprocess.run([sys.executable, str(SCRIPTS / "training-sensitivity"), *args],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2, out.stderr
    assert out.stderr.strip().splitlines() == [f"scripts/training-sensitivity: error: {message}"]
    assert out.stdout == ""


@pytest.mark.parametrize("args,message", [
    (["no_such_model"], "not a registered model: no_such_model (`lambda-bench models` lists them)"),
    (["resnet26", "efficientnet_b0"], "the check clears no ReLU kinks in efficientnet_b0 (only ResNets without SE)"),
])
def test_kink_margins_bad_input(args, message):
    out = subprocess.run([sys.executable, str(SCRIPTS / "kink-margins"), *args],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2, out.stderr
    assert out.stderr.strip().splitlines() == [f"scripts/kink-margins: error: {message}"]
    assert out.stdout == ""
