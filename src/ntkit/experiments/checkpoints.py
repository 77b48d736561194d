"""Finished experiments saved as they finish, and reused by a later run with the same configuration.

``ntkit reproduce --out DIR`` keeps one checkpoint per experiment in ``DIR/checkpoints/<ID>/``: ``result.json``
(the result and the fingerprint of what produced it) and the result's figures as PNG files, each written
atomically. A later run into the same folder reuses a checkpoint whose fingerprint equals its own (the same
experiment configuration, seed, device, data set, quick/full mode and ntkit version) if that experiment finished
without error; any other experiment runs again and its checkpoint is replaced.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from ..report import ExperimentResult, to_jsonable
from ..report.files import atomic_write
from .context import RunContext
from .registry import Experiment

__all__ = ["CheckpointStore", "fingerprint"]

FORMAT = 1


def fingerprint(exp: Experiment, ctx: RunContext) -> str:
    """A hash of everything that determines ``exp``'s result in the run ``ctx`` (its configuration, the seed,
    device, data set, mode and ntkit version)."""
    from .. import __version__

    payload: dict[str, Any] = {
        "format": FORMAT,
        "id": exp.id,
        "config": to_jsonable(exp.config(ctx.quick)),
        "seed": ctx.seed,
        "device": ctx.device,
        "dataset": ctx.dataset,
        "quick": ctx.quick,
        "ntkit": __version__,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:20]


class CheckpointStore:
    """The checkpoints under ``root`` (one folder per experiment id). ``reuse=False``: :meth:`load` finds
    nothing (every experiment runs again; its checkpoint is still saved). ``reused`` lists the ids :meth:`load`
    returned a checkpoint for."""

    def __init__(self, root: Path, *, reuse: bool = True) -> None:
        self.root = Path(root)
        self.reuse = reuse
        self.reused: list[str] = []

    def load(self, exp: Experiment, ctx: RunContext) -> ExperimentResult | None:
        """The saved result of ``exp`` if it finished ok with this run's fingerprint and all its figures are
        there; else None."""
        if not self.reuse:
            return None
        folder = self.root / exp.id
        try:
            data = json.loads((folder / "result.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        if data.get("fingerprint") != fingerprint(exp, ctx) or data.get("result", {}).get("status") != "ok":
            return None
        result = ExperimentResult.from_dict(data["result"], root=folder)
        if any(not figure.png for figure in result.figures):  # a figure file was removed
            return None
        self.reused.append(exp.id)
        return result

    def save(self, exp: Experiment, ctx: RunContext, result: ExperimentResult) -> None:
        """Save ``result`` (figures first, then ``result.json``, each atomically) in place of ``exp``'s old one."""
        folder = self.root / exp.id
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "result.json").unlink(missing_ok=True)
        keep = {f"{figure.name}.png" for figure in result.figures}
        for old in folder.glob("*.png"):
            if old.name not in keep:
                old.unlink()
        for figure in result.figures:
            atomic_write(folder / f"{figure.name}.png", figure.png)
        payload = {"format": FORMAT, "fingerprint": fingerprint(exp, ctx), "result": result.to_dict(figure_dir=".")}
        atomic_write(folder / "result.json", json.dumps(payload, indent=2, allow_nan=False) + "\n")
