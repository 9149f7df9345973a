"""The training state on disk: ``last.pt`` (everything to resume), ``best.pt`` (weights)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.distributed as dist

from ..config import config_to_dict
from .checkpoint import FORMAT, CheckpointError, capture_rng, load_model_state, restore_rng, save_checkpoint
from .distributed import barrier
from .run_folder import DiskSpaceError, check_free_space

__all__ = ["TrainState", "one_based"]


def _tensor_bytes(obj):
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(_tensor_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_tensor_bytes(v) for v in obj)
    return 0


def _save(state, path):
    """save_checkpoint after checking the disk has room for it (the old file stays until the new
    one is complete, so the new one needs its whole size), with a message that says so when a
    full disk stops the write anyway."""
    check_free_space(path.parent, _tensor_bytes(state) + 2**20, path.name)
    try:
        save_checkpoint(state, path)
    except (OSError, RuntimeError) as e:
        full = getattr(e, "errno", None) == 28 or "unexpected pos" in str(e) or "No space left" in str(e)
        if not full:
            raise
        raise DiskSpaceError(f"writing {path} failed: the disk is full ({e.__class__.__name__}); the previous "
                             f"{path.name}, if any, is intact") from None


def one_based(best):
    """The best evaluation with its epoch counted from 1, as in log.csv and report.md."""
    best = dict(best)
    best["epoch"] = best["epoch"] + 1 if best.get("epoch", -1) >= 0 else None
    return best


class TrainState:
    """Checkpoint methods of :class:`~sharpattn.reid.engine.Trainer` (a mixin over its fields)."""

    def _state(self):
        rng = capture_rng()
        rngs = [rng]
        if self.world > 1:
            rngs = [None] * self.world
            dist.all_gather_object(rngs, rng)
        return {
            "format": FORMAT, "kind": "train", "model_spec": self.spec,
            "model": self.raw_model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(), "epoch": self.epoch, "step": self.step,
            "global_step": self.global_step, "world_size": self.world, "rng": rngs,
            "history": self.history, "best": dict(self.best), "metrics": self.last_metrics,
            "config": config_to_dict(self.cfg), "epoch_acc": self._epoch_acc,
            "torch_version": str(torch.__version__), "initialised_from": self.initialised_from,
        }

    def save_last(self):
        state = self._state()  # collective under DDP: every process takes part
        if self.main:
            _save(state, self.out_dir / "last.pt")
        barrier()
        return self.out_dir / "last.pt"

    def _save_best(self):
        _save({"format": FORMAT, "kind": "model", "model_spec": self.spec,
               "model": self.raw_model.state_dict(), "config": config_to_dict(self.cfg),
               "metrics": self.last_metrics, "epoch": self.epoch,
               "initialised_from": self.initialised_from}, self.out_dir / "best.pt")

    def check_room_for_checkpoints(self):
        """Before the first epoch: the folder takes last.pt and best.pt (a run that cannot save
        should fail now, not after its first epoch and evaluation)."""
        model_bytes = sum(t.numel() * t.element_size() for t in self.raw_model.state_dict().values())
        moments = 2 if self.cfg.optim.name == "adam" else 1  # optimiser state per parameter
        params = sum(p.numel() * p.element_size() for p in self.params)
        check_free_space(self.out_dir, 2 * model_bytes + moments * params, "this run's last.pt and best.pt")

    def _load_state(self, ckpt):
        if ckpt.get("kind") != "train":
            raise CheckpointError(f"{ckpt['path']} holds model weights only (best.pt); resume from last.pt")
        load_model_state(self.raw_model, ckpt["model"], ckpt["path"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scaler.load_state_dict(ckpt["scaler"])
        self.epoch, self.step, self.global_step = ckpt["epoch"], ckpt["step"], ckpt["global_step"]
        self.history = list(ckpt["history"])
        self.best = dict(ckpt["best"])
        self.last_metrics = ckpt.get("metrics")
        self._epoch_acc = ckpt.get("epoch_acc")
        rngs = ckpt["rng"]
        if len(rngs) == self.world:
            restore_rng(rngs[self.rank])
        else:
            self.log(f"[sharpattn] checkpoint written by {len(rngs)} processes, resuming with {self.world}: "
                     f"random states are not restored, so the run will not match an uninterrupted one")
        self.log(f"resumed from {ckpt['path']} at epoch {self.epoch + 1}, step {self.step}")

    def finished(self):
        """True when resuming a run that already trained ``optim.epochs`` epochs."""
        ck = self.resume_ckpt
        return ck is not None and ck["epoch"] >= self.cfg.optim.epochs and not ck["step"]

    def _already_finished(self):
        ck = self.resume_ckpt
        self.log(f"{self.cfg.name}: {self.out_dir} is finished ({ck['epoch']} of {self.cfg.optim.epochs} epochs "
                 f"done); nothing to train, no file changed. To train on, ask for more epochs: "
                 f"--resume {self.out_dir} optim.epochs={ck['epoch'] + 10}")
        path = Path(ck["path"]).parent / "summary.json"
        if path.is_file():
            return json.loads(path.read_text())
        return {"name": self.cfg.name, "out_dir": str(self.out_dir), "metrics": ck.get("metrics"),
                "best": one_based(ck["best"]), "epochs": ck["epoch"], "model_spec": self.spec}
