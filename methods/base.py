"""The Method interface and the method registry.

A method *declares* what to learn: the views it needs, its heads and state, its loss, the
updates that follow an optimizer step, its parameter groups and its published optimizer
recipe. The harness (``bench``) decides budget, device, placement and evaluation. Nothing
here knows about files, YAML, Ray or reports (DESIGN.md, "the one-line contract").

Methods register with ``@register("name")``; third-party packages add methods through the
``bench.methods`` entry-point group (``name = "pkg.module:Class"``).
"""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any, ClassVar, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from bench.data.augment import ViewRecipe

HeadNorm = Literal["bn", "none", "gn_ws"]


@dataclass(frozen=True)
class RunContext:
    """The budget and data shape a method is told about (never a path or a device).

    Methods may size their state from it, e.g. a MoCo queue no larger than the data set.
    """

    dataset_size: int
    batch_size: int
    epochs: int
    steps_per_epoch: int
    image_size: int
    channels: int
    num_classes: int

    @property
    def total_steps(self) -> int:
        return max(1, self.epochs * self.steps_per_epoch)

    @property
    def small_images(self) -> bool:
        """CIFAR-scale inputs (≤ 64 px), where official codes switch to their CIFAR settings."""
        return self.image_size <= 64


@dataclass(frozen=True)
class OptimRecipe:
    """A method's published optimizer recipe, expressed at batch size 256.

    ``lr_scaling``: "linear" → lr = base_lr·bs/256 (Goyal et al. 2017), "sqrt" →
    lr = base_lr·√(bs/256) (SimCLR App. B.1), "none" → base_lr as is.
    ``lr_decay``: "cosine" to ``min_lr_ratio``·peak, or "step": × ``step_gamma`` at each of
    ``step_milestones``, given as fractions of the budget so that a recipe published for a
    fixed epoch count (MoCo v1: 120 and 160 of 200 epochs) keeps its shape on any budget.
    """

    optimizer: Literal["sgd", "lars", "adamw", "adam"]
    base_lr: float
    weight_decay: float
    momentum: float = 0.9
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_epochs: float = 0.0
    lr_scaling: Literal["linear", "sqrt", "none"] = "linear"
    min_lr_ratio: float = 0.0
    lars_eta: float = 1e-3
    lr_decay: Literal["cosine", "step"] = "cosine"
    step_milestones: tuple[float, ...] = ()
    step_gamma: float = 0.1
    grad_clip: float | None = None


class MethodOptions(BaseModel):
    """Options shared by every method; each method subclasses this with its own fields.

    Unknown fields are rejected (``extra="forbid"``) so a misspelt option fails loudly.
    The optimizer fields override the method's published recipe when set.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    head_norm: HeadNorm = Field("bn", description="normalisation in heads: bn | none | gn_ws")
    recipe: str | None = Field(None, description="override the augmentation recipe by name")
    multicrop: tuple[int, int] | None = Field(
        None, description="(n_local, local_size): add local crops to the declared views"
    )
    optimizer: Literal["sgd", "lars", "adamw", "adam"] | None = None
    base_lr: float | None = Field(None, gt=0)
    weight_decay: float | None = Field(None, ge=0)
    warmup_epochs: float | None = Field(None, ge=0)
    lr_decay: Literal["cosine", "step"] | None = Field(
        None, description="cosine | step (at the recipe's milestones); default: the method's recipe"
    )


@dataclass
class Batch:
    """One training batch as the harness hands it to a method."""

    views: list[torch.Tensor]
    labels: torch.Tensor
    index: torch.Tensor  # position of each sample in the training set (memory banks)


@dataclass
class StepOutput:
    loss: torch.Tensor
    logs: dict[str, float] = field(default_factory=dict)


class Method(nn.Module):
    """Base class of every method plugin.

    Subclasses set ``name``, ``Options`` and ``default_optim`` and implement
    ``view_recipe``, ``forward_train`` and ``encoder``. State (queues, banks, EMA copies,
    prototypes, centres) lives in buffers or sub-modules so checkpoints capture it.
    """

    name: ClassVar[str] = ""
    Options: ClassVar[type[MethodOptions]] = MethodOptions
    default_optim: ClassVar[OptimRecipe] = OptimRecipe("sgd", 0.03, 1e-4)
    #: False for reference rows that are evaluated without training (random init).
    requires_training: ClassVar[bool] = True
    #: True when the loss uses labels (the supervised ceiling); recorded in the report.
    uses_labels: ClassVar[bool] = False
    #: True when the official optimizer decays (and LARS-adapts) every parameter, norms and
    #: biases included (MoCo, SwAV); False excludes 1-D parameters (SimCLR, BYOL, MoCo v3, MAE).
    decay_all_params: ClassVar[bool] = False

    def __init__(self, backbone: nn.Module, options: MethodOptions, ctx: RunContext) -> None:
        super().__init__()
        self.backbone = backbone
        self.options = options
        self.ctx = ctx

    # -- declarations -------------------------------------------------------------------
    def base_view_recipe(self) -> ViewRecipe:
        """The views this method needs, before suite options (multi-crop, recipe override)."""
        raise NotImplementedError

    def view_recipe(self) -> ViewRecipe:
        """Views after the generic options; the data pipeline builds them."""
        from bench.data.augment import recipe as named_recipe

        opts = self.options
        views = named_recipe(opts.recipe, self.ctx.image_size) if opts.recipe else self.base_view_recipe()
        if opts.multicrop is not None:
            n_local, local_size = opts.multicrop
            views = views.with_multicrop(n_local, local_size)
        return views

    @property
    def encoder(self) -> nn.Module:
        """The module whose features are evaluated (the backbone, never the projector)."""
        return self.backbone

    def published_optim(self) -> OptimRecipe:
        """The method's published recipe for this budget (override for epoch-dependent presets)."""
        return self.default_optim

    def optim_recipe(self) -> OptimRecipe:
        """The published recipe with any per-run overrides from the options applied."""
        from dataclasses import replace

        o = self.options
        overrides = {
            k: getattr(o, k)
            for k in ("optimizer", "base_lr", "weight_decay", "warmup_epochs", "lr_decay")
            if getattr(o, k) is not None
        }
        return replace(self.published_optim(), **overrides)

    def param_groups(self) -> list[dict[str, Any]]:
        """Parameter groups: no weight decay (nor LARS adaptation) on norms and biases.

        Subclasses extend this (fixed-lr predictor, ...). Keys understood by the harness:
        ``params``, ``weight_decay`` (None = recipe value), ``lars_exclude``,
        ``fixed_lr`` (the schedule does not apply), ``name``.
        """
        if self.decay_all_params:
            return [{"name": "all", "params": [p for p in self.parameters() if p.requires_grad]}]
        return split_decay_groups(self.named_parameters())

    # -- training -----------------------------------------------------------------------
    def forward_train(self, batch: Batch) -> StepOutput:
        raise NotImplementedError

    def on_after_backward(self, step: int) -> None:
        """Hook between backward and the optimizer step (e.g. drop prototype gradients)."""

    @torch.no_grad()
    def on_step_end(self, step: int, progress: float) -> None:
        """Post-optimizer updates (EMA, enqueue, schedules); ``progress`` ∈ [0, 1]."""

    def extra_record(self) -> dict[str, Any]:
        """Facts a run record should keep (resolved sizes, evaluated layer, ...)."""
        return {}


def split_decay_groups(named_params) -> list[dict[str, Any]]:
    """Split trainable parameters into decayed weights and non-decayed norms/biases.

    1-D parameters (biases, norm gains, logit scales) get no weight decay and are excluded
    from LARS adaptation, as in SimCLR, BYOL, MoCo v3 and MAE's official code.
    """
    decay, no_decay = [], []
    for _, p in named_params:
        if not p.requires_grad:
            continue
        (no_decay if p.ndim <= 1 else decay).append(p)
    groups = [{"name": "decay", "params": decay}]
    if no_decay:
        groups.append({"name": "no_decay", "params": no_decay, "weight_decay": 0.0, "lars_exclude": True})
    return groups


# -- momentum helpers shared by EMA methods --------------------------------------------------
def cosine_momentum(base: float, progress: float) -> float:
    """τ_k = 1 − (1 − τ_base)(cos(πk/K) + 1)/2 (BYOL §3.1, MoCo v3, DINO); τ(0)=base, τ(1)=1."""
    progress = min(max(progress, 0.0), 1.0)
    return 1.0 - (1.0 - base) * (math.cos(math.pi * progress) + 1.0) / 2.0


@torch.no_grad()
def ema_update(target: nn.Module, online: nn.Module, momentum: float) -> None:
    """ξ ← m·ξ + (1 − m)·θ over parameters only.

    As in the official MoCo and BYOL code, buffers (BN running statistics) are not
    averaged: the target network keeps its own, from its own forward passes.
    """
    for t, o in zip(target.parameters(), online.parameters(), strict=True):
        t.lerp_(o.detach(), 1.0 - momentum)


def distributed_world() -> int:
    """Number of processes when torch.distributed is initialised, else 1."""
    dist = torch.distributed
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def frozen_copy(module: nn.Module) -> nn.Module:
    """A deep copy with ``requires_grad=False``: a momentum/target network."""
    import copy

    twin = copy.deepcopy(module)
    for p in twin.parameters():
        p.requires_grad_(False)
    return twin


# -- registry ------------------------------------------------------------------------------
_REGISTRY: dict[str, type[Method]] = {}
_ENTRY_POINTS_LOADED = False


class UnknownMethodError(ValueError):
    pass


def register(name: str):
    """Class decorator: make a method available under ``name`` (lower case, no separators)."""

    def wrap(cls: type[Method]) -> type[Method]:
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(f"method name {name!r} is already registered by {_REGISTRY[name]!r}")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return wrap


def _load_plugins() -> None:
    global _ENTRY_POINTS_LOADED
    if _ENTRY_POINTS_LOADED:
        return
    _ENTRY_POINTS_LOADED = True
    import methods  # noqa: F401  (imports the built-in families, which register themselves)

    for ep in metadata.entry_points(group="bench.methods"):
        cls = ep.load()
        if ep.name not in _REGISTRY:
            register(ep.name)(cls)


def list_methods() -> list[str]:
    _load_plugins()
    return sorted(_REGISTRY)


def get_method(name: str) -> type[Method]:
    """Look a method up by name; an unknown name gets the close matches and the full list."""
    _load_plugins()
    if name not in _REGISTRY:
        close = difflib.get_close_matches(name, _REGISTRY, n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise UnknownMethodError(
            f"unknown method {name!r}.{hint} Known methods: {', '.join(sorted(_REGISTRY))}."
        )
    return _REGISTRY[name]
