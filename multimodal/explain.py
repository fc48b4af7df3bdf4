"""Captum attributions of the cross-validated fusion models, for held-out patients only.

Each patient is explained by the fold model that did not see it. The attributed output is the log
relative hazard; inputs are the fold-scaled features, one tensor per modality (Captum's tuple form),
and the baseline is the training-fold mean (zero after scaling) with the patient's own modality mask.
Integrated Gradients is complete: per patient, attributions sum to risk(x) - risk(baseline), and the
convergence delta (the gap) is recorded.

Writes under ``out_dir``:

- ``attributions.zarr``: MuData (Zarr v3), ``mod/<modality>`` = patients x features attributions
  (NaN where a patient lacks the modality, 0 for features not selected in that fold); ``uns`` holds
  the method, its parameters and the convergence deltas;
- ``feature_importance.tsv``: per modality and feature, mean |attribution| over held-out patients
  having that modality, and the rank within the modality;
- ``modality_contributions.tsv``: per patient, the summed attribution of each modality.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from multimodal.errors import MultimodalError
from multimodal.fileio import atomic_path

if TYPE_CHECKING:
    import mudata
    import torch

    from multimodal.model.fusion import FusionSurvivalModel

log = logging.getLogger(__name__)

METHODS = ("integrated_gradients",)


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
    import torch
    from captum.attr import IntegratedGradients

    model.eval()
    used = [j for j, x in enumerate(inputs) if x.shape[1] > 0]
    if not used:  # no feature in any modality: the risk is the same for everyone, nothing to attribute
        return [np.zeros((x.shape[0], 0)) for x in inputs], np.zeros(int(mask.shape[0]))

    def forward(*args: torch.Tensor) -> torch.Tensor:
        # Captum repeats additional args across interpolation steps, so the mask rows follow the inputs.
        *xs, m = args
        full = [torch.zeros(m.shape[0], 0)] * len(inputs)  # empty modalities: no columns to attribute
        for j, x in zip(used, xs, strict=True):
            full[j] = x
        return model.risk(*full, mask=m)

    ig = IntegratedGradients(forward)
    attributed = tuple(inputs[j] for j in used)
    attributions, delta = ig.attribute(
        attributed,
        baselines=tuple(torch.zeros_like(x) for x in attributed),
        additional_forward_args=(mask,),
        n_steps=n_steps,
        method="gausslegendre",
        return_convergence_delta=True,
    )
    out = [np.zeros((x.shape[0], 0)) for x in inputs]
    for j, a in zip(used, attributions, strict=True):
        out[j] = a.detach().cpu().numpy()
    return out, delta.detach().cpu().numpy()


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


def explain_cohort(
    mdata: mudata.MuData,
    model_dir: str | Path,
    out_dir: str | Path,
    *,
    method: str = "integrated_gradients",
    n_steps: int = 64,
    progress: bool = True,
) -> pd.DataFrame:
    """Attribute every held-out patient with its fold's model; write the outputs; return importance."""
    import anndata as ad
    import mudata as md
    import torch
    from tqdm.auto import tqdm

    from multimodal.model.data import FoldPreprocessor, cohort_arrays
    from multimodal.model.fusion import FusionSurvivalModel
    from multimodal.store import configure_zarr_v3, store_fingerprint

    if method not in METHODS:
        raise MultimodalError(f"unknown attribution method '{method}'; available: {', '.join(METHODS)}")
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

    full = {name: np.full((len(arrays.patients), len(arrays.features[name])), np.nan) for name in modalities}
    risk = np.full(len(arrays.patients), np.nan)
    deltas = np.full(len(arrays.patients), np.nan)
    # A patient no fold holds out (user splits may leave some out) has no fold, hence no attribution.
    n_folds = int(np.nanmax(fold_of)) + 1 if np.isfinite(fold_of).any() else 0
    for k in tqdm(range(n_folds), desc="explain", unit="fold", disable=not progress):
        fold_dir = model_dir / f"fold_{k}"
        rows = np.flatnonzero(fold_of == k)
        if not rows.size:
            continue
        prep = FoldPreprocessor.load(fold_dir / "preprocessing.npz")
        inputs, mask = prep.transform(arrays, rows)
        checkpoints = sorted(fold_dir.glob("model_*.ckpt"))
        if not checkpoints:
            raise MultimodalError(f"{fold_dir}: no model checkpoint (model_*.ckpt)")
        # Integrated Gradients is linear in the model's output, so the ensemble's attribution is the
        # mean of its members' attributions (and likewise its convergence delta and risk).
        members = []
        for checkpoint in checkpoints:
            model = FusionSurvivalModel.load_from_checkpoint(str(checkpoint), map_location="cpu", weights_only=False)
            attributions, delta = attribute_fold(model, inputs, mask, n_steps=n_steps)
            with torch.no_grad():
                member_risk = model.risk(*inputs, mask=mask).numpy()
            members.append((attributions, delta, member_risk))
        per_modality = [np.mean([m[0][j] for m in members], axis=0) for j in range(len(modalities))]
        deltas[rows] = np.mean([m[1] for m in members], axis=0)
        risk[rows] = np.mean([m[2] for m in members], axis=0)
        for j, name in enumerate(modalities):
            block = np.zeros((len(rows), len(arrays.features[name])))
            block[:, prep.selected[name]] = per_modality[j]
            block[~arrays.present[name][rows]] = np.nan
            full[name][rows] = block

    patient_index = pd.Index(arrays.patients, name="patient_id")
    importance_rows = []
    contributions = pd.DataFrame({"fold": fold_of, "risk": risk}, index=patient_index)
    mods = {}
    for name in modalities:
        values = full[name]
        has = arrays.present[name]
        mean_abs = np.nanmean(np.abs(values[has]), axis=0) if has.any() else np.zeros(values.shape[1])
        mean_signed = np.nanmean(values[has], axis=0) if has.any() else np.zeros(values.shape[1])
        order = np.argsort(-mean_abs, kind="stable")
        ranks = np.empty(len(order), dtype=int)
        ranks[order] = np.arange(1, len(order) + 1)
        source_var = mdata.mod[name].var if name in mdata.mod else pd.DataFrame()  # the arm: no store modality
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
                }
            )
        contributions[name] = np.where(has, np.nansum(values, axis=1), np.nan)
        mods[name] = ad.AnnData(
            X=values[has].astype(np.float32),
            obs=pd.DataFrame({"fold": fold_of[has]}, index=patient_index[has]),
            var=pd.DataFrame(
                {"mean_abs_attribution": mean_abs, "rank": ranks}, index=pd.Index(arrays.features[name], name="feature")
            ),
        )
    importance = pd.DataFrame(importance_rows).sort_values(["modality", "rank"], kind="stable")
    contributions["convergence_delta"] = deltas

    configure_zarr_v3()
    attr = md.MuData(mods)
    attr.uns["attribution"] = {
        "method": method,
        "target": "log relative hazard (fold model of each held-out patient)",
        "baseline": "training-fold mean of each feature (0 after fold scaling), patient's own modality mask",
        "n_steps": int(n_steps),
        "integration": "gausslegendre",
        "convergence_delta_mean_abs": float(np.nanmean(np.abs(deltas))),
        "convergence_delta_max_abs": float(np.nanmax(np.abs(deltas))),
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
    log.info("attributions for %d patients; mean |convergence delta| %.2e", len(risk), np.nanmean(np.abs(deltas)))
    return importance
