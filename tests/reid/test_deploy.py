"""sharpattn-export / -embed / -search on the tiny checkpoint of the CLI tests (issue 15)."""

import csv

import numpy as np
import onnx
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from sharpattn.reid.datasets import ImageDataset
from sharpattn.reid.deploy import load_inference_model
from sharpattn.reid.deploy_cli import embed_main, export_main, search_main
from sharpattn.reid.data import build_dataset, synthetic_root
from sharpattn.reid.evaluation import evaluate
from sharpattn.reid.evaluation.features import extract_features
from sharpattn.reid.data.transforms import build_test_transform
from sharpattn.reid.report.visualize import COLOURS, HEADER, plot_ranked_lists, ranked_list
from test_cli import trained_run  # noqa: F401  (the 1-epoch tiny SAN run of the CLI tests)
from test_visualize import frame_colours_along, legend_swatches


@pytest.fixture(scope="module")
def model_and_cfg(trained_run):  # noqa: F811
    model, cfg, _ = load_inference_model(trained_run / "best.pt")
    return model, cfg


@pytest.fixture(scope="module")
def own_images(tmp_path_factory, model_and_cfg):
    """A folder like a user's: nested folders, PNG and JPEG, a corrupt .jpg and a text file."""
    _, cfg = model_and_cfg
    root = tmp_path_factory.mktemp("own")
    synthetic = sorted((synthetic_root(cfg.data) / "query").glob("*.jpg"))[:5]
    for k, src in enumerate(synthetic):
        sub = root / ("day1" if k % 2 else "day2")
        sub.mkdir(exist_ok=True)
        Image.open(src).save(sub / f"person{k}.{'png' if k % 2 else 'jpg'}")
    (root / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")
    (root / "notes.txt").write_text("not an image, ignored")
    return root


def test_export_cli_onnx_and_pt2(trained_run, tmp_path, capsys):  # noqa: F811
    ckpt = str(trained_run / "best.pt")
    assert export_main([ckpt, "--format", "onnx", "-o", str(tmp_path / "m.onnx")]) == 0
    out = capsys.readouterr().out
    assert "onnxruntime (CPU) vs the PyTorch model" in out
    assert "batch 1 at 32x16" in out and "batch 4 at 32x16" in out and "MISMATCH" not in out
    assert out.count("-> OK") == 2
    proto = onnx.load(str(tmp_path / "m.onnx"))
    assert {n.domain for n in proto.graph.node} <= {"", "ai.onnx"}
    # the format from the extension; a fixed batch; another input size
    assert export_main([ckpt, "-o", str(tmp_path / "m.pt2"), "--static-batch", "3",
                        "--height", "48", "--width", "24"]) == 0
    out = capsys.readouterr().out
    assert "torch.export.load" in out and "batch 3 at 48x24" in out and "-> OK" in out
    assert torch.export.load(str(tmp_path / "m.pt2")).module()(torch.randn(3, 3, 48, 24)).shape == (3, 16)


def test_export_cli_errors(trained_run, tmp_path, capsys):  # noqa: F811
    assert export_main([str(trained_run / "best.pt"), "-o", str(tmp_path / "m.bin")]) == 2
    assert "cannot tell the format" in capsys.readouterr().err
    assert export_main([str(tmp_path / "none.pt"), "-o", str(tmp_path / "m.onnx")]) == 2
    assert "checkpoint not found" in capsys.readouterr().err


def test_embed_skips_a_corrupt_image_with_a_warning(trained_run, own_images, tmp_path, capsys):  # noqa: F811
    out = tmp_path / "f.npz"
    with pytest.warns(UserWarning, match=r"skipping unreadable image .*broken\.jpg"):
        assert embed_main([str(trained_run / "best.pt"), str(own_images), "-o", str(out),
                           "--batch-size", "2", "--workers", "0", "--no-progress"]) == 0
    assert "skipped 1 unreadable" in capsys.readouterr().out
    data = np.load(out)
    assert list(data["names"]) == ["day1/person1.png", "day1/person3.png", "day2/person0.jpg",
                                   "day2/person2.jpg", "day2/person4.jpg"]
    assert list(data["skipped"]) == ["broken.jpg"]
    assert data["features"].shape == (5, 16) and data["features"].dtype == np.float32
    assert np.isfinite(data["features"]).all()
    # --strict: the corrupt image is an error that names it
    assert embed_main([str(trained_run / "best.pt"), str(own_images), "-o", str(out), "--strict",
                       "--workers", "0", "--no-progress"]) == 2
    assert "broken.jpg" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert embed_main([str(trained_run / "best.pt"), str(empty), "--no-progress"]) == 2
    assert "no images" in capsys.readouterr().err


def test_ten_crop_embedding_is_the_evaluations(model_and_cfg, own_images, tmp_path):
    from sharpattn.reid.deploy import embed_folder

    model, cfg = model_and_cfg
    with pytest.warns(UserWarning, match="broken"):
        got = embed_folder(model, own_images, 32, 16, ten_crop=True, batch_size=4, progress=False)
    items = [(str(p), 0, 0) for p in got.paths]
    loader = DataLoader(ImageDataset(items, build_test_transform(32, 16, ten_crop=True)), batch_size=4)
    want, _, _ = extract_features(model, loader, progress=False)
    # The same images, transform, batches and model: the same float32 operations.
    torch.testing.assert_close(got.features, want, rtol=0, atol=1e-6)


def test_embed_and_search_rank_the_synthetic_test_set_like_sharpattn_eval(
        trained_run, model_and_cfg, tmp_path):  # noqa: F811
    model, cfg = model_and_cfg
    dataset = build_dataset(cfg.data)
    _, distmat = evaluate(model, dataset, cfg, torch.device("cpu"), progress=False)
    root = synthetic_root(cfg.data)
    out = tmp_path / "search"
    assert search_main([str(trained_run / "best.pt"), "--query", str(root / "query"),
                        "--gallery", str(root / "bounding_box_test"), "-o", str(out), "--csv-all",
                        "--batch-size", str(cfg.eval.batch_size), "--workers", "0",
                        "--no-progress"]) == 0
    ranking = {}
    with open(out / "ranking.csv") as f:
        for row in csv.DictReader(f):
            ranking.setdefault(row["query"], []).append((row["gallery"], float(row["distance"])))
    name = lambda path: path.rsplit("/", 1)[-1]  # noqa: E731
    g_names = [name(p) for p, _, _ in dataset.gallery]
    g_pids = np.array([p for _, p, _ in dataset.gallery])
    g_cams = np.array([c for _, _, c in dataset.gallery])
    assert len(ranking) == len(dataset.query)
    for qi, (qpath, qpid, qcam) in enumerate(dataset.query):
        # sharpattn-eval's ranked list: the protocol drops junk (same identity and camera) and
        # the junk-named files it never loads; search ranks every file of the folder.
        want = [g_names[g] for g in ranked_list(distmat[qi].numpy(), qpid, qcam, g_pids, g_cams)]
        keep = set(want)
        got = [(g, d) for g, d in ranking[name(qpath)] if g in keep]
        assert [g for g, _ in got] == want
        d_eval = {g_names[g]: float(distmat[qi, g]) for g in range(len(g_names))}
        # CSV distances have 6 significant digits
        assert all(abs(d - d_eval[g]) <= 1e-5 * max(1.0, d_eval[g]) for g, d in got)
    picture = Image.open(out / "ranks.png").convert("RGB")
    rows = min(8, len(dataset.query))
    assert picture.size == (11 * (64 + 12) + 16, HEADER + rows * (128 + 12 + 40))  # 128 x 64 cells
    # frames (4 pixels wide, left of each picture): the query blue, its 10 matches grey
    y = HEADER + 6 + 64
    assert picture.getpixel((6 - 2, y)) == COLOURS["query"]
    for k in range(10):
        assert picture.getpixel((16 + 76 * (k + 1) + 6 - 2, y)) == COLOURS["unlabelled"]


def test_search_errors(trained_run, own_images, tmp_path, capsys):  # noqa: F811
    ckpt = str(trained_run / "best.pt")
    assert search_main([ckpt, "--query", str(tmp_path / "nowhere"), "--gallery", str(own_images),
                        "--no-progress"]) == 2
    assert "not a folder" in capsys.readouterr().err
    assert search_main([ckpt, "--query", str(own_images), "--gallery", str(own_images),
                        "--topk", "0"]) == 2
    assert "--topk must be >= 1" in capsys.readouterr().err


def test_unlabelled_ranked_list_picture(tmp_path):
    paths = []
    for k in range(4):
        paths.append(tmp_path / f"img{k}.png")
        Image.new("RGB", (16, 32), (128, 128, 128)).save(paths[-1])
    query, gallery = [(str(paths[0]), None, None)], [(str(p), None, None) for p in paths[1:]]
    out = plot_ranked_lists(np.array([[0.3, 0.1, 0.2]]), query, gallery, tmp_path / "r.png",
                            topk=2, query_indices=[0], cell=(32, 16))
    img = Image.open(out).convert("RGB")
    assert frame_colours_along(img, HEADER + 6 + 16) == [COLOURS["query"], COLOURS["unlabelled"],
                                                         COLOURS["unlabelled"]]
    # the legend names only the query and the (unlabelled) matches
    assert legend_swatches(img) == [COLOURS["query"], COLOURS["unlabelled"]]
