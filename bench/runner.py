"""Run a list of run specs: skip finished runs, resume unfinished ones, record failures.

A run that diverges or fails gets a record with its status and reason; the suite goes on
and no finished result is lost. ``summary.csv`` is rewritten as each run finishes.
"""

from __future__ import annotations

import logging
import time
import traceback
from pathlib import Path
from typing import Any

import torch

from bench.config import RunSpec
from bench.eval.run import evaluate, measure_costs, monitor_knn, peak_memory_mb
from bench.store import RunDir, atomic_write_json, read_json
from bench.train import Diverged, Trainer, load_run_data, resolve_device, run_context_record, write_run_header

log = logging.getLogger(__name__)


def base_record(spec: RunSpec) -> dict[str, Any]:
    return {"run_id": spec.run_id, "label": spec.label, "method": spec.method, "seed": spec.seed,
            "suite": spec.suite, "options": spec.options, "options_set": spec.options_set,
            "dataset": spec.dataset.name, "backbone": spec.backbone.name, "epochs": spec.budget.epochs,
            "batch_size": spec.budget.batch_size}


def make_monitor(spec: RunSpec, data):
    if not spec.eval.monitor_every or data.val is None:
        return None

    def monitor(trainer: Trainer) -> dict[str, float]:
        if trainer.epoch % spec.eval.monitor_every and trainer.epoch != trainer.ctx.epochs:
            return {}
        return monitor_knn(trainer.method.encoder, data.train, data.val, data.mean, data.std,
                           trainer.device, spec.eval.batch_size, data.train.num_classes)

    return monitor


def execute_run(spec: RunSpec, run_root: Path, *, progress: bool = True,
                stop_after_epochs: int | None = None) -> dict[str, Any]:
    """Train (or resume) and evaluate one run; returns its final record (also on disk)."""
    run_dir = RunDir(run_root)
    if run_dir.is_finished():
        return read_json(run_dir.record)
    started = time.perf_counter()
    record = base_record(spec)
    device = resolve_device(spec)
    write_run_header(spec, run_dir, device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    trainer = None
    try:
        data = load_run_data(spec)
        trainer = Trainer(spec, run_dir, data, progress=progress)
        record["optim"] = run_context_record(trainer)
        if trainer.method.requires_training:
            resumed = trainer.try_resume()
            record["resumed"] = resumed
            trainer.fit(make_monitor(spec, data), stop_after_epochs=stop_after_epochs)
            if trainer.epoch < trainer.ctx.epochs:  # stopped on purpose (tests): leave unfinished
                return {**record, "status": "unfinished", "epochs_done": trainer.epoch}
        record["epochs_done"] = trainer.epoch
        record["method_record"] = trainer.method.extra_record()
        eval_start = time.perf_counter()
        record.update(evaluate(trainer.method.encoder, data, spec.eval, device, spec.seed,
                               cache=run_dir.features))
        record["eval_s"] = time.perf_counter() - eval_start
        record["costs"] = measure_costs(trainer.method, data)
        record["costs"]["images_per_s"] = _mean_rate(run_dir)
        record["costs"]["peak_mem_mb"] = peak_memory_mb(device)
        record["train_s"] = trainer.train_seconds
        record["status"] = "ok"
    except Diverged as e:
        record.update(status="diverged", reason=str(e), epochs_done=trainer.epoch if trainer else 0)
    except Exception as e:  # noqa: BLE001 - any failure is recorded; the suite goes on
        record.update(status="failed", reason=f"{type(e).__name__}: {e}", traceback=traceback.format_exc())
        log.error("run %s failed: %s", spec.run_id, e)
    # wall time of this invocation plus training time spent before a resume
    record["wall_s"] = time.perf_counter() - started + (trainer.resumed_seconds if trainer else 0.0)
    record["history"] = run_dir.read_metrics()
    atomic_write_json(run_dir.record, record)
    return record


def _mean_rate(run_dir: RunDir) -> float | None:
    rows = run_dir.read_metrics()
    rates = [r["images_per_s"] for r in rows if "images_per_s" in r]
    if len(rates) > 1:
        rates = rates[1:]  # the first epoch includes warm-up effects (allocation, compile)
    return sum(rates) / len(rates) if rates else None
