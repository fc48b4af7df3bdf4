"""Captum attributions of the cross-validated fusion models, for held-out patients only, and what they say.

Each patient is explained by the fold model that did not see it (the mean over a fold's ensemble members:
every method used here is linear in the model's output). The attributed output is the log relative hazard;
inputs are the fold-scaled features, one tensor per modality (Captum's tuple form), and the baseline is the
training-fold mean (zero after scaling) with the patient's own modality mask; ``gradient_shap`` draws its
baselines from the fold's training patients instead (seeded). Methods: :mod:`multimodal.attribution.methods`.

Writes under ``out_dir``:

- ``attributions.zarr``: MuData (Zarr v3), ``mod/<modality>`` = held-out patients having the modality x
  features: ``X`` the attributions (0 for features not selected in that patient's fold), layer ``value`` the
  patients' raw store values (before fold scaling); ``var`` the importance and direction columns below;
  ``uns['attribution']`` the method, its parameters, the convergence-delta summary and ``convergence_warning``
  (empty when mean |delta| is within ``delta_warning`` x the mean absolute deviation of the held-out risks);
- ``feature_importance.tsv``: per modality and feature, mean |attribution| over held-out patients having the
  modality, the signed mean, the rank within the modality, and the direction of effect: ``direction``
  (carriers minus non-carriers' mean attribution for a 0/1 or mutation-count feature, ``direction_kind``
  ``carrier_difference``; else the Spearman correlation between value and attribution, ``rank_correlation``),
  ``direction_p`` and ``direction_sign`` (``raises_risk`` | ``lowers_risk`` | ``unclear``: p >= 0.05);
- ``modality_contributions.tsv``: per patient: fold, risk, the cohort percentile of the risk, ``risk_group``
  (tertiles of the held-out risk over the cohort: low / intermediate / high), ``response_prob`` (from the
  model's predictions.tsv), the summed attribution of each modality, ``group_<modality>`` (the modality's
  contribution by ``group_method`` over modality groups) and the convergence delta;
- ``modality_value.tsv``: per modality, held-out Harrell's C of the fold models (pooled over folds) with and
  without that modality masked at prediction, the drop with a paired bootstrap 95% CI (patients resampled,
  seeded) and ``shapley_share``: the modality's share of sum |group contribution| over patients and modalities;
- ``trust.json``: ``rank_stability`` (per modality, mean pairwise Spearman of the fold models' feature
  importance and top-10 overlap), ``randomisation`` (Spearman between the feature importance of each trained
  fold model and of a re-initialised model of the same architecture on the same patients; ``passed`` when
  below ``randomisation_max``) and, for a simulated cohort, ``planted_precision_at_10`` per modality (planted
  features read from the simulator's truth.json the store's provenance leads to).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from multimodal.attribution.methods import (
    GROUP_METHODS,
    METHODS,
    MethodSettings,
    attribute_batch,
    attribute_groups,
    masked_risk,
)
from multimodal.attribution.summaries import (
    bootstrap_c_drop,
    feature_direction,
    find_truth,
    is_binary,
    planted_features,
    precision_at_k,
    rank_stability,
    spearman,
)
from multimodal.errors import MultimodalError
from multimodal.fileio import atomic_path

if TYPE_CHECKING:
    import mudata
    import torch

    from multimodal.model.fusion import FusionSurvivalModel

log = logging.getLogger(__name__)

__all__ = ["GROUP_METHODS", "METHODS", "attribute_fold", "explain_cohort", "risk_groups"]

#: feature classes whose value counts events (carrier: count > 0), treated as binary for the direction
COUNT_CLASSES = {"gene_mutation_count"}
RISK_GROUPS = ("low", "intermediate", "high")
N_BASELINES = 100


def attribute_fold(
    model: FusionSurvivalModel,
    inputs: list[torch.Tensor],
    mask: torch.Tensor,
    *,
    n_steps: int = 64,
) -> tuple[list[np.ndarray], np.ndarray]:
    """Integrated Gradients of the risk output for a batch: one array per modality, and the deltas.

    A modality with no feature in this fold has nothing to attribute (an empty array is returned for it).
    """
    return attribute_batch(model, inputs, mask, settings=MethodSettings(n_steps=n_steps))


def model_fingerprint(model_dir: str | Path) -> str:
    """A short hash naming one trained model run (its settings, folds and held-out predictions)."""
    import hashlib

    digest = hashlib.sha256()
    for name in ("params.json", "folds.tsv", "predictions.tsv"):
        path = Path(model_dir) / name
        digest.update(path.read_bytes() if path.is_file() else b"")
    return digest.hexdigest()[:16]


def check_model_store(recorded: str | None, mdata, *, model_dir: str | Path) -> None:
    """Raise when a model was trained on another cohort store than ``mdata`` (by fingerprint, not path)."""
    from multimodal.store import store_fingerprint

    if recorded and recorded != store_fingerprint(mdata):
        raise MultimodalError(
            f"{model_dir}: this model was trained on another cohort store (fingerprint {recorded}, this store "
            f"{store_fingerprint(mdata)}); retrain on this store or pass the store it was trained on"
        )


def risk_groups(risk: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Cohort percentile (0-100, share of scored patients with a lower or equal risk) and tertile risk group
    (low / intermediate / high, cut at the 1/3 and 2/3 quantiles of the scored patients' risk) per patient;
    NaN and "" for a patient without a risk."""
    finite = np.isfinite(risk)
    percentile = np.full(len(risk), np.nan)
    group = np.full(len(risk), "", dtype=object)
    if finite.any():
        scored = np.sort(risk[finite])
        percentile[finite] = 100.0 * np.searchsorted(scored, risk[finite], side="right") / len(scored)
        low, high = np.quantile(scored, [1 / 3, 2 / 3])
        group[finite] = np.where(risk[finite] <= low, RISK_GROUPS[0], np.where(risk[finite] <= high, *RISK_GROUPS[1:]))
    return percentile, group


def _raw_values(mdata, arrays, name: str) -> np.ndarray:
    """Patients x features of modality ``name`` as stored (before the log1p of counts and fold scaling): the
    store's X for its features, its obs for obs-derived features (``TMB``), the model input otherwise (the arm)."""
    values = np.array(arrays.x[name], dtype=np.float64)
    if name not in mdata.mod:
        return values
    adata = mdata.mod[name]
    rows = pd.Index(arrays.patients).get_indexer(adata.obs_names)
    features = list(arrays.features[name])
    cols = adata.var_names.get_indexer(features)
    matrix = adata.X.toarray() if hasattr(adata.X, "toarray") else np.asarray(adata.X)
    found = np.flatnonzero(cols >= 0)
    values[np.ix_(rows, found)] = np.asarray(matrix, dtype=np.float64)[:, cols[found]]
    lower = {str(c).upper(): c for c in adata.obs.columns}
    for j in np.flatnonzero(cols < 0):
        column = lower.get(str(features[j]).upper())
        if column is not None:
            values[rows, j] = pd.to_numeric(adata.obs[column], errors="coerce").to_numpy(dtype=float)
    return values


def _device(choice: str):
    import torch

    if choice == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if choice == "cuda" and not torch.cuda.is_available():
        raise MultimodalError("explain.device is cuda but no CUDA device is available")
    return torch.device(choice)


def explain_cohort(
    mdata: mudata.MuData,
    model_dir: str | Path,
    out_dir: str | Path,
    *,
    method: str = "integrated_gradients",
    n_steps: int = 64,
    n_samples: int = 20,
    internal_batch_size: int | None = None,
    group_method: str = "shapley_value_sampling",
    group_samples: int = 25,
    delta_warning: float = 0.05,
    bootstrap: int = 1000,
    randomisation_max: float = 0.5,
    truth: str | Path | None = None,
    seed: int = 0,
    device: str = "auto",
    progress: bool = True,
) -> pd.DataFrame:
    """Attribute every held-out patient with its fold's model; write the outputs listed in the module
    docstring; return the feature importance table."""
    import anndata as ad
    import mudata as md
    import torch
    from tqdm.auto import tqdm

    from multimodal.model.data import FoldPreprocessor, cohort_arrays
    from multimodal.model.fusion import FusionSurvivalModel
    from multimodal.store import configure_zarr_v3, store_fingerprint

    settings = MethodSettings(
        method=method,
        n_steps=int(n_steps),
        n_samples=int(n_samples),
        internal_batch_size=internal_batch_size,
        group_method=group_method,
        group_samples=int(group_samples),
        seed=int(seed),
    )
    if not delta_warning > 0:
        raise MultimodalError(f"explain.delta_warning must be positive, got {delta_warning}")
    target = _device(device)
    model_dir = Path(model_dir)
    params_path = model_dir / "params.json"
    if not params_path.is_file():
        raise MultimodalError(f"{model_dir}: not a model directory (no params.json); run `multimodal train` first")
    params = json.loads(params_path.read_text())
    check_model_store(params.get("store_fingerprint"), mdata, model_dir=model_dir)
    modalities = params["modalities"]
    folds = pd.read_csv(model_dir / "folds.tsv", sep="\t", dtype={"patient_id": str}).set_index("patient_id")["fold"]
    if params.get("train", {}).get("treatment"):  # the arm: rebuilt from obs as training did
        from multimodal.model.benefit import TREATMENT_MODALITY, TreatmentSpec, with_treatment

        stored = [m for m in modalities if m != TREATMENT_MODALITY]
        spec = TreatmentSpec(**params["train"]["treatment"])
        arrays, _ = with_treatment(cohort_arrays(mdata, modalities=stored), mdata.obs, spec)
    else:
        arrays = cohort_arrays(mdata, modalities=modalities)
    missing = [p for p in arrays.patients if p not in folds.index]
    if missing:
        raise MultimodalError(f"{model_dir}: patient {missing[0]} of the store has no fold; store and model differ")
    fold_of = folds.reindex(arrays.patients).to_numpy()

    n_patients, n_mod = len(arrays.patients), len(modalities)
    full = {name: np.full((n_patients, len(arrays.features[name])), np.nan) for name in modalities}
    risk = np.full(n_patients, np.nan)
    deltas = np.full(n_patients, np.nan)
    groups = np.full((n_patients, n_mod), np.nan)
    masked = np.full((n_patients, n_mod), np.nan)
    fold_importance: dict[str, list[np.ndarray]] = {name: [] for name in modalities}
    randomisation = []
    # A patient no fold holds out (user splits may leave some out) has no fold, hence no attribution.
    n_folds = int(np.nanmax(fold_of)) + 1 if np.isfinite(fold_of).any() else 0
    for k in tqdm(range(n_folds), desc="explain", unit="fold", disable=not progress):
        fold_dir = model_dir / f"fold_{k}"
        rows = np.flatnonzero(fold_of == k)
        if not rows.size:
            continue
        prep = FoldPreprocessor.load(fold_dir / "preprocessing.npz")
        inputs, mask = prep.transform(arrays, rows)
        inputs, mask = [x.to(target) for x in inputs], mask.to(target)
        background = None
        if settings.method == "gradient_shap":  # baselines: a seeded draw of the fold's training patients
            train = np.flatnonzero(np.isfinite(fold_of) & (fold_of != k))
            draw = np.random.default_rng([settings.seed, k]).permutation(train)[:N_BASELINES]
            background = [x.to(target) for x in prep.transform(arrays, np.sort(draw))[0]]
        checkpoints = sorted(fold_dir.glob("model_*.ckpt"))
        if not checkpoints:
            raise MultimodalError(f"{fold_dir}: no model checkpoint (model_*.ckpt)")
        members = []
        for checkpoint in checkpoints:
            # weights_only: tensors and plain hyperparameters, never an unpickled object from a user-given path
            model = FusionSurvivalModel.load_from_checkpoint(str(checkpoint), map_location="cpu", weights_only=True)
            model = model.to(target).eval()
            attributions, delta = attribute_batch(model, inputs, mask, settings=settings, background=background)
            member_groups = attribute_groups(model, inputs, mask, settings=settings)
            member_masked = np.column_stack([masked_risk(model, inputs, mask, drop=j) for j in range(n_mod)])
            members.append((attributions, delta, masked_risk(model, inputs, mask), member_groups, member_masked))
        per_modality = [np.mean([m[0][j] for m in members], axis=0) for j in range(n_mod)]
        deltas[rows] = np.mean([m[1] for m in members], axis=0)
        risk[rows] = np.mean([m[2] for m in members], axis=0)
        groups[rows] = np.mean([m[3] for m in members], axis=0)
        masked[rows] = np.mean([m[4] for m in members], axis=0)
        for j, name in enumerate(modalities):
            block = np.zeros((len(rows), len(arrays.features[name])))
            block[:, prep.selected[name]] = per_modality[j]
            block[~arrays.present[name][rows]] = np.nan
            full[name][rows] = block
            has = arrays.present[name][rows]
            importance = np.abs(block[has]).mean(axis=0) if has.any() else np.zeros(block.shape[1])
            fold_importance[name].append(importance)
        # model randomisation: the same architecture, re-initialised, attributed on the same patients
        torch.manual_seed(settings.seed + 7919 * (k + 1))
        random_model = FusionSurvivalModel(**dict(model.hparams)).to(target).eval()
        random_attr, _ = attribute_batch(random_model, inputs, mask, settings=settings, background=background)
        trained = np.concatenate([np.abs(a).mean(axis=0) for a in per_modality if a.shape[1]] or [np.zeros(0)])
        shuffled = np.concatenate([np.abs(a).mean(axis=0) for a in random_attr if a.shape[1]] or [np.zeros(0)])
        randomisation.append(spearman(trained, shuffled))

    patient_index = pd.Index(arrays.patients, name="patient_id")
    percentile, group = risk_groups(risk)
    contributions = pd.DataFrame(
        {"fold": fold_of, "risk": risk, "risk_percentile": percentile, "risk_group": group}, index=patient_index
    )
    predictions_path = model_dir / "predictions.tsv"
    if predictions_path.is_file():
        predictions = pd.read_csv(predictions_path, sep="\t", dtype={"patient_id": str}).set_index("patient_id")
        if "response_prob" in predictions:
            contributions["response_prob"] = predictions["response_prob"].reindex(patient_index).to_numpy(float)
    importance_rows = []
    mods = {}
    for name in modalities:
        values = full[name]
        has = arrays.present[name]
        raw = _raw_values(mdata, arrays, name)
        mean_abs = np.nanmean(np.abs(values[has]), axis=0) if has.any() else np.zeros(values.shape[1])
        mean_signed = np.nanmean(values[has], axis=0) if has.any() else np.zeros(values.shape[1])
        order = np.argsort(-mean_abs, kind="stable")
        ranks = np.empty(len(order), dtype=int)
        ranks[order] = np.arange(1, len(order) + 1)
        source_var = mdata.mod[name].var if name in mdata.mod else pd.DataFrame()  # the arm: no store modality
        classes = source_var["feature_class"].astype(str) if "feature_class" in source_var else pd.Series(dtype=str)
        scored = has & np.isfinite(risk)
        direction = pd.DataFrame(
            [
                feature_direction(
                    raw[scored, j],
                    values[scored, j],
                    binary=classes.get(feature, "") in COUNT_CLASSES or is_binary(raw[scored, j]),
                )
                for j, feature in enumerate(arrays.features[name])
            ],
            columns=["direction", "direction_kind", "direction_sign", "direction_p"],
        )
        for j, feature in enumerate(arrays.features[name]):
            importance_rows.append(
                {
                    "modality": name,
                    "feature": feature,
                    "gene_symbol": source_var["gene_symbol"].get(feature, "") if "gene_symbol" in source_var else "",
                    "mean_abs_attribution": float(mean_abs[j]),
                    "mean_attribution": float(mean_signed[j]),
                    "rank": int(ranks[j]),
                    "n_patients": int(has.sum()),
                    **direction.iloc[j].to_dict(),
                }
            )
        contributions[name] = np.where(has, np.nansum(values, axis=1), np.nan)
        var = pd.DataFrame(
            {"mean_abs_attribution": mean_abs, "rank": ranks, **{c: direction[c].to_numpy() for c in direction}},
            index=pd.Index(arrays.features[name], name="feature"),
        )
        mods[name] = ad.AnnData(
            X=values[has].astype(np.float32),
            obs=pd.DataFrame({"fold": fold_of[has]}, index=patient_index[has]),
            var=var,
            layers={"value": raw[has].astype(np.float32)},
        )
    for j, name in enumerate(modalities):
        contributions[f"group_{name}"] = groups[:, j]
    importance = pd.DataFrame(importance_rows).sort_values(["modality", "rank"], kind="stable")
    contributions["convergence_delta"] = deltas

    # added value per modality: C with the modality masked at prediction, pooled over the held-out folds
    value_rows = []
    abs_groups = np.nansum(np.abs(groups), axis=0)
    total_abs = abs_groups.sum()
    for j, name in enumerate(modalities):
        c_full, c_masked, drop, low, high = bootstrap_c_drop(
            arrays.time, arrays.event, risk, masked[:, j], n_boot=int(bootstrap), seed=settings.seed + j
        )
        value_rows.append(
            {
                "modality": name,
                "c_index_full": c_full,
                "c_index_masked": c_masked,
                "drop": drop,
                "drop_ci_low": low,
                "drop_ci_high": high,
                "shapley_share": float(abs_groups[j] / total_abs) if total_abs > 0 else float("nan"),
                "n_patients_with_modality": int((arrays.present[name] & np.isfinite(risk)).sum()),
            }
        )
    modality_value = pd.DataFrame(value_rows)

    # convergence: mean |delta| against the spread of the held-out risks
    mean_abs_delta = float(np.nanmean(np.abs(deltas))) if np.isfinite(deltas).any() else float("nan")
    spread = float(np.nanmean(np.abs(risk - np.nanmean(risk)))) if np.isfinite(risk).any() else float("nan")
    threshold = delta_warning * spread
    warning = ""
    if np.isfinite(mean_abs_delta) and np.isfinite(threshold) and mean_abs_delta > threshold:
        warning = (
            f"mean |convergence delta| {mean_abs_delta:.3g} exceeds {delta_warning:g} x the mean absolute deviation "
            f"of the held-out risks ({threshold:.3g}); attributions do not add up to the risk differences "
            f"(raise explain.n_steps{' or n_samples' if settings.method == 'gradient_shap' else ''}, or read them "
            "as approximate)"
        )
        log.warning("%s", warning)

    trust = _trust(mdata, importance, fold_importance, randomisation, randomisation_max, truth)

    configure_zarr_v3()
    attr = md.MuData(mods)
    attr.uns["attribution"] = {
        "method": settings.method,
        "target": "log relative hazard (fold model of each held-out patient)",
        "baseline": (
            f"up to {N_BASELINES} training patients of the fold (seeded draw), patient's own modality mask"
            if settings.method == "gradient_shap"
            else "training-fold mean of each feature (0 after fold scaling), patient's own modality mask"
        ),
        "n_steps": int(settings.n_steps),
        "n_samples": int(settings.n_samples),
        "internal_batch_size": int(settings.internal_batch_size or 0),
        "integration": "gausslegendre",
        "group_method": settings.group_method,
        "group_samples": int(settings.group_samples),
        "group_removal": "modality masked (mask set to 0), as for a patient without it",
        "seed": int(settings.seed),
        "convergence_delta_mean_abs": mean_abs_delta,
        "convergence_delta_max_abs": float(np.nanmax(np.abs(deltas))) if np.isfinite(deltas).any() else float("nan"),
        "convergence_threshold": float(threshold),
        "convergence_threshold_rule": "delta_warning x mean |risk - mean risk| over held-out patients",
        "delta_warning": float(delta_warning),
        "convergence_warning": warning,
        "model_dir": str(model_dir),
        "model_fingerprint": model_fingerprint(model_dir),
        "store_fingerprint": store_fingerprint(mdata),
    }
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(out_dir / "attributions.zarr") as tmp:
        attr.write_zarr(str(tmp))
    with atomic_path(out_dir / "feature_importance.tsv") as tmp:
        importance.to_csv(tmp, sep="\t", index=False)
    with atomic_path(out_dir / "modality_contributions.tsv") as tmp:
        contributions.to_csv(tmp, sep="\t")
    with atomic_path(out_dir / "modality_value.tsv") as tmp:
        modality_value.to_csv(tmp, sep="\t", index=False)
    with atomic_path(out_dir / "trust.json") as tmp:
        tmp.write_text(json.dumps(trust, indent=1, allow_nan=False, default=_json_default))
    log.info("attributions for %d patients; mean |convergence delta| %.2e", len(risk), mean_abs_delta)
    return importance


def _json_default(value):
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def _finite(value: float) -> float | None:
    return float(value) if value is not None and np.isfinite(value) else None


def _trust(mdata, importance, fold_importance, randomisation, randomisation_max, truth) -> dict:
    """trust.json: rank stability, model randomisation and (simulated cohorts) precision of planted features."""
    stability = rank_stability(fold_importance)
    for entry in stability.values():
        for key in ("spearman", "top_overlap"):
            entry[key] = _finite(entry[key])
    finite = [r for r in randomisation if np.isfinite(r)]
    mean_rho = float(np.mean(finite)) if finite else float("nan")
    out = {
        "rank_stability": stability,
        "randomisation": {
            "spearman": _finite(mean_rho),
            "per_fold": [_finite(r) for r in randomisation],
            "threshold": float(randomisation_max),
            "passed": bool(np.isfinite(mean_rho) and mean_rho < randomisation_max),
            "definition": "Spearman between per-feature mean |attribution| of the trained fold model and of a "
            "re-initialised model of the same architecture, same patients and method; mean over folds",
        },
    }
    truth_path = find_truth(mdata, explicit=truth)
    if truth_path is not None:
        if not truth_path.is_file():
            raise MultimodalError(f"explain.truth: {truth_path}: file not found")
        var = {name: mdata.mod[name].var for name in fold_importance if name in mdata.mod}
        planted = planted_features(truth_path, var)
        precision = {}
        for name, features in planted.items():
            ranked = importance[importance["modality"] == name].sort_values("rank")["feature"].astype(str).tolist()
            precision[name] = {
                "precision": _finite(precision_at_k(ranked, features, k=10)),
                "planted": features,
                "in_top_10": [f for f in ranked[:10] if f in features],
            }
        out["planted_precision_at_10"] = precision
        out["planted_source"] = str(truth_path)
        out["planted_definition"] = "|top 10 by mean |attribution| ∩ planted| / min(10, number planted)"
    return out
