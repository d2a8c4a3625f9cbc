"""The scripts under scripts/ answer bad input as `lambda-bench` does: one line that names the problem,
exit 2, no traceback."""

import subprocess
import sys
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parent.parent / "scripts"
LISTS_THEM = "(`lambda-bench models` lists them)"


@pytest.mark.parametrize("script,args,message", [
    ("training-sensitivity", ["no_such_model"], f"not a registered model: no_such_model {LISTS_THEM}"),
    ("training-sensitivity", ["lambda_conv"], f"not a registered model: lambda_conv {LISTS_THEM}"),  # a layer
    ("training-sensitivity", ["resnet26", "--steps", "0"], "--steps must be at least 1, got 0"),
    ("training-sensitivity", ["resnet26", "--batch", "-2"], "--batch must be at least 1, got -2"),
    ("training-sensitivity", ["resnet26", "--learning-rate", "0"], "--learning-rate must be positive, got 0.0"),
    ("training-sensitivity", ["resnet26", "--learning-rate", "nan"], "--learning-rate must be positive, got nan"),
    ("kink-margins", ["no_such_model"], f"not a registered model: no_such_model {LISTS_THEM}"),
    ("kink-margins", ["resnet26", "efficientnet_b0"],
     "the check clears no ReLU kinks in efficientnet_b0 (only ResNets without SE)"),
])
def test_bad_input(script, args, message):
    out = subprocess.run([sys.executable, str(SCRIPTS / script), *args], capture_output=True, text=True, timeout=120)
    assert out.returncode == 2, out.stderr
    assert out.stderr.strip().splitlines() == [f"scripts/{script}: error: {message}"]
    assert out.stdout == ""
