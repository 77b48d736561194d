"""The ``ntkit`` command. ``ntkit reproduce`` will run the paper's experiments; for now it runs a short
demo of the capabilities that exist."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from torch import nn

from .empirical import empirical_ntk


def _demo(out: Path) -> dict:
    from sklearn.datasets import load_digits

    x, _ = load_digits(return_X_y=True)
    x = torch.tensor(x[:64], dtype=torch.float64) / 16.0
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 1)).double()
    ntk = empirical_ntk(model, x)
    eig = torch.linalg.eigvalsh(ntk)
    result = {
        "n": x.shape[0],
        "ntk_trace": float(ntk.trace()),
        "ntk_eig_min": float(eig[0]),
        "ntk_eig_max": float(eig[-1]),
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(result, indent=2))
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ntkit")
    sub = parser.add_subparsers(dest="command", required=True)
    rep = sub.add_parser("reproduce", help="reproduce the paper's experiments")
    rep.add_argument("--quick", action="store_true")
    rep.add_argument("--out", type=Path, default=Path("ntkit-report"))
    args = parser.parse_args(argv)
    result = _demo(args.out)
    print(json.dumps(result, indent=2))
    return 0
