"""Pictures of a training run: the curves, and the attention masks of each block (SAN Fig. 2/6)."""

from __future__ import annotations

from pathlib import Path

import torch

from sharpattn import recording_masks
from ..data.transforms import IMAGENET_MEAN, IMAGENET_STD

__all__ = ["plot_training_curves", "plot_attention_masks"]


def _pyplot():
    import matplotlib
    if matplotlib.get_backend().lower() not in ("agg", "pdf", "svg", "ps", "cairo"):
        try:
            matplotlib.use("Agg", force=True)
        except Exception:  # noqa: BLE001 - keep whatever backend works
            pass
    import matplotlib.pyplot as plt
    return plt


def _save(fig, out_path, tight=True):
    """Write a figure (parent folders made) and release it."""
    if tight:
        fig.tight_layout()
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_path, dpi=90)
    _pyplot().close(fig)
    return out_path


#: loss parts a recipe may record, drawn beside the total
LOSS_PARTS = {"triplet": "triplet", "tv_weighted": "mu * TV", "ce": "cross-entropy",
              "attention": "attention (eq. 1)", "adversarial": "adversarial (eq. 4)"}
#: a training-batch quality in [0, 1], the first one recorded is drawn
BATCH_QUALITY = {"precision": "triplet precision: d(a,n) > d(a,p)", "accuracy": "training accuracy"}


def plot_training_curves(history, out_path, title=None):
    """Loss (triplet, mu * TV, total), triplet precision, lr and tau, rank-1 and mAP per epoch.

    ``history`` is a list of per-epoch dicts as the engine records them (``epoch``, ``loss``,
    ``triplet``, ``tv``, ``precision``, ``lr``, ``tau`` and, on evaluated epochs, ``rank1`` and
    ``mAP``). Returns the path written.
    """
    plt = _pyplot()
    ep = [h["epoch"] + 1 for h in history]
    fig, axes = plt.subplots(1, 4, figsize=(17, 3.6))
    ax = axes[0]
    ax.plot(ep, [h["loss"] for h in history], label="total")
    for key, label in LOSS_PARTS.items():  # the parts the recipe recorded
        if any(h.get(key, 0) for h in history):
            ax.plot(ep, [h.get(key, 0) for h in history], label=label)
    ax.set_title("training loss (epoch mean)")
    ax.set_xlabel("epoch")
    ax.legend()
    ax = axes[1]
    key = next((k for k in BATCH_QUALITY if all(k in h for h in history)), None)
    if key is not None:
        ax.plot(ep, [h[key] for h in history], color="tab:purple")
        ax.set_ylim(0, 1.02)
        ax.set_title(BATCH_QUALITY[key])
    ax.set_xlabel("epoch")
    ax = axes[2]
    ax.plot(ep, [h["lr"] for h in history], color="tab:red", label="lr")
    ax.set_yscale("log")
    ax.set_ylabel("lr")
    ax.set_xlabel("epoch")
    if all("tau" in h for h in history):  # models without sharp masks have no temperature
        ax2 = ax.twinx()
        ax2.plot(ep, [h["tau"] for h in history], color="tab:green", label="tau")
        ax2.set_ylabel("tau")
        ax.set_title("lr (red, log) and tau (green)")
    else:
        ax.set_title("lr (log)")
    ax = axes[3]
    ev = [h for h in history if h.get("rank1") is not None]
    if ev:
        ax.plot([h["epoch"] + 1 for h in ev], [100 * h["rank1"] for h in ev], "o-", label="rank-1")
        ax.plot([h["epoch"] + 1 for h in ev], [100 * h["mAP"] for h in ev], "s-", label="mAP")
        ax.legend()
    ax.set_ylim(0, 100)
    ax.set_title("evaluation (%)")
    ax.set_xlabel("epoch")
    if title:
        fig.suptitle(title)
    return _save(fig, out_path)


def _masks_of(model, images, sampled):
    """Every block's mask for ``images``: eval mode, or with only the SharpMasks sampling as in
    training (batch norm stays in eval, so the two differ by the sampling alone). The global
    random state is restored afterwards."""
    from sharpattn.modules.masks import SharpMask

    was_training = model.training
    model.eval()
    gates = [m for m in model.modules() if isinstance(m, SharpMask)] if sampled else []
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            for g in gates:
                g.train()
            with recording_masks(model) as masks:
                model(images)
    finally:
        for g in gates:
            g.eval()
        model.train(was_training)
    return {k: v.float().cpu() for k, v in masks.items()}


def _varied_channels(m, k):
    """The k channels of one image's mask (C, h, w) with the largest spatial variance."""
    var = m.flatten(1).var(dim=1, unbiased=False) if m.shape[1] * m.shape[2] > 1 else m.flatten(1)[:, 0]
    return torch.argsort(var, descending=True, stable=True)[:k].tolist()


@torch.no_grad()
def plot_attention_masks(model, images, out_path, mean=IMAGENET_MEAN, std=IMAGENET_STD, titles=None,
                         channels=2):
    """Each sharp attention block's masks for a few images, eval beside sampled, as a PNG.

    ``images`` is a normalised batch ``(N, 3, H, W)``. For each image (a column group) and block
    (a row): the fraction of channels attended at each position (M averaged over channels) and
    the ``channels`` individual channels whose eval mask varies most over the plane, each once
    as the deterministic eval mask (p of eq. 3) and once as a mask sampled as in training at the
    current tau. One colour scale, 0..1, with its bar. Returns the path, or ``None`` when the
    model has no sharp attention blocks.
    """
    plt = _pyplot()
    device = next(iter(model.parameters())).device
    images = images.to(device)
    evals = _masks_of(model, images, sampled=False)
    if not evals:
        return None
    samples = _masks_of(model, images, sampled=True)
    names = list(evals)
    n, _, h, w = images.shape
    rgb = (images.detach().cpu().float() * torch.tensor(std).view(1, 3, 1, 1)
           + torch.tensor(mean).view(1, 3, 1, 1)).clamp(0, 1).permute(0, 2, 3, 1).numpy()
    cols = 1 + 2 * (1 + channels)  # input, then (fraction, channels...) x (eval, sampled)
    fig, axes = plt.subplots(n * len(names), cols, squeeze=False,
                             figsize=(1.0 * cols + 1.2, (1.9 if h >= w else 1.0) * n * len(names) + 0.8))
    shown = None
    for i in range(n):
        for b, name in enumerate(names):
            r = i * len(names) + b
            axes[r, 0].imshow(rgb[i])
            if b == 0:
                axes[r, 0].set_title(titles[i] if titles else f"image {i + 1}", fontsize=7)
            axes[r, 0].set_ylabel(f"{name}\n{tuple(evals[name].shape[-2:])}", fontsize=7)
            picks = _varied_channels(evals[name][i], channels)
            panels = [("attended", evals[name][i].mean(0), samples[name][i].mean(0))]
            panels += [(f"ch {c}", evals[name][i, c], samples[name][i, c]) for c in picks]
            col = 0
            for label, ev, sa in panels:
                for kind, m in (("eval", ev), ("sampled", sa)):
                    col += 1
                    shown = axes[r, col].imshow(m.numpy(), cmap="viridis", vmin=0, vmax=1,
                                                interpolation="nearest")
                    axes[r, col].set_title(f"{label} {kind}", fontsize=6)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle("masks M per image and block: eval (deterministic p) beside a training sample\n"
                 "attended: mean of M over channels; ch k: the channels whose eval mask varies most",
                 fontsize=8)
    fig.tight_layout(rect=(0, 0, 0.9, 1))
    fig.colorbar(shown, ax=axes.ravel().tolist(), fraction=0.03, pad=0.02, label="M")
    return _save(fig, out_path, tight=False)
