"""Cross-validation folds: stratified by event status and site, seeded, written to disk."""

from __future__ import annotations

import numpy as np
import pandas as pd

from multimodal.errors import MultimodalError


def assign_folds(obs: pd.DataFrame, *, n_folds: int, seed: int) -> pd.Series:
    """A fold number (0..n_folds-1) for every patient, balanced over event status and site.

    Patients without a survival outcome still get a fold: they are scored when held out, though
    they cannot be evaluated or trained on.
    """
    from sklearn.model_selection import StratifiedKFold

    from multimodal.store import survival_outcome

    if n_folds < 2:
        raise MultimodalError(f"need at least 2 folds, got {n_folds}")
    if len(obs) < n_folds:
        raise MultimodalError(f"{len(obs)} patients cannot fill {n_folds} folds")
    # strata: event, censored, or no usable outcome (an event without a time is not an event here)
    time = obs["time"] if "time" in obs else pd.Series(0.0, index=obs.index)  # no times given: event alone
    has, is_event = survival_outcome(time, obs["event"])
    event = pd.Series(np.where(has, is_event.astype(int), -1).astype(str), index=obs.index)
    site = obs["site"].astype(str) if "site" in obs else pd.Series("all", index=obs.index)
    strata = event + "|" + site
    counts = strata.value_counts()
    strata = strata.where(strata.map(counts) >= n_folds, event)  # rare combinations: event only
    sizes = strata.value_counts()
    if (sizes < n_folds).any():  # leftovers join the largest stratum rather than form a tiny one
        strata = strata.where(strata.map(sizes) >= n_folds, sizes.index[0])
    folds = np.zeros(len(obs), dtype=int)
    splitter = StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    for k, (_, test) in enumerate(splitter.split(np.zeros(len(obs)), strata)):
        folds[test] = k
    return pd.Series(folds, index=obs.index, name="fold")
