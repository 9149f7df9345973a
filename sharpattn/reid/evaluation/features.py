"""Embedding a test set with a model, averaging multi-crop views."""

from __future__ import annotations

import warnings

import torch
from tqdm import tqdm

from ..datasets.check import SHOWN, UnreadableImageWarning

__all__ = ["extract_features"]


@torch.no_grad()
def extract_features(model, loader, device=None, progress=True, dropped=None):
    """Run ``model`` over a loader of ``(images, pids, camids, ...)`` batches.

    ``images`` is ``(B, C, H, W)``, or ``(B, n_crops, C, H, W)`` from a multi-crop test transform,
    in which case the ``n_crops`` embeddings of each image are averaged. Returns
    ``(features (N, D) on device, pids (N,), camids (N,))``.

    Batches of :func:`sharpattn.reid.data.eval_loader` leave out the images that cannot be read
    and list them as ``batch.dropped`` (``(index, path, reason)``); the result then holds the
    readable images only. Those are appended to ``dropped`` when a list is given, otherwise they
    are named in one :class:`~sharpattn.reid.datasets.UnreadableImageWarning`.
    """
    if device is None:
        device = next(iter(model.parameters()), torch.empty(0)).device
    was_training = model.training
    model.eval()
    feats, pids, camids, lost = [], [], [], []
    try:
        for batch in tqdm(loader, desc="features", disable=not progress, leave=False):
            lost.extend(tuple(d) for d in getattr(batch, "dropped", ()))
            images, pid, camid = batch[0], batch[1], batch[2]
            if images is None:  # no image of the batch could be read
                continue
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
    if dropped is not None:
        dropped.extend(lost)
    elif lost:
        shown = "; ".join(f"{p}: {r}" for _, p, r in lost[:SHOWN])
        more = f"; and {len(lost) - SHOWN} more" if len(lost) > SHOWN else ""
        warnings.warn(f"{len(lost)} image(s) could not be read and have no features: {shown}{more}",
                      UnreadableImageWarning, stacklevel=2)
    if not feats:
        if lost:
            raise OSError(f"none of the {len(lost)} images could be read; the first: {lost[0][1]} ({lost[0][2]})")
        raise ValueError("extract_features: the loader gave no images")
    return torch.cat(feats), torch.cat(pids), torch.cat(camids)
