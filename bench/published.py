"""Published reference numbers (PROTOCOLS.md) as data, for the report's "published" column.

A published number is only comparable to a run trained on the same data set with the same
backbone, so :func:`lookup` matches on (method, data set, backbone, protocol) and also on the
ResNet stem (CIFAR 3x3 stem vs ImageNet 7x7 stem) and width. Every number carries a ``setting``
label (source, backbone, epochs, batch, protocol) that the report prints next to it: a number
never travels without the conditions it was measured under.

Accuracies are stored as fractions (0.9258), like the harness's own metrics.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["PublishedNumber", "PUBLISHED", "method_key", "run_cifar_stem", "lookup", "best_match"]


@dataclass(frozen=True)
class PublishedNumber:
    """One published accuracy with the setting it was measured in."""

    method: str  # display name as the source spells it ("MoCo v2+")
    keys: tuple[str, ...]  # harness method names it is compared with (normalised by method_key)
    dataset: str  # harness data-set name ("cifar10", "imagenet100"; "imagenet1k" has no loader)
    backbone: str  # harness backbone name ("resnet18", "vit_base")
    protocol: str  # harness protocol: knn | knn20 | linear | fewshot | zeroshot | finetune
    value: float  # accuracy as a fraction
    source: str
    setting: str  # human label shown next to the number
    epochs: int | None = None
    batch_size: int | None = None
    cifar_stem: bool | None = None  # None: stem not stated by the source
    online: bool = False  # online linear probe (trained alongside pre-training), not offline


_SOLO_SETTING = "solo-learn README, ResNet-18 CIFAR stem, 1000 ep, bs 256, online linear"
_SOLO_IN100 = "solo-learn README, ResNet-18, 400 ep, bs 256, {kind} linear"
_LIGHTLY = ("lightly benchmark, ResNet-18 CIFAR stem, {ep} ep, bs {bs}, kNN k=200 T=0.1 "
            "(max over epochs on test)")

# method display name -> harness keys; (CIFAR-10, CIFAR-100, IN-100 online, IN-100 offline)
_SOLO_LEARN: dict[str, tuple[tuple[str, ...], float, float, float, float | None]] = {
    "BYOL": (("byol",), 92.58, 70.46, 80.16, 80.32),
    "DINO": (("dino",), 89.52, 66.76, 74.84, 74.92),
    "MoCo v2+": (("mocov2plus", "mocov2"), 92.94, 69.89, 78.20, 79.28),
    "MoCo v3": (("mocov3",), 93.10, 68.83, 80.36, 80.36),
    "SimCLR": (("simclr",), 90.74, 65.78, 77.64, None),
    "SimSiam": (("simsiam",), 90.51, 66.04, 74.54, 78.72),
    "SwAV": (("swav",), 89.17, 64.88, 74.04, 74.28),
}

# lightly CIFAR-10 kNN: (200 ep bs 128, 800 ep bs 512)
_LIGHTLY_KNN: dict[str, tuple[tuple[str, ...], float, float]] = {
    "BYOL": (("byol",), 0.869, 0.910),
    "DINO": (("dino",), 0.840, 0.848),
    "MoCo": (("mocov2", "moco"), 0.838, 0.899),
    "SimCLR": (("simclr",), 0.847, 0.879),
    "SimSiam": (("simsiam",), 0.819, 0.904),
    "SwAV": (("swav",), 0.812, 0.884),
}

# paper headline numbers: (name, keys, dataset, backbone, protocol, top-1 %, epochs, note)
_PAPERS: tuple[tuple[str, tuple[str, ...], str, str, str, float, int | None, str], ...] = (
    ("InstDisc", ("instdisc",), "imagenet1k", "resnet50", "linear", 54.0, None, ""),
    ("CPC v2", ("cpcv2", "cpc"), "imagenet1k", "resnet50", "linear", 63.8, None, ""),
    ("CMC", ("cmc",), "imagenet1k", "resnet50", "linear", 64.1, None, ", two half-width encoders"),
    ("MoCo v1", ("mocov1", "moco"), "imagenet1k", "resnet50", "linear", 60.6, None, ""),
    ("SimCLR", ("simclr",), "imagenet1k", "resnet50", "linear", 69.3, 1000, ""),
    ("MoCo v2", ("mocov2",), "imagenet1k", "resnet50", "linear", 71.1, 800, ""),
    ("SimCLR v2", ("simclrv2",), "imagenet1k", "resnet50", "linear", 71.7, None, ""),
    ("SwAV", ("swav",), "imagenet1k", "resnet50", "linear", 75.3, 800, ", multi-crop"),
    ("BYOL", ("byol",), "imagenet1k", "resnet50", "linear", 74.3, None, ""),
    ("SimSiam", ("simsiam",), "imagenet1k", "resnet50", "linear", 71.3, 800, ""),
    ("MoCo v3", ("mocov3",), "imagenet1k", "vit_base", "linear", 76.7, None, ""),
    ("DINO", ("dino",), "imagenet1k", "vit_small", "linear", 77.0, None, ""),
    ("DINO", ("dino",), "imagenet1k", "vit_base", "linear", 78.2, None, ""),
    ("MAE", ("mae",), "imagenet1k", "vit_base", "linear", 68.0, None, ""),
    ("MAE", ("mae",), "imagenet1k", "vit_base", "finetune", 83.6, None, ""),
    ("CLIP", ("clip",), "imagenet1k", "vit_large", "zeroshot", 76.2, None, ", ViT-L/14@336"),
    ("InvaSpread", ("invaspread",), "cifar10", "resnet18", "knn", 83.6, None, ""),
)

_BACKBONE_NAMES = {"resnet18": "ResNet-18", "resnet50": "ResNet-50", "vit_small": "ViT-S/16",
                   "vit_base": "ViT-B/16", "vit_large": "ViT-L"}


def _solo_learn() -> list[PublishedNumber]:
    """solo-learn README numbers: CIFAR rows (CIFAR stem, 1000 ep) and ImageNet-100 rows (400 ep)."""
    out = []
    for name, (keys, c10, c100, in_on, in_off) in _SOLO_LEARN.items():
        for ds, v in (("cifar10", c10), ("cifar100", c100)):
            out.append(PublishedNumber(name, keys, ds, "resnet18", "linear", v / 100, "solo-learn",
                                       _SOLO_SETTING, 1000, 256, True, online=True))
        for kind, v in (("online", in_on), ("offline", in_off)):
            if v is not None:
                out.append(PublishedNumber(name, keys, "imagenet100", "resnet18", "linear", v / 100,
                                           "solo-learn", _SOLO_IN100.format(kind=kind), 400, 256, False,
                                           online=kind == "online"))
    return out


def _lightly() -> list[PublishedNumber]:
    """lightly's CIFAR-10 kNN benchmark at 200 ep / bs 128 and 800 ep / bs 512."""
    out = []
    for name, (keys, v200, v800) in _LIGHTLY_KNN.items():
        for ep, bs, v in ((200, 128, v200), (800, 512, v800)):
            out.append(PublishedNumber(name, keys, "cifar10", "resnet18", "knn", v, "lightly",
                                       _LIGHTLY.format(ep=ep, bs=bs), ep, bs, True))
    return out


def _papers() -> list[PublishedNumber]:
    """Headline numbers of the original papers (ImageNet-1k linear unless noted)."""
    out = []
    for name, keys, ds, bb, proto, v, ep, note in _PAPERS:
        where = "ImageNet-1k" if ds == "imagenet1k" else "CIFAR-10"
        what = {"linear": "linear", "finetune": "fine-tune", "zeroshot": "zero-shot", "knn": "kNN"}[proto]
        epochs = f", {ep} ep" if ep else ""
        setting = f"{name} paper, {_BACKBONE_NAMES.get(bb, bb)}{note}{epochs}, {where} {what}"
        out.append(PublishedNumber(name, keys, ds, bb, proto, v / 100, "paper", setting, ep))
    return out


#: Every published number of PROTOCOLS.md.
PUBLISHED: tuple[PublishedNumber, ...] = tuple(_solo_learn() + _lightly() + _papers())

#: Native resolution of data sets whose size decides the default ResNet stem (<= 64 px: CIFAR stem).
_NATIVE_SIZE = {"cifar10": 32, "cifar100": 32, "fashion_mnist": 28, "digits": 8, "imagenet100": 224}
#: Backbone options whose non-default values change the architecture away from the published net.
_ARCH_DEFAULTS = {"width": 1.0, "norm": "batch"}
#: Options that change it whenever a suite sets them (ViT depth, patch size).
_ARCH_UNSET = ("depth", "patch_size")


def method_key(name: str) -> str:
    """Normalised method name: lower case, letters and digits only ("MoCo v2+" -> "mocov2")."""
    return re.sub(r"[^a-z0-9]", "", str(name).lower())


def run_cifar_stem(dataset: str, backbone_options: Mapping[str, Any] | None = None,
                   image_size: int | None = None) -> bool | None:
    """Whether a run's ResNet used the CIFAR stem, as ``bench.backbones`` decides it.

    An explicit ``cifar_stem`` option wins; otherwise the stem is the CIFAR one when the images
    are at most 64 px (``image_size`` or the data set's native size). None when unknown.
    """
    opts = dict(backbone_options or {})
    if opts.get("cifar_stem") is not None:
        return bool(opts["cifar_stem"])
    size = image_size if image_size is not None else _NATIVE_SIZE.get(dataset)
    return None if size is None else size <= 64


def _architecture_matches(entry: PublishedNumber, backbone_options: Mapping[str, Any] | None,
                          cifar_stem: bool | None) -> bool:
    """Same stem (when both are known) and no width/norm/depth/patch change from the published net."""
    opts = dict(backbone_options or {})
    if any(k in opts and opts[k] != v for k, v in _ARCH_DEFAULTS.items()):
        return False
    if any(opts.get(k) is not None for k in _ARCH_UNSET):
        return False
    return entry.cifar_stem is None or cifar_stem is None or entry.cifar_stem == cifar_stem


def lookup(method: str, dataset: str, backbone: str, protocol: str, *, cifar_stem: bool | None = None,
           backbone_options: Mapping[str, Any] | None = None,
           table: Iterable[PublishedNumber] = PUBLISHED) -> list[PublishedNumber]:
    """Every published number comparable to a run: same method, data set, backbone and protocol.

    ``protocol`` is the harness protocol name (``knn`` = k=200/T=0.1, ``knn20``, ``linear``, ...).
    ``cifar_stem`` and ``backbone_options`` exclude numbers of a different stem or width.
    Returns [] when nothing matches, so the report's "published" cell stays blank.
    """
    key = method_key(method)
    return [e for e in table
            if key in {method_key(k) for k in e.keys} and e.dataset == dataset and e.backbone == backbone
            and e.protocol == protocol and _architecture_matches(e, backbone_options, cifar_stem)]


def best_match(method: str, dataset: str, backbone: str, protocol: str, *, epochs: int | None = None,
               cifar_stem: bool | None = None, backbone_options: Mapping[str, Any] | None = None,
               table: Iterable[PublishedNumber] = PUBLISHED) -> PublishedNumber | None:
    """The one number to show next to a run: among :func:`lookup`'s matches, the closest in
    epochs to the run's budget, then offline before online probes (the harness probes offline)."""
    matches = lookup(method, dataset, backbone, protocol, cifar_stem=cifar_stem,
                     backbone_options=backbone_options, table=table)
    if not matches:
        return None

    def rank(e: PublishedNumber) -> tuple[float, bool]:
        gap = abs(e.epochs - epochs) if (epochs is not None and e.epochs is not None) else float("inf")
        return gap, e.online

    return min(matches, key=rank)
