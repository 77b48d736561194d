"""Train-train kernels prepared once per predictor: regularized float64 matrices, their eigensystems and
Cholesky factors, each computed on first use and cached."""

from __future__ import annotations

from collections.abc import Callable

import torch

from ._cholesky import CholeskySolver
from ._eigen import Eigensystem, eigh_psd, input_eps, regularize, symmetric_part

__all__ = ["TrainKernels"]


class TrainKernels:
    """Named train-train kernel matrices (D, D), e.g. ``{"ntk": Θ, "nngp": K}``, for one training set.

    ``get(name)`` returns the raw matrix (in any dtype, already in matrix layout); it is called at most once
    per name. ``diag_reg`` is added to every train-train kernel: ``diag_reg`` × its mean diagonal, or
    ``diag_reg`` itself with ``absolute``. Linear algebra runs in ``dtype``.
    """

    def __init__(
        self,
        get: Callable[[str], torch.Tensor],
        label: Callable[[str], str],
        *,
        diag_reg: float,
        absolute: bool,
        dtype: torch.dtype,
    ):
        self._get = get
        self._label = label
        self._diag_reg = diag_reg
        self._absolute = absolute
        self.dtype = dtype
        self._matrices: dict[str, torch.Tensor] = {}
        self._eps: dict[str, float] = {}
        self._eigen: dict[str, Eigensystem] = {}
        self._solvers: dict[str, CholeskySolver] = {}
        self._projected: dict[tuple[str, str], torch.Tensor] = {}
        self._input_dtypes: dict[str, torch.dtype] = {}

    def input_dtype(self, name: str) -> torch.dtype:
        """The dtype the kernel was given in."""
        self.matrix(name)
        return self._input_dtypes[name]

    def matrix(self, name: str) -> torch.Tensor:
        """The symmetrized, regularized kernel in ``dtype``."""
        if name not in self._matrices:
            raw = self._get(name)
            eps = input_eps(raw.dtype, self.dtype)
            self._input_dtypes[name] = raw.dtype
            k = symmetric_part(raw.to(self.dtype), self._label(name), eps)
            self._matrices[name] = regularize(k, self._diag_reg, self._absolute)
            self._eps[name] = eps
        return self._matrices[name]

    def eigen(self, name: str) -> Eigensystem:
        if name not in self._eigen:
            k = self.matrix(name)
            self._eigen[name] = eigh_psd(k, self._label(name), self._eps[name])
        return self._eigen[name]

    def solver(self, name: str) -> CholeskySolver:
        if name not in self._solvers:
            k = self.matrix(name)
            self._solvers[name] = CholeskySolver(k, self._label(name), self._eps[name])
        return self._solvers[name]

    def in_eigenbasis(self, name: str, basis: str) -> torch.Tensor:
        """Vᵀ K_name V with V the eigenvectors of kernel ``basis`` (cached)."""
        key = (name, basis)
        if key not in self._projected:
            v = self.eigen(basis).vectors
            self._projected[key] = v.T @ self.matrix(name) @ v
        return self._projected[key]
