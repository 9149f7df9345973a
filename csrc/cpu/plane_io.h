// Moving one (H, W) plane of a strided 4-D tensor in and out of a contiguous accumulation
// buffer. Kernels then run their math over dense buffers (vectorisable, cache-resident) whatever
// the tensor's memory layout: channels_last and sliced views are read in place, never copied
// whole.
#pragma once

#include <cstdint>

namespace sharpattn::cpu {

// Where plane (n, c) of a 4-D tensor starts and how to step through it.
template <typename T>
struct PlaneView {
  T* base;
  int64_t stride_h, stride_w;
};

template <typename T>
PlaneView<T> plane_of(T* data, const int64_t* strides, int64_t n, int64_t c) {
  return PlaneView<T>{data + n * strides[0] + c * strides[1], strides[2], strides[3]};
}

template <typename scalar_t, typename acc_t>
void load_plane(PlaneView<const scalar_t> src, int64_t H, int64_t W, acc_t* dst) {
  if (src.stride_w == 1 && src.stride_h == W) {
    for (int64_t j = 0; j < H * W; ++j) dst[j] = static_cast<acc_t>(src.base[j]);
    return;
  }
  for (int64_t h = 0; h < H; ++h) {
    const scalar_t* row = src.base + h * src.stride_h;
    for (int64_t w = 0; w < W; ++w) dst[h * W + w] = static_cast<acc_t>(row[w * src.stride_w]);
  }
}

template <typename scalar_t, typename acc_t>
void store_plane(const acc_t* src, int64_t H, int64_t W, PlaneView<scalar_t> dst) {
  if (dst.stride_w == 1 && dst.stride_h == W) {
    for (int64_t j = 0; j < H * W; ++j) dst.base[j] = static_cast<scalar_t>(src[j]);
    return;
  }
  for (int64_t h = 0; h < H; ++h) {
    scalar_t* row = dst.base + h * dst.stride_h;
    for (int64_t w = 0; w < W; ++w) row[w * dst.stride_w] = static_cast<scalar_t>(src[h * W + w]);
  }
}

}  // namespace sharpattn::cpu
