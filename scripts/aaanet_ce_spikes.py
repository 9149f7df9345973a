"""Where do an AAA-Net classifier's cross-entropy spikes come from? A diagnostic.

Scores one checkpoint on the same random P x K training batches (augmented as in training, no
gradient, nothing updated) with dropout on or off and the batch norms on their running or on the
batch's statistics, then with batch statistics in one conv module at a time. The numbers in
docs/aaanet.md ("The demo's numbers") come from, per seed k:

    .venv/bin/python scripts/aaanet_ce_spikes.py runs/demo-seeds/ft_demo_aaanet/seed<k>/1_classifier/last.pt
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
import torch.nn.functional as F

from sharpattn.reid.data import build_dataset
from sharpattn.reid.data.transforms import build_train_transform
from sharpattn.reid.datasets.image_dataset import read_image
from sharpattn.reid.deploy import load_inference_model

MODULES = ("bn1", "layer1", "layer2", "layer3", "layer4")


def pk_batches(dataset, cfg, count, seed=0):
    """``count`` batches of P identities x K images, labelled as the classifier's classes."""
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    tf = build_train_transform(cfg.data.height, cfg.data.width)
    by_id = {}
    for path, pid, _ in dataset.train:
        by_id.setdefault(pid, []).append(path)
    label = {pid: i for i, pid in enumerate(sorted(by_id))}
    p, k = cfg.data.num_identities, cfg.data.num_instances
    out = []
    for _ in range(count):
        items = [(path, label[pid]) for pid in rng.choice(sorted(by_id), p, replace=False)
                 for path in rng.choice(by_id[pid], k, replace=len(by_id[pid]) < k)]
        out.append((torch.stack([tf(read_image(x)) for x, _ in items]), torch.tensor([y for _, y in items])))
    return out


def cross_entropies(model, batches, dropout, batch_stats_in):
    """CE per batch; batch norms whose name starts with one of ``batch_stats_in`` normalise with
    the batch's statistics (momentum 0: their running statistics stay as they are)."""
    model.eval()
    model.dropout.train(dropout)
    saved = {}
    for name, m in model.named_modules():
        if isinstance(m, torch.nn.BatchNorm2d) and name.startswith(batch_stats_in):
            saved[m] = m.momentum
            m.train()
            m.momentum = 0.0
    with torch.no_grad():
        ce = [F.cross_entropy(model.classify(model.rest(model.middle(x))), y).item() for x, y in batches]
    for m, momentum in saved.items():
        m.momentum = momentum
    model.eval()
    return np.array(ce)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("checkpoint", help="an AAA-Net stage's last.pt (its config names the data)")
    p.add_argument("--batches", type=int, default=30)
    p.add_argument("--spike", type=float, default=4.0, help="a batch's CE above this counts as a spike")
    args = p.parse_args()
    model, cfg, _ = load_inference_model(args.checkpoint)
    batches = pk_batches(build_dataset(cfg.data), cfg, args.batches)

    def line(what, ce):
        print(f"| {what} | {np.median(ce):.2f} | {ce.max():.2f} | {100 * np.mean(ce > args.spike):.0f} % |")

    print(f"{args.checkpoint}: {args.batches} batches of {cfg.data.num_identities} x {cfg.data.num_instances}; "
          f"chance is ln({model.num_classes}) = {np.log(model.num_classes):.2f}\n")
    print(f"| setting | CE median | CE max | batches with CE > {args.spike:g} |\n|---|---|---|---|")
    for dropout in (False, True):
        for stats in (False, True):
            line(f"dropout {'on' if dropout else 'off'}, {'batch' if stats else 'running'} statistics",
                 cross_entropies(model, batches, dropout, MODULES if stats else ()))
    for module in MODULES:
        line(f"dropout off, batch statistics only in {module}", cross_entropies(model, batches, False, (module,)))


if __name__ == "__main__":
    main()
