"""torchrun: process groups, devices and barriers.

NCCL when CUDA is used, gloo otherwise. With NCCL each process first makes its own GPU
(``LOCAL_RANK``) the current device, so that its collectives do not all run on cuda:0.
"""

from __future__ import annotations

import datetime
import os

import torch
import torch.distributed as dist

__all__ = ["DIST_TIMEOUT", "barrier", "dist_on", "is_main_process", "resolve_device", "setup_distributed",
           "world_size"]

# Process 0 evaluates (a 10-crop evaluation of a large gallery takes many minutes) while the others
# wait at a barrier: the collective timeout must outlast it (NCCL's default is 10 minutes).
DIST_TIMEOUT = datetime.timedelta(hours=2)


def dist_on():
    return dist.is_available() and dist.is_initialized()


def is_main_process():
    """Rank 0 of a process group, or of torchrun's environment before the group exists."""
    return (dist.get_rank() if dist_on() else int(os.environ.get("RANK", "0"))) == 0


def world_size():
    return dist.get_world_size() if dist_on() else 1


def barrier():
    if dist_on():
        if dist.get_backend() == "nccl":  # name this process's GPU, not whichever is current
            dist.barrier(device_ids=[torch.cuda.current_device()])
        else:
            dist.barrier()


def setup_distributed(device_pref="auto"):
    """Initialise torch.distributed from torchrun's environment (``WORLD_SIZE`` > 1).

    Returns ``(rank, world_size, local_rank)``.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist_on():
        use_cuda = torch.cuda.is_available() and device_pref != "cpu"
        if use_cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("nccl" if use_cuda else "gloo", timeout=DIST_TIMEOUT)
    if dist_on():
        return dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", dist.get_rank()))
    return 0, 1, 0


def resolve_device(pref, local_rank=0):
    """The torch.device of ``train.device`` for this process."""
    if pref == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    try:
        dev = torch.device(pref)
    except RuntimeError:
        from ..config import ConfigError
        raise ConfigError(f"config key 'train.device': {pref!r} is not a device; use auto, cpu, cuda or "
                          f"cuda:N") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            from ..config import ConfigError
            raise ConfigError(f"config key 'train.device': {pref!r}, but torch sees no GPU on this machine "
                              f"(torch.cuda.is_available() is False): use train.device=cpu or auto")
        if dev.index is None:
            dev = torch.device(f"cuda:{local_rank}")
    return dev
