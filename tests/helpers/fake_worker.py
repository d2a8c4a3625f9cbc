"""A stand-in for lambda_bench.worker in the runner's reliability tests: same command line
(CASE_JSON RESULT_JSON); what it does is chosen per model by FAKE_WORKER (JSON: model -> behaviour):
ok (sleep 0.2 s, write a plausible row), segfault (SIGSEGV itself), hang (sleep forever),
exit3 (exit code 3, no result), slow (sleep 1 s then ok), pin1 (ok, pinned to one CPU whatever
the case asked). With FAKE_WORKER_LOG set, each start appends "pid model" to that file."""

import json
import os
import signal
import sys
import time

case = json.load(open(sys.argv[1]))
behaviour = json.loads(os.environ.get("FAKE_WORKER", "{}")).get(case["model"], "ok")
print(f"fake worker: {case['model']} -> {behaviour}", flush=True)
if os.environ.get("FAKE_WORKER_LOG"):
    with open(os.environ["FAKE_WORKER_LOG"], "a") as log:
        log.write(f"{os.getpid()} {case['model']}\n")
if behaviour == "segfault":
    os.kill(os.getpid(), signal.SIGSEGV)
if behaviour == "hang":
    time.sleep(3600)
if behaviour == "exit3":
    sys.exit(3)
time.sleep(1.0 if behaviour == "slow" else 0.2)
cpus = sorted(os.sched_getaffinity(0))[:1 if behaviour == "pin1" else case["threads"]]  # as the worker pins
row = {"status": "ok", "step_time_median_s": 0.01, "step_time_iqr_s": 0.001, "step_time_p10_s": 0.009,
       "step_time_p90_s": 0.012, "n_steps": 5, "first_call_s": 0.1, "images_per_s": case["batch_size"] / 0.01,
       "peak_mem_bytes": 1000, "mem_source": "fake", "params": 1, "flops_analytic": 2, "framework_version": "fake",
       "pinned_cpus": cpus}
with open(sys.argv[2] + ".tmp", "w") as f:
    json.dump(row, f)
os.replace(sys.argv[2] + ".tmp", sys.argv[2])
