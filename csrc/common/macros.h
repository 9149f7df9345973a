// Portability macros and math wrappers for code compiled by both the host compiler and nvcc.
#pragma once

#include <cmath>

#if defined(__CUDACC__)
#define SA_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define SA_HOST_DEVICE inline
#endif

namespace sharpattn {

// Overloads (not templates) so float math stays in float on the device and on the host.
SA_HOST_DEVICE float sa_log(float v) { return logf(v); }
SA_HOST_DEVICE double sa_log(double v) { return log(v); }
SA_HOST_DEVICE float sa_exp(float v) { return expf(v); }
SA_HOST_DEVICE double sa_exp(double v) { return exp(v); }

}  // namespace sharpattn
