"""Options and fixtures of the sharpattn benchmark suites (see benchmarks/README.md).

    python -m benchmarks.run                    # ops + models on the default device, JSON saved
    python -m pytest benchmarks/bench_ops.py --benchmark-only --device cpu --batch 8 --quick

The copy bandwidth of the device is measured once per session and copied into every result's
extra_info, with the device name and versions, so each JSON file stands on its own. Cases that
cannot run (a backend this machine lacks, a torch.compile that fails) are skipped with the
reason, and the reason is also kept in the JSON under "sharpattn_failures".
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from benchmarks import common  # noqa: E402

IMPLS = ("reference", "compile", "cpu", "cuda", "triton")


def pytest_addoption(parser):
    group = parser.getgroup("sharpattn benchmarks")
    group.addoption("--device", default=None,
                    help="cpu or cuda (default: cuda when a GPU is visible, else cpu)")
    group.addoption("--batch", type=int, default=None,
                    help="batch size of the op shapes (default 256 on cuda, 8 on cpu)")
    group.addoption("--blocks", default="1,2,3,4", help="SAN blocks to run, e.g. 1,2")
    group.addoption("--dtypes", default="float32,bfloat16", help="e.g. float32,bfloat16")
    group.addoption("--layouts", default="contiguous,channels_last",
                    help="contiguous and/or channels_last")
    group.addoption("--impls", default=",".join(IMPLS),
                    help="implementations: reference (eager), compile (torch.compile of the "
                         "reference), cpu, cuda, triton")
    group.addoption("--mask-inputs", default="t,x",
                    help="sharp_attention mask input: t (x is t) and/or x (a separate x)")
    group.addoption("--rounds", type=int, default=None,
                    help="timed rounds per case (default 20 on cuda, 5 on cpu)")
    group.addoption("--warmup", type=int, default=None,
                    help="untimed warm-up rounds (default 3 on cuda, 1 on cpu)")
    group.addoption("--quick", action="store_true",
                    help="block 1, float32, contiguous, 3 rounds: a check that all runs")
    group.addoption("--compile-philox", action="store_true",
                    help="torch.compile the whole reference sharp_attention, Philox included "
                         "(inductor takes hours on it; by default the noise is an input)")
    group.addoption("--model-batch", type=int, default=None,
                    help="model suite batch (default 256 on cuda, 8 on cpu)")
    group.addoption("--model-size", default=None,
                    help="model suite image HxW (default 256x128 on cuda, 128x64 on cpu)")


class Options:
    """The parsed options with the device-dependent defaults filled in."""

    def __init__(self, config):
        get = config.getoption
        self.device = get("device") or ("cuda" if torch.cuda.is_available() else "cpu")
        cuda = self.device.startswith("cuda")
        self.quick = get("quick")
        self.batch = get("batch") or (256 if cuda else 8)
        self.blocks = [int(b) for b in get("blocks").split(",") if b]
        self.dtypes = [d for d in get("dtypes").split(",") if d]
        self.layouts = [lay for lay in get("layouts").split(",") if lay]
        self.impls = [i for i in get("impls").split(",") if i]
        self.mask_inputs = [m for m in get("mask_inputs").split(",") if m]
        self.rounds = get("rounds") or (20 if cuda else 5)
        self.warmup = get("warmup") if get("warmup") is not None else (3 if cuda else 1)
        if self.quick:
            self.blocks, self.dtypes, self.layouts = self.blocks[:1], self.dtypes[:1], ["contiguous"]
            self.rounds, self.warmup = 3, 1
        self.compile_philox = get("compile_philox")
        self.model_batch = get("model_batch") or (256 if cuda else 8)
        size = get("model_size") or ("256x128" if cuda else "128x64")
        self.model_size = tuple(int(v) for v in size.lower().split("x"))
        for name in self.dtypes:
            if name not in common.DTYPES:
                raise pytest.UsageError(f"--dtypes: unknown dtype {name!r}")
        for name in self.layouts:
            if name not in common.LAYOUTS:
                raise pytest.UsageError(f"--layouts: unknown layout {name!r}")
        for name in self.impls:
            if name not in IMPLS:
                raise pytest.UsageError(f"--impls: unknown implementation {name!r}")


def pytest_configure(config):
    config.sharpattn_options = Options(config)


def pytest_generate_tests(metafunc):
    opts = metafunc.config.sharpattn_options
    names = metafunc.fixturenames
    if "block" in names:
        metafunc.parametrize("block", opts.blocks, ids=[f"block{b}" for b in opts.blocks])
    if "dtype_name" in names:
        metafunc.parametrize("dtype_name", opts.dtypes)
    if "layout" in names:
        metafunc.parametrize("layout", opts.layouts)
    if "impl" in names:
        metafunc.parametrize("impl", opts.impls)
    if "mask_input" in names:
        metafunc.parametrize("mask_input", opts.mask_inputs,
                             ids=[f"x_is_{m}" if m == "t" else "x_separate"
                                  for m in opts.mask_inputs])
    if "pass_" in names:
        metafunc.parametrize("pass_", ["fwd", "fwdbwd"])


@pytest.fixture(scope="session")
def opts(request):
    return request.config.sharpattn_options


@pytest.fixture(scope="session")
def device(opts):
    if opts.device.startswith("cuda") and not torch.cuda.is_available():
        pytest.skip("--device cuda but no CUDA GPU is visible")
    return torch.device(opts.device)


@pytest.fixture(scope="session")
def env(device):
    """Recorded in every result: device, versions and the copy bandwidth measured once now."""
    record = {"device": device.type, "device_name": common.device_name(device),
              "device_slug": common.device_slug(device), "versions": common.versions(),
              "loadavg_session_start": list(os.getloadavg())}
    record.update(common.measure_copy_bandwidth(device))
    return record


@pytest.fixture
def impl_available(device):
    """Skips (with the reason, also kept in the JSON) when ``impl`` cannot run here."""
    from sharpattn import backends

    def check(impl, request):
        if impl == "compile":
            return
        if impl == "triton" and device.type == "cpu":
            common.skip(request, "Triton on CPU tensors runs only in Triton's interpreter, which is "
                          "orders of magnitude too slow to benchmark")
        reason = backends.why_unavailable(impl, device)
        if reason is not None:
            common.skip(request, f"backend {impl!r} is not available here: {reason}")

    return check


def pytest_benchmark_update_json(config, benchmarks, output_json):
    output_json["sharpattn_failures"] = common.FAILURES
    opts = config.sharpattn_options
    output_json["sharpattn_options"] = {k: v for k, v in vars(opts).items()}


@pytest.fixture(params=[1, None], ids=["1thread", "default_threads"])
def threads(request):
    """torch's CPU threads for a re-ID benchmark: 1 (the fair number on a shared 2-core machine,
    where busy cores make torch's threads wait on each other; its CPU time is what the wall time
    would be on an idle core) or torch's default. Yields the number in use."""
    before = torch.get_num_threads()
    if request.param:
        torch.set_num_threads(request.param)
    yield torch.get_num_threads()
    torch.set_num_threads(before)
