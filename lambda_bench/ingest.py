"""`lambda-bench ingest FILE.json --out DIR`: pytest-benchmark JSON -> result rows.

tests/benchmarks/test_models.py puts each benchmark's result row (results.make_row, timing aside)
into its ``extra_info``: the case's fields (framework, model, sizes, mode, precision, compile,
device, threads, implementation) and what was measured (memory, counted FLOPs, versions). Here the
row is built again by results.make_row from those, with the timing columns from pytest-benchmark's
own statistics (p10/p90 from the raw data when the file has it: ``--benchmark-save-data``).
Benchmarks without the case's fields (not ours) are refused by name.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from . import results

REQUIRED = ("framework", "model", "image_size", "batch_size", "mode", "precision", "compile", "device")
# the extra_info keys that are figures of the measurement (the rest are the case, or derived by make_row)
MEASURED = tuple(k for k in results.COLUMNS if k not in results.CASE_FIELDS and k not in results.DERIVED)


def rows_from_benchmark_json(data: dict[str, Any], run_id: str) -> list[dict[str, Any]]:
    if not isinstance(data, dict) or not isinstance(data.get("benchmarks"), list):
        raise ValueError("not a pytest-benchmark JSON file (no 'benchmarks' list)")
    machine = data.get("machine_info") or {}
    commit = (data.get("commit_info") or {}).get("id")
    timestamp = data.get("datetime") or results.utc_now()
    rows = []
    for bench in data["benchmarks"]:
        extra = bench.get("extra_info") or {}
        name = bench.get("fullname", bench.get("name"))
        missing = [k for k in REQUIRED if k not in extra]
        if missing:
            raise ValueError(f"benchmark {name!r}: extra_info lacks "
                             f"{', '.join(missing)}; only tests/benchmarks/test_models.py benchmarks can be ingested")
        stats = bench.get("stats") or {}
        raw = stats.get("data")
        p10 = p90 = None
        if raw:
            p10, p90 = (float(v) for v in np.percentile(np.asarray(raw, dtype=float), [10, 90]))
        measured = {k: extra[k] for k in MEASURED if k in extra}
        measured.update({"status": "ok", "host": extra.get("host") or machine.get("node"),
                         "step_time_median_s": stats.get("median"), "step_time_iqr_s": stats.get("iqr"),
                         "step_time_p10_s": p10, "step_time_p90_s": p90, "n_steps": stats.get("rounds")})
        try:
            row = results.make_row(extra, measured, run_id=run_id, commit=extra.get("git_commit") or commit,
                                   device_name=machine.get("cpu", {}).get("brand_raw"), timestamp=timestamp)
        except ValueError as exc:
            raise ValueError(f"benchmark {name!r}: {exc}") from None
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
