"""The models the engine can build, and the SAN hooks it calls on them.

The engine knows a model only through a name in :data:`MODELS` and the model-wide helpers of
the ``sharpattn`` package: ``set_temperature`` (tau of every SharpMask), ``tv_penalty`` (the
blocks' TV of the last forward), ``recording_masks`` / ``recording_gradients`` (diagnostics and
pictures). Any ``nn.Module`` mapping images ``(N, 3, H, W)`` to embeddings
``(N, D)`` can be registered with :func:`register_model`; without sharp attention blocks its TV
penalty is zero and it has no masks.
"""

from __future__ import annotations

__all__ = ["MODELS", "build_model", "model_spec", "register_model"]


def _san_resnet50(**kwargs):
    from sharpattn.models import san_resnet50

    kwargs["blocks"] = tuple(kwargs["blocks"])
    kwargs["context"] = tuple(kwargs["context"])
    return san_resnet50(**kwargs)


def _aaanet_resnet50(weights=None, **kwargs):
    from sharpattn.models import AAANetResNet50, load_imagenet_weights

    kwargs["grid"] = tuple(kwargs["grid"])
    model = AAANetResNet50(**kwargs)
    if weights:
        load_imagenet_weights(model, weights)
    return model


#: arch name -> callable(**model kwargs) -> nn.Module. For san_resnet50 the kwargs are the
#: ``model`` config section without ``arch`` (blocks, context, residual, tv, mask, embedding_dim,
#: weights); other recipes build theirs (recipes/aaanet.py: num_classes, occlusion_after, ...).
MODELS = {"san_resnet50": _san_resnet50, "aaanet_resnet50": _aaanet_resnet50}


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
