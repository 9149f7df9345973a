"""What every dataset class shares: the three split lists, relabelling, checks and a summary."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["ReIDDataset", "DatasetNotFoundError", "DatasetFormatError", "find_root", "parse_image_dir",
           "relabel", "IMAGE_EXTENSIONS"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp")


class DatasetNotFoundError(FileNotFoundError):
    """A dataset folder or file is missing; the message says where it was looked for."""


class DatasetFormatError(ValueError):
    """A dataset folder or file exists but does not look like the expected layout."""


class ReIDDataset:
    """Train / query / gallery lists of ``(path, pid, camid)``.

    Conventions shared by all datasets:

    * ``camid`` is 0-based (file name ``c1`` is camera 0).
    * Training identities are relabelled to ``0 .. num_train_pids - 1`` (class indices for a
      classifier); query and gallery keep the dataset's own identities, so Market-1501's
      distractors stay identity ``0``.
    """

    #: Where the data comes from; repeated in "not found" errors.
    source = ""

    def __init__(self, train, query, gallery, name=None):
        self.train = list(train)
        self.query = list(query)
        self.gallery = list(gallery)
        self.name = name or type(self).__name__

    @staticmethod
    def _stats(items):
        return len(items), len({p for _, p, _ in items}), len({c for _, _, c in items})

    @property
    def num_train_pids(self):
        return self._stats(self.train)[1]

    @property
    def num_train_cams(self):
        return self._stats(self.train)[2]

    def summary(self):
        """Images, identities and cameras of each split, as ``{split: {...}}``."""
        out = {}
        for split in ("train", "query", "gallery"):
            n, p, c = self._stats(getattr(self, split))
            out[split] = {"images": n, "identities": p, "cameras": c}
        return out

    def __str__(self):
        rows = [f"{self.name}", f"  {'split':8s} {'images':>8s} {'ids':>6s} {'cams':>5s}"]
        for split, s in self.summary().items():
            rows.append(f"  {split:8s} {s['images']:8d} {s['identities']:6d} {s['cameras']:5d}")
        return "\n".join(rows)

    __repr__ = __str__


def find_root(root, candidates, required, name, source):
    """The first of ``root/<candidate>`` that holds every entry of ``required``.

    Raises :class:`DatasetNotFoundError` naming each place looked at, what was expected there
    and where the dataset comes from.
    """
    root = Path(os.path.expanduser(str(root)))
    tried = []
    for c in candidates:
        base = root / c if c else root
        if all((base / r).exists() for r in required):
            return base
        tried.append(str(base))
    missing = ", ".join(required)
    raise DatasetNotFoundError(
        f"{name} not found: none of [{'; '.join(tried)}] contains {missing}. {source}")


def parse_image_dir(folder, pattern, expected, cam_range=None):
    """Parse the image files of ``folder`` into ``(path, pid, camid)``, camid 0-based.

    ``pattern`` is a compiled regex with named groups ``pid`` and ``cam``; files that are not
    images (``Thumbs.db`` in the official Market-1501 zip) are ignored, image files whose name
    does not match raise :class:`DatasetFormatError` naming the file and ``expected``.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DatasetNotFoundError(f"expected a folder of images at {folder}")
    items = []
    for f in sorted(folder.iterdir()):
        if f.suffix.lower() not in IMAGE_EXTENSIONS:
            continue
        m = pattern.match(f.name)
        if m is None:
            raise DatasetFormatError(f"unexpected file name {f}: expected {expected}")
        pid, cam = int(m.group("pid")), int(m.group("cam"))
        if cam_range is not None and not (cam_range[0] <= cam <= cam_range[1]):
            raise DatasetFormatError(
                f"camera {cam} in {f} is outside {cam_range[0]}..{cam_range[1]}: expected {expected}")
        items.append((str(f), pid, cam - 1))
    return items


def relabel(items):
    """Map identities to ``0 .. n-1`` in sorted order (for classification training)."""
    mapping = {p: i for i, p in enumerate(sorted({p for _, p, _ in items}))}
    return [(path, mapping[p], c) for path, p, c in items]
