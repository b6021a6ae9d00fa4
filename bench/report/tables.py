"""Suite records -> pandas tables: the long results table, leaderboards, costs, failures, ablations.

The long table has one row per run x protocol x metric with the run's config, environment and
git columns, so any comparison can be recomputed from it alone (``results_long.parquet`` /
``.csv``). Leaderboards aggregate it over seeds per run label (mean, sample std, number of
seeds) and add the published number of PROTOCOLS.md when data set and backbone match.
Every reader here is defensive: a missing key gives a blank cell, never an exception.
"""

from __future__ import annotations

import json
import math
import re
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from bench.published import best_match, run_cifar_stem

__all__ = ["RunInfo", "load_runs", "classify_metric", "long_table", "write_long_table", "leaderboard",
           "costs_table", "problem_runs", "AblationGroup", "ablation_groups", "ROLE_OF_METHOD",
           "COST_METRICS", "fewshot_shots"]

#: Reference rows of every leaderboard (methods/reference.py): the floor and the ceiling.
ROLE_OF_METHOD = {"random": "floor", "supervised": "ceiling"}

#: Cost columns of the costs table, in display order.
COST_METRICS = ("params_encoder", "params_trainable", "inference_gmacs", "train_macs_per_image", "train_flops",
                "images_per_s", "peak_mem_mb", "train_s", "eval_s", "wall_s")

# (pattern, protocol) for record metrics; first match wins.
_METRIC_PROTOCOLS: tuple[tuple[str, str], ...] = (
    (r"^knn_top\d+$", "knn"),
    (r"^knn20_top\d+$", "knn20"),
    (r"^linear_sgd_top\d+$", "linear_sgd"),
    (r"^linear_top\d+$", "linear"),
    (r"^fewshot_\d+(_ci95)?$", "fewshot"),
    (r"^label[\d.]+pct_top\d+$", "semi"),
    (r"^episodes_\d+way_\d+shot(_ci95)?$", "episodes"),
    (r"^zero_?shot.*top\d+$", "zeroshot"),
    (r"^(collapse|effective_rank|feature_dim)$", "features"),
)
# protocol settings that evaluate() may copy into ``metrics`` because they are numbers
_SETTING = re.compile(r"(_k|_k_effective|_temperature|_n_train|_n_test|_n|_C|_best_C|_draws|_seed|_val_top1"
                      r"|_ways|_queries|_episodes)$|^episodes$")


@dataclass
class RunInfo:
    """One run folder: its final record (or None while unfinished), resolved config, environment."""

    run_dir: Path
    record: dict[str, Any]
    config: dict[str, Any] = field(default_factory=dict)
    environment: dict[str, Any] = field(default_factory=dict)

    @property
    def run_id(self) -> str:
        return str(self.record.get("run_id") or self.config.get("run_id") or self.run_dir.name)


def _read_json(path: Path) -> dict[str, Any]:
    """A JSON object from ``path``; {} when missing or unreadable (defensive reader)."""
    try:
        obj = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}
    return obj if isinstance(obj, dict) else {}


def _unfinished_record(config: dict[str, Any]) -> dict[str, Any]:
    """A stand-in record for a run folder without ``record.json`` (running, killed or never resumed)."""
    return {"run_id": config.get("run_id"), "label": config.get("label") or config.get("method"),
            "method": config.get("method"), "seed": config.get("seed"), "status": "unfinished",
            "reason": "no record.json: still running, killed, or waiting to be resumed"}


def load_runs(suite_dir: str | Path) -> list[RunInfo]:
    """Every run folder of a suite (finished or not), sorted by folder name."""
    runs = []
    for sub in sorted(p for p in Path(suite_dir).iterdir() if p.is_dir()):
        config = _read_json(sub / "config.json")
        record = _read_json(sub / "record.json")
        if not record and not config:
            continue
        runs.append(RunInfo(sub, record or _unfinished_record(config), config, _read_json(sub / "environment.json")))
    return runs


def classify_metric(key: str) -> str | None:
    """Protocol of a record metric key (``knn_top1`` -> ``knn``); None for protocol settings that
    ``evaluate`` stores beside the metrics (``knn_k``, ``fewshot_C``); ``other`` when unknown."""
    for pattern, protocol in _METRIC_PROTOCOLS:
        if re.match(pattern, key):
            return protocol
    return None if _SETTING.search(key) else "other"


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _scalar(v: Any) -> Any:
    """Options values as table cells: scalars as they are, lists/dicts as compact JSON."""
    return v if v is None or isinstance(v, (str, int, float, bool)) else json.dumps(v, sort_keys=True)


def run_columns(run: RunInfo) -> dict[str, Any]:
    """Config and environment columns of one run (identical on all of its long-table rows)."""
    rec, cfg, env = run.record, run.config, run.environment
    ds = cfg.get("dataset") if isinstance(cfg.get("dataset"), dict) else {}
    bb = cfg.get("backbone") if isinstance(cfg.get("backbone"), dict) else {}
    budget = cfg.get("budget") if isinstance(cfg.get("budget"), dict) else {}
    dataset = rec.get("dataset") or ds.get("name")
    cols: dict[str, Any] = {
        "suite": rec.get("suite") or cfg.get("suite"), "dataset": dataset,
        "backbone": rec.get("backbone") or bb.get("name"), "image_size": ds.get("image_size"),
        "cifar_stem": run_cifar_stem(str(dataset), bb.get("options"), ds.get("image_size")),
        "epochs": rec.get("epochs", budget.get("epochs")),
        "batch_size": rec.get("batch_size", budget.get("batch_size")),
        "epochs_done": rec.get("epochs_done"),
    }
    cols.update({f"bb.{k}": _scalar(v) for k, v in sorted((bb.get("options") or {}).items())})
    options = rec.get("options") or cfg.get("options") or {}
    cols.update({f"opt.{k}": _scalar(v) for k, v in sorted(options.items())})
    versions = env.get("versions") or {}
    device = env.get("device") or {}
    cols.update({"torch": versions.get("torch"), "torchvision": versions.get("torchvision"),
                 "python": env.get("python"), "device": device.get("type"), "device_name": device.get("name"),
                 "git_commit": env.get("git_commit")})
    return cols


def _metric_rows(rec: dict[str, Any]) -> list[tuple[str, str, float]]:
    """(protocol, metric, value) of one record: its metrics, then its numeric costs and times."""
    rows = []
    for key, value in (rec.get("metrics") or {}).items():
        protocol = classify_metric(key)
        if protocol and (_is_number(value) or value is None):
            rows.append((protocol, key, float("nan") if value is None else float(value)))
    costs = {**(rec.get("costs") or {}), **{k: rec.get(k) for k in ("train_s", "eval_s", "wall_s")}}
    rows += [("costs", k, float(v)) for k, v in costs.items() if _is_number(v)]
    return rows


def long_table(suite_dir: str | Path) -> pd.DataFrame:
    """One row per run x protocol x metric, with config, option (``opt.*``), backbone option
    (``bb.*``), environment and git columns. Runs without metrics (failed, diverged, unfinished)
    keep a single ``status`` row so that no run disappears from the table."""
    rows = []
    for run in load_runs(suite_dir):
        rec = run.record
        ident = {"run_id": run.run_id, "label": rec.get("label") or rec.get("method"), "method": rec.get("method"),
                 "seed": rec.get("seed"), "status": rec.get("status"), "reason": rec.get("reason")}
        cols = run_columns(run)
        metrics = _metric_rows(rec) or [("status", "status", float("nan"))]
        rows += [{**ident, "protocol": p, "metric": m, "value": v, **cols} for p, m, v in metrics]
    lead = ["run_id", "label", "method", "seed", "status", "reason", "protocol", "metric", "value"]
    df = pd.DataFrame(rows, columns=None if rows else lead)
    return df[lead + [c for c in df.columns if c not in lead]]


def _parquet_safe(df: pd.DataFrame) -> pd.DataFrame:
    """Object columns with mixed value types (an option that is 0.5 in one run and "auto" in
    another) become strings: parquet needs one type per column."""
    out = df.copy()
    for col in out.columns:
        if out[col].dtype == object:
            types = {type(v) for v in out[col].dropna()}
            if len(types) > 1:
                out[col] = out[col].map(lambda v: None if v is None or (isinstance(v, float) and math.isnan(v))
                                        else str(v))
    return out


def write_long_table(df: pd.DataFrame, suite_dir: str | Path) -> tuple[Path, Path]:
    """Write ``results_long.parquet`` and ``results_long.csv`` into the suite folder."""
    from bench.store import atomic_write_bytes

    suite_dir = Path(suite_dir)
    csv_path, pq_path = suite_dir / "results_long.csv", suite_dir / "results_long.parquet"
    atomic_write_bytes(csv_path, df.to_csv(index=False).encode())
    tmp = suite_dir / ".results_long.parquet.tmp"
    _parquet_safe(df).to_parquet(tmp, index=False)
    tmp.replace(pq_path)
    return pq_path, csv_path


def _published_cells(rows: pd.DataFrame, protocol: str) -> tuple[float | None, str | None]:
    """Published value and setting label for the runs of one label (same config by construction)."""
    first = rows.iloc[0]
    bb_opts = {c[3:]: first[c] for c in rows.columns if c.startswith("bb.") and pd.notna(first[c])}
    stem = first.get("cifar_stem")
    epochs = first.get("epochs")
    match = best_match(str(first.get("method")), str(first.get("dataset")), str(first.get("backbone")), protocol,
                       epochs=int(epochs) if pd.notna(epochs) else None,
                       cifar_stem=None if stem is None or pd.isna(stem) else bool(stem), backbone_options=bb_opts)
    return (match.value, match.setting) if match else (None, None)


def leaderboard(long_df: pd.DataFrame, protocol: str, metric: str, *, published: bool = True) -> pd.DataFrame:
    """Runs of status ``ok`` grouped by label: mean, sample std (ddof 1; NaN for one seed) and
    number of seeds of ``metric``; ``ci95`` (mean over seeds of ``<metric>_ci95``) when recorded;
    the published number and its setting when data set and backbone match; ``role`` marks the
    random-init floor and the supervised ceiling. Sorted best first."""
    cols = ["label", "method", "role", "mean", "std", "n_seeds", "seeds", "ci95", "published", "published_setting"]
    if long_df.empty:
        return pd.DataFrame(columns=cols)
    ok = long_df[(long_df["status"] == "ok") & (long_df["protocol"] == protocol)]
    sel = ok[(ok["metric"] == metric) & ok["value"].notna()]
    ci = ok[ok["metric"] == f"{metric}_ci95"].groupby("label")["value"].mean()
    rows = []
    for label, g in sel.groupby("label", sort=False):
        values = g["value"].astype(float)
        pub, setting = _published_cells(g, protocol) if published else (None, None)
        method = g["method"].iloc[0]
        rows.append({"label": label, "method": method, "role": ROLE_OF_METHOD.get(str(method), ""),
                     "mean": values.mean(), "std": values.std(ddof=1) if len(values) > 1 else float("nan"),
                     "n_seeds": int(g["seed"].nunique()), "seeds": ",".join(str(s) for s in sorted(g["seed"].unique())),
                     "ci95": ci.get(label, float("nan")), "published": pub, "published_setting": setting})
    df = pd.DataFrame(rows, columns=cols)
    return df.sort_values(["mean", "label"], ascending=[False, True], ignore_index=True)


def costs_table(long_df: pd.DataFrame, metrics: Sequence[str] = COST_METRICS) -> pd.DataFrame:
    """Per label, the mean over its runs of each cost (params, GMACs, FLOPs, images/s, memory,
    seconds); failed runs count too for times, since their cost was spent."""
    if long_df.empty:
        return pd.DataFrame(columns=["label", "method", "n_runs", *metrics])
    costs = long_df[long_df["protocol"] == "costs"]
    wide = costs.pivot_table(index="label", columns="metric", values="value", aggfunc="mean")
    info = long_df.groupby("label").agg(method=("method", "first"), n_runs=("run_id", "nunique"))
    out = info.join(wide.reindex(columns=list(metrics)), how="left").reset_index()
    return out[["label", "method", "n_runs", *metrics]]


def problem_runs(runs: Iterable[RunInfo]) -> pd.DataFrame:
    """Runs whose status is not ``ok`` (diverged, failed, unfinished) with their reason."""
    rows = [{"run_id": r.run_id, "label": r.record.get("label"), "seed": r.record.get("seed"),
             "status": r.record.get("status"), "epochs_done": r.record.get("epochs_done"),
             "reason": r.record.get("reason") or ""}
            for r in runs if r.record.get("status") != "ok"]
    return pd.DataFrame(rows, columns=["run_id", "label", "seed", "status", "epochs_done", "reason"])


@dataclass
class AblationGroup:
    """Run labels of one method that differ in exactly one option field.

    ``members`` are (value, label, set_in_suite) sorted by value; a label that leaves the field
    unset takes the method's resolved default. ``fixed`` holds the other options the suite set.
    """

    method: str
    field: str
    fixed: dict[str, Any]
    members: list[tuple[Any, str, bool]]

    @property
    def title(self) -> str:
        extra = ", ".join(f"{k}={v}" for k, v in sorted(self.fixed.items()))
        return f"{self.method}: {self.field}" + (f" ({extra})" if extra else "")


def _sort_key(value: Any) -> tuple[int, Any]:
    return (0, value) if _is_number(value) else (1, json.dumps(value, sort_keys=True, default=str))


def ablation_groups(records: Iterable[dict[str, Any]]) -> list[AblationGroup]:
    """Groups of run labels (same method) whose ``options_set`` differ in exactly one field.

    For every field a method's suite entries set, labels are bucketed by all their *other* set
    options; a bucket with at least two distinct values of the field (unset = resolved default)
    is an ablation of that field. A two-field sweep thus yields one group per field and value of
    the other field.
    """
    configs: dict[str, tuple[str, dict[str, Any], dict[str, Any]]] = {}
    for r in records:
        label = r.get("label") or r.get("method")
        if label and label not in configs:
            configs[label] = (str(r.get("method")), dict(r.get("options_set") or {}), dict(r.get("options") or {}))
    by_method: dict[str, list[tuple[str, dict[str, Any], dict[str, Any]]]] = defaultdict(list)
    for label, (method, oset, opts) in configs.items():
        by_method[method].append((label, oset, opts))
    groups = []
    for method, items in sorted(by_method.items()):
        for fld in sorted({k for _, oset, _ in items for k in oset}):
            buckets: dict[str, dict[str, tuple[Any, str, bool]]] = defaultdict(dict)
            for label, oset, opts in sorted(items):
                rest = json.dumps({k: v for k, v in oset.items() if k != fld}, sort_keys=True, default=str)
                value = oset[fld] if fld in oset else opts.get(fld)
                buckets[rest].setdefault(json.dumps(value, sort_keys=True, default=str), (value, label, fld in oset))
            for rest, members in buckets.items():
                if len(members) >= 2:
                    ordered = sorted(members.values(), key=lambda m: _sort_key(m[0]))
                    groups.append(AblationGroup(method, fld, json.loads(rest), ordered))
    return groups


def fewshot_shots(long_df: pd.DataFrame) -> list[int]:
    """The k of every ``fewshot_<k>`` metric present, ascending."""
    if long_df.empty:
        return []
    keys = long_df.loc[long_df["protocol"] == "fewshot", "metric"].unique()
    return sorted(int(m.split("_")[1]) for m in keys if re.fullmatch(r"fewshot_\d+", m))
