import os

import pytest
import torch

from sharpattn.reid.engine.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from sharpattn.reid.engine import Trainer, TrainingInterrupted, train


def _state(path):
    return torch.load(path, weights_only=True)


def _assert_same_state(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_resume_after_interruption_matches_uninterrupted(tiny_config, tmp_path):
    # The tiny model samples a sharp mask (torch RNG) and has batch norm; augmentation is random.
    cfg = tiny_config("optim.epochs=3", "train.eval_every=2")
    full = train(cfg, tmp_path / "full")

    # Interrupted in the middle of epoch 2 (after its 2nd step), resumed with DataLoader workers
    # this time: the augmentation does not depend on the worker processes.
    cfg_b = tiny_config("optim.epochs=3", "train.eval_every=2")
    with pytest.raises(TrainingInterrupted) as info:
        train(cfg_b, tmp_path / "cut", stop_at=(1, 2))
    assert info.value.checkpoint == tmp_path / "cut" / "last.pt"
    cut = _state(tmp_path / "cut" / "last.pt")
    assert (cut["epoch"], cut["step"]) == (1, 2)
    cfg_c = tiny_config("optim.epochs=3", "train.eval_every=2", "data.workers=2")
    resumed = train(cfg_c, tmp_path / "cut", resume=tmp_path / "cut")

    a, b = _state(tmp_path / "full" / "last.pt"), _state(tmp_path / "cut" / "last.pt")
    _assert_same_state(a["model"], b["model"])
    for sa, sb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        for k in sa:
            assert torch.equal(sa[k], sb[k])
    assert a["global_step"] == b["global_step"]
    strip = lambda h: [{k: v for k, v in r.items() if k != "time_s"} for r in h]  # noqa: E731
    assert strip(a["history"]) == strip(b["history"])
    assert full["metrics"]["mAP"] == resumed["metrics"]["mAP"]


def test_resume_at_epoch_boundary_and_finished_run(tiny_config, tmp_path):
    cfg = tiny_config("optim.epochs=2")
    with pytest.raises(TrainingInterrupted):
        train(cfg, tmp_path / "r", stop_at=(0, 1))
    train(tiny_config("optim.epochs=1"), tmp_path / "r", resume=tmp_path / "r" / "last.pt")
    # extend the finished 1-epoch run to 2 epochs
    out = train(tiny_config("optim.epochs=2"), tmp_path / "r", resume=tmp_path / "r")
    assert _state(tmp_path / "r" / "last.pt")["epoch"] == 2
    assert out["metrics"] is not None


def test_checkpoints_load_weights_only_and_hold_no_pickled_objects(tiny_config, tmp_path):
    train(tiny_config("optim.epochs=1"), tmp_path / "r")
    for name in ("last.pt", "best.pt"):
        ckpt = torch.load(tmp_path / "r" / name, weights_only=True)
        assert ckpt["format"] == "sharpattn.reid/1"
        assert ckpt["model_spec"]["arch"] == "tiny"
    assert torch.load(tmp_path / "r" / "best.pt", weights_only=True)["kind"] == "model"
    with pytest.raises(TypeError, match="plain Python values"):
        save_checkpoint({"format": "x", "bad": object()}, tmp_path / "bad.pt")
    assert not (tmp_path / "bad.pt").exists()


def test_atomic_save_keeps_the_old_file_on_failure(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    save_checkpoint({"format": "sharpattn.reid/1", "v": torch.tensor([1])}, path)

    def broken(obj, f, *a, **k):
        f.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint({"format": "sharpattn.reid/1", "v": torch.tensor([2])}, path)
    monkeypatch.undo()
    assert torch.equal(load_checkpoint(path, required=("format",))["v"], torch.tensor([1]))
    assert os.listdir(tmp_path) == ["last.pt"]  # no temporary file left behind


def test_resume_with_another_model_is_refused(tiny_config, tmp_path):
    train(tiny_config("optim.epochs=1"), tmp_path / "r")
    with pytest.raises(CheckpointError, match=r"another model: .*residual True vs False"):
        Trainer(tiny_config("model.residual=false"), tmp_path / "r", resume=tmp_path / "r")
    with pytest.raises(CheckpointError, match="weights only"):
        train(tiny_config("optim.epochs=2"), tmp_path / "r", resume=tmp_path / "r" / "best.pt")
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "nothing.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot read"):
        load_checkpoint(tmp_path / "junk.pt")


def _files(run):
    return {p.relative_to(run): p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()}


def test_resuming_a_finished_run_changes_no_file(tiny_config, tmp_path, capsys):
    run = tmp_path / "done"
    first = train(tiny_config("optim.epochs=1", "train.pictures=true"), run)
    before = _files(run)
    assert any(str(p).startswith("tensorboard") for p in before)
    again = train(tiny_config("optim.epochs=1", "train.pictures=true"), run, resume=run)
    assert _files(run) == before  # report.md, summary.json, log.csv, pictures, TensorBoard: untouched
    assert again == first == __import__("json").loads((run / "summary.json").read_text())
    assert "is finished (1 of 1 epochs done)" in capsys.readouterr().out


def test_summary_and_report_count_epochs_alike(tiny_config, tmp_path):
    run = tmp_path / "r"
    out = train(tiny_config("optim.epochs=2", "train.eval_every=1"), run)
    best = out["best"]["epoch"]
    assert best in (1, 2)  # counted from 1, as log.csv's epoch column
    assert f"at epoch {best} (best.pt)" in (run / "report.md").read_text()


def test_resume_on_a_folder_of_runs_lists_them(tmp_path):
    for name in ("baseline", "san"):
        save_checkpoint({"format": "sharpattn.reid/1"}, tmp_path / "demo" / name / "last.pt")
    with pytest.raises(CheckpointError, match=r"holds 2 runs \(baseline, san\), not one"):
        load_checkpoint(tmp_path / "demo")
