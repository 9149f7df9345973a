"""User mistakes in sharpattn-export / -embed / -search (and checkpoints every command reads):
each exits 2 with one line `<prog>: error: ...` and no traceback; a few behaviours around them
(where -o writes, a query folder searched as its own gallery)."""

import csv
import os
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from sharpattn.reid.cli import eval_main, train_main
from sharpattn.reid.deploy import list_images, rank
from sharpattn.reid.deploy_cli import embed_main, export_main, search_main
from test_cli import trained_run  # noqa: F401  (the 1-epoch tiny SAN run of the CLI tests)

FAST = ["--workers", "0", "--no-progress"]


def one_error(capsys, prog, *words):
    """The one stderr line of a refused command; it names each of `words`."""
    cap = capsys.readouterr()
    assert "Traceback" not in cap.err + cap.out
    lines = cap.err.strip().splitlines()
    assert len(lines) == 1, cap.err
    assert lines[0].startswith(f"{prog}: error: "), lines[0]
    for word in words:
        assert word in lines[0], (word, lines[0])
    return lines[0]


@pytest.fixture(scope="module")
def ckpt(trained_run):  # noqa: F811
    return str(trained_run / "best.pt")


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """Three readable images (noise), one of them in a subfolder."""
    root = tmp_path_factory.mktemp("imgs")
    (root / "sub").mkdir()
    rng = np.random.default_rng(0)
    for name in ("a.png", "b.jpg", "sub/c.png"):
        Image.fromarray(rng.integers(0, 255, (64, 32, 3), dtype=np.uint8)).save(root / name)
    return root


# --- numbers out of range: refused before anything is loaded ------------------------------

@pytest.mark.parametrize("args, option", [
    (["--static-batch", "0"], "--static-batch must be >= 1, got 0"),
    (["--static-batch", "-2"], "--static-batch must be >= 1, got -2"),
    (["--check-batch", "-1"], "--check-batch must be >= 0, got -1"),
    (["--opset", "0"], "--opset must be >= 1, got 0"),
    (["--height", "0"], "--height must be >= 1, got 0"),
    (["--width", "-1"], "--width must be >= 1, got -1"),
])
def test_export_refuses_numbers_out_of_range(ckpt, tmp_path, capsys, args, option):
    out = tmp_path / "m.pt2"
    assert export_main([ckpt, "-o", str(out)] + args) == 2
    one_error(capsys, "sharpattn-export", option)
    assert not out.exists()


@pytest.mark.parametrize("args, option", [
    (["--height", "0"], "--height must be >= 1, got 0"),
    (["--width", "0"], "--width must be >= 1, got 0"),
    (["--batch-size", "0"], "--batch-size must be >= 1, got 0"),
    (["--workers", "-1"], "--workers must be >= 0, got -1"),
])
def test_embed_refuses_numbers_out_of_range(ckpt, images, tmp_path, capsys, args, option):
    out = tmp_path / "f.npz"
    assert embed_main([ckpt, str(images), "-o", str(out), "--no-progress"] + args) == 2
    one_error(capsys, "sharpattn-embed", option)
    assert not out.exists()


@pytest.mark.parametrize("args, option", [
    (["--height", "0"], "--height must be >= 1, got 0"),
    (["--width", "0"], "--width must be >= 1, got 0"),
    (["--topk", "0"], "--topk must be >= 1, got 0"),
    (["--picture-queries", "-1"], "--picture-queries must be >= 0, got -1"),
    (["--batch-size", "-3"], "--batch-size must be >= 1, got -3"),
])
def test_search_refuses_numbers_out_of_range(ckpt, images, tmp_path, capsys, args, option):
    out = tmp_path / "s"
    assert search_main([ckpt, "--query", str(images), "--gallery", str(images), "-o", str(out),
                        "--no-progress"] + args) == 2
    one_error(capsys, "sharpattn-search", option)
    assert not out.exists()


def test_argparse_mistakes_are_one_line_too(ckpt, images, capsys):
    assert embed_main([ckpt, str(images), "--height", "tall"]) == 2
    line = one_error(capsys, "sharpattn-embed", "--height", "'tall'", "--help")
    assert "usage" not in line
    assert search_main([ckpt, "--query", str(images)]) == 2
    one_error(capsys, "sharpattn-search", "--gallery")


def test_a_given_height_and_width_are_used(ckpt, images, tmp_path):
    out = tmp_path / "f.npz"
    assert embed_main([ckpt, str(images), "-o", str(out), "--height", "40", "--width", "24"]
                      + FAST) == 0
    data = np.load(out)
    assert (int(data["height"]), int(data["width"])) == (40, 24)


# --- where -o writes ---------------------------------------------------------------------

def test_embed_output_without_npz_prints_the_file_written(ckpt, images, tmp_path, capsys):
    assert embed_main([ckpt, str(images), "-o", str(tmp_path / "out" / "feats")] + FAST) == 0
    out = capsys.readouterr().out
    written = tmp_path / "out" / "feats.npz"
    assert f"features in {written}" in out
    assert written.is_file() and not (tmp_path / "out" / "feats").exists()
    assert list(np.load(written)["names"]) == ["a.png", "b.jpg", "sub/c.png"]


def test_embed_output_folder_gets_features_npz_inside(ckpt, images, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "out").mkdir()
    assert embed_main([ckpt, str(images), "-o", "out"] + FAST) == 0
    out = capsys.readouterr().out
    assert "features in out/features.npz (out is a folder)" in out
    assert (tmp_path / "out" / "features.npz").is_file()
    assert not (tmp_path / "out.npz").exists()
    # a name ending in a separator is a folder, created
    assert embed_main([ckpt, str(images), "-o", "new/"] + FAST) == 0
    assert "features in new/features.npz" in capsys.readouterr().out
    assert (tmp_path / "new" / "features.npz").is_file()


@pytest.mark.parametrize("main, where", [
    (embed_main, ["IMAGES", "-o", "BLOCK/x.npz", "--no-progress"]),
    (search_main, ["--query", "IMAGES", "--gallery", "IMAGES", "-o", "BLOCK/search",
                   "--no-progress"]),
    (export_main, ["-o", "BLOCK/m.onnx"]),
], ids=["embed", "search", "export"])
def test_output_under_a_file_is_refused_before_the_work(ckpt, images, tmp_path, capsys, main, where):
    # A parent that is a regular file stops root as well as anyone else.
    block = tmp_path / "file.txt"
    block.write_text("a file, not a folder")
    args = [a.replace("IMAGES", str(images)).replace("BLOCK", str(block)) for a in where]
    assert main([ckpt] + args) == 2
    prog = {embed_main: "sharpattn-embed", search_main: "sharpattn-search",
            export_main: "sharpattn-export"}[main]
    cap_line = one_error(capsys, prog, f"{block} is a file, not a folder")
    assert "Errno" not in cap_line


def test_output_in_a_read_only_folder_is_refused(ckpt, images, tmp_path, capsys):
    ro = tmp_path / "readonly"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        if os.access(ro, os.W_OK):
            pytest.skip("this user (root) can write in a 0o500 folder: nothing to refuse")
        assert embed_main([ckpt, str(images), "-o", str(ro / "x.npz")] + FAST) == 2
        one_error(capsys, "sharpattn-embed", f"the folder {ro} is not writable")
        assert search_main([ckpt, "--query", str(images), "--gallery", str(images),
                            "-o", str(ro / "s" / "t")] + FAST) == 2
        one_error(capsys, "sharpattn-search", f"the folder {ro} is not writable")
        assert export_main([ckpt, "-o", str(ro / "m.pt2")]) == 2
        one_error(capsys, "sharpattn-export", f"the folder {ro} is not writable")
    finally:
        ro.chmod(0o700)


def test_an_unwritable_folder_is_named_even_for_root(ckpt, images, tmp_path, capsys, monkeypatch):
    # As root no folder is read-only to os.access: pretend this one is, to check the message.
    ro = tmp_path / "locked"
    ro.mkdir()
    real = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, **kw: False if str(p) == str(ro)
                        else real(p, mode, **kw))
    assert embed_main([ckpt, str(images), "-o", str(ro / "new" / "x.npz")] + FAST) == 2
    one_error(capsys, "sharpattn-embed", f"cannot write {ro / 'new' / 'x.npz'}: the folder {ro} "
                                         f"is not writable")
    assert not (ro / "new").exists()


# --- unreadable images -------------------------------------------------------------------

def test_strict_names_the_image_with_one_prefix(ckpt, images, tmp_path, capsys):
    folder = tmp_path / "bad"
    folder.mkdir()
    (folder / "ok.png").write_bytes((images / "a.png").read_bytes())
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    assert embed_main([ckpt, str(folder), "--strict", "-o", str(tmp_path / "f.npz")] + FAST) == 2
    line = one_error(capsys, "sharpattn-embed", f"cannot read image {folder / 'broken.jpg'}")
    assert line.count("cannot read image") == 1


def test_a_symlink_loop_is_skipped_with_a_warning_and_listed(ckpt, images, tmp_path, capsys):
    folder = tmp_path / "links"
    folder.mkdir()
    (folder / "ok.png").write_bytes((images / "a.png").read_bytes())
    (folder / "loop.jpg").symlink_to("loop.jpg")
    (folder / "gone.png").symlink_to(tmp_path / "nowhere.png")
    assert [p.name for p in list_images(folder)] == ["gone.png", "loop.jpg", "ok.png"]
    out = tmp_path / "f.npz"
    with pytest.warns(UserWarning) as caught:
        assert embed_main([ckpt, str(folder), "-o", str(out)] + FAST) == 0
    messages = [str(w.message) for w in caught]
    assert any("loop.jpg" in m and "symbolic links" in m for m in messages), messages
    assert any("gone.png" in m for m in messages), messages
    assert "skipped 2 unreadable" in capsys.readouterr().out
    data = np.load(out)
    assert list(data["names"]) == ["ok.png"]
    assert list(data["skipped"]) == ["gone.png", "loop.jpg"]
    (folder / "gone.png").unlink()
    assert embed_main([ckpt, str(folder), "--strict", "-o", str(out)] + FAST) == 2
    one_error(capsys, "sharpattn-embed", f"cannot read image {folder / 'loop.jpg'}", "symbolic links")


# --- a query folder searched as (part of) its own gallery ---------------------------------

def _ranking(path):
    rows = {}
    with open(path) as f:
        for row in csv.DictReader(f):
            rows.setdefault(row["query"], []).append((int(row["rank"]), row["gallery"]))
    return rows


def test_search_leaves_each_query_out_of_its_own_ranking(ckpt, images, tmp_path, capsys):
    out = tmp_path / "same"
    assert search_main([ckpt, "--query", str(images), "--gallery", str(images), "-o", str(out),
                        "--csv-all"] + FAST) == 0
    printed = capsys.readouterr().out
    assert "3 of the 3 query images are also in the gallery (the same files): each is left out " \
           "of its own ranking" in printed
    ranking = _ranking(out / "ranking.csv")
    assert set(ranking) == {"a.png", "b.jpg", "sub/c.png"}
    for query, rows in ranking.items():
        assert [r for r, _ in rows] == [1, 2]
        assert query not in [g for _, g in rows]
        assert sorted(g for _, g in rows) == sorted({"a.png", "b.jpg", "sub/c.png"} - {query})
    assert (out / "ranks.png").is_file()


def test_search_overlap_by_resolved_path(ckpt, images, tmp_path, capsys):
    # The query folder is a subfolder of the gallery: sub/c.png is one file under two names.
    out = tmp_path / "part"
    assert search_main([ckpt, "--query", str(images / "sub"), "--gallery", str(images),
                        "-o", str(out), "--csv-all"] + FAST) == 0
    assert "1 of the 1 query images are also in the gallery" in capsys.readouterr().out
    ranking = _ranking(out / "ranking.csv")
    assert list(ranking) == ["c.png"]
    assert [r for r, _ in ranking["c.png"]] == [1, 2]
    assert sorted(g for _, g in ranking["c.png"]) == ["a.png", "b.jpg"]  # not sub/c.png


def test_search_of_other_folders_says_nothing_about_overlap(ckpt, images, tmp_path, capsys):
    other = tmp_path / "copy"
    other.mkdir()
    (other / "a.png").write_bytes((images / "a.png").read_bytes())  # equal bytes, another file
    out = tmp_path / "s"
    assert search_main([ckpt, "--query", str(other), "--gallery", str(images), "-o", str(out),
                        "--picture-queries", "0"] + FAST) == 0
    printed = capsys.readouterr().out
    assert "left out" not in printed and "no picture" in printed
    assert [g for _, g in _ranking(out / "ranking.csv")["a.png"]][0] == "a.png"
    assert not (out / "ranks.png").exists()


def test_rank_leaves_out_the_excluded_pairs():
    q, g = torch.tensor([[0.0], [1.0]]), torch.tensor([[0.0], [1.0], [3.0]])
    dist, order = rank(q, g)
    assert order.tolist() == [[0, 1, 2], [1, 0, 2]]
    dist, order = rank(q, g, exclude=[(0, 0), (1, 1)])
    assert [row.tolist() for row in order] == [[1, 2], [0, 2]]
    assert float(dist[0, 0]) == 0.0  # the distances themselves are untouched


# --- checkpoints without the keys every checkpoint has ------------------------------------

@pytest.fixture
def format_only(tmp_path):
    path = tmp_path / "format_only.pt"
    torch.save({"format": "sharpattn.reid/1"}, path)
    return path


def test_a_checkpoint_with_only_a_format_is_refused_by_every_command(format_only, images,
                                                                     tmp_path, capsys):
    p = str(format_only)
    missing = "'kind', 'model_spec', 'model', 'config'"
    assert eval_main([p]) == 2
    one_error(capsys, "sharpattn-eval", p, missing)
    assert export_main([p, "-o", str(tmp_path / "m.onnx")]) == 2
    one_error(capsys, "sharpattn-export", p, missing)
    assert embed_main([p, str(images), "-o", str(tmp_path / "f.npz")] + FAST) == 2
    one_error(capsys, "sharpattn-embed", p, missing)
    assert search_main([p, "--query", str(images), "--gallery", str(images),
                        "-o", str(tmp_path / "s")] + FAST) == 2
    one_error(capsys, "sharpattn-search", p, missing)
    assert train_main(["--resume", p]) == 2
    one_error(capsys, "sharpattn-train", p, missing)
    assert not (tmp_path / "m.onnx").exists() and not (tmp_path / "f.npz").exists()


def test_a_checkpoint_of_an_unknown_kind_is_refused(ckpt, tmp_path, capsys):
    state = torch.load(ckpt, weights_only=True)
    state["kind"] = "weights"
    path = tmp_path / "odd.pt"
    torch.save(state, path)
    assert export_main([str(path), "-o", str(tmp_path / "m.pt2")]) == 2
    one_error(capsys, "sharpattn-export", str(path), "kind 'weights'")


# --- onnxruntime missing -------------------------------------------------------------------

def test_export_without_onnxruntime_keeps_the_file_and_says_what_to_do(ckpt, tmp_path, capsys,
                                                                       monkeypatch):
    pytest.importorskip("onnxscript")
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # `import onnxruntime` fails
    out = tmp_path / "m.onnx"
    assert export_main([ckpt, "-o", str(out)]) == 2
    cap = capsys.readouterr()
    assert f"wrote {out}" in cap.out
    lines = cap.err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in cap.err, cap.err
    assert lines[0].startswith(f"sharpattn-export: error: wrote {out}, but checking it needs "
                               f"onnxruntime (pip install onnxruntime)")
    assert "--check-batch 0" in lines[0]
    assert out.is_file() and out.stat().st_size > 0
    # as it says: --check-batch 0 exports without onnxruntime
    assert export_main([ckpt, "-o", str(out), "--check-batch", "0"]) == 0
