"""Model-wide helpers over every SharpAttentionBlock / SharpMask of a model."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

from .block import SharpAttentionBlock
from .masks import SharpMask


def attention_blocks(model: nn.Module) -> Iterator[tuple[str, SharpAttentionBlock]]:
    """(qualified name, block) of every SharpAttentionBlock in the model, in module order."""
    for name, module in model.named_modules():
        if isinstance(module, SharpAttentionBlock):
            yield name, module


def tv_penalty(model: nn.Module) -> torch.Tensor:
    """sum_i TV_i of eq. 8 over the blocks' last training forward (0 when there is none).

    Each TV_i is per element (TVLoss "mean"); the loss is `triplet + mu * tv_penalty(model)`.
    """
    terms = [p for _, block in attention_blocks(model) if (p := block.tv_penalty()) is not None]
    if terms:
        return torch.stack(terms).sum()
    parameter = next(model.parameters(), None)
    return torch.zeros((), device=parameter.device if parameter is not None else None)


def set_temperature(model: nn.Module, tau: float) -> int:
    """Set tau on every SharpMask of the model (no recompile under torch.compile).

    Returns how many masks were set (0 for a model without sharp attention).
    """
    masks = [module for module in model.modules() if isinstance(module, SharpMask)]
    for mask in masks:
        mask.tau = tau
    return len(masks)


@contextlib.contextmanager
def recording_masks(model: nn.Module):
    """Within the `with`, each forward stores every block's mask M (detached, (N, C, H, W)).

        with sharpattn.recording_masks(model) as masks:
            model(images)
        masks["layer1"]  # M of the block named layer1
    """
    with _recording(model, "_mask_sink") as masks:
        yield masks


@contextlib.contextmanager
def recording_gradients(model: nn.Module):
    """Within the `with`, a backward stores each block's incoming gradients (diagnostics).

        with sharpattn.recording_gradients(model) as grads:
            loss_of(model(images)).backward()
        grads["layer1"]["mask_input"]  # dL/dX: the gradient that flows through the mask
        grads["layer1"]["output"]      # dL/dF at the block's output (F = (1 + M) * T)

    `mask_input` is the gradient reaching the mask's input X (the context unit's output, or T
    itself, passed to the gate as a separate view so that the two paths stay apart); it is what
    the mask's derivative (eq. 3-5) produces, before it joins the gradient through T.
    """
    with _recording(model, "_grad_sink") as grads:
        yield grads


@contextlib.contextmanager
def _recording(model: nn.Module, sink_attribute: str):
    """Give every block a shared dict to record into (under its name) for the `with`."""
    sink: dict = {}
    blocks = list(attention_blocks(model))
    for name, block in blocks:
        setattr(block, sink_attribute, sink)
        block._record_key = name
    try:
        yield sink
    finally:
        for _, block in blocks:
            setattr(block, sink_attribute, None)
