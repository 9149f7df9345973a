"""AAA-Net's three chained stages on the shared loop: what each stage trains and freezes, the
chaining of weights, and resuming in the middle of the attention-assignment stage."""

import csv
from pathlib import Path

import pytest
import torch

from conftest import AAA_STAGE_EPOCHS
from sharpattn.reid.config import load_config
from sharpattn.reid.engine import TrainingInterrupted, train

CONFIGS = Path(__file__).parent / "configs"
SIZE = ("data.height=64", "data.width=32")  # f_r after conv3_x is 8 x 4: a 4 x 4 grid fits


def _config(tiny_config, *overrides):
    return tiny_config(*SIZE, *AAA_STAGE_EPOCHS, *overrides, config=CONFIGS / "aaanet_tiny.yaml")


def _model(path):
    return torch.load(path, weights_only=True)["model"]


def _split(state):
    attention = {k for k in state if k.startswith("attention_head.")}
    return attention, set(state) - attention


TWO_STAGES = ("stages=[{name: classifier, aaanet: {stage: classifier}, optim: {lr: 0.01, epochs: 1}}, "
              "{name: assignment, aaanet: {stage: assignment}, optim: {lr: 0.01, epochs: 2}}]")
STAGE_DIRS = ("1_classifier", "2_assignment", "3_adversarial")


@pytest.fixture(scope="module")
def three_stages(tiny_config, tmp_path_factory):
    """One uninterrupted run of the three stages (a few ResNet-50 steps each on the CPU)."""
    out = tmp_path_factory.mktemp("aaanet") / "run"
    summary = train(_config(tiny_config, "train.pictures=true"), out)
    return out, summary


def test_stages_train_what_the_paper_says(three_stages):
    out, summary = three_stages
    assert [s["name"] for s in summary["stages"]] == ["tiny/classifier", "tiny/assignment", "tiny/adversarial"]
    s1, s2, s3 = (_model(out / d / "last.pt") for d in STAGE_DIRS)
    attention, base = _split(s1)
    assert attention and base
    same = lambda a, b, keys: all(torch.equal(a[k], b[k]) for k in keys)  # noqa: E731
    # Stage 2 froze the backbone and FC, batch-norm statistics included: bit for bit stage 1's.
    assert same(s1, s2, base)
    # ... and trained the attention branch, which stage 1 left as initialised.
    assert not same(s1, s2, attention)
    # Stage 3 trains everything.
    assert not same(s2, s3, base) and not same(s2, s3, attention)
    rows = {d: list(csv.DictReader(open(out / d / "log.csv"))) for d in STAGE_DIRS}
    assert float(rows["2_assignment"][0]["attention"]) > 0  # eq. 1 was optimised
    assert 0 <= float(rows["3_adversarial"][0]["gated"]) <= 1
    assert summary["metrics"]["mAP"] > 0
    # Fig. 4's picture once the attention branch has trained, and the run's own summary.
    assert [(out / d / "occlusions.png").is_file() for d in STAGE_DIRS] == [False, True, True]
    assert (out / "summary.json").is_file() and (out / "stages.yaml").is_file()


def test_stage1_trains_the_base_from_fresh_weights_and_not_the_attention(three_stages):
    from sharpattn.reid.modeling import build_model
    out, _ = three_stages
    ckpt = torch.load(out / "1_classifier" / "last.pt", weights_only=True)
    torch.manual_seed(ckpt["config"]["train"]["seed"])  # the initial weights of every stage 1
    fresh = build_model(ckpt["model_spec"]).state_dict()
    attention, base = _split(ckpt["model"])
    assert any(not torch.equal(fresh[k], ckpt["model"][k]) for k in base if fresh[k].is_floating_point())
    assert all(torch.equal(fresh[k], ckpt["model"][k]) for k in attention)  # no loss reached the branch


def test_resume_in_the_middle_of_the_assignment_stage(three_stages, tiny_config, tmp_path):
    # Stopped after the first step of the assignment stage's second epoch, resumed: its weights
    # are bit for bit those of the uninterrupted run (whose first two stages are the same).
    out, _ = three_stages
    with pytest.raises(TrainingInterrupted):
        train(_config(tiny_config, TWO_STAGES), tmp_path / "cut", stop_at=(2, 1, 1))
    cut = torch.load(tmp_path / "cut" / "2_assignment" / "last.pt", weights_only=True)
    assert (cut["epoch"], cut["step"]) == (1, 1)
    train(_config(tiny_config, TWO_STAGES), tmp_path / "cut", resume=tmp_path / "cut")
    a, b = _model(out / "2_assignment" / "last.pt"), _model(tmp_path / "cut" / "2_assignment" / "last.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_every_aaanet_config_loads():
    from sharpattn.reid.config import available_configs
    names = [n for n in available_configs() if "aaanet" in n]
    assert len(names) >= 15
    for name in names:
        cfg = load_config(name)
        stages = cfg.stage_configs() if cfg.stages else [cfg]
        assert all(s.recipe == "aaanet" for s in stages), name
        assert [s.section("aaanet").stage for s in stages][-1] in ("adversarial", "classifier"), name


# The demo's AAA-Net, chained to the demo's baseline as the main job runs it: test_main_job.py.


def test_resume_with_another_aaanet_model_is_refused(three_stages, tiny_config):
    from sharpattn.reid.engine import CheckpointError, Trainer
    out, _ = three_stages
    stage = _config(tiny_config, "aaanet.occlusion_after=4").stage_configs()[1]
    with pytest.raises(CheckpointError, match="another model"):
        Trainer(stage, out / "2_assignment", resume=out / "2_assignment")


def test_eval_of_a_stage_checkpoint(three_stages, tmp_path, capsys):
    from sharpattn.reid.cli import eval_main
    out, _ = three_stages
    best = out / "3_adversarial" / "best.pt"
    assert eval_main([str(best), "-o", str(tmp_path / "eval"), "--metric", "euclidean"]) == 0
    assert (tmp_path / "eval" / "metrics.json").is_file()
    # KISSME's PCA needs more training images than the tiny set has: a user error, not a traceback.
    assert eval_main([str(best), "-o", str(tmp_path / "eval2"), "--metric", "kissme"]) == 2
    err = capsys.readouterr().err
    assert "kissme cannot be fitted" in err and "Traceback" not in err


def test_frozen_bn_keeps_the_base_batch_norms_on_running_statistics(tiny_config):
    import types

    from sharpattn.reid.modeling import build_model
    from sharpattn.reid.recipes import AAANetRecipe
    for frozen in (False, True):
        stage = _config(tiny_config, f"aaanet.frozen_bn={str(frozen).lower()}").stage_configs()[0]
        recipe = AAANetRecipe(stage, torch.device("cpu"))
        model = build_model(recipe.model_spec(types.SimpleNamespace(num_train_pids=4)))
        recipe.train_mode(model)
        norms = {n: m for n, m in model.named_modules() if isinstance(m, torch.nn.BatchNorm2d)}
        base = [m for n, m in norms.items() if not n.startswith("attention_head.")]
        head = [m for n, m in norms.items() if n.startswith("attention_head.")]
        assert base and head
        assert all(m.training != frozen for m in base)
        assert all(m.training for m in head) and model.dropout.training  # dropout and the branch train
        before = [m.running_mean.clone() for m in base]
        model(torch.randn(4, 3, 64, 32))
        moved = [not torch.equal(b, m.running_mean) for b, m in zip(before, base)]
        assert all(moved) if not frozen else not any(moved)


@pytest.mark.parametrize("gate_dropout", [True, False])
def test_the_gate_without_dropout_sees_only_the_occlusion(tiny_config, gate_dropout):
    # A mask that occludes nothing (threshold above any sigmoid) leaves p_bf = p_af unless the two
    # classifications draw their own dropout; omega = 0 opens the gate for any positive drop.
    import types

    from sharpattn.reid.modeling import build_model
    from sharpattn.reid.recipes import AAANetRecipe
    stage = _config(tiny_config, "aaanet.mask_threshold=1.5", "aaanet.omega=0.0",
                    f"aaanet.gate_dropout={str(gate_dropout).lower()}").stage_configs()[2]
    recipe = AAANetRecipe(stage, torch.device("cpu"))
    torch.manual_seed(0)
    model = build_model(recipe.model_spec(types.SimpleNamespace(num_train_pids=4)))
    recipe.trainable_parameters(model)
    recipe.train_mode(model)
    images, pids = torch.randn(16, 3, 64, 32), torch.arange(4).repeat_interleave(4)
    _, stats = recipe.step(recipe.step_module(model), model, images, pids)
    if gate_dropout:
        assert stats["gated"] > 0.2  # dropout noise alone opens it
    else:
        assert stats["gated"] == 0.0 and stats["adversarial"] == 0.0
