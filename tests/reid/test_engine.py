import csv

import pytest
import torch

import sharpattn
from sharpattn.reid.config import load_config
from sharpattn.reid.engine import train
from sharpattn.reid.recipes import compute_loss
from sharpattn.reid.losses import batch_hard_triplet_loss
from sharpattn.reid.modeling import build_model, model_spec


def test_tiny_synthetic_run_learns_and_writes_its_outputs(tiny_config, tmp_path):
    cfg = tiny_config("optim.epochs=8", "optim.decay_start=8", "optim.lr=3e-3", "train.eval_every=4",
                      "train.pictures=true", "eval.ten_crop=true")
    out = train(cfg, tmp_path / "run")
    hist = torch.load(tmp_path / "run" / "last.pt", weights_only=True)["history"]
    first, last = hist[0]["loss"], sum(h["loss"] for h in hist[-2:]) / 2
    assert last < 0.9 * first, [h["loss"] for h in hist]
    # it learns, not just shrinks the embedding: more anchors have their hardest negative
    # beyond their hardest positive, and retrieval on unseen identities beats chance (~1/8)
    assert max(h["precision"] for h in hist[-3:]) > hist[0]["precision"] + 0.15, [h["precision"] for h in hist]
    assert out["metrics"]["rank1"] > 0.3
    assert all(h["tv"] > 0 for h in hist)  # the block's TV is part of the loss
    for name in ("last.pt", "best.pt", "log.csv", "curves.png", "ranks.png", "masks.png", "report.md",
                 "summary.json", "config.yaml"):
        assert (tmp_path / "run" / name).is_file(), name
    assert list((tmp_path / "run" / "tensorboard").iterdir())
    rows = list(csv.DictReader(open(tmp_path / "run" / "log.csv")))
    assert [int(r["epoch"]) for r in rows] == list(range(1, 9))
    assert rows[3]["mAP"] and rows[7]["mAP"] and not rows[0]["mAP"]  # evaluated every 4 epochs
    assert out["metrics"]["ten_crop"] and 0 <= out["metrics"]["mAP"] <= 1
    assert "rank-1" in (tmp_path / "run" / "report.md").read_text()


def test_loss_is_triplet_plus_mu_tv(tiny_config):
    cfg = tiny_config("loss.mu=0.5")
    torch.manual_seed(0)
    model = build_model(model_spec(cfg.model))
    images, pids = torch.randn(8, 3, 32, 16), torch.arange(4).repeat_interleave(2)
    torch.manual_seed(1)
    loss, st = compute_loss(model, images, pids, cfg)
    torch.manual_seed(1)
    emb = model(images)
    expected = batch_hard_triplet_loss(emb, pids) + 0.5 * sharpattn.tv_penalty(model)
    torch.testing.assert_close(loss, expected)
    assert st["loss"] == pytest.approx(st["triplet"] + 0.5 * st["tv"], rel=1e-6)
    assert st["tv"] > 0


def test_baseline_has_no_tv_and_no_mask_picture(tiny_config, tmp_path):
    cfg = tiny_config("model.blocks=[]", "optim.epochs=1", "train.pictures=true")
    out = train(cfg, tmp_path / "b")
    hist = torch.load(tmp_path / "b" / "last.pt", weights_only=True)["history"]
    assert hist[0]["tv"] == 0.0
    assert "masks" not in out["pictures"] and "ranks" in out["pictures"]


@pytest.mark.parametrize("option", ["train.amp=bf16", "train.channels_last=true", "loss.soft_margin=true"])
def test_options_run(tiny_config, tmp_path, option):
    out = train(tiny_config("optim.epochs=1", option), tmp_path / "r")
    assert out["metrics"] is not None


def test_synthetic_configs_use_the_san_model():
    san = load_config("synthetic/san")
    base = load_config("synthetic/baseline")
    assert san.model.arch == base.model.arch == "san_resnet50"
    assert san.model.blocks and san.model.tv and not base.model.blocks
    assert (san.data, san.optim, san.tau) == (base.data, base.optim, base.tau)


def test_weights_from_an_earlier_run_of_the_same_command(tiny_config, tmp_path):
    """run:NAME is the best.pt of the run NAME trained before it, wherever that run's folder is."""
    from sharpattn.reid.config import ConfigError
    from sharpattn.reid.engine.links import RunLinks
    plain = ["model.blocks=[]", "optim.epochs=1"]  # the tiny net without a sharp attention block
    first = tiny_config("name=first", *plain)
    second = tiny_config("name=second", "model.weights=run:first", *plain)
    with pytest.raises(ConfigError, match="run 'first'"):
        RunLinks.check([second, first])  # the link points forward: refused before training
    RunLinks.check([first, second])
    links = RunLinks()
    with pytest.raises(ConfigError, match="run 'first'"):
        train(second, tmp_path / "second", links=links)
    summary = train(first, tmp_path / "deep" / "er" / "first", links=links)
    assert links.checkpoints["first"] == (tmp_path / "deep" / "er" / "first" / "best.pt").resolve()
    summary = train(second, tmp_path / "second", links=links)
    assert second.model.weights == str(links.checkpoints["first"])
    ckpt = torch.load(tmp_path / "second" / "best.pt", weights_only=True)
    assert ckpt["initialised_from"] == second.model.weights and summary["metrics"] is not None
    assert "weights" not in ckpt["model_spec"]["kwargs"]


def test_an_unresolved_link_outside_a_command_is_a_clear_error(tiny_config, tmp_path):
    from sharpattn.reid.config import ConfigError
    with pytest.raises(ConfigError, match="run 'first'"):
        train(tiny_config("model.weights=run:first"), tmp_path / "r")


def test_the_demo_chain_fine_tunes_from_the_demo_baseline():
    from sharpattn.reid.cli import DEFAULT_CONFIGS
    cfgs = [load_config(name) for name in DEFAULT_CONFIGS]
    assert [c.name for c in cfgs] == ["baseline", "baseline_ft", "san_ft", "aaanet"]
    assert cfgs[0].model.weights is None and cfgs[0].optim.lr == 1e-3
    for c in cfgs[1:]:
        assert c.model.weights == "run:baseline"
    san_like, aaanet = cfgs[:3], cfgs[3]
    assert all(c.optim.lr == 2e-4 for c in san_like[1:])
    assert cfgs[2].model.blocks == [1, 2, 3, 4] and cfgs[1].model.blocks == []
    assert all(c.optim.grad_clip == 5.0 for c in san_like)
    # AAA-Net: its three stages, SGD at the paper's lr 1e-3 in stage 1, on the demo's data.
    stages = aaanet.stage_configs()
    assert [s.section("aaanet").stage for s in stages] == ["classifier", "assignment", "adversarial"]
    assert stages[0].optim.name == "sgd" and stages[0].optim.lr == 1e-3
    assert all(s.data == cfgs[0].data for s in stages)
