"""ONNX and torch.export of an inference model (images -> embeddings), and checks of the result."""

from __future__ import annotations

import copy
import os
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .plain import ExportError, exportable

__all__ = ["ATOL", "INPUT_NAME", "OUTPUT_NAME", "check_against_model", "compare_exported_program",
           "compare_onnx", "describe_check",
           "custom_ops_in_program", "example_input", "run_onnx", "to_exported_program",
           "to_onnx"]

INPUT_NAME, OUTPUT_NAME = "images", "embeddings"


def _reference_parameter(model: nn.Module) -> torch.Tensor | None:
    return next(iter(model.parameters()), None)


def example_input(model: nn.Module, batch: int, height: int, width: int,
                  seed: int = 0) -> torch.Tensor:
    """A (batch, 3, height, width) image batch on the model's device, in its dtype: normal noise,
    the scale of ImageNet-normalised images."""
    for name, value in (("height", height), ("width", width), ("batch", batch)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ExportError(f"{name} must be a positive int, got {value!r}")
    p = _reference_parameter(model)
    device = p.device if p is not None else torch.device("cpu")
    dtype = p.dtype if p is not None and p.is_floating_point() else torch.float32
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 3, height, width, generator=gen).to(device=device, dtype=dtype)


def custom_ops_in_program(program: torch.export.ExportedProgram) -> list[str]:
    """Names of the `sharpattn::` operators called in an exported graph (none when exportable)."""
    found = []
    for node in program.graph.nodes:
        # Registered operators (OpOverload) carry their namespace: "aten", "sharpattn", ...
        if node.op == "call_function" and getattr(node.target, "namespace", None) == "sharpattn":
            found.append(node.target.name())
    return sorted(set(found))


def to_exported_program(model: nn.Module, path: str | os.PathLike | None = None,
                        height: int = 256, width: int = 128, dynamic_batch: bool = True,
                        *, batch_size: int = 1) -> torch.export.ExportedProgram:
    """`torch.export` of an eval-mode model at input size `height x width`, the sharpattn
    modules computing with plain torch ops (see `exportable`), so the program holds no
    sharpattn custom op and loads with `torch.export.load` where sharpattn is not installed.

    `dynamic_batch=True` exports a symbolic batch size (any N >= 1); otherwise the batch is
    fixed at `batch_size`. With `path` the program is also saved there (a `.pt2` file).
    Raises ExportError for a model in training mode or with a mask that is random in eval.
    """
    with exportable(model, "to_exported_program"):
        if dynamic_batch:
            # An example batch of 2: torch.export specialises sizes 0 and 1 to constants.
            images = example_input(model, 2, height, width)
            shapes = ({0: torch.export.Dim("batch", min=1)},)
        else:
            images = example_input(model, batch_size, height, width)
            shapes = None
        with torch.no_grad():
            program = torch.export.export(model, (images,), dynamic_shapes=shapes)
    leftover = custom_ops_in_program(program)
    if leftover:
        raise ExportError(f"to_exported_program: the graph still calls sharpattn operators "
                          f"{leftover}: a module of this model has no plain export path yet")
    if path is not None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.export.save(program, path)
    return program


def to_onnx(model: nn.Module, path: str | os.PathLike, height: int = 256, width: int = 128,
            dynamic_batch: bool = True, *, batch_size: int = 1,
            opset: int | None = None) -> Path:
    """Write an ONNX file of an eval-mode model: input "images" (N, 3, height, width), output
    "embeddings" (N, D); N symbolic with `dynamic_batch`, else `batch_size`.

    Goes through `to_exported_program` (plain torch ops, no sharpattn custom op) and torch's
    torch.export-based ONNX exporter (it needs the `onnxscript` package), so the file holds
    standard ONNX operators only and runs in onnxruntime without sharpattn or torch. The weights
    are stored inside the one file. Returns the path.
    """
    program = to_exported_program(model, None, height, width, dynamic_batch,
                                  batch_size=batch_size)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        import onnxscript  # noqa: F401  (torch's exporter imports it; say so clearly if absent)
    except ImportError as e:
        raise ExportError("to_onnx needs the onnx and onnxscript packages "
                          "(pip install onnx onnxscript)") from e
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=UserWarning)
        onnx_program = torch.onnx.export(program, dynamo=True, input_names=[INPUT_NAME],
                                         output_names=[OUTPUT_NAME], opset_version=opset,
                                         verbose=False)
    onnx_program.save(str(path), external_data=False)
    foreign = _foreign_onnx_domains(path)
    if foreign:
        raise ExportError(f"to_onnx: {path} uses operators outside the standard ONNX domains "
                          f"({', '.join(foreign)}); it would not run in a plain onnxruntime")
    return path


def _foreign_onnx_domains(path: Path) -> list[str]:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    standard = {"", "ai.onnx", "ai.onnx.ml"}
    local = {f.domain for f in model.functions}  # functions defined in the file itself
    nodes = list(model.graph.node) + [n for f in model.functions for n in f.node]
    return sorted({n.domain for n in nodes if n.domain not in standard | local})


def run_onnx(path: str | os.PathLike, images, providers=None) -> np.ndarray:
    """Embeddings from an ONNX file with onnxruntime (CPU unless `providers` says otherwise)."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=providers or ["CPUExecutionProvider"])
    array = images.detach().cpu().numpy() if isinstance(images, torch.Tensor) \
        else np.asarray(images)
    return session.run(None, {session.get_inputs()[0].name: array})[0]


ATOL = 1e-4
"""The issue's tolerance for exported outputs (float32), met directly by shallow models."""


def _float64_twin(model: nn.Module) -> nn.Module:
    return copy.deepcopy(model).double()


def check_against_model(model: nn.Module, run, images: torch.Tensor,
                        float64: bool = True) -> dict:
    """Compare `run(images)` (an exported model) with the model's own float32 eval output.

    Returns max_abs_error (exported vs model), max_abs_output, and with `float64` also the
    error of each against the float64 evaluation of the same model (the truth both round):
    float32_error (model) and exported_error (exported). `passed` when max_abs_error <= ATOL,
    or when the exported output is within 2x of the model's own float32 error of the truth.

    Why the second criterion: a deep float32 network is itself only accurate to ~1e-4 of its
    output's scale (a random-weight SAN ResNet-50 with embeddings of size ~10: ~1e-3 off float64),
    and onnxruntime rounds differently (other convolution algorithms, batch norm folded into the
    convolutions), so two correct float32 runtimes can differ by twice that. A wrong graph (a
    wrong operator or constant) is off by the output's own scale, orders of magnitude more.
    """
    with torch.no_grad():
        expected = model(images).float().cpu()
        got = torch.as_tensor(np.asarray(run(images))).float()
    if got.shape != expected.shape:
        raise ExportError(f"exported model returned shape {tuple(got.shape)}, the model "
                          f"{tuple(expected.shape)}")
    result = {"batch": int(images.shape[0]), "size": tuple(int(s) for s in images.shape[-2:]),
              "max_abs_error": _max_abs(got - expected), "max_abs_output": _max_abs(expected)}
    passed = result["max_abs_error"] <= ATOL
    if float64:
        with torch.no_grad():
            truth = _float64_twin(model)(images.double()).cpu()
        result["float32_error"] = _max_abs(expected.double() - truth)
        result["exported_error"] = _max_abs(got.double() - truth)
        passed = passed or result["exported_error"] <= 2 * result["float32_error"]
    result["passed"] = bool(passed)
    return result


def _max_abs(t: torch.Tensor) -> float:
    return float(t.abs().max()) if t.numel() else 0.0


def compare_onnx(model: nn.Module, path: str | os.PathLike, images: torch.Tensor,
                 float64: bool = True, providers=None) -> dict:
    """`check_against_model` for an ONNX file run by onnxruntime."""
    return check_against_model(model, lambda x: run_onnx(path, x, providers), images, float64)


def compare_exported_program(model: nn.Module, program, images: torch.Tensor,
                             float64: bool = True) -> dict:
    """`check_against_model` for an ExportedProgram (or a saved .pt2 path)."""
    if isinstance(program, (str, os.PathLike)):
        program = torch.export.load(str(program))
    module = program.module()
    return check_against_model(model, lambda x: module(x).detach(), images, float64)


def describe_check(result: dict) -> str:
    """One line for people: what was compared and how close it was."""
    line = (f"batch {result['batch']} at {result['size'][0]}x{result['size'][1]}: max abs error "
            f"{result['max_abs_error']:.3g} (outputs up to {result['max_abs_output']:.3g})")
    if "float32_error" in result:
        line += (f"; vs float64: exported {result['exported_error']:.3g}, PyTorch float32 "
                 f"{result['float32_error']:.3g}")
    return line + (" -> OK" if result["passed"] else " -> MISMATCH")
