"""Nothing a run recorded is lost, and a user mistake is one line (exit 2), driven through the CLI.

The cases a reviewer found: a finished run overwritten once its last.pt was deleted, two
trainings into one folder, resuming with overrides that silently change the run, a full disk
found only after the epoch, an unwritable output, and values that trained nonsense or ended in a
traceback.
"""

import json
import os
import pickle
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import TINY
from sharpattn.reid.cli import eval_main, train_main
from sharpattn.reid.engine import run_folder


def _one_line_error(capsys):
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.startswith("sharpattn-")]
    assert len(lines) == 1, err
    return lines[0]


def _args(out, data_root, *extra):
    return ["--config", "synthetic/san", "--output", str(out)] + TINY + [f"data.root={data_root}",
                                                                       "optim.epochs=1", *extra]


@pytest.fixture(scope="module")
def finished(tmp_path_factory, data_root):
    out = tmp_path_factory.mktemp("safety") / "run"
    assert train_main(_args(out, data_root)) == 0
    return out


def _snapshot(folder):
    return {p.name: p.read_bytes() for p in Path(folder).iterdir() if p.is_file()}


# -- 1. a folder with results is never written into without --resume or --overwrite -----------

def test_a_finished_run_without_its_last_pt_is_not_overwritten(finished, data_root, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    for name, data in _snapshot(finished).items():
        (run / name).write_bytes(data)
    (run / "last.pt").unlink()  # to save space: best.pt is what the user keeps
    before = _snapshot(run)
    assert train_main(_args(run, data_root)) == 2
    line = _one_line_error(capsys)
    assert "already holds a run's results" in line and "best.pt" in line and "--overwrite" in line
    assert _snapshot(run) == before
    # --overwrite says so, and the folder then holds only the new run
    assert train_main(_args(run, data_root, "--overwrite")) == 0
    assert "removed the earlier run's results" in capsys.readouterr().out
    assert (run / "last.pt").is_file()


def test_a_second_writer_gets_one_line(tmp_path, data_root, capsys):
    out = tmp_path / "run"
    out.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (out / run_folder.LOCK_NAME).write_text(json.dumps({"pid": holder.pid, "host": socket.gethostname(),
                                                              "started": "now"}))
        assert train_main(_args(out, data_root)) == 2
        line = _one_line_error(capsys)
        assert "being written by another run" in line and str(holder.pid) in line
        assert sorted(p.name for p in out.iterdir()) == [run_folder.LOCK_NAME]  # nothing written
    finally:
        holder.kill()
        holder.wait()
    # its process gone, the lock is stale: taken over, and the run trains
    assert train_main(_args(out, data_root)) == 0
    assert "stale lock" in capsys.readouterr().out
    assert not (out / run_folder.LOCK_NAME).exists()  # released at the end


def test_two_trainings_started_together_into_one_folder(finished, tmp_path, data_root):
    """The reported case: the second started 0.5 s after the first; one trains, one is refused.
    (``finished``: the synthetic data is generated already, not by both at once.)"""
    out = tmp_path / "run"
    argv = _args(out, data_root, "train.progress=false")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")])}
    # the tiny model is registered by tests/reid/_tiny.py: imported first in both processes
    cmd = [sys.executable, "-c", "import sys, _tiny; from sharpattn.reid.cli import train_main; "
                                 "sys.exit(train_main(sys.argv[1:]))"] + argv
    first = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(0.5)
    second = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    out1, err1 = first.communicate(timeout=600)
    codes = sorted([first.returncode, second.returncode])
    assert codes == [0, 2], (out1[-1500:], err1[-1500:], second.stdout[-1500:], second.stderr[-1500:])
    refused = second.stderr if second.returncode == 2 else err1
    assert "Traceback" not in refused
    assert "being written by another run" in refused or "already holds a run's results" in refused
    assert len(list((out / "tensorboard").iterdir())) == 1  # one run's log, not two mixed


# -- 3. --resume with overrides that change the run --------------------------------------------

def test_resume_refuses_changes_unless_allowed_and_records_them(finished, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    for name, data in _snapshot(finished).items():
        (run / name).write_bytes(data)
    assert train_main(["--resume", str(run), "optim.lr=0.1", "data.height=48"]) == 2
    line = _one_line_error(capsys)
    assert "would change how the run trains" in line and "optim.lr" in line and "data.height 32 -> 48" in line
    assert not (run / "config_history.yaml").exists()
    assert train_main(["--resume", str(run), "--allow-changes", "optim.lr=0.01", "optim.epochs=2"]) == 0
    import yaml
    history = yaml.safe_load((run / "config_history.yaml").read_text())
    assert history[0]["from_epoch"] == 2
    assert history[0]["changes"]["optim.lr"] == {"from": 0.001, "to": 0.01}
    assert history[0]["changes"]["optim.epochs"] == {"from": 1, "to": 2}


# -- 4. disk space and unwritable folders, before the first epoch ------------------------------

def test_a_full_disk_is_found_before_training(tmp_path, data_root, capsys, monkeypatch):
    usage = run_folder.shutil.disk_usage(tmp_path)
    monkeypatch.setattr(run_folder.shutil, "disk_usage", lambda p: usage._replace(free=1024))
    out = tmp_path / "run"
    assert train_main(_args(out, data_root)) == 2
    line = _one_line_error(capsys)
    assert "not enough disk space" in line and str(out) in line and "KiB free" in line
    assert not (out / "log.csv").exists()


def test_a_disk_that_fills_during_the_run_keeps_the_last_checkpoint(tmp_path, data_root, capsys, monkeypatch):
    """The disk fills after the first epoch's checkpoint: the second epoch's write is refused with
    the folder and the sizes, and the first epoch's last.pt is intact."""
    usage = run_folder.shutil.disk_usage(tmp_path)
    out = tmp_path / "run"
    real = run_folder.check_free_space

    def filling(folder, needed, what):
        if (out / "last.pt").is_file():
            monkeypatch.setattr(run_folder.shutil, "disk_usage", lambda p: usage._replace(free=1024))
        return real(folder, needed, what)

    from sharpattn.reid.engine import state
    monkeypatch.setattr(state, "check_free_space", filling)
    assert train_main(_args(out, data_root, "optim.epochs=2")) == 2
    line = _one_line_error(capsys)
    assert "not enough disk space" in line and ("best.pt" in line or "last.pt" in line)
    assert torch.load(out / "last.pt", weights_only=True)["epoch"] == 1


def test_a_write_that_hits_a_full_disk_says_so(tmp_path, data_root, capsys, monkeypatch):
    from sharpattn.reid.engine import state

    def full(obj, path):  # what torch.save raises when the disk fills mid-write
        raise RuntimeError("[enforce fail at inline_container.cc:671] . unexpected pos 4096 vs 3968")

    monkeypatch.setattr(state, "save_checkpoint", full)
    assert train_main(_args(tmp_path / "run", data_root)) == 2
    line = _one_line_error(capsys)
    assert "the disk is full" in line and "best.pt" in line


def test_an_unwritable_output_is_one_line_at_start(finished, tmp_path, data_root, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    assert train_main(_args(blocker / "run", data_root)) == 2
    assert "cannot write into" in _one_line_error(capsys)
    assert eval_main([str(finished / "best.pt"), "-o", str(blocker / "eval"), f"data.root={data_root}"]) == 2
    assert "cannot write into" in _one_line_error(capsys)


# -- 5. values that trained nonsense or ended in a traceback -----------------------------------

@pytest.mark.parametrize("override, key", [
    ("train.seed=-1", "train.seed"), ("data.workers=-1", "data.workers"),
    ("optim.weight_decay=-1", "optim.weight_decay"), ("optim.lr=nan", "optim.lr"),
    ("model.embedding_dim=0", "model.embedding_dim"), ("model.embedding_dim=-5", "model.embedding_dim"),
    ("data.num_identities=99", "data.num_identities"), ("train.device=gpu", "train.device"),
])
def test_a_bad_value_is_one_line_naming_its_key(override, key, tmp_path, data_root, capsys):
    assert train_main(_args(tmp_path / "run", data_root, override)) == 2
    assert f"'{key}'" in _one_line_error(capsys)


@pytest.mark.skipif(torch.cuda.is_available(), reason="the machine has a GPU")
def test_a_gpu_asked_for_on_a_machine_without_one(tmp_path, data_root, capsys):
    assert train_main(_args(tmp_path / "run", data_root, "train.device=cuda")) == 2
    line = _one_line_error(capsys)
    assert "'train.device'" in line and "no GPU" in line


class _Payload:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_a_malicious_weights_file_is_refused_in_one_line(tmp_path, data_root, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    evil = tmp_path / "weights.pth"
    evil.write_bytes(pickle.dumps(_Payload(), protocol=2))
    assert train_main(_args(tmp_path / "run", data_root, f"model.weights={evil}", "model.blocks=[]")) == 2
    line = _one_line_error(capsys)
    assert "model.weights" in line and str(evil) in line
    assert not (tmp_path / "pwned").exists()


def test_divergence_names_the_epoch_and_step(tmp_path, data_root, capsys):
    assert train_main(_args(tmp_path / "run", data_root, "optim.lr=1e30", "optim.grad_clip=null")) == 2
    line = _one_line_error(capsys)
    assert "training diverged at epoch 1, step" in line and "optim.lr" in line


def test_more_images_per_identity_than_most_have_is_a_warning():
    import types

    from sharpattn.reid.config import DataConfig, ConfigError
    from sharpattn.reid.config_checks import check_dataset_fits
    train = [(f"{pid}_{i}.jpg", pid, 0) for pid in range(6) for i in range(2)]
    dataset = types.SimpleNamespace(name="tiny", num_train_pids=6, train=train)
    said = []
    check_dataset_fits(DataConfig(num_identities=4, num_instances=50), dataset, said.append)
    assert len(said) == 1 and "data.num_instances=50" in said[0] and "have 2 or fewer" in said[0]
    said.clear()
    check_dataset_fits(DataConfig(num_identities=4, num_instances=2), dataset, said.append)
    assert said == []
    with pytest.raises(ConfigError, match="6 training identities"):
        check_dataset_fits(DataConfig(num_identities=7, num_instances=2), dataset, said.append)


def test_weights_that_turned_non_finite_are_named_before_the_evaluation(finished, tmp_path, capsys):
    """Batch-norm running statistics can overflow while the training loss (batch statistics)
    stays finite: the evaluation would then end in 'distmat contains NaN'."""
    run = tmp_path / "run"
    run.mkdir()
    for name, data in _snapshot(finished).items():
        (run / name).write_bytes(data)
    ckpt = torch.load(run / "last.pt", weights_only=True)
    key = next(k for k in ckpt["model"] if k.endswith("running_var"))
    ckpt["model"][key].fill_(float("inf"))
    torch.save(ckpt, run / "last.pt")
    assert train_main(["--resume", str(run), "optim.epochs=2"]) == 2
    line = _one_line_error(capsys)
    assert "training diverged by the end of epoch 2" in line and key in line


def test_resuming_a_finished_run_with_a_reporting_override_changes_no_file(finished, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    for name, data in _snapshot(finished).items():
        (run / name).write_bytes(data)
    before = _snapshot(run)
    assert train_main(["--resume", str(run), "train.progress=false", "data.workers=0"]) == 0
    assert _snapshot(run) == before
