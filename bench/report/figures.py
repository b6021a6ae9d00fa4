"""Report figures (seaborn on matplotlib's Agg backend), returned as PNG data URIs for embedding.

accuracy vs total training FLOPs with the Pareto front, training curves (loss and validation
kNN per epoch), few-shot accuracy vs shots with 95% CI bands, and bar charts of ablation groups.
Every function returns None when the records hold nothing to plot.
"""

from __future__ import annotations

import base64
import io
import math
from collections.abc import Iterable, Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg")  # headless: no display, deterministic PNGs

import matplotlib.ticker  # noqa: E402

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from bench.report.tables import AblationGroup, ROLE_OF_METHOD  # noqa: E402

__all__ = ["fig_to_data_uri", "pareto_front", "accuracy_vs_flops", "training_curves", "fewshot_curve",
           "ablation_bars", "pooled_ci95", "run_curves", "label_palette"]

sns.set_theme(style="whitegrid", context="notebook")


def fig_to_data_uri(fig: plt.Figure, dpi: int = 96) -> str:
    """Render a figure to PNG and close it; returns ``data:image/png;base64,...``.

    Figures are made with ``layout="constrained"`` (outside legends fit) rather than
    ``bbox_inches="tight"``, which renders twice: the report draws one figure per run.
    """
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def pareto_front(costs: Sequence[float], scores: Sequence[float]) -> list[int]:
    """Indices of the Pareto-optimal points (lower cost, higher score), ordered by cost.

    A point is on the front when no other point costs no more and scores at least as much with
    one of the two strictly better. Sweep by ascending cost (ties: best score first) and keep a
    point when it beats every cheaper score. NaN points are ignored; exact duplicates keep one.
    """
    pts = [(c, -s, i) for i, (c, s) in enumerate(zip(costs, scores))
           if not (math.isnan(float(c)) or math.isnan(float(s)))]
    front, best = [], -math.inf
    for c, neg_s, i in sorted(pts):
        if -neg_s > best:
            front.append(i)
            best = -neg_s
    return front


def _per_label(long_df: pd.DataFrame, protocol: str, metric: str) -> pd.Series:
    """Mean over seeds of one metric per label (ok runs only)."""
    sel = long_df[(long_df["status"] == "ok") & (long_df["protocol"] == protocol) & (long_df["metric"] == metric)]
    return sel.groupby("label")["value"].mean()


def label_palette(labels: Iterable[str]) -> dict[str, Any]:
    """One colour per run label, the same in every figure of a report (sorted labels)."""
    ordered = sorted({str(x) for x in labels})
    return dict(zip(ordered, sns.color_palette("tab10" if len(ordered) <= 10 else "husl", len(ordered))))


def accuracy_vs_flops(long_df: pd.DataFrame, protocol: str, metric: str, title: str,
                      palette: dict[str, Any] | None = None) -> str | None:
    """Mean accuracy per label vs its total training FLOPs (log axis) with the Pareto front of the
    self-supervised runs as a step line. Reference rows stay off the front: the supervised ceiling
    is a star (it uses labels), runs without training (random init: 0 FLOPs) a horizontal line."""
    if long_df.empty:
        return None
    acc = _per_label(long_df, protocol, metric)
    flops = _per_label(long_df, "costs", "train_flops")
    df = pd.concat({"acc": acc, "flops": flops}, axis=1).dropna(subset=["acc"])
    methods = long_df.drop_duplicates("label").set_index("label")["method"]
    df["role"] = [ROLE_OF_METHOD.get(str(methods.get(label)), "") for label in df.index]
    trained = df[df["flops"] > 0]
    if trained.empty:
        return None
    palette = palette or label_palette(df.index)
    fig, ax = plt.subplots(figsize=(7.5, 4.6), layout="constrained")
    for label, row in trained.iterrows():
        marker, size = ("*", 220) if row["role"] else ("o", 70)
        ax.scatter(row["flops"], 100 * row["acc"], s=size, marker=marker, color=palette.get(label), zorder=3)
        name = f"{label} ({row['role']})" if row["role"] else str(label)
        ax.annotate(name, (row["flops"], 100 * row["acc"]), textcoords="offset points", xytext=(6, 4), fontsize=8)
    ssl = trained[trained["role"] == ""]
    if len(ssl):
        fr = ssl.iloc[pareto_front(ssl["flops"].tolist(), ssl["acc"].tolist())]
        # the best accuracy reachable with at most x FLOPs: a staircase up to the largest budget
        xs = [*fr["flops"], trained["flops"].max()]
        ys = [*(100 * fr["acc"]), 100 * fr["acc"].iloc[-1]]
        ax.step(xs, ys, where="post", color="black", lw=1.2, ls="--", label="Pareto front (self-supervised)")
        ax.scatter(fr["flops"], 100 * fr["acc"], s=130, facecolors="none", edgecolors="black", zorder=4)
    for label, row in df[~(df["flops"] > 0)].iterrows():
        ax.axhline(100 * row["acc"], color=palette.get(label, "grey"), lw=1.2, ls=":",
                   label=f"{label} ({row['role'] or 'no training'})")
    ax.set_xscale("log")
    short = matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:.2g}".replace("e+", "e"))  # "2e10", "1.5e13"
    ax.xaxis.set_minor_locator(matplotlib.ticker.LogLocator(base=10, subs=(2.0, 5.0)))
    ax.xaxis.set_minor_formatter(short)
    ax.xaxis.set_major_formatter(short)
    ax.margins(x=0.15, y=0.12)
    ax.set(xlabel="total training FLOPs (2 x MACs, log scale)", ylabel=f"{title} (%)",
           title=f"{title} vs training compute")
    ax.legend(loc="best", fontsize=8)
    return fig_to_data_uri(fig)


def _history_frame(runs: Iterable[dict[str, Any]]) -> pd.DataFrame:
    """Per-epoch rows of every run's ``history`` with its label and seed."""
    rows = []
    for rec in runs:
        for h in rec.get("history") or []:
            if isinstance(h, dict) and "epoch" in h:
                rows.append({"run": f"{rec.get('label')} s{rec.get('seed')}", "label": rec.get("label"),
                             "seed": str(rec.get("seed")), "epoch": h.get("epoch"), "loss": h.get("loss"),
                             "val_knn_top1": h.get("val_knn_top1")})
    return pd.DataFrame(rows, columns=["run", "label", "seed", "epoch", "loss", "val_knn_top1"])


def training_curves(runs: Iterable[dict[str, Any]], title: str = "",
                    palette: dict[str, Any] | None = None) -> str | None:
    """Training loss and validation kNN top-1 (k=200, on the split carved from train) per epoch,
    one line per run (colour = label, dash = seed)."""
    hist = _history_frame(runs)
    hist = hist.apply(lambda c: pd.to_numeric(c, errors="coerce") if c.name in ("epoch", "loss", "val_knn_top1") else c)
    if hist.empty or hist[["loss", "val_knn_top1"]].isna().all().all():
        return None
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8), layout="constrained")
    many_seeds = hist["seed"].nunique() > 1
    for ax, col, name in ((axes[0], "loss", "training loss"), (axes[1], "val_knn_top1", "val kNN top-1 (%)")):
        data = hist.dropna(subset=[col]).assign(**{col: lambda d, c=col: d[c] * (100 if c != "loss" else 1)})
        if data.empty:
            ax.set_axis_off()
            continue
        sns.lineplot(data=data, x="epoch", y=col, hue="label", palette=palette or label_palette(hist["label"]),
                     style="seed" if many_seeds else None,
                     units="run" if many_seeds else None, estimator=None if many_seeds else "mean",
                     marker="o", ax=ax, legend=ax is axes[1])
        ax.set(ylabel=name, title=name)
    if axes[1].get_legend() is not None:
        sns.move_legend(axes[1], "upper left", bbox_to_anchor=(1.02, 1), fontsize=8)
    if title:
        fig.suptitle(title)
    return fig_to_data_uri(fig)


def run_curves(history: Sequence[dict[str, Any]], title: str = "") -> str | None:
    """One run's training loss and validation kNN top-1 per epoch, drawn with plain matplotlib
    and no layout engine: the report draws one of these per run, so it must be cheap."""
    hist = _history_frame([{"label": title, "seed": "", "history": list(history)}])
    numeric = ["epoch", "loss", "val_knn_top1"]
    hist[numeric] = hist[numeric].apply(pd.to_numeric, errors="coerce")
    if hist.empty or hist[["loss", "val_knn_top1"]].isna().all().all():
        return None
    fig, axes = plt.subplots(1, 2, figsize=(8, 2.6))
    fig.subplots_adjust(left=0.08, right=0.98, bottom=0.2, top=0.82, wspace=0.25)
    panels = ((axes[0], "loss", "training loss", 1), (axes[1], "val_knn_top1", "val kNN top-1 (%)", 100))
    for ax, col, name, scale in panels:
        d = hist.dropna(subset=[col])
        ax.plot(d["epoch"], scale * d[col], marker="o", ms=3)
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("epoch", fontsize=9)
        ax.tick_params(labelsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig_to_data_uri(fig, dpi=80)


def pooled_ci95(draws: Sequence[float]) -> float | None:
    """Half-width of the Student-t 95% CI of the mean of ``draws`` (None for fewer than 2)."""
    from scipy import stats

    v = np.asarray([d for d in draws if d is not None and not math.isnan(d)], dtype=float)
    if v.size < 2:
        return None
    return float(stats.t.ppf(0.975, v.size - 1) * v.std(ddof=1) / math.sqrt(v.size))


def _fewshot_points(records: Iterable[dict[str, Any]]) -> pd.DataFrame:
    """Per label and k: mean accuracy and 95% CI, pooling the draws of all seeds when recorded
    (else the mean of the runs' own CI half-widths)."""
    acc: dict[tuple[str, int], list[float]] = {}
    draws: dict[tuple[str, int], list[float]] = {}
    cis: dict[tuple[str, int], list[float]] = {}
    for rec in records:
        if rec.get("status") != "ok":
            continue
        metrics, proto = rec.get("metrics") or {}, (rec.get("protocols") or {}).get("fewshot") or {}
        for key, value in metrics.items():
            parts = key.split("_")
            if len(parts) == 2 and parts[0] == "fewshot" and parts[1].isdigit() and isinstance(value, (int, float)):
                k = (str(rec.get("label")), int(parts[1]))
                acc.setdefault(k, []).append(float(value))
                d = proto.get(f"{key}_draws")
                if isinstance(d, list):
                    draws.setdefault(k, []).extend(float(x) for x in d if isinstance(x, (int, float)))
                ci = proto.get(f"{key}_ci95", metrics.get(f"{key}_ci95"))
                if isinstance(ci, (int, float)):
                    cis.setdefault(k, []).append(float(ci))
    rows = []
    for (label, shots), values in acc.items():
        ci = pooled_ci95(draws[(label, shots)]) if (label, shots) in draws else None
        if ci is None and cis.get((label, shots)):
            ci = float(np.mean(cis[(label, shots)]))
        rows.append({"label": label, "shots": shots, "acc": float(np.mean(values)), "ci95": ci})
    return pd.DataFrame(rows, columns=["label", "shots", "acc", "ci95"]).sort_values(["label", "shots"])


def fewshot_curve(records: Iterable[dict[str, Any]], palette: dict[str, Any] | None = None) -> str | None:
    """Few-shot top-1 vs labelled images per class (log2 axis) with 95% CI bands, per label."""
    pts = _fewshot_points(records)
    if pts.empty:
        return None
    fig, ax = plt.subplots(figsize=(7.5, 4.6), layout="constrained")
    palette = palette or label_palette(pts["label"])
    for label, g in pts.groupby("label", sort=True):
        colour = palette.get(label)
        y = 100 * g["acc"].to_numpy()
        ax.plot(g["shots"], y, marker="o", color=colour, label=label)
        half = 100 * g["ci95"].astype(float).fillna(0.0).to_numpy()
        ax.fill_between(g["shots"], y - half, y + half, color=colour, alpha=0.2, lw=0)
    ax.set_xscale("log", base=2)
    shots = sorted(pts["shots"].unique())
    ax.set_xticks(shots, [str(s) for s in shots])
    ax.set(xlabel="labelled images per class (k)", ylabel="few-shot top-1 (%)",
           title="Few-shot logistic regression (bands: 95% CI over draws)")
    ax.legend(fontsize=8)
    return fig_to_data_uri(fig)


def ablation_bars(group: AblationGroup, long_df: pd.DataFrame, protocol: str, metric: str,
                  metric_title: str) -> str | None:
    """Bar chart of one ablation group: mean metric per value of the field, error bars = std over
    seeds (none for a single seed); the value the method uses by default is marked."""
    sel = long_df[(long_df["status"] == "ok") & (long_df["protocol"] == protocol) & (long_df["metric"] == metric)]
    rows = []
    for value, label, was_set in group.members:
        vals = sel.loc[sel["label"] == label, "value"].astype(float)
        if len(vals):
            rows.append({"value": f"{value}" + ("" if was_set else " (default)"), "mean": 100 * vals.mean(),
                         "std": 100 * vals.std(ddof=1) if len(vals) > 1 else 0.0, "n": len(vals)})
    if len(rows) < 2:
        return None
    df = pd.DataFrame(rows)
    fig, ax = plt.subplots(figsize=(max(3.5, 1.1 * len(df) + 1.5), 3.6), layout="constrained")
    sns.barplot(data=df, x="value", y="mean", hue="value", palette="crest", ax=ax, legend=False)
    ax.errorbar(range(len(df)), df["mean"], yerr=df["std"], fmt="none", ecolor="black", capsize=4)
    for i, row in df.iterrows():
        ax.annotate(f"{row['mean']:.1f}", (i, row["mean"] + row["std"]), ha="center", va="bottom", fontsize=8,
                    xytext=(0, 3), textcoords="offset points")
    low = max(0.0, float((df["mean"] - df["std"]).min()) - 5)
    ax.set_ylim(bottom=low)
    ax.set(xlabel=group.field, ylabel=f"{metric_title} (%)", title=group.title)
    return fig_to_data_uri(fig)
