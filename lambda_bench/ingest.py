"""`lambda-bench ingest FILE.json --out DIR`: pytest-benchmark JSON -> result rows.

tests/benchmarks/test_models.py puts every case field of a row into each benchmark's ``extra_info``
(framework, model, sizes, mode, precision, compile, device, threads, params, FLOPs, memory); the
timing columns come from pytest-benchmark's own statistics (p10/p90 from the raw data when the file
has it: ``--benchmark-save-data``). Benchmarks without those fields (not ours) are refused by name.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from . import results

REQUIRED = ("framework", "model", "image_size", "batch_size", "mode", "precision", "compile", "device")


def rows_from_benchmark_json(data: dict[str, Any], run_id: str) -> list[dict[str, Any]]:
    if not isinstance(data, dict) or not isinstance(data.get("benchmarks"), list):
        raise ValueError("not a pytest-benchmark JSON file (no 'benchmarks' list)")
    machine = data.get("machine_info") or {}
    commit = (data.get("commit_info") or {}).get("id")
    timestamp = data.get("datetime") or results.utc_now()
    rows = []
    for bench in data["benchmarks"]:
        extra = bench.get("extra_info") or {}
        missing = [k for k in REQUIRED if k not in extra]
        if missing:
            raise ValueError(f"benchmark {bench.get('fullname', bench.get('name'))!r}: extra_info lacks "
                             f"{', '.join(missing)}; only tests/benchmarks/test_models.py benchmarks can be ingested")
        stats = bench.get("stats") or {}
        raw = stats.get("data")
        p10 = p90 = None
        if raw:
            p10, p90 = (float(v) for v in np.percentile(np.asarray(raw, dtype=float), [10, 90]))
        median = stats.get("median")
        row = {k: extra.get(k) for k in results.COLUMNS if k in extra}
        row.update({
            "run_id": run_id,
            "case_id": "|".join(str(extra[k]) for k in REQUIRED) + f"|t{extra.get('threads')}",
            "device_name": extra.get("device_name") or machine.get("cpu", {}).get("brand_raw"),
            "status": "ok",
            "step_time_median_s": median, "step_time_iqr_s": stats.get("iqr"),
            "step_time_p10_s": p10, "step_time_p90_s": p90, "n_steps": stats.get("rounds"),
            "images_per_s": extra["batch_size"] / median if median else None,
            "train_s_per_1024": median * 1024 / extra["batch_size"] if median and extra["mode"] == "train" else None,
            "git_commit": extra.get("git_commit") or commit,
            "timestamp": timestamp,
        })
        rows.append(row)
    return rows


def ingest(path: str | Path, out_dir: str | Path) -> tuple[int, Path]:
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except OSError as exc:
        raise ValueError(f"{str(path)!r}: cannot read it ({exc.strerror})") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"{str(path)!r}: not JSON ({exc})") from None
    out = Path(out_dir)
    rows = rows_from_benchmark_json(data, Path(os.path.abspath(out)).name)
    n = 0
    with results.Store(results.check_out_dir(out)) as store:
        done = store.done_case_ids()
        store.write_env(results.environment({"source": f"pytest-benchmark file {path}",
                                             "machine_info": data.get("machine_info")}))
        for row in rows:
            if row["case_id"] in done:
                continue
            store.append(row)
            n += 1
    return n, out
