"""Model and hyperparameter choice by inner cross-validation on an outer fold's training rows only.

``model.search: {enabled: true, method: grid, trials: 8, inner_folds: 3, space: {fusion: [sum, attention],
hidden_dim: [8, 16], ...}}``. For each outer fold (of each repeat) :func:`search_fold`

1. splits the outer *training* rows with a survival outcome into ``inner_folds`` folds stratified by event
   (seeded); the outer test rows are never read;
2. for every candidate setting (the grid over ``space``, or ``trials`` of it drawn at random when the grid
   is larger; or ``trials`` Optuna TPE proposals seeded with the run's seed), fits the fold preprocessing
   (feature screening, imputation, scaling: :class:`~multimodal.model.data.FoldPreprocessor`, arm-aware with
   ``model.treatment``) on each inner training part, trains one model there and scores Harrell's C on the
   inner held-out part every few epochs;
3. scores a candidate by the best over epochs of its mean inner C (the epoch count at that best is the early
   stopping point found on the inner validation splits). With ``incumbent: true`` (the default) the run's own
   settings as configured are candidate 0, before the space's, scored at their configured epoch count (no
   early stopping: inner curves are as noisy as the candidates' scores, measured). ``select: one_se`` (the
   default) chooses the first candidate whose score is within one standard error (of the best candidate's
   per-inner-fold C) of the best score, so the run's settings, then the simpler values listed first, are kept
   unless a candidate beats them by more than the inner folds' noise (a few hundred patients give inner C's a
   spread of several points: picking the plain best chased it, measured in benchmarks/README.md); ``select:
   best`` chooses the best score. Ties go to the earlier candidate and, within a candidate, to the fewer epochs.

cross_validate then refits the chosen settings, for the chosen number of epochs, on the whole outer training
part and predicts the outer test rows once. It writes ``search.tsv`` (one row per candidate and fold) and
``metrics.json["search"]``.
"""

from __future__ import annotations

import itertools
import json
import numbers
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from multimodal.errors import MultimodalError

#: the settings a search may vary, in the order search.tsv lists them
SPACE_KEYS = (
    "fusion",
    "head",
    "hidden_dim",
    "dropout",
    "input_dropout",
    "max_features",
    "neural_weight",
    "linear",
    "linear_l1",
    "learning_rate",
    "weight_decay",
    "effect_modifiers",
)
METHODS = ("grid", "optuna")
SELECTIONS = ("one_se", "best")
#: inner held-out C is computed every this many epochs (and at the last)
EVAL_EVERY = 10


@dataclass(frozen=True)
class SearchSpec:
    """``model.search``: whether to search, how (grid or Optuna), the budget of candidates, inner folds and
    the space (setting -> list of values to try)."""

    enabled: bool = False
    method: str = "grid"
    trials: int = 8
    inner_folds: int = 3
    space: dict = field(default_factory=dict)
    select: str = "one_se"
    incumbent: bool = True

    @classmethod
    def from_config(cls, section, params=None) -> SearchSpec:
        """Validate ``model.search`` (one line naming ``model.search.<key>`` for anything wrong); with the run's
        ``params`` every value of the space is also checked as a model setting."""
        if section is None:
            return cls()
        if not hasattr(section, "items"):
            raise MultimodalError(f"model.search must be a mapping like {{enabled: true, space: ...}}, got {section!r}")
        known = {"enabled", "method", "trials", "inner_folds", "space", "select", "incumbent"}
        unknown = sorted(set(section) - known)
        if unknown:
            raise MultimodalError(f"model.search: unknown setting(s) {unknown}; known: {sorted(known)}")
        enabled = section.get("enabled", False)
        if not isinstance(enabled, bool | np.bool_):
            raise MultimodalError(f"model.search.enabled must be true or false, got {enabled!r}")
        method = section.get("method", "grid")
        if method not in METHODS:
            raise MultimodalError(f"model.search.method must be one of {', '.join(METHODS)}, got {method!r}")
        select = section.get("select", "one_se")
        if select not in SELECTIONS:
            raise MultimodalError(f"model.search.select must be one of {', '.join(SELECTIONS)}, got {select!r}")
        incumbent = section.get("incumbent", True)
        if not isinstance(incumbent, bool | np.bool_):
            raise MultimodalError(f"model.search.incumbent must be true or false, got {incumbent!r}")
        whole = {}
        for key, default, minimum in (("trials", 8, 1), ("inner_folds", 3, 2)):
            value = section.get(key, default)
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
                raise MultimodalError(f"model.search.{key} must be a whole number of at least {minimum}, got {value!r}")
            whole[key] = int(value)
        space = section.get("space") or {}
        if not hasattr(space, "items"):
            raise MultimodalError(f"model.search.space must map a setting to a list of values, got {space!r}")
        clean = {}
        for key, values in space.items():
            if key not in SPACE_KEYS:
                raise MultimodalError(
                    f"model.search.space.{key}: not a searchable setting (one of {', '.join(SPACE_KEYS)})"
                )
            if isinstance(values, str | bytes) or not isinstance(values, list | tuple) or not values:
                raise MultimodalError(f"model.search.space.{key} must be a non-empty list of values, got {values!r}")
            for value in values:
                _check_value(key, value, params)
            clean[str(key)] = list(values)
        if enabled and not clean:
            raise MultimodalError("model.search.space is empty: list at least one setting and the values to try")
        return cls(enabled=bool(enabled), method=method, space=clean, select=select, incumbent=bool(incumbent), **whole)

    def candidates(self, seed: int) -> list[dict]:
        """Grid candidates in order (first key slowest); ``trials`` of them at random when the grid is larger."""
        keys = [k for k in SPACE_KEYS if k in self.space]
        grid = [dict(zip(keys, combo, strict=True)) for combo in itertools.product(*(self.space[k] for k in keys))]
        if len(grid) > self.trials:
            chosen = np.sort(np.random.default_rng(seed).choice(len(grid), size=self.trials, replace=False))
            grid = [grid[i] for i in chosen]
        return grid


def _check_value(key: str, value, params) -> None:
    """One value of the space, as a model setting; a wrong one is refused naming ``model.search.space.<key>``."""
    if key == "max_features":
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not np.isfinite(value) or value <= 0:
            raise MultimodalError(
                f"model.search.space.max_features: {value!r} is neither a number of features for every modality "
                "(a whole number) nor a scale of each modality's budget (a number with a decimal point, above 0)"
            )
        if isinstance(value, numbers.Integral) and value < 1:
            raise MultimodalError(f"model.search.space.max_features: {value!r} must be at least 1")
        return
    if key == "effect_modifiers":
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
            raise MultimodalError(f"model.search.space.effect_modifiers: {value!r} must be a whole number, 0 or more")
        return
    from multimodal.model.train import TrainParams

    base = params if params is not None else TrainParams()
    try:
        overrides = {key: value} | ({"linear": True} if key == "neural_weight" and value == 0 else {})
        if key == "head" and base.fusion == "late":
            overrides["fusion"] = "sum"
        replace(base, search=None, **overrides)
    except MultimodalError as exc:
        reason = str(exc).split(": ", 1)[-1] if str(exc).startswith("model.") else str(exc)
        raise MultimodalError(f"model.search.space.{key}: {value!r} is not a valid setting ({reason})") from None
    except TypeError:
        raise MultimodalError(f"model.search.space.{key}: {value!r} is not a valid setting") from None


def budget_for(value, params, modalities: list[str], base: dict[str, int]) -> dict[str, int]:
    """The per-modality feature budget a ``max_features`` search value gives: a whole number for every modality,
    or a number with a decimal point scaling each modality's configured budget (at least 1). The treatment
    pseudo-modality (the arm indicators) keeps its own."""
    from multimodal.model.benefit import TREATMENT_MODALITY

    out = {}
    for name in modalities:
        if name == TREATMENT_MODALITY:
            out[name] = base[name]
        elif isinstance(value, numbers.Integral):
            out[name] = int(value)
        else:
            out[name] = max(1, int(round(base[name] * float(value))))
    return out


def candidate_params(params, candidate: dict):
    """The run's settings with one candidate's values (``max_features`` is applied as a budget, not here).
    A neural weight of 0 switches the linear term on (a penalised Cox model inside the network)."""
    values = {k: v for k, v in candidate.items() if k != "max_features"}
    if values.get("neural_weight", params.neural_weight) == 0:
        values["linear"] = True
    return replace(params, search=None, **values)


@dataclass
class FoldSearch:
    """The outcome of one outer fold's search."""

    chosen: dict
    chosen_index: int
    epochs: int
    inner_c: float
    rows: list[dict]
    #: per inner fit: the patients it trained on and the ones it was scored on (what the search read)
    seen: list[dict] = field(default_factory=list)

    def summary(self) -> dict:
        """metrics.json's entry for this fold."""
        return {
            "chosen": self.chosen,
            "candidate": self.chosen_index,
            "epochs": self.epochs,
            "inner_c_index": self.inner_c,
            "n_candidates": len(self.rows),
        }


def search_fold(
    arrays,
    train_rows: np.ndarray,
    params,
    spec: SearchSpec,
    budget: dict[str, int],
    *,
    seed: int,
    progress: bool = False,
    label: str = "",
) -> FoldSearch:
    """Choose settings for one outer fold from its training rows only (see the module docstring)."""
    from sklearn.model_selection import StratifiedKFold

    train_rows = np.asarray(train_rows)
    has = np.isfinite(arrays.time[train_rows]) & np.isfinite(arrays.event[train_rows])
    rows = train_rows[has]
    event = arrays.event[rows] > 0
    k = int(min(spec.inner_folds, event.sum(), (~event).sum() if (~event).any() else spec.inner_folds))
    if k < 2:
        raise MultimodalError(
            f"model.search: {label or 'a fold'} has {int(event.sum())} event(s) among {len(rows)} training patients: "
            f"too few for {spec.inner_folds} inner folds stratified by event (set model.search.inner_folds lower, "
            "or use fewer outer folds)"
        )
    splitter = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed % (2**32))
    inner = [(rows[a], rows[b]) for a, b in splitter.split(np.zeros(len(rows)), event)]
    seen: list[dict] = []

    def evaluate(candidate: dict, *, as_configured: bool = False) -> dict:
        """A row of the fold's table (all but ``candidate``): settings, mean inner C, its epochs, the C per inner
        fold, and why it was skipped ("" when it was not)."""
        row = {"settings": candidate, "inner_c_index": float("nan"), "epochs": 0, "inner_c_per_fold": [], "skipped": ""}
        try:  # values valid one by one may clash together (fusion late with head interaction): skipped, said
            cand_params = candidate_params(params, candidate)
        except MultimodalError as exc:
            return row | {"skipped": str(exc)}
        cand_budget = (
            budget_for(candidate["max_features"], params, arrays.modalities, budget)
            if ("max_features" in candidate)
            else budget
        )
        curves = []
        for i, (fit_rows, val_rows) in enumerate(inner):
            curve, fitted_on = _inner_curve(arrays, fit_rows, val_rows, cand_params, cand_budget, seed=seed + 7919 * i)
            curves.append(curve)
            seen.append(
                {"train": [arrays.patients[j] for j in fitted_on], "val": [arrays.patients[j] for j in val_rows]}
            )
        epochs = sorted(set().union(*(c.keys() for c in curves)))
        mean = np.array([np.nanmean([c.get(e, np.nan) for c in curves]) for e in epochs])
        mean = np.where(np.isfinite(mean), mean, 0.5)
        # first maximum: the fewer epochs; the run's own settings as configured: their last epoch
        best = len(epochs) - 1 if as_configured else int(np.argmax(mean))
        per_inner = [float(c.get(epochs[best], np.nan)) for c in curves]
        return row | {"inner_c_index": float(mean[best]), "epochs": int(epochs[best]), "inner_c_per_fold": per_inner}

    table: list[dict] = []
    if spec.incumbent:  # the run's own settings as configured (epochs too), candidate 0
        table.append({"candidate": 0, **evaluate({}, as_configured=True)})
    first = len(table)
    if spec.method == "optuna":
        table += [
            row | {"candidate": row["candidate"] + first}
            for row in _optuna_search(spec, evaluate, seed=seed, progress=progress, label=label)
        ]
    else:
        from tqdm.auto import tqdm

        for i, candidate in enumerate(
            tqdm(spec.candidates(seed), desc=f"search {label}".strip(), disable=not progress, leave=False)
        ):
            table.append({"candidate": first + i, **evaluate(candidate)})
    space_rows = table[first:]
    if all(row["skipped"] for row in space_rows):
        raise MultimodalError(
            "model.search.space: no candidate is a valid model setting "
            f"({space_rows[0]['skipped'] if space_rows else 'none'})"
        )
    best = chosen_candidate(table, spec.select)
    for i, row in enumerate(table):
        row["chosen"] = i == best
    return FoldSearch(
        chosen=dict(table[best]["settings"]),
        chosen_index=best,
        epochs=int(table[best]["epochs"]),
        inner_c=float(table[best]["inner_c_index"]),
        rows=table,
        seen=seen,
    )


def chosen_candidate(rows: list[dict], select: str) -> int:
    """The index of the chosen row (``inner_c_index``, ``inner_c_per_fold``, ``skipped``) of a fold's candidates:
    ``best``, the highest mean inner C (ties: the earlier); ``one_se``, the first whose mean is within one
    standard error of the best's per-inner-fold C's (sd / sqrt(folds)) of the highest. Skipped rows never."""
    valid = [i for i, row in enumerate(rows) if not row["skipped"]]
    best = max(valid, key=lambda i: (round(rows[i]["inner_c_index"], 12), -i))
    if select == "best":
        return best
    per_inner = np.array([c for c in rows[best]["inner_c_per_fold"] if np.isfinite(c)])
    se = float(per_inner.std(ddof=1) / np.sqrt(len(per_inner))) if len(per_inner) > 1 else 0.0
    threshold = round(rows[best]["inner_c_index"] - se, 12)
    return min(i for i in valid if round(rows[i]["inner_c_index"], 12) >= threshold)


def _optuna_search(spec: SearchSpec, evaluate, *, seed: int, progress: bool, label: str) -> list[dict]:
    """``spec.trials`` proposals of Optuna's TPE sampler seeded with the run's seed (sequential: deterministic)."""
    try:
        import optuna
    except ImportError as exc:  # pragma: no cover - optuna is a dependency
        raise MultimodalError("model.search.method optuna needs the optuna package (pip install optuna)") from exc
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    keys = [k for k in SPACE_KEYS if k in spec.space]
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=seed % (2**32)))
    table: list[dict] = []
    tried: dict[str, int] = {}

    from tqdm.auto import tqdm

    bar = tqdm(total=spec.trials, desc=f"search {label}".strip(), disable=not progress, leave=False)
    for _ in range(spec.trials):
        trial = study.ask()
        candidate = {k: trial.suggest_categorical(k, spec.space[k]) for k in keys}
        key = json.dumps(candidate, sort_keys=True)
        if key in tried:  # TPE may propose a candidate again: its score is known, no refit
            known = table[tried[key]]
            study.tell(trial, 0.0 if known["skipped"] else known["inner_c_index"])
        else:
            row = evaluate(candidate)
            tried[key] = len(table)
            table.append({"candidate": len(table), **row})
            study.tell(trial, 0.0 if row["skipped"] else row["inner_c_index"])
        bar.update()
    bar.close()
    return table


def _inner_curve(arrays, fit_rows, val_rows, params, budget, *, seed: int) -> tuple[dict[int, float], np.ndarray]:
    """Fit the preprocessing and one model on ``fit_rows``; Harrell's C on ``val_rows`` every few epochs. Returns
    the C per epoch checked and the rows the preprocessing and the model were fitted on."""
    import lightning as L
    import torch

    from multimodal.model.metrics import harrell_c
    from multimodal.model.train import fold_data_module

    L.seed_everything(seed, workers=True, verbose=False)
    data = fold_data_module(arrays, fit_rows, val_rows, params, budget, seed=seed)
    data.setup()
    inputs, mask = data.preprocessor.transform(arrays, val_rows)
    time, event = arrays.time[val_rows], arrays.event[val_rows]
    curve: dict[int, float] = {}

    class Score(L.Callback):
        def on_train_epoch_end(self, trainer, module) -> None:
            epoch = trainer.current_epoch + 1
            if epoch % EVAL_EVERY and epoch != params.epochs:
                return
            was_training = module.training
            module.eval()
            with torch.no_grad():
                device = next(module.parameters()).device
                risk = module(*[t.to(device) for t in inputs], mask=mask.to(device))[0]
            module.train(was_training)
            curve[epoch] = harrell_c(time, event, risk.float().cpu().numpy().astype(float))

    from multimodal.model.train import build_model, trainer_settings

    model = build_model(params, data)
    # the run's accelerator and precision; one device: each process of a DDP run searches alone, identically
    settings = {**trainer_settings(params), "devices": 1, "num_nodes": 1, "strategy": "auto"}
    with tempfile.TemporaryDirectory(prefix="inner_fit_") as scratch:
        trainer = L.Trainer(
            max_epochs=params.epochs,
            **settings,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            callbacks=[Score()],
            default_root_dir=str(Path(scratch)),
        )
        trainer.fit(model, datamodule=data)
    return curve, np.asarray(data.train_rows)


def search_table(records: list[tuple[int, int, FoldSearch]]) -> list[dict]:
    """Rows of ``search.tsv``: repeat, fold, candidate, each searched setting, inner C (mean and per inner fold),
    the epochs at the best mean, whether it was chosen, and why a candidate was skipped (an invalid combination)."""
    out = []
    for repeat, fold, result in records:
        for row in result.rows:
            entry = {"repeat": repeat, "fold": fold, "candidate": row["candidate"]}
            entry |= {k: json.dumps(v) if isinstance(v, dict | list) else v for k, v in row["settings"].items()}
            entry |= {
                "inner_c_index": row["inner_c_index"],
                "epochs": row["epochs"],
                "inner_c_per_fold": ";".join(f"{c:.4f}" for c in row["inner_c_per_fold"]),
                "chosen": row["chosen"],
                "skipped": row.get("skipped", ""),
            }
            out.append(entry)
    return out


def fold_settings(
    arrays, train_rows, params, spec: SearchSpec, budget: dict[str, int], *, fold: int, repeat: int, progress: bool
):
    """``(settings, feature budget, FoldSearch)`` for one outer fold: the search on its training rows, then the
    chosen candidate's settings with the number of epochs found by early stopping on the inner splits."""
    import logging

    from multimodal.model.train import REPEAT_SEED_STEP

    label = f"fold {fold}" + (f" (repeat {repeat})" if repeat else "")
    found = search_fold(
        arrays,
        train_rows,
        params,
        spec,
        budget,
        seed=params.seed + fold + REPEAT_SEED_STEP * repeat,
        progress=progress,
        label=label,
    )
    chosen = replace(candidate_params(params, found.chosen), epochs=found.epochs)
    chosen_budget = (
        budget_for(found.chosen["max_features"], params, arrays.modalities, budget)
        if "max_features" in found.chosen
        else budget
    )
    logging.getLogger(__name__).info(
        "%s: search chose %s, %d epochs (mean inner C %.3f over %d candidates)",
        label,
        json.dumps(found.chosen) if found.chosen else "the run's own settings",
        found.epochs,
        found.inner_c,
        len(found.rows),
    )
    return chosen, chosen_budget, found


def search_summary(spec: SearchSpec, records: list[tuple[int, int, FoldSearch]]) -> dict:
    """metrics.json's ``search``: how the search ran, and per fold the chosen settings (``per_fold``)."""
    return {
        "method": spec.method,
        "select": spec.select,
        "incumbent": spec.incumbent,
        "trials": spec.trials,
        "inner_folds": spec.inner_folds,
        "space": spec.space,
        "how": "per outer fold: inner cross-validation stratified by event on its training rows only (preprocessing "
        "refitted in each inner fold), candidates "
        + f"scored by mean inner Harrell's C at their best epoch count (checked every {EVAL_EVERY} epochs"
        + ("; the run's own settings first, at their configured epochs" if spec.incumbent else "")
        + "); "
        + ("the first candidate within one standard error of the best score" if spec.select == "one_se" else "the best")
        + " (ties: the earlier candidate, the fewer epochs) refitted on the whole outer training part for that "
        "many epochs; the outer test rows are predicted once",
        "per_fold": [{"repeat": r, "fold": k} | found.summary() for r, k, found in records],
    }
