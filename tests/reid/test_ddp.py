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


# -- AAA-Net: each stage's step is one forward of the recipe's step module, which DDP wraps ---------

AAA_OVERRIDES = ["data.height=64", "data.width=32",  # f_r after conv3_x is 8 x 4: the 4 x 4 grid fits
                 "aaanet.omega=-1.0"]  # eq. 4 on every sample, so the attention branch gets gradients


def _aaanet_stage_grads(stage, images, pids, global_step, world):
    """One AAA-Net step of ``stage`` (0, 1, 2) in eval mode (no dropout, BN statistics fixed, so
    the loss is a mean of per-sample terms): its stats and the gradients of what the stage trains.
    ``world`` > 1: inside an initialised process group, with the step module wrapped in DDP."""
    import types

    import conftest
    from torch.nn.parallel import DistributedDataParallel as DDP

    from sharpattn.reid.config import load_config
    from sharpattn.reid.modeling import build_model
    from sharpattn.reid.recipes import AAANetRecipe
    cfg = load_config(str(HERE / "configs" / "aaanet_tiny.yaml"),
                      conftest.TINY + conftest.AAA_STAGE_EPOCHS + AAA_OVERRIDES)
    recipe = AAANetRecipe(cfg.stage_configs()[stage], torch.device("cpu"), world=world)
    torch.manual_seed(0)
    model = build_model(recipe.model_spec(types.SimpleNamespace(num_train_pids=4)))
    trained = recipe.trainable_parameters(model)
    module = recipe.step_module(model)
    if world > 1:
        module = DDP(module)
    model.eval()
    recipe.global_step = global_step
    loss, stats = recipe.step(module, model, images, pids)
    loss.backward()
    names = {id(p): n for n, p in model.named_parameters()}
    return stats, {names[id(p)]: p.grad.clone() for p in trained}


def _aaanet_batch():
    g = torch.Generator().manual_seed(5)
    return torch.randn(16, 3, 64, 32, generator=g), torch.arange(4).repeat_interleave(4)


AAA_STEPS = [(0, 0), (1, 0), (2, 0), (2, 1)]  # (stage, global step): stage 3 on both turns


def _aaanet_grad_worker(rank, world, init_file, out_dir):
    _init(rank, world, init_file)
    images, pids = _aaanet_batch()
    share = slice(rank * 8, (rank + 1) * 8)
    results = [_aaanet_stage_grads(stage, images[share], pids[share], step, world) for stage, step in AAA_STEPS]
    torch.save(results, Path(out_dir) / f"aaa_rank{rank}.pt")
    finish_gloo()


def test_ddp_aaanet_gradients_of_every_stage_match_one_process_on_the_whole_batch(tmp_path):
    spawn(_aaanet_grad_worker, args=(2, str(tmp_path / "rendezvous"), str(tmp_path)))
    sys.path.insert(0, str(HERE))
    images, pids = _aaanet_batch()
    ranks = [torch.load(tmp_path / f"aaa_rank{r}.pt", weights_only=True) for r in range(2)]
    for i, (stage, step) in enumerate(AAA_STEPS):
        stats, grads = _aaanet_stage_grads(stage, images, pids, step, world=1)
        attention = {n.startswith("attention_head.") for n in grads}  # what the stage trains
        assert attention == {0: {False}, 1: {True}, 2: {False, True}}[stage], stage
        if stage == 2:
            assert stats["gated"] == 1.0 and stats["adversarial"] > 0  # eq. 4 is in the comparison
        for r in range(2):
            _, got = ranks[r][i]
            assert set(got) == set(grads), (stage, r)
            for n, g in grads.items():  # DDP averaged the halves' gradients: the whole batch's
                # float32 sums over the batch in another order: the error scales with the largest
                # term (1e-5 of it; seen 5e-7), not with each element
                torch.testing.assert_close(got[n], g, rtol=1e-4, atol=1e-5 * float(g.abs().max()),
                                           msg=f"stage {stage} step {step} {n}")


def _aaanet_train_worker(rank, world, init_file, data_root, out_dir):
    _init(rank, world, init_file)
    import conftest

    from sharpattn.reid.config import load_config
    from sharpattn.reid.engine import train
    cfg = load_config(str(HERE / "configs" / "aaanet_tiny.yaml"),
                      conftest.TINY + conftest.AAA_STAGE_EPOCHS + AAA_OVERRIDES[:2]
                      + [f"data.root={data_root}", "data.num_identities=2"])
    summary = train(cfg, out_dir)
    if rank == 0:
        torch.save({"stages": [s["name"] for s in summary["stages"]]}, Path(out_dir) / "done.pt")
    finish_gloo()


def test_ddp_aaanet_three_stages_train_in_two_processes(tmp_path, data_root):
    out = tmp_path / "run"
    spawn(_aaanet_train_worker, args=(2, str(tmp_path / "rendezvous"), str(data_root), str(out)))
    assert torch.load(out / "done.pt", weights_only=True)["stages"] == ["tiny/classifier", "tiny/assignment",
                                                                         "tiny/adversarial"]
    for folder in ("1_classifier", "2_assignment", "3_adversarial"):
        ckpt = torch.load(out / folder / "last.pt", weights_only=True)
        assert ckpt["world_size"] == 2 and len(ckpt["rng"]) == 2, folder
