"""Train variants of the synthetic demo over several seeds and tabulate mean and spread.

The numbers in docs/training.md ("Why SAN collapsed") come from this script, e.g.:

    .venv/bin/python scripts/san_stability_study.py --out runs/study --seeds 0 1 2 \
        --variants baseline baseline_clip san san_clip

and the demo's models over seeds (the ft ones start from that seed's demo baseline):

    .venv/bin/python scripts/san_stability_study.py --out runs/demo-seeds --seeds 0 1 2 \
        --variants demo_baseline ft_demo_baseline ft_demo_san ft_demo_aaanet \
        --init-from runs/demo-seeds/demo_baseline/seed{seed}/best.pt

Each run is `python -m sharpattn.reid --config ... -o <out>/<variant>/seed<k>` (``--jobs`` runs go
side by side, ``--threads`` torch threads each); finished runs (summary.json present) are not trained again, so
the script can be stopped and restarted. Writes ``<out>/results.md`` and ``<out>/results.json``.
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

# name -> (config, overrides). The ft_* variants start from a trained demo baseline's backbone
# (model.weights=<its best.pt>, given by --init-from) at the paper's lr 2e-4.
VARIANTS = {
    "baseline": ("synthetic/baseline", ["optim.grad_clip=null"]),
    "baseline_clip": ("synthetic/baseline", ["optim.grad_clip=5.0"]),
    "san": ("synthetic/san", ["optim.grad_clip=null"]),
    "san_clip": ("synthetic/san", ["optim.grad_clip=5.0"]),
    "san_detach_range": ("synthetic/san", ["optim.grad_clip=null", "model.detach_range=true"]),
    "san_range_eps": ("synthetic/san", ["optim.grad_clip=null", "model.range_eps=0.01"]),
    "san_logit_floor": ("synthetic/san", ["optim.grad_clip=null", "model.logit_floor=0.01"]),
    "san_clip_detach_range": ("synthetic/san", ["optim.grad_clip=5.0", "model.detach_range=true"]),
    "san_clip_logit_floor": ("synthetic/san", ["optim.grad_clip=5.0", "model.logit_floor=0.01"]),
    "san_soft": ("synthetic/san", ["optim.grad_clip=null", "model.mask=soft"]),
    # sharp attention only where the demo's planes are not tiny (16 x 8, 8 x 4; not 4 x 2, 2 x 1)
    "san_clip_blocks12": ("synthetic/san", ["optim.grad_clip=5.0", "model.blocks=[1,2]", "model.context=[1,2]"]),
    # the paper's regime in miniature: fine-tune from a trained backbone at lr 2e-4 (--init-from)
    "ft_baseline": ("synthetic/baseline", ["optim.grad_clip=null", "optim.lr=2e-4"]),
    "ft_baseline_clip": ("synthetic/baseline", ["optim.grad_clip=5.0", "optim.lr=2e-4"]),
    "ft_san": ("synthetic/san", ["optim.grad_clip=null", "optim.lr=2e-4"]),
    "ft_san_clip": ("synthetic/san", ["optim.grad_clip=5.0", "optim.lr=2e-4"]),
    # the demo's configs as they are (the ft ones and AAA-Net's first stage start from --init-from)
    "demo_baseline": ("synthetic/baseline", []),
    "ft_demo_baseline": ("synthetic/baseline_ft", []),
    "ft_demo_san": ("synthetic/san_ft", []),
    "ft_demo_aaanet": ("synthetic/aaanet", []),
    # the stage-3 mask occludes the top third of M_att's positions, not those above 0.5
    "ft_demo_aaanet_top": ("synthetic/aaanet", ["aaanet.mask_rule=top"]),
    # stage 1 three times as long (60 epochs, lr step at 40): does a converged classifier help?
    "ft_demo_aaanet_long1": ("synthetic/aaanet", [
        "stages=[{name: classifier, aaanet: {stage: classifier}, optim: {lr: 1.0e-3, step_size: 40, epochs: 60}},"
        " {name: assignment, aaanet: {stage: assignment}, optim: {lr: 1.0e-2, step_size: 4, epochs: 8}},"
        " {name: adversarial, aaanet: {stage: adversarial}, optim: {lr: 1.0e-3, step_size: 6, epochs: 12}}]"]),
    # control: stage 3 replaced by more of stage 1 (cross-entropy on original maps only) with
    # stage 3's optimiser and length: what does AAA-Net's stage 3 add to simply training longer?
    "ft_demo_aaanet_ce3": ("synthetic/aaanet", [
        "stages=[{name: classifier, aaanet: {stage: classifier}, optim: {lr: 1.0e-3, step_size: 10, epochs: 20}},"
        " {name: assignment, aaanet: {stage: assignment}, optim: {lr: 1.0e-2, step_size: 4, epochs: 8}},"
        " {name: more_classifier, aaanet: {stage: classifier}, optim: {lr: 1.0e-3, step_size: 6, epochs: 12}}]"]),
    # the base's batch norms on running statistics in every stage (stage 1's CE spikes came from
    # batch statistics over layer4's 2 x 1 positions)
    "ft_demo_aaanet_frozenbn": ("synthetic/aaanet", ["aaanet.frozen_bn=true"]),
    # and stage 1 at 10x the lr (diverged with batch statistics; ~60 steps at 1e-3 leave CE ~1.7)
    "ft_demo_aaanet_frozenbn_lr1": ("synthetic/aaanet", ["aaanet.frozen_bn=true",
        "stages=[{name: classifier, aaanet: {stage: classifier}, optim: {lr: 1.0e-2, step_size: 10, epochs: 20}},"
        " {name: assignment, aaanet: {stage: assignment}, optim: {lr: 1.0e-2, step_size: 4, epochs: 8}},"
        " {name: adversarial, aaanet: {stage: adversarial}, optim: {lr: 1.0e-3, step_size: 6, epochs: 12}}]"]),
    # eq. 4's gate on p_bf / p_af without dropout: with two dropout draws it opened for 4-21 % of
    # the samples of a stage whose mask occluded nothing
    "ft_demo_aaanet_gate": ("synthetic/aaanet", ["aaanet.frozen_bn=true", "aaanet.gate_dropout=false"]),
    # a global gradient-norm clip at 20 (healthy epochs' norms are 10-15; blow-ups reached 191
    # for an epoch's mean with frozen batch norms, and the classifier never recovered)
    "ft_demo_aaanet_clip": ("synthetic/aaanet", ["aaanet.frozen_bn=true", "optim.grad_clip=20.0"]),
    # M_occ is the 0/1 keep mask of the hardest cell instead of the channel-mean response
    "ft_demo_aaanet_keep": ("synthetic/aaanet", ["aaanet.occlusion_target=keep"]),
}


def run_one(variant, seed, out, extra, init_from, threads):
    config, overrides = VARIANTS[variant]
    run_dir = out / variant / f"seed{seed}"
    if (run_dir / "summary.json").exists():
        return run_dir, None
    if (run_dir / "last.pt").exists() or (run_dir / "stages.yaml").exists():
        cmd = [sys.executable, "-m", "sharpattn.reid", "--resume", str(run_dir)]
    else:
        cmd = [sys.executable, "-m", "sharpattn.reid", "--config", config, "-o", str(run_dir),
               *overrides, f"train.seed={seed}", f"train.threads={threads}", "train.progress=false", *extra]
        if variant.startswith("ft_"):
            if init_from is None:
                raise SystemExit(f"{variant} needs --init-from (a trained baseline's best.pt)")
            cmd += [f"model.weights={init_from.format(seed=seed)}"]
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    log = open(run_dir.parent / f"seed{seed}.log", "w")
    return run_dir, subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)


def last_row(run_dir):
    if not (run_dir / "log.csv").exists():  # a run of several stages: its last stage's log
        run_dir = sorted(p for p in run_dir.iterdir() if (p / "log.csv").exists())[-1]
    with open(run_dir / "log.csv") as f:
        rows = list(csv.DictReader(f))
    return rows[-1] if rows else {}


def summarise(out, variants, seeds):
    table, lines = {}, ["| variant | seeds | rank-1 (mean ± sd) | mAP (mean ± sd) | per seed rank-1 / mAP | "
                        "last-epoch grad norm | clip fired |", "|---|---|---|---|---|---|---|"]
    for v in variants:
        r1, mp, per, gn, cf = [], [], [], [], []
        for s in seeds:
            f = out / v / f"seed{s}" / "summary.json"
            if not f.exists():
                continue
            m = json.loads(f.read_text())["metrics"]
            r1.append(100 * m["rank1"])
            mp.append(100 * m["mAP"])
            per.append(f"{r1[-1]:.1f} / {mp[-1]:.1f}")
            row = last_row(out / v / f"seed{s}")
            gn.append(float(row.get("grad_norm", "nan") or "nan"))
            cf.append(float(row.get("clip_frac", "nan") or "nan"))
        if not r1:
            continue
        sd = (lambda xs: statistics.stdev(xs) if len(xs) > 1 else 0.0)
        table[v] = {"rank1": r1, "mAP": mp, "grad_norm": gn, "clip_frac": cf}
        lines.append(f"| {v} | {len(r1)} | {statistics.mean(r1):.1f} ± {sd(r1):.1f} | "
                     f"{statistics.mean(mp):.1f} ± {sd(mp):.1f} | {'; '.join(per)} | "
                     f"{statistics.mean(gn):.3g} | {100 * statistics.mean(cf):.0f}% |")
    (out / "results.md").write_text("\n".join(lines) + "\n")
    (out / "results.json").write_text(json.dumps(table, indent=1))
    return "\n".join(lines)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, default=Path("runs/study"))
    p.add_argument("--variants", nargs="+", default=["baseline", "baseline_clip", "san", "san_clip"],
                   choices=sorted(VARIANTS))
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--jobs", type=int, default=1, help="runs side by side")
    p.add_argument("--threads", type=int, default=0,
                   help="torch threads per run (0: torch's default, as sharpattn-train uses; CPU results "
                        "depend on it in the last bits, so seed 0 reproduces the main job only with 0)")
    p.add_argument("--init-from", help="checkpoint whose backbone initialises the ft_* runs (model.weights); "
                                       "'{seed}' in it is replaced by the run's seed")
    p.add_argument("overrides", nargs="*", help="section.key=value applied to every run")
    args = p.parse_args()
    queue = [(v, s) for v in args.variants for s in args.seeds]
    running, t0 = [], time.time()
    while queue or running:
        while queue and len(running) < args.jobs:
            v, s = queue.pop(0)
            run_dir, proc = run_one(v, s, args.out, args.overrides, args.init_from, args.threads)
            if proc is not None:
                running.append((v, s, run_dir, proc))
                print(f"[{time.time() - t0:6.0f}s] started {v} seed {s}", flush=True)
        for item in list(running):
            if item[3].poll() is not None:
                running.remove(item)
                status = "done" if item[3].returncode == 0 else f"FAILED ({item[3].returncode})"
                print(f"[{time.time() - t0:6.0f}s] {status} {item[0]} seed {item[1]}", flush=True)
        time.sleep(1)
    print(summarise(args.out, args.variants, args.seeds))


if __name__ == "__main__":
    main()
