// Per-element math of the sharp attention mask (docs/spec.md section 2): the forward value and the
// partial derivatives that the backward reduces per plane. Shared by the CPU and CUDA kernels.
#pragma once

#include <cstdint>

#include "macros.h"

namespace sharpattn {

enum class MaskMode : int { kSample = 0, kMean = 1, kHard = 2 };

// Per-call constants of the mask, in the accumulation type.
template <typename acc_t>
struct MaskParams {
  acc_t inv_tau;
  acc_t eps;
  MaskMode mode;
  bool residual;
};

// Per-plane constants derived from the plane's min and max.
template <typename acc_t>
struct PlaneRange {
  acc_t lo, hi, denom;  // denom = (hi - lo) + 2 eps, the denominator of eq. 3
  SA_HOST_DEVICE PlaneRange(acc_t lo_, acc_t hi_, acc_t eps)
      : lo(lo_), hi(hi_), denom((hi_ - lo_) + 2 * eps) {}
};

template <typename acc_t>
SA_HOST_DEVICE acc_t sa_sigmoid(acc_t v) {
  return acc_t(1) / (acc_t(1) + sa_exp(-v));
}

// Hard mode's step 1[z > 0] that lets a NaN z through: under the NaN rule (README, "Specification
// notes") a plane whose min/max is NaN has a NaN mask in every mode, as the reference's
// step + (soft - soft.detach()) has; a bare comparison would turn NaN into 0.
template <typename acc_t>
SA_HOST_DEVICE acc_t hard_step(acc_t z) {
  return z > acc_t(0) ? acc_t(1) : (z != z ? z : acc_t(0));
}

// Forward mask value M of one element. `noise` is the logistic noise L (unused in mean mode).
template <typename acc_t>
SA_HOST_DEVICE acc_t mask_value(acc_t x, acc_t noise, const PlaneRange<acc_t>& r,
                                const MaskParams<acc_t>& prm) {
  const acc_t a = (x - r.lo) + prm.eps;  // distance above the minimum, never 0
  if (prm.mode == MaskMode::kMean) return a / r.denom;
  const acc_t b = (r.hi - x) + prm.eps;  // distance below the maximum, never 0
  const acc_t z = (sa_log(a) - sa_log(b)) + noise;
  if (prm.mode == MaskMode::kHard) return hard_step(z);
  return sa_sigmoid(z * prm.inv_tau);
}

// F = (1 + M) T (cross-feature interaction, eq. 2) or M T (eq. 1).
template <typename acc_t>
SA_HOST_DEVICE acc_t gate_output(acc_t m, acc_t t, bool residual) {
  return residual ? (acc_t(1) + m) * t : m * t;
}

// Derivatives of one element given dL/dF = g and dL/dA = g_attn, where A = M T is the
// attention-aware feature whose total variation the fused TV penalty measures (0 without it).
// The mask input x reaches the loss directly and
// through the plane's lo and hi; the lo/hi parts are summed over the plane by the caller and then
// shared evenly among the elements equal to lo (or hi), as torch.amin/amax autograd does.
template <typename acc_t>
struct ElementGrad {
  acc_t dt;        // dL/dT through F and A only (not through the mask input)
  acc_t dx_direct; // dL/dX holding lo and hi fixed
  acc_t dlo;       // this element's contribution to dL/dlo
  acc_t dhi;       // this element's contribution to dL/dhi
};

template <typename acc_t>
SA_HOST_DEVICE ElementGrad<acc_t> element_grad(acc_t g, acc_t g_attn, acc_t x, acc_t t,
                                               acc_t noise, const PlaneRange<acc_t>& r,
                                               const MaskParams<acc_t>& prm) {
  const acc_t a = (x - r.lo) + prm.eps;
  const acc_t b = (r.hi - x) + prm.eps;
  const acc_t g_mask = (g + g_attn) * t;  // F and A both depend on M through a factor T
  ElementGrad<acc_t> out;
  if (prm.mode == MaskMode::kMean) {
    const acc_t m = a / r.denom;
    out.dt = g * (prm.residual ? acc_t(1) + m : m) + g_attn * m;
    const acc_t q = g_mask / r.denom;  // dL/dM / denom
    out.dx_direct = q;
    out.dlo = -q * (b / r.denom);
    out.dhi = -q * (a / r.denom);
    return out;
  }
  const acc_t z = (sa_log(a) - sa_log(b)) + noise;
  const acc_t soft = sa_sigmoid(z * prm.inv_tau);
  // Hard mode is straight-through: its forward value is the step, its gradient the soft one's.
  const acc_t m = prm.mode == MaskMode::kHard ? hard_step(z) : soft;
  out.dt = g * (prm.residual ? acc_t(1) + m : m) + g_attn * m;
  const acc_t g_z = g_mask * soft * (acc_t(1) - soft) * prm.inv_tau;  // dL/dz
  const acc_t g_a = g_z / a, g_b = g_z / b;  // z = log a - log b
  out.dx_direct = g_a + g_b;
  out.dlo = -g_a;
  out.dhi = -g_b;
  return out;
}

}  // namespace sharpattn
