"""Weighted k-nearest-neighbour classification on frozen features.

The protocol of Wu et al. 2018 (InstDisc, ``lemniscate.pytorch``), used by the MoCo CIFAR
demo and DINO's ``eval_knn.py``: L2-normalised features, cosine similarity, the k most similar
training samples vote for their class with weight ``exp(sim / T)``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["knn_classify", "knn_protocols", "KNN_SETTINGS"]

ArrayLike = torch.Tensor | np.ndarray

#: (result-key prefix, k, temperature): CIFAR setting (InstDisc / MoCo demo) and ImageNet (DINO).
KNN_SETTINGS: tuple[tuple[str, int, float], ...] = (("knn", 200, 0.1), ("knn20", 20, 0.07))


def _as_tensor(x: ArrayLike, dtype: torch.dtype,
               device: torch.device | None = None) -> torch.Tensor:
    """Tensor view of an array or tensor, cast to ``dtype`` (on ``device`` when given)."""
    t = x if isinstance(x, torch.Tensor) else torch.from_numpy(np.asarray(x))
    return t.to(device=device if device is not None else t.device, dtype=dtype)


def _class_scores(sim: torch.Tensor, idx: torch.Tensor, train_y: torch.Tensor,
                  temperature: float, num_classes: int) -> torch.Tensor:
    """Sum of ``exp(sim/T)`` votes per class for one chunk of queries (chunk×num_classes)."""
    weights = (sim / temperature).exp()
    neighbour_labels = train_y[idx]
    scores = torch.zeros(sim.shape[0], num_classes, device=sim.device, dtype=weights.dtype)
    return scores.scatter_add_(1, neighbour_labels, weights)


@torch.no_grad()
def knn_classify(train_features: ArrayLike, train_labels: ArrayLike, test_features: ArrayLike,
                 test_labels: ArrayLike, *, k: int = 200, temperature: float = 0.1,
                 num_classes: int | None = None, chunk_size: int = 1024) -> dict[str, Any]:
    """Weighted kNN top-1/top-5 accuracy (fractions) of test features against train features.

    Both sets are L2-normalised; each test sample takes its ``k`` most cosine-similar training
    samples (all of them when ``k`` exceeds the training set) and each neighbour adds
    ``exp(sim / temperature)`` to its class (InstDisc / MoCo CIFAR demo). Computation runs on the
    device of ``train_features`` in chunks of ``chunk_size`` queries to bound memory.
    """
    train = F.normalize(_as_tensor(train_features, torch.float32), dim=1)
    device = train.device
    test = F.normalize(_as_tensor(test_features, torch.float32, device), dim=1)
    train_y = _as_tensor(train_labels, torch.long, device)
    test_y = _as_tensor(test_labels, torch.long, device)
    if num_classes is None:
        num_classes = int(max(train_y.max().item(), test_y.max().item())) + 1
    k_eff = min(k, train.shape[0])
    top_n = min(5, num_classes)
    correct1 = correct5 = 0
    for start in range(0, test.shape[0], chunk_size):
        sim, idx = (test[start:start + chunk_size] @ train.T).topk(k_eff, dim=1)
        pred = _class_scores(sim, idx, train_y, temperature, num_classes).topk(top_n, dim=1).indices
        hits = pred == test_y[start:start + chunk_size, None]
        correct1 += int(hits[:, 0].sum())
        correct5 += int(hits.any(dim=1).sum())
    n_test = test.shape[0]
    return {"top1": correct1 / n_test, "top5": correct5 / n_test, "k": int(k),
            "k_effective": k_eff, "temperature": float(temperature),
            "n_train": int(train.shape[0]), "n_test": int(n_test)}


def knn_protocols(train_f: ArrayLike, train_y: ArrayLike, test_f: ArrayLike, test_y: ArrayLike,
                  num_classes: int) -> dict[str, Any]:
    """Both standard kNN settings in one flat record: k=200, T=0.1 (``knn_*``, CIFAR, InstDisc /
    MoCo demo) and k=20, T=0.07 (``knn20_*``, ImageNet style, DINO), each with its settings."""
    out: dict[str, Any] = {"knn_similarity": "cosine", "knn_weighting": "exp(sim/T)"}
    for prefix, k, temperature in KNN_SETTINGS:
        res = knn_classify(train_f, train_y, test_f, test_y, k=k, temperature=temperature,
                           num_classes=num_classes)
        out.update({f"{prefix}_top1": res["top1"], f"{prefix}_top5": res["top5"],
                    f"{prefix}_k": res["k"], f"{prefix}_temperature": res["temperature"]})
        out["knn_n_train"], out["knn_n_test"] = res["n_train"], res["n_test"]
    return out
