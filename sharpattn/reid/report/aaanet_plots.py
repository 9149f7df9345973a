"""A picture like AAA-Net's Fig. 4: per image, the input, the attention map M_att, the stage-3
0/1 mask over the image (black = occluded) and the hardest grid cell of Algorithm 1."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from ...reference import grid_cells
from ..data.transforms import IMAGENET_MEAN, IMAGENET_STD
from .plots import _pyplot

__all__ = ["plot_aaanet_occlusions"]

@torch.no_grad()
def _maps(model, images, targets):
    """M_att, the 0/1 mask and the hardest cell with its probability, in eval mode; the model's
    modes are restored afterwards."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        f_r = model.middle(images)
        m_att = model.attention(f_r)
        mask = model.binary_mask(m_att, f_r)[:, 0]
        cell, probs = model.hardest_occlusion(f_r, targets)
    finally:
        for m, mode in modes:
            m.training = mode
    return f_r.shape[-2:], m_att.float().cpu(), mask.float().cpu(), cell.cpu(), probs.cpu()


def plot_aaanet_occlusions(model, images, targets, out_path, mean=IMAGENET_MEAN,
                           std=IMAGENET_STD, titles=None):
    """Draw one row per image of a normalised batch ``images`` (N, 3, H, W) with identities
    ``targets`` (N,) for an ``AAANetResNet50``: input; M_att (its own colour scale, with the
    min and max in the title); the image with the 0/1 mask of ``model.binary_mask`` applied
    (occluded positions black, the mask upsampled to the image by nearest neighbour); the image
    with the hardest cell blacked out and the true identity's probability without it. Writes a
    PNG (parent folders made) and returns its path. The model is left as it was.
    """
    plt = _pyplot()
    device = next(iter(model.parameters())).device
    images = images.to(device)
    targets = torch.as_tensor(targets, device=device)
    (h, w), m_att, mask, cell, probs = _maps(model, images, targets)
    n, _, H, W = images.shape
    rgb = (images.detach().cpu().float() * torch.tensor(std).view(1, 3, 1, 1)
           + torch.tensor(mean).view(1, 3, 1, 1)).clamp(0, 1)
    big_mask = F.interpolate(mask[:, None], size=(H, W), mode="nearest")
    gh, gw = model.grid
    rows, cols = grid_cells(h, gh), grid_cells(w, gw)
    # four panels of 1.3 in across; each row as tall as the image's aspect needs, plus titles
    fig, axes = plt.subplots(n, 4, squeeze=False, figsize=(5.2, n * (1.25 * H / W + 0.35) + 0.5))
    for i in range(n):
        a, b = divmod(int(cell[i]), gw)
        (r0, r1), (c0, c1) = rows[a], cols[b]
        hard = rgb[i].clone()
        hard[:, round(r0 * H / h):round(r1 * H / h), round(c0 * W / w):round(c1 * W / w)] = 0
        occluded = 1 - float(mask[i].mean())
        panels = [(rgb[i], titles[i] if titles else f"id {int(targets[i])}"),
                  (m_att[i], f"M_att {float(m_att[i].min()):.2f}..{float(m_att[i].max()):.2f}"),
                  (rgb[i] * big_mask[i], f"mask: {occluded:.0%} occluded"),
                  (hard, f"hardest cell {int(cell[i])}: p={float(probs[i, cell[i]]):.2f}")]
        for ax, (picture, title) in zip(axes[i], panels):
            if picture.dim() == 3:
                ax.imshow(picture.permute(1, 2, 0).numpy())
            else:
                ax.imshow(picture.numpy(), cmap="viridis", interpolation="nearest",
                          aspect=(H / h) / (W / w))
            ax.set_title(title, fontsize=6)
            ax.set_xticks([])
            ax.set_yticks([])
    fig.suptitle(f"AAA-Net: attention, stage-3 mask and hardest cell (f_r {h}x{w}, "
                 f"grid {gh}x{gw}, after conv module {model.occlusion_after})", fontsize=7)
    fig.tight_layout()
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_path, dpi=110)
    plt.close(fig)
    return out_path
