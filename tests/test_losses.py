"""Closed forms of every loss in ``methods/losses.py`` (METHODS.md "Test" lines)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from methods.losses import (
    clip_loss,
    contrastive_ctr,
    cross_entropy_soft,
    info_nce_queue,
    negative_cosine,
    normalized_mse,
    nt_xent,
    sinkhorn_knopp,
    swapped_prediction,
)


def orthonormal(n: int, d: int | None = None) -> torch.Tensor:
    """n mutually orthogonal unit vectors in R^d (rows of an identity)."""
    return torch.eye(d or n)[:n]


def scaled(x: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """Rows rescaled by random positive factors (losses must L2-normalise themselves)."""
    g = torch.Generator().manual_seed(seed)
    return x * (0.5 + torch.rand(x.shape[0], 1, generator=g) * 3)


# -- NT-Xent -------------------------------------------------------------------------------------
@pytest.mark.parametrize("n,tau", [(4, 0.5), (8, 0.1), (16, 0.2)])
def test_nt_xent_aligned_orthogonal(n, tau):
    z = orthonormal(n)
    expected = math.log(1 + (2 * n - 2) * math.exp(-1 / tau))
    assert nt_xent(scaled(z), scaled(z, 1), tau).item() == pytest.approx(expected, rel=1e-4, abs=1e-6)


@pytest.mark.parametrize("n,tau", [(4, 0.5), (8, 0.1)])
def test_nt_xent_collapsed_is_log_2n_minus_1(n, tau):
    z = torch.ones(n, 5)
    assert nt_xent(z, z, tau).item() == pytest.approx(math.log(2 * n - 1), rel=1e-5)


# -- BYOL / SimSiam ------------------------------------------------------------------------------------
def test_normalized_mse_identical_antipodal_orthogonal():
    x = torch.randn(6, 8)
    assert normalized_mse(x, 3 * x).item() == pytest.approx(0.0, abs=1e-5)
    assert normalized_mse(x, -x).item() == pytest.approx(4.0, abs=1e-5)
    e = orthonormal(4, 8)
    assert normalized_mse(e, e.roll(1, dims=0)).item() == pytest.approx(2.0, abs=1e-6)


def test_negative_cosine_identical_is_minus_one_and_stops_gradient():
    p = torch.randn(5, 7, requires_grad=True)
    z = (2 * p.detach()).requires_grad_(True)
    loss = negative_cosine(p, z)
    assert loss.item() == pytest.approx(-1.0, abs=1e-6)
    loss.backward()
    assert z.grad is None and p.grad is not None
    assert negative_cosine(p, -z).item() == pytest.approx(1.0, abs=1e-6)


# -- MoCo ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("k,tau", [(16, 0.07), (100, 0.2)])
def test_info_nce_queue_equal_logits_is_log_k_plus_1(k, tau):
    q = torch.zeros(4, 8)
    q[:, 0] = 1.0
    key = q.clone()
    queue = q[0:1].T.repeat(1, k)  # every negative equals the positive: all logits equal
    assert info_nce_queue(q, key, queue, tau).item() == pytest.approx(math.log(k + 1), rel=1e-5)


@pytest.mark.parametrize("k,tau", [(8, 0.07), (20, 0.2)])
def test_info_nce_queue_aligned_orthogonal(k, tau):
    basis = orthonormal(k + 4)
    q, key = scaled(basis[:4]), scaled(basis[:4], 1)
    queue = basis[4:].T  # negatives orthogonal to every query
    expected = math.log(1 + k * math.exp(-1 / tau))
    assert info_nce_queue(q, key, queue, tau).item() == pytest.approx(expected, rel=1e-4, abs=1e-6)


# -- MoCo v3 ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("n,tau", [(8, 0.2), (16, 1.0)])
def test_contrastive_ctr_closed_forms(n, tau):
    e = orthonormal(n)
    aligned = 2 * tau * math.log(1 + (n - 1) * math.exp(-1 / tau))
    assert contrastive_ctr(scaled(e), e, tau).item() == pytest.approx(aligned, rel=1e-4, abs=1e-6)
    ones = torch.ones(n, 3)
    assert contrastive_ctr(ones, ones, tau).item() == pytest.approx(2 * tau * math.log(n), rel=1e-5)


# -- CLIP --------------------------------------------------------------------------------------------
def test_clip_loss_closed_forms():
    n, scale = 6, math.log(2.0)  # e^t = 2: a non-vanishing value to compare
    e = orthonormal(n)
    t = math.exp(scale)
    expected = math.log(1 + (n - 1) * math.exp(-t))
    assert clip_loss(scaled(e), e, torch.tensor(scale)).item() == pytest.approx(expected, rel=1e-4)
    ones = torch.ones(n, 4)
    assert clip_loss(ones, ones, torch.tensor(scale)).item() == pytest.approx(math.log(n), rel=1e-5)


# -- SwAV --------------------------------------------------------------------------------------------
def _sinkhorn_matrix(scores: torch.Tensor, eps: float, iters: int) -> torch.Tensor:
    """The K×B matrix before the final ×B scaling (an independent re-derivation)."""
    q = torch.exp(scores.double() / eps).T
    q /= q.sum()
    k, b = q.shape
    for _ in range(iters):
        q /= q.sum(1, keepdim=True) * k
        q /= q.sum(0, keepdim=True) * b
    return q


def test_sinkhorn_marginals_columns_exact_rows_approximate():
    torch.manual_seed(0)
    b, k = 32, 10
    scores = F.normalize(torch.randn(b, 16), dim=1) @ F.normalize(torch.randn(k, 16), dim=1).T
    out = sinkhorn_knopp(scores, 0.05, 3)
    assert out.shape == (b, k) and out.dtype == torch.float32
    assert torch.allclose(out.sum(1), torch.ones(b), atol=1e-5)  # each sample's code sums to 1
    ref = _sinkhorn_matrix(scores, 0.05, 3)
    assert torch.allclose(ref.sum(0), torch.full((b,), 1 / b, dtype=torch.float64))
    assert torch.allclose(out, (ref * b).T.float(), atol=1e-5)
    rows = out.sum(0) / b  # prototype marginals: only approximately 1/K after 3 iterations
    assert (rows - 1 / k).abs().max() < 0.5 / k
    many = sinkhorn_knopp(scores, 0.05, 200).sum(0) / b
    assert torch.allclose(many, torch.full((k,), 1 / k), atol=1e-4)


def test_sinkhorn_uniform_scores_give_uniform_codes_and_no_overflow():
    out = sinkhorn_knopp(torch.zeros(8, 5))
    assert torch.allclose(out, torch.full((8, 5), 1 / 5))
    half = sinkhorn_knopp(torch.ones(8, 5, dtype=torch.float16))  # exp(1/0.05) overflows fp16
    assert torch.isfinite(half).all() and torch.allclose(half, torch.full((8, 5), 1 / 5))


def test_cross_entropy_soft_uniform_is_log_k_and_one_hot_is_ce():
    k = 7
    uniform = torch.full((3, k), 1 / k)
    assert cross_entropy_soft(uniform, torch.zeros(3, k)).item() == pytest.approx(math.log(k), rel=1e-6)
    logits = torch.randn(4, k)
    labels = torch.tensor([0, 3, 6, 2])
    hard = cross_entropy_soft(F.one_hot(labels, k).float(), logits)
    assert hard.item() == pytest.approx(F.cross_entropy(logits, labels).item(), rel=1e-6)


def test_swapped_prediction_uniform_logits_is_log_k():
    k, b = 9, 4
    codes = [torch.softmax(torch.randn(b, k), 1) for _ in range(2)]
    scores = [torch.zeros(b, k) for _ in range(5)]
    assert swapped_prediction(codes, scores, 0.1).item() == pytest.approx(math.log(k), rel=1e-6)


def test_swapped_prediction_averages_over_other_crops():
    torch.manual_seed(0)
    k, b, v, tau = 6, 3, 4, 0.1
    codes = [torch.softmax(torch.randn(b, k), 1) for _ in range(2)]
    scores = [torch.randn(b, k) for _ in range(v)]
    expected = sum(
        sum(cross_entropy_soft(codes[s], scores[t] / tau) for t in range(v) if t != s) / (v - 1) for s in range(2)
    ) / 2
    assert swapped_prediction(codes, scores, tau).item() == pytest.approx(expected.item(), rel=1e-6)
