// CPU kernels of the total variation penalty (docs/spec.md section 3, SAN eq. 6-7), per
// (n, c) plane.
// Float32 accumulation runs the vectorised stencils of vec_kernels.h where the CPU has AVX2 or
// AVX-512, float64 (and other CPUs) the scalar ones of csrc/common/tv_stencil.h.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "../common/host.h"
#include "../common/op_args.h"
#include "../common/tv_stencil.h"
#include "plane_io.h"
#include "vec_kernels.h"

namespace sharpattn::cpu {
namespace {

at::Tensor tv_per_plane(const at::Tensor& a) {
  check_feature_map(a, "a");
  const int64_t N = a.size(0), C = a.size(1), H = a.size(2), W = a.size(3), HW = H * W;
  at::Tensor tv = at::empty({N, C}, a.options().dtype(accumulation_dtype(a)));
  if (N * C == 0 || HW == 0) return tv.zero_();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.scalar_type(), "tv_per_plane_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* a_data = a.const_data_ptr<scalar_t>();
    acc_t* tv_data = tv.mutable_data_ptr<acc_t>();
    if (const VecKernels* vk = vec_for<acc_t>(HW)) {
      at::parallel_for(0, N * C, grain(HW), [&](int64_t begin, int64_t end) {
        StencilBuffer plane(H, W);
        const ColumnTables cols(H, W);
        for (int64_t p = begin; p < end; ++p) {
          load_plane(plane_of(a_data, a.strides().data(), p / C, p % C), H, W, plane.data());
          tv_data[p] = static_cast<acc_t>(vk->tv_plane(plane.data(), H, W, cols.right.data()));
        }
      });
      return;
    }
    at::parallel_for(0, N * C, grain(HW), [&](int64_t begin, int64_t end) {
      std::vector<acc_t> plane(HW);
      for (int64_t p = begin; p < end; ++p) {
        load_plane(plane_of(a_data, a.strides().data(), p / C, p % C), H, W, plane.data());
        tv_data[p] = static_cast<acc_t>(tv_plane(plane.data(), H, W));
      }
    });
  });
  return tv;
}

at::Tensor tv_per_plane_backward(const at::Tensor& grad, const at::Tensor& a) {
  check_feature_map(a, "a");
  check_grad_tv(a, grad);
  const int64_t N = a.size(0), C = a.size(1), H = a.size(2), W = a.size(3), HW = H * W;
  at::Tensor grad_a = at::empty_like(a);
  if (N * C == 0 || HW == 0) return grad_a;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.scalar_type(), "tv_per_plane_backward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* a_data = a.const_data_ptr<scalar_t>();
    const acc_t* g_data = grad.const_data_ptr<acc_t>();
    scalar_t* ga_data = grad_a.mutable_data_ptr<scalar_t>();
    if (const VecKernels* vk = vec_for<acc_t>(HW)) {
      at::parallel_for(0, N * C, grain(HW), [&](int64_t begin, int64_t end) {
        StencilBuffer plane(H, W);
        const ColumnTables cols(H, W);
        std::vector<float> out(padded_size(HW));
        for (int64_t p = begin; p < end; ++p) {
          const int64_t n = p / C, c = p % C;
          load_plane(plane_of(a_data, a.strides().data(), n, c), H, W, plane.data());
          vk->tv_grad(plane.data(), H, W, static_cast<float>(g_data[p]), cols.left.data(),
                      cols.right.data(), out.data());
          store_plane(out.data(), H, W, plane_of(ga_data, grad_a.strides().data(), n, c));
        }
      });
      return;
    }
    at::parallel_for(0, N * C, grain(HW), [&](int64_t begin, int64_t end) {
      std::vector<acc_t> plane(HW), out(HW);
      for (int64_t p = begin; p < end; ++p) {
        const int64_t n = p / C, c = p % C;
        load_plane(plane_of(a_data, a.strides().data(), n, c), H, W, plane.data());
        for (int64_t h = 0; h < H; ++h)
          for (int64_t w = 0; w < W; ++w)
            out[h * W + w] = g_data[p] * tv_grad_at(plane.data(), h, w, H, W);
        store_plane(out.data(), H, W, plane_of(ga_data, grad_a.strides().data(), n, c));
      }
    });
  });
  return grad_a;
}

}  // namespace

TORCH_LIBRARY_IMPL(sharpattn, CPU, m) {
  m.impl("tv_per_plane", &tv_per_plane);
  m.impl("tv_per_plane_backward", &tv_per_plane_backward);
}

}  // namespace sharpattn::cpu
