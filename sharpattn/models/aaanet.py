"""AAA-Net (attention-aware adversarial network) on a torchvision ResNet-50: the baseline
classifier, the attention branch on a middle feature map f_r, and the hardest of the grid-occluded
copies of f_r. The three training stages live in the recipe; the decisions where the paper is
ambiguous (module numbering, M_occ, M_att, the 0/1 mask, retrieval features) are in
docs/aaanet.md.

Module numbering follows ResNet's paper: conv1, conv2_x .. conv5_x are modules 1-5, and
torchvision calls conv2_x .. conv5_x layer1 .. layer4, so "occlusion after module k" means f_r is
the output of layer{k-1} (k = 3, the paper's choice, is layer2: 512 channels at stride 8).
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from .. import functional
from . import aaa_maps

MODULE_CHANNELS = {2: 256, 3: 512, 4: 1024, 5: 2048}
ATTENTION_NORMS = ("sigmoid", "none")
RETRIEVAL = ("pool", "logits")


def true_class_probability(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """softmax(logits)[n, targets[n]] for logits (..., num_classes) and targets (...,)."""
    probs = torch.softmax(logits.float(), dim=-1)
    return probs.gather(-1, targets.long().unsqueeze(-1)).squeeze(-1)


def attention_branch(in_channels: int, hidden: int, layers: int) -> nn.Sequential:
    """`layers` x (3x3 conv, BN, ReLU) then a 1x1 conv to one channel: the "stacked
    convolutional layers" of Fig. 2, at f_r's resolution (padding keeps h x w)."""
    if layers < 1:
        raise ValueError(f"attention_layers must be >= 1, got {layers}")
    parts, channels = [], in_channels
    for _ in range(layers):
        parts += [nn.Conv2d(channels, hidden, 3, padding=1, bias=False), nn.BatchNorm2d(hidden),
                  nn.ReLU(inplace=True)]
        channels = hidden
    parts.append(nn.Conv2d(channels, 1, 1))
    return nn.Sequential(*parts)


class AAANetResNet50(nn.Module):
    """ResNet-50 + dropout + FC over identities (stage 1), with an attention branch on the
    feature map after conv module ``occlusion_after`` (stages 2-3).

    The backbone keeps torchvision's names (conv1, bn1, layer1..4), so
    ``sharpattn.models.load_imagenet_weights`` fills it; the attention branch (``attention_head``)
    and ``classifier`` keep their fresh initialisation.

    Options (the paper's reading first; alternatives in docs/aaanet.md):
      occlusion_after   2..5, the conv module whose output is f_r (Table 3; paper: 3)
      dropout           before the FC (paper: 0.5 Market-1501, 0.6 DukeMTMC-reID)
      grid              cells of the occlusion grid (paper: 4 x 4)
      attention_channels, attention_layers   width and depth of the attention branch
      attention_norm    "sigmoid": M_att in (0, 1); "none": the raw conv output
      occlusion_target  M_occ: "response" (the hardest copy's channel-mean response, in [0, 1])
                        or "keep" (its 0/1 keep mask)
      mask_rule, mask_threshold, mask_fraction, mask_zeros, mask_source   the stage-3 0/1 mask:
                        rule "threshold" (score >= mask_threshold) or "top" (the mask_fraction
                        highest positions); mask_zeros "high" occludes those positions, "low"
                        keeps only them; mask_source "attention" scores with M_att, "response"
                        with f_r's channel-mean response (Table 4 "without fine-tuning":
                        mask_source="response", mask_rule="top", mask_fraction=1/3)
      retrieval         what forward returns: "pool" (the 2048-d pooled features) or "logits"
      copy_chunk        default images per pass of the hardest-copy search (None: all at once)
    """

    def __init__(self, num_classes: int, occlusion_after: int = 3, dropout: float = 0.5,
                 grid=(4, 4), attention_channels: int = 256, attention_layers: int = 2,
                 attention_norm: str = "sigmoid", occlusion_target: str = "response",
                 mask_rule: str = "threshold", mask_threshold: float = 0.5,
                 mask_fraction: float = 1 / 3, mask_zeros: str = "high",
                 mask_source: str = "attention", retrieval: str = "pool",
                 copy_chunk: int | None = None):
        super().__init__()
        from torchvision.models import resnet50

        if occlusion_after not in MODULE_CHANNELS:
            raise ValueError(f"occlusion_after must be a ResNet-50 conv module 2..5 (conv2_x .. "
                             f"conv5_x), got {occlusion_after!r}")
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if not 0 <= dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        grid = (grid, grid) if isinstance(grid, int) else tuple(int(g) for g in grid)
        if len(grid) != 2 or min(grid) < 1:
            raise ValueError(f"grid must be an int or a pair of positive ints, got {grid!r}")
        for name, value, allowed in (("attention_norm", attention_norm, ATTENTION_NORMS),
                                     ("occlusion_target", occlusion_target,
                                      aaa_maps.OCCLUSION_TARGETS),
                                     ("mask_rule", mask_rule, aaa_maps.MASK_RULES),
                                     ("mask_zeros", mask_zeros, aaa_maps.MASK_ZEROS),
                                     ("mask_source", mask_source, ("attention", "response")),
                                     ("retrieval", retrieval, RETRIEVAL)):
            if value not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {value!r}")
        if copy_chunk is not None and copy_chunk < 1:
            raise ValueError(f"copy_chunk must be None or >= 1, got {copy_chunk}")
        if not 0 < mask_fraction <= 1:
            raise ValueError(f"mask_fraction must be in (0, 1], got {mask_fraction}")

        backbone = resnet50(weights=None)
        self.conv1, self.bn1, self.relu, self.maxpool = (backbone.conv1, backbone.bn1,
                                                         backbone.relu, backbone.maxpool)
        self.layer1, self.layer2 = backbone.layer1, backbone.layer2
        self.layer3, self.layer4 = backbone.layer3, backbone.layer4
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(2048, num_classes)
        nn.init.normal_(self.classifier.weight, std=0.001)
        nn.init.zeros_(self.classifier.bias)
        self.attention_head = attention_branch(MODULE_CHANNELS[occlusion_after],
                                               attention_channels, attention_layers)

        self.num_classes, self.occlusion_after, self.grid = num_classes, occlusion_after, grid
        self.attention_norm, self.occlusion_target_kind = attention_norm, occlusion_target
        self.mask_rule, self.mask_threshold, self.mask_fraction = (mask_rule, mask_threshold,
                                                                   mask_fraction)
        self.mask_zeros, self.mask_source, self.retrieval = mask_zeros, mask_source, retrieval
        self.copy_chunk = copy_chunk
        self._base_frozen = False

    # ---------------------------------------------------------------- the network in two parts

    def _stem(self) -> list[nn.Module]:
        return [self.conv1, self.bn1, self.relu, self.maxpool]

    def _middle_modules(self) -> list[nn.Module]:
        """conv1 .. conv{k}_x: the stem and layer1 .. layer{k-1}."""
        return self._stem() + [getattr(self, f"layer{i}") for i in range(1, self.occlusion_after)]

    def _rest_modules(self) -> list[nn.Module]:
        """conv{k+1}_x .. conv5_x: layer{k} .. layer4 (none when k = 5)."""
        return [getattr(self, f"layer{i}") for i in range(self.occlusion_after, 5)]

    def middle(self, images: torch.Tensor) -> torch.Tensor:
        """f_r (N, C_k, h, w): the output of conv module k = ``occlusion_after``."""
        x = images
        for module in self._middle_modules():
            x = module(x)
        return x

    def rest(self, f_r: torch.Tensor) -> torch.Tensor:
        """The pooled features (N, 2048): the modules after k, then global average pooling."""
        x = f_r
        for module in self._rest_modules():
            x = module(x)
        return torch.flatten(self.avgpool(x), 1)

    def classify(self, pooled: torch.Tensor) -> torch.Tensor:
        """Logits (N, num_classes): dropout, then the FC over the training identities."""
        return self.classifier(self.dropout(pooled))

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        return self.classify(self.rest(self.middle(images)))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Retrieval features: the pooled 2048-d features (retrieval="pool"), or the logits."""
        pooled = self.rest(self.middle(images))
        return pooled if self.retrieval == "pool" else self.classify(pooled)

    # ---------------------------------------------------------------- attention (stage 2, 3)

    def attention(self, f_r: torch.Tensor) -> torch.Tensor:
        """M_att (N, h, w) from the attention branch: in (0, 1) with attention_norm="sigmoid",
        the raw conv output with "none"."""
        m = self.attention_head(f_r).squeeze(1)
        return torch.sigmoid(m) if self.attention_norm == "sigmoid" else m

    @torch.no_grad()
    def hardest_occlusion(self, f_r: torch.Tensor, targets: torch.Tensor, chunk: int | None = None):
        """The grid cell whose occlusion leaves the lowest probability of the true identity.

        Returns (cell (N,) long, probs (N, G)): probs[n, g] is the softmax probability of
        targets[n] for the copy of f_r[n] with cell g (row-major) zeroed. The copies are scored
        deterministically (BN with running statistics, no dropout) and change no running
        statistics, so the choice depends neither on the batch nor on `chunk`. After conv5_x
        (k = 5) each copy's pooled features come from grid_occlusion_pool in one read of f_r;
        otherwise the N*G copies go through the rest as one batch, or `chunk` images (chunk*G
        copies) per pass. No gradient.
        """
        if f_r.dim() != 4:
            raise ValueError(f"f_r must be (N, C, h, w), got shape {tuple(f_r.shape)}")
        targets = torch.as_tensor(targets, device=f_r.device)
        if targets.shape != f_r.shape[:1]:
            raise ValueError(f"targets {tuple(targets.shape)} must hold one identity per sample "
                             f"({f_r.shape[0]},)")
        if (targets < 0).any() or (targets >= self.num_classes).any():
            raise ValueError(f"targets must be identities in [0, {self.num_classes})")
        chunk = chunk if chunk is not None else self.copy_chunk
        if chunk is not None and chunk < 1:
            raise ValueError(f"chunk must be None or >= 1, got {chunk}")
        n = f_r.shape[0]
        with self._scoring_mode():
            if self.occlusion_after == 5:
                pooled = functional.grid_occlusion_pool(f_r, self.grid)  # (N, G, 2048)
                probs = true_class_probability(self.classify(pooled),
                                               targets.unsqueeze(1).expand(n, pooled.shape[1]))
            else:
                parts = []
                step = n if chunk is None else chunk
                for start in range(0, n, step):
                    copies = functional.grid_occlusion(f_r[start:start + step], self.grid)
                    m, g = copies.shape[:2]
                    logits = self.classify(self.rest(copies.flatten(0, 1))).view(m, g, -1)
                    del copies
                    parts.append(true_class_probability(
                        logits, targets[start:start + step].unsqueeze(1).expand(m, g)))
                probs = torch.cat(parts)
        return probs.argmin(1), probs

    @contextlib.contextmanager
    def _scoring_mode(self):
        """The rest and the classifier in eval mode for the block, then as they were."""
        modules = self._rest_modules() + [self.avgpool, self.dropout, self.classifier]
        modes = [(m, m.training) for mod in modules for m in mod.modules()]
        for mod in modules:
            mod.eval()
        try:
            yield
        finally:
            for m, mode in modes:
                m.training = mode

    def occlusion_target(self, cell: torch.Tensor, f_r: torch.Tensor) -> torch.Tensor:
        """M_occ (N, h, w), detached: see occlusion_target= in the class docs."""
        return aaa_maps.occlusion_target(cell, f_r, self.grid, self.occlusion_target_kind)

    def binary_mask(self, m_att: torch.Tensor | None, f_r: torch.Tensor | None = None):
        """The stage-3 0/1 mask (N, 1, h, w), detached: multiply f_r by it. Scored by m_att, or
        with mask_source="response" by f_r's channel-mean response (m_att may then be None)."""
        if self.mask_source == "response":
            if f_r is None:
                raise ValueError("mask_source='response' needs f_r: binary_mask(m_att, f_r)")
            score = aaa_maps.response_map(f_r)
        else:
            if m_att is None:
                raise ValueError("mask_source='attention' needs m_att")
            score = m_att
        return aaa_maps.binary_mask(score, self.mask_rule, self.mask_threshold,
                                    self.mask_fraction, self.mask_zeros)

    # ---------------------------------------------------------------- parameter groups

    def attention_parameters(self) -> list[nn.Parameter]:
        """The attention branch: what stage 2 trains."""
        return list(self.attention_head.parameters())

    def base_parameters(self) -> list[nn.Parameter]:
        """Backbone and FC: what stage 2 freezes (everything but the attention branch)."""
        attention = {id(p) for p in self.attention_head.parameters()}
        return [p for p in self.parameters() if id(p) not in attention]

    def freeze_base(self, frozen: bool = True) -> "AAANetResNet50":
        """Stage 2: no gradient for the base, and its BN layers kept in eval mode (running
        statistics are buffers, so requires_grad alone would still let them drift)."""
        for p in self.base_parameters():
            p.requires_grad_(not frozen)
        self._base_frozen = frozen
        return self.train(self.training)

    def train(self, mode: bool = True) -> "AAANetResNet50":
        super().train(mode)
        if self._base_frozen:
            for name, child in self.named_children():
                if name != "attention_head":
                    child.eval()
        return self
