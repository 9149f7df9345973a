"""Command lines for using a trained model: ``sharpattn-export``, ``sharpattn-embed``,
``sharpattn-search`` (see README, "Use a trained model").

    sharpattn-export runs/<run>/best.pt --format onnx -o san.onnx
    sharpattn-embed runs/<run>/best.pt photos/ -o features.npz
    sharpattn-search runs/<run>/best.pt --query me/ --gallery photos/ -o search/
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from .engine.checkpoint import CheckpointError

__all__ = ["embed_main", "export_main", "search_main"]

FORMATS = {".onnx": "onnx", ".pt2": "pt2"}

# (argument, option, smallest value): checked before anything is loaded (None: not given).
LIMITS = (("height", "--height", 1), ("width", "--width", 1), ("batch_size", "--batch-size", 1),
          ("workers", "--workers", 0), ("static_batch", "--static-batch", 1),
          ("check_batch", "--check-batch", 0), ("opset", "--opset", 1), ("topk", "--topk", 1),
          ("picture_queries", "--picture-queries", 0))


class _UsageError(Exception):
    """A command-line mistake argparse found (reported on one line by _run)."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse prints the usage too; one line is enough
        raise _UsageError(message)


def _check_limits(args):
    for dest, option, least in LIMITS:
        value = getattr(args, dest, None)
        if value is not None and value < least:
            raise ValueError(f"{option} must be >= {least}, got {value}")


def _common(p, batch=True):
    p.add_argument("--height", type=int, help="input height (default: the training config's)")
    p.add_argument("--width", type=int, help="input width (default: the training config's)")
    if batch:
        p.add_argument("--device", default="auto", help="auto (a GPU if there is one), cpu, cuda")
        p.add_argument("--batch-size", type=int, default=64, help="images per forward [64]")
        p.add_argument("--workers", type=int, default=None,
                       help="image-decoding processes [up to 4, fewer on small machines]")
        p.add_argument("--ten-crop", action="store_true",
                       help="average the embeddings of 10 crops per image (slower, as sharpattn-eval)")
        p.add_argument("--strict", action="store_true",
                       help="stop at an unreadable image instead of skipping it with a warning")
        p.add_argument("--no-progress", dest="progress", action="store_false",
                       help="no progress bar")


def _export_parser():
    p = _Parser(
        prog="sharpattn-export",
        description="Export a checkpoint's model (eval mode: deterministic masks) to ONNX or a "
                    "torch.export .pt2 file, then run the file and the model on a random batch and "
                    "print how close they are.")
    p.add_argument("checkpoint", help="checkpoint file (best.pt / last.pt) or run folder")
    p.add_argument("-o", "--output", required=True, metavar="FILE", help="file to write")
    p.add_argument("--format", choices=sorted(set(FORMATS.values())),
                   help="onnx or pt2 (default: from the file's extension)")
    p.add_argument("--static-batch", type=int, metavar="N",
                   help="fix the batch size at N (default: any batch size)")
    p.add_argument("--opset", type=int, help="ONNX opset (default: torch's)")
    p.add_argument("--check-batch", type=int, default=4, metavar="N",
                   help="random batch for the comparison [4]; 0 skips it")
    _common(p, batch=False)
    return p


def _size(args, cfg):
    return (cfg.data.height if args.height is None else args.height,
            cfg.data.width if args.width is None else args.width)


def run_export(args):
    import torch

    from ..export import ExportError, compare_exported_program, compare_onnx, describe_check
    from ..export import example_input, to_exported_program, to_onnx
    from .deploy import load_inference_model
    from .engine.run_folder import check_can_write

    fmt = args.format or FORMATS.get(Path(args.output).suffix.lower())
    if fmt is None:
        raise ExportError(f"cannot tell the format from {args.output!r}: use --format onnx|pt2 "
                          f"or a .onnx / .pt2 name")
    check_can_write(args.output)
    model, cfg, ckpt = load_inference_model(args.checkpoint)
    height, width = _size(args, cfg)
    dynamic = args.static_batch is None
    opts = {"dynamic_batch": dynamic, "batch_size": 1 if dynamic else args.static_batch}
    print(f"exporting {ckpt['model_spec']['arch']} from {ckpt['path']} to {fmt} at {height}x{width}, "
          f"batch {'dynamic' if dynamic else args.static_batch}", flush=True)
    t0 = time.time()
    if fmt == "onnx":
        path = to_onnx(model, args.output, height, width, opset=args.opset, **opts)
        program = None
    else:
        program = to_exported_program(model, args.output, height, width, **opts)
        path = Path(args.output)
    print(f"wrote {path} ({path.stat().st_size / 2**20:.1f} MiB) in {time.time() - t0:.0f} s")
    if args.check_batch == 0:
        return 0
    if fmt == "onnx":
        try:
            import onnxruntime  # noqa: F401
        except ImportError:
            raise ExportError(f"wrote {path}, but checking it needs onnxruntime (pip install "
                              f"onnxruntime); or skip the check with --check-batch 0") from None
    batches = (1, args.check_batch) if dynamic else (args.static_batch,)
    images = example_input(model, max(batches), height, width, seed=int(time.time()) % 2**31)
    runner = "onnxruntime (CPU)" if fmt == "onnx" else "torch.export.load"
    print(f"check: {runner} vs the PyTorch model in eval, random N(0, 1) images, float64 reference")
    ok = True
    for b in dict.fromkeys(batches):
        if fmt == "onnx":
            result = compare_onnx(model, path, images[:b])
        else:
            result = compare_exported_program(model, torch.export.load(str(path)), images[:b])
        print(f"  {describe_check(result)}")
        ok = ok and result["passed"]
    if not ok:
        print("sharpattn-export: the exported file does not reproduce the model (see above)",
              file=sys.stderr)
        return 1
    return 0


def _embed_parser():
    p = _Parser(
        prog="sharpattn-embed",
        description="Embed every image under a folder (recursively) with a checkpoint's model; "
                    "writes an .npz with names (relative paths), features (N, D) and skipped "
                    "(unreadable images, which are skipped with a warning unless --strict).")
    p.add_argument("checkpoint", help="checkpoint file or run folder")
    p.add_argument("images", help="folder of images")
    p.add_argument("-o", "--output", default="features.npz", metavar="FILE",
                   help="the .npz to write (.npz is added to another name; a folder: "
                        "FOLDER/features.npz) [features.npz]")
    _common(p)
    return p


def _embedder(args):
    from .deploy import default_workers, embed_folder, load_inference_model
    from .engine import resolve_device

    model, cfg, ckpt = load_inference_model(args.checkpoint, resolve_device(args.device))
    height, width = _size(args, cfg)
    workers = default_workers() if args.workers is None else args.workers

    def embed(folder):
        return embed_folder(model, folder, height, width, ten_crop=args.ten_crop,
                            batch_size=args.batch_size, workers=workers,
                            progress=args.progress, strict=args.strict)
    meta = {"checkpoint": ckpt["path"], "height": height, "width": width,
            "ten_crop": args.ten_crop}
    return embed, cfg, meta


def run_embed(args):
    from .deploy import features_path, write_features
    from .engine.run_folder import check_can_write

    target = features_path(args.output)
    check_can_write(target)
    embed, _, meta = _embedder(args)
    result = embed(args.images)
    path = write_features(target, result, **meta)
    into_folder = Path(args.output).expanduser().is_dir()
    print(f"{len(result.names)} images -> {tuple(result.features.shape)} features in {path}"
          + (f" ({args.output} is a folder)" if into_folder else "")
          + (f"; skipped {len(result.skipped)} unreadable" if result.skipped else ""))
    return 0


def _search_parser():
    p = _Parser(
        prog="sharpattn-search",
        description="Rank every image of a gallery folder for each image of a query folder (find a "
                    "person in your own images; no labels or dataset layout). Writes ranking.csv "
                    "(query, rank, gallery, distance) and ranks.png (each query and its best matches).")
    p.add_argument("checkpoint", help="checkpoint file or run folder")
    p.add_argument("--query", required=True, metavar="DIR", help="folder of query images")
    p.add_argument("--gallery", required=True, metavar="DIR", help="folder of images to search")
    p.add_argument("-o", "--output", metavar="DIR", help="[search-<time>]")
    p.add_argument("--topk", type=int, default=10, help="matches per query in the picture and CSV [10]")
    p.add_argument("--csv-all", action="store_true", help="the whole ranking in the CSV")
    p.add_argument("--picture-queries", type=int, default=8, metavar="N",
                   help="queries drawn in ranks.png (the first N; 0: no picture) [8]")
    p.add_argument("--metric", choices=("euclidean", "sqeuclidean", "cosine"),
                   help="distance (default: the training config's eval.metric)")
    p.add_argument("--rerank", action="store_true", help="k-reciprocal re-ranking (Zhong et al. 2017)")
    _common(p)
    return p


def run_search(args):
    from .deploy import order_by_distance, same_files, write_ranking_csv
    from .engine.run_folder import check_can_write
    from .metrics import compute_distance_matrix, re_ranking
    from .report.visualize import plot_ranked_lists

    out = Path(args.output or f"search-{time.strftime('%Y%m%d-%H%M%S')}")
    check_can_write(out, folder=True)
    embed, cfg, _ = _embedder(args)
    query = embed(args.query)
    same_folder = Path(args.query).expanduser().resolve() == Path(args.gallery).expanduser().resolve()
    gallery = query if same_folder else embed(args.gallery)
    metric = args.metric or cfg.eval.metric
    if args.rerank:
        dist = re_ranking(query.features, gallery.features, progress=args.progress).cpu()
    else:
        dist = compute_distance_matrix(query.features, gallery.features, metric=metric).cpu()
    own = same_files(query, gallery)  # a query is never its own match
    if own:
        print(f"{len({q for q, _ in own})} of the {len(query.names)} query images are also in the "
              f"gallery (the same files): each is left out of its own ranking")
    order = order_by_distance(dist, own)
    csv_path = write_ranking_csv(out / "ranking.csv", query, gallery, dist, order,
                                 None if args.csv_all else args.topk)
    shown = list(range(min(args.picture_queries, len(query.names))))
    picture = None
    if shown:
        drawn = dist.clone()
        for qi, gi in own:  # sorted last, and cut off by topk below
            drawn[qi, gi] = float("inf")
        topk = min([args.topk, 10] + [len(order[qi]) for qi in shown])
        picture = plot_ranked_lists(drawn, [(str(p), None, None) for p in query.paths],
                                    [(str(p), None, None) for p in gallery.paths],
                                    out / "ranks.png", topk=topk, query_indices=shown)
    for qi, name in enumerate(query.names[:5]):
        best = ", ".join(f"{gallery.names[g]} ({dist[qi, g]:.3g})" for g in order[qi][:3])
        print(f"{name}: {best or '(no other gallery image)'}")
    if len(query.names) > 5:
        print(f"... {len(query.names) - 5} more queries")
    print(f"{len(query.names)} queries x {len(gallery.names)} gallery images ({metric}"
          f"{', re-ranked' if args.rerank else ''}): {csv_path}"
          + (f", {picture}" if picture else " (no picture: --picture-queries 0)"))
    return 0


def _run(fn, parser, argv):
    from ..export import ExportError

    try:
        args = parser.parse_args(argv)
        _check_limits(args)
        return fn(args)
    except _UsageError as e:
        message = f"{e} (see {parser.prog} --help)"
    except (CheckpointError, ExportError, FileNotFoundError, OSError, ValueError) as e:
        message = str(e)
    print(f"{parser.prog}: error: {' '.join(message.split())}", file=sys.stderr)
    return 2


def export_main(argv=None):
    return _run(run_export, _export_parser(), argv)


def embed_main(argv=None):
    return _run(run_embed, _embed_parser(), argv)


def search_main(argv=None):
    return _run(run_search, _search_parser(), argv)


def _console_export():  # pragma: no cover - console script entry
    sys.exit(export_main())


def _console_embed():  # pragma: no cover
    sys.exit(embed_main())


def _console_search():  # pragma: no cover
    sys.exit(search_main())
