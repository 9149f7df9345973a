"""SharpAttentionBlock: wraps any stage of a network with sharp attention (SAN section III)."""

from __future__ import annotations

import torch
from torch import nn

from .context import ContextAwareUnit
from .losses import reduce_tv
from .masks import MASK_KINDS, make_gate


def infer_channels(stage: nn.Module) -> int | None:
    """Output channels of a stage ending in a convolution or batch norm (e.g. a ResNet layer)."""
    for module in reversed(list(stage.modules())):
        if isinstance(module, nn.BatchNorm2d):
            return module.num_features
        if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
            return module.out_channels
    return None


class SharpAttentionBlock(nn.Module):
    """A stage with sharp attention: T = stage(input), X = CU(T) or T, output (1 + M) * T.

    `stage` is any module producing (N, C, H, W), e.g. torchvision's `resnet50().layer1`.
    `context_unit=True` adds a ContextAwareUnit (it needs C: pass `channels`, or it is read from
    the stage's last convolution or batch norm). `residual=False` gives M * T (no cross-feature
    interaction). `mask` picks the gate: "sharp" (SAN, default), "soft", "threshold", "power"
    (the paper's comparisons; see sharpattn.modules.masks).

    With `tv=True` a forward in training mode also computes, in the same fused pass, the TV
    penalty of A = M * T and keeps it: `block.last_tv` (per sample, (N,)) and
    `block.tv_penalty()` (per element, TVLoss's "mean"). `sharpattn.tv_penalty(model)` sums it
    over every block of a model, for the loss L = L_tri + mu * sum_i TV_i of eq. 8. Evaluation
    computes no TV.
    """

    def __init__(self, stage: nn.Module, channels: int | None = None, context_unit: bool = False,
                 residual: bool = True, tv: bool = True, mask: str = "sharp", *, tau: float = 1.0,
                 train_mode: str = "sample", eval_mode: str = "mean", threshold: float = 0.3,
                 power: float = 2, backend: str | None = None, range_eps: float | None = None,
                 logit_floor: float | None = None, detach_range: bool = False):
        super().__init__()
        if mask not in MASK_KINDS:
            raise ValueError(f"SharpAttentionBlock: mask must be one of {MASK_KINDS}, "
                             f"got {mask!r}")
        if channels is None:
            channels = infer_channels(stage)
            if channels is None and context_unit:
                raise ValueError("SharpAttentionBlock: context_unit=True needs the stage's output "
                                 "channels; pass channels=C")
        self.stage = stage
        self.channels = channels
        self.context = ContextAwareUnit(channels) if context_unit else None
        self.gate = make_gate(mask, tau=tau, train_mode=train_mode, eval_mode=eval_mode,
                              threshold=threshold, power=power, backend=backend, range_eps=range_eps,
                              logit_floor=logit_floor, detach_range=detach_range)
        self.mask_kind = mask
        self.residual = residual
        self.tv = tv
        self.last_tv: torch.Tensor | None = None
        self._tv_shape: torch.Size | None = None
        self._mask_sink: dict | None = None
        self._record_key = ""
        self._grad_sink: dict | None = None

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        t = self.stage(input)
        x = None
        if self.context is not None:
            x = self.context(t)
            if x.dtype != t.dtype:  # autocast may leave the unit's output in another dtype
                x = x.to(t.dtype)
        probe = self._grad_sink is not None and torch.is_grad_enabled()
        if probe and x is None:
            # The mask input as a tensor of its own (same values as t), so that the gradient
            # through the mask arrives separately from the gradient through T.
            x = t.view_as(t)
        want_tv = self.tv and self.training
        out, mask, tv = self.gate(t, x, residual=self.residual,
                                  return_mask=self._mask_sink is not None, return_tv=want_tv)
        self.last_tv = tv
        self._tv_shape = t.shape
        if self._mask_sink is not None:
            self._mask_sink[self._record_key] = mask.detach()
        if probe:
            self._record_gradient(x, "mask_input")
            self._record_gradient(out, "output")
        return out

    def _record_gradient(self, tensor: torch.Tensor, what: str) -> None:
        if not tensor.requires_grad:
            return
        sink, key = self._grad_sink, self._record_key

        def hook(grad):
            sink.setdefault(key, {})[what] = grad.detach()

        tensor.register_hook(hook)

    def tv_penalty(self) -> torch.Tensor | None:
        """The last training forward's TV penalty per element (TVLoss "mean"), or None."""
        if self.last_tv is None:
            return None
        return reduce_tv(self.last_tv, self._tv_shape, "mean")

    def extra_repr(self) -> str:
        return (f"channels={self.channels}, mask={self.mask_kind!r}, residual={self.residual}, "
                f"tv={self.tv}")
