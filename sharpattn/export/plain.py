"""The export path: each sharpattn module's eval computation written with plain torch ops.

In eval mode a `SharpMask` (eval_mode "mean") computes the deterministic mask M = p of SAN eq. 3
and F = (1 + M) * T (or M * T), but it does so through the registered `sharpattn::` custom op on
the compiled backend, and it still draws a (seed, offset) pair per forward (unused by "mean").
Neither can go into an ONNX file meant to run without sharpattn. `exportable(model)` swaps, for
the duration of a `with`, every such module for a stand-in that computes the same values with
plain tensor math (the reference's formula, `sharpattn.reference.sharp_mask(mode="mean")`):

    SharpMask(eval_mode="mean")  ->  PlainMeanMask          (eq. 3 and eq. 1/2, no noise)
    GridOcclusion                ->  PlainGridOcclusion     (docs/spec.md section 4, keep masks)

and puts the originals back afterwards. The stand-ins hold no parameters or buffers, so the
state_dict is the same. Training is untouched: nothing changes outside the `with`.

`check_exportable(model)` is what `exportable` checks first: the model and every submodule in
eval mode, and no SharpMask whose eval mode is random ("sample" or "hard"): such a model would
export a graph that gives different outputs from the module, so it is refused with the names.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from .. import _checks, reference
from ..modules.block import SharpAttentionBlock
from ..modules.masks import SharpMask
from ..modules.occlusion import GridOcclusion

__all__ = ["ExportError", "PlainGridOcclusion", "PlainMeanMask", "check_exportable",
           "exportable"]


class ExportError(ValueError):
    """A model that cannot be exported as asked: what is wrong and how to fix it."""


class PlainMeanMask(nn.Module):
    """SharpMask's eval computation (mode "mean") with plain torch ops: M = p of eq. 3.

    Same call and returns as every gate: `(F, M or None, None)`. Computed in float32 (float64 for
    float64 input) and returned in t's dtype, like the kernels. No TV: eval computes none.
    """

    def __init__(self, eps: float = 1e-6):
        super().__init__()
        self.eps = _checks.positive_finite(eps, "eps")

    def forward(self, t: torch.Tensor, x: torch.Tensor | None = None, *, residual: bool = True,
                return_mask: bool = False, return_tv: bool = False):
        if return_tv:
            raise ExportError("PlainMeanMask: the export path computes no TV penalty (eval "
                              "computes none); it is not meant for training")
        acc = reference.accumulation_dtype(t.dtype)
        t_acc = t.to(acc)
        x_acc = t_acc if x is None else x.to(acc)
        # seed/tau are unused by mode "mean": p is deterministic.
        m = reference.sharp_mask(x_acc, tau=1.0, seed=0, mode="mean", eps=self.eps)
        out = ((1 + m) * t_acc if residual else m * t_acc).to(t.dtype)
        return out, (m.to(t.dtype) if return_mask else None), None

    def extra_repr(self) -> str:
        return f"eps={self.eps:g}"


class PlainGridOcclusion(nn.Module):
    """GridOcclusion with plain torch ops (the reference's keep masks; docs/spec.md section 4).

    The keep masks depend only on (H, W) and the grid, so an export at a fixed input size holds
    them as constants. pooled=True gives the spatial mean of every copy, as `GridOcclusion` does.
    """

    def __init__(self, grid: tuple[int, int], pooled: bool):
        super().__init__()
        self.grid = tuple(grid)
        self.pooled = pooled

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _checks.feature_map(x, "x")
        if self.pooled:
            return reference.grid_occlusion_pool(x, self.grid)
        return reference.grid_occlusion(x, self.grid)

    def extra_repr(self) -> str:
        return f"grid={self.grid}, pooled={self.pooled}"


def check_exportable(model: nn.Module, what: str = "export") -> None:
    """Raise ExportError unless the model computes a deterministic function of its input.

    Refused: any module in training mode (masks are sampled in training, batch norm uses batch
    statistics), and a SharpMask whose eval_mode is "sample" or "hard" (random in eval).
    """
    if not isinstance(model, nn.Module):
        raise ExportError(f"{what}: expected a torch.nn.Module, got {type(model).__name__}")
    training = [name or "<model>" for name, m in model.named_modules() if m.training]
    if training:
        listed = ", ".join(training[:3]) + (f" and {len(training) - 3} more"
                                             if len(training) > 3 else "")
        raise ExportError(f"{what}: the model is in training mode ({listed}); an exported graph "
                          f"is the eval computation (deterministic masks, running batch-norm "
                          f"statistics): call model.eval() first")
    random = [(name, m.eval_mode) for name, m in model.named_modules()
              if isinstance(m, SharpMask) and m.eval_mode != "mean"]
    if random:
        name, mode = random[0]
        raise ExportError(f"{what}: {name} is a SharpMask with eval_mode={mode!r}, which draws a "
                          f"random mask at every forward even in eval ({len(random)} such "
                          f"mask(s)); only the deterministic eval_mode='mean' (M = p) can be "
                          f"exported. Set it with `module.eval_mode = 'mean'` on each mask")


def _plain_stand_in(module: nn.Module) -> nn.Module | None:
    if isinstance(module, SharpMask):
        return PlainMeanMask(module.eps)
    if isinstance(module, GridOcclusion):
        return PlainGridOcclusion(module.grid, module.pooled)
    return None


@contextlib.contextmanager
def exportable(model: nn.Module, what: str = "export"):
    """Within the `with`, the model's sharpattn modules compute their eval output with plain
    torch ops (see the module docstring); yields the model. Checks `check_exportable` first.

        model.eval()
        with sharpattn.export.exportable(model):
            program = torch.export.export(model, (images,))
    """
    check_exportable(model, what)
    swapped: list[tuple[nn.Module, str, nn.Module]] = []
    # Attributes a SharpAttentionBlock sets during forward: traced values must not outlive it.
    block_state = [(b, b.last_tv, b._tv_shape) for b in model.modules()
                   if isinstance(b, SharpAttentionBlock)]
    try:
        for parent in list(model.modules()):
            for name, child in list(parent.named_children()):
                stand_in = _plain_stand_in(child)
                if stand_in is not None:
                    stand_in.train(child.training)
                    setattr(parent, name, stand_in)
                    swapped.append((parent, name, child))
        yield model
    finally:
        for parent, name, child in reversed(swapped):
            setattr(parent, name, child)
        for block, last_tv, tv_shape in block_state:
            block.last_tv, block._tv_shape = last_tv, tv_shape
