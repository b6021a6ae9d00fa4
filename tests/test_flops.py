"""MAC counting against hand-computed values (fvcore convention: 1 multiply-add = 1)."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from bench.eval.flops import CONVENTION, count_macs, inference_gmacs, training_macs_per_step


def test_linear_macs() -> None:
    res = count_macs(nn.Linear(10, 20), (torch.randn(4, 10),))
    assert res["macs"] == 4 * 10 * 20
    assert res["convention"] == CONVENTION
    json.dumps(res)


def test_conv_macs() -> None:
    res = count_macs(nn.Conv2d(3, 8, 3, padding=1, bias=False), (torch.randn(1, 3, 16, 16),))
    assert res["macs"] == 16 * 16 * 8 * 3 * 9


class _TwoLayer(nn.Module):
    """A frozen 'momentum' linear and a trainable linear, plus a loss matmul at the root."""

    def __init__(self) -> None:
        super().__init__()
        self.frozen = nn.Linear(8, 16)
        self.online = nn.Linear(8, 16)
        self.frozen.requires_grad_(False)
        self.register_buffer("queue", torch.zeros(32, 16))
        self.queue_ptr = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k = self.online(x), self.frozen(x)
        logits = q @ k.T  # the loss: outside any leaf, in a module mixing trainable and frozen
        self.queue[: x.shape[0]] = k.detach() + 1  # a stateful side effect (like MoCo's enqueue)
        return F.cross_entropy(logits, torch.arange(x.shape[0]))


def test_training_macs_split_and_no_mutation() -> None:
    model = _TwoLayer()
    res = training_macs_per_step(model, (torch.randn(4, 8),))
    per_linear = 4 * 8 * 16
    loss = 4 * 16 * 4
    assert res["trainable_forward_macs"] == per_linear
    assert res["frozen_forward_macs"] == per_linear
    assert res["other_forward_macs"] == loss
    assert res["forward_macs"] == 2 * per_linear + loss
    assert res["train_macs"] == res["forward_macs"] + 2 * per_linear
    assert torch.count_nonzero(model.queue) == 0  # traced on a deep copy
    assert model.training  # mode untouched
    json.dumps(res)


def test_training_macs_all_trainable_counts_parameter_free_children() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3, bias=False), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                          nn.Flatten(), nn.Linear(4, 2))
    res = training_macs_per_step(model, (torch.randn(2, 3, 8, 8),))
    assert res["frozen_forward_macs"] == 0 and res["other_forward_macs"] == 0
    assert res["trainable_forward_macs"] == res["forward_macs"]
    assert res["train_macs"] == 3 * res["forward_macs"]


class _Attention(nn.Module):
    """Minimal multi-head self-attention: qkv projection, SDPA, output projection."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.proj = nn.Linear(dim, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(b, n, d))


def test_sdpa_handle_counts_attention() -> None:
    b, n, d, h = 2, 5, 16, 4
    res = count_macs(_Attention(d, h), (torch.randn(b, n, d),))
    linears = b * n * d * 3 * d + b * n * d * d
    assert res["macs"] == linears + 2 * b * h * n * n * (d // h)
    assert "aten::scaled_dot_product_attention" not in res["unsupported"]
    assert res["by_module"]["qkv"] == b * n * d * 3 * d


def test_sdpa_in_trainable_block_counts_as_trainable() -> None:
    res = training_macs_per_step(_Attention(16, 4), (torch.randn(2, 5, 16),))
    assert res["trainable_forward_macs"] == res["forward_macs"]


def _cifar_resnet18() -> nn.Module:
    net = torchvision.models.resnet18()
    net.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
    net.maxpool = nn.Identity()
    net.fc = nn.Identity()
    return net


def test_resnet18_cifar_stem_matches_protocols_figure() -> None:
    net = _cifar_resnet18()
    res = inference_gmacs(net, 32, 3)
    assert res["gmacs"] == pytest.approx(0.557, abs=0.001)
    assert res["params"] == sum(p.numel() for p in net.parameters())
    assert net.training  # restored after the eval-mode count


def test_multihead_attention_not_routed_to_uncountable_fast_path() -> None:
    # Frozen weights under no_grad in eval mode would use aten::_native_multi_head_attention.
    mha_block = nn.TransformerEncoderLayer(16, 4, dim_feedforward=32, batch_first=True)
    mha_block.requires_grad_(False)
    with torch.no_grad():
        res = inference_gmacs(nn.Sequential(nn.Flatten(2), _Transpose(), mha_block), 4, 16)
    assert "aten::_native_multi_head_attention" not in res["unsupported"]
    n, d = 16, 16
    attention = n * d * 3 * d + 2 * n * n * d + n * d * d
    mlp = 2 * n * d * 32
    layer_norms = 2 * 5 * n * d  # fvcore's convention: 5 per element for an affine norm
    assert res["macs"] == attention + mlp + layer_norms


class _Transpose(nn.Module):
    """B×C×L -> B×L×C."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.transpose(1, 2)
