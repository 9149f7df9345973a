// The vectorised CPU kernels (vec_kernels.h) for AVX2 + FMA (x86-64 since Haswell / Zen 1).
#define SA_VEC_AVX2
#define SA_VEC_NAMESPACE avx2
#define SA_VEC_NAME "avx2"
#define SA_VEC_TARGET "avx2,fma"
#define SA_VEC_ENTRY avx2_kernels
#include "vec_kernels_tu.h"
