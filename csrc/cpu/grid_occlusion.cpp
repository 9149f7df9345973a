// CPU kernels of AAA-Net's grid occlusion (docs/spec.md section 4): planes (n, c) in parallel,
// every input read in place through its strides (channels_last and sliced views need no copy).
//
//  * grid_occlusion writes the G copies of a plane from one read of it: each copy is the plane
//    with one rectangle zeroed (set to 0, not multiplied by 0: docs/spec.md section 4).
//  * grid_occlusion_pool sums each cell of a plane in double in one row-major read, then
//    P[n, k, c] = (total - cell_k) / (H*W). Double sums make the subtraction harmless for every
//    input dtype (the float32 inputs' sums are exact to ~2^-29 relative).
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "../common/grid.h"
#include "../common/host.h"
#include "plane_io.h"

namespace sharpattn::cpu {
namespace {

// The column range of each column part, computed once per call.
std::vector<int64_t> edges(int64_t size, int64_t parts) {
  std::vector<int64_t> e(parts + 1);
  for (int64_t i = 0; i <= parts; ++i) e[i] = grid_edge(i, size, parts);
  return e;
}

at::Tensor occlusion(const at::Tensor& x, int64_t gh, int64_t gw) {
  check_grid_map(x, gh, gw);
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3), HW = H * W;
  const int64_t G = gh * gw;
  at::Tensor out = at::empty({N, G, C, H, W}, x.options());
  if (N * C == 0) return out;
  const auto rows = edges(H, gh), cols = edges(W, gw);

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "grid_occlusion_cpu", [&] {
    const scalar_t* x_data = x.const_data_ptr<scalar_t>();
    scalar_t* out_data = out.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, N * C, grain(G * HW), [&](int64_t begin, int64_t end) {
      std::vector<scalar_t> plane(HW);
      for (int64_t p = begin; p < end; ++p) {
        const int64_t n = p / C, c = p % C;
        load_plane(plane_of(x_data, x.strides().data(), n, c), H, W, plane.data());
        for (int64_t k = 0; k < G; ++k) {
          scalar_t* dst = out_data + ((n * G + k) * C + c) * HW;
          std::copy(plane.begin(), plane.end(), dst);
          const int64_t a = k / gw, b = k % gw;
          for (int64_t h = rows[a]; h < rows[a + 1]; ++h)
            std::fill(dst + h * W + cols[b], dst + h * W + cols[b + 1], scalar_t(0));
        }
      }
    });
  });
  return out;
}

// dx[n, c] = sum_k grad[n, k, c] * keep_k: each copy's plane added, less its own cell.
at::Tensor occlusion_backward(const at::Tensor& grad, int64_t gh, int64_t gw) {
  check_occlusion_grad(grad, gh, gw);
  const int64_t N = grad.size(0), G = grad.size(1), C = grad.size(2), H = grad.size(3),
                W = grad.size(4), HW = H * W;
  at::Tensor dx = at::empty({N, C, H, W}, grad.options());
  if (N * C == 0) return dx;
  const auto rows = edges(H, gh), cols = edges(W, gw);
  const auto s = grad.strides();

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "grid_occlusion_backward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* g_data = grad.const_data_ptr<scalar_t>();
    scalar_t* dx_data = dx.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, N * C, grain(G * HW), [&](int64_t begin, int64_t end) {
      std::vector<acc_t> acc(HW);
      for (int64_t p = begin; p < end; ++p) {
        const int64_t n = p / C, c = p % C;
        std::fill(acc.begin(), acc.end(), acc_t(0));
        for (int64_t k = 0; k < G; ++k) {
          const scalar_t* g = g_data + n * s[0] + k * s[1] + c * s[2];
          const int64_t a = k / gw, b = k % gw;
          for (int64_t h = 0; h < H; ++h) {
            const scalar_t* row = g + h * s[3];
            acc_t* dst = acc.data() + h * W;
            // Rows of cell k skip its columns; the others take the whole row.
            const bool in_cell = h >= rows[a] && h < rows[a + 1];
            const int64_t skip0 = in_cell ? cols[b] : W, skip1 = in_cell ? cols[b + 1] : W;
            for (int64_t w = 0; w < skip0; ++w) dst[w] += static_cast<acc_t>(row[w * s[4]]);
            for (int64_t w = skip1; w < W; ++w) dst[w] += static_cast<acc_t>(row[w * s[4]]);
          }
        }
        store_plane(acc.data(), H, W, plane_of(dx_data, dx.strides().data(), n, c));
      }
    });
  });
  return dx;
}

at::Tensor pool(const at::Tensor& x, int64_t gh, int64_t gw) {
  check_grid_map(x, gh, gw);
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3), HW = H * W;
  const int64_t G = gh * gw;
  at::Tensor out = at::empty({N, G, C}, x.options());
  if (N * C == 0) return out;
  const auto cols = edges(W, gw);

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "grid_occlusion_pool_cpu", [&] {
    const scalar_t* x_data = x.const_data_ptr<scalar_t>();
    scalar_t* out_data = out.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, N * C, grain(HW), [&](int64_t begin, int64_t end) {
      std::vector<double> cell(G);
      for (int64_t p = begin; p < end; ++p) {
        const int64_t n = p / C, c = p % C;
        const PlaneView<const scalar_t> v = plane_of(x_data, x.strides().data(), n, c);
        std::fill(cell.begin(), cell.end(), 0.0);
        // One row-major pass: each row's column segments go to the cells of its grid row.
        for (int64_t h = 0; h < H; ++h) {
          const scalar_t* row = v.base + h * v.stride_h;
          double* cell_row = cell.data() + grid_part_of(h, H, gh) * gw;
          for (int64_t b = 0; b < gw; ++b) {
            double sum = 0;
            for (int64_t w = cols[b]; w < cols[b + 1]; ++w)
              sum += static_cast<double>(row[w * v.stride_w]);
            cell_row[b] += sum;
          }
        }
        double total = 0;
        for (int64_t k = 0; k < G; ++k) total += cell[k];
        for (int64_t k = 0; k < G; ++k)
          out_data[(n * G + k) * C + c] = static_cast<scalar_t>((total - cell[k]) / HW);
      }
    });
  });
  return out;
}

// dx[n, c, h, w] = (sum_k grad[n, k, c] - grad[n, cell(h, w), c]) / (H*W); x gives only the
// shape, dtype and layout of dx.
at::Tensor pool_backward(const at::Tensor& grad, const at::Tensor& x, int64_t gh, int64_t gw) {
  check_pool_grad(grad, x, gh, gw);
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3), HW = H * W;
  const int64_t G = gh * gw;
  at::Tensor dx = at::empty_like(x);
  if (N * C == 0) return dx;
  const auto cols = edges(W, gw);
  const auto s = grad.strides();

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "grid_occlusion_pool_backward_cpu", [&] {
    const scalar_t* g_data = grad.const_data_ptr<scalar_t>();
    scalar_t* dx_data = dx.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, N * C, grain(HW), [&](int64_t begin, int64_t end) {
      std::vector<scalar_t> value(G);  // dx of each cell's positions, rounded once
      for (int64_t p = begin; p < end; ++p) {
        const int64_t n = p / C, c = p % C;
        const scalar_t* g = g_data + n * s[0] + c * s[2];
        double total = 0;
        for (int64_t k = 0; k < G; ++k) total += static_cast<double>(g[k * s[1]]);
        for (int64_t k = 0; k < G; ++k)
          value[k] = static_cast<scalar_t>((total - static_cast<double>(g[k * s[1]])) / HW);
        const PlaneView<scalar_t> v = plane_of(dx_data, dx.strides().data(), n, c);
        for (int64_t h = 0; h < H; ++h) {
          scalar_t* row = v.base + h * v.stride_h;
          const scalar_t* value_row = value.data() + grid_part_of(h, H, gh) * gw;
          for (int64_t b = 0; b < gw; ++b)
            for (int64_t w = cols[b]; w < cols[b + 1]; ++w) row[w * v.stride_w] = value_row[b];
        }
      }
    });
  });
  return dx;
}

}  // namespace

TORCH_LIBRARY_IMPL(sharpattn, CPU, m) {
  m.impl("grid_occlusion", &occlusion);
  m.impl("grid_occlusion_backward", &occlusion_backward);
  m.impl("grid_occlusion_pool", &pool);
  m.impl("grid_occlusion_pool_backward", &pool_backward);
}

}  // namespace sharpattn::cpu
