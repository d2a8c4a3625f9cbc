"""A stand-in for lambda_bench.worker in the runner's, store's and executors' tests: same command
line (CASE_JSON RESULT_JSON); it sleeps instead of computing. What it does is chosen per model by
FAKE_WORKER (JSON: model -> behaviour): ok (sleep FAKE_WORKER_SLEEP seconds, default 0.2, then
write a plausible row), segfault (SIGSEGV itself), hang (sleep forever), exit3 (exit code 3, no
result), slow (sleep 1 s then ok), sleepS (sleep S seconds then ok, e.g. sleep1.5), pin1 (ok,
pinned to one CPU whatever the case asked).

With FAKE_WORKER_LOG set to a file, it appends one JSON line when it starts and one when it ends,
saying where it ran (host, its parent's pid: the process that launched it, CUDA_VISIBLE_DEVICES):
the placement and fault tests read them. Like the real worker it dies with its parent."""

import ctypes
import json
import os
import signal
import socket
import sys
import time

try:  # PR_SET_PDEATHSIG, as lambda_bench.worker: a case must not outlive what launched it
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)
except OSError:
    pass

case = json.load(open(sys.argv[1]))
behaviour = json.loads(os.environ.get("FAKE_WORKER", "{}")).get(case["model"], "ok")
print(f"fake worker: {case['model']} -> {behaviour}", flush=True)
log_path = os.environ.get("FAKE_WORKER_LOG")
record = {"model": case["model"], "case": "|".join(str(case[k]) for k in ("model", "framework", "image_size", "mode", "device")),
          "host": socket.gethostname(), "pid": os.getpid(), "parent_pid": os.getppid(),
          "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
          "malloc_trim_threshold": os.environ.get("MALLOC_TRIM_THRESHOLD_")}


def log(event: str) -> None:
    if log_path:
        line = json.dumps({**record, "event": event, "time": time.time()}) + "\n"
        fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line.encode())  # one write of one short line: appends do not interleave
        finally:
            os.close(fd)


log("start")
if behaviour == "segfault":
    os.kill(os.getpid(), signal.SIGSEGV)
if behaviour == "hang":
    time.sleep(3600)
if behaviour == "exit3":
    sys.exit(3)
if behaviour.startswith("sleep"):
    time.sleep(float(behaviour[5:]))
else:
    time.sleep(1.0 if behaviour == "slow" else float(os.environ.get("FAKE_WORKER_SLEEP", "0.2")))
cpus = sorted(os.sched_getaffinity(0))[:1 if behaviour == "pin1" else case["threads"]]  # as the worker pins
# what the real worker reports: raw figures only (results.make_row adds the case, labels, throughput)
row = {"status": "ok", "step_time_median_s": 0.01, "step_time_iqr_s": 0.001, "step_time_p10_s": 0.009,
       "step_time_p90_s": 0.012, "n_steps": 5, "first_call_s": 0.1, "peak_mem_bytes": 1000, "mem_source": "fake",
       "framework_version": "fake", "pinned_cpus": cpus}
with open(sys.argv[2] + ".tmp", "w") as f:
    json.dump(row, f)
os.replace(sys.argv[2] + ".tmp", sys.argv[2])
log("end")
