"""Runs of several stages (AAA-Net: classifier, attention assignment, adversarial network).

A config's ``stages`` lists mappings, each a name plus config sections that override the rest of
the config for that stage (``recipe``, ``optim``, ``model``, a recipe's own section ...). Stage i
trains in ``<out_dir>/<i>_<name>`` and starts from the weights stage i-1 ended with (its
``last.pt``, through the recipe's ``start_from``). ``--resume <out_dir>`` skips finished stages
(their folders are left as they are) and continues the first unfinished one where it stopped.
The run's summary.json is the last stage's, with every stage's under ``"stages"``.
"""

from __future__ import annotations

from pathlib import Path

from ..config import config_to_dict
from .checkpoint import load_checkpoint
from .distributed import is_main_process

__all__ = ["STAGED_CONFIG", "is_staged_run", "stage_dirs", "train_stages"]

#: the whole config of a run of several stages, in its folder
STAGED_CONFIG = "stages.yaml"


def is_staged_run(path):
    """True for the folder of a run of several stages."""
    return Path(path).is_dir() and (Path(path) / STAGED_CONFIG).is_file()


def stage_dirs(cfg, out_dir):
    """``[(stage config, folder)]`` in order."""
    return [(stage_cfg, Path(out_dir) / f"{i + 1}_{stage_cfg.stage_name}")
            for i, stage_cfg in enumerate(cfg.stage_configs())]


def train_stages(cfg, out_dir, resume=None, log=print, **kwargs):
    """Train every stage in turn; returns ``{"stages": [summary, ...], **last summary}``.

    ``resume``: the run folder (or any stage folder's ``last.pt`` inside it). ``stop_at``:
    ``(stage, epoch, step)``, stage counted from 1: stop there as if interrupted (tests).
    """
    stop_at = kwargs.pop("stop_at", None)
    if resume is not None:
        resume_root = Path(resume)
        resume_root = resume_root.parent.parent if resume_root.is_file() else resume_root
        if resume_root.resolve() != Path(out_dir).resolve():
            out_dir = resume_root
    root = Path(out_dir)
    root.mkdir(parents=True, exist_ok=True)
    if is_main_process() and not (root / STAGED_CONFIG).exists():  # what --resume <run> reads back
        import yaml
        with open(root / STAGED_CONFIG, "w") as f:
            yaml.safe_dump(config_to_dict(cfg), f, sort_keys=False)
    summaries, previous = [], None
    for stage_cfg, folder in stage_dirs(cfg, out_dir):
        from .trainer import Trainer
        last = folder / "last.pt"
        started = resume is not None and last.is_file()
        log(f"== stage {len(summaries) + 1}/{len(cfg.stages)}: {stage_cfg.stage_name} -> {folder}")
        stop = tuple(stop_at[1:]) if stop_at is not None and stop_at[0] == len(summaries) + 1 else None
        trainer = Trainer(stage_cfg, folder, resume=last if started else None, log=log, stop_at=stop,
                          init_from=None if started else previous, **kwargs)
        summaries.append(trainer.fit())
        previous = load_checkpoint(last)
    summary = {**summaries[-1], "name": cfg.name, "stages": summaries, "out_dir": str(out_dir)}
    if summaries[-1].get("metrics") is not None:  # the main process: the run's result, in its folder
        import json
        (root / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary
