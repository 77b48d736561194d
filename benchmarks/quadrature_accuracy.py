"""Accuracy of ntkit's Gaussian quadrature (``nk.nn.Elementwise``, ``nk.nn.compose``) against closed forms.

Prints, for T = E[φ(u)φ(v)] and Ṫ = E[φ'(u)φ'(v)], the relative error at degrees 8..64 of the polar rule
ntkit uses, and of a plain Gauss-Hermite tensor grid with the same number of evaluations (the method of
neural-tangents' ElementwiseNumerical), at several variances and correlations; and, last column, the error of
what ``nk.nn.Elementwise`` returns by default (degree 32, checked to 1e-4 and refined where needed) or
"refused". References: closed forms (erf, GELU, ReLU, sin); for tanh, ELU and erf∘ReLU the polar rule at
degree 256.

    PYTHONPATH=src python benchmarks/quadrature_accuracy.py
"""

from __future__ import annotations

import math

import numpy as np
import torch

import ntkit.nn as nnk
from ntkit.errors import UnsupportedError
from ntkit.gaussian.quadrature import gaussian_cross

F64 = torch.float64
DEGREES = (8, 16, 32, 64)


def hermite_grid(f, var1, cov, var2, degree):
    """E[f(u) f(v)] on a degree x degree Gauss-Hermite grid with the Cholesky factor (the classic method)."""
    x, w = (torch.from_numpy(a) for a in np.polynomial.hermite_e.hermegauss(degree))
    w = w / w.sum()
    u = math.sqrt(var1) * x[:, None]
    v = cov / math.sqrt(var1) * x[:, None] + math.sqrt(max(var2 - cov * cov / var1, 0.0)) * x[None, :]
    return float((w[:, None] * w[None, :] * f(u) * f(v)).sum())


def checked(act, kind, t, ref):
    """Relative error of what nk.nn.Elementwise returns by default (checked to 1e-4, refined), or 'refused'."""
    quad = nnk.Elementwise(act.fn, derivative=act.derivative) if act.closed_form else act
    try:
        value = float(getattr(quad, "nngp" if kind == "T" else "ntk_factor")(*t))
    except UnsupportedError:
        return "refused"
    return f"{abs(value - ref) / max(abs(ref), 1e-300):.1e}"


def main() -> None:
    acts = {
        "erf": nnk.Erf(),
        "GELU": nnk.GELU(),
        "sin": nnk.Sin(),
        "ReLU": nnk.ReLU(),
        "tanh": nnk.Elementwise(torch.tanh),
        "ELU": nnk.Elementwise(torch.nn.functional.elu),
        "erf∘ReLU": nnk.compose(nnk.ReLU(), nnk.Erf()),
    }
    points = [(1.0, 0.5), (1.0, 0.99), (1.0, 1.0), (10.0, 0.5), (100.0, 0.9), (1e4, 0.3)]
    header = "".join(f"  polar d={d:<3d}" for d in DEGREES) + "".join(f"  Hermite d={d:<3d}" for d in DEGREES)
    print(f"{'function':10s} {'kernel':3s} {'var':>6s} {'rho':>5s}" + header + "  default (checked)")
    for name, act in acts.items():
        for var, rho in points:
            if name == "sin" and var > 10:  # E sin·sin ~ e^{-var}: relative errors of underflowing values
                continue
            var2 = 0.81 * var
            cov = rho * math.sqrt(var * var2)
            t = [torch.tensor(a, dtype=F64) for a in (var, cov, var2)]
            for kind, f, exact in (("T", act.fn, act.nngp), ("dT", act.derivative, act.ntk_factor)):
                ref = float(exact(*t)) if act.closed_form else float(gaussian_cross(f, None, *t, degree=256))
                scale = max(abs(ref), 1e-300)
                polar = [abs(float(gaussian_cross(f, None, *t, degree=d)) - ref) / scale for d in DEGREES]
                grid = [abs(hermite_grid(f, var, cov, var2, d) - ref) / scale for d in DEGREES]
                cells = "".join(f"  {e:11.1e}" for e in polar) + "".join(f"  {e:13.1e}" for e in grid)
                print(f"{name:10s} {kind:3s} {var:6.0e} {rho:5.2f}" + cells + f"  {checked(act, kind, t, ref):>9s}")


if __name__ == "__main__":
    main()
