"""What scripts/gpu_check.sh runs: the steps, in order of priority, with their commands and
timeouts, and the reason a step is skipped on this machine.

The order matters: when the overall budget runs out, the steps at the end are the ones cut, so
the cheap, decisive checks come first and the longest benchmarks last (the report always keeps
its reserve). Timeouts are per step and were estimated, never measured on a GPU (see
docs/gpu_check.md); a step's timeout is the most it may take, not what it is expected to take.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# The sanitizer subset: the CUDA backend's tests (not the reference or Triton on the GPU) that
# reach every kernel family on small shapes: sharp_attention in each mode, x is t and a separate
# x, channels_last and sliced inputs, the tiled path of large planes, bfloat16, empty batches;
# tv_loss and the fused TV; grid_occlusion and its pooled form; the Philox uniforms. The 64-bit
# offset tests (tensors of 2^31 elements) are left out: instrumented, they would take the budget.
SANITIZER_FILES = ["tests/test_sharp_attention.py", "tests/test_tv.py",
                   "tests/test_grid_occlusion.py", "tests/test_philox.py"]
SANITIZER_K = ("cuda-cuda and not 64bit and (2x3x5x7 or 2x3x7x5 or layouts or large_plane or empty "
               "or (dtypes and bfloat16 and not mean and not hard) or pool_equals or shape0)")
SANITIZER_TOOLS = ("memcheck", "racecheck", "initcheck", "synccheck")
# Our kernels all live in namespace sharpattn::cuda: only they are instrumented (torch's own
# kernels are not ours to check, and instrumenting them costs most of the time).
SANITIZER_KERNEL_FILTER = "kns=sharpattn"

# The benchmark cases the targets are checked on (benchmarks/report.py targets()): block
# 1's fused sharp_attention + TV forward + backward, and the pooled grid occlusion.
TARGET_CASES = "(sharp_attention and tv and not no_tv and fwdbwd) or grid_occlusion_pool"

# (GPU timeout, CPU timeout) in seconds per step; 0: the step needs a GPU.
TIMEOUTS = {
    "env": (60, 120),
    "build": (420, 1800),
    "tests": (300, 3600),
    "memcheck": (150, 0), "racecheck": (180, 0), "initcheck": (150, 0), "synccheck": (150, 0),
    "ddp": (180, 900),
    "demo": (330, 0),
    "bench-targets": (240, 0),
    "bench-models": (180, 0),
    "bench-ops-block1": (120, 0),
    "bench-ops-blocks2-4": (120, 0),
    "report": (90, 90),
}
GROUPS = {
    "sanitizers": list(SANITIZER_TOOLS),
    "bench": ["bench-targets", "bench-models", "bench-ops-block1", "bench-ops-blocks2-4"],
}
# What each step is expected to take on one H200 (16 cores), in seconds: ESTIMATES, not
# measurements (no GPU has run this yet). The checks phase runs side by side: its wall time is
# about its longest step's. Expected wall time: about 555 s in all.
# demo: one process trains 7 runs / stages of 2 epochs (~3 steps each at 64x32) with data
# generation, an evaluation, pictures and two checkpoints per run (~10 s a run, most of it not
# GPU work), then sharpattn-eval (~15 s) and an export on the CPU with its check (~40 s): about
# 150 s alone, guessed at 170 s beside the other checks. bench-ops-block1 went from 10 rounds
# (60 s, timeout 150 s) to 5 (40 s, timeout 120 s) to make room for it.
EXPECTED_GPU_S = {
    "build": 90, "env": 10,
    "tests": 150, "memcheck": 60, "racecheck": 80, "initcheck": 60, "synccheck": 50, "ddp": 60,
    "demo": 170,
    "bench-targets": 150, "bench-models": 50, "bench-ops-block1": 40, "bench-ops-blocks2-4": 30,
    "report": 15,
}
# Seconds kept back for the report while the steps before it run.
REPORT_RESERVE_S = 60
# The whole run on a GPU: under the device machine's 10 minutes per command, with room for the
# wrapper and for copying the results out.
GPU_BUDGET_S = 560


@dataclasses.dataclass
class Machine:
    """What the plan depends on; probe() reads it, tests and --assume-gpu make one up."""
    python: str
    gpus: int = 0
    capability: str = ""          # "9.0"
    gpu_name: str = ""
    sanitizer: str | None = None  # path of compute-sanitizer
    sanitizer_kernel_filter: bool = True
    # The probe of compute-sanitizer on this GPU (probe_sanitizer): None: not probed (no GPU, no
    # sanitizer, none of its steps selected, or --assume-gpu); else whether it worked, and what
    # it printed (sanitizer_probe: one line for the summary; sanitizer_probe_output: all of it).
    sanitizer_ok: bool | None = None
    sanitizer_probe: str = ""
    sanitizer_probe_output: str = ""
    xdist: bool = False
    pytest_timeout: bool = False
    nproc: int = 1


@dataclasses.dataclass
class Step:
    name: str
    argv: list[str]
    timeout_s: int
    env: dict = dataclasses.field(default_factory=dict)
    skip: str | None = None       # why it will not run here (decided before the run)
    phase: str = ""               # adjacent steps of one phase run side by side
    note: str = ""                # what the summary should say about how it ran

    @property
    def log(self) -> str:
        return f"{self.name}.log"


def probe(python: str) -> Machine:
    """The facts of this machine (imports torch: seconds)."""
    import importlib.util

    import torch

    m = Machine(python=python, nproc=os.cpu_count() or 1)
    if torch.cuda.is_available():
        m.gpus = torch.cuda.device_count()
        m.capability = "%d.%d" % torch.cuda.get_device_capability()
        m.gpu_name = torch.cuda.get_device_name()
    m.sanitizer = find_sanitizer()
    if m.sanitizer:
        m.sanitizer_kernel_filter = _sanitizer_has(m.sanitizer, "--kernel-name")
    m.xdist = importlib.util.find_spec("xdist") is not None
    m.pytest_timeout = importlib.util.find_spec("pytest_timeout") is not None
    return m


def find_sanitizer() -> str | None:
    """compute-sanitizer on PATH, else in the CUDA toolkit's usual places."""
    found = shutil.which("compute-sanitizer")
    if found:
        return found
    for home in (os.environ.get("CUDA_HOME"), "/usr/local/cuda"):
        if home and os.access(Path(home) / "bin" / "compute-sanitizer", os.X_OK):
            return str(Path(home) / "bin" / "compute-sanitizer")
    return None


# Run once before the four sanitizer steps: one allocation and a synchronize under memcheck.
# Where the runtime refuses compute-sanitizer (one of the two the lent machines run: "Device not
# supported", then error 999 at the first allocation), every sanitizer step would fail the same
# way after starting pytest under it, so they are skipped with the probe's line instead.
SANITIZER_PROBE_CODE = ("import torch; torch.zeros(1, device='cuda'); torch.cuda.synchronize(); "
                        "print('sanitizer probe: ok')")
SANITIZER_PROBE_TIMEOUT_S = 30
_REFUSALS = ("device not supported", "error 999", "cudaerrorunknown", "unknown error")


def probe_sanitizer(sanitizer: str, python: str,
                    timeout_s: float = SANITIZER_PROBE_TIMEOUT_S) -> tuple[bool, str, str]:
    """(usable, one line saying what happened, the whole output) of compute-sanitizer's memcheck
    over a one-element CUDA allocation. A timeout counts as usable: it proves nothing, and the
    steps have timeouts of their own."""
    argv = [sanitizer, "--tool", "memcheck", python, "-c", SANITIZER_PROBE_CODE]
    start = time.monotonic()
    try:  # a session of its own: at the timeout, the target process goes with the tool
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, errors="replace", stdin=subprocess.DEVNULL,
                                start_new_session=True)
    except OSError as e:
        return False, f"compute-sanitizer could not start: {e}", ""
    try:
        text, _ = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        text, _ = proc.communicate()
        return True, (f"inconclusive: no answer in {timeout_s:.0f} s (the sanitizer steps run "
                      f"anyway)"), text or ""
    seconds = time.monotonic() - start
    text = text or ""
    refused = [line.strip() for line in text.splitlines()
               if any(r in line.lower() for r in _REFUSALS)]
    if proc.returncode == 0 and not refused:
        return True, f"ok (memcheck ran one CUDA allocation in {seconds:.1f} s)", text
    line = (refused or _error_lines(text) or ["(no output)"])[0][:200]
    return False, (f'compute-sanitizer cannot run on this GPU here: "{line}" (exit '
                   f'{proc.returncode} from memcheck on torch.zeros(1, device="cuda"); see '
                   f'sanitizer-probe.log)'), text


def _error_lines(text: str) -> list[str]:
    """The output's lines, the ones that say error first; compute-sanitizer's banner last."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    errors = [line for line in lines if "error" in line.lower()]
    others = [line for line in lines if line not in errors and "COMPUTE-SANITIZER" not in line]
    return errors + others


def check_sanitizer(m: Machine) -> Machine:
    """Probes compute-sanitizer on this machine's GPU (a few seconds) and records the result in
    `m`; nothing to do without a GPU or a compute-sanitizer."""
    if m.gpus and m.sanitizer:
        m.sanitizer_ok, m.sanitizer_probe, m.sanitizer_probe_output = probe_sanitizer(
            m.sanitizer, m.python)
    return m


def _sanitizer_has(path: str, option: str) -> bool:
    try:
        text = subprocess.run([path, "--help"], capture_output=True, text=True,
                              timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return False
    return option in text


def steps(m: Machine, out: Path) -> list[Step]:
    """Every step in order, each with its command and, where it cannot run here, the reason."""
    gpu = m.gpus > 0
    py = m.python
    out = _relative(Path(out))  # the commands run in the repository root
    bench = out / "bench"

    def timeout(name):
        t = TIMEOUTS[name][0 if gpu else 1]
        return t or TIMEOUTS[name][0]

    no_gpu = None if gpu else "no GPU on this machine"
    # Side by side only with a GPU: on a small CPU machine the checks would fight for its cores.
    checks = "checks" if gpu else ""
    result = []
    build_env = {"MAX_JOBS": os.environ.get("MAX_JOBS", str(m.nproc))}
    if gpu:  # this GPU's architecture only: the quickest build that can run here
        build_env.update(SHARPATTN_FORCE_CUDA="1",
                         TORCH_CUDA_ARCH_LIST=os.environ.get("TORCH_CUDA_ARCH_LIST",
                                                             m.capability))
    else:
        build_env["SHARPATTN_FORCE_CPU"] = "1"
    result.append(Step("build", [py, "-m", "pip", "install", "--no-index",
                                 "--no-build-isolation", "--no-deps", "-e", "."],
                       timeout("build"), build_env,
                       note="" if gpu else "the CPU kernels only (no GPU)"))
    # After the build, so that it records what was built (and runs when the build failed).
    result.append(Step("env", [py, "scripts/gpu_check/env_info.py"], timeout("env")))

    pytest_argv = [py, "-m", "pytest", "tests", "-m", "cuda or triton", "-q",
                   "-p", "no:cacheprovider", "-rs", f"--junitxml={out / 'junit.xml'}"]
    tests_env = {}
    if gpu and m.pytest_timeout:  # one hung test fails with its stack, not eating the step
        pytest_argv.append("--timeout=240")  # (without a GPU: pyproject's 20 minutes)
    if gpu and m.xdist and m.nproc >= 4:
        # Several workers compile Triton kernels side by side; --dist loadfile keeps a file's
        # tests (and its module fixtures) in one worker. Inductor gets few threads per worker.
        workers = min(6, m.nproc // 2)  # the sanitizers and the DDP check run beside them
        pytest_argv += ["-n", str(workers), "--dist", "loadfile"]
        tests_env["TORCHINDUCTOR_COMPILE_THREADS"] = "2"
    pytest_argv += os.environ.get("PYTEST_ARGS", "").split()
    result.append(Step("tests", pytest_argv, timeout("tests"), tests_env, phase=checks,
                       note="" if gpu else "Triton in its interpreter; CUDA tests skip"))

    for tool in SANITIZER_TOOLS:
        argv = [m.sanitizer or "compute-sanitizer", "--tool", tool, "--error-exitcode", "86",
                "--print-limit", "200"]
        if m.sanitizer_kernel_filter:
            argv += ["--kernel-name", SANITIZER_KERNEL_FILTER]
        if tool == "memcheck":
            argv += ["--leak-check", "no"]
        argv += [py, "-m", "pytest", *SANITIZER_FILES, "-m", "cuda", "-k", SANITIZER_K, "-q",
                 "-p", "no:cacheprovider"]
        skip = no_gpu or (None if m.sanitizer else
                          "compute-sanitizer not found (PATH, $CUDA_HOME/bin, /usr/local/cuda/bin)")
        if not skip and m.sanitizer_ok is False:
            skip = m.sanitizer_probe
        note = "exit 86: the tool reported errors (see the log)"
        if not m.sanitizer_kernel_filter:
            note += "; this compute-sanitizer has no --kernel-name: every kernel instrumented"
        # No caching allocator: every tensor is its own allocation, so memcheck sees its real
        # bounds and initcheck sees fresh memory instead of a reused block's old contents.
        result.append(Step(tool, argv, timeout(tool), {"PYTORCH_NO_CUDA_MEMORY_CACHING": "1"},
                           skip=skip, note=note, phase=checks))

    ddp_env = {"GLOO_SOCKET_IFNAME": "lo", "NCCL_SOCKET_IFNAME": "lo",
               "OMP_NUM_THREADS": "1"}
    result.append(Step("ddp", [py, "-m", "torch.distributed.run", "--standalone",
                               "--nproc_per_node", "2",
                               "scripts/gpu_check/ddp_check.py", "--out", str(out / "ddp.json")],
                       timeout("ddp"), ddp_env, note=ddp_mode_note(m.gpus), phase=checks))

    # The user's path on the GPU (docs/gpu_check.md): the synthetic demo's recipes trained by
    # sharpattn-train with AMP bf16 and channels_last, 2 epochs each, then sharpattn-eval and
    # sharpattn-export of SAN. In the checks phase, side by side with them: it is a correctness
    # check (exit codes and a result table), not a timing, and it needs little of the GPU (batches
    # of 24 images at 64x32); alone it would add its whole ~150 s to a plan already near the
    # budget. Its own CPU work (pictures, the export) gets 4 threads beside the other checks.
    result.append(Step("demo", [py, "scripts/gpu_check/demo_check.py",
                                "--results", str(out), "--json", str(out / "demo.json")],
                       timeout("demo"), {"OMP_NUM_THREADS": "4"}, skip=no_gpu, phase=checks,
                       note="training outputs in a temporary folder (demo.json says where)"))

    run = [py, "-m", "benchmarks.run"]
    result += [
        # The targets: block 1, contiguous, fp32 + bf16, with the torch.compile baseline
        # only where a target needs it (each inductor compile takes seconds).
        Step("bench-targets", run + ["ops", "--out", str(bench), "--tag", "block1-targets",
                                     "--blocks", "1", "--layouts", "contiguous",
                                     "--dtypes", "float32,bfloat16",
                                     "--impls", "reference,compile,cuda,triton",
                                     "-k", TARGET_CASES],
             timeout("bench-targets"), skip=no_gpu),
        # The model configuration: AMP bf16 + channels_last, batch 256 at 256x128.
        Step("bench-models", run + ["models", "--out", str(bench), "--dtypes", "bfloat16",
                                    "--layouts", "channels_last", "--rounds", "10",
                                    "--warmup", "2"],
             timeout("bench-models"), skip=no_gpu),
        Step("bench-ops-block1", run + ["ops", "--out", str(bench), "--tag", "block1",
                                        "--blocks", "1", "--layouts", "contiguous",
                                        "--dtypes", "float32,bfloat16",
                                        "--impls", "reference,cuda,triton",
                                        "--rounds", "5", "--warmup", "2",
                                        "-k", f"not ({TARGET_CASES})"],
             timeout("bench-ops-block1"), skip=no_gpu,
             note="block 1's other cases (the target cases are bench-targets'), 5 rounds"),
        Step("bench-ops-blocks2-4", run + ["ops", "--out", str(bench), "--tag", "blocks2-4",
                                           "--blocks", "2,3,4", "--layouts", "contiguous",
                                           "--dtypes", "float32", "--impls", "cuda,triton",
                                           "--rounds", "10", "--warmup", "2"],
             timeout("bench-ops-blocks2-4"), skip=no_gpu,
             note="float32, the compiled backends only: eager and bfloat16 are block 1's"),
        Step("report", [py, "-m", "benchmarks.report", "--results", str(bench),
                        "--out", str(bench)],
             timeout("report"),
             skip=no_gpu and "no GPU benchmarks to report"),
    ]
    return result


def _relative(path: Path) -> Path:
    try:
        return path.resolve().relative_to(ROOT)
    except ValueError:
        return path


def ddp_mode_note(gpus: int) -> str:
    """Which process group the DDP check uses with this many GPUs (ddp_check.py decides)."""
    if gpus >= 2:
        return "NCCL, one GPU per process"
    if gpus == 1:
        return ("gloo with CUDA tensors, both processes on cuda:0 (NCCL refuses two ranks on "
                "one GPU)")
    return "gloo on the CPU (no GPU)"


def select(all_steps: list[Step], names: list[str], build: bool = True) -> list[Step]:
    """The steps named (steps or groups; none: all), in plan order. env always runs; build
    runs whenever another step needs the extension, unless build=False."""
    known = {s.name for s in all_steps}
    wanted: set[str] = set()
    for name in names:
        if name in GROUPS:
            wanted.update(GROUPS[name])
        elif name in known:
            wanted.add(name)
        else:
            raise ValueError(f"unknown step {name!r}; steps: {', '.join(s.name for s in all_steps)}"
                             f"; groups: {', '.join(GROUPS)}")
    if not names:
        wanted = set(known)
    wanted.add("env")
    if build and wanted - {"env", "report"}:
        wanted.add("build")
    elif not build:
        wanted.discard("build")
    return [s for s in all_steps if s.name in wanted]
