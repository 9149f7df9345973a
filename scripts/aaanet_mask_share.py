"""How much of f_r the stage-3 0/1 mask of an AAA-Net checkpoint occludes, over the training images.

    .venv/bin/python scripts/aaanet_mask_share.py runs/demo-seeds/ft_demo_aaanet/seed*/2_assignment/last.pt

Per checkpoint: the mean, smallest and largest share of f_r's positions that ``binary_mask``
zeroes (eval mode, unaugmented training images), i.e. what stage 3 starts from when given a
stage-2 checkpoint. docs/aaanet.md quotes it.
"""

from __future__ import annotations

import argparse

import torch

from sharpattn.reid.data import build_dataset, eval_loader
from sharpattn.reid.deploy import load_inference_model


def occluded_shares(path):
    model, cfg, _ = load_inference_model(path)
    shares = []
    with torch.no_grad():
        for batch in eval_loader(build_dataset(cfg.data).train, cfg, ten_crop=False):
            f_r = model.middle(batch[0])
            mask = model.binary_mask(model.attention(f_r), f_r=f_r)
            shares.append(1 - mask.float().flatten(1).mean(1))
    return torch.cat(shares)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("checkpoints", nargs="+")
    for path in p.parse_args().checkpoints:
        s = occluded_shares(path)
        print(f"{path}: occluded share mean {s.mean():.2f}, min {s.min():.2f}, max {s.max():.2f}")


if __name__ == "__main__":
    main()
