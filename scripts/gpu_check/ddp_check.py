"""The multi-process check of the training package (gpu_check's ddp step), 2 processes:

    python -m torch.distributed.run --standalone --nproc_per_node 2 \\
        scripts/gpu_check/ddp_check.py --out ddp.json

The process group depends on the GPUs present:
  2 or more  NCCL, one GPU per process, set up by sharpattn.reid itself (the torchrun path)
  1          gloo with CUDA tensors, both processes on cuda:0: NCCL refuses two ranks on one
             device. The group is made here; the training package finds it and keeps it.
  none       gloo on the CPU (the package's own choice)
GPU_CHECK_DDP_BACKEND=gloo forces gloo with CUDA tensors on a machine with several GPUs too.

It checks that (1) an all_reduce and an all_gather of tensors on the training device give the
expected values, (2) sharpattn.reid trains a SAN ResNet-50 (blocks 1-4 with the sharpattn
kernels, from scratch, synthetic 64x32 images, 2 epochs) through DDP, and (3) afterwards both
processes hold bit-identical parameters and the checkpoint records world size 2. Process 0
writes what it found to --out (JSON); the exit status is 1 when a check fails.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist

ROOT = Path(__file__).resolve().parents[2]
# A hung collective fails in this time instead of the package's 2 hours (the step's timeout
# would stop it anyway, but without saying where it hung).
GLOO_TIMEOUT = datetime.timedelta(seconds=120)


def mode() -> str:
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if gpus >= 2 and os.environ.get("GPU_CHECK_DDP_BACKEND", "nccl") == "nccl":
        return "nccl"
    return "gloo-cuda" if gpus >= 1 else "gloo-cpu"


def config(data_root: Path, device: str):
    from sharpattn.reid.config import load_config
    return load_config("synthetic/san", [
        f"data.root={data_root}", "data.num_identities=4", "data.num_instances=4",
        "data.synthetic.num_ids=16", "data.workers=0", "optim.epochs=2", "optim.decay_start=1",
        "train.eval_every=0",
        "train.progress=false", "train.pictures=false", f"train.device={device}",
        "name=ddp-check"])


def collectives_ok(device) -> bool:
    rank, world = dist.get_rank(), dist.get_world_size()
    t = torch.full((4,), float(rank + 1), device=device)
    dist.all_reduce(t)
    parts = [torch.empty(3, device=device) for _ in range(world)]
    dist.all_gather(parts, torch.full((3,), float(rank), device=device))
    return bool((t == world * (world + 1) / 2).all()) and \
        all(bool((p == r).all()) for r, p in enumerate(parts))


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--out", type=Path, required=True, help="the JSON file process 0 writes")
    args = p.parse_args()
    start = time.monotonic()
    how = mode()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if how == "gloo-cuda":
        os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
        torch.cuda.set_device(0)
        dist.init_process_group("gloo", timeout=GLOO_TIMEOUT)
        device = "cuda:0"
    elif how == "gloo-cpu":
        os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
        dist.init_process_group("gloo", timeout=GLOO_TIMEOUT)
        device = "cpu"
    else:  # the package makes the NCCL group (engine/distributed.py), as under torchrun
        from sharpattn.reid.engine import setup_distributed
        setup_distributed("auto")
        device = f"cuda:{local_rank}"
    rank = dist.get_rank()
    found = {"mode": how, "backend": dist.get_backend(), "world_size": dist.get_world_size(),
             "gpus": torch.cuda.device_count() if torch.cuda.is_available() else 0,
             "torch": torch.__version__}
    found["collectives_ok"] = collectives_ok(torch.device(device))

    # One folder for both processes: torchrun gives them the same run id.
    work = Path(tempfile.gettempdir()) / \
        f"sharpattn-gpu-check-ddp-{os.environ.get('TORCHELASTIC_RUN_ID', 'run')}"
    from sharpattn.reid.engine.distributed import barrier
    from sharpattn.reid.engine.trainer import Trainer
    trainer = Trainer(config(work / "data", device), work / "run", log=print)
    summary = trainer.fit()
    flat = torch.cat([q.detach().reshape(-1).float() for q in trainer.raw_model.parameters()])
    gathered = [torch.empty_like(flat) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, flat)
    devices = [None] * dist.get_world_size()
    dist.all_gather_object(devices, str(trainer.device))
    found.update(devices=devices, parameters=int(flat.numel()),
                 parameters_equal=all(torch.equal(gathered[0], g) for g in gathered[1:]))
    if rank == 0:
        ckpt = torch.load(work / "run" / "last.pt", map_location="cpu", weights_only=True)
        found.update(checkpoint_world_size=ckpt.get("world_size"),
                     metrics={k: v for k, v in (summary.get("metrics") or {}).items()
                              if k in ("mAP", "rank1")},
                     loss_per_epoch=[h.get("loss") for h in ckpt.get("history", [])],
                     seconds=round(time.monotonic() - start, 1))
        found["ok"] = bool(found["collectives_ok"] and found["parameters_equal"]
                           and found["checkpoint_world_size"] == 2)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(found, indent=1, default=str) + "\n")
        print(json.dumps(found, indent=1, default=str), flush=True)
    barrier()  # no process leaves while another still uses the group
    if rank == 0:
        shutil.rmtree(work, ignore_errors=True)
    # The group is not destroyed: the process exits without teardown (below).
    return 0 if (rank != 0 or found["ok"]) else 1


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    code = main()
    # Leave without the interpreter's teardown: with torch 2.11 a gloo rank can deadlock there
    # (the process group's destructor against gloo's worker thread waiting for the GIL; see
    # tests/gloo_spawn.py), and everything this check reports is written by now.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
