"""Reference models fitted on exactly the same folds and fold-preprocessed features as the fusion model.

A penalised Cox model (elastic net, scikit-survival's Coxnet) is what most survival analyses of such
cohorts would fit; reporting it beside the fusion model says honestly whether fusion adds anything.
"""

from __future__ import annotations

import warnings

import numpy as np

#: Inner cross-validation folds choosing the penalty; fewer when a training fold has too few events.
INNER_FOLDS = 3


class BaselineSkipped(Exception):
    """The reference model cannot be fitted on this training fold; the message says why (one line)."""


def inner_folds_for(n_patients: int, n_events: int, requested: int = INNER_FOLDS) -> int:
    """Inner folds usable on a training fold: at most one per event (each inner fold holds one out) and
    at least two patients per inner fold; below 2 the penalty cannot be chosen by cross-validation."""
    return int(min(requested, n_events, n_patients // 2))


def penalised_cox_risk(
    train_x: np.ndarray,
    train_time: np.ndarray,
    train_event: np.ndarray,
    test_x: np.ndarray,
    *,
    l1_ratio: float = 0.5,
    inner_folds: int = INNER_FOLDS,
    seed: int = 0,
) -> tuple[np.ndarray, float, int]:
    """Elastic-net Cox: the penalty is chosen by inner cross-validation (Harrell's C; stratified by event
    when plain folds would leave one without events) on the training rows only. Returns the held-out
    risk scores, the chosen alpha and the number of inner folds used (``inner_folds``, or fewer on a
    training fold with few events or patients).

    Raises :class:`BaselineSkipped` with the reason when the training rows cannot support the model.
    """
    from sklearn.exceptions import ConvergenceWarning, FitFailedWarning
    from sklearn.model_selection import GridSearchCV, KFold, StratifiedKFold
    from sksurv.linear_model import CoxnetSurvivalAnalysis
    from sksurv.util import Surv

    event = np.asarray(train_event, dtype=float) > 0
    n, n_events = len(event), int(event.sum())
    k = inner_folds_for(n, n_events, inner_folds)
    if k < 2:
        raise BaselineSkipped(
            f"{n} training patients with a survival outcome and {n_events} event(s) are too few to choose its "
            "penalty by inner cross-validation (at least 2 events and 4 patients are needed)"
        )
    if train_x.shape[1] == 0 or not (np.nanstd(train_x, axis=0) > 1e-12).any():
        raise BaselineSkipped("no feature varies among the training patients")
    y = Surv.from_arrays(event, np.asarray(train_time, dtype=float))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        warnings.simplefilter("ignore", UserWarning)
        warnings.simplefilter("ignore", RuntimeWarning)
        # the weakest penalties can fail numerically on small folds; they score 0.5 and are not chosen
        warnings.simplefilter("ignore", FitFailedWarning)
        splits = list(KFold(n_splits=k, shuffle=True, random_state=seed).split(train_x))
        if any(not event[train].any() or not event[test].any() for train, test in splits):
            # few events: unstratified inner folds would fit or score some penalties without any event
            splits = list(StratifiedKFold(n_splits=k, shuffle=True, random_state=seed).split(train_x, event))
        try:
            path = CoxnetSurvivalAnalysis(l1_ratio=l1_ratio, alpha_min_ratio=0.01, n_alphas=15).fit(train_x, y)
            search = GridSearchCV(
                CoxnetSurvivalAnalysis(l1_ratio=l1_ratio, fit_baseline_model=False),
                param_grid={"alphas": [[a] for a in path.alphas_]},
                cv=splits,
                error_score=0.5,
            ).fit(train_x, y)
        except (ValueError, ArithmeticError, np.linalg.LinAlgError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise BaselineSkipped(f"Coxnet could not be fitted on this training fold ({first})") from exc
    best = search.best_estimator_
    return best.predict(test_x), float(best.alphas[0]), k
