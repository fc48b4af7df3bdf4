"""What the attributions say, summarised for a researcher: direction of effect, added value per modality,
and how far to trust them (rank stability across fold models, model randomisation, planted features).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd

log = logging.getLogger(__name__)

#: p-value above which a direction is reported as ``unclear``
DIRECTION_ALPHA = 0.05


def is_binary(values: np.ndarray) -> bool:
    """A 0/1 feature (mutation status, indicator): every observed value is 0 or 1, and both occur."""
    finite = values[np.isfinite(values)]
    return finite.size > 0 and bool(np.isin(finite, (0.0, 1.0)).all()) and len(np.unique(finite)) == 2


def feature_direction(values: np.ndarray, attributions: np.ndarray, *, binary: bool) -> tuple[float, str, str, float]:
    """How a feature's attribution moves with its value over patients: ``(direction, kind, sign, p)``.

    Binary (``carrier_difference``): mean attribution of carriers (value > 0) minus non-carriers, p from the
    Mann-Whitney U test. Continuous (``rank_correlation``): Spearman correlation between value and attribution.
    The sign is ``raises_risk`` / ``lowers_risk`` when p < 0.05, else ``unclear`` (also when not computable:
    one group empty, a constant feature or attribution).
    """
    from scipy.stats import mannwhitneyu, spearmanr

    keep = np.isfinite(values) & np.isfinite(attributions)
    v, a = values[keep], attributions[keep]
    direction, p = float("nan"), float("nan")
    if binary:
        kind = "carrier_difference"
        carriers = v > 0
        if carriers.any() and (~carriers).any():
            direction = float(a[carriers].mean() - a[~carriers].mean())
            if np.ptp(a) > 0:
                p = float(mannwhitneyu(a[carriers], a[~carriers]).pvalue)
    else:
        kind = "rank_correlation"
        if v.size > 2 and np.ptp(v) > 0 and np.ptp(a) > 0:
            result = spearmanr(v, a)
            direction, p = float(result.statistic), float(result.pvalue)
    if np.isfinite(direction) and np.isfinite(p) and p < DIRECTION_ALPHA and direction != 0:
        sign = "raises_risk" if direction > 0 else "lowers_risk"
    else:
        sign = "unclear"
    return direction, kind, sign, p


def bootstrap_c_drop(
    time: np.ndarray,
    event: np.ndarray,
    full: np.ndarray,
    masked: np.ndarray,
    *,
    n_boot: int = 1000,
    seed: int = 0,
) -> tuple[float, float, float, float, float]:
    """Harrell's C of ``full`` and ``masked`` risks, their difference, and its paired bootstrap 95% CI
    (patients resampled, the same draws for both): ``(c_full, c_masked, drop, ci_low, ci_high)``."""
    from multimodal.model.metrics import _weighted_pairs, harrell_c, harrell_pairs

    keep = np.isfinite(time) & np.isfinite(event) & np.isfinite(full) & np.isfinite(masked)
    t, e, f, m = time[keep], event[keep], full[keep], masked[keep]
    c_full, c_masked = harrell_c(t, e, f), harrell_c(t, e, m)
    drop = c_full - c_masked
    if not keep.sum() or not n_boot or not np.isfinite(drop):
        return c_full, c_masked, drop, float("nan"), float("nan")
    comparable, concordant_full, rows = harrell_pairs(t, e, f)
    _, concordant_masked, _ = harrell_pairs(t, e, m)
    rng = np.random.default_rng(seed)
    weights = rng.multinomial(len(t), np.full(len(t), 1.0 / len(t)), size=n_boot).astype(float)
    boot = _weighted_pairs(weights, comparable, concordant_full, rows) - _weighted_pairs(
        weights, comparable, concordant_masked, rows
    )
    boot = boot[np.isfinite(boot)]
    if not boot.size:
        return c_full, c_masked, drop, float("nan"), float("nan")
    return c_full, c_masked, drop, float(np.percentile(boot, 2.5)), float(np.percentile(boot, 97.5))


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman correlation; NaN when either side is constant or there are fewer than 3 values."""
    from scipy.stats import spearmanr

    if len(a) < 3 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")
    return float(spearmanr(a, b).statistic)


def rank_stability(fold_importance: dict[str, list[np.ndarray]], *, top_k: int = 10) -> dict:
    """Per modality: mean pairwise Spearman between the fold models' feature importance (mean |attribution|
    over each fold's held-out patients; 0 for a feature a fold did not select), over the features any fold
    used, and the mean pairwise overlap of their top-``top_k`` features (shared / ``top_k``)."""
    out = {}
    for name, per_fold in fold_importance.items():
        stack = np.vstack(per_fold) if per_fold else np.zeros((0, 0))
        if stack.shape[0] < 2:
            out[name] = {"spearman": None, "top_overlap": None, "n_folds": int(stack.shape[0]), "n_features": 0}
            continue
        used = np.flatnonzero((stack > 0).any(axis=0))
        rhos, overlaps = [], []
        k = min(top_k, len(used))
        for i in range(len(stack)):
            for j in range(i + 1, len(stack)):
                rho = spearman(stack[i, used], stack[j, used])
                if np.isfinite(rho):
                    rhos.append(rho)
                if k:
                    top_i = set(used[np.argsort(-stack[i, used], kind="stable")[:k]])
                    top_j = set(used[np.argsort(-stack[j, used], kind="stable")[:k]])
                    overlaps.append(len(top_i & top_j) / k)
        out[name] = {
            "spearman": float(np.mean(rhos)) if rhos else None,
            "top_overlap": float(np.mean(overlaps)) if overlaps else None,
            "top_k": int(k),
            "n_folds": int(stack.shape[0]),
            "n_features": int(len(used)),
        }
    return out


def find_truth(mdata, *, explicit: str | Path | None = None) -> Path | None:
    """The simulator's ``truth.json`` for this store: ``explicit`` when given, else the one the store's
    provenance points to (the resolved config's ``simulate.outdir`` when the simulator ran, else the
    directory of a recorded input file such as the clinical table); None for a cohort that was not simulated."""
    if explicit:
        return Path(explicit)
    provenance = mdata.uns.get("provenance", {})
    candidates = []
    try:
        config = json.loads(str(provenance.get("config_json") or "{}")) or {}
    except json.JSONDecodeError:
        config = {}
    simulate = config.get("simulate") if isinstance(config, dict) else None
    if isinstance(simulate, dict) and simulate.get("enabled") and simulate.get("outdir"):
        candidates.append(Path(str(simulate["outdir"])) / "truth.json")
    inputs = provenance.get("inputs")
    if isinstance(inputs, pd.DataFrame) and "path" in inputs:
        candidates.extend(Path(str(p)).parent / "truth.json" for p in inputs["path"].head(2))
    for path in candidates:
        if path.is_file():
            return path
    return None


def planted_features(truth_path: Path, var_by_modality: dict[str, pd.DataFrame]) -> dict[str, list[str]]:
    """The simulator's planted features per modality, from its ``truth.json``, matched to the store's features
    by gene symbol (driver genes in the variants modality, the expression program's genes) or feature name (the
    imaging feature)."""
    truth = json.loads(Path(truth_path).read_text())
    genes = {
        "variants": set(truth.get("driver_genes", {})),
        "expression": set(truth.get("expression_program", {}).get("genes", [])),
    }
    imaging = truth.get("imaging", {}).get("planted_feature")
    out = {}
    for name, var in var_by_modality.items():
        symbols = var["gene_symbol"].astype(str) if "gene_symbol" in var else pd.Series(var.index, index=var.index)
        if name in genes:
            hits = [str(f) for f, s in zip(var.index, symbols, strict=True) if s in genes[name] or f in genes[name]]
        elif name == "imaging" and imaging:
            hits = [str(f) for f in var.index if str(f) == imaging]
        else:
            continue
        if hits:
            out[name] = hits
    return out


def precision_at_k(ranked: list[str], planted: list[str], *, k: int = 10) -> float:
    """Share of the top ``k`` that are planted, out of what could be: |top-k ∩ planted| / min(k, |planted|)."""
    if not planted:
        return float("nan")
    return len(set(ranked[:k]) & set(planted)) / min(k, len(planted))
