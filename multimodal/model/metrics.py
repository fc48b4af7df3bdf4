"""Evaluation metrics, computed with scikit-survival and scikit-learn."""

from __future__ import annotations

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
