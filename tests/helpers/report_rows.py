"""Synthetic result rows for the report tests, written through the real store: two devices, torch
and JAX, models, layers, an OOM and a crash; and a small run with flagged measurements.

Nothing here is measured: every figure follows a rule the tests can check (layer memory and time
grow as n^EXPONENT, model speed is a base rate times device, framework and mode factors).
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest

from lambda_bench import results

# measurement-quality columns (rows written before them lack them; the report reads both)
QUALITY = {"interference": "fraction of the pinned CPUs' time used by other processes in the timed window",
           "rel_iqr": "step_time IQR / median", "remeasured": "times the case was re-measured",
           "flags": "reasons the figure is doubtful, '; '-joined; empty when clean"}

DEVICES = {"Test CPU A": ("cpu", 1.0), "Test GPU B": ("cuda", 20.0)}  # name -> (device, speed factor)
FRAMEWORKS = {"torch": ("eager", 1.0), "jax": ("compiled", 1.25)}
MODELS = {  # name -> (image size, family, params, images/s on Test CPU A / torch / infer)
    "resnet50": (224, "resnet", 25_557_032, 40.0),
    "lambda_resnet50": (224, "lambda_resnet", 15_000_000, 16.0),
    "lambda_resnet50_ccll": (224, "lambda_resnet", 16_000_000, 30.0),
    "efficientnet_b0": (224, "efficientnet", 5_288_548, 50.0),
    "efficientnet_b1": (240, "efficientnet", 7_794_184, 20.0),
}
LAYER_SIZES = (16, 32, 64)
EXPONENT = {"mhsa": 2.0, "lambda_conv": 1.0}  # in n = size²: what the synthetic layer rows follow
BATCH = 8
CRASH = ("efficientnet_b1", "jax", "train", "Test GPU B")


def _row(**values):
    return results.blank_row(run_id="fixture", git_commit="abc123", precision="fp32", threads=2,
                             timestamp="2025-01-01T00:00:00+00:00", **values)


def model_rows():
    for device_name, (device, speed) in DEVICES.items():
        for framework, (compile_mode, fw_speed) in FRAMEWORKS.items():
            for mode, mode_speed in (("infer", 1.0), ("train", 1 / 3)):
                for model, (size, family, params, base) in MODELS.items():
                    ips = base * speed * fw_speed * mode_speed
                    row = dict(model=model, family=family, kind="model", framework=framework, mode=mode,
                               image_size=size, batch_size=BATCH, compile=compile_mode, device=device,
                               device_name=device_name, status="ok", images_per_s=ips,
                               step_time_median_s=BATCH / ips, first_call_s=2.0 / fw_speed,
                               peak_mem_bytes=params * 16.0 * (3 if mode == "train" else 1),
                               mem_source="test", params=params, flops_analytic=4.0e9 * params / 25e6,
                               flops_counted=4.2e9 * params / 25e6, flops_counter=f"{framework} counter",
                               train_s_per_1024=1024 / ips if mode == "train" else None,
                               case_id=f"{model}|{framework}|{size}|{BATCH}|{mode}|fp32|{compile_mode}|{device}")
                    if (model, framework, mode, device_name) == CRASH:
                        row.update(status="crashed", error="worker died: Segmentation fault", images_per_s=None,
                                   step_time_median_s=None, train_s_per_1024=None, peak_mem_bytes=None)
                    yield _row(**row)


def layer_rows():
    for mixer, exponent in EXPONENT.items():
        for size in LAYER_SIZES + (128,):
            n = size * size
            row = dict(model=mixer, mixer=mixer, family="layer", kind="layer", framework="torch", mode="infer",
                       image_size=size, batch_size=2, compile="eager", device="cpu", device_name="Test CPU A",
                       status="ok", peak_mem_bytes=1000.0 * n ** exponent, step_time_median_s=1e-6 * n ** exponent,
                       mem_source="test", case_id=f"{mixer}|torch|{size}|2|infer|fp32|eager|cpu")
            if size == 128:
                if mixer != "mhsa":
                    continue
                row.update(status="oom", error="out of memory at 128", peak_mem_bytes=None, step_time_median_s=None)
            yield _row(**row)


def write_run(path: Path, rows, command: str = "lambda-bench run --models resnet50 --frameworks torch,jax") -> Path:
    store = results.Store(path)
    for row in rows:
        store.append(row)
    store.write_env(results.environment({"command": command}))
    return path


@contextlib.contextmanager
def quality_schema():
    """The row schema with the measurement-quality columns, while a test writes and reads flagged rows
    (a no-op where results.COLUMNS has them already)."""
    with pytest.MonkeyPatch.context() as mp:
        for name, text in QUALITY.items():
            if name not in results.COLUMNS:
                mp.setitem(results.COLUMNS, name, text)
        yield


BUSY = "busy machine: 38% of CPU time used by other processes"
UNSTABLE = "unstable: IQR 45% of median"


def flagged_rows():
    """A run where every claim hinges on a flagged row: EfficientNet-B5 (the one matched point),
    axial attention (Table 4), the largest mhsa size (the third point of its fit)."""
    def model(name, size, family, mode, ips, flags="", mem=1e9, params=None):
        return _row(model=name, family=family, kind="model", framework="torch", mode=mode, image_size=size,
                    batch_size=1, compile="eager", device="cpu", device_name="Test CPU A", status="ok",
                    images_per_s=ips, step_time_median_s=1 / ips, peak_mem_bytes=mem, mem_source="test",
                    params=params, train_s_per_1024=1024 / ips if mode == "train" else None,
                    interference=0.38 if flags == BUSY else 0.01, rel_iqr=0.45 if flags == UNSTABLE else 0.02,
                    remeasured=1 if flags else 0, flags=flags,
                    case_id=f"{name}|torch|{size}|1|{mode}|fp32|eager|cpu")
    rows = [model("lambda_resnet152", 224, "lambda_resnet", "train", 2.0),
            model("lambda_resnet152", 256, "lambda_resnet", "train", 1.5),
            model("efficientnet_b5", 456, "efficientnet", "train", 0.5, flags=BUSY),
            model("lambda_resnet50", 224, "lambda_resnet", "infer", 16.0, mem=1.0e9),
            model("axial_resnet50", 224, "axial_resnet", "infer", 12.0, mem=2.0e9, flags=UNSTABLE)]
    for mixer, exponent in EXPONENT.items():
        for size in LAYER_SIZES:
            n = size * size
            flags = BUSY if (mixer, size) == ("mhsa", LAYER_SIZES[-1]) else ""
            rows.append(_row(model=mixer, mixer=mixer, family="layer", kind="layer", framework="torch", mode="train",
                             image_size=size, batch_size=2, compile="eager", device="cpu", device_name="Test CPU A",
                             status="ok", peak_mem_bytes=1000.0 * n ** exponent,
                             step_time_median_s=1e-6 * n ** exponent, mem_source="test", flags=flags,
                             interference=0.38 if flags else 0.0, rel_iqr=0.02, remeasured=1 if flags else 0,
                             case_id=f"{mixer}|torch|{size}|2|train|fp32|eager|cpu"))
    return rows


def quick_shaped_rows(seed: int = 0):
    """One row per case of the quick preset (its 80 cases: three frameworks, models at their
    published sizes, every mixer over several sizes) with made-up figures: what its report looks
    like without measuring anything. mhsa runs out of memory at 64 px; every 17th case is flagged."""
    import numpy as np

    from lambda_bench import counting, runner, zoo

    rng = np.random.default_rng(seed)
    for i, case in enumerate(runner.build_sweep(runner.preset("quick"), "preset quick").cases):
        spec = zoo.MODELS.get(case.model)
        size = case.image_size or spec.image_size
        n = size * size
        params = counting.params(spec) if spec else 10_000
        per_image = (params / 1e6 + 1) * n / 5e4 if spec else 1e-5 * n ** (2 if case.model == "mhsa" else 1)
        step = per_image * (3 if case.mode == "train" else 1) * case.batch_size * rng.uniform(0.9, 1.1)
        ok = not (case.model == "mhsa" and size == 64)
        flags = BUSY if i % 17 == 5 else ""
        yield _row(case_id=case.case_id, model=case.model, family=zoo.family(spec) if spec else "layer",
                   kind="model" if spec else "layer", mixer=None if spec else case.model, framework=case.framework,
                   image_size=size, batch_size=case.batch_size, mode=case.mode,
                   compile=case.compile, device=case.device, device_name="Test CPU (quick-shaped)",
                   status="ok" if ok else "oom", error=None if ok else "out of memory",
                   step_time_median_s=step if ok else None, images_per_s=case.batch_size / step if ok else None,
                   train_s_per_1024=1024 * step / case.batch_size if ok and case.mode == "train" else None,
                   peak_mem_bytes=params * 16 + n * 4e4 * (n / 1000 if case.model == "mhsa" else 1) if ok else None,
                   first_call_s=step * 5 if ok else None, mem_source="test", params=params,
                   flops_analytic=counting.flops(spec) if spec else None, flags=flags, rel_iqr=0.05,
                   interference=0.38 if flags else 0.0, remeasured=1 if flags else 0)
