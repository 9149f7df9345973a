// Host-side helpers of the op implementations, shared by the CPU (csrc/cpu) and CUDA (csrc/cuda)
// kernels' launch code. Host only: never included into device code paths.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/string_view.h>

#include <algorithm>
#include <cstdint>
#include <string_view>

#include "op_args.h"
#include "sharp_mask.h"

namespace sharpattn {

// The dtype of per-plane statistics, TV and sums: float64 for float64 inputs, else float32
// (docs/spec.md section 0: float32 arithmetic, float64 for float64 inputs).
inline at::ScalarType accumulation_dtype(const at::Tensor& t) {
  return t.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Planes per at::parallel_for task: about 32 K elements of work per task, enough to amortise
// the scheduling of small planes without starving the threads on large ones.
inline int64_t grain(int64_t work_per_plane) {
  return std::max<int64_t>(1, 32768 / std::max<int64_t>(work_per_plane, 1));
}

// The mask formula's constants, decoded once per call from the op's arguments.
template <typename acc_t>
MaskParams<acc_t> make_params(double tau, double eps, c10::string_view mode, bool residual) {
  return MaskParams<acc_t>{static_cast<acc_t>(1.0 / tau), static_cast<acc_t>(eps),
                           parse_mask_mode(std::string_view(mode.data(), mode.size())), residual};
}

}  // namespace sharpattn
