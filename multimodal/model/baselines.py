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
    when plain folds would leave one without events) on the training rows only, over one warm-started
    penalty path per fit (the training fold's, then one per inner fold) rather than a refit per penalty.
    Returns the held-out risk scores, the chosen alpha and the number of inner folds used (``inner_folds``,
    or fewer on a training fold with few events or patients).

    Raises :class:`BaselineSkipped` with the reason when the training rows cannot support the model, or when
    the fit fails in any way (the reference never costs the fusion model its results).
    """
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.model_selection import KFold, StratifiedKFold
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
        splits = list(KFold(n_splits=k, shuffle=True, random_state=seed).split(train_x))
        if any(not event[train].any() or not event[test].any() for train, test in splits):
            # few events: unstratified inner folds would fit or score some penalties without any event
            splits = list(StratifiedKFold(n_splits=k, shuffle=True, random_state=seed).split(train_x, event))
        try:
            # one warm-started path on the whole training fold gives the penalties and the final model ...
            path = _fit_path(train_x, y, l1_ratio=l1_ratio, alphas=None)
            alphas = np.asarray(path.alphas_, dtype=float)
            # ... and one path per inner fold scores every penalty on that inner fold's held-out rows
            scores = np.full((len(splits), len(alphas)), 0.5)  # a penalty an inner fold cannot fit scores 0.5
            for i, (inner_train, inner_test) in enumerate(splits):
                try:
                    inner = _fit_path(train_x[inner_train], y[inner_train], l1_ratio=l1_ratio, alphas=alphas)
                except _FIT_ERRORS:
                    continue
                for j, alpha in enumerate(alphas):
                    if j < len(inner.alphas_):
                        scores[i, j] = _c_index(y[inner_test], inner.predict(train_x[inner_test], alpha=alpha))
            best = float(alphas[int(np.argmax(scores.mean(axis=0)))])  # ties: the strongest penalty
            risk = path.predict(test_x, alpha=best)
        except Exception as exc:  # noqa: BLE001 - any failure of the reference skips it, never the run
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise BaselineSkipped(f"Coxnet could not be fitted on this training fold ({first})") from exc
    return np.asarray(risk, dtype=float), best, k


#: numerical failures of a Coxnet fit on a small or ill-conditioned fold
_FIT_ERRORS = (ValueError, ArithmeticError, np.linalg.LinAlgError)


def _fit_path(x: np.ndarray, y: np.ndarray, *, l1_ratio: float, alphas: np.ndarray | None):
    """One warm-started Coxnet fit of a whole penalty path (``alphas``, or 15 from the data). If the weakest
    penalties fail numerically ("weights are too large"), the path is cut to its stronger half and refitted."""
    from sksurv.linear_model import CoxnetSurvivalAnalysis

    def fit(**path):
        return CoxnetSurvivalAnalysis(l1_ratio=l1_ratio, fit_baseline_model=False, **path).fit(x, y)

    if alphas is None:
        for ratio in (0.01, 0.1, 0.5):
            try:
                return fit(alpha_min_ratio=ratio, n_alphas=15)
            except _FIT_ERRORS:
                if ratio == 0.5:
                    raise
    while True:
        try:
            return fit(alphas=alphas)
        except _FIT_ERRORS:
            if len(alphas) <= 1:
                raise
            alphas = alphas[: len(alphas) // 2]


def _c_index(y: np.ndarray, risk: np.ndarray) -> float:
    """Harrell's C on an inner fold (0.5 where undefined or not finite, like a failed penalty)."""
    from sksurv.metrics import concordance_index_censored

    try:
        value = concordance_index_censored(y["event"], y["time"], np.asarray(risk, dtype=float))[0]
    except Exception:  # noqa: BLE001 - no comparable pairs, non-finite scores
        return 0.5
    return float(value) if np.isfinite(value) else 0.5


def arm_interaction_design(x: np.ndarray, arm: np.ndarray) -> np.ndarray:
    """Design of a Cox model with treatment interactions: features ``x``, arm indicators ``arm`` (patients x
    non-reference arms) and every arm x feature product (the arm's effect may depend on each feature)."""
    products = (arm[:, :, None] * x[:, None, :]).reshape(len(x), -1)
    return np.column_stack([x, arm, products])
