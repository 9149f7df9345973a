// CUDA kernels of the total variation penalty (docs/spec.md section 3, SAN eq. 6-7), per
// (n, c) plane; the same semantics and per-element arithmetic as csrc/cpu/tv_loss.cpp
// (differences in the accumulation type, squares summed in double).
//
//  * Forward: blocks over (plane, chunk of kChunk positions) items; each thread sums the squared
//    differences of its positions to their lower and right neighbours, read straight from global
//    memory through the tensor's strides (the neighbours are the next thread's or the next row's
//    loads, so L1/L2 serve the reuse), and the block reduces them in a fixed order. A plane of at
//    most kChunk positions (the usual case) is one item and writes its TV directly; a larger one
//    writes per-chunk partials in double that a tiny kernel folds per plane, so a few huge planes
//    still spread over the whole GPU. Deterministic: the order depends on the shape only.
//  * Backward: one thread per element (grid-stride), grad[p] * dTV/dA from the 4 neighbours.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "../common/host.h"
#include "../common/op_args.h"
#include "plane_access.cuh"

namespace sharpattn::cuda {
namespace {

constexpr int64_t kChunk = 8192;
constexpr int kThreads = 256;

// One item = one chunk of one plane. chunks == 1: tv[p] directly; else partial[item] (double).
template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads)
    tv_forward_kernel(StridedMap<const scalar_t> a, PlaneShape s, int64_t H, int64_t chunks,
                      acc_t* tv, double* partial) {
  const int tid = threadIdx.x, bs = blockDim.x;
  for (int64_t item = blockIdx.x; item < s.P * chunks; item += gridDim.x) {
    const int64_t p = item / chunks, begin = (item % chunks) * kChunk;
    const int64_t end = s.HW < begin + kChunk ? s.HW : begin + kChunk;
    const scalar_t* ap = a.plane(p / s.C, p % s.C);
    const auto get = [&](int64_t h, int64_t w) {
      return static_cast<acc_t>(ap[h * a.sh + w * a.sw]);
    };
    double sum = 0;
    PlaneWalk walk(begin + tid, bs, s.W);
    for (int64_t j = begin + tid; j < end; j += bs, walk.advance())
      sum += tv_terms_at(get(walk.h, walk.w), walk.h, walk.w, H, s.W, get);
    sum = block_all_reduce(sum, Plus());
    if (tid == 0) {
      if (chunks == 1)
        tv[p] = static_cast<acc_t>(sum);
      else
        partial[item] = sum;
    }
  }
}


// One thread per element of the logical NCHW order.
template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads)
    tv_backward_kernel(const acc_t* grad, StridedMap<const scalar_t> a, StridedMap<scalar_t> ga,
                       PlaneShape s, int64_t H) {
  const int64_t total = s.P * s.HW;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t p = i / s.HW, j = i % s.HW, h = j / s.W, w = j % s.W;
    const int64_t n = p / s.C, c = p % s.C;
    const scalar_t* ap = a.plane(n, c);
    const auto get = [&](int64_t hh, int64_t ww) {
      return static_cast<acc_t>(ap[hh * a.sh + ww * a.sw]);
    };
    const acc_t g = grad[p] * tv_grad_with(get(h, w), h, w, H, s.W, get);
    ga.plane(n, c)[h * ga.sh + w * ga.sw] = static_cast<scalar_t>(g);
  }
}

PlaneShape plane_shape(const at::Tensor& a) {
  return PlaneShape{a.size(0) * a.size(1), a.size(1), a.size(3), a.size(2) * a.size(3)};
}

at::Tensor tv_per_plane(const at::Tensor& a) {
  check_feature_map(a, "a");
  c10::cuda::CUDAGuard guard(a.device());
  const PlaneShape s = plane_shape(a);
  at::Tensor tv = at::empty({a.size(0), a.size(1)}, a.options().dtype(accumulation_dtype(a)));
  if (s.P == 0 || s.HW == 0) return tv.zero_();
  const int64_t H = a.size(2);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.scalar_type(), "tv_per_plane_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const auto am = strided_map(a.const_data_ptr<scalar_t>(), a);
    acc_t* tv_data = tv.mutable_data_ptr<acc_t>();
    const int64_t chunks = ceil_div(s.HW, kChunk), items = s.P * chunks;
    // A small plane gets fewer threads (whole warps, at least 64) instead of idle ones.
    const int threads = std::min(block_threads(std::min(s.HW, kChunk)), kThreads);
    if (chunks == 1) {
      tv_forward_kernel<scalar_t, acc_t><<<grid_blocks(items), threads, 0, stream>>>(
          am, s, H, chunks, tv_data, nullptr);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      return;
    }
    at::Tensor partial = at::empty({items}, a.options().dtype(at::kDouble));
    tv_forward_kernel<scalar_t, acc_t><<<grid_blocks(items), threads, 0, stream>>>(
        am, s, H, chunks, tv_data, partial.mutable_data_ptr<double>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    tv_finalize_kernel<acc_t><<<grid_blocks(ceil_div(s.P, 256)), 256, 0, stream>>>(
        partial.const_data_ptr<double>(), s.P, chunks, tv_data);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return tv;
}

at::Tensor tv_per_plane_backward(const at::Tensor& grad, const at::Tensor& a) {
  check_feature_map(a, "a");
  check_grad_tv(a, grad);  // shape (N, C), contiguous, acc dtype, device of a
  c10::cuda::CUDAGuard guard(a.device());
  const PlaneShape s = plane_shape(a);
  at::Tensor grad_a = at::empty_like(a);
  if (s.P == 0 || s.HW == 0) return grad_a;
  const int64_t H = a.size(2);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.scalar_type(), "tv_per_plane_backward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const auto am = strided_map(a.const_data_ptr<scalar_t>(), a);
    const auto gam = strided_map(grad_a.mutable_data_ptr<scalar_t>(), grad_a);
    tv_backward_kernel<scalar_t, acc_t>
        <<<grid_blocks(ceil_div(s.P * s.HW, kThreads)), kThreads, 0, stream>>>(
            grad.const_data_ptr<acc_t>(), am, gam, s, H);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return grad_a;
}

}  // namespace

TORCH_LIBRARY_IMPL(sharpattn, CUDA, m) {
  m.impl("tv_per_plane", &tv_per_plane);
  m.impl("tv_per_plane_backward", &tv_per_plane_backward);
}

}  // namespace sharpattn::cuda
