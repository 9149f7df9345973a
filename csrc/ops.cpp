// Every operator schema of the sharpattn library, in one place. Kernels attach per dispatch key
// in csrc/cpu and csrc/cuda; autograd and fake (meta) kernels are registered from Python
// (sharpattn/_ops.py), which is also where the Triton variants are defined.
#include <Python.h>
#include <torch/library.h>

// Importing sharpattn._C from Python runs the static registrations below; the module itself has
// no Python-level functions, so it needs no pybind11.
extern "C" {
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
}

TORCH_LIBRARY(sharpattn, m) {
  // Returns (out, mask, stats). mask is empty unless return_mask; stats holds each plane's
  // (min, max) of the mask input, shape (N, C, 2), for the backward.
  m.def(
      "sharp_attention_forward(Tensor t, Tensor? x, float tau, int seed, int offset, str mode, "
      "bool residual, float eps, bool return_mask) -> (Tensor, Tensor, Tensor)");
  // Returns (grad_t, grad_x); grad_x is empty when x is None (its gradient is inside grad_t).
  m.def(
      "sharp_attention_backward(Tensor grad_out, Tensor t, Tensor? x, Tensor stats, float tau, "
      "int seed, int offset, str mode, bool residual, float eps) -> (Tensor, Tensor)");
  // Fills out (P, S), float32 or float64, with the uniforms of S positions in each of P planes.
  m.def("philox_uniform_out(Tensor(a!) out, int seed, int offset) -> ()");
}
