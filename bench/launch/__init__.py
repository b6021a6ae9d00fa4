"""Executors: where runs execute. The harness hands each one a list of run specs."""

from bench.launch.base import Executor, LocalExecutor, get_executor  # noqa: F401
