// CUDA kernels of the sharp attention operator (SPEC section 2), the same semantics as
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

#include "../common/op_args.h"
#include "../common/philox.h"
#include "../common/sharp_mask.h"
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

// ------------------------------------------------------------------------------------------
// Forward
// ------------------------------------------------------------------------------------------

// One block per plane. Shared memory holds the plane of x (as scalar_t, exact), then, position by
// position, the output F that replaces it, so that both global passes are coalesced.
template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kMaxThreads)
    forward_plane_kernel(StridedMap<const scalar_t> x, StridedMap<const scalar_t> t,
                         StridedMap<scalar_t> out, StridedMap<scalar_t> mask, acc_t* stats,
                         PlaneShape s, MaskParams<acc_t> prm, uint64_t seed, uint64_t offset,
                         bool separate_x, bool write_mask) {
  scalar_t* cache = reinterpret_cast<scalar_t*>(sa_smem);
  const int64_t HW = s.HW, groups = (HW + 3) / 4;
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
        if (write_mask) mp[h * mask.sh + w * mask.sw] = static_cast<scalar_t>(m);
      });
    }
    __syncthreads();

    scalar_t* op = out.plane(n, c);
    walk = PlaneWalk(tid, bs, s.W);
    for (int64_t j = tid; j < HW; j += bs, walk.advance()) op[walk.at(out.sh, out.sw)] = cache[j];
    __syncthreads();  // the next plane overwrites the cache
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

// Tiled path, pass 2: F (and M) of each chunk from the plane's stats.
template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kTileThreads)
    forward_tile_kernel(StridedMap<const scalar_t> x, StridedMap<const scalar_t> t,
                        StridedMap<scalar_t> out, StridedMap<scalar_t> mask, const acc_t* stats,
                        PlaneShape s, int64_t chunks, MaskParams<acc_t> prm, uint64_t seed,
                        uint64_t offset, bool separate_x, bool write_mask) {
  const int tid = threadIdx.x, bs = blockDim.x;
  const int64_t groups = (s.HW + 3) / 4;
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
      for_each_in_group(j0, end, gwalk.h, gwalk.w, s.W, [&](int k, int64_t, int64_t h, int64_t w) {
        const acc_t xv = static_cast<acc_t>(xp[h * x.sh + w * x.sw]);
        const acc_t tv = separate_x ? static_cast<acc_t>(tp[h * t.sh + w * t.sw]) : xv;
        const acc_t m = mask_value(xv, noise_of<acc_t>(prm.mode, r, k), range, prm);
        op[h * out.sh + w * out.sw] = static_cast<scalar_t>(gate_output(m, tv, prm.residual));
        if (write_mask) mp[h * mask.sh + w * mask.sw] = static_cast<scalar_t>(m);
      });
    }
  }
}

// ------------------------------------------------------------------------------------------
// Backward
// ------------------------------------------------------------------------------------------

// One block per plane. Shared memory holds three acc_t planes: x; t, then dL/dT through F; and
// grad_out, then dL/dX with lo and hi held fixed. Pass 1 reduces the lo/hi gradient and the
// tie counts, pass 2 shares them among the tied elements (the torch.amin / amax rule).
template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kMaxThreads)
    backward_plane_kernel(StridedMap<const scalar_t> gout, StridedMap<const scalar_t> x,
                          StridedMap<const scalar_t> t, StridedMap<scalar_t> grad_t,
                          StridedMap<scalar_t> grad_x, const acc_t* stats, PlaneShape s,
                          MaskParams<acc_t> prm, uint64_t seed, uint64_t offset,
                          bool separate_x) {
  const int64_t HW = s.HW, groups = (HW + 3) / 4;
  acc_t* xs = reinterpret_cast<acc_t*>(sa_smem);
  acc_t* ts = xs + HW;
  acc_t* gs = ts + HW;
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
    // Sums in double like the CPU kernel: many small terms of both signs reach lo and hi.
    double sum_lo = 0, sum_hi = 0;
    long long count_lo = 0, count_hi = 0;
    for (int64_t g = tid; g < groups; g += bs) {
      const PhiloxWords r = group_words(prm.mode, seed, offset, p, groups, g);
#pragma unroll
      for (int k = 0; k < 4; ++k) {
        const int64_t j = 4 * g + k;
        if (j >= HW) break;
        const acc_t xv = xs[j];
        const acc_t tv = separate_x ? ts[j] : xv;
        const ElementGrad<acc_t> eg =
            element_grad(gs[j], xv, tv, noise_of<acc_t>(prm.mode, r, k), range, prm);
        ts[j] = eg.dt;  // only this thread touches position j in this pass
        gs[j] = eg.dx_direct;
        sum_lo += static_cast<double>(eg.dlo);
        sum_hi += static_cast<double>(eg.dhi);
        count_lo += xv == range.lo;
        count_hi += xv == range.hi;
      }
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

// Tiled path, pass 1: per chunk, sum of dL/dlo, dL/dhi and the tie counts, as 4 doubles.
template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kTileThreads)
    backward_partial_kernel(StridedMap<const scalar_t> gout, StridedMap<const scalar_t> x,
                            StridedMap<const scalar_t> t, const acc_t* stats, PlaneShape s,
                            int64_t chunks, MaskParams<acc_t> prm, uint64_t seed,
                            uint64_t offset, bool separate_x, double* partial) {
  const int tid = threadIdx.x, bs = blockDim.x;
  const int64_t groups = (s.HW + 3) / 4;
  for (int64_t item = blockIdx.x; item < s.P * chunks; item += gridDim.x) {
    const int64_t p = item / chunks, begin = (item % chunks) * kChunk;
    const int64_t end = s.HW < begin + kChunk ? s.HW : begin + kChunk;
    const int64_t n = p / s.C, c = p % s.C;
    const scalar_t* xp = x.plane(n, c);
    const scalar_t* tp = t.plane(n, c);
    const scalar_t* gp = gout.plane(n, c);
    const PlaneRange<acc_t> range(stats[2 * p], stats[2 * p + 1], prm.eps);
    double sum_lo = 0, sum_hi = 0;
    long long count_lo = 0, count_hi = 0;
    PlaneWalk gwalk(begin + 4 * tid, 4 * bs, s.W);
    for (int64_t j0 = begin + 4 * tid; j0 < end; j0 += 4 * bs, gwalk.advance()) {
      const PhiloxWords r = group_words(prm.mode, seed, offset, p, groups, j0 / 4);
      for_each_in_group(j0, end, gwalk.h, gwalk.w, s.W, [&](int k, int64_t, int64_t h, int64_t w) {
        const acc_t xv = static_cast<acc_t>(xp[h * x.sh + w * x.sw]);
        const acc_t tv = separate_x ? static_cast<acc_t>(tp[h * t.sh + w * t.sw]) : xv;
        const acc_t gv = static_cast<acc_t>(gp[h * gout.sh + w * gout.sw]);
        const ElementGrad<acc_t> eg =
            element_grad(gv, xv, tv, noise_of<acc_t>(prm.mode, r, k), range, prm);
        sum_lo += static_cast<double>(eg.dlo);
        sum_hi += static_cast<double>(eg.dhi);
        count_lo += xv == range.lo;
        count_hi += xv == range.hi;
      });
    }
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

// Tiled path, pass 2: recomputes the per-element derivatives and writes the gradients.
template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kTileThreads)
    backward_tile_kernel(StridedMap<const scalar_t> gout, StridedMap<const scalar_t> x,
                         StridedMap<const scalar_t> t, StridedMap<scalar_t> grad_t,
                         StridedMap<scalar_t> grad_x, const acc_t* stats, const acc_t* shares,
                         PlaneShape s, int64_t chunks, MaskParams<acc_t> prm, uint64_t seed,
                         uint64_t offset, bool separate_x) {
  const int tid = threadIdx.x, bs = blockDim.x;
  const int64_t groups = (s.HW + 3) / 4;
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
    PlaneWalk gwalk(begin + 4 * tid, 4 * bs, s.W);
    for (int64_t j0 = begin + 4 * tid; j0 < end; j0 += 4 * bs, gwalk.advance()) {
      const PhiloxWords r = group_words(prm.mode, seed, offset, p, groups, j0 / 4);
      for_each_in_group(j0, end, gwalk.h, gwalk.w, s.W, [&](int k, int64_t, int64_t h, int64_t w) {
        const acc_t xv = static_cast<acc_t>(xp[h * x.sh + w * x.sw]);
        const acc_t tv = separate_x ? static_cast<acc_t>(tp[h * t.sh + w * t.sw]) : xv;
        const acc_t gv = static_cast<acc_t>(gp[h * gout.sh + w * gout.sw]);
        const ElementGrad<acc_t> eg =
            element_grad(gv, xv, tv, noise_of<acc_t>(prm.mode, r, k), range, prm);
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
  }
}

// ------------------------------------------------------------------------------------------
// Host side
// ------------------------------------------------------------------------------------------

template <typename acc_t>
MaskParams<acc_t> make_params(double tau, double eps, c10::string_view mode, bool residual) {
  return MaskParams<acc_t>{static_cast<acc_t>(1.0 / tau), static_cast<acc_t>(eps),
                           parse_mask_mode(std::string_view(mode.data(), mode.size())), residual};
}

PlaneShape plane_shape(const at::Tensor& t) {
  return PlaneShape{t.size(0) * t.size(1), t.size(1), t.size(3), t.size(2) * t.size(3)};
}

// An optional output (an empty 1-D tensor when not requested) as a map the kernels never touch.
template <typename scalar_t>
StridedMap<scalar_t> optional_map(at::Tensor& v, bool present) {
  return present ? strided_map(v.mutable_data_ptr<scalar_t>(), v)
                 : StridedMap<scalar_t>{nullptr, 0, 0, 0, 0};
}

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

std::tuple<at::Tensor, at::Tensor, at::Tensor> forward(const at::Tensor& t,
                                                       const c10::optional<at::Tensor>& x_opt,
                                                       double tau, int64_t seed, int64_t offset,
                                                       c10::string_view mode, bool residual,
                                                       double eps, bool return_mask) {
  check_forward_args(t, x_opt, tau);
  const at::Tensor& x = x_opt.has_value() ? *x_opt : t;
  const bool separate_x = x_opt.has_value();
  c10::cuda::CUDAGuard guard(t.device());
  const PlaneShape s = plane_shape(t);
  const auto acc_dtype = t.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  at::Tensor out = at::empty_like(t);
  at::Tensor mask = return_mask ? at::empty_like(t) : at::empty({0}, t.options());
  at::Tensor stats = at::empty({t.size(0), t.size(1), 2}, t.options().dtype(acc_dtype));
  if (s.P == 0 || s.HW == 0) return {out, mask, stats.zero_()};
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, t.scalar_type(), "sharp_attention_forward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const auto prm = make_params<acc_t>(tau, eps, mode, residual);
    const auto xm = strided_map(x.const_data_ptr<scalar_t>(), x);
    const auto tm = strided_map(t.const_data_ptr<scalar_t>(), t);
    const auto om = strided_map(out.mutable_data_ptr<scalar_t>(), out);
    const auto mm = optional_map<scalar_t>(mask, return_mask);
    acc_t* st = stats.mutable_data_ptr<acc_t>();
    const auto seed_u = static_cast<uint64_t>(seed), offset_u = static_cast<uint64_t>(offset);

    const size_t bytes = static_cast<size_t>(s.HW) * sizeof(scalar_t);
    if (bytes <= smem_budget()) {
      auto kernel = forward_plane_kernel<scalar_t, acc_t>;
      allow_dynamic_smem(kernel, bytes);
      kernel<<<grid_blocks(s.P), block_threads(ceil_div(s.HW, 4)), bytes, stream>>>(
          xm, tm, om, mm, st, s, prm, seed_u, offset_u, separate_x, return_mask);
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
    forward_tile_kernel<scalar_t, acc_t><<<grid_blocks(items), kTileThreads, 0, stream>>>(
        xm, tm, om, mm, st, s, chunks, prm, seed_u, offset_u, separate_x, return_mask);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {out, mask, stats};
}

std::tuple<at::Tensor, at::Tensor> backward(const at::Tensor& grad_out, const at::Tensor& t,
                                            const c10::optional<at::Tensor>& x_opt,
                                            const at::Tensor& stats, double tau, int64_t seed,
                                            int64_t offset, c10::string_view mode, bool residual,
                                            double eps) {
  check_forward_args(t, x_opt, tau);
  check_same_map(t, grad_out, "grad_out");
  check_stats(t, stats);
  TORCH_CHECK(stats.device() == t.device(), "sharpattn: stats must be on the device of t");
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
    const auto seed_u = static_cast<uint64_t>(seed), offset_u = static_cast<uint64_t>(offset);

    const size_t bytes = 3 * static_cast<size_t>(s.HW) * sizeof(acc_t);
    if (bytes <= smem_budget()) {
      auto kernel = backward_plane_kernel<scalar_t, acc_t>;
      allow_dynamic_smem(kernel, bytes);
      kernel<<<grid_blocks(s.P), block_threads(ceil_div(s.HW, 4)), bytes, stream>>>(
          gm, xm, tm, gtm, gxm, st, s, prm, seed_u, offset_u, separate_x);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      return;
    }
    const int64_t chunks = ceil_div(s.HW, kChunk), items = s.P * chunks;
    at::Tensor partial = at::empty({items, 4}, t.options().dtype(at::kDouble));
    at::Tensor shares = at::empty({s.P, 2}, stats.options());
    backward_partial_kernel<scalar_t, acc_t><<<grid_blocks(items), kTileThreads, 0, stream>>>(
        gm, xm, tm, st, s, chunks, prm, seed_u, offset_u, separate_x,
        partial.mutable_data_ptr<double>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    backward_finalize_kernel<acc_t><<<grid_blocks(ceil_div(s.P, 256)), 256, 0, stream>>>(
        partial.const_data_ptr<double>(), s.P, chunks, shares.mutable_data_ptr<acc_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    backward_tile_kernel<scalar_t, acc_t><<<grid_blocks(items), kTileThreads, 0, stream>>>(
        gm, xm, tm, gtm, gxm, st, shares.const_data_ptr<acc_t>(), s, chunks, prm, seed_u,
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
