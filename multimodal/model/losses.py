"""Training losses: the Cox partial likelihood (Efron or Breslow ties), the discrete-time (logistic-hazard)
survival likelihood, masked binary cross-entropy (response), and the quality-of-life losses (masked mean
squared error for a continuous score, cumulative-link likelihood for an ordinal grade).

Every loss is written for a whole batch with torch operations (no Python loop over patients or event
times), so it runs on the device the model is on.
"""

from __future__ import annotations

import numpy as np
import torch

TIES = ("efron", "breslow")


def risk_set_ends(time: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Order by descending time and, per sorted position, the last position sharing its time.

    With samples sorted by descending time, the risk set of sample ``i`` (everyone with
    ``time >= time_i``, Breslow's handling of ties) is the prefix ending at ``ends[i]``.
    """
    order = np.argsort(-np.asarray(time, dtype=float), kind="stable")
    sorted_time = np.asarray(time, dtype=float)[order]
    # last index of each run of equal times in a descending array
    ends = np.searchsorted(-sorted_time, -sorted_time, side="right") - 1
    return order, ends


def cox_partial_likelihood(
    risk: torch.Tensor, time: torch.Tensor, event: torch.Tensor, *, ties: str = "breslow"
) -> torch.Tensor:
    """Negative Cox partial log-likelihood, averaged over events.

    ``risk`` is the log relative hazard per patient. ``ties``: ``breslow`` (every event tied at a time sees
    the whole risk set) or ``efron`` (the ``l``-th of ``d`` tied events sees the risk set less ``l/d`` of the
    tied events' hazard); without ties the two are the same number. Written by hand because no library in our
    stack offers a differentiable torch version; checked against scikit-survival's CoxPH fit in tests.
    """
    if ties not in TIES:
        raise ValueError(f"ties must be one of {', '.join(TIES)}, got {ties}")
    e = event.to(risk.dtype)
    n_events = e.sum()
    if n_events == 0:
        return risk.sum() * 0.0
    order = torch.sort(time.detach(), descending=True, stable=True).indices
    r, e, t = risk[order], e[order], time.detach()[order]
    # groups of equal times (consecutive after sorting); end = last sorted position of each group
    _, group, counts = torch.unique_consecutive(t, return_inverse=True, return_counts=True)
    ends = torch.cumsum(counts, 0) - 1
    log_risk_set = torch.logcumsumexp(r, dim=0)[ends][group]  # log sum of exp(risk) over time >= t_i
    log_denominator = log_risk_set
    if ties == "efron":
        n_groups = len(counts)
        d = torch.zeros(n_groups, dtype=r.dtype, device=r.device).index_add(0, group, e)
        # log of the tied events' hazard sum per group, stabilised by the largest risk of the batch
        top = r.detach().max()
        tied = torch.zeros(n_groups, dtype=r.dtype, device=r.device).index_add(0, group, torch.exp(r - top) * e)
        log_tied = torch.log(tied.clamp_min(torch.finfo(r.dtype).tiny)) + top
        # rank of each event among the events of its group: 0, 1, ..., d - 1
        before = torch.cumsum(e, 0) - e
        starts = ends - counts + 1
        rank = before - before[starts][group]
        fraction = rank / d[group].clamp_min(1.0) * e  # censored patients are no tied event: 0
        # log(S_R - (l/d) S_D) = log S_R + log1p(-(l/d) S_D / S_R), with S_D <= S_R and l/d < 1
        ratio = torch.exp(log_tied[group] - log_risk_set).clamp(max=1.0)
        log_denominator = log_risk_set + torch.log1p(-fraction * ratio)
    return -((r - log_denominator) * e).sum() / n_events


def time_bin_cuts(time: np.ndarray, event: np.ndarray, n_bins: int) -> np.ndarray:
    """Right ends of the discrete-time intervals: quantiles ``k / n_bins`` (k = 1..n_bins) of the event times
    given (a fold's training patients), distinct values only; the last cut is the latest event time.

    Interval ``j`` is ``(cuts[j-1], cuts[j]]`` (``cuts[-1]`` = 0). Fewer cuts than ``n_bins`` come back when the
    event times have too few distinct values.
    """
    time, event = np.asarray(time, dtype=float), np.asarray(event, dtype=float)
    observed = time[(event == 1) & np.isfinite(time)]
    if observed.size == 0:
        raise ValueError("no observed event time to place discrete-time intervals")
    cuts = np.quantile(observed, np.arange(1, n_bins + 1) / n_bins, method="inverted_cdf")
    return np.unique(cuts)


def discrete_time_targets(
    time: torch.Tensor, event: torch.Tensor, cuts: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per patient and interval: ``at_risk`` (the patient's survival through the interval is observed, or it
    has its event in it) and ``died`` (its event falls in that interval).

    An event at time ``t`` falls in the interval ``(cuts[j-1], cuts[j]]`` that holds ``t`` (the last interval
    for a time beyond the last cut); a patient censored at ``t`` survives every interval that ends at or
    before ``t`` and contributes nothing to the one it was censored in.
    """
    k = len(cuts)
    cuts = cuts.to(time.dtype)
    j = torch.arange(k, device=time.device)
    event_bin = torch.searchsorted(cuts, time.contiguous(), right=False).clamp(max=k - 1)
    survived = torch.searchsorted(cuts, time.contiguous(), right=True)  # intervals ending at or before t
    is_event = event > 0.5
    n_at_risk = torch.where(is_event, event_bin + 1, survived)
    at_risk = j[None, :] < n_at_risk[:, None]
    died = is_event[:, None] & (j[None, :] == event_bin[:, None])
    return at_risk, died


def discrete_time_nll(
    hazard_logits: torch.Tensor, time: torch.Tensor, event: torch.Tensor, cuts: torch.Tensor
) -> torch.Tensor:
    """Negative log-likelihood of the logistic-hazard (discrete-time) survival model, averaged over patients.

    ``hazard_logits``: patients x intervals, the logit of the conditional probability ``h_j`` of the event in
    interval ``j`` given survival to its start. A patient with its event in interval ``j`` contributes
    ``log h_j + sum_{i<j} log(1 - h_i)``; one censored at ``t`` contributes ``sum log(1 - h_i)`` over the
    intervals ending at or before ``t`` (:func:`discrete_time_targets`).
    """
    if len(time) == 0:
        return hazard_logits.sum() * 0.0
    at_risk, died = discrete_time_targets(time, event, cuts)
    bce = torch.nn.functional.binary_cross_entropy_with_logits(
        hazard_logits, died.to(hazard_logits.dtype), reduction="none"
    )
    return (bce * at_risk.to(hazard_logits.dtype)).sum() / len(time)


def log_cumulative_hazard(hazard_logits: torch.Tensor) -> torch.Tensor:
    """``log H`` at the last cut, ``H = sum_j -log(1 - h_j)`` (= ``-log S``): the discrete-time model's scalar
    risk score (higher = earlier event; a monotone function of 1 - S at the last cut)."""
    # -log(1 - sigmoid(x)) = softplus(x); log(softplus(x)) ~ x for very negative x, where softplus underflows
    log_terms = torch.where(
        hazard_logits < -30.0,
        hazard_logits,
        torch.log(torch.nn.functional.softplus(hazard_logits.clamp(min=-30.0))),
    )
    return torch.logsumexp(log_terms, dim=-1)


def masked_bce(logit: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy over patients whose response is known (target not NaN)."""
    known = ~torch.isnan(target)
    if not known.any():
        return logit.sum() * 0.0
    return torch.nn.functional.binary_cross_entropy_with_logits(logit[known], target[known])


def masked_mse(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error over patients whose value is known (target not NaN): the Gaussian head's loss."""
    known = ~torch.isnan(target)
    if not known.any():
        return prediction.sum() * 0.0
    return ((prediction[known] - target[known]) ** 2).mean()


def ordinal_probabilities(eta: torch.Tensor, thresholds: torch.Tensor) -> torch.Tensor:
    """Cumulative-link (ordinal logistic) class probabilities: ``P(Y <= k) = sigmoid(theta_k - eta)``.

    ``eta``: patients; ``thresholds``: K - 1 increasing cut points. Returns patients x K.
    """
    cumulative = torch.sigmoid(thresholds[None, :] - eta[:, None])
    ones = torch.ones_like(eta)[:, None]
    zeros = torch.zeros_like(eta)[:, None]
    return torch.diff(torch.cat([zeros, cumulative, ones], dim=1), dim=1)


def ordinal_nll(eta: torch.Tensor, thresholds: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Negative log-likelihood of the cumulative-link model over patients whose grade is known (not NaN),
    averaged; grades are 0..K-1."""
    known = ~torch.isnan(target)
    if not known.any():
        return eta.sum() * 0.0
    probs = ordinal_probabilities(eta[known], thresholds)
    grade = target[known].long().clamp(0, probs.shape[1] - 1)
    picked = probs.gather(1, grade[:, None]).squeeze(1)
    return -torch.log(picked.clamp_min(1e-12)).mean()
