// CUDA kernels of AAA-Net's grid occlusion (docs/spec.md section 4), the same semantics and
// rounding as csrc/cpu/grid_occlusion.cpp and the same cell math (csrc/common/grid.h).
//
// Layout of the work:
//  * grid_occlusion: one thread per input element (n, c, h, w), walked in NCHW order: it reads
//    x once and writes its G copies; for each copy k the threads of a warp write consecutive
//    addresses of the contiguous (N, G, C, H, W) output (the writes are G times the reads, so
//    they decide the order). grid_occlusion_backward is the mirror image: one thread per dx
//    element sums its G-1 kept copies, reading grad coalesced when grad is contiguous.
//  * grid_occlusion_pool: one thread per plane (n, c), c fastest (coalesced for channels_last and
//    for the (N, G, C) output), reads its plane once in row-major order into G per-cell sums in
//    double, held in shared memory (or a global workspace for very fine grids), then writes
//    P[n, k, c] = (total - cell_k) / (H*W). Double sums keep the subtraction exact enough for
//    every input dtype. Few planes with very large maps leave the GPU underused; the classifier
//    heads this op serves have many channels.
//  * grid_occlusion_pool_backward: per plane the G values (total - grad_k) / (H*W), rounded once,
//    then one thread per dx element, walked in dx's memory order (NCHW or channels_last) so the
//    writes are coalesced, gathers its cell's value.
// Every tensor is read through its own strides (no .contiguous() copies); indexing is 64-bit.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "../common/grid.h"
#include "../common/host.h"
#include "plane_access.cuh"

namespace sharpattn::cuda {

extern __shared__ __align__(16) unsigned char go_smem[];

namespace {

constexpr int kThreads = 256;

// A double result rounded to scalar_t the way the CPU kernels do it (through opmath_type).
template <typename scalar_t>
__device__ __forceinline__ scalar_t round_to(double v) {
  return static_cast<scalar_t>(static_cast<at::opmath_type<scalar_t>>(v));
}

// Logical (N, C, H, W) sizes and the grid.
struct GridShape {
  int64_t N, C, H, W, gh, gw;
  __host__ __device__ int64_t HW() const { return H * W; }
  __host__ __device__ int64_t G() const { return gh * gw; }
};

__device__ __forceinline__ int64_t cell_of(const GridShape& s, int64_t h, int64_t w) {
  return grid_part_of(h, s.H, s.gh) * s.gw + grid_part_of(w, s.W, s.gw);
}

// Element i of the NCHW order as (n, c, h, w); r = i - n*C*H*W is its index inside sample n.
struct Nchw {
  int64_t n, r, c, h, w;
  __device__ __forceinline__ Nchw(int64_t i, const GridShape& s) {
    const int64_t CHW = s.C * s.HW();
    n = i / CHW;
    r = i - n * CHW;
    c = r / s.HW();
    const int64_t j = r - c * s.HW();
    h = j / s.W;
    w = j - h * s.W;
  }
};

template <typename scalar_t>
__global__ void __launch_bounds__(kThreads)
    occlusion_kernel(StridedMap<const scalar_t> x, scalar_t* out, GridShape s) {
  const int64_t total = s.N * s.C * s.HW(), CHW = s.C * s.HW(), G = s.G();
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const Nchw e(i, s);
    const scalar_t v = x.plane(e.n, e.c)[e.h * x.sh + e.w * x.sw];
    const int64_t cell = cell_of(s, e.h, e.w);
    scalar_t* dst = out + e.n * G * CHW + e.r;
    for (int64_t k = 0; k < G; ++k) dst[k * CHW] = k == cell ? static_cast<scalar_t>(0.0f) : v;
  }
}

// grad (N, G, C, H, W) through its strides; dx contiguous (N, C, H, W).
struct Strides5 {
  int64_t s0, s1, s2, s3, s4;
};

template <typename scalar_t>
__global__ void __launch_bounds__(kThreads)
    occlusion_backward_kernel(const scalar_t* grad, Strides5 gs, scalar_t* dx, GridShape s) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t total = s.N * s.C * s.HW(), G = s.G();
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const Nchw e(i, s);
    const int64_t cell = cell_of(s, e.h, e.w);
    const scalar_t* g = grad + e.n * gs.s0 + e.c * gs.s2 + e.h * gs.s3 + e.w * gs.s4;
    acc_t acc = 0;
    for (int64_t k = 0; k < G; ++k)
      if (k != cell) acc += static_cast<acc_t>(g[k * gs.s1]);
    dx[i] = static_cast<scalar_t>(acc);
  }
}

// One thread per plane q = n*C + c. Its G cell sums live at cells[k * kstride + slot]: in shared
// memory (slot = threadIdx.x, kstride = blockDim.x) or in a global workspace (slot = q,
// kstride = N*C) when a block's shared memory cannot hold them.
template <typename scalar_t>
__global__ void __launch_bounds__(kThreads, kMinBlocksPerSm)
    pool_kernel(StridedMap<const scalar_t> x, scalar_t* out, GridShape s, double* workspace) {
  const int64_t P = s.N * s.C, G = s.G();
  const bool shared = workspace == nullptr;
  double* base = shared ? reinterpret_cast<double*>(go_smem) + threadIdx.x : workspace;
  const int64_t kstride = shared ? blockDim.x : P;
  for (int64_t q = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; q < P;
       q += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t n = q / s.C, c = q - n * s.C;
    double* cells = shared ? base : base + q;
    for (int64_t k = 0; k < G; ++k) cells[k * kstride] = 0.0;
    const scalar_t* xp = x.plane(n, c);
    for (int64_t h = 0; h < s.H; ++h) {
      const scalar_t* row = xp + h * x.sh;
      double* cell_row = cells + grid_part_of(h, s.H, s.gh) * s.gw * kstride;
      int64_t w = 0;
      for (int64_t b = 0; b < s.gw; ++b) {
        const int64_t end = grid_edge(b + 1, s.W, s.gw);
        double sum = 0;
        for (; w < end; ++w) sum += static_cast<double>(row[w * x.sw]);
        cell_row[b * kstride] += sum;
      }
    }
    double total = 0;
    for (int64_t k = 0; k < G; ++k) total += cells[k * kstride];
    for (int64_t k = 0; k < G; ++k)
      out[(n * G + k) * s.C + c] =
          round_to<scalar_t>((total - cells[k * kstride]) / static_cast<double>(s.HW()));
  }
}

// values[n, k, c] = (sum_j grad[n, j, c] - grad[n, k, c]) / (H*W), one thread per plane.
template <typename scalar_t>
__global__ void __launch_bounds__(kThreads, kMinBlocksPerSm)
    pool_backward_values_kernel(const scalar_t* grad, int64_t gs0, int64_t gs1, int64_t gs2,
                                scalar_t* values, GridShape s) {
  const int64_t P = s.N * s.C, G = s.G();
  for (int64_t q = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; q < P;
       q += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t n = q / s.C, c = q - n * s.C;
    const scalar_t* g = grad + n * gs0 + c * gs2;
    double total = 0;
    for (int64_t k = 0; k < G; ++k) total += static_cast<double>(g[k * gs1]);
    for (int64_t k = 0; k < G; ++k)
      values[(n * G + k) * s.C + c] =
          round_to<scalar_t>((total - static_cast<double>(g[k * gs1])) / static_cast<double>(s.HW()));
  }
}

// Writes dx element by element in NHWC order when dx is channels_last, NCHW order otherwise
// (the writes go through dx's strides either way, so any layout is correct).
template <typename scalar_t>
__global__ void __launch_bounds__(kThreads)
    pool_backward_scatter_kernel(const scalar_t* values, StridedMap<scalar_t> dx, GridShape s,
                                 bool channels_last) {
  const int64_t total = s.N * s.C * s.HW(), G = s.G();
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    int64_t n, c, h, w;
    if (channels_last) {
      int64_t t = i / s.C;
      c = i - t * s.C;
      const int64_t t2 = t / s.W;
      w = t - t2 * s.W;
      n = t2 / s.H;
      h = t2 - n * s.H;
    } else {
      const Nchw e(i, s);
      n = e.n, c = e.c, h = e.h, w = e.w;
    }
    dx.plane(n, c)[h * dx.sh + w * dx.sw] = values[(n * G + cell_of(s, h, w)) * s.C + c];
  }
}

// ------------------------------------------------------------------------------------------
// Host side
// ------------------------------------------------------------------------------------------

GridShape grid_shape(const at::Tensor& x, int64_t gh, int64_t gw) {
  return GridShape{x.size(0), x.size(1), x.size(2), x.size(3), gh, gw};
}

at::Tensor occlusion(const at::Tensor& x, int64_t gh, int64_t gw) {
  check_grid_map(x, gh, gw);
  c10::cuda::CUDAGuard guard(x.device());
  const GridShape s = grid_shape(x, gh, gw);
  at::Tensor out = at::empty({s.N, s.G(), s.C, s.H, s.W}, x.options());
  const int64_t elements = s.N * s.C * s.HW();
  if (elements == 0) return out;
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "grid_occlusion_cuda", [&] {
    occlusion_kernel<scalar_t><<<grid_blocks(ceil_div(elements, kThreads)), kThreads, 0, stream>>>(
        strided_map(x.const_data_ptr<scalar_t>(), x), out.mutable_data_ptr<scalar_t>(), s);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

at::Tensor occlusion_backward(const at::Tensor& grad, int64_t gh, int64_t gw) {
  check_occlusion_grad(grad, gh, gw);
  c10::cuda::CUDAGuard guard(grad.device());
  const GridShape s{grad.size(0), grad.size(2), grad.size(3), grad.size(4), gh, gw};
  at::Tensor dx = at::empty({s.N, s.C, s.H, s.W}, grad.options());
  const int64_t elements = s.N * s.C * s.HW();
  if (elements == 0) return dx;
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const Strides5 gs{grad.stride(0), grad.stride(1), grad.stride(2), grad.stride(3), grad.stride(4)};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "grid_occlusion_backward_cuda", [&] {
    occlusion_backward_kernel<scalar_t><<<grid_blocks(ceil_div(elements, kThreads)), kThreads, 0, stream>>>(
        grad.const_data_ptr<scalar_t>(), gs, dx.mutable_data_ptr<scalar_t>(), s);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return dx;
}

at::Tensor pool(const at::Tensor& x, int64_t gh, int64_t gw) {
  check_grid_map(x, gh, gw);
  c10::cuda::CUDAGuard guard(x.device());
  const GridShape s = grid_shape(x, gh, gw);
  const int64_t P = s.N * s.C;
  at::Tensor out = at::empty({s.N, s.G(), s.C}, x.options());
  if (P == 0) return out;
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  // Threads per block: as many (up to kThreads, whole warps) as leave each its G doubles in
  // shared memory; below one warp's worth, the cell sums go to a global workspace instead.
  const size_t per_thread = static_cast<size_t>(s.G()) * sizeof(double);
  const size_t fit = smem_budget() / per_thread;
  const int threads = fit >= 32 ? static_cast<int>(std::min<size_t>(kThreads, fit / 32 * 32)) : kThreads;
  const size_t bytes = fit >= 32 ? per_thread * threads : 0;
  at::Tensor workspace = fit >= 32 ? at::Tensor() : at::empty({s.G(), P}, x.options().dtype(at::kDouble));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "grid_occlusion_pool_cuda", [&] {
    auto kernel = pool_kernel<scalar_t>;
    allow_dynamic_smem(kernel, bytes);
    kernel<<<grid_blocks(ceil_div(P, threads)), threads, bytes, stream>>>(
        strided_map(x.const_data_ptr<scalar_t>(), x), out.mutable_data_ptr<scalar_t>(), s,
        workspace.defined() ? workspace.mutable_data_ptr<double>() : nullptr);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

at::Tensor pool_backward(const at::Tensor& grad, const at::Tensor& x, int64_t gh, int64_t gw) {
  check_pool_grad(grad, x, gh, gw);
  c10::cuda::CUDAGuard guard(x.device());
  const GridShape s = grid_shape(x, gh, gw);
  const int64_t P = s.N * s.C, elements = P * s.HW();
  at::Tensor dx = at::empty_like(x);
  if (P == 0) return dx;
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  at::Tensor values = at::empty({s.N, s.G(), s.C}, grad.options());
  const bool channels_last = !dx.is_contiguous() && dx.is_contiguous(at::MemoryFormat::ChannelsLast);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "grid_occlusion_pool_backward_cuda", [&] {
    pool_backward_values_kernel<scalar_t><<<grid_blocks(ceil_div(P, kThreads)), kThreads, 0, stream>>>(
        grad.const_data_ptr<scalar_t>(), grad.stride(0), grad.stride(1), grad.stride(2),
        values.mutable_data_ptr<scalar_t>(), s);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    pool_backward_scatter_kernel<scalar_t><<<grid_blocks(ceil_div(elements, kThreads)), kThreads, 0, stream>>>(
        values.const_data_ptr<scalar_t>(), strided_map(dx.mutable_data_ptr<scalar_t>(), dx), s,
        channels_last);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return dx;
}

}  // namespace

TORCH_LIBRARY_IMPL(sharpattn, CUDA, m) {
  m.impl("grid_occlusion", &occlusion);
  m.impl("grid_occlusion_backward", &occlusion_backward);
  m.impl("grid_occlusion_pool", &pool);
  m.impl("grid_occlusion_pool_backward", &pool_backward);
}

}  // namespace sharpattn::cuda
