"""The training state on disk: ``last.pt`` (everything to resume), ``best.pt`` (weights)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.distributed as dist

from ..config import config_to_dict
from .checkpoint import FORMAT, CheckpointError, capture_rng, load_model_state, restore_rng, save_checkpoint
from .distributed import barrier

__all__ = ["TrainState", "one_based"]


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
            save_checkpoint(state, self.out_dir / "last.pt")
        barrier()
        return self.out_dir / "last.pt"

    def _save_best(self):
        save_checkpoint({"format": FORMAT, "kind": "model", "model_spec": self.spec,
                         "model": self.raw_model.state_dict(), "config": config_to_dict(self.cfg),
                         "metrics": self.last_metrics, "epoch": self.epoch,
                         "initialised_from": self.initialised_from}, self.out_dir / "best.pt")

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
