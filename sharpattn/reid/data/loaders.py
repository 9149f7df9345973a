"""Loaders whose randomness is a function of saved state (what makes exact resumption work).

Training items are ``(index, seed)``: each image's augmentation is drawn from a generator seeded
with (seed, epoch, rank, batch, position), whatever the number of DataLoader workers, and an
epoch's batches depend on (seed, epoch) only, so a run can restart at any batch.

An image that cannot be read during a run (one that broke after the check of
:func:`~sharpattn.reid.data.build_dataset`) never stops it. In training it is replaced by
another image of the same identity, chosen from the item's seed (so a resumed run replaces it
alike and batches keep their P x K shape), and counted per epoch in
:attr:`SeededImages.skipped`, with one warning at the epoch's end. In evaluation it is left out of
the batch; :func:`sharpattn.reid.evaluation.extract_features` reports it.
"""

from __future__ import annotations

import warnings
from collections import defaultdict, namedtuple

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler
from torch.utils.data._utils.collate import default_collate

from ..datasets import ImageDataset
from ..datasets.check import SHOWN, UnreadableImageWarning, unreadable_reason
from ..datasets.image_dataset import read_image
from .transforms import build_test_transform

__all__ = ["EpochBatches", "EvalBatch", "SeededImages", "eval_loader", "train_loader"]

#: what reading an image may raise (PIL raises many kinds for damaged files); caught around
#: the read alone, never around the transform
READ_ERRORS = (Exception,)


class SeededImages(Dataset):
    """Items are ``(index, seed)``: the transform draws from torch's RNG seeded with ``seed``,
    so an image's augmentation depends on where it sits in the epoch, not on worker state.

    ``dataset[(index, seed)]`` is ``(image, pid, camid, failed)``: ``failed`` lists the
    ``(path, reason)`` of images that could not be read for this item, usually none. When the
    item's image cannot be read, another image of the same identity is taken instead (the
    order of candidates drawn from ``seed``; an identity none of whose images can be read lends
    the item to another identity, with that identity's label). :func:`train_loader` counts them:
    ``skipped[epoch]`` is the number of failed reads of that epoch, ``unreadable`` maps each
    file found unreadable to the reason (files listed there are not read again).
    """

    def __init__(self, items, transform):
        self.items, self.transform = list(items), transform
        self.index_of = defaultdict(list)
        for i, (_, pid, _) in enumerate(self.items):
            self.index_of[pid].append(i)
        self.skipped = defaultdict(int)   # epoch -> failed reads (counted by train_loader)
        self.unreadable = {}              # path -> reason, files found unreadable during the run

    def __len__(self):
        return len(self.items)

    def skipped_in_epoch(self, epoch):
        """How many training images could not be read in ``epoch`` (0-based) and were replaced."""
        return self.skipped.get(epoch, 0)

    def _candidates(self, index, seed):
        """The item itself, then the other images of its identity, then every other image, in
        an order drawn from ``seed``."""
        yield index
        rng = np.random.default_rng(seed)
        same = [i for i in self.index_of[self.items[index][1]] if i != index]
        for k in rng.permutation(len(same)):
            yield same[k]
        for i in rng.permutation(len(self.items)):
            if self.items[i][1] != self.items[index][1]:
                yield int(i)

    def __getitem__(self, key):
        index, seed = key
        failed = []
        for i in self._candidates(index, seed):
            path, pid, camid = self.items[i]
            if path in self.unreadable:
                failed.append((path, self.unreadable[path]))
                continue
            try:
                img = read_image(path)
                break
            except READ_ERRORS as e:
                failed.append((path, unreadable_reason(e, path)))
        else:
            raise OSError(f"none of the {len(self.items)} training images can be read; the first: "
                          f"{failed[0][0]} ({failed[0][1]})")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            img = self.transform(img)
        return img, pid, camid, failed


def _train_collate(items):
    images, pids, camids = default_collate([it[:3] for it in items])
    return images, pids, camids, [f for it in items for f in it[3]]


class _CountingLoader:
    """Iterates a training DataLoader as ``(images, pids, camids)``, counting the images its
    items could not read into ``images.skipped[epoch]``, with one warning when the epoch ends."""

    def __init__(self, loader, images, epoch):
        self.loader, self.images, self.epoch = loader, images, epoch

    def __len__(self):
        return len(self.loader)

    def __iter__(self):
        images, failed_here = self.images, {}
        for x, pids, camids, failed in self.loader:
            for path, reason in failed:
                images.skipped[self.epoch] += 1
                images.unreadable.setdefault(path, reason)
                failed_here.setdefault(path, reason)
            yield x, pids, camids
        n = images.skipped_in_epoch(self.epoch)
        if n:
            shown = "; ".join(f"{p}: {r}" for p, r in list(failed_here.items())[:SHOWN])
            more = f"; and {len(failed_here) - SHOWN} more" if len(failed_here) > SHOWN else ""
            warnings.warn(f"epoch {self.epoch + 1}: {n} training image read(s) failed, each replaced by another image "
                          f"of its identity: {shown}{more}", UnreadableImageWarning,
                          stacklevel=2)

    def __getattr__(self, name):  # batch_sampler, num_workers ... of the DataLoader
        if name == "loader":
            raise AttributeError(name)
        return getattr(self.loader, name)


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
    """One epoch's loader from batch ``start`` on: ``(images, pids, camids)`` batches; images
    that cannot be read are replaced and counted in ``images.skipped[epoch]`` (see
    :class:`SeededImages`)."""
    # An own generator: creating the iterator must not consume the global RNG.
    loader = DataLoader(images, batch_sampler=EpochBatches(sampler, seed, epoch, start), num_workers=workers,
                        pin_memory=pin_memory, generator=torch.Generator(), persistent_workers=False,
                        collate_fn=_train_collate)
    return _CountingLoader(loader, images, epoch)


#: an evaluation batch: the readable images (None when none is), their pids, camids and paths,
#: and ``dropped``, the ``(index in the items, path, reason)`` of those that could not be read
EvalBatch = namedtuple("EvalBatch", ["images", "pids", "camids", "paths", "dropped"])


class _TolerantImages(ImageDataset):
    """``(image or None, pid, camid, path, index, reason)``: a failed read gives None."""

    def __getitem__(self, index):
        path, pid, camid = self.items[index]
        try:
            img = read_image(path)
        except READ_ERRORS as e:
            return None, pid, camid, path, index, unreadable_reason(e, path)
        if self.transform is not None:
            img = self.transform(img)
        return img, pid, camid, path, index, ""


def _eval_collate(items):
    good = [it[:4] for it in items if it[0] is not None]
    dropped = [(it[4], it[3], it[5]) for it in items if it[0] is None]
    if not good:
        return EvalBatch(None, torch.empty(0, dtype=torch.long), torch.empty(0, dtype=torch.long), [], dropped)
    images, pids, camids, paths = default_collate(good)
    return EvalBatch(images, pids, camids, list(paths), dropped)


def eval_loader(items, cfg, ten_crop):
    """Query or gallery images in order, for feature extraction, as :data:`EvalBatch` tuples:
    an image that cannot be read is left out of its batch and listed in ``dropped``."""
    tf = build_test_transform(cfg.data.height, cfg.data.width, ten_crop=ten_crop)
    batch = max(1, cfg.eval.batch_size // (10 if ten_crop else 1))
    return DataLoader(_TolerantImages(items, tf), batch_size=batch, shuffle=False,
                      num_workers=min(cfg.data.workers, 4), pin_memory=torch.cuda.is_available(),
                      collate_fn=_eval_collate)
