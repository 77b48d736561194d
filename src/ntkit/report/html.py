"""The report folder: a self-contained ``index.html``, ``figures/*.png`` and ``results.json``.

``index.html`` needs no network and no other file: CSS is inline and figures are embedded as base64 PNG
(they are also written to ``figures/`` for reuse). ``results.json`` holds every number shown (NaN → null).
"""

from __future__ import annotations

import base64
import html
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..errors import InvalidArgumentError
from .files import atomic_write
from .result import ExperimentResult, to_jsonable

__all__ = ["load_results", "write_report"]

TITLE = "Wide neural networks evolve as linear models"
PAPER = (
    "Lee, Xiao, Schoenholz, Bahri, Novak, Sohl-Dickstein, Pennington (2019), “Wide Neural Networks of Any Depth "
    "Evolve as Linear Models Under Gradient Descent”, NeurIPS 2019, arXiv:1902.06720"
)
RESULTS_FORMAT = 1

_CSS = """
:root { --fg:#1d2330; --muted:#5b6475; --line:#dde1e8; --bg:#ffffff; --panel:#f6f7f9;
        --ok:#1a7f37; --ok-bg:#dafbe1; --bad:#b42318; --bad-bg:#fee4e2; --na:#6b7280; --na-bg:#eef0f3;
        --fail:#7a1010; --fail-bg:#f9d6d6; --accent:#2450a6; }
* { box-sizing: border-box; }
body { margin:0; background:var(--bg); color:var(--fg);
       font:15px/1.55 -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; }
main { max-width: 1080px; margin: 0 auto; padding: 28px 28px 60px; }
header h1 { font-size: 26px; margin: 0 0 4px; letter-spacing: -0.01em; }
header .sub { color: var(--muted); margin: 0 0 4px; }
header .paper { color: var(--muted); font-size: 13px; margin: 0; }
h2 { font-size: 20px; margin: 40px 0 12px; padding-bottom: 6px; border-bottom: 1px solid var(--line);
     display: flex; align-items: center; gap: 10px; flex-wrap: wrap; }
h2 .id { color: var(--accent); font-variant-numeric: tabular-nums; }
table { border-collapse: collapse; width: 100%; font-size: 13.5px; margin: 10px 0 18px; }
th, td { text-align: left; padding: 6px 10px; border-bottom: 1px solid var(--line); vertical-align: top; }
th { background: var(--panel); font-weight: 600; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
table caption { caption-side: top; text-align: left; color: var(--muted); font-size: 13px; padding: 0 0 6px; }
table caption b { color: var(--fg); }
.summary td:first-child a { color: var(--accent); font-weight: 600; text-decoration: none; }
.badge { display: inline-block; padding: 1px 9px; border-radius: 10px; font-size: 12.5px; font-weight: 600;
         white-space: nowrap; }
.badge.supported { color: var(--ok); background: var(--ok-bg); }
.badge.not-supported { color: var(--bad); background: var(--bad-bg); }
.badge.inconclusive { color: var(--na); background: var(--na-bg); }
.badge.failed { color: var(--fail); background: var(--fail-bg); }
dl.claim { display: grid; grid-template-columns: 130px 1fr; gap: 6px 16px; margin: 6px 0 16px; }
dl.claim dt { color: var(--muted); font-weight: 600; }
dl.claim dd { margin: 0; }
figure { margin: 14px 0 22px; }
figure img { max-width: 100%; height: auto; border: 1px solid var(--line); border-radius: 4px; display: block; }
figcaption { color: var(--muted); font-size: 13.5px; margin-top: 6px; max-width: 900px; }
figcaption b { color: var(--fg); }
details { margin: 8px 0; }
summary { cursor: pointer; color: var(--accent); font-size: 14px; }
pre { background: var(--panel); border: 1px solid var(--line); border-radius: 4px; padding: 10px 12px;
      font-size: 12.5px; overflow-x: auto; white-space: pre-wrap; }
pre.error { background: var(--fail-bg); border-color: #f0b4b4; }
p.runtime { color: var(--muted); font-size: 13px; }
footer { margin-top: 48px; color: var(--muted); font-size: 12.5px; border-top: 1px solid var(--line);
         padding-top: 10px; }
"""


def _e(text: Any) -> str:
    return html.escape(str(text), quote=True)


def _cell(value: Any) -> tuple[str, bool]:
    """(formatted text, is_number)."""
    if value is None:
        return "–", True
    if isinstance(value, bool):
        return ("yes" if value else "no"), False
    if isinstance(value, int):
        return str(value), True
    if isinstance(value, float):
        return (f"{value:.4g}" if value == value else "NaN"), True
    return str(value), False


def _table_html(
    header: Sequence[str], rows: Sequence[Sequence[Any]], caption: str = "", *, show_header: bool = True
) -> str:
    """An HTML table; ``caption`` is already HTML. Columns whose cells are all numbers are right-aligned."""
    cells = [[_cell(v) for v in row] for row in rows]
    numeric = [bool(cells) and all(c[i][1] for c in cells) for i in range(len(header))]
    out = ["<table>"]
    if caption:
        out.append(f"<caption>{caption}</caption>")
    if show_header:
        out.append(
            "<tr>"
            + "".join(f'<th class="{"num" if n else ""}">{_e(h)}</th>' for h, n in zip(header, numeric, strict=True))
            + "</tr>"
        )
    for row in cells:
        out.append(
            "<tr>"
            + "".join(f'<td class="{"num" if n else ""}">{_e(t)}</td>' for (t, _), n in zip(row, numeric, strict=True))
            + "</tr>"
        )
    out.append("</table>")
    return "\n".join(out)


def _badge(result: ExperimentResult) -> str:
    label = result.label
    return f'<span class="badge {label.replace(" ", "-")}">{_e(label)}</span>'


def _flatten(prefix: str, value: Any, out: list[list[Any]]) -> None:
    if isinstance(value, Mapping):
        for k, v in value.items():
            _flatten(f"{prefix}.{k}" if prefix else str(k), v, out)
    elif isinstance(value, list) and value and all(isinstance(v, int | float) or v is None for v in value):
        shown = ", ".join(_cell(v)[0] for v in value[:12]) + (f", … ({len(value)} values)" if len(value) > 12 else "")
        out.append([prefix, f"[{shown}]"])
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _flatten(f"{prefix}[{i}]", v, out)
    else:
        out.append([prefix, value])


def _fmt_seconds(s: float | None) -> str:
    if s is None:
        return "–"
    return f"{s:.1f} s" if s < 120 else f"{s / 60:.1f} min"


def _experiment_html(r: ExperimentResult) -> str:
    parts = [f'<section class="experiment" id="{_e(r.id)}">']
    parts.append(f'<h2><span class="id">{_e(r.id)}</span> {_e(r.title)} {_badge(r)}</h2>')
    parts.append('<dl class="claim">')
    parts.append(f"<dt>Paper’s claim</dt><dd>{_e(r.claim)}</dd>")
    if r.measured:
        parts.append(f"<dt>Measured</dt><dd>{_e(r.measured)}</dd>")
    if r.verdict:
        parts.append(f"<dt>Verdict</dt><dd>{_e(r.verdict)}</dd>")
    parts.append("</dl>")
    if r.status != "ok" and r.error:
        parts.append(f'<pre class="error">{_e(r.error)}</pre>')
    for f in r.figures:
        data = base64.b64encode(f.png).decode("ascii")
        parts.append(
            f'<figure id="{_e(f.name)}"><img src="data:image/png;base64,{data}" alt="{_e(f.caption)}">'
            f"<figcaption><b>Figure {_e(f.name)}.</b> {_e(f.caption)}</figcaption></figure>"
        )
    for t in r.tables:
        caption = f"<b>{_e(t.title)}.</b> {_e(t.caption)}" if t.caption else f"<b>{_e(t.title)}.</b>"
        parts.append(_table_html(t.header, t.rows, caption))
    if r.metrics:
        rows: list[list[Any]] = []
        _flatten("", to_jsonable(r.metrics), rows)
        parts.append(f"<details><summary>All numbers ({len(rows)})</summary>")
        parts.append(_table_html(["metric", "value"], rows))
        parts.append("</details>")
    if r.config:
        cfg = json.dumps(to_jsonable(r.config), indent=2)
        parts.append(f"<details><summary>Configuration</summary><pre>{_e(cfg)}</pre></details>")
    parts.append(f'<p class="runtime">Run time: {_fmt_seconds(r.runtime_s)}</p>')
    parts.append("</section>")
    return "\n".join(parts)


def _summary_html(results: Sequence[ExperimentResult]) -> str:
    head = ["Experiment", "Paper’s claim", "Measured", "Verdict", "Time"]
    rows = []
    for r in results:
        rows.append(
            "<tr>"
            f'<td><a href="#{_e(r.id)}">{_e(r.id)}</a><br>{_e(r.title)}</td>'
            f"<td>{_e(r.claim)}</td><td>{_e(r.measured or r.verdict)}</td>"
            f"<td>{_badge(r)}</td><td class='num'>{_e(_fmt_seconds(r.runtime_s))}</td>"
            "</tr>"
        )
    header = "".join(f"<th{' class=num' if h == 'Time' else ''}>{h}</th>" for h in head)
    return f'<table class="summary"><tr>{header}</tr>\n' + "\n".join(rows) + "</table>"


def _run_html(run: Mapping[str, Any]) -> str:
    keys = [
        ("command", "Command"),
        ("mode", "Configuration"),
        ("dataset", "Data set"),
        ("seed", "Seed"),
        ("device", "Device"),
        ("started", "Started"),
        ("total_runtime_s", "Total run time"),
    ]
    rows = []
    for key, label in keys:
        if key in run:
            value = _fmt_seconds(run[key]) if key == "total_runtime_s" else run[key]
            rows.append([label, value])
    if run.get("reused"):
        rows.append(["Reused from an earlier run", ", ".join(run["reused"]) + " (same configuration, checkpoints/)"])
    if run.get("interrupted"):
        rows.append(["Interrupted", "yes: this report holds the experiments that finished before Ctrl-C"])
    env = run.get("environment", {})
    rows.extend([name, value] for name, value in env.items() if name != "device")
    return _table_html(["", ""], rows, show_header=False)


def write_report(
    results: Sequence[ExperimentResult], out_dir: str | Path, *, run: Mapping[str, Any] | None = None
) -> Path:
    """Write ``index.html``, ``figures/*.png`` and ``results.json`` into ``out_dir`` (created); return the HTML path.

    Every file is written atomically (a temporary file, then ``os.replace``), so an interrupted write leaves the
    previous report whole. PNG files in ``figures/`` that are not figures of ``results`` (left by an earlier run
    into the same folder) are removed.

    ``run``: how the report was made (``command``, ``mode``, ``dataset``, ``seed``, ``device``, ``started``,
    ``total_runtime_s``, ``environment``: a dict of versions); shown at the top and in the last section.
    """
    out = Path(out_dir)
    fig_dir = out / "figures"
    fig_dir.mkdir(parents=True, exist_ok=True)
    names = [f.name for r in results for f in r.figures]
    if len(set(names)) != len(names):
        raise InvalidArgumentError(f"figure names must be unique in a report, got {names}")
    for r in results:
        for f in r.figures:
            atomic_write(fig_dir / f"{f.name}.png", f.png)
    for stale in set(fig_dir.glob("*.png")) - {fig_dir / f"{name}.png" for name in names}:
        stale.unlink()
    run = dict(run or {})

    payload = {"format": RESULTS_FORMAT, "run": to_jsonable(run), "experiments": [r.to_dict() for r in results]}
    atomic_write(out / "results.json", json.dumps(payload, indent=2, allow_nan=False) + "\n")

    sub = ", ".join(
        str(x)
        for x in (
            f"{run['mode']} run" if "mode" in run else None,
            f"data set {run['dataset']}" if "dataset" in run else None,
            f"seed {run['seed']}" if "seed" in run else None,
            run.get("started"),
        )
        if x
    )
    doc = [
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>ntkit report: {_e(TITLE)}</title>",
        f"<style>{_CSS}</style></head><body><main>",
        f"<header><h1>{_e(TITLE)}</h1>",
        f'<p class="sub">Reproduced with ntkit{" — " + _e(sub) if sub else ""}</p>',
        f'<p class="paper">{_e(PAPER)}</p></header>',
        '<section id="summary"><h2>Summary</h2>',
        _summary_html(results),
        "</section>",
        *(_experiment_html(r) for r in results),
        '<section id="environment"><h2>How this report was made</h2>',
        _run_html(run),
        "</section>",
        "<footer>Generated by <code>ntkit reproduce</code>. Every number shown is in results.json; figures are in "
        "figures/.</footer>",
        "</main></body></html>",
    ]
    path = out / "index.html"
    atomic_write(path, "\n".join(doc))
    return path


def load_results(path: str | Path) -> tuple[dict[str, Any], list[ExperimentResult]]:
    """Read a ``results.json`` written by :func:`write_report`: ``(run, results)``, figures read from beside it."""
    path = Path(path)
    data = json.loads(path.read_text())
    return data["run"], [ExperimentResult.from_dict(d, root=path.parent) for d in data["experiments"]]
