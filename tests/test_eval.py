"""Evaluation protocols on synthetic features with known answers."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from bench.eval import fewshot as fewshot_mod
from bench.eval.collapse import collapse_indicator, effective_rank
from bench.eval.features import extract_features
from bench.eval.fewshot import (few_shot, label_fraction_subsets, mean_ci95, prototype_episodes,
                                sample_k_per_class, semi_supervised)
from bench.eval.knn import knn_classify, knn_protocols
from bench.eval.linear import linear_probe, pick_best, sgd_linear_probe, train_val_split


def clusters(n_per_class: int, num_classes: int, dim: int, spread: float = 0.1,
             seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian clusters around random unit centres: (features float32, labels int64)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(num_classes, dim))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    y = np.repeat(np.arange(num_classes), n_per_class)
    x = centres[y] + spread * rng.normal(size=(len(y), dim))
    return x.astype(np.float32), y


def split(x: np.ndarray, y: np.ndarray, seed: int = 1) -> tuple[np.ndarray, ...]:
    """Random half/half train/test split."""
    idx = np.random.default_rng(seed).permutation(len(y))
    a, b = idx[: len(y) // 2], idx[len(y) // 2:]
    return x[a], y[a], x[b], y[b]


# --------------------------------------------------------------------------- kNN


def test_knn_separable_clusters() -> None:
    xtr, ytr, xte, yte = split(*clusters(50, 10, 16))
    res = knn_classify(torch.from_numpy(xtr), torch.from_numpy(ytr), xte, yte, k=20)
    assert res["top1"] >= 0.99 and res["top5"] >= res["top1"]
    assert (res["n_train"], res["n_test"], res["k"], res["temperature"]) == (250, 250, 20, 0.1)
    json.dumps(res)


def test_knn_hand_computed_weighted_vote() -> None:
    train = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    labels = torch.tensor([0, 1, 1])
    test = torch.tensor([[1.0, 0.2]])
    sims = torch.nn.functional.cosine_similarity(train, test)  # .981, .196, .832
    for k, t in [(3, 1.0), (2, 1.0), (3, 0.1)]:
        top = sims.topk(k)
        vote = [sum(math.exp(s / t) for s, i in zip(top.values.tolist(), top.indices.tolist())
                    if labels[i] == c) for c in (0, 1)]
        expected = int(np.argmax(vote))
        res = knn_classify(train, labels, test, torch.tensor([1]), k=k, temperature=t,
                           num_classes=2)
        assert res["top1"] == float(expected == 1)
    # The two members of class 1 outvote the nearest neighbour only at T=1 with k=3.
    assert knn_classify(train, labels, test, torch.tensor([1]), k=3, temperature=1.0)["top1"] == 1.0
    assert knn_classify(train, labels, test, torch.tensor([1]), k=2, temperature=1.0)["top1"] == 0.0
    assert knn_classify(train, labels, test, torch.tensor([1]), k=3, temperature=0.1)["top1"] == 0.0


def test_knn_k_larger_than_train_set() -> None:
    train, labels = torch.eye(3), torch.tensor([0, 1, 2])
    res = knn_classify(train, labels, torch.eye(3), labels, k=200, chunk_size=2)
    assert res["k_effective"] == 3 and res["top1"] == 1.0 and res["top5"] == 1.0


def test_knn_shuffled_labels_near_chance() -> None:
    xtr, ytr, xte, yte = split(*clusters(100, 10, 16))
    shuffled = np.random.default_rng(0).permutation(ytr)
    assert knn_classify(xtr, shuffled, xte, yte, k=20)["top1"] <= 0.2


def test_knn_protocols_both_settings() -> None:
    xtr, ytr, xte, yte = split(*clusters(30, 5, 8))
    res = knn_protocols(xtr, ytr, xte, yte, num_classes=5)
    assert (res["knn_k"], res["knn_temperature"], res["knn20_k"], res["knn20_temperature"]) == (
        200, 0.1, 20, 0.07)
    assert res["knn_top1"] >= 0.95 and res["knn20_top1"] >= 0.95
    json.dumps(res)


# --------------------------------------------------------------------------- collapse


def test_collapse_indicator_isotropic_vs_collapsed() -> None:
    gen = torch.Generator().manual_seed(0)
    assert collapse_indicator(torch.randn(4000, 64, generator=gen)) == pytest.approx(1.0, abs=0.1)
    assert collapse_indicator(np.ones((100, 64)) * 3.0) == pytest.approx(0.0, abs=1e-6)


def test_effective_rank() -> None:
    assert effective_rank(torch.eye(32)) == pytest.approx(32.0, rel=1e-3)
    rank_one = torch.randn(50, 1) @ torch.randn(1, 16)
    assert effective_rank(rank_one) == pytest.approx(1.0, abs=0.01)


# --------------------------------------------------------------------------- linear probe


def test_linear_probe_separable() -> None:
    xtr, ytr, xte, yte = split(*clusters(100, 5, 32, spread=0.2))
    res = linear_probe(xtr, ytr, xte, yte, Cs=(0.01, 1.0))
    assert res["top1"] >= 0.98
    assert res["protocol"] == "linear_lbfgs" and res["val_fraction"] == 0.2
    json.dumps(res)


def test_linear_probe_shuffled_labels_near_chance() -> None:
    xtr, ytr, xte, yte = split(*clusters(100, 5, 32, spread=0.2))
    shuffled = np.random.default_rng(0).permutation(ytr)
    assert linear_probe(xtr, shuffled, xte, yte, Cs=(0.01, 1.0))["top1"] <= 0.2 + 0.1


def test_linear_probe_selects_C_on_train_validation_only() -> None:
    xtr, ytr, xte, yte = split(*clusters(60, 4, 32, spread=0.8))
    Cs = (1e-4, 1e-2, 1.0, 100.0)
    a = linear_probe(xtr, ytr, xte, yte, Cs=Cs)
    # An adversarial test set (wrong labels, other features): the selection must not move.
    b = linear_probe(xtr, ytr, xte[::-1] * 5, (yte + 1) % 4, Cs=Cs)
    assert a["grid"] == b["grid"] and a["best_C"] == b["best_C"]
    assert a["grid"][a["best_C"]] == max(a["grid"].values())
    assert a["best_C"] == pick_best(a["grid"])
    assert a["val_top1"] == a["grid"][a["best_C"]]
    assert sorted(a["grid"]) == sorted(Cs) and a["top1"] != b["top1"]
    assert a["n_fit"] + a["n_val"] == len(ytr)


def test_pick_best_breaks_ties_at_the_median() -> None:
    assert pick_best({0.1: 0.5, 1.0: 0.9, 10.0: 0.7}) == 1.0
    assert pick_best({1e-4: 1.0, 1e-2: 1.0, 1.0: 1.0, 100.0: 0.9}) == 1e-2
    assert pick_best({1e-4: 1.0, 1e-2: 1.0}) == 1e-4


def test_train_val_split_is_stratified_and_seeded() -> None:
    y = np.repeat(np.arange(4), 25)
    fit, val = train_val_split(y, 0.2, seed=3)
    assert np.bincount(y[val]).tolist() == [5, 5, 5, 5]
    assert len(np.intersect1d(fit, val)) == 0 and len(fit) + len(val) == 100
    assert np.array_equal(val, train_val_split(y, 0.2, seed=3)[1])


# --------------------------------------------------------------------------- features / SGD probe


class _TinyEncoder(nn.Module):
    """Conv + BatchNorm + global pool: BN makes train/eval mode observable."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.pool = nn.AdaptiveAvgPool2d(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(torch.relu(self.bn(self.conv(x))))


def colour_images(n_per_class: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 8×8 images whose dominant channel is the class (3 classes), plus noise."""
    gen = torch.Generator().manual_seed(seed)
    y = torch.arange(3).repeat_interleave(n_per_class)
    x = torch.randint(0, 60, (len(y), 3, 8, 8), generator=gen)
    x[torch.arange(len(y)), y] += 180
    return x.to(torch.uint8), y


def test_extract_features_eval_mode_normalisation_and_restore() -> None:
    torch.manual_seed(0)
    enc = _TinyEncoder().train()
    enc.bn.running_mean.fill_(0.3)
    images, _ = colour_images(7)
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    feats = extract_features(enc, images, mean, std, batch_size=4)
    assert feats.shape == (21, 8) and feats.dtype == torch.float32 and feats.device.type == "cpu"
    assert enc.training and enc.bn.training
    assert torch.allclose(enc.bn.running_mean, torch.full((8,), 0.3))  # eval: stats not updated
    x = (images.float() / 255 - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(
        1, 3, 1, 1)
    with torch.no_grad():
        expected = enc.eval()(x).flatten(1)
    assert torch.allclose(feats, expected, atol=1e-5)
    resized = extract_features(enc, images, mean, std, image_size=16)
    assert resized.shape == (21, 8)
    with_amp = extract_features(enc, images, mean, std, amp=True)  # bf16 autocast
    assert with_amp.dtype == torch.float32 and torch.allclose(with_amp, feats, atol=0.05, rtol=0.05)


def test_sgd_linear_probe_sweeps_on_validation_and_keeps_encoder_frozen() -> None:
    torch.manual_seed(0)
    enc = _TinyEncoder().train()
    before = {k: v.clone() for k, v in enc.state_dict().items()}
    xtr, ytr = colour_images(20, seed=0)
    xte, yte = colour_images(10, seed=1)
    kwargs = dict(mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), epochs=3, lrs=(0.01, 1.0),
                  batch_size=16, seed=0)
    res = sgd_linear_probe(enc, xtr, ytr, xte, yte, **kwargs)
    assert set(res["grid"]) == {0.01, 1.0}
    assert res["grid"][res["best_lr"]] == max(res["grid"].values())
    assert res["val_top1"] == res["grid"][res["best_lr"]]
    assert res["reported_epoch"] == "last" and res["protocol"] == "linear_sgd"
    assert res["top1"] >= 0.9  # the colour is linearly decodable from pooled conv features
    assert enc.training
    for k, v in enc.state_dict().items():
        assert torch.equal(v, before[k]), k  # weights and BN statistics untouched
    other = sgd_linear_probe(enc, xtr, ytr, xte, (yte + 1) % 3, **kwargs)
    assert other["grid"] == res["grid"] and other["best_lr"] == res["best_lr"]
    json.dumps(res)


# --------------------------------------------------------------------------- few-shot


def test_few_shot_separable_deterministic_with_ci() -> None:
    xtr, ytr, xte, yte = split(*clusters(80, 5, 16, spread=0.2))
    res = few_shot(xtr, ytr, xte, yte, shots=(1, 16), draws=3, seed=0)
    assert res["fewshot_16"] >= 0.95
    for k in (1, 16):
        assert len(res[f"fewshot_{k}_draws"]) == 3
        assert res[f"fewshot_{k}_ci95"] is not None and res[f"fewshot_{k}_ci95"] >= 0
        assert res[f"fewshot_{k}"] == pytest.approx(np.mean(res[f"fewshot_{k}_draws"]))
    assert res["fewshot_C"] == fewshot_mod.FEWSHOT_C
    assert res == few_shot(xtr, ytr, xte, yte, shots=(1, 16), draws=3, seed=0)
    json.dumps(res)


def test_few_shot_draws_use_exactly_k_per_class_from_train(monkeypatch: pytest.MonkeyPatch) -> None:
    xtr, ytr, xte, yte = split(*clusters(20, 4, 8))
    seen: list[np.ndarray] = []
    real = fewshot_mod.fit_logreg

    def spy(x: np.ndarray, y: np.ndarray, C: float, max_iter: int, init=None):
        seen.append(y.copy())
        assert len(x) == len(y) and len(x) < len(xtr)
        return real(x, y, C, max_iter, init)

    monkeypatch.setattr(fewshot_mod, "fit_logreg", spy)
    few_shot(xtr, ytr, xte, yte, shots=(2,), draws=4, seed=5)
    assert len(seen) == 4
    for y in seen:
        assert np.bincount(y, minlength=4).tolist() == [2, 2, 2, 2]
    draws = [sample_k_per_class(ytr, 2, np.random.default_rng([5, 2, d])) for d in range(4)]
    assert len({tuple(d) for d in draws}) == 4  # different per draw


def test_mean_ci95_uses_student_t() -> None:
    mean, half = mean_ci95([0.5, 0.7])
    assert mean == pytest.approx(0.6)
    assert half == pytest.approx(12.706 * np.std([0.5, 0.7], ddof=1) / math.sqrt(2), rel=1e-3)
    assert mean_ci95([0.4])[1] is None


def test_label_fraction_subsets_stratified_nested_deterministic() -> None:
    y = np.repeat(np.arange(10), 1000)
    subsets = label_fraction_subsets(y, (0.01, 0.1), seed=0)
    assert np.bincount(y[subsets[0.01]]).tolist() == [10] * 10
    assert np.bincount(y[subsets[0.1]]).tolist() == [100] * 10
    assert np.isin(subsets[0.01], subsets[0.1]).all()
    again = label_fraction_subsets(y, (0.01, 0.1), seed=0)
    assert all(np.array_equal(subsets[f], again[f]) for f in subsets)
    assert not np.array_equal(subsets[0.1], label_fraction_subsets(y, (0.1,), seed=1)[0.1])


def test_semi_supervised_keys() -> None:
    x, y = clusters(300, 4, 16, spread=0.2)
    xtr, ytr, xte, yte = split(x, y)
    res = semi_supervised(xtr, ytr, xte, yte, fractions=(0.05, 0.1))
    assert res["label5pct_top1"] >= 0.9 and res["label10pct_top1"] >= 0.9
    assert res["label10pct_n"] == 60
    res = semi_supervised(*split(*clusters(1000, 3, 8, spread=0.2)))
    assert {"label1pct_top1", "label10pct_top1"} <= set(res)
    json.dumps(res)


def test_prototype_episodes() -> None:
    x, y = clusters(40, 8, 16, spread=0.2)
    res = prototype_episodes(x, y, shots=(5,), episodes=50)
    assert res["episodes_5way_5shot"] >= 0.95 and res["episodes"] == 50
    assert res["episodes_5way_5shot_ci95"] >= 0
    assert res == prototype_episodes(x, y, shots=(5,), episodes=50)
