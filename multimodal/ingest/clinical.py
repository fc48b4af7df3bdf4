"""The clinical and outcome table: one row per patient with covariates, survival and response.

Survival is ``time`` (any unit, >= 0) and ``event`` (1 = death/progression observed, 0 = censored);
response is binary (1/0, also yes/no, true/false, responder/non-responder). Empty outcome cells
are allowed (kept in the store, left out of model fitting and counted); malformed ones are errors.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from multimodal.errors import MultimodalError
from multimodal.ingest.samples import (
    MAX_LINES_NAMED,
    list_lines,
    open_text,
    read_table,
    separator_mismatch,
    table_separator,
)

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


def diagnose_table(path: Path, *, what: str, cause: BaseException | None = None, comments: bool = False) -> None:
    """On an error path only: raise a clearer message when the file is not the text table its name says.

    Looks for a gzip stream cut short or a ``.gz`` that is not gzip, a binary file (an Excel
    workbook), UTF-16 or non-UTF-8 text, and a comma-separated file named ``.tsv`` (or the reverse).
    Returns when none applies, so the caller raises its own message. ``cause`` is the exception behind
    the caller's error; ``comments`` skips leading ``#`` lines (featureCounts, GCT).
    """
    import csv
    import gzip

    gz = path.name.lower().endswith(".gz")
    if gz and isinstance(cause, EOFError):
        raise MultimodalError(
            f"{path}: the gzip stream ends early: the file is cut short (an interrupted download or copy?); "
            "fetch or compress it again"
        ) from cause
    if gz and isinstance(cause, gzip.BadGzipFile):
        raise MultimodalError(
            f"{path}: is named .gz but is not gzip-compressed; compress it, or drop .gz from its name"
        ) from cause
    try:
        with (gzip.open if gz else open)(path, "rb") as handle:
            head = handle.read(1 << 16)
    except (OSError, EOFError):
        return
    if head.startswith((b"\xff\xfe", b"\xfe\xff")) or b"\x00\x00\x00\x00" in (head[0:8:2], head[1:8:2]):
        raise MultimodalError(f"{path}: {what} is UTF-16 text; save it as UTF-8")
    if head.startswith((b"PK\x03\x04", b"\xd0\xcf\x11\xe0")):
        raise MultimodalError(
            f"{path}: {what} is an Excel workbook (or another binary file), not a text table; "
            "export it as tab-separated (.tsv) or comma-separated (.csv) text"
        )
    if b"\x00" in head:
        raise MultimodalError(f"{path}: {what} is a binary file, not a text table")
    if isinstance(cause, UnicodeDecodeError) or _first_non_utf8(head, final=False) is not None:
        found = _first_non_utf8_line(path, gz)
        if found is not None:
            line, byte = found
            raise MultimodalError(
                f"{path}: line {line}: byte 0x{byte:02x} is not UTF-8 (a Latin-1 or Windows-1252 export?); "
                f"save the {what} as UTF-8"
            )
    sep = table_separator(path)
    other = "," if sep == "\t" else "\t"
    try:
        with open_text(path) as handle:
            lines = []
            for line in handle:
                if line.strip() and not (comments and not lines and line.startswith("#")):
                    lines.append(line)
                if len(lines) >= 50:
                    break
    except (OSError, EOFError, UnicodeDecodeError):
        return
    if not lines:
        return
    mismatch = separator_mismatch(path, lines[0].rstrip("\r\n"), sep=sep)  # a header of one field: read_table's words
    if mismatch:
        raise MultimodalError(mismatch)
    # A header holding both separators: rows that split evenly only on the other one tell
    n_sep = [len(row) for row in csv.reader(lines, delimiter=sep)]
    n_other = [len(row) for row in csv.reader(lines, delimiter=other)]
    rows_sep, rows_other = n_sep[1:], n_other[1:]
    evenly = len(set(n_sep)) > 1 and len(set(rows_other)) == 1
    if rows_other and evenly and all(o > s for o, s in zip(rows_other, rows_sep, strict=True)):
        said, seen = ("tab", "comma") if sep == "\t" else ("comma", "tab")
        raise MultimodalError(
            f"{path}: looks {seen}-separated (its rows have {rows_other[0]} {seen}-separated fields, its header "
            f"{n_sep[0]} {said}-separated ones), but the name says {said}-separated; "
            f"rename it {'.csv' if seen == 'comma' else '.tsv'} or save it {said}-separated"
        )


def _first_non_utf8(data: bytes, *, final: bool) -> int | None:
    """Offset of the first byte of ``data`` that is not UTF-8; a sequence cut at the end passes unless ``final``."""
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as exc:
        return None if not final and exc.reason == "unexpected end of data" else exc.start
    return None


def _first_non_utf8_line(path: Path, gz: bool) -> tuple[int, int] | None:
    """(line number, byte) of the first byte of the file that is not UTF-8."""
    import gzip

    try:
        with (gzip.open if gz else open)(path, "rb") as handle:
            for number, line in enumerate(handle, start=1):
                offset = _first_non_utf8(line, final=True)
                if offset is not None:
                    return number, line[offset]
    except (OSError, EOFError):
        return None
    return None


def listing(entries: Sequence[str], *, total: int | None = None) -> str:
    """The first ``MAX_LINES_NAMED`` entries joined by commas, then `` and N more`` (as ``list_lines`` does)."""
    total = len(entries) if total is None else total
    shown = ", ".join(entries[:MAX_LINES_NAMED])
    return shown + (f" and {total - MAX_LINES_NAMED} more" if total > MAX_LINES_NAMED else "")


def line_problem(bad: pd.Series, *, one: str, many: str, problem: str, hint: str = "") -> list[str]:
    """A message fragment for offending raw cells (``bad``: values indexed by file line), or none.

    One line: ``line 5: <one> '<value>' <problem><hint>``; several: ``<many> <problem> on N lines:
    line 3 ('x'), line 7 ('y') and 2 more<hint>`` (ten named), so the file can be fixed in one go.
    """
    if bad.empty:
        return []
    if len(bad) == 1:
        return [f"line {int(bad.index[0])}: {one} {str(bad.iloc[0])!r} {problem}{hint}"]
    pairs = [(int(line), str(value)) for line, value in bad.items()]
    return [f"{many} {problem} on {len(bad)} lines: {list_lines(pairs)}{hint}"]


def raise_problems(path: Path, fragments: list[str]) -> None:
    """Raise one message holding every problem found (``FILE: problem; problem``), if any."""
    if fragments:
        raise MultimodalError(f"{path}: {'; '.join(fragments)}")


def id_problems(ids: pd.Series, *, column: str) -> list[str]:
    """Empty and repeated IDs (``ids`` stripped, indexed by file line): every one named, up to ten of each."""
    fragments = []
    empty = ids[ids == ""]
    if len(empty) == 1:
        fragments.append(f"line {int(empty.index[0])}: empty {column}")
    elif len(empty):
        lines = [f"line {int(line)}" for line in empty.index]
        fragments.append(f"empty {column} on {len(empty)} lines: {listing(lines)}")
    given = ids[ids != ""]
    repeated = given[given.duplicated(keep=False)]
    groups = [
        (value, ", ".join(str(int(line)) for line in lines))
        for value, lines in repeated.groupby(repeated, sort=False).groups.items()
    ]
    if len(groups) == 1:
        fragments.append(f"duplicate {column} {groups[0][0]!r} on lines {groups[0][1]}")
    elif groups:
        named = listing([f"{value!r} (lines {lines})" for value, lines in groups])
        fragments.append(f"{len(groups)} duplicate {column} values: {named}")
    return fragments


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


def check_rows(frame: pd.DataFrame, path: Path, *, what: str) -> None:
    """Raise when a table read by ``read_table`` has a header but no rows."""
    if frame.empty:
        raise MultimodalError(f"{path}: {what} has a header but no rows")


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
    try:
        frame = read_table(path, what=what)
    except MultimodalError as err:
        diagnose_table(path, what=what, cause=err.__cause__)
        raise
    needed = [spec.id_column, spec.time_column, spec.event_column, *spec.covariates]
    needed += [c for c in (spec.response_column, spec.site_column) if c]
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
    raise_problems(path, problems)
    if spec.site_column:
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
