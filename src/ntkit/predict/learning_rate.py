"""Learning-rate limits of gradient descent on MSE for a given NTK (theory.md §2.7), in the loop's units.

With s = 2/(N·O) for ``reduction="mean"`` (torch.nn.MSELoss's default) or 2 for ``"sum"``, the
function-space step is c = lr·s per unit eigenvalue, and along an eigenvalue λ of Θ:

- gradient descent (momentum β) converges iff c·λ < 2(1 + β) for every λ > 0, so
  ``max_learning_rate = 2(1 + β) / (s·λ_max)`` (e.g. (1 + β)·N·O/λ_max for the mean loss);
- the paper's η_critical = 2/(λ_min + λ_max) (total loss ½Σ, c = η) is the step that minimizes
  max_λ |1 − cλ|, the optimal contraction; in the loop's units
  ``critical_learning_rate = 2 / (s·(λ_min + λ_max))``.

λ are the eigenvalues of the per-output (N, N) kernel (those of Θ ⊗ I) or of the full (N·O, N·O) one.
"""

from __future__ import annotations

import torch

from .._validation import check_tensor, format_shape
from ..errors import ShapeError
from .args import check_momentum, check_reduction, loss_scale
from .eigen import check_factorization_fits, check_spectrum, input_eps, symmetric_part
from .layout import Layout

__all__ = ["critical_learning_rate", "max_learning_rate"]


def max_learning_rate(
    ntk_train_train: torch.Tensor, *, n_outputs: int = 1, momentum: float = 0.0, reduction: str = "mean"
) -> float:
    """The largest ``lr`` of ``torch.optim.SGD(lr, momentum)`` on ``MSELoss(reduction)`` at which GD converges.

    Args:
        ntk_train_train: NTK on the training set, per-output (N, N) or full (N, N, O, O).
        n_outputs: O, the number of outputs trained, for a per-output kernel (a full kernel gives it).
        momentum: heavy-ball momentum β in [0, 1).
        reduction: "mean" or "sum".

    Returns:
        2(1 + β) / (s·λ_max), s = 2/(N·O) ("mean") or 2 ("sum"). At a rate above it the iteration diverges along
        the top eigenvector; at exactly this rate it oscillates without converging.
    """
    beta = check_momentum(momentum)
    _, lam_max, scale = _extreme_eigenvalues(ntk_train_train, n_outputs, reduction)
    return 2 * (1 + beta) / (scale * lam_max)


def critical_learning_rate(ntk_train_train: torch.Tensor, *, n_outputs: int = 1, reduction: str = "mean") -> float:
    """The paper's η_critical = 2/(λ_min + λ_max) (theory.md §2.7) as an ``lr`` of torch.optim.SGD on MSELoss.

    Returns 2 / (s·(λ_min + λ_max)) with s as in :func:`max_learning_rate`: the plain-GD step with the fastest
    worst-case contraction, below which Theorem 2.1 guarantees that wide networks stay close to their
    linearization.
    """
    lam_min, lam_max, scale = _extreme_eigenvalues(ntk_train_train, n_outputs, reduction)
    return 2 / (scale * (lam_min + lam_max))


def _extreme_eigenvalues(k: object, n_outputs: int, reduction: str) -> tuple[float, float, float]:
    """(λ_min, λ_max, s): the extreme eigenvalues (float64, clipped >= 0) and the MSE gradient scale."""
    k = check_tensor(k, "ntk_train_train", min_ndim=2)
    reduction = check_reduction(reduction)
    if not isinstance(n_outputs, int) or isinstance(n_outputs, bool) or n_outputs < 1:
        raise ShapeError(f"n_outputs must be a positive integer, got {n_outputs!r}.")
    n = k.shape[0]
    if k.ndim == 4 and tuple(k.shape) == (n, n, k.shape[2], k.shape[2]):
        if n_outputs not in (1, k.shape[2]):
            raise ShapeError(
                f"n_outputs = {n_outputs} but the full kernel has shape {format_shape(k.shape)} "
                f"({k.shape[2]} outputs); leave n_outputs out for a full kernel."
            )
        layout = Layout.flat(n, k.shape[2], True)
    elif k.ndim == 2 and k.shape[1] == n:
        layout = Layout.flat(n, n_outputs, False)
    else:
        raise ShapeError(f"ntk_train_train has shape {format_shape(k.shape)}; it must be (N, N) or (N, N, O, O).")
    check_factorization_fits(layout.dim, torch.float64, k.device, "ntk_train_train")
    eps = input_eps(k.dtype, torch.float64)
    matrix = symmetric_part(layout.kernel_matrix(k, "ntk_train_train").to(torch.float64), "ntk_train_train", eps)
    values = check_spectrum(torch.linalg.eigvalsh(matrix), "ntk_train_train", eps)
    return float(values[0]), float(values[-1]), loss_scale(reduction, n * layout.n_outputs)
