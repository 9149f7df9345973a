"""What a finished run leaves for people: ranks.png, masks.png, report.md, the metrics table."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..data.transforms import build_test_transform
from ..datasets.image_dataset import read_image
from ..evaluation import evaluate, metrics_table

__all__ = ["format_metrics_table", "write_pictures", "write_report"]


def write_pictures(model, dataset, cfg, device, out_dir, distmat=None, log=print):
    """ranks.png (ranked lists) and masks.png (attention masks; none for a model without blocks)."""
    from .plots import plot_attention_masks
    from .visualize import plot_ranked_lists
    out = {}
    out_dir = Path(out_dir)
    try:
        if distmat is None:
            _, distmat = evaluate(model, dataset, cfg, device, progress=False, ten_crop=False, rerank=False)
        out["ranks"] = plot_ranked_lists(distmat, dataset.query, dataset.gallery, out_dir / "ranks.png",
                                         num_queries=cfg.eval.ranked_queries, seed=cfg.train.seed,
                                         cell=(128, 64), title=f"{cfg.name} on {cfg.data.name}",
                                         distractor_pid=getattr(dataset, "distractor_pid", None))
    except Exception as e:  # noqa: BLE001 - pictures are a report, not the result
        log(f"[sharpattn] could not draw ranks.png: {e}")
    try:
        tf = build_test_transform(cfg.data.height, cfg.data.width, ten_crop=False)
        k = min(cfg.eval.mask_images, len(dataset.query))  # spread over the query list (identities)
        items = [dataset.query[int(i)] for i in np.linspace(0, len(dataset.query) - 1, k)] if k else []
        if items:
            images = torch.stack([tf(read_image(p)) for p, _, _ in items])
            out["masks"] = plot_attention_masks(model, images, out_dir / "masks.png",
                                                titles=[f"id {pid} cam {c + 1}" for _, pid, c in items])
    except Exception as e:  # noqa: BLE001
        log(f"[sharpattn] could not draw masks.png: {e}")
    return out


def format_metrics_table(rows):
    """Markdown table of ``[(name, metrics), ...]``."""
    lines = ["| model | rank-1 | rank-5 | rank-10 | mAP | mINP |", "|---|---|---|---|---|---|"]
    for name, m in rows:
        if not m:
            lines.append(f"| {name} | - | - | - | - | - |")
            continue
        lines.append(f"| {name} | {100 * m['rank1']:.1f} | {100 * m['rank5']:.1f} | {100 * m['rank10']:.1f} | "
                     f"{100 * m['mAP']:.1f} | {100 * m['mINP']:.1f} |")
    return "\n".join(lines)


def write_report(path, cfg, metrics, history, best, elapsed, model_line):
    """report.md: the model, the final evaluation, the best epoch, the last epoch's numbers."""
    lines = [f"# {cfg.name}", "",
             f"Model {model_line}; data `{cfg.data.name}`; {cfg.optim.epochs} epochs in {elapsed / 60:.1f} min.", ""]
    if metrics:
        lines += [f"Final evaluation ({metrics['protocol']}, 10-crop {metrics['ten_crop']}, "
                  f"re-ranking {metrics['rerank']}; {metrics['num_query']} queries, "
                  f"{metrics['num_gallery']} gallery images):", "",
                  format_metrics_table([(cfg.name, metrics)]), ""]
        if metrics.get("by_metric"):  # eval.metrics: fitted on the training split's features
            lines += ["Metrics (XQDA / KISSME fitted on the training split's features):", "",
                      metrics_table(cfg.name, metrics), ""]
    if best.get("epoch", -1) >= 0:
        lines += [f"Best mAP {100 * best['mAP']:.1f} at epoch {best['epoch'] + 1} (best.pt).", ""]
    if history:
        h = history[-1]
        lines += [f"Last epoch: loss {h['loss']:.4f}"
                  + (f", triplet precision {h['precision']:.2f}" if "precision" in h else "")
                  + f", lr {h['lr']:.2e}" + (f", tau {h['tau']:.3f}" if "tau" in h else "") + ".", ""]
    lines += ["Files: `last.pt` (resume), `best.pt` (weights), `log.csv`, `tensorboard/`, `curves.png`, "
              "`ranks.png`, `masks.png`, `config.yaml`, `summary.json`.", ""]
    Path(path).write_text("\n".join(lines))
