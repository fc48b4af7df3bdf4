"""The samples sheet: one row per patient, naming that patient's input files.

Columns: ``patient_id`` (required), and any of ``vcf`` (VCF/BCF path), ``maf_sample`` (the patient's
Tumor_Sample_Barcode in a cohort MAF), ``rna_sample`` (column name in the expression counts table),
``cnv_sample`` (the patient's sample in the copy-number input, where it is not the patient ID or a prefix of it:
a GDC segment file's aliquot UUID),
``image`` (NIfTI, NRRD, or a directory holding one DICOM series), ``mask`` (NIfTI, NRRD, DICOM SEG or
RTSTRUCT), ``roi`` (the SEG segment or RTSTRUCT ROI to use) and ``tumour_sample`` (the tumour's sample
column in a tumour/normal VCF; needed when the VCF has several), ``rna_file`` (the patient's own
expression file: Salmon quant.sf, 10x .h5, single-cell .h5ad or a one-sample counts table). An empty cell means the
patient lacks that input. Paths are relative to the working directory the workflow runs in, and must
resolve (symbolic links followed) inside a data root: the directories given as ``data_roots`` in the
config, by default the samples sheet's own directory and the working directory. A path outside them
(``/etc/passwd``, ``../../x``, a link pointing out) is refused before any file is opened.

Patient IDs become AnnData names, TSV cells and parts of file names, so they are restricted to
:data:`PATIENT_ID_ALPHABET`.

Several lesions and timepoints: with a ``lesion`` and/or ``timepoint`` column (``baseline`` or
``follow_up``; empty: baseline) a patient may have several rows, one per image/mask/roi, unique by
(patient_id, lesion, timepoint); the patient's other cells (vcf, rna_sample, ...) are given once, on its
first row, or repeated identically. :func:`read_samples` still returns one row per patient (its first
row's cells) with the patient's imaging rows in the column ``imaging_rows`` (a tuple of dicts: lesion,
timepoint, image, mask, roi, line), read by :func:`multimodal.ingest.imaging.imaging_matrix`.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Collection, Sequence
from pathlib import Path

import pandas as pd

from multimodal.errors import MultimodalError
from multimodal.ingest.textfile import id_problems, list_lines, raise_problems, read_table

FILE_COLUMNS = ("vcf", "image", "mask", "rna_file")
OPTIONAL_COLUMNS = ("vcf", "maf_sample", "rna_sample", "cnv_sample", "image", "mask", "rna_file")
#: Optional columns that may repeat between patients: ``tumour_sample`` names a column inside the patient's own VCF.
SHARED_VALUE_COLUMNS = ("tumour_sample",)
#: Columns that let a patient have several imaging rows (lesions, timepoints), and the timepoints known.
IMAGING_KEY_COLUMNS = ("lesion", "timepoint")
IMAGING_ROW_COLUMNS = ("image", "mask", "roi")
TIMEPOINTS = ("baseline", "follow_up")

#: Allowed patient IDs: 1 to 128 of ASCII letters, digits, ``.``, ``_`` and ``-``, starting with a letter
#: or digit. Such an ID is a safe file name and TSV cell as is (no ``/``, no ``..``, no whitespace).
PATIENT_ID_ALPHABET = "1-128 of A-Z a-z 0-9 . _ -, starting with a letter or digit"
_PATIENT_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def default_data_roots(sheet: str | Path) -> list[Path]:
    """The data roots when the config names none: the samples sheet's directory and the working directory."""
    return [Path(sheet).resolve().parent, Path.cwd().resolve()]


class DataRoots:
    """The data roots resolved once, and each directory of the paths checked against them resolved once.

    A sheet of 100,000 patients is checked by every ingest job of the workflow: ``os.path.realpath`` per
    path (a system call per component) and per root per path made that ~20 s; a path that is not itself
    a symbolic link resolves to its resolved directory plus its name, so one ``lstat`` per path does.
    """

    def __init__(self, roots: Sequence[str | Path]) -> None:
        self.roots = list(roots)
        resolved = [os.path.realpath(root) for root in self.roots]
        # a path is inside a root when it is the root or starts with the root and a separator (strings: Path
        # objects and is_relative_to cost more than the file system calls here)
        self._prefixes = [(root, root if root.endswith(os.sep) else root + os.sep) for root in resolved]
        self._directories: dict[str, str] = {}

    def resolve(self, path: str | Path) -> str:
        """``path`` with every symbolic link followed, as ``os.path.realpath`` gives it."""
        path = os.fspath(path)
        head, tail = os.path.split(path)
        if tail in ("", ".", ".."):
            return os.path.realpath(path)
        try:
            if stat.S_ISLNK(os.lstat(path).st_mode):
                return os.path.realpath(path)
        except OSError:
            pass  # missing: realpath resolves the directory and keeps the name, as below
        directory = self._directories.get(head)
        if directory is None:
            directory = self._directories[head] = os.path.realpath(head or os.curdir)
        return os.path.join(directory, tail)

    def outside(self, path: str | Path) -> Path | None:
        """The resolved ``path`` when it lies outside every root, else None."""
        resolved = self.resolve(path)
        inside = any(resolved == root or resolved.startswith(prefix) for root, prefix in self._prefixes)
        return None if inside else Path(resolved)


def outside_data_roots(path: str | Path, roots: Sequence[str | Path] | DataRoots) -> Path | None:
    """The resolved ``path`` (links followed) when it lies outside every root, else None."""
    return (roots if isinstance(roots, DataRoots) else DataRoots(roots)).outside(path)


def check_data_roots(path: str | Path, roots: Sequence[str | Path] | DataRoots, *, where: str) -> None:
    """Raise naming ``where`` (the sheet line and column, or the config key) when ``path`` escapes the roots."""
    escaped = outside_data_roots(path, roots)
    if escaped is not None:
        roots = roots.roots if isinstance(roots, DataRoots) else roots
        shown = "" if str(escaped) == str(path) else f" (resolves to {escaped})"
        raise MultimodalError(
            f"{where}: {path}{shown} is outside the data roots ({', '.join(str(r) for r in roots)}); "
            "move the file under one, or add its directory to data_roots in the config"
        )


def resolve_barcodes(requested: Collection[str], available: Collection[str], *, what: str) -> dict[str, str]:
    """Map each requested sample name to an available one: exactly, or by a unique barcode prefix.

    A samples sheet may name a TCGA patient (``TCGA-05-4244``) or sample (``TCGA-05-4244-01A``) where a
    MAF or expression table holds the aliquot (``TCGA-05-4244-01A-01D-1105-08``): a requested name that
    is a prefix, ending at a ``-``, of exactly one available name maps to it; of several (tumour and
    normal, two aliquots) it is an error naming them. Names found neither way are absent from the result.
    """
    available = set(available)
    by_prefix: dict[str, list[str]] = {}
    for full in available:
        parts = full.split("-")
        for k in range(1, len(parts)):
            by_prefix.setdefault("-".join(parts[:k]), []).append(full)
    resolved: dict[str, str] = {}
    for name in requested:
        if name in available:
            resolved[name] = name
        elif len(by_prefix.get(name, ())) == 1:
            resolved[name] = by_prefix[name][0]
        elif name in by_prefix:
            matches = sorted(by_prefix[name])
            raise MultimodalError(
                f"samples sheet names {name!r}, which matches {len(matches)} {what}s "
                f"({', '.join(matches[:3])}{', ...' if len(matches) > 3 else ''}); give the full name"
            )
    return resolved


def patient_id_problems(ids: pd.Series) -> list[str]:
    """Every line (the first 10, and a count) whose ID is outside :data:`PATIENT_ID_ALPHABET`, as one fragment."""
    bad = [(int(line), value) for line, value in ids.items() if value and not _PATIENT_ID.fullmatch(value)]
    if not bad:
        return []
    return [
        f"patient_id outside the allowed alphabet ({PATIENT_ID_ALPHABET}) on {len(bad)} "
        f"line{'s' if len(bad) > 1 else ''}: {list_lines(bad)}; IDs name files and table rows, so rename those "
        "patients (keep the original ID as a clinical column if needed)"
    ]


def check_cells(frame: pd.DataFrame, *, path: str | Path) -> None:
    """Raise naming the line and column of a cell holding a control character (a newline inside quotes, a tab)."""
    for column in frame.columns:
        hit = frame[column][frame[column].str.contains(_CONTROL, na=False)]
        if len(hit):
            raise MultimodalError(
                f"{path}: line {int(hit.index[0])}: column {column} holds a control character "
                f"(newline or tab inside a quoted cell?): {hit.iloc[0]!r}"
            )


def read_samples(
    path: str | Path, *, check_files: bool = True, data_roots: Sequence[str | Path] | None = None
) -> pd.DataFrame:
    """Read and validate the samples sheet; index = patient_id, missing inputs as empty strings.

    With ``check_files``, every path must exist and lie inside ``data_roots`` (default:
    :func:`default_data_roots`); this is checked for every row before any of the files is opened.
    """
    frame = read_table(path, what="samples sheet")
    if "patient_id" not in frame.columns:
        raise MultimodalError(f"{path}: samples sheet has no 'patient_id' column (columns: {list(frame.columns)})")
    for column in (*OPTIONAL_COLUMNS, *SHARED_VALUE_COLUMNS):
        if column not in frame.columns:
            frame[column] = ""
        frame[column] = frame[column].str.strip()
    frame["patient_id"] = frame["patient_id"].str.strip()
    several = any(c in frame.columns for c in IMAGING_KEY_COLUMNS)  # several imaging rows per patient allowed
    if several:
        key = _imaging_key(frame, path)
        problems = id_problems(key, column="(patient_id, lesion, timepoint)")
        problems += [p for p in id_problems(frame["patient_id"], column="patient_id") if "empty" in p]
    else:
        problems = id_problems(frame["patient_id"], column="patient_id")
    problems += patient_id_problems(frame["patient_id"])
    for column in OPTIONAL_COLUMNS:  # two patients sharing one input is a sample swap, not a cohort
        given = frame[column][frame[column] != ""]
        if several:  # a patient's lesions share its image (and an RTSTRUCT), its rows its VCF: once per patient
            given = given[~frame.loc[given.index].duplicated(["patient_id", column])]
        problems += [p for p in id_problems(given, column=column) if "empty" not in p]
    raise_problems(Path(path), problems)
    check_cells(frame, path=path)
    if check_files:
        _check_sheet_files(frame, path, DataRoots(list(data_roots) if data_roots else default_data_roots(path)))
    frame["sheet_line"] = frame.index
    if several:
        frame = _one_row_per_patient(frame, path)
    return frame.set_index("patient_id")


def _check_sheet_files(frame: pd.DataFrame, path: str | Path, roots: DataRoots) -> None:
    """Every file of the sheet inside the data roots (every row checked before any file is looked at), then each
    one present and of the right kind; the first problem in sheet order raises, naming line and column."""
    lines = frame.index.tolist()
    cells = list(zip(*(frame[column].tolist() for column in FILE_COLUMNS), strict=True))
    for line, values in zip(lines, cells, strict=True):  # confinement first, for every row
        for column, value in zip(FILE_COLUMNS, values, strict=True):
            if value:
                where = f"{path}: line {line}: column {column}"
                check_data_roots(value, roots, where=where)
                if column == "image" and os.path.isdir(value):  # a DICOM series: each file it holds
                    for entry in Path(value).iterdir():
                        check_data_roots(entry, roots, where=where)
    patients = frame["patient_id"].tolist()
    for line, patient, values in zip(lines, patients, cells, strict=True):
        for column, value in zip(FILE_COLUMNS, values, strict=True):
            if not value:
                continue
            try:
                mode = os.stat(value).st_mode
            except OSError:
                mode = None
            if mode is not None and stat.S_ISDIR(mode):
                if column == "image":
                    continue  # a DICOM series, read by multimodal.ingest.medical_images
                hint = {
                    "vcf": "give the VCF/BCF file",
                    "rna_file": "give the quant.sf, 10x .h5, .h5ad or counts file",
                }.get(column, "a mask is a file: NIfTI, NRRD, DICOM SEG or RTSTRUCT")
                raise MultimodalError(
                    f"{path}: line {line}: {column} {value} of patient {patient} is a directory; {hint}"
                )
            if mode is None or not stat.S_ISREG(mode):
                where = "" if Path(value).is_absolute() else f" (relative to the working directory {Path.cwd()})"
                raise MultimodalError(
                    f"{path}: line {line}: {column} file {value} for patient {patient} does not exist" + where
                )
        image, mask = values[FILE_COLUMNS.index("image")], values[FILE_COLUMNS.index("mask")]
        if bool(image) != bool(mask):
            raise MultimodalError(
                f"{path}: line {line}: patient {patient} has an image without a mask or a mask without an image"
            )


def _imaging_key(frame: pd.DataFrame, path: str | Path) -> pd.Series:
    """``patient_id|lesion|timepoint`` per line (after checking the timepoints), for the duplicate check."""
    for column in IMAGING_KEY_COLUMNS:  # a sheet without timepoints (lesions only): no delta features later
        if column in frame.columns:
            frame[column] = frame[column].str.strip()
    if "timepoint" in frame.columns:
        frame["timepoint"] = frame["timepoint"].replace("", TIMEPOINTS[0])
        bad = frame[~frame["timepoint"].isin(TIMEPOINTS)]
        if len(bad):
            raise MultimodalError(
                f"{path}: line {int(bad.index[0])}: timepoint {bad['timepoint'].iloc[0]!r} is not one of "
                f"{', '.join(TIMEPOINTS)} (empty: baseline)"
            )
    lesion = frame["lesion"] if "lesion" in frame.columns else ""
    timepoint = frame["timepoint"] if "timepoint" in frame.columns else TIMEPOINTS[0]
    return frame["patient_id"] + "|" + lesion + "|" + timepoint


def _one_row_per_patient(frame: pd.DataFrame, path: str | Path) -> pd.DataFrame:
    """The first row of each patient, with every row's image/mask/roi in ``imaging_rows``; a patient's other
    cells must be empty on its later rows or equal to the first's."""
    columns = [c for c in frame.columns if c not in (*IMAGING_ROW_COLUMNS, *IMAGING_KEY_COLUMNS, "sheet_line")]
    if "roi" not in frame.columns:
        frame["roi"] = ""
    rows: dict[str, list[dict]] = {}
    first: dict[str, pd.Series] = {}
    for line, record in frame.iterrows():
        pid = record["patient_id"]
        if pid in first:
            for column in columns:
                if record[column] and record[column] != first[pid][column]:
                    raise MultimodalError(
                        f"{path}: line {line}: patient {pid} has {column} {record[column]!r}, but "
                        f"{first[pid][column]!r} on line {int(first[pid]['sheet_line'])}; "
                        "give it on the patient's first row"
                    )
        else:
            first[pid] = record
        if record["image"] or record["mask"]:
            rows.setdefault(pid, []).append(
                {
                    "lesion": record.get("lesion", ""),
                    "timepoint": record.get("timepoint", TIMEPOINTS[0]),
                    **{c: record[c] for c in IMAGING_ROW_COLUMNS},
                    "line": int(line),
                }
            )
    out = frame.drop_duplicates("patient_id", keep="first").copy()
    out["imaging_rows"] = [tuple(rows.get(pid, ())) for pid in out["patient_id"]]
    return out


def chunk(frame: pd.DataFrame, *, index: int, n_chunks: int) -> pd.DataFrame:
    """Rows of chunk ``index`` of ``n_chunks`` contiguous, near-equal chunks."""
    if not 0 <= index < n_chunks:
        raise MultimodalError(f"chunk {index} is outside 0..{n_chunks - 1}")
    bounds = [round(i * len(frame) / n_chunks) for i in range(n_chunks + 1)]
    return frame.iloc[bounds[index] : bounds[index + 1]]
