"""Representation-collapse diagnostics on a matrix of embeddings (N×D)."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["collapse_indicator", "effective_rank"]


def _to_float64(features: torch.Tensor | np.ndarray) -> torch.Tensor:
    """Embeddings as a float64 N×D tensor (numerically stable statistics)."""
    t = features if isinstance(features, torch.Tensor) else torch.from_numpy(np.asarray(features))
    t = t.detach().to(torch.float64)
    if t.ndim != 2 or t.shape[0] < 2:
        raise ValueError(f"need an N×D matrix with N >= 2, got shape {tuple(t.shape)}")
    return t


def collapse_indicator(features: torch.Tensor | np.ndarray) -> float:
    """Mean per-dimension std of the L2-normalised embeddings, times sqrt(D).

    SimSiam (Chen & He 2021, §4 "the std of the l2-normalized output") shows that a collapsed
    encoder gives std 0 while an isotropic Gaussian output gives std 1/sqrt(D); solo-learn logs the
    same statistic. Multiplying by sqrt(D) makes ~1 mean healthy (isotropic, zero-centred) and ~0
    mean collapsed, comparable across widths. Non-centred features (e.g. post-ReLU pooled
    backbone features) score below 1 even when healthy, so compare like with like.
    """
    z = F.normalize(_to_float64(features), dim=1)
    return float(z.std(dim=0, unbiased=True).mean() * math.sqrt(z.shape[1]))


def effective_rank(features: torch.Tensor | np.ndarray, eps: float = 1e-7) -> float:
    """RankMe effective rank (Garrido et al. 2023): exp of the entropy of the singular values
    normalised to sum to one (``p_k = s_k / ||s||_1 + eps``). Equals D for a matrix with D
    equal singular values (e.g. the identity) and 1 for a rank-one (collapsed) matrix."""
    s = torch.linalg.svdvals(_to_float64(features))
    total = s.sum()
    if total <= 0:
        return 0.0
    p = s / total + eps
    return float(torch.exp(-(p * p.log()).sum()))
