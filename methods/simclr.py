"""SimCLR family (Chen et al. 2020, "A Simple Framework for Contrastive Learning of Visual
Representations"; official code google-research/simclr).

Two views of each image with the SimCLR augmentation, a shared encoder, an MLP projector
and the NT-Xent loss over the 2N views of the batch; negatives come only from the batch.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field

from bench.data.augment import ViewRecipe, recipe
from methods.base import Batch, Method, MethodOptions, OptimRecipe, RunContext, StepOutput, register
from methods.heads import mlp_head
from methods.losses import nt_xent


def small_images(ctx: RunContext) -> bool:
    """CIFAR-scale inputs (≤ 64 px), where the official code switches to its CIFAR settings."""
    return ctx.image_size <= 64


class SimCLROptions(MethodOptions):
    temperature: float | None = Field(
        None, gt=0, description="τ; default 0.1 at ImageNet scale, 0.5 for ≤64 px (official CIFAR setting)"
    )
    proj_hidden: int | None = Field(None, gt=0, description="projector hidden width; default = encoder width")
    proj_dim: int = Field(128, gt=0)


@register("simclr")
class SimCLR(Method):
    """SimCLR v1: projector g(h) = BN(W₂·ReLU(BN(W₁h))), bias-free Linears, last BN without β."""

    Options = SimCLROptions
    # LARS, lr 0.3·bs/256, wd 1e-6, 10-epoch warmup, cosine (paper App. B.1).
    default_optim = OptimRecipe("lars", base_lr=0.3, weight_decay=1e-6, warmup_epochs=10)
    proj_layers = 2

    def __init__(self, backbone, options: SimCLROptions, ctx: RunContext) -> None:
        super().__init__(backbone, options, ctx)
        width = backbone.feature_dim
        hidden = options.proj_hidden or width
        dims = [width] + [hidden] * (self.proj_layers - 1) + [options.proj_dim]
        self.projector = mlp_head(dims, norm=options.head_norm, last_norm="bn_nobeta")
        self.temperature = options.temperature or (0.5 if small_images(ctx) else 0.1)

    def base_view_recipe(self) -> ViewRecipe:
        # CIFAR: colour strength s=0.5 and no blur (paper App. B.9); ImageNet: s=1 with blur.
        name = "simclr_cifar" if small_images(self.ctx) else "simclr"
        return recipe(name, self.ctx.image_size)

    def forward_train(self, batch: Batch) -> StepOutput:
        x1, x2 = batch.views[:2]
        z1 = self.projector(self.backbone(x1))
        z2 = self.projector(self.backbone(x2))
        loss = nt_xent(z1, z2, self.temperature)
        return StepOutput(loss, {})

    def extra_record(self) -> dict[str, Any]:
        return {"temperature": self.temperature, "evaluated_layer": "backbone (pre-projector)"}
