"""What gpu_check ran on: Python, torch, CUDA, Triton, the tools, the GPU and the sharpattn
build (printed; gpu_check keeps it as env.log)."""

import importlib.metadata as md
import json
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from plan import find_sanitizer  # noqa: E402


def tool(argv, lines=2):
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=30)
        return " | ".join((out.stdout or out.stderr).strip().splitlines()[-lines:])
    except (OSError, subprocess.SubprocessError) as e:
        return f"not usable ({e})"


def main():
    import torch

    print("python", sys.version.split()[0], sys.executable)
    print("torch", torch.__version__, "cuda", torch.version.cuda)
    for name in ("triton", "setuptools", "wheel", "ninja", "numpy", "pytest", "pytest-xdist",
                 "pytest-timeout", "pytest-benchmark", "hypothesis", "expecttest"):
        try:
            print(name, md.version(name))
        except md.PackageNotFoundError:
            print(name, "not installed")
    for i in range(torch.cuda.device_count()):
        p = torch.cuda.get_device_properties(i)
        print(f"gpu{i}", p.name, f"sm_{p.major}{p.minor}", f"{p.total_memory / 2**30:.0f} GiB",
              p.multi_processor_count, "SMs")
    print("platform", platform.platform())
    print("nvcc", tool(["nvcc", "--version"]) if shutil.which("nvcc") else "not on PATH")
    print("driver", tool(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"])
          if shutil.which("nvidia-smi") else "nvidia-smi not on PATH")
    san = find_sanitizer()
    print("compute-sanitizer", f"{san}: {tool([san, '--version'], 1)}" if san else "not found")
    if os.environ.get("GPU_CHECK_SANITIZER_PROBE"):  # main.py's probe, before the steps
        print("compute-sanitizer probe", os.environ["GPU_CHECK_SANITIZER_PROBE"])
    try:
        import sharpattn
        print("sharpattn build_info", json.dumps(sharpattn.build_info(), indent=1))
    except Exception as e:  # noqa: BLE001 - report, do not fail the record
        print("sharpattn does not import:", e)


if __name__ == "__main__":
    main()
