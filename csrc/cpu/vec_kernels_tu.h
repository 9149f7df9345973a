// Body of the per-extension translation units vec_avx2.cpp and vec_avx512.cpp. Each defines
// SA_VEC_AVX2 or SA_VEC_AVX512, SA_VEC_NAMESPACE, SA_VEC_TARGET (the GCC/Clang target string)
// and SA_VEC_ENTRY (the name of the function returning its kernel table), then includes this.
//
// Only the kernels are compiled for the extension, through a target pragma opened after every
// ordinary header: inline functions of the standard library, ATen and csrc/common keep the
// baseline target (they can still be inlined into the kernels), so no AVX code is emitted where
// the linker could pick it for code that runs unconditionally. The table is built outside the
// pragma; vec_dispatch.cpp hands it out only on a CPU (and OS) that supports the extension.
#include "vec_kernels.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))

#include <immintrin.h>

#include <cfloat>
#include <cstdint>
#include <limits>

#include "../common/philox.h"
#include "../common/sharp_mask.h"

// Pragmas do not expand macros; _Pragma of a stringised, expanded argument does.
#define SA_VEC_STR(x) #x
#define SA_VEC_PRAGMA(x) _Pragma(SA_VEC_STR(x))
#if defined(__clang__)
SA_VEC_PRAGMA(clang attribute push(__attribute__((target(SA_VEC_TARGET))), apply_to = function))
#else
#pragma GCC push_options
SA_VEC_PRAGMA(GCC target(SA_VEC_TARGET))
// GCC 12 flags the deliberately undefined pass-through operand inside its own AVX-512 intrinsics.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

#include "vec_isa.h"
#include "vec_kernels_impl.h"

#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC diagnostic pop
#pragma GCC pop_options
#endif

namespace sharpattn::cpu {

const VecKernels* SA_VEC_ENTRY() {
  namespace k = SA_VEC_NAMESPACE;
  static const VecKernels kernels{SA_VEC_NAME,      &k::philox_words, &k::min_max,
                                  &k::mask_values,  &k::gate,         &k::mask_grad,
                                  &k::add_tie_shares, &k::tv_plane,   &k::tv_grad};
  return &kernels;
}

}  // namespace sharpattn::cpu

#else

namespace sharpattn::cpu {
const VecKernels* SA_VEC_ENTRY() { return nullptr; }
}  // namespace sharpattn::cpu

#endif
