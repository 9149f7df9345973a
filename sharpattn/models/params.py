"""Extra parameters of sharp attention per block, next to SAN Table II."""

from __future__ import annotations

from torch import nn

from ..modules.collect import attention_blocks
from ..modules.context import ContextAwareUnit

# SAN Table II, millions of extra parameters per block: the soft attention network it compares
# with (its mask branches) and SAN's context-aware units.
TABLE_II_MILLIONS = {
    "soft attention network [19]": {"block1": 15.84, "block2": 15.08, "block3": 12.06},
    "SAN (paper)": {"block1": 0.51, "block2": 2.03, "block3": 8.13},
}


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def context_unit_parameters(channels: int) -> int:
    """Parameters of a ContextAwareUnit for a block of `channels` channels."""
    return count_parameters(ContextAwareUnit(channels))


def extra_parameters(model: nn.Module) -> dict[str, int]:
    """Parameters each SharpAttentionBlock adds to its stage (context unit + gate), by name."""
    return {name: count_parameters(block) - count_parameters(block.stage)
            for name, block in attention_blocks(model)}


def parameter_report(model: nn.Module | None = None) -> str:
    """A markdown table: Table II's figures and the counts of this implementation.

    With a model, its own blocks' extra parameters; without, those of san_resnet50's context
    units for blocks 1-3.
    """
    if model is None:
        ours = {f"block{i}": context_unit_parameters(c)
                for i, c in ((1, 256), (2, 512), (3, 1024))}
    else:
        ours = {name.replace("layer", "block"): n for name, n in extra_parameters(model).items()}
    columns = sorted(set(ours) | {"block1", "block2", "block3"})
    lines = ["| extra parameters (M) | " + " | ".join(columns) + " | total |",
             "|---" * (len(columns) + 2) + "|"]
    for label, row in TABLE_II_MILLIONS.items():
        values = [row.get(c) for c in columns]
        cells = ["-" if v is None else f"{v:.2f}" for v in values]
        total = sum(v for v in values if v is not None)
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {total:.2f} |")
    cells = [f"{ours[c] / 1e6:.4f}" if c in ours else "-" for c in columns]
    lines.append("| sharpattn (exact count) | " + " | ".join(cells)
                 + f" | {sum(ours.values()) / 1e6:.4f} |")
    return "\n".join(lines)
