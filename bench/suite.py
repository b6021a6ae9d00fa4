"""Run a whole suite: expand, skip finished runs, execute, summarise."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from bench.config import RunSpec, Suite, expand_runs
from bench.launch import get_executor
from bench.store import RunDir, atomic_write_json, write_summary

TABLE_COLUMNS = ["label", "seed", "status", "knn_top1", "knn20_top1", "linear_top1", "fewshot_1", "fewshot_16",
                 "collapse", "train_flops", "images_per_s", "wall_s"]


def check_data(suite: Suite) -> None:
    """Fail before any run starts when the data set is missing (one clear error, not N failed runs)."""
    from bench.data.datasets import load_dataset

    d = suite.dataset
    load_dataset(d.name, "train", root=d.root, download=d.download, image_size=d.image_size)


def run_state(spec: RunSpec, suite_dir: Path) -> str:
    rd = RunDir(suite_dir / spec.run_id)
    if rd.is_finished():
        return "finished"
    return "resume" if rd.checkpoint.exists() else "new"


def plan_table(specs: list[RunSpec], suite_dir: Path) -> pd.DataFrame:
    return pd.DataFrame([{"run_id": s.run_id, "label": s.label, "seed": s.seed, "epochs": s.budget.epochs,
                          "batch": s.budget.batch_size, "state": run_state(s, suite_dir)} for s in specs])


def results_table(summary: pd.DataFrame) -> str:
    cols = [c for c in TABLE_COLUMNS if c in summary.columns and summary[c].notna().any()]
    df = summary[cols].copy()
    for c in df.columns:
        if c.endswith("top1") or c.startswith("fewshot") or c == "collapse":
            df[c] = df[c].map(lambda v: "" if pd.isna(v) else f"{v:.3f}")
    if "train_flops" in df:
        df["train_flops"] = df["train_flops"].map(lambda v: "" if pd.isna(v) else f"{v:.3g}")
    for c in ("images_per_s", "wall_s"):
        if c in df:
            df[c] = df[c].map(lambda v: "" if pd.isna(v) else f"{v:.0f}")
    return df.to_string(index=False)


def run_suite(suite: Suite, results_dir: Path, *, methods: list[str] | None = None, epochs: int | None = None,
              dry_run: bool = False, progress: bool = True, echo=print) -> dict[str, Any]:
    specs = expand_runs(suite, methods=methods, epochs=epochs)
    suite_dir = Path(results_dir) / suite.name
    plan = plan_table(specs, suite_dir)
    echo(f"suite {suite.name}: {len(specs)} runs -> {suite_dir}")
    echo(plan.to_string(index=False))
    if dry_run:
        return {"specs": specs, "plan": plan}
    check_data(suite)
    suite_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(suite_dir / "suite.json", suite.model_dump(mode="json"))

    def on_done(record: dict[str, Any]) -> None:
        write_summary(suite_dir)
        status = record.get("status")
        knn = record.get("metrics", {}).get("knn_top1")
        detail = f"knn_top1={knn:.3f}" if status == "ok" and isinstance(knn, float) else record.get("reason", "")
        echo(f"[{status}] {record['label']} seed {record['seed']}: {detail}")

    executor = get_executor(suite.executor, progress=progress)
    records = executor.run(specs, suite_dir, on_done)
    summary = write_summary(suite_dir)
    chosen = summary[summary["run_id"].isin([s.run_id for s in specs])] if len(summary) else summary
    echo("\n" + results_table(chosen))
    from bench.report import report_after_suite

    report = report_after_suite(suite_dir)
    if report is not None:
        echo(f"report: {report}")
    return {"specs": specs, "records": records, "summary": summary, "suite_dir": suite_dir}
