"""CUHK03 (Li et al., 'DeepReID', CVPR 2014), in its two evaluation protocols."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .base import DatasetFormatError, DatasetNotFoundError, ReIDDataset, relabel

__all__ = ["CUHK03"]

MAT_NAME = "cuhk-03.mat"
NEW_CONFIG = "cuhk03_new_protocol_config_{}.mat"
SOURCE = ("CUHK03 is distributed by its authors (Li et al., CVPR 2014) as cuhk03_release.zip, "
          "which holds cuhk-03.mat; the new-protocol split files "
          "cuhk03_new_protocol_config_{labeled,detected}.mat come with Zhong et al., "
          "'Re-ranking Person Re-identification with k-reciprocal Encoding', CVPR 2017. "
          "Put them under the root (the .mat may stay inside cuhk03_release/).")


def _require(what, pip_name):
    try:
        return __import__(what, fromlist=["_"])
    except ImportError as e:
        raise ImportError(f"CUHK03 needs {pip_name} to read its .mat files: pip install {pip_name}") from e


class CUHK03(ReIDDataset):
    """CUHK03: 1,467 identities seen by 5 pairs of cameras (each identity by one pair), with
    hand-labelled (``labeled=True``) or DPM-detected (``labeled=False``) boxes.

    ``protocol="new"`` (CUHK03-NP, Zhong et al. 2017): 767 training and 700 test identities
    from ``cuhk03_new_protocol_config_{labeled,detected}.mat``; evaluate with
    :func:`sharpattn.reid.metrics.evaluate_rank` like Market-1501.

    ``protocol="classic"`` (Li et al. 2014, used by the SAN paper): the 100 test identities of
    ``testsets[split_id]`` in ``cuhk-03.mat``, 100 validation identities drawn with ``seed``
    from the rest, and the remaining 1,267 for training. ``query`` and ``gallery`` both hold
    every test image, and ``val`` the validation images; score with
    :func:`sharpattn.reid.metrics.evaluate_cuhk03_classic`, which draws one probe and one
    gallery image per test identity from different cameras, 20 times.

    Images are stored as arrays in ``cuhk-03.mat``; the first use writes them once as PNG
    files to ``<root>/images_{labeled,detected}/`` (named ``<pair>_<id>_<view>_<n>.png``, the
    names the new-protocol files use). Camera ids are global: ``2 * (pair - 1) + (view - 1)``.
    """

    def __init__(self, root, labeled=True, protocol="new", split_id=0, seed=0, num_val=100):
        if protocol not in ("new", "classic"):
            raise ValueError(f"protocol must be 'new' or 'classic', got {protocol!r}")
        self.root = Path(root)
        self.kind = "labeled" if labeled else "detected"
        self.protocol = protocol
        mat_path = self._find_mat()
        image_dir = self.root / f"images_{self.kind}"
        meta = self._extract(mat_path, image_dir)
        if protocol == "new":
            train, query, gallery = self._new_protocol(image_dir)
            self.val = []
        else:
            train, query, gallery, self.val = self._classic(mat_path, meta, split_id, seed, num_val)
        self.split_dirs = dict.fromkeys(("train", "query", "gallery"), image_dir)
        super().__init__(relabel(train), query, gallery, name=f"CUHK03-{self.kind}-{protocol}")

    # -- files --------------------------------------------------------------------------------

    def _find_mat(self):
        for p in (self.root / MAT_NAME, self.root / "cuhk03_release" / MAT_NAME):
            if p.is_file():
                return p
        raise DatasetNotFoundError(
            f"CUHK03 not found: expected {self.root / MAT_NAME} or "
            f"{self.root / 'cuhk03_release' / MAT_NAME}. {SOURCE}")

    def _extract(self, mat_path, image_dir):
        """Write every image of ``self.kind`` to PNG (once); return ``[(pair, id, [(path, view)])]``
        with 1-based pair and id, in the order of the .mat file."""
        h5py = _require("h5py", "h5py")
        from PIL import Image
        from tqdm import tqdm

        image_dir.mkdir(parents=True, exist_ok=True)
        meta = []
        try:
            mat = h5py.File(mat_path, "r")
        except OSError as e:
            raise DatasetFormatError(
                f"cannot open {mat_path} as a MATLAB v7.3 (HDF5) file: {e}. {SOURCE}") from e
        with mat:
            if self.kind not in mat or "testsets" not in mat:
                raise DatasetFormatError(
                    f"{mat_path} lacks the '{self.kind}' or 'testsets' entry of cuhk-03.mat. {SOURCE}")
            pairs = [mat[ref] for ref in mat[self.kind][0]]
            total = sum(p.shape[1] for p in pairs)
            with tqdm(total=total, desc=f"CUHK03 {self.kind} images", unit="id", leave=False) as bar:
                for pair_idx, pair in enumerate(pairs, 1):
                    # HDF5 holds MATLAB's column-major cell: (10 images, num ids) here.
                    if pair.ndim != 2 or pair.shape[0] != 10:
                        raise DatasetFormatError(
                            f"{mat_path}: camera pair {pair_idx} of '{self.kind}' has shape "
                            f"{pair.shape}, expected (10, num_identities)")
                    refs = pair[()]
                    for pid in range(1, pair.shape[1] + 1):
                        images = []
                        for slot in range(10):
                            ds = mat[refs[slot, pid - 1]]
                            if ds.ndim != 3:  # an empty cell: fewer than 10 images
                                continue
                            view = 1 if slot < 5 else 2
                            path = image_dir / f"{pair_idx}_{pid:03d}_{view}_{slot + 1:02d}.png"
                            if not path.is_file():
                                # Stored as (channels, width, height); transpose to (h, w, c).
                                Image.fromarray(np.ascontiguousarray(ds[()].T)).save(path)
                            images.append((str(path), view))
                        meta.append((pair_idx, pid, images))
                        bar.update()
        return meta

    # -- protocols ----------------------------------------------------------------------------

    @staticmethod
    def _camid(name):
        pair, _, view = name.split("_")[:3]
        return 2 * (int(pair) - 1) + int(view) - 1

    def _new_protocol(self, image_dir):
        sio = _require("scipy.io", "scipy")
        cfg_path = self.root / NEW_CONFIG.format(self.kind)
        if not cfg_path.is_file():
            cfg_path = self.root / "cuhk03_release" / NEW_CONFIG.format(self.kind)
        if not cfg_path.is_file():
            raise DatasetNotFoundError(
                f"CUHK03 new protocol: expected {self.root / NEW_CONFIG.format(self.kind)}. {SOURCE}")
        cfg = sio.loadmat(str(cfg_path))
        keys = ("filelist", "labels", "train_idx", "query_idx", "gallery_idx")
        missing = [k for k in keys if k not in cfg]
        if missing:
            raise DatasetFormatError(f"{cfg_path} lacks {', '.join(missing)}: not a CUHK03 "
                                     "new-protocol config file")
        names = [str(np.asarray(x).ravel()[0]) for x in cfg["filelist"].ravel()]
        labels = cfg["labels"].ravel().astype(int)
        if len(labels) != len(names):
            raise DatasetFormatError(f"{cfg_path}: {len(names)} file names but {len(labels)} labels")

        def split(key):
            items = []
            for i in cfg[key].ravel().astype(int) - 1:  # MATLAB indices are 1-based
                if not 0 <= i < len(names):
                    raise DatasetFormatError(f"{cfg_path}: index {i + 1} in {key} is out of range")
                path = image_dir / names[i]
                if not path.is_file():
                    raise DatasetFormatError(
                        f"{path} (listed in {cfg_path}) was not found among the images extracted "
                        f"from {MAT_NAME}")
                items.append((str(path), int(labels[i]), self._camid(names[i])))
            return items

        return split("train_idx"), split("query_idx"), split("gallery_idx")

    def _classic(self, mat_path, meta, split_id, seed, num_val):
        h5py = _require("h5py", "h5py")
        with h5py.File(mat_path, "r") as mat:
            refs = mat["testsets"][0]
            if not 0 <= split_id < len(refs):
                raise ValueError(f"split_id must be in 0..{len(refs) - 1}, got {split_id}")
            test_pairs = mat[refs[split_id]][()].T.astype(int)  # rows: (pair, id), 1-based
        index = {(pair, pid): k for k, (pair, pid, _) in enumerate(meta)}
        test = set()
        for pair, pid in test_pairs:
            if (pair, pid) not in index:
                raise DatasetFormatError(f"{mat_path}: testsets[{split_id}] names pair {pair} "
                                         f"id {pid}, which has no images")
            test.add(index[(pair, pid)])
        rest = np.array([k for k in range(len(meta)) if k not in test])
        if num_val > len(rest):
            raise ValueError(f"num_val={num_val} but only {len(rest)} non-test identities exist")
        val = set(np.random.default_rng(seed).choice(rest, size=num_val, replace=False).tolist())

        def items(keys):
            # Global identity = 1-based position in the .mat file's order.
            return [(path, k + 1, 2 * (meta[k][0] - 1) + view - 1)
                    for k in sorted(keys) for path, view in meta[k][2]]

        train = items(set(rest.tolist()) - val)
        test_items = items(test)
        return train, test_items, list(test_items), items(val)
