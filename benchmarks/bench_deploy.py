"""Inference throughput of an exported model (issue 15): the SAN ResNet-50 (and the plain
ResNet-50 baseline) in eval mode, images -> embeddings, side by side in one run:

  eager        the PyTorch model as trained (sharpattn's kernels compute the eval masks)
  compile      torch.compile of it (inductor, dynamic=False)
  onnxruntime  the file written by sharpattn.export.to_onnx, on the CPU execution provider
               (and the CUDA one where onnxruntime-gpu and a GPU are present)

    python -m pytest benchmarks/bench_deploy.py --benchmark-only            # batch 64, 256x128
    python -m pytest benchmarks/bench_deploy.py --benchmark-only --rounds 3 -k san
    python -m benchmarks.run deploy --device cpu --rounds 3                 # JSON in results/

Batch 64 at 256 x 128 unless --model-batch / --model-size are given; --rounds and --warmup as
in the other suites (default here: 3 rounds, 1 warm-up, on any device). Each result records
images_per_s, the thread count and the load average before and after (the CPU may be shared);
SHARPATTN_BENCH_LOG=FILE also appends one line per finished case to FILE.
The model has random weights with batch-norm statistics from two training-mode passes, so the
embeddings have a trained model's scale; the speed does not depend on the weights.
"""

from __future__ import annotations

import os

import pytest
import torch
from torch import nn

from benchmarks import common

MODELS = ("san", "baseline")
RUNTIMES = ("eager", "compile", "onnxruntime")


def _settings(config, device):
    batch = config.getoption("model_batch") or 64
    size = config.getoption("model_size") or "256x128"
    height, width = (int(v) for v in size.lower().split("x"))
    rounds = config.getoption("rounds") or 3
    warmup = config.getoption("warmup")
    return batch, height, width, rounds, 1 if warmup is None else warmup


def _calibrated(model, height, width):
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None
    model.train()
    with torch.no_grad():
        for _ in range(2):
            model(torch.randn(4, 3, height, width))
    return model.eval()


@pytest.fixture(scope="module")
def built(device, tmp_path_factory, request):
    """model name -> (eval model, ONNX path), built once per session."""
    from sharpattn.export import to_onnx
    from sharpattn.models import san_resnet50

    cache = {}
    _, height, width, _, _ = _settings(request.config, device)

    def get(name):
        if name not in cache:
            torch.manual_seed(0)
            model = san_resnet50() if name == "san" else san_resnet50(blocks=())
            model = _calibrated(model, height, width)  # on the CPU, where it is exported
            path = to_onnx(model, tmp_path_factory.mktemp("onnx") / f"{name}.onnx", height, width)
            cache[name] = model.to(device), path
        return cache[name]
    return get


def _ort_session(path, device):
    import onnxruntime as ort

    if device.type == "cuda":
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            return None, "onnxruntime has no CUDA execution provider here (needs onnxruntime-gpu)"
        providers = ["CUDAExecutionProvider"]
    else:
        providers = ["CPUExecutionProvider"]
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()  # the same threads as PyTorch
    return ort.InferenceSession(str(path), options, providers=providers), None


@pytest.mark.parametrize("runtime", RUNTIMES)
@pytest.mark.parametrize("model_name", MODELS)
def test_inference_throughput(benchmark, request, device, env, built, model_name, runtime):
    batch, height, width, rounds, warmup = _settings(request.config, device)
    model, path = built(model_name)
    gen = torch.Generator().manual_seed(1)
    images = torch.randn(batch, 3, height, width, generator=gen).to(device)
    if runtime == "onnxruntime":
        session, reason = _ort_session(path, device)
        if session is None:
            common.skip(request, reason)
        feed = {session.get_inputs()[0].name: images.cpu().numpy()}

        def fn():  # the host -> device copy of the batch is part of the call, as in serving
            return session.run(None, feed)[0]
    else:
        run = model
        if runtime == "compile":
            run = torch.compile(model, dynamic=False)

        def fn():
            with torch.no_grad():
                out = run(images)
            common.sync(device)
            return out
    fn()  # compiles (torch.compile) / warms the session; not timed
    extra = benchmark.extra_info
    extra.update(env)
    extra.update({"suite": "deploy", "model": model_name, "impl": runtime, "batch": batch,
                  "size": [height, width], "threads": torch.get_num_threads(),
                  "loadavg_before": list(os.getloadavg())})
    benchmark.pedantic(fn, rounds=rounds, warmup_rounds=warmup, iterations=1)
    extra["loadavg_after"] = list(os.getloadavg())
    stats = getattr(benchmark, "stats", None)
    if stats is not None and getattr(stats, "stats", None) is not None:
        extra["median_s"] = stats.stats.median
        extra["images_per_s"] = batch / stats.stats.median
        # One line per finished case, so a long CPU run that is stopped keeps what it measured.
        log = os.environ.get("SHARPATTN_BENCH_LOG")
        if log:
            with open(log, "a") as f:
                f.write(f"{model_name} {runtime} batch {batch} {height}x{width}: median "
                        f"{stats.stats.median:.3f} s, {extra['images_per_s']:.2f} images/s, "
                        f"load {extra['loadavg_before'][0]:.1f} -> "
                        f"{extra['loadavg_after'][0]:.1f}, threads {extra['threads']}\n")
