"""Projection / prediction heads built from a list of layer widths.

As in lightly, a head is a list of blocks and normalisation is one argument, so the "BN in
heads" ablation is a single suite field (``head_norm``):

- ``"bn"``    BatchNorm1d after each hidden Linear (SimCLR, BYOL, SimSiam, MoCo v3 ...)
- ``"none"``  no normalisation anywhere in the head (hidden Linears regain their bias)
- ``"gn_ws"`` GroupNorm + weight-standardised Linear, which recovers BYOL without BN
  (Richemond et al. 2020, "BYOL works even without batch statistics").
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

LastNorm = Literal["none", "bn", "bn_noaffine", "bn_nobeta"]


class WSLinear(nn.Linear):
    """Linear layer with weight standardisation (Qiao et al. 2019) over each output row."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight
        w = (w - w.mean(dim=1, keepdim=True)) / (w.var(dim=1, keepdim=True, unbiased=False) + 1e-5).sqrt()
        return F.linear(x, w, self.bias)


def _groups_for(width: int, target: int = 32) -> int:
    """Largest divisor of ``width`` that is ≤ ``target`` (GroupNorm needs divisibility)."""
    for g in range(min(target, width), 0, -1):
        if width % g == 0:
            return g
    return 1


def _hidden_block(d_in: int, d_out: int, norm: str, act: type[nn.Module]) -> list[nn.Module]:
    if norm == "bn":
        return [nn.Linear(d_in, d_out, bias=False), nn.BatchNorm1d(d_out), act()]
    if norm == "gn_ws":
        return [WSLinear(d_in, d_out, bias=False), nn.GroupNorm(_groups_for(d_out), d_out), act()]
    if norm == "none":
        return [nn.Linear(d_in, d_out), act()]
    raise ValueError(f"unknown head norm {norm!r}; allowed: bn, none, gn_ws")


def _last_norm(width: int, kind: LastNorm, norm: str) -> list[nn.Module]:
    """Optional normalisation after the output Linear; dropped entirely when norm='none'."""
    if kind == "none" or norm == "none":
        return []
    if norm == "gn_ws":
        return [nn.GroupNorm(_groups_for(width), width, affine=kind != "bn_noaffine")]
    if kind == "bn":
        return [nn.BatchNorm1d(width)]
    if kind == "bn_noaffine":
        return [nn.BatchNorm1d(width, affine=False)]
    if kind == "bn_nobeta":  # SimCLR: last BN has a scale γ but no centre β
        bn = nn.BatchNorm1d(width)
        nn.init.zeros_(bn.bias)
        bn.bias.requires_grad_(False)
        return [bn]
    raise ValueError(f"unknown last norm {kind!r}")


def mlp_head(
    dims: Sequence[int],
    *,
    norm: str = "bn",
    last_norm: LastNorm = "none",
    last_bias: bool = True,
    act: type[nn.Module] = nn.ReLU,
) -> nn.Sequential:
    """An MLP ``dims[0] → … → dims[-1]``: hidden blocks Linear→Norm→Act, then a Linear.

    ``dims=(512, 128)`` is a linear head (MoCo v1). ``last_bias`` is forced off when a
    normalisation follows the output Linear (the norm's shift makes a bias redundant).
    """
    if len(dims) < 2:
        raise ValueError(f"a head needs at least input and output widths, got {list(dims)}")
    layers: list[nn.Module] = []
    for d_in, d_out in zip(dims[:-2], dims[1:-1]):
        layers += _hidden_block(d_in, d_out, norm, act)
    tail = _last_norm(dims[-1], last_norm, norm)
    linear_cls = WSLinear if (norm == "gn_ws" and len(dims) > 2) else nn.Linear
    layers.append(linear_cls(dims[-2], dims[-1], bias=last_bias and not tail))
    return nn.Sequential(*layers + tail)


def linear_count(head: nn.Module) -> int:
    """Number of Linear layers in a head (SimCLR v2's projector has 3)."""
    return sum(isinstance(m, nn.Linear) for m in head.modules())
