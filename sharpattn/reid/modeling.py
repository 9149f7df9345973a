"""The models the engine can build, and the SAN hooks it calls on them.

The engine knows a model only through a name in :data:`MODELS` and four functions of the
``sharpattn`` package: ``set_temperature`` (tau of every SharpMask), ``tv_penalty`` (the
blocks' TV of the last forward), ``recording_masks`` (the masks of a forward, for pictures) and
``TemperatureSchedule``. Any ``nn.Module`` mapping images ``(N, 3, H, W)`` to embeddings
``(N, D)`` can be registered with :func:`register_model`; without sharp attention blocks its TV
penalty is zero and it has no masks.
"""

from __future__ import annotations

import sharpattn

__all__ = ["MODELS", "build_model", "model_spec", "recording_masks", "recording_gradients",
           "register_model", "set_temperature", "tv_penalty"]


def _san_resnet50(**kwargs):
    from sharpattn.models import san_resnet50

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


#: Model options passed to the builder only when set: models registered before they existed
#: (and checkpoints written before) keep working unchanged.
OPTIONAL_KWARGS = {"range_eps": None, "logit_floor": None, "detach_range": False}


def model_spec(model_cfg):
    """``{"arch": ..., "kwargs": {...}}`` from the config's ``model`` section (plain values)."""
    kwargs = {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(model_cfg).items()
              if k != "arch" and not (k in OPTIONAL_KWARGS and v == OPTIONAL_KWARGS[k])}
    return {"arch": model_cfg.arch, "kwargs": kwargs}


def build_model(spec):
    arch = spec["arch"]
    if arch not in MODELS:
        raise ValueError(f"unknown model.arch {arch!r}; registered: {', '.join(sorted(MODELS))}")
    return MODELS[arch](**dict(spec["kwargs"]))


# The engine's hooks into a model are sharpattn's own model-wide helpers; a model without sharp
# attention blocks has a zero TV penalty, no masks, and nothing for set_temperature to set.
set_temperature = sharpattn.set_temperature
tv_penalty = sharpattn.tv_penalty
recording_masks = sharpattn.recording_masks
recording_gradients = sharpattn.recording_gradients
