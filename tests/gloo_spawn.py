"""Two-process gloo tests that cannot hang CI.

The rendezvous is a file and the gloo transport is pinned to the loopback interface, so the
tests do not depend on what the machine's hostname resolves to. A stuck collective fails after
`COLLECTIVE_TIMEOUT` (the default is 30 minutes), and a run that outlives `deadline_s` is killed
and reported, naming the ranks still alive.

A worker ends with `finish_gloo()`, which leaves the process at once after the last barrier
instead of destroying the process group: with torch 2.11 (the GPU machine's stack) a rank
deadlocked in that teardown, its main thread (holding the GIL) in the gloo process group's
destructor waiting for gloo's worker thread, which waited for the GIL to free a tensor of the
last collective (py-spy in CI's second stack; the test then hung until CI's time ran out).
"""

import datetime
import os
import sys
import time

import pytest
import torch.distributed as dist
import torch.multiprocessing as mp

COLLECTIVE_TIMEOUT = datetime.timedelta(seconds=180)


def init_gloo(rank: int, world: int, init_file: str) -> None:
    """Join a gloo process group over loopback; call first thing in each spawned worker."""
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    os.environ.update(WORLD_SIZE=str(world), RANK=str(rank), LOCAL_RANK=str(rank))
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                            world_size=world, timeout=COLLECTIVE_TIMEOUT)


def finish_gloo() -> None:
    """The last call of a worker that succeeded: every rank is done, then the process exits
    (code 0) without tearing anything down. Not for a `finally:` (it would hide an error)."""
    dist.barrier()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def spawn(worker, args, nprocs: int = 2, deadline_s: float = 600) -> None:
    """mp.spawn, with a deadline: a worker's exception is raised as by mp.spawn; a run still
    going at the deadline is terminated and the test fails saying so."""
    context = mp.start_processes(worker, args=args, nprocs=nprocs, join=False,
                                 start_method="spawn")
    end = time.monotonic() + deadline_s
    while not context.join(timeout=5):
        if time.monotonic() > end:
            alive = [rank for rank, p in enumerate(context.processes) if p.is_alive()]
            for p in context.processes:
                p.terminate()
            for p in context.processes:
                p.join(10)
                if p.is_alive():
                    p.kill()
            pytest.fail(f"{worker.__name__}: ranks {alive} still running after {deadline_s:.0f} s "
                        "(a collective or the rendezvous hung)")
