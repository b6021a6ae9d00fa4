"""MoCo v1 and v2 (He et al. 2019, "Momentum Contrast for Unsupervised Visual Representation
Learning"; Chen et al. 2020, "Improved Baselines with Momentum Contrastive Learning";
official code facebookresearch/moco, ``moco/builder.py``).

A query encoder f_q (backbone + head) is trained with InfoNCE against one positive key and
K negative keys held in a FIFO queue. Keys come from a key encoder f_k, a momentum copy of
f_q that gets no gradient. Per step, in the official order:

1. q = f_q(x_q);
2. under no-grad: θ_k ← m·θ_k + (1 − m)·θ_q (BEFORE the keys), shuffle the key batch,
   k = f_k, unshuffle (shuffle-BN, so BN statistics cannot leak the positive);
3. logits against the OLD queue, loss = CE(logits/τ, 0);
4. enqueue the (all-gathered) keys, advance the pointer.

v2 differs from v1 only by a 2-layer MLP head (no BN), τ = 0.2, the stronger augmentation
and a cosine schedule (``--mlp --moco-t 0.2 --aug-plus --cos``).

Sizing from the data (RunContext), when the options leave them unset:

* **Queue length** ``K = B·⌊min(65536, N/8) / B⌋`` (at least one batch B): the queue spans at
  most 1/8 of an epoch. With ImageNet (N = 1.28M) the cap gives the paper's 65,536 (5% of
  the data); CIFAR-10 gives 6,144 at B = 128 (lightly uses 4,096); a 4,000-image subset
  gives 384. A queue near or above N would hold stale keys of the very images being
  queried (false negatives) from an encoder many steps old.
* **Key momentum** ``m = clip(1 − 1/T, 0.9, 0.999)`` with the EMA horizon ``T`` = 1/5 of an
  epoch in steps: ImageNet at bs 256 (5,005 steps/epoch) gives the paper's 0.999 (T ≈ 1,000
  steps), full CIFAR-10 at bs 128 gives 0.987 (lightly/solo-learn use 0.99). The queue age
  (1/8 epoch) then stays below the horizon, as in the paper (256 vs 1,000 steps), so the
  queued keys come from a nearly consistent encoder, and the key encoder still follows the
  query encoder on a short budget (m = 0.999 on a 300-step run would leave f_k at its init).

Both resolved values are kept in ``extra_record()``.

Shuffle-BN on one device is emulated as in the official CIFAR demo (SplitBatchNorm): both
encoders run the batch in G sub-batches with separate BN statistics (G "virtual GPUs" of ~32
images, as 256 images over 8 GPUs); the key batch is randomly permuted before the split and
un-permuted after. When ``torch.distributed`` is initialised with more than one process, the
key batch is shuffled across ranks instead (all_gather, a permutation broadcast from rank 0,
then each rank keeps its slice), and keys are gathered before the enqueue.

v1 decays its lr in steps (× 0.1 at epochs 120 and 160 of 200), declared as milestones at 60%
and 80% of the budget; v2 decays with a cosine.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from bench.data.augment import ViewRecipe, recipe
from methods.base import (
    Batch,
    HeadNorm,
    Method,
    MethodOptions,
    OptimRecipe,
    RunContext,
    StepOutput,
    distributed_world,
    ema_update,
    frozen_copy,
    register,
)
from methods.heads import mlp_head
from methods.losses import info_nce_queue

#: Largest queue (the paper's K) and the fraction of an epoch the queue may span.
PAPER_QUEUE = 65536
QUEUE_EPOCH_FRACTION = 1 / 8
#: EMA horizon 1/(1 − m) as a fraction of an epoch, and the momentum's allowed range.
MOMENTUM_EPOCH_FRACTION = 1 / 5
MOMENTUM_RANGE = (0.9, 0.999)
#: Images per BN sub-batch in the one-device shuffle-BN emulation (256 over 8 GPUs) and the cap.
IMAGES_PER_BN_SPLIT = 32
MAX_BN_SPLITS = 8


def default_queue_size(dataset_size: int, batch_size: int) -> int:
    """K = B·⌊min(65536, N/8)/B⌋, at least B (see the module docstring for why)."""
    cap = min(PAPER_QUEUE, dataset_size * QUEUE_EPOCH_FRACTION)
    return batch_size * max(1, int(cap // batch_size))


def default_key_momentum(steps_per_epoch: int) -> float:
    """m = clip(1 − 1/T, 0.9, 0.999) with T = steps_per_epoch/5 (EMA horizon of 1/5 epoch)."""
    horizon = max(1.0, steps_per_epoch * MOMENTUM_EPOCH_FRACTION)
    return min(MOMENTUM_RANGE[1], max(MOMENTUM_RANGE[0], 1.0 - 1.0 / horizon))


def default_bn_splits(batch_size: int) -> int:
    """G = clip(B/32, 1, 8): sub-batches of ~32 images, like the official 8 × 32 = 256."""
    return max(1, min(MAX_BN_SPLITS, batch_size // IMAGES_PER_BN_SPLIT))


@torch.no_grad()
def concat_all_gather(x: torch.Tensor) -> torch.Tensor:
    """All-gather ``x`` along dim 0 from every rank (no gradient), as ``moco/builder.py``."""
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts, dim=0)


class MoCoOptions(MethodOptions):
    # The paper's heads have no BN (v1 linear, v2 Linear-ReLU-Linear), so "none" is the default.
    head_norm: HeadNorm = Field("none", description="normalisation in the head: none (paper) | bn | gn_ws")
    temperature: float | None = Field(None, gt=0, description="τ; default 0.07 (v1) or 0.2 (v2)")
    queue_size: int | None = Field(None, gt=0, description="K; default B·⌊min(65536, N/8)/B⌋")
    momentum: float | None = Field(None, ge=0, le=1, description="key momentum m; default from steps/epoch")
    proj_dim: int = Field(128, gt=0)
    proj_hidden: int | None = Field(None, gt=0, description="v2 MLP hidden width; default = encoder width")
    shuffle_bn: bool = Field(True, description="shuffle keys across BN groups (one device) or ranks")
    bn_splits: int | None = Field(None, gt=0, description="BN sub-batches G on one device; default B/32 in [1, 8]")


class MoCo(Method):
    """MoCo family base: query/key encoders, queue, shuffle-BN; subclasses set head and τ."""

    Options = MoCoOptions
    # SGD lr 0.03 at bs 256 (the README's 0.015 at bs 128 is linear scaling), momentum 0.9,
    # wd 1e-4 on every parameter, no warmup (main_moco.py).
    default_optim = OptimRecipe("sgd", base_lr=0.03, weight_decay=1e-4, warmup_epochs=0)
    decay_all_params = True  # ``SGD(model.parameters())`` in main_moco.py
    use_mlp: bool = False
    default_temperature: float = 0.07
    recipe_name: str = "mocov1"

    def __init__(self, backbone, options: MoCoOptions, ctx: RunContext) -> None:
        super().__init__(backbone, options, ctx)
        width = backbone.feature_dim
        dims = [width, options.proj_hidden or width, options.proj_dim] if self.use_mlp else [width, options.proj_dim]
        self.projector = mlp_head(dims, norm=options.head_norm)
        self.key_encoder = frozen_copy(nn.ModuleDict({"backbone": backbone, "projector": self.projector}))
        self.temperature = options.temperature or self.default_temperature
        self.momentum = options.momentum if options.momentum is not None else default_key_momentum(ctx.steps_per_epoch)
        self.queue_size = options.queue_size or default_queue_size(ctx.dataset_size, ctx.batch_size)
        self.bn_splits = options.bn_splits or default_bn_splits(ctx.batch_size)
        # Queue D×K initialised randn and L2-normalised along D, as the official code.
        self.register_buffer("queue", F.normalize(torch.randn(options.proj_dim, self.queue_size), dim=0))
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))

    def base_view_recipe(self) -> ViewRecipe:
        return recipe(self.recipe_name, self.ctx.image_size)

    # -- encoders ---------------------------------------------------------------------------
    def _splits(self, n: int) -> int:
        """BN sub-batches for a batch of n: G, but never fewer than 2 images per sub-batch."""
        return max(1, min(self.bn_splits, n // 2))

    def query(self, x: torch.Tensor) -> torch.Tensor:
        """q = f_q(x), run in G sub-batches so the query side has per-"GPU" BN statistics too."""
        chunks = x.chunk(self._splits(x.shape[0]))
        return torch.cat([self.projector(self.backbone(c)) for c in chunks])

    def _key_forward(self, x: torch.Tensor) -> torch.Tensor:
        enc = self.key_encoder
        return torch.cat([enc["projector"](enc["backbone"](c)) for c in x.chunk(self._splits(x.shape[0]))])

    @torch.no_grad()
    def keys(self, x: torch.Tensor) -> torch.Tensor:
        """k = f_k(x) with shuffle-BN: permute, encode in BN groups (or on other ranks), unpermute."""
        if not self.options.shuffle_bn:
            return self._key_forward(x)
        if distributed_world() > 1:
            return self._keys_across_ranks(x)
        perm = torch.randperm(x.shape[0], device=x.device)
        k = self._key_forward(x[perm])
        return k[torch.argsort(perm)]

    @torch.no_grad()
    def _keys_across_ranks(self, x: torch.Tensor) -> torch.Tensor:
        """``_batch_shuffle_ddp`` / ``_batch_unshuffle_ddp``: each rank encodes a random slice."""
        full = concat_all_gather(x)
        perm = torch.randperm(full.shape[0], device=x.device)
        dist.broadcast(perm, src=0)
        rank, local = dist.get_rank(), x.shape[0]
        mine = perm.view(-1, local)[rank]
        k = concat_all_gather(self._key_forward(full[mine]))
        return k[torch.argsort(perm)].view(-1, local, k.shape[1])[rank]

    # -- queue --------------------------------------------------------------------------------
    @torch.no_grad()
    def enqueue(self, keys: torch.Tensor) -> None:
        """queue[:, p:p+B] = k̄ᵀ and p ← (p + B) mod K (wrapping; the last K keys if B > K)."""
        if distributed_world() > 1:
            keys = concat_all_gather(keys)
        keys = F.normalize(keys.float(), dim=1)[-self.queue_size:]
        ptr = int(self.queue_ptr)
        cols = (ptr + torch.arange(keys.shape[0], device=keys.device)) % self.queue_size
        self.queue[:, cols] = keys.T.to(self.queue.dtype)
        self.queue_ptr.fill_((ptr + keys.shape[0]) % self.queue_size)

    # -- training -------------------------------------------------------------------------------
    def forward_train(self, batch: Batch) -> StepOutput:
        x_q, x_k = batch.views[:2]
        q = self.query(x_q)
        with torch.no_grad():
            ema_update(self.key_encoder["backbone"], self.backbone, self.momentum)
            ema_update(self.key_encoder["projector"], self.projector, self.momentum)
            k = self.keys(x_k)
        loss = info_nce_queue(q, k, self.queue.clone(), self.temperature)  # against the OLD queue
        self.enqueue(k)
        return StepOutput(loss, {})

    def extra_record(self) -> dict[str, Any]:
        return {
            "temperature": self.temperature, "queue_size": self.queue_size, "key_momentum": self.momentum,
            "bn_splits": self.bn_splits, "shuffle_bn": self.options.shuffle_bn,
            "queue_rule": "K = B*floor(min(65536, N/8)/B), m = clip(1 - 5/steps_per_epoch, 0.9, 0.999)",
            "evaluated_layer": "query backbone (pre-head)",
        }


@register("mocov1")
class MoCoV1(MoCo):
    """MoCo v1: linear 128-d head, τ = 0.07, InstDisc augmentation, step decay of the lr
    (× 0.1 at epochs 120 and 160 of 200, ``--schedule 120 160`` in main_moco.py)."""

    default_optim = replace(MoCo.default_optim, lr_decay="step", step_milestones=(0.6, 0.8))


@register("mocov2")
class MoCoV2(MoCo):
    """MoCo v2: MLP head Linear(d, d)→ReLU→Linear(d, 128) without BN, τ = 0.2, aug-plus, cosine
    decay (``--cos``)."""

    use_mlp = True
    default_temperature = 0.2
    recipe_name = "mocov2"
