"""Bulk RNA-seq counts (genes x samples table) to a normalised patients x genes AnnData.

Raw counts stay in ``layers['counts']``; ``X`` is scanpy's ``normalize_total`` (counts per million)
followed by ``log1p``. These are per-sample transforms and learn nothing from the cohort; scaling
and gene selection that do are fitted inside each training fold by the model.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from multimodal.errors import MultimodalError
from multimodal.ingest.samples import open_text, table_separator

if TYPE_CHECKING:
    import anndata

log = logging.getLogger(__name__)


#: Annotation columns featureCounts writes before the sample columns.
FEATURECOUNTS_COLUMNS = ("Chr", "Start", "End", "Strand", "Length")
#: Summary rows of HTSeq-count (``__no_feature`` ...) and STAR ReadsPerGene (``N_unmapped`` ...).
SUMMARY_ROW_PREFIXES = ("__",)
STAR_SUMMARY_ROWS = ("N_unmapped", "N_multimapping", "N_noFeature", "N_ambiguous")


def _header_and_comment_lines(path: Path, sep: str) -> tuple[list[str], int]:
    """The header's fields (stripped) and how many ``#`` lines precede it."""
    n = 0
    try:
        with open_text(path) as handle:
            for line in handle:
                if not line.startswith("#"):
                    return [f.strip() for f in line.rstrip("\r\n").split(sep)], n
                n += 1
    except (OSError, EOFError, UnicodeDecodeError) as exc:
        raise MultimodalError(f"{path}: cannot read counts table: {exc}") from exc
    raise MultimodalError(f"{path}: counts table is empty")


def read_counts_table(path: str | Path) -> pd.DataFrame:
    """Read a genes x samples counts table (TSV, or CSV by extension, optionally gzipped; first column = gene).

    Also reads featureCounts output (leading ``#`` lines and its Chr/Start/End/Strand/Length columns are
    skipped) and tables with HTSeq/STAR summary rows (``__no_feature``, ``N_unmapped``, ...: removed and
    counted in ``frame.attrs['summary_rows_removed']``). Checks that every value is a finite,
    non-negative number and names the first offending cell. Returns a float64 frame (genes x samples).
    """
    path = Path(path)
    if not path.is_file():
        raise MultimodalError(f"{path}: expression counts table not found")
    sep = table_separator(path)
    header, n_comments = _header_and_comment_lines(path, sep)
    repeated = sorted({c for c in header[1:] if header.count(c) > 1})
    if repeated:
        raise MultimodalError(f"{path}: sample column {repeated[0]!r} occurs more than once in the header")
    try:
        raw = pd.read_csv(
            path,
            sep=sep,
            index_col=0,
            dtype=str,
            keep_default_na=False,
            skiprows=n_comments,
            skip_blank_lines=False,
            encoding="utf-8-sig",
        )
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError, OSError, EOFError) as exc:
        raise MultimodalError(f"{path}: cannot read counts table: {str(exc).splitlines()[0]}") from exc
    raw.columns = [str(c).strip() for c in raw.columns]
    raw = raw.drop(columns=[c for c in FEATURECOUNTS_COLUMNS if c in raw.columns])
    if raw.shape[1] == 0 or raw.shape[0] == 0:
        raise MultimodalError(f"{path}: counts table has no samples or no genes")
    raw.index = raw.index.astype(str).str.strip()
    line_of = np.arange(len(raw)) + 2 + n_comments  # file line of each gene row
    blank = (raw.index == "") & (raw == "").all(axis=1).to_numpy()
    summary = raw.index.str.startswith(SUMMARY_ROW_PREFIXES) | raw.index.isin(STAR_SUMMARY_ROWS)
    raw, line_of = raw[~summary & ~blank], line_of[~summary & ~blank]
    values = raw.apply(pd.to_numeric, errors="coerce")
    bad = values.isna().to_numpy() | ~np.isfinite(values.to_numpy(dtype=float, na_value=np.nan))
    if bad.any():
        r, c = np.argwhere(bad)[0]
        raise MultimodalError(
            f"{path}: line {line_of[r]}: gene {raw.index[r]!r}, sample {raw.columns[c]!r}: "
            f"value {raw.iat[r, c]!r} is not a number"
        )
    negative = values.to_numpy() < 0
    if negative.any():
        r, c = np.argwhere(negative)[0]
        raise MultimodalError(
            f"{path}: line {line_of[r]}: gene {raw.index[r]!r}, sample {raw.columns[c]!r}: "
            f"negative count {raw.iat[r, c]}"
        )
    values = values.astype(np.float64)
    values.attrs["summary_rows_removed"] = int(summary.sum())
    return values


def expression_matrix(
    counts: pd.DataFrame,
    samples: pd.DataFrame,
    *,
    source: str = "counts table",
    target_sum: float = 1e6,
) -> anndata.AnnData:
    """Patients x genes AnnData from a genes x samples counts frame and the samples sheet.

    ``samples``: index patient_id, column ``rna_sample`` naming the counts column of each patient
    (empty = no RNA, counted). Columns of ``counts`` that no patient claims, genes with a zero
    count in every sample, and duplicate gene rows (summed) are counted in ``uns['ingest']``.
    Writes ``layers['counts']`` (raw), ``X`` (log1p CPM), ``var['feature_class']``, ``var['source']``.
    """
    import anndata as ad
    import scanpy as sc

    claimed = samples[samples["rna_sample"].astype(str).str.len() > 0]["rna_sample"]
    missing = [s for s in claimed if s not in counts.columns]
    if missing:
        pid = claimed.index[list(claimed).index(missing[0])]
        raise MultimodalError(
            f"{source}: no column {missing[0]!r}, named as rna_sample of patient {pid} in the samples sheet"
        )
    unclaimed = [c for c in counts.columns if c not in set(claimed)]
    n_summary_rows = int(counts.attrs.get("summary_rows_removed", 0))
    n_duplicate_genes = int(counts.index.duplicated().sum())
    if n_duplicate_genes:
        counts = counts.groupby(level=0, sort=False).sum()
    matrix = counts.loc[:, list(claimed)].T
    all_zero = (matrix.sum(axis=0) == 0).to_numpy()
    matrix = matrix.loc[:, ~all_zero]
    if matrix.shape[0] and (matrix.sum(axis=1) == 0).any():
        pid = matrix.index[(matrix.sum(axis=1) == 0).to_numpy()][0]
        raise MultimodalError(f"{source}: sample {pid!r} has zero counts in every gene")
    is_integer = bool(np.all(np.mod(matrix.to_numpy(), 1) == 0))

    adata = ad.AnnData(
        X=matrix.to_numpy(dtype=np.float32),
        obs=pd.DataFrame({"rna_sample": list(claimed)}, index=pd.Index(list(claimed.index), name="patient_id")),
        var=pd.DataFrame(
            {"gene_symbol": matrix.columns.astype(str), "feature_class": "gene_expression", "source": "rna_seq"},
            index=pd.Index(matrix.columns.astype(str), name="feature"),
        ),
    )
    adata.layers["counts"] = adata.X.copy()
    adata.obs["library_size"] = adata.X.sum(axis=1).astype(np.float64)
    if adata.n_obs:
        sc.pp.normalize_total(adata, target_sum=target_sum)
        sc.pp.log1p(adata)
    adata.uns.pop("log1p", None)
    adata.uns["ingest"] = {
        "modality": "expression",
        "params": {
            "normalisation": "scanpy.pp.normalize_total + log1p",
            "target_sum": float(target_sum),
            "integer_counts": is_integer,
        },
        "n_patients_in": int(len(samples)),
        "exclusions": {
            "patients_without_rna": int(len(samples) - len(claimed)),
            "rna_samples_not_in_samples_sheet": len(unclaimed),
            "genes_zero_in_all_samples": int(all_zero.sum()),
            "duplicate_gene_rows_summed": n_duplicate_genes,
            "summary_rows_removed": n_summary_rows,
        },
    }
    log.info("expression: %d patients x %d genes", adata.n_obs, adata.n_vars)
    return adata
