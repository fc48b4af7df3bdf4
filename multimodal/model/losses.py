"""Training losses: the Cox partial likelihood (survival) and masked binary cross-entropy (response)."""

from __future__ import annotations

import numpy as np
import torch


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


def cox_partial_likelihood(risk: torch.Tensor, time: torch.Tensor, event: torch.Tensor) -> torch.Tensor:
    """Negative Cox partial log-likelihood (Breslow ties), averaged over events.

    ``risk`` is the log relative hazard per patient. Written by hand because no library in our stack
    offers a differentiable torch version; checked against scikit-survival's CoxPH fit in tests.
    """
    n_events = event.sum()
    if n_events == 0:
        return risk.sum() * 0.0
    order, ends = risk_set_ends(time.detach().cpu().numpy())
    order_t = torch.as_tensor(order, device=risk.device)
    ends_t = torch.as_tensor(ends, device=risk.device)
    r = risk[order_t]
    log_risk_set = torch.logcumsumexp(r, dim=0)[ends_t]
    e = event[order_t].to(risk.dtype)
    return -((r - log_risk_set) * e).sum() / n_events


def masked_bce(logit: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy over patients whose response is known (target not NaN)."""
    known = ~torch.isnan(target)
    if not known.any():
        return logit.sum() * 0.0
    return torch.nn.functional.binary_cross_entropy_with_logits(logit[known], target[known])
