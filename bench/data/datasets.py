"""Dataset layer: every benchmark data set as one in-memory uint8 tensor.

Each loader returns an :class:`ImageSet` (``N x C x H x W`` uint8 images, int64 labels, class
names). Image files (JPEG/PNG trees or ``.tar.gz`` archives of such trees) are decoded once
into an uncompressed ``.npz`` under :func:`cache_dir` and read back from there afterwards;
array sources (CIFAR's pickles, Fashion-MNIST's IDX files, scikit-learn's digits) are read
directly because they are already decoded.

Where data is looked for, in order:

* ``root=`` when given (a folder, or an archive file for the tree formats);
* otherwise ``$SSLBENCH_DATA_DIR``, then the download folder ``<cache_dir>/downloads``
  (where ``download=True`` puts torchvision's copies), then system folders (the Debian
  package ``dataset-fashion-mnist`` installs into ``/usr/share/datasets/fashion-mnist``).

Validation data is never a loader split: :func:`split_train_val` carves it, stratified and
seeded, out of the training split, so the test split is only touched for the final score.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.resources
import os
import pickle
import re
import tarfile
import tempfile
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torchvision.transforms.v2.functional as TF

try:  # deprecated in torchvision 0.29 in favour of torchcodec; PIL is the fallback decoder
    from torchvision.io import ImageReadMode, decode_image
except ImportError:  # pragma: no cover - depends on the installed torchvision
    ImageReadMode, decode_image = None, None

__all__ = [
    "ImageSet",
    "DataNotFoundError",
    "data_dir",
    "cache_dir",
    "list_datasets",
    "load_dataset",
    "load_imagefolder",
    "dataset_stats",
    "stratified_subset",
    "split_train_val",
    "IMAGENET100_DEFAULT_SIZE",
]

SPLITS = ("train", "test")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
TAR_SUFFIXES = (".tar.gz", ".tgz", ".tar")
#: Side length ImageNet-100 is decoded to when ``image_size`` is not given: 126,689 training
#: images at 128x128x3 uint8 take 6.2 GB of RAM, at 224 they would take 19 GB.
IMAGENET100_DEFAULT_SIZE = 128
#: Folder the Debian package ``dataset-fashion-mnist`` installs its IDX files into.
DEBIAN_FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
_CACHE_FORMAT_VERSION = 1

CIFAR10_CLASSES = [
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
]
FASHION_MNIST_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]
_IMAGENET_STATS = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
# Per-channel pixel mean/std over the training split, pixels scaled to [0, 1]. CIFAR std is
# the true pixel std (the widely copied 0.2023/0.1994/0.2010 is a per-image average std).
_STATS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "fashion_mnist": ((0.2860,), (0.3530,)),
    "digits": ((0.3053,), (0.3759,)),
    "imagenet100": _IMAGENET_STATS,
    "imagefolder": _IMAGENET_STATS,
}


# --------------------------------------------------------------------------- container


@dataclass(repr=False)
class ImageSet:
    """uint8 images N×C×H×W (contiguous CPU tensor), int64 labels N, class names, dataset name."""

    images: torch.Tensor
    labels: torch.Tensor
    classes: list[str]
    name: str

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.dim() != 4:
            raise ValueError(f"images must be uint8 N×C×H×W, got {self.images.dtype} "
                             f"{tuple(self.images.shape)}")
        if self.labels.dtype != torch.int64 or self.labels.shape != (self.images.shape[0],):
            raise ValueError(f"labels must be int64 of shape ({self.images.shape[0]},), got "
                             f"{self.labels.dtype} {tuple(self.labels.shape)}")
        self.images = self.images.contiguous()
        self.classes = list(self.classes)

    def __len__(self) -> int:
        """Number of images."""
        return int(self.images.shape[0])

    def __repr__(self) -> str:
        return (f"ImageSet(name={self.name!r}, n={len(self)}, shape={tuple(self.images.shape[1:])}, "
                f"classes={self.num_classes})")

    def take(self, indices: Sequence[int] | np.ndarray | torch.Tensor | slice) -> ImageSet:
        """Subset by integer indices, a boolean mask or a slice; keeps classes and name."""
        if isinstance(indices, slice):
            return ImageSet(self.images[indices], self.labels[indices], self.classes, self.name)
        idx = torch.as_tensor(np.asarray(indices))
        if idx.dtype != torch.bool:
            idx = idx.long().reshape(-1)
        return ImageSet(self.images[idx], self.labels[idx], self.classes, self.name)

    @property
    def channels(self) -> int:
        """Colour channels (3 for RGB, 1 for grayscale)."""
        return int(self.images.shape[1])

    @property
    def image_size(self) -> int:
        """Image height in pixels (all loaders produce square images)."""
        return int(self.images.shape[2])

    @property
    def num_classes(self) -> int:
        """Number of classes, including any that a subset happens not to contain."""
        return len(self.classes)


class DataNotFoundError(FileNotFoundError):
    """A data set's files were not found; the message lists every place looked and the remedies."""


def _not_found(name: str, looked: Iterable[Path | str], remedies: Sequence[str]) -> DataNotFoundError:
    places = "\n".join(f"  - {p}" for p in looked) or "  (no candidate location: none configured)"
    fixes = "\n".join(f"  * {r}" for r in remedies)
    return DataNotFoundError(f"dataset {name!r} not found. Looked in:\n{places}\nTo get it:\n{fixes}")


# --------------------------------------------------------------------------- locations


def data_dir() -> Path | None:
    """Folder named by ``$SSLBENCH_DATA_DIR`` (where local copies of data sets live), or None."""
    value = os.environ.get("SSLBENCH_DATA_DIR")
    return Path(value).expanduser() if value else None


def cache_dir() -> Path:
    """``$SSLBENCH_CACHE_DIR`` or ``~/.cache/sslbench``: decoded arrays and downloads go here."""
    value = os.environ.get("SSLBENCH_CACHE_DIR")
    return Path(value).expanduser() if value else Path.home() / ".cache" / "sslbench"


def _downloads_dir() -> Path:
    return cache_dir() / "downloads"


def _search_bases(root: str | Path | None) -> list[Path]:
    """Folders to search: ``root`` alone when given, else the data dir and the download dir."""
    if root is not None:
        return [Path(root).expanduser()]
    bases = [d for d in (data_dir(),) if d is not None]
    return bases + [_downloads_dir()]


# --------------------------------------------------------------------------- decoding


def _natural_key(text: str) -> tuple:
    """Sort key that orders ``2.jpg`` before ``10.jpg`` (digit runs compare as numbers)."""
    return tuple(int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text))


def _resize(images: torch.Tensor, size: int | None) -> torch.Tensor:
    """Resize the shorter side to ``size`` (bilinear, antialiased), then centre-crop square.

    Works on one C×H×W image or a N×C×H×W batch; returns the input when already size×size.
    """
    if size is None:
        return images
    h, w = images.shape[-2:]
    if (h, w) == (size, size):
        return images
    scale = size / min(h, w)
    new_hw = [max(size, round(h * scale)), max(size, round(w * scale))]
    out = TF.resize(images, new_hw, interpolation=TF.InterpolationMode.BILINEAR, antialias=True)
    return TF.center_crop(out, [size, size])


def _resize_batch(images: torch.Tensor, size: int | None, chunk: int = 2048) -> torch.Tensor:
    """:func:`_resize` over a large N×C×H×W tensor in chunks to bound temporary memory."""
    if size is None or tuple(images.shape[-2:]) == (size, size):
        return images.contiguous()
    return torch.cat([_resize(images[i:i + chunk], size) for i in range(0, len(images), chunk)])


def _decode_image(data: bytes, size: int | None) -> torch.Tensor:
    """Decode JPEG/PNG/... bytes to a 3×H×W uint8 RGB tensor, resized when ``size`` is given.

    torchvision's libjpeg-turbo decoder is ~3.5x faster than PIL on CIFAR's 32px JPEGs; PIL is
    the fallback for formats torchvision cannot read and for torchvision builds without it.
    """
    if decode_image is None:
        return _resize(_decode_with_pil(data), size)
    try:
        image = decode_image(torch.frombuffer(bytearray(data), dtype=torch.uint8),
                             mode=ImageReadMode.RGB)
    except RuntimeError:
        image = _decode_with_pil(data)
    return _resize(image, size)


def _decode_all(blobs: Iterable[bytes], size: int | None) -> list[torch.Tensor]:
    """Decode many images, silencing torchvision 0.29's once-per-call deprecation warning."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The image decoding and encoding capabilities",
                                category=DeprecationWarning)
        return [_decode_image(blob, size) for blob in blobs]


def _decode_with_pil(data: bytes) -> torch.Tensor:
    import io

    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        array = np.asarray(im.convert("RGB"))
    return torch.from_numpy(array.copy()).permute(2, 0, 1).contiguous()


def _stack(images: list[torch.Tensor], what: str) -> torch.Tensor:
    """Stack decoded images; different sizes need ``image_size`` to be set."""
    if not images:
        raise ValueError(f"{what}: no images")
    shapes = {tuple(im.shape) for im in images}
    if len(shapes) > 1:
        raise ValueError(f"{what}: images have different sizes {sorted(shapes)[:4]}...; "
                         "pass image_size= to resize them on decode")
    return torch.stack(images)


# --------------------------------------------------------------------------- cache


def _cache_file(name: str, split: str, image_size: int | None, key: Sequence[object]) -> Path:
    """Cache path for one decoded split; ``key`` identifies the source version."""
    text = repr((_CACHE_FORMAT_VERSION, name, split, image_size, tuple(key)))
    digest = hashlib.sha1(text.encode()).hexdigest()[:16]
    size = "native" if image_size is None else str(image_size)
    return cache_dir() / "arrays" / f"{name}_{split}_{size}_{digest}.npz"


def _save_npz(path: Path, images: torch.Tensor, labels: torch.Tensor, classes: list[str]) -> None:
    """Write the arrays atomically (temporary file in the same folder, then ``os.replace``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            np.savez(fh, images=images.numpy(), labels=labels.numpy(), classes=np.array(classes))
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; the cache may be shared by users
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _load_npz(path: Path) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    with np.load(path, allow_pickle=False) as z:
        return (torch.from_numpy(z["images"]), torch.from_numpy(z["labels"]),
                [str(c) for c in z["classes"]])


def _cached(path: Path, build: Callable[[], tuple[torch.Tensor, torch.Tensor, list[str]]],
            ) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Return the arrays stored at ``path``, building and storing them on a miss."""
    if path.is_file():
        try:
            return _load_npz(path)
        except (OSError, ValueError, KeyError):  # truncated/corrupt cache: rebuild it
            path.unlink(missing_ok=True)
    images, labels, classes = build()
    _save_npz(path, images, labels, classes)
    return images, labels, classes


# --------------------------------------------------------------------------- image trees


def _split_dirs(split: str) -> list[str]:
    """Folder names that hold ``split``: the test split may be stored as ``val`` (ImageNet)."""
    return ["test", "val"] if split == "test" else [split]


def _is_image(name: str) -> bool:
    return not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS)


def _pick_classes(found: Iterable[str], class_list: Sequence[str] | None, where: str) -> list[str]:
    """Sorted class names, restricted to ``class_list`` (all of which must be present)."""
    found = set(found)
    if class_list is None:
        return sorted(found)
    missing = sorted(set(class_list) - found)
    if missing:
        raise DataNotFoundError(f"{where}: {len(missing)} listed classes have no folder, e.g. "
                                f"{missing[:5]}")
    return sorted(set(class_list))


def _tree_files(split_dir: Path, class_list: Sequence[str] | None) -> tuple[list[Path], list[int], list[str]]:
    """Image paths sorted by class then natural file name, their labels, and class names."""
    found = [d.name for d in split_dir.iterdir() if d.is_dir() and not d.name.startswith(".")]
    classes = _pick_classes(found, class_list, str(split_dir))
    files: list[Path] = []
    labels: list[int] = []
    for label, cls in enumerate(classes):
        names = sorted((f for f in os.listdir(split_dir / cls) if _is_image(f)), key=_natural_key)
        files += [split_dir / cls / f for f in names]
        labels += [label] * len(names)
    return files, labels, classes


def _tree_key(files: Sequence[Path]) -> list[tuple[str, int, int]]:
    """Source version of a tree: every file's path, size and mtime."""
    key = []
    for f in files:
        st = f.stat()
        key.append((str(f), st.st_size, st.st_mtime_ns))
    return key


def _read_tree(split_dir: Path, name: str, split: str, image_size: int | None,
               class_list: Sequence[str] | None) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Decode (or fetch from cache) an ``<split_dir>/<class>/<image>`` tree."""
    files, labels, classes = _tree_files(split_dir, class_list)
    if not files:
        raise DataNotFoundError(f"{split_dir}: no image files ({', '.join(IMAGE_EXTENSIONS)})")
    path = _cache_file(name, split, image_size, [classes, _tree_key(files)])

    def build() -> tuple[torch.Tensor, torch.Tensor, list[str]]:
        images = _decode_all((f.read_bytes() for f in files), image_size)
        return _stack(images, str(split_dir)), torch.tensor(labels, dtype=torch.int64), classes

    return _cached(path, build)


def _tar_members(archive: Path, split_names: Sequence[str]) -> dict[str, dict[tuple[str, str], bytes]]:
    """Stream a tarball once, keeping the bytes of ``.../<split>/<class>/<image>`` members."""
    found: dict[str, dict[tuple[str, str], bytes]] = {s: {} for s in split_names}
    with tarfile.open(archive, "r|*") as tf:
        for member in tf:
            parts = member.name.split("/")
            if not member.isfile() or len(parts) < 3 or not _is_image(parts[-1]):
                continue
            if parts[-3] in found:
                blob = tf.extractfile(member)
                if blob is not None:
                    found[parts[-3]][(parts[-2], parts[-1])] = blob.read()
    return found


def _read_tar(archive: Path, name: str, split: str, image_size: int | None,
              class_list: Sequence[str] | None) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Decode (or fetch from cache) one split of a tarred image tree without extracting it."""
    st = archive.stat()
    key = [str(archive.resolve()), st.st_size, st.st_mtime_ns, None if class_list is None
           else sorted(class_list)]
    path = _cache_file(name, split, image_size, key)

    def build() -> tuple[torch.Tensor, torch.Tensor, list[str]]:
        by_split = _tar_members(archive, _split_dirs(split))
        members = next((m for m in by_split.values() if m), None)
        if members is None:
            raise DataNotFoundError(f"{archive}: no images under any of "
                                    f"{_split_dirs(split)}/<class>/ inside the archive")
        classes = _pick_classes({c for c, _ in members}, class_list, str(archive))
        index = {c: i for i, c in enumerate(classes)}
        keys = sorted((k for k in members if k[0] in index),
                      key=lambda k: (index[k[0]], _natural_key(k[1])))
        images = _decode_all((members.pop(k) for k in keys), image_size)
        labels = torch.tensor([index[c] for c, _ in keys], dtype=torch.int64)
        return _stack(images, str(archive)), labels, classes

    return _cached(path, build)


def _is_tar(path: Path) -> bool:
    return path.is_file() and path.name.lower().endswith(TAR_SUFFIXES)


def _read_image_source(source: Path, name: str, split: str, image_size: int | None,
                       class_list: Sequence[str] | None = None) -> ImageSet:
    """Load a split from a tree folder (holding ``<split>/<class>/``) or a tarball of one."""
    if _is_tar(source):
        images, labels, classes = _read_tar(source, name, split, image_size, class_list)
    else:
        split_dir = next(source / s for s in _split_dirs(split) if (source / s).is_dir())
        images, labels, classes = _read_tree(split_dir, name, split, image_size, class_list)
    return ImageSet(images, labels, classes, name)


def _has_split(folder: Path, split: str) -> bool:
    return any((folder / s).is_dir() for s in _split_dirs(split))


def _read_class_list(path: Path | str) -> list[str]:
    """Class ids from a text file: first token of each line; blank lines and ``#`` comments skipped."""
    names = []
    for line in Path(path).read_text().splitlines():
        token = line.split("#", 1)[0].split()
        if token:
            names.append(token[0])
    return names


def load_imagefolder(root: str | Path, split: str = "train", *, class_list: Path | str | None = None,
                     image_size: int | None = None, name: str = "imagefolder") -> ImageSet:
    """Load ``root/<split>/<class>/<image>`` (``split`` "test" falls back to ``root/val``).

    ``root`` may also be a ``.tar``/``.tar.gz`` of such a tree (read by streaming, never
    extracted). Labels follow the sorted class-folder names, as torchvision's ImageFolder.
    ``class_list`` (one class id per line) restricts the classes; every listed class must have
    a folder. ``image_size`` resizes the shorter side (bilinear, antialiased) then centre-crops
    square on decode - required when images differ in size, and for large images so the set
    fits in memory. Images are converted to RGB. The decoded split is cached under
    :func:`cache_dir`, keyed by every file's size and mtime (or the archive's).
    """
    root = Path(root).expanduser()
    classes = None if class_list is None else _read_class_list(class_list)
    if not (_is_tar(root) or _has_split(root, split)):
        raise _not_found(name, [root / s for s in _split_dirs(split)],
                         [f"point root= at a folder holding {'/'.join(_split_dirs(split))}/<class>/"
                          "<image> folders, or at a .tar.gz of such a tree"])
    return _read_image_source(root, name, split, image_size, classes)


# --------------------------------------------------------------------------- CIFAR

_CIFAR = {
    "cifar10": {"pickle_dir": "cifar-10-batches-py", "train": [f"data_batch_{i}" for i in range(1, 6)],
                "test": ["test_batch"], "meta": ("batches.meta", b"label_names"),
                "label_key": b"labels", "classes": 10, "tv": "CIFAR10"},
    "cifar100": {"pickle_dir": "cifar-100-python", "train": ["train"], "test": ["test"],
                 "meta": ("meta", b"fine_label_names"), "label_key": b"fine_labels",
                 "classes": 100, "tv": "CIFAR100"},
}


def _unpickle(path: Path) -> dict:
    with open(path, "rb") as fh:
        return pickle.load(fh, encoding="bytes")


def _read_cifar_pickle(folder: Path, name: str, split: str, image_size: int | None) -> ImageSet:
    """Read torchvision's / the official python-pickle release (already decoded uint8)."""
    spec = _CIFAR[name]
    batches = [_unpickle(folder / f) for f in spec[split]]
    images = np.concatenate([b[b"data"] for b in batches]).reshape(-1, 3, 32, 32)
    labels = np.concatenate([np.asarray(b[spec["label_key"]], dtype=np.int64) for b in batches])
    meta_file, meta_key = spec["meta"]
    classes = [c.decode() for c in _unpickle(folder / meta_file)[meta_key]]
    tensor = _resize_batch(torch.from_numpy(images), image_size)
    return ImageSet(tensor, torch.from_numpy(labels), classes, name)


def _cifar_candidates(name: str, base: Path, explicit: bool) -> list[tuple[str, Path]]:
    """(format, path) pairs where a CIFAR copy may sit under ``base``, in preference order.

    ``base`` itself counts as the pickle folder or the tree only when the caller named it
    (``root=``), so a generic data folder with its own ``train/`` is never mistaken for CIFAR.
    """
    spec = _CIFAR[name]
    if _is_tar(base):
        return [("tar", base)]
    own = [("pickle", base), ("tree", base)] if explicit else []
    return ([("pickle", base / spec["pickle_dir"]), ("tree", base / name)] + own
            + [("tar", base / f"{name}{suffix}") for suffix in ("-jpg.tar.gz", ".tar.gz", ".tgz", ".tar")])


def _cifar_found(name: str, fmt: str, path: Path, split: str) -> bool:
    spec = _CIFAR[name]
    if fmt == "pickle":
        return all((path / f).is_file() for f in spec[split] + [spec["meta"][0]])
    if fmt == "tree":
        return _has_split(path, split)
    return _is_tar(path)


def _download_cifar(name: str) -> Path:
    """Fetch the python-pickle release with torchvision into ``<cache_dir>/downloads``."""
    import torchvision.datasets as tvd

    target = _downloads_dir()
    getattr(tvd, _CIFAR[name]["tv"])(root=str(target), train=True, download=True)
    return target


def _load_cifar(name: str, split: str, root: str | Path | None, download: bool,
                image_size: int | None) -> ImageSet:
    """CIFAR-10/100 from pickles, an image tree, or a tarred image tree; see module docs."""
    looked: list[Path] = []
    for base in _search_bases(root):
        for fmt, path in _cifar_candidates(name, base, explicit=root is not None):
            looked.append(path)
            if _cifar_found(name, fmt, path, split):
                return _load_cifar_from(name, fmt, path, split, image_size)
    error = _not_found(name, looked, _cifar_remedies(name))
    if not download:
        raise error
    try:
        target = _download_cifar(name)
    except Exception as exc:  # no network, checksum failure, ...
        raise _not_found(name, looked, [f"download=True failed: {exc}"] + _cifar_remedies(name)) from exc
    return _load_cifar_from(name, "pickle", target / _CIFAR[name]["pickle_dir"], split, image_size)


def _load_cifar_from(name: str, fmt: str, path: Path, split: str, image_size: int | None) -> ImageSet:
    if fmt == "pickle":
        ds = _read_cifar_pickle(path, name, split, image_size)
    else:
        ds = _read_image_source(path, name, split, image_size)
    if ds.num_classes != _CIFAR[name]["classes"]:
        raise ValueError(f"{path}: expected {_CIFAR[name]['classes']} classes for {name}, "
                         f"found {ds.num_classes}")
    return ds


def _cifar_remedies(name: str) -> list[str]:
    spec = _CIFAR[name]
    return [f"set SSLBENCH_DATA_DIR (or pass root=) to a folder holding {spec['pickle_dir']}/, "
            f"{name}/{{train,test}}/<class>/*.jpg|png, or {name}-jpg.tar.gz of that tree",
            f"or pass download=True (needs internet; torchvision fetches it into {_downloads_dir()})",
            "or download it by hand from https://www.cs.toronto.edu/~kriz/cifar.html"]


# --------------------------------------------------------------------------- Fashion-MNIST

_IDX_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
              "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}


def _read_idx(path: Path) -> np.ndarray:
    """Parse an IDX file (optionally gzipped): big-endian header of dims, then uint8 data."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as fh:
        raw = fh.read()
    magic = int.from_bytes(raw[:4], "big")
    if magic >> 8 != 0x08:  # 0x08 = unsigned byte data; low byte = number of dimensions
        raise ValueError(f"{path}: not a uint8 IDX file (magic {magic:#x})")
    ndim = magic & 0xFF
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def _idx_file(folder: Path, stem: str) -> Path | None:
    return next((folder / f"{stem}{s}" for s in (".gz", "") if (folder / f"{stem}{s}").is_file()), None)


def _fashion_folders(root: str | Path | None) -> list[Path]:
    """Candidate folders, in order: root/data dir (and their subfolders), downloads, Debian."""
    bases = _search_bases(root)
    folders = [f for b in bases for f in (b, b / "fashion-mnist", b / "FashionMNIST" / "raw")]
    return folders if root is not None else folders + [DEBIAN_FASHION_MNIST_DIR]


def _load_fashion_mnist(name: str, split: str, root: str | Path | None, download: bool,
                        image_size: int | None) -> ImageSet:
    """Fashion-MNIST (Xiao et al. 2017) from its gzipped IDX files; 1×28×28."""
    image_stem, label_stem = _IDX_FILES[split]
    folders = _fashion_folders(root)
    for folder in folders:
        image_file, label_file = _idx_file(folder, image_stem), _idx_file(folder, label_stem)
        if image_file and label_file:
            return _fashion_from(image_file, label_file, name, image_size)
    remedies = ["apt-get install dataset-fashion-mnist (installs into "
                f"{DEBIAN_FASHION_MNIST_DIR})",
                "or set SSLBENCH_DATA_DIR (or pass root=) to a folder holding "
                f"{image_stem}.gz and {label_stem}.gz (directly or in fashion-mnist/)",
                "or pass download=True (needs internet; torchvision FashionMNIST)",
                "or download from https://github.com/zalandoresearch/fashion-mnist"]
    if not download:
        raise _not_found(name, folders, remedies)
    import torchvision.datasets as tvd

    try:
        tvd.FashionMNIST(root=str(_downloads_dir()), train=split == "train", download=True)
    except Exception as exc:
        raise _not_found(name, folders, [f"download=True failed: {exc}"] + remedies) from exc
    raw = _downloads_dir() / "FashionMNIST" / "raw"
    return _fashion_from(_idx_file(raw, image_stem), _idx_file(raw, label_stem), name, image_size)


def _fashion_from(image_file: Path, label_file: Path, name: str, image_size: int | None) -> ImageSet:
    images = torch.from_numpy(_read_idx(image_file).copy()).unsqueeze(1)
    labels = torch.from_numpy(_read_idx(label_file).astype(np.int64))
    return ImageSet(_resize_batch(images, image_size), labels, FASHION_MNIST_CLASSES, name)


# --------------------------------------------------------------------------- ImageNet-100 / folders


def imagenet100_classes() -> list[str]:
    """The 100 WordNet ids of ImageNet-100 (CMC, Tian et al. 2019; also used by solo-learn)."""
    text = importlib.resources.files("bench.data").joinpath("imagenet100_classes.txt").read_text()
    return [line.split()[0] for line in text.splitlines() if line.strip()]


def _load_imagenet100(name: str, split: str, root: str | Path | None, download: bool,
                      image_size: int | None) -> ImageSet:
    """ImageNet-100: an ImageNet-1k folder tree restricted to the 100 CMC classes.

    Looks in ``root`` or ``$SSLBENCH_DATA_DIR/imagenet`` (then ``.../imagenet100``) for
    ``{train,val}/<wnid>/*.JPEG``; ``val`` serves as the test split. Decoded to
    :data:`IMAGENET100_DEFAULT_SIZE` unless ``image_size`` says otherwise. ImageNet cannot be
    downloaded automatically (licence), so ``download`` is ignored.
    """
    base = data_dir()
    candidates = ([Path(root).expanduser()] if root is not None
                  else [] if base is None else [base / "imagenet", base / "imagenet100"])
    size = IMAGENET100_DEFAULT_SIZE if image_size is None else image_size
    for folder in candidates:
        if _is_tar(folder) or _has_split(folder, split):
            return _read_image_source(folder, name, split, size, imagenet100_classes())
    raise _not_found(name, [c / s for c in candidates for s in _split_dirs(split)], [
        "get ImageNet-1k from https://image-net.org (licence required; no automatic download)",
        "arrange it as imagenet/{train,val}/<wnid>/*.JPEG under SSLBENCH_DATA_DIR, or pass root="])


def _load_imagefolder_dataset(name: str, split: str, root: str | Path | None, download: bool,
                              image_size: int | None) -> ImageSet:
    if root is None:
        raise ValueError("dataset 'imagefolder' needs root= (a folder with train/ and val/ or test/)")
    return load_imagefolder(root, split, image_size=image_size)


# --------------------------------------------------------------------------- digits


def _load_digits(name: str, split: str, root: str | Path | None, download: bool,
                 image_size: int | None) -> ImageSet:
    """scikit-learn's 8×8 digits (1,797 images), values 0-16 scaled to 0-255.

    A fixed stratified 80/20 split (seed 0) gives 1,438 train and 359 test images; meant for
    tiny, fast unit tests, so no files are needed.
    """
    from sklearn.datasets import load_digits

    bunch = load_digits()
    pixels = np.round(bunch.images * (255.0 / 16.0)).astype(np.uint8)[:, None]
    targets = bunch.target.astype(np.int64)
    test_idx = _stratified_pick(targets, lambda n: round(0.2 * n), np.random.default_rng(0))
    mask = np.zeros(len(targets), dtype=bool)
    mask[test_idx] = True
    keep = mask if split == "test" else ~mask
    images = _resize_batch(torch.from_numpy(pixels[keep]), image_size)
    return ImageSet(images, torch.from_numpy(targets[keep]), [str(d) for d in range(10)], name)


# --------------------------------------------------------------------------- registry

_LOADERS: dict[str, Callable[[str, str, str | Path | None, bool, int | None], ImageSet]] = {
    "cifar10": _load_cifar,
    "cifar100": _load_cifar,
    "fashion_mnist": _load_fashion_mnist,
    "imagefolder": _load_imagefolder_dataset,
    "imagenet100": _load_imagenet100,
    "digits": _load_digits,
}


def list_datasets() -> list[str]:
    """Names accepted by :func:`load_dataset`."""
    return sorted(_LOADERS)


def load_dataset(name: str, split: str = "train", *, root: str | Path | None = None,
                 download: bool = False, image_size: int | None = None) -> ImageSet:
    """Load one split ("train" or "test") of a named data set as an :class:`ImageSet`.

    ``root`` overrides the search locations; ``download=True`` lets torchvision fetch CIFAR or
    Fashion-MNIST into ``<cache_dir>/downloads`` when no local copy is found; ``image_size``
    resizes on decode (shorter side, bilinear with antialiasing, then centre crop). Raises
    :class:`DataNotFoundError` when the files are missing and ``ValueError`` for unknown names
    or splits (validation data comes from :func:`split_train_val`, never from a loader).
    """
    if name not in _LOADERS:
        raise ValueError(f"unknown dataset {name!r}; known: {', '.join(list_datasets())}")
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r} "
                         "(carve validation data from train with split_train_val)")
    if image_size is not None and image_size < 1:
        raise ValueError(f"image_size must be positive, got {image_size}")
    return _LOADERS[name](name, split, root, download, image_size)


def dataset_stats(name: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel (mean, std) of training pixels in [0, 1], for input normalisation.

    CIFAR and Fashion-MNIST values are the standard ones of the original releases; ImageNet-100
    and generic image folders use the ImageNet-1k statistics (torchvision's convention).
    """
    if name not in _STATS:
        raise ValueError(f"unknown dataset {name!r}; known: {', '.join(sorted(_STATS))}")
    return _STATS[name]


# --------------------------------------------------------------------------- subsets


def _stratified_pick(labels: np.ndarray, count: Callable[[int], int],
                     rng: np.random.Generator) -> np.ndarray:
    """Per class, the first ``count(n_class)`` indices of a seeded permutation (sorted)."""
    picked = []
    for cls in np.unique(labels):
        members = np.flatnonzero(labels == cls)
        picked.append(rng.permutation(members)[:count(len(members))])
    return np.sort(np.concatenate(picked)) if picked else np.zeros(0, dtype=np.int64)


def _class_permutations(ds: ImageSet, seed: int) -> list[np.ndarray]:
    """One seeded permutation of each class's indices, in class order (label 0, 1, ...)."""
    labels = ds.labels.numpy()
    rng = np.random.default_rng(seed)
    return [rng.permutation(np.flatnonzero(labels == c)) for c in range(ds.num_classes)]


def stratified_subset(ds: ImageSet, n_per_class: int, seed: int) -> ImageSet:
    """Exactly ``n_per_class`` random images of every class (few-shot / low-label protocols).

    Deterministic in ``seed``; indices stay in dataset order. For one seed the subsets are
    nested (the 1-shot set is inside the 2-shot set, ...) because each class's permutation does
    not depend on ``n_per_class``, so few-shot curves vary only the amount of labelled data.
    """
    if n_per_class < 1:
        raise ValueError(f"n_per_class must be >= 1, got {n_per_class}")
    perms = _class_permutations(ds, seed)
    short = {ds.classes[c]: len(p) for c, p in enumerate(perms) if len(p) < n_per_class}
    if short:
        raise ValueError(f"{ds.name}: classes with fewer than {n_per_class} images: {short}")
    return ds.take(np.sort(np.concatenate([p[:n_per_class] for p in perms])))


def split_train_val(ds: ImageSet, val_per_class: int, seed: int) -> tuple[ImageSet, ImageSet]:
    """Carve a stratified validation set (``val_per_class`` per class) out of a TRAIN split.

    Returns (train_rest, val), disjoint and together equal to ``ds``; deterministic in ``seed``.
    Hyper-parameters (probe regularisation, learning rate) are chosen on this split so that the
    test split is scored once, as in Ericsson et al. 2021 (``ssl-transfer/linear.py``).
    """
    if val_per_class < 1:
        raise ValueError(f"val_per_class must be >= 1, got {val_per_class}")
    perms = _class_permutations(ds, seed)
    short = {ds.classes[c]: len(p) for c, p in enumerate(perms) if len(p) <= val_per_class}
    if short:
        raise ValueError(f"{ds.name}: classes with <= {val_per_class} images leave no training "
                         f"data: {short}")
    val = np.sort(np.concatenate([p[:val_per_class] for p in perms]))
    train = np.sort(np.concatenate([p[val_per_class:] for p in perms]))
    return ds.take(train), ds.take(val)
