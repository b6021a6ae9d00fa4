"""SimCLR family (Chen et al. 2020, "A Simple Framework for Contrastive Learning of Visual
Representations"; official code google-research/simclr).

Two views of each image with the SimCLR augmentation, a shared encoder, an MLP projector
and the NT-Xent loss over the 2N views of the batch; negatives come only from the batch.
"""

from __future__ import annotations

from typing import Any

import torch
from pydantic import Field
from torch import nn

from bench.data.augment import ViewRecipe, recipe
from methods.base import Batch, Method, MethodOptions, OptimRecipe, RunContext, StepOutput, register
from methods.heads import mlp_head
from methods.losses import nt_xent


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
        self.temperature = options.temperature or (0.5 if ctx.small_images else 0.1)

    def base_view_recipe(self) -> ViewRecipe:
        # CIFAR: colour strength s=0.5 and no blur (paper App. B.9); ImageNet: s=1 with blur.
        name = "simclr_cifar" if self.ctx.small_images else "simclr"
        return recipe(name, self.ctx.image_size)

    def forward_train(self, batch: Batch) -> StepOutput:
        x1, x2 = batch.views[:2]
        z1 = self.projector(self.backbone(x1))
        z2 = self.projector(self.backbone(x2))
        loss = nt_xent(z1, z2, self.temperature)
        return StepOutput(loss, {})

    def extra_record(self) -> dict[str, Any]:
        return {"temperature": self.temperature, "evaluated_layer": "backbone (pre-projector)"}


def head_blocks(head: nn.Sequential) -> list[nn.Sequential]:
    """Split a flat ``mlp_head`` into its layer blocks: each ends after an activation, the
    last one holds the output Linear and its norm (SimCLR v2's ``nl_0``, ``nl_1``, ``nl_2``)."""
    blocks, current = [], []
    for layer in head:
        current.append(layer)
        if isinstance(layer, (nn.ReLU, nn.GELU, nn.SiLU)):
            blocks.append(nn.Sequential(*current))
            current = []
    if current:
        blocks.append(nn.Sequential(*current))
    return blocks


class MiddleEncoder(nn.Module):
    """Backbone followed by the first projector blocks: SimCLR v2's "fine-tune from the middle".

    Shares the modules of the method (no copy); ``feature_dim`` is the width of the output.
    """

    def __init__(self, backbone: nn.Module, blocks: list[nn.Module], feature_dim: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.blocks = nn.Sequential(*blocks)
        self.feature_dim = feature_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.backbone(x))


class SimCLRv2Options(SimCLROptions):
    ft_proj_selector: int = Field(
        0, ge=-1, le=3,
        description="evaluated layer: 0 = backbone, k = backbone + first k projector blocks, -1 = projector output",
    )


@register("simclrv2")
class SimCLRv2(SimCLR):
    """SimCLR v2 (Chen et al. 2020b, "Big Self-Supervised Models are Strong Semi-Supervised
    Learners"; official ``tf2/model.py``): a 3-layer projector, each layer Linear (no bias) → BN,
    ReLU after the first two (hidden width = encoder width, output 128, last BN without β), and
    the option to evaluate the encoder with the first projector block(s) kept
    (``ft_proj_selector``, as ``hiddens_list[ft_proj_selector]`` in the official code).

    The optional MoCo-style memory of the paper (+~1%) is not in the public code and not here.
    """

    Options = SimCLRv2Options
    # LARS, lr 0.1·√bs (6.4 at bs 4096; paper §4 — the tf2 README default is 0.075·√bs),
    # expressed at bs 256 with √-scaling: 0.1·√256 = 1.6; wd 1e-4; 10-epoch warmup (run.py
    # default); cosine. τ as v1 (0.1 ImageNet, 0.5 at CIFAR scale).
    default_optim = OptimRecipe("lars", base_lr=1.6, weight_decay=1e-4, warmup_epochs=10, lr_scaling="sqrt")
    proj_layers = 3

    def __init__(self, backbone, options: SimCLRv2Options, ctx: RunContext) -> None:
        super().__init__(backbone, options, ctx)
        if options.ft_proj_selector > self.proj_layers:
            raise ValueError(f"ft_proj_selector must be in [-1, {self.proj_layers}], got {options.ft_proj_selector}")

    def evaluated_blocks(self) -> list[nn.Sequential]:
        """The projector blocks kept in the evaluated encoder for ``ft_proj_selector``."""
        k = self.options.ft_proj_selector
        blocks = head_blocks(self.projector)
        return blocks if k == -1 else blocks[:k]

    @property
    def encoder(self) -> nn.Module:
        """The backbone alone (selector 0) or backbone + the first k projector blocks."""
        blocks = self.evaluated_blocks()
        if not blocks:
            return self.backbone
        out = [m for m in blocks[-1] if isinstance(m, nn.Linear)][-1].out_features
        return MiddleEncoder(self.backbone, blocks, out)

    def extra_record(self) -> dict[str, Any]:
        k = self.options.ft_proj_selector
        layer = "backbone (pre-projector)" if k == 0 else ("projector output" if k == -1 else
                                                            f"backbone + first {k} projector block(s)")
        return {"temperature": self.temperature, "proj_layers": self.proj_layers, "ft_proj_selector": k,
                "evaluated_layer": layer}
