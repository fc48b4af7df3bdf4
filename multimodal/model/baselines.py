"""Reference models fitted on exactly the same folds and fold-preprocessed features as the fusion model.

A penalised Cox model (elastic net, scikit-survival's Coxnet) is what most survival analyses of such
cohorts would fit; reporting it beside the fusion model says honestly whether fusion adds anything.
"""

from __future__ import annotations

import warnings

import numpy as np


def penalised_cox_risk(
    train_x: np.ndarray,
    train_time: np.ndarray,
    train_event: np.ndarray,
    test_x: np.ndarray,
    *,
    l1_ratio: float = 0.5,
    inner_folds: int = 3,
    seed: int = 0,
) -> tuple[np.ndarray, float]:
    """Elastic-net Cox: the penalty is chosen by inner cross-validation (Harrell's C) on the training
    rows only; returns the held-out risk scores and the chosen alpha."""
    from sklearn.exceptions import ConvergenceWarning, FitFailedWarning
    from sklearn.model_selection import GridSearchCV, KFold
    from sksurv.linear_model import CoxnetSurvivalAnalysis
    from sksurv.util import Surv

    y = Surv.from_arrays(train_event.astype(bool), train_time)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        warnings.simplefilter("ignore", UserWarning)
        # the weakest penalties can fail numerically on small folds; they score 0.5 and are not chosen
        warnings.simplefilter("ignore", FitFailedWarning)
        path = CoxnetSurvivalAnalysis(l1_ratio=l1_ratio, alpha_min_ratio=0.01, n_alphas=15).fit(train_x, y)
        search = GridSearchCV(
            CoxnetSurvivalAnalysis(l1_ratio=l1_ratio, fit_baseline_model=False),
            param_grid={"alphas": [[a] for a in path.alphas_]},
            cv=KFold(n_splits=inner_folds, shuffle=True, random_state=seed),
            error_score=0.5,
        ).fit(train_x, y)
    best = search.best_estimator_
    return best.predict(test_x), float(best.alphas[0])
