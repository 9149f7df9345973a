"""The steps of scripts/gpu_check.sh (which picks the interpreter and then runs this).

    python scripts/gpu_check/main.py [--plan] [--assume-gpu] [STEP|GROUP ...]

Steps (in this order): build env tests memcheck racecheck initcheck synccheck ddp demo
bench-targets bench-models bench-ops-block1 bench-ops-blocks2-4 report; groups: sanitizers,
bench. None named (and $STEPS empty): all. --plan prints the steps with their timeouts and
commands, and what this machine would skip, and runs nothing (but the compute-sanitizer probe,
a few seconds, when a sanitizer step is selected on a GPU machine).
"""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import socket
import subprocess
import sys
import tarfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import plan  # noqa: E402
import runner  # noqa: E402

ROOT = plan.ROOT


def parse(argv):
    p = argparse.ArgumentParser(prog="scripts/gpu_check.sh", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("steps", nargs="*", help="steps or groups (default: $STEPS, else all)")
    p.add_argument("--plan", action="store_true", help="print the plan, run nothing")
    p.add_argument("--assume-gpu", action="store_true",
                   help="with --plan: the plan for a one-GPU H100/H200 machine, on any machine")
    p.add_argument("--out", type=Path, default=os.environ.get("GPU_CHECK_OUT") or None,
                   help="results folder (default: benchmarks/results/gpu-check/<gpu>-<date>)")
    p.add_argument("--budget", type=float, default=_env_float("GPU_CHECK_BUDGET_S"),
                   help=f"seconds for the whole run, 0 for none (default: {plan.GPU_BUDGET_S} "
                        "with a GPU, none without)")
    p.add_argument("--no-build", action="store_true",
                   help="use the extension as it is (default: build unless already current)")
    p.add_argument("--tar", type=Path, help="also pack the results folder into this .tar.gz")
    p.add_argument("--serial", action="store_true",
                   default=os.environ.get("GPU_CHECK_SERIAL") == "1",
                   help="run the checks phase one step at a time (default: side by side)")
    args = p.parse_args(argv)
    if args.assume_gpu and not args.plan:
        p.error("--assume-gpu only goes with --plan")
    args.steps = args.steps or os.environ.get("STEPS", "").split()
    return args


def _env_float(name):
    value = os.environ.get(name)
    return float(value) if value else None


def assumed_gpu_machine() -> plan.Machine:
    return plan.Machine(python=sys.executable, gpus=1, capability="9.0",
                        gpu_name="NVIDIA H200 (assumed)",
                        sanitizer=plan.find_sanitizer() or "/usr/local/cuda/bin/compute-sanitizer",
                        xdist=True, pytest_timeout=True, nproc=16)


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in text.lower()).strip("-")


def default_out(m: plan.Machine) -> Path:
    name = _slug(m.gpu_name) if m.gpus else f"cpu-{_slug(socket.gethostname())}"
    when = time.strftime("%Y%m%d-%H%M", time.gmtime())
    return ROOT / "benchmarks/results/gpu-check" / f"{name}-{when}"


def print_plan(m, steps, out, budget, serial):
    where = (f"{m.gpus} GPU(s): {m.gpu_name}, sm_{m.capability.replace('.', '')}" if m.gpus
             else "no GPU")
    print(f"gpu_check plan on {where}")
    print(f"results: {out}")
    print(f"budget: {f'{budget:.0f} s' if budget else 'none'} "
          f"(the report keeps {plan.REPORT_RESERVE_S} s)")
    print(f"compute-sanitizer: {m.sanitizer or 'not found'}; probe: {probe_line(m)}")
    expected = 0
    for batch in runner.batches(steps, serial):
        if len(batch) > 1:
            print(f"     side by side ({batch[0].phase}):")
        run = [s for s in batch if not s.skip]
        expected += max((plan.EXPECTED_GPU_S.get(s.name, 0) for s in run), default=0)
        for s in batch:
            state = f"SKIP: {s.skip}" if s.skip else "run"
            estimate = f"estimate {plan.EXPECTED_GPU_S[s.name]:3d} s   " if m.gpus else ""
            print(f"  {s.name:20s} timeout {s.timeout_s:4d} s   {estimate}{state}")
            _print_command(s)
    if m.gpus:
        print(f"estimated wall time on one H200: {expected} s (an estimate; never measured)")


def _print_command(s):
    env = " ".join(f"{k}={shlex.quote(v)}" for k, v in s.env.items())
    print(f"       {env + ' ' if env else ''}{shlex.join(s.argv)}")
    if s.note:
        print(f"       note: {s.note}")


def probe_line(m) -> str:
    return m.sanitizer_probe or "not run"


def probe_sanitizer(m, steps, assumed: bool) -> bool:
    """Probes compute-sanitizer once where a sanitizer step is to run on this GPU (a few
    seconds); else says why not. True when it probed (the plan must be made again)."""
    why = ("--assume-gpu: no GPU to probe" if assumed else "no GPU" if not m.gpus else
           "compute-sanitizer not found" if not m.sanitizer else
           "no sanitizer step selected" if not any(s.name in plan.SANITIZER_TOOLS for s in steps)
           else None)
    if why:
        m.sanitizer_probe = f"not run ({why})"
        return False
    plan.check_sanitizer(m)
    return True


def header(m, out, steps, budget) -> list[str]:
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                                capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    import torch

    gpu = f"{m.gpus} x {m.gpu_name} (sm_{m.capability.replace('.', '')})" if m.gpus else "none"
    return [f"gpu_check {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())} on "
            f"{socket.gethostname()}, git {commit or 'unknown'}",
            f"python {sys.version.split()[0]} ({m.python}), torch {torch.__version__}, GPU {gpu}",
            f"compute-sanitizer: {m.sanitizer or 'not found'}; probe: {probe_line(m)}",
            f"steps: {' '.join(s.name for s in steps)}",
            f"budget: {f'{budget:.0f} s' if budget else 'none'}; results: {out}",
            "this script had never run on a GPU before its first GPU run (docs/gpu_check.md): "
            "read the logs, not only the exit codes"]


def before_step(m, out):
    """Reasons decided just before a step runs, from what the earlier steps left."""
    def check(step):
        if step.name == "build" and os.environ.get("GPU_CHECK_REBUILD") != "1":
            try:
                probe = subprocess.run([m.python, str(ROOT / "scripts/gpu_check/build_current.py"),
                                        "--cuda" if m.gpus else "--cpu", m.capability],
                                       cwd=ROOT, capture_output=True, text=True, timeout=120)
            except subprocess.TimeoutExpired:
                return None  # cannot tell: build
            if probe.returncode == 0:
                return f"already current: {probe.stdout.strip()} (GPU_CHECK_REBUILD=1 rebuilds)"
        if step.name == "report" and not list((Path(out) / "bench").glob("*.json")):
            return "no benchmark JSON in bench/ (the benchmark steps did not run or failed)"
        return None
    return check


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def main(argv=None) -> int:
    started = time.monotonic()
    args = parse(argv)
    m = assumed_gpu_machine() if args.assume_gpu else plan.probe(sys.executable)
    budget = args.budget if args.budget is not None else (plan.GPU_BUDGET_S if m.gpus else 0)
    out = (Path(args.out) if args.out else default_out(m)).resolve()
    try:
        steps = plan.select(plan.steps(m, out), args.steps, build=not args.no_build)
    except ValueError as e:
        print(f"gpu_check: {e}", file=sys.stderr)
        return 2
    # Once, before the four sanitizer steps: where this runtime refuses compute-sanitizer they
    # are skipped with its reason instead of each failing after its start-up.
    if probe_sanitizer(m, steps, args.assume_gpu):
        steps = plan.select(plan.steps(m, out), args.steps, build=not args.no_build)
    if args.plan:
        print_plan(m, steps, out, budget, args.serial)
        return 0
    # Every step imports sharpattn from this tree, whatever else the interpreter has installed.
    os.environ["PYTHONPATH"] = os.pathsep.join(
        [str(ROOT)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench").mkdir(exist_ok=True)
    if m.sanitizer_ok is not None:
        argv = [m.sanitizer, "--tool", "memcheck", m.python, "-c", plan.SANITIZER_PROBE_CODE]
        (out / "sanitizer-probe.log").write_text(
            f"$ {shlex.join(argv)}\n# {m.sanitizer_probe}\n{m.sanitizer_probe_output}")
    os.environ["GPU_CHECK_SANITIZER_PROBE"] = probe_line(m)  # env.log records it too
    summary = runner.Summary(out, header(m, out, steps, budget))
    if budget:  # the budget is the whole run's: what the probes took before the steps counts
        spent = time.monotonic() - started
        budget = max(1.0, budget - spent)
        summary.header.append(f"{spent:.0f} s spent before the first step (torch, the probes): "
                              f"{budget:.0f} s left for the steps")
    print("\n".join(summary.header), flush=True)
    signal.signal(signal.SIGTERM, _interrupt)  # stop the steps too, as Ctrl-C does
    try:
        status = runner.run_steps(steps, out, summary, budget_s=budget, cwd=ROOT,
                                  before_step=before_step(m, out),
                                  report_reserve_s=plan.REPORT_RESERVE_S, serial=args.serial)
    except KeyboardInterrupt:
        print(f"interrupted; what ran is in {out / 'summary.txt'}", flush=True)
        return 130
    print(f"results: {out}\nsummary: {out / 'summary.txt'}; exit {status}", flush=True)
    if args.tar:
        with tarfile.open(args.tar, "w:gz") as tar:
            tar.add(out, arcname=out.name)
        print(f"packed: {args.tar}")
    return status


if __name__ == "__main__":
    sys.exit(main())
