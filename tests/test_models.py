"""san_resnet50: architecture, parameters, weights, state_dict, compile, autocast and DDP."""


import pytest
import torch
import torch._dynamo.testing
import torch.distributed as dist

import sharpattn
from gloo_spawn import finish_gloo, init_gloo, spawn
from sharpattn.models import (context_unit_parameters, extra_parameters, parameter_report,
                              san_resnet50)

torchvision = pytest.importorskip("torchvision")


def count(module):
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize("size", [(256, 128), (97, 45)])
def test_shapes_through_every_block(size):
    model = san_resnet50().train()
    maps = {}
    for i in range(1, 5):
        getattr(model, f"layer{i}").register_forward_hook(
            lambda module, args, out, i=i: maps.__setitem__(i, tuple(out.shape)))
    out = model(torch.randn(2, 3, *size))
    assert out.shape == (2, 128)
    h, w = size
    for i, c in zip(range(1, 5), (256, 512, 1024, 2048)):
        h, w = (h + 1) // 2, (w + 1) // 2  # conv1 / maxpool / each stride-2 stage, ceil
        if i == 1:
            h, w = (h + 1) // 2, (w + 1) // 2
        assert maps[i] == (2, c, h, w), (i, maps[i])


def test_extra_parameters_are_exactly_the_context_units():
    san = san_resnet50()
    baseline = san_resnet50(blocks=())
    units = {f"layer{i}": context_unit_parameters(c) for i, c in ((1, 256), (2, 512), (3, 1024))}
    assert extra_parameters(san) == {**units, "layer4": 0}
    assert count(san) - count(baseline) == sum(units.values())
    # The baseline is torchvision's ResNet-50 without its ImageNet classifier, plus the head.
    head = 2048 * 1024 + 1024 + 2 * 1024 + 1024 * 128 + 128
    reference = torchvision.models.resnet50()
    assert count(baseline) == count(reference) - count(reference.fc) + head
    assert extra_parameters(san_resnet50(context=())) == {f"layer{i}": 0 for i in range(1, 5)}
    report = parameter_report(san)
    assert "| SAN (paper) | 0.51 | 2.03 | 8.13 |" in report
    assert f"{units['layer2'] / 1e6:.4f}" in report


def test_options_reach_the_blocks():
    model = san_resnet50(blocks=(2, 4), context=(2,), residual=False, tv=False, mask="power",
                         embedding_dim=64)
    assert isinstance(model.layer2, sharpattn.SharpAttentionBlock)
    assert not isinstance(model.layer1, sharpattn.SharpAttentionBlock)
    assert model.layer2.context is not None and model.layer4.context is None
    assert not model.layer2.residual and not model.layer2.tv
    assert model.layer2.mask_kind == "power"
    assert model.head[-1].out_features == 64
    for bad, match in [(dict(blocks=(5,)), "stages"), (dict(context=(4,)), "blocks 1-3"),
                       (dict(blocks=(1,), context=(2,)), "subset"),
                       (dict(mask="gumbel"), "mask")]:
        with pytest.raises(ValueError, match=match):
            san_resnet50(**bad)


def test_eval_is_deterministic_and_state_dict_round_trips(tmp_path):
    torch.manual_seed(0)
    model = san_resnet50().eval()
    images = torch.randn(2, 3, 64, 32)
    first = model(images)
    torch.testing.assert_close(model(images), first, rtol=0, atol=0)
    path = tmp_path / "san.pth"
    torch.save(model.state_dict(), path)
    torch.manual_seed(1)
    other = san_resnet50().eval()
    assert not torch.allclose(other(images), first)
    other.load_state_dict(torch.load(path, weights_only=True))
    torch.testing.assert_close(other(images), first, rtol=0, atol=0)


def test_training_samples_fresh_masks_each_step():
    model = san_resnet50(blocks=(1,), context=()).train()
    images = torch.randn(2, 3, 64, 32)
    with sharpattn.recording_masks(model) as masks:
        model(images)
        first = masks["layer1"]
        model(images)
    assert not torch.equal(first, masks["layer1"])


def test_imagenet_weights_load_from_a_torchvision_file(tmp_path):
    torch.manual_seed(0)
    source = torchvision.models.resnet50()
    path = tmp_path / "resnet50.pth"
    torch.save(source.state_dict(), path)
    model = san_resnet50(weights=path)
    theirs = source.state_dict()
    ours = model.state_dict()
    for key, value in theirs.items():
        if key.startswith("fc."):
            continue
        top, _, rest = key.partition(".")
        mapped = f"{top}.stage.{rest}" if top.startswith("layer") else key
        torch.testing.assert_close(ours[mapped], value, rtol=0, atol=0)
    # The new parts keep their fresh initialisation.
    fresh = san_resnet50()
    for key in ours:
        if ".context." in key or key.startswith("head."):
            assert ours[key].shape == fresh.state_dict()[key].shape


@pytest.mark.parametrize("source_blocks", [(), (1, 2, 3, 4)], ids=["from-baseline", "from-san"])
def test_backbone_weights_load_from_a_sharpattn_checkpoint(tmp_path, source_blocks):
    # A trained demo model stands in for ImageNet weights: its backbone, not its head, context
    # units or gates, initialises another model.
    torch.manual_seed(1)
    source = san_resnet50(blocks=source_blocks)
    path = tmp_path / "best.pt"
    torch.save({"format": "sharpattn.reid/1", "kind": "model", "model": source.state_dict()}, path)
    torch.manual_seed(2)
    model = san_resnet50(weights=path)
    ours, theirs = model.state_dict(), source.state_dict()
    loaded = 0
    for key, value in theirs.items():
        top, _, rest = key.partition(".")
        if top.startswith("layer"):
            if source_blocks:
                if not rest.startswith("stage."):
                    continue
                rest = rest[len("stage."):]
            torch.testing.assert_close(ours[f"{top}.stage.{rest}"], value, rtol=0, atol=0)
            loaded += 1
        elif top in ("conv1", "bn1"):
            torch.testing.assert_close(ours[key], value, rtol=0, atol=0)
            loaded += 1
    assert loaded == len(torchvision.models.resnet50().state_dict()) - 2  # all but fc.weight/bias
    assert not torch.equal(ours["head.0.weight"], theirs["head.0.weight"])  # the head stays fresh


def test_imagenet_weights_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="IMAGENET1K_V1"):
        san_resnet50(weights=tmp_path / "missing.pth")
    wrong = tmp_path / "resnet18.pth"
    torch.save(torchvision.models.resnet18().state_dict(), wrong)
    with pytest.raises(ValueError, match="not a torchvision ResNet-50"):
        san_resnet50(weights=wrong)


def test_autocast_bf16_and_channels_last_train_step():
    # 64x32, not smaller: on the CPU, PyTorch 2.15's bfloat16 backward of a 3x3 stride-2
    # convolution over a 2x1 map (layer4's entry at 32x16 images) returns non-finite weight
    # gradients for about a third of random inputs, plain torchvision ResNet-50 included.
    torch.manual_seed(0)
    model = san_resnet50().train().to(memory_format=torch.channels_last)
    images = torch.randn(2, 3, 64, 32).to(memory_format=torch.channels_last)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        embeddings = model(images)
        loss = embeddings.float().pow(2).mean() + 0.1 * sharpattn.tv_penalty(model)
    loss.backward()
    assert torch.isfinite(loss)
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


def test_whole_model_compiles_once_across_the_temperature_schedule():
    # aot_eager traces exactly what inductor would be given (dynamo graph, fake kernels,
    # AOTAutograd forward and backward) without inductor's C++ code generation, which for a
    # whole ResNet-50 costs minutes on a 2-core machine; test_modules compiles a block with
    # inductor.
    model = san_resnet50().train()
    counter = torch._dynamo.testing.CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(model, backend=counter, fullgraph=True)
    schedule = sharpattn.TemperatureSchedule()
    images = torch.randn(2, 3, 32, 16)
    frames = None
    for epoch in (0, 50, 100):
        sharpattn.set_temperature(model, schedule(epoch))
        loss = compiled(images).pow(2).mean() + 0.1 * sharpattn.tv_penalty(model)
        loss.backward()
        frames = counter.frame_count if frames is None else frames
    assert counter.frame_count == frames


def _ddp_worker(rank, world, init_file, result_file):
    torch.set_num_threads(1)  # two processes share the machine's cores
    init_gloo(rank, world, init_file)
    torch.manual_seed(0)  # same initial weights on both ranks
    model = san_resnet50(blocks=(1, 2), context=(1,))
    ddp = torch.nn.parallel.DistributedDataParallel(model)
    torch.manual_seed(100 + rank)  # each rank its own images and masks
    images = torch.randn(2, 3, 32, 16)
    loss = ddp(images).pow(2).mean() + 0.1 * sharpattn.tv_penalty(ddp)
    loss.backward()
    grads = torch.cat([p.grad.flatten() for p in model.parameters()])
    gathered = [torch.empty_like(grads) for _ in range(world)]
    dist.all_gather(gathered, grads)
    if rank == 0:
        torch.save({"same": all(torch.equal(g, gathered[0]) for g in gathered),
                    "nonzero": bool(grads.abs().sum() > 0),
                    "tv": float(sharpattn.tv_penalty(ddp).detach())}, result_file)
    finish_gloo()


def test_ddp_gloo_two_processes(tmp_path):
    result = tmp_path / "result.pt"
    spawn(_ddp_worker, args=(2, str(tmp_path / "init"), str(result)))
    outcome = torch.load(result, weights_only=True)
    assert outcome["same"] and outcome["nonzero"] and outcome["tv"] > 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU on this machine")
@pytest.mark.cuda
def test_cuda_train_step_bf16_channels_last():
    model = san_resnet50().cuda().train().to(memory_format=torch.channels_last)
    images = torch.randn(8, 3, 256, 128, device="cuda").to(memory_format=torch.channels_last)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss = model(images).float().pow(2).mean() + 0.1 * sharpattn.tv_penalty(model)
    loss.backward()
    assert torch.isfinite(loss)
    assert model.layer1.gate._tau.device.type == "cpu"
