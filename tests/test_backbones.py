"""Tests for bench.backbones: shapes, stems, torchvision parity, ViT token API and init."""

from __future__ import annotations

import math

import pytest
import torch
import torchvision
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck

from bench.backbones import (
    Backbone,
    VisionTransformer,
    build_backbone,
    count_parameters,
    list_backbones,
    sincos_pos_embed_2d,
)

EXPECTED_DIMS = {
    "resnet18": 512,
    "resnet50": 2048,
    "resnet_small": 256,
    "convnet4": 256,
    "vit_tiny": 192,
    "vit_small": 384,
    "vit_base": 768,
}


def _build(name: str, **kwargs) -> Backbone:
    """Build with a shallow ViT so the tests stay fast on CPU."""
    if name.startswith("vit"):
        kwargs.setdefault("depth", 2)
    return build_backbone(name, **kwargs)


def _vit(**kwargs) -> VisionTransformer:
    torch.manual_seed(0)
    model = _build("vit_tiny", **kwargs)
    assert isinstance(model, VisionTransformer)
    return model.eval()


def test_list_backbones_names() -> None:
    assert list_backbones() == sorted(EXPECTED_DIMS)


@pytest.mark.parametrize("name", sorted(EXPECTED_DIMS))
@pytest.mark.parametrize("in_channels", [1, 2, 3])
def test_feature_dim_and_output_shape(name: str, in_channels: int) -> None:
    torch.manual_seed(0)
    model = _build(name, in_channels=in_channels).eval()  # eval: batch of 1 is fine for BN
    assert isinstance(model, Backbone)
    assert model.feature_dim == EXPECTED_DIMS[name]
    with torch.no_grad():
        out = model(torch.randn(1, in_channels, 32, 32))
    assert out.shape == (1, EXPECTED_DIMS[name])
    assert torch.isfinite(out).all()
    assert model.config["name"] == name and model.config["in_channels"] == in_channels


@pytest.mark.parametrize("image_size, cifar_stem", [(64, False), (224, None)])
def test_resnet18_standard_stem(image_size: int, cifar_stem: bool | None) -> None:
    model = build_backbone("resnet18", image_size=image_size, cifar_stem=cifar_stem)
    assert model.conv1.kernel_size == (7, 7) and model.conv1.stride == (2, 2)
    assert isinstance(model.maxpool, nn.MaxPool2d)
    fmap = model.forward_features(torch.randn(1, 3, image_size, image_size))
    assert fmap.shape == (1, 512, image_size // 32, image_size // 32)
    assert model(torch.randn(1, 3, image_size, image_size)).shape == (1, 512)


@pytest.mark.parametrize("name", ["resnet18", "resnet50", "resnet_small"])
def test_cifar_stem_default_for_small_images(name: str) -> None:
    model = build_backbone(name, image_size=32)
    assert model.conv1.kernel_size == (3, 3) and model.conv1.stride == (1, 1)
    assert not any(isinstance(m, nn.MaxPool2d) for m in model.modules())
    # No stem downsampling: only the three stride-2 stages shrink 16 px to 2×2.
    with torch.no_grad():
        assert model.eval().forward_features(torch.randn(1, 3, 16, 16)).shape[-2:] == (2, 2)
    assert model.config["cifar_stem"] is True


def test_cifar_stem_can_be_forced_off_and_on() -> None:
    assert isinstance(build_backbone("resnet18", image_size=32, cifar_stem=False).maxpool, nn.MaxPool2d)
    forced = build_backbone("resnet18", image_size=224, cifar_stem=True)
    assert forced.conv1.stride == (1, 1) and isinstance(forced.maxpool, nn.Identity)


@pytest.mark.parametrize("name, factory", [("resnet18", torchvision.models.resnet18),
                                           ("resnet50", torchvision.models.resnet50)])
def test_resnet_matches_torchvision(name: str, factory) -> None:
    """Same parameter names/shapes as torchvision minus fc, and same outputs with its weights."""
    torch.manual_seed(0)
    reference = factory(weights=None).eval()
    reference.fc = nn.Identity()
    model = build_backbone(name, image_size=64, cifar_stem=False).eval()
    ref_shapes = {k: v.shape for k, v in reference.state_dict().items()}
    assert {k: v.shape for k, v in model.state_dict().items()} == ref_shapes
    model.load_state_dict(reference.state_dict())
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference(x))


def test_resnet18_parameter_count() -> None:
    # torchvision resnet18 has 11,689,512 parameters; fc (512*1000+1000) removed.
    assert count_parameters(build_backbone("resnet18", image_size=224)) == 11_689_512 - 513_000


@pytest.mark.parametrize("name, block, last_bn", [("resnet18", BasicBlock, "bn2"),
                                                  ("resnet50", Bottleneck, "bn3"),
                                                  ("resnet_small", BasicBlock, "bn2")])
def test_zero_init_residual(name: str, block: type, last_bn: str) -> None:
    model = build_backbone(name, zero_init_residual=True)
    blocks = [m for m in model.modules() if isinstance(m, block)]
    assert blocks
    for b in blocks:
        assert torch.all(getattr(b, last_bn).weight == 0)
        assert torch.all(b.bn1.weight == 1)
    default = build_backbone(name)
    assert all(torch.all(getattr(b, last_bn).weight == 1) for b in default.modules() if isinstance(b, block))


def test_zero_init_residual_blocks_are_identity_plus_relu() -> None:
    """With zero-init, a block without downsample returns relu(x) (train-mode BN, beta 0)."""
    model = build_backbone("resnet18", zero_init_residual=True)
    block = model.layer1[1]
    x = torch.randn(4, 64, 8, 8)
    torch.testing.assert_close(block(x), torch.relu(x))


def test_resnet_width_scales_stages_not_stem() -> None:
    model = build_backbone("resnet50", width=0.5, in_channels=1)
    assert model.conv1.out_channels == 64 and model.conv1.in_channels == 1
    assert model.feature_dim == 1024
    assert model(torch.randn(2, 1, 32, 32)).shape == (2, 1024)


def test_resnet_layer_norm_option() -> None:
    model = build_backbone("resnet_small", norm="layer").train()
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    x = torch.randn(3, 3, 32, 32)
    # Per-sample normalisation: a sample's features do not depend on the rest of the batch.
    torch.testing.assert_close(model(x)[:1], model(x[:1]))


def test_resnet_small_is_much_cheaper_than_resnet18() -> None:
    small = count_parameters(build_backbone("resnet_small"))
    assert small * 4 < count_parameters(build_backbone("resnet18"))


def test_convnet4_layout() -> None:
    model = build_backbone("convnet4", in_channels=2)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [32, 64, 128, 256]
    assert [c.stride for c in convs] == [(1, 1), (2, 2), (2, 2), (2, 2)]
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == 4
    assert model.forward_features(torch.randn(1, 2, 32, 32)).shape == (1, 256, 4, 4)


# ----------------------------------------------------------------------------- ViT


def test_vit_patch_size_defaults() -> None:
    small = _build("vit_tiny", image_size=32)
    assert small.patch_size == 4 and small.num_patches == 64 and small.config["patch_size"] == 4
    large = _build("vit_tiny", image_size=224, depth=1)
    assert large.patch_size == 16 and large.num_patches == 196
    assert large.pos_embed.shape == (1, 197, 192)
    assert _build("vit_small", patch_size=8).num_patches == 16


def test_vit_exposes_token_api() -> None:
    model = _vit()
    assert isinstance(model.patch_embed, nn.Module)
    assert isinstance(model.blocks, nn.ModuleList) and len(model.blocks) == 2
    assert isinstance(model.norm, nn.LayerNorm)
    assert model.embed_dim == model.feature_dim == 192
    assert model.cls_token.shape == (1, 1, 192)
    assert model.pos_embed.shape == (1, 1 + model.num_patches, 192)


def test_vit_base_parameter_count_matches_timm() -> None:
    # timm vit_base_patch16_224: 86,567,656 parameters incl. a 768x1000 head (769,000).
    model = build_backbone("vit_base", image_size=224, pos_embed="learned")
    assert count_parameters(model) == 86_567_656 - 769_000


def test_sincos_pos_embed_is_fixed_and_matches_formula() -> None:
    model = _vit()
    pos = model.pos_embed
    assert not pos.requires_grad
    dim, grid = 192, 8
    row, col = 2, 5
    token = pos[0, 1 + row * grid + col]
    quarter = dim // 4
    for k in (0, 1, 7, quarter - 1):
        omega = 10000.0 ** (-k / quarter)
        assert token[k].item() == pytest.approx(math.sin(col * omega), abs=1e-6)
        assert token[quarter + k].item() == pytest.approx(math.cos(col * omega), abs=1e-6)
        assert token[2 * quarter + k].item() == pytest.approx(math.sin(row * omega), abs=1e-6)
        assert token[3 * quarter + k].item() == pytest.approx(math.cos(row * omega), abs=1e-6)
    assert torch.all(pos[0, 0] == 0)
    torch.testing.assert_close(pos[0], sincos_pos_embed_2d(dim, grid, grid))


def test_sincos_pos_embed_unchanged_by_training_step() -> None:
    model = _vit().train()
    before = model.pos_embed.detach().clone()
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    model(torch.randn(2, 3, 32, 32)).sum().backward()
    opt.step()
    assert torch.equal(model.pos_embed, before)


def test_learned_pos_embed_is_trainable() -> None:
    model = _vit(pos_embed="learned")
    assert model.pos_embed.requires_grad
    assert 0 < model.pos_embed.std().item() < 0.05


@pytest.mark.parametrize("in_channels", [1, 3])
def test_frozen_patch_embed(in_channels: int) -> None:
    model = _vit(freeze_patch_embed=True, in_channels=in_channels).train()
    proj = model.patch_embed.proj
    bound = math.sqrt(6.0 / (in_channels * 4**2 + 192))
    assert proj.weight.abs().max().item() <= bound
    assert proj.weight.abs().max().item() > 0.9 * bound  # really uniform over the full range
    assert torch.all(proj.bias == 0)
    assert not proj.weight.requires_grad and not proj.bias.requires_grad
    frozen = count_parameters(model) - count_parameters(model, trainable_only=True)
    assert frozen == proj.weight.numel() + proj.bias.numel() + model.pos_embed.numel()

    weight, bias = proj.weight.detach().clone(), proj.bias.detach().clone()
    head_before = model.blocks[0].attn.qkv.weight.detach().clone()
    opt = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9, weight_decay=0.1)
    model(torch.randn(4, in_channels, 32, 32)).square().mean().backward()
    opt.step()
    assert torch.equal(proj.weight, weight) and torch.equal(proj.bias, bias)
    assert not torch.equal(model.blocks[0].attn.qkv.weight, head_before)


def test_unfrozen_patch_embed_trains_and_uses_xavier() -> None:
    model = _vit().train()
    proj = model.patch_embed.proj
    fan_in, fan_out = 3 * 4 * 4, 192
    assert proj.weight.abs().max().item() <= math.sqrt(6.0 / (fan_in + fan_out))
    assert proj.weight.requires_grad
    before = proj.weight.detach().clone()
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    model(torch.randn(4, 3, 32, 32)).square().mean().backward()
    opt.step()
    assert not torch.equal(proj.weight, before)


def test_vit_init_linear_and_cls() -> None:
    torch.manual_seed(0)
    model = _build("vit_small", image_size=224, patch_size=16, depth=2)
    assert 0.015 < model.cls_token.std().item() < 0.025
    qkv = model.blocks[0].attn.qkv
    assert torch.all(qkv.bias == 0)
    assert qkv.weight.abs().max().item() <= math.sqrt(6.0 / (384 + 3 * 384))


def test_forward_tokens_keep_all_equals_full_forward() -> None:
    model = _vit()
    x = torch.randn(2, 3, 32, 32)
    keep = torch.arange(model.num_patches).expand(2, -1)
    with torch.no_grad():
        full = model.forward_tokens(x)
        kept = model.forward_tokens(x, keep)
        pooled = model(x)
    assert full.shape == (2, 1 + model.num_patches, 192)
    torch.testing.assert_close(kept, full)
    torch.testing.assert_close(pooled, full[:, 0])


def test_forward_tokens_keep_subset_ignores_dropped_patches() -> None:
    model = _vit()
    torch.manual_seed(1)
    x = torch.randn(2, 3, 32, 32)
    keep = torch.stack([torch.randperm(64)[:16] for _ in range(2)])
    with torch.no_grad():
        tokens = model.forward_tokens(x, keep)
        assert tokens.shape == (2, 17, 192)
        # Changing every pixel outside the kept patches must not change the encoding.
        patches = model.patchify(x)
        dropped = torch.ones(2, 64, dtype=torch.bool)
        dropped[torch.arange(2).unsqueeze(1), keep] = False
        noisy = torch.where(dropped.unsqueeze(-1), torch.randn_like(patches), patches)
        torch.testing.assert_close(model.forward_tokens(model.unpatchify(noisy), keep), tokens)
        # ... and the kept patches do matter.
        assert not torch.allclose(model.forward_tokens(x.flip(-1), keep), tokens)


def test_forward_tokens_mask_token_replaces_patches() -> None:
    model = _vit()
    x = torch.randn(2, 3, 32, 32)
    mask = torch.zeros(2, 64, dtype=torch.bool)
    mask[:, ::3] = True
    mask_token = torch.randn(192)
    with torch.no_grad():
        out = model.forward_tokens(x, mask=mask, mask_token=mask_token)
        patches = model.patchify(x)
        changed = torch.where(mask.unsqueeze(-1), torch.randn_like(patches), patches)
        out2 = model.forward_tokens(model.unpatchify(changed), mask=mask, mask_token=mask_token)
    torch.testing.assert_close(out, out2)
    with pytest.raises(ValueError, match="mask_token"):
        model.forward_tokens(x, mask=mask)


def test_global_pool_mean() -> None:
    model = _vit(global_pool="mean")
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x), model.forward_tokens(x)[:, 1:].mean(1))


def test_vit_other_resolution_interpolates_pos_embed() -> None:
    model = _vit()
    with torch.no_grad():
        assert model.forward_tokens(torch.randn(2, 3, 16, 16)).shape == (2, 1 + 16, 192)
        assert model(torch.randn(2, 3, 16, 16)).shape == (2, 192)
        # Resizing to the native grid is the identity.
        torch.testing.assert_close(model.patch_pos_embed(8, 8), model.pos_embed[:, 1:])


def test_patchify_unpatchify_round_trip_and_layout() -> None:
    model = _vit(in_channels=2)
    x = torch.randn(3, 2, 32, 32)
    patches = model.patchify(x)
    assert patches.shape == (3, 64, 4 * 4 * 2)
    # Patch (row 1, col 2) holds pixels [4:8, 8:12] in (row, col, channel) order.
    expected = x[0, :, 4:8, 8:12].permute(1, 2, 0).reshape(-1)
    torch.testing.assert_close(patches[0, 1 * 8 + 2], expected)
    torch.testing.assert_close(model.unpatchify(patches), x)


def test_drop_path_schedule_and_eval_determinism() -> None:
    model = _vit(drop_path=0.2, depth=3)
    assert [b.drop_path.rate for b in model.blocks] == pytest.approx([0.0, 0.1, 0.2])
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x), model(x))


def test_backbones_run_under_autocast() -> None:
    x = torch.randn(2, 3, 32, 32)
    for name in ("resnet_small", "vit_tiny"):
        model = _build(name)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(x.contiguous(memory_format=torch.channels_last))
        assert out.shape == (2, model.feature_dim) and torch.isfinite(out.float()).all()


# ----------------------------------------------------------------------------- errors


def test_unknown_backbone_lists_known_ones() -> None:
    with pytest.raises(ValueError, match="resnet18") as info:
        build_backbone("resnet19")
    assert "vit_tiny" in str(info.value) and "resnet19" in str(info.value)


def test_unknown_option_names_it_and_allowed_ones() -> None:
    with pytest.raises(TypeError, match="patchsize") as info:
        build_backbone("vit_tiny", patchsize=4)
    assert "patch_size" in str(info.value) and "freeze_patch_embed" in str(info.value)
    with pytest.raises(TypeError, match="zero_init_residual"):
        build_backbone("convnet4", zero_init_residual=True)


@pytest.mark.parametrize("name, kwargs", [
    ("vit_tiny", {"cifar_stem": True}),
    ("vit_tiny", {"pos_embed": "rope"}),
    ("vit_tiny", {"global_pool": "max"}),
    ("vit_tiny", {"patch_size": 5}),
    ("vit_tiny", {"drop_path": 1.0}),
    ("resnet18", {"norm": "instance"}),
    ("resnet18", {"width": 0}),
    ("convnet4", {"in_channels": 0}),
])
def test_invalid_values_raise(name: str, kwargs: dict) -> None:
    with pytest.raises(ValueError):
        _build(name, **kwargs)
