"""Loss functions as pure functions of tensors (no modules, no state).

Each function cites the equation it implements; ``tests/test_losses.py`` checks each
against the closed forms in METHODS.md.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F

from methods.base import distributed_world


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    """NT-Xent (SimCLR, Chen et al. 2020, Eq. 1), averaged over all 2N anchors.

    s_ij = z̄_i·z̄_j/τ over the 2N views; ℓ_i = −log[e^{s_i,p(i)} / Σ_{k≠i} e^{s_ik}].
    Self-similarity is masked with −inf (not 0). The official TF code returns
    loss_a + loss_b, each averaged over N, i.e. twice this value.
    """
    z = F.normalize(torch.cat([z1, z2]).float(), dim=1)
    n = z1.shape[0]
    logits = z @ z.T / temperature
    logits.fill_diagonal_(float("-inf"))
    targets = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    return F.cross_entropy(logits, targets)


def normalized_mse(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """BYOL regression loss ‖p̄ − z̄‖² = 2 − 2·cos(p, z) per sample, batch mean (Grill et al. Eq. 2).

    The caller passes the target ``z`` already detached (stop-gradient).
    """
    return (2.0 - 2.0 * F.cosine_similarity(p.float(), z.float(), dim=-1)).mean()


def negative_cosine(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """SimSiam's D(p, z) = −cos(p, sg(z)), batch mean (Chen & He 2021, Eq. 1). Stop-grad inside."""
    return -F.cosine_similarity(p.float(), z.detach().float(), dim=-1).mean()


def info_nce_queue(q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor, temperature: float) -> torch.Tensor:
    """MoCo InfoNCE (He et al. 2019, Eq. 1): positive q·k⁺ against K queued negatives.

    ``q``, ``k``: N×D (L2-normalised here); ``queue``: D×K of normalised keys (detached).
    Logit 0 is the positive; loss = CE(logits/τ, 0).
    """
    q = F.normalize(q.float(), dim=1)
    k = F.normalize(k.float(), dim=1).detach()
    pos = (q * k).sum(dim=1, keepdim=True)
    neg = q @ queue.detach().float()
    logits = torch.cat([pos, neg], dim=1) / temperature
    return F.cross_entropy(logits, torch.zeros(q.shape[0], dtype=torch.long, device=q.device))


def contrastive_ctr(q: torch.Tensor, k: torch.Tensor, temperature: float) -> torch.Tensor:
    """MoCo v3 ctr(q, k) = CE(q̄·k̄ᵀ/τ, diag) × 2τ (Chen, Xie, He 2021, Alg. 1); k detached."""
    q = F.normalize(q.float(), dim=1)
    k = F.normalize(k.float(), dim=1).detach()
    logits = q @ k.T / temperature
    labels = torch.arange(q.shape[0], device=q.device)
    return F.cross_entropy(logits, labels) * (2.0 * temperature)


def clip_loss(image_emb: torch.Tensor, text_emb: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    """CLIP symmetric InfoNCE (Radford et al. 2021, Fig. 3): ½[CE(L, diag) + CE(Lᵀ, diag)], L = e^t·Î·T̂ᵀ."""
    i = F.normalize(image_emb.float(), dim=1)
    t = F.normalize(text_emb.float(), dim=1)
    logits = logit_scale.float().exp() * i @ t.T
    labels = torch.arange(i.shape[0], device=i.device)
    return 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels))


def cross_entropy_soft(targets: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """mean_b[−Σ_k targets·log softmax(logits)] (SwAV swapped prediction, DINO)."""
    return -(targets * F.log_softmax(logits.float(), dim=-1)).sum(dim=-1).mean()


@torch.no_grad()
def sinkhorn_knopp(scores: torch.Tensor, epsilon: float = 0.05, iterations: int = 3,
                   across_ranks: bool = False) -> torch.Tensor:
    """Equipartitioned soft assignments Q (SwAV, Caron et al. 2020, Eq. 3 and App. A.1).

    ``scores``: B×K prototype scores. Works on Q = exp(S/ε)ᵀ (K×B) in float32 (exp(1/0.05)
    overflows fp16), alternately normalising rows to 1/K and columns to 1/B. After the
    last iteration the column (per-sample) marginal is exact; rows are only approximately
    1/K. Returns B×K with each row summing to 1.

    ``across_ranks``: with ``torch.distributed`` initialised, the total and the row sums are
    all-reduced and B is the global batch, as ``distributed_sinkhorn`` in ``main_swav.py``: each
    rank gets its rows of the codes of the whole global batch.
    """
    reduce = across_ranks and distributed_world() > 1
    s = scores.float() / epsilon
    shift = s.max()
    if reduce:  # one shift for every rank; a constant cancels in the normalisation
        dist.all_reduce(shift, op=dist.ReduceOp.MAX)
    q = torch.exp(s - shift).T
    k, b = q.shape
    if reduce:
        b *= distributed_world()

    def total(x: torch.Tensor) -> torch.Tensor:
        if reduce:
            dist.all_reduce(x)
        return x

    q /= total(q.sum())
    for _ in range(iterations):
        q /= total(q.sum(dim=1, keepdim=True))
        q /= k
        q /= q.sum(dim=0, keepdim=True)
        q /= b
    return (q * b).T


def swapped_prediction(
    assignments: list[torch.Tensor], scores: list[torch.Tensor], temperature: float
) -> torch.Tensor:
    """SwAV swapped-prediction loss (Caron et al. 2020, Eq. 1–2; ``main_swav.py``).

    ``assignments[s]``: B×K codes Q_s of assignment crop s (no grad); ``scores``: B×K prototype
    scores z̄ᵀC of ALL V crops, the assignment crops first. For each s, the mean over the other
    crops t ≠ s of CE(Q_s, softmax(S_t/τ)), then the mean over s:
    L = (1/|S|) Σ_s (1/(V−1)) Σ_{t≠s} mean_b[−Σ_k Q_s·log softmax(S_t/τ)].
    """
    if len(scores) < 2:
        raise ValueError("swapped prediction needs at least two crops")
    total = scores[0].new_zeros((), dtype=torch.float32)
    for s, q in enumerate(assignments):
        others = [t for t in range(len(scores)) if t != s]
        sub = sum(cross_entropy_soft(q.detach(), scores[t].float() / temperature) for t in others)
        total = total + sub / len(others)
    return total / len(assignments)
