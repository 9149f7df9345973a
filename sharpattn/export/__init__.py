"""Export trained sharpattn models for deployment: ONNX and torch.export.

    from sharpattn.export import to_onnx, to_exported_program
    model.eval()
    to_onnx(model, "san.onnx", height=256, width=128)          # runs in onnxruntime alone
    program = to_exported_program(model, "san.pt2")           # torch.export.load("san.pt2")

Only the eval computation is exported, and only when it is deterministic: a model in training
mode, or a SharpMask whose eval_mode is "sample" or "hard", raises ExportError. While exporting,
the sharpattn modules compute their eval output with plain torch ops (`exportable`), so neither
file contains a sharpattn custom operator. See docs/deploy.md.
"""

from .core import (ATOL, INPUT_NAME, OUTPUT_NAME, check_against_model, compare_exported_program,
                   compare_onnx, custom_ops_in_program, describe_check, example_input, run_onnx,
                   to_exported_program, to_onnx)
from .plain import (ExportError, PlainGridOcclusion, PlainMeanMask, check_exportable,
                    exportable)

__all__ = ["ATOL", "ExportError", "INPUT_NAME", "OUTPUT_NAME", "PlainGridOcclusion", "PlainMeanMask",
           "check_against_model", "check_exportable", "compare_exported_program", "compare_onnx",
           "custom_ops_in_program", "describe_check", "example_input", "exportable", "run_onnx",
           "to_exported_program", "to_onnx"]
