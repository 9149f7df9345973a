import filecmp
import os

import numpy as np
import pytest
from PIL import Image

from sharpattn.reid.datasets import (
    CUHK03, MSMT17, DatasetFormatError, DatasetNotFoundError, DukeMTMCreID, ImageDataset,
    ImageFolderReID, Market1501, make_synthetic)


def touch(folder, names):
    folder.mkdir(parents=True, exist_ok=True)
    for n in names:
        (folder / n).write_bytes(b"")


# -- Market-1501 --------------------------------------------------------------------------------

def market_tree(base):
    touch(base / "bounding_box_train", ["0002_c1s1_000451_03.jpg", "0002_c2s1_000551_01.jpg",
                                        "0007_c6s4_002452_02.jpg", "Thumbs.db"])
    touch(base / "query", ["0003_c1s1_000000_00.jpg", "0010_c3s2_012345_01.jpg"])
    touch(base / "bounding_box_test", ["0003_c2s1_000100_01.jpg", "0010_c1s3_000200_02.jpg",
                                       "0000_c4s1_000300_01.jpg", "-1_c5s1_000400_03.jpg",
                                       "-1_c1s1_000401_03.jpg", "Thumbs.db"])


def test_market_layout_junk_distractors_and_labels(tmp_path):
    base = tmp_path / "Market-1501-v15.09.15"
    market_tree(base)
    ds = Market1501(tmp_path)  # the parent folder is accepted
    names = lambda items: [(os.path.basename(p), pid, cam) for p, pid, cam in items]
    # train: pids 2, 7 relabelled to 0, 1; cameras 0-based
    assert names(ds.train) == [("0002_c1s1_000451_03.jpg", 0, 0), ("0002_c2s1_000551_01.jpg", 0, 1),
                               ("0007_c6s4_002452_02.jpg", 1, 5)]
    assert names(ds.query) == [("0003_c1s1_000000_00.jpg", 3, 0), ("0010_c3s2_012345_01.jpg", 10, 2)]
    # junk (-1) dropped, distractor (0) kept with its own identity
    assert sorted(names(ds.gallery)) == sorted([("0003_c2s1_000100_01.jpg", 3, 1),
                                                ("0010_c1s3_000200_02.jpg", 10, 0),
                                                ("0000_c4s1_000300_01.jpg", 0, 3)])
    assert ds.summary()["gallery"] == {"images": 3, "identities": 3, "cameras": 3}
    assert ds.num_train_pids == 2
    assert Market1501(base).gallery == ds.gallery  # the folder itself is accepted too
    assert "gallery" in str(ds)


def test_market_missing_folder_names_path_and_source(tmp_path):
    touch(tmp_path / "bounding_box_train", ["0002_c1s1_000451_03.jpg"])
    with pytest.raises(DatasetNotFoundError) as e:
        Market1501(tmp_path)
    msg = str(e.value)
    assert str(tmp_path) in msg and "bounding_box_test" in msg and "Zheng" in msg


def test_market_malformed_name_is_named(tmp_path):
    market_tree(tmp_path)
    touch(tmp_path / "query", ["person_3.jpg"])
    with pytest.raises(DatasetFormatError, match=r"person_3\.jpg.*expected <pid>_c<cam>s<seq>"):
        Market1501(tmp_path)


def test_market_camera_out_of_range(tmp_path):
    market_tree(tmp_path)
    touch(tmp_path / "query", ["0003_c7s1_000000_00.jpg"])
    with pytest.raises(DatasetFormatError, match="camera 7"):
        Market1501(tmp_path)


# -- DukeMTMC-reID and custom folders -----------------------------------------------------------

def test_duke_layout(tmp_path):
    base = tmp_path / "DukeMTMC-reID"
    touch(base / "bounding_box_train", ["0005_c2_f0046985.jpg", "0005_c5_f0051781.jpg", "0008_c8_f0000001.jpg"])
    touch(base / "query", ["0011_c1_f0000100.jpg"])
    touch(base / "bounding_box_test", ["0011_c3_f0000200.jpg", "0020_c7_f0000300.jpg"])
    ds = DukeMTMCreID(tmp_path)
    assert [(pid, cam) for _, pid, cam in ds.train] == [(0, 1), (0, 4), (1, 7)]
    assert [(pid, cam) for _, pid, cam in ds.query] == [(11, 0)]
    assert sorted((pid, cam) for _, pid, cam in ds.gallery) == [(11, 2), (20, 6)]
    touch(base / "query", ["0002_c1s1_000451_03.jpg"])  # a Market name is not a Duke name
    with pytest.raises(DatasetFormatError, match="0005_c2_f0046985"):
        DukeMTMCreID(tmp_path)


def test_image_folder_layout(tmp_path):
    touch(tmp_path / "train", ["4_c1_a.png", "4_c2.png", "9_c1-x.jpg"])
    touch(tmp_path / "query", ["12_c3_0001.jpg"])
    touch(tmp_path / "gallery", ["12_c1_0002.jpg", "0_c2_d.jpg", "-1_c1_j.jpg"])
    ds = ImageFolderReID(tmp_path)
    assert sorted((pid, cam) for _, pid, cam in ds.train) == [(0, 0), (0, 1), (1, 0)]
    assert sorted((pid, cam) for _, pid, cam in ds.gallery) == [(0, 1), (12, 0)]
    touch(tmp_path / "gallery", ["c1_12.jpg"])
    with pytest.raises(DatasetFormatError, match="c1_12.jpg"):
        ImageFolderReID(tmp_path)


# -- MSMT17 -------------------------------------------------------------------------------------

def msmt_tree(base, train_dir="train", test_dir="test"):
    (base / train_dir).mkdir(parents=True)
    (base / test_dir).mkdir(parents=True)
    lists = {
        "list_train.txt": ["0000/0000_000_01_0303morning_0015_0.jpg 0",
                           "0000/0000_001_05_0303morning_0020_1.jpg 0",
                           "0001/0001_000_15_0303noon_0100_0.jpg 1"],
        "list_val.txt": ["0002/0002_000_03_0303noon_0200_0.jpg 2"],
        "list_query.txt": ["0000/0000_000_02_0304morning_0001_0.jpg 0"],
        "list_gallery.txt": ["0000/0000_003_07_0304morning_0050_0.jpg 0",
                             "0004/0004_000_02_0304afternoon_0010_1.jpg 4", ""],
    }
    for name, lines in lists.items():
        (base / name).write_text("\n".join(lines) + "\n")


def test_msmt17_v1_lists_and_cameras(tmp_path):
    base = tmp_path / "MSMT17_V1"
    msmt_tree(base)
    ds = MSMT17(tmp_path)
    assert [(pid, cam) for _, pid, cam in ds.train] == [(0, 0), (0, 4), (1, 14), (2, 2)]
    assert ds.train[0][0] == str(base / "train" / "0000/0000_000_01_0303morning_0015_0.jpg")
    assert [(pid, cam) for _, pid, cam in ds.query] == [(0, 1)]
    assert ds.query[0][0].startswith(str(base / "test"))
    assert [(pid, cam) for _, pid, cam in ds.gallery] == [(0, 6), (4, 1)]
    assert len(MSMT17(tmp_path, include_val=False).train) == 3


def test_msmt17_v2_layout_and_bad_line(tmp_path):
    base = tmp_path / "MSMT17_V2"
    msmt_tree(base, "mask_train_v2", "mask_test_v2")
    assert MSMT17(tmp_path).train[0][0].startswith(str(base / "mask_train_v2"))
    (base / "list_query.txt").write_text("0000/0000_000_02_x.jpg\n")
    with pytest.raises(DatasetFormatError, match=r"list_query.txt:1: expected '<relative image path> <integer label>'"):
        MSMT17(tmp_path)
    (base / "list_query.txt").write_text("0000/0000_000_99_x.jpg 0\n")
    with pytest.raises(DatasetFormatError, match="camera 99"):
        MSMT17(tmp_path)


def test_msmt17_missing(tmp_path):
    with pytest.raises(DatasetNotFoundError, match="list_train.txt.*Wei et al"):
        MSMT17(tmp_path)


# -- CUHK03 -------------------------------------------------------------------------------------

def fake_cuhk03(root, ids_per_pair=(3, 2, 2, 2, 2), empty_slots=((0, 1, 7),), testsets=None):
    """cuhk-03.mat as MATLAB v7.3 writes it: HDF5 with object references; each camera pair is a
    (10, num_ids) cell of images stored as (3, width, height), an empty cell as a 2-element
    uint64 array. Returns {(pair, id, slot): image (h, w, 3)}."""
    h5py = pytest.importorskip("h5py")
    rng = np.random.default_rng(0)
    images = {}
    (root / "cuhk03_release").mkdir(parents=True)
    with h5py.File(root / "cuhk03_release" / "cuhk-03.mat", "w") as f:
        refs = f.create_group("#refs#")
        counter = [0]

        def add(arr):
            counter[0] += 1
            return refs.create_dataset(f"r{counter[0]}", data=arr).ref

        for kind in ("labeled", "detected"):
            pair_refs = []
            for p, n in enumerate(ids_per_pair, 1):
                cell = np.empty((10, n), dtype=h5py.ref_dtype)
                for pid in range(1, n + 1):
                    for slot in range(10):
                        if (p - 1, pid - 1, slot) in empty_slots:
                            cell[slot, pid - 1] = add(np.zeros(2, np.uint64))
                            continue
                        img = rng.integers(0, 256, size=(8 + slot, 5, 3), dtype=np.uint8)
                        if kind == "labeled":
                            images[(p, pid, slot)] = img
                        cell[slot, pid - 1] = add(img.T)
                pair_refs.append(add(cell))
            f.create_dataset(kind, data=np.array([pair_refs], dtype=h5py.ref_dtype))
        testsets = testsets or [[(1, 2), (2, 1), (3, 2)], [(1, 1), (4, 2), (5, 1)]]
        ts = [add(np.array(t, dtype=np.float64).T) for t in testsets]
        f.create_dataset("testsets", data=np.array([ts], dtype=h5py.ref_dtype))
    return images


def test_cuhk03_extracts_images_exactly(tmp_path):
    images = fake_cuhk03(tmp_path)
    pytest.importorskip("scipy")
    ds = CUHK03(tmp_path, labeled=True, protocol="classic", num_val=2)
    for (p, pid, slot), img in list(images.items())[:25]:
        view = 1 if slot < 5 else 2
        path = tmp_path / "images_labeled" / f"{p}_{pid:03d}_{view}_{slot + 1:02d}.png"
        np.testing.assert_array_equal(np.asarray(Image.open(path)), img)
    # the empty cell (pair 1, id 2, slot 8) was skipped
    assert not (tmp_path / "images_labeled" / "1_002_2_08.png").exists()
    assert len(list((tmp_path / "images_labeled").iterdir())) == len(images) == 11 * 10 - 1


def test_cuhk03_classic_split(tmp_path):
    fake_cuhk03(tmp_path)
    ds = CUHK03(tmp_path, labeled=False, protocol="classic", split_id=1, num_val=3, seed=4)
    # global ids follow the file order: pair 1 -> 1..3, pair 2 -> 4..5, pair 3 -> 6..7,
    # pair 4 -> 8..9, pair 5 -> 10..11. testsets[1] = (1,1), (4,2), (5,1) -> 1, 9, 10.
    assert {pid for _, pid, _ in ds.query} == {1, 9, 10}
    assert ds.gallery == ds.query
    assert len(ds.query) == 30  # 10 images each
    val_ids = {pid for _, pid, _ in ds.val}
    assert len(val_ids) == 3 and not val_ids & {1, 9, 10}
    assert ds.num_train_pids == 11 - 3 - 3
    # pair 4 uses global cameras 6 (view 1) and 7 (view 2)
    assert {cam for _, pid, cam in ds.query if pid == 9} == {6, 7}
    assert all("images_detected" in p for p, _, _ in ds.train)
    # the validation draw depends on the seed only
    again = CUHK03(tmp_path, labeled=False, protocol="classic", split_id=1, num_val=3, seed=4)
    assert again.val == ds.val
    with pytest.raises(ValueError, match="split_id"):
        CUHK03(tmp_path, protocol="classic", split_id=5)


def test_cuhk03_new_protocol(tmp_path):
    sio = pytest.importorskip("scipy.io")
    fake_cuhk03(tmp_path)
    names = ["1_001_1_01.png", "1_001_2_06.png", "2_002_1_02.png", "2_002_2_10.png", "3_001_1_01.png"]
    labels = [1, 1, 5, 5, 6]
    cfg = {
        "filelist": np.array([[np.array([n])] for n in names], dtype=object),
        "labels": np.array(labels, dtype=np.float64)[:, None],
        "camId": np.array([1, 2, 1, 2, 1], dtype=np.float64)[:, None],
        "train_idx": np.array([[1], [2], [5]], dtype=np.float64),
        "query_idx": np.array([[3]], dtype=np.float64),
        "gallery_idx": np.array([[4]], dtype=np.float64),
    }
    sio.savemat(tmp_path / "cuhk03_new_protocol_config_labeled.mat", cfg)
    ds = CUHK03(tmp_path, labeled=True, protocol="new")
    assert [(os.path.basename(p), pid, cam) for p, pid, cam in ds.train] == [
        ("1_001_1_01.png", 0, 0), ("1_001_2_06.png", 0, 1), ("3_001_1_01.png", 1, 4)]
    assert [(os.path.basename(p), pid, cam) for p, pid, cam in ds.query] == [("2_002_1_02.png", 5, 2)]
    assert [(os.path.basename(p), pid, cam) for p, pid, cam in ds.gallery] == [("2_002_2_10.png", 5, 3)]
    with pytest.raises(DatasetNotFoundError, match="cuhk03_new_protocol_config_detected.mat"):
        CUHK03(tmp_path, labeled=False, protocol="new")
    # a config naming an image that the .mat does not hold (the empty cell) is reported
    cfg["filelist"][0, 0] = np.array(["1_002_2_08.png"])
    sio.savemat(tmp_path / "cuhk03_new_protocol_config_labeled.mat", cfg)
    with pytest.raises(DatasetFormatError, match="1_002_2_08.png"):
        CUHK03(tmp_path, labeled=True, protocol="new")


def test_cuhk03_missing_and_malformed(tmp_path):
    with pytest.raises(DatasetNotFoundError, match=r"cuhk-03\.mat.*Li et al"):
        CUHK03(tmp_path)
    (tmp_path / "cuhk-03.mat").write_bytes(b"not hdf5")
    with pytest.raises(DatasetFormatError, match="cuhk-03.mat"):
        CUHK03(tmp_path)


# -- images and the synthetic set ---------------------------------------------------------------

def test_unreadable_image_is_named(tmp_path):
    bad = tmp_path / "0001_c1s1_000001_00.jpg"
    bad.write_bytes(b"definitely not a jpeg")
    ds = ImageDataset([(str(bad), 1, 0)])
    with pytest.raises(OSError, match="0001_c1s1_000001_00.jpg"):
        ds[0]
    with pytest.raises(FileNotFoundError, match="nothere.jpg"):
        ImageDataset([(str(tmp_path / "nothere.jpg"), 1, 0)])[0]


def test_synthetic_is_market_format_and_deterministic(tmp_path):
    a = make_synthetic(tmp_path / "a", num_ids=10, num_cams=3, num_distractors=4, num_junk=2, seed=3)
    b = make_synthetic(tmp_path / "b", num_ids=10, num_cams=3, num_distractors=4, num_junk=2, seed=3)
    for split in ("bounding_box_train", "bounding_box_test", "query"):
        cmp = filecmp.dircmp(a / split, b / split)
        assert sorted(os.listdir(a / split)) == sorted(os.listdir(b / split))
        assert not cmp.diff_files and not cmp.left_only
    ds = Market1501(a)
    assert ds.num_train_pids == 5
    test_ids = {pid for _, pid, _ in ds.query}
    assert test_ids == {6, 7, 8, 9, 10}
    assert sum(pid == 0 for _, pid, _ in ds.gallery) == 4
    assert len(os.listdir(a / "bounding_box_test")) == len(ds.gallery) + 2  # junk dropped by the parser
    # every query has a same-identity gallery image from another camera
    for _, pid, cam in ds.query:
        assert any(g == pid and c != cam for _, g, c in ds.gallery)
    img = ImageDataset(ds.train)[0][0]
    assert img.size == (64, 128)
    c = make_synthetic(tmp_path / "c", num_ids=10, num_cams=3, num_distractors=4, num_junk=2, seed=4)
    content = lambda root: [(n, (root / "query" / n).read_bytes()) for n in sorted(os.listdir(root / "query"))]
    assert content(c) != content(a)  # another seed, other pictures


def test_synthetic_test_draws_keep_the_training_set_and_redraw_the_test_half(tmp_path):
    kw = dict(num_ids=12, num_cams=3, num_distractors=3, num_junk=1, seed=5, outfits=4, cue_scale=1.5)
    base = make_synthetic(tmp_path / "d0", **kw)
    one = make_synthetic(tmp_path / "d1", test_draw=1, **kw)
    again = make_synthetic(tmp_path / "d1b", test_draw=1, **kw)
    two = make_synthetic(tmp_path / "d2", test_draw=2, **kw)
    content = lambda root, split: [(n, (root / split / n).read_bytes()) for n in sorted(os.listdir(root / split))]
    for draw in (one, two):
        assert content(draw, "bounding_box_train") == content(base, "bounding_box_train")
        assert content(draw, "query") != content(base, "query")
        ds = Market1501(draw)
        assert ds.num_train_pids == 6
        assert {pid for _, pid, _ in ds.query} == {7, 8, 9, 10, 11, 12}
        assert sum(pid == 0 for _, pid, _ in ds.gallery) == 3
        for _, pid, cam in ds.query:
            assert any(g == pid and c != cam for _, g, c in ds.gallery)
    assert content(one, "query") != content(two, "query")
    for split in ("bounding_box_test", "query"):  # a draw is a function of its arguments
        assert content(one, split) == content(again, split)


def test_synthetic_test_draw_identities_are_new_and_dressed_as_draw_0():
    import numpy as np

    from sharpattn.reid.datasets import synthetic

    rng = np.random.default_rng(0)
    idents = synthetic._identities(20, rng)
    synthetic._own_outfits(idents, 6, seed=0)
    fresh = synthetic._fresh_test_identities(idents, 10, 6, 0, np.random.default_rng(1))
    cue = lambda i: (tuple(i["colour"]), i["pattern"], i["place"])
    assert len(fresh) == 10 and len({cue(i) for i in fresh}) == 10
    assert not {cue(i) for i in fresh} & {cue(i) for i in idents[:10]}
    for k, i in enumerate(fresh):  # test identity k + 10 wears what draw 0's did
        assert all(np.array_equal(a, b) for a, b in zip(i["clothes"], idents[k + 10]["clothes"]))


def test_synthetic_rejects_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="cams_per_id"):
        make_synthetic(tmp_path, num_ids=4, num_cams=2, cams_per_id=(1, 2))
    with pytest.raises(ValueError, match="num_ids"):
        make_synthetic(tmp_path, num_ids=1000)
    with pytest.raises(ValueError, match="test_draw"):
        make_synthetic(tmp_path, num_ids=4, test_draw=-1)
