// Run-time choice of the vectorised CPU kernels (vec_kernels.h).
#include <cstdlib>
#include <cstring>

#include "vec_kernels.h"

namespace sharpattn::cpu {

const VecKernels* avx2_kernels();    // vec_avx2.cpp; nullptr where not compiled
const VecKernels* avx512_kernels();  // vec_avx512.cpp

namespace {

enum Level { kDefault = 0, kAvx2 = 1, kAvx512 = 2 };

// The best level this CPU and OS support (__builtin_cpu_supports also checks that the OS saves
// the AVX / AVX-512 register state).
Level detect() {
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
  __builtin_cpu_init();
  if (avx512_kernels() && __builtin_cpu_supports("avx512f") &&
      __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx2") &&
      __builtin_cpu_supports("fma"))
    return kAvx512;
  if (avx2_kernels() && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
    return kAvx2;
#endif
  return kDefault;
}

}  // namespace

const VecKernels* vec_kernels() {
  static const Level best = detect();
  Level level = best;
  if (const char* cap = std::getenv("SHARPATTN_CPU_CAPABILITY")) {
    if (std::strcmp(cap, "default") == 0) level = kDefault;
    else if (std::strcmp(cap, "avx2") == 0 && level > kAvx2) level = kAvx2;
  }
  switch (level) {
    case kAvx512: return avx512_kernels();
    case kAvx2: return avx2_kernels();
    default: return nullptr;
  }
}

}  // namespace sharpattn::cpu
