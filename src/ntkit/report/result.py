"""What an experiment returns: :class:`ExperimentResult` with its :class:`Table` s and :class:`Figure` s.

A result carries the paper's claim, what was measured, and a verdict computed by the experiment from its
numbers (``supported``: True / False, or None when the numbers cannot decide). Every number the report shows is
in ``metrics`` or a table, so ``results.json`` holds them all. :func:`to_jsonable` makes any of it JSON-safe.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import ShapeError

__all__ = ["ExperimentResult", "Figure", "Table", "to_jsonable", "verdict_label"]


def to_jsonable(obj: Any) -> Any:
    """A copy of ``obj`` that ``json.dumps(..., allow_nan=False)`` accepts.

    Tensors and arrays become (nested) lists, numpy scalars Python numbers, dataclasses dicts, tuples lists,
    dtypes / devices / paths strings; NaN and ±inf become ``None`` (JSON null).
    """
    if isinstance(obj, bool | str) or obj is None:
        return obj
    if isinstance(obj, int | np.integer):
        return int(obj)
    if isinstance(obj, float | np.floating):
        return float(obj) if math.isfinite(obj) else None
    if isinstance(obj, torch.Tensor):
        return to_jsonable(obj.detach().cpu().tolist())
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist())
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple | set | frozenset):
        return [to_jsonable(v) for v in obj]
    if is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_jsonable(getattr(obj, f.name)) for f in fields(obj)}
    if isinstance(obj, torch.dtype | torch.device | Path):
        return str(obj)
    return str(obj)


def verdict_label(supported: bool | None, status: str = "ok") -> str:
    """'supported', 'not supported', 'inconclusive' or 'failed'."""
    if status != "ok":
        return "failed"
    return {True: "supported", False: "not supported", None: "inconclusive"}[supported]


@dataclass
class Table:
    """A table of numbers: ``header`` (column names) and ``rows`` (lists of cells), with a title and caption."""

    title: str
    header: list[str]
    rows: list[list[Any]]
    caption: str = ""

    def __post_init__(self) -> None:
        for row in self.rows:
            if len(row) != len(self.header):
                raise ShapeError(f"table {self.title!r}: a row has {len(row)} cells for {len(self.header)} columns")


@dataclass
class Figure:
    """A rendered figure: PNG bytes, a file stem ``name`` (unique in a report, e.g. ``"E3-weights"``) and a caption."""

    name: str
    caption: str
    png: bytes = field(repr=False, default=b"")

    @classmethod
    def from_matplotlib(cls, name: str, fig: Any, caption: str, *, dpi: int = 110) -> Figure:
        """Render a ``matplotlib.figure.Figure`` to PNG (Agg, no display needed)."""
        from .plotting import figure_png

        return cls(name=name, caption=caption, png=figure_png(fig, dpi=dpi))


@dataclass
class ExperimentResult:
    """The outcome of one experiment.

    Attributes:
        id: ``"E1"`` .. ``"E8"``.
        title: a short title.
        claim: the paper's claim being tested, in words (with the figure it comes from).
            These three come from the experiment registry, which fills them in
            (:meth:`ntkit.experiments.Experiment.identify`).
        measured: what was measured, in words, with the key numbers.
        supported: the verdict computed from the numbers; ``None`` when they cannot decide.
        verdict: one sentence that says why, from the numbers.
        metrics: every number shown (JSON-safe after :func:`to_jsonable`).
        tables, figures: what the report draws.
        config: the configuration the experiment ran with.
        runtime_s: wall time, filled in by the runner.
        status: ``"ok"`` or ``"failed"`` (then ``error`` holds the traceback).
    """

    id: str = ""
    title: str = ""
    claim: str = ""
    measured: str = ""
    supported: bool | None = None
    verdict: str = ""
    metrics: dict[str, Any] = field(default_factory=dict)
    tables: list[Table] = field(default_factory=list)
    figures: list[Figure] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)
    runtime_s: float | None = None
    status: str = "ok"
    error: str | None = None

    @property
    def label(self) -> str:
        return verdict_label(self.supported, self.status)

    def to_dict(self, figure_dir: str = "figures") -> dict[str, Any]:
        """JSON-safe dict; figures are referenced by file (``figure_dir/NAME.png``), not embedded."""
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("figures", "tables")}
        out["verdict_label"] = self.label
        out["tables"] = [to_jsonable(t) for t in self.tables]
        out["figures"] = [
            {"name": f.name, "caption": f.caption, "file": f"{figure_dir}/{f.name}.png"} for f in self.figures
        ]
        jsonable: dict[str, Any] = to_jsonable(out)
        return jsonable

    @classmethod
    def from_dict(cls, data: dict[str, Any], root: Path | None = None) -> ExperimentResult:
        """Inverse of :meth:`to_dict`; figure PNGs are read from ``root`` when given and present."""
        kwargs = {f.name: data[f.name] for f in fields(cls) if f.name in data and f.name not in ("figures", "tables")}
        figs = []
        for f in data.get("figures", []):
            path = root / f["file"] if root is not None else None
            png = path.read_bytes() if path is not None and path.exists() else b""
            figs.append(Figure(f["name"], f["caption"], png))
        tables = [Table(**t) for t in data.get("tables", [])]
        return cls(**kwargs, tables=tables, figures=figs)
