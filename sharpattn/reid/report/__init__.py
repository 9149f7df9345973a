"""What people look at: logs while training, curves, masks, ranked lists and report.md after."""

from .plots import plot_attention_masks, plot_training_curves
from .summary import format_metrics_table, write_pictures, write_report
from .visualize import plot_ranked_lists

__all__ = ["format_metrics_table", "plot_attention_masks", "plot_ranked_lists", "plot_training_curves",
           "write_pictures", "write_report"]
