"""A small embedding model with the san_resnet50 interface, for fast engine tests."""

import torch
from torch import nn

import sharpattn
from sharpattn.reid.modeling import register_model


class TinyEmbedNet(nn.Module):
    """conv -> [SharpAttentionBlock over a conv stage] -> conv -> pool -> FC, embeddings (N, D).

    Takes the same keyword arguments as san_resnet50; ``blocks`` non-empty wraps the middle
    stage in a SharpAttentionBlock (with a context unit when ``context`` is non-empty).
    ``batchnorm=False`` gives a model whose gradients do not depend on how the batch is split
    (for comparing DDP with one process).
    """

    def __init__(self, blocks=(), context=(), residual=True, tv=True, mask="sharp", embedding_dim=16,
                 weights=None, batchnorm=True, width=8, **block_options):
        super().__init__()
        norm = (lambda c: nn.BatchNorm2d(c)) if batchnorm else (lambda c: nn.Identity())
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, stride=2, padding=1), norm(width), nn.ReLU())
        stage = nn.Sequential(nn.Conv2d(width, width, 3, padding=1), norm(width), nn.ReLU())
        if blocks:
            stage = sharpattn.SharpAttentionBlock(stage, width, context_unit=bool(context), residual=residual,
                                                  tv=tv, mask=mask, **block_options)
        self.stage = stage
        self.top = nn.Sequential(nn.Conv2d(width, 2 * width, 3, stride=2, padding=1), nn.ReLU(),
                                 nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2 * width, embedding_dim))

    def forward(self, x):
        return self.top(self.stage(self.stem(x)))


register_model("tiny", lambda **kw: TinyEmbedNet(**kw))
# No batch norm and a deterministic ("soft") mask: gradients do not depend on how a batch is split.
register_model("tiny_nobn", lambda **kw: TinyEmbedNet(batchnorm=False, **{**kw, "mask": "soft"}))
