"""Any patients x features table (a radiomics export, copy-number scores, lab values) as a modality.

Numeric columns become features; text columns (file paths, versions), pyradiomics' ``diagnostics_*``
(``general_info_*`` before pyradiomics 2.0) columns and columns with one value for every patient (the
batch file's ``Label``) are left out and counted. Empty cells stay missing and are imputed inside each
training fold. Rows of patients outside the samples sheet are left out and counted.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from multimodal.errors import MultimodalError
from multimodal.ingest.clinical import MISSING
from multimodal.ingest.samples import resolve_barcodes
from multimodal.ingest.textfile import (
    MAX_LINES_NAMED,
    check_rows,
    diagnose_table,
    id_problems,
    line_problem,
    raise_problems,
    read_table,
)

if TYPE_CHECKING:
    import anndata

log = logging.getLogger(__name__)


def feature_table(
    path: str | Path,
    *,
    modality: str,
    patients: pd.Index,
    id_column: str = "patient_id",
) -> anndata.AnnData:
    """Patients x features AnnData from a table with one row per patient (TSV/CSV, optionally gzipped)."""
    import anndata as ad

    path = Path(path)
    what = f"{modality} feature table"
    frame = read_table(path, what=what)  # names a cut gzip, UTF-16, Excel, a mixed-up separator
    if id_column not in frame.columns:
        diagnose_table(path, what=what)
        shown = ", ".join(map(repr, frame.columns[:MAX_LINES_NAMED])) + (
            ", ..." if len(frame.columns) > MAX_LINES_NAMED else ""
        )
        raise MultimodalError(
            f"{path}: no {id_column!r} column (columns: {shown}); set table_id_column to its ID column"
        )
    check_rows(frame, path, what=what)
    ids = frame[id_column].str.strip()
    raise_problems(path, id_problems(ids, column=id_column))
    # pyradiomics batch output: diagnostics_* columns describe the image and the run, not the tumour
    diagnostics = [c for c in frame.columns if c.startswith(("diagnostics_", "general_info_"))]
    values = frame.drop(columns=[id_column, *diagnostics])
    lowered = values.apply(lambda c: c.str.strip().str.lower())
    numeric = values.apply(lambda c: pd.to_numeric(c.str.strip(), errors="coerce"))
    is_missing = lowered.isin(MISSING)
    parsed = numeric.notna() | is_missing
    all_missing = [c for c in values.columns if is_missing[c].all()]
    numeric_columns = [c for c in values.columns if parsed[c].all() and numeric[c].notna().any()]
    dropped = [c for c in values.columns if c not in numeric_columns and c not in all_missing]
    partly = [c for c in dropped if numeric[c].notna().mean() > 0.5]
    # mostly numbers with some text: broken cells, not a text column; every such column named at once
    problems = [
        fragment
        for column in partly
        for fragment in line_problem(
            values.loc[~parsed[column], column],
            one=f"column {column!r} value",
            many=f"column {column!r}",
            problem="is not a number",
        )
    ]
    # A table keyed by sample or slide barcodes (TCGA-05-4244-01Z-00-DX1) matches the sheet's patient
    # (TCGA-05-4244) by unique prefix, as maf_sample and rna_sample do.
    resolved = resolve_barcodes([str(p) for p in patients], set(ids), what=f"{id_column} of {path.name}")
    patient_of = {row_id: patient for patient, row_id in resolved.items()}
    n_by_prefix = sum(patient != row_id for patient, row_id in resolved.items())
    ids = ids.map(lambda row_id: patient_of.get(row_id, row_id))
    in_cohort = ids.isin(patients).to_numpy()
    if not in_cohort.any():
        raise MultimodalError(
            f"{path}: none of its {len(ids)} {id_column} values is a patient of the samples sheet "
            f"(table: {ids.iloc[0]!r}; sheet: {str(patients[0]) if len(patients) else 'empty'!r})"
        )
    infinite = np.isinf(numeric.loc[in_cohort, numeric_columns])
    problems += [
        fragment
        for column in numeric_columns
        for fragment in line_problem(
            values.loc[in_cohort, column][infinite[column].to_numpy()],
            one=f"column {column!r} value",
            many=f"column {column!r}",
            problem="is not finite",
        )
    ]
    if len(problems) > MAX_LINES_NAMED:
        problems = [*problems[:MAX_LINES_NAMED], f"and {len(problems) - MAX_LINES_NAMED} more columns"]
    raise_problems(path, problems)
    constant = [c for c in numeric_columns if numeric.loc[in_cohort, c].nunique(dropna=True) <= 1]
    numeric_columns = [c for c in numeric_columns if c not in constant]
    matrix = numeric.loc[in_cohort, numeric_columns].to_numpy(dtype=np.float32)
    adata = ad.AnnData(
        X=matrix,
        obs=pd.DataFrame(index=pd.Index(ids[in_cohort].to_numpy(), name="patient_id")),
        var=pd.DataFrame(
            {"feature_class": f"{modality}_table", "source": path.name},
            index=pd.Index([str(c) for c in numeric_columns], name="feature"),
        ),
    )
    adata.uns["ingest"] = {
        "modality": modality,
        "params": {
            "table": str(path),
            "id_column": id_column,
            "dropped_text_columns": [str(c) for c in dropped],
            "dropped_constant_columns": [str(c) for c in constant],
        },
        "n_patients_in": int(len(patients)),
        "exclusions": {
            "patients_without_table_row": int((~patients.isin(ids)).sum()),
            "table_rows_not_in_samples_sheet": int((~in_cohort).sum()),
            "table_ids_matched_by_barcode_prefix": int(n_by_prefix),
            "text_columns_dropped": len(dropped),
            "all_missing_columns_dropped": len(all_missing),
            "diagnostics_columns_dropped": len(diagnostics),
            "constant_columns_dropped": len(constant),
            "missing_values": int(np.isnan(matrix).sum()),
        },
    }
    log.info("%s: %d patients x %d features from %s", modality, adata.n_obs, adata.n_vars, path)
    return adata
