"""Runs the steps of scripts/gpu_check.sh, each under its own timeout and within an overall
budget, and writes summary.txt / summary.json as it goes.

Adjacent steps of the same phase run side by side (the correctness checks: they share the GPU
and 16 cores, and none of them is a timing); the others run alone. Each step runs in its own
process group: at its timeout the whole group (torchrun's workers, pytest's workers and inductor
compilers, compute-sanitizer's target) gets SIGTERM, then SIGKILL. A failing step is recorded
and the rest still run; the exit status is 1 when any step failed, timed out or was cut by the
budget.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import time
from pathlib import Path

KILL_GRACE_S = 15
MIN_STEP_S = 10  # a step left with less than this is not started
POLL_S = 0.5


class Running:
    """One started step: its process group, its log, its deadline."""

    def __init__(self, step, limit_s: float, out: Path, cwd):
        self.step, self.limit_s = step, limit_s
        self.log_path = Path(out) / step.log
        self.log = open(self.log_path, "w")
        self.log.write(f"$ {shlex.join(step.argv)}\n")
        self.header_lines = 1
        if step.env:
            self.log.write(f"# env: {' '.join(f'{k}={v}' for k, v in step.env.items())}\n")
            self.header_lines = 2
        self.log.flush()
        self.start = time.monotonic()
        self.result, self.rc, self.proc = None, None, None
        try:
            self.proc = subprocess.Popen(step.argv, stdout=self.log, stderr=subprocess.STDOUT,
                                         env=dict(os.environ, **step.env), cwd=cwd,
                                         start_new_session=True)
        except OSError as e:
            self.log.write(f"could not start: {e}\n")
            self._done("error", None)

    def poll(self) -> bool:
        """True once the step has finished (or has been stopped at its timeout)."""
        if self.result is not None:
            return True
        rc = self.proc.poll()
        if rc is not None:
            self._done("ok" if rc == 0 else "failed", rc)
        elif time.monotonic() - self.start > self.limit_s:
            _stop_groups([self.proc])
            self.log.write(f"\n# gpu_check: stopped after its timeout of {self.limit_s:.0f} s\n")
            self._done("timeout", self.proc.returncode)
        return self.result is not None

    def interrupt(self):
        self.log.write("\n# gpu_check: interrupted\n")
        self._done("interrupted", self.proc.returncode)

    def _done(self, result, rc):
        self.result, self.rc = result, rc
        self.seconds = round(time.monotonic() - self.start, 1)
        self.log.close()
        lines = [x.strip() for x in self.log_path.read_text(errors="replace").splitlines()
                 if x.strip() and not x.startswith("# gpu_check:")][self.header_lines:]
        self.last_line = lines[-1][:200] if lines else ""


def _stop_groups(procs):
    """SIGTERM to each step's process group, SIGKILL to whatever is left after the grace."""
    for proc in procs:
        _signal_group(proc, signal.SIGTERM)
    end = time.monotonic() + KILL_GRACE_S
    for proc in procs:
        try:
            proc.wait(timeout=max(0.1, end - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass
    for proc in procs:  # also the children that outlived their leader
        _signal_group(proc, signal.SIGKILL)
        proc.wait()


def _signal_group(proc, sig):
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass


class Summary:
    """summary.txt (for people) and summary.json (for scripts), rewritten after every step so
    that a run killed from outside still leaves what it did."""

    def __init__(self, out: Path, header: list[str]):
        self.out, self.header, self.rows, self.footer = Path(out), header, [], []

    def add(self, row: dict):
        self.rows.append(row)
        print(self.line(row), flush=True)
        self.write()

    @staticmethod
    def line(row: dict) -> str:
        status = row["status"]
        if status == "skipped":
            return f"{row['step']:20s} SKIPPED: {row['reason']}"
        text = {"ok": "ok", "failed": f"FAILED (exit {row['rc']})",
                "timeout": f"TIMEOUT (stopped at {row['limit_s']:.0f} s)",
                "error": "ERROR (could not start)", "interrupted": "INTERRUPTED"}[status]
        line = (f"{row['step']:20s} {text:28s} {row['seconds']:7.1f} s of "
                f"{row['limit_s']:.0f} s   log: {row['log']}")
        if row.get("note"):
            line += f"   ({row['note']})"
        if row.get("last_line"):  # pytest's counts, torchrun's verdict, ...
            line += f"\n{'':21s}> {row['last_line']}"
        return line

    def write(self):
        lines = self.header + [""] + [self.line(r) for r in self.rows] + [""] + self.footer
        (self.out / "summary.txt").write_text("\n".join(lines) + "\n")
        (self.out / "summary.json").write_text(json.dumps(
            {"header": self.header, "steps": self.rows, "footer": self.footer}, indent=1) + "\n")


def batches(steps, serial=False):
    """The steps grouped as they run: adjacent steps of one phase together, others alone."""
    out = []
    for step in steps:
        if not serial and step.phase and out and out[-1][0].phase == step.phase:
            out[-1].append(step)
        else:
            out.append([step])
    return out


def run_steps(steps, out: Path, summary: Summary, budget_s: float = 0, cwd=None,
              before_step=None, report_reserve_s: float = 0, serial: bool = False) -> int:
    """Runs the steps; returns the exit status (0: every step that ran passed, none was cut).

    budget_s: the whole run's limit (0: none); a step gets at most what is left of it, less
    report_reserve_s while a "report" step is still to come. before_step(step) may return a
    reason to skip the step, decided just before it would start.
    """
    start = time.monotonic()
    status = 0
    names = [s.name for s in steps]
    for batch in batches(steps, serial):
        later = names[names.index(batch[-1].name) + 1:]
        running = []
        for step in batch:
            row = {"step": step.name, "command": shlex.join(step.argv), "env": step.env,
                   "log": step.log, "note": step.note}
            reason = step.skip or (before_step(step) if before_step else None)
            if reason:
                summary.add(dict(row, status="skipped", reason=reason))
                continue
            limit = float(step.timeout_s)
            if budget_s:
                left = budget_s - (time.monotonic() - start)
                if "report" in later:
                    left -= report_reserve_s
                if left < MIN_STEP_S:
                    summary.add(dict(row, status="skipped",
                                     reason=f"the budget of {budget_s:.0f} s is spent (raise "
                                            "GPU_CHECK_BUDGET_S or run this step alone)"))
                    status = 1
                    continue
                limit = min(limit, left)
            print(f"== {step.name} (limit {limit:.0f} s): {shlex.join(step.argv)}", flush=True)
            running.append((Running(step, limit, out, cwd), row))
        try:
            while not all([r.poll() for r, _ in running]):  # a list: poll every step each time
                time.sleep(POLL_S)
        except BaseException:
            # Ctrl-C or SIGTERM (main.py raises KeyboardInterrupt for it): the steps run in
            # sessions of their own, so nothing else would stop them.
            left = [r for r, _ in running if r.result is None]
            _stop_groups([r.proc for r in left])
            for r in left:
                r.interrupt()
            for r, row in running:
                summary.add(dict(row, status=r.result, rc=r.rc, seconds=r.seconds,
                                 limit_s=r.limit_s, last_line=r.last_line))
            summary.footer.append(f"interrupted after {time.monotonic() - start:.0f} s")
            summary.write()
            raise
        for r, row in running:
            summary.add(dict(row, status=r.result, rc=r.rc, seconds=r.seconds,
                             limit_s=r.limit_s, last_line=r.last_line))
            if r.result != "ok":
                status = 1
                _print_tail(r.log_path)
    summary.footer.append(f"total: {time.monotonic() - start:.0f} s; exit {status}")
    summary.write()
    return status


def _print_tail(path: Path, lines: int = 25):
    try:
        tail = path.read_text(errors="replace").splitlines()[-lines:]
    except OSError:
        return
    print("\n".join("    " + line for line in tail), flush=True)
