"""DDP on the CPU: gloo, 2 processes (torch.multiprocessing.spawn)."""

import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE.parent))
from gloo_spawn import finish_gloo, init_gloo, spawn  # noqa: E402
CLIP = 1e-3  # far below the tiny model's gradient norm: the clip fires


def _init(rank, world, init_file):
    # A file rendezvous, not a TCP store hosted by rank 0: rank 0 exiting first cannot then cut
    # rank 1's store connection during teardown (which aborted rank 1 now and then).
    sys.path.insert(0, str(HERE))
    torch.set_num_threads(1)
    init_gloo(rank, world, init_file)


def _tiny_cfg(extra=()):
    import conftest  # noqa: F401  (registers the tiny models)
    from sharpattn.reid.config import load_config
    return load_config(None, conftest.TINY + list(extra))


def _batch():
    g = torch.Generator().manual_seed(3)
    images = torch.randn(16, 3, 32, 16, generator=g)
    pids = torch.arange(4).repeat_interleave(4)[torch.randperm(16, generator=g)]
    return images, pids


def _loss_worker(rank, world, init_file, out_dir):
    _init(rank, world, init_file)
    from torch.nn.parallel import DistributedDataParallel as DDP

    from sharpattn.reid.recipes import compute_loss
    from sharpattn.reid.modeling import build_model, model_spec
    from sharpattn.reid.engine.optim import clip_gradients
    cfg = _tiny_cfg(["model.arch=tiny_nobn"])
    torch.manual_seed(0)
    raw = build_model(model_spec(cfg.model))
    model = DDP(raw)
    images, pids = _batch()
    share = slice(rank * 8, (rank + 1) * 8)
    loss, st = compute_loss(model, images[share], pids[share], cfg, raw)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in raw.named_parameters()}
    # the engine clips after DDP's backward has averaged the gradients: the same on every rank
    norm, clipped = clip_gradients(raw.parameters(), CLIP)
    clipped_grads = {n: p.grad.clone() for n, p in raw.named_parameters()}
    torch.save({"stats": dict(st), "grads": grads, "norm": norm, "clipped": clipped,
                "clipped_grads": clipped_grads}, Path(out_dir) / f"rank{rank}.pt")
    finish_gloo()


def test_ddp_loss_and_gradients_match_one_process_on_the_whole_batch(tmp_path):
    # 2 processes with 8 images each mine over all 16 embeddings; one process sees all 16.
    spawn(_loss_worker, args=(2, str(tmp_path / "rendezvous"), str(tmp_path)))
    sys.path.insert(0, str(HERE))
    from sharpattn.reid.recipes import compute_loss
    from sharpattn.reid.modeling import build_model, model_spec
    cfg = _tiny_cfg(["model.arch=tiny_nobn"])
    torch.manual_seed(0)
    model = build_model(model_spec(cfg.model))
    images, pids = _batch()
    loss, st = compute_loss(model, images, pids, cfg)
    loss.backward()
    assert st["tv"] > 0  # the TV term is part of the comparison
    for rank in range(2):
        r = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        assert r["stats"]["triplet"] == pytest.approx(st["triplet"], rel=1e-5)
        assert r["stats"]["loss"] == pytest.approx(st["loss"], rel=1e-4)
        for n, p in model.named_parameters():  # DDP's averaged gradient is the whole batch's
            torch.testing.assert_close(r["grads"][n], p.grad, rtol=1e-4, atol=1e-6, msg=n)
    from sharpattn.reid.engine.optim import clip_gradients
    norm, clipped = clip_gradients(model.parameters(), CLIP)
    assert clipped
    for rank in range(2):
        r = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        assert r["clipped"] and r["norm"] == pytest.approx(norm, rel=1e-4)
        for n, p in model.named_parameters():  # clipped alike on both ranks and in one process
            torch.testing.assert_close(r["clipped_grads"][n], p.grad, rtol=1e-4, atol=1e-9, msg=n)


def _train_worker(rank, world, init_file, data_root, out_dir):
    _init(rank, world, init_file)
    from sharpattn.reid.engine import train
    cfg = _tiny_cfg([f"data.root={data_root}", "optim.epochs=2", "data.num_identities=2",
                     f"optim.grad_clip={CLIP}", "train.diagnostics_every=1"])
    summary = train(cfg, out_dir)
    if rank == 0:
        torch.save({"mAP": summary["metrics"]["mAP"]}, Path(out_dir) / "done.pt")
    finish_gloo()


def test_ddp_training_run(tmp_path, data_root):
    out = tmp_path / "run"
    spawn(_train_worker, args=(2, str(tmp_path / "rendezvous"), str(data_root), str(out)))
    ckpt = torch.load(out / "last.pt", weights_only=True)
    assert ckpt["world_size"] == 2 and len(ckpt["rng"]) == 2 and ckpt["epoch"] == 2
    assert torch.load(out / "done.pt", weights_only=True)["mAP"] >= 0
    hist = ckpt["history"]
    assert all(h["clip_frac"] == 1.0 and h["grad_norm"] > CLIP and "stage.mask_mean" in h for h in hist)


def test_nccl_setup_selects_each_process_gpu_and_a_long_timeout(monkeypatch):
    # No GPU here: the CUDA and NCCL calls are recorded, not made.
    from sharpattn.reid.engine import distributed as engine
    calls = []
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: calls.append(("set_device", d)))
    monkeypatch.setattr(dist, "is_initialized", lambda: False)
    monkeypatch.setattr(dist, "init_process_group",
                        lambda backend, **kw: calls.append(("init", backend, kw["timeout"])))
    engine.setup_distributed("auto")
    assert calls[0] == ("set_device", 1)  # before the process group exists
    assert calls[1][:2] == ("init", "nccl") and calls[1][2].total_seconds() >= 3600

    calls.clear()
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_backend", lambda: "nccl")
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 1)
    monkeypatch.setattr(dist, "barrier", lambda **kw: calls.append(("barrier", kw)))
    engine.barrier()
    assert calls == [("barrier", {"device_ids": [1]})]
