"""The default executor: one case at a time, each in a fresh worker process on this machine."""

from __future__ import annotations

from typing import Any, Callable, Iterable, Iterator

from . import run_here


class LocalExecutor:
    name = "local"
    runs_here = True  # the runner's preflight of devices and frameworks applies
    concurrent = False  # one case at a time: the runner announces each case before it runs

    def __enter__(self) -> "LocalExecutor":
        return self

    def __exit__(self, *exc: Any) -> None:
        pass  # run_case kills its worker's process group on the way out, Ctrl-C included

    def describe(self) -> str:
        return "local (one case at a time on this machine)"

    def run(self, cases: Iterable, sweep, worker: tuple[str, ...] | None = None,
            before: Callable[[Any], None] | None = None) -> Iterator[tuple[Any, dict[str, Any]]]:
        for case in cases:
            if before:
                before(case)
            yield case, run_here(case, sweep, worker)

    def running(self) -> list[str]:
        return []
