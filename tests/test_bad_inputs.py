"""Bad arguments raise a Python exception that says what is wrong (docs/spec.md section 0)."""

import math

import pytest
import torch

from sharpattn import backends
from sharpattn import functional as F

T = torch.rand(2, 3, 4, 5)


@pytest.mark.parametrize("kwargs,error,match", [
    (dict(t=T.long()), TypeError, "float16, bfloat16, float32 or float64"),
    (dict(t=T.to(torch.complex64)), TypeError, "float16, bfloat16, float32 or float64"),
    (dict(t=T[0]), ValueError, "4-D"),
    (dict(t=T[None]), ValueError, "4-D"),
    (dict(t=T[:, :, :0]), ValueError, "H >= 1"),
    (dict(t=[1.0, 2.0]), TypeError, "torch.Tensor"),
    (dict(x=T[:, :2]), ValueError, "shape of t"),
    (dict(x=T.double()), TypeError, "dtype of t"),
    (dict(x=T.to("meta")), ValueError, "device of t"),
    (dict(tau=0.0), ValueError, "tau must be finite and > 0"),
    (dict(tau=-1.0), ValueError, "tau must be finite and > 0"),
    (dict(tau=math.inf), ValueError, "tau must be finite and > 0"),
    (dict(tau=math.nan), ValueError, "tau must be finite and > 0"),
    (dict(tau="1"), TypeError, "tau must be a real number"),
    (dict(eps=0.0), ValueError, "eps must be finite and > 0"),
    (dict(seed=-1), ValueError, "seed must be in"),
    (dict(seed=2**64), ValueError, "seed must be in"),
    (dict(seed=1.0), TypeError, "seed must be an int"),
    (dict(offset=-1), ValueError, "offset must be in"),
    (dict(mode="soft"), ValueError, "mode must be one of"),
    (dict(backend="tpu"), RuntimeError, "unknown backend"),
])
def test_bad_arguments(kwargs, error, match):
    args = dict(t=T, x=None, tau=1.0, seed=0, offset=0, mode="sample", backend=None)
    args.update(kwargs)
    t, x = args.pop("t"), args.pop("x")
    with pytest.raises(error, match=match):
        F.sharp_attention(t, x, **args)


def test_unavailable_backend_names_the_reason():
    with pytest.raises(RuntimeError, match="runs on CUDA tensors"):
        F.sharp_attention(T, tau=1.0, seed=0, backend="cuda")


def test_compiled_op_checks_arguments_too():
    # Direct torch.ops calls bypass the Python checks; the C++ kernels still refuse bad input.
    if "cpu" not in backends.available("cpu"):
        pytest.fail("the CPU kernels should be built on every machine")
    with pytest.raises(RuntimeError, match="mode must be"):
        torch.ops.sharpattn.sharp_attention_forward(T, None, 1.0, 0, 0, "bogus", True, 1e-6,
                                                    False, False)
    with pytest.raises(RuntimeError, match="shape of t"):
        torch.ops.sharpattn.sharp_attention_forward(T, T[:1], 1.0, 0, 0, "sample", True, 1e-6,
                                                    False, False)
    with pytest.raises(RuntimeError, match="tau"):
        torch.ops.sharpattn.sharp_attention_forward(T, None, -1.0, 0, 0, "sample", True, 1e-6,
                                                    False, False)
