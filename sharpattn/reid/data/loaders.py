"""Loaders whose randomness is a function of saved state (what makes exact resumption work).

Training items are ``(index, seed)``: each image's augmentation is drawn from a generator seeded
with (seed, epoch, rank, batch, position), whatever the number of DataLoader workers, and an
epoch's batches depend on (seed, epoch) only, so a run can restart at any batch.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from ..datasets import ImageDataset
from ..datasets.image_dataset import read_image
from .transforms import build_test_transform

__all__ = ["EpochBatches", "SeededImages", "eval_loader", "train_loader"]


class SeededImages(Dataset):
    """Items are ``(index, seed)``: the transform draws from torch's RNG seeded with ``seed``,
    so an image's augmentation depends on where it sits in the epoch, not on worker state."""

    def __init__(self, items, transform):
        self.items, self.transform = list(items), transform

    def __len__(self):
        return len(self.items)

    def __getitem__(self, key):
        index, seed = key
        path, pid, camid = self.items[index]
        img = read_image(path)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            img = self.transform(img)
        return img, pid, camid


class EpochBatches(Sampler):
    """This process's batches of one epoch from ``start`` on, each index paired with its seed."""

    def __init__(self, sampler, seed, epoch, start=0):
        self.sampler, self.seed, self.epoch, self.start = sampler, seed, epoch, start

    def __iter__(self):
        self.sampler.set_epoch(self.epoch)
        for b, batch in enumerate(self.sampler):
            if b < self.start:
                continue
            seeds = np.random.SeedSequence([self.seed, self.epoch, self.sampler.rank, b]).generate_state(
                len(batch), dtype=np.uint64)
            yield [(int(i), int(s) & ((1 << 63) - 1)) for i, s in zip(batch, seeds)]

    def __len__(self):
        self.sampler.set_epoch(self.epoch)
        return max(0, len(self.sampler) - self.start)


def train_loader(images: SeededImages, sampler, seed, epoch, start, workers, pin_memory):
    """One epoch's loader from batch ``start`` on."""
    # An own generator: creating the iterator must not consume the global RNG.
    return DataLoader(images, batch_sampler=EpochBatches(sampler, seed, epoch, start), num_workers=workers,
                      pin_memory=pin_memory, generator=torch.Generator(), persistent_workers=False)


def eval_loader(items, cfg, ten_crop):
    """Query or gallery images in order, for feature extraction."""
    tf = build_test_transform(cfg.data.height, cfg.data.width, ten_crop=ten_crop)
    batch = max(1, cfg.eval.batch_size // (10 if ten_crop else 1))
    return DataLoader(ImageDataset(items, tf), batch_size=batch, shuffle=False,
                      num_workers=min(cfg.data.workers, 4), pin_memory=torch.cuda.is_available())
