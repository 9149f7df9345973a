"""Checkpoints: written atomically, read with ``torch.load(weights_only=True)``.

A checkpoint is a dict of tensors and plain Python values only (no pickled classes), so loading
one never runs code from the file:

* ``format``: ``"sharpattn.reid/1"``; ``kind``: ``"train"`` (``last.pt``: everything needed to
  resume) or ``"model"`` (``best.pt``: weights for evaluation);
* ``model_spec``: ``{"arch": ..., "kwargs": {...}}``, how to rebuild the model, checked against
  the config on resume and used by ``sharpattn-eval``;
* ``model``: the state dict; with ``kind == "train"`` also ``optimizer``, ``scaler``,
  ``epoch`` / ``step`` (where to continue: the next epoch and the number of its batches
  already done), ``global_step``, ``rng`` (torch CPU/CUDA, numpy and Python states), ``history``;
* ``config``: the full config as a dict, ``metrics``: the last evaluation.

:func:`save_checkpoint` writes to a temporary file in the same folder, flushes it to disk and
renames it over the target, so a crash leaves either the old or the new file, never half of one.
"""

from __future__ import annotations

import os
import random
import tempfile
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch

__all__ = ["CheckpointError", "FORMAT", "capture_rng", "check_model_spec", "load_checkpoint",
           "restore_rng", "save_checkpoint"]

FORMAT = "sharpattn.reid/1"

REQUIRED_KEYS = ("format", "kind", "model_spec", "model", "config")
"""What every checkpoint holds (``last.pt``, ``kind == "train"``, holds more: see above)."""
KINDS = ("train", "model")


class CheckpointError(RuntimeError):
    """A checkpoint is missing, unreadable, or belongs to another model."""


_PLAIN = (str, int, float, bool, type(None), torch.Tensor)


def _check_plain(obj, where="checkpoint"):
    """Raise TypeError for anything ``torch.load(weights_only=True)`` would refuse."""
    if type(obj) in _PLAIN or isinstance(obj, torch.Tensor):
        return
    if type(obj) in (dict, OrderedDict):
        for k, v in obj.items():
            _check_plain(k, where)
            _check_plain(v, f"{where}[{k!r}]")
        return
    if type(obj) in (list, tuple):
        for i, v in enumerate(obj):
            _check_plain(v, f"{where}[{i}]")
        return
    raise TypeError(f"{where} is a {type(obj).__module__}.{type(obj).__qualname__}: checkpoints hold "
                    f"only tensors and plain Python values, so that they load with weights_only=True")


def save_checkpoint(obj, path):
    """Atomically write ``obj`` (tensors and plain values) to ``path``; returns the path."""
    _check_plain(obj)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    try:  # make the rename itself durable
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass
    return path


def load_checkpoint(path, map_location="cpu", required=REQUIRED_KEYS):
    """Read a checkpoint with ``weights_only=True``; clear errors for missing or foreign files.

    A file without one of ``required`` (by default the keys every checkpoint has: format, kind,
    model_spec, model, config), or with an unknown ``kind``, raises :class:`CheckpointError`
    naming the file and what is missing, before any caller reads those keys.
    """
    path = Path(path)
    if path.is_dir():
        for name in ("last.pt", "best.pt"):
            if (path / name).is_file():
                path = path / name
                break
        else:
            runs = sorted(d.name for d in path.iterdir() if (d / "last.pt").is_file() or (d / "best.pt").is_file())
            if runs:  # e.g. the demo's folder, one run per model
                raise CheckpointError(f"{path} holds {len(runs)} runs ({', '.join(runs)}), not one: name one, "
                                      f"e.g. {path / runs[-1]}")
            raise CheckpointError(f"no checkpoint in {path}: expected last.pt or best.pt there")
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises several types for bad files
        raise CheckpointError(f"cannot read checkpoint {path} (it must be a sharpattn.reid checkpoint, "
                              f"loadable with torch.load(weights_only=True)): {_one_line(e)}") from e
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a sharpattn.reid checkpoint (no format {FORMAT!r}); "
                              f"to evaluate plain weights, build the model and load_state_dict yourself")
    missing = [k for k in required if k not in ckpt]
    if missing:
        raise CheckpointError(f"{path} is an incomplete sharpattn.reid checkpoint: it has no "
                              f"{', '.join(repr(k) for k in missing)} (a checkpoint written by "
                              f"sharpattn-train has {', '.join(REQUIRED_KEYS)})")
    if "kind" in required and ckpt["kind"] not in KINDS:
        raise CheckpointError(f"{path} has kind {ckpt['kind']!r}; a sharpattn.reid checkpoint's kind is "
                              f"{' or '.join(repr(k) for k in KINDS)}")
    if "model_spec" in required and not (isinstance(ckpt["model_spec"], dict)
                                         and isinstance(ckpt["model_spec"].get("arch"), str)):
        raise CheckpointError(f"{path} has no model architecture (its model_spec is not "
                              f"{{'arch': ..., 'kwargs': {{...}}}})")
    ckpt["path"] = str(path)
    return ckpt


def _one_line(e):
    """An exception's message on one line (torch's unpickling errors span several)."""
    text = " ".join(str(e).split())
    return text if len(text) <= 300 else text[:297] + "..."


def check_model_spec(ckpt, spec):
    """Raise :class:`CheckpointError` when ``ckpt`` was written for a different model than ``spec``."""
    have = ckpt.get("model_spec") or {}
    if have == spec:
        return
    diffs = []
    if have.get("arch") != spec.get("arch"):
        diffs.append(f"arch {have.get('arch')!r} vs {spec.get('arch')!r}")
    hk, sk = have.get("kwargs", {}), spec.get("kwargs", {})
    for k in sorted(set(hk) | set(sk)):
        if k == "weights":  # the ImageNet initialisation does not change the architecture
            continue
        if hk.get(k) != sk.get(k):
            diffs.append(f"model.{k} {hk.get(k)!r} vs {sk.get(k)!r}")
    if not diffs:
        return
    raise CheckpointError(f"checkpoint {ckpt.get('path', '')} is from another model: "
                          f"{'; '.join(diffs)} (checkpoint vs config)")


def load_model_state(model, state, path=""):
    """``model.load_state_dict(state)`` with an error that says what does not match."""
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        own = model.state_dict()
        missing = [k for k in own if k not in state]
        unexpected = [k for k in state if k not in own]
        shapes = [k for k in own if k in state and own[k].shape != state[k].shape]
        msg = [f"checkpoint {path} does not fit this model"]
        if missing:
            msg.append(f"{len(missing)} missing keys (e.g. {missing[0]})")
        if unexpected:
            msg.append(f"{len(unexpected)} unexpected keys (e.g. {unexpected[0]})")
        if shapes:
            msg.append(f"{len(shapes)} shape mismatches (e.g. {shapes[0]})")
        raise CheckpointError("; ".join(msg)) from e


def capture_rng():
    """Every global random state the training touches, as tensors and plain values."""
    np_state = np.random.get_state()
    py_state = random.getstate()
    out = {
        "torch": torch.get_rng_state(),
        "numpy": {"name": np_state[0], "keys": torch.from_numpy(np_state[1].astype(np.int64)),
                  "pos": int(np_state[2]), "has_gauss": int(np_state[3]),
                  "cached_gaussian": float(np_state[4])},
        "python": {"version": py_state[0], "state": list(py_state[1]), "gauss": py_state[2]},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        out["cuda"] = torch.cuda.get_rng_state_all()
    return out


def restore_rng(state):
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        cuda = state["cuda"]
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)
