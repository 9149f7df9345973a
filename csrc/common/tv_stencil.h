// Total variation of one (H, W) plane (SAN eq. 6) and its gradient (eq. 7) over a dense
// row-major plane. Shared by the standalone TV op and the TV fused into sharp attention.
#pragma once

#include <cstdint>

#include "macros.h"

namespace sharpattn {

// Squared differences between vertical and horizontal neighbours, summed; in double, since a
// plane sums many positive terms.
template <typename acc_t>
SA_HOST_DEVICE double tv_plane(const acc_t* a, int64_t H, int64_t W) {
  double sum = 0;
  for (int64_t h = 0; h < H; ++h) {
    for (int64_t w = 0; w < W; ++w) {
      const acc_t v = a[h * W + w];
      if (h + 1 < H) {
        const acc_t d = a[(h + 1) * W + w] - v;
        sum += static_cast<double>(d * d);
      }
      if (w + 1 < W) {
        const acc_t d = a[h * W + w + 1] - v;
        sum += static_cast<double>(d * d);
      }
    }
  }
  return sum;
}

// dTV/dA at (h, w): 2 (D1^T D1 A + A D2 D2^T), i.e. twice the sum of (A - neighbour) over the
// existing vertical and horizontal neighbours.
template <typename acc_t>
SA_HOST_DEVICE acc_t tv_grad_at(const acc_t* a, int64_t h, int64_t w, int64_t H, int64_t W) {
  const acc_t v = a[h * W + w];
  acc_t s = 0;
  if (h > 0) s += v - a[(h - 1) * W + w];
  if (h + 1 < H) s += v - a[(h + 1) * W + w];
  if (w > 0) s += v - a[h * W + w - 1];
  if (w + 1 < W) s += v - a[h * W + w + 1];
  return acc_t(2) * s;
}

}  // namespace sharpattn
