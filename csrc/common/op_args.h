// Argument checks and decoding shared by the CPU and CUDA kernels. The Python API validates
// first with friendlier messages; these keep direct torch.ops calls from reading out of bounds.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>
#include <c10/util/Optional.h>

#include <string_view>

#include "sharp_mask.h"

namespace sharpattn {

inline MaskMode parse_mask_mode(std::string_view mode) {
  if (mode == "sample") return MaskMode::kSample;
  if (mode == "mean") return MaskMode::kMean;
  if (mode == "hard") return MaskMode::kHard;
  TORCH_CHECK(false, "sharpattn: mode must be 'sample', 'mean' or 'hard', got '", mode, "'");
}

inline void check_feature_map(const at::Tensor& v, const char* name) {
  TORCH_CHECK(v.dim() == 4, "sharpattn: ", name, " must be 4-D (N, C, H, W), got ", v.dim(), "-D");
  TORCH_CHECK(at::isFloatingType(v.scalar_type()), "sharpattn: ", name,
              " must be a floating tensor, got ", v.scalar_type());
}

inline void check_same_map(const at::Tensor& t, const at::Tensor& other, const char* name) {
  check_feature_map(other, name);
  TORCH_CHECK(other.sizes() == t.sizes(), "sharpattn: ", name, " must have the shape of t ",
              t.sizes(), ", got ", other.sizes());
  TORCH_CHECK(other.scalar_type() == t.scalar_type(), "sharpattn: ", name,
              " must have the dtype of t");
  TORCH_CHECK(other.device() == t.device(), "sharpattn: ", name, " must be on the device of t");
}

inline void check_forward_args(const at::Tensor& t, const c10::optional<at::Tensor>& x,
                               double tau) {
  check_feature_map(t, "t");
  if (x.has_value()) check_same_map(t, *x, "x");
  TORCH_CHECK(tau > 0 && std::isfinite(tau), "sharpattn: tau must be finite and > 0, got ", tau);
}

inline void check_stats(const at::Tensor& t, const at::Tensor& stats) {
  TORCH_CHECK(stats.dim() == 3 && stats.size(0) == t.size(0) && stats.size(1) == t.size(1) &&
                  stats.size(2) == 2,
              "sharpattn: stats must have shape (N, C, 2)");
  TORCH_CHECK(stats.is_contiguous(), "sharpattn: stats must be contiguous");
  TORCH_CHECK(stats.device() == t.device(), "sharpattn: stats must be on the device of t");
  TORCH_CHECK(stats.scalar_type() ==
                  (t.scalar_type() == at::kDouble ? at::kDouble : at::kFloat),
              "sharpattn: stats must be float64 for float64 inputs and float32 otherwise");
}

inline void check_grad_tv(const at::Tensor& t, const at::Tensor& grad_tv) {
  TORCH_CHECK(grad_tv.dim() == 2 && grad_tv.size(0) == t.size(0) && grad_tv.size(1) == t.size(1),
              "sharpattn: grad_tv must have shape (N, C)");
  TORCH_CHECK(grad_tv.is_contiguous(), "sharpattn: grad_tv must be contiguous");
  TORCH_CHECK(grad_tv.scalar_type() ==
                  (t.scalar_type() == at::kDouble ? at::kDouble : at::kFloat),
              "sharpattn: grad_tv must be float64 for float64 inputs and float32 otherwise");
  TORCH_CHECK(grad_tv.device() == t.device(), "sharpattn: grad_tv must be on the device of t");
}

// Checks every argument of sharp_attention_backward; returns whether a TV gradient is present.
inline bool check_backward_args(const at::Tensor& grad_out,
                                const c10::optional<at::Tensor>& grad_tv, const at::Tensor& t,
                                const c10::optional<at::Tensor>& x, const at::Tensor& stats,
                                double tau) {
  check_forward_args(t, x, tau);
  check_same_map(t, grad_out, "grad_out");
  check_stats(t, stats);
  const bool with_tv = grad_tv.has_value() && grad_tv->defined();
  if (with_tv) check_grad_tv(t, *grad_tv);
  return with_tv;
}

}  // namespace sharpattn
