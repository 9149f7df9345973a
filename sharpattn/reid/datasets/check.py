"""The image check run before a training or an evaluation: open and decode every image once.

:func:`check_images` decodes each image of the train, query and gallery lists (a path listed in
several splits once). Unreadable files (truncated, empty, not an image despite the extension, a
broken or looping symbolic link, a folder named ``.jpg``) are removed from the lists with one
warning that names the first ten and says where the full list is, or, with ``strict=True``
(config ``data.strict=true``), refused with a :class:`DatasetFormatError` naming them. A split
with no image left raises :class:`DatasetFormatError` naming its folder.

The check decodes the pixels instead of reading the header alone, because a truncated JPEG has a
valid header: measured on 32,000 128 x 64 JPEGs (Market-1501's size) on a 2-core CPU, a header
read took 1.0-1.9 s and the decode 4.9-7.1 s (docs/reid.md), so nothing is cached. Files that
break after the check are handled where they are read (``sharpattn.reid.data.loaders``,
``sharpattn.reid.evaluation.extract_query_gallery``).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import warnings
from pathlib import Path

from .base import DatasetFormatError, relabel

__all__ = ["UnreadableImageWarning", "check_images", "probe_image", "unreadable_reason",
           "write_unreadable_list"]

#: splits checked and filtered, in this order (``val``: CUHK03 classic's validation images)
SPLITS = ("train", "query", "gallery", "val")
SHOWN = 10  # files named in a warning or an error


class UnreadableImageWarning(UserWarning):
    """Some images could not be read and were left out (or replaced, during training)."""


def unreadable_reason(error, path=None) -> str:
    """A short reason for a failed read: the OS's words for OS errors ("Too many levels of
    symbolic links"), "empty file" for a zero-byte file, PIL's message otherwise (without the
    path it repeats)."""
    cause = error
    while cause.__cause__ is not None and isinstance(cause, OSError):  # read_image wraps PIL's error
        cause = cause.__cause__
    if path is not None:
        try:
            if os.path.isfile(path) and os.path.getsize(path) == 0:
                return "empty file"
        except OSError:
            pass
    if isinstance(cause, OSError) and cause.strerror:
        return cause.strerror
    text = str(cause)
    if type(cause).__name__ == "UnidentifiedImageError":
        return "not an image file that PIL recognises"
    if path is not None:
        text = text.replace(f"'{path}'", "").replace(str(path), "")
    return " ".join(text.split()) or type(cause).__name__


def probe_image(path):
    """``None`` when ``path`` opens and decodes as an image, else why it does not (a string)."""
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # PIL's "possibly corrupt EXIF" and the like
            with Image.open(path) as im:
                im.load()
        return None
    except Exception as e:  # noqa: BLE001 - any failure to decode makes the file unreadable
        return unreadable_reason(e, path)


def _where(dataset, split):
    dirs = getattr(dataset, "split_dirs", None) or {}
    if split in dirs:
        return str(dirs[split])
    return str(getattr(dataset, "root", "the dataset's root"))


def _shown(root, path):
    if root is not None:
        try:
            return Path(path).relative_to(root).as_posix()
        except ValueError:
            pass
    return str(path)


def _list_file(dataset):
    root = str(getattr(dataset, "root", ""))
    tag = hashlib.sha1(root.encode()).hexdigest()[:8]
    name = "".join(c if c.isalnum() or c in "-_" else "_" for c in str(getattr(dataset, "name", "dataset")))
    return Path(tempfile.gettempdir()) / f"sharpattn-unreadable-{name}-{tag}.txt"


def write_unreadable_list(path, unreadable):
    """Write ``[(split, path, reason)]`` (``dataset.unreadable``) as a tab-separated file."""
    with open(path, "w") as f:
        f.write("# split\tpath\treason (images left out by sharpattn.reid's image check)\n")
        for split, p, reason in unreadable:
            f.write(f"{split}\t{p}\t{reason}\n")


def check_images(dataset, strict=False, progress=None, main=True):
    """Decode every image of ``dataset``'s splits once; return the unreadable ones as
    ``[(split, path, reason)]`` (also kept as ``dataset.unreadable``).

    By default they are removed from the splits (training identities relabelled when one loses
    all its images) with one :class:`UnreadableImageWarning` (``main=False``: silently, for
    the other processes of a distributed run); ``strict=True`` raises
    :class:`DatasetFormatError` instead. Either way a split left without images raises
    :class:`DatasetFormatError` naming its folder. ``progress``: a tqdm bar after a second
    (``None``: when stderr is a terminal; ``False``: never).
    """
    from tqdm import tqdm

    splits = [s for s in SPLITS if isinstance(getattr(dataset, s, None), list)]
    for split in ("train", "query", "gallery"):
        if split in splits and not getattr(dataset, split):
            raise DatasetFormatError(f"no images under {_where(dataset, split)} ({split} split of "
                                     f"{getattr(dataset, 'name', type(dataset).__name__)})")
    paths = list(dict.fromkeys(p for s in splits for p, _, _ in getattr(dataset, s)))
    reasons = {}
    for p in tqdm(paths, desc="checking images", unit="img", delay=1.0, leave=False,
                  disable=None if progress is None else not progress):
        why = probe_image(p)
        if why is not None:
            reasons[p] = why
    bad = [(s, p, reasons[p]) for s in splits for p, _, _ in getattr(dataset, s) if p in reasons]
    dataset.unreadable = bad
    if not bad:
        return bad
    name = getattr(dataset, "name", type(dataset).__name__)
    root = getattr(dataset, "root", None)
    files = list(reasons)
    listed = "; ".join(f"{_shown(root, p)}: {reasons[p]}" for p in files[:SHOWN])
    more = f"; and {len(files) - SHOWN} more" if len(files) > SHOWN else ""
    where = f" under {root}" if root is not None else ""
    full = ""
    if main and len(files) > SHOWN:
        out = _list_file(dataset)
        try:
            write_unreadable_list(out, bad)
            full = f"; the full list is in {out}"
        except OSError as e:
            full = f" (could not write the full list to {out}: {e.strerror or e})"
    if strict:
        raise DatasetFormatError(f"{len(files)} unreadable image(s) in {name}{where}: {listed}{more}{full}; "
                                 f"fix or remove them, or set data.strict=false to train and evaluate "
                                 f"without them")
    for split in splits:
        kept = [it for it in getattr(dataset, split) if it[0] not in reasons]
        setattr(dataset, split, relabel(kept) if split == "train" else kept)
    if main:
        counts = ", ".join(f"{n} {s}" for s in splits if (n := sum(1 for b in bad if b[0] == s)))
        warnings.warn(f"skipping {len(files)} unreadable image(s) in {name}{where} ({counts}): {listed}{more}"
                      f"{full} (data.strict=true refuses such a dataset instead)",
                      UnreadableImageWarning, stacklevel=2)
    for split in ("train", "query", "gallery"):
        if split in splits and not getattr(dataset, split):
            raise DatasetFormatError(f"no readable images under {_where(dataset, split)} ({split} split of "
                                     f"{name}): all of them are unreadable, e.g. {listed}")
    return bad
