"""Shared machinery of the benchmark suites: shapes, inputs, the device's copy bandwidth, memory
measurement, the environment record and the one function that times a case and fills
``benchmark.extra_info``.

Timing: pytest-benchmark's pedantic mode, one call per round. The timed function ends with
``torch.cuda.synchronize()`` on a GPU, so the wall-clock time (``time.perf_counter``) covers the
kernels; on the CPU the ops are synchronous.

Memory (recorded next to the time, from one extra call after the timed rounds):
  peak_mem_bytes   GPU: ``torch.cuda.max_memory_allocated()`` during one call minus the memory
                   allocated just before it (the inputs and incoming gradients are already
                   resident, so this is what the op itself needs: outputs, saved tensors,
                   workspace); peak_mem_abs_bytes keeps the absolute figure.
                   CPU: the bytes of the tensors autograd saves for the backward beyond the
                   inputs themselves (saved_extra_bytes), counted with
                   ``torch.autograd.graph.saved_tensors_hooks`` and deduplicated by storage
                   (fwd+bwd cases only; None for forward-only cases).
  saved_bytes      every saved storage, inputs included, on every device (fwd+bwd cases);
  saved_extra_bytes  the same without the inputs' storages.
"""

from __future__ import annotations

import math
import os
import platform
import re
import statistics
import sys
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks import traffic  # noqa: E402

# SAN blocks at the paper's input size (256x128 images): (C, H, W) of each ResNet-50 stage.
BLOCKS = {1: (256, 64, 32), 2: (512, 32, 16), 3: (1024, 16, 8), 4: (2048, 8, 4)}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16,
          "float64": torch.float64}
LAYOUTS = ("contiguous", "channels_last")
GRID = (4, 4)
TAU = 0.5
SEED = 1234


def block_shape(block: int, batch: int) -> tuple[int, int, int, int]:
    c, h, w = BLOCKS[block]
    return (batch, c, h, w)


def feature_map(shape, dtype, layout, device, *, seed=0) -> torch.Tensor:
    """A post-ReLU feature map (many ties at 0, like real trunk features) in the given layout."""
    # Drawn on the device itself: a paper-size batch is 134M elements per map.
    gen = torch.Generator(device=device).manual_seed(seed)
    t = torch.randn(shape, generator=gen, device=device).relu_().to(dtype=dtype)
    if layout == "channels_last":
        t = t.contiguous(memory_format=torch.channels_last)
    return t


def sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


# --------------------------------------------------------------------------------------------
# Environment and the device's copy bandwidth
# --------------------------------------------------------------------------------------------

def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_name(device) -> str:
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{cpu_model()} ({os.cpu_count()} cores)"


def device_slug(device) -> str:
    """A file-name-safe device name: cpu-amd-epyc-2cores, cuda-nvidia-h100-80gb-hbm3."""
    device = torch.device(device)
    if device.type == "cuda":
        name = f"cuda-{torch.cuda.get_device_name(device)}"
    else:
        name = f"cpu-{cpu_model()}-{os.cpu_count()}cores"
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def versions() -> dict:
    import sharpattn

    info = sharpattn.build_info()
    out = {"sharpattn": sharpattn.__version__, "torch": torch.__version__,
           "cuda": torch.version.cuda, "triton": info.get("triton"),
           "python": platform.python_version(), "cpu_kernels": info.get("cpu_kernels"),
           "cuda_kernels": info.get("cuda_kernels")}
    try:
        import subprocess

        out["git"] = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                                    capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        out["git"] = None
    return out


def measure_copy_bandwidth(device, nbytes: int | None = None, rounds: int = 10) -> dict:
    """The device's copy bandwidth: ``dst.copy_(src)`` of one large float32 buffer, counted
    as 2 * nbytes (one read, one write) per copy. Median and best of ``rounds`` copies.

    The buffer (1 GiB on a GPU, 256 MiB on the CPU) is far larger than any cache.
    """
    device = torch.device(device)
    if nbytes is None:
        nbytes = (1 << 30) if device.type == "cuda" else (256 << 20)
    src = torch.empty(nbytes // 4, dtype=torch.float32, device=device).uniform_()
    dst = torch.empty_like(src)
    dst.copy_(src)  # touch every page
    times = []
    for _ in range(rounds + 1):
        sync(device)
        start = time.perf_counter()
        dst.copy_(src)
        sync(device)
        times.append(time.perf_counter() - start)
    times = times[1:]
    moved = traffic.copy_traffic(src.numel() * 4)
    median = statistics.median(times)
    result = {"copy_nbytes": src.numel() * 4, "copy_median_s": median,
              "copy_gbps": moved / median / 1e9, "copy_best_gbps": moved / min(times) / 1e9,
              "copy_threads": torch.get_num_threads()}
    del src, dst
    return result


# --------------------------------------------------------------------------------------------
# Memory
# --------------------------------------------------------------------------------------------

class SavedBytes:
    """Context manager summing the bytes of the tensors autograd saves for backward, each
    storage counted once (an input saved by two nodes, or a view of a saved tensor, is one).

    ``nbytes`` counts every saved storage; ``extra_nbytes`` leaves out the storages of
    ``resident`` tensors (the inputs and parameters, in memory whether or not they are saved),
    which is what saving costs on top of them.
    """

    def __init__(self, resident=()):
        self.storages: dict[tuple, int] = {}
        self.resident = {_storage_key(t) for t in resident if isinstance(t, torch.Tensor)}

    def _pack(self, tensor):
        try:
            key = _storage_key(tensor)
            nbytes = tensor.untyped_storage().nbytes()
        except (RuntimeError, NotImplementedError):  # tensors without storage (fakes, sparse)
            key, nbytes = ("id", id(tensor)), tensor.numel() * tensor.element_size()
        self.storages[key] = max(self.storages.get(key, 0), nbytes)
        return tensor

    @staticmethod
    def _unpack(tensor):
        return tensor

    @property
    def nbytes(self) -> int:
        return sum(self.storages.values())

    @property
    def extra_nbytes(self) -> int:
        return sum(n for key, n in self.storages.items() if key not in self.resident)

    def __enter__(self):
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, self._unpack)
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc):
        self._hooks.__exit__(*exc)
        return False


def _storage_key(tensor) -> tuple:
    return (str(tensor.device), tensor.untyped_storage().data_ptr())


def _tensors(outputs):
    if isinstance(outputs, torch.Tensor):
        return (outputs,)
    return tuple(o for o in outputs if isinstance(o, torch.Tensor))


class Case:
    """One benchmarked call: ``fn(*inputs)`` returns a tensor or a tuple of tensors.

    For pass "fwd" it runs under ``torch.no_grad()``. For "fwdbwd" the leaves in ``inputs`` that
    require grad get their gradients through ``torch.autograd.grad`` with fixed ``grad_outputs``
    (made once, outside the timing), so nothing accumulates between rounds.
    """

    def __init__(self, fn, inputs, pass_, device, grad_outputs=None):
        self.fn, self.inputs, self.pass_, self.device = fn, tuple(inputs), pass_, device
        self.leaves = tuple(t for t in self.inputs
                            if isinstance(t, torch.Tensor) and t.requires_grad)
        self.grad_outputs = grad_outputs
        if pass_ == "fwdbwd" and not self.leaves:
            raise ValueError("a fwd+bwd case needs inputs that require grad")

    def _grads_for(self, outs):
        if self.grad_outputs is None:
            gen = torch.Generator(device=self.device).manual_seed(7)
            # In the output's layout (channels_last stays channels_last), as in a network.
            self.grad_outputs = tuple(
                (torch.empty_like(o, dtype=torch.float32).normal_(generator=gen)
                 if o.dim() > 1 else torch.ones_like(o)).to(dtype=o.dtype)
                for o in outs)
        return self.grad_outputs

    def forward_backward(self, saved: SavedBytes | None = None):
        if self.pass_ == "fwd":
            with torch.no_grad():
                return self.fn(*self.inputs)
        if saved is not None:
            with saved:
                outs = _tensors(self.fn(*self.inputs))
        else:
            outs = _tensors(self.fn(*self.inputs))
        return torch.autograd.grad(outs, self.leaves, self._grads_for(outs))

    def __call__(self):
        result = self.forward_backward()
        sync(self.device)
        return result

    def prepare(self):
        """First call (compiles a torch.compile'd fn) and the incoming gradients."""
        self()

    def memory(self) -> dict:
        """Peak memory of one call and the bytes saved for backward (see the module docs)."""
        out = {"peak_mem_bytes": None, "peak_mem_abs_bytes": None, "saved_bytes": None,
               "saved_extra_bytes": None}
        device = torch.device(self.device)
        if self.pass_ == "fwdbwd":
            saved = SavedBytes(resident=self.inputs)
            try:
                self.forward_backward(saved)
                sync(device)
                out["saved_bytes"] = saved.nbytes
                out["saved_extra_bytes"] = saved.extra_nbytes
            except Exception as exc:  # noqa: BLE001 - a hook a compiled fn refuses: note it
                out["saved_bytes_error"] = f"{type(exc).__name__}: {exc}"[:300]
        if device.type == "cuda":
            sync(device)
            torch.cuda.reset_peak_memory_stats(device)
            before = torch.cuda.memory_allocated(device)
            self()
            peak = torch.cuda.max_memory_allocated(device)
            out["peak_mem_bytes"] = peak - before
            out["peak_mem_abs_bytes"] = peak
            out["peak_mem_method"] = "cuda max_memory_allocated - memory_allocated before the call"
        else:
            out["peak_mem_bytes"] = out["saved_extra_bytes"]
            out["peak_mem_method"] = ("bytes saved for backward beyond the inputs "
                                      "(saved_tensors_hooks, per storage)")
        return out


FAILURES: list[dict] = []


def skip(request, reason: str, kind: str = "unavailable"):
    """pytest.skip, remembering the test, the kind ("unavailable": this machine lacks the
    backend; "error": it should run but failed, e.g. torch.compile) and the reason for the JSON."""
    FAILURES.append({"test": request.node.name, "fullname": request.node.nodeid,
                     "kind": kind, "reason": reason})
    pytest.skip(reason)



def run_case(benchmark, env, case: Case, *, rounds: int, warmup: int, info: dict) -> None:
    """Time ``case`` (already called once by the caller: compiled, warm) with pytest-benchmark
    and record everything about it in extra_info.

    ``info`` must hold op, pass, shape, dtype, layout, impl and traffic_bytes; this adds the
    median time, the achieved bandwidth on that traffic, its fraction of the copy bandwidth
    measured in the same session (``env``), the memory figures, the device, versions, threads
    and the load average before and after (the machine may be shared).
    """
    extra = benchmark.extra_info
    extra.update(info)
    extra.update(env)
    extra["loadavg_before"] = list(os.getloadavg())
    extra["threads"] = torch.get_num_threads()
    benchmark.pedantic(case, rounds=rounds, warmup_rounds=warmup, iterations=1)
    extra["loadavg_after"] = list(os.getloadavg())
    extra.update(case.memory())
    stats = getattr(benchmark, "stats", None)
    if stats is not None and getattr(stats, "stats", None) is not None:
        median = stats.stats.median
        extra["median_s"] = median
        if info.get("traffic_bytes"):
            extra["gbps"] = info["traffic_bytes"] / median / 1e9
            extra["frac_copy_bw"] = (extra["gbps"] / env["copy_gbps"] if env.get("copy_gbps")
                                     else None)


# --------------------------------------------------------------------------------------------
# The torch.compile baseline of sharp attention
# --------------------------------------------------------------------------------------------

def reference_given_noise(t, x, noise, *, tau: float, eps: float = 1e-6, return_tv: bool = False):
    """sharpattn.reference.sharp_attention (sample mode, residual) with the logistic noise L
    passed in instead of generated: F = (1 + M) T, M = sigmoid((logit(X) + L) / tau), and the
    per-sample TV of A = M T. Written with the reference's own mask_logit and tv_loss.

    This is what ``torch.compile`` is benchmarked on by default: inductor cannot compile the
    reference's Philox in practice (its lowering time grows exponentially with the unrolled
    rounds; see benchmarks/README.md), so the compiled baseline gets the noise for free as one
    more input (in the input's dtype) instead of generating it.
    """
    from sharpattn import reference

    acc = reference.accumulation_dtype(t.dtype)
    t_acc = t.to(acc)
    x_acc = t_acc if x is None else x.to(acc)
    m = torch.sigmoid((reference.mask_logit(x_acc, eps) + noise.to(acc)) / tau)
    out = ((1 + m) * t_acc).to(t.dtype)
    if return_tv:
        return out, reference.tv_loss(m * t_acc)
    return (out,)


def human_bytes(n) -> str:
    if n is None:
        return "-"
    n = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n}"  # pragma: no cover


def numel(shape) -> int:
    return math.prod(int(s) for s in shape)
