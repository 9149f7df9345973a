"""Where SAN's gradient norm comes from at initialisation, on the synthetic demo's batches.

    .venv/bin/python scripts/san_gradient_anatomy.py [--steps 5] [--seed 0]

For the demo's first ``--steps`` P x K batches it prints, per part of the network, the gradient norm
(mean over the batches) of the demo's baseline, of SAN, and of SAN with no gradient through the
mask (the mask input detached, so only the path through T remains), and the gradient magnitude
that flows through each block's mask (|dL/dX|: p50 / p99 / max). docs/training.md quotes it.
"""

from __future__ import annotations

import argparse
import contextlib

import torch

import sharpattn
from sharpattn.reid.config import load_config
from sharpattn.reid.engine.diagnostics import gradient_statistics
from sharpattn.reid.engine import Trainer
from sharpattn.reid.recipes import compute_loss

PARTS = ("conv1", "layer1", "layer2", "layer3", "layer4", "head")


@contextlib.contextmanager
def wrapped_gates(model, detach=False, ranges=None):
    """Every block's gate sees its mask input detached (no gradient through M) if ``detach``;
    ``ranges[block]`` collects the median plane range (hi - lo) of the mask input X."""
    saved = []
    for name, block in sharpattn.modules.attention_blocks(model):
        gate, forward = block.gate, block.gate.forward

        def detached(t, x=None, _forward=forward, _name=name, **kw):
            x = t if x is None else x
            if ranges is not None:
                flat = x.detach().flatten(-2)
                ranges.setdefault(_name, []).append(float((flat.amax(-1) - flat.amin(-1)).median()))
            return _forward(t, x.detach() if detach else x, **kw)

        gate.forward = detached
        saved.append((gate, forward))
    try:
        yield
    finally:
        for gate, forward in saved:
            gate.forward = forward


def part_norms(model):
    norms = dict.fromkeys(PARTS, 0.0)
    for name, p in model.named_parameters():
        top = name.split(".")[0]
        if p.grad is not None and top in norms:
            norms[top] += float(p.grad.square().sum())
    total = sum(norms.values()) ** 0.5
    return {k: v ** 0.5 for k, v in norms.items()} | {"total": total}


def measure(config, steps, seed, detach=False):
    cfg = load_config(config, [f"train.seed={seed}", "train.progress=false"])
    trainer = Trainer(cfg, "unused")
    trainer._setup()
    model = trainer.raw_model.train()
    sharpattn.set_temperature(model, cfg.tau.tau0)
    loader = trainer._loader(0, 0)
    sums, quantiles, ranges = {}, {}, {}
    for step, (images, pids, _) in enumerate(loader):
        if step == steps:
            break
        model.zero_grad(set_to_none=True)
        with wrapped_gates(model, detach, ranges), sharpattn.recording_gradients(model) as grads:
            loss, _ = compute_loss(model, images, torch.as_tensor(pids), cfg)
            loss.backward()
        for k, v in part_norms(model).items():
            sums[k] = sums.get(k, 0.0) + v / steps
        for block, row in gradient_statistics(grads).items():
            acc = quantiles.setdefault(block, {})
            for k, v in row.items():
                acc[k] = max(acc.get(k, 0.0), v) if k.endswith("max") else acc.get(k, 0.0) + v / steps
    for block, values in ranges.items():
        quantiles[block]["x_range"] = sum(values) / len(values)
    return sums, quantiles


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    runs = {"baseline": measure("synthetic/baseline", args.steps, args.seed),
            "san": measure("synthetic/san", args.steps, args.seed),
            "san, mask input detached": measure("synthetic/san", args.steps, args.seed, detach=True)}
    print(f"gradient norm per part at initialisation (mean over {args.steps} demo batches, seed {args.seed})\n")
    print("| part | " + " | ".join(runs) + " |")
    print("|---|" + "---|" * len(runs))
    for part in PARTS + ("total",):
        print(f"| {part} | " + " | ".join(f"{r[0][part]:.3g}" for r in runs.values()) + " |")
    print("\n|dL/dX| through each block's mask, SAN (p50 / p99: mean over batches; max: over all)\n")
    print("| block | p50 | p99 | max | |dL/dF| p99 at the block output | median plane range of X |")
    print("|---|---|---|---|---|---|")
    for block, row in sorted(runs["san"][1].items()):
        print(f"| {block} | {row['grad_x_p50']:.2g} | {row['grad_x_p99']:.2g} | {row['grad_x_max']:.2g} | "
              f"{row['grad_out_p99']:.2g} | {row['x_range']:.2g} |")


if __name__ == "__main__":
    main()
