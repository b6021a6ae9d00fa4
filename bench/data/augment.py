"""Per-sample SSL augmentation of whole uint8 batches, on the device that trains.

torchvision's v2 transforms applied to a batch tensor draw ONE set of random parameters for
the whole batch, which is wrong for self-supervised learning: every image (and every view of
it) must get its own crop, flip and colour distortion. This module draws all parameters per
sample (:func:`draw_view_params`) and applies them with vectorised tensor ops (no Python
loop over samples), so the same code runs on CPU or GPU, wherever the batch lives.

Pipeline per view (order of the official recipes: SimCLR ``data_util.py``, BYOL
``utils/augmentations.py``, DINO ``main_dino.py``); crop first, so the photometric ops run
on the small output crop:

1. random-resized crop + horizontal flip as one per-sample affine ``grid_sample``
   (bilinear, ``align_corners=False``, i.e. the pixel-centre mapping of torchvision's
   crop + resize); boxes follow torchvision's ``RandomResizedCrop.get_params`` (10 tries of
   area/log-ratio, else a centre crop), vectorised over samples and tries. When a batch's
   crops are shrunk by >= 1.5x, k x k sub-samples per output pixel are averaged (k <= 4),
   a cheap anti-aliasing filter standing in for PIL's anti-aliased resize;
2. colour jitter with probability ``jitter_p``: brightness, contrast, saturation and hue
   with torchvision's factor ranges and blend formulas (clamped to [0, 1] after each op),
   in a random order per sample -- each sample draws a permutation, then four stages run
   and at stage s every sample applies its op ``perm[s]`` (the others are the identity for
   it). Brightness/contrast/saturation are fused into one blend per stage; hue (RGB->HSV->
   RGB) runs only on the samples whose op at that stage is hue;
3. grayscale with probability ``gray_p`` (ITU-R 601-2 luma 0.299/0.587/0.114, as PIL);
4. Gaussian blur with probability ``blur_p``, sigma ~ U(blur_sigma) in pixels of the OUTPUT
   crop (the official codes blur after cropping), kernel side 10% of the crop side (odd,
   >= 3; 23 px at 224 as SimCLR/BYOL), reflect padding, one depthwise conv per axis with
   every sample's own kernel;
5. solarize with probability ``solarize_p`` (x >= 0.5 -> 1 - x on [0, 1], torchvision's
   threshold 128 on uint8);
6. normalisation with the dataset mean/std.

On 1-channel images brightness and contrast apply; saturation, hue and grayscale are
no-ops. On CPU the batch is processed in chunks of samples (results do not depend on the
chunking) and the photometric ops work in place: large fresh temporaries cost page faults
there, which made the straightforward version several times slower.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

__all__ = [
    "CropSpec",
    "ViewRecipe",
    "recipe",
    "list_recipes",
    "BatchAugmenter",
    "to_normalized",
    "ViewParams",
    "draw_view_params",
    "apply_view",
    "sample_crop_boxes",
    "crop_resize",
    "gaussian_blur",
    "adjust_hue_",
]

# ITU-R 601-2 luma weights, as PIL's convert("L") (torchvision uses 0.2989 for red).
_LUMA = (0.299, 0.587, 0.114)
# Maximum super-sampling factor per axis for anti-aliased downscaling.
_MAX_SUPERSAMPLE = 4


# --------------------------------------------------------------------------- specs


@dataclass(frozen=True)
class CropSpec:
    """Augmentation of one kind of view (a crop size plus its photometric distortions).

    ``blur_sigma`` is in pixels of the OUTPUT crop (official recipes blur after cropping).
    ``count`` views are produced with this spec; all probabilities are per sample.
    """

    size: int
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    hflip_p: float = 0.5
    jitter: tuple[float, float, float, float] = (0.4, 0.4, 0.4, 0.1)
    jitter_p: float = 0.8
    gray_p: float = 0.2
    blur_p: float = 0.0
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    solarize_p: float = 0.0
    count: int = 1

    def __post_init__(self) -> None:
        """Coerce sequences to tuples and validate ranges, so bad configs fail early."""
        for name in ("scale", "ratio", "jitter", "blur_sigma"):
            object.__setattr__(self, name, tuple(float(v) for v in getattr(self, name)))
        if int(self.size) < 1 or int(self.count) < 1:
            raise ValueError(f"size and count must be >= 1, got {self.size}, {self.count}")
        if len(self.scale) != 2 or not 0.0 < self.scale[0] <= self.scale[1] <= 1.0:
            raise ValueError(f"scale must satisfy 0 < lo <= hi <= 1, got {self.scale}")
        if len(self.ratio) != 2 or not 0.0 < self.ratio[0] <= self.ratio[1]:
            raise ValueError(f"ratio must satisfy 0 < lo <= hi, got {self.ratio}")
        if len(self.jitter) != 4 or min(self.jitter) < 0 or self.jitter[3] > 0.5:
            raise ValueError(f"jitter must be 4 values >= 0 with hue <= 0.5, got {self.jitter}")
        if len(self.blur_sigma) != 2 or not 0.0 < self.blur_sigma[0] <= self.blur_sigma[1]:
            raise ValueError(f"blur_sigma must satisfy 0 < lo <= hi, got {self.blur_sigma}")
        for name in ("hflip_p", "jitter_p", "gray_p", "blur_p", "solarize_p"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")


@dataclass(frozen=True)
class ViewRecipe:
    """An ordered tuple of crop specs; the views of one sample, in output order."""

    crops: tuple[CropSpec, ...]

    def __post_init__(self) -> None:
        """Store ``crops`` as a tuple (hashable, immutable) and reject empty recipes."""
        object.__setattr__(self, "crops", tuple(self.crops))
        if not self.crops:
            raise ValueError("a ViewRecipe needs at least one CropSpec")

    @property
    def n_views(self) -> int:
        """Number of output views per sample (sum of the specs' counts)."""
        return sum(c.count for c in self.crops)

    def expanded(self) -> list[CropSpec]:
        """One spec per output view, in order (each spec repeated ``count`` times)."""
        return [c for c in self.crops for _ in range(c.count)]

    def with_multicrop(
        self,
        n_local: int,
        local_size: int,
        local_scale: tuple[float, float] = (0.05, 0.14),
        global_scale: tuple[float, float] | None = None,
    ) -> "ViewRecipe":
        """Multi-crop version of this recipe (SwAV, Caron et al. 2020; DINO 2021).

        Global crops are the specs with the largest size (existing local crops are
        dropped), optionally with ``global_scale``. ``n_local`` local crops of side
        ``local_size`` and area ``local_scale`` are appended; they copy the first global
        crop's flip/jitter/gray/solarize settings and use blur p 0.5 as DINO/SwAV do -- or
        no blur when the global crops use none (e.g. CIFAR recipes without blur).
        """
        if n_local < 0:
            raise ValueError(f"n_local must be >= 0, got {n_local}")
        big = max(c.size for c in self.crops)
        globals_ = [c for c in self.crops if c.size == big]
        if global_scale is not None:
            globals_ = [dataclasses.replace(c, scale=tuple(global_scale)) for c in globals_]
        crops = list(globals_)
        if n_local > 0:
            first = globals_[0]
            blur_p = 0.5 if any(c.blur_p > 0 for c in globals_) else 0.0
            crops.append(
                dataclasses.replace(
                    first, size=int(local_size), scale=tuple(local_scale),
                    blur_p=blur_p, count=int(n_local),
                )
            )
        return ViewRecipe(tuple(crops))


# --------------------------------------------------------------------------- named recipes


def _local_size(image_size: int) -> int:
    """Local-crop side for a given global size: 96/224 of it (SwAV/DINO), at least 8 px."""
    return max(8, round(image_size * 96 / 224))


def _simclr(size: int) -> ViewRecipe:
    # SimCLR (Chen et al. 2020) data_util.py: colour strength s=1 -> (0.8s,0.8s,0.8s,0.2s).
    return ViewRecipe((CropSpec(size, jitter=(0.8, 0.8, 0.8, 0.2), blur_p=0.5, count=2),))


def _simclr_cifar(size: int) -> ViewRecipe:
    # SimCLR CIFAR setting: s=0.5 and no blur.
    return ViewRecipe((CropSpec(size, jitter=(0.4, 0.4, 0.4, 0.1), blur_p=0.0, count=2),))


def _mocov1(size: int) -> ViewRecipe:
    # InstDisc / MoCo v1 main_moco.py: RRC(0.2-1), gray 0.2, ColorJitter(0.4 x4) always, flip.
    return ViewRecipe((CropSpec(size, scale=(0.2, 1.0), jitter=(0.4, 0.4, 0.4, 0.4),
                                jitter_p=1.0, gray_p=0.2, count=2),))


def _mocov2(size: int) -> ViewRecipe:
    # MoCo v2 (--aug-plus) / SimSiam: CJ(0.4,0.4,0.4,0.1) p .8, gray .2, blur p .5, flip.
    return ViewRecipe((CropSpec(size, scale=(0.2, 1.0), jitter=(0.4, 0.4, 0.4, 0.1),
                                blur_p=0.5, count=2),))


def _byol_pair(size: int, scale: tuple[float, float], blur: tuple[float, float]) -> list[CropSpec]:
    # BYOL Table 6 asymmetric pair: view 1 blur p blur[0], view 2 blur p blur[1] + solarize .2.
    base = CropSpec(size, scale=scale, jitter=(0.4, 0.4, 0.2, 0.1))
    return [dataclasses.replace(base, blur_p=blur[0], solarize_p=0.0),
            dataclasses.replace(base, blur_p=blur[1], solarize_p=0.2)]


def _byol(size: int) -> ViewRecipe:
    return ViewRecipe(tuple(_byol_pair(size, (0.08, 1.0), (1.0, 0.1))))


def _byol_cifar(size: int) -> ViewRecipe:
    # solo-learn CIFAR BYOL: same asymmetric pair without blur.
    return ViewRecipe(tuple(_byol_pair(size, (0.08, 1.0), (0.0, 0.0))))


def _swav(size: int) -> ViewRecipe:
    # SwAV swav_800ep_pretrain.sh: 2 x (0.14-1) + 6 x 96/224 of (0.05-0.14); CJ strength 1.
    glob = CropSpec(size, scale=(0.14, 1.0), jitter=(0.8, 0.8, 0.8, 0.2), blur_p=0.5, count=2)
    return ViewRecipe((glob,)).with_multicrop(6, _local_size(size), (0.05, 0.14))


def _swav_cifar(size: int) -> ViewRecipe:
    # SwAV at CIFAR scale: 2 x 32 crops, no local crops (the author in facebookresearch/swav#23;
    # solo-learn and lightly's CIFAR-10 benchmarks), and softer augmentation - colour strength
    # s=0.5 and no blur, as SimCLR's CIFAR setting - which is one of the official README's
    # remedies for a loss stuck at ln K ("less crops or softer data augmentation").
    return _simclr_cifar(size)


def _dino(size: int) -> ViewRecipe:
    # DINO main_dino.py: 2 global (0.4-1) asymmetric like BYOL + 8 local (0.05-0.4) blur .5.
    pair = _byol_pair(size, (0.4, 1.0), (1.0, 0.1))
    return ViewRecipe(tuple(pair)).with_multicrop(8, _local_size(size), (0.05, 0.4))


def _mae(size: int) -> ViewRecipe:
    # MAE main_pretrain.py: RRC(0.2-1) + flip only, one view.
    return ViewRecipe((CropSpec(size, scale=(0.2, 1.0), jitter=(0.0, 0.0, 0.0, 0.0),
                                jitter_p=0.0, gray_p=0.0),))


def _instdisc(size: int) -> ViewRecipe:
    # InstDisc: MoCo v1 augmentation, a single view (the positive is the memory entry).
    return ViewRecipe((dataclasses.replace(_mocov1(size).crops[0], count=1),))


def _cmc(size: int) -> ViewRecipe:
    # CMC train_CMC.py: RRC(0.2-1) + flip, no colour jitter; the L/ab split happens later.
    return _mae(size)


_RECIPES: dict[str, Callable[[int], ViewRecipe]] = {
    "simclr": _simclr,
    "simclr_cifar": _simclr_cifar,
    "mocov1": _mocov1,
    "invaspread": _mocov1,   # InvaSpread code: RRC(0.2-1), CJ(0.4 x4) always, gray .2, flip
    "instdisc": _instdisc,
    "mocov2": _mocov2,
    "simsiam": _mocov2,      # SimSiam uses the MoCo v2 augmentation
    "byol": _byol,
    "byol_cifar": _byol_cifar,
    "swav": _swav,
    "swav_cifar": _swav_cifar,
    "dino": _dino,
    "mae": _mae,
    "cmc": _cmc,
}


def list_recipes() -> list[str]:
    """Names accepted by :func:`recipe`, sorted."""
    return sorted(_RECIPES)


def recipe(name: str, image_size: int, **overrides: object) -> ViewRecipe:
    """Named augmentation recipe (METHODS.md cards) with global crop side ``image_size``.

    ``overrides`` replace the given CropSpec fields in every spec of the recipe (e.g.
    ``blur_p=0.0`` for an ablation); an unknown field name raises ValueError.
    """
    if name not in _RECIPES:
        raise ValueError(f"unknown recipe {name!r}; choose one of {list_recipes()}")
    allowed = [f.name for f in dataclasses.fields(CropSpec)]
    unknown = sorted(set(overrides) - set(allowed))
    if unknown:
        raise ValueError(f"unknown CropSpec field(s) {unknown}; allowed fields: {allowed}")
    base = _RECIPES[name](int(image_size))
    if not overrides:
        return base
    return ViewRecipe(tuple(dataclasses.replace(c, **overrides) for c in base.crops))


# --------------------------------------------------------------------------- random draws


def _rand(n: int, gen: torch.Generator | None, device: torch.device, cols: int | None = None
          ) -> torch.Tensor:
    """U[0, 1) float32 of shape (n,) or (n, cols), from ``gen`` on ``device``."""
    shape = (n,) if cols is None else (n, cols)
    return torch.rand(shape, generator=gen, device=device)


def _uniform(lo: float, hi: float, n: int, gen: torch.Generator | None,
             device: torch.device) -> torch.Tensor:
    """U[lo, hi) per sample."""
    return lo + (hi - lo) * _rand(n, gen, device)


def _bernoulli(p: float, n: int, gen: torch.Generator | None, device: torch.device
               ) -> torch.Tensor:
    """Per-sample boolean draws with probability ``p``."""
    return _rand(n, gen, device) < p


def sample_crop_boxes(
    n: int, height: int, width: int, scale: tuple[float, float], ratio: tuple[float, float],
    gen: torch.Generator | None = None, device: torch.device | str = "cpu",
) -> torch.Tensor:
    """Per-sample RandomResizedCrop boxes (top, left, h, w) in pixels, shape (n, 4), float.

    Vectorised torchvision ``RandomResizedCrop.get_params``: 10 tries per sample of area
    ~ U(scale)*H*W and log-aspect ~ U(log ratio); the first try that fits is kept, else a
    centre crop clipped to the ratio range.
    """
    device = torch.device(device)
    tries = 10
    area = float(height * width)
    target = area * (scale[0] + (scale[1] - scale[0]) * _rand(n, gen, device, tries))
    lo, hi = math.log(ratio[0]), math.log(ratio[1])
    aspect = torch.exp(lo + (hi - lo) * _rand(n, gen, device, tries))
    w = torch.round(torch.sqrt(target * aspect))
    h = torch.round(torch.sqrt(target / aspect))
    ok = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = torch.argmax(ok.to(torch.uint8), dim=1, keepdim=True)  # first valid try
    w = w.gather(1, first).squeeze(1)
    h = h.gather(1, first).squeeze(1)
    u_top, u_left = _rand(n, gen, device, 2).unbind(1)
    top = torch.floor(u_top * (height - h + 1))
    left = torch.floor(u_left * (width - w + 1))
    box = torch.stack((top, left, h, w), dim=1)
    fallback = _fallback_box(height, width, ratio, device)
    return torch.where(ok.any(dim=1, keepdim=True), box, fallback[None, :])


def _fallback_box(height: int, width: int, ratio: tuple[float, float],
                  device: torch.device) -> torch.Tensor:
    """torchvision's fallback: the largest centred crop whose aspect is within ``ratio``."""
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, int(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        h, w = height, int(round(height * ratio[1]))
    else:
        w, h = width, height
    box = [(height - h) // 2, (width - w) // 2, h, w]
    return torch.tensor(box, dtype=torch.float32, device=device)


def supersample_factor(boxes: torch.Tensor, size: int) -> int:
    """Anti-aliasing factor k in 1..4: the largest downscale of the batch's crops, rounded.

    k = 1 (plain bilinear) while every crop is shrunk by less than 1.5x.
    """
    if boxes.numel() == 0:
        return 1
    factor = float(boxes[:, 2:].max()) / size
    return int(min(_MAX_SUPERSAMPLE, max(1, math.floor(factor + 0.5))))


@dataclass(frozen=True)
class ViewParams:
    """Per-sample random parameters of one view; every tensor is indexed by sample first.

    ``order[i, s]`` is the jitter op (0 brightness, 1 contrast, 2 saturation, 3 hue) that
    sample i applies at stage s; ``sigma`` is 0 where a sample is not blurred. Fields are
    None when the spec disables that op (its random numbers are then not drawn).
    """

    boxes: torch.Tensor
    flip: torch.Tensor
    supersample: int = 1
    jitter_on: torch.Tensor | None = None
    factors: torch.Tensor | None = None
    order: torch.Tensor | None = None
    gray: torch.Tensor | None = None
    sigma: torch.Tensor | None = None
    solarize: torch.Tensor | None = None

    def rows(self, start: int, stop: int) -> "ViewParams":
        """The parameters of samples ``start:stop`` (for chunked application)."""
        sliced = {f.name: getattr(self, f.name)[start:stop] for f in dataclasses.fields(self)
                  if isinstance(getattr(self, f.name), torch.Tensor)}
        return dataclasses.replace(self, **sliced)


def draw_view_params(spec: CropSpec, n: int, height: int, width: int,
                     gen: torch.Generator | None = None, device: torch.device | str = "cpu"
                     ) -> ViewParams:
    """Draw every random parameter of one view for ``n`` samples of ``height`` x ``width``."""
    device = torch.device(device)
    boxes = sample_crop_boxes(n, height, width, spec.scale, spec.ratio, gen, device)
    out: dict[str, torch.Tensor] = {"boxes": boxes,
                                    "flip": _bernoulli(spec.hflip_p, n, gen, device)}
    if spec.jitter_p > 0 and any(j > 0 for j in spec.jitter):
        out["jitter_on"] = _bernoulli(spec.jitter_p, n, gen, device)
        b, c, s, hue = spec.jitter
        cols = [_uniform(max(0.0, 1 - v), 1 + v, n, gen, device) for v in (b, c, s)]
        cols.append(_uniform(-hue, hue, n, gen, device))
        out["factors"] = torch.stack(cols, dim=1)
        out["order"] = torch.argsort(_rand(n, gen, device, 4), dim=1)
    if spec.gray_p > 0:
        out["gray"] = _bernoulli(spec.gray_p, n, gen, device)
    if spec.blur_p > 0:
        on = _bernoulli(spec.blur_p, n, gen, device)
        sigma = _uniform(spec.blur_sigma[0], spec.blur_sigma[1], n, gen, device)
        out["sigma"] = torch.where(on, sigma, torch.zeros_like(sigma))
    if spec.solarize_p > 0:
        out["solarize"] = _bernoulli(spec.solarize_p, n, gen, device)
    return ViewParams(supersample=supersample_factor(boxes, spec.size), **out)


# --------------------------------------------------------------------------- geometry


_BASE_CACHE: dict[tuple[int, str], torch.Tensor] = {}


def _base_coords(size: int, device: torch.device) -> torch.Tensor:
    """Normalised pixel-centre coordinates of a ``size``-long axis (align_corners=False), cached."""
    key = (size, str(device))
    if key not in _BASE_CACHE:
        _BASE_CACHE[key] = (torch.arange(size, device=device, dtype=torch.float32) + 0.5) * (
            2.0 / size) - 1.0
    return _BASE_CACHE[key]


def crop_resize(images: torch.Tensor, boxes: torch.Tensor, flip: torch.Tensor, size: int,
                supersample: int = 1) -> torch.Tensor:
    """Resample each image's box (top, left, h, w) to ``size`` x ``size``, flipped where ``flip``.

    One affine ``grid_sample`` (bilinear, align_corners=False, border padding) for the
    whole batch; output pixel centres map exactly as torchvision's crop + resize. With
    ``supersample`` = k > 1, k x k sub-samples per output pixel are averaged (anti-aliasing).
    """
    n, _, height, width = images.shape
    top, left, h, w = boxes.unbind(1)
    sx = torch.where(flip, -w, w) / width
    sy = h / height
    cx = (2.0 * left + w) / width - 1.0
    cy = (2.0 * top + h) / height - 1.0
    k = max(1, int(supersample))
    s = size * k
    base = _base_coords(s, images.device)
    gx = torch.addcmul(cx[:, None], sx[:, None], base[None, :])  # (n, s)
    gy = torch.addcmul(cy[:, None], sy[:, None], base[None, :])
    grid = torch.stack((gx[:, None, :].expand(n, s, s), gy[:, :, None].expand(n, s, s)), dim=-1)
    out = F.grid_sample(images, grid, mode="bilinear", padding_mode="border",
                        align_corners=False)
    return F.avg_pool2d(out, k) if k > 1 else out


# --------------------------------------------------------------------------- photometric ops
# Ops ending in "_" work in place on a freshly made tensor (the crop): on CPU, new large
# temporaries cost page faults, which made out-of-place versions several times slower.


def _gray(x: torch.Tensor) -> torch.Tensor:
    """ITU-R 601-2 luma (N,1,H,W) of RGB (N,3,H,W), as a new tensor."""
    r, g, b = x.unbind(1)
    y = torch.mul(r, _LUMA[0])
    y.add_(g, alpha=_LUMA[1]).add_(b, alpha=_LUMA[2])
    return y.unsqueeze(1)


def adjust_hue_(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Rotate the hue of RGB images (N,3,H,W) in [0,1] by ``shift`` (N,) turns, in place.

    Same maths as torchvision's ``adjust_hue`` (RGB->HSV, h += shift mod 1, HSV->RGB); the
    HSV->RGB step uses the closed form c_n = V - V*S*clamp(2 - |k - 2|, 0, 1) with
    k = (n + 6h) mod 6 and n = 5, 3, 1 for R, G, B, which needs no per-sector branching.
    """
    r, g, b = x.unbind(1)
    maxc = torch.maximum(r, g)
    torch.maximum(maxc, b, out=maxc)
    delta = torch.minimum(r, g)
    torch.minimum(delta, b, out=delta)
    delta.neg_().add_(maxc)  # max - min
    inv = torch.where(delta > 0, delta, 1.0).reciprocal_()
    h = torch.where(maxc == r, (g - b).mul_(inv),
                    torch.where(maxc == g, (b - r).mul_(inv).add_(2.0),
                                (r - g).mul_(inv).add_(4.0)))
    h.add_(6.0 * shift.view(-1, 1, 1))
    sector = torch.tensor((5.0, 3.0, 1.0), device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    torch.add(h.unsqueeze(1), sector, out=x)  # r, g, b are no longer needed
    x.remainder_(6.0).sub_(2.0).abs_().neg_().add_(2.0).clamp_(0.0, 1.0)
    return x.mul_(delta.neg_().unsqueeze(1)).add_(maxc.unsqueeze(1))


def color_jitter_(x: torch.Tensor, apply: torch.Tensor, factors: torch.Tensor,
                  order: torch.Tensor) -> torch.Tensor:
    """Per-sample ColorJitter of images in [0, 1], random op order per sample, in place.

    ``factors`` (N,4) are brightness, contrast, saturation (torchvision ranges) and hue
    shift; ``order`` (N,4) the op applied at each of 4 stages; samples with ``apply`` False
    are left unchanged. Brightness (f*x), contrast (f*x + (1-f)*mean(gray)) and saturation
    (f*x + (1-f)*gray) share one fused blend per stage, clamped to [0, 1] like torchvision's
    ``_blend``; hue runs only on the samples whose op at that stage is hue.
    """
    do_hue = x.shape[1] == 3 and bool((factors[:, 3] != 0).any())
    none = torch.full_like(order[:, 0], -1)
    for stage in range(4):
        op = torch.where(apply, order[:, stage], none)
        _blend_stage_(x, op, factors)
        if do_hue:
            shift = factors[:, 3]
            _on_subset(x, op == 3, lambda v, idx: adjust_hue_(v, shift[idx]))
    return x


def _blend_stage_(x: torch.Tensor, op: torch.Tensor, fac: torch.Tensor) -> torch.Tensor:
    """One jitter stage of brightness/contrast/saturation: clamp(a*x + b*gray + c, 0, 1)."""
    one = torch.ones_like(fac[:, 0])
    zero = torch.zeros_like(one)
    rgb = x.shape[1] == 3
    a = torch.where(op == 0, fac[:, 0], torch.where(op == 1, fac[:, 1], one))
    if rgb:  # saturation is a no-op on 1-channel images
        a = torch.where(op == 2, fac[:, 2], a)
    gray = _gray(x) if rgb else x
    c = torch.where(op == 1, (1.0 - fac[:, 1]) * gray.mean(dim=(1, 2, 3)), zero).view(-1, 1, 1, 1)
    x.mul_(a.view(-1, 1, 1, 1))
    if rgb:
        b = torch.where(op == 2, 1.0 - fac[:, 2], zero).view(-1, 1, 1, 1)
        x.add_(gray.mul_(b).add_(c))
    else:
        x.add_(c)
    return x.clamp_(0.0, 1.0)


def _on_subset(x: torch.Tensor, mask: torch.Tensor,
               fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """Apply ``fn(rows, idx)`` to the samples in ``mask`` only, writing back into ``x``.

    ``fn`` may work in place on ``rows``; costly ops thus run on the selected rows only.
    """
    idx = mask.nonzero().squeeze(1)
    if idx.numel() == 0:
        return x
    if idx.numel() == x.shape[0]:
        out = fn(x, idx)
        return out if out is x else x.copy_(out)
    return x.index_copy_(0, idx, fn(x.index_select(0, idx), idx))


def apply_grayscale_(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Replace RGB samples in ``mask`` by their luma (all channels equal), in place."""
    if x.shape[1] == 1:
        return x
    return _on_subset(x, mask, lambda v, idx: v.copy_(_gray(v).expand_as(v)))


def blur_kernel_size(size: int) -> int:
    """Odd Gaussian kernel side = 10% of the crop side (SimCLR/BYOL: 23 at 224), at least 3."""
    return max(3, 2 * (int(0.1 * size) // 2) + 1)


def gaussian_weights(sigma: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """Normalised 1-D Gaussian taps (N, K) per sample; sigma <= 0 gives the identity tap."""
    rad = kernel_size // 2
    t = torch.arange(-rad, rad + 1, device=sigma.device, dtype=torch.float32)
    w = torch.exp(-0.5 * (t[None, :] / sigma.clamp(min=1e-6).view(-1, 1)) ** 2)
    w = w / w.sum(dim=1, keepdim=True)
    return torch.where((sigma > 0).view(-1, 1), w, (t == 0).to(w.dtype)[None, :])


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """Separable Gaussian blur with a per-sample ``sigma`` (N,) in pixels; sigma <= 0 = identity.

    Matches torchvision's ``gaussian_blur`` (same taps, reflect padding): two depthwise
    convolutions with the batch folded into channels (groups = N*C), each channel with its
    sample's kernel. Kernels wider than 3 run channels-last (3x faster on CPU at 224 px).
    Returns a new tensor.
    """
    n, ch, hgt, wid = x.shape
    rad = kernel_size // 2
    if rad > min(hgt, wid) - 1:
        raise ValueError(f"blur kernel {kernel_size} too large for {hgt}x{wid} images")
    w = gaussian_weights(sigma, kernel_size).to(x.dtype).repeat_interleave(ch, dim=0)
    y = F.pad(x.reshape(1, n * ch, hgt, wid), (rad, rad, rad, rad), mode="reflect")
    if kernel_size > 3:
        y = y.contiguous(memory_format=torch.channels_last)
    y = F.conv2d(y, w.view(n * ch, 1, 1, kernel_size), groups=n * ch)
    y = F.conv2d(y, w.view(n * ch, 1, kernel_size, 1), groups=n * ch)
    return y.contiguous().view(n, ch, hgt, wid)


def apply_blur_(x: torch.Tensor, sigma: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """Blur, in place, the samples with ``sigma`` > 0 (only those are convolved)."""
    return _on_subset(x, sigma > 0, lambda v, idx: gaussian_blur(v, sigma[idx], kernel_size))


def apply_solarize_(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Solarize, in place, the samples in ``mask``: x >= 0.5 -> 1 - x (torchvision's 128/255).

    Uses 0.5 - |x - 0.5|, which equals x below 0.5 and 1 - x above.
    """
    return _on_subset(x, mask, lambda v, idx: v.sub_(0.5).abs_().neg_().add_(0.5))


def apply_view(x: torch.Tensor, spec: CropSpec, params: ViewParams) -> torch.Tensor:
    """One view in [0, 1] (new tensor) of float images ``x`` (N x C x H x W in [0, 1])."""
    v = crop_resize(x, params.boxes, params.flip, spec.size, params.supersample)
    if params.factors is not None:
        color_jitter_(v, params.jitter_on, params.factors, params.order)
    if params.gray is not None:
        apply_grayscale_(v, params.gray)
    if params.sigma is not None:
        apply_blur_(v, params.sigma, blur_kernel_size(spec.size))
    if params.solarize is not None:
        apply_solarize_(v, params.solarize)
    return v


# --------------------------------------------------------------------------- public API


def _stats(values: Sequence[float], channels: int, device: torch.device) -> torch.Tensor:
    """Mean/std sequence as a (1, C, 1, 1) tensor; a single value broadcasts to C channels."""
    t = torch.as_tensor(list(values), dtype=torch.float32, device=device).flatten()
    if t.numel() == 1:
        t = t.expand(channels)
    if t.numel() != channels:
        raise ValueError(f"got {t.numel()} mean/std values for {channels}-channel images")
    return t.reshape(1, channels, 1, 1)


def _check_images(images: torch.Tensor) -> None:
    """Validate a B x C x H x W uint8 (or float [0,1]) batch with C in {1, 3}."""
    if images.dim() != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"expected B x C x H x W with C in (1, 3), got {tuple(images.shape)}")
    if images.dtype != torch.uint8 and not images.is_floating_point():
        raise TypeError(f"expected uint8 or float images, got {images.dtype}")


def _to_unit_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 [0,255] (or float [0,1]) -> float32 [0,1]."""
    if images.dtype == torch.uint8:
        return images.to(torch.float32).mul_(1.0 / 255.0)
    return images.to(torch.float32)


class BatchAugmenter:
    """Applies a :class:`ViewRecipe` to a whole uint8 batch with per-sample random parameters.

    ``mean``/``std`` are per-channel values on the [0, 1] scale. Calling it returns one
    float32 normalised B x C x size x size tensor per view, in recipe order, on the device
    of the input. Pass a ``torch.Generator`` on that device for reproducible draws.

    All random parameters are drawn for the whole batch first; the ops then run on the
    whole batch at once on accelerators, and on CPU over chunks of about ``cpu_chunk_elems``
    floats per tensor (large temporaries cost page faults there, which made 224-px batches
    several times slower). Results do not depend on the chunking.
    """

    cpu_chunk_elems: int = 1 << 20

    def __init__(self, recipe: ViewRecipe, mean: Sequence[float], std: Sequence[float]) -> None:
        """Store the recipe and normalisation statistics."""
        if not isinstance(recipe, ViewRecipe):
            raise TypeError(f"recipe must be a ViewRecipe, got {type(recipe).__name__}")
        self.recipe = recipe
        self.mean = tuple(float(v) for v in mean)
        self.std = tuple(float(v) for v in std)
        if min(self.std) <= 0:
            raise ValueError(f"std must be positive, got {self.std}")

    def __repr__(self) -> str:
        return f"BatchAugmenter(views={self.recipe.n_views}, mean={self.mean}, std={self.std})"

    def __call__(self, images: torch.Tensor, generator: torch.Generator | None = None
                 ) -> list[torch.Tensor]:
        """Augment ``images`` (uint8 B x C x H x W, C in {1, 3}) into ``n_views`` views."""
        _check_images(images)
        n, ch, hgt, wid = images.shape
        dev = images.device
        if generator is not None and generator.device.type != dev.type:
            raise ValueError(f"generator is on {generator.device}, images on {dev}")
        specs = self.recipe.expanded()
        params = [draw_view_params(s, n, hgt, wid, generator, dev) for s in specs]
        inv = 1.0 / _stats(self.std, ch, dev)
        bias = -_stats(self.mean, ch, dev) * inv
        outs = [torch.empty(n, ch, s.size, s.size, device=dev) for s in specs]
        step = self._chunk(images.shape, specs) if dev.type == "cpu" else max(n, 1)
        for start in range(0, n, step):
            stop = min(n, start + step)
            x = _to_unit_float(images[start:stop])
            for spec, p, out in zip(specs, params, outs):
                v = apply_view(x, spec, p.rows(start, stop))
                torch.addcmul(bias, v, inv, out=out[start:stop])
        return outs

    def _chunk(self, shape: torch.Size, specs: Sequence[CropSpec]) -> int:
        """Samples per CPU chunk: about ``cpu_chunk_elems`` floats in the largest tensor."""
        _, ch, hgt, wid = shape
        per_sample = ch * max(hgt * wid, max(s.size for s in specs) ** 2)
        return max(1, self.cpu_chunk_elems // per_sample)


def to_normalized(images: torch.Tensor, mean: Sequence[float], std: Sequence[float],
                  size: int | None = None) -> torch.Tensor:
    """Evaluation path (no augmentation): uint8 batch -> normalised float32.

    With ``size``, the shorter side is resized to ``size`` (bilinear, anti-aliased) and the
    centre ``size`` x ``size`` square is kept (Resize + CenterCrop of the eval protocols).
    """
    _check_images(images)
    x = _to_unit_float(images)
    if size is not None and tuple(x.shape[-2:]) != (size, size):
        hgt, wid = x.shape[-2:]
        scale = size / min(hgt, wid)
        new = (max(size, round(hgt * scale)), max(size, round(wid * scale)))
        if new != (hgt, wid):
            x = F.interpolate(x, size=new, mode="bilinear", align_corners=False, antialias=True)
        top, left = (new[0] - size) // 2, (new[1] - size) // 2
        x = x[:, :, top:top + size, left:left + size]
    ch = x.shape[1]
    inv = 1.0 / _stats(std, ch, x.device)
    return torch.addcmul(-_stats(mean, ch, x.device) * inv, x, inv)
