"""Tests for bench.data.datasets: loaders, caching, subsets and error messages."""

from __future__ import annotations

import gzip
import os
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from bench.data import datasets as D
from bench.data.datasets import (
    DataNotFoundError,
    ImageSet,
    dataset_stats,
    imagenet100_classes,
    list_datasets,
    load_dataset,
    load_imagefolder,
    split_train_val,
    stratified_subset,
)

# ----------------------------------------------------------------------------- helpers


@pytest.fixture
def tmp_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Isolated cache and data dirs so synthetic tests never touch the user's cache."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("SSLBENCH_CACHE_DIR", str(cache))
    monkeypatch.setenv("SSLBENCH_DATA_DIR", str(tmp_path / "data"))
    return cache


def indexed_set(labels: list[int], num_classes: int) -> ImageSet:
    """ImageSet whose image i stores i in its first two pixels, so samples can be identified."""
    n = len(labels)
    images = torch.zeros(n, 1, 2, 2, dtype=torch.uint8)
    idx = torch.arange(n)
    images[:, 0, 0, 0] = (idx % 256).to(torch.uint8)
    images[:, 0, 0, 1] = (idx // 256).to(torch.uint8)
    return ImageSet(images, torch.tensor(labels, dtype=torch.int64),
                    [f"c{i}" for i in range(num_classes)], "synthetic")


def sample_ids(ds: ImageSet) -> list[int]:
    return (ds.images[:, 0, 0, 0].long() + 256 * ds.images[:, 0, 0, 1].long()).tolist()


def colour(cls_idx: int, file_num: int) -> tuple[int, int, int]:
    return (40 * cls_idx + 10, file_num, 200)


def write_tree(root: Path, split: str, classes: list[str], files: list[int],
               size: tuple[int, int] = (6, 6)) -> None:
    """PNG tree root/split/<class>/<n>.png, each a solid colour encoding class and number."""
    for ci, cls in enumerate(classes):
        folder = root / split / cls
        folder.mkdir(parents=True, exist_ok=True)
        for n in files:
            Image.new("RGB", size, colour(ci, n)).save(folder / f"{n}.png")


def tar_tree(src: Path, archive: Path, top: str) -> Path:
    with tarfile.open(archive, "w:gz") as tf:
        tf.add(src, arcname=top)
    return archive


# ----------------------------------------------------------------------------- ImageSet / registry


def test_imageset_take_and_properties() -> None:
    ds = indexed_set([0, 1, 2, 0, 1, 2], 3)
    sub = ds.take([4, 0])
    assert sample_ids(sub) == [4, 0]
    assert sub.labels.tolist() == [1, 0]
    assert (sub.classes, sub.name) == (ds.classes, ds.name)
    assert sample_ids(ds.take(ds.labels == 2)) == [2, 5]
    assert sample_ids(ds.take(np.array([5]))) == [5]
    assert (len(ds), ds.channels, ds.image_size, ds.num_classes) == (6, 1, 2, 3)
    assert sub.images.is_contiguous()


def test_imageset_rejects_wrong_dtypes() -> None:
    with pytest.raises(ValueError, match="uint8"):
        ImageSet(torch.zeros(2, 1, 2, 2), torch.zeros(2, dtype=torch.int64), ["a"], "x")
    with pytest.raises(ValueError, match="int64"):
        ImageSet(torch.zeros(2, 1, 2, 2, dtype=torch.uint8), torch.zeros(3, dtype=torch.int64),
                 ["a"], "x")


def test_registry_and_bad_arguments() -> None:
    assert set(list_datasets()) == {"cifar10", "cifar100", "fashion_mnist", "imagefolder",
                                    "imagenet100", "digits"}
    with pytest.raises(ValueError, match="cifar10.*digits"):
        load_dataset("mnist_typo")
    with pytest.raises(ValueError, match="split_train_val"):
        load_dataset("digits", "val")


def test_dataset_stats_shapes_and_digits_values() -> None:
    for name in list_datasets():
        mean, std = dataset_stats(name)
        assert len(mean) == len(std) in (1, 3)
    x = load_dataset("digits").images.float() / 255
    mean, std = dataset_stats("digits")
    # The constant covers all 1,797 digits; the 80 % train split agrees to within 0.005.
    assert abs(x.mean().item() - mean[0]) < 5e-3 and abs(x.std().item() - std[0]) < 5e-3
    with pytest.raises(ValueError):
        dataset_stats("nope")


# ----------------------------------------------------------------------------- digits & subsets


def test_digits_shapes_and_split() -> None:
    train, test = load_dataset("digits", "train"), load_dataset("digits", "test")
    assert train.images.shape == (1438, 1, 8, 8) and test.images.shape == (359, 1, 8, 8)
    assert train.images.dtype == torch.uint8 and train.labels.dtype == torch.int64
    assert int(train.images.max()) == 255 and int(train.images.min()) == 0
    assert train.classes == [str(d) for d in range(10)]
    counts = train.labels.bincount() + test.labels.bincount()
    from sklearn.datasets import load_digits
    assert counts.tolist() == np.bincount(load_digits().target).tolist()
    ratio = test.labels.bincount().float() / counts.float()
    assert torch.all((ratio > 0.17) & (ratio < 0.23))  # stratified 80/20
    resized = load_dataset("digits", "test", image_size=16)
    assert resized.images.shape == (359, 1, 16, 16)


def test_stratified_subset_deterministic_and_exact() -> None:
    ds = indexed_set([i % 4 for i in range(200)], 4)
    a, b = stratified_subset(ds, 7, seed=3), stratified_subset(ds, 7, seed=3)
    assert sample_ids(a) == sample_ids(b)
    assert a.labels.bincount(minlength=4).tolist() == [7, 7, 7, 7]
    assert sample_ids(a) == sorted(sample_ids(a))
    assert sample_ids(stratified_subset(ds, 7, seed=4)) != sample_ids(a)
    small = stratified_subset(ds, 2, seed=3)
    assert set(sample_ids(small)) <= set(sample_ids(a))  # nested across n for one seed
    with pytest.raises(ValueError, match="fewer than 51"):
        stratified_subset(ds, 51, seed=0)


def test_split_train_val_disjoint_and_stratified() -> None:
    labels = [0] * 30 + [1] * 50 + [2] * 20
    ds = indexed_set(labels, 3)
    train, val = split_train_val(ds, val_per_class=5, seed=0)
    assert val.labels.bincount(minlength=3).tolist() == [5, 5, 5]
    assert train.labels.bincount(minlength=3).tolist() == [25, 45, 15]
    assert set(sample_ids(train)).isdisjoint(sample_ids(val))
    assert sorted(sample_ids(train) + sample_ids(val)) == list(range(100))
    again = split_train_val(ds, val_per_class=5, seed=0)[1]
    assert sample_ids(again) == sample_ids(val)
    assert sample_ids(split_train_val(ds, 5, seed=1)[1]) != sample_ids(val)
    with pytest.raises(ValueError, match="no training"):
        split_train_val(ds, val_per_class=20, seed=0)


# ----------------------------------------------------------------------------- missing data


def test_missing_cifar_names_paths_and_remedies(tmp_cache: Path, tmp_path: Path) -> None:
    with pytest.raises(DataNotFoundError) as info:
        load_dataset("cifar10")
    msg = str(info.value)
    assert isinstance(info.value, FileNotFoundError)
    assert "'cifar10'" in msg
    assert str(tmp_path / "data" / "cifar-10-batches-py") in msg
    assert str(tmp_path / "data" / "cifar10-jpg.tar.gz") in msg
    assert str(tmp_cache / "downloads") in msg
    assert "SSLBENCH_DATA_DIR" in msg and "download=True" in msg


def test_missing_fashion_with_root_names_root(tmp_cache: Path, tmp_path: Path) -> None:
    root = tmp_path / "empty"
    with pytest.raises(DataNotFoundError) as info:
        load_dataset("fashion_mnist", root=root)
    msg = str(info.value)
    assert str(root / "fashion-mnist") in msg and "apt-get install dataset-fashion-mnist" in msg


def test_missing_imagefolder_and_imagenet(tmp_cache: Path, tmp_path: Path) -> None:
    with pytest.raises(DataNotFoundError, match=str(tmp_path / "nowhere" / "train")):
        load_imagefolder(tmp_path / "nowhere", "train")
    with pytest.raises(DataNotFoundError, match=str(tmp_path / "data" / "imagenet" / "val")):
        load_dataset("imagenet100", "test")


def test_download_failure_is_reported(tmp_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torchvision.datasets as tvd

    def offline(*args, **kwargs):
        raise OSError("network unreachable")

    monkeypatch.setattr(tvd, "CIFAR10", offline)
    with pytest.raises(DataNotFoundError, match="download=True failed: network unreachable"):
        load_dataset("cifar10", download=True)


# ----------------------------------------------------------------------------- image folders


CLASSES = ["dog", "ant", "cat"]  # deliberately unsorted on disk
FILES = [10, 2, 1]               # natural sort must give 1, 2, 10


def test_imagefolder_labels_order_and_pixels(tmp_cache: Path, tmp_path: Path) -> None:
    write_tree(tmp_path / "set", "train", CLASSES, FILES)
    ds = load_imagefolder(tmp_path / "set", "train")
    assert ds.classes == ["ant", "cat", "dog"]
    assert ds.labels.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert ds.images.shape == (9, 3, 6, 6) and ds.images.dtype == torch.uint8
    for i, (cls, n) in enumerate((c, n) for c in ds.classes for n in (1, 2, 10)):
        expected = torch.tensor(colour(CLASSES.index(cls), n), dtype=torch.uint8)
        assert torch.equal(ds.images[i, :, 3, 3], expected)


def test_imagefolder_resize_and_test_falls_back_to_val(tmp_cache: Path, tmp_path: Path) -> None:
    write_tree(tmp_path / "set", "val", ["a", "b"], [1], size=(12, 8))  # 12 wide, 8 high
    ds = load_imagefolder(tmp_path / "set", "test", image_size=4)
    assert ds.images.shape == (2, 3, 4, 4)
    assert torch.equal(ds.images[1, :, 2, 2], torch.tensor(colour(1, 1), dtype=torch.uint8))
    via_registry = load_dataset("imagefolder", "test", root=tmp_path / "set", image_size=4)
    assert torch.equal(via_registry.images, ds.images)


def test_imagefolder_mixed_sizes_need_image_size(tmp_cache: Path, tmp_path: Path) -> None:
    write_tree(tmp_path / "set", "train", ["a"], [1], size=(6, 6))
    write_tree(tmp_path / "set", "train", ["b"], [1], size=(9, 7))
    with pytest.raises(ValueError, match="image_size"):
        load_imagefolder(tmp_path / "set", "train")
    assert load_imagefolder(tmp_path / "set", "train", image_size=5).images.shape == (2, 3, 5, 5)


def test_imagefolder_tarball_matches_tree(tmp_cache: Path, tmp_path: Path) -> None:
    write_tree(tmp_path / "set", "train", CLASSES, FILES)
    write_tree(tmp_path / "set", "test", CLASSES, [3])
    archive = tar_tree(tmp_path / "set", tmp_path / "set.tar.gz", "myset")
    for split in ("train", "test"):
        tree, tarred = load_imagefolder(tmp_path / "set", split), load_imagefolder(archive, split)
        assert tarred.classes == tree.classes
        assert torch.equal(tarred.labels, tree.labels) and torch.equal(tarred.images, tree.images)
    resized = load_imagefolder(archive, "train", image_size=3)
    assert resized.images.shape == (9, 3, 3, 3)


def test_class_list_restricts_classes(tmp_cache: Path, tmp_path: Path) -> None:
    write_tree(tmp_path / "set", "train", CLASSES, [1, 2])
    listing = tmp_path / "classes.txt"
    listing.write_text("# wanted\ndog  a dog\n\ncat\n")
    ds = load_imagefolder(tmp_path / "set", "train", class_list=listing)
    assert ds.classes == ["cat", "dog"] and ds.labels.tolist() == [0, 0, 1, 1]
    listing.write_text("cat\nzebra\n")
    with pytest.raises(DataNotFoundError, match="zebra"):
        load_imagefolder(tmp_path / "set", "train", class_list=listing)


def test_cache_is_written_reused_and_invalidated(tmp_cache: Path, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    write_tree(tmp_path / "set", "train", CLASSES, FILES)
    first = load_imagefolder(tmp_path / "set", "train")
    cached = list((tmp_cache / "arrays").glob("imagefolder_train_native_*.npz"))
    assert len(cached) == 1 and not list((tmp_cache / "arrays").glob("*.tmp"))

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded although the cache holds this split")

    with monkeypatch.context() as patch:
        patch.setattr(D, "_decode_image", no_decoding)
        second = load_imagefolder(tmp_path / "set", "train")
    assert torch.equal(first.images, second.images) and torch.equal(first.labels, second.labels)
    assert second.classes == first.classes
    write_tree(tmp_path / "set", "train", ["ant"], [11])  # a new file changes the source key
    assert len(load_imagefolder(tmp_path / "set", "train")) == 10


def test_imagenet100_restricts_to_listed_wnids(tmp_cache: Path, tmp_path: Path) -> None:
    wnids = imagenet100_classes()
    assert len(wnids) == len(set(wnids)) == 100 and all(w.startswith("n") for w in wnids)
    root = tmp_path / "imagenet"
    for wnid in wnids + ["n99999999"]:
        (root / "train" / wnid).mkdir(parents=True)
        Image.new("RGB", (10, 8), (1, 2, 3)).save(root / "train" / wnid / "x_1.JPEG", "PNG")
    ds = load_dataset("imagenet100", root=root, image_size=4)
    assert ds.classes == sorted(wnids) and "n99999999" not in ds.classes
    assert ds.images.shape == (100, 3, 4, 4) and ds.labels.tolist() == list(range(100))
    default = load_dataset("imagenet100", root=root)
    assert default.image_size == D.IMAGENET100_DEFAULT_SIZE


# ----------------------------------------------------------------------------- CIFAR / Fashion formats

CIFAR10 = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def write_cifar_pickles(folder: Path, per_batch: int = 2) -> None:
    """Miniature of the python-pickle release: 5 train batches, a test batch, batches.meta."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for fname in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {b"data": rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8),
                 b"labels": list(rng.integers(0, 10, per_batch))}
        (folder / fname).write_bytes(pickle.dumps(batch))
    meta = {b"label_names": [c.encode() for c in CIFAR10]}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta))


def test_cifar_pickle_format(tmp_cache: Path, tmp_path: Path) -> None:
    write_cifar_pickles(tmp_path / "data" / "cifar-10-batches-py")
    train = load_dataset("cifar10", "train")
    assert train.images.shape == (10, 3, 32, 32) and train.classes == CIFAR10
    raw = pickle.loads((tmp_path / "data" / "cifar-10-batches-py" / "data_batch_1").read_bytes())
    assert torch.equal(train.images[0].reshape(-1), torch.from_numpy(raw[b"data"][0]))
    assert load_dataset("cifar10", "test", image_size=16).images.shape == (2, 3, 16, 16)


def test_cifar_download_goes_to_cache(tmp_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torchvision.datasets as tvd

    calls = []

    def fake_cifar10(root: str, train: bool, download: bool) -> None:
        calls.append((root, download))
        write_cifar_pickles(Path(root) / "cifar-10-batches-py")

    monkeypatch.setattr(tvd, "CIFAR10", fake_cifar10)
    ds = load_dataset("cifar10", "test", download=True)
    assert calls == [(str(tmp_cache / "downloads"), True)] and len(ds) == 2
    load_dataset("cifar10", "train", download=True)  # found in downloads: no second fetch
    assert len(calls) == 1


def test_cifar_tarball_found_in_data_dir(tmp_cache: Path, tmp_path: Path) -> None:
    write_tree(tmp_path / "tree", "train", CIFAR10, [0, 1])
    write_tree(tmp_path / "tree", "test", CIFAR10, [0])
    (tmp_path / "data").mkdir()
    tar_tree(tmp_path / "tree", tmp_path / "data" / "cifar10-jpg.tar.gz", "cifar10")
    train = load_dataset("cifar10", "train")
    assert train.classes == CIFAR10 and train.labels.bincount().tolist() == [2] * 10
    assert len(load_dataset("cifar10", "test")) == 10


def write_idx(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(d.to_bytes(4, "big") for d in array.shape)
    with gzip.open(path, "wb") as fh:
        fh.write(header + array.astype(np.uint8).tobytes())


def test_fashion_mnist_idx_format(tmp_cache: Path, tmp_path: Path) -> None:
    folder = tmp_path / "data" / "fashion-mnist"
    folder.mkdir(parents=True)
    images = np.arange(3 * 28 * 28, dtype=np.int64).reshape(3, 28, 28) % 256
    write_idx(folder / "t10k-images-idx3-ubyte.gz", images)
    write_idx(folder / "t10k-labels-idx1-ubyte.gz", np.array([9, 0, 4]))
    ds = load_dataset("fashion_mnist", "test")
    assert ds.images.shape == (3, 1, 28, 28) and ds.labels.tolist() == [9, 0, 4]
    assert torch.equal(ds.images[:, 0], torch.from_numpy(images.astype(np.uint8)))
    assert ds.classes[9] == "Ankle boot"


# ----------------------------------------------------------------------------- real data


def _real_cifar10_available() -> bool:
    base = os.environ.get("SSLBENCH_DATA_DIR")
    if not base:
        return False
    return any(D._cifar_found("cifar10", fmt, path, "train")
               for fmt, path in D._cifar_candidates("cifar10", Path(base), explicit=False))


@pytest.mark.skipif(not _real_cifar10_available(), reason="SSLBENCH_DATA_DIR has no CIFAR-10")
def test_real_cifar10() -> None:
    """Decodes 60k JPEGs on first run (seconds), then reads the uint8 cache."""
    train, test = load_dataset("cifar10", "train"), load_dataset("cifar10", "test")
    assert train.images.shape == (50_000, 3, 32, 32) and test.images.shape == (10_000, 3, 32, 32)
    assert train.classes == CIFAR10
    assert train.labels.bincount().tolist() == [5000] * 10
    assert test.labels.bincount().tolist() == [1000] * 10
    mean = (train.images[::10].float() / 255).mean((0, 2, 3))  # every class (sorted by class)
    assert torch.allclose(mean, torch.tensor(dataset_stats("cifar10")[0]), atol=0.02)


@pytest.mark.skipif(not (D.DEBIAN_FASHION_MNIST_DIR / "train-images-idx3-ubyte.gz").is_file()
                    and not os.environ.get("SSLBENCH_DATA_DIR"),
                    reason="Fashion-MNIST not installed")
def test_real_fashion_mnist() -> None:
    try:
        train, test = load_dataset("fashion_mnist", "train"), load_dataset("fashion_mnist", "test")
    except DataNotFoundError:
        pytest.skip("Fashion-MNIST not installed")
    assert train.images.shape == (60_000, 1, 28, 28) and test.images.shape == (10_000, 1, 28, 28)
    assert train.labels.bincount().tolist() == [6000] * 10
    mean = train.images.float().mean().item() / 255
    assert abs(mean - dataset_stats("fashion_mnist")[0][0]) < 1e-3


def test_cifar10_small_fixture(cifar10_small: tuple[ImageSet, ImageSet]) -> None:
    train, test = cifar10_small
    assert train.labels.bincount().tolist() == [100] * 10
    assert test.labels.bincount().tolist() == [20] * 10
    assert train.images.shape[1:] == (3, 32, 32)
