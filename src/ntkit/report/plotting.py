"""Matplotlib figures without pyplot: object-oriented ``Figure`` on the Agg canvas.

Nothing here touches pyplot's global state or the user's backend, so experiments can draw in any process
(headless CI, a notebook) and figures are freed when dropped.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from matplotlib.typing import RcKeyType

__all__ = ["STYLE", "figure_png", "new_figure", "plot_style"]

# A quiet, readable default for every report figure.
STYLE: dict[RcKeyType, Any] = {
    "font.size": 9,
    "axes.titlesize": 10,
    "axes.labelsize": 9,
    "legend.fontsize": 8,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "lines.linewidth": 1.5,
    "lines.markersize": 4,
}


@contextlib.contextmanager
def plot_style() -> Iterator[None]:
    """Draw report figures inside this context: it applies :data:`STYLE` (restored on exit)."""
    import matplotlib as mpl

    with mpl.rc_context(STYLE):
        yield


def new_figure(ncols: int = 1, nrows: int = 1, *, panel_size: tuple[float, float] = (3.6, 3.0)) -> tuple[Any, Any]:
    """A ``matplotlib.figure.Figure`` with an Agg canvas and a grid of axes: returns ``(fig, axes)``, ``axes``
    a flat list (one entry per panel, row by row). Call it (and draw) inside :func:`plot_style`."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(panel_size[0] * ncols, panel_size[1] * nrows), layout="constrained")
    FigureCanvasAgg(fig)
    return fig, fig.subplots(nrows, ncols, squeeze=False).ravel().tolist()


def figure_png(fig: Any, *, dpi: int = 110) -> bytes:
    """PNG bytes of a matplotlib figure."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()
