"""Evaluate a run's frozen encoder with the suite's protocols, and measure its costs.

Features are extracted once per run (no augmentation) and every protocol reads them. Each
result carries its protocol settings and the layer that produced the features.
"""

from __future__ import annotations

import copy
import logging
import resource
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from bench.config import EvalConfig
from bench.eval.collapse import collapse_indicator, effective_rank
from bench.eval.features import extract_features
from bench.eval.knn import knn_classify, knn_protocols
from bench.eval.fewshot import few_shot
from bench.store import atomic_torch_save

log = logging.getLogger(__name__)


def encoder_features(encoder: nn.Module, images: torch.Tensor, mean, std, device, batch_size: int) -> torch.Tensor:
    amp = device.type == "cuda"
    return extract_features(encoder, images, mean, std, batch_size=batch_size, device=device, amp=amp)


def monitor_knn(encoder: nn.Module, train, val, mean, std, device, batch_size: int, num_classes: int) -> dict[str, float]:
    """kNN (k=200, T=0.1) on the validation split carved from train: training curves only."""
    tf = encoder_features(encoder, train.images, mean, std, device, batch_size)
    vf = encoder_features(encoder, val.images, mean, std, device, batch_size)
    res = knn_classify(tf, train.labels, vf, val.labels, k=200, temperature=0.1, num_classes=num_classes)
    return {"val_knn_top1": res["top1"], "val_collapse": collapse_indicator(vf)}


def is_metric(key: str) -> bool:
    """Accuracy-like numbers go to ``metrics``; settings (k, T, C, draws, seed) to ``protocols``."""
    if "val_" in key:  # validation scores used for selection are settings, not results
        return False
    return key.endswith(("top1", "top5", "_ci95")) or key.split("_")[-1].isdigit()


def split_result(result: dict[str, Any], protocol: str, metrics: dict, protocols: dict) -> None:
    metrics.update({k: v for k, v in result.items() if is_metric(k) and isinstance(v, (int, float))})
    protocols[protocol] = {k: v for k, v in result.items() if not is_metric(k)}


def cached_features(encoder: nn.Module, data, cfg: EvalConfig, device: torch.device,
                    cache: Path | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Frozen train/test features, extracted once per run and cached (fp16) in the run folder."""
    if cache is not None and cache.exists():
        blob = torch.load(cache, weights_only=True)
        if blob["train"].shape[0] == len(data.train) and blob["test"].shape[0] == len(data.test):
            return blob["train"].float(), blob["test"].float()
    train_f = encoder_features(encoder, data.train.images, data.mean, data.std, device, cfg.batch_size)
    test_f = encoder_features(encoder, data.test.images, data.mean, data.std, device, cfg.batch_size)
    if cache is not None:
        atomic_torch_save(cache, {"train": train_f.half(), "test": test_f.half()})
    return train_f, test_f


def evaluate(encoder: nn.Module, data, cfg: EvalConfig, device: torch.device, seed: int,
             cache: Path | None = None) -> dict[str, Any]:
    """Every enabled protocol on frozen features: returns ``{"metrics": ..., "protocols": ...}``."""
    num_classes = data.train.num_classes
    train_f, test_f = cached_features(encoder, data, cfg, device, cache)
    ytr, yte = data.train.labels, data.test.labels
    metrics: dict[str, Any] = {
        "collapse": collapse_indicator(test_f),
        "effective_rank": effective_rank(test_f),
        "feature_dim": int(train_f.shape[1]),
    }
    protocols: dict[str, Any] = {"features": {"n_train": len(ytr), "n_test": len(yte), "augmentation": "none"}}
    f_tr, y_tr, f_te, y_te = train_f.numpy(), ytr.numpy(), test_f.numpy(), yte.numpy()
    jobs = {
        "knn": (cfg.knn, lambda: knn_protocols(train_f, ytr, test_f, yte, num_classes)),
        "linear": (cfg.linear, lambda: run_linear_probe(encoder, data, cfg, device, seed, train_f, test_f)),
        "fewshot": (cfg.fewshot, lambda: few_shot(f_tr, y_tr, f_te, y_te, shots=cfg.fewshot_shots,
                                                   draws=cfg.fewshot_draws, seed=seed)),
        "semi_supervised": (cfg.semi_supervised, lambda: semi_supervised_feasible(f_tr, y_tr, f_te, y_te, seed)),
    }
    for name, (enabled, job) in jobs.items():
        if not enabled:
            continue
        try:
            result = job()
        except Exception as e:  # noqa: BLE001 - one failing protocol must not lose the others
            log.error("protocol %s failed: %s", name, e)
            protocols[name] = {"error": f"{type(e).__name__}: {e}"}
            continue
        if name == "linear":
            result = {"linear_top1": result.pop("top1"), **result}
        split_result(result, name, metrics, protocols)
    return {"metrics": metrics, "protocols": protocols}


def semi_supervised_feasible(train_f, train_y, test_f, test_y, seed: int) -> dict[str, Any]:
    """1 % / 10 % label subsets, keeping only fractions with ≥ 10 labels per class.

    Each subset's C is chosen on a validation split of the subset itself; below 10 labels
    per class that split cannot hold every class, so the fraction is skipped and recorded.
    """
    from bench.eval.fewshot import semi_supervised

    n_classes = len(np.unique(train_y))
    fractions = tuple(f for f in (0.01, 0.1) if f * len(train_y) >= 10 * n_classes)
    skipped = [f for f in (0.01, 0.1) if f not in fractions]
    out: dict[str, Any] = {"semi_skipped_fractions": skipped}
    if fractions:
        out.update(semi_supervised(train_f, train_y, test_f, test_y, fractions=fractions, seed=seed))
    return out


def run_linear_probe(encoder, data, cfg: EvalConfig, device, seed: int, train_f, test_f) -> dict[str, Any]:
    """The suite's linear protocol: L-BFGS on cached features, or the augmented SGD probe."""
    from bench.eval.linear import linear_probe, sgd_linear_probe

    if cfg.linear_protocol == "sgd":
        return sgd_linear_probe(encoder, data.train.images, data.train.labels.numpy(), data.test.images,
                                data.test.labels.numpy(), mean=data.mean, std=data.std, epochs=cfg.sgd_epochs,
                                batch_size=cfg.batch_size, seed=seed, device=device, amp=device.type == "cuda")
    return linear_probe(train_f.numpy(), data.train.labels.numpy(), test_f.numpy(), data.test.labels.numpy(),
                        seed=seed)


def measure_costs(method, data, trace_batch: int = 2) -> dict[str, Any]:
    """Parameters, inference GMACs of the encoder, training MACs of one step of the method."""
    from bench.backbones import count_parameters
    from bench.eval.flops import inference_gmacs

    ctx = method.ctx
    out: dict[str, Any] = {
        "params_encoder": count_parameters(method.encoder),
        "params_trainable": count_parameters(method, trainable_only=True),
    }
    enc = copy.deepcopy(method.encoder).cpu().float()
    inf = inference_gmacs(enc, ctx.image_size, ctx.channels)
    out["inference_gmacs"] = inf.get("gmacs")
    out["inference_unsupported_ops"] = inf.get("unsupported", {})
    if method.requires_training:
        step = step_macs(method, data, trace_batch)
        per_image = step["train_macs"] / trace_batch
        out["train_macs_per_image"] = per_image
        out["train_macs"] = per_image * ctx.steps_per_epoch * ctx.batch_size * ctx.epochs
        out["train_flops"] = 2 * out["train_macs"]
        out["train_cost_detail"] = {k: v for k, v in step.items() if k != "train_macs"}
    else:
        out["train_macs"] = out["train_flops"] = 0
    out["flops_convention"] = "MACs = multiply-adds (fvcore); FLOPs = 2 x MACs; backward = 2 x forward of trainable parts"
    return out


class _StepForward(nn.Module):
    """Wraps ``method.forward_train`` on a fixed batch so fvcore can trace one step's forwards."""

    def __init__(self, method, labels, index) -> None:
        super().__init__()
        self.method = method
        self.labels, self.index = labels, index

    def forward(self, *views):
        from methods.base import Batch

        return self.method.forward_train(Batch(list(views), self.labels, self.index)).loss


def step_macs(method, data, batch: int) -> dict[str, Any]:
    """Training MACs of one step of ``batch`` images (all views, every encoder that runs)."""
    from bench.data.augment import BatchAugmenter
    from bench.eval.flops import training_macs_per_step

    twin = copy.deepcopy(method).cpu().float().train()
    aug = BatchAugmenter(twin.view_recipe(), data.mean, data.std)
    gen = torch.Generator().manual_seed(0)
    views = aug(data.train.images[:batch], generator=gen)
    labels, index = data.train.labels[:batch], torch.arange(batch)
    return training_macs_per_step(_StepForward(twin, labels, index), tuple(views))


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB
