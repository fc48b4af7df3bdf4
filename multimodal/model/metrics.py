"""Evaluation metrics, computed with scikit-survival and scikit-learn."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def harrell_c(time: np.ndarray, event: np.ndarray, risk: np.ndarray) -> float:
    """Harrell's concordance index (higher risk should mean earlier event); NaN if undefined."""
    from sksurv.exceptions import NoComparablePairException
    from sksurv.metrics import concordance_index_censored

    keep = ~(np.isnan(time) | np.isnan(event) | np.isnan(risk))
    if keep.sum() < 2 or event[keep].sum() == 0:
        return float("nan")
    try:
        return float(concordance_index_censored(event[keep].astype(bool), time[keep], risk[keep])[0])
    except NoComparablePairException:  # e.g. every event at or after the last censored time
        return float("nan")


def auroc(label: np.ndarray, score: np.ndarray) -> float:
    """Area under the ROC curve over patients with a known label; NaN when one class is absent."""
    from sklearn.metrics import roc_auc_score

    keep = ~(np.isnan(label) | np.isnan(score))
    if len(np.unique(label[keep])) < 2:
        return float("nan")
    return float(roc_auc_score(label[keep], score[keep]))


# --------------------------------------------------------------------------------------------------
# Held-out evaluation with bootstrap confidence intervals.
#
# Point estimates come from scikit-survival / scikit-learn themselves. The bootstrap recomputes the same
# statistics with resampling weights (a resample is a vector of per-patient counts), written as weighted
# pair sums so that all resamples are one matrix product; tests check the weighted forms at unit weights
# against scikit-survival. The censoring distribution (IPCW) is the Kaplan-Meier estimate of censoring over
# every patient of the cohort with a survival outcome: the same weights for every fold and the pooled set.

TIED_TOL = 1e-8


@dataclass
class EvaluationSettings:
    """What every held-out set is evaluated with (recorded in metrics.json)."""

    times: np.ndarray  # time-dependent AUC at these times
    grid: np.ndarray  # integrated Brier score over these times (restricted to each set's follow-up)
    tau: float  # Uno's C truncation time
    cohort_time: np.ndarray  # outcomes the censoring distribution is estimated from
    cohort_event: np.ndarray
    n_bootstrap: int = 1000
    seed: int = 0

    def describe(self) -> dict:
        return {
            "bootstrap_resamples": self.n_bootstrap,
            "bootstrap_seed": self.seed,
            "ci": "95% percentile bootstrap over held-out patients (null when under half the resamples define it)",
            "auc_times": [float(t) for t in self.times],
            "uno_tau": float(self.tau),
            "brier_grid": [float(self.grid[0]), float(self.grid[-1]), int(len(self.grid))] if len(self.grid) else None,
            "censoring": "Kaplan-Meier of censoring over every cohort patient with a survival outcome (IPCW)",
            "survival_function": "Breslow baseline hazard fitted on each training fold's risks",
        }


def evaluation_settings(
    time: np.ndarray,
    event: np.ndarray,
    *,
    times: list[float] | None = None,
    n_bootstrap: int = 1000,
    seed: int = 0,
    grid_points: int = 20,
) -> EvaluationSettings:
    """Settings from the cohort's outcomes: AUC times default to the quartiles of the observed event times;
    the Brier grid spans the 10th to 90th percentile of the observed times; Uno's tau is the last AUC time."""
    keep = np.isfinite(time) & np.isfinite(event)
    t, e = np.asarray(time, float)[keep], np.asarray(event, float)[keep] > 0
    event_times = t[e] if e.any() else t
    auc_times = (
        np.asarray(sorted(float(x) for x in times), float)
        if times
        else np.unique(np.quantile(event_times, [0.25, 0.5, 0.75]))
    )
    grid = np.unique(np.quantile(t, np.linspace(0.1, 0.9, grid_points))) if t.size else np.zeros(0)
    tau = float(auc_times[-1]) if auc_times.size else float(np.max(t))
    return EvaluationSettings(
        times=auc_times, grid=grid, tau=tau, cohort_time=t, cohort_event=e, n_bootstrap=n_bootstrap, seed=seed
    )


def breslow_survival(
    train_risk: np.ndarray, train_time: np.ndarray, train_event: np.ndarray, risk: np.ndarray, times: np.ndarray
) -> np.ndarray:
    """Survival probabilities S(t | risk) = S0(t) ** exp(risk) at ``times`` (patients x times), with the
    Breslow estimate of the baseline cumulative hazard from the training rows' risks and outcomes."""
    keep = np.isfinite(train_risk) & np.isfinite(train_time) & np.isfinite(train_event)
    r, t, e = train_risk[keep], train_time[keep], train_event[keep] > 0
    shift = float(np.mean(r)) if r.size else 0.0
    exp_r = np.exp(np.clip(r - shift, -50, 50))
    event_times = np.unique(t[e])
    # risk-set sums at each distinct event time (everyone with time >= t)
    order = np.argsort(t)
    suffix = np.cumsum(exp_r[order][::-1])[::-1]
    at_risk = suffix[np.searchsorted(t[order], event_times, side="left")]
    deaths = np.array([np.sum(e & (t == u)) for u in event_times], dtype=float)
    cumulative = np.cumsum(deaths / at_risk)
    h0 = np.concatenate([[0.0], cumulative])[np.searchsorted(event_times, times, side="right")]
    return np.exp(-np.outer(np.exp(np.clip(risk - shift, -50, 50)), h0))


def _surv(time, event):
    from sksurv.util import Surv

    return Surv.from_arrays(np.asarray(event) > 0, np.asarray(time, float))


def _censoring(settings: EvaluationSettings):
    from sksurv.nonparametric import CensoringDistributionEstimator

    return CensoringDistributionEstimator().fit(_surv(settings.cohort_time, settings.cohort_event))


def _weighted_pairs(weights: np.ndarray, comparable: np.ndarray, score: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Per resample (rows of ``weights``): sum_ij w_i w_j score_ij / sum_ij w_i w_j comparable_ij, over pair
    rows ``rows`` only (the others are zero); NaN where no pair is comparable."""
    w_rows = weights[:, rows]
    num = np.einsum("bi,bi->b", w_rows, weights @ score[rows].T) if rows.size else np.zeros(len(weights))
    den = np.einsum("bi,bi->b", w_rows, weights @ comparable[rows].T) if rows.size else np.zeros(len(weights))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1), np.nan)


def _order_score(risk: np.ndarray) -> np.ndarray:
    """score_ij = 1 if risk_i > risk_j, 0.5 if tied (within TIED_TOL), else 0."""
    diff = risk[:, None] - risk[None, :]
    return np.where(np.abs(diff) <= TIED_TOL, 0.5, (diff > 0).astype(float))


def harrell_pairs(time, event, risk, ipcw_squared=None):
    """Comparable pairs as scikit-survival counts them (i an event; j later, or censored at the same time),
    weighted by ``ipcw_squared`` of i for Uno's C; returns (comparable, concordant) matrices and event rows."""
    event = event > 0
    later = time[None, :] > time[:, None]
    same_censored = (time[None, :] == time[:, None]) & ~event[None, :]
    comparable = (later | same_censored) & event[:, None]
    weight = comparable.astype(float)
    if ipcw_squared is not None:
        weight = weight * ipcw_squared[:, None]
    return weight, weight * _order_score(risk), np.flatnonzero(event)


def _ci(values: np.ndarray) -> list | None:
    finite = values[np.isfinite(values)]
    if finite.size < max(1, values.size / 2):
        return None
    return [float(np.percentile(finite, 2.5)), float(np.percentile(finite, 97.5))]


def _entry(value: float, boot: np.ndarray | None) -> dict:
    value = float(value) if value is not None and np.isfinite(value) else None
    return {"value": value, "ci95": _ci(boot) if (boot is not None and value is not None) else None}


def _weighted_average_precision(weights: np.ndarray, label: np.ndarray, score: np.ndarray) -> np.ndarray:
    """scikit-learn's average precision (step-wise, one threshold per distinct score) per row of ``weights``."""
    order = np.argsort(-score, kind="stable")
    y, sorted_score = label[order] == 1, score[order]
    ends = np.r_[np.flatnonzero(np.diff(sorted_score) != 0), len(y) - 1]
    w = weights[:, order]
    tp = np.cumsum(w * y, axis=1)[:, ends]
    fp = np.cumsum(w * ~y, axis=1)[:, ends]
    total = tp[:, -1:]
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(tp + fp > 0, tp / np.where(tp + fp > 0, tp + fp, 1), 0.0)
        recall_step = np.diff(np.c_[np.zeros(len(w)), tp], axis=1) / total
        return np.where(total[:, 0] > 0, (recall_step * precision).sum(axis=1), np.nan)


def brier_contributions(
    time: np.ndarray, event: np.ndarray, survival: np.ndarray, grid: np.ndarray, cens
) -> np.ndarray:
    """Each patient's share of scikit-survival's integrated Brier score over ``grid`` (their mean is the score):
    the IPCW-weighted squared error of its survival probabilities, integrated by the trapezoid rule."""
    g_t = cens.predict_proba(grid)
    g_y = cens.predict_proba(time)
    g_y = np.where(g_y == 0, np.inf, g_y)
    case = (time[:, None] <= grid[None, :]) & (event[:, None] > 0)
    control = time[:, None] > grid[None, :]
    per = survival**2 * case / g_y[:, None] + (1 - survival) ** 2 * control / g_t[None, :]
    return np.trapezoid(per, grid, axis=1) / (grid[-1] - grid[0])


def _bootstrap_weights(n: int, settings: EvaluationSettings, salt: int) -> np.ndarray:
    rng = np.random.default_rng([settings.seed, salt])
    return rng.multinomial(n, np.full(n, 1.0 / n), size=settings.n_bootstrap).astype(float)


def evaluate_held_out(
    time: np.ndarray,
    event: np.ndarray,
    risk: np.ndarray,
    settings: EvaluationSettings,
    *,
    survival: np.ndarray | None = None,
    response: np.ndarray | None = None,
    response_prob: np.ndarray | None = None,
    references: dict[str, np.ndarray] | None = None,
    salt: int = 0,
) -> dict:
    """Harrell's and Uno's C, time-dependent AUC at ``settings.times``, the integrated Brier score (from
    ``survival``: patients x ``settings.grid`` probabilities), AUROC and AUPRC of the response, each with a
    bootstrap 95% CI; and for each reference risk, the paired bootstrap of (model - reference) Harrell's C.
    Undefined values are None. ``salt`` makes each held-out set's resamples its own (and reproducible)."""
    from sksurv.metrics import concordance_index_ipcw, cumulative_dynamic_auc, integrated_brier_score

    time, event, risk = (np.asarray(a, float) for a in (time, event, risk))
    ok = np.isfinite(time) & np.isfinite(event) & np.isfinite(risk)
    t, e, r = time[ok], event[ok] > 0, risk[ok]
    out: dict = {"n": int(ok.sum()), "n_events": int(e.sum())}
    weights = _bootstrap_weights(int(ok.sum()), settings, salt) if ok.sum() >= 2 and settings.n_bootstrap else None
    cens = _censoring(settings)

    # Harrell's C
    comparable, concordant, rows = harrell_pairs(t, e, r)
    value = harrell_c(t, e.astype(float), r)
    boot = _weighted_pairs(weights, comparable, concordant, rows) if weights is not None else None
    out["harrell_c"] = _entry(value, boot)

    # Uno's C (IPCW), truncated at tau
    ipcw = np.zeros(len(t))
    mask = t < settings.tau
    try:
        ipcw[mask] = cens.predict_ipcw(_surv(t[mask], e[mask]))
        value = float(
            concordance_index_ipcw(
                _surv(settings.cohort_time, settings.cohort_event), _surv(t, e), r, tau=settings.tau
            )[0]
        )
    except (ValueError, ZeroDivisionError, ArithmeticError):
        value = float("nan")
    comparable, concordant, rows = harrell_pairs(t, e, r, ipcw_squared=ipcw**2)
    boot = _weighted_pairs(weights, comparable, concordant, rows) if weights is not None else None
    out["uno_c"] = _entry(value, boot)

    # time-dependent (cumulative/dynamic) AUC
    ipcw_all = np.zeros(len(t))
    try:
        ipcw_all = cens.predict_ipcw(_surv(t, e))
    except ValueError:
        ipcw_all[:] = np.nan
    auc = []
    for when in settings.times:
        value = float("nan")
        case = (t <= when) & e
        control = t > when
        if case.any() and control.any() and t.min() <= when < t.max():
            try:
                value = float(
                    cumulative_dynamic_auc(_surv(settings.cohort_time, settings.cohort_event), _surv(t, e), r, [when])[
                        0
                    ][0]
                )
            except ValueError:
                value = float("nan")
        comparable = np.outer(case * ipcw_all, control.astype(float))
        rows_here = np.flatnonzero(case)
        boot = (
            _weighted_pairs(weights, comparable, comparable * _order_score(r), rows_here)
            if weights is not None
            else None
        )
        auc.append({"time": float(when)} | _entry(value, boot))
    out["time_auc"] = auc

    # integrated Brier score from the fold's Breslow survival functions
    out["integrated_brier"] = _entry(None, None) | {"range": None}
    if survival is not None and settings.grid.size:
        s = np.asarray(survival, float)[ok]
        inside = (settings.grid >= t.min()) & (settings.grid < t.max())
        grid = settings.grid[inside]
        if grid.size >= 2:
            s = s[:, inside]
            try:
                value = float(
                    integrated_brier_score(_surv(settings.cohort_time, settings.cohort_event), _surv(t, e), s, grid)
                )
                contribution = brier_contributions(t, e, s, grid, cens)
                boot = weights @ contribution / len(t) if weights is not None else None
                out["integrated_brier"] = _entry(value, boot) | {"range": [float(grid[0]), float(grid[-1])]}
            except ValueError:
                pass

    # response
    out["auroc"] = out["auprc"] = _entry(None, None)
    if response is not None and response_prob is not None:
        y, p = np.asarray(response, float), np.asarray(response_prob, float)
        known = np.isfinite(y) & np.isfinite(p)
        y, p = y[known], p[known]
        if len(np.unique(y)) == 2:
            from sklearn.metrics import average_precision_score, roc_auc_score

            wr = _bootstrap_weights(len(y), settings, salt + 7919) if settings.n_bootstrap else None
            positive = (y == 1).astype(float)
            comparable = np.outer(positive, 1 - positive)
            boot = (
                _weighted_pairs(wr, comparable, comparable * _order_score(p), np.flatnonzero(positive))
                if wr is not None
                else None
            )
            out["auroc"] = _entry(roc_auc_score(y, p), boot)
            boot = _weighted_average_precision(wr, y, p) if wr is not None else None
            out["auprc"] = _entry(average_precision_score(y, p), boot)

    # each reference's own Harrell's C, and the paired difference against it (over patients both score),
    # from the same bootstrap resamples
    out["reference_harrell_c"] = {}
    out["c_index_difference"] = {}
    for name, reference in (references or {}).items():
        ref = np.asarray(reference, float)[ok]
        both = np.isfinite(ref)
        if both.sum() < 2:
            out["reference_harrell_c"][name] = _entry(None, None) | {"n": int(both.sum())}
            out["c_index_difference"][name] = _entry(None, None) | {"n": int(both.sum())}
            continue
        tb, eb = t[both], e[both]
        c_ref = harrell_c(tb, eb.astype(float), ref[both])
        value = harrell_c(tb, eb.astype(float), r[both]) - c_ref
        boot = boot_ref = None
        if weights is not None:
            w = weights[:, both]
            comparable, concordant, rows = harrell_pairs(tb, eb, r[both])
            _, concordant_ref, _ = harrell_pairs(tb, eb, ref[both])
            boot_ref = _weighted_pairs(w, comparable, concordant_ref, rows)
            boot = _weighted_pairs(w, comparable, concordant, rows) - boot_ref
        out["reference_harrell_c"][name] = _entry(c_ref, boot_ref) | {"n": int(both.sum())}
        out["c_index_difference"][name] = _entry(value, boot) | {"n": int(both.sum())}
    return out


# --------------------------------------------------------------------------------------------------
# Quality-of-life tasks (multimodal.model.tasks): continuous scores and ordinal grades.


def continuous_metrics(observed: np.ndarray, predicted: np.ndarray) -> dict:
    """RMSE, MAE, R² (scikit-learn) and Spearman's rho (SciPy) over patients with both values; ``n`` of them.
    Undefined values (fewer than 2 patients, a constant side) are NaN."""
    from scipy.stats import spearmanr
    from sklearn.metrics import mean_absolute_error, mean_squared_error, r2_score

    observed, predicted = np.asarray(observed, dtype=float), np.asarray(predicted, dtype=float)
    keep = np.isfinite(observed) & np.isfinite(predicted)
    y, p = observed[keep], predicted[keep]
    out = {"n": int(keep.sum())} | dict.fromkeys(("rmse", "mae", "r2", "spearman"), float("nan"))
    if len(y) == 0:
        return out
    out["rmse"] = float(np.sqrt(mean_squared_error(y, p)))
    out["mae"] = float(mean_absolute_error(y, p))
    if len(y) >= 2 and np.ptp(y) > 0:
        out["r2"] = float(r2_score(y, p))
        if np.ptp(p) > 0:
            out["spearman"] = float(spearmanr(y, p).statistic)
    return out


def ordinal_metrics(observed: np.ndarray, predicted: np.ndarray, expected: np.ndarray | None = None) -> dict:
    """MAE, quadratic-weighted Cohen's kappa and accuracy of the predicted grade (scikit-learn), and Spearman's
    rho (SciPy) of the expected grade (``expected``; else the predicted grade) with the observed one."""
    from scipy.stats import spearmanr
    from sklearn.metrics import accuracy_score, cohen_kappa_score, mean_absolute_error

    observed, predicted = np.asarray(observed, dtype=float), np.asarray(predicted, dtype=float)
    score = predicted if expected is None else np.asarray(expected, dtype=float)
    keep = np.isfinite(observed) & np.isfinite(predicted) & np.isfinite(score)
    y, p, s = observed[keep].astype(int), predicted[keep].astype(int), score[keep]
    out = {
        "n": int(keep.sum()),
        "mae": float("nan"),
        "quadratic_kappa": float("nan"),
        "spearman": float("nan"),
        "accuracy": float("nan"),
    }
    if len(y) == 0:
        return out
    out["mae"] = float(mean_absolute_error(y, p))
    out["accuracy"] = float(accuracy_score(y, p))
    if len(np.unique(np.concatenate([y, p]))) > 1:
        out["quadratic_kappa"] = float(cohen_kappa_score(y, p, weights="quadratic"))
    if len(y) >= 2 and np.ptp(y) > 0 and np.ptp(s) > 0:
        out["spearman"] = float(spearmanr(y, s).statistic)
    return out
