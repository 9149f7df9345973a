"""Embedding a test set with a model, averaging multi-crop views."""

from __future__ import annotations

import torch
from tqdm import tqdm

__all__ = ["extract_features"]


@torch.no_grad()
def extract_features(model, loader, device=None, progress=True):
    """Run ``model`` over a loader of ``(images, pids, camids, ...)`` batches.

    ``images`` is ``(B, C, H, W)``, or ``(B, n_crops, C, H, W)`` from a multi-crop test transform,
    in which case the ``n_crops`` embeddings of each image are averaged. Returns
    ``(features (N, D) on device, pids (N,), camids (N,))``.
    """
    if device is None:
        device = next(iter(model.parameters()), torch.empty(0)).device
    was_training = model.training
    model.eval()
    feats, pids, camids = [], [], []
    try:
        for batch in tqdm(loader, desc="features", disable=not progress, leave=False):
            images, pid, camid = batch[0], batch[1], batch[2]
            images = images.to(device, non_blocking=True)
            if images.dim() == 5:
                b, n = images.shape[:2]
                out = model(images.flatten(0, 1))
                out = out.view(b, n, -1).mean(1)
            else:
                out = model(images)
            feats.append(out.float())
            pids.append(torch.as_tensor(pid))
            camids.append(torch.as_tensor(camid))
    finally:
        model.train(was_training)
    return torch.cat(feats), torch.cat(pids), torch.cat(camids)
