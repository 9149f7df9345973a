"""The models the engine can build, and the SAN hooks it calls on them.

The engine knows a model only through a name in :data:`MODELS` and four functions of the
``sharpattn`` package: ``set_temperature`` (tau of every SharpMask), ``tv_penalty`` (the
blocks' TV of the last forward), ``recording_masks`` (the masks of a forward, for pictures) and
``TemperatureSchedule``. Any ``nn.Module`` mapping images ``(N, 3, H, W)`` to embeddings
``(N, D)`` can be registered with :func:`register_model`; without sharp attention blocks its TV
penalty is zero and it has no masks.
"""

from __future__ import annotations

import contextlib

import torch

__all__ = ["MODELS", "build_model", "model_spec", "recording_masks", "register_model",
           "set_temperature", "tv_penalty"]


def _san_resnet50(**kwargs):
    try:
        from sharpattn.models import san_resnet50
    except ImportError as e:
        raise ImportError(f"model.arch san_resnet50 needs sharpattn.models, which failed to import: {e}") from e
    kwargs["blocks"] = tuple(kwargs["blocks"])
    kwargs["context"] = tuple(kwargs["context"])
    return san_resnet50(**kwargs)


#: arch name -> callable(**model kwargs) -> nn.Module. The kwargs are the ``model`` config
#: section without ``arch``: blocks, context, residual, tv, mask, embedding_dim, weights.
MODELS = {"san_resnet50": _san_resnet50}


def register_model(name, builder):
    """Make ``model.arch = name`` build ``builder(**model_kwargs)``."""
    MODELS[name] = builder
    return builder


def model_spec(model_cfg):
    """``{"arch": ..., "kwargs": {...}}`` from the config's ``model`` section (plain values)."""
    kwargs = {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(model_cfg).items() if k != "arch"}
    return {"arch": model_cfg.arch, "kwargs": kwargs}


def build_model(spec):
    arch = spec["arch"]
    if arch not in MODELS:
        raise ValueError(f"unknown model.arch {arch!r}; registered: {', '.join(sorted(MODELS))}")
    return MODELS[arch](**dict(spec["kwargs"]))


def _api(name):
    import sharpattn
    return getattr(sharpattn, name, None)


def set_temperature(model, tau):
    fn = _api("set_temperature")
    if fn is not None:
        fn(model, tau)


def tv_penalty(model):
    fn = _api("tv_penalty")
    if fn is None:
        p = next(iter(model.parameters()), None)
        return torch.zeros((), device=p.device if p is not None else "cpu")
    return fn(model)


def recording_masks(model):
    fn = _api("recording_masks")
    if fn is None:
        return contextlib.nullcontext({})
    return fn(model)
