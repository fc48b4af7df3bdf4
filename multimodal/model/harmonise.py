"""ComBat harmonisation of one modality's features by site, fitted inside a training fold.

``model.harmonise: {modality: imaging, site_column: site, covariates: [age, sex], unseen_site: reference}``
removes the per-site location and scale of every feature (a scanner's intensity offset shifts every
first-order intensity feature of its patients) while keeping the effects of the listed clinical covariates.

The fit is neuroCombat's (parametric empirical Bayes, Johnson et al. 2007), run on the fold's training
patients only. From its estimates :class:`ComBatFit` keeps what applying it to other patients needs: the
grand mean, pooled variance, covariate coefficients and each training site's location ``gamma*`` and
scale ``delta*``. A held-out patient of a training site is adjusted with its site's estimates and its own
covariates, exactly as ComBat adjusts a training patient (:func:`apply` reproduces neuroCombat's output on
the training rows). Patients of a site with no (or one) training patient follow ``unseen_site``:

- ``reference``: their location and scale are estimated from the features of the patients of that site
  being transformed together (a fold's held-out rows; never their outcomes) and mapped to the pooled
  training mean and variance (ComBat without the empirical Bayes shrinkage); a site with a single such
  patient cannot be estimated and is left as is;
- ``none``: left as is.

Either way they are counted (``unseen_site_patients`` / ``unseen_site_left_as_is``). Features that are
constant within a training site, and missing values, are not harmonised (a missing value stays missing, to
be imputed by the fold's preprocessing); the number of harmonised features is counted.
"""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from multimodal.errors import MultimodalError

UNSEEN_SITE_RULES = ("reference", "none")


@dataclass(frozen=True)
class HarmoniseSpec:
    """``model.harmonise``: the modality harmonised, the obs column naming each patient's site, the obs
    columns whose effects are preserved, and the rule for a site absent from training."""

    modality: str = "imaging"
    site_column: str = "site"
    covariates: tuple[str, ...] = ()
    unseen_site: str = "reference"

    @classmethod
    def from_config(cls, section) -> HarmoniseSpec:
        """Validate ``model.harmonise`` (a mapping) in one line per problem."""
        if isinstance(section, HarmoniseSpec):
            return section
        if not isinstance(section, dict):
            raise MultimodalError(
                "model.harmonise must be a mapping like {modality: imaging, site_column: site} or null, "
                f"got {section!r}"
            )
        known = {"modality", "site_column", "covariates", "unseen_site"}
        unknown = sorted(set(section) - known)
        if unknown:
            raise MultimodalError(f"model.harmonise: unknown setting(s) {unknown}; known: {sorted(known)}")
        for key in ("modality", "site_column"):
            value = section.get(key, getattr(cls, key))
            if not isinstance(value, str) or not value:
                raise MultimodalError(f"model.harmonise.{key} must be a name, got {value!r}")
        covariates = section.get("covariates") or []
        if isinstance(covariates, str) or not all(isinstance(c, str) and c for c in covariates):
            raise MultimodalError(f"model.harmonise.covariates must be a list of obs column names, got {covariates!r}")
        rule = section.get("unseen_site", cls.unseen_site)
        if rule not in UNSEEN_SITE_RULES:
            raise MultimodalError(
                f"model.harmonise.unseen_site must be one of {', '.join(UNSEEN_SITE_RULES)}, got {rule!r}"
            )
        site_column = section.get("site_column", cls.site_column)
        if site_column in covariates:
            raise MultimodalError(f"model.harmonise.covariates must not hold the site column {site_column!r}")
        return cls(
            modality=section.get("modality", cls.modality),
            site_column=site_column,
            covariates=tuple(covariates),
            unseen_site=rule,
        )

    def as_dict(self) -> dict:
        """The plain mapping (params.json, the fold's preprocessing file)."""
        return {
            "modality": self.modality,
            "site_column": self.site_column,
            "covariates": list(self.covariates),
            "unseen_site": self.unseen_site,
        }


@dataclass
class ComBatFit:
    """ComBat estimates from one fold's training patients (features are columns of the modality)."""

    sites: np.ndarray  # fitted site names
    columns: np.ndarray  # indices of the harmonised features
    grand_mean: np.ndarray  # per harmonised feature
    var_pooled: np.ndarray
    gamma: np.ndarray  # sites x harmonised features
    delta: np.ndarray
    terms: np.ndarray  # covariate design columns: "age" (numeric) or "sex=M" (indicator)
    term_fill: np.ndarray  # per term, the training mean (fills a missing numeric covariate)
    beta: np.ndarray  # terms x harmonised features
    counts: dict[str, int] = field(default_factory=dict)

    ARRAYS = ("sites", "columns", "grand_mean", "var_pooled", "gamma", "delta", "terms", "term_fill", "beta")

    def to_arrays(self, prefix: str) -> dict[str, np.ndarray]:
        """Flat ``{prefix/key: array}`` for an ``.npz`` file (counts included)."""
        out = {f"{prefix}/{key}": np.asarray(getattr(self, key)) for key in self.ARRAYS}
        out[f"{prefix}/count_names"] = np.asarray(list(self.counts), dtype=str)
        out[f"{prefix}/count_values"] = np.asarray(list(self.counts.values()), dtype=np.int64)
        return out

    @classmethod
    def from_arrays(cls, data: dict[str, np.ndarray], prefix: str) -> ComBatFit:
        """Read what :meth:`to_arrays` wrote."""
        values = {key: np.asarray(data[f"{prefix}/{key}"]) for key in cls.ARRAYS}
        counts = dict(
            zip(
                (str(n) for n in data[f"{prefix}/count_names"]),
                (int(v) for v in data[f"{prefix}/count_values"]),
                strict=True,
            )
        )
        return cls(**values, counts=counts)


def site_labels(obs: pd.DataFrame | None, rows: np.ndarray, spec: HarmoniseSpec, fallback: np.ndarray) -> np.ndarray:
    """Each row's site as a string (``fallback``, the cohort arrays' site, when obs is not at hand)."""
    if obs is None:
        if spec.site_column != "site":
            raise MultimodalError(f"model.harmonise.site_column {spec.site_column!r}: the store's obs is not at hand")
        return np.asarray(fallback[rows], dtype=str)
    if spec.site_column not in obs:
        raise MultimodalError(
            f"model.harmonise.site_column: the store's obs has no column {spec.site_column!r} "
            f"(has {', '.join(map(str, obs.columns))})"
        )
    return obs[spec.site_column].iloc[rows].astype(str).to_numpy()


def _covariate_frame(obs: pd.DataFrame | None, rows: np.ndarray, spec: HarmoniseSpec) -> pd.DataFrame:
    if not spec.covariates:
        return pd.DataFrame(index=range(len(rows)))
    if obs is None:
        raise MultimodalError("model.harmonise.covariates: the store's obs is not at hand")
    missing = [c for c in spec.covariates if c not in obs]
    if missing:
        raise MultimodalError(
            f"model.harmonise.covariates: the store's obs has no column {missing[0]!r} "
            f"(has {', '.join(map(str, obs.columns))})"
        )
    return obs[list(spec.covariates)].iloc[rows].reset_index(drop=True)


def _design_terms(frame: pd.DataFrame) -> tuple[list[str], list[float]]:
    """Covariate design columns from the training rows: a numeric column as is (missing: its mean), a
    categorical one as indicators of every level but the first (sorted), as ComBat's design does."""
    terms, fill = [], []
    for column in frame.columns:
        numeric = pd.to_numeric(frame[column], errors="coerce")
        if numeric.notna().sum() == frame[column].notna().sum() and numeric.notna().any():
            terms.append(str(column))
            fill.append(float(numeric.mean()))
        else:
            levels = sorted(pd.unique(frame[column].astype(str)))
            terms.extend(f"{column}={level}" for level in levels[1:])
            fill.extend(0.0 for _ in levels[1:])
    return terms, fill


def _design(frame: pd.DataFrame, terms: np.ndarray, fill: np.ndarray) -> np.ndarray:
    design = np.zeros((len(frame), len(terms)))
    for j, term in enumerate(terms):
        column, is_level, level = str(term).partition("=")
        if is_level:
            design[:, j] = (frame[column].astype(str) == level).to_numpy(float)
        else:
            design[:, j] = pd.to_numeric(frame[column], errors="coerce").fillna(fill[j]).to_numpy(float)
    return design


def fit(values: np.ndarray, sites: np.ndarray, covariates: pd.DataFrame, *, parametric: bool = True) -> ComBatFit:
    """ComBat (neuroCombat, empirical Bayes) on training rows ``values`` (patients x features).

    Sites with fewer than 2 patients are not fitted (their patients follow the unseen-site rule). Only
    features observed and not constant in every fitted site are harmonised; missing values are filled with
    the feature's training mean for the fit only.
    """
    from neuroCombat import neuroCombat

    values = np.asarray(values, dtype=float)
    sites = np.asarray(sites, dtype=str)
    names, size = np.unique(sites, return_counts=True)
    fitted = names[size >= 2]
    in_fit = np.isin(sites, fitted)
    x = values[in_fit]
    observed = (~np.isnan(x)).any(axis=0) if len(x) else np.zeros(values.shape[1], dtype=bool)
    mean = np.zeros(values.shape[1])
    mean[observed] = np.nanmean(x[:, observed], axis=0)
    filled = np.where(np.isnan(x), mean, x)
    frame = covariates.iloc[np.flatnonzero(in_fit)].reset_index(drop=True)
    terms, fill = _design_terms(frame)
    design = _design(frame, np.asarray(terms, dtype=str), np.asarray(fill))
    counts = {
        "training_patients": int(len(values)),
        "training_sites": int(len(names)),
        "fitted_sites": int(len(fitted)),
        "training_patients_of_unfitted_sites": int((~in_fit).sum()),
        "features": int(values.shape[1]),
    }
    usable = observed.copy()
    for site in fitted:
        usable &= filled[sites[in_fit] == site].std(axis=0) > 1e-8 * np.maximum(1.0, np.abs(mean))
    # a covariate collinear with site (or constant) would make ComBat's design singular: refuse in one line
    full = np.column_stack([(sites[in_fit][:, None] == fitted[None, :]).astype(float), design])
    if len(fitted) >= 2 and usable.any() and np.linalg.matrix_rank(full) < full.shape[1]:
        raise MultimodalError(
            f"model.harmonise.covariates {', '.join(covariates.columns)}: collinear with the site (or constant) "
            f"among a fold's {len(x)} training patients; ComBat cannot preserve them"
        )
    columns = np.flatnonzero(usable) if len(fitted) >= 2 else np.zeros(0, dtype=int)
    counts["harmonised_features"] = int(len(columns))
    counts["not_harmonised_constant_within_a_site"] = int(values.shape[1] - len(columns)) if len(fitted) >= 2 else 0
    counts["not_harmonised_fewer_than_2_sites"] = int(values.shape[1]) if len(fitted) < 2 else 0
    empty = np.zeros((len(fitted), 0))
    if not len(columns):
        return ComBatFit(
            sites=fitted,
            columns=columns,
            grand_mean=np.zeros(0),
            var_pooled=np.zeros(0),
            gamma=empty,
            delta=empty,
            terms=np.asarray(terms, dtype=str),
            term_fill=np.asarray(fill, dtype=float),
            beta=np.zeros((len(terms), 0)),
            counts=counts,
        )
    covars = pd.DataFrame({"site": sites[in_fit]})
    term_names = [f"covariate_{j}" for j in range(design.shape[1])]
    for j, name in enumerate(term_names):
        covars[name] = design[:, j]
    with contextlib.redirect_stdout(io.StringIO()):  # neuroCombat prints its progress
        result = neuroCombat(
            filled[:, columns].T,
            covars,
            "site",
            categorical_cols=[],
            continuous_cols=term_names,
            eb=True,
            parametric=parametric,
        )
    estimates = result["estimates"]
    if not np.array_equal(np.asarray(estimates["batches"]).astype(str), fitted):
        raise MultimodalError("ComBat returned its sites in an unexpected order")
    mod_mean = np.asarray(estimates["mod.mean"], dtype=float).T  # patients x features
    if design.shape[1]:
        beta = np.linalg.lstsq(design, mod_mean, rcond=None)[0]
    else:
        beta = np.zeros((0, len(columns)))
    return ComBatFit(
        sites=fitted,
        columns=columns,
        grand_mean=np.asarray(estimates["stand.mean"], dtype=float)[:, 0],
        var_pooled=np.asarray(estimates["var.pooled"], dtype=float)[:, 0],
        gamma=np.asarray(estimates["gamma.star"], dtype=float),
        delta=np.asarray(estimates["delta.star"], dtype=float),
        terms=np.asarray(terms, dtype=str),
        term_fill=np.asarray(fill, dtype=float),
        beta=beta,
        counts=counts,
    )


def apply(
    combat: ComBatFit, values: np.ndarray, sites: np.ndarray, covariates: pd.DataFrame, *, unseen_site: str
) -> tuple[np.ndarray, dict[str, int]]:
    """Harmonised copy of ``values`` (patients x features) and counts of unseen-site patients.

    A patient of a fitted site: ``((x - mean - cov) / sqrt(var) - gamma*) / sqrt(delta*) * sqrt(var) + mean + cov``
    with ``cov`` its covariates' fitted effects. Other patients follow ``unseen_site`` (see the module).
    """
    values = np.asarray(values, dtype=float)
    out = values.copy()
    sites = np.asarray(sites, dtype=str)
    counts = {"unseen_site_patients": 0, "unseen_site_left_as_is": 0}
    cols = combat.columns
    if not len(cols) or not len(values):
        known = np.isin(sites, combat.sites)
        counts["unseen_site_patients"] = counts["unseen_site_left_as_is"] = int((~known).sum()) if len(cols) else 0
        return out, counts
    x = values[:, cols]
    effect = _design(covariates, combat.terms, combat.term_fill) @ combat.beta
    centre = combat.grand_mean + effect
    sd = np.sqrt(combat.var_pooled)
    standard = (x - centre) / sd
    index = {str(s): i for i, s in enumerate(combat.sites)}
    adjusted = x.copy()
    for site in np.unique(sites):
        here = sites == site
        if site in index:
            k = index[site]
            adjusted[here] = (standard[here] - combat.gamma[k]) / np.sqrt(combat.delta[k]) * sd + centre[here]
            continue
        counts["unseen_site_patients"] += int(here.sum())
        if unseen_site == "none" or here.sum() < 2:
            counts["unseen_site_left_as_is"] += int(here.sum())
            continue
        location = np.nanmean(standard[here], axis=0)
        scale = np.nanstd(standard[here], axis=0)
        ok = np.isfinite(location) & np.isfinite(scale) & (scale > 1e-8)
        block = adjusted[here]
        block[:, ok] = (standard[here][:, ok] - location[ok]) / scale[ok] * sd[ok] + centre[here][:, ok]
        adjusted[here] = block
    adjusted = np.where(np.isnan(x), np.nan, adjusted)  # a missing value stays missing
    out[:, cols] = adjusted
    return out, counts


def covariates_of(obs: pd.DataFrame | None, rows: np.ndarray, spec: HarmoniseSpec) -> pd.DataFrame:
    """The covariates of ``rows`` (positions in obs) as a frame (no columns when none are preserved)."""
    return _covariate_frame(obs, rows, spec)


def fit_fold(settings: dict, arrays, rows: np.ndarray, values: np.ndarray) -> tuple[ComBatFit, np.ndarray]:
    """Fit ComBat on a fold's training ``rows`` (positions in ``arrays``, a CohortArrays) of one modality's
    ``values``; return the fit and the harmonised training values (used for selection and scaling)."""
    spec = HarmoniseSpec.from_config(settings)
    obs = getattr(arrays, "obs", None)
    sites = site_labels(obs, rows, spec, arrays.site)
    covariates = covariates_of(obs, rows, spec)
    combat = fit(values, sites, covariates)
    harmonised, _ = apply(combat, values, sites, covariates, unseen_site=spec.unseen_site)
    return combat, harmonised


def apply_fold(
    settings: dict, combat: ComBatFit, arrays, rows: np.ndarray, values: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Harmonised ``values`` of ``rows`` and the positions (in ``arrays``) of those that are of a site the
    fit does not know (counted in the fold's provenance)."""
    spec = HarmoniseSpec.from_config(settings)
    obs = getattr(arrays, "obs", None)
    sites = site_labels(obs, rows, spec, arrays.site)
    harmonised, _ = apply(combat, values, sites, covariates_of(obs, rows, spec), unseen_site=spec.unseen_site)
    unseen = rows[~np.isin(sites, combat.sites)] if len(combat.columns) else rows[:0]
    return harmonised, unseen


def save_state(settings: dict, combat: dict[str, ComBatFit]) -> dict[str, np.ndarray]:
    """``.npz`` entries (``harmonise/...``) holding the settings and every modality's fit."""
    import json

    payload = {"harmonise/settings": np.asarray(json.dumps(HarmoniseSpec.from_config(settings).as_dict()))}
    for name, state in combat.items():
        payload.update(state.to_arrays(f"harmonise/mod/{name}"))
    return payload


def load_state(data) -> tuple[dict, dict[str, ComBatFit]]:
    """The settings and fits :func:`save_state` wrote (``data``: an opened ``.npz``)."""
    import json

    settings = json.loads(str(data["harmonise/settings"]))
    names = {key.split("/")[2] for key in data.files if key.startswith("harmonise/mod/")}
    return settings, {name: ComBatFit.from_arrays(data, f"harmonise/mod/{name}") for name in sorted(names)}
