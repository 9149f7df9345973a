"""Datasets by name: ``data.name`` in a config picks a builder registered here.

A builder takes the config's ``data`` section and the process rank and returns a dataset object
with ``train``, ``query`` and ``gallery`` lists of ``(path, pid, camid)`` and ``num_train_pids``
(see ``sharpattn.reid.datasets.base``). Register a new one with :func:`register_dataset`;
:func:`build_dataset` checks the images of whatever it returns.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..datasets import CUHK03, MSMT17, DukeMTMCreID, ImageFolderReID, Market1501, check_images, make_synthetic

__all__ = ["DATASETS", "build_dataset", "register_dataset", "synthetic_root"]

#: data.name -> callable(data_cfg, rank) -> dataset
DATASETS = {}


def register_dataset(name, builder):
    """Make ``data.name = name`` build ``builder(data_cfg, rank)``."""
    DATASETS[name] = builder
    return builder


def build_dataset(data_cfg, rank=0):
    """The dataset named by the config (the synthetic one is written on first use), its images
    checked: every image is decoded once, unreadable ones are left out with a warning (or, with
    ``data.strict=true``, refused with :class:`DatasetFormatError`), and a split without images
    is an error naming its folder (:func:`sharpattn.reid.datasets.check_images`)."""
    if data_cfg.name not in DATASETS:
        raise ValueError(f"unknown dataset {data_cfg.name!r}; registered: {', '.join(sorted(DATASETS))}")
    dataset = DATASETS[data_cfg.name](data_cfg, rank)
    # Every process checks (the same files give the same lists); only process 0 warns.
    check_images(dataset, strict=bool(getattr(data_cfg, "strict", False)), main=rank == 0)
    return dataset


def _root(data_cfg):
    return os.path.expanduser(data_cfg.root)


def synthetic_root(data_cfg):
    """The folder of the synthetic dataset these options describe (one per option set)."""
    s = data_cfg.synthetic
    ipc = "-".join(str(v) for v in s.images_per_cam)
    name = (f"synthetic_ids{s.num_ids}_cams{s.num_cams}_ipc{ipc}_{s.height}x{s.width}"
            f"_d{s.num_distractors}_j{s.num_junk}_seed{s.seed}"
            f"{'' if s.outfits is None else f'_outfits{s.outfits}'}"
            f"{'' if s.cue_scale == 1 else f'_cue{s.cue_scale:g}'}"
            f"{'' if s.test_draw == 0 else f'_draw{s.test_draw}'}")
    return Path(_root(data_cfg)) / name


def _synthetic(data_cfg, rank):
    from ..engine.distributed import barrier  # here: the engine package imports this one

    out = synthetic_root(data_cfg)
    if rank == 0 and not (out / ".complete").exists():  # process 0 writes, the others wait
        s = data_cfg.synthetic
        make_synthetic(out, num_ids=s.num_ids, num_cams=s.num_cams, images_per_cam=tuple(s.images_per_cam),
                       height=s.height, width=s.width, num_distractors=s.num_distractors,
                       num_junk=s.num_junk, seed=s.seed, outfits=s.outfits, cue_scale=s.cue_scale,
                       test_draw=s.test_draw)
        (out / ".complete").write_text("written by sharpattn.reid.make_synthetic\n")
    barrier()
    return Market1501(out)


def _cuhk03(labeled):
    return lambda cfg, rank: CUHK03(_root(cfg), labeled=labeled, protocol=cfg.cuhk03_protocol,
                                    split_id=cfg.cuhk03_split)


register_dataset("synthetic", _synthetic)
register_dataset("market1501", lambda cfg, rank: Market1501(_root(cfg)))
register_dataset("dukemtmcreid", lambda cfg, rank: DukeMTMCreID(_root(cfg)))
register_dataset("cuhk03_labeled", _cuhk03(labeled=True))
register_dataset("cuhk03_detected", _cuhk03(labeled=False))
register_dataset("msmt17", lambda cfg, rank: MSMT17(_root(cfg), include_val=cfg.msmt17_include_val))
register_dataset("folder", lambda cfg, rank: ImageFolderReID(_root(cfg)))
