// The schemas of the compiled (C++/CUDA) sharpattn ops, in one place. Kernels attach per dispatch
// key through the TORCH_LIBRARY_IMPL blocks in csrc/cpu and csrc/cuda; fake kernels and
// autograd are registered from Python, one module per op in sharpattn/ops/, which also defines
// the Python-only ops of the same namespace (the triton_* variants and
// sharp_attention_tensor_args_*).
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
  // Returns (out, mask, stats, tv). mask is empty unless return_mask; stats holds each plane's
  // (min, max) of the mask input, shape (N, C, 2), for the backward; tv is empty unless
  // return_tv, else the total variation of each plane of A = M * T, shape (N, C).
  m.def(
      "sharp_attention_forward(Tensor t, Tensor? x, float tau, int seed, int offset, str mode, "
      "bool residual, float eps, bool return_mask, bool return_tv) -> "
      "(Tensor, Tensor, Tensor, Tensor)");
  // Returns (grad_t, grad_x); grad_x is empty when x is None (its gradient is inside grad_t).
  // grad_tv, shape (N, C), is the gradient reaching the per-plane TV (None without TV).
  m.def(
      "sharp_attention_backward(Tensor grad_out, Tensor? grad_tv, Tensor t, Tensor? x, "
      "Tensor stats, float tau, int seed, int offset, str mode, bool residual, float eps) -> "
      "(Tensor, Tensor)");
  // Fills out (P, S), float32 or float64, with the uniforms of S positions in each of P planes.
  m.def("philox_uniform_out(Tensor(a!) out, int seed, int offset) -> ()");

  // Total variation of each (n, c) plane, shape (N, C), float32 (float64 for float64 input).
  m.def("tv_per_plane(Tensor a) -> Tensor");
  m.def("tv_per_plane_backward(Tensor grad, Tensor a) -> Tensor");

  // (N, G, C, H, W): copy k of x with grid cell k zeroed; backward sums the kept parts.
  m.def("grid_occlusion(Tensor x, int gh, int gw) -> Tensor");
  m.def("grid_occlusion_backward(Tensor grad, int gh, int gw) -> Tensor");
  // (N, G, C): spatial mean of each occluded copy, from per-cell sums in one read of x.
  m.def("grid_occlusion_pool(Tensor x, int gh, int gw) -> Tensor");
  m.def("grid_occlusion_pool_backward(Tensor grad, Tensor x, int gh, int gw) -> Tensor");
}
