"""A GPyTorch kernel for infinite-width networks (the ``gpytorch`` extra, ``pip install 'ntkit[gpytorch]'``, which
also installs BoTorch; docs/integrations.md).

:class:`NeuralKernel` is the NNGP or NTK of an architecture as a ``gpytorch.kernels.Kernel`` whose ``W_std`` and
``b_std`` (shared by all weight layers) are positive-constrained parameters, so ``ExactGP`` models fit them with
``ExactMarginalLogLikelihood`` and ``torch.optim``, and BoTorch's ``SingleTaskGP`` with ``fit_gpytorch_mll``.

GPyTorch solves exactly (Cholesky) only up to ``gpytorch.settings.max_cholesky_size`` points (800 by default);
above that it switches to iterative, approximate solves. For exact results with more training points, wrap
training and prediction in ``with gpytorch.settings.max_cholesky_size(n):`` with n above the number of points.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from ._adapters import kernel_diagonal, kernel_matrix, require, with_shared_std
from .errors import InvalidArgumentError, ShapeError, UnsupportedError

require("gpytorch", "gpytorch", "ntkit.gpytorch")

from gpytorch.constraints import Interval, Positive  # noqa: E402
from gpytorch.kernels import Kernel  # noqa: E402

__all__ = ["NeuralKernel"]


class NeuralKernel(Kernel):  # type: ignore[misc]
    """The infinite-width NNGP (``get="nngp"``) or NTK (``get="ntk"``) of ``architecture`` as a GPyTorch kernel.

    k(x, x') is computed by ``nk.kernel`` for the architecture with every weight layer's ``W_std`` and ``b_std``
    replaced by this kernel's two parameters (layers without a bias keep none), in the inputs' dtype and on their
    device, differentiable in the parameters. Widths play no role.

    Shapes: ``x1`` (*batch, N1, D) and ``x2`` (*batch, N2, D) give (*batch, N1, N2), or (*batch, N1) with
    ``diag=True``; ``input_shape`` reshapes each D-vector for architectures that take images (e.g. (1, 8, 8)).
    ``batch_shape`` gives the kernel one (W_std, b_std) per batch entry (each ``(*batch_shape, 1, 1)``), as for
    BoTorch's batched multi-output models; batches are computed one entry at a time.

    Args:
        architecture: a torch module made of ``ntkit.nn`` layers and/or registered torch layers (``nk.kernel``).
            It is kept out of the GPyTorch module's parameters (its weights play no role in the kernel).
        get: "nngp" or "ntk".
        W_std, b_std: initial values (> 0).
        W_std_constraint, b_std_constraint: GPyTorch constraints (default ``Positive()``, a softplus).
        input_shape: the shape each input vector is reshaped to, or None.
        **kwargs: ``batch_shape``, ``active_dims`` as for every GPyTorch kernel.
    """

    has_lengthscale = False

    def __init__(
        self,
        architecture: nn.Module,
        get: str = "ntk",
        W_std: float = 1.0,
        b_std: float = 0.1,
        W_std_constraint: Interval | None = None,
        b_std_constraint: Interval | None = None,
        input_shape: tuple[int, ...] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if not isinstance(architecture, nn.Module):
            raise InvalidArgumentError(f"architecture must be a torch.nn.Module, got {type(architecture).__name__}.")
        if get not in ("nngp", "ntk"):
            raise InvalidArgumentError(f"get must be 'nngp' or 'ntk', got {get!r}.")
        for name, value in (("W_std", W_std), ("b_std", b_std)):
            if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
                raise InvalidArgumentError(f"{name} must be a finite number > 0, got {value!r}.")
        # not a submodule: its weights are no parameters of the GP model
        object.__setattr__(self, "_architecture", architecture)
        self.get = get
        self.input_shape = None if input_shape is None else tuple(int(s) for s in input_shape)
        for name, constraint in (("W_std", W_std_constraint), ("b_std", b_std_constraint)):
            self.register_parameter(f"raw_{name}", nn.Parameter(torch.zeros(*self.batch_shape, 1, 1)))
            self.register_constraint(f"raw_{name}", Positive() if constraint is None else constraint)
        self.W_std = W_std
        self.b_std = b_std

    @property
    def architecture(self) -> nn.Module:
        return self._architecture  # type: ignore[no-any-return]

    @property
    def W_std(self) -> torch.Tensor:  # noqa: N802
        return self.raw_W_std_constraint.transform(self.raw_W_std)  # type: ignore[no-any-return]

    @W_std.setter
    def W_std(self, value: float | torch.Tensor) -> None:  # noqa: N802
        self._set_positive("W_std", value)

    @property
    def b_std(self) -> torch.Tensor:
        return self.raw_b_std_constraint.transform(self.raw_b_std)  # type: ignore[no-any-return]

    @b_std.setter
    def b_std(self, value: float | torch.Tensor) -> None:
        self._set_positive("b_std", value)

    def _set_positive(self, name: str, value: float | torch.Tensor) -> None:
        raw = getattr(self, f"raw_{name}")
        value = torch.as_tensor(value, dtype=raw.dtype, device=raw.device)
        constraint = getattr(self, f"raw_{name}_constraint")
        self.initialize(**{f"raw_{name}": constraint.inverse_transform(value.expand_as(raw))})

    def _inputs(self, x: torch.Tensor) -> torch.Tensor:
        """(n, D) -> (n, *input_shape)."""
        if self.input_shape is None:
            return x
        if math.prod(self.input_shape) != x.shape[-1]:
            raise ShapeError(
                f"input_shape {self.input_shape} has {math.prod(self.input_shape)} entries but the inputs have "
                f"{x.shape[-1]} features."
            )
        return x.reshape(x.shape[0], *self.input_shape)

    def _one(
        self, W_std: torch.Tensor, b_std: torch.Tensor, x1: torch.Tensor, x2: torch.Tensor, diag: bool
    ) -> torch.Tensor:
        """The kernel of one batch entry: x1 (N1, D), x2 (N2, D) -> (N1, N2), or (N1,) with ``diag``."""
        net = with_shared_std(self.architecture, W_std.reshape(()), b_std.reshape(()))
        same = x1 is x2 or (x1.shape == x2.shape and torch.equal(x1, x2))
        if diag:
            if same:
                return kernel_diagonal(net, self._inputs(x1), self.get)
            return torch.diagonal(kernel_matrix(net, self._inputs(x1), self._inputs(x2), self.get))
        # equal inputs take the symmetric path (exactly symmetric, as GPyTorch's Cholesky wants)
        return kernel_matrix(net, self._inputs(x1), None if same else self._inputs(x2), self.get)

    def forward(
        self, x1: torch.Tensor, x2: torch.Tensor, diag: bool = False, last_dim_is_batch: bool = False, **params: Any
    ) -> torch.Tensor:
        if last_dim_is_batch:
            raise UnsupportedError("NeuralKernel does not support last_dim_is_batch (deprecated in GPyTorch).")
        batch = torch.broadcast_shapes(x1.shape[:-2], x2.shape[:-2], self.batch_shape)  # type: ignore[no-untyped-call]
        if not batch:
            return self._one(self.W_std, self.b_std, x1, x2, diag)
        x1b = x1.expand(*batch, *x1.shape[-2:]).reshape(-1, *x1.shape[-2:])
        x2b = x2.expand(*batch, *x2.shape[-2:]).reshape(-1, *x2.shape[-2:])
        W_b = self.W_std.expand(*batch, 1, 1).reshape(-1)
        b_b = self.b_std.expand(*batch, 1, 1).reshape(-1)
        out = torch.stack([self._one(W_b[i], b_b[i], x1b[i], x2b[i], diag) for i in range(x1b.shape[0])])
        return out.reshape(*batch, *out.shape[1:])
