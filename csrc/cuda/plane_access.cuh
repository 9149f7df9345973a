// Device-side helpers shared by the CUDA kernels: strided access to the (H, W) planes of a 4-D
// tensor, block-wide reductions, and launch sizing. The mask math itself lives in csrc/common.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAFunctions.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>

namespace sharpattn::cuda {

// A 4-D tensor addressed through its own strides (channels_last and sliced views are read in
// place, never copied).
template <typename T>
struct StridedMap {
  T* data;
  int64_t sn, sc, sh, sw;
  __device__ __forceinline__ T* plane(int64_t n, int64_t c) const { return data + n * sn + c * sc; }
};

template <typename T>
StridedMap<T> strided_map(T* data, const at::Tensor& v) {
  return StridedMap<T>{data, v.stride(0), v.stride(1), v.stride(2), v.stride(3)};
}

// Logical shape: P = N * C planes of HW = H * W positions, position j = h * W + w.
struct PlaneShape {
  int64_t P, C, W, HW;
};

// Walks positions j, j + step, j + 2 step, ... of a plane, keeping (h, w) up to date with adds
// instead of one 64-bit division per element.
struct PlaneWalk {
  int64_t h, w, dh, dw, W;
  __device__ __forceinline__ PlaneWalk(int64_t j, int64_t step, int64_t W_)
      : h(j / W_), w(j % W_), dh(step / W_), dw(step % W_), W(W_) {}
  __device__ __forceinline__ void advance() {
    h += dh;
    w += dw;
    if (w >= W) {
      w -= W;
      ++h;
    }
  }
  __device__ __forceinline__ int64_t at(int64_t sh, int64_t sw) const { return h * sh + w * sw; }
};

// Calls f(k, j, h, w) for the positions j = j0 + k (k < 4, j < end) of one Philox group, which
// starts at (h, w).
template <typename F>
__device__ __forceinline__ void for_each_in_group(int64_t j0, int64_t end, int64_t h, int64_t w,
                                                  int64_t W, F&& f) {
#pragma unroll
  for (int k = 0; k < 4; ++k) {
    if (j0 + k < end) f(k, j0 + k, h, w);
    if (++w == W) {
      w = 0;
      ++h;
    }
  }
}

// min / max that propagate NaN (like torch.amin / amax): a NaN anywhere makes the plane's range
// NaN, so the damage stays inside that plane and is visible (the NaN rule, README
// "Specification notes"; tests/test_nan_rule.py).
struct NanMin {
  template <typename T>
  __device__ __forceinline__ T operator()(T a, T b) const { return (a < b || a != a) ? a : b; }
};
struct NanMax {
  template <typename T>
  __device__ __forceinline__ T operator()(T a, T b) const { return (a > b || a != a) ? a : b; }
};
struct Plus {
  template <typename T>
  __device__ __forceinline__ T operator()(T a, T b) const { return a + b; }
};

template <typename T, typename Op>
__device__ __forceinline__ T warp_all_reduce(T v, Op op) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = op(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// Reduces v over the block and returns the result to every thread. Requires blockDim.x to be a
// multiple of 32 (at most 1024) and every thread of the block to call it. The leading barrier
// makes back-to-back calls safe (the scratch of the previous call has been read by then) and
// also publishes shared-memory writes made before the call. The fixed combination order makes
// the result deterministic.
template <typename T, typename Op>
__device__ T block_all_reduce(T v, Op op) {
  __shared__ T scratch[32];
  v = warp_all_reduce(v, op);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  __syncthreads();
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  T r = scratch[0];
  for (int i = 1; i < warps; ++i) r = op(r, scratch[i]);
  return r;
}

// Total variation stencils (SAN eq. 6-7) over a plane whose values come from `get(h, w)` (a
// shared-memory buffer, a strided global plane, or a recomputation), in the same arithmetic as
// csrc/common/tv_stencil.h: differences in acc_t, squares summed in double.

// Squared differences of (h, w) to its lower and right neighbours (those that exist).
template <typename acc_t, typename Get>
__device__ __forceinline__ double tv_terms_at(acc_t v, int64_t h, int64_t w, int64_t H, int64_t W,
                                              Get&& get) {
  double sum = 0;
  if (h + 1 < H) {
    const acc_t d = get(h + 1, w) - v;
    sum += static_cast<double>(d * d);
  }
  if (w + 1 < W) {
    const acc_t d = get(h, w + 1) - v;
    sum += static_cast<double>(d * d);
  }
  return sum;
}

// dTV/dA at (h, w): twice the sum of (A - neighbour) over the existing neighbours, in the order
// of tv_grad_at (so the same rounding).
template <typename acc_t, typename Get>
__device__ __forceinline__ acc_t tv_grad_with(acc_t v, int64_t h, int64_t w, int64_t H, int64_t W,
                                              Get&& get) {
  acc_t s = 0;
  if (h > 0) s += v - get(h - 1, w);
  if (h + 1 < H) s += v - get(h + 1, w);
  if (w > 0) s += v - get(h, w - 1);
  if (w + 1 < W) s += v - get(h, w + 1);
  return acc_t(2) * s;
}

constexpr int kMaxThreads = 512;

// Minimum resident blocks per SM that __launch_bounds__ asks of ptxas in the kernels that spilled
// without it. Given only the thread count, ptxas aimed at more resident blocks than the launch
// needs (64 registers for the 512-thread plane kernels, 48 for grid_occlusion's 256-thread pool
// kernels) and spilled 8-16 bytes per thread on sm_80/sm_90; with 1 it takes the registers it
// needs (tests/test_cuda_resources.py checks for spills). The price for the plane kernels: one
// 512-thread block per SM instead of two; planes that take 256 threads or fewer still get three
// or more (benchmarks/README.md, "CUDA kernel resources").
constexpr int kMinBlocksPerSm = 1;

// Threads for one block working on `work` items at once: whole warps, 64 to kMaxThreads.
inline int block_threads(int64_t work) {
  const int64_t warps = (work + 31) / 32;
  return static_cast<int>(std::clamp<int64_t>(warps * 32, 64, kMaxThreads));
}

// Blocks for a block-stride loop over `items`: enough to fill the GPU several times over, few
// enough that grid.x never overflows (the loops cover the rest).
inline int64_t grid_blocks(int64_t items) {
  int device = c10::cuda::current_device();
  int sms = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
  return std::max<int64_t>(1, std::min<int64_t>(items, static_cast<int64_t>(sms) * 32));
}

// Dynamic shared memory one block may use: the device's opt-in limit less room for the static
// reduction scratch, capped at 96 KB. Two such blocks (with their static scratch and the 1 KB
// per-block system reserve, ~195 KB) fit in an H100/H200 SM's 228 KB, but not in an A100 SM's
// 164 KB: there a plane over ~80 KB runs one block per SM. A 512-thread block's registers allow
// one block per SM anyway (kMinBlocksPerSm); benchmarks/results/cuda_resources.md has the table.
inline size_t smem_budget() {
  constexpr size_t kCap = 96 * 1024, kStaticReserve = 4 * 1024;
  int device = c10::cuda::current_device();
  int optin = 0;
  C10_CUDA_CHECK(
      cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
  const size_t limit = static_cast<size_t>(optin);
  return limit > kStaticReserve ? std::min(kCap, limit - kStaticReserve) : 0;
}

// Above the 48 KB default a kernel must opt in to a larger dynamic shared-memory size.
template <typename Kernel>
void allow_dynamic_smem(Kernel kernel, size_t bytes) {
  if (bytes > 48 * 1024)
    C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                        static_cast<int>(bytes)));
}

// TV sums of planes split into chunks: folds each plane's per-chunk partials (doubles) in chunk
// order, so the result is deterministic (one thread per plane).
template <typename acc_t>
__global__ void tv_finalize_kernel(const double* partial, int64_t P, int64_t chunks, acc_t* tv) {
  for (int64_t p = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; p < P;
       p += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    double sum = 0;
    for (int64_t k = 0; k < chunks; ++k) sum += partial[p * chunks + k];
    tv[p] = static_cast<acc_t>(sum);
  }
}

}  // namespace sharpattn::cuda
