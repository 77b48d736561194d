"""Exact Gaussian-process inference with the NNGP and NTK (theory.md §3.1-3.4).

For training set X with targets Y, test set T, NNGP K and NTK Θ (per-output kernels, Θ ⊗ I over
outputs), and ``get``:

- ``"nngp"``: the posterior of the infinitely wide Bayesian network (eq. 13),
  mean K_TX K⁻¹ Y, covariance K_TT − K_TX K⁻¹ K_XT;
- ``"ntk"``: the infinite ensemble trained by gradient descent to convergence (eq. 16, matrix form of
  theory.md §3.2), with M = Θ_TX Θ⁻¹: mean M Y, covariance K_TT + M K M^T − (M K_XT + K_TX M^T);
- ``"ntkgp"``: the GP posterior with the NTK as prior covariance (He et al. 2020),
  mean Θ_TX Θ⁻¹ Y, covariance Θ_TT − Θ_TX Θ⁻¹ Θ_XT.

``diag_reg`` regularizes only the kernel that is inverted: K for "nngp" (observation noise), Θ for "ntk" and
"ntkgp". The K inside the "ntk" covariance is the covariance of the initial outputs f_0 and stays as it is
(neural-tangents' rule, docs/predict.md).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from .._validation import format_shape, parse_get
from ..errors import ShapeError, UnsupportedError
from .args import check_dtype, check_nonnegative
from .layout import Layout, check_device, check_targets, kernel_part
from .train_kernels import TrainKernels

__all__ = [
    "GPPredictor",
    "Prediction",
    "TestKernels",
    "TrainingSet",
    "covariance_result",
    "gp_inference",
    "part_getter",
    "posterior",
    "train_kernel_getter",
]

GP_GETS = ("nngp", "ntk", "ntkgp")

#: A prediction: the mean (M, C), or (mean, covariance (M, M)).
Prediction = torch.Tensor | tuple[torch.Tensor, torch.Tensor]


def train_kernel_getter(k: object, label: str, n: int, device: torch.device) -> Callable[[str], torch.Tensor]:
    """``name -> k.name``, checked to be (N, N) per-output and on ``device``."""
    get_part = part_getter(k, label, device)

    def get(name: str) -> torch.Tensor:
        part = get_part(name)
        if part.ndim == 2 and part.shape[0] == part.shape[1] != n:
            raise ShapeError(
                f"y_train has {n} rows (training examples) but {label}.{name} {format_shape(part.shape)} is the "
                f"kernel of {part.shape[0]} examples; pass the targets of the same training examples as the kernel."
            )
        if tuple(part.shape) != (n, n):
            raise ShapeError(
                f"{label}.{name} has shape {format_shape(part.shape)}; it must be the per-output ({n}, {n}) kernel "
                "of the training set (full (N, N, O, O) kernels are for gradient_descent_mse)."
            )
        return part

    return get


def part_getter(k: object, label: str, device: torch.device) -> Callable[[str], torch.Tensor]:
    """``name -> k.name`` (or ``k[name]``) for a kernel argument, checked to be on ``device``."""

    def get(name: str) -> torch.Tensor:
        part = kernel_part(k, name, label)
        check_device(part, f"{label}.{name}", device)
        return part

    return get


class TestKernels:
    """Test-train parts (M, N) and test-test parts (M, M) of the kernels, fetched by name on first use,
    checked, in ``dtype``."""

    def __init__(
        self,
        test_train: Callable[[str], torch.Tensor],
        test_test: Callable[[str], torch.Tensor] | None,
        n_train: int,
        dtype: torch.dtype,
        labels: tuple[str, str] = ("k_test_train", "k_test_test"),
    ):
        self._test_train, self._test_test = test_train, test_test
        self._n, self.dtype, self._labels = n_train, dtype, labels
        self.n_test: int | None = None
        self._cache: dict[tuple[str, str], torch.Tensor] = {}
        self._dtypes: dict[str, torch.dtype] = {}

    def input_dtype(self, name: str) -> torch.dtype:
        """The dtype the test-train part ``name`` was given in."""
        self.test_train(name)
        return self._dtypes[name]

    def test_train(self, name: str) -> torch.Tensor:
        key = ("td", name)
        if key not in self._cache:
            part = self._test_train(name)
            if part.ndim != 2 or part.shape[1] != self._n or (self.n_test not in (None, part.shape[0])):
                raise ShapeError(
                    f"{self._labels[0]}.{name} has shape {format_shape(part.shape)}; expected (M, {self._n})"
                    + (f" with M = {self.n_test}" if self.n_test is not None else "")
                    + " (per-output test-train kernel)."
                )
            self.n_test = part.shape[0]
            self._dtypes[name] = part.dtype
            self._cache[key] = part.to(self.dtype)
        return self._cache[key]

    def test_test(self, name: str) -> torch.Tensor:
        key = ("tt", name)
        if key not in self._cache:
            getter = self._test_test
            if getter is None:
                raise ShapeError(f"a covariance needs the test-test kernel {self._labels[1]}.")
            part = getter(name)
            m = self.n_test
            if part.ndim != 2 or part.shape[0] != part.shape[1] or (m is not None and part.shape[0] != m):
                raise ShapeError(
                    f"{self._labels[1]}.{name} has shape {format_shape(part.shape)}; expected (M, M)"
                    + (f" with M = {m}" if m is not None else "")
                    + " (per-output test-test kernel)."
                )
            self._cache[key] = part.to(self.dtype)
        return self._cache[key]


def posterior(
    train: TrainKernels, y: torch.Tensor, get: str, test: TestKernels, compute_cov: bool
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Mean (M, C), or (mean, covariance (M, M)), of the ``get`` posterior (module docs) at the test points."""
    dynamics = "nngp" if get == "nngp" else "ntk"
    solver = train.solver(dynamics)
    k_td = test.test_train(dynamics)
    mean = k_td @ solver.solve(y)
    if not compute_cov:
        return mean
    if get == "ntk":
        m = solver.solve(k_td.T).T  # Θ_TX Θ⁻¹, (M, N)
        half = m @ (0.5 * train.prior("nngp") @ m.T - test.test_train("nngp").T)  # ½ M K Mᵀ − M K_XT
        cov = test.test_test("nngp") + half + half.T
    else:
        white = solver.whiten(k_td.T)  # L⁻¹ K_XT: K_TX K⁻¹ K_XT = whiteᵀ white
        cov = test.test_test(dynamics) - white.T @ white
    return mean, covariance_result(cov)


def covariance_result(cov: torch.Tensor) -> torch.Tensor:
    """A posterior covariance (..., M, M) as returned: its symmetric part, with the variances (diagonal) clamped at 0.

    A variance is a difference of two nearly equal terms (K_TT and what the training data explain); at a test point
    that equals a training point it is 0 in exact arithmetic, and round-off made it negative (-2e-16 in float64),
    which gave NaN error bars. Only entries below 0 change, so positive variances are as computed.
    """
    cov = (cov + cov.transpose(-1, -2)) / 2
    cov.diagonal(dim1=-2, dim2=-1).clamp_(min=0)
    return cov


@dataclass(frozen=True)
class TrainingSet:
    """Targets in matrix layout (N, O) in the compute dtype, their ``layout`` and original dtype, and the
    prepared train-train kernels (``kernels``, with ``diag_reg``) of a GP or ensemble prediction."""

    y: torch.Tensor
    layout: Layout
    y_dtype: torch.dtype
    kernels: TrainKernels

    @classmethod
    def build(
        cls, k_train: object, y_train: object, label: str, diag_reg: object, absolute: bool, dtype: object
    ) -> TrainingSet:
        y, layout = check_targets(y_train)
        dtype = check_dtype(dtype)
        kernels = TrainKernels(
            train_kernel_getter(k_train, label, layout.n_train, y.device),
            lambda name: f"{label}.{name}",
            diag_reg=check_nonnegative(diag_reg, "diag_reg"),
            absolute=bool(absolute),
            dtype=dtype,
        )
        return cls(layout.to_matrix(y).to(dtype), layout, y.dtype, kernels)

    @property
    def device(self) -> torch.device:
        return self.y.device

    def output(self, m: torch.Tensor, kernel_dtype: torch.dtype) -> torch.Tensor:
        """A mean (..., M, C) as (..., M, O) (or (..., M)) in the dtype of the targets and kernels."""
        return self.layout.from_matrix(m).to(torch.promote_types(self.y_dtype, kernel_dtype))


def gp_inference(
    k_train_train: object,
    y_train: torch.Tensor,
    diag_reg: float = 0.0,
    *,
    diag_reg_absolute_scale: bool = False,
    dtype: torch.dtype = torch.float64,
) -> GPPredictor:
    """Exact NNGP / NTK / NTK-GP posteriors from precomputed kernels (t = inf of the infinite ensemble).

    Args:
        k_train_train: an ``nk.Kernel`` (or any object with ``.nngp`` / ``.ntk``) or a dict with "nngp" and/or
            "ntk" tensors, each per-output (N, N), or a plain tensor (N, N): the one kernel a ``get`` needs (K for
            "nngp", Θ for "ntkgp" and the "ntk" mean). "ntk" predictions with covariance need both K and Θ, so
            they refuse plain tensors (as do the test kernels' arguments, alike).
        y_train: targets (N, O) or (N,).
        diag_reg: added to the diagonal of the train-train kernel that is inverted (K for "nngp", Θ for "ntk" and
            "ntkgp"), times its mean diagonal (or as is with ``diag_reg_absolute_scale=True``); the K inside the
            "ntk" covariance stays unregularized.
        dtype: dtype of the linear algebra (float64 by default).

    Returns:
        ``predict(get, k_test_train, k_test_test=None)``: for ``get`` in "nngp", "ntk", "ntkgp", the mean
        (M, O), or ``(mean, covariance (M, M))`` when ``k_test_test`` is given (the covariance is the same
        for every output); a dict keyed by name when ``get`` is a tuple. Cholesky factors are cached.
    """
    train = TrainingSet.build(
        _either_part(k_train_train), y_train, "k_train_train", diag_reg, diag_reg_absolute_scale, dtype
    )
    return GPPredictor(train, isinstance(k_train_train, torch.Tensor))


def _either_part(k: object) -> object:
    """A plain tensor as the kernel of whichever part is asked for (``GPPredictor`` checks that one is enough)."""
    return {"nngp": k, "ntk": k} if isinstance(k, torch.Tensor) else k


class GPPredictor:
    """See :func:`gp_inference`. ``plain_train``: the train kernel was a plain tensor (one kernel only)."""

    def __init__(self, train: TrainingSet, plain_train: bool = False):
        self.train, self._plain_train = train, plain_train

    def __call__(
        self, get: object, k_test_train: object, k_test_test: object | None = None
    ) -> Prediction | dict[str, Prediction]:
        names, single = parse_get(get, GP_GETS)
        plain = [
            label
            for label, value in (("k_test_train", k_test_train), ("k_test_test", k_test_test))
            if isinstance(value, torch.Tensor)
        ]
        plain = ["k_train_train"] * self._plain_train + plain
        if plain and "ntk" in names and k_test_test is not None:
            raise UnsupportedError(
                f"get='ntk' with a covariance needs both the NNGP K (the initial outputs' covariance) and the NTK, "
                f"but {', '.join(plain)} is a plain tensor (one kernel); pass nk.Kernel objects or dicts "
                "{'nngp': ..., 'ntk': ...}, or leave k_test_test out for the mean only."
            )
        device = self.train.device
        test = TestKernels(
            part_getter(_either_part(k_test_train), "k_test_train", device),
            None if k_test_test is None else part_getter(_either_part(k_test_test), "k_test_test", device),
            self.train.layout.n_train,
            self.train.kernels.dtype,
        )
        out: dict[str, Prediction] = {}
        for name in names:
            result = posterior(self.train.kernels, self.train.y, name, test, k_test_test is not None)
            kernel_dtype = test.input_dtype("nngp" if name == "nngp" else "ntk")
            if isinstance(result, tuple):
                out[name] = (self.train.output(result[0], kernel_dtype), result[1].to(kernel_dtype))
            else:
                out[name] = self.train.output(result, kernel_dtype)
        return out[names[0]] if single else out
