"""P identities x K images per batch, for batch-hard triplet training (SAN: 64 x 4)."""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import torch.distributed as dist
from torch.utils.data import Sampler

__all__ = ["IdentityBatchSampler"]


class IdentityBatchSampler(Sampler):
    """Yields batches (lists of dataset indices) of ``num_identities`` distinct identities with
    ``num_instances`` images each. Use it as ``DataLoader(..., batch_sampler=sampler)``.

    One epoch: each identity's images are shuffled and cut into groups of K (a shorter rest is
    left out this epoch; an identity with fewer than K images gives one group drawn with
    replacement). Batches are formed by drawing P identities that still have a group, until
    fewer than P have one. The draw depends only on ``seed`` and the epoch (``set_epoch``, as
    with ``DistributedSampler``), never on global random state.

    With several processes (``num_replicas``/``rank``, taken from ``torch.distributed`` when it
    is initialised) every process builds the same epoch and takes every ``num_replicas``-th
    batch, so the shares are disjoint and equally long (the last few batches are dropped when the
    count does not divide). Each process's batch is P x K; the global batch is ``num_replicas``
    times that.
    """

    def __init__(self, data_source, num_identities=64, num_instances=4, seed=0, num_replicas=None,
                 rank=None):
        if num_identities < 1 or num_instances < 1:
            raise ValueError(f"num_identities and num_instances must be >= 1, got "
                             f"{num_identities} and {num_instances}")
        if num_replicas is None:
            num_replicas = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
        if rank is None:
            rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} is outside 0..{num_replicas - 1}")
        self.index_of = defaultdict(list)
        for i, item in enumerate(data_source):
            # Items are (path, pid, camid) tuples, or bare identities.
            pid = item[1] if isinstance(item, (tuple, list)) else item
            self.index_of[int(pid)].append(i)
        self.pids = sorted(self.index_of)
        if len(self.pids) < num_identities:
            raise ValueError(f"a batch needs {num_identities} identities but the data has only "
                             f"{len(self.pids)}")
        self.P, self.K = num_identities, num_instances
        self.seed, self.num_replicas, self.rank = seed, num_replicas, rank
        self.epoch = 0
        self._cache = None

    def set_epoch(self, epoch):
        self.epoch = int(epoch)

    def _epoch_batches(self):
        if self._cache is not None and self._cache[0] == self.epoch:
            return self._cache[1]
        rng = np.random.default_rng([self.seed, self.epoch])
        groups = {}
        for pid in self.pids:
            idx = np.asarray(self.index_of[pid])
            if len(idx) < self.K:
                groups[pid] = [rng.choice(idx, size=self.K, replace=True)]
            else:
                idx = rng.permutation(idx)
                groups[pid] = [idx[j * self.K:(j + 1) * self.K] for j in range(len(idx) // self.K)]
        batches = []
        available = list(self.pids)
        while len(available) >= self.P:
            chosen = rng.choice(len(available), size=self.P, replace=False)
            batch = []
            for c in chosen:
                batch.extend(int(i) for i in groups[available[c]].pop())
            batches.append(batch)
            available = [p for p in available if groups[p]]
        per_rank = len(batches) // self.num_replicas
        mine = batches[self.rank:per_rank * self.num_replicas:self.num_replicas]
        self._cache = (self.epoch, mine)
        return mine

    def __iter__(self):
        return iter([list(b) for b in self._epoch_batches()])

    def __len__(self):
        return len(self._epoch_batches())
