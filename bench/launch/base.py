"""The executor interface and the local sequential executor.

An executor receives run specs and a results folder and calls ``on_done(record)`` as each
run finishes, so the suite summary is rewritten as results arrive. Ray (one GPU per run) and
SLURM (submitit) executors implement the same interface.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from bench.config import ExecutorConfig, RunSpec
from bench.runner import execute_run

OnDone = Callable[[dict[str, Any]], None]


class Executor(Protocol):
    def run(self, specs: list[RunSpec], suite_dir: Path, on_done: OnDone) -> list[dict[str, Any]]:
        ...


class LocalExecutor:
    """Runs every spec in this process, one after the other."""

    def __init__(self, progress: bool = True) -> None:
        self.progress = progress

    def run(self, specs: list[RunSpec], suite_dir: Path, on_done: OnDone) -> list[dict[str, Any]]:
        records = []
        for spec in specs:
            record = execute_run(spec, suite_dir / spec.run_id, progress=self.progress)
            on_done(record)
            records.append(record)
        return records


def get_executor(cfg: ExecutorConfig, progress: bool = True) -> Executor:
    if cfg.kind == "local":
        return LocalExecutor(progress=progress, **cfg.options)
    raise NotImplementedError(
        f"executor {cfg.kind!r} is not available yet in this version; use executor.kind: local"
    )
