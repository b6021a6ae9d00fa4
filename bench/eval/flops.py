"""Compute cost in multiply-accumulates (MACs), counted with fvcore.

fvcore's ``FlopCountAnalysis`` counts one fused multiply-add as one "flop", i.e. it reports
MACs (FLOPs = 2 × MACs). It skips ``aten::scaled_dot_product_attention`` unless a handle is
registered, which under-counts ViTs by 4-5% (PROTOCOLS.md); :func:`count_macs` adds that handle
and lists every op it could not count. Inference cost (backbone, one image, eval mode) and
training cost per step (every forward pass of a step, backward ≈ 2 × forward of trainable parts)
are reported separately.
"""

from __future__ import annotations

import copy
import logging
import math
import warnings
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

with warnings.catch_warnings():  # fvcore.nn calls the deprecated torch.jit.script at import
    warnings.simplefilter("ignore", FutureWarning)
    from fvcore.nn import FlopCountAnalysis
    from fvcore.nn.jit_handles import get_shape

from bench.eval.features import eval_mode

__all__ = ["count_macs", "inference_gmacs", "training_macs_per_step", "sdpa_macs", "CONVENTION"]

CONVENTION = "MACs (1 multiply-add = 1)"


def sdpa_macs(inputs: list[Any], outputs: list[Any]) -> int:
    """fvcore handle for ``aten::scaled_dot_product_attention``: QKᵀ costs ``B·H·L·S·E`` and
    AV costs ``B·H·L·S·Ev`` MACs (= 2·B·H·L·S·Dh when E = Ev); any leading batch dims."""
    q_shape, k_shape, v_shape = (get_shape(v) for v in inputs[:3])
    *batch, length, e = q_shape
    source = k_shape[-2]
    return int(math.prod(batch) * length * source * (e + v_shape[-1]))


@contextmanager
def _quiet() -> Iterator[None]:
    """Silence fvcore's logger and the tracer's Python warnings for the duration."""
    logger = logging.getLogger("fvcore")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def _analysis(model: nn.Module, inputs: tuple) -> FlopCountAnalysis:
    """A FlopCountAnalysis with the SDPA handle and all of fvcore's warnings turned off."""
    fa = FlopCountAnalysis(model, inputs)
    fa.set_op_handle("aten::scaled_dot_product_attention", sdpa_macs)
    fa.unsupported_ops_warnings(False)
    fa.uncalled_modules_warnings(False)
    fa.tracer_warnings("none")
    return fa


def _grad_inputs(inputs: tuple) -> tuple:
    """Copies of the floating-point input tensors that require grad (other leaves unchanged).

    With autograd off, or with frozen weights and inputs that need no grad, PyTorch routes
    ``nn.MultiheadAttention`` / ``nn.TransformerEncoderLayer`` in eval mode to fused kernels
    (``aten::_native_multi_head_attention``) that fvcore cannot count (ViT-B/16: 11.3 instead of
    17.6 GMACs); inputs that require grad keep the countable reference path.
    """
    def convert(t: Any) -> Any:
        if isinstance(t, torch.Tensor):
            return t.detach().clone().requires_grad_(True) if t.is_floating_point() else t
        if isinstance(t, (list, tuple)):
            return type(t)(convert(v) for v in t)
        if isinstance(t, dict):
            return {k: convert(v) for k, v in t.items()}
        return t
    return tuple(convert(v) for v in inputs)


def _run(model: nn.Module, inputs: tuple) -> tuple[int, dict[str, int], dict[str, int]]:
    """Trace ``model(*inputs)`` once with autograd on; (total MACs, MACs per module name,
    unsupported op counts)."""
    with _quiet(), torch.enable_grad():
        fa = _analysis(model, _grad_inputs(inputs))
        total = int(fa.total())
        by_module = {name: int(v) for name, v in fa.by_module().items()}
        unsupported = {op: int(n) for op, n in fa.unsupported_ops().items()}
    return total, by_module, unsupported


def count_macs(model: nn.Module, inputs: tuple) -> dict[str, Any]:
    """MACs of one ``model(*inputs)`` call, in the mode the model is in.

    Returns ``{"macs", "by_module": {module name: MACs, "" = whole model}, "unsupported":
    {aten op: count} (ops fvcore cannot count, mostly element-wise), "convention"}``.
    """
    total, by_module, unsupported = _run(model, inputs)
    return {"macs": total, "by_module": by_module, "unsupported": unsupported,
            "convention": CONVENTION}


def _first_device(module: nn.Module) -> torch.device:
    """Device of the module's first parameter or buffer (CPU for a stateless module)."""
    for t in (*module.parameters(), *module.buffers()):
        return t.device
    return torch.device("cpu")


def inference_gmacs(encoder: nn.Module, image_size: int, channels: int) -> dict[str, Any]:
    """Inference cost of ``encoder`` on one ``channels``×``image_size``² image in eval mode
    (every sub-module's mode restored afterwards). Reports GMACs, MACs, parameter count and
    the unsupported ops."""
    x = torch.zeros(1, channels, image_size, image_size, device=_first_device(encoder))
    with eval_mode(encoder):
        res = count_macs(encoder, (x,))
    return {"gmacs": res["macs"] / 1e9, "macs": res["macs"], "image_size": int(image_size),
            "channels": int(channels), "params": sum(p.numel() for p in encoder.parameters()),
            "unsupported": res["unsupported"], "convention": CONVENTION}


def _param_status(module: nn.Module) -> str | None:
    """'trainable' / 'frozen' when all parameters of the subtree agree, 'mixed' when they don't,
    None when it has no parameters."""
    flags = {p.requires_grad for p in module.parameters()}
    if not flags:
        return None
    return "mixed" if len(flags) == 2 else ("trainable" if True in flags else "frozen")


def _split_by_trainability(model: nn.Module, by_module: dict[str, int]) -> Counter:
    """Attribute every traced MAC to the innermost module that ran it (its count minus its
    children's counts) and classify it by that module's parameters: a subtree whose parameters
    all require grad -> 'trainable', all frozen -> 'frozen', both (or none up to the root)
    -> 'other'. Parameter-free modules (ReLU, pooling, attention wrappers) inherit the status
    of their nearest ancestor with parameters."""
    totals: Counter = Counter()

    def visit(name: str, module: nn.Module, inherited: str | None) -> None:
        status = _param_status(module) or inherited
        children = list(module.named_children())
        own = by_module.get(name, 0) - sum(by_module.get(_join(name, c), 0) for c, _ in children)
        totals[status if status in ("trainable", "frozen") else "other"] += own
        for child_name, child in children:
            visit(_join(name, child_name), child, status)

    visit("", model, None)
    return totals


def _join(prefix: str, name: str) -> str:
    """Dotted module path as used by ``named_modules``."""
    return f"{prefix}.{name}" if prefix else name


def training_macs_per_step(step_fn_module: nn.Module, inputs: tuple) -> dict[str, Any]:
    """Training cost of one step: trace ``step_fn_module(*inputs)`` (a module whose forward runs
    every forward pass of one training step and returns the loss) on a deep copy, so queues, EMA
    weights and other state of the original are untouched, in the copy's current (train) mode.

    Forward MACs are split by :func:`_split_by_trainability`: parts whose parameters require
    grad are ``trainable_forward_macs``; frozen parts (momentum / EMA encoders, frozen patch
    projection) ``frozen_forward_macs``; ops in modules mixing both, e.g. the loss computed in a
    method that owns an online and a momentum encoder, ``other_forward_macs`` (forward-only).
    ``train_macs = forward_macs + 2 × trainable_forward_macs`` (backward ≈ 2 × forward of the
    trainable parts, PROTOCOLS.md).
    """
    model = copy.deepcopy(step_fn_module)
    total, by_module, unsupported = _run(model, inputs)
    split = _split_by_trainability(model, by_module)
    trainable = int(split["trainable"])
    return {"forward_macs": total, "trainable_forward_macs": trainable,
            "frozen_forward_macs": int(split["frozen"]), "other_forward_macs": int(split["other"]),
            "train_macs": total + 2 * trainable, "unsupported": unsupported,
            "convention": CONVENTION,
            "backward_rule": "2 x forward of modules whose parameters all require grad"}
