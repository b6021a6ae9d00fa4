"""Frozen-feature extraction shared by every offline evaluation protocol.

Protocols (kNN, linear probe on features, few-shot) all start from the same step: run the
frozen encoder once over un-augmented images and keep the pooled features. PROTOCOLS.md:
"extract frozen features once (no augmentation, centre crop)".
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import nn

from bench.data.augment import to_normalized

__all__ = ["extract_features", "eval_mode"]


@contextmanager
def eval_mode(module: nn.Module) -> Iterator[nn.Module]:
    """Put ``module`` in eval mode and restore every sub-module's own training flag afterwards.

    Restoring per sub-module (not just ``module.train(was_training)``) keeps deliberately
    frozen parts (e.g. a BatchNorm a method keeps in eval) exactly as they were.
    """
    flags = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        yield module
    finally:
        for m, flag in flags:
            m.training = flag


def _floats(values: Sequence[float] | torch.Tensor) -> list[float]:
    """Per-channel statistics (sequence, array or tensor) as a plain list of floats."""
    return [float(v) for v in torch.as_tensor(values).flatten()]


@torch.no_grad()
def extract_features(encoder: nn.Module, images: torch.Tensor, mean: Sequence[float] | torch.Tensor,
                     std: Sequence[float] | torch.Tensor, *, batch_size: int = 256,
                     device: str | torch.device = "cpu", image_size: int | None = None,
                     amp: bool = False) -> torch.Tensor:
    """Features of uint8 ``images`` (N×C×H×W, CPU) from a frozen ``encoder``: N×D float32, CPU.

    The encoder is switched to eval mode for the extraction (BatchNorm uses running statistics,
    dropout off) and every sub-module's mode is restored afterwards. Batches are moved to
    ``device``, normalised as ``(x/255 - mean)/std`` (per-channel ``mean``/``std`` on the [0, 1]
    scale), optionally resized to ``image_size`` (shorter side, antialiased, then centre crop;
    ``bench.data.augment.to_normalized``, no augmentation), converted to channels_last on
    CUDA, and run under bf16 autocast when ``amp``. Outputs with more than two dimensions are
    flattened per sample. The encoder must already live on ``device``.
    """
    if images.ndim != 4:
        raise ValueError(f"images must be N×C×H×W, got shape {tuple(images.shape)}")
    device = torch.device(device)
    mean, std = _floats(mean), _floats(std)
    chunks: list[torch.Tensor] = []
    with eval_mode(encoder):
        for start in range(0, images.shape[0], batch_size):
            x = images[start:start + batch_size].to(device, non_blocking=True)
            x = to_normalized(x, mean, std, size=image_size)
            if device.type == "cuda":
                x = x.contiguous(memory_format=torch.channels_last)
            with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=amp):
                out = encoder(x)
            chunks.append(out.flatten(1).float().cpu())
    if not chunks:
        raise ValueError("no images to extract features from")
    return torch.cat(chunks)
