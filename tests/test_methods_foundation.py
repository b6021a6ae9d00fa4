"""SimCLR and BYOL: structure, stop-gradient, EMA order and schedule, a real-data smoke run."""

from __future__ import annotations

import math

import pytest
import torch

from bench.backbones import build_backbone
from bench.data.augment import BatchAugmenter
from bench.data.datasets import dataset_stats
from bench.eval.collapse import collapse_indicator
from bench.optim import build_optimizer
from methods.base import Batch, RunContext, cosine_momentum, get_method, list_methods
from methods.heads import linear_count, mlp_head


def make(name: str, image_size: int = 32, epochs: int = 10, **options):
    cls = get_method(name)
    ctx = RunContext(dataset_size=512, batch_size=32, epochs=epochs, steps_per_epoch=16, image_size=image_size,
                     channels=3, num_classes=10)
    backbone = build_backbone("convnet4", image_size=image_size)
    return cls(backbone, cls.Options(**options), ctx)


def fake_batch(n_views: int = 2, n: int = 8, size: int = 32) -> Batch:
    g = torch.Generator().manual_seed(0)
    return Batch([torch.randn(n, 3, size, size, generator=g) for _ in range(n_views)],
                 torch.randint(0, 10, (n,), generator=g), torch.arange(n))


def test_registry_has_foundation_methods():
    assert {"simclr", "byol", "random", "supervised"} <= set(list_methods())


def test_simclr_projector_matches_paper():
    m = make("simclr")
    lin = [x for x in m.projector.modules() if isinstance(x, torch.nn.Linear)]
    assert len(lin) == 2 and all(layer.bias is None for layer in lin)
    last_bn = m.projector[-1]
    assert isinstance(last_bn, torch.nn.BatchNorm1d) and not last_bn.bias.requires_grad  # γ without β
    assert m.temperature == 0.5  # CIFAR-scale default of the official code
    assert make("simclr", image_size=96).temperature == 0.1


def test_head_norm_is_one_option():
    for norm, kind in (("bn", torch.nn.BatchNorm1d), ("gn_ws", torch.nn.GroupNorm)):
        head = mlp_head([16, 32, 8], norm=norm)
        assert any(isinstance(x, kind) for x in head.modules())
    head = mlp_head([16, 32, 8], norm="none", last_norm="bn")
    assert not any(isinstance(x, (torch.nn.BatchNorm1d, torch.nn.GroupNorm)) for x in head.modules())
    assert linear_count(mlp_head([16, 32, 32, 8])) == 3
    m = make("byol", head_norm="none")
    assert not any(isinstance(x, torch.nn.BatchNorm1d) for x in m.predictor.modules())


def test_byol_target_gets_no_gradient_and_online_does():
    m = make("byol")
    out = m.forward_train(fake_batch())
    out.loss.backward()
    assert all(p.grad is None for p in m.target.parameters())
    assert all(not p.requires_grad for p in m.target.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in m.predictor.parameters())
    assert 0 <= out.loss.item() <= 8


def test_byol_target_is_not_in_optimizer():
    m = make("byol")
    target_ids = {id(p) for p in m.target.parameters()}
    opt = build_optimizer(m.param_groups(), m.optim_recipe(), 32)
    in_opt = {id(p) for g in opt.param_groups for p in g["params"]}
    assert not target_ids & in_opt


def test_byol_ema_happens_after_the_step_with_cosine_momentum():
    m = make("byol")
    before = [p.clone() for p in m.target.parameters()]
    online_before = [p.clone() for p in m.backbone.parameters()]
    m.forward_train(fake_batch()).loss.backward()
    # forward/backward alone never touches the target
    assert all(torch.equal(a, b) for a, b in zip(before, m.target.parameters()))
    with torch.no_grad():
        for p in m.backbone.parameters():
            p.add_(1.0)
    m.on_step_end(step=5, progress=0.5)
    tau = cosine_momentum(m.base_momentum, 0.5)
    expected = [tau * t + (1 - tau) * (o + 1.0) for t, o in zip(before, online_before)]
    got = list(m.target["backbone"].parameters())
    assert all(torch.allclose(e, g, atol=1e-6) for e, g in zip(expected, got))


def test_cosine_momentum_schedule_endpoints():
    assert cosine_momentum(0.996, 0.0) == pytest.approx(0.996)
    assert cosine_momentum(0.996, 1.0) == pytest.approx(1.0)
    assert cosine_momentum(0.99, 0.5) == pytest.approx(1 - 0.01 * (math.cos(math.pi / 2) + 1) / 2)


def test_byol_presets_follow_epochs_and_overrides_win():
    assert make("byol", epochs=100).optim_recipe().base_lr == 0.45
    assert make("byol", epochs=300).optim_recipe().base_lr == 0.3
    assert make("byol", epochs=1000).optim_recipe().base_lr == 0.2
    assert make("byol", epochs=100, base_lr=0.1).optim_recipe().base_lr == 0.1


def test_no_weight_decay_on_norms_and_biases():
    m = make("simclr")
    groups = m.param_groups()
    nd = next(g for g in groups if g["name"] == "no_decay")
    assert nd["weight_decay"] == 0.0 and all(p.ndim <= 1 for p in nd["params"])
    assert all(p.ndim > 1 for p in next(g for g in groups if g["name"] == "decay")["params"])


def test_unknown_option_is_rejected_with_field_name():
    with pytest.raises(Exception, match="temprature"):
        get_method("simclr").Options(temprature=0.1)


@pytest.mark.parametrize("name", ["simclr", "byol"])
def test_smoke_real_data_loss_falls_no_collapse(name, cifar10_small):
    """A few dozen steps on real CIFAR-10: the loss falls and features do not collapse."""
    torch.manual_seed(0)
    train, _ = cifar10_small
    m = make(name, epochs=1)
    aug = BatchAugmenter(m.view_recipe(), *dataset_stats("cifar10"))
    opt = build_optimizer(m.param_groups(), m.optim_recipe(), 64)
    gen = torch.Generator().manual_seed(0)
    losses = []
    steps = 40
    for step in range(steps):
        idx = torch.randint(0, len(train), (64,), generator=gen)
        views = aug(train.images[idx], generator=gen)
        out = m.forward_train(Batch(views, train.labels[idx], idx))
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        m.on_step_end(step + 1, (step + 1) / steps)
        losses.append(out.loss.item())
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5, losses
    m.eval()
    with torch.no_grad():
        feats = m.encoder(aug(train.images[:256], generator=gen)[0])
    assert collapse_indicator(feats) > 0.1
