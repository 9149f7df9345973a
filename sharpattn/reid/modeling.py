"""The models the training package can build: a name in :data:`MODELS` and its keyword arguments.

A model is rebuilt from its *spec*, ``{"arch": name, "kwargs": {...}}``, which checkpoints store:
the architecture only. The file a run was initialised from (``model.weights``) is a training
input, loaded once by :func:`initialise_from` when a run starts fresh, recorded in the run's
config for provenance, and never needed to rebuild a trained model. Any ``nn.Module`` mapping
images ``(N, 3, H, W)`` to embeddings ``(N, D)`` can be registered with :func:`register_model`.
The SAN recipe calls the model-wide helpers of ``sharpattn`` it needs (``set_temperature``,
``tv_penalty``); the loop's diagnostics and the report's pictures call ``recording_masks`` /
``recording_gradients``, which record nothing on a model without sharp attention blocks.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["INIT_KEYS", "MODELS", "build_model", "initialise_from", "model_spec", "register_model"]

#: model config keys that say how a run starts, not what the model is: never in a spec (the
#: checkpoints written before this rule carry them; :func:`build_model` ignores them there)
INIT_KEYS = ("weights",)


def _san_resnet50(**kwargs):
    from sharpattn.models import san_resnet50

    kwargs["blocks"] = tuple(kwargs["blocks"])
    kwargs["context"] = tuple(kwargs["context"])
    return san_resnet50(**kwargs)


def _aaanet_resnet50(**kwargs):
    from sharpattn.models import AAANetResNet50

    kwargs["grid"] = tuple(kwargs["grid"])
    return AAANetResNet50(**kwargs)


#: arch name -> callable(**model kwargs) -> nn.Module. For san_resnet50 the kwargs are the
#: ``model`` config section without ``arch`` and :data:`INIT_KEYS` (blocks, context, residual, tv,
#: mask, embedding_dim); other recipes build theirs (recipes/aaanet.py: num_classes, occlusion_after, ...).
MODELS = {"san_resnet50": _san_resnet50, "aaanet_resnet50": _aaanet_resnet50}


def register_model(name, builder):
    """Make ``model.arch = name`` build ``builder(**model_kwargs)``."""
    MODELS[name] = builder
    return builder


#: Model options passed to the builder only when set: models registered before they existed
#: (and checkpoints written before) keep working unchanged.
OPTIONAL_KWARGS = {"range_eps": None, "logit_floor": None, "detach_range": False}


def model_spec(model_cfg):
    """``{"arch": ..., "kwargs": {...}}`` from the config's ``model`` section (plain values): the
    architecture, without the initial weights."""
    kwargs = {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(model_cfg).items()
              if k != "arch" and k not in INIT_KEYS and not (k in OPTIONAL_KWARGS and v == OPTIONAL_KWARGS[k])}
    return {"arch": model_cfg.arch, "kwargs": kwargs}


def build_model(spec):
    """The model of ``spec``, freshly initialised; a spec written before :data:`INIT_KEYS` were
    left out still builds, without reading the file it names."""
    arch = spec["arch"]
    if arch not in MODELS:
        raise ValueError(f"unknown model.arch {arch!r}; registered: {', '.join(sorted(MODELS))}")
    kwargs = {k: v for k, v in spec["kwargs"].items() if k not in INIT_KEYS}
    return MODELS[arch](**kwargs)


def initialise_from(model, weights, what=None):
    """Load ``weights`` (torchvision ResNet-50 ImageNet weights, or a sharpattn checkpoint whose
    backbone is used) into the model's backbone; ``what`` names the file in the error when it is
    missing (e.g. "the checkpoint of run 'baseline'")."""
    from sharpattn.models import load_imagenet_weights
    from sharpattn.models.weights import WEIGHTS_HELP

    from .config import ConfigError

    path = Path(weights).expanduser()
    if not path.is_file():
        if what is None:
            looks_like_run = path.name in ("best.pt", "last.pt")
            what = ("an earlier run's checkpoint" if looks_like_run else
                    "torchvision's ResNet-50 ImageNet weights")
        hint = "" if "checkpoint" in what else " " + " ".join(WEIGHTS_HELP.split())
        raise ConfigError(f"model.weights={weights!r}: {what}, to initialise the backbone from, "
                          f"is not there ({path.resolve()} does not exist).{hint}")
    try:
        return load_imagenet_weights(model, path)
    except FileNotFoundError:
        raise
    except Exception as e:  # noqa: BLE001 - a foreign or malicious file: torch.load raises several types
        text = " ".join(str(e).split())
        raise ConfigError(f"model.weights={str(weights)!r}: cannot use {path} to initialise the backbone "
                          f"({text[:300]})") from None
