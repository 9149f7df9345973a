"""`python -m sharpattn`: what this installation can run, and how fast the fused op is here.

Prints the build report, the backend table per device, and a timed forward + backward of
sharp_attention on the SAN block-1 shape (batch 8 on the CPU, the paper's batch 256 on a GPU)
for every backend that runs natively, next to the eager reference.
"""

from __future__ import annotations

import argparse
import time

import torch

import sharpattn
from sharpattn import backends
from sharpattn import functional as F


def _time_fwd_bwd(backend: str, t: torch.Tensor, repeats: int) -> float:
    """Median seconds of one forward + backward (x is t, sample mode, tau 0.5)."""
    grad = torch.ones_like(t)
    leaf = t.detach().requires_grad_()
    times = []
    for i in range(repeats + 1):
        if t.is_cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        out = F.sharp_attention(leaf, tau=0.5, seed=i, backend=backend)
        torch.autograd.grad(out, leaf, grad)
        if t.is_cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return sorted(times[1:])[len(times[1:]) // 2]  # the first call warms up


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m sharpattn", description=__doc__)
    parser.add_argument("--batch", type=int, default=None, help="batch size of the timed shape")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)

    info = sharpattn.build_info()
    print(f"sharpattn {sharpattn.__version__}  torch {info['runtime_torch']}  "
          f"CUDA {info['runtime_cuda']}  triton {info['triton']}")
    print(f"compiled kernels: cpu={info['cpu_kernels']} cuda={info['cuda_kernels']} "
          f"(built for torch {info['built_with_torch']}, CUDA archs {info['cuda_arch_list']})")
    for problem in info["problems"]:
        print(f"  problem: {problem}")

    print("\nbackends:")
    for device, entries in backends.report().items():
        for name, status in entries.items():
            print(f"  {device:5s} {name:10s} {status}")

    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    print("\nsharp_attention forward + backward, SAN block-1 shape, float32, median of "
          f"{args.repeats}:")
    for device in devices:
        batch = args.batch or (8 if device == "cpu" else 256)
        t = torch.randn(batch, 256, 64, 32, device=device).relu()
        names = [n for n in backends.available(device)
                 if not (n == "triton" and device == "cpu")]  # the CPU interpreter is not fast
        timings = {name: _time_fwd_bwd(name, t, args.repeats) for name in names}
        for name, seconds in timings.items():
            speedup = timings["reference"] / seconds
            print(f"  {device:5s} {name:10s} {tuple(t.shape)}  {seconds * 1e3:9.2f} ms  "
                  f"{speedup:5.1f}x eager")


if __name__ == "__main__":
    main()
