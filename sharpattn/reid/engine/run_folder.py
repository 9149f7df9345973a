"""A run folder is written by one run at a time and never loses what an earlier run recorded.

* :func:`claim` takes the folder for a new run: refused when it holds any result of a run
  (a checkpoint, a log, a report) unless ``overwrite`` says to replace them;
* :class:`RunLock` is held while a run writes: ``.lock`` holds the writer's pid and host, a
  second writer gets one clear line, and a lock left by a process that no longer runs on this
  host is taken over;
* :func:`check_writable`, :func:`check_can_write` (creates nothing) and :func:`check_free_space`
  fail before a write, naming the folder.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import tempfile
import time
from pathlib import Path

__all__ = ["LOCK_NAME", "RESULT_NAMES", "DiskSpaceError", "RunFolderError", "RunLock", "check_free_space",
           "check_can_write", "check_writable", "claim", "results_in"]

LOCK_NAME = ".lock"
#: what a run writes into its folder (engine/state.py, report/, stages.py); any of them there
#: means the folder holds a run's results
RESULT_NAMES = ("last.pt", "best.pt", "log.csv", "report.md", "summary.json", "config.yaml", "stages.yaml",
                "config_history.yaml", "results.md", "curves.png", "ranks.png", "masks.png", "occlusions.png",
                "tensorboard", "eval_cache", "eval")


class RunFolderError(FileExistsError):
    """The run folder cannot be used: it holds another run's results, another run is writing
    it, or it cannot be written."""


class DiskSpaceError(RuntimeError):
    """Not enough free space for the next write."""


def results_in(folder):
    """The names of the results in ``folder``, and in the stage folders below it."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = [n for n in RESULT_NAMES if (folder / n).exists()]
    for sub in sorted(p for p in folder.iterdir() if p.is_dir() and p.name not in RESULT_NAMES):
        found += [f"{sub.name}/{n}" for n in RESULT_NAMES if (sub / n).exists()]
    return found


def claim(folder, overwrite=False, log=print):
    """Make ``folder`` ready for a new run; raise :class:`RunFolderError` when it holds results
    (``overwrite``: delete them first, and say so)."""
    folder = Path(folder)
    found = results_in(folder)
    if not found:
        return
    shown = ", ".join(found[:6]) + (f" and {len(found) - 6} more" if len(found) > 6 else "")
    if not overwrite:
        raise RunFolderError(f"{folder} already holds a run's results ({shown}): continue it with --resume "
                             f"{folder}, choose another --output, or replace them with --overwrite")
    for name in found:
        path = folder / name
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    log(f"--overwrite: removed the earlier run's results from {folder} ({shown})")


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: it runs
        return True
    return True


class RunLock:
    """``with RunLock(folder):`` while a run writes ``folder``; ``enabled=False`` (the other
    processes of a torchrun job) does nothing."""

    def __init__(self, folder, enabled=True, log=print):
        self.path = Path(folder) / LOCK_NAME
        self.enabled, self.log = enabled, log
        self.held = False

    def __enter__(self):
        if not self.enabled:
            return self
        check_writable(self.path.parent)
        me = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = self._holder()
                if holder.get("host") == me["host"] and isinstance(holder.get("pid"), int) \
                        and not _alive(holder["pid"]):
                    self.log(f"[sharpattn] {self.path}: taking over a stale lock (pid {holder['pid']} no longer runs)")
                    self.path.unlink(missing_ok=True)
                    continue
                raise RunFolderError(
                    f"{self.path.parent} is being written by another run (pid {holder.get('pid', '?')} on "
                    f"{holder.get('host', '?')} since {holder.get('started', '?')}): wait for it, or delete "
                    f"{self.path} if that process no longer runs") from None
            with os.fdopen(fd, "w") as f:
                json.dump(me, f)
            self.held = True
            return self
        raise RunFolderError(f"cannot take the lock {self.path}")

    def _holder(self):
        try:
            return json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}

    def __exit__(self, *exc):
        if self.held:
            self.path.unlink(missing_ok=True)
            self.held = False
        return False


def check_writable(folder):
    """Create ``folder`` and write a file into it, or raise :class:`RunFolderError` naming it."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-test.", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise RunFolderError(f"cannot write into {folder}: {e.strerror or e}") from None


def check_can_write(path, folder=False):
    """Raise :class:`RunFolderError` (one line, naming what is in the way) when the file ``path``
    (``folder``: the folder ``path``) could not be written: something on the way is a file, or
    the nearest existing folder is not writable. Creates nothing: called before the slow work."""
    path = Path(path).expanduser()
    target = f"into {path}" if folder else str(path)
    if not folder and path.is_dir():
        raise RunFolderError(f"cannot write {path}: it is a folder; name a file in it")
    probe = path if folder else path.parent
    while not os.path.lexists(probe) and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        what = "a file, not a folder" if probe.is_file() else "not a folder"
        raise RunFolderError(f"cannot write {target}: {'it' if probe == path else probe} is {what}")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise RunFolderError(f"cannot write {target}: the folder {probe} is not writable")


def check_free_space(folder, needed_bytes, what):
    """Raise :class:`DiskSpaceError` when ``folder``'s file system has less than ``needed_bytes``
    free (plus a 5 % margin) for ``what``."""
    existing = Path(folder).absolute()
    while not existing.exists() and existing != existing.parent:  # a folder not made yet
        existing = existing.parent
    free = shutil.disk_usage(existing).free
    if free < needed_bytes * 1.05:
        raise DiskSpaceError(f"not enough disk space in {folder} for {what}: it needs about "
                             f"{_mb(needed_bytes)}, {_mb(free)} free")


def _mb(n):
    return f"{n / 2**20:.0f} MiB" if n >= 2**20 else f"{n / 2**10:.0f} KiB"
