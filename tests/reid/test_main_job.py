"""The README's main job, ``sharpattn-train`` with no arguments, driven as a user runs it.

One run of the built-in demo (module fixture): the console command in an empty working
directory, every run and stage of the demo with its real configs and the links between them,
only the epochs cut to one (and the lr decay's start with them). Then what a user does with
its checkpoints: copy one anywhere, delete the runs, and evaluate, export, embed and search.
"""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sharpattn.reid.config import ConfigError, load_config

# What the demo's table must show: every run and every stage of AAA-Net.
DEMO_ROWS = ["baseline", "baseline_ft", "san_ft", "aaanet/classifier", "aaanet/assignment", "aaanet/adversarial"]
# The only changes from the README's command: one epoch per run and stage (decay_start is an
# epoch count: it must fit in one), no progress bars in the captured output.
ONE_EPOCH = ["optim.epochs=1", "optim.decay_start=0", "train.progress=false"]


def command(name):
    """A console script of this environment, as the README runs it (``.venv/bin/<name>``)."""
    script = Path(sys.executable).parent / name
    if script.is_file():
        return [str(script)]
    module = "sharpattn.reid.deploy_cli" if name in ("sharpattn-export", "sharpattn-embed",
                                                     "sharpattn-search") else "sharpattn.reid.cli"
    return [sys.executable, "-c", f"from {module} import _console_{name.split('-')[1]} as main; main()"]


def run(name, *args, cwd, timeout=1800):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run(command(name) + [str(a) for a in args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env=env)


def table_rows(stdout):
    """``{model: (rank-1, mAP)}`` from the printed result table."""
    rows = {}
    for m in re.finditer(r"^\| (\S+) \| ([\d.]+) \| [\d.]+ \| [\d.]+ \| ([\d.]+) \| [\d.]+ \|$", stdout, re.M):
        rows[m.group(1)] = (float(m.group(2)), float(m.group(3)))
    return rows


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """The main job's folder after ``sharpattn-train`` with no config, one epoch per run."""
    cwd = tmp_path_factory.mktemp("main_job")
    proc = run("sharpattn-train", *ONE_EPOCH, cwd=cwd)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    roots = sorted((cwd / "runs").glob("synthetic-*"))
    assert len(roots) == 1, roots
    return {"cwd": cwd, "root": roots[0], "stdout": proc.stdout, "stderr": proc.stderr}


def _ckpt(path):
    return torch.load(path, map_location="cpu", weights_only=True)


def test_the_main_job_trains_every_run_and_prints_the_table(demo):
    rows = table_rows(demo["stdout"])
    assert list(rows) == DEMO_ROWS, demo["stdout"][-2000:]
    root = demo["root"]
    assert (root / "results.md").is_file()
    for name in ("baseline", "baseline_ft", "san_ft"):
        assert (root / name / "best.pt").is_file() and (root / name / "last.pt").is_file()
    for i, stage in enumerate(("classifier", "assignment", "adversarial"), 1):
        assert (root / "aaanet" / f"{i}_{stage}" / "best.pt").is_file()
    assert "Traceback" not in demo["stderr"]


def test_the_runs_start_from_each_other_as_the_configs_link_them(demo):
    root = demo["root"]
    baseline = str((root / "baseline" / "best.pt").resolve())
    assert _ckpt(root / "baseline" / "best.pt")["initialised_from"] is None  # from scratch
    for name in ("baseline_ft", "san_ft"):
        ckpt = _ckpt(root / name / "best.pt")
        assert ckpt["initialised_from"] == baseline
        assert ckpt["config"]["model"]["weights"] == baseline  # the link, resolved, for provenance
        assert "weights" not in ckpt["model_spec"]["kwargs"]   # not needed to rebuild the model
    stages = [root / "aaanet" / d for d in ("1_classifier", "2_assignment", "3_adversarial")]
    assert _ckpt(stages[0] / "best.pt")["initialised_from"] == baseline
    for earlier, later in zip(stages, stages[1:]):
        assert _ckpt(later / "best.pt")["initialised_from"] == str((earlier / "last.pt").resolve())


def _image_folder(data_root, dest, count=6):
    """A few of the demo's images, one unreadable file among them."""
    dest.mkdir()
    images = sorted(Path(data_root).rglob("*.jpg"))[:count]
    assert len(images) == count
    for p in images:
        shutil.copy(p, dest / p.name)
    (dest / "broken.jpg").write_bytes(b"not an image")
    return dest


def test_a_copied_checkpoint_works_after_its_runs_are_deleted(demo, tmp_path):
    """best.pt of the fine-tuned SAN, copied to an empty folder; then the demo's runs folder is
    gone (the run and the baseline it started from), and every command runs from elsewhere."""
    lonely = tmp_path / "lonely"
    lonely.mkdir()
    ckpt = shutil.copy(demo["root"] / "san_ft" / "best.pt", lonely / "best.pt")
    data = tmp_path / "data"
    shutil.copytree(demo["cwd"] / "data", data)
    gallery = _image_folder(data, tmp_path / "photos")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    moved = demo["cwd"] / "runs-moved"
    (demo["cwd"] / "runs").rename(moved)  # restored below: the other tests read the runs
    try:
        _use_checkpoint(ckpt, data, gallery, elsewhere)
    finally:
        moved.rename(demo["cwd"] / "runs")


def _use_checkpoint(ckpt, data, gallery, cwd):
    ev = run("sharpattn-eval", ckpt, "--data-root", data, "--no-ten-crop", "-o", cwd / "eval", cwd=cwd)
    assert ev.returncode == 0, ev.stderr[-2000:]
    assert json.loads((cwd / "eval" / "metrics.json").read_text())["rank1"] >= 0
    ex = run("sharpattn-export", ckpt, "--format", "onnx", "-o", cwd / "san.onnx", cwd=cwd)
    assert ex.returncode == 0, ex.stderr[-2000:]
    assert (cwd / "san.onnx").stat().st_size > 0
    em = run("sharpattn-embed", ckpt, gallery, "-o", cwd / "features.npz", "--no-progress", cwd=cwd)
    assert em.returncode == 0, em.stderr[-2000:]
    assert "broken.jpg" in em.stderr  # skipped with a warning that names it
    import numpy as np
    with np.load(cwd / "features.npz") as f:
        assert f["features"].shape[0] == 6
    se = run("sharpattn-search", ckpt, "--query", gallery, "--gallery", gallery, "-o", cwd / "search",
             "--no-progress", cwd=cwd)
    assert se.returncode == 0, se.stderr[-2000:]
    assert (cwd / "search" / "ranking.csv").is_file()


def test_a_checkpoint_of_the_earlier_format_still_loads(demo, tmp_path):
    """Checkpoints written before this change carry model.weights in their model_spec (a
    relative path to the run they started from): they load without that file."""
    from sharpattn.reid.deploy import load_inference_model
    old = _ckpt(demo["root"] / "san_ft" / "best.pt")
    old.pop("initialised_from")
    old["model_spec"]["kwargs"]["weights"] = "runs/synthetic-20261130-101010/baseline/best.pt"
    path = tmp_path / "old.pt"
    torch.save(old, path)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    model, cfg, _ = load_inference_model(path)
    state = model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in old["model"].items())
    ex = run("sharpattn-export", path, "--format", "onnx", "-o", cwd / "old.onnx", cwd=cwd)
    assert ex.returncode == 0, ex.stderr[-2000:]


# -- the links between runs, without training ------------------------------------------------

def test_a_link_to_a_run_the_command_does_not_train_is_one_clear_line(tmp_path):
    proc = run("sharpattn-train", "--config", "synthetic/san_ft", cwd=tmp_path, timeout=300)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "run 'baseline'" in lines[0] and "Traceback" not in proc.stderr, proc.stderr
    assert not (tmp_path / "runs").exists()  # refused before anything trained


def test_the_old_runs_placeholder_is_refused_with_the_new_syntax():
    with pytest.raises(ConfigError, match="run:baseline"):
        load_config("synthetic/san_ft", ["model.weights='{runs}/baseline/best.pt'"])


def test_a_command_line_override_reaches_every_stage():
    cfg = load_config("synthetic/aaanet", ["optim.epochs=1", "optim.lr=0.5"])
    assert [(s.optim.epochs, s.optim.lr) for s in cfg.stage_configs()] == [(1, 0.5)] * 3
    # a key the stages do not set keeps their values; the stage names are not overrides' business
    cfg = load_config("synthetic/aaanet", ["optim.momentum=0.5", "name=x"])
    assert [s.optim.epochs for s in cfg.stage_configs()] == [20, 8, 12]
    assert [s.stage_name for s in cfg.stage_configs()] == ["classifier", "assignment", "adversarial"]
    # one stage alone: stages.<name>.<section>.<key>
    cfg = load_config("synthetic/aaanet", ["optim.epochs=1", "stages.assignment.optim.epochs=3"])
    assert [s.optim.epochs for s in cfg.stage_configs()] == [1, 3, 1]
    with pytest.raises(ConfigError, match="no stage named 'assign'"):
        load_config("synthetic/aaanet", ["stages.assign.optim.epochs=3"])


def test_missing_initial_weights_say_what_the_file_is(tmp_path):
    from sharpattn.reid.modeling import build_model, initialise_from
    model = build_model({"arch": "san_resnet50", "kwargs": {"blocks": [], "context": []}})
    with pytest.raises(ConfigError, match="an earlier run's checkpoint"):
        initialise_from(model, tmp_path / "gone" / "best.pt")
    with pytest.raises(ConfigError, match="ImageNet weights") as e:
        initialise_from(model, tmp_path / "resnet50.pth")
    assert "\n" not in str(e.value)


def test_setup_py_without_torch_says_what_to_run():
    """pip's build isolation hides torch from setup.py: one line naming the command that works."""
    root = Path(__file__).resolve().parents[2]
    code = ("import sys, runpy; sys.modules['torch'] = None; sys.argv = ['setup.py', '--name']; "
            "runpy.run_path('setup.py', run_name='__main__')")
    proc = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()]
    assert "pip install --no-build-isolation ." in proc.stderr and "Traceback" not in proc.stderr
