"""From the cohort store to per-fold model inputs.

:func:`cohort_arrays` reads the store once into dense per-modality arrays (a fixed, per-patient
transform: ``log1p`` of mutation counts). :class:`FoldPreprocessor` learns everything that depends
on data (feature filtering, gene selection, imputation, scaling) from the training rows of one
fold only. :class:`CohortDataModule` serves the fold's tensors to Lightning.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import lightning as L
import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, TensorDataset

from multimodal.errors import MultimodalError

if TYPE_CHECKING:
    import mudata

LOG1P_FEATURE_CLASSES = {"gene_mutation_count"}


@dataclass
class CohortArrays:
    """Dense model inputs for every patient of a store (rows aligned to ``patients``)."""

    patients: list[str]
    modalities: list[str]
    features: dict[str, list[str]]
    x: dict[str, np.ndarray]  # n_patients x n_features, NaN rows where the modality is absent
    present: dict[str, np.ndarray]  # n_patients bool
    time: np.ndarray
    event: np.ndarray
    response: np.ndarray
    site: np.ndarray


def cohort_arrays(mdata: mudata.MuData, *, modalities: list[str] | None = None) -> CohortArrays:
    """Dense arrays per modality from a cohort MuData; modality obs columns listed in
    ``uns['model_obs_features']`` (e.g. ``tmb``) become extra features."""
    patients = list(mdata.obs_names)
    names = modalities or list(mdata.mod)
    unknown = [m for m in names if m not in mdata.mod]
    if unknown:
        raise MultimodalError(f"modality '{unknown[0]}' is not in the store (it has {', '.join(map(str, mdata.mod))})")
    absent = [c for c in ("time", "event") if c not in mdata.obs]
    if absent:
        raise MultimodalError(f"the store's obs has no {' or '.join(absent)} column: it holds no survival outcome")
    x, present, features = {}, {}, {}
    for name in names:
        adata = mdata.mod[name]
        matrix = adata.X.toarray() if hasattr(adata.X, "toarray") else np.asarray(adata.X)
        matrix = matrix.astype(np.float64)
        classes = adata.var["feature_class"].astype(str).to_numpy() if "feature_class" in adata.var else None
        if classes is not None:
            log_cols = np.isin(classes, list(LOG1P_FEATURE_CLASSES))
            matrix[:, log_cols] = np.log1p(matrix[:, log_cols])
        names_here = list(adata.var_names)
        for column in _obs_features(mdata, name):
            matrix = np.column_stack([matrix, np.log1p(adata.obs[column].to_numpy(dtype=float))])
            names_here.append(column.upper())
        rows = pd.Index(patients).get_indexer(adata.obs_names)
        full = np.full((len(patients), matrix.shape[1]), np.nan)
        full[rows] = matrix
        x[name], features[name] = full, names_here
        present[name] = np.zeros(len(patients), dtype=bool)
        present[name][rows] = True
    obs = mdata.obs
    return CohortArrays(
        patients=patients,
        modalities=names,
        features=features,
        x=x,
        present=present,
        time=pd.to_numeric(obs["time"], errors="coerce").to_numpy(dtype=float),
        event=pd.to_numeric(obs["event"], errors="coerce").to_numpy(dtype=float),
        response=(
            pd.to_numeric(obs["response"], errors="coerce").to_numpy(dtype=float)
            if "response" in obs
            else np.full(len(patients), np.nan)
        ),
        site=obs["site"].astype(str).to_numpy() if "site" in obs else np.array(["all"] * len(patients)),
    )


def _obs_features(mdata, name: str) -> list[str]:
    configured = mdata.uns.get("model_obs_features", {})
    columns = list(configured.get(name, [])) if hasattr(configured, "get") else []
    return [c for c in columns if c in mdata.mod[name].obs]


def cox_score_statistics(x: np.ndarray, time: np.ndarray, event: np.ndarray) -> np.ndarray:
    """Univariate Cox score test statistic (z) of every column of ``x`` at beta = 0 (Breslow ties).

    Used to screen features inside a training fold (supervised principal components style).
    Vectorised over columns by hand: lifelines/scikit-survival fit one model per feature.
    """
    from multimodal.model.losses import risk_set_ends

    order, ends = risk_set_ends(time)
    xs = x[order]
    size = (ends + 1).astype(float)[:, None]
    mean_risk = np.cumsum(xs, axis=0)[ends] / size
    var_risk = np.cumsum(xs**2, axis=0)[ends] / size - mean_risk**2
    dead = event[order] == 1
    score = (xs[dead] - mean_risk[dead]).sum(axis=0)
    information = np.clip(var_risk[dead].sum(axis=0), 1e-12, None)
    return score / np.sqrt(information)


def drop_redundant(values: np.ndarray, *, max_correlation: float, block: int = 1024) -> np.ndarray:
    """Indices of columns kept when, walking columns in order, a column is dropped if its |Spearman
    correlation| with an already kept column exceeds ``max_correlation``.

    Extractors list basic features (tumour volume) before derived ones (surface-to-volume ratio,
    run-length non-uniformity), so each cluster of near-duplicates is represented by its most
    interpretable member, and attributions are not split across clones of one measurement.
    Columns are compared in blocks against the kept ones only, so memory stays linear in the
    number of columns.
    """
    from scipy.stats import rankdata

    if values.shape[1] < 2 or max_correlation >= 1.0:
        return np.arange(values.shape[1])
    ranks = rankdata(values, axis=0)
    ranks = (ranks - ranks.mean(axis=0)) / np.clip(ranks.std(axis=0), 1e-12, None)
    n = len(ranks)
    kept: list[int] = []
    for start in range(0, ranks.shape[1], block):
        chunk = ranks[:, start : start + block]
        against_kept = np.abs(ranks[:, kept].T @ chunk) / n if kept else np.zeros((0, chunk.shape[1]))
        within = np.abs(chunk.T @ chunk) / n
        kept_here: list[int] = []
        for j in range(chunk.shape[1]):
            if (against_kept[:, j] <= max_correlation).all() and (within[kept_here, j] <= max_correlation).all():
                kept_here.append(j)
        kept.extend(start + j for j in kept_here)
    return np.asarray(kept, dtype=int)


def _best(candidates: np.ndarray, score: np.ndarray, *, keep: int) -> np.ndarray:
    """The ``keep`` candidates with the highest score (ties: earlier feature first), in feature order."""
    return np.sort(candidates[np.argsort(-score[candidates], kind="stable")[:keep]])


@dataclass
class FoldPreprocessor:
    """Feature selection, imputation and scaling fitted on one fold's training rows."""

    max_features: dict[str, int] = field(default_factory=dict)
    screening: str = "cox"
    max_correlation: float = 0.95
    min_nonzero: int = 3
    selected: dict[str, np.ndarray] = field(default_factory=dict)
    mean: dict[str, np.ndarray] = field(default_factory=dict)
    scale: dict[str, np.ndarray] = field(default_factory=dict)
    #: names of the selected features, checked against the store whenever inputs are built
    features: dict[str, np.ndarray] = field(default_factory=dict)
    #: per modality, how many features each step left out (reported with the fold's metrics)
    counts: dict[str, dict[str, int]] = field(default_factory=dict)

    def fit(self, arrays: CohortArrays, train: np.ndarray) -> FoldPreprocessor:
        """Learn per-modality selected features, means and scales from rows ``train`` only."""
        for name in arrays.modalities:
            rows = train[arrays.present[name][train]]
            values = arrays.x[name][rows]
            n_features = values.shape[1]
            if len(rows) < 2:
                self.selected[name] = np.zeros(0, dtype=int)
                self.mean[name] = self.scale[name] = np.zeros(0)
                self.features[name] = np.zeros(0, dtype=str)
                self.counts[name] = {
                    "features": n_features,
                    "too_few_training_patients": n_features,
                    "constant_or_sparse": 0,
                    "redundant": 0,
                    "not_screened_in": 0,
                    "used": 0,
                }
                continue
            observed = (~np.isnan(values)).any(axis=0)
            mean = np.zeros(values.shape[1])
            # a feature missing for every training patient is constant after imputation: filtered below
            mean[observed] = np.nanmean(values[:, observed], axis=0)
            filled = np.where(np.isnan(values), mean, values)
            std = filled.std(axis=0)
            # sparse features (a gene mutated in one or two training patients) cannot be learned
            nonzero = np.count_nonzero(filled, axis=0)
            keep = (std > 1e-8) & (nonzero >= min(self.min_nonzero, len(rows) // 2))
            candidates = np.flatnonzero(keep)
            n_informative = len(candidates)
            limit = self.max_features.get(name)
            pool = max(10 * limit, 200) if limit else None
            # the screening statistic is per feature: computed once, used for the pool and the final cut
            score = self._screening_score(candidates, filled, std, arrays, rows) if limit else None
            if pool and len(candidates) > pool:  # bound the redundancy filter's work on genome-wide tables
                candidates = _best(candidates, score, keep=pool)
            n_pool = len(candidates)
            candidates = candidates[drop_redundant(filled[:, candidates], max_correlation=self.max_correlation)]
            n_distinct = len(candidates)
            if limit and len(candidates) > limit:
                candidates = _best(candidates, score, keep=limit)
            self.selected[name] = candidates
            self.features[name] = np.asarray(arrays.features[name], dtype=str)[candidates]
            self.counts[name] = {
                "features": n_features,
                "constant_or_sparse": n_features - n_informative,
                "redundant": n_pool - n_distinct,
                "not_screened_in": (n_informative - n_pool) + (n_distinct - len(candidates)),
                "used": len(candidates),
            }
            self.mean[name] = mean[candidates]
            self.scale[name] = std[candidates]
        return self

    def _screening_score(self, candidates, filled, std, arrays: CohortArrays, rows: np.ndarray) -> np.ndarray:
        """Screening statistic per feature (higher is better); NaN outside ``candidates``."""
        score = np.full(filled.shape[1], np.nan)
        if self.screening == "cox":
            z = cox_score_statistics(filled[:, candidates], arrays.time[rows], arrays.event[rows])
            score[candidates] = np.abs(z)
        elif self.screening == "variance":
            score[candidates] = std[candidates]
        else:
            raise MultimodalError(f"unknown feature screening '{self.screening}' (cox or variance)")
        return score

    def transform(self, arrays: CohortArrays, rows: np.ndarray) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Scaled inputs (one tensor per modality; absent rows are 0 and masked) and the mask.

        A modality with no usable feature in this fold is masked for everyone: it carries no measurement.
        """
        inputs, masks = [], []
        for name in arrays.modalities:
            cols = self.selected[name]
            expected = self.features.get(name)
            names = np.asarray(arrays.features[name], dtype=str)
            if (
                expected is not None
                and len(cols)
                and (cols.max() >= len(names) or not np.array_equal(names[cols], expected))
            ):
                raise MultimodalError(
                    f"modality '{name}': the store's features differ from those the model was trained on "
                    f"(expected {', '.join(str(f) for f in expected[:3])}, ...); "
                    "the store and the model directory do not belong together"
                )
            values = arrays.x[name][np.ix_(rows, cols)]
            scaled = (values - self.mean[name]) / self.scale[name]
            present = arrays.present[name][rows] & (len(cols) > 0)
            scaled = np.where(np.isnan(scaled), 0.0, scaled)  # missing cells -> training mean
            scaled[~present] = 0.0
            inputs.append(torch.as_tensor(scaled, dtype=torch.float32))
            masks.append(present)
        return inputs, torch.as_tensor(np.column_stack(masks), dtype=torch.bool)

    def save(self, path: str | Path) -> None:
        """Write the fitted state as ``.npz``."""
        payload = {}
        for name in self.selected:
            payload[f"{name}/selected"] = self.selected[name]
            payload[f"{name}/mean"] = self.mean[name]
            payload[f"{name}/scale"] = self.scale[name]
            payload[f"{name}/features"] = np.asarray(self.features[name], dtype=str)
        with open(path, "wb") as handle:
            np.savez(handle, **payload)

    @classmethod
    def load(cls, path: str | Path) -> FoldPreprocessor:
        """Read a state written by :meth:`save`."""
        state = cls()
        with np.load(path) as data:
            for key in data.files:
                name, what = key.rsplit("/", 1)
                getattr(state, what)[name] = data[key]
        return state


class CohortDataModule(L.LightningDataModule):
    """Serves one fold: full-batch training rows (the Cox risk set needs the whole batch) and
    held-out rows for prediction. Owns the fold's preprocessing, fitted in :meth:`setup`."""

    def __init__(
        self,
        arrays: CohortArrays,
        *,
        train_rows: np.ndarray,
        test_rows: np.ndarray,
        max_features: dict[str, int] | None = None,
        screening: str = "cox",
        max_correlation: float = 0.95,
    ) -> None:
        super().__init__()
        self.arrays = arrays
        has_outcome = ~(np.isnan(arrays.time[train_rows]) | np.isnan(arrays.event[train_rows]))
        self.train_rows = train_rows[has_outcome]
        self.test_rows = test_rows
        self.preprocessor = FoldPreprocessor(
            max_features=dict(max_features or {}), screening=screening, max_correlation=max_correlation
        )
        self._fitted = False

    def setup(self, stage: str | None = None) -> None:
        if not self._fitted:
            self.preprocessor.fit(self.arrays, self.train_rows)
            self._fitted = True

    @property
    def input_dims(self) -> dict[str, int]:
        self.setup()
        return {name: int(len(self.preprocessor.selected[name])) for name in self.arrays.modalities}

    def _dataset(self, rows: np.ndarray) -> TensorDataset:
        inputs, mask = self.preprocessor.transform(self.arrays, rows)
        a = self.arrays
        outcome = [torch.as_tensor(v[rows], dtype=torch.float32) for v in (a.time, a.event, a.response)]
        return TensorDataset(*inputs, mask, *outcome)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self._dataset(self.train_rows), batch_size=len(self.train_rows), shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        return DataLoader(self._dataset(self.test_rows), batch_size=max(len(self.test_rows), 1), shuffle=False)
