"""k-fold cross-validation of the fusion model on a cohort store.

Writes one model directory (atomically):

- ``folds.tsv``: patient_id -> fold;
- ``predictions.tsv``: every patient scored once, by the model that did not see it
  (``risk``, ``response_prob``, observed outcome, fold);
- ``metrics.json``: Harrell's C and AUROC per fold, their mean and SD, and pooled out-of-fold;
- ``fold_<k>/baseline_hazard.tsv``: the fold's Breslow baseline cumulative hazard at risk 0 (``time``,
  ``cumulative_hazard``) from its training patients' risks, so S(t | risk) = exp(-exp(risk) H0(t));
- ``fold_<k>/model_<j>.ckpt`` (Lightning checkpoint of ensemble member j), ``fold_<k>/preprocessing.npz``,
  ``fold_<k>/log_<j>/metrics.csv`` (training curves);
- ``params.json``: the training parameters and the store it read.

With ``model.treatment`` (multimodal.model.benefit) predictions.tsv also holds each patient's ``arm``, the
counterfactual ``risk_<arm>`` under every arm, ``benefit_<arm>`` and ``benefit`` (risk under the reference
minus under the arm) and the same from a Cox model with arm interactions (``benefit_cox_interaction*``);
metrics.json gets a ``benefit`` section.
"""

from __future__ import annotations

import json
import logging
import numbers
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from multimodal.errors import MultimodalError
from multimodal.fileio import atomic_path
from multimodal.model.metrics import auroc, harrell_c
from multimodal.model.tasks import (
    check_task_weights,
    fit_task_specs,
    fold_model_settings,
    prediction_columns,
    task_outputs,
    tasks_summary,
)
from multimodal.store import outcome_counts, store_fingerprint

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
    #: Cox partial likelihood ties: efron (default) or breslow
    ties: str = "efron"
    #: survival loss: cox (partial likelihood) or discrete (logistic hazard over ``time_bins`` intervals)
    survival_loss: str = "cox"
    time_bins: int = 10
    #: per-task loss weights: survival (1), response (overrides response_weight), each QoL task (1)
    task_weights: dict | None = None
    modalities: list[str] | None = None
    max_features: dict[str, int] = field(default_factory=lambda: {"expression": 20, "variants": 20})
    screening: str = "cox"
    max_correlation: float = 0.95
    default_max_features: int = 50
    splits: str | None = None
    repeats: int = 1
    bootstrap: int = 1000
    eval_times: list[float] | None = None
    baseline: bool = True
    fusion: str = "sum"
    head: str = "additive"
    modality_dropout: float = 0.0
    linear: bool = False
    neural_weight: float = 1.0
    linear_l1: float = 0.03
    linear_l2: float = 0.1
    linear_learning_rate: float = 0.03
    bilinear_dim: int = 8
    ensemble: int = 1
    #: ``model.search``: model and hyperparameter choice by inner CV on each outer training part
    #: (multimodal.model.search); None or ``enabled: false``: the settings above as given
    search: dict | None = None
    #: with ``model.treatment``: the arm's effect is linear in this many effect modifiers only, chosen per fold
    #: by their arm x feature interaction on its training rows (multimodal.model.benefit); None: arm x all
    #: selected features plus the fused representation
    effect_modifiers: int | None = None
    accelerator: str = "auto"
    #: Lightning Trainer settings (docs/model.md "Devices"): ``32-true``, ``bf16-mixed`` (CUDA only) or ``auto``
    #: (bf16-mixed on a CUDA device that supports it, else 32-true); devices and nodes per run; ``ddp`` for more
    #: than one; ``batch_size`` null: one full batch of the training part per epoch (the Cox risk set)
    precision: str = "32-true"
    devices: int = 1
    num_nodes: int = 1
    strategy: str = "auto"
    batch_size: int | None = None
    #: ``{column: arm, reference: standard}``: the arm as an input of its own, counterfactual risk under every
    #: arm and predicted benefit per patient (multimodal.model.benefit); None (default): no such thing
    treatment: dict | None = None
    #: ``{modality: imaging, site_column: site, covariates: [...], unseen_site: reference}``: ComBat by site,
    #: fitted on each fold's training patients (multimodal.model.harmonise); None (default): off
    harmonise: dict | None = None

    def __post_init__(self) -> None:
        """Refuse impossible settings with one line naming the ``model.<key>`` (as the config schema does)."""
        _require_int(self, "folds", minimum=2)
        _require_int(self, "seed", minimum=None)
        _require_int(self, "epochs", minimum=1)
        _require_int(self, "hidden_dim", minimum=1)
        _require_int(self, "ensemble", minimum=1)
        for key in ("dropout", "input_dropout"):
            value = _require_number(self, key, minimum=0.0)
            if value >= 1:
                raise MultimodalError(f"model.{key} must be below 1 (a fraction of units dropped), got {value}")
        _require_number(self, "learning_rate", minimum=0.0, strict=True)
        _require_number(self, "weight_decay", minimum=0.0)
        _require_number(self, "response_weight", minimum=0.0)
        _check_task_settings(self)
        _check_fusion_settings(self)
        _check_device_settings(self)
        correlation = _require_number(self, "max_correlation", minimum=0.0, strict=True)
        if correlation > 1:
            raise MultimodalError(f"model.max_correlation must be at most 1 (|Spearman|), got {correlation}")
        for key, allowed in (
            ("screening", SCREENINGS),
            ("fusion", FUSIONS),
            ("head", HEADS),
            ("accelerator", ACCELERATORS),
        ):
            if getattr(self, key) not in allowed:
                raise MultimodalError(
                    f"model.{key} must be one of {', '.join(allowed)}, got {_plain_text(getattr(self, key))}"
                )
        if not isinstance(self.baseline, bool | np.bool_):
            raise MultimodalError(f"model.baseline must be true or false, got {_plain_text(self.baseline)}")
        self.baseline = bool(self.baseline)
        if self.modalities is not None:
            if isinstance(self.modalities, str) or not self.modalities:
                raise MultimodalError(
                    f"model.modalities must be a non-empty list of modality names or null (all), "
                    f"got {_plain_text(self.modalities)}"
                )
            self.modalities = [str(m) for m in self.modalities]
        limits = self.max_features if self.max_features is not None else {}
        if not hasattr(limits, "items"):
            raise MultimodalError(
                f"model.max_features must map a modality to a number of features, got {_plain_text(limits)}"
            )
        for name, limit in limits.items():
            if isinstance(limit, bool) or not isinstance(limit, numbers.Integral) or limit < 1:
                raise MultimodalError(
                    f"model.max_features.{name} must be a whole number of at least 1, got {_plain_text(limit)}"
                )
        self.max_features = {str(k): int(v) for k, v in limits.items()}
        _check_evaluation_settings(self)
        _check_search_settings(self)
        if self.treatment is not None:
            from multimodal.model.benefit import TreatmentSpec

            self.treatment = asdict(TreatmentSpec.from_config(self.treatment))
        if self.harmonise is not None:
            from multimodal.model.harmonise import HarmoniseSpec

            self.harmonise = HarmoniseSpec.from_config(self.harmonise).as_dict()

    @classmethod
    def from_config(cls, section: dict | None) -> TrainParams:
        """Build from a config mapping, rejecting unknown keys."""
        section = dict(section or {})
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(section) - known)
        if unknown:
            raise MultimodalError(f"model config: unknown setting(s) {unknown}; known: {sorted(known)}")
        return cls(**section)


SCREENINGS = ("cox", "variance")
FUSIONS = ("sum", "mean", "early", "attention", "bilinear", "late")
HEADS = ("additive", "interaction")
ACCELERATORS = ("auto", "cpu", "gpu", "cuda", "mps")


def _check_task_settings(params: TrainParams) -> None:
    """``ties``, ``survival_loss``, ``time_bins`` and ``task_weights`` (multimodal.model.tasks), one line each."""
    from multimodal.model.losses import TIES

    for key, allowed in (("ties", TIES), ("survival_loss", SURVIVAL_LOSSES)):
        if getattr(params, key) not in allowed:
            raise MultimodalError(
                f"model.{key} must be one of {', '.join(allowed)}, got {_plain_text(getattr(params, key))}"
            )
    _require_int(params, "time_bins", minimum=2)
    weights = params.task_weights if params.task_weights is not None else {}
    if not hasattr(weights, "items"):
        raise MultimodalError(f"model.task_weights must map a task to a weight, got {_plain_text(weights)}")
    for name, weight in weights.items():
        if isinstance(weight, bool) or not isinstance(weight, numbers.Real) or not 0 <= float(weight) < float("inf"):
            raise MultimodalError(
                f"model.task_weights.{name} must be a number of at least 0, got {_plain_text(weight)}"
            )
    params.task_weights = {str(k): float(v) for k, v in weights.items()} or None
    if params.task_weights and "response" in params.task_weights:
        params.response_weight = params.task_weights["response"]


SURVIVAL_LOSSES = ("cox", "discrete")


def _check_fusion_settings(params: TrainParams) -> None:
    """The fusion, modality-dropout and linear-term settings, in one line each (as the config schema does)."""
    _require_int(params, "bilinear_dim", minimum=1)
    if _require_number(params, "modality_dropout", minimum=0.0) >= 1:
        raise MultimodalError(
            f"model.modality_dropout must be below 1 (a probability of dropping a modality), "
            f"got {_plain_text(params.modality_dropout)}"
        )
    for key in ("neural_weight", "linear_l1", "linear_l2"):
        _require_number(params, key, minimum=0.0)
    _require_number(params, "linear_learning_rate", minimum=0.0, strict=True)
    if not isinstance(params.linear, bool | np.bool_):
        raise MultimodalError(f"model.linear must be true or false, got {_plain_text(params.linear)}")
    params.linear = bool(params.linear)
    if params.neural_weight == 0 and not params.linear:
        raise MultimodalError("model.neural_weight is 0 and model.linear is false: the model would have no risk term")
    if params.fusion == "late" and params.head == "interaction":
        raise MultimodalError(
            "model.head: interaction needs a fusion that mixes modalities; model.fusion: late gives each "
            "modality its own risk (use head: additive, or another fusion)"
        )


def _check_search_settings(params: TrainParams) -> None:
    """``search`` (validated by multimodal.model.search, kept as a plain mapping) and ``effect_modifiers``."""
    if params.effect_modifiers is not None:
        _require_int(params, "effect_modifiers", minimum=0)
    if params.search is not None:
        from multimodal.model.search import SearchSpec

        params.search = asdict(SearchSpec.from_config(params.search, params))


def _plain_text(value) -> str:
    """``value`` for a message: numbers and containers as plain text (``0.78``, not ``np.float32(0.78)``)."""
    value = json_safe(value)
    if isinstance(value, list | dict):
        return json.dumps(value, default=str)
    return str(value)


def _require_int(params: TrainParams, key: str, *, minimum: int | None) -> int:
    value = getattr(params, key)
    if (
        isinstance(value, bool)
        or not isinstance(value, numbers.Integral | float | np.floating)
        or (not float(value).is_integer())
    ):
        raise MultimodalError(f"model.{key} must be a whole number, got {_plain_text(value)}")
    if minimum is not None and value < minimum:
        raise MultimodalError(f"model.{key} must be at least {minimum}, got {_plain_text(value)}")
    setattr(params, key, int(value))
    return int(value)


def _require_number(params: TrainParams, key: str, *, minimum: float, strict: bool = False) -> float:
    value = getattr(params, key)
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not np.isfinite(float(value)):
        raise MultimodalError(f"model.{key} must be a number, got {_plain_text(value)}")
    if value < minimum or (strict and value == minimum):
        bound = f"above {minimum:g}" if strict else f"at least {minimum:g}"
        raise MultimodalError(f"model.{key} must be {bound}, got {_plain_text(value)}")
    setattr(params, key, float(value))
    return float(value)


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
    # Lightning warns on every fit when `srun` is on PATH outside a SLURM job (a cluster's login node, our own
    # SLURM test machine): the workflow's jobs are plain processes there, so the hint is noise
    warnings.filterwarnings("ignore", message=".*The `srun` command is available.*")


def cross_validate(
    mdata: mudata.MuData,
    out_dir: str | Path,
    *,
    params: TrainParams | None = None,
    store_path: str = "",
    progress: bool = True,
) -> dict:
    """Train one model per fold, score its held-out patients, and write the model directory.

    What the cohort cannot support is either refused in one line (too few patients or events for the
    folds) or adapted to and said so: logged, and listed under ``notes`` in metrics.json (shown by the
    report), e.g. a penalised Cox reference with fewer inner folds or skipped on a small training fold.
    """
    import lightning as L
    import torch

    from multimodal.model.baselines import INNER_FOLDS, BaselineSkipped
    from multimodal.model.data import cohort_arrays
    from multimodal.model.metrics import breslow_survival, evaluation_settings
    from multimodal.model.splits import assigned_plan, read_splits, write_folds

    params = params or TrainParams()
    _quiet_lightning()
    where = store_path or "store"
    arrays = cohort_arrays(mdata, modalities=params.modalities)
    spec, levels = None, []
    if params.treatment is not None:
        from multimodal.model.benefit import TreatmentSpec, with_treatment

        spec = TreatmentSpec(**params.treatment)
        arrays, levels = with_treatment(arrays, mdata.obs, spec)
    tasks, untrained = _attach_tasks(mdata, arrays, params), {}
    counts = outcome_counts(arrays.time, arrays.event)
    n_outcome, n_events = counts["n_with_outcome"], counts["n_events"]
    if params.splits:
        plan = read_splits(params.splits, arrays.patients)
    else:
        check_cohort_size(n_outcome, n_events, params.folds, where=where)
        plan = assigned_plan(mdata.obs, n_folds=params.folds, seed=params.seed, repeats=params.repeats)
    settings = evaluation_settings(
        arrays.time, arrays.event, times=params.eval_times, n_bootstrap=params.bootstrap, seed=params.seed
    )
    budget = _feature_budget(params, arrays.modalities)
    from multimodal.model.search import SearchSpec

    search = SearchSpec(**params.search) if params.search else None
    search = search if search is not None and search.enabled else None
    search_records: list = []  # (repeat, fold, FoldSearch)
    notes: list[str] = []
    current = {"repeat": 0}
    survival: dict[int, np.ndarray] = {}  # per fold of the first repeat: held-out survival functions
    repeat_predictions: list[pd.DataFrame] = []
    repeat_fold_metrics: list[dict] = []

    def note(message: str) -> None:
        message = f"repeat {current['repeat']}, {message}" if current["repeat"] else message
        log.warning("%s", message)
        notes.append(message)

    if plan.untested:
        note(_untested_note(plan))
    for name in check_task_weights(params.task_weights, tasks):
        note(f"model.task_weights names {name}, which is no task of the store (no such QoL column): not trained")

    has_response = np.isfinite(arrays.response).any()
    predictions = []
    fold_metrics = []
    out_dir = Path(out_dir)
    fingerprint = store_fingerprint(mdata)
    resume = _resume_dir(out_dir, params, fingerprint)  # members' last checkpoints, until the run completes
    with _output_dir(out_dir, params) as tmp:
        tmp.mkdir()
        for r, k, (train_rows, test_rows) in _schedule(plan):
            current["repeat"] = r
            L.seed_everything(params.seed + k + REPEAT_SEED_STEP * r, workers=True, verbose=False)
            root = tmp if r == 0 else tmp / f"repeat_{r}"
            fold_params, fold_budget = params, budget
            if search is not None:  # settings chosen by inner CV on this fold's training rows only
                from multimodal.model.search import fold_settings

                fold_params, fold_budget, found = fold_settings(
                    arrays, train_rows, params, search, budget, fold=k, repeat=r, progress=progress
                )
                search_records.append((r, k, found))
            data = fold_data_module(
                arrays, train_rows, test_rows, params, fold_budget, seed=params.seed + k + REPEAT_SEED_STEP * r
            )
            train_counts = outcome_counts(arrays.time[data.train_rows], arrays.event[data.train_rows])
            if train_counts["n_events"] == 0:
                raise MultimodalError(
                    f"{where}: fold {k}: none of its {train_counts['n_with_outcome']} training patients with a "
                    "survival outcome has an observed event, so no survival model can be trained; use fewer folds"
                )
            fold_dir = root / f"fold_{k}"
            if progress:
                log.info(
                    "fold %d/%d: %d training, %d held-out patients",
                    k + 1,
                    plan.n_folds,
                    len(data.train_rows),
                    len(test_rows),
                )
            data.setup()  # fits the fold's preprocessing on its training rows
            _note_preprocessing(data.preprocessor.counts, fold=k, note=note)
            inputs, mask = data.preprocessor.transform(arrays, test_rows)
            train_inputs, train_mask = data.preprocessor.transform(arrays, data.train_rows)
            risks, probs, train_risks, arm_risks, task_members = [], [], [], [], []
            for message in fit_task_specs(tasks, arrays.targets, data.train_rows, params.task_weights)[1]:
                untrained.setdefault(message.split(":")[0].removeprefix("task "), []).append(k)
                note(f"fold {k}: {message}")
            for member in range(params.ensemble):
                # members differ only in their seed: averaging them removes much of a small cohort's
                # optimisation noise without touching the folds or the preprocessing
                L.seed_everything(params.seed + k + 1000 * member + REPEAT_SEED_STEP * r, workers=True, verbose=False)
                model = _train_member(fold_params, data, root, k, member, progress, resume=resume, repeat=r)
                model.eval()
                with torch.no_grad():
                    device = next(model.parameters()).device
                    risk, logit = model(*[t.to(device) for t in inputs], mask=mask.to(device))
                    train_risk = model(*[t.to(device) for t in train_inputs], mask=train_mask.to(device))[0]
                    task_members.append(task_outputs(model, [t.to(device) for t in inputs], mask.to(device)))
                train_risks.append(train_risk.cpu().numpy().astype(float))
                risks.append(risk.cpu().numpy().astype(float))
                probs.append(torch.sigmoid(logit).cpu().numpy().astype(float))
                if spec is not None:
                    from multimodal.model.benefit import counterfactual_risks

                    arm_risks.append(counterfactual_risks(model, data.preprocessor, arrays, test_rows, levels))
            data.preprocessor.save(fold_dir / "preprocessing.npz")
            risk, response_prob = np.mean(risks, axis=0), np.mean(probs, axis=0)
            fold_t, fold_e = arrays.time[data.train_rows], arrays.event[data.train_rows]  # the report's calibration:
            event_times = np.unique(fold_t[(fold_e > 0) & np.isfinite(fold_t)])  # S(t|x) = exp(-exp(risk) H0(t))
            pd.DataFrame(
                {
                    "time": event_times,
                    "cumulative_hazard": -np.log(
                        breslow_survival(np.mean(train_risks, axis=0), fold_t, fold_e, np.zeros(1), event_times)[0]
                    ),
                }
            ).to_csv(fold_dir / "baseline_hazard.tsv", sep="\t", index=False)
            fold_survival = breslow_survival(
                np.mean(train_risks, axis=0),
                arrays.time[data.train_rows],
                arrays.event[data.train_rows],
                risk,
                settings.grid,
            )
            if not np.isfinite(arrays.response[data.train_rows]).any():  # no response label to learn from
                response_prob = np.full_like(response_prob, np.nan)
                if has_response:
                    note(
                        f"fold {k}: none of its training patients has a response label; "
                        "its held-out patients get no response probability"
                    )
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
            for j, name in enumerate(tasks):  # observed QoL value (NaN: not recorded) and the prediction
                fold_pred[name] = arrays.targets[test_rows, j]
            for column, values in prediction_columns(tasks, task_members, len(test_rows)).items():
                fold_pred[column] = values
            for name, m in zip(arrays.modalities, mask.T.numpy(), strict=True):
                fold_pred[f"has_{name}"] = m
            if spec is not None:
                _add_benefit(fold_pred, np.mean(arm_risks, axis=0), data, arrays, test_rows, spec, levels, params, note)
            baseline: dict = {}
            if params.baseline:
                try:
                    fold_pred["risk_penalised_cox"], alpha, inner = _penalised_cox(
                        data, arrays, _design_matrix(inputs, mask), seed=params.seed
                    )
                    baseline = {"alpha": alpha, "inner_folds": inner}
                    if inner < INNER_FOLDS:
                        note(
                            f"fold {k}: penalised Cox penalty chosen by {inner}-fold instead of {INNER_FOLDS}-fold "
                            f"inner cross-validation ({train_counts['n_with_outcome']} training patients, "
                            f"{train_counts['n_events']} events)"
                        )
                except Exception as exc:  # noqa: BLE001 - a failed reference is recorded; training goes on
                    exc = exc if isinstance(exc, BaselineSkipped) else BaselineSkipped(_reason(exc))
                    fold_pred["risk_penalised_cox"] = np.nan
                    baseline = {"alpha": None, "inner_folds": None, "skipped": str(exc)}
                    note(f"fold {k}: penalised Cox reference skipped: {exc}")
            clinical: dict = {}
            if params.baseline:
                fold_pred["risk_clinical_cox"], clinical = _clinical_cox(data, arrays, inputs, seed=params.seed)
                if "skipped" in clinical and clinical["skipped"] != baseline.get("skipped"):  # else said once
                    note(f"fold {k}: clinical-only Cox reference skipped: {clinical['skipped']}")
            if r:
                repeat_predictions.append(fold_pred.assign(repeat=r))
            else:
                predictions.append(fold_pred)
                survival[k] = fold_survival
            metrics_list = fold_metrics if r == 0 else repeat_fold_metrics
            metrics_list.append(
                _metrics(fold_pred) | {"fold": k, "n_train": len(data.train_rows), "features": data.preprocessor.counts}
            )
            metrics_list[-1] |= {"repeat": r} if r else {}
            metrics_list[-1]["feature_budget"] = {name: fold_budget.get(name) for name in arrays.modalities}
            if search is not None:
                metrics_list[-1]["search"] = search_records[-1][2].summary()
            if getattr(data.preprocessor, "effect_modifier_names", None) is not None:  # model.effect_modifiers
                metrics_list[-1]["effect_modifiers"] = data.preprocessor.effect_modifier_names
            if params.baseline:
                metrics_list[-1]["penalised_cox"] = {"c_index": _c_index(fold_pred, "risk_penalised_cox")} | baseline
                metrics_list[-1]["clinical_cox"] = {"c_index": _c_index(fold_pred, "risk_clinical_cox")} | clinical
            if r == 0:
                metrics_list[-1]["evaluation"] = _evaluate(fold_pred, settings, fold_survival, salt=k + 1)
            log.info(
                "fold %d: C-index %s, AUROC %s", k, *(format_metric(metrics_list[-1][m]) for m in ("c_index", "auroc"))
            )

        pred = pd.concat(predictions, ignore_index=True)
        pooled = _metrics(pred)
        per_fold = pd.DataFrame(fold_metrics)
        metrics = {
            "folds": fold_metrics,
            "baseline": (_baseline_summary(pred, fold_metrics) | _clinical_summary(pred, fold_metrics))
            if params.baseline
            else {},
            "mean": {m: float(per_fold[m].mean()) for m in ("c_index", "auroc")},  # NaN folds skipped
            "sd": {m: float(per_fold[m].std(ddof=1)) for m in ("c_index", "auroc")},
            "n_folds_defined": {m: int(per_fold[m].notna().sum()) for m in ("c_index", "auroc")},
            "pooled_out_of_fold": pooled,
            "n_patients": len(pred),
            "n_patients_scored": int(pred["risk"].notna().sum()),
            "n_patients_with_survival_outcome": n_outcome,
            "n_events": n_events,
            "notes": notes,
        }
        metrics |= _evaluation_summary(pred, survival, settings, plan, repeat_predictions, repeat_fold_metrics)
        if tasks:
            metrics["tasks"] = tasks_summary(pred, tasks, untrained)
        if spec is not None:
            from multimodal.model.benefit import evaluate_benefit

            metrics["benefit"] = evaluate_benefit(
                pred, levels, spec, n_bootstrap=params.bootstrap, seed=params.seed, params=params
            )
            if params.effect_modifiers is not None:
                metrics["benefit"]["effect_modifiers_per_fold"] = {
                    str(f["fold"]): f.get("effect_modifiers") for f in fold_metrics
                }
        if search is not None:
            from multimodal.model.search import search_summary, search_table

            metrics["search"] = search_summary(search, search_records)
            pd.DataFrame(search_table(search_records)).to_csv(tmp / "search.tsv", sep="\t", index=False)
        write_folds(plan, arrays.patients, tmp / "folds.tsv")
        if repeat_predictions:
            pd.concat([pred.assign(repeat=0), *repeat_predictions], ignore_index=True).to_csv(
                tmp / "predictions_repeats.tsv", sep="\t", index=False
            )
        pred.to_csv(tmp / "predictions.tsv", sep="\t", index=False)
        (tmp / "metrics.json").write_text(json.dumps(json_safe(metrics), indent=1, allow_nan=False))
        (tmp / "params.json").write_text(
            json.dumps(
                json_safe(
                    {
                        "train": asdict(params),
                        "store": str(store_path),
                        "store_fingerprint": fingerprint,
                        "modalities": arrays.modalities,
                    }
                ),
                indent=1,
            )
        )
    _finish_resume(resume)
    log.info(
        "cross-validated C-index %s (mean over folds), pooled %s",
        format_metric(metrics["mean"]["c_index"]),
        format_metric(pooled["c_index"]),
    )
    return metrics


def _attach_tasks(mdata, arrays, params: TrainParams) -> dict[str, str]:
    """The store's QoL tasks (``{column: kind}``, multimodal.model.tasks) with their targets put on ``arrays``
    (``arrays.targets``, patients x tasks, NaN where not recorded); a task weighted 0 is left out."""
    from multimodal.model.tasks import store_tasks, task_targets

    weights = params.task_weights or {}
    tasks = {name: kind for name, kind in store_tasks(mdata).items() if weights.get(name, 1.0) > 0}
    arrays.targets = task_targets(mdata.obs, arrays.patients, tasks)
    arrays.task_kinds = dict(tasks)
    return tasks


def _store_task_kinds(arrays) -> dict[str, str]:
    """The tasks :func:`_attach_tasks` put on ``arrays`` (none for arrays built elsewhere)."""
    return dict(getattr(arrays, "task_kinds", {}) or {})


def check_cohort_size(n_outcome: int, n_events: int, folds: int, *, where: str = "store") -> None:
    """Refuse, in one line saying what would work, a cohort too small for ``folds`` outer folds: each
    held-out fold needs at least 2 patients with a survival outcome and 1 event for a C-index."""
    if n_outcome == 0:
        raise MultimodalError(f"{where}: no patient has a survival outcome (both a time and an event)")
    if n_events == 0:
        raise MultimodalError(
            f"{where}: no observed event among {n_outcome} patients with a survival outcome "
            "(all censored): a survival model cannot be trained or evaluated"
        )
    most = min(n_outcome // 2, n_events)
    if most < 2:
        raise MultimodalError(
            f"{where}: {n_outcome} patients with a survival outcome and {n_events} observed event(s) are too few "
            "to cross-validate (2 folds need at least 4 such patients and 2 events)"
        )
    if n_outcome < 2 * folds:
        raise MultimodalError(
            f"{where}: only {n_outcome} patients have a survival outcome; {folds} folds need at least {2 * folds} "
            f"(2 held out per fold): set model.folds (--folds) to {most} or fewer"
        )
    if n_events < folds:
        raise MultimodalError(
            f"{where}: {n_events} observed events cannot be spread over {folds} folds (each held-out fold needs "
            f"events for a C-index): set model.folds (--folds) to {most} or fewer"
        )


def _note_preprocessing(counts: dict[str, dict[str, int]], *, fold: int, note) -> None:
    """Say so when a fold's training patients leave a modality, or every modality, without a usable feature."""
    for name, c in counts.items():
        if c.get("too_few_training_patients"):
            note(
                f"fold {fold}: modality {name} is present in fewer than 2 training patients; "
                "it is not used by this fold's model"
            )
    if counts and all(c.get("used", 0) == 0 for c in counts.values()):
        note(
            f"fold {fold}: no feature of any modality varies enough among its training patients to be used; "
            "this fold's model gives every held-out patient the same risk"
        )


def _train_member(
    params: TrainParams,
    data,
    out: Path,
    fold: int,
    member: int,
    progress: bool,
    *,
    resume: Path | None = None,
    repeat: int = 0,
):
    """Fit one ensemble member of one fold and save its checkpoint as ``fold_<k>/model_<member>.ckpt``.

    With ``resume`` (a run's work directory, :func:`_resume_dir`), the member keeps a last checkpoint there
    (``checkpoints/last.ckpt``) after every epoch (model, optimiser, loop and RNG state) and a ``done.ckpt``
    once trained: run again after a kill, a finished member is loaded instead of trained, and a half-trained
    one continues from its last epoch, to the same weights as an uninterrupted run (on one process).
    """
    import shutil

    import torch

    from multimodal.model.fusion import FusionSurvivalModel

    model = build_model(params, data)
    final = out / f"fold_{fold}" / f"model_{member}.ckpt"
    final.parent.mkdir(parents=True, exist_ok=True)
    logs = out / f"fold_{fold}" / f"log_{member}"
    work = resume / (f"repeat_{repeat}" if repeat else "") / f"fold_{fold}" / f"member_{member}" if resume else None
    who = f"{f'repeat {repeat} ' if repeat else ''}fold {fold} member {member}"
    if work is not None and (work / "done.ckpt").is_file():
        model = FusionSurvivalModel.load_from_checkpoint(work / "done.ckpt", map_location="cpu", weights_only=True)
        shutil.copyfile(work / "done.ckpt", final)
        _copy_logs(work / "log", logs)
        log.info("%s was trained before the interruption: loaded from its checkpoint", who)
        return model
    callbacks, ckpt_path = [_rng_state_callback(), training_curves_callback(work / "log" if work else logs)], None
    if work is not None:
        last = work / "checkpoints" / "last.ckpt"
        if last.is_file():
            try:
                epochs_done = int(torch.load(last, map_location="cpu", weights_only=True)["epoch"]) + 1
            except Exception as exc:  # noqa: BLE001 - killed while writing it: start the member again
                log.warning("%s: its last checkpoint is unreadable (%s); training it from the start", who, _reason(exc))
                last.unlink()
            else:
                log.info("resumed %s from epoch %d", who, epochs_done)
                ckpt_path = str(last)
        callbacks.append(last_checkpoint_callback(work / "checkpoints"))
    trainer = build_trainer(params, callbacks=callbacks, progress=progress)
    if fold == 0 and member == 0 and not repeat:
        log.info(
            "training on %s (accelerator=%s, precision=%s, devices=%s, nodes=%s, strategy=%s)",
            type(trainer.accelerator).__name__,
            params.accelerator,
            trainer.precision,
            params.devices,
            params.num_nodes,
            params.strategy,
        )
    trainer.fit(model, datamodule=data, ckpt_path=ckpt_path, weights_only=True)
    trainer.save_checkpoint(str(final))
    if work is not None and trainer.is_global_zero:
        partial = work / "done.ckpt.partial"
        shutil.copyfile(final, partial)
        partial.replace(work / "done.ckpt")
        _copy_logs(work / "log", logs)
    return model


def last_checkpoint_callback(directory: Path):
    """Lightning's ``ModelCheckpoint`` keeping ``last.ckpt`` in ``directory`` after every training epoch.

    (Lightning writes ``last`` only in an epoch where it saved a top-k checkpoint: with no monitored metric,
    top-1 is the newest epoch, kept as ``epoch.ckpt``.) Its state in a checkpoint holds its paths relative to
    ``directory`` (Lightning's holds them absolute), so a checkpoint's bytes do not depend on where the run
    was: a partner's clone writes the same ``model_<j>.ckpt`` and the train manifest hashes the same."""
    import os

    from lightning.pytorch.callbacks import ModelCheckpoint

    paths = ("best_model_path", "kth_best_model_path", "last_model_path")

    class LastCheckpoint(ModelCheckpoint):
        def state_dict(self) -> dict:
            state = super().state_dict()

            def relative(path: str) -> str:
                return os.path.relpath(path, self.dirpath) if path else path

            state |= {key: relative(state[key]) for key in paths} | {"dirpath": "."}
            state["best_k_models"] = {relative(k): v for k, v in state["best_k_models"].items()}
            return state

        def load_state_dict(self, state_dict: dict) -> None:
            state = dict(state_dict)
            if state.get("dirpath") == ".":  # written by state_dict above: back to this run's directory

                def absolute(path: str) -> str:
                    return os.path.normpath(os.path.join(self.dirpath, path)) if path else path

                state |= {key: absolute(state[key]) for key in paths if key in state} | {"dirpath": self.dirpath}
                state["best_k_models"] = {absolute(k): v for k, v in state.get("best_k_models", {}).items()}
            super().load_state_dict(state)

    return LastCheckpoint(
        dirpath=directory,
        filename="epoch",
        monitor=None,
        save_top_k=1,
        save_last=True,
        every_n_epochs=1,
        save_on_train_epoch_end=True,
        enable_version_counter=False,
    )


def training_curves_callback(directory: Path):
    """A Lightning callback writing a member's training curves to ``directory/metrics.csv`` after every epoch:
    one row per epoch with ``epoch``, ``step`` and each metric the model logs, columns sorted (the layout of
    Lightning's ``CSVLogger``, with its ``hparams.yaml``), and keeping the rows in every checkpoint. Written
    by hand because CSVLogger starts an empty file when a run resumes (and flushes every 100 steps), so a
    resumed member's curves lost the epochs before the interruption; here the rows travel with the checkpoint
    the run resumes from. Its ``on_train_epoch_end`` runs before ``ModelCheckpoint``'s (Lightning orders
    checkpoint callbacks last), so an epoch's checkpoint holds that epoch's row."""
    import csv
    import os

    from lightning.pytorch.callbacks import Callback
    from lightning.pytorch.core.saving import save_hparams_to_yaml

    class TrainingCurves(Callback):
        def __init__(self) -> None:
            self.rows: list[dict] = []

        def on_fit_start(self, trainer, pl_module) -> None:
            if trainer.is_global_zero:  # the model's settings beside its curves, as CSVLogger kept them
                directory.mkdir(parents=True, exist_ok=True)
                save_hparams_to_yaml(directory / "hparams.yaml", pl_module.hparams)

        def on_train_epoch_end(self, trainer, pl_module) -> None:
            metrics = {name: float(value) for name, value in trainer.callback_metrics.items()}
            self.rows.append({"epoch": trainer.current_epoch, "step": trainer.global_step - 1} | metrics)
            if trainer.is_global_zero:
                self.write()

        def write(self) -> None:  # the directory made by on_fit_start, which every fit runs first
            partial = directory / f"metrics.csv.{os.getpid()}.partial"
            with open(partial, "w", newline="") as handle:
                writer = csv.DictWriter(handle, fieldnames=sorted(set().union(*self.rows)))
                writer.writeheader()
                writer.writerows(self.rows)
            partial.replace(directory / "metrics.csv")

        def state_dict(self) -> dict:
            return {"rows": [dict(row) for row in self.rows]}

        def load_state_dict(self, state_dict: dict) -> None:
            self.rows = [dict(row) for row in state_dict["rows"]]

    return TrainingCurves()


def _copy_logs(source: Path, target: Path) -> None:
    """A member's training curves (:func:`training_curves_callback`'s directory), from the work directory into
    the model directory."""
    import shutil

    if source.is_dir():
        shutil.copytree(source, target, dirs_exist_ok=True)


# --------------------------------------------------------------------------------------------------
# Devices, precision, DDP and resuming a killed run (docs/model.md "Devices").

PRECISIONS = ("32-true", "bf16-mixed", "auto")
STRATEGIES = ("auto", "ddp")


def _check_device_settings(params: TrainParams) -> None:
    """``precision``, ``devices``, ``num_nodes``, ``strategy`` and ``batch_size``, one line each. What depends
    on the machine (a CUDA device, bfloat16 support) is checked when the trainer is built."""
    for key, allowed in (("precision", PRECISIONS), ("strategy", STRATEGIES)):
        if getattr(params, key) not in allowed:
            raise MultimodalError(
                f"model.{key} must be one of {', '.join(allowed)}, got {_plain_text(getattr(params, key))}"
            )
    _require_int(params, "devices", minimum=1)
    _require_int(params, "num_nodes", minimum=1)
    if params.batch_size is not None:
        _require_int(params, "batch_size", minimum=2)
    if (params.devices > 1 or params.num_nodes > 1) and params.strategy != "ddp":
        raise MultimodalError(
            f"model.strategy must be ddp to train on {params.devices} device(s) x {params.num_nodes} node(s), "
            f"got {_plain_text(params.strategy)}"
        )


def resolve_precision(params: TrainParams) -> str:
    """The Lightning precision ``model.precision`` means on this machine: ``auto`` is ``bf16-mixed`` on a CUDA
    device that supports bfloat16, else ``32-true``; ``bf16-mixed`` elsewhere (CPU, MPS) is refused."""
    import torch

    on_cuda = params.accelerator in ("gpu", "cuda") or (params.accelerator == "auto" and torch.cuda.is_available())
    bf16 = on_cuda and torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if params.precision == "auto":
        return "bf16-mixed" if bf16 else "32-true"
    if params.precision == "bf16-mixed" and not bf16:
        where = "a CUDA device without bfloat16" if on_cuda and torch.cuda.is_available() else "the CPU"
        if params.accelerator == "mps":
            where = "MPS"
        raise MultimodalError(
            f"model.precision: bf16-mixed needs a CUDA device that supports bfloat16, and this run trains on {where} "
            "(use 32-true, or auto: bf16-mixed where supported, else 32-true)"
        )
    return params.precision


def fold_data_module(arrays, train_rows, test_rows, params: TrainParams, budget: dict[str, int], *, seed: int):
    """The data module of one (outer or inner) fold: feature budget and screening, the arm-aware preprocessor
    with ``model.treatment``, ComBat by site with ``model.harmonise`` — all fitted on ``train_rows`` only."""
    from multimodal.model.data import CohortDataModule

    data = CohortDataModule(
        arrays,
        train_rows=train_rows,
        test_rows=test_rows,
        max_features=budget,
        screening=params.screening,
        max_correlation=params.max_correlation,
        batch_size=params.batch_size,
        seed=seed,
    )
    if params.treatment is not None:
        from multimodal.model.benefit import arm_aware_preprocessor

        data.preprocessor = arm_aware_preprocessor(data.preprocessor)
    data.preprocessor.harmonise = params.harmonise  # ComBat by site, fitted with the fold's preprocessing
    return data


def build_model(params: TrainParams, data):
    """A fresh fusion model for a fold's (or an inner fold's) data module from the settings: the one
    constructor of the outer fits and the inner-CV search alike (losses, tasks, arm, effect modifiers)."""
    from multimodal.model.benefit import treatment_kwargs
    from multimodal.model.fusion import FusionSurvivalModel

    return FusionSurvivalModel(
        data.input_dims,
        hidden_dim=params.hidden_dim,
        dropout=params.dropout,
        input_dropout=params.input_dropout,
        learning_rate=params.learning_rate,
        weight_decay=params.weight_decay,
        response_weight=params.response_weight,
        fusion=params.fusion,
        head=params.head,
        modality_dropout=params.modality_dropout,
        linear=params.linear,
        neural_weight=params.neural_weight,
        linear_l1=params.linear_l1,
        linear_l2=params.linear_l2,
        linear_learning_rate=params.linear_learning_rate,
        bilinear_dim=params.bilinear_dim,
        **fold_model_settings(params, data.arrays, data.train_rows, _store_task_kinds(data.arrays)),
        **treatment_kwargs(params, data),
    )


def trainer_settings(params: TrainParams) -> dict:
    """The keyword arguments of ``lightning.Trainer`` that ``model.accelerator``, ``precision``, ``devices``,
    ``num_nodes`` and ``strategy`` give, checked against this machine (one ``model.<key>`` line if impossible).

    ``ddp`` is Lightning's own DDP strategy (gloo on CPU, NCCL on CUDA; its SLURM environment under ``srun``),
    with unused parameters allowed (a head without labels in a fold gets no gradient).
    """
    import torch
    from lightning.pytorch.strategies import DDPStrategy

    if params.accelerator in ("gpu", "cuda"):
        if not torch.cuda.is_available():
            raise MultimodalError(f"model.accelerator: {params.accelerator} asked for, but no CUDA device is visible")
        if params.devices > torch.cuda.device_count():
            raise MultimodalError(
                f"model.devices: {params.devices} asked for, but {torch.cuda.device_count()} CUDA device(s) are visible"
            )
    if params.accelerator == "mps" and not torch.backends.mps.is_available():
        raise MultimodalError("model.accelerator: mps asked for, but MPS is not available on this machine")
    on_cuda = params.accelerator in ("gpu", "cuda") or (params.accelerator == "auto" and torch.cuda.is_available())
    return {
        "accelerator": params.accelerator,
        "devices": params.devices,
        "num_nodes": params.num_nodes,
        "strategy": DDPStrategy(find_unused_parameters=True) if params.strategy == "ddp" else "auto",
        "precision": resolve_precision(params),
        # CUDA has no deterministic kernel for some operations (index_add of Efron ties): warn, don't fail
        "deterministic": "warn" if on_cuda else True,
    }


def build_trainer(params: TrainParams, *, callbacks=(), progress: bool = False):
    """The ``lightning.Trainer`` that trains one member: ``model.epochs`` and :func:`trainer_settings`."""
    import lightning as L
    from lightning.pytorch.callbacks import ModelCheckpoint

    return L.Trainer(
        max_epochs=params.epochs,
        logger=False,  # training curves: training_curves_callback
        callbacks=list(callbacks),
        enable_checkpointing=any(isinstance(c, ModelCheckpoint) for c in callbacks),
        enable_progress_bar=progress,
        enable_model_summary=False,
        log_every_n_steps=1,
        plugins=[_atomic_checkpoint_io()],
        **trainer_settings(params),
    )


def _atomic_checkpoint_io():
    """Lightning's checkpoint writer, writing beside the target and renaming onto it: a run killed while it
    saves leaves the previous last checkpoint whole, never a truncated one; and writing the checkpoint in
    :func:`canonical_checkpoint` form, so its bytes depend only on its content."""
    import os

    from lightning.pytorch.plugins.io import TorchCheckpointIO

    class AtomicCheckpointIO(TorchCheckpointIO):
        def save_checkpoint(self, checkpoint, path, storage_options=None) -> None:
            partial = f"{path}.{os.getpid()}.partial"
            super().save_checkpoint(canonical_checkpoint(checkpoint), partial, storage_options)
            os.replace(partial, path)

    return AtomicCheckpointIO()


def canonical_checkpoint(value, _tuples: dict | None = None):
    """``value`` (a checkpoint: nested dicts, lists, tuples, strings, numbers, tensors) rebuilt so that pickling
    it depends only on what it holds, not on which of its objects happen to be shared.

    Pickle writes an object seen before as a back-reference: a string that is one object in an uninterrupted
    run (a literal key) is, after a resume, partly strings read back from the last checkpoint, so the same
    checkpoint pickled to different bytes. Here every string is interned and equal tuples of plain values are
    one object (always shared), every dict and list a new one (never shared); types (OrderedDict, Lightning's
    AttributeDict) are kept. Written by hand: neither torch nor Lightning offers a canonical save."""
    import copy
    import sys

    tuples = {} if _tuples is None else _tuples
    if isinstance(value, str):
        return sys.intern(value) if type(value) is str else value
    if isinstance(value, dict):
        rebuilt = copy.copy(value)
        rebuilt.clear()
        rebuilt.update((canonical_checkpoint(k, tuples), canonical_checkpoint(v, tuples)) for k, v in value.items())
        return rebuilt
    if type(value) is list:
        return [canonical_checkpoint(v, tuples) for v in value]
    if type(value) is tuple:
        rebuilt = tuple(canonical_checkpoint(v, tuples) for v in value)
        if all(type(v) in (str, int, float, bool, type(None)) for v in rebuilt):
            # keyed by type and repr: 1 == 1.0 == True and 0.0 == -0.0, but they are not the same value
            return tuples.setdefault(tuple((type(v), repr(v)) for v in rebuilt), rebuilt)
        return rebuilt
    return value


def _rng_state_callback():
    """A Lightning callback that keeps the torch RNG states in each checkpoint and restores them on resume,
    so dropout after a resume draws what it would have drawn without the interruption. Plain tensors and
    lists: loadable with ``weights_only=True``."""
    import torch
    from lightning.pytorch.callbacks import Callback

    class RngState(Callback):
        def state_dict(self) -> dict:
            state = {"cpu": torch.get_rng_state()}
            if torch.cuda.is_available() and torch.cuda.is_initialized():
                state["cuda"] = torch.cuda.get_rng_state_all()
            return state

        def load_state_dict(self, state_dict: dict) -> None:
            torch.set_rng_state(state_dict["cpu"])
            if "cuda" in state_dict and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(state_dict["cuda"])

    return RngState()


def _process_rank() -> int:
    """This process's global rank as the launcher set it (Lightning's DDP children, torchrun, SLURM); 0 alone."""
    import os

    for name in ("RANK", "SLURM_PROCID", "LOCAL_RANK"):
        if os.environ.get(name, "").isdigit():
            return int(os.environ[name])
    return 0


def _output_dir(out_dir: Path, params: TrainParams):
    """Where the run writes its model directory: atomically onto ``out_dir``; under DDP only rank 0 does (every
    rank runs the whole command, and trains each member together; the others write to a scratch directory)."""
    import contextlib
    import tempfile

    if params.strategy == "ddp" and _process_rank() != 0:

        @contextlib.contextmanager
        def scratch():
            with tempfile.TemporaryDirectory(prefix="multimodal-rank-") as where:
                yield Path(where) / out_dir.name

        return scratch()
    return atomic_path(out_dir)


def _resume_dir(out_dir: Path, params: TrainParams, fingerprint: str) -> Path:
    """The work directory of a run, ``.<model dir>.resume/<key>/`` beside the model directory, keyed by every
    training setting and the store's fingerprint (a changed config or store never resumes another run's
    checkpoints); inside it ``[repeat_<r>/]fold_<k>/member_<m>/`` per member. Removed when the run completes."""
    import hashlib

    settings = json.dumps({"train": json_safe(asdict(params)), "store": fingerprint}, sort_keys=True, default=str)
    key = hashlib.sha256(settings.encode()).hexdigest()[:16]
    return out_dir.parent / f".{out_dir.name}.resume" / key


def _finish_resume(resume: Path) -> None:
    """Remove a completed run's work directory (and the ``.resume`` folder once empty)."""
    import shutil

    if _process_rank() != 0:
        return
    shutil.rmtree(resume, ignore_errors=True)
    try:
        resume.parent.rmdir()
    except OSError:  # another run's work directory is still there
        pass


def _add_benefit(fold_pred, risks, data, arrays, test_rows, spec, levels, params, note) -> None:
    """A fold's treatment columns: the observed arm, ``risk_<arm>``, ``benefit_<arm>`` and ``benefit`` (the
    model's counterfactual risks) and, with the references on, the same benefit from a Cox model with arm
    interactions (``benefit_cox_interaction_<arm>``); a failed reference fit is noted, the model's stand."""
    from multimodal.model.benefit import add_benefit_columns, cox_interaction_benefit

    arm = np.asarray(arrays.x["treatment"][test_rows])
    observed = np.where(np.isnan(arm).any(axis=1), None, np.array(levels, dtype=object)[0])
    for i, level in enumerate(levels[1:]):
        observed = np.where(arm[:, i] == 1, level, observed)
    fold_pred["arm"] = observed
    add_benefit_columns(fold_pred, risks, levels)
    if not params.baseline:
        return
    try:
        cox_risks, _, _ = cox_interaction_benefit(data, arrays, test_rows, levels, seed=params.seed)
    except Exception as exc:  # noqa: BLE001 - a failed reference is recorded; training goes on
        note(f"fold {int(fold_pred['fold'].iloc[0])}: Cox-with-arm-interactions reference skipped: {_reason(exc)}")
        cox_risks = np.full((len(test_rows), len(levels)), np.nan)
    add_benefit_columns(fold_pred, cox_risks, levels, suffix="_cox_interaction")


def _design_matrix(inputs, mask) -> np.ndarray:
    """Fold-preprocessed features of all modalities side by side, plus a has-modality indicator each."""
    return np.column_stack([t.numpy() for t in inputs] + [mask.numpy().astype(float)])


def _penalised_cox(data, arrays, test_x: np.ndarray, *, seed: int) -> tuple[np.ndarray, float, int]:
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
    """The reference over folds; folds where it was skipped are listed with their reason, not averaged."""
    from multimodal.model.baselines import INNER_FOLDS

    summary = {
        "model": f"elastic-net Cox (scikit-survival Coxnet, l1_ratio 0.5, alpha by inner {INNER_FOLDS}-fold CV, "
        "fewer inner folds on a training fold with fewer events)",
        "features": "the fusion model's fold-selected, fold-scaled features plus has-modality indicators",
    }
    skipped = {str(f["fold"]): f["penalised_cox"]["skipped"] for f in fold_metrics if "skipped" in f["penalised_cox"]}
    per_fold = np.array(
        [f["penalised_cox"]["c_index"] for f in fold_metrics if "skipped" not in f["penalised_cox"]], dtype=float
    )
    defined = per_fold[np.isfinite(per_fold)]
    summary |= {
        "n_folds_fitted": len(fold_metrics) - len(skipped),
        "skipped_folds": skipped,
        "mean_c_index": float(defined.mean()) if defined.size else float("nan"),
        "sd_c_index": float(defined.std(ddof=1)) if defined.size > 1 else float("nan"),
        "pooled_c_index": _c_index(pred, "risk_penalised_cox"),  # over the folds where it was fitted
    }
    if len(skipped) == len(fold_metrics):
        reasons = list(dict.fromkeys(skipped.values()))
        summary["skipped"] = f"skipped in every fold: {reasons[0]}" + (
            f" (and {len(reasons) - 1} other reason(s))" if len(reasons) > 1 else ""
        )
    return {"penalised_cox": summary}


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
        "n_test_with_outcome": outcome_counts(pred["time"], pred["event"])["n_with_outcome"],
        "n_events": outcome_counts(pred["time"], pred["event"])["n_events"],
    }


# --------------------------------------------------------------------------------------------------
# Splits, repeats, feature budgets, the clinical-only reference and the bootstrap evaluation.

#: seed offset between repeats of k-fold cross-validation (repeat 0 keeps the seeds of a single run)
REPEAT_SEED_STEP = 100_000


def _check_evaluation_settings(params: TrainParams) -> None:
    """``default_max_features``, ``splits``, ``repeats``, ``bootstrap`` and ``eval_times``, one line each."""
    _require_int(params, "default_max_features", minimum=1)
    _require_int(params, "repeats", minimum=1)
    _require_int(params, "bootstrap", minimum=0)
    params.default_max_features, params.repeats, params.bootstrap = (
        int(params.default_max_features),
        int(params.repeats),
        int(params.bootstrap),
    )
    if params.splits is not None:
        if not isinstance(params.splits, str | Path) or not str(params.splits).strip():
            raise MultimodalError(
                "model.splits must be a folds.tsv, a split file or a directory of them, "
                f"got {_plain_text(params.splits)}"
            )
        params.splits = str(params.splits)
        if params.repeats != 1:
            raise MultimodalError(
                "model.repeats repeats folds the run assigns itself; with model.splits the folds come from the "
                f"split files: set model.repeats to 1 (got {params.repeats})"
            )
    if params.eval_times is not None:
        times = params.eval_times
        if isinstance(times, str | bytes) or not isinstance(times, list | tuple) or not times:
            raise MultimodalError(f"model.eval_times must be a list of times or null, got {_plain_text(times)}")
        for t in times:
            if isinstance(t, bool) or not isinstance(t, numbers.Real) or not np.isfinite(t) or t <= 0:
                raise MultimodalError(f"model.eval_times must hold times above 0, got {_plain_text(t)}")
        params.eval_times = sorted(float(t) for t in times)


def _feature_budget(params: TrainParams, modalities: list[str]) -> dict[str, int]:
    """The most features each modality may bring into a fold's model: ``max_features`` where listed, else
    ``default_max_features`` (a table modality with thousands of columns is screened like expression)."""
    return {name: int(params.max_features.get(name, params.default_max_features)) for name in modalities}


def _schedule(plan):
    """``(repeat, fold, (train_rows, test_rows))`` over every repeat and fold of a plan."""
    for r, folds in enumerate(plan.folds):
        for k, rows in enumerate(folds):
            yield r, k, rows


def _untested_note(plan) -> str:
    listed = ", ".join(plan.untested[:10]) + (f" and {len(plan.untested) - 10} more" if len(plan.untested) > 10 else "")
    return (
        f"{len(plan.untested)} cohort patient(s) are held out by no fold of the splits ({plan.source}), "
        f"so they get no prediction: {listed}"
    )


def _reason(exc: BaseException) -> str:
    """One line for a reference model's failure."""
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__


def _clinical_cox(data, arrays, inputs, *, seed: int) -> tuple[np.ndarray, dict]:
    """The elastic-net Cox reference on the clinical modality alone (its fold-selected, fold-scaled covariates),
    penalty chosen as for the full reference. A failure is recorded as the reason; training goes on."""
    from multimodal.model.baselines import BaselineSkipped, penalised_cox_risk

    skipped = np.full(len(data.test_rows), np.nan)
    if "clinical" not in arrays.modalities:
        return skipped, {"alpha": None, "inner_folds": None, "skipped": "the model has no clinical modality"}
    j = arrays.modalities.index("clinical")
    train = data.train_rows
    try:
        train_inputs, _ = data.preprocessor.transform(arrays, train)
        risk, alpha, inner = penalised_cox_risk(
            train_inputs[j].numpy(), arrays.time[train], arrays.event[train], inputs[j].numpy(), seed=seed
        )
    except Exception as exc:  # noqa: BLE001 - a failed reference is recorded; training goes on
        reason = str(exc) if isinstance(exc, BaselineSkipped) else _reason(exc)
        return skipped, {"alpha": None, "inner_folds": None, "skipped": reason}
    return risk, {"alpha": alpha, "inner_folds": inner}


def _clinical_summary(pred: pd.DataFrame, fold_metrics: list[dict]) -> dict:
    """The clinical-only reference over folds, as :func:`_baseline_summary` does for the full one."""
    entries = [f.get("clinical_cox") or {} for f in fold_metrics]
    skipped = {str(f["fold"]): e["skipped"] for f, e in zip(fold_metrics, entries, strict=True) if "skipped" in e}
    values = np.array([e.get("c_index") for e in entries if "skipped" not in e], dtype=float)
    defined = values[np.isfinite(values)]
    summary = {
        "model": "elastic-net Cox on the clinical modality alone (same folds, penalty chosen the same way)",
        "features": "the clinical modality's fold-selected, fold-scaled covariates",
        "n_folds_fitted": len(fold_metrics) - len(skipped),
        "skipped_folds": skipped,
        "mean_c_index": float(defined.mean()) if defined.size else float("nan"),
        "sd_c_index": float(defined.std(ddof=1)) if defined.size > 1 else float("nan"),
        "pooled_c_index": _c_index(pred, "risk_clinical_cox") if "risk_clinical_cox" in pred else float("nan"),
    }
    if fold_metrics and len(skipped) == len(fold_metrics):
        summary["skipped"] = f"skipped in every fold: {next(iter(skipped.values()))}"
    return {"clinical_cox": summary}


def _evaluate(pred: pd.DataFrame, settings, survival: np.ndarray | None, *, salt: int) -> dict:
    """Bootstrap metrics of one held-out set (a fold, or all out-of-fold predictions)."""
    from multimodal.model.metrics import evaluate_held_out

    references = {
        name: pred[f"risk_{name}"].to_numpy(float)
        for name in ("penalised_cox", "clinical_cox")
        if f"risk_{name}" in pred and pred[f"risk_{name}"].notna().any()
    }
    return evaluate_held_out(
        pred["time"].to_numpy(float),
        pred["event"].to_numpy(float),
        pred["risk"].to_numpy(float),
        settings,
        survival=survival,
        response=pred["response"].to_numpy(float),
        response_prob=pred["response_prob"].to_numpy(float),
        references=references,
        salt=salt,
    )


def _evaluation_summary(pred, survival, settings, plan, repeat_predictions, repeat_fold_metrics) -> dict:
    """metrics.json's ``evaluation`` (settings and pooled bootstrap metrics; per fold under ``folds``),
    ``splits`` (where the folds came from, who no fold tests) and, for repeated k-fold, ``repeats``."""
    pooled_survival = np.vstack([survival[k] for k in sorted(survival)]) if survival else None
    out = {
        "evaluation": {"settings": settings.describe(), "pooled": _evaluate(pred, settings, pooled_survival, salt=0)},
        "splits": {
            "source": plan.source,
            "n_folds": plan.n_folds,
            "repeats": plan.repeats,
            "n_patients_held_out_by_no_fold": len(plan.untested),
            "patients_held_out_by_no_fold": plan.untested,
        },
    }
    if repeat_predictions:
        everything = pd.concat([pred.assign(repeat=0), *repeat_predictions], ignore_index=True)
        per_repeat = []
        for r, part in everything.groupby("repeat", sort=True):
            per_fold = np.array([_c_index(fold, "risk") for _, fold in part.groupby("fold")], dtype=float)
            entry = {
                "repeat": int(r),
                "pooled_c_index": _c_index(part, "risk"),
                "mean_c_index": float(per_fold[np.isfinite(per_fold)].mean()) if np.isfinite(per_fold).any() else None,
            }
            if "risk_penalised_cox" in part:
                entry["pooled_c_index_penalised_cox"] = _c_index(part, "risk_penalised_cox")
            per_repeat.append(entry)
        values = np.array([e["pooled_c_index"] for e in per_repeat], dtype=float)
        out["repeats"] = {
            "n": len(per_repeat),
            "per_repeat": per_repeat,
            "folds": repeat_fold_metrics,
            "mean_pooled_c_index": float(np.nanmean(values)),
            "sd_pooled_c_index": float(np.nanstd(values, ddof=1)) if np.isfinite(values).sum() > 1 else float("nan"),
        }
    return out
