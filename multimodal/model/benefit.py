"""Treatment benefit: counterfactual risk under every arm, predicted benefit, and how to judge it.

With ``model.treatment: {column: arm, reference: standard}`` the arm (a column of the clinical table, in
the store's ``obs``) becomes an input of its own, the ``treatment`` pseudo-modality: one indicator per
non-reference arm, taken out of the clinical covariates, never read by an encoder or the fusion, and
entering the risk only through the arm x features term of :class:`~multimodal.model.fusion.FusionNet`
(each arm's log-hazard effect is a linear function of the patient's fused representation plus a linear
function of its selected, scaled features).

For each held-out patient the fold's model is evaluated with the arm input set to every level and
everything else as measured (:func:`counterfactual_arrays`), giving ``risk_<arm>`` (log relative hazard)
and the predicted **benefit of an arm = risk under the reference minus risk under that arm**: positive
means the arm lowers the patient's hazard (minus the log hazard ratio of the arm against the reference).

Benefit is judged with
- the C-for-benefit (van Klaveren et al. 2018, J Clin Epidemiol 94:59-68), adapted to survival as written
  in :func:`c_for_benefit`;
- calibration of benefit: within groups (tertiles) of predicted benefit, the observed minus log hazard
  ratio of the arm and the difference in Kaplan-Meier survival at a time, against the mean predicted benefit;
- where the truth is known (a simulated cohort's ``truth.json``), the AUROC of predicted benefit for the
  true benefiters, beside the same for an elastic-net Cox model with arm x feature terms and the oracle.

All of this assumes the arms are comparable: randomised, or adjusted for every confounder of arm and
outcome; with confounded arms neither the counterfactual risks nor the observed benefit mean benefit.
"""

from __future__ import annotations

import json
import numbers
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd

from multimodal.errors import MultimodalError

#: name of the pseudo-modality carrying the arm indicators
TREATMENT_MODALITY = "treatment"
ASSUMPTION = (
    "the arms are comparable: assigned at random, or adjusted for every confounder of arm and outcome; "
    "otherwise the counterfactual risks and the observed benefit mix treatment effect with selection"
)
SIGN = (
    "benefit of an arm = predicted log relative hazard under the reference arm minus under that arm "
    "(= minus its log hazard ratio): positive means the arm lowers the patient's hazard"
)
C_FOR_BENEFIT_METHOD = (
    "van Klaveren et al. 2018, adapted to survival: treated and reference patients are ranked by predicted "
    "benefit and matched 1:1 by rank (the larger arm thinned to the smaller one's size at evenly spaced "
    "ranks); a pair's predicted benefit is the mean of its two patients'; its observed benefit is +1 when the "
    "treated patient outlived the reference patient (the earlier time is an event), -1 the other way round, "
    "0 for an event tie; pairs whose order censoring hides are left out. C is the concordance of predicted "
    "with observed benefit over pairs of pairs with different observed benefit (ties in prediction 0.5)"
)


HEAD = (
    "arm x features: each non-reference arm's log-hazard effect is linear in the patient's fused representation "
    "and in its selected, scaled features"
)
MODIFIER_HEAD = (
    "effect modifiers: each non-reference arm's log-hazard effect is linear in {n} effect modifiers only, chosen in "
    "each fold on its training rows by the Wald z of their arm x feature interaction (a Cox model with arm, feature "
    "and arm x feature per feature); listed per fold under effect_modifiers_per_fold"
)


@dataclass(frozen=True)
class TreatmentSpec:
    """``model.treatment``: the arm column, its reference level, and optionally a ``truth.json`` with a
    per-patient true benefit (simulated cohorts) to score predicted benefit against."""

    column: str
    reference: str
    truth: str | None = None

    @classmethod
    def from_config(cls, section) -> TreatmentSpec:
        if not hasattr(section, "items"):
            raise MultimodalError(
                f"model.treatment must be a mapping like {{column: arm, reference: standard}}, got {section!r}"
            )
        unknown = sorted(set(section) - {"column", "reference", "truth"})
        if unknown:
            raise MultimodalError(f"model.treatment: unknown setting(s) {unknown}; known: column, reference, truth")
        for key in ("column", "reference"):
            value = section.get(key)
            if isinstance(value, bool) or not isinstance(value, str | numbers.Number) or not str(value).strip():
                raise MultimodalError(f"model.treatment.{key} must be given (a column / level name), got {value!r}")
        truth = section.get("truth")
        if truth is not None and (not isinstance(truth, str | Path) or not str(truth).strip()):
            raise MultimodalError(f"model.treatment.truth must be a truth.json path or null, got {truth!r}")
        return cls(
            column=str(section["column"]).strip(),
            reference=str(section["reference"]).strip(),
            truth=str(truth) if truth is not None else None,
        )


def treatment_levels(obs: pd.DataFrame, spec: TreatmentSpec) -> list[str]:
    """The arms, reference first; refused in one line when the column or the reference is not there."""
    if spec.column not in obs:
        raise MultimodalError(
            f"model.treatment.column: the store's obs has no column {spec.column!r} (has {', '.join(map(str, obs))})"
        )
    values = _arm_values(obs, spec)
    levels = sorted(pd.unique(values.dropna()))
    if spec.reference not in levels:
        raise MultimodalError(
            f"model.treatment.reference {spec.reference!r} is not a level of column {spec.column!r} "
            f"(levels: {', '.join(levels)})"
        )
    if len(levels) < 2:
        raise MultimodalError(f"model.treatment: column {spec.column!r} has one arm only ({levels[0]}): no benefit")
    for level in levels:
        if level in {"penalised_cox", "clinical_cox", "cox_interaction"}:
            raise MultimodalError(f"model.treatment: arm name {level!r} clashes with a predictions column")
    return [spec.reference] + [lv for lv in levels if lv != spec.reference]


def _arm_values(obs: pd.DataFrame, spec: TreatmentSpec) -> pd.Series:
    values = obs[spec.column]
    text = values.astype(str).str.strip()
    return text.where(values.notna() & ~text.str.lower().isin({"", "nan", "none", "na"}))


def with_treatment(arrays, obs: pd.DataFrame, spec: TreatmentSpec):
    """``(arrays, levels)``: the cohort arrays with the arm taken out of every modality's features (the
    column itself or its one-hot ``column=level`` columns) and added as the ``treatment`` pseudo-modality
    (one 0/1 indicator per non-reference arm; a patient with no recorded arm lacks the modality)."""
    if TREATMENT_MODALITY in arrays.modalities:
        raise MultimodalError(f"the store has a modality named {TREATMENT_MODALITY!r}; model.treatment needs it free")
    levels = treatment_levels(obs, spec)
    arm = _arm_values(obs, spec).reindex(arrays.patients).to_numpy(dtype=object)
    known = pd.notna(arm)
    indicators = np.column_stack([(arm == level).astype(float) for level in levels[1:]])
    indicators[~known] = np.nan
    x, features = {}, {}
    for name in arrays.modalities:
        names = list(arrays.features[name])
        keep = [i for i, f in enumerate(names) if not (f == spec.column or str(f).startswith(f"{spec.column}="))]
        x[name] = arrays.x[name][:, keep]
        features[name] = [names[i] for i in keep]
    x[TREATMENT_MODALITY] = indicators
    features[TREATMENT_MODALITY] = [f"{spec.column}={level}" for level in levels[1:]]
    present = dict(arrays.present) | {TREATMENT_MODALITY: known}
    out = replace(arrays, modalities=[*arrays.modalities, TREATMENT_MODALITY], features=features, x=x, present=present)
    return out, levels


def arm_aware_preprocessor(preprocessor):
    """A fold preprocessor whose Cox screening scores a feature by its largest |z| over all training patients
    and within each arm, so a feature that acts in one arm only (an effect modifier such as KRAS under the
    experimental arm, whose pooled effect may cancel) can be screened in. Same fitted state, same file."""
    from multimodal.model.data import FoldPreprocessor

    class ArmAwarePreprocessor(FoldPreprocessor):
        def _screening_score(self, candidates, filled, std, arrays, rows):
            from multimodal.model.data import cox_score_statistics

            score = super()._screening_score(candidates, filled, std, arrays, rows)
            if self.screening != "cox" or TREATMENT_MODALITY not in arrays.x:
                return score
            arm = arrays.x[TREATMENT_MODALITY][rows]
            known = ~np.isnan(arm).any(axis=1)
            groups = [known & (np.nansum(arm, axis=1) == 0)] + [arm[:, i] == 1 for i in range(arm.shape[1])]
            for group in groups:
                if group.sum() >= 4 and arrays.event[rows][group].sum() > 0:
                    z = cox_score_statistics(
                        filled[np.ix_(group, candidates)], arrays.time[rows][group], arrays.event[rows][group]
                    )
                    score[candidates] = np.fmax(score[candidates], np.abs(z))
            return score

    return ArmAwarePreprocessor(
        max_features=preprocessor.max_features,
        screening=preprocessor.screening,
        max_correlation=preprocessor.max_correlation,
        min_nonzero=preprocessor.min_nonzero,
    )


def interaction_scores(x: np.ndarray, arm: np.ndarray, time: np.ndarray, event: np.ndarray) -> np.ndarray:
    """Per column of ``x``: |Wald z| of the arm x feature interaction, the largest over non-reference arms.

    For each feature a Cox model (Breslow ties, a tiny ridge for stability) with the arm indicators, the feature
    and arm x feature is fitted by Newton-Raphson on the given patients; the interaction coefficient over its
    standard error says how strongly the feature modifies the arm's effect. Patients without a recorded arm or
    outcome are left out; a feature that does not vary scores 0."""
    from multimodal.model.losses import risk_set_ends

    known = ~np.isnan(arm).any(axis=1) & np.isfinite(time) & np.isfinite(event)
    x, arm, time, event = x[known], arm[known], time[known], event[known]
    out = np.zeros(x.shape[1])
    if len(time) < 4 or event.sum() == 0:
        return out
    order, ends = risk_set_ends(time)
    dead = event[order] == 1
    n_arms = arm.shape[1]
    for j in range(x.shape[1]):
        column = x[:, j]
        if column.std() < 1e-12:
            continue
        design = np.column_stack([arm, column, arm * column[:, None]])[order]
        z = _cox_wald(design, ends, dead)[n_arms + 1 :]
        out[j] = np.nanmax(np.abs(z)) if np.isfinite(z).any() else 0.0
    return out


def _cox_wald(design: np.ndarray, ends: np.ndarray, dead: np.ndarray, *, ridge: float = 1e-3) -> np.ndarray:
    """Wald z of each coefficient of a Cox model (rows sorted by descending time, ``ends`` the last row of each
    row's risk set, ``dead`` the events), fitted by damped Newton-Raphson with a small ridge penalty."""
    p = design.shape[1]
    beta = np.zeros(p)
    outer = design[:, :, None] * design[:, None, :]
    information = np.eye(p)
    for _ in range(25):
        eta = design @ beta
        w = np.exp(eta - eta.max())
        s0 = np.cumsum(w)[ends][dead]
        s1 = np.cumsum(w[:, None] * design, axis=0)[ends][dead] / s0[:, None]
        s2 = np.cumsum(w[:, None, None] * outer, axis=0)[ends][dead] / s0[:, None, None]
        gradient = (design[dead] - s1).sum(axis=0) - ridge * beta
        information = (s2 - s1[:, :, None] * s1[:, None, :]).sum(axis=0) + ridge * np.eye(p)
        try:
            step = np.linalg.solve(information, gradient)
        except np.linalg.LinAlgError:
            return np.full(p, np.nan)
        step = step * min(1.0, 5.0 / max(np.abs(step).max(), 1e-12))  # damped: rare features may separate
        beta = beta + step
        if np.abs(step).max() < 1e-6:
            break
    try:
        variance = np.diag(np.linalg.inv(information))
    except np.linalg.LinAlgError:
        return np.full(p, np.nan)
    return beta / np.sqrt(np.clip(variance, 1e-12, None))


def select_effect_modifiers(preprocessor, arrays, rows: np.ndarray, n: int) -> list[int]:
    """The ``n`` fold-selected features whose arm x feature interaction is strongest on the training ``rows``
    (:func:`interaction_scores` on the fold-scaled inputs the network reads), as flat indices over the
    concatenated feature modalities (treatment excluded), ascending; ties: the earlier feature."""
    inputs, mask = preprocessor.transform(arrays, rows)
    j = arrays.modalities.index(TREATMENT_MODALITY)
    arm = np.asarray(arrays.x[TREATMENT_MODALITY][rows], dtype=float)  # 0/1 indicators (the input is scaled)
    flat = [t.numpy() * mask[:, i : i + 1].numpy() for i, t in enumerate(inputs) if i != j]
    x = np.column_stack(flat) if flat else np.zeros((len(rows), 0))
    if n == 0 or x.shape[1] == 0:
        return []
    score = interaction_scores(x, arm, arrays.time[rows], arrays.event[rows])
    return sorted(int(i) for i in np.argsort(-score, kind="stable")[: min(n, x.shape[1])])


def treatment_kwargs(params, data) -> dict:
    """Keyword arguments of :class:`~multimodal.model.fusion.FusionSurvivalModel` for the treatment input: none
    without ``model.treatment``; the arm input, and with ``model.effect_modifiers`` the fold's effect
    modifiers (chosen on its training rows)."""
    if params.treatment is None:
        return {}
    out: dict = {"treatment_modality": TREATMENT_MODALITY}
    if getattr(params, "effect_modifiers", None) is not None:
        data.setup()
        chosen = select_effect_modifiers(data.preprocessor, data.arrays, data.train_rows, int(params.effect_modifiers))
        names = [
            f"{name}:{feature}"
            for name in data.arrays.modalities
            if name != TREATMENT_MODALITY
            for feature in data.preprocessor.features[name]
        ]
        data.preprocessor.effect_modifier_names = [names[i] for i in chosen]  # said in metrics.json per fold
        out["effect_modifiers"] = chosen
    return out


def counterfactual_arrays(arrays, level: str, levels: list[str]):
    """The same cohort arrays with every patient's arm input set to ``level``; all other inputs are the
    very same arrays (not copies), so nothing but the arm can differ."""
    indicator = np.array([1.0 if lv == level else 0.0 for lv in levels[1:]])
    x = dict(arrays.x) | {TREATMENT_MODALITY: np.tile(indicator, (len(arrays.patients), 1))}
    present = dict(arrays.present) | {TREATMENT_MODALITY: np.ones(len(arrays.patients), dtype=bool)}
    return replace(arrays, x=x, present=present)


def counterfactual_risks(model, preprocessor, arrays, rows: np.ndarray, levels: list[str]) -> np.ndarray:
    """Rows x arms: the model's log relative hazard for each patient of ``rows`` under every arm."""
    import torch

    device = next(model.parameters()).device
    out = []
    with torch.no_grad():
        for level in levels:
            inputs, mask = preprocessor.transform(counterfactual_arrays(arrays, level, levels), rows)
            risk = model(*[t.to(device) for t in inputs], mask=mask.to(device))[0]
            out.append(risk.cpu().numpy().astype(float))
    return np.column_stack(out)


def cox_interaction_benefit(
    data, arrays, test_rows: np.ndarray, levels: list[str], *, seed: int
) -> tuple[np.ndarray, float, int]:
    """The reference for benefit: elastic-net Cox (as the penalised Cox reference) on the fold's selected,
    scaled features, has-modality indicators, the arm indicators and arm x each of those features, fitted
    on the training rows; returns rows x arms counterfactual risks, alpha and the inner folds used."""
    from multimodal.model.baselines import arm_interaction_design, penalised_cox_risk

    j = arrays.modalities.index(TREATMENT_MODALITY)

    def design(arr, rows):
        inputs, mask = data.preprocessor.transform(arr, rows)
        arm = inputs[j].numpy() * mask[:, j : j + 1].numpy()
        others = [t.numpy() for i, t in enumerate(inputs) if i != j]
        has = np.delete(mask.numpy().astype(float), j, axis=1)
        return arm_interaction_design(np.column_stack([*others, has]), arm)

    train = data.train_rows
    test_x = np.vstack([design(counterfactual_arrays(arrays, level, levels), test_rows) for level in levels])
    risk, alpha, inner = penalised_cox_risk(
        design(arrays, train), arrays.time[train], arrays.event[train], test_x, seed=seed
    )
    return risk.reshape(len(levels), len(test_rows)).T, alpha, inner


def add_benefit_columns(frame: pd.DataFrame, risks: np.ndarray, levels: list[str], *, suffix: str = "") -> None:
    """``risk_<arm>`` per arm and ``benefit_<arm>`` per non-reference arm (``benefit``: the first one)."""
    for i, level in enumerate(levels):
        if not suffix:
            frame[f"risk_{level}"] = risks[:, i]
    for i, level in enumerate(levels[1:], start=1):
        frame[f"benefit{suffix}_{level}"] = risks[:, 0] - risks[:, i]
    frame[f"benefit{suffix}"] = risks[:, 0] - risks[:, 1]


# --------------------------------------------------------------------------------------------------
# Evaluation of predicted benefit.


def _match(benefit: np.ndarray, treated: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Indices of 1:1 pairs (treated, control) matched by rank of predicted benefit."""
    t = np.flatnonzero(treated)
    c = np.flatnonzero(~treated)
    t = t[np.argsort(benefit[t], kind="stable")]
    c = c[np.argsort(benefit[c], kind="stable")]
    m = min(len(t), len(c))
    if m == 0:
        return np.zeros(0, dtype=int), np.zeros(0, dtype=int)
    thin = lambda idx: idx[np.round(np.linspace(0, len(idx) - 1, m)).astype(int)]  # noqa: E731
    return thin(t), thin(c)


def pair_observed_benefit(t_time, t_event, c_time, c_event) -> np.ndarray:
    """+1: the treated patient outlived the control (whose earlier time is an event); -1: the reverse;
    0: both events at the same time; NaN: censoring hides the order."""
    out = np.full(len(t_time), np.nan)
    out[(c_time < t_time) & (c_event > 0)] = 1.0
    out[(t_time < c_time) & (t_event > 0)] = -1.0
    out[(t_time == c_time) & (t_event > 0) & (c_event > 0)] = 0.0
    return out


def _concordance(predicted: np.ndarray, observed: np.ndarray) -> float:
    keep = np.isfinite(observed) & np.isfinite(predicted)
    p, o = predicted[keep], observed[keep]
    higher = o[:, None] > o[None, :]
    n = higher.sum()
    if n == 0:
        return float("nan")
    diff = p[:, None] - p[None, :]
    return float(((diff > 0) & higher).sum() + 0.5 * ((diff == 0) & higher).sum()) / float(n)


def c_for_benefit(benefit, treated, time, event) -> dict:
    """C-for-benefit (method: :data:`C_FOR_BENEFIT_METHOD`) over patients with an outcome and an arm."""
    benefit, time, event = (np.asarray(v, dtype=float) for v in (benefit, time, event))
    treated = np.asarray(treated, dtype=bool)
    keep = np.isfinite(benefit) & np.isfinite(time) & np.isfinite(event)
    idx = np.flatnonzero(keep)
    ti, ci = _match(benefit[idx], treated[idx])
    ti, ci = idx[ti], idx[ci]
    observed = pair_observed_benefit(time[ti], event[ti], time[ci], event[ci])
    predicted = (benefit[ti] + benefit[ci]) / 2
    return {
        "c_for_benefit": _concordance(predicted, observed),
        "n_pairs": int(len(ti)),
        "n_informative_pairs": int(np.isfinite(observed).sum()),
    }


def c_for_benefit_ci(benefit, treated, time, event, *, n_bootstrap: int, seed: int) -> list | None:
    """Percentile 95% CI of the C-for-benefit over bootstrap resamples of patients within each arm."""
    if n_bootstrap < 2:
        return None
    rng = np.random.default_rng(seed)
    benefit, time, event = (np.asarray(v, dtype=float) for v in (benefit, time, event))
    treated = np.asarray(treated, dtype=bool)
    arms = [np.flatnonzero(treated), np.flatnonzero(~treated)]
    values = []
    for _ in range(n_bootstrap):
        rows = np.concatenate([rng.choice(a, size=len(a), replace=True) for a in arms if len(a)])
        values.append(c_for_benefit(benefit[rows], treated[rows], time[rows], event[rows])["c_for_benefit"])
    values = np.asarray(values)
    values = values[np.isfinite(values)]
    return [float(np.percentile(values, 2.5)), float(np.percentile(values, 97.5))] if values.size else None


def _km_at(time: np.ndarray, event: np.ndarray, at: float) -> float:
    from sksurv.nonparametric import kaplan_meier_estimator

    if len(time) == 0 or not np.isfinite(at):
        return float("nan")
    t, s = kaplan_meier_estimator(event.astype(bool), time)
    if at > time.max():
        return float("nan")
    before = t <= at
    return float(s[before][-1]) if before.any() else 1.0


def _minus_log_hr(time: np.ndarray, event: np.ndarray, treated: np.ndarray) -> float:
    """Minus the log hazard ratio of treated vs control (one-covariate Cox, Breslow ties); NaN if undefined."""
    import warnings

    from sksurv.linear_model import CoxPHSurvivalAnalysis
    from sksurv.util import Surv

    if event.sum() == 0 or treated.all() or (~treated).all() or event[treated].sum() + event[~treated].sum() < 2:
        return float("nan")
    if event[treated].sum() == 0 or event[~treated].sum() == 0:
        return float("nan")  # infinite estimate
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fit = CoxPHSurvivalAnalysis().fit(treated[:, None].astype(float), Surv.from_arrays(event > 0, time))
        return float(-fit.coef_[0])
    except Exception:  # noqa: BLE001 - a group where the fit fails is reported as undefined
        return float("nan")


def benefit_calibration(benefit, treated, time, event, *, at: float, groups: int = 3) -> list[dict]:
    """Per group of predicted benefit (tertiles by default): patients per arm, mean predicted benefit, the
    observed minus log hazard ratio and the Kaplan-Meier survival difference (arm minus reference) at ``at``."""
    benefit, time, event = (np.asarray(v, dtype=float) for v in (benefit, time, event))
    treated = np.asarray(treated, dtype=bool)
    keep = np.isfinite(benefit) & np.isfinite(time) & np.isfinite(event)
    if keep.sum() < groups:
        return []
    codes = pd.qcut(pd.Series(benefit[keep]).rank(method="first"), groups, labels=False).to_numpy()
    rows = []
    for g in range(groups):
        b, t, e, a = (v[keep][codes == g] for v in (benefit, time, event, treated))
        rows.append(
            {
                "group": g + 1,
                "n": int(len(b)),
                "n_treated": int(a.sum()),
                "n_events": int(e.sum()),
                "predicted_range": [float(b.min()), float(b.max())],
                "mean_predicted_benefit": float(b.mean()),
                "observed_minus_log_hr": _minus_log_hr(t, e, a),
                "km_difference": _km_at(t[a], e[a], at) - _km_at(t[~a], e[~a], at),
            }
        )
    return rows


def read_true_benefit(path: str | Path) -> tuple[pd.Series, pd.Series]:
    """Per-patient true benefit and benefiter label from a simulated cohort's ``truth.json``."""
    truth = json.loads(Path(path).read_text())
    entry = truth.get("treatment_benefit")
    if not entry:
        raise MultimodalError(f"{path}: no treatment_benefit in the truth (simulate again with this version)")
    return pd.Series(entry["per_patient"], dtype=float), pd.Series(entry["benefiter"], dtype=float)


def evaluate_benefit(
    pred: pd.DataFrame, levels: list[str], spec: TreatmentSpec, *, n_bootstrap: int, seed: int, params=None
) -> dict:
    """metrics.json's ``benefit``: per non-reference arm, C-for-benefit (95% bootstrap CI), calibration of
    benefit by tertiles, and with ``spec.truth`` the AUROC for the true benefiters (model, Cox with arm
    interactions, oracle) and the oracle's C-for-benefit."""
    from multimodal.model.metrics import auroc

    with_outcome = pred["time"].notna() & pred["event"].notna()
    at = float(pred.loc[with_outcome, "time"].median()) if with_outcome.any() else float("nan")
    out = {
        "column": spec.column,
        "reference": spec.reference,
        "arms": levels,
        "assumption": ASSUMPTION,
        "sign": SIGN,
        "head": HEAD
        if params is None or getattr(params, "effect_modifiers", None) is None
        else MODIFIER_HEAD.format(n=params.effect_modifiers),
        "c_for_benefit_method": C_FOR_BENEFIT_METHOD,
        "calibration_method": "tertiles of predicted benefit; observed = minus the log hazard ratio of the arm "
        "(one-covariate Cox in the group) and Kaplan-Meier survival of the arm minus the reference at "
        f"{at:g} (the median observed time)",
        "km_time": at,
        "by_arm": {},
    }
    truth = read_true_benefit(spec.truth) if spec.truth else None
    for level in levels[1:]:
        part = pred[pred["arm"].isin([spec.reference, level])]
        treated = (part["arm"] == level).to_numpy()
        args = (treated, part["time"].to_numpy(float), part["event"].to_numpy(float))
        entry = {"n_patients": int(len(part)), "n_treated": int(treated.sum())}
        for name, column in (("model", f"benefit_{level}"), ("cox_interaction", f"benefit_cox_interaction_{level}")):
            if column not in part or not part[column].notna().any():
                continue
            b = part[column].to_numpy(float)
            entry[name] = c_for_benefit(b, *args) | {
                "c_for_benefit_ci": c_for_benefit_ci(b, *args, n_bootstrap=n_bootstrap, seed=seed),
                "calibration": benefit_calibration(b, *args, at=at),
            }
        if truth is not None:
            true_benefit, benefiter = (s.reindex(pred["patient_id"]).to_numpy(float) for s in truth)
            label = benefiter
            entry["truth"] = {
                "source": str(spec.truth),
                "benefiters": "patients whose true benefit exceeds the arm's common effect "
                "(the planted arm x biomarker interaction); AUROC over every held-out patient",
                "n_benefiters": int(np.nansum(label)),
                "auroc_model": auroc(label, pred[f"benefit_{level}"].to_numpy(float)),
                "auroc_cox_interaction": auroc(label, pred[f"benefit_cox_interaction_{level}"].to_numpy(float))
                if f"benefit_cox_interaction_{level}" in pred
                else float("nan"),
                "auroc_oracle": auroc(label, true_benefit),
                "oracle_c_for_benefit": c_for_benefit(
                    pd.Series(true_benefit, index=pred.index).loc[part.index].to_numpy(float), *args
                )["c_for_benefit"],
            }
        out["by_arm"][level] = entry
    return out
