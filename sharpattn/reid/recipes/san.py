"""SAN (SAN IV-B): batch-hard triplet loss plus mu * TV, Adam, Hermans' lr decay, tau of eq. 9.

One step: a P x K batch, embeddings, the batch-hard triplet loss over the batch (gathered from
all processes under DDP) plus ``mu * sharpattn.tv_penalty(model)``. Each epoch sets tau of every
SharpMask from ``tau.*`` (a model without sharp masks logs no tau).
"""

from __future__ import annotations

from sharpattn import set_temperature, tv_penalty

from ..engine.distributed import world_size
from ..engine.schedule import temperature_schedule
from ..losses import all_gather_with_grad, batch_hard_triplet_loss
from .base import Recipe
from .registry import register_recipe

__all__ = ["SANRecipe", "compute_loss"]


def compute_loss(model, images, pids, cfg, raw_model=None):
    """Forward one batch and return ``(loss_to_backprop, stats)``.

    ``loss = triplet + mu * tv``: the batch-hard triplet loss over the embeddings of every
    process (all-gathered; gradients reach this process's own samples) plus the TV penalty of
    this process's forward. Under DDP, which averages gradients over the W processes, the
    triplet term is multiplied by W before backward: every process computes the same triplet
    loss but only its own samples' share of its gradient, so the average of the shares is 1/W
    of the true gradient. The TV term is a per-element mean over the process's batch, so the
    average over processes is the mean over the global batch. ``stats`` holds the unscaled
    values as floats.
    """
    raw_model = model if raw_model is None else raw_model
    emb = model(images).float()
    world = world_size()
    all_emb = all_gather_with_grad(emb)
    all_pids = all_gather_with_grad(pids.to(emb.device)) if world > 1 else pids.to(emb.device)
    triplet, st = batch_hard_triplet_loss(all_emb, all_pids, margin=cfg.loss.margin,
                                          soft_margin=cfg.loss.soft_margin, return_stats=True)
    tv = tv_penalty(raw_model).float() if cfg.model.tv and cfg.loss.mu else emb.new_zeros(())
    loss = triplet * world + cfg.loss.mu * tv
    st["triplet"] = st.pop("loss")
    st["tv"] = float(tv.detach())
    st["tv_weighted"] = cfg.loss.mu * st["tv"]
    st["loss"] = st["triplet"] + st["tv_weighted"]
    return loss, st


@register_recipe
class SANRecipe(Recipe):
    name = "san"
    stat_keys = ("loss", "triplet", "tv", "tv_weighted", "precision", "dist_ap", "dist_an")
    progress_keys = ("loss", "precision")

    def __init__(self, cfg, device, world=1):
        super().__init__(cfg, device, world)
        self.tau_schedule = temperature_schedule(cfg.tau.tau0, cfg.tau.alpha, cfg.tau.tau_min)

    def start_epoch(self, epoch, model, optimizer):
        scalars = super().start_epoch(epoch, model, optimizer)
        tau = float(self.tau_schedule(epoch))
        if set_temperature(model, tau) > 0:  # a model without sharp masks has no temperature
            scalars["tau"] = tau
        return scalars

    def step(self, model, raw_model, images, pids):
        return compute_loss(model, images, pids, self.cfg, raw_model)

    def describe(self):
        m = self.cfg.model
        return f"{m.arch} blocks={m.blocks} context={m.context} residual={m.residual} tv={m.tv}"

    def epoch_summary(self, rec):
        return (f"loss {rec['loss']:.4f} (triplet {rec['triplet']:.4f}, mu*tv {rec['tv_weighted']:.4f}) "
                f"prec {rec['precision']:.2f}")
