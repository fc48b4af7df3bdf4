"""Quality-of-life tasks trained beside survival and response: continuous scores and ordinal grades.

A task is a clinical column named in ``clinical_columns.qol_columns`` (``{column: continuous|ordinal}``); the
ingest step validates it and keeps it in the store's obs under its own name, and records the mapping in
``uns['tasks']``. Training (multimodal.model.train) reads the targets from obs, fits each task's scaling on
a fold's training rows only (:func:`fit_task_specs`), and trains one head per task on the fused
representation:

- ``continuous``: a Gaussian head (mean squared error on the fold-standardised score); the prediction is
  ``mean + sd * output``;
- ``ordinal``: a cumulative-link (ordinal logistic) head, ``P(Y <= k) = sigmoid(theta_k - eta)`` with
  ordered thresholds; the predicted grade is the most probable one, the expected grade its mean.

Missing values are masked out of the loss (never dropped: the patient still trains every other task) and
counted in metrics.json.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import torch
from torch import nn

from multimodal.errors import MultimodalError
from multimodal.model.losses import masked_mse, ordinal_nll, ordinal_probabilities

if TYPE_CHECKING:
    import mudata

TASK_KINDS = ("continuous", "ordinal")
#: built-in tasks: they have a weight in ``model.task_weights`` but no QoL head
BUILTIN_TASKS = ("survival", "response")
#: column names of predictions.tsv a task may not take
RESERVED = {"patient_id", "fold", "risk", "response_prob", "time", "event", "response", "arm", "benefit", "repeat"}


@dataclass
class TaskSpec:
    """One QoL task as a fold's model trains it (saved in the checkpoint's hyperparameters)."""

    name: str
    kind: str
    weight: float = 1.0
    #: continuous: the fold's training mean and SD of the score (the head predicts the standardised score)
    mean: float = 0.0
    sd: float = 1.0
    #: ordinal: number of grades (0..levels-1), from the fold's training rows
    levels: int = 0
    #: the task's column in the targets matrix (:func:`task_targets`)
    column: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


def store_tasks(mdata: mudata.MuData) -> dict[str, str]:
    """``{column: kind}`` of the QoL tasks recorded in a store (``uns['tasks']``) whose column is in obs, in
    the order of their names: the order of the target matrix's columns, so never the dict's own order."""
    recorded = mdata.uns.get("tasks", {})
    tasks = {str(k): str(v) for k, v in sorted(recorded.items() if hasattr(recorded, "items") else [])}
    return {name: kind for name, kind in tasks.items() if name in mdata.obs}


def task_targets(obs: pd.DataFrame, patients: list[str], tasks: dict[str, str]) -> np.ndarray:
    """Patients x tasks target matrix (NaN = not recorded), rows aligned to ``patients``."""
    if not tasks:
        return np.zeros((len(patients), 0))
    frame = obs.reindex(patients)
    return np.column_stack([pd.to_numeric(frame[name], errors="coerce").to_numpy(dtype=float) for name in tasks])


def check_task_weights(weights: dict | None, tasks: dict[str, str]) -> list[str]:
    """Names in ``model.task_weights`` that are neither built in nor a task of the store (told, not trained)."""
    return [name for name in (weights or {}) if name not in BUILTIN_TASKS and name not in tasks]


def fit_task_specs(
    tasks: dict[str, str], targets: np.ndarray, train_rows: np.ndarray, weights: dict | None
) -> tuple[list[TaskSpec], list[str]]:
    """Each task's spec fitted on the fold's training rows, and a note for every task this fold cannot train
    (no known value among its training patients, a constant score, a single grade)."""
    specs, notes = [], []
    for j, (name, kind) in enumerate(tasks.items()):
        values = targets[train_rows, j]
        known = values[np.isfinite(values)]
        weight = float((weights or {}).get(name, 1.0))
        if weight == 0:
            continue
        if kind == "continuous":
            if len(known) < 2 or np.ptp(known) == 0:
                notes.append(f"task {name}: fewer than 2 distinct training values; not trained in this fold")
                continue
            specs.append(TaskSpec(name, kind, weight, mean=float(known.mean()), sd=float(known.std()), column=j))
        else:
            levels = int(known.max()) + 1 if len(known) else 0
            if len(np.unique(known)) < 2:
                notes.append(f"task {name}: fewer than 2 distinct training grades; not trained in this fold")
                continue
            specs.append(TaskSpec(name, kind, weight, levels=levels, column=j))
    return specs, notes


class ContinuousHead(nn.Module):
    """Gaussian head: the standardised score, linear in the fused representation."""

    def __init__(self, hidden_dim: int) -> None:
        super().__init__()
        self.out = nn.Linear(hidden_dim, 1)

    def forward(self, representation: torch.Tensor) -> torch.Tensor:
        return self.out(representation).squeeze(-1)


class OrdinalHead(nn.Module):
    """Cumulative-link head: ``eta`` linear in the representation and K - 1 ordered thresholds
    (the first free, each next one the previous plus a softplus, so the order holds for any parameters)."""

    def __init__(self, hidden_dim: int, levels: int) -> None:
        super().__init__()
        self.out = nn.Linear(hidden_dim, 1)
        self.first = nn.Parameter(torch.zeros(1))
        self.steps = nn.Parameter(torch.zeros(max(levels - 2, 0)))

    def thresholds(self) -> torch.Tensor:
        return torch.cat([self.first, self.first + torch.cumsum(nn.functional.softplus(self.steps) + 1e-4, 0)])

    def forward(self, representation: torch.Tensor) -> torch.Tensor:
        return self.out(representation).squeeze(-1)


def make_head(spec: dict, hidden_dim: int) -> nn.Module:
    """The head of one task spec (a :class:`TaskSpec` as a dict)."""
    if spec["kind"] == "continuous":
        return ContinuousHead(hidden_dim)
    if spec["kind"] == "ordinal":
        return OrdinalHead(hidden_dim, int(spec["levels"]))
    raise MultimodalError(f"task {spec['name']}: kind must be one of {', '.join(TASK_KINDS)}, got {spec['kind']}")


def task_loss(spec: dict, head: nn.Module, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The task's loss over patients whose value is known (NaN targets masked)."""
    if spec["kind"] == "continuous":
        return masked_mse(output, (target - spec["mean"]) / spec["sd"])
    return ordinal_nll(output, head.thresholds(), target)


def fold_model_settings(params, arrays, train_rows: np.ndarray, tasks: dict[str, str]) -> dict:
    """The survival-loss and task hyperparameters of one fold's model (``FusionSurvivalModel`` keywords):
    ``ties``, ``survival_loss``, ``time_cuts`` (discrete-time: fitted on the fold's training event times, so
    they are saved with the fold's checkpoint), ``tasks`` (the fold's task specs) and ``survival_weight``."""
    from multimodal.model.losses import time_bin_cuts

    weights = params.task_weights or {}
    cuts = None
    if params.survival_loss == "discrete":
        cuts = [float(c) for c in time_bin_cuts(arrays.time[train_rows], arrays.event[train_rows], params.time_bins)]
    targets = arrays.targets if arrays.targets is not None else np.zeros((len(arrays.patients), 0))
    specs, _ = fit_task_specs(tasks, targets, train_rows, weights)
    return {
        "ties": params.ties,
        "survival_loss": params.survival_loss,
        "time_cuts": cuts,
        "tasks": [s.to_dict() for s in specs] or None,
        "survival_weight": float(weights.get("survival", 1.0)),
    }


def task_outputs(model, inputs: list[torch.Tensor], mask: torch.Tensor) -> dict[str, np.ndarray]:
    """Each trained task's prediction for these patients: continuous, the score on its own scale; ordinal,
    the class probabilities (patients x grades). ``model`` is a ``FusionSurvivalModel`` in eval mode."""
    net = model.net
    if not net.task_specs:
        return {}
    with torch.no_grad():
        out = net.outputs(*inputs, mask=mask)
        result = {}
        for spec in net.task_specs:
            output = out[f"task:{spec['name']}"]
            if spec["kind"] == "continuous":
                result[spec["name"]] = (spec["mean"] + spec["sd"] * output).cpu().numpy().astype(float)
            else:
                probs = ordinal_probabilities(output, net.task_heads[spec["name"]].thresholds())
                result[spec["name"]] = probs.cpu().numpy().astype(float)
    return result


def prediction_columns(tasks: dict[str, str], members: list[dict[str, np.ndarray]], n: int) -> dict[str, np.ndarray]:
    """predictions.tsv's task columns from the ensemble members' :func:`task_outputs` (averaged): continuous
    ``pred_<name>``; ordinal ``pred_<name>`` (most probable grade of the averaged probabilities) and
    ``pred_<name>_expected`` (expected grade). NaN for a task this fold did not train."""
    columns: dict[str, np.ndarray] = {}
    for name, kind in tasks.items():
        outputs = [m[name] for m in members if name in m]
        if not outputs:
            columns[f"pred_{name}"] = np.full(n, np.nan)
            if kind == "ordinal":
                columns[f"pred_{name}_expected"] = np.full(n, np.nan)
            continue
        mean = np.mean(outputs, axis=0)
        if kind == "continuous":
            columns[f"pred_{name}"] = mean
        else:
            columns[f"pred_{name}"] = mean.argmax(axis=1).astype(float)
            columns[f"pred_{name}_expected"] = mean @ np.arange(mean.shape[1], dtype=float)
    return columns


def task_metrics(kind: str, name: str, frame: pd.DataFrame) -> dict:
    """The metrics of one task on a predictions frame (held-out rows): observed ``name``, ``pred_<name>``."""
    from multimodal.model.metrics import continuous_metrics, ordinal_metrics

    observed = frame[name].to_numpy(float)
    predicted = frame[f"pred_{name}"].to_numpy(float) if f"pred_{name}" in frame else np.full(len(frame), np.nan)
    if kind == "continuous":
        out = continuous_metrics(observed, predicted)
    else:
        expected = frame.get(f"pred_{name}_expected")
        out = ordinal_metrics(observed, predicted, None if expected is None else expected.to_numpy(float))
    out["n_missing"] = int(np.isnan(observed).sum())
    return out


def tasks_summary(pred: pd.DataFrame, tasks: dict[str, str], untrained: dict[str, list[str]]) -> dict:
    """metrics.json's ``tasks``: ``{name: {"kind", "pooled", "folds": [...], "not_trained_in_folds"}}``."""
    out = {}
    for name, kind in tasks.items():
        folds = [{"fold": int(k)} | task_metrics(kind, name, part) for k, part in pred.groupby("fold", sort=True)]
        out[name] = {
            "kind": kind,
            "pooled": task_metrics(kind, name, pred),
            "folds": folds,
            "not_trained_in_folds": untrained.get(name, []),
        }
    return out
