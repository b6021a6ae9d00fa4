"""``report.html``: one self-contained page per suite (inline CSS, figures as data URIs, no
external URL), built with jinja2 (autoescaped) from the long results table.

Sections: suite and environment, one leaderboard per protocol (each stating its settings and the
FLOPs convention), figures, costs, failed / diverged / unfinished runs with their reason, and a
section per run (anchor ``#run-<run_id>``) with its resolved config and environment.
"""

from __future__ import annotations

import json
import logging
import math
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import jinja2
import pandas as pd

from bench.report import figures
from bench.report.tables import (COST_METRICS, RunInfo, ablation_groups, costs_table, fewshot_shots, leaderboard,
                                 load_runs, long_table, problem_runs, write_long_table)

__all__ = ["build_report", "report_after_suite", "leaderboard_specs", "LeaderboardSpec"]

log = logging.getLogger(__name__)

DEFAULT_FLOPS_CONVENTION = "MACs = multiply-adds (fvcore); FLOPs = 2 x MACs; backward = 2 x forward of trainable parts"
_PROTOCOL_ORDER = ("knn", "knn20", "linear", "linear_sgd", "fewshot", "semi", "episodes", "zeroshot")
_NOT_LEADERBOARDS = {"costs", "features", "status", "other"}


@dataclass
class LeaderboardSpec:
    """One leaderboard: which (protocol, metric) it ranks, its title and its settings sentence."""

    protocol: str
    metric: str
    title: str
    convention: str

    @property
    def anchor(self) -> str:
        return "lb-" + re.sub(r"[^a-z0-9]+", "-", f"{self.protocol}-{self.metric}".lower())


def _first(runs: list[RunInfo], *path: str) -> Any:
    """The first value found at ``record[path...]`` among ok runs (protocol settings are shared)."""
    for run in runs:
        if run.record.get("status") != "ok":
            continue
        node: Any = run.record
        for key in path:
            node = node.get(key) if isinstance(node, dict) else None
        if node is not None:
            return node
    return None


def _knn_convention(runs: list[RunInfo], prefix: str, k: int, t: float) -> str:
    k = _first(runs, "protocols", "knn", f"{prefix}_k") or _first(runs, "metrics", f"{prefix}_k") or k
    t = (_first(runs, "protocols", "knn", f"{prefix}_temperature") or _first(runs, "metrics", f"{prefix}_temperature")
         or t)
    n = _first(runs, "protocols", "features", "n_train")
    size = f" {n} labelled train images as the memory bank;" if n else ""
    return (f"top-1 %, weighted kNN k={k}, T={t} (votes exp(sim/T), cosine similarity) on frozen, "
            f"L2-normalised encoder features (no augmentation);{size} scored on test")


def _linear_convention(runs: list[RunInfo]) -> str:
    lin = _first(runs, "protocols", "linear") or {}
    if lin.get("protocol") == "linear_sgd":
        return ("top-1 %, SGD linear head on the frozen encoder (BN statistics frozen), crop+flip, cosine, "
                "lr chosen on a validation split of train, last epoch reported")
    grid = lin.get("grid")
    grid_txt = f" from {{{', '.join(f'{float(c):g}' for c in grid)}}}" if isinstance(grid, dict) and grid else ""
    val = lin.get("val_fraction")
    val_txt = f"a {100 * val:.0f}% validation split" if isinstance(val, (int, float)) else "a validation split"
    std = ", standardised" if lin.get("standardize") else ""
    return (f"top-1 %, multinomial logistic regression (L-BFGS) on frozen encoder features{std}; C{grid_txt} "
            f"chosen on {val_txt} carved from train, refit on all train, scored once on test")


def _fewshot_convention(runs: list[RunInfo], k: int) -> str:
    fs = _first(runs, "protocols", "fewshot") or {}
    draws = fs.get("fewshot_draws")
    if not isinstance(draws, int):  # evaluate() keeps numeric settings in metrics
        draws = _first(runs, "metrics", "fewshot_draws")
    c = fs.get("fewshot_C", _first(runs, "metrics", "fewshot_C"))
    c_txt = f" C={c:g}" if isinstance(c, (int, float)) else ""
    return (f"top-1 %, {k} labelled image(s) per class drawn from train, mean over {draws or 'several'} draws, "
            f"logistic regression{c_txt} on L2-normalised frozen features, scored on test; "
            f"CI = 95% Student-t half-width over draws")


def leaderboard_specs(long_df: pd.DataFrame, runs: list[RunInfo]) -> list[LeaderboardSpec]:
    """The leaderboards a suite's records support, in protocol order (kNN, kNN20, linear,
    few-shot per k, then any other protocol's top-1 metrics)."""
    if long_df.empty:
        return []
    present = long_df.loc[long_df["status"] == "ok", ["protocol", "metric"]].drop_duplicates()
    pairs = {(p, m) for p, m in present.itertuples(index=False)}
    specs = []
    if ("knn", "knn_top1") in pairs:
        specs.append(LeaderboardSpec("knn", "knn_top1", "kNN (k=200)", _knn_convention(runs, "knn", 200, 0.1)))
    if ("knn20", "knn20_top1") in pairs:
        specs.append(LeaderboardSpec("knn20", "knn20_top1", "kNN (k=20)", _knn_convention(runs, "knn20", 20, 0.07)))
    for proto in ("linear", "linear_sgd"):
        if (proto, f"{proto}_top1") in pairs:
            title = "Linear probe" + (" (SGD)" if proto == "linear_sgd" else "")
            specs.append(LeaderboardSpec(proto, f"{proto}_top1", title, _linear_convention(runs)))
    for k in fewshot_shots(long_df[long_df["status"] == "ok"]):
        specs.append(LeaderboardSpec("fewshot", f"fewshot_{k}", f"Few-shot, {k} per class",
                                     _fewshot_convention(runs, k)))
    done = {(s.protocol, s.metric) for s in specs}
    others = sorted(((p, m) for p, m in pairs if p not in _NOT_LEADERBOARDS and (p, m) not in done
                     and not m.endswith("_ci95") and not re.search(r"top[2-9]$", m)),
                    key=lambda pm: (_PROTOCOL_ORDER.index(pm[0]) if pm[0] in _PROTOCOL_ORDER else 99, pm))
    for p, m in others:
        semi = re.match(r"^label([\d.]+)pct_top1$", m)
        if semi:
            specs.append(LeaderboardSpec(p, m, f"Semi-supervised, {semi.group(1)} % labels",
                                         f"top-1 %, logistic regression on a fixed seeded, stratified {semi.group(1)} % "
                                         "of the training labels (C chosen on a split of that subset), scored on test"))
            continue
        specs.append(LeaderboardSpec(p, m, f"{p}: {m}",
                                     f"{m} (%), protocol '{p}'; its settings are in each run's record"))
    return specs


# -- formatting (jinja filters) ------------------------------------------------------------------
def _missing(v: Any) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v)) or v is pd.NA


def fmt_pct(v: Any, digits: int = 2) -> str:
    """A fraction as a percentage (0.9012 -> "90.12"); blank when missing."""
    return "" if _missing(v) else f"{100 * float(v):.{digits}f}"


def fmt_num(v: Any, digits: int = 3) -> str:
    """Large counts in engineering style (1.23e+12 -> "1.23e12"), small ones plainly; blank when missing."""
    if _missing(v):
        return ""
    v = float(v)
    if v == 0:
        return "0"
    if abs(v) >= 1e5:
        mant, exp = f"{v:.{digits - 1}e}".split("e")
        return f"{mant}e{int(exp)}"
    return f"{v:,.{digits}g}" if abs(v) < 1000 else f"{v:,.0f}"


def fmt_count(v: Any) -> str:
    """Parameter counts in millions ("11.17 M")."""
    return "" if _missing(v) else f"{float(v) / 1e6:.2f} M"


def fmt_giga(v: Any) -> str:
    """A count in units of 10^9 ("3.70e7" MACs -> "0.037")."""
    return "" if _missing(v) else fmt_num(float(v) / 1e9)


def fmt_json(v: Any) -> str:
    return json.dumps(v, indent=2, sort_keys=True, default=str)


def _env() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.PackageLoader("bench.report", "templates"), autoescape=True,
                             undefined=jinja2.ChainableUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters.update(pct=fmt_pct, num=fmt_num, giga=fmt_giga, count=fmt_count, tojson_pretty=fmt_json,
                       missing=_missing)
    return env


# -- context ---------------------------------------------------------------------------------------
def _leaderboard_block(spec: LeaderboardSpec, long_df: pd.DataFrame, palette: dict[str, Any]) -> dict[str, Any]:
    board = leaderboard(long_df, spec.protocol, spec.metric)
    flops = long_df[(long_df["protocol"] == "costs") & (long_df["metric"] == "train_flops")]
    board["train_flops"] = board["label"].map(flops.groupby("label")["value"].mean())
    figure = None
    if spec.protocol in ("knn", "linear", "linear_sgd"):
        figure = figures.accuracy_vs_flops(long_df, spec.protocol, spec.metric, spec.title, palette)
    return {"spec": spec, "rows": board.to_dict("records"), "figure": figure,
            "has_ci": bool(board["ci95"].notna().any()), "has_published": bool(board["published"].notna().any())}


def _history(run: RunInfo) -> list[dict[str, Any]]:
    """A run's per-epoch rows: from its record, else from ``metrics.jsonl`` (unfinished runs)."""
    if run.record.get("history"):
        return run.record["history"]
    from bench.store import RunDir

    try:
        return RunDir(run.run_dir).read_metrics()
    except (OSError, ValueError):
        return []


def _run_block(run: RunInfo, long_df: pd.DataFrame) -> dict[str, Any]:
    rec = run.record
    rows = long_df[long_df["run_id"] == run.run_id]
    metrics = rows[~rows["protocol"].isin(["status"])][["protocol", "metric", "value"]].to_dict("records")
    curve = figures.run_curves(_history(run), title=f"{rec.get('label')} seed {rec.get('seed')}")
    keep = ("protocols", "optim", "method_record", "costs")
    return {"run_id": run.run_id, "label": rec.get("label"), "seed": rec.get("seed"), "status": rec.get("status"),
            "reason": rec.get("reason"), "traceback": rec.get("traceback"), "metrics": metrics, "curve": curve,
            "evaluated_layer": (rec.get("method_record") or {}).get("evaluated_layer"),
            "details": {k: rec[k] for k in keep if rec.get(k)}, "config": run.config, "environment": run.environment,
            "folder": run.run_dir.name}


def _device_text(env: dict[str, Any]) -> str:
    dev = env.get("device") or {}
    return " ".join(str(x) for x in (dev.get("type"), dev.get("name")) if x)


def _environment_summary(runs: list[RunInfo]) -> dict[str, list[str]]:
    """Distinct torch versions, devices, git commits and Pythons over the suite's runs."""
    def distinct(get) -> list[str]:
        return sorted({str(v) for v in (get(r.environment) for r in runs) if v})

    return {"torch": distinct(lambda e: (e.get("versions") or {}).get("torch")), "device": distinct(_device_text),
            "git_commit": distinct(lambda e: e.get("git_commit")), "python": distinct(lambda e: e.get("python"))}


def _ablation_blocks(runs: list[RunInfo], long_df: pd.DataFrame, specs: list[LeaderboardSpec]) -> list[dict[str, Any]]:
    if not specs:
        return []
    main = next((s for s in specs if s.protocol == "linear"), specs[0])
    blocks = []
    status = {}
    for r in runs:
        status.setdefault(r.record.get("label"), set()).add(str(r.record.get("status")))
    for group in ablation_groups(r.record for r in runs):
        img = figures.ablation_bars(group, long_df, main.protocol, main.metric, main.title)
        if img:
            missing = [f"{label} ({', '.join(sorted(status.get(label, {'?'})))})"
                       for _, label, _ in group.members if "ok" not in status.get(label, set())]
            blocks.append({"title": group.title, "figure": img, "metric": main.title, "missing": missing})
    return blocks


def report_context(suite_dir: Path) -> dict[str, Any]:
    """Everything the template shows, computed from the suite folder."""
    runs = load_runs(suite_dir)
    long_df = long_table(suite_dir)
    write_long_table(long_df, suite_dir)
    specs = leaderboard_specs(long_df, runs)
    suite = {}
    if (suite_dir / "suite.json").exists():
        suite = json.loads((suite_dir / "suite.json").read_text())
    ok_records = [r.record for r in runs if r.record.get("status") == "ok"]
    convention = _first(runs, "costs", "flops_convention") or DEFAULT_FLOPS_CONVENTION
    palette = figures.label_palette(r.record.get("label") for r in runs)
    return {
        "suite_name": suite.get("name") or suite_dir.name, "suite": suite,
        "suite_json": fmt_json(suite) if suite else "",
        "generated": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "n_runs": len(runs),
        "status_counts": long_df.drop_duplicates("run_id")["status"].value_counts().to_dict() if len(long_df) else {},
        "flops_convention": convention, "environment": _environment_summary(runs),
        "leaderboards": [_leaderboard_block(s, long_df, palette) for s in specs],
        "costs": costs_table(long_df).to_dict("records"), "cost_metrics": COST_METRICS,
        "training_curves": figures.training_curves(ok_records, title="all runs", palette=palette),
        "fewshot_figure": figures.fewshot_curve(ok_records, palette),
        "ablations": _ablation_blocks(runs, long_df, specs),
        "problems": problem_runs(runs).to_dict("records"),
        "runs": [_run_block(r, long_df) for r in runs],
    }


def build_report(suite_dir: str | Path, out: str | Path | None = None) -> Path:
    """Write ``report.html`` (default: inside the suite folder) plus ``results_long.parquet`` /
    ``.csv``; returns the HTML path. The page needs no network: CSS inline, PNGs as data URIs."""
    from bench.store import atomic_write_bytes

    suite_dir = Path(suite_dir)
    if not suite_dir.is_dir():
        raise FileNotFoundError(f"suite folder {suite_dir} does not exist (expected RESULTS/SUITE)")
    html = _env().get_template("report.html.j2").render(**report_context(suite_dir))
    path = Path(out) if out else suite_dir / "report.html"
    atomic_write_bytes(path, html.encode("utf-8"))
    return path


def report_after_suite(suite_dir: str | Path) -> Path | None:
    """Build the report at the end of ``bench run``; a report error is logged, never raised, so
    it cannot cost the suite's results (they are on disk and ``bench report`` can retry)."""
    try:
        return build_report(suite_dir)
    except Exception as e:  # noqa: BLE001 - reporting must not fail a finished suite
        log.warning("report for %s failed: %s: %s (retry with `python -m bench report %s`)",
                    suite_dir, type(e).__name__, e, suite_dir)
        return None
