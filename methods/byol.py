"""BYOL (Grill et al. 2020, "Bootstrap Your Own Latent"; official code deepmind-research/byol).

An online network (encoder → projector → predictor) regresses the output of a target
network (EMA of encoder → projector) on the other, asymmetrically augmented view. The
target gets no gradient and is updated *after* the optimizer step with a cosine momentum
schedule τ_k = 1 − (1 − τ_base)(cos(πk/K) + 1)/2.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch
from pydantic import Field

from bench.data.augment import ViewRecipe, recipe
from methods.base import (
    Batch,
    Method,
    MethodOptions,
    OptimRecipe,
    RunContext,
    StepOutput,
    cosine_momentum,
    ema_update,
    frozen_copy,
    register,
)
from methods.heads import mlp_head
from methods.losses import normalized_mse
from torch import nn


def default_base_momentum(epochs: int) -> float:
    """τ_base of the official configs by budget: 0.97 (40 ep), 0.99 (100/300 ep), 0.996 (1000 ep)."""
    if epochs <= 40:
        return 0.97
    return 0.99 if epochs <= 300 else 0.996


class BYOLOptions(MethodOptions):
    proj_hidden: int = Field(4096, gt=0)
    proj_dim: int = Field(256, gt=0)
    base_momentum: float | None = Field(
        None, ge=0, le=1,
        description="τ_base; default 0.97 up to 40 epochs, 0.99 up to 300, 0.996 beyond (official presets)",
    )


@register("byol")
class BYOL(Method):
    """BYOL: online encoder+projector+predictor regress an EMA target's projection."""

    Options = BYOLOptions
    # LARS (η 1e-3, no wd/adaptation on biases and norms), lr 0.2·bs/256, wd 1.5e-6, 10-ep warmup.
    default_optim = OptimRecipe("lars", base_lr=0.2, weight_decay=1.5e-6, warmup_epochs=10)

    def __init__(self, backbone, options: BYOLOptions, ctx: RunContext) -> None:
        super().__init__(backbone, options, ctx)
        width = backbone.feature_dim
        head = dict(norm=options.head_norm)
        self.projector = mlp_head([width, options.proj_hidden, options.proj_dim], **head)
        self.predictor = mlp_head([options.proj_dim, options.proj_hidden, options.proj_dim], **head)
        self.target = frozen_copy(nn.ModuleDict({"backbone": backbone, "projector": self.projector}))
        self.base_momentum = options.base_momentum or default_base_momentum(ctx.epochs)
        self.momentum = self.base_momentum

    def published_optim(self) -> OptimRecipe:
        # Presets of the official configs: lr 0.45 / wd 1e-6 for ≤100 epochs, 0.3 / 1e-6 at 300.
        if self.ctx.epochs <= 100:
            return replace(self.default_optim, base_lr=0.45, weight_decay=1e-6)
        if self.ctx.epochs <= 300:
            return replace(self.default_optim, base_lr=0.3, weight_decay=1e-6)
        return self.default_optim

    def base_view_recipe(self) -> ViewRecipe:
        # Asymmetric pair (blur 1.0/0.1, solarize 0/0.2); at CIFAR scale without blur (solo-learn).
        return recipe("byol_cifar" if self.ctx.small_images else "byol", self.ctx.image_size)

    def online(self, x: torch.Tensor) -> torch.Tensor:
        return self.predictor(self.projector(self.backbone(x)))

    @torch.no_grad()
    def target_projection(self, x: torch.Tensor) -> torch.Tensor:
        return self.target["projector"](self.target["backbone"](x))

    def forward_train(self, batch: Batch) -> StepOutput:
        x1, x2 = batch.views[:2]
        p1, p2 = self.online(x1), self.online(x2)
        z1, z2 = self.target_projection(x1), self.target_projection(x2)
        loss = normalized_mse(p1, z2) + normalized_mse(p2, z1)
        return StepOutput(loss, {"momentum": self.momentum})

    @torch.no_grad()
    def on_step_end(self, step: int, progress: float) -> None:
        # After the optimizer step: ξ ← τξ + (1−τ)θ with τ for the step just taken.
        self.momentum = cosine_momentum(self.base_momentum, progress)
        ema_update(self.target["backbone"], self.backbone, self.momentum)
        ema_update(self.target["projector"], self.projector, self.momentum)

    def extra_record(self) -> dict[str, Any]:
        return {"base_momentum": self.base_momentum, "evaluated_layer": "online backbone"}
