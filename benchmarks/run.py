"""Run the benchmark suites and save their JSON under benchmarks/results/, named by device.

    python -m benchmarks.run                      # ops and models suites, default device
    python -m benchmarks.run ops --device cpu     # one suite; other arguments go to pytest
    python -m benchmarks.run models --quick
    python -m benchmarks.run deploy --device cpu  # inference: eager / torch.compile / onnxruntime
    python -m benchmarks.report                   # then: tables and plots

Writes benchmarks/results/<device>-<suite>.json (e.g. cpu-amd-epyc-2cores-ops.json,
cuda-nvidia-h100-80gb-hbm3-ops.json), replacing an earlier run of the same suite on the same
device. Pass --out DIR to write elsewhere, --tag NAME to keep a partial run beside the main
one (<device>-<suite>-<NAME>.json); the report reads every JSON file there.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
SUITES = {"ops": "bench_ops.py", "models": "bench_models.py", "deploy": "bench_deploy.py",
          "aaanet": "bench_aaanet_stage2.py"}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("suites", nargs="*", default=[], help="ops, models, deploy and/or aaanet (default: ops and models)")
    parser.add_argument("--out", type=Path, default=HERE / "results")
    parser.add_argument("--tag", default="", help="appended to the file name: <device>-<suite>-<tag>.json")
    args, pytest_args = parser.parse_known_args(argv)
    suites = args.suites or ["ops", "models"]
    for suite in suites:
        if suite not in SUITES:
            parser.error(f"unknown suite {suite!r}; choose from {list(SUITES)}")

    import subprocess

    import torch

    sys.path.insert(0, str(HERE.parent))
    from benchmarks import common

    device = "cuda" if torch.cuda.is_available() else "cpu"
    for i, arg in enumerate(pytest_args):
        if arg == "--device" and i + 1 < len(pytest_args):
            device = pytest_args[i + 1]
        elif arg.startswith("--device="):
            device = arg.split("=", 1)[1]
    args.out.mkdir(parents=True, exist_ok=True)
    status = 0
    for suite in suites:
        path = args.out / f"{common.device_slug(device)}-{suite}{'-' + args.tag if args.tag else ''}.json"
        print(f"== {suite} suite on {common.device_name(device)} -> {path}", flush=True)
        # One process per suite: each pytest session measures the copy bandwidth afresh and
        # keeps its own list of skipped cases.
        code = subprocess.run([sys.executable, "-m", "pytest", str(HERE / SUITES[suite]),
                               "--benchmark-only", "-q", "--benchmark-columns=median,iqr,rounds",
                               "--benchmark-sort=name", f"--benchmark-json={path}",
                               *pytest_args], cwd=HERE.parent).returncode
        status = status or code
    return status


if __name__ == "__main__":
    sys.exit(main())
