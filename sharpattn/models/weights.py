"""Loading torchvision's ImageNet ResNet-50 weights from a local file into SAN models."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from ..modules.block import SharpAttentionBlock

WEIGHTS_HELP = (
    "Get the file once on a machine with internet access, e.g.\n"
    "    python -c \"import torch, torchvision; torch.save(torchvision.models.resnet50("
    "weights='IMAGENET1K_V1').state_dict(), 'resnet50-imagenet.pth')\"\n"
    "(torchvision also caches it as ~/.cache/torch/hub/checkpoints/resnet50-0676ba61.pth).")


def backbone_key_map(model: nn.Module) -> dict[str, str]:
    """torchvision key -> model key for every backbone parameter and buffer of the model."""
    wrapped = {name for name, module in model.named_children()
               if isinstance(module, SharpAttentionBlock)}
    mapping = {}
    for key in model.state_dict():
        top, _, rest = key.partition(".")
        if top in wrapped:
            if not rest.startswith("stage."):
                continue  # context unit and gate: new parts
            mapping[f"{top}.{rest[len('stage.'):]}"] = key
        elif top in ("conv1", "bn1", "layer1", "layer2", "layer3", "layer4"):
            mapping[key] = key
    return mapping


def backbone_of_checkpoint(state: dict) -> dict:
    """The backbone of a sharpattn model's state_dict under torchvision's key names: a trained
    baseline (or SAN) can then initialise another model as ImageNet weights would."""
    out = {}
    for key, value in state.items():
        top, _, rest = key.partition(".")
        if top in ("conv1", "bn1"):
            out[key] = value
        elif top in ("layer1", "layer2", "layer3", "layer4"):
            first, _, tail = rest.partition(".")
            if first == "stage":  # a wrapped stage: its backbone part
                out[f"{top}.{tail}"] = value
            elif first.isdigit():  # a plain stage
                out[key] = value
    return out


def load_imagenet_weights(model: nn.Module, path: str | os.PathLike) -> list[str]:
    """Copy torchvision ResNet-50 weights from `path` into the model's backbone, strictly.

    `path` may also be a sharpattn checkpoint (last.pt / best.pt): its backbone is used.

    Every backbone parameter and buffer must be in the file and every tensor of the file must
    land in the backbone, except torchvision's ImageNet classifier (fc.*), which SAN replaces
    by its embedding head. The context units, gates and head keep their fresh initialisation.
    Returns the model keys that were loaded.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"sharpattn: weights file {str(path)!r} not found (torchvision's ResNet-50 "
                                f"ImageNet state_dict, or a sharpattn checkpoint). {WEIGHTS_HELP}")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if isinstance(state, dict) and "format" in state and isinstance(state.get("model"), dict):
        state = backbone_of_checkpoint(state["model"])  # a sharpattn checkpoint (last.pt / best.pt)
    mapping = backbone_key_map(model)
    source = {k: v for k, v in state.items() if not k.startswith("fc.")}
    missing = sorted(set(mapping) - set(source))
    unexpected = sorted(set(source) - set(mapping))
    if missing or unexpected:
        raise ValueError(f"sharpattn: {str(path)!r} is not a torchvision ResNet-50 state_dict: "
                         f"missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
                         f"unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}")
    target = model.state_dict()
    for name, key in mapping.items():
        if source[name].shape != target[key].shape:
            raise ValueError(f"sharpattn: {name} has shape {tuple(source[name].shape)} in "
                             f"{str(path)!r}, the model expects {tuple(target[key].shape)}")
    model.load_state_dict({mapping[name]: source[name] for name in mapping}, strict=False)
    return sorted(mapping.values())
