"""The samples sheet: one row per patient, naming that patient's input files.

Columns: ``patient_id`` (required), and any of ``vcf`` (VCF/BCF path), ``maf_sample`` (the patient's
Tumor_Sample_Barcode in a cohort MAF), ``rna_sample`` (column name
in the expression counts table), ``image`` and ``mask`` (NIfTI paths). An empty cell means the
patient lacks that input. Paths are relative to the working directory the workflow runs in.
"""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path

import pandas as pd

from multimodal.errors import MultimodalError

FILE_COLUMNS = ("vcf", "image", "mask")
OPTIONAL_COLUMNS = ("vcf", "maf_sample", "rna_sample", "image", "mask")


def open_text(path: Path):
    """Open a text table for reading, gzipped or not (by extension), skipping a UTF-8 byte-order mark."""
    import gzip

    opener = gzip.open if path.name.lower().endswith(".gz") else open
    return opener(path, "rt", encoding="utf-8-sig", newline="")


def check_field_counts(path: Path, *, sep: str, first_line: int, n_fields: int, what: str) -> None:
    """Raise naming the first line from ``first_line`` (1-based) on whose field count is not ``n_fields``.

    pandas, reading selected columns, pads a short row (a cut-off file, a lost tab) with empty cells and
    drops a long row's extras without a word; one pass over the raw bytes catches both. Blank lines pass.
    """
    import gzip

    separator = sep.encode()
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    try:
        with opener(path, "rb") as handle:
            for number, line in enumerate(handle, start=1):
                if number < first_line or line.count(separator) == n_fields - 1 or not line.strip():
                    continue
                raise MultimodalError(
                    f"{path}: line {number}: {line.count(separator) + 1} fields, the header has {n_fields} "
                    f"(a cut-off file or a lost separator?) in the {what}"
                )
    except (OSError, EOFError) as exc:
        raise MultimodalError(f"{path}: cannot read {what}: {exc}") from exc


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


def table_separator(path: Path) -> str:
    """``,`` for ``.csv``/``.csv.gz``, else tab."""
    return "," if path.name.lower().removesuffix(".gz").endswith(".csv") else "\t"


def read_table(path: str | Path, *, what: str) -> pd.DataFrame:
    """Read a TSV/CSV (``.csv``/``.csv.gz`` comma-separated, else tab; gzip allowed) as strings.

    The index is each row's line number in the file (the header is line 1), so messages can name
    it; blank lines are skipped, and a row with more or fewer fields than the header is an error.
    """
    import csv

    path = Path(path)
    if not path.is_file():
        raise MultimodalError(f"{path}: {what} not found")
    sep = table_separator(path)
    header: list[str] | None = None
    rows, lines = [], []
    try:
        with open_text(path) as handle:
            reader = csv.reader(handle, delimiter=sep)
            for fields in reader:
                if not any(f.strip() for f in fields):
                    continue
                if header is None:
                    header = [f.strip() for f in fields]
                    continue
                if len(fields) != len(header):
                    raise MultimodalError(
                        f"{path}: line {reader.line_num}: {len(fields)} fields, the header has {len(header)}"
                    )
                rows.append(fields)
                lines.append(reader.line_num)
    except (OSError, EOFError, UnicodeDecodeError, csv.Error) as exc:
        raise MultimodalError(f"{path}: cannot read {what}: {exc}") from exc
    if header is None:
        raise MultimodalError(f"{path}: {what} is empty")
    duplicated = sorted({c for c in header if header.count(c) > 1})
    if duplicated:
        raise MultimodalError(f"{path}: column {duplicated[0]!r} occurs more than once in the header")
    return pd.DataFrame(rows, columns=header, index=pd.Index(lines, name="line"), dtype=str)


def check_unique_ids(ids: pd.Series, *, path: str | Path, column: str) -> None:
    """Raise naming both lines when a value occurs twice (``ids`` indexed by file line number)."""
    empty = ids[ids.str.strip() == ""]
    if len(empty):
        raise MultimodalError(f"{path}: line {int(empty.index[0])}: empty {column}")
    duplicated = ids[ids.duplicated(keep=False)]
    if len(duplicated):
        value = duplicated.iloc[0]
        lines = [int(i) for i in duplicated.index[duplicated == value]]
        raise MultimodalError(f"{path}: duplicate {column} {value!r} on lines {', '.join(map(str, lines))}")


def read_samples(path: str | Path, *, check_files: bool = True) -> pd.DataFrame:
    """Read and validate the samples sheet; index = patient_id, missing inputs as empty strings."""
    frame = read_table(path, what="samples sheet")
    if "patient_id" not in frame.columns:
        raise MultimodalError(f"{path}: samples sheet has no 'patient_id' column (columns: {list(frame.columns)})")
    for column in OPTIONAL_COLUMNS:
        if column not in frame.columns:
            frame[column] = ""
        frame[column] = frame[column].str.strip()
    frame["patient_id"] = frame["patient_id"].str.strip()
    check_unique_ids(frame["patient_id"], path=path, column="patient_id")
    for column in OPTIONAL_COLUMNS:  # two patients sharing one input is a sample swap, not a cohort
        given = frame[column][frame[column] != ""]
        if given.duplicated().any():
            check_unique_ids(given, path=path, column=column)
    if check_files:
        for row, record in frame.iterrows():
            for column in FILE_COLUMNS:
                value = record[column]
                if value and Path(value).is_dir():
                    hint = (
                        "give the VCF/BCF file"
                        if column == "vcf"
                        else "a DICOM series? images and masks are read as NIfTI: convert with dcm2niix"
                    )
                    raise MultimodalError(
                        f"{path}: line {row}: {column} {value} of patient {record['patient_id']} is a directory; {hint}"
                    )
                if value and not Path(value).is_file():
                    where = "" if Path(value).is_absolute() else f" (relative to the working directory {Path.cwd()})"
                    raise MultimodalError(
                        f"{path}: line {row}: {column} file {value} for patient {record['patient_id']} does not exist"
                        + where
                    )
            if bool(record["image"]) != bool(record["mask"]):
                raise MultimodalError(
                    f"{path}: line {row}: patient {record['patient_id']} has an image "
                    "without a mask or a mask without an image"
                )
    frame["sheet_line"] = frame.index
    return frame.set_index("patient_id")


def chunk(frame: pd.DataFrame, *, index: int, n_chunks: int) -> pd.DataFrame:
    """Rows of chunk ``index`` of ``n_chunks`` contiguous, near-equal chunks."""
    if not 0 <= index < n_chunks:
        raise MultimodalError(f"chunk {index} is outside 0..{n_chunks - 1}")
    bounds = [round(i * len(frame) / n_chunks) for i in range(n_chunks + 1)]
    return frame.iloc[bounds[index] : bounds[index + 1]]
