from collections import Counter

import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from sharpattn.reid.data.sampler import IdentityBatchSampler


def make_items():
    # identity p has p + 1 images (1..12), camera alternating
    items = []
    for p in range(12):
        items += [(f"img_{p}_{i}.jpg", p, i % 2) for i in range(p + 1)]
    return items


def test_every_batch_is_p_identities_times_k_images():
    items = make_items()
    s = IdentityBatchSampler(items, num_identities=3, num_instances=4, seed=1)
    batches = list(s)
    assert len(batches) == len(s) > 0
    for b in batches:
        assert len(b) == 12
        counts = Counter(items[i][1] for i in b)
        assert len(counts) == 3 and set(counts.values()) == {4}


def test_replacement_only_for_identities_with_fewer_than_k_images():
    items = make_items()
    s = IdentityBatchSampler(items, num_identities=3, num_instances=4, seed=2)
    seen = Counter()
    small_with_repeats = False
    for b in s:
        for start in range(0, len(b), 4):
            group = b[start:start + 4]
            pid = items[group[0]][1]
            assert all(items[i][1] == pid for i in group)
            if pid + 1 < 4:
                # 1..3 images: drawn with replacement, so repeats are unavoidable
                assert len(set(group)) <= pid + 1
                small_with_repeats = True
            else:
                seen.update(group)
    assert small_with_repeats
    # identities with >= K images: each image used at most once per epoch
    assert seen and max(seen.values()) == 1


def test_single_identity_group_count():
    # 2 identities with 9 images, K = 4: 2 groups each, P = 2 -> exactly 2 batches
    items = [("x", p, 0) for p in (0, 1) for _ in range(9)]
    s = IdentityBatchSampler(items, num_identities=2, num_instances=4)
    assert len(s) == 2


def test_deterministic_per_seed_and_epoch():
    items = make_items()
    a = IdentityBatchSampler(items, 3, 4, seed=5)
    b = IdentityBatchSampler(items, 3, 4, seed=5)
    assert list(a) == list(b)
    first = list(a)
    assert list(a) == first  # no hidden state: same epoch, same batches
    a.set_epoch(1)
    b.set_epoch(1)
    assert list(a) == list(b) != first
    assert list(IdentityBatchSampler(items, 3, 4, seed=6)) != first


def test_ddp_shares_are_disjoint_equal_and_cover_the_epoch():
    items = make_items()
    whole = list(IdentityBatchSampler(items, 2, 2, seed=3, num_replicas=1, rank=0))
    shares = [list(IdentityBatchSampler(items, 2, 2, seed=3, num_replicas=3, rank=r)) for r in range(3)]
    n = len(whole) // 3
    assert all(len(s) == n for s in shares) and n > 0
    # rank r takes batches r, r + 3, r + 6, ... of the same epoch
    for r in range(3):
        assert shares[r] == whole[r:3 * n:3]
    as_sets = [set(map(tuple, s)) for s in shares]
    assert not (as_sets[0] & as_sets[1]) and not (as_sets[1] & as_sets[2])


def test_errors():
    items = make_items()
    with pytest.raises(ValueError, match="needs 20 identities but the data has only 12"):
        IdentityBatchSampler(items, 20, 4)
    with pytest.raises(ValueError, match="rank 3"):
        IdentityBatchSampler(items, 2, 2, num_replicas=2, rank=3)


def test_works_as_a_dataloader_batch_sampler():
    items = make_items()

    class Pids(Dataset):
        def __len__(self):
            return len(items)

        def __getitem__(self, i):
            return items[i][1]

    s = IdentityBatchSampler(items, 2, 3, seed=0)
    batches = list(DataLoader(Pids(), batch_sampler=s))
    assert len(batches) == len(s)
    for b in batches:
        assert isinstance(b, torch.Tensor) and b.shape == (6,)
        assert sorted(Counter(b.tolist()).values()) == [3, 3]
