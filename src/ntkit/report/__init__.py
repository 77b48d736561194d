"""Experiment results and the self-contained report (``index.html``, ``figures/``, ``results.json``).

Needs matplotlib only to draw figures (:func:`new_figure`, :meth:`Figure.from_matplotlib`).
"""

from .environment import collect_environment, device_description
from .html import load_results, write_report
from .plotting import figure_png, new_figure, plot_style
from .result import ExperimentResult, Figure, Table, to_jsonable, verdict_label
from .text import summary_table

__all__ = [
    "ExperimentResult",
    "Figure",
    "Table",
    "collect_environment",
    "device_description",
    "figure_png",
    "load_results",
    "new_figure",
    "plot_style",
    "summary_table",
    "to_jsonable",
    "verdict_label",
    "write_report",
]
