"""Train-train kernels prepared once per predictor: regularized float64 matrices, their eigensystems and
Cholesky factors, each computed on first use and cached."""

from __future__ import annotations

from collections.abc import Callable

import torch

from .cholesky import CholeskySolver
from .eigen import Eigensystem, check_factorization_fits, eigh_psd, input_eps, regularize, symmetric_part

__all__ = ["TrainKernels"]


class TrainKernels:
    """Named train-train kernel matrices (D, D), e.g. ``{"ntk": Θ, "nngp": K}``, for one training set.

    ``get(name)`` returns the raw matrix (in any dtype, already in matrix layout); it is called at most once
    per name. ``diag_reg`` regularizes only a kernel that is inverted (neural-tangents' rule): :meth:`matrix`,
    :meth:`eigen` and :meth:`solver` give K + δ I with δ = ``diag_reg`` × its mean diagonal (or ``diag_reg`` itself
    with ``absolute``); :meth:`prior` gives K without it, the covariance of the initial outputs f_0 (the NNGP K
    inside the "ntk" posterior covariance). Linear algebra runs in ``dtype``.
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
        self._added: dict[str, float] = {}
        self._priors: dict[str, torch.Tensor] = {}

    def input_dtype(self, name: str) -> torch.dtype:
        """The dtype the kernel was given in."""
        self.matrix(name)
        return self._input_dtypes[name]

    def matrix(self, name: str) -> torch.Tensor:
        """The symmetrized, regularized kernel in ``dtype`` (the one that is inverted)."""
        if name not in self._matrices:
            raw = self._get(name)
            check_factorization_fits(raw.shape[0], self.dtype, raw.device, self._label(name))
            eps = input_eps(raw.dtype, self.dtype)
            self._input_dtypes[name] = raw.dtype
            k = symmetric_part(raw.to(self.dtype), self._label(name), eps)
            self._added[name] = regularize(k, self._diag_reg, self._absolute)
            self._matrices[name] = k
            self._eps[name] = eps
        return self._matrices[name]

    def prior(self, name: str) -> torch.Tensor:
        """The symmetrized kernel in ``dtype`` without ``diag_reg``: the covariance of f_0 on the training set."""
        k = self.matrix(name)
        if self._added[name] == 0:
            return k
        if name not in self._priors:
            prior = k.clone()
            prior.diagonal().sub_(self._added[name])
            self._priors[name] = prior
        return self._priors[name]

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
        """Vᵀ K_name V with K_name the :meth:`prior` (unregularized) and V the eigenvectors of kernel ``basis``
        (cached)."""
        key = (name, basis)
        if key not in self._projected:
            v = self.eigen(basis).vectors
            self._projected[key] = v.T @ self.prior(name) @ v
        return self._projected[key]
