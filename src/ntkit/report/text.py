"""The plain-text summary table printed at the end of a run."""

from __future__ import annotations

import textwrap
from collections.abc import Sequence

from .result import ExperimentResult

__all__ = ["summary_table"]


def _fmt_time(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return f"{seconds:.1f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def summary_table(results: Sequence[ExperimentResult], *, width: int = 110) -> str:
    """One block per experiment: id, title, verdict and time on the first line, the verdict sentence wrapped
    below it. Ends with a count of each verdict."""
    id_w = max([2, *(len(r.id) for r in results)])
    title_w = min(44, max([10, *(len(r.title) for r in results)]))
    head = f"{'ID':<{id_w}}  {'Experiment':<{title_w}}  {'Verdict':<13}  {'Time':>8}"
    lines = [head, "-" * max(len(head), min(width, 100))]
    indent = " " * (id_w + 2)
    for r in results:
        title = r.title if len(r.title) <= title_w else r.title[: title_w - 1] + "…"
        lines.append(f"{r.id:<{id_w}}  {title:<{title_w}}  {r.label:<13}  {_fmt_time(r.runtime_s):>8}")
        text = r.verdict or r.measured
        if text:
            lines.extend(textwrap.wrap(text, width=width, initial_indent=indent, subsequent_indent=indent))
    counts: dict[str, int] = {}
    for r in results:
        counts[r.label] = counts.get(r.label, 0) + 1
    lines.append("-" * len(lines[1]))
    lines.append(", ".join(f"{n} {label}" for label, n in counts.items()) or "no experiments")
    return "\n".join(lines)
