"""Command-line entry points of the report: ``python -m bench report RESULTS/SUITE`` and
``python -m bench flops SUITE`` (costs of every method of a suite, without training).

``bench/cli.py`` wires them with ``add_report_parser(sub)`` and ``add_flops_parser(sub)``.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pandas as pd

__all__ = ["cmd_report", "add_report_parser", "cmd_flops", "add_flops_parser", "flops_table", "format_flops_table",
           "resolve_suite_dir"]


def resolve_suite_dir(name: str, results_dir: str | Path | None = None) -> Path:
    """A suite results folder: the path itself, else ``<results_dir>/<name>`` (default results dir:
    ``$SSLBENCH_RESULTS_DIR`` or ``results``)."""
    p = Path(name)
    if p.is_dir():
        return p
    base = Path(results_dir or os.environ.get("SSLBENCH_RESULTS_DIR", "results"))
    if (base / name).is_dir():
        return base / name
    raise FileNotFoundError(f"no suite results folder {name!r} (nor {base / name}); run `python -m bench run` first")


def cmd_report(args: argparse.Namespace) -> int:
    """Build ``report.html`` and the long results table of a suite folder; prints the paths."""
    from bench.report.html import build_report

    try:
        suite_dir = resolve_suite_dir(args.suite_dir, getattr(args, "results_dir", None))
    except FileNotFoundError as e:
        print(f"error: {e}")
        return 2
    path = build_report(suite_dir, out=getattr(args, "out", None))
    print(f"report: {path}")
    print(f"long table: {suite_dir / 'results_long.parquet'} and {suite_dir / 'results_long.csv'}")
    return 0


def add_report_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``report`` on the ``bench`` sub-command parser."""
    p = subparsers.add_parser("report", help="build report.html and results_long.{parquet,csv} of a suite")
    p.add_argument("suite_dir", help="suite results folder (RESULTS/SUITE) or a suite name under --results-dir")
    p.add_argument("--results-dir", default=None,
                   help="where suite folders live (default $SSLBENCH_RESULTS_DIR or results)")
    p.add_argument("--out", default=None, help="HTML path (default <suite_dir>/report.html)")
    p.set_defaults(func=cmd_report)
    return p


def _unique_by_label(specs: Iterable[Any]) -> list[Any]:
    """One spec per label (costs do not depend on the seed): the first seed's."""
    seen, out = set(), []
    for s in specs:
        if s.label not in seen:
            seen.add(s.label)
            out.append(s)
    return out


def flops_table(specs: Iterable[Any], *, load_data: Callable | None = None, build: Callable | None = None,
                measure: Callable | None = None) -> pd.DataFrame:
    """Costs of each label of a suite without training: build the method on the suite's data
    (``bench.train.build_method``) and measure it (``bench.eval.run.measure_costs``).

    Data are loaded once per distinct data-set config. The callables default to the harness's
    own and are parameters only so tests can substitute cheap ones.
    """
    if load_data is None or build is None or measure is None:
        from bench.eval.run import measure_costs
        from bench.train import build_method, load_run_data

        load_data, build, measure = load_data or load_run_data, build or build_method, measure or measure_costs
    cache: dict[str, Any] = {}
    rows = []
    for spec in _unique_by_label(specs):
        key = json.dumps(spec.dataset.model_dump(mode="json"), sort_keys=True)
        if key not in cache:
            cache[key] = load_data(spec)
        costs = measure(build(spec, cache[key]), cache[key])
        unsupported = costs.get("inference_unsupported_ops") or {}
        rows.append({"label": spec.label, "method": spec.method, "params_encoder": costs.get("params_encoder"),
                     "params_trainable": costs.get("params_trainable"), "inference_gmacs": costs.get("inference_gmacs"),
                     "train_macs_per_image": costs.get("train_macs_per_image"), "train_flops": costs.get("train_flops"),
                     "epochs": spec.budget.epochs, "batch_size": spec.budget.batch_size,
                     "unsupported_ops": (", ".join(sorted(unsupported)) if isinstance(unsupported, dict)
                                         else str(unsupported)),
                     "flops_convention": costs.get("flops_convention")})
    return pd.DataFrame(rows)


def format_flops_table(df: pd.DataFrame) -> str:
    """The flops table as text: params in millions, GMACs, G-MACs per training image, total FLOPs."""
    from bench.report.html import DEFAULT_FLOPS_CONVENTION, fmt_count, fmt_num

    if df.empty:
        return "no runs"
    shown = pd.DataFrame({
        "label": df["label"], "params enc": df["params_encoder"].map(fmt_count),
        "params train": df["params_trainable"].map(fmt_count), "infer GMACs": df["inference_gmacs"].map(fmt_num),
        "train GMACs/img": df["train_macs_per_image"].map(lambda v: fmt_num(None if v is None else v / 1e9)),
        "train FLOPs (budget)": df["train_flops"].map(fmt_num), "epochs": df["epochs"], "batch": df["batch_size"],
    })
    convention = next((c for c in df["flops_convention"] if c), DEFAULT_FLOPS_CONVENTION)
    lines = [shown.to_string(index=False), "", f"convention: {convention}"]
    unsupported = sorted({op for ops in df["unsupported_ops"] if ops for op in ops.split(", ")})
    if unsupported:
        lines.append(f"ops not counted by fvcore (inference): {', '.join(unsupported)}")
    return "\n".join(lines)


def cmd_flops(args: argparse.Namespace) -> int:
    """Print, without training, a cost table per method of a suite (``python -m bench flops SUITE``)."""
    from bench.cli import resolve_suite_path
    from bench.config import expand_runs, load_suite

    suite = load_suite(resolve_suite_path(args.suite))
    specs = expand_runs(suite, methods=getattr(args, "methods", None), epochs=getattr(args, "epochs", None))
    print(f"suite {suite.name}: {suite.dataset.name}, {suite.backbone.name}, "
          f"{specs[0].budget.epochs if specs else suite.budget.epochs} epochs, batch {suite.budget.batch_size}")
    print(format_flops_table(flops_table(specs)))
    return 0


def add_flops_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``flops`` on the ``bench`` sub-command parser."""
    p = subparsers.add_parser("flops", help="params, inference GMACs and training FLOPs of a suite, without training")
    p.add_argument("suite", help="suite YAML path or name in suites/ (e.g. quickstart)")
    p.add_argument("--methods", type=lambda v: [x.strip() for x in v.split(",") if x.strip()], default=None,
                   help="comma-separated subset, e.g. simclr,byol")
    p.add_argument("--epochs", type=int, default=None, help="override the budget's epochs")
    p.set_defaults(func=cmd_flops)
    return p
