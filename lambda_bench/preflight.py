"""Which of a sweep's cases this machine cannot run, found in the parent before any worker starts.

A worker that finds no GPU costs seconds (a framework import) and says only what a look at the
machine says at once. These checks import no framework: a framework that is not installed, a
device that is not there (CUDA: NVML, /proc/driver/nvidia, /dev/nvidia*, nvidia-smi; TPU: its
device files or environment), a CPU-only torch build asked for CUDA. They only rule a case out
when sure; whatever they let through, the worker still decides.
"""

from __future__ import annotations

import glob
import importlib.util
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Iterable


def framework_missing(framework: str) -> str | None:
    """Why ``framework`` cannot run here (not installed), or None."""
    if importlib.util.find_spec(framework) is None:
        return f"{framework} is not installed (pip install 'lambda-bench[{framework}]')"
    return None


def device_missing(device: str) -> str | None:
    """Why no framework can use ``device`` here, or None where it may be there."""
    if device == "cuda":
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        if visible is not None and visible.strip() in ("", "-1"):
            return f"CUDA_VISIBLE_DEVICES={visible!r} hides every GPU"
        if not _gpu_present():
            return "no GPU on this machine (NVML, nvidia-smi, /proc/driver/nvidia and /dev/nvidia* show none)"
    if device == "tpu" and not _tpu_present():
        return "no TPU on this machine (no /dev/accel* or /dev/vfio device, no TPU_* environment)"
    return None


def framework_lacks(framework: str, device: str) -> str | None:
    """Why ``framework``'s installed build cannot use ``device``, where that is certain, or None."""
    if framework == "torch" and device == "cuda":
        spec = importlib.util.find_spec("torch")
        if spec is None or not spec.submodule_search_locations:
            return None
        try:
            text = (Path(list(spec.submodule_search_locations)[0]) / "version.py").read_text()
        except OSError:
            return None
        builds = {key: re.search(rf"^{key}\s*(?::[^=\n]*)?=\s*(.+)$", text, re.M) for key in ("cuda", "hip")}
        if all(m is not None and m.group(1).strip() == "None" for m in builds.values()):
            return "this torch is a CPU-only build (neither CUDA nor ROCm)"
    return None


def _gpu_present() -> bool:
    from .results import gpu_info

    if gpu_info():
        return True
    try:
        if any(Path("/proc/driver/nvidia/gpus").iterdir()):
            return True
    except OSError:
        pass
    if glob.glob("/dev/nvidia[0-9]*") or os.path.exists("/dev/kfd"):  # /dev/kfd: ROCm, which torch drives as cuda
        return True
    smi = shutil.which("nvidia-smi")
    if smi:
        try:
            out = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=20)
            return out.returncode == 0 and "GPU" in out.stdout
        except (OSError, subprocess.SubprocessError):
            return False
    return False


def _tpu_present() -> bool:
    if glob.glob("/dev/accel*") or glob.glob("/dev/vfio/[0-9]*"):
        return True
    return any(os.environ.get(k) for k in ("TPU_NAME", "TPU_ACCELERATOR_TYPE", "COLAB_TPU_ADDR", "TPU_WORKER_ID"))


def implementation_blocked(case) -> tuple[str, str] | None:
    """(status, reason) where the case's implementation is a peer that is not installed
    (``unavailable``) or cannot compute the case's spec (``unsupported``); else None."""
    from . import peers

    implementation = getattr(case, "implementation", peers.OURS)
    if implementation == peers.OURS:
        return None
    missing = peers.missing(implementation)
    if missing:
        return "unavailable", missing
    reason = peers.unsupported(implementation, case.zoo_case().spec)
    return ("unsupported", reason) if reason else None


def blocked(cases: Iterable) -> dict[str, tuple[str, str]]:
    """case_id -> (status, reason) for every case that certainly cannot run here: ``unavailable``
    (framework or peer not installed) or ``unsupported`` (device, build, or a peer that cannot compute
    the spec)."""
    verdicts: dict[tuple[str, str], tuple[str, str] | None] = {}
    out: dict[str, tuple[str, str]] = {}
    for case in cases:
        key = (case.framework, case.device)
        if key not in verdicts:
            missing = framework_missing(case.framework)
            lacking = None if missing else device_missing(case.device) or framework_lacks(*key)
            verdicts[key] = (("unavailable", missing) if missing else
                             ("unsupported", f"device={case.device!r}: {lacking}") if lacking else None)
        verdict = verdicts[key] or implementation_blocked(case)
        if verdict is not None:
            out[case.case_id] = verdict
    return out


def summary(reasons: Iterable[tuple[str, str]]) -> str:
    """The distinct reasons, each with how many cases it rules out, most first."""
    counts: dict[str, int] = {}
    for _, reason in reasons:
        counts[reason] = counts.get(reason, 0) + 1
    return "; ".join(f"{reason} ({n} case{'s' * (n != 1)})" for reason, n in
                     sorted(counts.items(), key=lambda kv: -kv[1]))
