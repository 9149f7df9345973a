"""MSMT17 (Wei et al., CVPR 2018)."""

from __future__ import annotations

from pathlib import Path

from .base import DatasetFormatError, DatasetNotFoundError, ReIDDataset, relabel

__all__ = ["MSMT17"]


class MSMT17(ReIDDataset):
    """MSMT17: 1,041 training identities (32,621 images with the validation list), 3,060 test
    identities with 11,659 queries and 82,161 gallery images, 15 cameras.

    Splits come from the list files ``list_{train,val,query,gallery}.txt`` (lines
    ``<relative path> <label>``); the camera is the third field of the file name
    (``0000_000_01_0303morning_0015_0.jpg`` is camera 1). Works for ``MSMT17_V1`` (image folders
    ``train/``, ``test/``) and ``MSMT17_V2`` (``mask_train_v2/``, ``mask_test_v2/``).

    ``include_val=True`` trains on list_train + list_val, the 32,621-image training set of the
    paper; some toolkits train on list_train alone (30,248 images): pass ``False`` to match them.
    """

    folder_names = ("", "MSMT17_V1", "MSMT17_V2", "MSMT17", "msmt17/MSMT17_V1", "msmt17/MSMT17_V2")
    image_dirs = (("train", "test"), ("mask_train_v2", "mask_test_v2"))
    lists = ("list_train.txt", "list_val.txt", "list_query.txt", "list_gallery.txt")
    num_cameras = 15
    source = ("MSMT17 is distributed by its authors (Wei et al., 'Person Transfer GAN to Bridge "
              "Domain Gap for Person Re-Identification', CVPR 2018) on request; unpack MSMT17_V1 "
              "or MSMT17_V2 under the root.")

    def __init__(self, root, include_val=True):
        base, train_dir, test_dir = self._locate(Path(root))
        train = self._read_list(base / self.lists[0], train_dir)
        if include_val:
            train += self._read_list(base / self.lists[1], train_dir)
        query = self._read_list(base / self.lists[2], test_dir)
        gallery = self._read_list(base / self.lists[3], test_dir)
        self.root = base
        train_lists = " + ".join(self.lists[:2] if include_val else self.lists[:1])
        self.split_dirs = {"train": f"{train_dir} (as listed in {train_lists})",
                           "query": f"{test_dir} (as listed in {self.lists[2]})",
                           "gallery": f"{test_dir} (as listed in {self.lists[3]})"}
        super().__init__(relabel(train), query, gallery)

    def _locate(self, root):
        tried = []
        for c in self.folder_names:
            base = root / c if c else root
            for tr, te in self.image_dirs:
                need = [base / tr, base / te] + [base / f for f in self.lists]
                if all(p.exists() for p in need):
                    return base, base / tr, base / te
            tried.append(str(base))
        raise DatasetNotFoundError(
            f"MSMT17 not found: none of [{'; '.join(tried)}] contains train/ and test/ (V1) or "
            f"mask_train_v2/ and mask_test_v2/ (V2) together with {', '.join(self.lists)}. "
            f"{self.source}")

    def _read_list(self, list_file, image_dir):
        items = []
        with open(list_file) as f:
            for lineno, line in enumerate(f, 1):
                line = line.strip()
                if not line:
                    continue
                parts = line.split()
                where = f"{list_file}:{lineno}"
                if len(parts) != 2 or not parts[1].lstrip("-").isdigit():
                    raise DatasetFormatError(
                        f"{where}: expected '<relative image path> <integer label>', got {line!r}")
                rel, pid = parts[0], int(parts[1])
                fields = Path(rel).name.split("_")
                if len(fields) < 3 or not fields[2].isdigit():
                    raise DatasetFormatError(
                        f"{where}: cannot read the camera from {rel!r}: expected names like "
                        "0000_000_01_0303morning_0015_0.jpg (third field = camera 1..15)")
                cam = int(fields[2])
                if not 1 <= cam <= self.num_cameras:
                    raise DatasetFormatError(f"{where}: camera {cam} outside 1..{self.num_cameras}")
                items.append((str(image_dir / rel), pid, cam - 1))
        return items
