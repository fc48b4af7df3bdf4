"""Gene-level copy number (GISTIC2 ``all_thresholded.by_genes.txt``) as the ``cnv`` modality.

GISTIC2 writes one row per gene: ``Gene Symbol``, ``Locus ID`` (``Gene ID`` in some releases),
``Cytoband``, then one column per sample holding the thresholded call: -2 deep deletion, -1 shallow
deletion, 0 diploid, 1 gain, 2 amplification. Samples are matched to patients of the samples sheet by
ID or unique barcode prefix (``TCGA-05-4244`` claims ``TCGA-05-4244-01A-01D-1105-01``), as MAF and
expression samples are. Features are ``<symbol>_cn`` (unique beside expression genes and ``_mut``
features), ``feature_class`` ``gene_copy_number``; X is the call as a float.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from multimodal.errors import MultimodalError
from multimodal.ingest.samples import resolve_barcodes
from multimodal.ingest.textfile import MAX_LINES_NAMED, diagnose_table, listing, read_table

if TYPE_CHECKING:
    import anndata

log = logging.getLogger(__name__)

#: GISTIC2's thresholded calls.
GISTIC_CALLS = (-2, -1, 0, 1, 2)
#: Annotation columns of ``all_thresholded.by_genes.txt`` (``Gene ID`` in some GISTIC2 releases).
GISTIC_ANNOTATION = ("Gene Symbol", "Locus ID", "Gene ID", "Cytoband")
COPY_NUMBER_SUFFIX = "_cn"


def copy_number_matrix(path: str | Path, *, patients: pd.Index) -> anndata.AnnData:
    """Patients x genes thresholded copy-number calls from a GISTIC2 gene-level table.

    Every cell must be one of :data:`GISTIC_CALLS`; a repeated gene symbol or a sample claimed by two
    patients stops the run naming them. Samples of no patient, patients without a sample, and genes with
    the same call in every patient are counted in ``uns['ingest']``.
    """
    import anndata as ad

    path = Path(path)
    what = "GISTIC2 gene-level copy-number table"
    frame = read_table(path, what=what)  # names a cut gzip, UTF-16, Excel, a mixed-up separator, field counts
    if "Gene Symbol" not in frame.columns:
        diagnose_table(path, what=what)
        raise MultimodalError(
            f"{path}: no 'Gene Symbol' column; GISTIC2's all_thresholded.by_genes.txt starts with "
            f"Gene Symbol, Locus ID, Cytoband (found {', '.join(map(repr, frame.columns[:5]))})"
        )
    if frame.empty:
        raise MultimodalError(f"{path}: {what} has a header but no genes")
    symbols = frame["Gene Symbol"].str.strip()
    repeated = symbols[symbols.duplicated(keep=False)]
    if len(repeated):
        entries = [f"line {line} ({symbol!r})" for line, symbol in repeated.items()]
        raise MultimodalError(f"{path}: gene symbol repeated: {listing(entries)}")
    sample_columns = [c for c in frame.columns if c not in GISTIC_ANNOTATION]
    if not sample_columns:
        raise MultimodalError(f"{path}: {what} has no sample columns after Gene Symbol, Locus ID, Cytoband")
    resolved = resolve_barcodes([str(p) for p in patients], sample_columns, what=f"sample column of {path.name}")
    claimed: dict[str, str] = {}
    for patient, column in resolved.items():
        if column in claimed:
            raise MultimodalError(f"{path}: sample {column!r} is claimed by patients {claimed[column]} and {patient}")
        claimed[column] = patient
    if not claimed:
        raise MultimodalError(
            f"{path}: none of its {len(sample_columns)} sample columns is a patient of the samples sheet "
            f"(table: {sample_columns[0]!r}; sheet: {str(patients[0]) if len(patients) else 'empty'!r})"
        )
    columns = [c for c in sample_columns if c in claimed]
    raw = frame[columns]
    values = raw.apply(lambda c: pd.to_numeric(c.str.strip(), errors="coerce"))
    bad = ~values.isin(GISTIC_CALLS)
    if bad.to_numpy().any():
        cells = np.argwhere(bad.to_numpy())
        entries = [
            f"line {raw.index[r]} (gene {symbols.iloc[r]!r}, sample {columns[c]!r}: {raw.iat[r, c]!r})"
            for r, c in cells[:MAX_LINES_NAMED]
        ]
        raise MultimodalError(
            f"{path}: {len(cells)} cell(s) are not a GISTIC2 thresholded call (-2, -1, 0, 1, 2): "
            + listing(entries, total=len(cells))
        )
    matrix = values.to_numpy(dtype=np.float32).T
    constant = (matrix.max(axis=0) == matrix.min(axis=0)) if len(columns) > 1 else np.zeros(matrix.shape[1], bool)
    matrix = matrix[:, ~constant]
    kept = symbols[~constant]
    cytoband = frame["Cytoband"].str.strip()[~constant] if "Cytoband" in frame else pd.Series("", index=kept.index)
    adata = ad.AnnData(
        X=matrix,
        obs=pd.DataFrame({"cnv_sample": columns}, index=pd.Index([claimed[c] for c in columns], name="patient_id")),
        var=pd.DataFrame(
            {
                "gene_symbol": kept.to_numpy(),
                "cytoband": cytoband.to_numpy(),
                "feature_class": "gene_copy_number",
                "source": "gistic2_thresholded",
            },
            index=pd.Index([f"{s}{COPY_NUMBER_SUFFIX}" for s in kept], name="feature"),
        ),
    )
    adata.uns["ingest"] = {
        "modality": "cnv",
        "params": {"table": str(path), "format": "GISTIC2 all_thresholded.by_genes", "calls": list(GISTIC_CALLS)},
        "n_patients_in": int(len(patients)),
        "exclusions": {
            "patients_without_copy_number": int(len(patients) - len(columns)),
            "cnv_samples_not_in_samples_sheet": int(len(sample_columns) - len(columns)),
            "cnv_samples_matched_by_barcode_prefix": int(sum(p != c for p, c in resolved.items())),
            "genes_constant_in_all_patients": int(constant.sum()),
        },
    }
    log.info("cnv: %d patients x %d genes from %s", adata.n_obs, adata.n_vars, path)
    return adata
