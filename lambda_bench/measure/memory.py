"""Peak-memory trackers: the process's resident memory on CPU, NVML device memory on NVIDIA GPUs.

CPU: Linux keeps the process's peak resident set (VmHWM) and lets the process reset it (writing 5
to /proc/self/clear_refs, Linux >= 4.0). The worker reads its resident set just before the first
step (model, inputs and framework runtime already there: the baseline), resets the peak after the
warm-up, and reports the peak of the timed steps minus the baseline: activations, gradients,
optimizer state and workspace, without the one-off compilation. Where the reset is not allowed, a
background sampler (1 ms) stands in and says so in the source.
"""

from __future__ import annotations

import threading
from pathlib import Path

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def _status_kib(key: str) -> int | None:
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def rss_bytes() -> int | None:
    kib = _status_kib("VmRSS")
    return None if kib is None else kib * 1024


class ResidentPeak:
    """Peak resident memory above a baseline, for the steps between ``reset()`` and ``peak()``."""

    def __init__(self) -> None:
        self.baseline = rss_bytes()
        self._sampler: _Sampler | None = None
        self.source = "cpu: process peak RSS (VmHWM, reset after warm-up) minus RSS before the first step"

    def reset(self) -> None:
        try:
            _CLEAR_REFS.write_text("5")
        except OSError:
            if self._sampler is None:
                self._sampler = _Sampler(rss_bytes, interval_s=0.001)
                self.source = "cpu: process RSS sampled every 1 ms (VmHWM reset not allowed) minus RSS before the first step"
            self._sampler.restart()

    def peak(self) -> int | None:
        if self.baseline is None:
            return None
        if self._sampler is not None:
            top = self._sampler.stop()
        else:
            kib = _status_kib("VmHWM")
            top = None if kib is None else kib * 1024
        return None if top is None else max(0, top - self.baseline)


class _Sampler:
    """Polls ``read()`` on a daemon thread and keeps the maximum."""

    def __init__(self, read, interval_s: float) -> None:
        self.read, self.interval_s = read, interval_s
        self.top: int | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def restart(self) -> None:
        self.stop()
        self.top, self._stop = None, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            value = self.read()
            if value is not None and (self.top is None or value > self.top):
                self.top = value
            self._stop.wait(self.interval_s)

    def stop(self) -> int | None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None
        return self.top


class NvmlPeak:
    """Device memory in use (NVML, all processes on the GPU) sampled every 5 ms; unavailable
    without nvidia-ml-py or a GPU (``available`` False)."""

    def __init__(self, index: int = 0) -> None:
        self.available = False
        self._sampler: _Sampler | None = None
        try:
            import pynvml

            pynvml.nvmlInit()
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            self._read = lambda: int(pynvml.nvmlDeviceGetMemoryInfo(handle).used)
            self._read()
            self.available = True
        except Exception:  # no library, no driver, no GPU: NVML figures stay empty
            return
        self._sampler = _Sampler(self._read, interval_s=0.005)

    def reset(self) -> None:
        if self._sampler is not None:
            self._sampler.restart()

    def peak(self) -> int | None:
        return None if self._sampler is None else self._sampler.stop()

