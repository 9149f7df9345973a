"""A toy recipe, written as a newcomer would from docs/training.md "Adding a recipe": one file,
one config section, nothing changed in the loop.

It pulls each identity's embeddings toward their batch mean and pushes the means apart (a
"centroid" loss), and can freeze the model's stem (as a stage that trains only part of a model).
"""

from dataclasses import dataclass, field

import torch

from sharpattn.reid.config import register_section
from sharpattn.reid.recipes import Recipe, register_recipe


@dataclass
class ToyOptions:
    pull: float = 1.0                # weight of the within-identity spread
    push: float = 0.1                # weight of the hinge between identity means
    freeze: list = field(default_factory=list)  # top-level submodules left untrained


register_section("toy", ToyOptions)


@register_recipe
class CentroidRecipe(Recipe):
    name = "toy_centroid"
    stat_keys = ("loss", "spread", "separation")

    def __init__(self, cfg, device, world=1):
        super().__init__(cfg, device, world)
        self.options = cfg.section("toy")

    def trainable_parameters(self, model):
        for name in self.options.freeze:
            getattr(model, name).requires_grad_(False)
        return super().trainable_parameters(model)

    def step(self, model, raw_model, images, pids):
        emb = model(images).float()
        ids = pids.unique()
        means = torch.stack([emb[pids == i].mean(0) for i in ids])
        spread = torch.stack([(emb[pids == i] - m).pow(2).sum(1).mean() for i, m in zip(ids, means)]).mean()
        gaps = torch.cdist(means, means)[~torch.eye(len(ids), dtype=torch.bool, device=emb.device)]
        separation = torch.relu(1.0 - gaps).mean()
        loss = self.options.pull * spread + self.options.push * separation
        return loss, {k: float(v.detach()) for k, v in (("loss", loss), ("spread", spread), ("separation", separation))}

    def epoch_summary(self, rec):
        return f"loss {rec['loss']:.4f} (spread {rec['spread']:.4f}, separation {rec['separation']:.4f})"
