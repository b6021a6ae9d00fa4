"""Linear evaluation of frozen encoders: logistic regression on features, and the SGD probe.

Both protocols choose their one hyper-parameter (C, resp. the learning rate) on a validation
split carved from the TRAIN set, refit on all training data with the chosen value and score the
test set exactly once (PROTOCOLS.md; Ericsson et al. 2021 ``ssl-transfer/linear.py``; MoCo
``main_lincls.py``). Test data never enter a selection.
"""

from __future__ import annotations

import dataclasses
import math
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import StandardScaler
from torch import nn

from bench.data.augment import BatchAugmenter, CropSpec, ViewRecipe
from bench.eval.features import eval_mode, extract_features

__all__ = ["linear_probe", "sgd_linear_probe", "train_val_split", "fit_logreg", "pick_best",
           "DEFAULT_CS", "DEFAULT_SGD_LRS"]

ArrayLike = torch.Tensor | np.ndarray

#: Inverse L2 strength grid for standardised features (sklearn objective: C·Σloss + ½||w||²).
DEFAULT_CS: tuple[float, ...] = tuple(float(f"{c:g}") for c in np.logspace(-5, 2, 8))
#: SGD probe lr grid: spans solo-learn's per-method optima (0.1 … 30, PROTOCOLS.md) at batch 256.
DEFAULT_SGD_LRS: tuple[float, ...] = (0.1, 0.3, 1.0, 3.0, 10.0, 30.0)


def _numpy(x: ArrayLike, dtype: type) -> np.ndarray:
    """Contiguous numpy copy/view of a tensor or array with ``dtype``."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return np.ascontiguousarray(x, dtype=dtype)


def train_val_split(labels: np.ndarray, val_fraction: float,
                    seed: int) -> tuple[np.ndarray, np.ndarray]:
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


def pick_best(grid: dict[float, float]) -> float:
    """Hyper-parameter with the highest validation accuracy; among tied values the (lower)
    median of the tied ones, so small validation sets that cannot tell values apart do not
    push the choice to an extreme end of the grid."""
    best = max(grid.values())
    tied = sorted(v for v, acc in grid.items() if acc == best)
    return tied[(len(tied) - 1) // 2]


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
    best_C = pick_best(grid)
    return {"grid": grid, "best_C": best_C, "model": models[best_C], "not_converged": not_converged,
            "n_fit": int(len(fit_idx)), "n_val": int(len(val_idx))}


def linear_probe(train_f: ArrayLike, train_y: ArrayLike, test_f: ArrayLike, test_y: ArrayLike, *,
                 val_fraction: float = 0.2, Cs: Sequence[float] = DEFAULT_CS, seed: int = 0,
                 max_iter: int = 1000, standardize: bool = True) -> dict[str, Any]:
    """Offline linear probe: multinomial logistic regression (L-BFGS) on frozen features.

    ``C`` is chosen by accuracy on a seeded stratified ``val_fraction`` split of the TRAIN set
    (ties: median of the tied values), the model is refit on all training data with that C
    (warm-started from the selection fit) and the test set is scored once (Ericsson et al. 2021;
    CLIP appendix A.3). Features are float32 and standardised with training statistics only
    (selection: fit-split statistics; final model: all-train statistics); the C grid is swept in
    ascending order with warm starts, which keeps 50k×2048 feasible on a few CPU cores.
    ``C`` is sklearn's (objective ``C·Σ loss + ½||w||²``), so one C regularises less as n grows.
    """
    start = time.perf_counter()
    x, y = _numpy(train_f, np.float32), _numpy(train_y, np.int64)
    xt, yt = _numpy(test_f, np.float32), _numpy(test_y, np.int64)
    sel = _select_C(x, y, Cs, val_fraction, seed, max_iter, standardize)
    x_all, x_test = _standardize(x, xt, enabled=standardize)
    same_classes = np.array_equal(sel["model"].classes_, np.unique(y))
    best_C = sel["best_C"]
    final, ok = fit_logreg(x_all, y, best_C, max_iter, init=sel["model"] if same_classes else None)
    return {"top1": float((final.predict(x_test) == yt).mean()), "best_C": best_C,
            "val_top1": sel["grid"][best_C], "grid": sel["grid"],
            "val_fraction": float(val_fraction),
            "best_C_at_grid_edge": best_C in (min(sel["grid"]), max(sel["grid"])),
            "not_converged_Cs": sel["not_converged"] + ([] if ok else ["final"]),
            "n_fit": sel["n_fit"], "n_val": sel["n_val"], "n_train": int(len(y)),
            "n_test": int(len(yt)),
            "standardize": bool(standardize), "max_iter": int(max_iter), "seed": int(seed),
            "selection": "val split of train", "protocol": "linear_lbfgs",
            "seconds": time.perf_counter() - start}


# --------------------------------------------------------------------------- SGD probe


def _probe_crop(recipe: ViewRecipe | None, image_size: int) -> CropSpec:
    """The single training view of the SGD probe: the recipe's first crop (one view), or
    random-resized crop (0.08-1) + flip without colour distortion (MoCo ``main_lincls.py``)."""
    if recipe is None:
        return CropSpec(int(image_size), jitter=(0.0, 0.0, 0.0, 0.0), jitter_p=0.0, gray_p=0.0)
    return dataclasses.replace(recipe.crops[0], count=1)


def _make_head(dim: int, num_classes: int, batchnorm: bool, device: torch.device) -> nn.Module:
    """Linear classifier, weights N(0, 0.01) and zero bias as MoCo ``main_lincls.py``; with
    ``batchnorm`` a parameter-free BatchNorm precedes it (MAE linear probe, ``FINETUNE.md``)."""
    linear = nn.Linear(dim, num_classes)
    nn.init.normal_(linear.weight, std=0.01)
    nn.init.zeros_(linear.bias)
    layers = [nn.BatchNorm1d(dim, affine=False), linear] if batchnorm else [linear]
    return nn.Sequential(*layers).to(device)


@torch.no_grad()
def _encode(encoder: nn.Module, x: torch.Tensor, amp: bool) -> torch.Tensor:
    """Frozen-encoder features of a normalised float batch (channels_last on CUDA), float32 N×D."""
    if x.is_cuda:
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.autocast(device_type=x.device.type, dtype=torch.bfloat16, enabled=amp):
        return encoder(x).flatten(1).float()


@dataclass(frozen=True)
class _SGDConfig:
    """Settings shared by every head trained in one SGD-probe call."""

    epochs: int
    batch_size: int
    dim: int
    num_classes: int
    batchnorm: bool
    seed: int
    device: torch.device
    amp: bool


def _train_head(encoder: nn.Module, images: torch.Tensor, labels: torch.Tensor,
                augment: BatchAugmenter, lr: float, cfg: _SGDConfig) -> nn.Module:
    """Train a linear head on augmented views through the frozen encoder: SGD momentum 0.9,
    wd 0, per-step cosine decay to zero over ``cfg.epochs``; returns the head after the LAST
    step."""
    cpu_gen = torch.Generator().manual_seed(cfg.seed)
    aug_gen = torch.Generator(device=cfg.device).manual_seed(cfg.seed)
    n = images.shape[0]
    total = cfg.epochs * math.ceil(n / cfg.batch_size)
    head = _make_head(cfg.dim, cfg.num_classes, cfg.batchnorm, cfg.device)
    opt = torch.optim.SGD(head.parameters(), lr=lr, momentum=0.9, weight_decay=0.0)
    step = 0
    for _ in range(cfg.epochs):
        for idx in torch.randperm(n, generator=cpu_gen).split(cfg.batch_size):
            x = augment(images[idx].to(cfg.device, non_blocking=True), generator=aug_gen)[0]
            feats = _encode(encoder, x, cfg.amp)
            for group in opt.param_groups:
                group["lr"] = lr * 0.5 * (1.0 + math.cos(math.pi * step / total))
            loss = F.cross_entropy(head(feats), labels[idx].to(cfg.device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
    return head.eval()


@torch.no_grad()
def _head_accuracy(head: nn.Module, features: torch.Tensor, labels: torch.Tensor) -> float:
    """Top-1 accuracy (fraction) of a trained head on precomputed un-augmented features."""
    device = next(head.parameters()).device
    pred = head(features.to(device)).argmax(dim=1).cpu()
    return float((pred == labels.cpu()).float().mean())


def _sweep_lr(encoder: nn.Module, images: torch.Tensor, labels: torch.Tensor,
              augment: BatchAugmenter, lrs: Sequence[float], val_fraction: float,
              cfg: _SGDConfig, extract: dict[str, Any]) -> dict[float, float]:
    """Validation accuracy (last epoch) per lr, all on a stratified split of the TRAIN images."""
    fit_idx, val_idx = (torch.as_tensor(i)
                        for i in train_val_split(labels.numpy(), val_fraction, cfg.seed))
    val_f = extract_features(encoder, images[val_idx], **extract)
    fit_images, fit_y = images[fit_idx], labels[fit_idx]
    grid: dict[float, float] = {}
    for lr in sorted(float(v) for v in lrs):
        head = _train_head(encoder, fit_images, fit_y, augment, lr, cfg)
        grid[lr] = _head_accuracy(head, val_f, labels[val_idx])
    return grid


def sgd_linear_probe(encoder: nn.Module, train_images: torch.Tensor, train_labels: ArrayLike,
                     test_images: torch.Tensor, test_labels: ArrayLike, *,
                     mean: Sequence[float], std: Sequence[float], recipe: ViewRecipe | None = None,
                     epochs: int = 100, lrs: Sequence[float] = DEFAULT_SGD_LRS,
                     batch_size: int = 256, val_fraction: float = 0.2, seed: int = 0,
                     device: str | torch.device = "cpu", sweep_epochs: int | None = None,
                     batchnorm: bool = False, amp: bool = False) -> dict[str, Any]:
    """SGD linear probe of a frozen encoder (MoCo ``main_lincls.py``; solo-learn linear configs).

    The encoder stays in eval mode throughout (BatchNorm statistics frozen, no gradients); a
    linear head is trained on random-resized-crop + flip views (``recipe``'s first crop if given)
    with SGD momentum 0.9, weight decay 0 and a cosine schedule. Because the right lr differs by
    100x between methods, each lr in ``lrs`` (absolute, for ``batch_size``) is trained for
    ``sweep_epochs`` (default ``epochs``) on a stratified split of the TRAIN images and scored on
    the held-out part at its last epoch; the chosen lr is retrained on all training images and
    the LAST epoch is scored once on the test set (never best-on-test). Evaluation views are
    un-augmented (shorter side resized to the crop size, centre crop). ``batchnorm`` puts a
    parameter-free BatchNorm before the head (MAE's linear probe).
    """
    start = time.perf_counter()
    device = torch.device(device)
    y = torch.as_tensor(_numpy(train_labels, np.int64))
    yt = torch.as_tensor(_numpy(test_labels, np.int64))
    crop = _probe_crop(recipe, train_images.shape[-1])
    augment = BatchAugmenter(ViewRecipe((crop,)), mean, std)
    extract = dict(mean=mean, std=std, batch_size=batch_size, device=device,
                   image_size=crop.size, amp=amp)
    with eval_mode(encoder):
        dim = extract_features(encoder, train_images[:1], **extract).shape[1]
        cfg = _SGDConfig(epochs, batch_size, dim, int(max(y.max(), yt.max())) + 1, batchnorm,
                         seed, device, amp)
        sweep_cfg = dataclasses.replace(cfg, epochs=sweep_epochs or epochs)
        grid = _sweep_lr(encoder, train_images, y, augment, lrs, val_fraction, sweep_cfg, extract)
        best_lr = pick_best(grid)
        head = _train_head(encoder, train_images, y, augment, best_lr, cfg)
        top1 = _head_accuracy(head, extract_features(encoder, test_images, **extract), yt)
    return {"top1": top1, "best_lr": best_lr, "val_top1": grid[best_lr], "grid": grid,
            "best_lr_at_grid_edge": best_lr in (min(grid), max(grid)), "epochs": int(epochs),
            "sweep_epochs": int(sweep_cfg.epochs), "batch_size": int(batch_size),
            "val_fraction": float(val_fraction), "optimizer": "sgd", "momentum": 0.9,
            "weight_decay": 0.0, "schedule": "cosine", "head_batchnorm": bool(batchnorm),
            "augmentation": dataclasses.asdict(crop), "reported_epoch": "last", "seed": int(seed),
            "n_train": int(len(y)), "n_test": int(len(yt)), "selection": "val split of train",
            "protocol": "linear_sgd", "seconds": time.perf_counter() - start}
