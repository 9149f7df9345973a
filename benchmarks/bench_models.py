"""Module and model suites: a SharpAttentionBlock forward + backward (around the torchvision
ResNet-50 stage it wraps, against the bare stage), and one training step of san_resnet50 against
the plain ResNet-50 with the same embedding head (images/s and peak memory).

    python -m pytest benchmarks/bench_models.py --benchmark-only     # see benchmarks/README.md

Precision follows --dtypes: float32 runs in float32, bfloat16 under torch.autocast(bfloat16)
(AMP, weights kept in float32); --layouts channels_last converts the model and the input.
On a GPU the issue's configuration is ``--dtypes bfloat16 --layouts channels_last`` (AMP bf16 +
channels_last), the default model batch 256 at 256x128; on the CPU batch 8 at 128x64.
"""

from __future__ import annotations

import contextlib

import pytest
import torch

from benchmarks import common

# Input channels of each ResNet-50 stage and its stride (block 1 keeps the size).
BLOCK_INPUT = {1: (64, 1), 2: (256, 2), 3: (512, 2), 4: (1024, 2)}
MU = 0.1  # the recipe's TV weight


def _autocast(device, dtype_name):
    if dtype_name == "float32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=common.DTYPES[dtype_name])


def _layout(module_or_tensor, layout):
    if layout == "channels_last":
        return module_or_tensor.to(memory_format=torch.channels_last)
    return module_or_tensor


class Step:
    """One training step of ``model`` on ``images``: forward (train mode), loss, backward and an
    optimizer step. Same interface as common.Case (prepare, __call__, memory)."""

    def __init__(self, model, images, loss_fn, device, dtype_name, optimizer=None):
        self.model, self.images, self.loss_fn = model, images, loss_fn
        self.device, self.dtype_name, self.optimizer = device, dtype_name, optimizer

    def forward(self):
        with _autocast(self.device, self.dtype_name):
            return self.loss_fn(self.model, self.images)

    def step(self, saved=None):
        if self.optimizer is not None:
            self.optimizer.zero_grad(set_to_none=True)
        else:
            for p in self.model.parameters():
                p.grad = None
            if self.images.requires_grad:
                self.images.grad = None
        if saved is not None:
            with saved:
                loss = self.forward()
        else:
            loss = self.forward()
        loss.backward()
        if self.optimizer is not None:
            self.optimizer.step()

    def __call__(self):
        self.step()
        common.sync(self.device)

    def prepare(self):
        self()

    def memory(self) -> dict:
        resident = [self.images, *self.model.parameters(), *self.model.buffers()]
        saved = common.SavedBytes(resident=resident)
        self.step(saved)
        common.sync(self.device)
        out = {"saved_bytes": saved.nbytes, "saved_extra_bytes": saved.extra_nbytes,
               "peak_mem_bytes": None, "peak_mem_abs_bytes": None}
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            before = torch.cuda.memory_allocated(self.device)
            self()
            peak = torch.cuda.max_memory_allocated(self.device)
            out.update(peak_mem_bytes=peak - before, peak_mem_abs_bytes=peak,
                       peak_mem_method="cuda max_memory_allocated - memory_allocated before "
                                       "the step (abs: the whole max_memory_allocated)")
        else:
            out.update(peak_mem_bytes=saved.extra_nbytes,
                       peak_mem_method="bytes saved for backward beyond the input, parameters "
                                       "and buffers (saved_tensors_hooks, per storage)")
        return out


def _block_impls(device):
    from sharpattn import backends

    names = [n for n in backends.available(device) if not (n == "triton" and device.type == "cpu")]
    return ["stage"] + names


@pytest.fixture(scope="module")
def torchvision_resnet50():
    tv_models = pytest.importorskip("torchvision.models")
    return tv_models.resnet50


@pytest.mark.parametrize("block_impl", ["stage", "reference", "cpu", "cuda", "triton"])
def test_block(benchmark, request, env, opts, device, torchvision_resnet50, block, dtype_name,
               layout, block_impl):
    """SharpAttentionBlock(stage, channels, context_unit=block < 4, tv=True) forward + backward
    (loss = sum of the output + MU * its TV penalty) vs the bare stage ("stage")."""
    import sharpattn

    impl = block_impl
    if impl not in _block_impls(device):
        common.skip(request, f"{impl!r} does not run on {device.type} here"
                    + (" (Triton on CPU is interpreter-only)" if impl == "triton" else ""))
    torch.manual_seed(0)
    stage = getattr(torchvision_resnet50(weights=None), f"layer{block}")
    # The stage input of the paper's 256x128 images: the block's output size times the stride.
    channels, stride = BLOCK_INPUT[block]
    height, width = common.BLOCKS[block][1] * stride, common.BLOCKS[block][2] * stride
    if impl == "stage":
        module = stage

        def loss_fn(m, x):
            return m(x).float().sum()
    else:
        module = sharpattn.SharpAttentionBlock(stage, channels=common.BLOCKS[block][0],
                                               context_unit=block < 4, tv=True, backend=impl)

        def loss_fn(m, x):
            return m(x).float().sum() + MU * m.tv_penalty()
    module = _layout(module.to(device).train(), layout)
    x = torch.randn(opts.batch, channels, height, width, device=device)
    x = _layout(x, layout).requires_grad_()
    case = Step(module, x, loss_fn, device, dtype_name)
    benchmark.group = f"SharpAttentionBlock block{block} {dtype_name} {layout} fwdbwd"
    case.prepare()
    info = {"suite": "models", "op": "SharpAttentionBlock", "variant": "context" if block < 4
            else "", "block": block, "shape": list(x.shape), "dtype": dtype_name,
            "layout": layout, "pass": "fwdbwd", "impl": impl, "traffic_bytes": None}
    common.run_case(benchmark, env, case, rounds=opts.rounds, warmup=opts.warmup, info=info)


@pytest.mark.parametrize("model_name", ["resnet50", "san_resnet50"])
def test_train_step(benchmark, request, env, opts, device, dtype_name, layout, model_name):
    """One training step (forward, loss = embeddings.sum() + MU * tv_penalty, backward, Adam)."""
    import sharpattn
    from sharpattn import models

    torch.manual_seed(0)
    blocks = () if model_name == "resnet50" else (1, 2, 3, 4)
    model = models.san_resnet50(blocks=blocks).to(device).train()
    model = _layout(model, layout)
    images = torch.randn(opts.model_batch, 3, *opts.model_size, device=device)
    images = _layout(images, layout)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-4)

    def loss_fn(m, x):
        return m(x).float().sum() + MU * sharpattn.tv_penalty(m)

    case = Step(model, images, loss_fn, device, dtype_name, optimizer)
    benchmark.group = f"train step {dtype_name} {layout} batch {opts.model_batch}"
    case.prepare()
    info = {"suite": "models", "op": "train_step", "variant": "", "block": None,
            "shape": list(images.shape), "dtype": dtype_name, "layout": layout,
            "pass": "step", "impl": model_name, "traffic_bytes": None,
            "precision": "fp32" if dtype_name == "float32" else f"autocast {dtype_name}"}
    common.run_case(benchmark, env, case, rounds=opts.rounds, warmup=opts.warmup, info=info)
    if "median_s" in benchmark.extra_info:
        benchmark.extra_info["images_per_s"] = opts.model_batch / benchmark.extra_info["median_s"]
