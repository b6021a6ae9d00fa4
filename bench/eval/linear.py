"""Linear evaluation of frozen encoders: logistic regression on features, and the SGD probe.

Both protocols choose their one hyper-parameter (C, resp. the learning rate) on a validation
split carved from the TRAIN set, refit on all training data with the chosen value and score the
test set exactly once (PROTOCOLS.md; Ericsson et al. 2021 ``ssl-transfer/linear.py``; MoCo
``main_lincls.py``). Test data never enter a selection.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import StandardScaler
from torch import nn

from bench.eval.features import eval_mode, extract_features

__all__ = ["linear_probe", "sgd_linear_probe", "train_val_split", "fit_logreg", "DEFAULT_CS",
           "DEFAULT_SGD_LRS"]

ArrayLike = torch.Tensor | np.ndarray

#: Inverse L2 strength grid for standardised features (sklearn objective: C·Σloss + ½||w||²).
DEFAULT_CS: tuple[float, ...] = tuple(float(c) for c in np.logspace(-4, 2, 7))
#: SGD probe lr grid: spans solo-learn's per-method optima (0.1 … 30, PROTOCOLS.md) at batch 256.
DEFAULT_SGD_LRS: tuple[float, ...] = (0.1, 0.3, 1.0, 3.0, 10.0, 30.0)


def _numpy(x: ArrayLike, dtype: type) -> np.ndarray:
    """Contiguous numpy copy/view of a tensor or array with ``dtype``."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return np.ascontiguousarray(x, dtype=dtype)


def train_val_split(labels: np.ndarray, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded stratified split of ``range(len(labels))`` into (fit, validation) index arrays.

    Falls back to a plain seeded split when some class has fewer than two samples, where
    stratification is impossible.
    """
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    idx = np.arange(len(labels))
    counts = np.bincount(labels)
    stratify = labels if counts[counts > 0].min() >= 2 else None
    fit_idx, val_idx = train_test_split(idx, test_size=val_fraction, random_state=seed,
                                        stratify=stratify)
    return np.sort(fit_idx), np.sort(val_idx)


def fit_logreg(x: np.ndarray, y: np.ndarray, C: float, max_iter: int,
               init: LogisticRegression | None = None) -> tuple[LogisticRegression, bool]:
    """Fit multinomial L2 logistic regression with L-BFGS; optionally warm-start from ``init``'s
    coefficients (same class set). Returns the model and whether L-BFGS converged."""
    model = LogisticRegression(C=C, solver="lbfgs", max_iter=max_iter, warm_start=init is not None)
    if init is not None:
        model.coef_, model.intercept_ = init.coef_.copy(), init.intercept_.copy()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        model.fit(x, y)
    converged = not any(issubclass(w.category, ConvergenceWarning) for w in caught)
    return model, converged


def _standardize(fit_x: np.ndarray, *others: np.ndarray, enabled: bool) -> list[np.ndarray]:
    """Standardise arrays with statistics of ``fit_x`` only (float32), or pass them through."""
    if not enabled:
        return [fit_x, *others]
    scaler = StandardScaler().fit(fit_x)
    return [scaler.transform(a).astype(np.float32, copy=False) for a in (fit_x, *others)]


def _select_C(x: np.ndarray, y: np.ndarray, Cs: Sequence[float], val_fraction: float, seed: int,
              max_iter: int, standardize: bool) -> dict[str, Any]:
    """Sweep ``Cs`` (ascending, warm-started) on a validation split of the training data only."""
    fit_idx, val_idx = train_val_split(y, val_fraction, seed)
    x_fit, x_val = _standardize(x[fit_idx], x[val_idx], enabled=standardize)
    grid: dict[float, float] = {}
    models: dict[float, LogisticRegression] = {}
    not_converged: list[float] = []
    prev = None
    for C in sorted(float(c) for c in Cs):
        prev, ok = fit_logreg(x_fit, y[fit_idx], C, max_iter, init=prev)
        grid[C] = float((prev.predict(x_val) == y[val_idx]).mean())
        models[C] = prev
        if not ok:
            not_converged.append(C)
    best_C = max(grid, key=lambda c: (grid[c], -c))  # ties -> stronger regularisation
    return {"grid": grid, "best_C": best_C, "model": models[best_C], "not_converged": not_converged,
            "n_fit": int(len(fit_idx)), "n_val": int(len(val_idx))}


def linear_probe(train_f: ArrayLike, train_y: ArrayLike, test_f: ArrayLike, test_y: ArrayLike, *,
                 val_fraction: float = 0.2, Cs: Sequence[float] = DEFAULT_CS, seed: int = 0,
                 max_iter: int = 1000, standardize: bool = True) -> dict[str, Any]:
    """Offline linear probe: multinomial logistic regression (L-BFGS) on frozen features.

    ``C`` is chosen by accuracy on a seeded stratified ``val_fraction`` split of the TRAIN set
    (ties go to the smaller C), the model is refit on all training data with that C (warm-started
    from the selection fit) and the test set is scored once (Ericsson et al. 2021; CLIP appendix A.3).
    Features are float32 and standardised with training statistics only; the C grid is swept in
    ascending order with warm starts, which keeps 50k×2048 feasible on a few CPU cores.
    """
    start = time.perf_counter()
    x, y = _numpy(train_f, np.float32), _numpy(train_y, np.int64)
    xt, yt = _numpy(test_f, np.float32), _numpy(test_y, np.int64)
    sel = _select_C(x, y, Cs, val_fraction, seed, max_iter, standardize)
    x_all, x_test = _standardize(x, xt, enabled=standardize)
    same_classes = np.array_equal(sel["model"].classes_, np.unique(y))
    final, ok = fit_logreg(x_all, y, sel["best_C"], max_iter, init=sel["model"] if same_classes else None)
    best_C = sel["best_C"]
    return {"top1": float((final.predict(x_test) == yt).mean()), "best_C": best_C,
            "val_top1": sel["grid"][best_C], "grid": sel["grid"], "val_fraction": float(val_fraction),
            "best_C_at_grid_edge": best_C in (min(sel["grid"]), max(sel["grid"])),
            "not_converged_Cs": sel["not_converged"] + ([] if ok else ["final"]),
            "n_fit": sel["n_fit"], "n_val": sel["n_val"], "n_train": int(len(y)), "n_test": int(len(yt)),
            "standardize": bool(standardize), "max_iter": int(max_iter), "seed": int(seed),
            "selection": "val split of train", "protocol": "linear_lbfgs",
            "seconds": time.perf_counter() - start}
