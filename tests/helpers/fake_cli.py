"""`python tests/helpers/fake_cli.py ARGS...`: the lambda-bench command line with the stand-in
worker (tests/helpers/fake_worker.py) in place of the real one, for tests that run the CLI in a
process of its own (signals, concurrent runs)."""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from lambda_bench import cli, preflight, runner  # noqa: E402

runner.WORKER = (sys.executable, str(ROOT / "tests" / "helpers" / "fake_worker.py"))
preflight.framework_missing = lambda framework: None  # the stand-in worker needs none
sys.exit(cli.main(sys.argv[1:]))
