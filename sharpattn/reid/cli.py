"""Command lines: ``sharpattn-train`` and ``sharpattn-eval`` (also ``python -m sharpattn.reid``).

``sharpattn-train`` with no config trains the built-in synthetic demo: the plain ResNet-50
baseline, SAN and AAA-Net on a small generated dataset, on the CPU in minutes, and prints their
scores side by side.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from .engine.checkpoint import CheckpointError, load_checkpoint
from .engine.run_folder import DiskSpaceError
from .engine.stop import TrainingDiverged
from .config import ConfigError, apply_overrides, available_configs, config_from_dict, load_config
from .datasets import DatasetFormatError, DatasetNotFoundError

__all__ = ["main", "train_main", "eval_main"]

# The demo: a baseline from scratch, whose backbone then initialises the baseline and SAN
# fine-tuned at the paper's lr (configs/synthetic/_finetune.yaml; docs/training.md says why), and
# AAA-Net's three stages (configs/synthetic/aaanet.yaml).
DEFAULT_CONFIGS = ("synthetic/baseline", "synthetic/baseline_ft", "synthetic/san_ft", "synthetic/aaanet")
USER_ERRORS = (ConfigError, CheckpointError, DatasetNotFoundError, DatasetFormatError, FileExistsError,
               DiskSpaceError, TrainingDiverged)


def _timestamp():
    return time.strftime("%Y%m%d-%H%M%S")


def _train_parser(prog="sharpattn-train"):
    p = argparse.ArgumentParser(
        prog=prog,
        description="Train with a config's recipe: SAN and its ResNet-50 baseline (batch-hard triplet + "
                    "mu * TV, Adam) or AAA-Net's three stages (softmax, SGD). With no --config: the synthetic "
                    "demo (baseline, SAN and AAA-Net on generated data, CPU, minutes).",
        epilog="Overrides: section.key=value, e.g. optim.epochs=30 data.root=~/data model.blocks=[1,2]. "
               "Packaged configs: sharpattn-train --list-configs. See docs/training.md.")
    p.add_argument("-c", "--config", action="append", metavar="NAME_OR_FILE",
                   help="YAML config file or packaged config name (repeat to train several and compare)")
    p.add_argument("-o", "--output", metavar="DIR",
                   help="run folder (default: <output_dir>/<name>-<time>; several configs go to DIR/<name>)")
    p.add_argument("--resume", metavar="RUN_OR_CKPT",
                   help="continue a run from its folder or last.pt (its config is used unless --config is given)")
    p.add_argument("--overwrite", action="store_true",
                   help="train into an --output that holds an earlier run's results, deleting them first")
    p.add_argument("--allow-changes", action="store_true",
                   help="with --resume: apply overrides that change how the run trains (lr, sizes, model ...), "
                        "recorded in the run's config_history.yaml")
    p.add_argument("--data-root", metavar="DIR", help="shortcut for data.root=DIR")
    p.add_argument("--list-configs", action="store_true", help="list the packaged configs and exit")
    p.add_argument("overrides", nargs="*", metavar="section.key=value")
    return p


def _eval_parser(prog="sharpattn-eval"):
    p = argparse.ArgumentParser(
        prog=prog,
        description="Evaluate a checkpoint (best.pt / last.pt or a run folder): 10-crop features, optional "
                    "k-reciprocal re-ranking; writes metrics.json, metrics.md, ranks.png and masks.png.")
    p.add_argument("checkpoint", help="checkpoint file or run folder")
    p.add_argument("-o", "--output", metavar="DIR", help="where to write (default: <run folder>/eval)")
    p.add_argument("--data-root", metavar="DIR", help="shortcut for data.root=DIR")
    p.add_argument("--dataset", help="shortcut for data.name=NAME (default: the training dataset)")
    p.add_argument("--rerank", action="store_true", help="k-reciprocal re-ranking (Zhong et al. 2017)")
    p.add_argument("--metric", metavar="NAME[,NAME]", help="euclidean, xqda, kissme or all (default: eval.metrics); "
                   "XQDA / KISSME are fitted on the training split's features (cached in the run folder)")
    crop = p.add_mutually_exclusive_group()
    crop.add_argument("--ten-crop", dest="ten_crop", action="store_true", default=None, help="10-crop testing")
    crop.add_argument("--no-ten-crop", dest="ten_crop", action="store_false", help="one resized view per image")
    p.add_argument("overrides", nargs="*", metavar="section.key=value")
    return p


def _shortcuts(args):
    extra = []
    if getattr(args, "data_root", None):
        extra.append(f"data.root={args.data_root}")
    if getattr(args, "dataset", None):
        extra.append(f"data.name={args.dataset}")
    return extra + list(args.overrides)


def _table_rows(results):
    """One row per run, and per stage of a run of several stages (its stages side by side)."""
    rows = []
    for r in results:
        rows += [(s["name"], s["metrics"]) for s in r["stages"]] if r.get("stages") else [(r["name"], r["metrics"])]
    return rows


def _print_table(results, out_root=None):
    from .report import format_metrics_table
    print()
    print(format_metrics_table(_table_rows(results)))
    for r in results:
        print(f"  {r['name']}: {r['out_dir']}")
    if out_root is not None:
        print(f"outputs in {out_root}")


def run_training(args):
    from .engine import TrainingInterrupted, train
    from .engine.links import RunLinks
    from .engine.run_folder import check_can_write, claim
    from .engine.stages import STAGED_CONFIG, is_staged_run

    overrides = _shortcuts(args)
    if args.overwrite and args.resume:
        raise ConfigError("--overwrite starts a new run and --resume continues one: give one of them")
    if args.resume and is_staged_run(args.resume):  # a run of several stages: its folder
        import yaml
        saved_path = Path(args.resume) / STAGED_CONFIG
        cfg = load_config(args.config[0] if args.config else saved_path, overrides)
        jobs = [(cfg, Path(args.resume), Path(args.resume))]
        out_root = None
        _check_resume_changes(yaml.safe_load(saved_path.read_text()), cfg, args, Path(args.resume), None)
    elif args.resume:
        if args.config and len(args.config) > 1:
            raise ConfigError("--resume continues one run: give at most one --config")
        ckpt = load_checkpoint(args.resume)
        if args.config:
            cfg = load_config(args.config[0], overrides)
        else:
            cfg = config_from_dict(ckpt["config"], origin=ckpt["path"])
            apply_overrides(cfg, overrides)
            cfg.validate()
        out_dir = Path(args.output) if args.output else Path(ckpt["path"]).parent
        jobs = [(cfg, out_dir, ckpt["path"])]
        out_root = None
        _check_resume_changes(ckpt["config"], cfg, args, out_dir, ckpt["epoch"] + 1)
    else:
        names = args.config or list(DEFAULT_CONFIGS)
        cfgs = [load_config(n, overrides) for n in names]
        if len(cfgs) == 1:
            out_dir = Path(args.output) if args.output else \
                Path(cfgs[0].output_dir).expanduser() / f"{cfgs[0].name}-{_timestamp()}"
            jobs = [(cfgs[0], out_dir, None)]
            out_root = None
        else:
            label = "synthetic" if not args.config else "compare"
            out_root = Path(args.output) if args.output else \
                Path(cfgs[0].output_dir).expanduser() / f"{label}-{_timestamp()}"
            seen = {}
            for c in cfgs:  # the same name twice (e.g. name=... as an override) gets a suffix
                seen[c.name] = seen.get(c.name, 0) + 1
                if seen[c.name] > 1:
                    c.name = f"{c.name}-{seen[c.name]}"
            jobs = [(c, out_root / c.name, None) for c in cfgs]
        for _, d, _ in jobs:  # before anything trains: no folder holds results, each can be written
            if not args.overwrite:
                claim(d)
            check_can_write(d, folder=True)
    if not args.resume:  # every run:NAME names a run trained before it, or nothing trains
        RunLinks.check([cfg for cfg, _, _ in jobs])
    links = RunLinks()
    if not args.config and not args.resume:
        print("sharpattn-train: no --config given, running the synthetic demo on generated data: the ResNet-50 "
              "baseline from scratch, then the baseline, SAN and AAA-Net's three stages starting from its "
              "backbone (see sharpattn/reid/configs/synthetic/). Use --config for real data.", flush=True)
    results = []
    t0 = time.time()
    for cfg, out_dir, resume in jobs:
        try:
            results.append(train(cfg, out_dir, resume=resume, links=links, overwrite=args.overwrite))
        except TrainingInterrupted as e:
            print(f"\n{e}\ncontinue with: sharpattn-train --resume {out_dir}", file=sys.stderr)
            return 130
    if _is_main():
        _print_table(results, out_root)
        print(f"total time {(time.time() - t0) / 60:.1f} min")
        if out_root is not None:
            (out_root / "results.md").write_text(
                __import__("sharpattn.reid.report", fromlist=["_"]).format_metrics_table(
                    _table_rows(results)) + "\n")
    return 0


def _check_resume_changes(saved, cfg, args, folder, epoch):
    """Refuse overrides that change how a resumed run trains, unless --allow-changes; then record
    them (``epoch``: the first epoch they apply to; None for a run of stages)."""
    from .config_changes import config_changes, record_changes, refuse_changes
    from .engine.distributed import is_main_process

    changes = config_changes(saved, cfg)
    if not args.allow_changes:
        refuse_changes(changes, folder)
    path = record_changes(folder, changes, epoch) if is_main_process() else None
    if path is not None:
        print(f"sharpattn-train: resuming with config changes, recorded in {path}", flush=True)


def _is_main():
    import torch.distributed as dist
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def run_eval(args):
    import torch

    from .engine.checkpoint import check_model_spec, load_model_state
    from .engine.run_folder import check_writable
    from .data import build_dataset
    from .engine import resolve_device
    from .evaluation import evaluate
    from .report import write_pictures
    from .evaluation.metric_eval import (evaluate_metrics, file_digest, metrics_table, resolve_metric_names,
                              uses_learned_metrics)
    from .modeling import build_model
    from .recipes import get_recipe

    if args.metric:
        resolve_metric_names(args.metric)  # a typo fails before anything is loaded
    ckpt = load_checkpoint(args.checkpoint)
    cfg = config_from_dict(ckpt["config"], origin=ckpt["path"])
    apply_overrides(cfg, _shortcuts(args))
    cfg.validate()
    recipe = get_recipe(cfg.recipe)(cfg, torch.device("cpu"))
    check_model_spec(ckpt, recipe.spec_before_data(ckpt["model_spec"]))
    device = resolve_device(cfg.train.device)
    model = build_model(ckpt["model_spec"]).to(device)
    load_model_state(model, ckpt["model"], ckpt["path"])
    model.eval()
    dataset = build_dataset(cfg.data)
    out_dir = Path(args.output) if args.output else Path(ckpt["path"]).parent / "eval"
    check_writable(out_dir)
    if args.metric or uses_learned_metrics(cfg):  # one row per metric
        metrics, distmat = evaluate_metrics(model, dataset, cfg, device, args.metric or cfg.eval.metrics,
                                            cfg.train.progress, args.ten_crop, args.rerank or None,
                                            cache_dir=Path(ckpt["path"]).parent, save_dir=out_dir,
                                            model_digest=file_digest(ckpt["path"]))
    else:
        metrics, distmat = evaluate(model, dataset, cfg, device, progress=cfg.train.progress,
                                    ten_crop=args.ten_crop, rerank=args.rerank or None)
    metrics["checkpoint"] = ckpt["path"]
    metrics["dataset"] = cfg.data.name
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    table = metrics_table(cfg.name, metrics)
    (out_dir / "metrics.md").write_text(
        f"# {cfg.name} on {cfg.data.name}\n\nCheckpoint `{ckpt['path']}`; {metrics['protocol']}, "
        f"10-crop {metrics['ten_crop']}, re-ranking {metrics['rerank']}.\n\n{table}\n")
    with torch.no_grad():
        write_pictures(model, dataset, cfg, device, out_dir, distmat=distmat)
    print(table)
    print(f"written to {out_dir}")
    return 0


def _run(fn, parser, argv):
    # Intermixed: overrides may come before and after options (... -o DIR optim.epochs=5).
    args = parser.parse_intermixed_args(argv)
    if getattr(args, "list_configs", False):
        print("\n".join(available_configs()))
        return 0
    try:
        return fn(args)
    except USER_ERRORS as e:
        hint = " (point to it with --data-root DIR or data.root=DIR)" if isinstance(e, DatasetNotFoundError) else ""
        print(f"{parser.prog}: error: {e}{hint}", file=sys.stderr)
        return 2


def train_main(argv=None):
    return _run(run_training, _train_parser(), argv)


def eval_main(argv=None):
    return _run(run_eval, _eval_parser(), argv)


def main(argv=None):
    """``python -m sharpattn.reid [train|eval] ...`` (``train`` when the first word is neither)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "eval":
        return _run(run_eval, _eval_parser("python -m sharpattn.reid eval"), argv[1:])
    if argv and argv[0] == "train":
        argv = argv[1:]
    return _run(run_training, _train_parser("python -m sharpattn.reid [train]"), argv)


def _console_train():  # pragma: no cover - console script entry
    sys.exit(train_main())


def _console_eval():  # pragma: no cover
    sys.exit(eval_main())
