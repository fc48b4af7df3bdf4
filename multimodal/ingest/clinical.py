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
from multimodal.ingest.textfile import check_rows, diagnose_table, id_problems, line_problem, raise_problems, read_table

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
    #: quality-of-life outcomes, ``((column, continuous|ordinal), ...)``: kept in the store's obs under their
    #: own names and trained as tasks (multimodal.model.tasks); ordinal grades are whole numbers 0, 1, 2, ...
    qol_columns: tuple[tuple[str, str], ...] = ()


def _binary(values: pd.Series, *, column: str, words: tuple[set[str], set[str]]) -> tuple[pd.Series, list[str]]:
    true_words, false_words = words
    lowered = values.str.strip().str.lower()
    out = pd.Series(np.nan, index=values.index, dtype=float)
    out[lowered.isin(true_words)] = 1.0
    out[lowered.isin(false_words)] = 0.0
    bad = ~lowered.isin(true_words | false_words | MISSING)
    accepted = ", ".join(sorted((true_words | false_words) - BINARY_TRUE - BINARY_FALSE))
    fragments = line_problem(
        values[bad],
        one=f"column {column!r} value",
        many=f"column {column!r}",
        problem="is not 0/1",
        hint=f" (also accepted: {accepted}, yes/no)",
    )
    return out, fragments


def _numeric(
    values: pd.Series, *, column: str, nonnegative: bool = False, name: str | None = None
) -> tuple[pd.Series, list[str]]:
    """Numbers of a column (missing markers -> NaN) and fragments naming text, infinite or negative cells."""
    lowered = values.str.strip().str.lower()
    is_missing = lowered.isin(MISSING)
    numbers = pd.to_numeric(values.str.strip().where(~is_missing), errors="coerce").astype(float)
    one = f"column {column!r} value" if name is None else name
    many = f"column {column!r}" if name is None else f"{name} column {column!r}"
    fragments = line_problem(values[numbers.isna() & ~is_missing], one=one, many=many, problem="is not a number")
    infinite = np.isinf(numbers)
    negative = (numbers < 0) & ~infinite if nonnegative else pd.Series(False, index=values.index)
    if infinite.any() or negative.any():
        kinds = " or ".join(word for word, kind in (("negative", negative), ("not finite", infinite)) if kind.any())
        fragments += line_problem(values[infinite | negative], one=one, many=many, problem=f"is {kinds}")
    return numbers, fragments


def read_clinical(path: str | Path, *, spec: ClinicalSpec | None = None) -> pd.DataFrame:
    """Read and validate the clinical table; index = patient_id, outcome columns typed.

    Returns columns ``time``, ``event``, ``response`` (NaN where absent) followed by the covariates
    as given (numeric columns parsed, categorical kept as strings) and ``site`` when configured.
    Every bad cell of every column is checked before raising, and the one message names them all
    (up to ten lines per problem), so the table can be fixed in one go.
    """
    spec = spec or ClinicalSpec()
    path = Path(path)
    what = "clinical table"
    frame = read_table(path, what=what)  # names a cut gzip, UTF-16, Excel, a mixed-up separator
    needed = [spec.id_column, spec.time_column, spec.event_column, *spec.covariates]
    needed += [c for c in (spec.response_column, spec.site_column) if c]
    needed += [c for c, _ in spec.qol_columns]
    _check_qol_spec(spec)
    absent = [c for c in dict.fromkeys(needed) if c not in frame.columns]
    if absent:
        diagnose_table(path, what=what)
        raise MultimodalError(f"{path}: clinical table lacks column(s) {absent} (has {list(frame.columns)})")
    check_rows(frame, path, what=what)
    ids = frame[spec.id_column].str.strip()
    problems = id_problems(ids, column=spec.id_column)

    out = pd.DataFrame(index=pd.Index(ids.to_numpy(), name="patient_id"))
    # 0 is a real time (TCGA-CDR has OS.time = 0: death or last contact at diagnosis); a negative one is not
    time, found = _numeric(frame[spec.time_column], column=spec.time_column, nonnegative=True, name="survival time")
    problems += found
    out["time"] = time.to_numpy()
    event, found = _binary(frame[spec.event_column], column=spec.event_column, words=EVENT_WORDS)
    problems += found
    out["event"] = event.to_numpy()
    out["response"] = np.nan
    if spec.response_column:
        response, found = _binary(frame[spec.response_column], column=spec.response_column, words=RESPONSE_WORDS)
        problems += found
        out["response"] = response.to_numpy()
    for column in spec.covariates:
        values = frame[column].str.strip()
        if column in spec.categorical:
            out[column] = values.where(~values.str.lower().isin(MISSING), other="unknown").to_numpy()
        else:
            numbers, found = _numeric(values, column=column)
            problems += found
            out[column] = numbers.to_numpy()
    for column, kind in spec.qol_columns:
        values, found = _numeric(frame[column], column=column, name=f"{kind} quality-of-life")
        if kind == "ordinal":
            bad = values.notna() & ((values < 0) | (values != values.round()))
            found += line_problem(
                frame[column][bad],
                one=f"ordinal quality-of-life column {column!r} value",
                many=f"ordinal quality-of-life column {column!r}",
                problem="is not a grade 0, 1, 2, ...",
            )
        problems += found
        out[column] = values.to_numpy()
    raise_problems(path, problems)
    if spec.site_column:
        site = frame[spec.site_column].str.strip()
        out["site"] = site.where(~site.str.lower().isin(MISSING), other="unknown").to_numpy()
    return out


def _check_qol_spec(spec: ClinicalSpec) -> None:
    """A QoL column is an outcome: of a known kind, not also a covariate or another outcome column."""
    taken = {"time", "event", "response", "site", spec.id_column, spec.time_column, spec.event_column}
    taken |= {c for c in (spec.response_column, spec.site_column) if c} | set(spec.covariates)
    for column, kind in spec.qol_columns:
        if kind not in ("continuous", "ordinal"):
            raise MultimodalError(f"clinical_columns.qol_columns.{column} must be continuous or ordinal, got {kind}")
        if column in taken:
            raise MultimodalError(
                f"clinical_columns.qol_columns.{column}: the column is already used as a covariate, identifier, "
                "outcome or site column (a quality-of-life outcome cannot also be a model input)"
            )


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
