"""A run's logs as it trains: config.yaml, log.csv, TensorBoard scalars and curves.png.

Only the main process writes. log.csv is rewritten whole after each epoch (atomically), so a
resumed run's file holds every epoch once.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

from ..config import config_to_dict
from ..engine.diagnostics import block_columns

__all__ = ["RunLog"]

#: log.csv columns after the recipe's scalars and statistics
COMMON_TAIL = ("grad_norm", "grad_norm_max", "clip_frac", "time_s", "rank1", "rank5", "mAP", "mINP")


class RunLog:
    """``RunLog(out_dir, cfg, global_step, log)``; ``tb`` is None where TensorBoard is off."""

    def __init__(self, out_dir, cfg, global_step, log=print):
        self.out_dir, self.cfg, self.log = Path(out_dir), cfg, log
        self.out_dir.mkdir(parents=True, exist_ok=True)
        with open(self.out_dir / "config.yaml", "w") as f:
            import yaml
            yaml.safe_dump(config_to_dict(cfg), f, sort_keys=False)
        self.tb = None
        try:
            from torch.utils.tensorboard import SummaryWriter
            self.tb = SummaryWriter(str(self.out_dir / "tensorboard"), purge_step=global_step or None)
        except Exception as e:  # noqa: BLE001 - tensorboard is optional
            log(f"[sharpattn] TensorBoard logging off ({e})")

    def scalars(self, prefix, values, step):
        if self.tb is not None:
            for key, value in values.items():
                self.tb.add_scalar(f"{prefix}/{key}", value, step)

    def blocks(self, mask_stats, grad_stats, step):
        """Per-block mask and gradient statistics of a probed step."""
        if self.tb is None:
            return
        for name in sorted(set(mask_stats) | set(grad_stats)):
            for key, value in {**mask_stats.get(name, {}), **grad_stats.get(name, {})}.items():
                group = "mask" if key.startswith("mask") else "grad"
                self.tb.add_scalar(f"{group}/{name}/{key}", value, step)

    def write_csv(self, history, leading_keys):
        """log.csv: ``epoch``, the recipe's ``leading_keys`` present in any epoch, the common
        columns, then the per-block diagnostics."""
        present = set().union(*(h.keys() for h in history)) if history else set()
        keys = ["epoch"] + [k for k in leading_keys if k in present] + list(COMMON_TAIL) + block_columns(history)
        tmp = self.out_dir / ".log.csv.tmp"
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=keys, extrasaction="ignore")
            w.writeheader()
            for h in history:
                w.writerow({k: (h["epoch"] + 1 if k == "epoch" else h.get(k, "")) for k in keys})
        os.replace(tmp, self.out_dir / "log.csv")

    def plot_curves(self, history):
        from .plots import plot_training_curves
        try:
            plot_training_curves(history, self.out_dir / "curves.png", title=self.cfg.name)
        except Exception as e:  # noqa: BLE001 - a picture must not stop training
            self.log(f"[sharpattn] could not draw curves.png: {e}")

    def flush(self):
        if self.tb is not None:
            self.tb.flush()

    def close(self):
        if self.tb is not None:
            self.tb.close()
