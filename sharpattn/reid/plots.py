"""Pictures of a training run: the curves, and the attention masks of each block (SAN Fig. 2/6)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .modeling import recording_masks
from .transforms import IMAGENET_MEAN, IMAGENET_STD

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


def _save(fig, out_path):
    """Write a figure (parent folders made) and release it."""
    fig.tight_layout()
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_path, dpi=90)
    _pyplot().close(fig)
    return out_path


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
    ax.plot(ep, [h["triplet"] for h in history], label="triplet")
    if any(h.get("tv_weighted", 0) for h in history):
        ax.plot(ep, [h.get("tv_weighted", 0) for h in history], label="mu * TV")
    ax.set_title("training loss (epoch mean)")
    ax.set_xlabel("epoch")
    ax.legend()
    ax = axes[1]
    ax.plot(ep, [h["precision"] for h in history], color="tab:purple")
    ax.set_ylim(0, 1.02)
    ax.set_title("triplet precision: d(a,n) > d(a,p)")
    ax.set_xlabel("epoch")
    ax = axes[2]
    ax.plot(ep, [h["lr"] for h in history], color="tab:red", label="lr")
    ax.set_yscale("log")
    ax.set_ylabel("lr")
    ax.set_xlabel("epoch")
    ax2 = ax.twinx()
    ax2.plot(ep, [h["tau"] for h in history], color="tab:green", label="tau")
    ax2.set_ylabel("tau")
    ax.set_title("lr (red, log) and tau (green)")
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


@torch.no_grad()
def plot_attention_masks(model, images, out_path, mean=IMAGENET_MEAN, std=IMAGENET_STD, titles=None):
    """Overlay each sharp attention block's mask on the input images and save a PNG.

    ``images`` is a normalised batch ``(N, 3, H, W)``. The model runs once in eval mode inside
    ``sharpattn.recording_masks``; each block's mask ``M`` (N, C, h, w) is averaged over
    channels (the fraction of channels attended at each place, 0..1), upsampled to the image
    and drawn over it. Rows are images, columns the input then the blocks. Returns the path, or
    ``None`` when the model has no sharp attention blocks (nothing to draw).
    """
    plt = _pyplot()
    p = next(iter(model.parameters()))
    was_training = model.training
    model.eval()
    try:
        with recording_masks(model) as masks:
            model(images.to(p.device))
    finally:
        model.train(was_training)
    if not masks:
        return None
    names = list(masks)
    n, _, h, w = images.shape
    mean_t = torch.tensor(mean).view(1, 3, 1, 1)
    std_t = torch.tensor(std).view(1, 3, 1, 1)
    rgb = (images.detach().cpu().float() * std_t + mean_t).clamp(0, 1).permute(0, 2, 3, 1).numpy()
    cols = 1 + len(names)
    cell_w = 1.3 * max(1.0, 2 * w / h)  # person crops are about twice as tall as wide
    fig, axes = plt.subplots(n, cols, figsize=(max(4.5, cell_w * cols), 2.5 * n + 0.4), squeeze=False)
    for j, name in enumerate(names):
        m = masks[name].detach().float().cpu()
        m = m.mean(1, keepdim=True) if m.dim() == 4 else m.unsqueeze(1)
        up = F.interpolate(m, size=(h, w), mode="bilinear", align_corners=False)[:, 0].numpy()
        for i in range(n):
            ax = axes[i, j + 1]
            ax.imshow(rgb[i])
            ax.imshow(up[i], cmap="jet", alpha=0.5, vmin=0, vmax=1)
            if i == 0:
                ax.set_title(f"{name}\nmean {float(m.mean()):.2f}", fontsize=8)
    for i in range(n):
        axes[i, 0].imshow(rgb[i])
        if i == 0:
            axes[i, 0].set_title("input", fontsize=8)
        if titles is not None:
            axes[i, 0].set_ylabel(titles[i], fontsize=7)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle("attention mask per block\n(channel mean: blue 0, red 1)", fontsize=8)
    return _save(fig, out_path)

