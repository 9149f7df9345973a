"""gpu_check's demo step: the user's path on the GPU, through the real command lines.

    python scripts/gpu_check/demo_check.py --results DIR [--json FILE] [--work DIR]
                                           [--epochs 2] [--device cuda] [--dry-run]

1. sharpattn-train with no --config (the built-in synthetic demo: baseline from scratch, then
   baseline_ft and san_ft from its best.pt, then AAA-Net's three stages) on the GPU with AMP bf16
   and channels_last, every run and stage cut to --epochs epochs;
2. sharpattn-eval of the fine-tuned SAN's best.pt (one view per image);
3. sharpattn-export of the same checkpoint: ONNX, checked in onnxruntime, where onnx, onnxscript
   and onnxruntime are installed; else a torch.export .pt2 file, checked with torch.export.load
   (demo.json says why).

Each command runs as its console script would (the module:function of pyproject.toml's
[project.scripts], called through `python -c`, so nothing needs to be on PATH), in its own
process, its output passed through to this one's. demo.json records each command, its exit
code, wall time, the result table it printed and the last lines of its output; it is rewritten
after every command, so a run stopped at its timeout keeps what finished. The checkpoints and
the generated data go to --work (default: a new temporary folder), not to --results: they are
hundreds of megabytes a run, and the results folder is meant to be committed. Exit 0 when every
command passed and printed what it should.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# pyproject.toml's [project.scripts], used where it cannot be read (no tomllib before 3.11).
FALLBACK_ENTRY_POINTS = {
    "sharpattn-train": "sharpattn.reid.cli:_console_train",
    "sharpattn-eval": "sharpattn.reid.cli:_console_eval",
    "sharpattn-export": "sharpattn.reid.deploy_cli:_console_export",
}
# The demo's result table: baseline, baseline_ft, san_ft, and one row per AAA-Net stage.
EXPECTED_TRAIN_ROWS = 6
TAIL_LINES = 25


def entry_points() -> dict[str, str]:
    """{console script: "module:function"} from pyproject.toml."""
    try:
        import tomllib

        with open(ROOT / "pyproject.toml", "rb") as f:
            scripts = tomllib.load(f)["project"]["scripts"]
        return {**FALLBACK_ENTRY_POINTS, **scripts}
    except (ImportError, OSError, KeyError, ValueError):
        return dict(FALLBACK_ENTRY_POINTS)


def console(name: str, python: str = sys.executable, points: dict | None = None) -> list[str]:
    """argv that runs console script `name` with `python`, as its installed wrapper would."""
    module, func = (points or entry_points())[name].split(":")
    code = (f"import sys; sys.argv[0] = {json.dumps(name)}; from {module} import {func}; "
            f"sys.exit({func}())")
    return [python, "-c", code]


def export_format(find_spec=importlib.util.find_spec) -> tuple[str, str]:
    """("onnx" or "pt2", why). sharpattn-export writes ONNX with onnx + onnxscript and checks it
    in onnxruntime, which it imports without catching its absence (a traceback, exit 1)."""
    missing = [m for m in ("onnx", "onnxscript", "onnxruntime") if find_spec(m) is None]
    if not missing:
        return "onnx", "onnx, onnxscript and onnxruntime installed: ONNX, checked in onnxruntime"
    return "pt2", (f"{', '.join(missing)} not installed: a torch.export .pt2 file instead of "
                   f"ONNX (sharpattn-export needs onnx and onnxscript to write ONNX and "
                   f"onnxruntime to check it), checked with torch.export.load")


def plan(work: Path, results: Path, python: str = sys.executable, epochs: int = 2,
         device: str = "cuda", fmt: str = "onnx") -> list[dict]:
    """The commands in order: name, argv, and the file each needs from the one before."""
    runs = work / "demo"
    best = runs / "san_ft" / "best.pt"
    train = console("sharpattn-train", python) + [
        "-o", str(runs), f"train.device={device}", "train.amp=bf16", "train.channels_last=true",
        f"optim.epochs={epochs}", "optim.decay_start=0", f"data.root={work / 'demo-data'}",
        "train.progress=false"]
    evaluate = console("sharpattn-eval", python) + [
        str(best), "--no-ten-crop", "-o", str(results / "demo-eval")]
    export = console("sharpattn-export", python) + [
        str(best), "--format", fmt, "-o", str(runs / f"san.{fmt}")]
    return [{"name": "train", "argv": train, "needs": None},
            {"name": "eval", "argv": evaluate, "needs": str(best)},
            {"name": "export", "argv": export, "needs": str(best)}]


class Stopped(Exception):
    pass


def _stop(signum, frame):
    raise Stopped


def run(argv: list[str]) -> dict:
    """Runs one command, its output passed through; returns exit code, wall time, output."""
    start = time.monotonic()
    lines: list[str] = []
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            errors="replace", cwd=ROOT, stdin=subprocess.DEVNULL)
    try:
        for line in proc.stdout:
            sys.stdout.write(line)
            sys.stdout.flush()
            lines.append(line.rstrip("\n"))
        rc = proc.wait()
    except Stopped:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        return {"status": "interrupted", "exit_code": proc.returncode,
                "wall_s": round(time.monotonic() - start, 1), "lines": lines}
    return {"status": "ok" if rc == 0 else "failed", "exit_code": rc,
            "wall_s": round(time.monotonic() - start, 1), "lines": lines}


def table(lines: list[str]) -> list[str]:
    """The Markdown table a command printed (its last one)."""
    found, current = [], []
    for line in lines:
        if line.startswith("|"):
            current.append(line)
        elif current:
            found, current = current, []
    return current or found


def problems_of(name: str, record: dict) -> list[str]:
    """What a command that exited 0 should have printed and did not."""
    rows = record["table"][2:]  # the header and its rule first
    if name == "train":
        empty = [r for r in rows if "| - |" in r]
        if len(rows) < EXPECTED_TRAIN_ROWS:
            return [f"train: {len(rows)} rows in the result table, expected "
                    f"{EXPECTED_TRAIN_ROWS} (baseline, baseline_ft, san_ft, 3 AAA-Net stages)"]
        if empty:
            return [f"train: no scores for {len(empty)} runs: {'; '.join(empty)}"]
    if name == "eval" and not rows:
        return ["eval: no result table printed"]
    if name == "export":
        checks = [x.strip() for x in record["lines"] if x.strip().startswith("batch ")]
        record["checks"] = checks
        if not checks or not all(x.endswith("-> OK") for x in checks):
            return ["export: no passing comparison of the exported file with the model"]
    return []


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="demo_check.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--results", type=Path, required=True,
                   help="gpu_check's results folder (the evaluation's files go to demo-eval/)")
    p.add_argument("--json", type=Path, help="[RESULTS/demo.json]")
    p.add_argument("--work", type=Path, help="checkpoints, data, export [a new temporary folder]")
    p.add_argument("--epochs", type=int, default=2, help="epochs of every run and stage [2]")
    p.add_argument("--device", default="cuda", help="train.device [cuda]")
    p.add_argument("--dry-run", action="store_true", help="write demo.json with the commands only")
    args = p.parse_args(argv)
    results = args.results.resolve()
    json_path = args.json or results / "demo.json"
    work = (args.work or Path(tempfile.mkdtemp(prefix="sharpattn-gpu-check-demo-"))).resolve()
    fmt, fmt_reason = export_format()
    commands = plan(work, results, epochs=args.epochs, device=args.device, fmt=fmt)
    record = {"work": str(work), "device": args.device, "epochs": args.epochs,
              "amp": "bf16", "channels_last": True, "export_format": fmt,
              "export_reason": fmt_reason, "export_device": "cpu (sharpattn-export has no "
              "--device: it loads the checkpoint on the CPU)",
              "commands": [{"name": c["name"], "command": shlex.join(c["argv"]),
                            "status": "not run (--dry-run)" if args.dry_run else "pending"}
                           for c in commands],
              "problems": [], "passed": None}

    def write():
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(record, indent=1) + "\n")

    write()
    if args.dry_run:
        for c in record["commands"]:
            print(f"{c['name']}: {c['command']}")
        print(f"export: {fmt_reason}")
        return 0
    print(f"demo: work folder {work}; export: {fmt_reason}", flush=True)
    signal.signal(signal.SIGTERM, _stop)
    status = 0
    for command, entry in zip(commands, record["commands"]):
        if command["needs"] and not Path(command["needs"]).is_file():
            entry.update(status="skipped", reason=f"{command['needs']} was not written")
            record["problems"].append(f"{command['name']}: skipped, no {command['needs']}")
            status = 1
            write()
            continue
        print(f"\n== {command['name']}: {entry['command']}", flush=True)
        result = run(command["argv"])
        entry.update(status=result["status"], exit_code=result["exit_code"],
                     wall_s=result["wall_s"], table=table(result["lines"]),
                     tail=result["lines"][-TAIL_LINES:])
        if result["status"] == "interrupted":
            record["problems"].append(f"{command['name']}: stopped from outside (timeout?)")
            record["passed"] = False
            write()
            return 143
        if result["exit_code"] != 0:
            record["problems"].append(f"{command['name']}: exit {result['exit_code']}")
        else:
            record["problems"] += problems_of(command["name"], entry)
        status = 1 if record["problems"] else status
        print(f"== {command['name']}: exit {result['exit_code']} in {result['wall_s']:.1f} s",
              flush=True)
        write()
    results_md = work / "demo" / "results.md"
    if results_md.is_file():  # the train's table, beside demo.json
        (results / "demo-results.md").write_text(results_md.read_text())
    record["passed"] = status == 0
    write()
    print(f"\ndemo: {'passed' if status == 0 else 'FAILED: ' + '; '.join(record['problems'])}"
          f" ({json_path})", flush=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
