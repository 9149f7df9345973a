// The vectorised CPU kernels (vec_kernels.h) for AVX-512 F/DQ/BW/VL (Skylake-SP, Ice Lake, Zen 4).
#define SA_VEC_AVX512
#define SA_VEC_NAMESPACE avx512
#define SA_VEC_NAME "avx512"
#define SA_VEC_TARGET "avx512f,avx512dq,avx512bw,avx512vl,avx2,fma"
#define SA_VEC_ENTRY avx512_kernels
#include "vec_kernels_tu.h"
