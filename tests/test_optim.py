"""LARS, lr scaling and the warmup-cosine schedule."""

from __future__ import annotations

import math

import pytest
import torch

from bench.optim import LARS, LRSchedule, build_optimizer, build_schedule, scaled_lr
from methods.base import OptimRecipe


def test_lr_scaling_rules():
    assert scaled_lr(OptimRecipe("lars", 0.3, 0, lr_scaling="linear"), 512) == pytest.approx(0.6)
    assert scaled_lr(OptimRecipe("lars", 0.3, 0, lr_scaling="sqrt"), 1024) == pytest.approx(0.6)
    assert scaled_lr(OptimRecipe("lars", 0.3, 0, lr_scaling="none"), 1024) == pytest.approx(0.3)


def test_schedule_warmup_then_cosine():
    s = LRSchedule(total_steps=100, warmup_steps=10)
    assert s.factor(0) == pytest.approx(0.1)
    assert s.factor(9) == pytest.approx(1.0)
    assert s.factor(10) == pytest.approx(1.0)
    assert s.factor(55) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.5)))
    assert s.factor(100) == pytest.approx(0.0, abs=1e-9)


def test_step_decay_at_budget_fractions():
    r = OptimRecipe("sgd", 0.03, 1e-4, lr_decay="step", step_milestones=(0.6, 0.8))
    s = build_schedule(r, epochs=200, steps_per_epoch=10)  # MoCo v1: x0.1 at epochs 120 and 160
    assert s.milestones == (1200, 1600)
    assert [s.factor(t) for t in (0, 1199, 1200, 1599, 1600, 1999)] == pytest.approx(
        [1, 1, 0.1, 0.1, 0.01, 0.01])
    with pytest.raises(ValueError, match="milestones"):
        build_schedule(OptimRecipe("sgd", 0.03, 0, lr_decay="step"), 10, 10)


def test_warmup_capped_to_fraction_of_short_budgets():
    r = OptimRecipe("lars", 0.3, 1e-6, warmup_epochs=10)
    assert build_schedule(r, epochs=8, steps_per_epoch=10).warmup_steps == 8  # 10% of 80
    assert build_schedule(r, epochs=200, steps_per_epoch=10).warmup_steps == 100


def test_fixed_lr_groups_keep_peak():
    a, b = torch.nn.Parameter(torch.ones(2, 2)), torch.nn.Parameter(torch.ones(2, 2))
    opt = build_optimizer([{"params": [a]}, {"params": [b], "fixed_lr": True}], OptimRecipe("sgd", 0.1, 0), 256)
    LRSchedule(100, 0).apply(opt, 50, 0.1)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.05)
    assert opt.param_groups[1]["lr"] == pytest.approx(0.1)


def test_lars_trust_ratio_and_exclusion():
    w = torch.nn.Parameter(torch.full((4,), 2.0))
    bias = torch.nn.Parameter(torch.full((4,), 2.0))
    opt = LARS([{"params": [w]}, {"params": [bias], "lars_exclude": True, "weight_decay": 0.0}],
               lr=1.0, momentum=0.0, weight_decay=0.0, eta=0.001)
    w.grad = torch.full((4,), 1.0)
    bias.grad = torch.full((4,), 1.0)
    opt.step()
    # ||w|| = 4, ||g|| = 2 → trust = 0.001·4/2 = 0.002
    assert torch.allclose(w, torch.full((4,), 2.0 - 0.002))
    assert torch.allclose(bias, torch.full((4,), 1.0))  # plain SGD step on excluded params
