"""Runs of one ``sharpattn-train`` invocation that start from each other: ``model.weights: run:NAME``.

``run:NAME`` names the run called NAME trained earlier in the same invocation (a config's
``name``; a stage of a staged run is ``NAME/STAGE``): its ``best.pt``, or for a run of several
stages its last stage's ``best.pt``, wherever its folder ended up. The link is checked before
anything trains and resolved to that file's absolute path when the run starts, so the run's
config.yaml and checkpoints record the file itself.
"""

from __future__ import annotations

from pathlib import Path

from ..config import ConfigError

__all__ = ["RUN_PREFIX", "RunLinks", "linked_run", "unresolved_link_error"]

RUN_PREFIX = "run:"


def linked_run(weights):
    """The run name of a ``run:NAME`` value, else None."""
    if isinstance(weights, str) and weights.startswith(RUN_PREFIX):
        return weights[len(RUN_PREFIX):].strip()
    return None


def _run_names(cfg):
    """The names a run of ``cfg`` can be linked by: its own, and each stage's."""
    return [cfg.name] + [f"{cfg.name}/{s['name']}" for s in cfg.stages if isinstance(s, dict) and "name" in s]


def unresolved_link_error(cfg, earlier=()):
    name = linked_run(cfg.model.weights)
    before = f"; runs before it: {', '.join(earlier)}" if earlier else ""
    return ConfigError(
        f"{cfg.name}: model.weights={cfg.model.weights!r} starts from the run {name!r} of the same "
        f"sharpattn-train command, which does not train it before {cfg.name}{before}: give run {name!r}'s "
        f"config first (--config <its config> --config <this one>) or set model.weights to a checkpoint file")


class RunLinks:
    """The checkpoints of the runs one invocation has trained, by run name."""

    def __init__(self):
        self.checkpoints = {}

    @staticmethod
    def check(cfgs):
        """Raise :class:`ConfigError` before anything trains when a ``run:NAME`` names no earlier run."""
        earlier = []
        for cfg in cfgs:
            name = linked_run(cfg.model.weights)
            if name is not None and name not in earlier:
                raise unresolved_link_error(cfg, earlier)
            earlier += _run_names(cfg)

    def add(self, summary):
        """Record a finished run from its summary (``train``'s return value)."""
        stages = summary.get("stages") or []
        last_dir = stages[-1]["out_dir"] if stages else summary["out_dir"]
        self.checkpoints[summary["name"]] = Path(last_dir).resolve() / "best.pt"
        for stage in stages:
            self.checkpoints[stage["name"]] = Path(stage["out_dir"]).resolve() / "best.pt"

    def resolve(self, cfg):
        """Replace a ``run:NAME`` in ``cfg.model.weights`` by that run's checkpoint path."""
        name = linked_run(cfg.model.weights)
        if name is None:
            return cfg
        if name not in self.checkpoints:
            raise unresolved_link_error(cfg, list(self.checkpoints))
        path = self.checkpoints[name]
        if not path.is_file():
            raise ConfigError(f"{cfg.name}: model.weights={cfg.model.weights!r} is the checkpoint of run {name!r}, "
                              f"{path}, which that run did not write (it evaluated no epoch?)")
        cfg.model.weights = str(path)
        return cfg
