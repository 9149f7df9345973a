"""Turn the benchmark JSON files into markdown tables, PNG plots and a check of the targets.

    python -m benchmarks.report                          # benchmarks/results/*.json
    python benchmarks/report.py --results DIR --out DIR  # elsewhere

Reads every pytest-benchmark JSON file of the results folder (written by python -m
benchmarks.run), and writes into the output folder (default: the results folder):

  README.md              per device: the headline table, the issue's targets (met / not met,
                         with the figures), the full op table, the model table, skipped cases
  <device>-time.png      median time per implementation per block shape (log scale)
  <device>-bandwidth.png achieved bandwidth as a fraction of the copy bandwidth

and prints the targets. Columns: see benchmarks/README.md. Only the standard library is needed
for the tables; the plots need matplotlib (skipped with a note without it).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections import defaultdict
from pathlib import Path

HERE = Path(__file__).resolve().parent
IMPL_ORDER = ("reference", "compile", "cpu", "cuda", "triton", "stage", "resnet50",
              "san_resnet50")
COMPILED = ("cpu", "cuda", "triton")


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------

def load(paths) -> tuple[list[dict], list[dict]]:
    """(rows, skipped): one row per benchmark with its extra_info, median and source file; a
    later file's result replaces an earlier one for the same case."""
    rows: dict[tuple, dict] = {}
    skipped = []
    for path in sorted(paths, key=lambda p: _datetime(p)):
        data = json.loads(Path(path).read_text())
        device_fallback = data.get("machine_info", {}).get("cpu", {}).get("brand_raw", "?")
        for bench in data.get("benchmarks", []):
            info = dict(bench.get("extra_info", {}))
            if "op" not in info:
                continue
            info.setdefault("device_name", device_fallback)
            info.setdefault("device_slug", _slug(info["device_name"]))
            info["median_s"] = bench["stats"]["median"]
            info["iqr_s"] = bench["stats"].get("iqr")
            info["rounds"] = bench["stats"].get("rounds")
            info["name"] = bench.get("name")
            info["file"] = Path(path).name
            if info.get("traffic_bytes"):
                info["gbps"] = info["traffic_bytes"] / info["median_s"] / 1e9
                copy = info.get("copy_gbps")
                info["frac_copy_bw"] = info["gbps"] / copy if copy else None
            rows[_key(info) + (info["impl"],)] = info
        for failure in data.get("sharpattn_failures", []):
            skipped.append(dict(failure, file=Path(path).name))
    return list(rows.values()), skipped


def _datetime(path) -> str:
    try:
        return json.loads(Path(path).read_text()).get("datetime", "")
    except (OSError, json.JSONDecodeError):
        return ""


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in name.lower()).strip("-")


def _key(row) -> tuple:
    """The case a row measures, without the implementation."""
    return (row.get("device_slug"), row.get("suite"), row["op"], row.get("variant", ""),
            row.get("pass"), tuple(row.get("shape") or ()), row.get("dtype"), row.get("layout"))


def index(rows) -> dict[tuple, dict[str, dict]]:
    """case key -> {impl: row}."""
    out: dict[tuple, dict[str, dict]] = defaultdict(dict)
    for row in rows:
        out[_key(row)][row["impl"]] = row
    return out


def ratio(base: dict | None, row: dict | None, field: str = "median_s") -> float | None:
    """base[field] / row[field]: a speedup when field is a time."""
    if not base or not row or not base.get(field) or row.get(field) is None:
        return None
    if row[field] == 0:
        return math.inf
    return base[field] / row[field]


def mem_fraction(row: dict | None, eager: dict | None) -> float | None:
    """row's peak memory as a fraction of eager's (0 when the row needs none)."""
    if not row or not eager or row.get("peak_mem_bytes") is None \
            or not eager.get("peak_mem_bytes"):
        return None
    return row["peak_mem_bytes"] / eager["peak_mem_bytes"]


# --------------------------------------------------------------------------------------------
# Formatting
# --------------------------------------------------------------------------------------------

def fmt_ms(seconds) -> str:
    if seconds is None:
        return "-"
    ms = seconds * 1e3
    return f"{ms:.3g}" if ms < 100 else f"{ms:.0f}"


def fmt_x(value) -> str:
    if value is None:
        return "-"
    if math.isinf(value):
        return "inf"
    return f"{value:.2f}x" if value < 10 else f"{value:.1f}x"


def fmt_frac(value) -> str:
    return "-" if value is None else f"{value:.3g}"


def fmt_pct(value) -> str:
    return "-" if value is None else f"{100 * value:.1f} %"


def fmt_gbps(value) -> str:
    return "-" if value is None else f"{value:.3g}"


def fmt_bytes(n) -> str:
    if n is None:
        return "-"
    n = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)  # pragma: no cover


def fmt_shape(shape) -> str:
    return "x".join(str(s) for s in shape) if shape else "-"


def _impl_rank(impl) -> int:
    return IMPL_ORDER.index(impl) if impl in IMPL_ORDER else len(IMPL_ORDER)


def markdown_table(header, lines) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    out += ["| " + " | ".join(str(c) for c in line) + " |" for line in lines]
    return "\n".join(out)


# --------------------------------------------------------------------------------------------
# Tables
# --------------------------------------------------------------------------------------------

OP_HEADER = ["op", "variant", "pass", "shape", "dtype", "layout", "impl", "median ms", "GB/s",
             "% copy BW", "vs eager", "vs compile", "peak mem", "mem / eager"]


def op_lines(rows, cases=None):
    cases = cases if cases is not None else index(rows)
    lines = []
    for key in sorted(cases, key=lambda k: (k[2], k[3], k[4], k[5][1:] if k[5] else (), k[6],
                                            k[7] or "")):
        impls = cases[key]
        eager, compiled = impls.get("reference"), impls.get("compile")
        for impl in sorted(impls, key=_impl_rank):
            row = impls[impl]
            lines.append([row["op"], row.get("variant") or "-", row.get("pass"),
                          fmt_shape(row.get("shape")), row.get("dtype"), row.get("layout"),
                          impl, fmt_ms(row["median_s"]), fmt_gbps(row.get("gbps")),
                          fmt_pct(row.get("frac_copy_bw")), fmt_x(ratio(eager, row)),
                          fmt_x(ratio(compiled, row)), fmt_bytes(row.get("peak_mem_bytes")),
                          fmt_frac(mem_fraction(row, eager))])
    return lines


MODEL_HEADER = ["what", "shape", "dtype", "layout", "impl", "median ms", "images/s",
                "time / baseline", "peak mem", "peak mem abs", "mem / baseline"]


def model_lines(rows):
    cases = index(rows)
    lines = []
    for key in sorted(cases, key=lambda k: (k[2], k[5], k[6], k[7] or "")):
        impls = cases[key]
        baseline = impls.get("resnet50") or impls.get("stage")
        for impl in sorted(impls, key=_impl_rank):
            row = impls[impl]
            mem_field = "peak_mem_abs_bytes" if row.get("peak_mem_abs_bytes") else "peak_mem_bytes"
            what = row["op"] + (f" block{row['block']}" if row.get("block") else "")
            ips = row.get("images_per_s")
            if row["op"] == "train_step" and row.get("shape"):
                ips = row["shape"][0] / row["median_s"]
            lines.append([what, fmt_shape(row.get("shape")), row.get("dtype"), row.get("layout"),
                          impl, fmt_ms(row["median_s"]), "-" if ips is None else f"{ips:.1f}",
                          fmt_frac(ratio(row, baseline)),
                          fmt_bytes(row.get("peak_mem_bytes")),
                          fmt_bytes(row.get("peak_mem_abs_bytes")),
                          fmt_frac(ratio(row, baseline, mem_field))])
    return lines


HEADLINE_OPS = [("sharp_attention", "x_is_t,tv", "fwdbwd"), ("sharp_attention", "x_separate,tv",
                                                              "fwdbwd"),
                ("tv_loss", "", "fwdbwd"), ("grid_occlusion_pool", "grid4x4", "fwd"),
                ("grid_occlusion_pool", "grid4x4", "fwdbwd")]
HEADLINE_HEADER = ["op", "pass", "dtype", "impl", "median ms", "% copy BW", "vs eager",
                   "vs compile", "peak mem", "mem / eager"]


def headline_lines(rows):
    """Block 1, contiguous: the fused op with TV, tv_loss and the pooled occlusion, every impl."""
    lines = []
    cases = index(rows)
    for op, variant, pass_ in HEADLINE_OPS:
        for key in sorted(k for k in cases if k[2:5] == (op, variant, pass_)
                          and k[7] == "contiguous" and k[5] and _block_of(cases[k]) == 1):
            impls = cases[key]
            eager, compiled = impls.get("reference"), impls.get("compile")
            for impl in sorted(impls, key=_impl_rank):
                row = impls[impl]
                label = op + (f" ({variant})" if variant else "")
                lines.append([label, pass_, row["dtype"], impl, fmt_ms(row["median_s"]),
                              fmt_pct(row.get("frac_copy_bw")), fmt_x(ratio(eager, row)),
                              fmt_x(ratio(compiled, row)), fmt_bytes(row.get("peak_mem_bytes")),
                              fmt_frac(mem_fraction(row, eager))])
    return lines


def _block_of(impls) -> int | None:
    return next(iter(impls.values())).get("block")


# --------------------------------------------------------------------------------------------
# Targets
# --------------------------------------------------------------------------------------------

def _check(label, value, bound, kind) -> dict:
    """kind ">=": value >= bound; "<=": value <= bound."""
    met = None if value is None else (value >= bound if kind == ">=" else value <= bound)
    return {"target": label, "value": value, "bound": bound, "kind": kind, "met": met}


def targets(rows) -> list[dict]:
    """The issue's targets, one check per (device, case, implementation) that has data."""
    checks = []
    cases = index(rows)
    for key, impls in sorted(cases.items(), key=lambda kv: tuple(str(k) for k in kv[0])):
        slug, suite, op, variant, pass_, shape, dtype, layout = key
        any_row = next(iter(impls.values()))
        device = any_row.get("device")
        where = f"{any_row.get('device_name')}, {op} {variant} {pass_} {fmt_shape(shape)} " \
                f"{dtype} {layout}"
        block = any_row.get("block")
        eager, compiled = impls.get("reference"), impls.get("compile")
        if op == "sharp_attention" and pass_ == "fwdbwd" and variant.endswith(",tv") \
                and block == 1 and layout == "contiguous":
            if device == "cuda" and dtype in ("float32", "bfloat16"):
                for impl in ("cuda", "triton"):
                    row = impls.get(impl)
                    if row is None:
                        continue
                    w = f"{where}, {impl}"
                    checks.append(_check(f"GPU copy-BW fraction >= 85% [{w}]",
                                         row.get("frac_copy_bw"), 0.85, ">="))
                    checks.append(_check(f"GPU >= 5x eager [{w}]", ratio(eager, row), 5, ">="))
                    checks.append(_check(f"GPU >= 1.5x torch.compile [{w}]",
                                         ratio(compiled, row), 1.5, ">="))
                    checks.append(_check(f"GPU peak memory <= 1/3 of eager [{w}]",
                                         mem_fraction(row, eager), 1 / 3, "<="))
            if device == "cpu" and "cpu" in impls:
                checks.append(_check(f"CPU kernels >= 3x eager [{where}, batch {shape[0]}]",
                                     ratio(eager, impls["cpu"]), 3, ">="))
        if op == "grid_occlusion_pool" and block == 1 and layout == "contiguous":
            for impl in COMPILED:
                if impl in impls and device == "cuda":
                    checks.append(_check(f"grid_occlusion_pool >= 16x materialise+mean "
                                         f"[{where}, {impl}]", ratio(eager, impls[impl]), 16,
                                         ">="))
        if op == "train_step" and "san_resnet50" in impls and "resnet50" in impls:
            san, base = impls["san_resnet50"], impls["resnet50"]
            gpu = device == "cuda"
            tag = "" if gpu else " (informational: the target is for the GPU run)"
            checks.append(_check(f"san_resnet50 step <= 1.25x ResNet-50 time [{where}]{tag}",
                                 ratio(san, base), 1.25, "<="))
            field = "peak_mem_abs_bytes" if gpu else "peak_mem_bytes"
            checks.append(_check(f"san_resnet50 step <= 1.2x ResNet-50 peak memory "
                                 f"({'max_memory_allocated' if gpu else 'saved for backward'})"
                                 f" [{where}]{tag}", ratio(san, base, field), 1.2, "<="))
    return checks


def fmt_check(check) -> str:
    status = {True: "MET", False: "NOT MET", None: "NO DATA"}[check["met"]]
    value = check["value"]
    shown = "-" if value is None else f"{value:.3g}"
    return f"{status:8s} {check['target']}: {shown} (target {check['kind']} {check['bound']:.3g})"


# --------------------------------------------------------------------------------------------
# Plots
# --------------------------------------------------------------------------------------------

def plots(rows, out_dir: Path, slug: str) -> list[Path]:
    """Time per implementation per block, and the fraction of copy bandwidth (contiguous)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import NullFormatter
    except ImportError:
        return []
    ops = [r for r in rows if r.get("suite") == "ops" and r.get("layout") == "contiguous"]
    if not ops:
        return []
    panels = sorted({(r["op"], r.get("variant") or "") for r in ops})
    columns = sorted({(r["dtype"], r["pass"]) for r in ops}, key=lambda c: (c[0], c[1] != "fwd"))
    impls = sorted({r["impl"] for r in ops}, key=_impl_rank)
    blocks = sorted({r["block"] for r in ops})
    written = []
    for field, ylabel, name, log in (("median_s", "median time (ms)", "time", True),
                                     ("frac_copy_bw", "fraction of copy bandwidth", "bandwidth",
                                      False)):
        fig, axes = plt.subplots(len(panels), len(columns), squeeze=False,
                                 figsize=(3.6 * len(columns), 2.4 * len(panels)))
        width = 0.8 / max(len(impls), 1)
        for i, (op, variant) in enumerate(panels):
            for j, (dtype, pass_) in enumerate(columns):
                ax = axes[i][j]
                drawn = False
                for k, impl in enumerate(impls):
                    xs, ys = [], []
                    for b_index, block in enumerate(blocks):
                        match = [r for r in ops if (r["op"], r.get("variant") or "", r["dtype"],
                                                    r["pass"], r["block"], r["impl"]) ==
                                 (op, variant, dtype, pass_, block, impl)]
                        if match and match[0].get(field) is not None:
                            value = match[0][field]
                            xs.append(b_index + (k - (len(impls) - 1) / 2) * width)
                            ys.append(value * 1e3 if field == "median_s" else value)
                    if xs:
                        ax.bar(xs, ys, width=width, label=impl)
                        drawn = True
                ax.set_title(f"{op} {variant} {dtype} {pass_}".replace("  ", " "), fontsize=8)
                if not drawn:
                    ax.axis("off")
                    ax.text(0.5, 0.5, "not run", ha="center", va="center", fontsize=8,
                            color="grey", transform=ax.transAxes)
                    continue
                ax.set_xticks(range(len(blocks)), [f"block{b}" for b in blocks], fontsize=7)
                if log:
                    ax.set_yscale("log")
                    ax.yaxis.set_minor_formatter(NullFormatter())
                else:
                    ax.axhline(1.0, color="grey", linewidth=0.6)
                ax.tick_params(labelsize=7)
                ax.set_ylabel(ylabel, fontsize=7)
        handles, labels = axes[0][0].get_legend_handles_labels()
        for row_axes in axes:
            for ax in row_axes:
                for h, lab in zip(*ax.get_legend_handles_labels()):
                    if lab not in labels:
                        handles.append(h)
                        labels.append(lab)
        height = fig.get_figheight()
        top = 1 - 0.75 / height  # room for the title and the legend, in figure fractions
        device = ops[0].get("device_name")
        batch = ops[0]["shape"][0] if ops[0].get("shape") else "?"
        fig.suptitle(f"{device}, batch {batch}, contiguous layout", fontsize=9,
                     y=1 - 0.08 / height, va="top")
        fig.legend(handles, labels, loc="upper center", ncol=len(labels), fontsize=8,
                   bbox_to_anchor=(0.5, 1 - 0.32 / height), frameon=False)
        fig.tight_layout(rect=(0, 0, 1, top))
        path = out_dir / f"{slug}-{name}.png"
        fig.savefig(path, dpi=90)
        plt.close(fig)
        written.append(path)
    return written


# --------------------------------------------------------------------------------------------
# The report
# --------------------------------------------------------------------------------------------

def report(rows, skipped, out_dir: Path, *, make_plots: bool = True) -> tuple[str, list[dict]]:
    """The markdown text (also written to out_dir/README.md) and the target checks."""
    out_dir.mkdir(parents=True, exist_ok=True)
    by_device: dict[str, list[dict]] = defaultdict(list)
    for row in rows:
        by_device[row["device_slug"]].append(row)
    all_checks = []
    parts = ["# Benchmark results", "",
             "Generated by `python -m benchmarks.report` from the JSON files in this folder; "
             "how to run and what the columns mean: [benchmarks/README.md](../README.md).", ""]
    for slug in sorted(by_device):
        device_rows = by_device[slug]
        first = device_rows[0]
        versions = first.get("versions") or {}
        ops = [r for r in device_rows if r.get("suite") == "ops"]
        models = [r for r in device_rows if r.get("suite") == "models"]
        loads = [r["loadavg_before"][0] for r in device_rows if r.get("loadavg_before")]
        copies = sorted({round(r["copy_gbps"], 2) for r in device_rows if r.get("copy_gbps")})
        files = sorted({r["file"] for r in device_rows})
        parts += [f"## {first.get('device_name')}", "",
                  f"- files: {', '.join(files)}",
                  f"- torch {versions.get('torch')}, CUDA {versions.get('cuda')}, triton "
                  f"{versions.get('triton')}, sharpattn {versions.get('sharpattn')} "
                  f"(git {versions.get('git')}), threads {first.get('threads')}",
                  f"- copy bandwidth measured in the run(s): {', '.join(map(str, copies))} GB/s",
                  ]
        if loads:
            parts.append(f"- 1-minute load average during the cases: {min(loads):.1f} to "
                         f"{max(loads):.1f}")
        parts.append("")
        headline = headline_lines(ops)
        if headline:
            parts += ["### Headline (block 1, contiguous)", "", markdown_table(HEADLINE_HEADER,
                                                                             headline), ""]
        checks = targets(device_rows)
        all_checks += checks
        if checks:
            parts += ["### Targets", "", "```"] + [fmt_check(c) for c in checks] + ["```", ""]
        if make_plots:
            for path in plots(device_rows, out_dir, slug):
                parts += [f"![{path.stem}]({path.name})", ""]
        if ops:
            parts += ["### Operators", "", markdown_table(OP_HEADER, op_lines(ops)), ""]
        if models:
            parts += ["### Module and model", "", markdown_table(MODEL_HEADER,
                                                                 model_lines(models)), ""]
    errors = [s for s in skipped if s.get("kind") == "error"]
    unavailable = defaultdict(set)
    for s in skipped:
        if s.get("kind") != "error":
            unavailable[s["reason"]].add(s["file"])
    if errors or unavailable:
        parts += ["## Skipped cases", ""]
        for s in errors:
            parts.append(f"- failed: `{s['test']}` ({s['file']}): {s['reason']}")
        for reason, files in sorted(unavailable.items()):
            parts.append(f"- not available ({', '.join(sorted(files))}): {reason}")
        parts.append("")
    text = "\n".join(parts)
    (out_dir / "README.md").write_text(text)
    return text, all_checks


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.report", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", type=Path, default=HERE / "results",
                        help="folder of pytest-benchmark JSON files")
    parser.add_argument("--out", type=Path, default=None, help="default: the results folder")
    parser.add_argument("--no-plots", action="store_true")
    args = parser.parse_args(argv)
    paths = sorted(args.results.glob("*.json"))
    if not paths:
        print(f"no JSON files in {args.results}", file=sys.stderr)
        return 1
    rows, skipped = load(paths)
    out = args.out or args.results
    text, checks = report(rows, skipped, out, make_plots=not args.no_plots)
    print(f"wrote {out / 'README.md'} from {len(rows)} results in {len(paths)} files")
    for check in checks:
        print(fmt_check(check))
    return 0


if __name__ == "__main__":
    sys.exit(main())
