"""From the cohort store to per-fold model inputs.

:func:`cohort_arrays` reads the store once into dense per-modality arrays (a fixed, per-patient
transform: ``log1p`` of mutation counts). :class:`FoldPreprocessor` learns everything that depends
on data (feature filtering, gene selection, imputation, scaling) from the training rows of one
fold only. :class:`CohortDataModule` serves the fold's tensors to Lightning.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import lightning as L
import numpy as np
import pandas as pd
import torch

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
    #: the store's obs (rows aligned to ``patients``): sites and covariates for ``model.harmonise``
    obs: pd.DataFrame | None = None
    #: QoL task targets, patients x tasks (NaN = not recorded), filled by training (multimodal.model.tasks)
    targets: np.ndarray | None = None


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
        obs=obs,
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
    #: ``model.harmonise`` settings and the fold's ComBat fit per modality (multimodal.model.harmonise)
    harmonise: dict | None = None
    combat: dict = field(default_factory=dict)
    unseen_site_rows: dict[str, set[int]] = field(default_factory=dict)

    def fit(self, arrays: CohortArrays, train: np.ndarray) -> FoldPreprocessor:
        """Learn per-modality selected features, means and scales from rows ``train`` only."""
        if self.harmonise and self.harmonise.get("modality") not in arrays.modalities:
            raise MultimodalError(
                f"model.harmonise.modality {self.harmonise.get('modality')!r} is not a modality of the model "
                f"({', '.join(arrays.modalities)})"
            )
        for name in arrays.modalities:
            rows = train[arrays.present[name][train]]
            values = arrays.x[name][rows]
            if self.harmonise and self.harmonise.get("modality") == name and len(rows) >= 2:
                from multimodal.model.harmonise import fit_fold

                self.combat[name], values = fit_fold(self.harmonise, arrays, rows, values)
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
            if name in self.combat:
                self.counts[name]["harmonise"] = dict(self.combat[name].counts)
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
            if name in self.combat and len(cols):
                from multimodal.model.harmonise import apply_fold

                harmonised, unseen = apply_fold(self.harmonise, self.combat[name], arrays, rows, arrays.x[name][rows])
                values = harmonised[:, cols]
                if name in self.counts and len(unseen):  # patients of a site absent from training, counted
                    seen = self.unseen_site_rows.setdefault(name, set())
                    seen.update(int(r) for r in unseen)
                    self.counts[name].setdefault("harmonise", {})["unseen_site_patients"] = len(seen)
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
        if self.harmonise:
            from multimodal.model.harmonise import save_state

            payload.update(save_state(self.harmonise, self.combat))
        with open(path, "wb") as handle:
            np.savez(handle, **payload)

    @classmethod
    def load(cls, path: str | Path) -> FoldPreprocessor:
        """Read a state written by :meth:`save`."""
        state = cls()
        with np.load(path) as data:
            for key in data.files:
                if key.startswith("harmonise/"):  # read below
                    continue
                name, what = key.rsplit("/", 1)
                getattr(state, what)[name] = data[key]
            if "harmonise/settings" in data.files:
                from multimodal.model.harmonise import load_state

                state.harmonise, state.combat = load_state(data)
        return state


def rank_share(tensors: tuple[torch.Tensor, ...], *, rank: int, world_size: int) -> tuple[torch.Tensor, ...]:
    """One process's share of a part's ``(*inputs, mask, time, event, response, targets)`` under DDP: rows
    ``rank::world_size``, padded to ``ceil(n / world_size)`` rows so that every rank has as many (``all_gather``
    and DDP's collectives need equal shapes). Padding rows repeat the share's first row with its outcomes
    (time, event, response, targets) NaN; the model drops them after gathering (``FusionSurvivalModel.whole_batch``).
    """
    if world_size == 1:
        return tensors
    n = int(tensors[0].shape[0])
    size = -(-n // world_size)
    index = torch.arange(rank, n, world_size, device=tensors[0].device)
    pad = size - len(index)
    if pad:
        first = index[:1] if len(index) else torch.zeros(1, dtype=torch.long, device=index.device)
        index = torch.cat([index, first.expand(pad)])
    share = [t[index] for t in tensors]
    if pad:  # the outcomes (every tensor after the bool mask: time, event, response, targets) of padding rows
        after_mask = max(j for j, t in enumerate(share) if t.dtype == torch.bool) + 1
        for j in range(after_mask, len(share)):
            share[j][size - pad :] = float("nan")
    return tuple(share)


class DeviceBatches:
    """Batches cut from tensors that already sit on the training device (moved there once per fold).

    ``batch_size=None`` (the default, as the Cox partial likelihood wants the largest risk sets) yields
    the whole part as one batch, in row order; a smaller ``batch_size`` yields ``ceil(n / batch_size)``
    index slices, shuffled when ``shuffle`` by a generator seeded with ``seed`` and the epoch number only,
    so an epoch's order does not depend on the process's global RNG (nor on a resume, given ``epoch``).
    """

    def __init__(
        self,
        tensors: tuple[torch.Tensor, ...],
        *,
        batch_size: int | None = None,
        shuffle: bool = False,
        seed: int = 0,
        epoch: Callable[[], int] | None = None,
    ) -> None:
        self.tensors = tensors
        self.n = int(tensors[0].shape[0]) if tensors else 0
        self.batch_size = batch_size if batch_size and batch_size < self.n else None
        self.shuffle = shuffle
        self.seed = int(seed)
        self._count = 0
        #: the epoch number seeding each epoch's shuffle (the trainer's, so that a resumed run continues it)
        self.epoch = epoch

    def __len__(self) -> int:
        if self.batch_size is None:
            return 1
        return -(-self.n // self.batch_size)

    def __iter__(self):
        epoch = self.epoch() if self.epoch is not None else self._count
        self._count += 1
        if self.batch_size is None:
            yield self.tensors
            return
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            order = torch.randperm(self.n, generator=generator).to(self.tensors[0].device)
        else:
            order = torch.arange(self.n, device=self.tensors[0].device)
        for start in range(0, self.n, self.batch_size):
            index = order[start : start + self.batch_size]
            yield tuple(t[index] for t in self.tensors)


class CohortDataModule(L.LightningDataModule):
    """Serves one fold: its training rows as tensors put on the model's device once (by default one full
    batch: the Cox risk set needs the whole batch) and held-out rows for prediction. Owns the fold's
    preprocessing, fitted in :meth:`setup`."""

    def __init__(
        self,
        arrays: CohortArrays,
        *,
        train_rows: np.ndarray,
        test_rows: np.ndarray,
        max_features: dict[str, int] | None = None,
        screening: str = "cox",
        max_correlation: float = 0.95,
        batch_size: int | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.arrays = arrays
        has_outcome = ~(np.isnan(arrays.time[train_rows]) | np.isnan(arrays.event[train_rows]))
        self.train_rows = train_rows[has_outcome]
        self.test_rows = test_rows
        self.preprocessor = FoldPreprocessor(
            max_features=dict(max_features or {}), screening=screening, max_correlation=max_correlation
        )
        self.batch_size = batch_size
        self.seed = seed
        self._fitted = False
        self._on_device: dict[tuple[str, str], tuple[torch.Tensor, ...]] = {}

    def setup(self, stage: str | None = None) -> None:
        if not self._fitted:
            self.preprocessor.fit(self.arrays, self.train_rows)
            self._fitted = True

    @property
    def input_dims(self) -> dict[str, int]:
        self.setup()
        return {name: int(len(self.preprocessor.selected[name])) for name in self.arrays.modalities}

    def tensors(self, rows: np.ndarray) -> tuple[torch.Tensor, ...]:
        """``(*inputs, mask, time, event, response, targets)`` of ``rows`` on the CPU, in the order the model's
        ``_split`` reads a batch."""
        self.setup()
        inputs, mask = self.preprocessor.transform(self.arrays, rows)
        a = self.arrays
        outcome = [torch.as_tensor(v[rows], dtype=torch.float32) for v in (a.time, a.event, a.response)]
        targets = a.targets[rows] if a.targets is not None else np.zeros((len(rows), 0))
        return (*inputs, mask, *outcome, torch.as_tensor(targets, dtype=torch.float32))

    def _device(self) -> torch.device:
        trainer = getattr(self, "trainer", None)
        return trainer.strategy.root_device if trainer is not None else torch.device("cpu")

    def _placed(self, part: str, rows: np.ndarray) -> tuple[torch.Tensor, ...]:
        """The part's tensors on the training device, built and moved once per fold and device."""
        device = self._device()
        key = (part, str(device))
        if key not in self._on_device:
            self._on_device[key] = tuple(t.to(device) for t in self.tensors(rows))
        return self._on_device[key]

    def _rank(self) -> tuple[int, int]:
        trainer = getattr(self, "trainer", None)
        return (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)

    def train_dataloader(self) -> DeviceBatches:
        rank, world_size = self._rank()
        return DeviceBatches(
            rank_share(self._placed("train", self.train_rows), rank=rank, world_size=world_size),
            batch_size=self.batch_size,
            shuffle=True,
            seed=self.seed,
            epoch=(lambda: self.trainer.current_epoch) if getattr(self, "trainer", None) is not None else None,
        )

    def predict_dataloader(self) -> DeviceBatches:
        return DeviceBatches(self._placed("test", self.test_rows))
