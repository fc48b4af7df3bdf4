"""Cross-validation folds: stratified by event status and site, seeded, written to disk."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from multimodal.errors import MultimodalError


def assign_folds(obs: pd.DataFrame, *, n_folds: int, seed: int) -> pd.Series:
    """A fold number (0..n_folds-1) for every patient, balanced over event status and site.

    Patients without a survival outcome still get a fold: they are scored when held out, though
    they cannot be evaluated or trained on.
    """
    from sklearn.model_selection import StratifiedKFold

    from multimodal.store import survival_outcome

    if n_folds < 2:
        raise MultimodalError(f"need at least 2 folds, got {n_folds}")
    if len(obs) < n_folds:
        raise MultimodalError(f"{len(obs)} patients cannot fill {n_folds} folds")
    # strata: event, censored, or no usable outcome (an event without a time is not an event here)
    time = obs["time"] if "time" in obs else pd.Series(0.0, index=obs.index)  # no times given: event alone
    has, is_event = survival_outcome(time, obs["event"])
    event = pd.Series(np.where(has, is_event.astype(int), -1).astype(str), index=obs.index)
    site = obs["site"].astype(str) if "site" in obs else pd.Series("all", index=obs.index)
    strata = event + "|" + site
    counts = strata.value_counts()
    strata = strata.where(strata.map(counts) >= n_folds, event)  # rare combinations: event only
    sizes = strata.value_counts()
    if (sizes < n_folds).any():  # leftovers join the largest stratum rather than form a tiny one
        strata = strata.where(strata.map(sizes) >= n_folds, sizes.index[0])
    folds = np.zeros(len(obs), dtype=int)
    splitter = StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    for k, (_, test) in enumerate(splitter.split(np.zeros(len(obs)), strata)):
        folds[test] = k
    return pd.Series(folds, index=obs.index, name="fold")


# --------------------------------------------------------------------------------------------------
# Outer folds as row indices: assigned here (optionally repeated) or read from a user's split files.


@dataclass
class FoldPlan:
    """The outer folds of a run: ``folds[r][k]`` is ``(train_rows, test_rows)`` of fold ``k`` in repeat ``r``
    (row indices into the cohort's patients, ascending). ``untested`` lists the patients no fold of the first
    repeat holds out (they get no prediction); ``source`` says where the folds came from."""

    folds: list[list[tuple[np.ndarray, np.ndarray]]]
    source: str
    untested: list[str] = field(default_factory=list)

    @property
    def n_folds(self) -> int:
        return len(self.folds[0])

    @property
    def repeats(self) -> int:
        return len(self.folds)


def plan_from_assignment(assignments: list[pd.Series], patients: list[str], *, source: str) -> FoldPlan:
    """A plan from one fold number per patient and repeat (the patient is held out in that fold and trained on
    in every other); a patient listed without a fold number is never held out but is trained on; a patient
    not listed at all is not used."""
    folds = []
    for fold_of in assignments:
        values = fold_of.reindex(patients).to_numpy(dtype=float)
        n = int(np.nanmax(values)) + 1
        folds.append(
            [(np.flatnonzero(np.isfinite(values) & (values != k)), np.flatnonzero(values == k)) for k in range(n)]
        )
    # patients without a fold number are trained on everywhere: include them in every training set
    for r, fold_of in enumerate(assignments):
        values = fold_of.reindex(patients).to_numpy(dtype=float)
        free = np.flatnonzero(~np.isfinite(values) & np.isin(patients, fold_of.index))
        if free.size:
            folds[r] = [(np.union1d(train, free), test) for train, test in folds[r]]
    first = assignments[0].reindex(patients).to_numpy(dtype=float)
    untested = [p for p, v in zip(patients, first, strict=True) if not np.isfinite(v)]
    return FoldPlan(folds=folds, source=source, untested=untested)


def assigned_plan(obs: pd.DataFrame, *, n_folds: int, seed: int, repeats: int = 1) -> FoldPlan:
    """Stratified folds (:func:`assign_folds`); repeat ``r`` reshuffles with seed ``seed + r``."""
    from multimodal.model import splits  # looked up at call time, so tests can rig the assignment

    assignments = [splits.assign_folds(obs, n_folds=n_folds, seed=seed + r) for r in range(repeats)]
    source = f"stratified by event and site, seed {seed}" + (
        f", {repeats} repeats (seeds {seed} to {seed + repeats - 1})" if repeats > 1 else ""
    )
    return plan_from_assignment(assignments, list(obs.index), source=source)


def write_folds(plan: FoldPlan, patients: list[str], path: Path) -> None:
    """``folds.tsv``: ``patient_id``, ``fold`` (the fold holding the patient out; empty if none),
    ``fold_repeat_<r>`` for further repeats, and ``train_fold_<k>`` (1/0) columns when a training set is not
    simply every other patient (user splits leaving patients out of a fold). :func:`read_folds` reads it back."""
    table = pd.DataFrame(index=pd.Index(patients, name="patient_id"))
    for r, folds in enumerate(plan.folds):
        column = np.full(len(patients), np.nan)
        for k, (_, test) in enumerate(folds):
            column[test] = k
        table["fold" if r == 0 else f"fold_repeat_{r}"] = pd.array(
            [int(v) if np.isfinite(v) else pd.NA for v in column], dtype="Int64"
        )
    everyone = np.arange(len(patients))
    if any(not np.array_equal(train, np.setdiff1d(everyone, test)) for train, test in plan.folds[0]):
        for k, (train, _) in enumerate(plan.folds[0]):
            table[f"train_fold_{k}"] = np.isin(everyone, train).astype(int)
    table.reset_index().to_csv(path, sep="\t", index=False)


SPLIT_TRAIN = ("train", "training")
SPLIT_TEST = ("val", "test", "validation", "valid", "held_out", "heldout")


def read_splits(path: str | Path, patients: list[str]) -> FoldPlan:
    """Folds from ``path``: our own ``folds.tsv`` (or a model directory holding one), a directory of
    per-fold files as published benchmarks share them (MCAT/PORPOISE ``splits_0.csv`` ... with ``train`` and
    ``val`` columns of patient IDs; ``test``/``validation`` also accepted), or one such file (one fold).

    Refused in one line naming the file, line and ID: an ID that is not a cohort patient, a patient both
    trained on and held out in one fold, a patient held out by two folds. Cohort patients no fold holds out
    are listed in ``untested`` (they get no prediction).
    """
    path = Path(path)
    if not path.exists():
        raise MultimodalError(f"model.splits: {path} does not exist")
    if path.is_dir():
        if (path / "folds.tsv").is_file():
            return read_folds(path / "folds.tsv", patients)
        files = sorted(
            (p for p in path.iterdir() if re.fullmatch(r"splits_(\d+)\.(csv|tsv)", p.name)),
            key=lambda p: int(re.search(r"\d+", p.name).group()),
        )
        if not files:
            raise MultimodalError(
                f"model.splits: {path} holds neither a folds.tsv nor per-fold files named splits_<k>.csv "
                "(columns train and val of patient IDs)"
            )
    else:
        head = _read_text_table(path)
        if {"patient_id", "fold"} <= set(head.columns):
            return read_folds(path, patients)
        files = [path]
    index = {p: i for i, p in enumerate(patients)}
    folds, test_of = [], {}
    for file in files:
        table = _read_text_table(file)
        lower = {str(c).strip().lower(): c for c in table.columns}
        train_col = next((lower[c] for c in SPLIT_TRAIN if c in lower), None)
        test_col = next((lower[c] for c in SPLIT_TEST if c in lower), None)
        if train_col is None or test_col is None:
            raise MultimodalError(
                f"{file}: needs a train column and a val (or test) column of patient IDs; "
                f"it has {', '.join(map(str, table.columns))}"
            )
        rows = {}
        for column in (train_col, test_col):
            seen: dict[str, int] = {}
            for line, pid in _ids(table[column]):
                if pid not in index:
                    others = sum(1 for _, q in _ids(table[train_col]) if q not in index) + sum(
                        1 for _, q in _ids(table[test_col]) if q not in index
                    )
                    more = f" ({others - 1} other ID(s) of this file are not either)" if others > 1 else ""
                    raise MultimodalError(
                        f"{file}: line {line}: patient {pid} (column {column}) is not in the cohort{more}"
                    )
                if pid in seen:
                    raise MultimodalError(
                        f"{file}: line {line}: patient {pid} is listed twice in column {column} (also line {seen[pid]})"
                    )
                seen[pid] = line
            rows[column] = seen
        both = [pid for pid in rows[test_col] if pid in rows[train_col]]
        if both:
            pid = both[0]
            more = f" ({len(both) - 1} other patient(s) too)" if len(both) > 1 else ""
            raise MultimodalError(
                f"{file}: line {rows[test_col][pid]}: patient {pid} is in both {train_col} (line "
                f"{rows[train_col][pid]}) and {test_col} of this fold{more}"
            )
        for pid, line in rows[test_col].items():
            if pid in test_of:
                raise MultimodalError(
                    f"{file}: line {line}: patient {pid} is held out by two folds ({test_of[pid]} and this one); "
                    "each patient may be held out at most once"
                )
            test_of[pid] = f"{file.name}"
        train = np.sort(np.array([index[p] for p in rows[train_col]], dtype=int))
        test = np.sort(np.array([index[p] for p in rows[test_col]], dtype=int))
        folds.append((train, test))
    untested = [p for p in patients if p not in test_of]
    source = str(path) if len(files) == 1 else f"{path} ({len(files)} files: {files[0].name} ... {files[-1].name})"
    return FoldPlan(folds=[folds], source=source, untested=untested)


def read_folds(path: str | Path, patients: list[str]) -> FoldPlan:
    """Read a ``folds.tsv`` written by :func:`write_folds` (checked as :func:`read_splits` checks split files)."""
    path = Path(path)
    table = _read_text_table(path)
    missing = [c for c in ("patient_id", "fold") if c not in table.columns]
    if missing:
        raise MultimodalError(f"{path}: no {' or '.join(missing)} column (expected patient_id, fold)")
    index = {p: i for i, p in enumerate(patients)}
    seen: dict[str, int] = {}
    for line, pid in _ids(table["patient_id"]):
        if pid not in index:
            raise MultimodalError(f"{path}: line {line}: patient {pid} is not in the cohort")
        if pid in seen:
            raise MultimodalError(f"{path}: line {line}: patient {pid} is listed twice (also line {seen[pid]})")
        seen[pid] = line
    table = table[table["patient_id"].str.strip() != ""]
    ids = table["patient_id"].str.strip().tolist()
    fold_columns = ["fold"] + sorted(
        (c for c in table.columns if re.fullmatch(r"fold_repeat_\d+", c)), key=lambda c: int(c.rsplit("_", 1)[1])
    )
    assignments = []
    for column in fold_columns:
        values = []
        for line, (pid, cell) in enumerate(zip(ids, table[column].str.strip(), strict=True), start=2):
            if cell == "":
                values.append(np.nan)
            elif re.fullmatch(r"\d+", cell):
                values.append(float(cell))
            else:
                raise MultimodalError(f"{path}: line {line}: patient {pid}: {column} {cell!r} is not a fold number")
        assignments.append(pd.Series(values, index=ids, dtype=float))
    plan = plan_from_assignment(assignments, patients, source=str(path))
    train_columns = [c for c in table.columns if re.fullmatch(r"train_fold_\d+", c)]
    if train_columns:
        rows = np.array([index[p] for p in ids], dtype=int)
        folds = []
        for k, (_, test) in enumerate(plan.folds[0]):
            column = f"train_fold_{k}"
            if column not in table.columns:
                raise MultimodalError(f"{path}: has train_fold_* columns but no {column}")
            flag = table[column].str.strip().to_numpy()
            train = np.sort(rows[flag == "1"])
            clash = np.intersect1d(train, test)
            if clash.size:
                pid = patients[clash[0]]
                raise MultimodalError(
                    f"{path}: line {seen[pid]}: patient {pid} is both trained on ({column}) and held out in fold {k}"
                )
            folds.append((train, test))
        plan.folds[0] = folds
    return plan


def _read_text_table(path: Path) -> pd.DataFrame:
    """A small CSV/TSV of IDs as text (no ID read as a number or a missing value; empty cells are '')."""
    try:
        return pd.read_csv(path, sep=None, engine="python", dtype=str, keep_default_na=False)
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        raise MultimodalError(f"{path}: cannot be read as a CSV/TSV table of patient IDs ({exc})") from exc


def _ids(column: pd.Series):
    """``(line, ID)`` for every non-empty cell (line 1 is the header)."""
    for i, cell in enumerate(column.astype(str)):
        cell = cell.strip()
        if cell:
            yield i + 2, cell
