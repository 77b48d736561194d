"""The paper's experiments (E1-E8), their registry and run loop, and the helpers they share.

Each experiment is a module ``eN_<name>.py`` holding a configuration dataclass, its ``QUICK`` and ``FULL``
instances and a function ``fn(config, ctx) -> ExperimentResult`` registered with :func:`register`; importing this
package registers them all. Run them with :func:`run_experiments` (or ``ntkit reproduce``).
"""

from . import (
    e1_kernel_convergence,
    e2_linearization,
    e3_width_scaling,
    e4_ensemble_gp,
    e5_learning_rate,
    e6_momentum_cross_entropy,
    e7_parameterization,
    e8_kernel_accuracy,
)
from .checkpoints import CheckpointStore, fingerprint
from .context import RunContext, run_config
from .models import dense, dense_layers, mlp, readout_parameters, standard_from_ntk
from .registry import EXPERIMENTS, Experiment, known_ids, register, select
from .runner import run_experiments, run_one
from .stats import SlopeFit, accuracy, fit_loglog_slope, relative_change, rmse
from .training import SideBySideHistory, TrainHistory, log_spaced_steps, train_full_batch, train_side_by_side

__all__ = [
    "EXPERIMENTS",
    "CheckpointStore",
    "Experiment",
    "RunContext",
    "SideBySideHistory",
    "SlopeFit",
    "TrainHistory",
    "accuracy",
    "dense",
    "dense_layers",
    "e1_kernel_convergence",
    "e2_linearization",
    "e3_width_scaling",
    "e4_ensemble_gp",
    "e5_learning_rate",
    "e6_momentum_cross_entropy",
    "e7_parameterization",
    "e8_kernel_accuracy",
    "fingerprint",
    "fit_loglog_slope",
    "known_ids",
    "log_spaced_steps",
    "mlp",
    "readout_parameters",
    "register",
    "relative_change",
    "rmse",
    "run_config",
    "run_experiments",
    "run_one",
    "select",
    "standard_from_ntk",
    "train_full_batch",
    "train_side_by_side",
]
