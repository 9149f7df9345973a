"""SAN on a torchvision ResNet-50 (SAN section IV-B), and the plain ResNet-50 baseline."""

from __future__ import annotations

import os

import torch
from torch import nn

from ..modules.block import SharpAttentionBlock
from ..modules.masks import MASK_KINDS

STAGE_CHANNELS = {1: 256, 2: 512, 3: 1024, 4: 2048}
# The default `context`: a context unit on each of blocks 1-3 that is wrapped (so blocks=()
# alone gives the plain baseline). A context given explicitly must list wrapped blocks only.
DEFAULT_CONTEXT = (1, 2, 3)


def embedding_head(in_features: int = 2048, hidden: int = 1024, out_features: int = 128):
    """FC -> BN -> ReLU -> FC: the 1024-d hidden layer and 128-d embedding of SAN IV-B."""
    head = nn.Sequential(nn.Linear(in_features, hidden), nn.BatchNorm1d(hidden),
                         nn.ReLU(inplace=True), nn.Linear(hidden, out_features))
    for module in head:
        if isinstance(module, nn.Linear):
            nn.init.kaiming_normal_(module.weight, mode="fan_out")
            nn.init.zeros_(module.bias)
    return head


class SANResNet50(nn.Module):
    """ResNet-50 whose listed stages are SharpAttentionBlocks, with an embedding head.

    The backbone keeps torchvision's attribute names (conv1, bn1, layer1..4), so ImageNet
    weights map onto it key for key (a wrapped stage's keys gain ".stage"). forward(images)
    returns embeddings (N, embedding_dim).
    """

    def __init__(self, blocks=(1, 2, 3, 4), context=DEFAULT_CONTEXT, residual: bool = True,
                 tv: bool = True, mask: str = "sharp", embedding_dim: int = 128,
                 hidden_dim: int = 1024, **block_options):
        super().__init__()
        from torchvision.models import resnet50

        if context is DEFAULT_CONTEXT:
            context = tuple(c for c in DEFAULT_CONTEXT if c in blocks)
        blocks, context = _stage_list(blocks, "blocks"), _stage_list(context, "context")
        if not set(context) <= set(blocks):
            raise ValueError(f"san_resnet50: context {context} must be a subset of blocks "
                             f"{blocks} (a context unit belongs to a sharp attention block)")
        if 4 in context:
            raise ValueError("san_resnet50: block 4 is the top of the network; context units "
                             "exist for blocks 1-3 only (SAN III-D)")
        if mask not in MASK_KINDS:
            raise ValueError(f"san_resnet50: mask must be one of {MASK_KINDS}, got {mask!r}")
        backbone = resnet50(weights=None)
        self.conv1, self.bn1, self.relu, self.maxpool = (backbone.conv1, backbone.bn1,
                                                         backbone.relu, backbone.maxpool)
        for index in range(1, 5):
            stage = getattr(backbone, f"layer{index}")
            if index in blocks:
                stage = SharpAttentionBlock(stage, STAGE_CHANNELS[index],
                                            context_unit=index in context, residual=residual,
                                            tv=tv, mask=mask, **block_options)
            setattr(self, f"layer{index}", stage)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.head = embedding_head(2048, hidden_dim, embedding_dim)
        self.blocks, self.context = blocks, context

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """The pooled 2048-d backbone features."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(images))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return torch.flatten(self.avgpool(x), 1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(images))


def _stage_list(stages, name: str) -> tuple[int, ...]:
    stages = tuple(sorted(set(int(s) for s in stages)))
    if any(s not in STAGE_CHANNELS for s in stages):
        raise ValueError(f"san_resnet50: {name} must list ResNet stages among 1, 2, 3, 4, "
                         f"got {stages}")
    return stages


def san_resnet50(blocks=(1, 2, 3, 4), context=DEFAULT_CONTEXT, residual: bool = True, tv: bool = True,
                 mask: str = "sharp", embedding_dim: int = 128,
                 weights: str | os.PathLike | None = None, **block_options) -> SANResNet50:
    """The SAN model of SAN IV-B; `blocks=()` gives the plain ResNet-50 baseline, same head.

    blocks: the stages wrapped as SharpAttentionBlocks; context: those given a context-aware
    unit (1-3 only; by default those of 1-3 that are in blocks); residual: cross-feature interaction (1 + M) * T, else M * T; tv: the blocks
    keep their TV penalty (sharpattn.tv_penalty); mask: "sharp", "soft", "threshold" or "power".
    weights: a local file of torchvision's ImageNet ResNet-50 state_dict (see
    sharpattn.models.load_imagenet_weights); nothing is downloaded. Other keyword arguments
    (tau, train_mode, eval_mode, threshold, power, backend) go to every block.
    """
    model = SANResNet50(blocks, context, residual, tv, mask, embedding_dim, **block_options)
    if weights is not None:
        from .weights import load_imagenet_weights

        load_imagenet_weights(model, weights)
    return model
