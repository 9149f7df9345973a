"""Using a trained model on your own images: embed a folder, search a gallery folder.

No dataset layout and no labels are needed: any folder of images (searched recursively).

    model, cfg, _ = load_inference_model("runs/<run>/best.pt")
    result = embed_folder(model, "photos/", cfg.data.height, cfg.data.width)
    result.features            # (N, D) float32, one row per readable image, in result.names order

Unreadable images (corrupt, truncated, not an image despite the extension, a broken or looping
symbolic link) are skipped with a warning that names each one, and listed in `result.skipped`; `strict=True` makes the first one
an error instead. The features are computed as `sharpattn-eval` computes them (the same test
transform, 10-crop averaged when asked), so a search over a dataset's query and gallery folders
ranks them as the evaluation does.
"""

from __future__ import annotations

import csv
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from .engine.checkpoint import load_checkpoint, load_model_state
from .config import config_from_dict
from .datasets.base import IMAGE_EXTENSIONS
from .datasets.image_dataset import read_image
from .metrics import compute_distance_matrix
from .modeling import build_model
from .data.transforms import build_test_transform

__all__ = ["Embedded", "embed_folder", "features_path", "list_images",
           "load_inference_model", "order_by_distance", "rank", "same_files", "write_features", "write_ranking_csv"]

EXTENSIONS = tuple(sorted(set(IMAGE_EXTENSIONS) | {".webp", ".tif", ".tiff"}))


def load_inference_model(checkpoint, device="cpu"):
    """(model in eval mode on `device`, its training config, the checkpoint dict) from a
    sharpattn.reid checkpoint file or run folder."""
    ckpt = load_checkpoint(checkpoint)
    cfg = config_from_dict(ckpt["config"], origin=ckpt["path"])
    model = build_model(ckpt["model_spec"])
    load_model_state(model, ckpt["model"], ckpt["path"])
    return model.to(device).eval(), cfg, ckpt


def list_images(folder) -> list[Path]:
    """Image files under `folder` (recursively, by extension), sorted by relative path.

    A symbolic link with an image extension that leads nowhere (its target is missing, or it
    loops) is listed too: reading it fails, so `embed_folder` reports it as unreadable instead
    of leaving it out without a word.
    """
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise FileNotFoundError(f"not a folder: {folder}")
    files = sorted(p for p in folder.rglob("*")
                   if p.suffix.lower() in EXTENSIONS and (p.is_file() or _dead_link(p)))
    if not files:
        raise FileNotFoundError(f"no images ({', '.join(EXTENSIONS)}) under {folder}")
    return files


def _dead_link(path: Path) -> bool:
    """A symbolic link whose target cannot be reached (missing, or a loop of links)."""
    if not path.is_symlink():
        return False
    try:
        path.stat()
    except OSError:
        return True
    return False


class _Images(Dataset):
    """Item i: (index, transformed image or None when it cannot be read, the error or "")."""

    def __init__(self, paths, transform):
        self.paths, self.transform = list(paths), transform

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        try:
            return i, self.transform(read_image(self.paths[i])), ""
        except (OSError, ValueError, SyntaxError) as e:  # PIL's errors for bad image data
            return i, None, _reason(e, self.paths[i])


def _reason(error, path) -> str:
    """Why an image could not be read, without read_image's "cannot read image <path>: "
    prefix (the caller names the file itself)."""
    text = str(error)
    prefix = f"cannot read image {path}: "
    if text.startswith(prefix):
        text = text[len(prefix):]
    cause = error.__cause__ or error
    if isinstance(cause, OSError) and cause.strerror:  # the OS's words, e.g. "Too many levels of
        text = cause.strerror                          # symbolic links" (a loop), not "[Errno 40] ..."
    return " ".join(text.split()) or type(error).__name__


def _collate(items):
    good = [(i, img) for i, img, _ in items if img is not None]
    bad = [(i, err) for i, img, err in items if img is None]
    images = torch.stack([img for _, img in good]) if good else None
    return images, [i for i, _ in good], bad


@dataclass
class Embedded:
    """Features of the readable images of a folder, in `names` order (relative paths)."""

    root: Path
    names: list[str]
    features: torch.Tensor
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (name, why)

    @property
    def paths(self) -> list[Path]:
        return [self.root / n for n in self.names]


@torch.no_grad()
def embed_folder(model, folder, height, width, ten_crop=False, batch_size=64, workers=0,
                 device=None, progress=True, strict=False) -> Embedded:
    """Embed every image under `folder` with an eval-mode model (see the module docstring).

    `batch_size` counts images (with `ten_crop` each is 10 forward passes, averaged).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    root = Path(folder).expanduser()
    paths = list_images(root)
    if device is None:
        device = next(iter(model.parameters()), torch.empty(0)).device
    loader = DataLoader(_Images(paths, build_test_transform(height, width, ten_crop=ten_crop)),
                        batch_size=batch_size, num_workers=workers, collate_fn=_collate)
    was_training = model.training
    model.eval()
    feats, kept, skipped = [], [], []
    bar = tqdm(total=len(paths), desc=f"embedding {root.name or root}", unit="img",
               disable=not progress)
    try:
        for images, index, bad in loader:
            for i, err in bad:
                name = paths[i].relative_to(root).as_posix()
                if strict:
                    raise OSError(f"cannot read image {paths[i]}: {err}")
                warnings.warn(f"skipping unreadable image {paths[i]}: {err}", stacklevel=2)
                skipped.append((name, err))
            if images is not None:
                images = images.to(device)
                if images.dim() == 5:  # (B, crops, C, H, W): average the crops' embeddings
                    b, n = images.shape[:2]
                    out = model(images.flatten(0, 1)).view(b, n, -1).mean(1)
                else:
                    out = model(images)
                feats.append(out.float().cpu())
                kept.extend(index)
            bar.update(len(index) + len(bad))
    finally:
        bar.close()
        model.train(was_training)
    if not kept:
        raise OSError(f"none of the {len(paths)} images under {root} could be read")
    names = [paths[i].relative_to(root).as_posix() for i in kept]
    return Embedded(root, names, torch.cat(feats), skipped)


def features_path(path) -> Path:
    """Where `write_features(path, ...)` writes: `path` itself when it ends in ".npz";
    `path/features.npz` when `path` is a folder (or ends in a path separator); else `path` with
    ".npz" appended (as numpy would)."""
    text = os.fspath(path)
    p = Path(text).expanduser()
    if p.is_dir() or text.endswith(("/", os.sep)):
        return p / "features.npz"
    return p if p.name.endswith(".npz") else p.with_name(p.name + ".npz")


def write_features(path, embedded: Embedded, **meta):
    """An .npz with `names` (relative paths), `features` (N, D) float32, `skipped` (names)
    and any `meta` values given (checkpoint, ten_crop, height, width), at
    `features_path(path)`; returns the path written."""
    path = features_path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:  # a file object: numpy writes exactly there
        np.savez(f, names=np.array(embedded.names, dtype=str),
                 features=embedded.features.numpy().astype(np.float32),
                 skipped=np.array([n for n, _ in embedded.skipped], dtype=str),
                 root=str(embedded.root), **{k: np.asarray(v) for k, v in meta.items()})
    return path


def same_files(query: Embedded, gallery: Embedded) -> list[tuple[int, int]]:
    """(query index, gallery index) of every pair that is one file (equal resolved paths, so a
    symbolic link and its target count as the same)."""
    where = {}
    for gi, p in enumerate(gallery.paths):
        where.setdefault(_resolved(p), []).append(gi)
    return [(qi, gi) for qi, p in enumerate(query.paths) for gi in where.get(_resolved(p), ())]


def _resolved(path: Path):
    try:
        return path.resolve(strict=True)
    except (OSError, RuntimeError):
        return path.absolute()


def rank(query_features, gallery_features, metric="euclidean", exclude=()):
    """(distance matrix (Q, G), each query's gallery indices sorted by distance, ties in
    gallery order): the evaluation's distance, without its junk rules (there are no labels).

    `exclude`: (query, gallery) index pairs left out of the query's ranking (e.g. `same_files`:
    a query is never its own match); the rankings are then a list of arrays, of lengths G
    minus the pairs of each query (else a (Q, G) array).
    """
    dist = compute_distance_matrix(query_features, gallery_features, metric=metric).cpu()
    return dist, order_by_distance(dist, exclude)


def order_by_distance(dist, exclude=()):
    """Each row's column indices sorted by distance (stable), without the `exclude` pairs."""
    d = dist.numpy() if isinstance(dist, torch.Tensor) else np.asarray(dist)
    order = np.argsort(d, axis=1, kind="stable")
    if not len(exclude):
        return order
    drop = np.zeros(d.shape, dtype=bool)
    for qi, gi in exclude:
        drop[qi, gi] = True
    return [row[~drop[qi, row]] for qi, row in enumerate(order)]


def write_ranking_csv(path, query: Embedded, gallery: Embedded, dist, order, topk=None):
    """One row per (query, rank): query, rank (1-based), gallery, distance; `topk` ranks per
    query (None: its whole ranking). `order`: `rank`'s rankings (an array or a list of them)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    d = dist.numpy() if isinstance(dist, torch.Tensor) else np.asarray(dist)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["query", "rank", "gallery", "distance"])
        for qi, qname in enumerate(query.names):
            for r, gi in enumerate(order[qi][:topk]):
                w.writerow([qname, r + 1, gallery.names[gi], f"{d[qi, gi]:.6g}"])
    return path


def default_workers():
    """DataLoader workers for embedding: up to 4, fewer on small machines (0 on one core)."""
    return min(4, max(0, (os.cpu_count() or 1) - 1))
