// CUDA kernels of the sharp attention operator (docs/spec.md section 2), the same semantics as
// csrc/cpu/sharp_attention.cpp and the same per-element math (csrc/common).
//
// Layout of the work:
//  * A plane that fits in shared memory is handled by one block (a block-stride loop runs over the
//    planes, so N * C is not limited by the grid): the plane is read once into shared memory with
//    coalesced loads, reduced, computed from there and written back with coalesced stores.
//  * A larger plane is cut into chunks of kChunk positions, one block per chunk: a reduction pass
//    writes per-chunk partials, a tiny kernel folds them per plane, and an apply pass re-reads
//    the inputs (from L2 when they fit) to write the outputs.
//  * The noise of four consecutive positions comes from one Philox call, so the compute loops
//    give each thread whole groups of four positions.
//  * Fused TV (docs/spec.md section 2b): with return_tv the forward also gives each plane's total
//    variation of A = M T from the same pass. One-block path: A is kept as an acc_t plane in
//    shared memory beside the cached plane, and the squared differences to the lower and right
//    neighbours are reduced over the block (in double, fixed order) while the output is stored.
//    Tiled path: each block keeps its chunk's A in shared memory; a neighbour outside the chunk
//    (the next row's first W positions, one past the end) is recomputed from the inputs with its
//    own Philox word (AttnSource); per-chunk partial sums (double) are folded per plane by a
//    finalize kernel. A never goes to global memory.
//    The backward with grad_tv needs dL/dA = grad_tv[p] * dTV/dA, which reads A at the four
//    neighbours: the one-block kernel first recomputes the plane's A into shared memory, the tiled
//    kernels recompute their chunk's A into shared memory (neighbours outside it: AttnSource).
// Every tensor is read and written through its own strides (no .contiguous() copies); a
// channels_last plane has stride C between neighbours, so its accesses are not coalesced yet.
// Coalescing them (blocks over a (W, C) tile, all C planes of a row at once) is left to the
// benchmark work.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <string_view>

#include "../common/host.h"
#include "../common/op_args.h"
#include "../common/philox.h"
#include "../common/sharp_mask.h"
#include "../common/tv_stencil.h"
#include "plane_access.cuh"

namespace sharpattn::cuda {

// Dynamic shared memory of the one-block-per-plane kernels (sized per launch from HW).
extern __shared__ __align__(16) unsigned char sa_smem[];

namespace {

// Positions per block in the tiled path; a multiple of 4 so that chunks hold whole Philox groups.
constexpr int64_t kChunk = 4096;
constexpr int kTileThreads = 256;

// The four Philox words of group g of plane p (not needed, and not computed, in mean mode).
__device__ __forceinline__ PhiloxWords group_words(MaskMode mode, uint64_t seed, uint64_t offset,
                                                   int64_t p, int64_t groups, int64_t g) {
  if (mode == MaskMode::kMean) return PhiloxWords{{0u, 0u, 0u, 0u}};
  return philox4x32_10(philox_counter(offset, p, groups, 4 * g), seed);
}

template <typename acc_t>
__device__ __forceinline__ acc_t noise_of(MaskMode mode, const PhiloxWords& r, int k) {
  return mode == MaskMode::kMean ? acc_t(0) : logistic_from_word<acc_t>(r.w[k]);
}

// Word k (0..3, not a compile-time constant) of a group, without an indexed local array.
__device__ __forceinline__ uint32_t word_at(const PhiloxWords& r, int64_t k) {
  return k == 0 ? r.w[0] : k == 1 ? r.w[1] : k == 2 ? r.w[2] : r.w[3];
}

// The attention-aware feature A = M T of one plane, at any position, from the inputs: used by the
// tiled kernels for their chunk and for neighbours that lie outside it.
template <typename scalar_t, typename acc_t>
struct AttnSource {
  const scalar_t* xp;
  const scalar_t* tp;
  int64_t xsh, xsw, tsh, tsw, W, groups, p;
  PlaneRange<acc_t> range;
  MaskParams<acc_t> prm;
  uint64_t seed, offset;
  bool separate_x;

  __device__ __forceinline__ AttnSource(const StridedMap<const scalar_t>& x,
                                        const StridedMap<const scalar_t>& t, const PlaneShape& s,
                                        int64_t p_, const PlaneRange<acc_t>& range_,
                                        const MaskParams<acc_t>& prm_, uint64_t seed_,
                                        uint64_t offset_, bool separate_x_)
      : xp(x.plane(p_ / s.C, p_ % s.C)), tp(t.plane(p_ / s.C, p_ % s.C)), xsh(x.sh), xsw(x.sw),
        tsh(t.sh), tsw(t.sw), W(s.W), groups((s.HW + 3) / 4), p(p_), range(range_), prm(prm_),
        seed(seed_), offset(offset_), separate_x(separate_x_) {}

  // A at (h, w) given that position's noise.
  __device__ __forceinline__ acc_t with_noise(int64_t h, int64_t w, acc_t noise) const {
    const acc_t xv = static_cast<acc_t>(xp[h * xsh + w * xsw]);
    const acc_t tv = separate_x ? static_cast<acc_t>(tp[h * tsh + w * tsw]) : xv;
    return mask_value(xv, noise, range, prm) * tv;
  }

  // A at (h, w) with its own Philox word (one Philox call outside mean mode).
  __device__ acc_t recompute(int64_t h, int64_t w) const {
    const int64_t j = h * W + w;
    acc_t noise = 0;
    if (prm.mode != MaskMode::kMean) {
      const PhiloxWords r = philox4x32_10(philox_counter(offset, p, groups, j), seed);
      noise = logistic_from_word<acc_t>(word_at(r, j & 3));
    }
    return with_noise(h, w, noise);
  }
};

// Fills a_chunk[j - begin] = A_j for the positions [begin, end) of the source's plane (whole
// Philox groups per thread, begin a multiple of 4), then waits for the whole block. Every thread
// of the block must call it.
template <typename scalar_t, typename acc_t>
__device__ void fill_attn_chunk(const AttnSource<scalar_t, acc_t>& src, int64_t begin, int64_t end,
                                acc_t* a_chunk) {
  const int tid = threadIdx.x, bs = blockDim.x;
  PlaneWalk gwalk(begin + 4 * tid, 4 * bs, src.W);
  for (int64_t j0 = begin + 4 * tid; j0 < end; j0 += 4 * bs, gwalk.advance()) {
    const PhiloxWords r =
        group_words(src.prm.mode, src.seed, src.offset, src.p, src.groups, j0 / 4);
    for_each_in_group(j0, end, gwalk.h, gwalk.w, src.W, [&](int k, int64_t j, int64_t h, int64_t w) {
      a_chunk[j - begin] = src.with_noise(h, w, noise_of<acc_t>(src.prm.mode, r, k));
    });
  }
  __syncthreads();
}

// A at (h, w) of the plane: from the chunk in shared memory when it lies inside, else recomputed.
template <typename scalar_t, typename acc_t>
__device__ __forceinline__ acc_t attn_near(const AttnSource<scalar_t, acc_t>& src,
                                           const acc_t* a_chunk, int64_t begin, int64_t end,
                                           int64_t h, int64_t w) {
  const int64_t j = h * src.W + w;
  return (j >= begin && j < end) ? a_chunk[j - begin] : src.recompute(h, w);
}

// ------------------------------------------------------------------------------------------
// Forward
// ------------------------------------------------------------------------------------------

// Dynamic shared memory of forward_plane_kernel: the scalar_t cache, plus an acc_t plane of A
// (placed first, so both stay aligned) with the fused TV.
template <typename scalar_t, typename acc_t>
size_t forward_plane_bytes(int64_t HW, bool with_tv) {
  return static_cast<size_t>(HW) * (sizeof(scalar_t) + (with_tv ? sizeof(acc_t) : 0));
}

// One block per plane. Shared memory holds the plane of x (as scalar_t, exact), then, position by
// position, the output F that replaces it, so that both global passes are coalesced. With the
// fused TV (tv != nullptr) it also holds A = M T in acc_t, whose neighbour differences are summed
// while F is stored.
template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kMaxThreads, kMinBlocksPerSm)
    forward_plane_kernel(StridedMap<const scalar_t> x, StridedMap<const scalar_t> t,
                         StridedMap<scalar_t> out, StridedMap<scalar_t> mask, acc_t* stats,
                         acc_t* tv_out, PlaneShape s, MaskParams<acc_t> prm, uint64_t seed,
                         uint64_t offset, bool separate_x, bool write_mask) {
  const bool with_tv = tv_out != nullptr;  // uniform over the block: the barriers below are too
  const int64_t HW = s.HW, groups = (HW + 3) / 4, H = HW / s.W;
  acc_t* attn = reinterpret_cast<acc_t*>(sa_smem);
  scalar_t* cache = reinterpret_cast<scalar_t*>(sa_smem + (with_tv ? HW * sizeof(acc_t) : 0));
  const int tid = threadIdx.x, bs = blockDim.x;
  for (int64_t p = blockIdx.x; p < s.P; p += gridDim.x) {
    const int64_t n = p / s.C, c = p % s.C;
    const scalar_t* xp = x.plane(n, c);
    acc_t lo = static_cast<acc_t>(INFINITY), hi = -static_cast<acc_t>(INFINITY);
    PlaneWalk walk(tid, bs, s.W);
    for (int64_t j = tid; j < HW; j += bs, walk.advance()) {
      const scalar_t v = xp[walk.at(x.sh, x.sw)];
      cache[j] = v;
      lo = NanMin()(lo, static_cast<acc_t>(v));
      hi = NanMax()(hi, static_cast<acc_t>(v));
    }
    // The reductions' barriers also publish the cached plane to the whole block.
    lo = block_all_reduce(lo, NanMin());
    hi = block_all_reduce(hi, NanMax());
    if (tid == 0) {
      stats[2 * p] = lo;
      stats[2 * p + 1] = hi;
    }
    const PlaneRange<acc_t> range(lo, hi, prm.eps);

    const scalar_t* tp = t.plane(n, c);
    scalar_t* mp = write_mask ? mask.plane(n, c) : nullptr;
    PlaneWalk gwalk(4 * static_cast<int64_t>(tid), 4 * static_cast<int64_t>(bs), s.W);
    for (int64_t g = tid; g < groups; g += bs, gwalk.advance()) {
      const PhiloxWords r = group_words(prm.mode, seed, offset, p, groups, g);
      // Each position is read and overwritten by the thread that owns its group only.
      for_each_in_group(4 * g, HW, gwalk.h, gwalk.w, s.W, [&](int k, int64_t j, int64_t h, int64_t w) {
        const acc_t xv = static_cast<acc_t>(cache[j]);
        const acc_t tv = separate_x ? static_cast<acc_t>(tp[h * t.sh + w * t.sw]) : xv;
        const acc_t m = mask_value(xv, noise_of<acc_t>(prm.mode, r, k), range, prm);
        cache[j] = static_cast<scalar_t>(gate_output(m, tv, prm.residual));
        if (with_tv) attn[j] = m * tv;
        if (write_mask) mp[h * mask.sh + w * mask.sw] = static_cast<scalar_t>(m);
      });
    }
    __syncthreads();

    // Store F; with TV, each position also adds its differences to the lower and right neighbours
    // (both buffers are read-only from here to the end of the plane).
    scalar_t* op = out.plane(n, c);
    double tv_sum = 0;
    const auto attn_at = [&](int64_t hh, int64_t ww) { return attn[hh * s.W + ww]; };
    walk = PlaneWalk(tid, bs, s.W);
    for (int64_t j = tid; j < HW; j += bs, walk.advance()) {
      op[walk.at(out.sh, out.sw)] = cache[j];
      if (with_tv) tv_sum += tv_terms_at(attn[j], walk.h, walk.w, H, s.W, attn_at);
    }
    if (with_tv) {
      tv_sum = block_all_reduce(tv_sum, Plus());
      if (tid == 0) tv_out[p] = static_cast<acc_t>(tv_sum);
    }
    __syncthreads();  // the next plane overwrites the cache and A
  }
}

// Tiled path, pass 1: (min, max) of each chunk of each plane into partial[item] (2 values).
template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kTileThreads)
    minmax_partial_kernel(StridedMap<const scalar_t> x, PlaneShape s, int64_t chunks,
                          acc_t* partial) {
  const int tid = threadIdx.x, bs = blockDim.x;
  for (int64_t item = blockIdx.x; item < s.P * chunks; item += gridDim.x) {
    const int64_t p = item / chunks, begin = (item % chunks) * kChunk;
    const int64_t end = s.HW < begin + kChunk ? s.HW : begin + kChunk;
    const scalar_t* xp = x.plane(p / s.C, p % s.C);
    acc_t lo = static_cast<acc_t>(INFINITY), hi = -static_cast<acc_t>(INFINITY);
    PlaneWalk walk(begin + tid, bs, s.W);
    for (int64_t j = begin + tid; j < end; j += bs, walk.advance()) {
      const acc_t v = static_cast<acc_t>(xp[walk.at(x.sh, x.sw)]);
      lo = NanMin()(lo, v);
      hi = NanMax()(hi, v);
    }
    lo = block_all_reduce(lo, NanMin());
    hi = block_all_reduce(hi, NanMax());
    if (tid == 0) {
      partial[2 * item] = lo;
      partial[2 * item + 1] = hi;
    }
  }
}

// Tiled path: folds the chunk partials of each plane into stats (one thread per plane).
template <typename acc_t>
__global__ void minmax_finalize_kernel(const acc_t* partial, int64_t P, int64_t chunks,
                                       acc_t* stats) {
  for (int64_t p = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; p < P;
       p += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    acc_t lo = partial[2 * p * chunks], hi = partial[2 * p * chunks + 1];
    for (int64_t k = 1; k < chunks; ++k) {
      lo = NanMin()(lo, partial[2 * (p * chunks + k)]);
      hi = NanMax()(hi, partial[2 * (p * chunks + k) + 1]);
    }
    stats[2 * p] = lo;
    stats[2 * p + 1] = hi;
  }
}

// Tiled path, pass 2: F (and M) of each chunk from the plane's stats. With the fused TV
// (tv_partial != nullptr; dynamic shared memory of kChunk acc_t) the chunk's A is kept in shared
// memory and the chunk's sum of squared differences to the lower and right neighbours goes to
// tv_partial[item] (double); neighbours beyond the chunk are recomputed.
template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kTileThreads)
    forward_tile_kernel(StridedMap<const scalar_t> x, StridedMap<const scalar_t> t,
                        StridedMap<scalar_t> out, StridedMap<scalar_t> mask, const acc_t* stats,
                        double* tv_partial, PlaneShape s, int64_t chunks, MaskParams<acc_t> prm,
                        uint64_t seed, uint64_t offset, bool separate_x, bool write_mask) {
  const bool with_tv = tv_partial != nullptr;  // uniform over the block
  acc_t* a_chunk = reinterpret_cast<acc_t*>(sa_smem);
  const int tid = threadIdx.x, bs = blockDim.x;
  const int64_t groups = (s.HW + 3) / 4, H = s.HW / s.W;
  for (int64_t item = blockIdx.x; item < s.P * chunks; item += gridDim.x) {
    const int64_t p = item / chunks, begin = (item % chunks) * kChunk;
    const int64_t end = s.HW < begin + kChunk ? s.HW : begin + kChunk;
    const int64_t n = p / s.C, c = p % s.C;
    const scalar_t* xp = x.plane(n, c);
    const scalar_t* tp = t.plane(n, c);
    scalar_t* op = out.plane(n, c);
    scalar_t* mp = write_mask ? mask.plane(n, c) : nullptr;
    const PlaneRange<acc_t> range(stats[2 * p], stats[2 * p + 1], prm.eps);
    PlaneWalk gwalk(begin + 4 * tid, 4 * bs, s.W);
    for (int64_t j0 = begin + 4 * tid; j0 < end; j0 += 4 * bs, gwalk.advance()) {
      const PhiloxWords r = group_words(prm.mode, seed, offset, p, groups, j0 / 4);
      for_each_in_group(j0, end, gwalk.h, gwalk.w, s.W, [&](int k, int64_t j, int64_t h, int64_t w) {
        const acc_t xv = static_cast<acc_t>(xp[h * x.sh + w * x.sw]);
        const acc_t tv = separate_x ? static_cast<acc_t>(tp[h * t.sh + w * t.sw]) : xv;
        const acc_t m = mask_value(xv, noise_of<acc_t>(prm.mode, r, k), range, prm);
        op[h * out.sh + w * out.sw] = static_cast<scalar_t>(gate_output(m, tv, prm.residual));
        if (with_tv) a_chunk[j - begin] = m * tv;
        if (write_mask) mp[h * mask.sh + w * mask.sw] = static_cast<scalar_t>(m);
      });
    }
    if (with_tv) {
      __syncthreads();  // the chunk's A is complete
      const AttnSource<scalar_t, acc_t> src(x, t, s, p, range, prm, seed, offset, separate_x);
      const auto near = [&](int64_t hh, int64_t ww) {
        return attn_near(src, a_chunk, begin, end, hh, ww);
      };
      double tv_sum = 0;
      PlaneWalk walk(begin + tid, bs, s.W);
      for (int64_t j = begin + tid; j < end; j += bs, walk.advance())
        tv_sum += tv_terms_at(a_chunk[j - begin], walk.h, walk.w, H, s.W, near);
      // Its barriers also keep the next item's writes to a_chunk behind every read of this one.
      tv_sum = block_all_reduce(tv_sum, Plus());
      if (tid == 0) tv_partial[item] = tv_sum;
    }
  }
}


// ------------------------------------------------------------------------------------------
// Backward
// ------------------------------------------------------------------------------------------

// Dynamic shared memory of backward_plane_kernel: three acc_t planes, four with the fused TV.
template <typename acc_t>
size_t backward_plane_bytes(int64_t HW, bool with_tv) {
  return static_cast<size_t>(HW) * sizeof(acc_t) * (with_tv ? 4 : 3);
}

// One block per plane. Shared memory holds three acc_t planes: x; t, then dL/dT through F; and
// grad_out, then dL/dX with lo and hi held fixed; with the fused TV (grad_tv != nullptr) a fourth
// one holds A = M T, recomputed first (pass 0) since dL/dA at a position reads A at its
// neighbours. Pass 1 reduces the lo/hi gradient and the tie counts, pass 2 shares them among
// the tied elements (the torch.amin / amax rule).
template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kMaxThreads, kMinBlocksPerSm)
    backward_plane_kernel(StridedMap<const scalar_t> gout, const acc_t* grad_tv,
                          StridedMap<const scalar_t> x, StridedMap<const scalar_t> t,
                          StridedMap<scalar_t> grad_t, StridedMap<scalar_t> grad_x,
                          const acc_t* stats, PlaneShape s, MaskParams<acc_t> prm, uint64_t seed,
                          uint64_t offset, bool separate_x) {
  const bool with_tv = grad_tv != nullptr;  // uniform over the block
  const int64_t HW = s.HW, groups = (HW + 3) / 4, H = HW / s.W;
  acc_t* xs = reinterpret_cast<acc_t*>(sa_smem);
  acc_t* ts = xs + HW;
  acc_t* gs = ts + HW;
  acc_t* attn = gs + HW;  // only with TV
  const int tid = threadIdx.x, bs = blockDim.x;
  for (int64_t p = blockIdx.x; p < s.P; p += gridDim.x) {
    const int64_t n = p / s.C, c = p % s.C;
    const scalar_t* xp = x.plane(n, c);
    const scalar_t* tp = t.plane(n, c);
    const scalar_t* gp = gout.plane(n, c);
    PlaneWalk walk(tid, bs, s.W);
    for (int64_t j = tid; j < HW; j += bs, walk.advance()) {
      xs[j] = static_cast<acc_t>(xp[walk.at(x.sh, x.sw)]);
      if (separate_x) ts[j] = static_cast<acc_t>(tp[walk.at(t.sh, t.sw)]);
      gs[j] = static_cast<acc_t>(gp[walk.at(gout.sh, gout.sw)]);
    }
    __syncthreads();

    const PlaneRange<acc_t> range(stats[2 * p], stats[2 * p + 1], prm.eps);
    // Pass 0 (TV only): A = M T of the whole plane, from the cached inputs.
    if (with_tv) {
      for (int64_t g = tid; g < groups; g += bs) {
        const PhiloxWords r = group_words(prm.mode, seed, offset, p, groups, g);
#pragma unroll
        for (int k = 0; k < 4; ++k) {
          const int64_t j = 4 * g + k;
          if (j >= HW) break;
          const acc_t xv = xs[j];
          attn[j] = mask_value(xv, noise_of<acc_t>(prm.mode, r, k), range, prm) *
                    (separate_x ? ts[j] : xv);
        }
      }
      __syncthreads();
    }
    const acc_t gtv = with_tv ? grad_tv[p] : acc_t(0);
    // Sums in double like the CPU kernel: many small terms of both signs reach lo and hi.
    double sum_lo = 0, sum_hi = 0;
    long long count_lo = 0, count_hi = 0;
    PlaneWalk gwalk(4 * static_cast<int64_t>(tid), 4 * static_cast<int64_t>(bs), s.W);
    for (int64_t g = tid; g < groups; g += bs, gwalk.advance()) {
      const PhiloxWords r = group_words(prm.mode, seed, offset, p, groups, g);
      for_each_in_group(4 * g, HW, gwalk.h, gwalk.w, s.W, [&](int k, int64_t j, int64_t h, int64_t w) {
        const acc_t xv = xs[j];
        const acc_t tv = separate_x ? ts[j] : xv;
        // dL/dA; A itself is only read in this pass, so the in-place writes below cannot race.
        const acc_t g_attn = with_tv ? gtv * tv_grad_at(attn, h, w, H, s.W) : acc_t(0);
        const ElementGrad<acc_t> eg =
            element_grad(gs[j], g_attn, xv, tv, noise_of<acc_t>(prm.mode, r, k), range, prm);
        ts[j] = eg.dt;  // only this thread touches position j in this pass
        gs[j] = eg.dx_direct;
        sum_lo += static_cast<double>(eg.dlo);
        sum_hi += static_cast<double>(eg.dhi);
        count_lo += xv == range.lo;
        count_hi += xv == range.hi;
      });
    }
    // The first reduction's barrier also publishes ts / gs for pass 2.
    sum_lo = block_all_reduce(sum_lo, Plus());
    sum_hi = block_all_reduce(sum_hi, Plus());
    count_lo = block_all_reduce(count_lo, Plus());
    count_hi = block_all_reduce(count_hi, Plus());
    const acc_t share_lo = count_lo ? static_cast<acc_t>(sum_lo / count_lo) : acc_t(0);
    const acc_t share_hi = count_hi ? static_cast<acc_t>(sum_hi / count_hi) : acc_t(0);

    scalar_t* gtp = grad_t.plane(n, c);
    scalar_t* gxp = separate_x ? grad_x.plane(n, c) : nullptr;
    walk = PlaneWalk(tid, bs, s.W);
    for (int64_t j = tid; j < HW; j += bs, walk.advance()) {
      const acc_t xv = xs[j];
      // Same association as the CPU kernel: the large direct and shared terms cancel first,
      // then dT is added (adding dT first would lose it in float32).
      const acc_t dx = gs[j] + ((xv == range.lo ? share_lo : acc_t(0)) +
                                (xv == range.hi ? share_hi : acc_t(0)));
      if (separate_x) {
        gxp[walk.at(grad_x.sh, grad_x.sw)] = static_cast<scalar_t>(dx);
        gtp[walk.at(grad_t.sh, grad_t.sw)] = static_cast<scalar_t>(ts[j]);
      } else {
        gtp[walk.at(grad_t.sh, grad_t.sw)] = static_cast<scalar_t>(ts[j] + dx);
      }
    }
    __syncthreads();  // the next plane overwrites the buffers
  }
}

// dL/dA at (h, w) in the tiled backward: the chunk's A from shared memory, the neighbours
// outside the chunk recomputed.
template <typename scalar_t, typename acc_t>
__device__ __forceinline__ acc_t tile_attn_grad(const AttnSource<scalar_t, acc_t>& src,
                                                const acc_t* a_chunk, int64_t begin, int64_t end,
                                                acc_t gtv, int64_t j, int64_t h, int64_t w,
                                                int64_t H) {
  const auto near = [&](int64_t hh, int64_t ww) {
    return attn_near(src, a_chunk, begin, end, hh, ww);
  };
  return gtv * tv_grad_with(a_chunk[j - begin], h, w, H, src.W, near);
}

// Tiled path, pass 1: per chunk, sum of dL/dlo, dL/dhi and the tie counts, as 4 doubles. With
// the fused TV (grad_tv != nullptr; dynamic shared memory of kChunk acc_t) the chunk's A is
// recomputed into shared memory first.
template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kTileThreads)
    backward_partial_kernel(StridedMap<const scalar_t> gout, const acc_t* grad_tv,
                            StridedMap<const scalar_t> x, StridedMap<const scalar_t> t,
                            const acc_t* stats, PlaneShape s, int64_t chunks,
                            MaskParams<acc_t> prm, uint64_t seed, uint64_t offset,
                            bool separate_x, double* partial) {
  const bool with_tv = grad_tv != nullptr;  // uniform over the block
  acc_t* a_chunk = reinterpret_cast<acc_t*>(sa_smem);
  const int tid = threadIdx.x, bs = blockDim.x;
  const int64_t groups = (s.HW + 3) / 4, H = s.HW / s.W;
  for (int64_t item = blockIdx.x; item < s.P * chunks; item += gridDim.x) {
    const int64_t p = item / chunks, begin = (item % chunks) * kChunk;
    const int64_t end = s.HW < begin + kChunk ? s.HW : begin + kChunk;
    const int64_t n = p / s.C, c = p % s.C;
    const scalar_t* xp = x.plane(n, c);
    const scalar_t* tp = t.plane(n, c);
    const scalar_t* gp = gout.plane(n, c);
    const PlaneRange<acc_t> range(stats[2 * p], stats[2 * p + 1], prm.eps);
    const AttnSource<scalar_t, acc_t> src(x, t, s, p, range, prm, seed, offset, separate_x);
    if (with_tv) fill_attn_chunk(src, begin, end, a_chunk);  // ends with a barrier
    const acc_t gtv = with_tv ? grad_tv[p] : acc_t(0);
    double sum_lo = 0, sum_hi = 0;
    long long count_lo = 0, count_hi = 0;
    PlaneWalk gwalk(begin + 4 * tid, 4 * bs, s.W);
    for (int64_t j0 = begin + 4 * tid; j0 < end; j0 += 4 * bs, gwalk.advance()) {
      const PhiloxWords r = group_words(prm.mode, seed, offset, p, groups, j0 / 4);
      for_each_in_group(j0, end, gwalk.h, gwalk.w, s.W, [&](int k, int64_t j, int64_t h, int64_t w) {
        const acc_t xv = static_cast<acc_t>(xp[h * x.sh + w * x.sw]);
        const acc_t tv = separate_x ? static_cast<acc_t>(tp[h * t.sh + w * t.sw]) : xv;
        const acc_t gv = static_cast<acc_t>(gp[h * gout.sh + w * gout.sw]);
        const acc_t g_attn =
            with_tv ? tile_attn_grad(src, a_chunk, begin, end, gtv, j, h, w, H) : acc_t(0);
        const ElementGrad<acc_t> eg =
            element_grad(gv, g_attn, xv, tv, noise_of<acc_t>(prm.mode, r, k), range, prm);
        sum_lo += static_cast<double>(eg.dlo);
        sum_hi += static_cast<double>(eg.dhi);
        count_lo += xv == range.lo;
        count_hi += xv == range.hi;
      });
    }
    // The reductions' barriers also keep the next item's writes to a_chunk behind this one's reads.
    sum_lo = block_all_reduce(sum_lo, Plus());
    sum_hi = block_all_reduce(sum_hi, Plus());
    count_lo = block_all_reduce(count_lo, Plus());
    count_hi = block_all_reduce(count_hi, Plus());
    if (tid == 0) {
      double* out = partial + 4 * item;
      out[0] = sum_lo;
      out[1] = sum_hi;
      out[2] = static_cast<double>(count_lo);  // exact below 2^53
      out[3] = static_cast<double>(count_hi);
    }
  }
}

// Tiled path: each plane's share of the lo and hi gradient per tied element (one thread per plane).
template <typename acc_t>
__global__ void backward_finalize_kernel(const double* partial, int64_t P, int64_t chunks,
                                         acc_t* shares) {
  for (int64_t p = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; p < P;
       p += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    double sum_lo = 0, sum_hi = 0, count_lo = 0, count_hi = 0;
    for (int64_t k = 0; k < chunks; ++k) {
      const double* part = partial + 4 * (p * chunks + k);
      sum_lo += part[0];
      sum_hi += part[1];
      count_lo += part[2];
      count_hi += part[3];
    }
    shares[2 * p] = count_lo > 0 ? static_cast<acc_t>(sum_lo / count_lo) : acc_t(0);
    shares[2 * p + 1] = count_hi > 0 ? static_cast<acc_t>(sum_hi / count_hi) : acc_t(0);
  }
}

// Tiled path, pass 2: recomputes the per-element derivatives and writes the gradients (with the
// fused TV, from the chunk's A recomputed into shared memory as in pass 1).
template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kTileThreads)
    backward_tile_kernel(StridedMap<const scalar_t> gout, const acc_t* grad_tv,
                         StridedMap<const scalar_t> x, StridedMap<const scalar_t> t,
                         StridedMap<scalar_t> grad_t, StridedMap<scalar_t> grad_x,
                         const acc_t* stats, const acc_t* shares, PlaneShape s, int64_t chunks,
                         MaskParams<acc_t> prm, uint64_t seed, uint64_t offset,
                         bool separate_x) {
  const bool with_tv = grad_tv != nullptr;  // uniform over the block
  acc_t* a_chunk = reinterpret_cast<acc_t*>(sa_smem);
  const int tid = threadIdx.x, bs = blockDim.x;
  const int64_t groups = (s.HW + 3) / 4, H = s.HW / s.W;
  for (int64_t item = blockIdx.x; item < s.P * chunks; item += gridDim.x) {
    const int64_t p = item / chunks, begin = (item % chunks) * kChunk;
    const int64_t end = s.HW < begin + kChunk ? s.HW : begin + kChunk;
    const int64_t n = p / s.C, c = p % s.C;
    const scalar_t* xp = x.plane(n, c);
    const scalar_t* tp = t.plane(n, c);
    const scalar_t* gp = gout.plane(n, c);
    scalar_t* gtp = grad_t.plane(n, c);
    scalar_t* gxp = separate_x ? grad_x.plane(n, c) : nullptr;
    const PlaneRange<acc_t> range(stats[2 * p], stats[2 * p + 1], prm.eps);
    const acc_t share_lo = shares[2 * p], share_hi = shares[2 * p + 1];
    const AttnSource<scalar_t, acc_t> src(x, t, s, p, range, prm, seed, offset, separate_x);
    if (with_tv) fill_attn_chunk(src, begin, end, a_chunk);  // ends with a barrier
    const acc_t gtv = with_tv ? grad_tv[p] : acc_t(0);
    PlaneWalk gwalk(begin + 4 * tid, 4 * bs, s.W);
    for (int64_t j0 = begin + 4 * tid; j0 < end; j0 += 4 * bs, gwalk.advance()) {
      const PhiloxWords r = group_words(prm.mode, seed, offset, p, groups, j0 / 4);
      for_each_in_group(j0, end, gwalk.h, gwalk.w, s.W, [&](int k, int64_t j, int64_t h, int64_t w) {
        const acc_t xv = static_cast<acc_t>(xp[h * x.sh + w * x.sw]);
        const acc_t tv = separate_x ? static_cast<acc_t>(tp[h * t.sh + w * t.sw]) : xv;
        const acc_t gv = static_cast<acc_t>(gp[h * gout.sh + w * gout.sw]);
        const acc_t g_attn =
            with_tv ? tile_attn_grad(src, a_chunk, begin, end, gtv, j, h, w, H) : acc_t(0);
        const ElementGrad<acc_t> eg =
            element_grad(gv, g_attn, xv, tv, noise_of<acc_t>(prm.mode, r, k), range, prm);
        const acc_t dx = eg.dx_direct + ((xv == range.lo ? share_lo : acc_t(0)) +
                                         (xv == range.hi ? share_hi : acc_t(0)));
        if (separate_x) {
          gxp[h * grad_x.sh + w * grad_x.sw] = static_cast<scalar_t>(dx);
          gtp[h * grad_t.sh + w * grad_t.sw] = static_cast<scalar_t>(eg.dt);
        } else {
          gtp[h * grad_t.sh + w * grad_t.sw] = static_cast<scalar_t>(eg.dt + dx);
        }
      });
    }
    if (with_tv) __syncthreads();  // the next item overwrites a_chunk
  }
}

// ------------------------------------------------------------------------------------------
// Host side
// ------------------------------------------------------------------------------------------

PlaneShape plane_shape(const at::Tensor& t) {
  return PlaneShape{t.size(0) * t.size(1), t.size(1), t.size(3), t.size(2) * t.size(3)};
}

// An optional output (an empty 1-D tensor when not requested) as a map the kernels never touch.
template <typename scalar_t>
StridedMap<scalar_t> optional_map(at::Tensor& v, bool present) {
  return present ? strided_map(v.mutable_data_ptr<scalar_t>(), v)
                 : StridedMap<scalar_t>{nullptr, 0, 0, 0, 0};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> forward(
    const at::Tensor& t, const c10::optional<at::Tensor>& x_opt, double tau, int64_t seed,
    int64_t offset, c10::string_view mode, bool residual, double eps, bool return_mask,
    bool return_tv) {
  check_forward_args(t, x_opt, tau);
  const at::Tensor& x = x_opt.has_value() ? *x_opt : t;
  const bool separate_x = x_opt.has_value();
  c10::cuda::CUDAGuard guard(t.device());
  const PlaneShape s = plane_shape(t);
  const auto acc_dtype = accumulation_dtype(t);
  at::Tensor out = at::empty_like(t);
  at::Tensor mask = return_mask ? at::empty_like(t) : at::empty({0}, t.options());
  at::Tensor stats = at::empty({t.size(0), t.size(1), 2}, t.options().dtype(acc_dtype));
  at::Tensor tv = return_tv ? at::empty({t.size(0), t.size(1)}, t.options().dtype(acc_dtype))
                            : at::empty({0}, t.options().dtype(acc_dtype));
  if (s.P == 0 || s.HW == 0) return {out, mask, stats.zero_(), tv.zero_()};
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, t.scalar_type(), "sharp_attention_forward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const auto prm = make_params<acc_t>(tau, eps, mode, residual);
    const auto xm = strided_map(x.const_data_ptr<scalar_t>(), x);
    const auto tm = strided_map(t.const_data_ptr<scalar_t>(), t);
    const auto om = strided_map(out.mutable_data_ptr<scalar_t>(), out);
    const auto mm = optional_map<scalar_t>(mask, return_mask);
    acc_t* st = stats.mutable_data_ptr<acc_t>();
    acc_t* tvp = return_tv ? tv.mutable_data_ptr<acc_t>() : nullptr;
    const auto seed_u = static_cast<uint64_t>(seed), offset_u = static_cast<uint64_t>(offset);

    const size_t bytes = forward_plane_bytes<scalar_t, acc_t>(s.HW, return_tv);
    if (bytes <= smem_budget()) {
      auto kernel = forward_plane_kernel<scalar_t, acc_t>;
      allow_dynamic_smem(kernel, bytes);
      kernel<<<grid_blocks(s.P), block_threads(ceil_div(s.HW, 4)), bytes, stream>>>(
          xm, tm, om, mm, st, tvp, s, prm, seed_u, offset_u, separate_x, return_mask);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      return;
    }
    const int64_t chunks = ceil_div(s.HW, kChunk), items = s.P * chunks;
    at::Tensor partial = at::empty({items, 2}, stats.options());
    minmax_partial_kernel<scalar_t, acc_t><<<grid_blocks(items), kTileThreads, 0, stream>>>(
        xm, s, chunks, partial.mutable_data_ptr<acc_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    minmax_finalize_kernel<acc_t><<<grid_blocks(ceil_div(s.P, 256)), 256, 0, stream>>>(
        partial.const_data_ptr<acc_t>(), s.P, chunks, st);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    // With TV: the chunk's A in shared memory (16 KB float, 32 KB double: no opt-in needed) and
    // one double per item, folded per plane below.
    at::Tensor tv_partial =
        return_tv ? at::empty({items}, t.options().dtype(at::kDouble)) : at::Tensor();
    const size_t tile_bytes = return_tv ? kChunk * sizeof(acc_t) : 0;
    auto tile_kernel = forward_tile_kernel<scalar_t, acc_t>;
    allow_dynamic_smem(tile_kernel, tile_bytes);
    tile_kernel<<<grid_blocks(items), kTileThreads, tile_bytes, stream>>>(
        xm, tm, om, mm, st, return_tv ? tv_partial.mutable_data_ptr<double>() : nullptr, s,
        chunks, prm, seed_u, offset_u, separate_x, return_mask);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    if (return_tv) {
      tv_finalize_kernel<acc_t><<<grid_blocks(ceil_div(s.P, 256)), 256, 0, stream>>>(
          tv_partial.const_data_ptr<double>(), s.P, chunks, tvp);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  });
  return {out, mask, stats, tv};
}

std::tuple<at::Tensor, at::Tensor> backward(const at::Tensor& grad_out,
                                            const c10::optional<at::Tensor>& grad_tv_opt,
                                            const at::Tensor& t,
                                            const c10::optional<at::Tensor>& x_opt,
                                            const at::Tensor& stats, double tau, int64_t seed,
                                            int64_t offset, c10::string_view mode, bool residual,
                                            double eps) {
  const bool with_tv = check_backward_args(grad_out, grad_tv_opt, t, x_opt, stats, tau);
  const at::Tensor& x = x_opt.has_value() ? *x_opt : t;
  const bool separate_x = x_opt.has_value();
  c10::cuda::CUDAGuard guard(t.device());
  const PlaneShape s = plane_shape(t);
  at::Tensor grad_t = at::empty_like(t);
  at::Tensor grad_x = separate_x ? at::empty_like(x) : at::empty({0}, t.options());
  if (s.P == 0 || s.HW == 0) return {grad_t, grad_x};
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, t.scalar_type(), "sharp_attention_backward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const auto prm = make_params<acc_t>(tau, eps, mode, residual);
    const auto gm = strided_map(grad_out.const_data_ptr<scalar_t>(), grad_out);
    const auto xm = strided_map(x.const_data_ptr<scalar_t>(), x);
    const auto tm = strided_map(t.const_data_ptr<scalar_t>(), t);
    const auto gtm = strided_map(grad_t.mutable_data_ptr<scalar_t>(), grad_t);
    const auto gxm = optional_map<scalar_t>(grad_x, separate_x);
    const acc_t* st = stats.const_data_ptr<acc_t>();
    const acc_t* gtv = with_tv ? grad_tv_opt->const_data_ptr<acc_t>() : nullptr;
    const auto seed_u = static_cast<uint64_t>(seed), offset_u = static_cast<uint64_t>(offset);

    const size_t bytes = backward_plane_bytes<acc_t>(s.HW, with_tv);
    if (bytes <= smem_budget()) {
      auto kernel = backward_plane_kernel<scalar_t, acc_t>;
      allow_dynamic_smem(kernel, bytes);
      kernel<<<grid_blocks(s.P), block_threads(ceil_div(s.HW, 4)), bytes, stream>>>(
          gm, gtv, xm, tm, gtm, gxm, st, s, prm, seed_u, offset_u, separate_x);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      return;
    }
    const int64_t chunks = ceil_div(s.HW, kChunk), items = s.P * chunks;
    at::Tensor partial = at::empty({items, 4}, t.options().dtype(at::kDouble));
    at::Tensor shares = at::empty({s.P, 2}, stats.options());
    // With TV each tiled kernel recomputes its chunk's A into shared memory (16 / 32 KB).
    const size_t tile_bytes = with_tv ? kChunk * sizeof(acc_t) : 0;
    auto partial_kernel = backward_partial_kernel<scalar_t, acc_t>;
    auto tile_kernel = backward_tile_kernel<scalar_t, acc_t>;
    allow_dynamic_smem(partial_kernel, tile_bytes);
    allow_dynamic_smem(tile_kernel, tile_bytes);
    partial_kernel<<<grid_blocks(items), kTileThreads, tile_bytes, stream>>>(
        gm, gtv, xm, tm, st, s, chunks, prm, seed_u, offset_u, separate_x,
        partial.mutable_data_ptr<double>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    backward_finalize_kernel<acc_t><<<grid_blocks(ceil_div(s.P, 256)), 256, 0, stream>>>(
        partial.const_data_ptr<double>(), s.P, chunks, shares.mutable_data_ptr<acc_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    tile_kernel<<<grid_blocks(items), kTileThreads, tile_bytes, stream>>>(
        gm, gtv, xm, tm, gtm, gxm, st, shares.const_data_ptr<acc_t>(), s, chunks, prm, seed_u,
        offset_u, separate_x);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {grad_t, grad_x};
}

}  // namespace

TORCH_LIBRARY_IMPL(sharpattn, CUDA, m) {
  m.impl("sharp_attention_forward", &forward);
  m.impl("sharp_attention_backward", &backward);
}

}  // namespace sharpattn::cuda
