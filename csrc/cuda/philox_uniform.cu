// CUDA kernel of philox_uniform_out: the uniforms of docs/spec.md section 1, bit for bit the
// CPU ones.
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "../common/philox.h"
#include "plane_access.cuh"

namespace sharpattn::cuda {
namespace {

// One thread per Philox group: four consecutive positions of one row of out (P, S).
template <typename scalar_t>
__global__ void philox_uniform_kernel(scalar_t* out, int64_t P, int64_t S, uint64_t seed,
                                      uint64_t offset) {
  const int64_t groups = (S + 3) / 4, total = P * groups;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t p = i / groups, j0 = 4 * (i - p * groups);
    const PhiloxWords r = philox4x32_10(philox_counter(offset, p, groups, j0), seed);
    scalar_t* row = out + p * S;
#pragma unroll
    for (int k = 0; k < 4; ++k)
      if (j0 + k < S) row[j0 + k] = uniform_from_word<scalar_t>(r.w[k]);
  }
}

void philox_uniform_out(at::Tensor& out, int64_t seed, int64_t offset) {
  TORCH_CHECK(out.dim() == 2 && out.is_contiguous(), "sharpattn: out must be a contiguous (P, S) tensor");
  TORCH_CHECK(out.scalar_type() == at::kFloat || out.scalar_type() == at::kDouble,
              "sharpattn: philox_uniform_out writes float32 or float64");
  c10::cuda::CUDAGuard guard(out.device());
  const int64_t P = out.size(0), S = out.size(1), groups = (S + 3) / 4;
  if (P * groups == 0) return;
  constexpr int kThreads = 256;
  const int64_t blocks = grid_blocks((P * groups + kThreads - 1) / kThreads);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(out.scalar_type(), "philox_uniform_out_cuda", [&] {
    philox_uniform_kernel<scalar_t><<<blocks, kThreads, 0, stream>>>(
        out.mutable_data_ptr<scalar_t>(), P, S, static_cast<uint64_t>(seed),
        static_cast<uint64_t>(offset));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(sharpattn, CUDA, m) { m.impl("philox_uniform_out", &philox_uniform_out); }

}  // namespace sharpattn::cuda
