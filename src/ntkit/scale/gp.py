"""``nk.scale.gp_inference``: GP / NTK posterior means (and variances at chosen points) from kernels too large for
the dense linear algebra of :func:`ntkit.predict.gp_inference`, which it equals on small N.

With training kernels K (NNGP) and Θ (NTK), targets Y (N, O), test points T (theory.md §3.1-3.4):

- ``get="nngp"``: mean K_TX (K + δI)⁻¹ Y, variance K_tt − K_tX (K + δI)⁻¹ K_Xt;
- ``get="ntk"``: mean Θ_TX (Θ + δI)⁻¹ Y, variance K_tt + m K mᵀ − 2 m K_Xt with m = Θ_tX (Θ + δI)⁻¹;
- ``get="ntkgp"``: mean as "ntk", variance Θ_tt − Θ_tX (Θ + δI)⁻¹ Θ_Xt.

δ = ``diag_reg`` × mean diagonal of the inverted kernel (or ``diag_reg`` itself with
``diag_reg_absolute_scale=True``) regularizes only the kernel that is inverted; the K inside the "ntk" variance
is f_0's covariance and stays as it is (theory.md §0.4, the diag_reg rule).

Solvers, both in float64: ``"cholesky"`` factors the dense kernel in place (LAPACK's blocked potrf) when it
fits the memory budget; ``"cg"`` runs preconditioned conjugate gradients (:mod:`ntkit.scale.cg`) with products
streamed tile by tile from the store (or from memory), never holding the kernel; ``"auto"`` takes Cholesky when
it fits.
"""

from __future__ import annotations

from typing import Any, Protocol

import torch

from .._memory import check_fits, resolve_budget
from .._validation import check_tensor, format_shape, parse_get
from ..errors import IllConditionedError, InvalidArgumentError, ShapeError
from ..predict.args import check_nonnegative
from .cg import Operator, conjugate_gradients
from .matrix import KernelMatrix
from .preconditioners import NystromPreconditioner, PivotedCholeskyPreconditioner

__all__ = ["ScaleGPPredictor", "gp_inference", "training_system"]

GETS = ("nngp", "ntk", "ntkgp")
METHODS = ("auto", "cholesky", "cg")
PRECONDITIONERS = ("nystrom", "pivoted_cholesky", None)


def gp_inference(
    k_train_train: Any,
    y_train: torch.Tensor,
    *,
    get: str = "ntk",
    diag_reg: float = 0.0,
    diag_reg_absolute_scale: bool = False,
    method: str = "auto",
    memory_budget: int | str | None = None,
    tol: float = 1e-10,
    max_iter: int = 1000,
    preconditioner: str | None = "nystrom",
    rank: int = 256,
    seed: int = 0,
) -> ScaleGPPredictor:
    """Fit the ``get`` posterior (module docs) on a training kernel; returns a predictor ``fit(k_test_train)``.

    Args:
        k_train_train: a :class:`~ntkit.scale.KernelStore`, a tensor (N, N) (the kernel that is inverted), or an
            ``nk.Kernel`` / dict with ``nngp`` / ``ntk``. "ntk" variances need both kernels.
        y_train: targets (N, O) or (N,).
        get: "nngp", "ntk" or "ntkgp".
        diag_reg: regularization of the inverted kernel, relative to its mean diagonal (module docs).
        method: "cholesky", "cg" or "auto" (Cholesky if the dense float64 kernel fits ``memory_budget``).
        tol, max_iter: CG stops when every output's relative residual ‖Y − A X‖ / ‖Y‖ <= tol; raises
            :class:`~ntkit.errors.NotConvergedError` after max_iter iterations.
        preconditioner: CG's preconditioner (:mod:`ntkit.scale.preconditioners`): "nystrom" (randomized
            Nyström: one pass over the kernel), "pivoted_cholesky" (greedy pivoted Cholesky: the kernel's diagonal
            and ``rank`` of its columns, read in blocks of 64), or None.
        rank, seed: the preconditioner's rank (0: none) and the Nyström's random seed.

    Returns:
        :class:`ScaleGPPredictor`: ``fit(k_test_train)`` -> mean (M, O); ``fit.variance(...)``; ``fit.method``,
        ``fit.iterations`` and ``fit.residual`` (CG) say how the system was solved.
    """
    (name,), _ = parse_get(get, GETS)
    if method not in METHODS:
        raise InvalidArgumentError(f"method must be one of {METHODS}, got {method!r}.")
    if preconditioner not in PRECONDITIONERS:
        raise InvalidArgumentError(f"preconditioner must be one of {PRECONDITIONERS}, got {preconditioner!r}.")
    train, y, shift = training_system(
        k_train_train, "nngp" if name == "nngp" else "ntk", y_train, diag_reg, diag_reg_absolute_scale
    )
    n = train.shape[0]
    budget = resolve_budget(memory_budget)
    dense_bytes = 8 * n * n
    if method == "auto":
        method = "cholesky" if dense_bytes <= budget else "cg"
    elif method == "cholesky":
        check_fits(dense_bytes, budget, f"the dense float64 kernel for Cholesky ({n} x {n})", "Use method='cg'.")
    if method == "cg":
        train.keep_in_memory_if_fits(budget)
    solver: _Solver = (
        _Cholesky(train, shift)
        if method == "cholesky"
        else _CG(
            train, shift, tol, max_iter, _preconditioner(train, shift, preconditioner if rank > 0 else None, rank, seed)
        )
    )
    return ScaleGPPredictor(name, k_train_train, y, solver)


def training_system(
    k_train_train: Any, name: str, y_train: torch.Tensor, diag_reg: float, absolute: bool
) -> tuple[KernelMatrix, torch.Tensor, float]:
    """The training kernel ``name`` as an operator, the targets (N, O) or (N,), both checked, and the shift
    δ = ``diag_reg`` × its mean diagonal (or ``diag_reg`` itself when ``absolute``)."""
    train = KernelMatrix.of(k_train_train, name, "k_train_train")
    n = train.shape[0]
    if train.shape != (n, n):
        raise ShapeError(f"k_train_train must be square (N, N), got {format_shape(train.shape)}.")
    y = check_tensor(y_train, "y_train", min_ndim=1)
    if y.ndim > 2 or y.shape[0] != n:
        shape = format_shape(y.shape)
        raise ShapeError(f"y_train must be ({n}, O) or ({n},) for the {n} x {n} training kernel, got {shape}.")
    diag_reg = check_nonnegative(diag_reg, "diag_reg")
    shift = diag_reg if absolute else diag_reg * float(train.diagonal().mean())
    return train, y, shift


class _Solver(Protocol):
    """``solve(B)`` = (A + δI)⁻¹ B for B (N, C) float64; ``iterations`` and ``residual`` of the last CG solve."""

    method: str
    iterations: int
    residual: float

    def solve(self, b: torch.Tensor) -> torch.Tensor: ...


class _Cholesky:
    """(K + δI) = L Lᵀ in place in one dense float64 copy (LAPACK's blocked potrf through torch, not scipy:
    benchmarks/README.md, "Tuning notes")."""

    method = "cholesky"
    iterations = 0
    residual = 0.0

    def __init__(self, train: KernelMatrix, shift: float):
        dense = train.dense()
        dense.diagonal().add_(shift)
        info = torch.empty((), dtype=torch.int32)
        torch.linalg.cholesky_ex(dense, out=(dense, info))  # in place: L overwrites the kernel
        if int(info) != 0 or not bool(torch.isfinite(dense.diagonal()).all()):
            raise IllConditionedError(
                f"{train.label} + {shift:.3g} I is not positive definite to float64 precision (Cholesky failed). Pass "
                "diag_reg (e.g. 1e-6 or more, relative to the mean diagonal), or remove duplicate training inputs."
            )
        self._chol = dense

    def solve(self, b: torch.Tensor) -> torch.Tensor:
        return torch.cholesky_solve(b, self._chol)


class _CG:
    """Preconditioned CG on K + δI with products streamed from ``train``."""

    method = "cg"
    iterations = 0
    residual = 0.0

    def __init__(self, train: KernelMatrix, shift: float, tol: float, max_iter: int, preconditioner: Operator | None):
        self._train, self._shift, self._tol, self._max_iter = train, shift, tol, max_iter
        self._preconditioner = preconditioner

    def _matvec(self, v: torch.Tensor) -> torch.Tensor:
        return self._train.matmul(v) + self._shift * v

    def solve(self, b: torch.Tensor) -> torch.Tensor:
        result = conjugate_gradients(
            self._matvec,
            b,
            preconditioner=self._preconditioner,
            tol=self._tol,
            max_iter=self._max_iter,
            label=self._train.label,
        )
        self.iterations, self.residual = result.iterations, result.residual
        return result.solution


def _preconditioner(train: KernelMatrix, shift: float, kind: str | None, rank: int, seed: int) -> Operator | None:
    n = train.shape[0]
    if kind == "nystrom":  # the sketch K Ω in the stored dtype: it only shapes P, CG's products stay float64
        return NystromPreconditioner(
            lambda v: train.matmul(v, dtype=train.dtype), n, rank, shift, seed, eps=torch.finfo(train.dtype).eps
        )
    if kind == "pivoted_cholesky":
        return PivotedCholeskyPreconditioner(train.diagonal(), train.columns, rank, shift)
    return None


class ScaleGPPredictor:
    """See :func:`gp_inference`. ``weights`` (N, O) float64 are (A + δI)⁻¹ Y."""

    def __init__(self, get: str, k_train_train: Any, y: torch.Tensor, solver: _Solver):
        self.get = get
        self._k_train = k_train_train
        self._solver = solver
        self._y_dtype = y.dtype
        self._vector = y.ndim == 1
        targets = y.reshape(y.shape[0], -1).to(torch.float64)
        self.weights = solver.solve(targets)
        self.method, self.iterations, self.residual = solver.method, solver.iterations, solver.residual
        self.n_train = targets.shape[0]

    @property
    def _inverted(self) -> str:
        return "nngp" if self.get == "nngp" else "ntk"

    def _test_train(self, k_test_train: Any, name: str) -> KernelMatrix:
        k = KernelMatrix.of(k_test_train, name, "k_test_train")
        if k.shape[1] != self.n_train:
            raise ShapeError(f"k_test_train must be (M, {self.n_train}), got {format_shape(k.shape)}.")
        return k

    def __call__(self, k_test_train: Any) -> torch.Tensor:
        """Posterior mean (M, O) (or (M,) for 1-D targets) at the test points of ``k_test_train`` (M, N)."""
        k = self._test_train(k_test_train, self._inverted)
        mean = k.matmul(self.weights)
        return (mean.squeeze(1) if self._vector else mean).to(torch.promote_types(self._y_dtype, _dtype(k)))

    def variance(self, k_test_train: Any, k_test_test: Any, points: Any = None) -> torch.Tensor:
        """Posterior variances (P,) at test points ``points`` (indices into the M test points; default all).

        ``k_test_test`` gives the test-test kernel of the posterior (K for "nngp" and "ntk", Θ for "ntkgp"): its
        diagonal (M,), the matrix (M, M), a symmetric KernelStore, or an nk.Kernel / dict. Each point costs one
        solve column (a CG column when method is "cg"); "ntk" also needs the NNGP K of k_train_train and
        k_test_train.
        """
        m = self._test_train(k_test_train, self._inverted).shape[0]
        index = torch.arange(m) if points is None else torch.as_tensor(points, dtype=torch.long).reshape(-1)
        if index.numel() == 0 or int(index.min()) < -m or int(index.max()) >= m:
            raise InvalidArgumentError(f"points must be indices of the {m} test points, got {points!r}.")
        index = index % m
        prior_name = "ntk" if self.get == "ntkgp" else "nngp"
        prior = _test_diagonal(k_test_test, prior_name, m)[index]
        cross = self._test_train(k_test_train, self._inverted).rows(index)  # (P, N)
        z = self._solver.solve(cross.T.contiguous())  # (A + δI)⁻¹ A_Xt, (N, P)
        if self.get != "ntk":
            return prior - (cross.T * z).sum(0)
        k_train = KernelMatrix.of(self._k_train, "nngp", "k_train_train")
        k_cross = self._test_train(k_test_train, "nngp").rows(index)  # K_tX (P, N)
        return prior + (z * k_train.matmul(z)).sum(0) - 2 * (z * k_cross.T).sum(0)


def _dtype(k: KernelMatrix) -> torch.dtype:
    return k.source.dtype


def _test_diagonal(k_test_test: Any, name: str, m: int) -> torch.Tensor:
    """The diagonal (M,) in float64 of the test-test kernel ``name``."""
    if isinstance(k_test_test, torch.Tensor) and k_test_test.ndim == 1:
        diag = k_test_test.to(torch.float64)
    else:
        matrix = KernelMatrix.of(k_test_test, name, "k_test_test")
        if matrix.shape != (m, m):
            raise ShapeError(f"k_test_test must be (M,) or (M, M) with M = {m}, got {format_shape(matrix.shape)}.")
        diag = matrix.diagonal()
    if diag.shape != (m,):
        raise ShapeError(f"k_test_test's diagonal must have {m} entries, got {format_shape(diag.shape)}.")
    return diag
