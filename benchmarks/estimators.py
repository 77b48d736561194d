"""Accuracy of ntkit.sklearn's NTKClassifier on scikit-learn's small bundled data sets, against SVC (RBF kernel) and
RandomForest with default settings, all measured in the same run (docs/integrations.md).

The small-data setting of Arora et al. 2020 ("Harnessing the power of infinitely wide deep nets on small-data
tasks"): digits (1797 8x8 images, 10 classes), breast cancer (569 x 30, 2 classes) and wine (178 x 13, 3
classes). Every model is a Pipeline(StandardScaler, model) scored by stratified 5-fold cross-validation (the same
folds for all), mean ± standard deviation of the test-fold accuracy. Models:

- NTK, NNGP: NTKClassifier defaults (an MLP with 2 ReLU hidden layers, W_std = 1, b_std = 0.1, diag_reg = 1e-4,
  t = None), get="ntk" (the converged ensemble of trained networks) and get="nngp" (the Bayesian posterior);
- SVC(rbf), RandomForest: SVC() and RandomForestClassifier(random_state=0), scikit-learn's defaults.

No hyperparameter is tuned for any model. Prints a Markdown table and the wall time of each model's cross-
validation (on a shared machine the times are noisy; only the accuracies are the result).

    PYTHONPATH=src python benchmarks/estimators.py [--folds 5]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from sklearn.datasets import load_breast_cancer, load_digits, load_wine
from sklearn.ensemble import RandomForestClassifier
from sklearn.model_selection import StratifiedKFold, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC

from ntkit.sklearn import NTKClassifier

DATA = {"digits": load_digits, "breast cancer": load_breast_cancer, "wine": load_wine}
MODELS = {
    "NTK": lambda: NTKClassifier(get="ntk"),
    "NNGP": lambda: NTKClassifier(get="nngp"),
    "SVC(rbf)": lambda: SVC(),
    "RandomForest": lambda: RandomForestClassifier(random_state=0),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folds", type=int, default=5)
    args = parser.parse_args()
    folds = StratifiedKFold(args.folds, shuffle=True, random_state=0)
    rows, times = [], {name: 0.0 for name in MODELS}
    for data_name, load in DATA.items():
        x, y = load(return_X_y=True)
        cells = []
        for name, make in MODELS.items():
            start = time.perf_counter()
            scores = cross_val_score(make_pipeline(StandardScaler(), make()), x, y, cv=folds)
            times[name] += time.perf_counter() - start
            cells.append(f"{np.mean(scores):.3f} ± {np.std(scores):.3f}")
        rows.append(f"| {data_name} ({len(x)} x {x.shape[1]}) | " + " | ".join(cells) + " |")
    print(f"Test accuracy, stratified {args.folds}-fold cross-validation (mean ± std over folds):\n")
    print("| data set | " + " | ".join(MODELS) + " |")
    print("|---|" + "---|" * len(MODELS))
    print("\n".join(rows))
    print("\nwall time of all cross-validations (s, shared machine: noisy): "
          + ", ".join(f"{name} {t:.1f}" for name, t in times.items()))  # fmt: skip


if __name__ == "__main__":
    main()
