"""Encoder backbones shared by every SSL method: ResNets, a small CPU ConvNet and ViTs.

A backbone maps images ``B×C×H×W`` to pooled features ``B×feature_dim`` (no head, no
projector); methods add their own projectors on top.  Build one by name with
:func:`build_backbone`; :func:`list_backbones` lists the names.

* ``resnet18`` / ``resnet50``: torchvision's ResNet (built from torchvision's own
  ``BasicBlock``/``Bottleneck`` and init, so the state-dict keys and shapes equal
  ``torchvision.models.resnetXX(weights=None)`` minus ``fc``), with any number of input
  channels and the CIFAR stem (3×3 stride-1 ``conv1``, no max-pool) used by solo-learn and
  lightly for 32 px images.
* ``resnet_small``: one BasicBlock per stage at half width (32-64-128-256), for CPU runs.
* ``convnet4``: four conv-BN-ReLU layers + global average pool, the fastest CPU baseline.
* ``vit_tiny`` / ``vit_small`` / ``vit_base``: pre-norm ViT (MAE/timm layout and init) with
  fixed 2-D sin-cos or learned position embeddings, MoCo v3's frozen random patch
  projection, stochastic depth and the token-level API (``forward_tokens`` with
  ``keep_ids``, ``patchify``/``unpatchify``) that MAE-, DINO- and iBOT-style methods need.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.resnet import BasicBlock, Bottleneck

__all__ = [
    "Backbone",
    "ResNet",
    "ConvNet",
    "VisionTransformer",
    "build_backbone",
    "list_backbones",
    "count_parameters",
    "sincos_pos_embed_2d",
]


class Backbone(nn.Module):
    """Base class: ``forward(x: B×C×H×W float) -> B×feature_dim`` pooled features.

    Every backbone sets ``feature_dim`` (the width of its output) so that methods can size
    projectors and evaluators can size probes without running a forward pass.
    ``build_backbone`` also stores the arguments it was built with in ``config`` so a run
    record or checkpoint can rebuild the same encoder.
    """

    feature_dim: int
    config: dict[str, Any]

    def forward(self, x: Tensor) -> Tensor:  # pragma: no cover - abstract
        """Return pooled features ``B×feature_dim`` for images ``x``."""
        raise NotImplementedError


def count_parameters(module: nn.Module, trainable_only: bool = False) -> int:
    """Number of scalar parameters in ``module`` (only ``requires_grad`` ones if asked).

    Used by the report (model size column) and by tests that check frozen parts.
    """
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


# --------------------------------------------------------------------------------------
# ResNet
# --------------------------------------------------------------------------------------

_Block = type[BasicBlock] | type[Bottleneck]


def _norm_factory(norm: str) -> Callable[[int], nn.Module]:
    """Map ``norm`` to a channel-count -> module factory.

    ``"batch"`` is the standard BatchNorm2d.  ``"layer"`` is GroupNorm with one group, i.e.
    LayerNorm over C×H×W per sample: CPC v2 (Hénaff et al. 2020) replaces BN with LN
    because BN statistics across patches of one image leak information.
    """
    if norm == "batch":
        return nn.BatchNorm2d
    if norm == "layer":
        return lambda channels: nn.GroupNorm(1, channels)
    raise ValueError(f"norm must be 'batch' or 'layer', got {norm!r}")


def _make_stage(
    block: _Block, inplanes: int, planes: int, blocks: int, stride: int,
    norm_layer: Callable[[int], nn.Module],
) -> nn.Sequential:
    """One ResNet stage exactly as torchvision's ``ResNet._make_layer`` builds it."""
    out = planes * block.expansion
    downsample = None
    if stride != 1 or inplanes != out:
        downsample = nn.Sequential(
            nn.Conv2d(inplanes, out, kernel_size=1, stride=stride, bias=False), norm_layer(out)
        )
    layers = [block(inplanes, planes, stride, downsample, norm_layer=norm_layer)]
    layers += [block(out, planes, norm_layer=norm_layer) for _ in range(1, blocks)]
    return nn.Sequential(*layers)


class ResNet(Backbone):
    """torchvision ResNet trunk without ``fc``; optional CIFAR stem, channels and widths.

    The CIFAR stem (3×3 stride-1 ``conv1`` and ``maxpool`` replaced by ``Identity``) is the
    ResNet-18 variant of solo-learn and lightly (METHODS.md conventions), which keeps 32 px
    inputs at 32×32 through ``layer1``.  ``widths`` scales the stages while the stem keeps
    ``stem_width`` channels, which is how CMC's half/double-width ResNet-50 is built
    (HobbitLong/CMC ``models/resnet.py``).  Initialisation follows torchvision: Kaiming-normal
    (fan-out) convs, unit/zero norm affine, and with ``zero_init_residual`` the last norm
    gain of every residual branch set to zero (Goyal et al. 2017; used by SimSiam).
    """

    def __init__(
        self,
        block: _Block,
        layers: tuple[int, int, int, int],
        *,
        widths: tuple[int, int, int, int] = (64, 128, 256, 512),
        stem_width: int = 64,
        in_channels: int = 3,
        cifar_stem: bool = False,
        zero_init_residual: bool = False,
        norm: str = "batch",
    ) -> None:
        super().__init__()
        norm_layer = _norm_factory(norm)
        if cifar_stem:
            self.conv1 = nn.Conv2d(in_channels, stem_width, 3, stride=1, padding=1, bias=False)
        else:
            self.conv1 = nn.Conv2d(in_channels, stem_width, 7, stride=2, padding=3, bias=False)
        self.bn1 = norm_layer(stem_width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool: nn.Module = nn.Identity() if cifar_stem else nn.MaxPool2d(3, stride=2, padding=1)
        inplanes = stem_width
        for i, (planes, blocks) in enumerate(zip(widths, layers)):
            stage = _make_stage(block, inplanes, planes, blocks, 1 if i == 0 else 2, norm_layer)
            self.add_module(f"layer{i + 1}", stage)
            inplanes = planes * block.expansion
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.feature_dim = inplanes
        self.cifar_stem = cifar_stem
        self._init_weights(zero_init_residual)

    def _init_weights(self, zero_init_residual: bool) -> None:
        """torchvision's ResNet initialisation (see ``torchvision/models/resnet.py``)."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, Bottleneck):
                    nn.init.zeros_(m.bn3.weight)
                elif isinstance(m, BasicBlock):
                    nn.init.zeros_(m.bn2.weight)

    def forward_features(self, x: Tensor) -> Tensor:
        """Feature map ``B×feature_dim×h×w`` after ``layer4`` (before pooling), for dense use."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def forward(self, x: Tensor) -> Tensor:
        """Globally average-pooled features ``B×feature_dim``."""
        return torch.flatten(self.avgpool(self.forward_features(x)), 1)


# --------------------------------------------------------------------------------------
# ConvNet
# --------------------------------------------------------------------------------------


class ConvNet(Backbone):
    """Plain conv-BN-ReLU stack + global average pool: the cheapest CPU baseline.

    3×3 convolutions, stride 1 in the first layer and stride 2 afterwards, so 32 px inputs
    end at 4×4 before pooling.  Kaiming-normal (fan-out) init as for the ResNets.
    """

    def __init__(self, in_channels: int = 3, widths: tuple[int, ...] = (32, 64, 128, 256)) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = in_channels
        for i, width in enumerate(widths):
            stride = 1 if i == 0 else 2
            layers += [
                nn.Conv2d(channels, width, 3, stride=stride, padding=1, bias=False),
                nn.BatchNorm2d(width),
                nn.ReLU(inplace=True),
            ]
            channels = width
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.feature_dim = channels
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward_features(self, x: Tensor) -> Tensor:
        """Feature map ``B×feature_dim×h×w`` before pooling."""
        return self.features(x)

    def forward(self, x: Tensor) -> Tensor:
        """Globally average-pooled features ``B×feature_dim``."""
        return torch.flatten(self.pool(self.features(x)), 1)


# --------------------------------------------------------------------------------------
# Vision Transformer
# --------------------------------------------------------------------------------------


def _sincos_1d(dim: int, positions: Tensor) -> Tensor:
    """1-D sin-cos embedding ``len(positions)×dim``: [sin(p·ω), cos(p·ω)], ω_k = 10000^(-2k/dim)."""
    omega = 1.0 / 10000 ** (torch.arange(dim // 2, dtype=torch.float64) / (dim / 2))
    angles = positions.to(torch.float64).reshape(-1, 1) * omega.reshape(1, -1)
    return torch.cat([angles.sin(), angles.cos()], dim=1)


def sincos_pos_embed_2d(dim: int, grid_h: int, grid_w: int, cls_token: bool = True) -> Tensor:
    """Fixed 2-D sin-cos position embedding ``(cls + grid_h·grid_w)×dim`` (float32).

    Follows MAE ``util/pos_embed.py``: tokens in row-major order; the first ``dim/2``
    channels encode the column (x) coordinate, the last ``dim/2`` the row (y) coordinate,
    each as ``[sin, cos]`` with frequencies 10000^(-k/(dim/4)); the CLS slot is all zeros.
    MoCo v3 uses the same construction (axes swapped), which is equivalent up to a transpose.
    """
    if dim % 4:
        raise ValueError(f"sin-cos position embedding needs dim divisible by 4, got {dim}")
    rows, cols = torch.meshgrid(torch.arange(grid_h), torch.arange(grid_w), indexing="ij")
    emb = torch.cat([_sincos_1d(dim // 2, cols), _sincos_1d(dim // 2, rows)], dim=1)
    if cls_token:
        emb = torch.cat([torch.zeros(1, dim, dtype=emb.dtype), emb], dim=0)
    return emb.float()


def _drop_path(x: Tensor, rate: float, training: bool) -> Tensor:
    """Stochastic depth (Huang et al. 2016): drop a sample's whole residual branch."""
    if rate == 0.0 or not training:
        return x
    keep = 1.0 - rate
    mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
    return x * mask / keep


class DropPath(nn.Module):
    """Module wrapper of :func:`_drop_path` (identity at eval time)."""

    def __init__(self, rate: float = 0.0) -> None:
        super().__init__()
        self.rate = rate

    def forward(self, x: Tensor) -> Tensor:
        """Apply stochastic depth to the residual branch output ``x``."""
        return _drop_path(x, self.rate, self.training)

    def extra_repr(self) -> str:
        return f"rate={self.rate}"


class PatchEmbed(nn.Module):
    """Non-overlapping p×p patches -> D-dim tokens via a stride-p convolution."""

    def __init__(self, patch_size: int, in_channels: int, embed_dim: int) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_channels, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: Tensor) -> Tensor:
        """``B×C×H×W`` -> ``B×(H/p·W/p)×D`` tokens in row-major patch order."""
        return self.proj(x).flatten(2).transpose(1, 2)


class Attention(nn.Module):
    """Multi-head self-attention using ``F.scaled_dot_product_attention`` (fused kernels)."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"embed dim {dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        """Self-attention over the tokens of ``x`` (``B×N×D``)."""
        b, n, d = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, d // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(b, n, d))


class Block(nn.Module):
    """Pre-norm transformer block: x + DP(Attn(LN(x))), then x + DP(MLP(LN(x)))."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, drop_path: float = 0.0) -> None:
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))
        self.drop_path = DropPath(drop_path)

    def forward(self, x: Tensor) -> Tensor:
        """Apply the block to tokens ``B×N×D``."""
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class VisionTransformer(Backbone):
    """ViT encoder (Dosovitskiy et al. 2021) in the MAE/timm layout, returning CLS or mean features.

    Initialisation follows MAE ``models_mae.py``: fixed sin-cos (or truncated-normal learned)
    position embedding, patch projection Xavier-uniform as a linear map, CLS token N(0, 0.02),
    Linear Xavier-uniform with zero bias, LayerNorm 1/0.  ``freeze_patch_embed`` applies
    MoCo v3's random patch projection (``vits.py``): U(±√(6/(C·p²+D))) weights (C=3 in the
    paper), zero bias, both frozen.  Stochastic depth grows linearly to ``drop_path`` over
    the blocks (timm/DINO).  Images whose patch grid differs from ``image_size`` (e.g. DINO
    local crops) get the patch position embedding bicubically resized (DINO
    ``interpolate_pos_encoding``).
    """

    def __init__(
        self,
        *,
        image_size: int = 224,
        patch_size: int = 16,
        in_channels: int = 3,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        pos_embed: str = "sincos",
        freeze_patch_embed: bool = False,
        drop_path: float = 0.0,
        global_pool: str = "cls",
    ) -> None:
        super().__init__()
        _check_vit_args(image_size, patch_size, embed_dim, pos_embed, drop_path, global_pool)
        self.patch_size = patch_size
        self.in_channels = in_channels
        self.embed_dim = self.feature_dim = embed_dim
        self.grid_size = (image_size // patch_size, image_size // patch_size)
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        self.global_pool = global_pool
        self.patch_embed = PatchEmbed(patch_size, in_channels, embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(
            torch.zeros(1, 1 + self.num_patches, embed_dim), requires_grad=pos_embed == "learned"
        )
        rates = torch.linspace(0, drop_path, depth).tolist()
        self.blocks = nn.ModuleList(Block(embed_dim, num_heads, mlp_ratio, r) for r in rates)
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self._init_weights(pos_embed)
        if freeze_patch_embed:
            self._freeze_random_patch_embed()

    def _init_weights(self, pos_embed: str) -> None:
        """MAE/timm init (see class docstring)."""
        with torch.no_grad():
            if pos_embed == "sincos":
                self.pos_embed.copy_(sincos_pos_embed_2d(self.embed_dim, *self.grid_size).unsqueeze(0))
            else:
                nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.normal_(self.cls_token, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        weight = self.patch_embed.proj.weight
        nn.init.xavier_uniform_(weight.data.view(weight.shape[0], -1))

    def _freeze_random_patch_embed(self) -> None:
        """MoCo v3 ``--stop-grad-conv1``: uniform random patch projection, then frozen."""
        proj = self.patch_embed.proj
        bound = math.sqrt(6.0 / (self.in_channels * self.patch_size**2 + self.embed_dim))
        nn.init.uniform_(proj.weight, -bound, bound)
        nn.init.zeros_(proj.bias)
        proj.weight.requires_grad_(False)
        proj.bias.requires_grad_(False)

    def patch_pos_embed(self, grid_h: int, grid_w: int) -> Tensor:
        """Position embedding ``1×(grid_h·grid_w)×D`` for the patch tokens (CLS slot excluded)."""
        pos = self.pos_embed[:, 1:]
        if (grid_h, grid_w) == self.grid_size:
            return pos
        pos = pos.reshape(1, *self.grid_size, self.embed_dim).permute(0, 3, 1, 2)
        pos = F.interpolate(pos, size=(grid_h, grid_w), mode="bicubic", align_corners=False)
        return pos.permute(0, 2, 3, 1).reshape(1, grid_h * grid_w, self.embed_dim)

    def forward_tokens(
        self,
        x: Tensor,
        keep_ids: Tensor | None = None,
        *,
        mask: Tensor | None = None,
        mask_token: Tensor | None = None,
    ) -> Tensor:
        """Encode images to normed tokens ``B×(1+L')×D`` (CLS first).

        ``keep_ids`` (``B×L'`` long): encode only those patch tokens, after adding their
        position embeddings, plus CLS — MAE's encoder on visible patches.  ``mask``
        (``B×L`` bool) with ``mask_token`` (``D``-broadcastable): replace masked patch
        embeddings by the token before adding positions — iBOT/BEiT-style masked inputs.
        """
        grid_h, grid_w = x.shape[-2] // self.patch_size, x.shape[-1] // self.patch_size
        tokens = self.patch_embed(x)
        if mask is not None:
            if mask_token is None:
                raise ValueError("mask given without mask_token")
            tokens = torch.where(mask.unsqueeze(-1), mask_token.to(tokens.dtype), tokens)
        tokens = tokens + self.patch_pos_embed(grid_h, grid_w)
        if keep_ids is not None:
            index = keep_ids.unsqueeze(-1).expand(-1, -1, tokens.shape[-1])
            tokens = torch.gather(tokens, 1, index)
        cls = (self.cls_token + self.pos_embed[:, :1]).expand(tokens.shape[0], -1, -1)
        tokens = torch.cat([cls.to(tokens.dtype), tokens], dim=1)
        for block in self.blocks:
            tokens = block(tokens)
        return self.norm(tokens)

    def forward(self, x: Tensor) -> Tensor:
        """Pooled features ``B×D``: the normed CLS token, or the mean of normed patch tokens."""
        tokens = self.forward_tokens(x)
        return tokens[:, 0] if self.global_pool == "cls" else tokens[:, 1:].mean(dim=1)

    def patchify(self, imgs: Tensor) -> Tensor:
        """``B×C×H×W`` -> ``B×L×(p²·C)``, per patch (row, col, channel) order as in MAE."""
        b, c, h, w = imgs.shape
        p = self.patch_size
        if h % p or w % p:
            raise ValueError(f"image size {h}×{w} is not divisible by patch size {p}")
        x = imgs.reshape(b, c, h // p, p, w // p, p).permute(0, 2, 4, 3, 5, 1)
        return x.reshape(b, (h // p) * (w // p), p * p * c)

    def unpatchify(self, x: Tensor, grid: tuple[int, int] | None = None) -> Tensor:
        """Inverse of :meth:`patchify`; ``grid`` defaults to this model's (or a square) grid."""
        b, length, dim = x.shape
        p = self.patch_size
        if grid is None:
            side = math.isqrt(length)
            grid = self.grid_size if length == self.num_patches else (side, side)
        gh, gw = grid
        if gh * gw != length or dim % (p * p):
            raise ValueError(f"cannot unpatchify {tuple(x.shape)} with grid {grid} and patch {p}")
        c = dim // (p * p)
        x = x.reshape(b, gh, gw, p, p, c).permute(0, 5, 1, 3, 2, 4)
        return x.reshape(b, c, gh * p, gw * p)


def _check_vit_args(
    image_size: int, patch_size: int, embed_dim: int, pos_embed: str, drop_path: float, global_pool: str
) -> None:
    """Validate ViT constructor arguments with messages that name the offending value."""
    if patch_size < 1 or image_size % patch_size:
        raise ValueError(f"image_size {image_size} must be a positive multiple of patch_size {patch_size}")
    if pos_embed not in ("sincos", "learned"):
        raise ValueError(f"pos_embed must be 'sincos' or 'learned', got {pos_embed!r}")
    if pos_embed == "sincos" and embed_dim % 4:
        raise ValueError(f"sincos pos_embed needs embed_dim divisible by 4, got {embed_dim}")
    if not 0.0 <= drop_path < 1.0:
        raise ValueError(f"drop_path must be in [0, 1), got {drop_path}")
    if global_pool not in ("cls", "mean"):
        raise ValueError(f"global_pool must be 'cls' or 'mean', got {global_pool!r}")


# --------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Spec:
    """A registered backbone: its builder, allowed options with defaults, stem applicability."""

    builder: Callable[..., Backbone]
    options: dict[str, Any] = field(default_factory=dict)
    has_cifar_stem: bool = False


def _default_cifar_stem(cifar_stem: bool | None, image_size: int) -> bool:
    """CIFAR stem unless told otherwise when images are small (≤ 64 px)."""
    return image_size <= 64 if cifar_stem is None else bool(cifar_stem)


def _resnet_builder(
    block: _Block, layers: tuple[int, int, int, int], widths: tuple[int, int, int, int], stem: int
) -> Callable[..., Backbone]:
    """Builder for a ResNet variant; ``width`` scales the stages, not the stem (as CMC)."""

    def build(*, in_channels: int, image_size: int, cifar_stem: bool | None,
              zero_init_residual: bool, width: float, norm: str) -> Backbone:
        if width <= 0:
            raise ValueError(f"width must be positive, got {width}")
        scaled = tuple(max(1, int(round(w * width))) for w in widths)
        return ResNet(block, layers, widths=scaled, stem_width=stem, in_channels=in_channels,
                      cifar_stem=_default_cifar_stem(cifar_stem, image_size),
                      zero_init_residual=bool(zero_init_residual), norm=norm)

    return build


def _convnet_builder(*, in_channels: int, image_size: int, cifar_stem: bool | None, width: float) -> Backbone:
    """Builder for ``convnet4`` (32-64-128-256 channels times ``width``)."""
    if width <= 0:
        raise ValueError(f"width must be positive, got {width}")
    return ConvNet(in_channels, tuple(max(1, int(round(w * width))) for w in (32, 64, 128, 256)))


def _vit_builder(embed_dim: int, num_heads: int) -> Callable[..., Backbone]:
    """Builder for a ViT width; ``patch_size=None`` means 16, or 4 for images ≤ 64 px."""

    def build(*, in_channels: int, image_size: int, cifar_stem: bool | None, patch_size: int | None,
              depth: int, pos_embed: str, freeze_patch_embed: bool, drop_path: float,
              global_pool: str) -> Backbone:
        if patch_size is None:
            patch_size = 4 if image_size <= 64 else 16
        if int(depth) < 1:
            raise ValueError(f"depth must be >= 1, got {depth}")
        return VisionTransformer(
            image_size=image_size, patch_size=int(patch_size), in_channels=in_channels,
            embed_dim=embed_dim, depth=int(depth), num_heads=num_heads, pos_embed=pos_embed,
            freeze_patch_embed=bool(freeze_patch_embed), drop_path=float(drop_path),
            global_pool=global_pool,
        )

    return build


_RESNET_OPTIONS = {"zero_init_residual": False, "width": 1.0, "norm": "batch"}


def _vit_spec(embed_dim: int, depth: int, num_heads: int) -> _Spec:
    """Registry entry of a ViT size; ``depth`` is the default, overridable as an option."""
    options = {"patch_size": None, "depth": depth, "pos_embed": "sincos", "freeze_patch_embed": False,
               "drop_path": 0.0, "global_pool": "cls"}
    return _Spec(_vit_builder(embed_dim, num_heads), options)


_REGISTRY: dict[str, _Spec] = {
    "resnet18": _Spec(_resnet_builder(BasicBlock, (2, 2, 2, 2), (64, 128, 256, 512), 64),
                      dict(_RESNET_OPTIONS), has_cifar_stem=True),
    "resnet50": _Spec(_resnet_builder(Bottleneck, (3, 4, 6, 3), (64, 128, 256, 512), 64),
                      dict(_RESNET_OPTIONS), has_cifar_stem=True),
    "resnet_small": _Spec(_resnet_builder(BasicBlock, (1, 1, 1, 1), (32, 64, 128, 256), 32),
                          dict(_RESNET_OPTIONS), has_cifar_stem=True),
    "convnet4": _Spec(_convnet_builder, {"width": 1.0}),
    "vit_tiny": _vit_spec(192, 12, 3),
    "vit_small": _vit_spec(384, 12, 6),
    "vit_base": _vit_spec(768, 12, 12),
}


def list_backbones() -> list[str]:
    """Sorted names accepted by :func:`build_backbone`."""
    return sorted(_REGISTRY)


def build_backbone(
    name: str,
    *,
    in_channels: int = 3,
    image_size: int = 32,
    cifar_stem: bool | None = None,
    **options: Any,
) -> Backbone:
    """Build the backbone ``name`` for ``in_channels``-channel ``image_size`` px inputs.

    ``cifar_stem`` (ResNets only) defaults to ``image_size <= 64``.  ``options`` are the
    backbone's own settings (ResNets: ``zero_init_residual``, ``width``, ``norm``;
    ``convnet4``: ``width``; ViTs: ``patch_size``, ``depth``, ``pos_embed``,
    ``freeze_patch_embed``, ``drop_path``, ``global_pool``).  Unknown names raise
    ValueError, unknown options TypeError, both listing what is allowed, so a typo in a
    suite file fails at config time instead of silently using a default.
    """
    spec = _REGISTRY.get(name)
    if spec is None:
        raise ValueError(f"unknown backbone {name!r}; known backbones: {', '.join(list_backbones())}")
    unknown = sorted(set(options) - set(spec.options))
    if unknown:
        allowed = ", ".join(sorted(spec.options)) or "none"
        raise TypeError(f"unknown option(s) {', '.join(unknown)} for backbone {name!r}; allowed: {allowed}")
    if cifar_stem is not None and not spec.has_cifar_stem:
        raise ValueError(f"cifar_stem applies only to ResNet backbones, not {name!r}")
    if int(in_channels) < 1 or int(image_size) < 1:
        raise ValueError(f"in_channels and image_size must be positive, got {in_channels}, {image_size}")
    settings = {**spec.options, **options}
    model = spec.builder(in_channels=int(in_channels), image_size=int(image_size),
                         cifar_stem=cifar_stem, **settings)
    if isinstance(model, VisionTransformer):
        settings["patch_size"] = model.patch_size
    model.config = {"name": name, "in_channels": int(in_channels), "image_size": int(image_size),
                    "cifar_stem": getattr(model, "cifar_stem", None), **settings}
    return model
