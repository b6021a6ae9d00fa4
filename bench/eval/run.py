"""Evaluate a run's frozen encoder with the suite's protocols, and measure its costs.

Features are extracted once per run (no augmentation) and every protocol reads them. Each
result carries its protocol settings and the layer that produced the features.
"""

from __future__ import annotations

import copy
import resource
from typing import Any

import torch
from torch import nn

from bench.config import EvalConfig
from bench.eval.collapse import collapse_indicator, effective_rank
from bench.eval.features import extract_features
from bench.eval.knn import knn_classify, knn_protocols


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
    return key.endswith(("top1", "top5", "_ci95")) or key.split("_")[-1].isdigit()


def split_result(result: dict[str, Any], protocol: str, metrics: dict, protocols: dict) -> None:
    metrics.update({k: v for k, v in result.items() if is_metric(k) and isinstance(v, (int, float))})
    protocols[protocol] = {k: v for k, v in result.items() if not is_metric(k)}


def evaluate(encoder: nn.Module, data, cfg: EvalConfig, device: torch.device, seed: int) -> dict[str, Any]:
    """Every enabled protocol on frozen features: returns ``{"metrics": ..., "protocols": ...}``."""
    num_classes = data.train.num_classes
    train_f = encoder_features(encoder, data.train.images, data.mean, data.std, device, cfg.batch_size)
    test_f = encoder_features(encoder, data.test.images, data.mean, data.std, device, cfg.batch_size)
    ytr, yte = data.train.labels, data.test.labels
    metrics: dict[str, Any] = {
        "collapse": collapse_indicator(test_f),
        "effective_rank": effective_rank(test_f),
        "feature_dim": int(train_f.shape[1]),
    }
    protocols: dict[str, Any] = {"features": {"n_train": len(ytr), "n_test": len(yte), "augmentation": "none"}}
    if cfg.knn:
        split_result(knn_protocols(train_f, ytr, test_f, yte, num_classes), "knn", metrics, protocols)
    if cfg.linear:
        from bench.eval.linear import linear_probe

        lin = linear_probe(train_f.numpy(), ytr.numpy(), test_f.numpy(), yte.numpy(), seed=seed)
        metrics["linear_top1"] = lin["top1"]
        protocols["linear"] = {k: v for k, v in lin.items() if k != "top1"}
    if cfg.fewshot:
        from bench.eval.fewshot import few_shot

        fs = few_shot(train_f.numpy(), ytr.numpy(), test_f.numpy(), yte.numpy(),
                      shots=cfg.fewshot_shots, draws=cfg.fewshot_draws, seed=seed)
        split_result(fs, "fewshot", metrics, protocols)
    return {"metrics": metrics, "protocols": protocols}


def measure_costs(method, data, views_shape_batch: int = 2) -> dict[str, Any]:
    """Parameters, inference GMACs of the encoder, training MACs of one step of the method."""
    from bench.backbones import count_parameters
    from bench.eval.flops import inference_gmacs, training_macs_per_step

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
        step = step_macs(method, data, views_shape_batch)
        per_image = step["train_macs"] / views_shape_batch
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

    def __init__(self, method, batch_views, labels, index) -> None:
        super().__init__()
        self.method = method
        self.labels, self.index = labels, index
        self.n = len(batch_views)

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
    return training_macs_per_step(_StepForward(twin, views, labels, index), tuple(views))


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB
