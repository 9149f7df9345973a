import math

import pytest
import torch

from sharpattn.reid.losses import all_gather_with_grad, batch_hard_triplet_loss, pairwise_distance


def brute_force(emb, pids, margin, soft):
    """The batch-hard loss written anchor by anchor, in float64."""
    emb = emb.double()
    n = len(pids)
    total = 0.0
    for a in range(n):
        dp = max(float((emb[a] - emb[p]).norm()) for p in range(n) if pids[p] == pids[a])
        negs = [float((emb[a] - emb[q]).norm()) for q in range(n) if pids[q] != pids[a]]
        if not negs:
            continue
        dn = min(negs)
        total += math.log1p(math.exp(dp - dn)) if soft else max(0.0, margin + dp - dn)
    return total / n


@pytest.mark.parametrize("soft", [False, True])
def test_batch_hard_matches_brute_force(soft):
    g = torch.Generator().manual_seed(0)
    emb = torch.randn(24, 8, generator=g)
    pids = torch.arange(6).repeat_interleave(4)[torch.randperm(24, generator=g)]
    loss = batch_hard_triplet_loss(emb, pids, margin=0.5, soft_margin=soft)
    assert loss.item() == pytest.approx(brute_force(emb, pids.tolist(), 0.5, soft), rel=1e-5, abs=1e-6)


def test_stats_and_hinge_zero_when_separated():
    # two tight, far-apart clusters: every hardest negative is farther than positive + margin
    emb = torch.tensor([[0.0, 0.0], [0.1, 0.0], [10.0, 0.0], [10.1, 0.0]])
    loss, st = batch_hard_triplet_loss(emb, torch.tensor([1, 1, 2, 2]), margin=0.5, return_stats=True)
    assert loss.item() == 0.0
    assert st["precision"] == 1.0
    assert st["dist_ap"] == pytest.approx(0.1, abs=1e-3)
    assert st["dist_an"] == pytest.approx(9.95, abs=1e-3)  # anchors: 10, 9.9, 9.9, 10


def test_anchor_without_negative_or_positive():
    emb = torch.randn(3, 4, requires_grad=True)
    # one identity only: no negatives anywhere, the loss is 0 (not inf/nan) and backward works
    loss = batch_hard_triplet_loss(emb, torch.tensor([5, 5, 5]))
    loss.backward()
    assert loss.item() == 0.0 and torch.isfinite(emb.grad).all()
    # singletons: positive distance 0 (self), loss = relu(margin - d_an)
    emb = torch.tensor([[0.0], [0.3]])
    assert batch_hard_triplet_loss(emb, torch.tensor([1, 2]), margin=0.5).item() == pytest.approx(0.2, abs=1e-5)


def test_gradient_finite_for_identical_embeddings():
    emb = torch.ones(8, 4, requires_grad=True)
    loss = batch_hard_triplet_loss(emb, torch.arange(4).repeat_interleave(2))
    loss.backward()
    assert loss.item() == pytest.approx(0.5)
    assert torch.isfinite(emb.grad).all()


def test_half_precision_embeddings_use_float32_distances():
    emb = torch.randn(8, 16)
    pids = torch.arange(4).repeat_interleave(2)
    ref = batch_hard_triplet_loss(emb, pids)
    low = batch_hard_triplet_loss(emb.bfloat16(), pids)
    assert low.dtype == torch.float32
    assert low.item() == pytest.approx(ref.item(), abs=0.05)


def test_pairwise_distance_matches_cdist():
    x, y = torch.randn(5, 7), torch.randn(6, 7)
    torch.testing.assert_close(pairwise_distance(x, y), torch.cdist(x, y), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(pairwise_distance(x, y, squared=True), torch.cdist(x, y) ** 2, atol=1e-4, rtol=1e-5)


def test_bad_arguments():
    with pytest.raises(ValueError, match=r"\(N, D\)"):
        batch_hard_triplet_loss(torch.randn(4), torch.arange(4))
    with pytest.raises(ValueError, match="do not match"):
        batch_hard_triplet_loss(torch.randn(4, 2), torch.arange(3))


def test_gather_without_process_group_is_identity():
    x = torch.randn(3, 2)
    assert all_gather_with_grad(x) is x
