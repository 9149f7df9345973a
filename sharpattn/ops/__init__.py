"""The operators, one module per op, each of the same shape:

  fake kernels     shapes and dtypes for FakeTensor, torch.compile and torch.export
  Triton backend   the sharpattn::triton_* custom ops over sharpattn.kernels
  autograd         registered on the forward op; the backward is itself a registered op
  backend table    {backend: registered op}, built once at import (_registry)
  public function  checks the arguments once, picks a backend once, calls one op

  sharp_attention  sharp_attention, sharp_attention_tensor_args, draw_rng
  tv_loss          tv_loss
  grid_occlusion   grid_occlusion, grid_occlusion_pool
  philox           philox_uniform

sharpattn.functional re-exports the public functions. Importing this package registers every
fake kernel and autograd formula (sharpattn imports it).
"""

from . import grid_occlusion, philox, sharp_attention, tv_loss  # noqa: F401
