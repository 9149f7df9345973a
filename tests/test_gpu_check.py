"""scripts/gpu_check.sh, as far as a machine without a GPU can check it, in seconds: the shell
parses, the plan for an H100/H200 holds every required step with a timeout and the right
command (the demo's CLIs with CUDA, bf16 and channels_last) within the budget, a CPU machine
skips the GPU steps saying why, a compute-sanitizer that refuses the device (a fake one) skips
the sanitizer steps, and the runner enforces timeouts and the budget, keeps going past a failure
and runs a phase side by side. Nothing is built or trained here."""

import importlib.util
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
HERE = ROOT / "scripts" / "gpu_check"
sys.path.insert(0, str(HERE))
import plan  # noqa: E402
import runner  # noqa: E402

REQUIRED = ["build", "env", "tests", "memcheck", "racecheck", "initcheck", "synccheck", "ddp",
            "demo", "bench-targets", "bench-models", "bench-ops-block1", "bench-ops-blocks2-4",
            "report"]
DEVICE_COMMAND_LIMIT_S = 600  # the lent GPU machine's limit on one command


def h200(**kw):
    fields = dict(python="python3", gpus=1, capability="9.0", gpu_name="NVIDIA H200",
                  sanitizer="/usr/local/cuda/bin/compute-sanitizer", xdist=True,
                  pytest_timeout=True, nproc=16)
    fields.update(kw)
    return plan.Machine(**fields)


def by_name(steps):
    return {s.name: s for s in steps}


def test_the_shell_script_parses():
    subprocess.run(["bash", "-n", str(ROOT / "scripts" / "gpu_check.sh")], check=True)


def test_the_gpu_plan_runs_every_required_step_with_its_command():
    steps = plan.steps(h200(), ROOT / "benchmarks/results/gpu-check/x")
    assert [s.name for s in steps] == REQUIRED
    s = by_name(steps)
    assert not any(step.skip for step in steps)
    assert all(0 < step.timeout_s <= DEVICE_COMMAND_LIMIT_S for step in steps)
    assert "pip install --no-index --no-build-isolation --no-deps -e ." in _cmd(s["build"])
    assert s["build"].env["TORCH_CUDA_ARCH_LIST"] == "9.0"
    assert "-m pytest tests -m 'cuda or triton'" in _cmd(s["tests"])
    assert "--timeout=240" in s["tests"].argv and "-n" in s["tests"].argv
    for tool in plan.SANITIZER_TOOLS:
        assert _cmd(s[tool]).startswith(f"/usr/local/cuda/bin/compute-sanitizer --tool {tool} ")
        assert "-m pytest" in _cmd(s[tool]) and s[tool].env["PYTORCH_NO_CUDA_MEMORY_CACHING"] == "1"
    assert "torch.distributed.run --standalone --nproc_per_node 2" in _cmd(s["ddp"])
    assert "gloo with CUDA tensors" in s["ddp"].note
    assert "benchmarks.run ops" in _cmd(s["bench-targets"])
    targets = f"--impls reference,compile,cuda,triton -k '{plan.TARGET_CASES}'"
    assert targets in _cmd(s["bench-targets"])
    assert f"-k 'not ({plan.TARGET_CASES})'" in _cmd(s["bench-ops-block1"])
    assert "--blocks 1 " in _cmd(s["bench-ops-block1"])
    assert "--blocks 2,3,4 " in _cmd(s["bench-ops-blocks2-4"])
    assert "benchmarks.run models" in _cmd(s["bench-models"])
    assert "benchmarks.report" in _cmd(s["report"])
    # every result inside the run's folder, given relative to the repository root
    for name in ("bench-targets", "bench-models", "bench-ops-block1", "bench-ops-blocks2-4"):
        assert "--out benchmarks/results/gpu-check/x/bench " in _cmd(s[name])
    assert "--junitxml=benchmarks/results/gpu-check/x/junit.xml" in _cmd(s["tests"])
    for script in ("scripts/gpu_check/env_info.py", "scripts/gpu_check/ddp_check.py",
                   *plan.SANITIZER_FILES):
        assert (ROOT / script).is_file()


def _cmd(step):
    return shlex.join(step.argv)


def test_the_estimated_gpu_run_fits_the_budget_and_the_device_limit():
    steps = plan.steps(h200(), Path("out"))
    wall = sum(max(plan.EXPECTED_GPU_S[s.name] for s in batch)
               for batch in runner.batches(steps))
    assert set(plan.EXPECTED_GPU_S) == set(REQUIRED)
    assert wall <= plan.GPU_BUDGET_S < DEVICE_COMMAND_LIMIT_S
    phases = [[s.name for s in b] for b in runner.batches(steps) if len(b) > 1]
    assert phases == [["tests", "memcheck", "racecheck", "initcheck", "synccheck", "ddp", "demo"]]
    assert runner.batches(steps, serial=True) == [[s] for s in steps]


def test_a_cpu_machine_skips_the_gpu_steps_saying_why():
    steps = by_name(plan.steps(h200(gpus=0, capability="", sanitizer=None, nproc=2), Path("o")))
    runs = {n for n, s in steps.items() if not s.skip}
    assert runs == {"build", "env", "tests", "ddp"}
    assert steps["demo"].skip == "no GPU on this machine"
    assert steps["build"].env["SHARPATTN_FORCE_CPU"] == "1"
    assert "-n" not in steps["tests"].argv  # no xdist without a GPU
    assert "--timeout=240" not in steps["tests"].argv  # pyproject's longer limit on a CPU
    assert all(steps[t].skip == "no GPU on this machine" for t in plan.SANITIZER_TOOLS)
    assert steps["report"].skip and steps["bench-models"].skip
    assert steps["ddp"].note == "gloo on the CPU (no GPU)"
    assert all(len(b) == 1 for b in runner.batches(list(steps.values())))  # one at a time


def test_a_gpu_machine_without_compute_sanitizer_skips_only_the_sanitizers():
    steps = by_name(plan.steps(h200(sanitizer=None), Path("o")))
    assert {n for n, s in steps.items() if s.skip} == set(plan.SANITIZER_TOOLS)
    assert "compute-sanitizer not found" in steps["memcheck"].skip
    old = by_name(plan.steps(h200(sanitizer_kernel_filter=False), Path("o")))
    assert "--kernel-name" not in old["racecheck"].argv
    assert "no --kernel-name" in old["racecheck"].note


def test_steps_and_groups_are_selected_in_plan_order():
    steps = plan.steps(h200(), Path("o"))
    names = [s.name for s in plan.select(steps, ["ddp", "sanitizers"])]
    assert names == ["build", "env", "memcheck", "racecheck", "initcheck", "synccheck", "ddp"]
    assert [s.name for s in plan.select(steps, ["demo"])] == ["build", "env", "demo"]
    assert [s.name for s in plan.select(steps, ["report"])] == ["env", "report"]
    assert "build" not in [s.name for s in plan.select(steps, ["tests"], build=False)]
    assert [s.name for s in plan.select(steps, [])] == REQUIRED
    with pytest.raises(ValueError, match="unknown step 'sanitiser'"):
        plan.select(steps, ["sanitiser"])


def test_the_sanitizer_subset_reaches_every_kernel_family():
    out = subprocess.run([sys.executable, "-m", "pytest", *plan.SANITIZER_FILES, "-m", "cuda",
                          "-k", plan.SANITIZER_K, "--collect-only", "-q", "-p", "no:cacheprovider"],
                         cwd=ROOT, capture_output=True, text=True, timeout=300).stdout
    ids = [line for line in out.splitlines() if "::" in line]
    assert 20 <= len(ids) <= 60, out[-2000:]
    assert all("[cuda-cuda" in i and "64bit" not in i for i in ids)
    for needle in ("test_sharp_attention.py", "large_plane_tiled_path", "channels_last",
                   "test_tv.py::test_fused_tv", "test_grid_occlusion.py::test_pool",
                   "test_philox.py"):
        assert any(needle in i for i in ids), needle


def test_the_plan_command_prints_every_step_and_runs_nothing(tmp_path):
    out = tmp_path / "never-made"
    env = dict(os.environ, PYTHON=sys.executable, GPU_CHECK_OUT=str(out))
    res = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_check.sh"), "--plan",
                          "--assume-gpu"], capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0, res.stderr
    for name in REQUIRED:
        assert f"  {name} " in res.stdout
    assert "estimated wall time on one H200" in res.stdout and not out.exists()
    wall = re.search(r"estimated wall time on one H200: (\d+) s", res.stdout)
    assert wall and int(wall.group(1)) <= plan.GPU_BUDGET_S, res.stdout[-1500:]
    assert "probe: not run (--assume-gpu" in res.stdout
    bad = subprocess.run([sys.executable, str(HERE / "main.py"), "--plan", "--assume-gpu",
                          "nosuchstep"], capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "unknown step 'nosuchstep'" in bad.stderr


def _demo():
    spec = importlib.util.spec_from_file_location("demo_check", HERE / "demo_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _main_module():
    spec = importlib.util.spec_from_file_location("gpu_check_main", HERE / "main.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_demo_step_trains_evaluates_and_exports_on_the_gpu(tmp_path):
    s = by_name(plan.steps(h200(), ROOT / "benchmarks/results/gpu-check/x"))
    demo = s["demo"]
    assert not demo.skip and demo.phase == "checks" and 0 < demo.timeout_s <= 600
    assert demo.argv[1] == "scripts/gpu_check/demo_check.py"
    assert "--results benchmarks/results/gpu-check/x " in _cmd(demo)
    assert demo.argv[-2:] == ["--json", "benchmarks/results/gpu-check/x/demo.json"]
    # The commands the driver runs, built without running them (no torch, no GPU needed).
    res = subprocess.run([sys.executable, str(HERE / "demo_check.py"), "--results",
                          str(tmp_path / "res"), "--work", str(tmp_path / "work"), "--dry-run"],
                         capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert res.returncode == 0, res.stderr
    record = json.loads((tmp_path / "res" / "demo.json").read_text())
    commands = {c["name"]: c["command"] for c in record["commands"]}
    assert list(commands) == ["train", "eval", "export"]
    train = commands["train"]
    assert "from sharpattn.reid.cli import _console_train" in train and "--config" not in train
    for override in ("train.device=cuda", "train.amp=bf16", "train.channels_last=true",
                     "optim.epochs=2", "optim.decay_start=0", "train.progress=false",
                     f"data.root={tmp_path / 'work' / 'demo-data'}"):
        assert f" {override}" in train, override
    assert f"-o {tmp_path / 'work' / 'demo'} " in train
    best = tmp_path / "work" / "demo" / "san_ft" / "best.pt"
    assert f"_console_eval())' {best} --no-ten-crop -o {tmp_path / 'res' / 'demo-eval'}" \
        in commands["eval"]
    fmt = record["export_format"]
    assert fmt in ("onnx", "pt2") and record["export_reason"]
    assert f"_console_export())' {best} --format {fmt} -o " \
        f"{tmp_path / 'work' / 'demo' / ('san.' + fmt)}" in commands["export"]
    # the functions the commands call are the console scripts' own
    import tomllib
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    dc = _demo()
    for name in ("sharpattn-train", "sharpattn-eval", "sharpattn-export"):
        module, func = scripts[name].split(":")
        assert f"from {module} import {func}; sys.exit({func}())" in dc.console(name)[2]
    # each of them starts and parses its options here (the CLIs import no GPU code for --help)
    for name in ("train", "eval", "export"):
        argv = dc.console(f"sharpattn-{name}")
        out = subprocess.run(argv + ["--help"], capture_output=True, text=True, timeout=120,
                             cwd=ROOT)
        assert out.returncode == 0 and f"usage: sharpattn-{name}" in out.stdout, out.stderr


def test_the_demo_exports_pt2_where_onnxruntime_is_missing():
    dc = _demo()
    assert dc.export_format(lambda name: object())[0] == "onnx"
    fmt, why = dc.export_format(lambda name: None if name == "onnxruntime" else object())
    assert fmt == "pt2" and why.startswith("onnxruntime not installed")


def test_the_demo_driver_records_each_command_and_what_it_printed(tmp_path, monkeypatch):
    dc = _demo()
    rows = "\n".join(f"| {n} | 50.0 | 80.0 | 90.0 | 55.0 | 40.0 |" for n in
                     ("baseline", "baseline_ft", "san_ft", "aaanet/1", "aaanet/2", "aaanet/3"))
    table = f"| model | rank-1 | rank-5 | rank-10 | mAP | mINP |\n|---|---|---|---|---|---|\n{rows}"
    missing = str(tmp_path / "nothing" / "best.pt")
    monkeypatch.setattr(dc, "plan", lambda *a, **k: [
        {"name": "train", "argv": ["sh", "-c", f"echo training; printf '%s\\n' '{table}'; "
                                               "echo '  baseline: somewhere'"], "needs": None},
        {"name": "eval", "argv": ["sh", "-c", "echo broken; exit 4"], "needs": None},
        {"name": "export", "argv": ["true"], "needs": missing}])
    rc = dc.main(["--results", str(tmp_path), "--work", str(tmp_path / "w")])
    record = json.loads((tmp_path / "demo.json").read_text())
    train, evaluate, export = record["commands"]
    assert rc == 1 and record["passed"] is False
    assert train["status"] == "ok" and train["exit_code"] == 0 and train["wall_s"] >= 0
    assert train["table"] == table.splitlines()
    assert evaluate["status"] == "failed" and evaluate["exit_code"] == 4
    assert evaluate["tail"] == ["broken"]
    assert export["status"] == "skipped" and missing in export["reason"]
    assert record["problems"] == ["eval: exit 4", f"export: skipped, no {missing}"]
    # a table short of a run, or a run without scores, fails the train command
    assert dc.problems_of("train", {"table": table.splitlines()[:-1]})
    empty = table.replace("| san_ft | 50.0 | 80.0 | 90.0 | 55.0 | 40.0 |",
                          "| san_ft | - | - | - | - | - |")
    assert "san_ft" in dc.problems_of("train", {"table": empty.splitlines()})[0]
    assert dc.problems_of("train", {"table": table.splitlines()}) == []
    assert dc.problems_of("export", {"table": [], "lines": ["  batch 4 at 64x32: ... -> OK"]}) == []
    assert dc.problems_of("export", {"table": [], "lines": ["  batch 4 at 64x32: -> MISMATCH"]})


def _fake_sanitizer(tmp_path, script):
    path = tmp_path / "compute-sanitizer"
    path.write_text("#!/bin/sh\n" + script)
    path.chmod(0o755)
    return str(path)


def test_a_sanitizer_this_runtime_refuses_skips_the_four_sanitizer_steps(tmp_path):
    fake = _fake_sanitizer(tmp_path, 'echo "========= COMPUTE-SANITIZER"\n'
                                     'echo "========= Error: Device not supported"\nexit 1\n')
    m = plan.check_sanitizer(h200(python=sys.executable, sanitizer=fake))
    assert m.sanitizer_ok is False
    steps = by_name(plan.steps(m, Path("o")))
    assert {n for n, s in steps.items() if s.skip} == set(plan.SANITIZER_TOOLS)
    for tool in plan.SANITIZER_TOOLS:
        assert '"========= Error: Device not supported"' in steps[tool].skip
        assert "exit 1" in steps[tool].skip
    # the summary's header says what the probe found
    main = _main_module()
    head = "\n".join(main.header(m, Path("o"), list(steps.values()), 560))
    assert "probe: compute-sanitizer cannot run on this GPU here" in head
    assert "Device not supported" in head
    # any other failure counts too: its first error line is quoted
    other = _fake_sanitizer(tmp_path, 'echo "========= COMPUTE-SANITIZER"\n'
                                      'echo "RuntimeError: CUDA error: unspecified"\nexit 7\n')
    ok, why, _ = plan.probe_sanitizer(other, sys.executable)
    assert not ok and '"RuntimeError: CUDA error: unspecified" (exit 7' in why


def test_a_sanitizer_that_works_runs_the_four_sanitizer_steps(tmp_path):
    fake = _fake_sanitizer(tmp_path, f'echo "$@" > {tmp_path / "called"}\nexit 0\n')
    m = plan.check_sanitizer(h200(python=sys.executable, sanitizer=fake))
    assert m.sanitizer_ok is True and m.sanitizer_probe.startswith("ok")
    called = (tmp_path / "called").read_text()
    assert called.startswith(f"--tool memcheck {sys.executable} -c ")
    assert "device='cuda'" in called and "synchronize" in called
    steps = by_name(plan.steps(m, Path("o")))
    assert not any(s.skip for s in steps.values())
    assert all(steps[t].argv[0] == fake for t in plan.SANITIZER_TOOLS)
    # a refusal printed with exit 0 is still a refusal
    quiet = _fake_sanitizer(tmp_path, 'echo "Device not supported"\nexit 0\n')
    assert plan.probe_sanitizer(quiet, sys.executable)[0] is False
    # one that hangs is stopped at the probe's timeout, with its children, and proves nothing
    hangs = _fake_sanitizer(tmp_path, f'(sleep 3; touch {tmp_path / "survived"}) &\nsleep 60\n')
    start = time.monotonic()
    ok, why, _ = plan.probe_sanitizer(hangs, sys.executable, timeout_s=1)
    assert ok and why.startswith("inconclusive") and time.monotonic() - start < 10
    time.sleep(max(0.0, start + 4 - time.monotonic()))
    assert not (tmp_path / "survived").exists()


def test_the_sanitizer_is_probed_once_and_only_where_its_steps_run(tmp_path):
    main = _main_module()
    fake = _fake_sanitizer(tmp_path, f'echo x >> {tmp_path / "calls"}\nexit 0\n')
    m = h200(python=sys.executable, sanitizer=fake)
    assert not main.probe_sanitizer(m, plan.select(plan.steps(m, Path("o")), ["ddp"]), False)
    assert m.sanitizer_probe == "not run (no sanitizer step selected)"
    assert not main.probe_sanitizer(m, plan.steps(m, Path("o")), True)
    assert not (tmp_path / "calls").exists()
    assert main.probe_sanitizer(m, plan.steps(m, Path("o")), False)
    assert (tmp_path / "calls").read_text() == "x\n" and m.sanitizer_ok is True
    cpu = h200(gpus=0, sanitizer=fake)
    assert not main.probe_sanitizer(cpu, plan.steps(cpu, Path("o")), False)
    assert cpu.sanitizer_probe == "not run (no GPU)"


def _sh(name, script, timeout_s=30, phase=""):
    return plan.Step(name, ["sh", "-c", script], timeout_s, phase=phase)


def _run(tmp_path, steps, **kw):
    summary = runner.Summary(tmp_path, ["header"])
    status = runner.run_steps(steps, tmp_path, summary, cwd=tmp_path, **kw)
    return status, {r["step"]: r for r in summary.rows}, (tmp_path / "summary.txt").read_text()


def test_the_runner_stops_a_hung_step_and_keeps_going_past_a_failure(tmp_path):
    start = time.monotonic()
    status, rows, text = _run(tmp_path, [
        _sh("fails", "echo broken; exit 3"),
        # a child in the background too: the whole process group must go
        _sh("hangs", "(sleep 3; touch survived) & sleep 120", timeout_s=1),
        _sh("passes", "echo fine"),
        plan.Step("skipped", ["true"], 5, skip="no GPU on this machine"),
    ])
    assert time.monotonic() - start < 30
    time.sleep(max(0.0, start + 4 - time.monotonic()))
    assert not (tmp_path / "survived").exists()  # the background child was stopped too
    assert status == 1
    assert rows["fails"]["status"] == "failed" and rows["fails"]["rc"] == 3
    assert rows["fails"]["last_line"] == "broken" and "> broken" in text
    assert rows["passes"]["last_line"] == "fine" and rows["hangs"]["last_line"] == ""
    assert rows["hangs"]["status"] == "timeout"
    assert rows["passes"]["status"] == "ok"
    assert rows["skipped"]["status"] == "skipped"
    assert "broken" in (tmp_path / "fails.log").read_text()
    assert "FAILED (exit 3)" in text and "TIMEOUT" in text and "SKIPPED: no GPU" in text
    assert "total:" in text and "exit 1" in text


def test_the_runner_passes_when_every_step_that_ran_passed(tmp_path):
    status, rows, _ = _run(tmp_path, [_sh("a", "true"),
                                      plan.Step("b", ["true"], 5, skip="not here")])
    assert status == 0 and rows["a"]["status"] == "ok"


def test_a_phase_runs_side_by_side(tmp_path):
    # "waits" can only pass if "signals" runs while it waits; one at a time it times out.
    steps = [_sh("waits", "i=0; while [ ! -f flag ]; do i=$((i+1)); [ $i -gt 100 ] && exit 1; "
                          "sleep 0.1; done", phase="p"),
             _sh("signals", "touch flag", phase="p")]
    status, rows, _ = _run(tmp_path, steps)
    assert status == 0 and rows["waits"]["status"] == "ok"


def test_the_budget_caps_steps_and_keeps_the_report_its_reserve(tmp_path, monkeypatch):
    monkeypatch.setattr(runner, "MIN_STEP_S", 1)
    status, rows, text = _run(tmp_path, [_sh("slow", "sleep 60", timeout_s=100),
                                         _sh("cut", "true"),
                                         _sh("report", "echo report")],
                              budget_s=4, report_reserve_s=2)
    assert rows["slow"]["status"] == "timeout" and rows["slow"]["limit_s"] <= 2
    assert rows["cut"]["status"] == "skipped" and "budget" in rows["cut"]["reason"]
    assert rows["report"]["status"] == "ok"
    assert status == 1


def test_before_step_can_skip_a_step_at_run_time(tmp_path):
    status, rows, _ = _run(tmp_path, [_sh("build", "exit 9")],
                           before_step=lambda s: "already current" if s.name == "build" else None)
    assert status == 0 and rows["build"]["status"] == "skipped"
    assert rows["build"]["reason"] == "already current"


def test_the_ddp_check_picks_its_process_group_by_the_gpus_present(monkeypatch):
    spec = importlib.util.spec_from_file_location("ddp_check", HERE / "ddp_check.py")
    ddp = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ddp)
    for gpus, expected in ((0, "gloo-cpu"), (1, "gloo-cuda"), (2, "nccl"), (8, "nccl")):
        monkeypatch.setattr(torch.cuda, "is_available", lambda g=gpus: g > 0)
        monkeypatch.setattr(torch.cuda, "device_count", lambda g=gpus: g)
        assert ddp.mode() == expected
    monkeypatch.setenv("GPU_CHECK_DDP_BACKEND", "gloo")
    assert ddp.mode() == "gloo-cuda"


def test_a_build_without_this_architecture_is_not_current():
    import build_current
    reason, _ = build_current.why_not(True, "1.0")  # an architecture nobody builds for
    assert reason is not None and ("sm_1.0" in reason or "did not load" in reason)


class _Stop(Exception):
    pass


def test_an_interrupted_run_stops_its_steps_and_keeps_its_summary(tmp_path):
    # Steps run in sessions of their own: interrupting gpu_check must stop them explicitly.
    def stop(signum, frame):
        raise _Stop

    old = signal.signal(signal.SIGALRM, stop)
    signal.setitimer(signal.ITIMER_REAL, 1.0)
    start = time.monotonic()
    summary = runner.Summary(tmp_path, ["header"])
    try:
        with pytest.raises(_Stop):
            runner.run_steps([_sh("a", "(sleep 3; touch survived) & sleep 120", phase="p"),
                              _sh("b", "sleep 120", phase="p")], tmp_path, summary, cwd=tmp_path)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    time.sleep(max(0.0, start + 4 - time.monotonic()))
    assert not (tmp_path / "survived").exists()
    assert [r["status"] for r in summary.rows] == ["interrupted", "interrupted"]
    assert "INTERRUPTED" in (tmp_path / "summary.txt").read_text()
