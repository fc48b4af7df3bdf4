"""The clinical and outcome table: one row per patient with covariates, survival and response.

Survival is ``time`` (any unit, >= 0) and ``event`` (1 = death/progression observed, 0 = censored);
response is binary (1/0, also yes/no, true/false, responder/non-responder). Empty outcome cells
are allowed (kept in the store, left out of model fitting and counted); malformed ones are errors.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from multimodal.errors import MultimodalError
from multimodal.ingest.samples import check_unique_ids, read_table

if TYPE_CHECKING:
    import anndata

#: Cell values meaning "not recorded", compared in lower case: R/pandas/Excel markers, TCGA's bracketed
#: terms (``[Not Available]``, ``[Discrepancy]`` ...) and GDC's ``'--``.
MISSING = {
    "",
    "na",
    "nan",
    "n/a",
    "#n/a",
    "none",
    "null",
    "--",
    "'--",
    "[not available]",
    "[not applicable]",
    "[unknown]",
    "[discrepancy]",
    "[not evaluated]",
    "[not reported]",
    "not reported",
    "not available",
    "unknown",
}
BINARY_TRUE = {"1", "1.0", "yes", "true"}
BINARY_FALSE = {"0", "0.0", "no", "false"}
#: Words of the event column (vital status) and of the response column (RECIST best response).
EVENT_WORDS = (BINARY_TRUE | {"dead", "deceased"}, BINARY_FALSE | {"alive", "living"})
RESPONSE_WORDS = (
    BINARY_TRUE | {"responder", "response", "cr", "pr"},
    BINARY_FALSE | {"non-responder", "nonresponder", "sd", "pd"},
)


@dataclass(frozen=True)
class ClinicalSpec:
    """Which columns of the clinical table mean what."""

    id_column: str = "patient_id"
    time_column: str = "os_time"
    event_column: str = "os_event"
    response_column: str | None = "response"
    site_column: str | None = "site"
    covariates: tuple[str, ...] = ("age", "sex", "arm", "site")
    categorical: tuple[str, ...] = field(default=("sex", "arm", "site"))


def _binary(values: pd.Series, *, path: Path, column: str, words: tuple[set[str], set[str]]) -> pd.Series:
    true_words, false_words = words
    lowered = values.str.strip().str.lower()
    out = pd.Series(np.nan, index=values.index, dtype=float)
    out[lowered.isin(true_words)] = 1.0
    out[lowered.isin(false_words)] = 0.0
    bad = ~lowered.isin(true_words | false_words | MISSING)
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        raise MultimodalError(
            f"{path}: line {values.index[row]}: column {column!r} value {values.iloc[row]!r} is not 0/1 "
            f"(also accepted: {', '.join(sorted((true_words | false_words) - BINARY_TRUE - BINARY_FALSE))}, yes/no)"
        )
    return out


def _numeric(values: pd.Series, *, path: Path, column: str) -> pd.Series:
    lowered = values.str.strip().str.lower()
    numbers = pd.to_numeric(values.str.strip().where(~lowered.isin(MISSING)), errors="coerce")
    bad = numbers.isna() & ~lowered.isin(MISSING)
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        raise MultimodalError(
            f"{path}: line {values.index[row]}: column {column!r} value {values.iloc[row]!r} is not a number"
        )
    return numbers.astype(float)


def read_clinical(path: str | Path, *, spec: ClinicalSpec | None = None) -> pd.DataFrame:
    """Read and validate the clinical table; index = patient_id, outcome columns typed.

    Returns columns ``time``, ``event``, ``response`` (NaN where absent) followed by the covariates
    as given (numeric columns parsed, categorical kept as strings) and ``site`` when configured.
    """
    spec = spec or ClinicalSpec()
    path = Path(path)
    frame = read_table(path, what="clinical table")
    needed = [spec.id_column, spec.time_column, spec.event_column, *spec.covariates]
    if spec.response_column:
        needed.append(spec.response_column)
    absent = [c for c in dict.fromkeys(needed) if c not in frame.columns]
    if absent:
        raise MultimodalError(f"{path}: clinical table lacks column(s) {absent} (has {list(frame.columns)})")
    ids = frame[spec.id_column].str.strip()
    check_unique_ids(ids, path=path, column=spec.id_column)

    out = pd.DataFrame(index=pd.Index(ids.to_numpy(), name="patient_id"))
    time = _numeric(frame[spec.time_column], path=path, column=spec.time_column)
    negative = time < 0  # 0 is a real value (TCGA-CDR has OS.time = 0: death or last contact at diagnosis)
    if negative.any():
        row = int(np.flatnonzero(negative.to_numpy())[0])
        raise MultimodalError(
            f"{path}: line {frame.index[row]}: survival time {frame[spec.time_column].iloc[row]!r} is negative"
        )
    out["time"] = time.to_numpy()
    out["event"] = _binary(frame[spec.event_column], path=path, column=spec.event_column, words=EVENT_WORDS).to_numpy()
    out["response"] = (
        _binary(frame[spec.response_column], path=path, column=spec.response_column, words=RESPONSE_WORDS).to_numpy()
        if spec.response_column
        else np.nan
    )
    for column in spec.covariates:
        values = frame[column].str.strip()
        if column in spec.categorical:
            out[column] = values.where(~values.str.lower().isin(MISSING), other="unknown").to_numpy()
        else:
            out[column] = _numeric(values, path=path, column=column).to_numpy()
    if spec.site_column:
        if spec.site_column not in frame.columns:
            raise MultimodalError(f"{path}: clinical table lacks site column {spec.site_column!r}")
        site = frame[spec.site_column].str.strip()
        out["site"] = site.where(~site.str.lower().isin(MISSING), other="unknown").to_numpy()
    return out


def clinical_features(clinical: pd.DataFrame, *, spec: ClinicalSpec | None = None) -> anndata.AnnData:
    """The clinical covariates as a model modality: numeric as given, categorical one-hot (``col=level``).

    Missing numeric values stay NaN (imputed inside each training fold by the model).
    """
    import anndata as ad

    spec = spec or ClinicalSpec()
    columns: dict[str, np.ndarray] = {}
    classes: list[str] = []
    for column in spec.covariates:
        if column in spec.categorical:
            levels = sorted(pd.unique(clinical[column].astype(str)))
            for level in levels:
                columns[f"{column}={level}"] = (clinical[column].astype(str) == level).to_numpy(np.float32)
                classes.append("clinical_categorical")
        else:
            columns[column] = clinical[column].to_numpy(np.float32)
            classes.append("clinical_numeric")
    var = pd.DataFrame(
        {"feature_class": classes, "source": "clinical_table"}, index=pd.Index(list(columns), name="feature")
    )
    x = np.column_stack(list(columns.values())).astype(np.float32) if columns else np.zeros((len(clinical), 0))
    adata = ad.AnnData(X=x, obs=pd.DataFrame(index=clinical.index.copy()), var=var)
    adata.uns["ingest"] = {
        "modality": "clinical",
        "params": {"covariates": list(spec.covariates), "categorical": list(spec.categorical)},
        "n_patients_in": int(len(clinical)),
        "exclusions": {"missing_numeric_values": int(np.isnan(x).sum())},
    }
    return adata
