// Vectorised float32 plane kernels of the CPU backend (sharp attention, TV), compiled once per
// x86-64 vector extension (vec_avx2.cpp, vec_avx512.cpp) with function-level target attributes
// and chosen at run time (vec_dispatch.cpp), so the wheel itself needs nothing beyond baseline
// x86-64. Without a usable extension (other CPUs, other architectures, float64) the kernels fall
// back to the scalar code that shares csrc/common with the CUDA kernels.
//
// Every function works on dense float32 plane buffers that the caller pads to a multiple of
// kVecPad elements (padded_size): the vector loops run over whole vectors and never need a tail.
// Reductions (min/max, tie counts, gradient sums, TV) look only at the first n elements.
#pragma once

#include <cstdint>
#include <type_traits>
#include <vector>

#include "../common/sharp_mask.h"

namespace sharpattn::cpu {

// Padding unit of the plane buffers: a multiple of every vector width (16 floats for AVX-512).
constexpr int64_t kVecPad = 64;
inline int64_t padded_size(int64_t n) { return (n + kVecPad - 1) / kVecPad * kVecPad; }

// Accumulators of the sharp attention backward that reach the plane's lo and hi.
struct TieSums {
  double sum_lo = 0, sum_hi = 0;  // sum over the plane of dL/dlo and dL/dhi contributions
  int64_t count_lo = 0, count_hi = 0;  // elements equal to lo, to hi
};

struct VecKernels {
  const char* name;
  // The 4 * groups Philox words of `groups` consecutive counters from `counter`, in element
  // order (word k of counter counter + g at index 4 g + k): bit-identical to philox4x32_10.
  void (*philox_words)(uint32_t* words, int64_t groups, uint64_t counter, uint64_t key);
  // Minimum and maximum of x[0, n), n >= 1; both NaN if any element is NaN (torch.amin rule).
  void (*min_max)(const float* x, int64_t n, float* lo, float* hi);
  // Mask of every element of a padded plane: m = M (step in hard mode); soft (may be null) gets
  // the relaxed sample sigmoid(z / tau), which hard mode's straight-through gradient needs.
  // words is unused in mean mode.
  void (*mask_values)(const float* x, const uint32_t* words, int64_t n_padded,
                      const PlaneRange<float>& r, const MaskParams<float>& prm, float* m,
                      float* soft);
  // f = (1 + m) t or m t; attn (may be null) = m t.
  void (*gate)(const float* m, const float* t, int64_t n_padded, bool residual, float* f,
               float* attn);
  // Per-element gradients from the mask values of mask_values (soft = m in sample mode):
  // dt (through F and A only), dx holding lo and hi fixed, and the lo/hi sums and tie counts
  // over the first n elements. tvg (may be null) is dTV/dA per element, g_tv the gradient
  // reaching the plane's TV.
  void (*mask_grad)(const float* x, const float* t, const float* g, const float* m,
                    const float* soft, const float* tvg, float g_tv, int64_t n,
                    const PlaneRange<float>& r, const MaskParams<float>& prm, float* dt,
                    float* dx, TieSums* sums);
  // dx += share_lo where x == lo, share_hi where x == hi; then dt += dx when add_to_dt.
  void (*add_tie_shares)(const float* x, int64_t n_padded, float lo, float hi, float share_lo,
                         float share_hi, float* dx, float* dt, bool add_to_dt);
  // TV (SAN eq. 6) of a dense H x W plane, summed in double. `a` must have W + kVecPad readable
  // elements before and after the plane (StencilBuffer); col_keep_right[j] = 1 where column j % W
  // has a right neighbour, else 0 (ColumnTables).
  double (*tv_plane)(const float* a, int64_t H, int64_t W, const float* col_keep_right);
  // out[j] = scale * dTV/dA[j] = scale * 2 sum over existing neighbours of (A - neighbour);
  // same padding contract; col_keep_left[j] = 1 where column j % W has a left neighbour.
  void (*tv_grad)(const float* a, int64_t H, int64_t W, float scale, const float* col_keep_left,
                  const float* col_keep_right, float* out);
};

// The best kernels this CPU runs, or nullptr (then use the scalar code). The environment variable
// SHARPATTN_CPU_CAPABILITY = "default" | "avx2" | "avx512", read at every call, caps the choice
// (for tests and benchmarks; a capability the CPU lacks is never chosen).
const VecKernels* vec_kernels();

// Planes larger than this run the scalar code (the vector kernels index a plane with int32).
constexpr int64_t kVecMaxPlane = int64_t(1) << 30;

// The kernels for a call whose accumulation type is acc_t: nullptr unless float32 (and the plane
// is small enough), or when vec_kernels() has none.
template <typename acc_t>
const VecKernels* vec_for(int64_t plane_size) {
  if constexpr (std::is_same_v<acc_t, float>) {
    if (plane_size < kVecMaxPlane) return vec_kernels();
  }
  return nullptr;
}

// A dense H x W plane buffer with W + kVecPad zeroed elements on both sides, as tv_plane and
// tv_grad read it (neighbours past the plane's edges, masked out).
struct StencilBuffer {
  std::vector<float> storage;
  int64_t lead;
  StencilBuffer(int64_t H, int64_t W)
      : storage(static_cast<size_t>(padded_size(H * W) + 2 * (W + kVecPad)), 0.0f),
        lead(W + kVecPad) {}
  float* data() { return storage.data() + lead; }
};

// The column tables of tv_plane and tv_grad for H x W planes (padded_size(H W) entries each).
struct ColumnTables {
  std::vector<float> left, right;
  ColumnTables(int64_t H, int64_t W) : left(padded_size(H * W)), right(padded_size(H * W)) {
    for (int64_t j = 0, w = 0; j < padded_size(H * W); ++j) {
      left[j] = w != 0 ? 1.0f : 0.0f;
      right[j] = w != W - 1 ? 1.0f : 0.0f;
      if (++w == W) w = 0;
    }
  }
};

}  // namespace sharpattn::cpu
