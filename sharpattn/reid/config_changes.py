"""What ``--resume`` with overrides would change in a run, and the run's record of such changes.

A resumed run continues with the config it was trained with. Overrides that only say how long
to train or how to report (:data:`FREE_ON_RESUME`) are allowed; anything else (the lr, the input
size, the model ...) changes what the remaining epochs compute, so it is refused unless the user
says ``--allow-changes``, and then written to ``config_history.yaml`` in the run folder with the
epoch it took effect: config.yaml shows the latest config, the history what came before.
"""

from __future__ import annotations

import time
from pathlib import Path

import yaml

from .config import ConfigError, config_from_dict, config_to_dict

__all__ = ["FREE_ON_RESUME", "HISTORY", "config_changes", "record_changes", "refuse_changes"]

HISTORY = "config_history.yaml"

#: keys a resume may change without --allow-changes: the epoch count, where and how it reports,
#: where the data is (the same data moved), how many threads and workers compute the same thing,
#: and what the run started from (read only when a run starts fresh)
FREE_ON_RESUME = ("optim.epochs", "name", "output_dir", "data.root", "data.workers", "train.progress",
                  "train.pictures", "train.threads", "train.checkpoint_every", "model.weights")


#: free keys that do not change what is computed either: not worth a line of history (so that
#: resuming a finished run with, say, train.progress=false still changes no file)
UNRECORDED = ("name", "output_dir", "data.workers", "train.progress", "train.pictures", "train.threads",
              "model.weights")


def _flatten(d, prefix=""):
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if k == "stages" and not prefix and isinstance(v, list):  # each stage by its name
            for i, stage in enumerate(v):
                name = stage.get("name", i) if isinstance(stage, dict) else i
                out.update(_flatten({kk: vv for kk, vv in (stage.items() if isinstance(stage, dict) else [])
                                     if kk != "name"}, f"stages.{name}."))
        elif isinstance(v, dict):
            out.update(_flatten(v, f"{key}."))
        else:
            out[key] = v
    return out


def _plain(key):
    return key.split(".", 2)[2] if key.startswith("stages.") else key  # stages.<name>.<section>.<key>


def _free(key):
    return _plain(key) in FREE_ON_RESUME


def config_changes(saved, cfg):
    """``[(key, saved value, new value)]`` between a run's saved config (a dict) and ``cfg``;
    keys missing from an older saved config count at their defaults."""
    old = _flatten(config_to_dict(config_from_dict(saved)))
    new = _flatten(config_to_dict(cfg))
    return [(k, old.get(k), new.get(k)) for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]


def refuse_changes(changes, run):
    """Raise :class:`ConfigError` when ``changes`` hold a key outside :data:`FREE_ON_RESUME`."""
    binding = [c for c in changes if not _free(c[0])]
    if binding:
        shown = "; ".join(f"{k} {a!r} -> {b!r}" for k, a, b in binding[:5])
        more = f" and {len(binding) - 5} more" if len(binding) > 5 else ""
        raise ConfigError(f"--resume {run} would change how the run trains: {shown}{more}; drop those overrides "
                          f"to continue it as it was, or add --allow-changes to apply them from here on "
                          f"(recorded in {HISTORY})")


def record_changes(folder, changes, epoch):
    """Append ``changes`` (but :data:`UNRECORDED` keys) to the run folder's history: they take
    effect at ``epoch`` (1-based). Returns the file, or None when nothing was worth recording."""
    changes = [c for c in changes if _plain(c[0]) not in UNRECORDED]
    if not changes:
        return None
    path = Path(folder) / HISTORY
    history = yaml.safe_load(path.read_text()) if path.is_file() else []
    history.append({"from_epoch": epoch, "time": time.strftime("%Y-%m-%d %H:%M:%S"),
                    "changes": {k: {"from": a, "to": b} for k, a, b in changes}})
    path.write_text(yaml.safe_dump(history, sort_keys=False))
    return path
