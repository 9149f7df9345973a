"""Philox noise of docs/spec.md section 1 in Triton: the word of each position and its conversion.

Position j of plane p uses word j mod 4 of the Philox4x32-10 block at counter
offset + p*G + floor(j/4) (G = ceil(HW/4)) under the 64-bit key `seed`; `tl.randint4x(seed, c)`
with int64 `seed` and `c` is exactly that block. The helpers below draw one block per four
positions and interleave its words, so no word is computed and then thrown away.

Word r becomes u = (2k + 1) 2^-25 and 1 - u = (2^25 - 1 - 2k) 2^-25 with k = r >> 8: each odd
numerator is converted once (round to nearest) to the compute dtype and scaled by a power of two
(exact), which gives the same bits as sharpattn.reference and the C++ kernels.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .common import accumulation_dtype, launcher

TWO_POW_M25 = tl.constexpr(2.98023223876953125e-08)  # 2^-25, exact in float32
COMPLEMENT_BASE = tl.constexpr(33554431)  # 2^25 - 1
UNIFORM_BLOCK = 1024  # positions per program of philox_uniform_out; a multiple of 4


@triton.jit
def philox_words(seed, first_counter, BLOCK: tl.constexpr):
    """uint32 words of positions 4*first..4*first + BLOCK - 1 (relative), in position order.

    first_counter is the int64 counter of the block's first four positions; BLOCK % 4 == 0.
    """
    counter = first_counter + tl.arange(0, BLOCK // 4).to(tl.int64)
    w0, w1, w2, w3 = tl.randint4x(seed, counter)
    # join(join(w0, w2), join(w1, w3)) has shape [BLOCK//4, 2, 2] with element [g, a, b] equal to
    # word 2a + b of group g, so the row-major reshape lists w0, w1, w2, w3 for every group.
    words = tl.reshape(tl.join(tl.join(w0, w2), tl.join(w1, w3)), [BLOCK])
    return words.to(tl.uint32, bitcast=True)


@triton.jit
def uniform_from_words(words, ACC: tl.constexpr):
    """u = (2k + 1) 2^-25, the odd numerator rounded once to ACC (float32 or float64)."""
    odd = 2 * (words >> 8) + 1
    return odd.to(ACC) * TWO_POW_M25


@triton.jit
def logistic_from_words(words, ACC: tl.constexpr):
    """L = log(u) - log(1 - u); 1 - u comes from its own numerator so it never rounds to 0."""
    k = words >> 8
    u = (2 * k + 1).to(ACC) * TWO_POW_M25
    v = (tl.full(k.shape, COMPLEMENT_BASE, tl.uint32) - 2 * k).to(ACC) * TWO_POW_M25
    return tl.log(u) - tl.log(v)


@triton.jit
def _philox_uniform_kernel(out_ptr, seed, offset, S, G, blocks_per_plane,
                           BLOCK: tl.constexpr, ACC: tl.constexpr):
    pid = tl.program_id(0).to(tl.int64)
    plane = pid // blocks_per_plane
    start = (pid % blocks_per_plane) * BLOCK  # a multiple of 4: whole Philox blocks
    first_counter = offset + plane * G + start // 4
    u = uniform_from_words(philox_words(seed, first_counter, BLOCK), ACC)
    j = start + tl.arange(0, BLOCK)
    tl.store(out_ptr + plane * S + j, u, mask=j < S)


@launcher
def philox_uniform_out(out: torch.Tensor, seed: int, offset: int) -> None:
    """Fill a contiguous (P, S) float32/float64 tensor with the uniforms of docs/spec.md section 1.

    seed is the int64 with the bits of the uint64 seed, offset >= 0.
    """
    if out.dim() != 2 or not out.is_contiguous():
        raise ValueError("sharpattn: out must be a contiguous (P, S) tensor")
    if out.dtype not in (torch.float32, torch.float64):
        raise TypeError(f"sharpattn: philox_uniform_out writes float32 or float64, got {out.dtype}")
    P, S = out.shape
    if P * S == 0:
        return
    G = (S + 3) // 4
    blocks_per_plane = triton.cdiv(S, UNIFORM_BLOCK)
    acc = accumulation_dtype(out.dtype)[0]
    _philox_uniform_kernel[(P * blocks_per_plane,)](
        out, seed, offset, S, G, blocks_per_plane, BLOCK=UNIFORM_BLOCK, ACC=acc)
