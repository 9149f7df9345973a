// Philox4x32-10 counter-based generator (Salmon et al. 2011, Random123 constants) and the
// word -> noise conversion of docs/spec.md section 1. Shared by the CPU and CUDA kernels so
// that the CPU tests exercise exactly the arithmetic the GPU runs.
#pragma once

#include <cstdint>

#include "macros.h"

namespace sharpattn {

struct PhiloxWords {
  uint32_t w[4];
};

SA_HOST_DEVICE uint32_t mul_hi_u32(uint32_t a, uint32_t b) {
#if defined(__CUDA_ARCH__)
  return __umulhi(a, b);
#else
  return static_cast<uint32_t>((static_cast<uint64_t>(a) * b) >> 32);
#endif
}

// One Philox4x32-10 block: counter = (c mod 2^32, c >> 32, 0, 0), key = (k mod 2^32, k >> 32).
// Identical to Triton's tl.randint4x(seed=k, offset=c) for 64-bit k and c.
SA_HOST_DEVICE PhiloxWords philox4x32_10(uint64_t counter, uint64_t key) {
  constexpr uint32_t kMul0 = 0xD2511F53u, kMul1 = 0xCD9E8D57u;
  constexpr uint32_t kBump0 = 0x9E3779B9u, kBump1 = 0xBB67AE85u;
  uint32_t c0 = static_cast<uint32_t>(counter), c1 = static_cast<uint32_t>(counter >> 32);
  uint32_t c2 = 0, c3 = 0;
  uint32_t k0 = static_cast<uint32_t>(key), k1 = static_cast<uint32_t>(key >> 32);
#if defined(__CUDA_ARCH__)
#pragma unroll
#endif
  for (int round = 0; round < 10; ++round) {
    const uint32_t hi0 = mul_hi_u32(kMul0, c0), lo0 = kMul0 * c0;
    const uint32_t hi1 = mul_hi_u32(kMul1, c2), lo1 = kMul1 * c2;
    c0 = hi1 ^ c1 ^ k0;
    c1 = lo1;
    c2 = hi0 ^ c3 ^ k1;
    c3 = lo0;
    k0 += kBump0;
    k1 += kBump1;
  }
  return PhiloxWords{{c0, c1, c2, c3}};
}

// u = ((r >> 8) + 0.5) * 2^-24 = (2k + 1) * 2^-25 with k = r >> 8. The odd numerator needs 25
// bits, so u is exact in float64 but must be rounded in float32. Each backend rounds the integer
// numerator once (int -> float, round to nearest even) and scales by a power of two, which is
// exact: every backend therefore gets the same bits.
template <typename acc_t>
SA_HOST_DEVICE acc_t uniform_from_word(uint32_t r) {
  const uint32_t odd = 2u * (r >> 8) + 1u;
  return static_cast<acc_t>(odd) * static_cast<acc_t>(2.98023223876953125e-08);  // 2^-25
}

// 1 - u computed from its own odd numerator (2^25 - 1 - 2k), not as 1 - round(u): the complement
// then never rounds to 0 and the logistic noise below is finite for every word.
template <typename acc_t>
SA_HOST_DEVICE acc_t complement_from_word(uint32_t r) {
  const uint32_t odd = 33554431u - 2u * (r >> 8);  // 2^25 - 1 - 2k
  return static_cast<acc_t>(odd) * static_cast<acc_t>(2.98023223876953125e-08);
}

// Logistic(0, 1) noise L = log(u) - log(1 - u): the difference of two Gumbel(0, 1) samples, so one
// uniform per element gives the two-class Gumbel-Softmax of SAN eq. 4-5.
template <typename acc_t>
SA_HOST_DEVICE acc_t logistic_from_word(uint32_t r) {
  return sa_log(uniform_from_word<acc_t>(r)) - sa_log(complement_from_word<acc_t>(r));
}

// Counter of the 4-word group holding flat position j of plane p (docs/spec.md section 1).
SA_HOST_DEVICE uint64_t philox_counter(uint64_t offset, int64_t plane, int64_t groups_per_plane,
                                       int64_t j) {
  return offset + static_cast<uint64_t>(plane) * static_cast<uint64_t>(groups_per_plane) +
         static_cast<uint64_t>(j >> 2);
}

}  // namespace sharpattn
