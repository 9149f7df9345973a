"""Unreadable images: the check before a run, and files that break during one."""

import os
import re
import shutil
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

import pytest
import torch

import sharpattn.reid.datasets.check as check_module
import sharpattn.reid.engine.trainer as trainer_module
from sharpattn.reid.cli import train_main
from sharpattn.reid.data import IdentityBatchSampler, SeededImages, build_dataset, synthetic_root, train_loader
from sharpattn.reid.data.transforms import build_train_transform
from sharpattn.reid.datasets import DatasetFormatError, Market1501, UnreadableImageWarning
from sharpattn.reid.engine import train
from sharpattn.reid.evaluation import evaluate
from sharpattn.reid.modeling import build_model, model_spec

from conftest import TINY

HERE = Path(__file__).parent

# The broken files put among the images: name -> what is wrong with it.
TRAIN_BAD = {
    "0001_c1s1_900001_00.jpg": "truncated",
    "0001_c1s1_900002_00.jpg": "empty",
    "0001_c2s1_900003_00.jpg": "text",
    "0001_c2s1_900004_00.jpg": "loop",
    "0099_c1s1_900005_00.jpg": "empty",  # an identity with no readable image
}
GALLERY_BAD = {"0009_c1s1_900006_00.jpg": "truncated"}


@pytest.fixture(scope="module")
def synthetic_source(tiny_config):
    cfg = tiny_config()
    build_dataset(cfg.data)  # written once for the session
    return synthetic_root(cfg.data)


def _copy(src, dst):
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns(".complete"))
    return dst


def _break(folder, name, how):
    path = folder / name
    some_jpeg = next(p for p in sorted(folder.iterdir()) if p.suffix == ".jpg" and not p.is_symlink()
                     and p.stat().st_size > 100)
    if how == "truncated":  # a valid header, the pixels cut short
        data = some_jpeg.read_bytes()
        path.write_bytes(data[: len(data) * 6 // 10])
    elif how == "empty":
        path.write_bytes(b"")
    elif how == "text":
        path.write_text("this is not a picture\n")
    elif how == "loop":
        os.symlink(name, path)  # a link to itself
    else:
        raise ValueError(how)
    return path


@pytest.fixture
def clean(synthetic_source, tmp_path):
    """A copy of the tiny synthetic set, read as Market-1501."""
    return _copy(synthetic_source, tmp_path / "market")


@pytest.fixture
def broken(clean):
    """The copy with the files of TRAIN_BAD and GALLERY_BAD among its images."""
    for name, how in TRAIN_BAD.items():
        _break(clean / "bounding_box_train", name, how)
    for name, how in GALLERY_BAD.items():
        _break(clean / "bounding_box_test", name, how)
    return clean


def _cfg(tiny_config, root, *more):
    return tiny_config("data.name=market1501", f"data.root={root}", *more)


def _names(items):
    return {Path(p).name for p, _, _ in items}


# -- the check before a run ---------------------------------------------------------------------

def test_the_check_skips_and_names_each_unreadable_image(tiny_config, broken):
    raw = Market1501(broken)  # the lists as parsed: the broken files are in them
    assert set(TRAIN_BAD) <= _names(raw.train) and set(GALLERY_BAD) <= _names(raw.gallery)
    with pytest.warns(UnreadableImageWarning) as rec:
        ds = build_dataset(_cfg(tiny_config, broken).data)
    assert len(rec) == 1
    msg = str(rec[0].message)
    for name in list(TRAIN_BAD) + list(GALLERY_BAD):
        assert name in msg
    assert "6 unreadable" in msg and "5 train" in msg and "1 gallery" in msg and "data.strict=true" in msg
    assert _names(ds.train) == _names(raw.train) - set(TRAIN_BAD)
    assert _names(ds.gallery) == _names(raw.gallery) - set(GALLERY_BAD)
    assert ds.query == raw.query
    # identity 0099 had only a broken image: the training labels stay 0..n-1
    assert ds.num_train_pids == raw.num_train_pids - 1
    assert sorted({pid for _, pid, _ in ds.train}) == list(range(ds.num_train_pids))
    reasons = {Path(p).name: why for _, p, why in ds.unreadable}
    assert reasons["0001_c1s1_900002_00.jpg"] == "empty file"
    assert "symbolic links" in reasons["0001_c2s1_900004_00.jpg"]
    assert "not an image" in reasons["0001_c2s1_900003_00.jpg"]
    assert "truncated" in reasons["0001_c1s1_900001_00.jpg"]


def test_strict_refuses_naming_the_files(tiny_config, broken):
    with pytest.raises(DatasetFormatError) as e:
        build_dataset(_cfg(tiny_config, broken, "data.strict=true").data)
    msg = str(e.value)
    assert "\n" not in msg and "6 unreadable image(s)" in msg and "data.strict=false" in msg
    for name in list(TRAIN_BAD) + list(GALLERY_BAD):
        assert name in msg


def test_a_long_list_is_cut_in_the_warning_and_written_in_full(tiny_config, clean, tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # where the full list goes
    names = [f"0002_c1s1_9100{i:02d}_00.jpg" for i in range(13)]
    for n in names:
        _break(clean / "bounding_box_train", n, "empty")
    with pytest.warns(UnreadableImageWarning, match="and 3 more; the full list is in ") as rec:
        build_dataset(_cfg(tiny_config, clean).data)
    msg = str(rec[0].message)
    assert sum(n in msg for n in names) == 10
    listed_at = Path(msg.split("the full list is in ")[1].split(" (data.strict")[0])
    assert listed_at.parent == tmp_path
    listed = listed_at.read_text()
    assert all(n in listed for n in names)


def test_a_clean_dataset_passes_without_a_warning(tiny_config, clean):
    with warnings.catch_warnings():
        warnings.simplefilter("error", UnreadableImageWarning)
        ds = build_dataset(_cfg(tiny_config, clean).data)
    assert ds.unreadable == [] and ds.train == Market1501(clean).train


@pytest.mark.parametrize("split", ["bounding_box_train", "query", "bounding_box_test"])
def test_an_empty_split_folder_is_named(tiny_config, clean, split):
    for p in (clean / split).iterdir():
        p.unlink()
    with pytest.raises(DatasetFormatError, match="^" + re.escape(f"no images under {clean / split} ")):
        build_dataset(_cfg(tiny_config, clean).data)


def test_a_split_whose_images_are_all_unreadable_is_named(tiny_config, clean):
    for p in (clean / "query").iterdir():
        p.write_bytes(b"")
    with pytest.warns(UnreadableImageWarning), \
            pytest.raises(DatasetFormatError, match=re.escape(f"no readable images under {clean / 'query'}")):
        build_dataset(_cfg(tiny_config, clean).data)


# -- files that break during a run ----------------------------------------------------------------

def _sampled_run(items, sampler, epoch, start=0, workers=0):
    images = SeededImages(items, build_train_transform(32, 16))
    return images, [(x, p, c) for x, p, c in train_loader(images, sampler, 0, epoch, start, workers, False)]


def test_a_training_image_that_cannot_be_read_is_replaced_from_its_identity(clean, recwarn):
    items = Market1501(clean).train
    sampler = IdentityBatchSampler(items, num_identities=4, num_instances=4, seed=0)
    sampler.set_epoch(0)
    batches = list(sampler)
    # break the images of the epoch's first two batches, two per identity at most
    broken, per_pid = set(), {}
    for i in batches[0] + batches[1]:
        path, pid, _ = items[i]
        if per_pid.get(pid, 0) < 2 and path not in broken:
            per_pid[pid] = per_pid.get(pid, 0) + 1
            broken.add(path)
    _, before = _sampled_run(items, sampler, 0)
    for p in broken:
        Path(p).write_bytes(b"broken")
    images, after = _sampled_run(items, sampler, 0, workers=2)  # counted across worker processes
    expected = sum(items[i][0] in broken for b in batches for i in b)
    assert images.skipped_in_epoch(0) == expected > 0
    assert set(images.unreadable) == broken
    assert [str(w.message) for w in recwarn if w.category is UnreadableImageWarning][-1].startswith(
        f"epoch 1: {expected} training image read(s) failed")
    for (xb, pb, _), (xa, pa, _) in zip(before, after):
        assert xa.shape == xb.shape and torch.equal(pa, pb)  # P x K, the same identities
    for b, (xb, _, _), (xa, _, _) in zip(batches, before, after):
        for j, i in enumerate(b):
            if items[i][0] not in broken:  # untouched items: the same pixels and augmentation
                assert torch.equal(xa[j], xb[j])
    # exact resumption: the run restarted at batch 1 gives batch 1 as the whole epoch did
    _, resumed = _sampled_run(items, sampler, 0, start=1)
    assert torch.equal(resumed[0][0], after[1][0])


def test_training_runs_to_the_end_with_broken_files_present(tiny_config, broken, tmp_path):
    with pytest.warns(UnreadableImageWarning, match="6 unreadable"):
        summary = train(_cfg(tiny_config, broken, "optim.epochs=1"), tmp_path / "r")
    assert (tmp_path / "r" / "last.pt").is_file()
    assert 0 <= summary["metrics"]["mAP"] <= 1


def test_images_broken_after_the_check_are_skipped_and_counted(tiny_config, broken, tmp_path, monkeypatch):
    monkeypatch.setattr(check_module, "probe_image", lambda path: None)  # the check lets all pass
    made = []

    class Recording(SeededImages):
        def __init__(self, *a, **k):
            super().__init__(*a, **k)
            made.append(self)

    monkeypatch.setattr(trainer_module, "SeededImages", Recording)
    train_dir = broken / "bounding_box_train"
    for p in sorted(train_dir.iterdir())[::3]:  # a third of the training images as well
        if not p.is_symlink():
            p.write_bytes(b"")
    num_gallery = len(Market1501(broken).gallery)
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        summary = train(_cfg(tiny_config, broken, "optim.epochs=1"), tmp_path / "r")
    texts = [str(w.message) for w in rec if w.category is UnreadableImageWarning]
    n = made[0].skipped_in_epoch(0)
    assert n > 0 and any(t.startswith(f"epoch 1: {n} training image read(s) failed") for t in texts)
    assert all(Path(p).parent == train_dir for p in made[0].unreadable)
    # the truncated gallery image is dropped from the evaluation, its identity and camera too
    assert any("dropped 1 unreadable gallery image(s)" in t and "0009_c1s1_900006_00.jpg" in t for t in texts)
    assert summary["metrics"]["num_gallery"] == num_gallery - 1


def test_evaluation_with_a_gallery_image_broken_after_the_check(tiny_config, clean):
    cfg = _cfg(tiny_config, clean, "data.workers=2", "eval.batch_size=8")
    dataset = build_dataset(cfg.data)
    gallery = list(dataset.gallery)
    victim = gallery[3][0]
    Path(victim).write_bytes(b"gone bad")
    torch.manual_seed(0)
    model = build_model(model_spec(cfg.model))
    with pytest.warns(UnreadableImageWarning, match=r"dropped 1 unreadable gallery image.*" + re.escape(Path(victim).name)):
        metrics, distmat = evaluate(model, dataset, cfg, torch.device("cpu"), progress=False)
    assert dataset.gallery == gallery[:3] + gallery[4:]  # paths, pids and camids stay aligned
    assert distmat.shape == (len(dataset.query), len(gallery) - 1)
    assert metrics["num_gallery"] == len(gallery) - 1
    for p in dataset.query:
        Path(p[0]).write_bytes(b"")
    with pytest.raises(DatasetFormatError, match="none of the .* query images can be read"):
        evaluate(model, dataset, cfg, torch.device("cpu"), progress=False)


# -- the command line ---------------------------------------------------------------------------------

def _cli_args(out, root, *more):
    return ["--config", "synthetic/san", "--output", str(out)] + TINY + [
        "data.name=market1501", f"data.root={root}", "optim.epochs=1", *more]


def test_cli_strict_is_one_line_and_exit_2(broken, tmp_path, capsys):
    assert train_main(_cli_args(tmp_path / "r", broken, "data.strict=true")) == 2
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err and len(err.strip().splitlines()) == 1
    assert err.startswith("sharpattn-train: error: 6 unreadable image(s)") and "0001_c2s1_900004_00.jpg" in err


def test_cli_empty_gallery_is_one_line_and_exit_2(clean, tmp_path, capsys):
    for p in (clean / "bounding_box_test").iterdir():
        p.unlink()
    assert train_main(_cli_args(tmp_path / "r", clean)) == 2
    err = capsys.readouterr().err
    assert err.strip() == (f"sharpattn-train: error: no images under {clean / 'bounding_box_test'} "
                           f"(gallery split of Market1501)")


def test_cli_trains_with_broken_files_and_warns_on_stderr(broken, tmp_path):
    # A real process, to see the warning where a user sees it.
    code = (f"import sys; sys.path.insert(0, {str(HERE)!r}); import _tiny; "
            "from sharpattn.reid.cli import train_main; sys.exit(train_main(sys.argv[1:]))")
    r = subprocess.run([sys.executable, "-c", code] + _cli_args(tmp_path / "r", broken),
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "Traceback" not in r.stdout + r.stderr
    assert "UnreadableImageWarning: skipping 6 unreadable image(s)" in r.stderr
    assert all(name in r.stderr for name in TRAIN_BAD)
    assert (tmp_path / "r" / "last.pt").is_file()
