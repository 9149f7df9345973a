"""AAA-Net stage 2: the cost of finding the hardest grid-occluded copy of f_r (Algorithm 1), as
one training step of the attention branch and as the selection alone, fused against copies
materialised one by one.

    MALLOC_MMAP_THRESHOLD_=65536 python -m benchmarks.run aaanet --device cpu --model-batch 4 \
        --model-size 128x128 --rounds 3

Cases (``impl``), at occlusion after conv module k (``block`` = k):
  k = 5  fused_pool    grid_occlusion_pool: every copy's pooled features in one read of f_r,
                       no copy in memory, then the FC
         materialised  the 16 copies as one (N, 16, 2048, h, w) tensor, mean, FC
  k = 3  batched       grid_occlusion, then the N*16 copies through conv4_x, conv5_x as one batch
         chunked       the same, N/4 images (N*4 copies) per pass
         per_copy      16 passes of N: each copy materialised by hand (clone, zero a cell)
  stage1 (k = None)    a stage-1 step (cross-entropy, the whole network trains) for scale
Pass ``step``: stage 2's step (frozen base, attention branch, the selection, M_occ, eq. 1,
backward, SGD); pass ``select``: the selection alone.

Peak memory: on a GPU, max_memory_allocated during one call minus what was allocated before;
on the CPU, the growth of the process's peak resident memory during one call (VmHWM, reset
through /proc/self/clear_refs): it sees the no-grad copies that autograd's saved tensors do not.
glibc keeps freed memory for reuse, which hides the growth after the first call; run with
MALLOC_MMAP_THRESHOLD_=65536 so that every block above 64 KiB is mapped and unmapped, and the
resident size follows the live tensors (the variable is recorded with each result).
Time: on the CPU one thread (see conftest), and besides the wall time the median CPU time of
the process per call (cpu_s), which a busy shared machine disturbs much less.
"""

from __future__ import annotations

import os
import statistics
import time

import pytest
import torch

from benchmarks import common

CASES = [(5, "fused_pool"), (5, "materialised"), (3, "batched"), (3, "chunked"),
         (3, "per_copy"), (None, "stage1")]
NUM_CLASSES = 751  # Market-1501's training identities


def _vm(key: str) -> int | None:
    try:
        for line in open("/proc/self/status"):
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _keep_masks(f_r, grid):
    from sharpattn.reference import grid_keep_masks

    return grid_keep_masks(f_r.shape[2], f_r.shape[3], grid, device=f_r.device, dtype=f_r.dtype)


def selector(model, impl, batch):
    """impl -> a function (f_r, targets) -> (N,) hardest cell, scored as the model does."""
    from sharpattn.models import true_class_probability

    if impl in ("fused_pool", "batched"):
        return lambda f_r, t: model.hardest_occlusion(f_r, t)[0]
    if impl == "chunked":
        return lambda f_r, t: model.hardest_occlusion(f_r, t, chunk=max(1, batch // 4))[0]

    @torch.no_grad()
    def by_hand(f_r, targets):
        with model._scoring_mode():
            keep = _keep_masks(f_r, model.grid)
            if impl == "materialised":  # k = 5: all copies at once, then their means
                pooled = (f_r.unsqueeze(1) * keep.unsqueeze(1)).mean((-2, -1))
                g = pooled.shape[1]
                probs = true_class_probability(model.classify(pooled),
                                               targets.unsqueeze(1).expand(-1, g))
            else:  # per_copy, k = 3: one copy of the batch at a time through the rest
                probs = torch.stack([true_class_probability(
                    model.classify(model.rest(f_r * keep[g])), targets)
                    for g in range(keep.shape[0])], 1)
        return probs.argmin(1)

    return by_hand


class Stage2:
    """One call: a stage-2 step (pass "step"), the selection alone ("select") or a stage-1 step.
    Same interface as common.Case (prepare, __call__, memory)."""

    def __init__(self, model, images, targets, impl, pass_, device):
        from sharpattn.reid.losses import attention_assignment_loss

        self.model, self.images, self.targets, self.device = model, images, targets, device
        self.impl, self.pass_ = impl, pass_
        self.loss = attention_assignment_loss
        self.cpu_times = []
        if impl == "stage1":
            self.optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
        else:
            model.freeze_base()
            self.optimizer = torch.optim.SGD(model.attention_parameters(), lr=1e-4, momentum=0.9)
            self.select = selector(model, impl, images.shape[0])
            with torch.no_grad():
                self.f_r = model.middle(images)  # for the "select" pass

    def step(self):
        model = self.model
        self.optimizer.zero_grad(set_to_none=True)
        if self.impl == "stage1":
            logits = model.logits(self.images)
            loss = torch.nn.functional.cross_entropy(logits, self.targets)
        elif self.pass_ == "select":
            return self.select(self.f_r, self.targets)
        else:
            with torch.no_grad():  # the base is frozen: f_r needs no graph
                f_r = model.middle(self.images)
            m_att = model.attention(f_r)
            cell = self.select(f_r, self.targets)
            loss = self.loss(m_att, model.occlusion_target(cell, f_r)).mean()
        loss.backward()
        self.optimizer.step()

    def __call__(self):
        start = time.process_time()
        self.step()
        common.sync(self.device)
        self.cpu_times.append(time.process_time() - start)

    def prepare(self):
        self()

    def memory(self) -> dict:
        out = {"saved_bytes": None, "saved_extra_bytes": None, "peak_mem_abs_bytes": None}
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            before = torch.cuda.memory_allocated(self.device)
            self()
            peak = torch.cuda.max_memory_allocated(self.device)
            out.update(peak_mem_bytes=peak - before, peak_mem_abs_bytes=peak,
                       peak_mem_method="cuda max_memory_allocated - memory_allocated before")
            return out
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # resets VmHWM to the current resident size
        except OSError as exc:
            out.update(peak_mem_bytes=None, peak_mem_method=f"unavailable: {exc}")
            return out
        before = _vm("VmRSS")
        self()
        out.update(peak_mem_bytes=_vm("VmHWM") - before, peak_mem_abs_bytes=_vm("VmHWM"),
                   peak_mem_method="growth of peak RSS during one call (VmHWM after reset "
                                   "via /proc/self/clear_refs - VmRSS before)")
        return out


@pytest.mark.parametrize("threads", [1], indirect=True, ids=["1thread"])
@pytest.mark.parametrize("mode", ["step", "select"])
@pytest.mark.parametrize("k, selection", CASES, ids=[f"k{k}-{i}" for k, i in CASES])
def test_stage2(benchmark, request, env, opts, device, threads, k, selection, mode):
    """(The names impl and pass_ belong to conftest's parametrisation; here: selection, mode.)"""
    from sharpattn.models import AAANetResNet50

    impl, pass_ = selection, mode
    if impl == "stage1" and pass_ == "select":
        pytest.skip("a stage-1 step selects nothing")
    batch, (height, width) = opts.model_batch, opts.model_size
    torch.manual_seed(0)
    model = AAANetResNet50(NUM_CLASSES, occlusion_after=k or 3).to(device).train()
    images = torch.randn(batch, 3, height, width, device=device)
    targets = torch.randint(0, NUM_CLASSES, (batch,), device=device)
    with torch.no_grad():
        h, w = model.middle(images[:1]).shape[2:]
    if h < 4 or w < 4:
        common.skip(request, f"f_r after module {k} is {h}x{w} at {height}x{width}: too small "
                             "for a 4x4 grid (use --model-size 128x128 or more)")
    case = Stage2(model, images, targets, impl, pass_, device)
    benchmark.group = f"AAA-Net stage 2 {pass_} k={k} batch {batch} {height}x{width}"
    case.prepare()
    info = {"suite": "aaanet", "op": "aaanet_stage2", "variant": f"k{k}", "block": k,
            "shape": list(images.shape), "f_r": [h, w], "dtype": "float32",
            "layout": "contiguous", "pass": pass_, "impl": impl, "traffic_bytes": None,
            "copies": batch * 16 if impl != "stage1" else None,
            "cpu_count": os.cpu_count(),
            "malloc_mmap_threshold": os.environ.get("MALLOC_MMAP_THRESHOLD_")}
    case.cpu_times.clear()
    common.run_case(benchmark, env, case, rounds=opts.rounds, warmup=opts.warmup, info=info)
    timed = case.cpu_times[opts.warmup:opts.warmup + opts.rounds]
    benchmark.extra_info["cpu_s"] = statistics.median(timed) if timed else None
