// Grid cells of AAA-Net's occlusion (docs/spec.md section 4), shared by the CPU and CUDA
// kernels: part i of a side of `size` positions cut into `parts` covers
// [floor(i*size/parts), floor((i+1)*size/parts)); cell (a, b) of a (gh, gw) grid is k = a*gw + b.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <cstdint>

#include "macros.h"

namespace sharpattn {

// First position of part i (i == parts gives size, the end of the last part).
SA_HOST_DEVICE int64_t grid_edge(int64_t i, int64_t size, int64_t parts) {
  return i * size / parts;
}

// The part that holds position v: the largest i with floor(i*size/parts) <= v, which is
// floor(((v+1)*parts - 1) / size). Needs 1 <= parts <= size (no empty part).
SA_HOST_DEVICE int64_t grid_part_of(int64_t v, int64_t size, int64_t parts) {
  return ((v + 1) * parts - 1) / size;
}

// Checks shared by the CPU and CUDA kernels. The Python API validates first with friendlier
// messages; these keep direct torch.ops calls from reading out of bounds.
inline void check_grid(int64_t gh, int64_t gw, int64_t H, int64_t W) {
  TORCH_CHECK(gh >= 1 && gw >= 1, "sharpattn: grid (", gh, ", ", gw, ") must be >= 1 on both sides");
  TORCH_CHECK(gh <= H && gw <= W, "sharpattn: grid (", gh, ", ", gw,
              ") is larger than the feature map (H, W) = (", H, ", ", W, ")");
}

inline void check_grid_map(const at::Tensor& x, int64_t gh, int64_t gw) {
  TORCH_CHECK(x.dim() == 4, "sharpattn: x must be 4-D (N, C, H, W), got ", x.dim(), "-D");
  TORCH_CHECK(at::isFloatingType(x.scalar_type()), "sharpattn: x must be a floating tensor, got ",
              x.scalar_type());
  check_grid(gh, gw, x.size(2), x.size(3));
}

// grad of grid_occlusion: (N, G, C, H, W) with G = gh*gw.
inline void check_occlusion_grad(const at::Tensor& grad, int64_t gh, int64_t gw) {
  TORCH_CHECK(grad.dim() == 5, "sharpattn: grad must be 5-D (N, G, C, H, W), got ", grad.dim(), "-D");
  TORCH_CHECK(at::isFloatingType(grad.scalar_type()),
              "sharpattn: grad must be a floating tensor, got ", grad.scalar_type());
  check_grid(gh, gw, grad.size(3), grad.size(4));
  TORCH_CHECK(grad.size(1) == gh * gw, "sharpattn: grad must have G = gh*gw = ", gh * gw,
              " copies in dim 1, got ", grad.size(1));
}

// grad of grid_occlusion_pool: (N, G, C) for x (N, C, H, W), same dtype and device.
inline void check_pool_grad(const at::Tensor& grad, const at::Tensor& x, int64_t gh, int64_t gw) {
  check_grid_map(x, gh, gw);
  TORCH_CHECK(grad.dim() == 3 && grad.size(0) == x.size(0) && grad.size(1) == gh * gw &&
                  grad.size(2) == x.size(1),
              "sharpattn: grad must have shape (N, G, C) = (", x.size(0), ", ", gh * gw, ", ",
              x.size(1), "), got ", grad.sizes());
  TORCH_CHECK(grad.scalar_type() == x.scalar_type(), "sharpattn: grad must have the dtype of x");
  TORCH_CHECK(grad.device() == x.device(), "sharpattn: grad must be on the device of x");
}

}  // namespace sharpattn
