"""Optimizers and learning-rate schedules built from a method's ``OptimRecipe``.

The harness owns these: a method only declares its recipe and its parameter groups.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch.optim import Optimizer

from methods.base import OptimRecipe


class LARS(Optimizer):
    """LARS (You et al. 2017, "Large Batch Training of Convolutional Networks").

    SGD with momentum where each parameter's update is scaled by the trust ratio
    η·‖w‖ / (‖g‖ + wd·‖w‖). Groups with ``lars_exclude=True`` (biases and norms) skip
    both the adaptation and weight decay, as in SimCLR/BYOL/MoCo v3's official code.
    """

    def __init__(self, params, lr: float, momentum: float = 0.9, weight_decay: float = 0.0, eta: float = 1e-3):
        defaults = dict(lr=lr, momentum=momentum, weight_decay=weight_decay, eta=eta, lars_exclude=False)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad
                if not group["lars_exclude"]:
                    if group["weight_decay"]:
                        grad = grad.add(p, alpha=group["weight_decay"])
                    w_norm, g_norm = torch.norm(p), torch.norm(grad)
                    trust = torch.where(
                        (w_norm > 0) & (g_norm > 0), group["eta"] * w_norm / g_norm, torch.ones_like(w_norm)
                    )
                    grad = grad.mul(trust)
                buf = self.state[p].get("momentum_buffer")
                if buf is None:
                    buf = self.state[p]["momentum_buffer"] = grad.clone()
                else:
                    buf.mul_(group["momentum"]).add_(grad)
                p.add_(buf, alpha=-group["lr"])
        return loss


def scaled_lr(recipe: OptimRecipe, batch_size: int) -> float:
    """Peak learning rate for this batch size (linear or square-root scaling from 256)."""
    factor = {"linear": batch_size / 256, "sqrt": math.sqrt(batch_size / 256), "none": 1.0}[recipe.lr_scaling]
    return recipe.base_lr * factor


def build_optimizer(param_groups: list[dict[str, Any]], recipe: OptimRecipe, batch_size: int) -> Optimizer:
    """Instantiate the recipe's optimizer; group-level ``weight_decay`` overrides the recipe's."""
    lr = scaled_lr(recipe, batch_size)
    groups = []
    for g in param_groups:
        if not g["params"]:
            continue
        group = {k: v for k, v in g.items() if k not in ("weight_decay",)}
        group["weight_decay"] = recipe.weight_decay if g.get("weight_decay") is None else g["weight_decay"]
        group.setdefault("fixed_lr", False)
        group["lr_scale"] = g.get("lr_scale", 1.0)
        if recipe.optimizer != "lars":
            group.pop("lars_exclude", None)
        groups.append(group)
    if recipe.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=recipe.momentum)
    if recipe.optimizer == "lars":
        return LARS(groups, lr=lr, momentum=recipe.momentum, eta=recipe.lars_eta)
    if recipe.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=lr, betas=recipe.betas)
    if recipe.optimizer == "adam":
        return torch.optim.Adam(groups, lr=lr, betas=recipe.betas)
    raise ValueError(f"unknown optimizer {recipe.optimizer!r}; allowed: sgd, lars, adamw, adam")


@dataclass(frozen=True)
class LRSchedule:
    """Per-step schedule: linear warmup from 0 to the peak, then either cosine to
    ``min_ratio``·peak or, when ``milestones`` (steps) are given, a step decay that multiplies
    the peak by ``gamma`` at each milestone passed.

    Groups flagged ``fixed_lr`` (SimSiam's predictor) keep the peak lr throughout.
    """

    total_steps: int
    warmup_steps: int
    min_ratio: float = 0.0
    milestones: tuple[int, ...] = ()
    gamma: float = 0.1

    def factor(self, step: int) -> float:
        if self.warmup_steps and step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        if self.milestones:
            return self.gamma ** sum(step >= m for m in self.milestones)
        span = max(1, self.total_steps - self.warmup_steps)
        t = min(1.0, (step - self.warmup_steps) / span)
        return self.min_ratio + (1 - self.min_ratio) * 0.5 * (1 + math.cos(math.pi * t))

    def apply(self, optimizer: Optimizer, step: int, peak_lr: float) -> float:
        """Set every group's lr for ``step``; returns the scheduled (non-fixed) lr."""
        lr = peak_lr * self.factor(step)
        for g in optimizer.param_groups:
            g["lr"] = (peak_lr if g.get("fixed_lr") else lr) * g.get("lr_scale", 1.0)
        return lr


def build_schedule(recipe: OptimRecipe, epochs: int, steps_per_epoch: int, max_warmup_fraction: float = 0.1) -> LRSchedule:
    """Warmup of the recipe's epochs, capped at ``max_warmup_fraction`` of the budget.

    A 10-epoch warmup is part of 100–1000-epoch recipes; on a 10-epoch CPU budget the cap
    keeps the schedule's shape instead of spending the whole run warming up.
    """
    total = max(1, epochs * steps_per_epoch)
    warmup = int(round(min(recipe.warmup_epochs * steps_per_epoch, max_warmup_fraction * total)))
    if recipe.lr_decay == "step":
        if not recipe.step_milestones or not all(0 < f < 1 for f in recipe.step_milestones):
            raise ValueError(f"lr_decay 'step' needs the recipe's step_milestones as fractions in (0, 1), got "
                             f"{recipe.step_milestones}; use lr_decay: cosine for a method that declares none")
        milestones = tuple(int(round(f * total)) for f in sorted(recipe.step_milestones))
        return LRSchedule(total, warmup, milestones=milestones, gamma=recipe.step_gamma)
    return LRSchedule(total_steps=total, warmup_steps=warmup, min_ratio=recipe.min_lr_ratio)
