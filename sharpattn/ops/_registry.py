"""What every op module shares: its backend table and the refusal of double backward.

Each op exists once per compiled backend as registered ops in the `sharpattn` namespace:

  cpu, cuda  sharpattn::<name>          C++ / CUDA kernels of sharpattn._C (schemas: csrc/ops.cpp)
  triton     sharpattn::triton_<name>   Python custom ops over sharpattn.kernels

so a backend table maps each available backend to the op it runs.
"""

from __future__ import annotations

import torch

from .. import _extension


def compiled_has(name: str) -> bool:
    """Whether sharpattn._C registered op `name` (one built before the op existed lacks it)."""
    return _extension.compiled() and hasattr(torch.ops.sharpattn, name)


def backend_table(name: str) -> dict:
    """{backend: registered op} of op `name` for every backend this build has.

    Built once at import, so picking an op is a dict lookup, also while torch.compile traces.
    """
    table = {"triton": getattr(torch.ops.sharpattn, "triton_" + name)}
    if compiled_has(name):
        table["cpu"] = table["cuda"] = getattr(torch.ops.sharpattn, name)
    return table


def pick(table: dict, backend: str, name: str):
    """The op of `backend` in `table`, or a clear error when this build of sharpattn._C lacks it."""
    op = table.get(backend)
    if op is None:
        raise RuntimeError(f"sharpattn: this build of sharpattn._C has no {name} kernels; "
                           "rebuild it (pip install --no-build-isolation -e .) or use "
                           "backend='triton' or 'reference'")
    return op


def no_double_backward(ctx, *grads):
    raise RuntimeError("sharpattn: double backward (gradients of gradients) of sharpattn's ops "
                       "is not supported; use backend='reference' if you need it")


def register_pair(forward_name: str, backward_name: str, fake_forward, fake_backward, backward,
                  setup_context) -> None:
    """Fake kernels of a forward op and its backward op, the forward's autograd, and the refusal
    of double backward on the backward op: the shape every differentiable op shares."""
    torch.library.register_fake(f"sharpattn::{forward_name}")(fake_forward)
    torch.library.register_fake(f"sharpattn::{backward_name}")(fake_backward)
    torch.library.register_autograd(f"sharpattn::{forward_name}", backward, setup_context=setup_context)
    torch.library.register_autograd(f"sharpattn::{backward_name}", no_double_backward,
                                    setup_context=lambda ctx, inputs, output: None)
