"""The samples sheet: one row per patient, naming that patient's input files.

Columns: ``patient_id`` (required), and any of ``vcf`` (VCF/BCF path), ``maf_sample`` (the patient's
Tumor_Sample_Barcode in a cohort MAF), ``rna_sample`` (column name
in the expression counts table), ``image`` and ``mask`` (NIfTI paths). An empty cell means the
patient lacks that input. Paths are relative to the working directory the workflow runs in.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from multimodal.errors import MultimodalError

FILE_COLUMNS = ("vcf", "image", "mask")
OPTIONAL_COLUMNS = ("vcf", "maf_sample", "rna_sample", "image", "mask")


def read_table(path: str | Path, *, what: str) -> pd.DataFrame:
    """Read a TSV/CSV (by extension; ``.csv`` is comma-separated, else tab) as strings."""
    path = Path(path)
    if not path.is_file():
        raise MultimodalError(f"{path}: {what} not found")
    sep = "," if path.suffix.lower() == ".csv" else "\t"
    try:
        frame = pd.read_csv(path, sep=sep, dtype=str, keep_default_na=False, comment=None)
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as exc:
        raise MultimodalError(f"{path}: cannot read {what}: {str(exc).splitlines()[0]}") from exc
    frame.columns = [str(c).strip() for c in frame.columns]
    return frame


def check_unique_ids(ids: pd.Series, *, path: str | Path, column: str) -> None:
    """Raise naming both lines when an ID occurs twice (line numbers count the header as line 1)."""
    duplicated = ids[ids.duplicated(keep=False)]
    if len(duplicated):
        value = duplicated.iloc[0]
        lines = [int(i) + 2 for i in duplicated.index[duplicated == value]]
        raise MultimodalError(f"{path}: duplicate {column} {value!r} on lines {', '.join(map(str, lines))}")
    empty = ids[ids.str.strip() == ""]
    if len(empty):
        raise MultimodalError(f"{path}: line {int(empty.index[0]) + 2}: empty {column}")


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
    if check_files:
        for row, record in frame.iterrows():
            for column in FILE_COLUMNS:
                value = record[column]
                if value and not Path(value).is_file():
                    raise MultimodalError(
                        f"{path}: line {int(row) + 2}: {column} file {value} for patient "
                        f"{record['patient_id']} does not exist"
                    )
            if bool(record["image"]) != bool(record["mask"]):
                raise MultimodalError(
                    f"{path}: line {int(row) + 2}: patient {record['patient_id']} has an image "
                    "without a mask or a mask without an image"
                )
    return frame.set_index("patient_id")


def chunk(frame: pd.DataFrame, *, index: int, n_chunks: int) -> pd.DataFrame:
    """Rows of chunk ``index`` of ``n_chunks`` contiguous, near-equal chunks."""
    if not 0 <= index < n_chunks:
        raise MultimodalError(f"chunk {index} is outside 0..{n_chunks - 1}")
    bounds = [round(i * len(frame) / n_chunks) for i in range(n_chunks + 1)]
    return frame.iloc[bounds[index] : bounds[index + 1]]
