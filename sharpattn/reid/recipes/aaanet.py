"""AAA-Net (paper sections 3 and 4.2): three stages over one model, chained by ``stages``.

* ``classifier`` (3.1): ResNet-50, dropout, FC over the training identities, softmax
  cross-entropy; SGD, lr 1e-3 x0.1 every 2 epochs.
* ``assignment`` (3.2, Algorithm 1): backbone and FC frozen (batch norms too); the attention
  branch learns ``M_att`` from the middle feature map ``f_r`` against the hardest of the 16
  grid-occluded copies (``M_occ``), eq. 1 = eq. 2 + eq. 3; SGD, lr 1e-4 x0.1 every 3 epochs.
* ``adversarial`` (3.3, Algorithm 2): everything trains. ``M_att`` becomes a 0/1 mask, ``f_r``
  times it is classified beside ``f_r``; batches take turns between the original and the
  occluded features for the cross-entropy ("decentralized training"), and eq. 4's
  ``lambda1 * L_r + lambda2 * L_att`` is added for the samples whose true-class probability
  drops by more than ``omega`` under the occlusion.

docs/aaanet.md gives the decisions where the paper is silent and the options for the others.
"""

from __future__ import annotations

import typing
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from sharpattn.models.aaanet import true_class_probability

from ..config import register_section
from ..losses import aaa_adversarial_loss, attention_assignment_loss
from .base import Recipe
from .registry import register_recipe

__all__ = ["AAANetOptions", "AAANetRecipe", "STAGES"]

STAGES = ("classifier", "assignment", "adversarial")


@dataclass
class AAANetOptions:
    stage: str = "classifier"        # classifier, assignment or adversarial (one per entry of stages)
    occlusion_after: int = 3         # f_r after ResNet-50's conv module 2, 3, 4 or 5 (Table 3)
    dropout: float = 0.5             # before the FC (0.5 Market-1501, 0.6 DukeMTMC-reID)
    grid: list = field(default_factory=lambda: [4, 4])
    lambda1: float = 0.3             # eq. 4: weight of the regulariser L_r (eq. 3)
    lambda2: float = 1.7             # eq. 4: weight of L_att (eq. 2)
    omega: float = 0.04              # eq. 4: the probability drop above which eq. 4 applies
    occlusion_chunk: int = 0         # images per pass of the hardest-copy search (0: all at once)
    frozen_bn: bool = False          # the base's batch norms use their running statistics (eval mode)
    gate_dropout: bool = True        # eq. 4's p_bf / p_af with dropout (false: the FC without it)
    # The model's choices where the paper is silent (docs/aaanet.md); null: the model's default.
    mask_source: typing.Optional[str] = None      # stage-3 mask scored by: attention, response (Table 4)
    mask_rule: typing.Optional[str] = None        # threshold or top
    mask_threshold: typing.Optional[float] = None
    mask_fraction: typing.Optional[float] = None  # rule top: the fraction of positions
    mask_zeros: typing.Optional[str] = None       # high: occlude the chosen positions; low: keep only them
    occlusion_target: typing.Optional[str] = None  # M_occ: response or keep
    attention_norm: typing.Optional[str] = None   # sigmoid or none
    attention_channels: typing.Optional[int] = None
    attention_layers: typing.Optional[int] = None
    retrieval: typing.Optional[str] = None        # forward returns: pool or logits


#: the options passed on to AAANetResNet50 when set
MODEL_OPTIONS = ("mask_source", "mask_rule", "mask_threshold", "mask_fraction", "mask_zeros",
                 "occlusion_target", "attention_norm", "attention_channels", "attention_layers", "retrieval")


register_section("aaanet", AAANetOptions)


class StageStep(torch.nn.Module):
    """One training step of the current stage as one forward over the model.

    The steps call the model's parts (``middle``, ``rest``, ``classify``, ``attention``), which a
    DistributedDataParallel around the model would not see; around this module it does, and
    averages the gradients of everything the step computed. Its parameters are the model's.
    """

    def __init__(self, model, recipe):
        super().__init__()
        self.model = model
        self.run_stage = getattr(recipe, f"_{recipe.options.stage}_step")

    def forward(self, images, pids):
        return self.run_stage(self.model, images, pids)


@register_recipe
class AAANetRecipe(Recipe):
    name = "aaanet"
    stat_keys = ("loss", "ce", "attention", "adversarial", "gated", "accuracy")
    progress_keys = ("loss", "accuracy")
    dataset_keys = ("num_classes",)

    def __init__(self, cfg, device, world=1):
        super().__init__(cfg, device, world)
        self.options = cfg.section("aaanet")
        if self.options.stage not in STAGES:
            raise ValueError(f"aaanet.stage must be one of {', '.join(STAGES)}, got {self.options.stage!r}")

    # -- building ----------------------------------------------------------------------------
    def model_spec(self, dataset):
        o = self.cfg.section("aaanet")
        kwargs = {"num_classes": None if dataset is None else dataset.num_train_pids, "occlusion_after": o.occlusion_after,
                  "dropout": o.dropout, "grid": list(o.grid)}
        kwargs.update({k: getattr(o, k) for k in MODEL_OPTIONS if getattr(o, k) is not None})
        return {"arch": "aaanet_resnet50", "kwargs": kwargs}

    def trainable_parameters(self, model):
        # Algorithm 1 trains only the attention branch (the base's batch norms stay in eval mode);
        # no loss reaches the attention branch in stage 1; stage 3 trains everything.
        model.freeze_base(self.options.stage == "assignment")
        for p in model.attention_parameters():
            p.requires_grad_(self.options.stage != "classifier")
        return super().trainable_parameters(model)

    def train_mode(self, model):
        # frozen_bn: for small inputs and batches, where a batch's statistics over the last conv
        # module's few positions swing the logits (docs/aaanet.md, "The demo's numbers"). The
        # attention branch's batch norms, trained from scratch in stage 2, keep training.
        model.train()
        if self.options.frozen_bn:
            for name, module in model.named_modules():
                if isinstance(module, torch.nn.modules.batchnorm._BatchNorm) and not name.startswith("attention_head."):
                    module.eval()

    # -- steps -------------------------------------------------------------------------------
    def step_module(self, raw_model):
        return StageStep(raw_model, self)

    def step(self, model, raw_model, images, pids):
        return model(images, pids)  # StageStep, or DDP around it

    def _stats(self, loss, ce, logits, pids, attention=0.0, adversarial=0.0, gated=0.0):
        accuracy = (logits.argmax(1) == pids).float().mean()
        return {"loss": float(loss.detach()), "ce": float(ce), "attention": float(attention),
                "adversarial": float(adversarial), "gated": float(gated), "accuracy": float(accuracy)}

    def _classifier_step(self, model, images, pids):
        logits = model.logits(images)
        loss = F.cross_entropy(logits.float(), pids)
        return loss, self._stats(loss, loss.detach(), logits, pids)

    def _hardest(self, model, f_r, pids):
        with torch.no_grad():
            cell, _ = model.hardest_occlusion(f_r, pids, chunk=self.options.occlusion_chunk or None)
            return model.occlusion_target(cell, f_r)

    def _assignment_step(self, model, images, pids):
        with torch.no_grad():
            f_r = model.middle(images)
            logits = model.classify(model.rest(f_r))
        m_occ = self._hardest(model, f_r, pids)
        m_att = model.attention(f_r)
        loss = attention_assignment_loss(m_att.float(), m_occ.float()).mean()
        return loss, self._stats(loss, F.cross_entropy(logits.float(), pids), logits, pids, attention=loss.detach())

    def _adversarial_step(self, model, images, pids):
        o = self.options
        f_r = model.middle(images)
        m_att = model.attention(f_r)
        with torch.no_grad():
            mask = model.binary_mask(m_att, f_r=f_r)
        pooled_bf, pooled_af = model.rest(f_r), model.rest(f_r * mask)
        logits_bf, logits_af = model.classify(pooled_bf), model.classify(pooled_af)
        occluded_turn = self.global_step % 2 == 1  # batches alternate: original, occluded, ...
        logits = logits_af if occluded_turn else logits_bf
        ce = F.cross_entropy(logits.float(), pids)
        m_occ = self._hardest(model, f_r.detach(), pids)
        if o.gate_dropout:  # the gate sees the CE's logits: two independent dropout draws
            p_bf, p_af = true_class_probability(logits_bf, pids), true_class_probability(logits_af, pids)
        else:  # the gate sees the occlusion's effect alone: the FC without dropout
            with torch.no_grad():
                p_bf = true_class_probability(model.classifier(pooled_bf), pids)
                p_af = true_class_probability(model.classifier(pooled_af), pids)
        per_sample = aaa_adversarial_loss(m_att.float(), m_occ.float(), p_bf.detach(), p_af.detach(),
                                          lambda1=o.lambda1, lambda2=o.lambda2, omega=o.omega)
        adversarial = per_sample.mean()
        loss = ce + adversarial
        gated = ((p_bf - p_af) > o.omega).float().mean()
        return loss, self._stats(loss, ce.detach(), logits, pids, adversarial=adversarial.detach(), gated=gated)

    def pictures(self, model, dataset, out_dir, log):
        """occlusions.png, like the paper's Fig. 4, once the attention branch has trained: training
        images (their identities are the classifier's), M_att, the 0/1 mask, the hardest cell."""
        if self.options.stage == "classifier":
            return {}
        from ..data.transforms import build_test_transform
        from ..datasets.image_dataset import read_image
        from ..report.aaanet_plots import plot_aaanet_occlusions
        try:
            tf = build_test_transform(self.cfg.data.height, self.cfg.data.width, ten_crop=False)
            count = min(self.cfg.eval.mask_images + 2, len(dataset.train))
            items = [dataset.train[int(i)] for i in torch.linspace(0, len(dataset.train) - 1, count)]
            images = torch.stack([tf(read_image(path)) for path, _, _ in items])
            path = plot_aaanet_occlusions(model, images, [pid for _, pid, _ in items], Path(out_dir) / "occlusions.png",
                                          titles=[f"id {pid} cam {cam + 1}" for _, pid, cam in items])
        except Exception as e:  # noqa: BLE001 - pictures are a report, not the result
            log(f"[sharpattn] could not draw occlusions.png: {e}")
            return {}
        return {"occlusions": str(path)}

    # -- words -------------------------------------------------------------------------------
    def describe(self):
        o = self.options
        return (f"aaanet_resnet50 stage {o.stage}, occlusion after conv module {o.occlusion_after}, "
                f"grid {o.grid[0]}x{o.grid[1]}, dropout {o.dropout}")

    def epoch_summary(self, rec):
        parts = {"classifier": f"ce {rec['ce']:.4f}",
                 "assignment": f"L_adv(eq.1) {rec['attention']:.4f}",
                 "adversarial": f"ce {rec['ce']:.4f}, eq.4 {rec['adversarial']:.4f} on {100 * rec['gated']:.0f}%"}
        return f"loss {rec['loss']:.4f} ({parts[self.options.stage]}) acc {rec['accuracy']:.2f}"
