"""Low-label evaluation on frozen features: k-shot logistic regression, fixed label-fraction
subsets (semi-supervised 1% / 10%) and nearest-centroid few-shot episodes.

No hyper-parameter here is tuned on test data: the few-shot regulariser is fixed a priori
(and recorded), the label-fraction probes choose C on a validation split of the labelled
subset itself, and the episodes have no hyper-parameter.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from scipy import stats

from bench.eval.linear import fit_logreg, linear_probe

__all__ = ["few_shot", "label_fraction_subsets", "semi_supervised", "prototype_episodes",
           "mean_ci95", "FEWSHOT_C"]

ArrayLike = torch.Tensor | np.ndarray

#: Fixed inverse regularisation for k-shot logistic regression on L2-normalised features, chosen
#: a priori (not on any test set). sklearn's objective C·Σloss + ½||w||² makes the effective
#: penalty shrink as k grows: near nearest-centroid at 1 shot, a fitted linear model at 16.
FEWSHOT_C: float = 1.0


def _numpy(x: ArrayLike, dtype: type) -> np.ndarray:
    """Contiguous numpy copy/view of a tensor or array with ``dtype``."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return np.ascontiguousarray(x, dtype=dtype)


def _l2_normalize(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (scale-free across methods whose features differ in norm)."""
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def mean_ci95(values: Sequence[float]) -> tuple[float, float | None]:
    """Mean and half-width of its 95% confidence interval, ``t_{0.975, n-1} · s / sqrt(n)``
    (Student t, exact for few draws; None when n < 2)."""
    v = np.asarray(values, dtype=np.float64)
    if v.size < 2:
        return float(v.mean()), None
    half = stats.t.ppf(0.975, v.size - 1) * v.std(ddof=1) / math.sqrt(v.size)
    return float(v.mean()), float(half)


def sample_k_per_class(labels: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """Indices of exactly ``k`` samples of every class in ``labels``, without replacement."""
    picks = []
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        if len(members) < k:
            raise ValueError(f"class {c} has {len(members)} samples, fewer than k={k}")
        picks.append(rng.choice(members, size=k, replace=False))
    return np.sort(np.concatenate(picks))


def few_shot(train_f: ArrayLike, train_y: ArrayLike, test_f: ArrayLike, test_y: ArrayLike, *,
             shots: Sequence[int] = (1, 2, 4, 8, 16), draws: int = 5, seed: int = 0,
             C: float = FEWSHOT_C, max_iter: int = 1000) -> dict[str, Any]:
    """k-shot linear evaluation (CLIP few-shot figure; VISSL low-shot), per PROTOCOLS.md.

    For every k and draw, k labelled images per class are sampled from TRAIN (seeded by
    ``(seed, k, draw)``: reproducible, different per draw), a multinomial logistic regression
    with the fixed ``C`` is fit on their L2-normalised features and scored on the full test set.
    Reports per k the mean accuracy ``fewshot_{k}``, the 95% CI half-width ``fewshot_{k}_ci95``
    (Student t over draws) and the per-draw accuracies ``fewshot_{k}_draws``.
    """
    x, y = _l2_normalize(_numpy(train_f, np.float32)), _numpy(train_y, np.int64)
    xt, yt = _l2_normalize(_numpy(test_f, np.float32)), _numpy(test_y, np.int64)
    out: dict[str, Any] = {
        "fewshot_C": float(C), "fewshot_draws": int(draws), "fewshot_seed": int(seed),
        "fewshot_features": "l2-normalised", "fewshot_ci": "95% Student t",
        "fewshot_shots": [int(k) for k in shots]}
    for k in shots:
        accs = []
        for d in range(draws):
            idx = sample_k_per_class(y, int(k), np.random.default_rng([seed, int(k), d]))
            model, _ = fit_logreg(x[idx], y[idx], C, max_iter)
            accs.append(float((model.predict(xt) == yt).mean()))
        out[f"fewshot_{k}"], out[f"fewshot_{k}_ci95"] = mean_ci95(accs)
        out[f"fewshot_{k}_draws"] = accs
    return out


def label_fraction_subsets(labels: ArrayLike, fractions: Sequence[float] = (0.01, 0.1),
                           seed: int = 0) -> dict[float, np.ndarray]:
    """Fixed, seeded, stratified labelled subsets (SimCLR / S4L 1% and 10% protocol).

    Each class keeps ``max(1, round(f · n_c))`` of its samples. One seeded permutation per class
    is shared by all fractions, so the subsets are nested (1% ⊂ 10%) and identical across calls.
    Returns sorted index arrays keyed by fraction.
    """
    y = _numpy(labels, np.int64)
    rng = np.random.default_rng(seed)
    orders = {int(c): rng.permutation(np.flatnonzero(y == c)) for c in np.unique(y)}
    def take(f: float) -> np.ndarray:
        return np.sort(np.concatenate([o[:max(1, round(f * len(o)))] for o in orders.values()]))

    return {float(f): take(f) for f in fractions}


def _pct_key(fraction: float) -> str:
    """``0.01 -> 'label1pct'``, ``0.1 -> 'label10pct'``, ``0.005 -> 'label0.5pct'``."""
    return f"label{100 * fraction:g}pct"


def semi_supervised(train_f: ArrayLike, train_y: ArrayLike, test_f: ArrayLike, test_y: ArrayLike,
                    fractions: Sequence[float] = (0.01, 0.1), seed: int = 0) -> dict[str, Any]:
    """Logistic-regression probe trained on the fixed 1% / 10% label subsets of TRAIN.

    Each subset runs :func:`bench.eval.linear.linear_probe` restricted to the labelled samples, so
    C is chosen on a validation split of that subset (never on test). Keys:
    ``label1pct_top1``, ``label1pct_best_C``, ``label1pct_n`` (and likewise for 10%).
    """
    x, y = _numpy(train_f, np.float32), _numpy(train_y, np.int64)
    out: dict[str, Any] = {"label_fraction_seed": int(seed),
                           "label_fraction_protocol": "linear_lbfgs"}
    for f, idx in label_fraction_subsets(y, fractions, seed).items():
        res = linear_probe(x[idx], y[idx], test_f, test_y, seed=seed)
        key = _pct_key(f)
        out.update({f"{key}_top1": res["top1"], f"{key}_best_C": res["best_C"],
                    f"{key}_val_top1": res["val_top1"], f"{key}_n": int(len(idx))})
    return out


def _episode_accuracy(x: np.ndarray, y: np.ndarray, rng: np.random.Generator, ways: int,
                      shots: int, queries: int) -> float:
    """One N-way episode: class prototypes = mean support embedding, queries go to the
    nearest prototype in Euclidean distance (Snell et al. 2017)."""
    classes = rng.choice(np.unique(y), size=ways, replace=False)
    protos, query_x, query_y = [], [], []
    for j, c in enumerate(classes):
        members = rng.choice(np.flatnonzero(y == c), size=shots + queries, replace=False)
        protos.append(x[members[:shots]].mean(axis=0))
        query_x.append(x[members[shots:]])
        query_y.append(np.full(queries, j))
    q, p = np.concatenate(query_x), np.stack(protos)
    dist = (q ** 2).sum(1, keepdims=True) - 2 * q @ p.T + (p ** 2).sum(1)
    return float((dist.argmin(axis=1) == np.concatenate(query_y)).mean())


def prototype_episodes(features: ArrayLike, labels: ArrayLike, *, ways: int = 5,
                       shots: Sequence[int] = (5, 20), queries: int = 15, episodes: int = 600,
                       seed: int = 0) -> dict[str, Any]:
    """Few-shot episodes with a nearest-centroid classifier (Ericsson et al. 2021 ``few_shot.py``).

    Each episode samples ``ways`` classes, ``shot`` support and ``queries`` query images per class
    from ``features`` (L2-normalised; usually a held-out/test set of classes), and classifies the
    queries by the nearest class mean. Reports per shot the mean accuracy
    ``episodes_{ways}way_{shot}shot`` and ``..._ci95`` = 1.96·std/sqrt(episodes) (PROTOCOLS.md).
    """
    x, y = _l2_normalize(_numpy(features, np.float64)), _numpy(labels, np.int64)
    out: dict[str, Any] = {"episodes": int(episodes), "episode_ways": int(ways),
                           "episode_queries": int(queries),
                           "episode_classifier": "nearest centroid"}
    for shot in shots:
        rng = np.random.default_rng([seed, int(shot)])
        accs = np.array([_episode_accuracy(x, y, rng, ways, int(shot), queries)
                         for _ in range(episodes)])
        key = f"episodes_{ways}way_{shot}shot"
        out[key] = float(accs.mean())
        out[f"{key}_ci95"] = float(1.96 * accs.std() / math.sqrt(episodes))
    return out
