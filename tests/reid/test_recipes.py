"""Recipes over the shared loop: a toy recipe from one file and one config section, and runs of
several stages (chaining, frozen parts, resume in the middle of a stage)."""

import csv
from pathlib import Path

import pytest
import torch

import _toy_recipe  # noqa: F401  (registers the toy recipe and its config section)
from sharpattn.reid.config import ConfigError
from sharpattn.reid.engine import TrainingInterrupted, train
from sharpattn.reid.engine.schedule import StepSchedule
from sharpattn.reid.recipes import RECIPES

CONFIGS = Path(__file__).parent / "configs"


def _config(tiny_config, name, *overrides):
    # The tiny fixture's data, model and evaluation settings over the toy YAML.
    return tiny_config(*overrides, config=CONFIGS / name)


def _state(path):
    return torch.load(path, weights_only=True)["model"]


def test_toy_recipe_trains_with_its_own_section_and_columns(tiny_config, tmp_path):
    cfg = _config(tiny_config, "toy.yaml", "optim.epochs=2")
    assert cfg.recipe == "toy_centroid" and cfg.section("toy").pull == 0.5
    assert "toy_centroid" in RECIPES
    summary = train(cfg, tmp_path / "toy")
    rows = list(csv.DictReader(open(tmp_path / "toy" / "log.csv")))
    assert [r["epoch"] for r in rows] == ["1", "2"]
    assert {"spread", "separation"} <= rows[0].keys() and "triplet" not in rows[0]
    # The step schedule of the toy config: 0.01, then 0.005.
    assert [float(r["lr"]) for r in rows] == [0.01, 0.005]
    assert summary["metrics"]["mAP"] > 0
    # The section survives into the run's config.yaml, and the run resumes from it unchanged.
    text = (tmp_path / "toy" / "config.yaml").read_text()
    assert "toy:" in text and "pull: 0.5" in text


def test_an_unknown_key_in_a_recipe_section_is_named(tiny_config):
    with pytest.raises(ConfigError, match="toy.pul"):
        _config(tiny_config, "toy.yaml", "toy.pul=1")


def test_step_schedule():
    s = StepSchedule(1e-3, step_size=2, gamma=0.1)
    assert [s(e) for e in range(5)] == pytest.approx([1e-3, 1e-3, 1e-4, 1e-4, 1e-5])


def test_stages_chain_weights_and_freeze(tiny_config, tmp_path):
    cfg = _config(tiny_config, "toy_stages.yaml")
    assert [c.stage_name for c in cfg.stage_configs()] == ["centroid", "triplet_top"]
    summary = train(cfg, tmp_path / "run")
    assert len(summary["stages"]) == 2
    first, second = _state(tmp_path / "run" / "1_centroid" / "last.pt"), _state(tmp_path / "run" / "2_triplet_top" / "last.pt")
    stem = [k for k in first if k.startswith("stem.") and first[k].is_floating_point() and "running" not in k]
    rest = [k for k in first if k.startswith("top.") and first[k].is_floating_point()]
    # Stage 2 froze the stem: it holds exactly what stage 1 ended with (so it started from there).
    assert stem and all(torch.equal(first[k], second[k]) for k in stem)
    # ... and trained the rest.
    assert any(not torch.equal(first[k], second[k]) for k in rest)
    # Stage 1 trained the stem away from its initialisation.
    init = torch.manual_seed(cfg.train.seed)
    from sharpattn.reid.modeling import build_model, model_spec
    fresh = build_model(model_spec(cfg.model)).state_dict()
    assert any(not torch.equal(fresh[k], first[k]) for k in stem), init


def test_resume_in_the_middle_of_a_stage_matches_an_uninterrupted_run(tiny_config, tmp_path):
    cfg = _config(tiny_config, "toy_stages.yaml")
    train(cfg, tmp_path / "full")
    with pytest.raises(TrainingInterrupted):
        train(_config(tiny_config, "toy_stages.yaml"), tmp_path / "cut", stop_at=(2, 1, 1))
    assert not (tmp_path / "cut" / "2_triplet_top" / "summary.json").exists()
    first_done = (tmp_path / "cut" / "1_centroid" / "last.pt").stat().st_mtime_ns
    train(_config(tiny_config, "toy_stages.yaml"), tmp_path / "cut", resume=tmp_path / "cut")
    assert (tmp_path / "cut" / "1_centroid" / "last.pt").stat().st_mtime_ns == first_done  # not retrained
    a, b = _state(tmp_path / "full" / "2_triplet_top" / "last.pt"), _state(tmp_path / "cut" / "2_triplet_top" / "last.pt")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_stage_without_a_name_is_refused(tiny_config):
    cfg = _config(tiny_config, "toy.yaml", "stages=[{optim: {epochs: 1}}]")
    with pytest.raises(ConfigError, match=r"stages\[0\]"):
        cfg.stage_configs()
