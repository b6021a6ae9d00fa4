"""SimSiam (Chen & He 2021, "Exploring Simple Siamese Representation Learning"; official code
facebookresearch/simsiam, ``simsiam/builder.py`` and ``main_simsiam.py``).

One encoder (backbone + projector) embeds both views; a bottleneck predictor maps each
embedding to a prediction of the other view's embedding, whose gradient is stopped:
L = −½·cos(p₁, sg(z₂)) − ½·cos(p₂, sg(z₁)). No negatives, no momentum encoder.

* Projector: [Linear(d, d, no bias) → BN → ReLU] × 2 → Linear(d, 2048) → BN(affine=False)
  (the official output Linear's bias is frozen, which the affine-free BN makes redundant,
  so it has none here); d = encoder width in the paper (2048 for ResNet-50).
* Predictor: Linear(2048, 512, no bias) → BN → ReLU → Linear(512, 2048), no output BN.
* ``fix_pred_lr`` (the official ``--fix-pred-lr``, used by the README's recipe): the
  predictor's parameter group keeps the peak lr (``fixed_lr: True``), not the cosine decay.
* Zero-initialised residual branches are a backbone option
  (``backbone: {options: {zero_init_residual: true}}`` in a suite), not a method option.
"""

from __future__ import annotations

from typing import Any

import torch
from pydantic import Field

from bench.data.augment import ViewRecipe, recipe
from methods.base import Batch, Method, MethodOptions, OptimRecipe, RunContext, StepOutput, register
from methods.heads import mlp_head
from methods.losses import negative_cosine


class SimSiamOptions(MethodOptions):
    proj_hidden: int | None = Field(None, gt=0, description="projector hidden width; default = encoder width")
    proj_dim: int = Field(2048, gt=0, description="projector output width (the paper's `dim`)")
    pred_hidden: int | None = Field(None, gt=0, description="predictor bottleneck; default proj_dim/4 (512)")
    fix_pred_lr: bool = Field(True, description="predictor keeps the peak lr (official --fix-pred-lr)")


@register("simsiam")
class SimSiam(Method):
    """SimSiam: symmetric negative cosine between predictions and stop-gradient projections."""

    Options = SimSiamOptions
    # SGD lr 0.05·bs/256, momentum 0.9, wd 1e-4 on every parameter, cosine, no warmup.
    default_optim = OptimRecipe("sgd", base_lr=0.05, weight_decay=1e-4, warmup_epochs=0)

    def __init__(self, backbone, options: SimSiamOptions, ctx: RunContext) -> None:
        super().__init__(backbone, options, ctx)
        width = backbone.feature_dim
        hidden, dim = options.proj_hidden or width, options.proj_dim
        self.projector = mlp_head([width, hidden, hidden, dim], norm=options.head_norm, last_norm="bn_noaffine")
        bottleneck = options.pred_hidden or max(1, dim // 4)
        self.predictor = mlp_head([dim, bottleneck, dim], norm=options.head_norm)

    def base_view_recipe(self) -> ViewRecipe:
        return recipe("simsiam", self.ctx.image_size)

    def param_groups(self) -> list[dict[str, Any]]:
        """Encoder group and predictor group (fixed lr with ``fix_pred_lr``); as the official
        optimizer, weight decay applies to every parameter, norms and biases included."""
        pred = {id(p) for p in self.predictor.parameters()}
        rest = [p for p in self.parameters() if p.requires_grad and id(p) not in pred]
        predictor = [p for p in self.predictor.parameters() if p.requires_grad]
        return [{"name": "encoder", "params": rest},
                {"name": "predictor", "params": predictor, "fixed_lr": self.options.fix_pred_lr}]

    def forward_train(self, batch: Batch) -> StepOutput:
        x1, x2 = batch.views[:2]
        z1 = self.projector(self.backbone(x1))
        z2 = self.projector(self.backbone(x2))
        p1, p2 = self.predictor(z1), self.predictor(z2)
        loss = 0.5 * (negative_cosine(p1, z2) + negative_cosine(p2, z1))  # sg(z) inside
        with torch.no_grad():  # healthy ≈ 1/√d per channel, 0 when collapsed (paper §4)
            z_std = torch.nn.functional.normalize(z1.float(), dim=1).std(dim=0).mean().item()
        return StepOutput(loss, {"z_std": z_std})

    def extra_record(self) -> dict[str, Any]:
        return {"fix_pred_lr": self.options.fix_pred_lr, "proj_dim": self.options.proj_dim,
                "pred_hidden": self.predictor[0].out_features, "evaluated_layer": "backbone (pre-projector)"}
