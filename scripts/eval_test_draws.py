"""Score trained synthetic-demo models on many fresh test sets, to resolve what one cannot.

The demo's test half has 12 identities and 37 queries: one model's mAP on it moves by several
points with the draw of test identities alone. ``data.synthetic.test_draw=d`` writes the same
training set with a new test half of the same size and kind (``make_synthetic``), so a model
trained on the demo can be scored on draws 1..D it never saw. For every ``last.pt`` under the
given folders (a run, or a stage of a multi-stage run, as the seed study writes them) this prints
and writes its mean rank-1 / mAP over the draws, then per group (the path without its
``seed<k>`` part, e.g. ``ft_demo_aaanet/3_adversarial``) the mean and spread over seeds, and
the paired per-seed differences asked for with ``--compare``. Example (the docs' numbers):

    .venv/bin/python scripts/eval_test_draws.py runs/demo-seeds runs/aaa-fix --draws 16 \\
        --compare ft_demo_aaanet/3_adversarial:ft_demo_aaanet/1_classifier -o runs/draws

Each model is scored on the draws with the evaluation it was trained with (its config: single
view, Euclidean distance); a model's result per draw is kept in ``<out>/per_model.json`` so a
rerun only scores what is new.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import time
from pathlib import Path

import torch


def find_models(roots):
    """``(group, seed, path)`` for every last.pt under ``roots``; group is the path below the root
    without its ``seed<k>`` component."""
    found = []
    for root in roots:
        for ckpt in sorted(Path(root).rglob("last.pt")):
            parts = ckpt.parent.relative_to(root).parts
            seeds = [p for p in parts if re.fullmatch(r"seed\d+", p)]
            if len(seeds) != 1:
                continue
            group = "/".join(p for p in parts if p != seeds[0])
            found.append((group, int(seeds[0][4:]), ckpt))
    return found


def score_on_draws(ckpt_path, draws, data_root):
    """``{draw: (rank1, mAP)}`` of one checkpoint, in percent."""
    from sharpattn.reid.config import apply_overrides
    from sharpattn.reid.data import build_dataset
    from sharpattn.reid.deploy import load_inference_model
    from sharpattn.reid.evaluation import evaluate

    model, cfg, _ = load_inference_model(str(ckpt_path))
    if cfg.data.name != "synthetic":
        raise SystemExit(f"{ckpt_path}: trained on {cfg.data.name!r}; test draws exist for the synthetic data only")
    out = {}
    for d in draws:
        apply_overrides(cfg, [f"data.synthetic.test_draw={d}", f"data.root={data_root}"])
        metrics, _ = evaluate(model, build_dataset(cfg.data), cfg, torch.device("cpu"), progress=False)
        out[d] = (100 * metrics["rank1"], 100 * metrics["mAP"])
    return out


def mean_sd(xs):
    return statistics.mean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("roots", nargs="+", type=Path, help="folders holding <variant>/seed<k>/... runs")
    p.add_argument("--draws", type=int, default=16, help="score on test draws 1..D (draw 0 is the demo's own)")
    p.add_argument("--data-root", default="data", help="where the draws are written (data.root)")
    p.add_argument("--compare", nargs="*", default=[], metavar="A:B",
                   help="groups to compare seed by seed (A minus B)")
    p.add_argument("--exclude", nargs="*", default=[], metavar="TEXT",
                   help="skip the models whose group contains TEXT (e.g. 2_assignment: its retrieval "
                        "features are stage 1's, the base is frozen)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("-o", "--out", type=Path, default=Path("runs/test-draws"))
    args = p.parse_args()
    if args.draws < 1:
        p.error("--draws must be >= 1")
    if args.threads:
        torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    cache_file = args.out / "per_model.json"
    cache = json.loads(cache_file.read_text()) if cache_file.exists() else {}
    draws = list(range(1, args.draws + 1))
    models = [m for m in find_models(args.roots) if not any(t in m[0] for t in args.exclude)]
    if not models:
        raise SystemExit(f"no <variant>/seed<k>/.../last.pt under {', '.join(map(str, args.roots))}")

    per_model, t0 = {}, time.time()
    for i, (group, seed, ckpt) in enumerate(models):
        key = f"{ckpt.resolve()}@{ckpt.stat().st_mtime_ns}"
        have = {int(d): tuple(v) for d, v in cache.get(key, {}).items()}
        missing = [d for d in draws if d not in have]
        if missing:
            have.update(score_on_draws(ckpt, missing, args.data_root))
            cache[key] = {str(d): v for d, v in sorted(have.items())}
            cache_file.write_text(json.dumps(cache, indent=1))
        r1 = [have[d][0] for d in draws]
        mp = [have[d][1] for d in draws]
        per_model[(group, seed)] = (statistics.mean(r1), statistics.mean(mp), statistics.stdev(mp) if len(mp) > 1 else 0.0)
        print(f"[{time.time() - t0:5.0f}s] {i + 1}/{len(models)} {group} seed {seed}: rank-1 {per_model[(group, seed)][0]:.1f}"
              f" mAP {per_model[(group, seed)][1]:.1f} (sd over draws {per_model[(group, seed)][2]:.1f})", flush=True)

    lines = [f"Mean over test draws 1..{args.draws} (each 12 identities, as the demo's test half); "
             "then mean ± sd over seeds.", "",
             "| model | seeds | rank-1 | mAP | per seed mAP (sd over draws) |", "|---|---|---|---|---|"]
    groups = sorted({g for g, _ in per_model})
    summary = {}
    for g in groups:
        seeds = sorted(s for gg, s in per_model if gg == g)
        r1 = [per_model[(g, s)][0] for s in seeds]
        mp = [per_model[(g, s)][1] for s in seeds]
        summary[g] = {"seeds": seeds, "rank1": r1, "mAP": mp}
        per = "; ".join(f"{per_model[(g, s)][1]:.1f} ({per_model[(g, s)][2]:.1f})" for s in seeds)
        lines.append(f"| {g} | {len(seeds)} | {'{:.1f} ± {:.1f}'.format(*mean_sd(r1))} | "
                     f"{'{:.1f} ± {:.1f}'.format(*mean_sd(mp))} | {per} |")
    for spec in args.compare:
        a, _, b = spec.partition(":")
        if a not in summary or b not in summary:
            raise SystemExit(f"--compare {spec}: groups are {', '.join(groups)}")
        seeds = [s for s in summary[a]["seeds"] if s in summary[b]["seeds"]]
        diff = [per_model[(a, s)][1] - per_model[(b, s)][1] for s in seeds]
        lines += ["", f"{a} minus {b}, mAP by seed: " + ", ".join(f"{x:+.1f}" for x in diff)
                  + (" (mean {:+.1f} ± {:.1f})".format(*mean_sd(diff)) if diff else "")]
        summary[f"{a} - {b}"] = {"seeds": seeds, "mAP": diff}
    text = "\n".join(lines) + "\n"
    (args.out / "results.md").write_text(text)
    (args.out / "results.json").write_text(json.dumps(summary, indent=1))
    print(text)


if __name__ == "__main__":
    main()
