"""Reference rows of every leaderboard: the floor (random init) and the ceiling (supervised).

Both are ordinary method plugins, so the harness treats them like any other run.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from bench.data.augment import CropSpec, ViewRecipe
from methods.base import Batch, Method, MethodOptions, OptimRecipe, RunContext, StepOutput, register


def crop_flip_recipe(size: int) -> ViewRecipe:
    """Standard supervised augmentation: random resized crop (0.2–1) and flip, no colour."""
    return ViewRecipe((CropSpec(size, scale=(0.2, 1.0), jitter_p=0.0, gray_p=0.0),))


@register("random")
class RandomInit(Method):
    """A randomly initialised encoder, evaluated without training: the floor of every table."""

    requires_training = False

    def base_view_recipe(self) -> ViewRecipe:
        return crop_flip_recipe(self.ctx.image_size)

    def forward_train(self, batch: Batch) -> StepOutput:
        raise RuntimeError("the random-init reference row is never trained")

    def extra_record(self) -> dict[str, Any]:
        return {"evaluated_layer": "backbone at initialisation"}


@register("supervised")
class Supervised(Method):
    """Cross-entropy on labels with the same backbone and budget: the ceiling.

    SGD lr 0.1·bs/256, momentum 0.9, wd 5e-4, cosine: the usual CIFAR ResNet recipe.
    """

    uses_labels = True
    default_optim = OptimRecipe("sgd", base_lr=0.1, weight_decay=5e-4, warmup_epochs=0)

    def __init__(self, backbone, options: MethodOptions, ctx: RunContext) -> None:
        super().__init__(backbone, options, ctx)
        self.classifier = nn.Linear(backbone.feature_dim, ctx.num_classes)

    def base_view_recipe(self) -> ViewRecipe:
        return crop_flip_recipe(self.ctx.image_size)

    def forward_train(self, batch: Batch) -> StepOutput:
        logits = self.classifier(self.backbone(batch.views[0]))
        loss = F.cross_entropy(logits.float(), batch.labels)
        with torch.no_grad():
            acc = (logits.argmax(1) == batch.labels).float().mean().item()
        return StepOutput(loss, {"train_acc": acc})

    def extra_record(self) -> dict[str, Any]:
        return {"evaluated_layer": "backbone (pre-classifier)"}
