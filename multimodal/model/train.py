"""k-fold cross-validation of the fusion model on a cohort store.

Writes one model directory (atomically):

- ``folds.tsv``: patient_id -> fold;
- ``predictions.tsv``: every patient scored once, by the model that did not see it
  (``risk``, ``response_prob``, observed outcome, fold);
- ``metrics.json``: Harrell's C and AUROC per fold, their mean and SD, and pooled out-of-fold;
- ``fold_<k>/model_<j>.ckpt`` (Lightning checkpoint of ensemble member j), ``fold_<k>/preprocessing.npz``,
  ``fold_<k>/log_<j>/metrics.csv`` (training curves);
- ``params.json``: the training parameters and the store it read.
"""

from __future__ import annotations

import json
import logging
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from multimodal.errors import MultimodalError
from multimodal.fileio import atomic_path
from multimodal.model.metrics import auroc, harrell_c
from multimodal.store import store_fingerprint

if TYPE_CHECKING:
    import mudata

log = logging.getLogger(__name__)


@dataclass
class TrainParams:
    """Cross-validation and model settings (``model:`` in config.yaml)."""

    folds: int = 5
    seed: int = 7
    epochs: int = 100
    hidden_dim: int = 16
    dropout: float = 0.2
    input_dropout: float = 0.5
    learning_rate: float = 3e-3
    weight_decay: float = 1e-3
    response_weight: float = 0.3
    modalities: list[str] | None = None
    max_features: dict[str, int] = field(default_factory=lambda: {"expression": 20, "variants": 20})
    screening: str = "cox"
    max_correlation: float = 0.95
    baseline: bool = True
    fusion: str = "sum"
    head: str = "additive"
    ensemble: int = 1
    accelerator: str = "auto"

    @classmethod
    def from_config(cls, section: dict | None) -> TrainParams:
        """Build from a config mapping, rejecting unknown keys."""
        section = dict(section or {})
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(section) - known)
        if unknown:
            raise MultimodalError(f"model config: unknown setting(s) {unknown}; known: {sorted(known)}")
        return cls(**section)


def _quiet_lightning() -> None:
    for name in (
        "lightning.pytorch.utilities.rank_zero",
        "lightning.pytorch.accelerators.cuda",
        "lightning.fabric.utilities.seed",
        "lightning.pytorch.trainer.connectors.checkpoint_connector",
        "lightning.pytorch.trainer.connectors.data_connector",
    ):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")


def cross_validate(
    mdata: mudata.MuData,
    out_dir: str | Path,
    *,
    params: TrainParams | None = None,
    store_path: str = "",
    progress: bool = True,
) -> dict:
    """Train one model per fold, score its held-out patients, and write the model directory."""
    import lightning as L
    import torch

    from multimodal.model.data import CohortDataModule, cohort_arrays
    from multimodal.model.splits import assign_folds

    params = params or TrainParams()
    _quiet_lightning()
    arrays = cohort_arrays(mdata, modalities=params.modalities)
    n_outcome = int((~(np.isnan(arrays.time) | np.isnan(arrays.event))).sum())
    if n_outcome < 2 * params.folds:
        raise MultimodalError(f"{store_path or 'store'}: only {n_outcome} patients have a survival outcome")
    n_events = int(np.nansum(arrays.event))
    if n_events == 0:
        raise MultimodalError(
            f"{store_path or 'store'}: no observed event among {n_outcome} patients with a survival outcome "
            "(all censored): a survival model cannot be trained or evaluated"
        )
    if n_events < params.folds:
        raise MultimodalError(
            f"{store_path or 'store'}: {n_events} observed events cannot be spread over {params.folds} folds "
            "(each held-out fold needs events for a C-index); use fewer folds"
        )
    folds = assign_folds(mdata.obs, n_folds=params.folds, seed=params.seed)
    predictions = []
    fold_metrics = []
    out_dir = Path(out_dir)
    with atomic_path(out_dir) as tmp:
        tmp.mkdir()
        for k in range(params.folds):
            L.seed_everything(params.seed + k, workers=True, verbose=False)
            test_rows = np.flatnonzero(folds.to_numpy() == k)
            train_rows = np.flatnonzero(folds.to_numpy() != k)
            data = CohortDataModule(
                arrays,
                train_rows=train_rows,
                test_rows=test_rows,
                max_features=params.max_features,
                screening=params.screening,
                max_correlation=params.max_correlation,
            )
            fold_dir = tmp / f"fold_{k}"
            if progress:
                log.info(
                    "fold %d/%d: %d training, %d held-out patients",
                    k + 1,
                    params.folds,
                    len(data.train_rows),
                    len(test_rows),
                )
            data.setup()  # fits the fold's preprocessing on its training rows
            inputs, mask = data.preprocessor.transform(arrays, test_rows)
            risks, probs = [], []
            for member in range(params.ensemble):
                # members differ only in their seed: averaging them removes much of a small cohort's
                # optimisation noise without touching the folds or the preprocessing
                L.seed_everything(params.seed + k + 1000 * member, workers=True, verbose=False)
                model = _train_member(params, data, tmp, k, member, progress)
                model.eval()
                with torch.no_grad():
                    device = next(model.parameters()).device
                    risk, logit = model(*[t.to(device) for t in inputs], mask=mask.to(device))
                risks.append(risk.cpu().numpy().astype(float))
                probs.append(torch.sigmoid(logit).cpu().numpy().astype(float))
            data.preprocessor.save(fold_dir / "preprocessing.npz")
            risk, response_prob = np.mean(risks, axis=0), np.mean(probs, axis=0)
            if not np.isfinite(arrays.response[train_rows]).any():  # no response label to learn from
                response_prob = np.full_like(response_prob, np.nan)
            fold_pred = pd.DataFrame(
                {
                    "patient_id": [arrays.patients[i] for i in test_rows],
                    "fold": k,
                    "risk": risk,
                    "response_prob": response_prob,
                    "time": arrays.time[test_rows],
                    "event": arrays.event[test_rows],
                    "response": arrays.response[test_rows],
                }
            )
            for name, m in zip(arrays.modalities, mask.T.numpy(), strict=True):
                fold_pred[f"has_{name}"] = m
            if params.baseline:
                fold_pred["risk_penalised_cox"], alpha = _penalised_cox(
                    data, arrays, _design_matrix(inputs, mask), seed=params.seed
                )
            predictions.append(fold_pred)
            fold_metrics.append(
                _metrics(fold_pred) | {"fold": k, "n_train": len(data.train_rows), "features": data.preprocessor.counts}
            )
            if params.baseline:
                fold_metrics[-1]["penalised_cox"] = {
                    "c_index": _c_index(fold_pred, "risk_penalised_cox"),
                    "alpha": alpha,
                }
            log.info(
                "fold %d: C-index %s, AUROC %s", k, *(format_metric(fold_metrics[-1][m]) for m in ("c_index", "auroc"))
            )

        pred = pd.concat(predictions, ignore_index=True)
        pooled = _metrics(pred)
        per_fold = pd.DataFrame(fold_metrics)
        metrics = {
            "folds": fold_metrics,
            "baseline": _baseline_summary(pred, fold_metrics) if params.baseline else {},
            "mean": {m: float(per_fold[m].mean()) for m in ("c_index", "auroc")},  # NaN folds skipped
            "sd": {m: float(per_fold[m].std(ddof=1)) for m in ("c_index", "auroc")},
            "n_folds_defined": {m: int(per_fold[m].notna().sum()) for m in ("c_index", "auroc")},
            "pooled_out_of_fold": pooled,
            "n_patients": len(pred),
            "n_patients_scored": int(pred["risk"].notna().sum()),
            "n_patients_with_survival_outcome": n_outcome,
        }
        folds.rename_axis("patient_id").reset_index().to_csv(tmp / "folds.tsv", sep="\t", index=False)
        pred.to_csv(tmp / "predictions.tsv", sep="\t", index=False)
        (tmp / "metrics.json").write_text(json.dumps(json_safe(metrics), indent=1, allow_nan=False))
        (tmp / "params.json").write_text(
            json.dumps(
                {
                    "train": asdict(params),
                    "store": str(store_path),
                    "store_fingerprint": store_fingerprint(mdata),
                    "modalities": arrays.modalities,
                },
                indent=1,
            )
        )
    log.info(
        "cross-validated C-index %s (mean over folds), pooled %s",
        format_metric(metrics["mean"]["c_index"]),
        format_metric(pooled["c_index"]),
    )
    return metrics


def _train_member(params: TrainParams, data, out: Path, fold: int, member: int, progress: bool):
    """Fit one ensemble member of one fold and save its checkpoint as ``fold_<k>/model_<member>.ckpt``."""
    import lightning as L
    from lightning.pytorch.loggers import CSVLogger

    from multimodal.model.fusion import FusionSurvivalModel

    model = FusionSurvivalModel(
        data.input_dims,
        hidden_dim=params.hidden_dim,
        dropout=params.dropout,
        input_dropout=params.input_dropout,
        learning_rate=params.learning_rate,
        weight_decay=params.weight_decay,
        response_weight=params.response_weight,
        fusion=params.fusion,
        head=params.head,
    )
    trainer = L.Trainer(
        max_epochs=params.epochs,
        accelerator=params.accelerator,
        devices=1,
        deterministic=True,
        logger=CSVLogger(str(out), name=f"fold_{fold}", version=f"log_{member}"),
        enable_checkpointing=False,
        enable_progress_bar=progress,
        enable_model_summary=False,
        log_every_n_steps=1,
    )
    if fold == 0 and member == 0:
        log.info("training on %s (accelerator=%s)", type(trainer.accelerator).__name__, params.accelerator)
    trainer.fit(model, datamodule=data)
    trainer.save_checkpoint(str(out / f"fold_{fold}" / f"model_{member}.ckpt"))
    return model


def _design_matrix(inputs, mask) -> np.ndarray:
    """Fold-preprocessed features of all modalities side by side, plus a has-modality indicator each."""
    return np.column_stack([t.numpy() for t in inputs] + [mask.numpy().astype(float)])


def _penalised_cox(data, arrays, test_x: np.ndarray, *, seed: int) -> tuple[np.ndarray, float]:
    """The elastic-net Cox reference on this fold's training rows and selected features."""
    from multimodal.model.baselines import penalised_cox_risk

    train = data.train_rows
    return penalised_cox_risk(
        _design_matrix(*data.preprocessor.transform(arrays, train)),
        arrays.time[train],
        arrays.event[train],
        test_x,
        seed=seed,
    )


def _baseline_summary(pred: pd.DataFrame, fold_metrics: list[dict]) -> dict:
    per_fold = [f["penalised_cox"]["c_index"] for f in fold_metrics]
    return {
        "penalised_cox": {
            "model": "elastic-net Cox (scikit-survival Coxnet, l1_ratio 0.5, alpha by inner 3-fold CV)",
            "features": "the fusion model's fold-selected, fold-scaled features plus has-modality indicators",
            "mean_c_index": float(np.mean(per_fold)),
            "sd_c_index": float(np.std(per_fold, ddof=1)),
            "pooled_c_index": _c_index(pred, "risk_penalised_cox"),
        }
    }


def _c_index(pred: pd.DataFrame, risk_column: str) -> float:
    """Harrell's C of one risk column of a predictions frame against its observed outcome."""
    return harrell_c(pred["time"].to_numpy(float), pred["event"].to_numpy(float), pred[risk_column].to_numpy(float))


def format_metric(value: float | None) -> str:
    """A metric for the log: three decimals, or n/a where undefined (no response labels, no pairs)."""
    return f"{value:.3f}" if value is not None and np.isfinite(value) else "n/a"


def json_safe(value):
    """``value`` with NaN and infinities as None (JSON null): ``NaN`` is not JSON and breaks strict readers."""
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    if isinstance(value, float | np.floating) and not np.isfinite(value):
        return None
    return value.item() if isinstance(value, np.generic) else value


def _metrics(pred: pd.DataFrame) -> dict:
    return {
        "c_index": _c_index(pred, "risk"),
        "auroc": auroc(pred["response"].to_numpy(float), pred["response_prob"].to_numpy(float)),
        "n_test": int(len(pred)),
        "n_test_with_outcome": int(
            (np.isfinite(pred["time"].to_numpy(float)) & np.isfinite(pred["event"].to_numpy(float))).sum()
        ),
        "n_events": int(np.nansum(pred["event"].to_numpy(float))),
    }
