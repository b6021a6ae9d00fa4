"""SwAV (Caron et al. 2020, "Unsupervised Learning of Visual Features by Contrasting Cluster
Assignments"; official code facebookresearch/swav, ``main_swav.py``, ``src/resnet50.py``).

Every crop is embedded (backbone → projector → L2-normalise) and scored against K learnable
prototypes (S = z̄Cᵀ). The two global crops get soft codes Q by Sinkhorn-Knopp equipartition
(fp32, ε = 0.05, 3 iterations); each code is predicted from every OTHER crop through
softmax(S/τ), τ = 0.1 ("swapped prediction"). Per step, in the official order:

1. prototypes re-normalised under no-grad (also after each step, so checkpoints hold them
   normalised; normalising is idempotent, so this matches the official per-iteration order);
2. crops forwarded grouped by resolution (one backbone call per size, one head call for all);
3. codes under no-grad, with the queue's scores prepended once the queue is full, keeping
   only the last B rows; then the current embeddings are pushed into the queue;
4. loss → backward → prototype gradients dropped while step < ``freeze_prototypes_steps``
   (``on_after_backward``) → optimizer step.

Multi-crop (2 global + N local crops) is the generic view option: the default views are the
``swav`` recipe (2 × size at scale 0.14–1 plus 6 × 96/224·size at 0.05–0.14), and
``multicrop: [n_local, local_size]`` in a suite replaces the local crops for any method.
At CIFAR scale (≤ 64 px) the default is ``swav_cifar``: 2 × 32 crops at SimCLR's CIFAR colour
strength without blur, as the author advises for CIFAR (facebookresearch/swav#23) and as
solo-learn and lightly train it. Measured on 3,800 CIFAR-10 images (convnet4, 20 epochs at batch
64, kNN on 1,000 validation images carved from train; random weights score 0.277): 2 × 32 crops
with blur 0.303, ``swav_cifar`` 0.319, ``swav_cifar`` with ε = 0.03 0.367 (0.346 with 4 more
16-px crops, 0.361 with hard codes, 0.342 with 3,000 prototypes). The ImageNet multi-crop
views kept the loss at ln K and scored 0.269 test kNN in ``cpu_all``, below random's 0.301.

Against a loss stuck at ln K (everything mapped to one point, so equipartition can only
return uniform codes) the official README lists: a lower ε (0.03), frozen prototypes, hard
assignments (``hard_assignment``), no BN in the head (``head_norm: none``), fewer crops or
softer augmentation. All are options here; the defaults stay the paper's.

Sizing from the data when options are unset (recorded in ``extra_record``):

* prototypes K = min(3000, max(10·classes, N/10)): the paper's 3000 on ImageNet and CIFAR,
  fewer on small subsets, where B ≪ 3000 codes per step would spread each batch over
  mostly empty prototypes (the paper finds K matters little between 300 and 30,000);
* prototypes frozen for min(1 epoch, 5% of the budget) steps: the official 313 steps at bs
  4096 and 5,005 at bs 256 are both ≈ 1 epoch; on a 10-epoch CPU budget 1 epoch would be
  10% of training, so the same cap as the warmup's keeps the schedule's shape.

The queue (``queue_length`` > 0, off by default as in the 800-epoch bs-4096 recipe; the
bs-256 recipe uses 3,840 from epoch 15) starts filling at ``queue_start_epoch`` and is used
only once full. With ``torch.distributed`` the Sinkhorn sums are all-reduced, so the codes
equipartition the global batch (each rank's queue stays its own, as in the official code).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from bench.data.augment import ViewRecipe, recipe
from methods.base import Batch, Method, MethodOptions, OptimRecipe, RunContext, StepOutput, register
from methods.heads import mlp_head
from methods.losses import sinkhorn_knopp, swapped_prediction

#: Number of global crops that get codes (``crops_for_assign = [0, 1]``).
ASSIGN_CROPS = 2


def default_prototypes(dataset_size: int, num_classes: int) -> int:
    """K = min(3000, max(10·classes, N/10)) (see the module docstring)."""
    return int(min(3000, max(10 * num_classes, dataset_size // 10)))


def default_freeze_steps(steps_per_epoch: int, total_steps: int) -> int:
    """Steps with frozen prototypes: min(1 epoch, 5% of the run), at least 1."""
    return max(1, min(steps_per_epoch, math.ceil(0.05 * total_steps)))


def group_by_resolution(views: list[torch.Tensor]) -> list[torch.Tensor]:
    """Concatenate consecutive views of equal size (one backbone call per resolution)."""
    groups: list[list[torch.Tensor]] = []
    for v in views:
        if groups and groups[-1][0].shape[-2:] == v.shape[-2:]:
            groups[-1].append(v)
        else:
            groups.append([v])
    return [torch.cat(g) for g in groups]


class SwAVOptions(MethodOptions):
    n_prototypes: int | None = Field(None, gt=1, description="K; default min(3000, max(10·classes, N/10))")
    temperature: float = Field(0.1, gt=0, description="τ of the swapped-prediction softmax")
    epsilon: float = Field(0.05, gt=0, description="Sinkhorn entropy regularisation ε")
    sinkhorn_iterations: int = Field(3, ge=1)
    hard_assignment: bool = Field(
        False, description="one-hot codes (argmax of the Sinkhorn codes): a README remedy against collapse"
    )
    proj_hidden: int | None = Field(None, gt=0, description="projector hidden width; default = encoder width")
    proj_dim: int = Field(128, gt=0)
    queue_length: int = Field(0, ge=0, description="embeddings queued per assignment crop (0 = no queue)")
    queue_start_epoch: int = Field(15, ge=0, description="epoch (0-based) from which the queue fills")
    freeze_prototypes_steps: int | None = Field(
        None, ge=0, description="steps without prototype updates; default min(1 epoch, 5% of the run)"
    )


@register("swav")
class SwAV(Method):
    """SwAV: online codes by Sinkhorn-Knopp, swapped prediction over multi-crop views."""

    Options = SwAVOptions
    # SGD + LARC (trust 1e-3, no clipping) over EVERY parameter, lr 0.6·bs/256 (4.8 at bs 4096),
    # final lr 0.001× peak (0.0048), 10 warmup epochs, cosine, wd 1e-6 (swav_800ep_pretrain.sh).
    # Deviation: the official warmup starts at 0.3 (bs 4096), the harness's at 0.
    default_optim = OptimRecipe("lars", base_lr=0.6, weight_decay=1e-6, warmup_epochs=10, min_lr_ratio=0.001)
    decay_all_params = True  # the official SGD decays, and LARC adapts, every parameter

    def __init__(self, backbone, options: SwAVOptions, ctx: RunContext) -> None:
        super().__init__(backbone, options, ctx)
        width = backbone.feature_dim
        self.projector = mlp_head([width, options.proj_hidden or width, options.proj_dim], norm=options.head_norm)
        self.n_prototypes = options.n_prototypes or default_prototypes(ctx.dataset_size, ctx.num_classes)
        self.prototypes = nn.Linear(options.proj_dim, self.n_prototypes, bias=False)
        self.freeze_steps = (options.freeze_prototypes_steps if options.freeze_prototypes_steps is not None
                             else default_freeze_steps(ctx.steps_per_epoch, ctx.total_steps))
        self.register_buffer("queue", torch.zeros(ASSIGN_CROPS, options.queue_length, options.proj_dim))
        self.register_buffer("queue_count", torch.zeros((), dtype=torch.long))
        self.register_buffer("steps_done", torch.zeros((), dtype=torch.long))

    def base_view_recipe(self) -> ViewRecipe:
        # ImageNet: 2 global + 6 local crops. CIFAR scale (≤ 64 px): 2 global crops at SimCLR's
        # CIFAR strength (``swav_cifar``): multi-crop's 14-px local crops and blur on 32-px images
        # keep the loss at ln K on a short budget (measured; see the module docstring).
        return recipe("swav_cifar" if self.ctx.small_images else "swav", self.ctx.image_size)

    @torch.no_grad()
    def normalize_prototypes(self) -> None:
        """C ← C/‖C‖ row-wise (each prototype on the unit sphere)."""
        w = self.prototypes.weight
        w.copy_(F.normalize(w, dim=1))

    # -- queue ---------------------------------------------------------------------------------
    def queue_active(self) -> bool:
        """The queue fills from ``queue_start_epoch`` on (when it has a length)."""
        epoch = int(self.steps_done) // max(1, self.ctx.steps_per_epoch)
        return self.queue.shape[1] > 0 and epoch >= self.options.queue_start_epoch

    def queue_full(self) -> bool:
        return self.queue.shape[1] > 0 and int(self.queue_count) >= self.queue.shape[1]

    @torch.no_grad()
    def push(self, crop: int, z: torch.Tensor) -> None:
        """FIFO as the official code: newest embeddings first, the oldest fall off the end."""
        length = self.queue.shape[1]
        z = z.detach().float()[:length]
        self.queue[crop] = torch.cat([z, self.queue[crop, : length - z.shape[0]]])

    # -- training -----------------------------------------------------------------------------
    def embed(self, views: list[torch.Tensor]) -> torch.Tensor:
        """z̄ for all crops (V·B × D), backbone per resolution, projector over all crops at once."""
        feats = torch.cat([self.backbone(g) for g in group_by_resolution(views)])
        return F.normalize(self.projector(feats), dim=1)

    @torch.no_grad()
    def codes(self, crop: int, scores: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """Q for one assignment crop (queue scores prepended once full), then enqueue its z̄."""
        out = scores.detach().float()
        if self.queue_full():
            out = torch.cat([self.queue[crop] @ self.prototypes.weight.float().T, out])
        q = sinkhorn_knopp(out, self.options.epsilon, self.options.sinkhorn_iterations,
                           across_ranks=True)[-scores.shape[0]:]
        if self.options.hard_assignment:
            q = F.one_hot(q.argmax(dim=1), q.shape[1]).to(q.dtype)
        if self.queue_active():
            self.push(crop, z)
        return q

    def forward_train(self, batch: Batch) -> StepOutput:
        self.normalize_prototypes()
        views = batch.views
        n = views[0].shape[0]
        z = self.embed(views)
        scores = self.prototypes(z).chunk(len(views))
        z_crops = z.chunk(len(views))
        used = self.queue_full()  # decided before this step's embeddings are pushed
        assign = [self.codes(s, scores[s], z_crops[s]) for s in range(min(ASSIGN_CROPS, len(views)))]
        if self.queue_active():
            self.queue_count.fill_(min(self.queue.shape[1], int(self.queue_count) + n))
        loss = swapped_prediction(assign, list(scores), self.options.temperature)
        return StepOutput(loss, {"queue_used": float(used)})

    def on_after_backward(self, step: int) -> None:
        """Drop the prototypes' gradients during the freeze window (``main_swav.py``)."""
        if step < self.freeze_steps:
            self.prototypes.weight.grad = None

    @torch.no_grad()
    def on_step_end(self, step: int, progress: float) -> None:
        self.steps_done.fill_(step)
        self.normalize_prototypes()

    def extra_record(self) -> dict[str, Any]:
        return {
            "n_prototypes": self.n_prototypes, "freeze_prototypes_steps": self.freeze_steps,
            "temperature": self.options.temperature, "epsilon": self.options.epsilon,
            "sinkhorn_iterations": self.options.sinkhorn_iterations,
            "hard_assignment": self.options.hard_assignment,
            "queue_length": self.queue.shape[1], "queue_start_epoch": self.options.queue_start_epoch,
            "n_views": len(self.view_recipe().expanded()), "evaluated_layer": "backbone (pre-projector)",
        }
