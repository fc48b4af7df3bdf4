"""Bulk RNA-seq counts (genes x samples table) to a normalised patients x genes AnnData.

Raw counts stay in ``layers['counts']``; ``X`` is scanpy's ``normalize_total`` (counts per million)
followed by ``log1p``. These are per-sample transforms and learn nothing from the cohort; scaling
and gene selection that do are fitted inside each training fold by the model.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from multimodal.errors import MultimodalError
from multimodal.ingest.samples import resolve_barcodes
from multimodal.ingest.textfile import (
    MAX_LINES_NAMED,
    check_field_counts,
    diagnose_table,
    listing,
    open_text,
    table_separator,
)

if TYPE_CHECKING:
    import anndata

log = logging.getLogger(__name__)


#: Annotation columns featureCounts writes before the sample columns.
FEATURECOUNTS_COLUMNS = ("Chr", "Start", "End", "Strand", "Length")
#: Columns that hold a gene symbol beside the gene ID: GDC STAR counts (``gene_name``), GCT (``Description``).
SYMBOL_COLUMNS = ("gene_name", "Description")
#: Every column that describes genes rather than holding a sample's values.
ANNOTATION_COLUMNS = (*FEATURECOUNTS_COLUMNS, *SYMBOL_COLUMNS, "gene_type", "gene_biotype")
#: Summary rows of HTSeq-count (``__no_feature`` ...) and STAR ReadsPerGene (``N_unmapped`` ...).
SUMMARY_ROW_PREFIXES = ("__",)
STAR_SUMMARY_ROWS = ("N_unmapped", "N_multimapping", "N_noFeature", "N_ambiguous")


#: Cell values read as missing (TCGA/PanCanAtlas tables carry ``NA``); a gene with one is left out, counted.
MISSING_VALUES = ("", "NA", "NaN", "nan", "N/A", "null")
#: Internal name of the gene-ID column, which may be unnamed in the file (R's ``write.table``).
GENE_COLUMN = "\x00gene"


def _table_layout(path: Path, sep: str) -> tuple[list[str], int]:
    """Column names (the gene column first, as ``GENE_COLUMN``) and how many ``#`` lines precede the header.

    A header with one field fewer than the rows (R's ``write.table`` default) names only the samples.
    A GCT file's ``#1.2`` line and the dimensions line after it are skipped.
    """
    n, header, gct = 0, None, False
    try:
        with open_text(path) as handle:
            for line in handle:
                if header is None and (line.startswith("#") or gct):
                    gct = n == 0 and line.strip() == "#1.2"
                    n += 1
                    continue
                fields = [f.strip().strip('"') for f in line.rstrip("\r\n").split(sep)]
                if header is None:
                    header = fields
                    continue
                if line.strip():
                    samples = header if len(fields) == len(header) + 1 else header[1:]
                    return [GENE_COLUMN, *samples], n
    except (OSError, EOFError, UnicodeDecodeError) as exc:
        diagnose_table(path, what="counts table", cause=exc, comments=True)
        raise MultimodalError(f"{path}: cannot read counts table: {exc}") from exc
    raise MultimodalError(f"{path}: counts table is empty" if header is None else f"{path}: counts table has no genes")


def _read(
    path: Path,
    sep: str,
    names: list[str],
    columns: list[str],
    n_comments: int,
    dtype,
    text: tuple[str, ...] = (),
    *,
    chunksize: int | None = None,
):
    """The table's gene column (as index), ``text`` columns as text and ``columns`` as ``dtype``.

    With ``chunksize``, a reader giving frames of that many rows, blank lines skipped (pandas cannot give
    a block of blank lines alone; the whole-table read keeps them as rows of missing values, dropped after).
    """
    return pd.read_csv(
        path,
        sep=sep,
        header=None,
        skiprows=n_comments + 1,
        chunksize=chunksize,
        names=names,
        usecols=[GENE_COLUMN, *text, *columns],
        index_col=GENE_COLUMN,
        dtype={GENE_COLUMN: str, **{c: str for c in text}, **{c: dtype for c in columns}},
        keep_default_na=False,
        na_values={c: list(MISSING_VALUES) for c in columns} if dtype is not str else None,
        skip_blank_lines=chunksize is not None,
        encoding="utf-8-sig",
    )


def _is_summary_row(index: pd.Index) -> np.ndarray:
    """HTSeq-count (``__no_feature`` ...) and STAR (``N_unmapped`` ...) summary rows."""
    return np.asarray(index.str.startswith(SUMMARY_ROW_PREFIXES) | index.isin(STAR_SUMMARY_ROWS))


def _reread_and_raise_for_bad_cells(
    path: Path,
    sep: str,
    names: list[str],
    columns: list[str],
    n_comments: int,
    *,
    nonnegative: bool = True,
    skip_summary_rows: bool = False,
    chunksize: int | None = None,
) -> None:
    """Re-read the table as text (only on the error path) and raise naming the bad cells by file line.

    With ``chunksize``, in blocks of that many rows (a cohort table too big to hold as text at once).
    """

    def parts() -> Iterator[tuple[pd.DataFrame, np.ndarray]]:
        if chunksize is None:
            frames, line_of = [_read(path, sep, names, columns, n_comments, str)], None
        else:  # the chunked reader skips blank lines: each row's file line from one pass over the raw lines
            frames, line_of = (
                _read(path, sep, names, columns, n_comments, str, chunksize=chunksize),
                _data_lines(path, n_comments),
            )
        seen = 0
        for raw in frames:
            raw.index = raw.index.astype(str).str.strip()
            lines = np.arange(seen, seen + len(raw)) + 2 + n_comments if line_of is None else line_of[seen:][: len(raw)]
            seen += len(raw)
            rows = ~_is_summary_row(raw.index) if skip_summary_rows else np.ones(len(raw), dtype=bool)
            yield raw[rows], lines[rows]

    _raise_for_bad_cells(path, parts(), nonnegative=nonnegative)


def _data_lines(path: Path, n_comments: int) -> np.ndarray:
    """File line (1-based) of each non-empty line after the header."""
    import gzip

    opener = gzip.open if path.name.lower().endswith(".gz") else open
    with opener(path, "rb") as handle:
        return np.array(
            [n for n, line in enumerate(handle, start=1) if n > n_comments + 1 and line.rstrip(b"\r\n")],
            dtype=np.int64,
        )


def _raise_for_bad_cells(
    path: Path, parts: Iterable[tuple[pd.DataFrame, np.ndarray]], *, nonnegative: bool = True
) -> None:
    """Raise naming every kind of bad cell (text, infinite, negative): one in full, else the first ten and the count.

    ``parts``: the table as text in blocks of rows, each with the file line of its rows.
    """
    log_hint = " (a log-scale table? set ingest.expression_values: log, CLI --values log)"
    kinds = (  # one cell's problem (given the cell as written), several cells' problem, hint
        (lambda cell: f"value {cell!r} is not a number", "cells are not numbers", ""),
        (lambda cell: f"value {cell!r} is not finite", "cells are not finite", ""),
        (lambda cell: f"negative count {cell.strip()}", "cells hold negative counts", log_hint),
    )
    totals = [0, 0, 0]
    found: list[list[tuple[int, str, str, str]]] = [[], [], []]  # (line, gene, sample, cell) of the first ten
    for raw, line_of in parts:
        missing = raw.isin(MISSING_VALUES).to_numpy()
        values = raw.apply(pd.to_numeric, errors="coerce").to_numpy(dtype=float, na_value=np.nan)
        negative = values < 0 if nonnegative else np.zeros(values.shape, dtype=bool)
        for k, bad in enumerate((np.isnan(values) & ~missing, np.isinf(values), negative)):
            cells = np.argwhere(bad)
            totals[k] += len(cells)
            for r, c in cells[: MAX_LINES_NAMED - len(found[k])]:
                found[k].append((int(line_of[r]), raw.index[r], raw.columns[c], raw.iat[r, c]))
    fragments = []
    for (one, many, hint), total, cells in zip(kinds, totals, found, strict=True):
        if total == 1:
            line, gene, sample, cell = cells[0]
            fragments.append(f"line {line}: gene {gene!r}, sample {sample!r}: {one(cell)}{hint}")
        elif total:
            entries = [
                f"line {line} (gene {gene!r}, sample {sample!r}: {cell.strip()!r})"
                for line, gene, sample, cell in cells
            ]
            fragments.append(f"{total} {many}: {listing(entries, total=total)}{hint}")
    if fragments:
        raise MultimodalError(f"{path}: {'; '.join(fragments)}")


@dataclass(frozen=True)
class _TablePlan:
    """What to parse of a counts table: its layout and the sample columns wanted, in file order."""

    sep: str
    names: list[str]
    n_comments: int
    in_file: list[str]
    columns: list[str]
    symbol_column: tuple[str, ...]


def _plan_table(path: Path, sample_columns: Collection[str] | None) -> _TablePlan:
    """Check a counts table's header and field counts; the columns to parse (all samples, or those named)."""
    if not path.is_file():
        raise MultimodalError(f"{path}: expression counts table not found")
    sep = table_separator(path)
    names, n_comments = _table_layout(path, sep)
    repeated = sorted({c for c in names[1:] if names.count(c) > 1})
    if repeated:
        raise MultimodalError(
            f"{path}: sample column {repeated[0]!r} occurs more than once in the header"
            if len(repeated) == 1
            else f"{path}: {len(repeated)} sample columns occur more than once in the header: "
            + listing([repr(name) for name in repeated])
        )
    in_file = [c for c in names[1:] if c not in ANNOTATION_COLUMNS]
    if sample_columns is None:
        wanted = set(in_file)
    else:
        wanted = set(resolve_barcodes(set(sample_columns), in_file, what="expression sample column").values())
    columns = [c for c in in_file if c in wanted]
    symbol_column = tuple(c for c in SYMBOL_COLUMNS if c in names[1:])[:1]
    if not in_file:
        diagnose_table(path, what="counts table", comments=True)
        one_field = " (its header has one field)" if len(names) == 1 else ""
        raise MultimodalError(f"{path}: counts table has no sample columns{one_field}")
    try:
        check_field_counts(path, sep=sep, first_line=n_comments + 2, n_fields=len(names), what="counts table")
    except MultimodalError as err:
        diagnose_table(path, what="counts table", cause=err.__cause__, comments=True)
        raise
    return _TablePlan(sep, names, n_comments, in_file, columns, symbol_column)


def _empty_counts(plan: _TablePlan) -> pd.DataFrame:
    """The frame of a table none of whose sample columns is wanted: nothing to parse."""
    empty = pd.DataFrame(index=pd.Index([], dtype=str), dtype=np.float64)
    empty.attrs.update(summary_rows_removed=0, genes_with_missing_values=0, sample_columns_not_read=len(plan.in_file))
    return empty


def read_counts_table(
    path: str | Path, *, sample_columns: Collection[str] | None = None, nonnegative: bool = True
) -> pd.DataFrame:
    """Read a genes x samples counts table (TSV, or CSV by extension, optionally gzipped; first column = gene).

    Also reads featureCounts output (leading ``#`` lines and its Chr/Start/End/Strand/Length columns are
    skipped), R ``write.table`` output (header without a gene column name) and tables with HTSeq/STAR
    summary rows (``__no_feature``, ``N_unmapped``, ...: removed and counted). With ``sample_columns``
    only those samples are parsed (a pan-cancer table of 11,000 samples is read for the cohort's few
    hundred) and the others counted. Cells ``NA``/empty are missing: such genes are left out and counted.
    Checks that every other value is a finite number, non-negative unless ``nonnegative=False`` (log-scale
    tables), and names the offending cells (up to ten of each kind, with their count).
    Returns a float64 frame (genes x samples); counts of what was left out are in ``frame.attrs``.
    A cohort table on its way to the store is read by :func:`read_expression_inputs` instead, in row
    blocks straight into float32 (the same values, a fraction of the memory).
    """
    path = Path(path)
    plan = _plan_table(path, sample_columns)
    sep, names, n_comments, columns, symbol_column = (
        plan.sep,
        plan.names,
        plan.n_comments,
        plan.columns,
        plan.symbol_column,
    )
    if not columns:  # none of the cohort's samples is in the table: nothing to parse
        return _empty_counts(plan)

    symbols = None
    try:
        try:
            values = _read(path, sep, names, columns, n_comments, np.float64, symbol_column)
            symbols = values.pop(symbol_column[0]) if symbol_column else None
        except ValueError:  # a cell that is not a number: find and name it below
            values = None
        if values is None or (~np.isfinite(values.to_numpy()) & values.notna().to_numpy()).any():
            _reread_and_raise_for_bad_cells(path, sep, names, columns, n_comments, nonnegative=nonnegative)
            raise MultimodalError(f"{path}: cannot read the counts table's values as numbers")
        values.index = values.index.astype(str).str.strip()
        blank = (values.index == "") & values.isna().all(axis=1).to_numpy()
        summary = _is_summary_row(values.index)
        if nonnegative and (values.to_numpy() < 0).any():
            _reread_and_raise_for_bad_cells(path, sep, names, columns, n_comments, skip_summary_rows=True)
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError, OSError, EOFError) as exc:
        diagnose_table(path, what="counts table", cause=exc, comments=True)
        raise MultimodalError(f"{path}: cannot read counts table: {str(exc).splitlines()[0]}") from exc
    keep = ~summary & ~blank
    if not keep.all():  # a copy only when rows go
        values = values[keep]
    with_missing = values.isna().any(axis=1).to_numpy()
    if with_missing.any():
        values = values[~with_missing]
    values = values.astype(np.float64, copy=False)
    if symbols is not None:
        symbols = symbols[keep][~with_missing].fillna("").astype(str).str.strip()
        values.attrs["gene_symbols"] = dict(zip(values.index, symbols, strict=True))
    values.attrs.update(
        summary_rows_removed=int(summary.sum()),
        genes_with_missing_values=int(with_missing.sum()),
        sample_columns_not_read=len(plan.in_file) - len(columns),
    )
    return values


#: What the table's values are: raw counts (normalised here) or already log-scale (used as given).
EXPRESSION_VALUES = ("counts", "log")
#: Cells parsed at a time when a cohort table is read in row blocks (~32 MB as float64).
BLOCK_CELLS = 1 << 22


def _gene_symbol(feature: str) -> str:
    """``TP53|7157`` (PanCanAtlas RSEM) -> ``TP53``; ``?|100130426`` and other IDs stay as they are."""
    symbol, bar, _ = feature.partition("|")
    return symbol if bar and symbol not in ("", "?") else feature


def _claimed_columns(
    columns: pd.Index, samples: pd.DataFrame, *, source: str, n_not_read: int = 0
) -> tuple[pd.Series, int, int]:
    """Each patient's column (``samples['rna_sample']`` resolved against ``columns``), the number matched by
    barcode prefix and the number of columns no patient claims; raises naming rna_sample values not found."""
    claimed = samples[samples["rna_sample"].astype(str).str.len() > 0]["rna_sample"]
    if claimed.empty:
        raise MultimodalError(f"{source}: no patient in the samples sheet has an rna_sample naming a column of it")
    resolved = resolve_barcodes(set(claimed), columns, what="expression sample column")
    n_by_prefix = sum(1 for name, column in resolved.items() if name != column)
    claimed = claimed.map(lambda name: resolved.get(name, name))
    missing = claimed[~claimed.isin(columns)]
    if len(missing) == 1:
        raise MultimodalError(
            f"{source}: no column {missing.iloc[0]!r}, named as rna_sample of patient {missing.index[0]} "
            "in the samples sheet"
        )
    if len(missing):
        entries = [f"{name!r} (patient {pid})" for pid, name in missing.iloc[:MAX_LINES_NAMED].items()]
        raise MultimodalError(
            f"{source}: {len(missing)} rna_sample values of the samples sheet are not columns of it: "
            + listing(entries, total=len(missing))
        )
    n_unclaimed = sum(c not in set(claimed) for c in columns) + n_not_read
    return claimed, n_by_prefix, n_unclaimed


def _symbols_by_id(symbols: dict) -> dict[str, str]:
    """``{gene ID as in the file: symbol}`` keyed by the ID without its version (a later ID wins)."""
    from multimodal.ingest.expression_formats import strip_version

    return {str(k): v for k, v in zip(strip_version(pd.Index(list(symbols))), symbols.values(), strict=True)}


def _row_sums(counts: np.ndarray, *, in_gene_order: bool, block: int = 256) -> np.ndarray:
    """Each row's float32 sum, added as numpy adds it on this matrix (C order: pairwise along the row) or, with
    ``in_gene_order``, on its Fortran-ordered copy (gene after gene), without making that copy."""
    if not in_gene_order:
        return counts.sum(axis=1)
    total = np.zeros(counts.shape[0], dtype=counts.dtype)
    for start in range(0, counts.shape[1], block):
        columns = np.asfortranarray(counts[:, start : start + block])  # a small block, contiguous per gene
        for j in range(columns.shape[1]):
            total += columns[:, j]
    return total


def _expression_anndata(
    counts: np.ndarray,
    *,
    in_gene_order: bool,
    claimed: pd.Series,
    genes: pd.Index,
    symbol_of: dict[str, str],
    samples: pd.DataFrame,
    source: str,
    values: str,
    target_sum: float,
    min_count: float,
    min_samples: int,
    is_integer: bool,
    largest: float | None,
    exclusions: dict[str, int],
) -> anndata.AnnData:
    """The modality from the cohort's float32 matrix (patients x genes, C order; becomes ``layers['counts']``).

    ``is_integer`` and ``largest`` describe the values before they were cast to float32. Checks the scale
    the values claim, then normalises a copy into ``X`` in place: two matrices at the end, never more.
    ``in_gene_order``: library sizes summed gene after gene (see :func:`_row_sums`), as numpy sums the
    Fortran-ordered matrix pandas gives after summing duplicate rows; float32 sums depend on the order, so
    this keeps every value what it was when the whole table was read as one frame.
    """
    import anndata as ad

    library_size = _row_sums(counts, in_gene_order=in_gene_order) if values == "counts" else None
    if values == "counts" and counts.shape[0]:
        empty = [str(sample) for sample in claimed.to_numpy()[library_size == 0]]
        if empty:
            names = listing([repr(sample) for sample in empty])
            raise MultimodalError(
                f"{source}: sample {names} has zero counts in every gene"
                if len(empty) == 1
                else f"{source}: {len(empty)} samples have zero counts in every gene: {names}"
            )
        if not is_integer and largest is not None and largest <= 50:
            raise MultimodalError(
                f"{source}: values look log-transformed (not whole numbers, largest {largest:.3g}); "
                "give raw counts, or declare the table's scale (ingest.expression_values: log, CLI --values log)"
            )
    if values == "log" and counts.shape[0] and largest is not None and largest > 100:
        raise MultimodalError(
            f"{source}: values look like raw counts, not log-scale (largest {largest:.6g}); "
            "use ingest.expression_values: counts (CLI --values counts)"
        )
    adata = ad.AnnData(
        X=counts.copy() if values == "counts" else counts,
        obs=pd.DataFrame({"rna_sample": list(claimed)}, index=pd.Index(list(claimed.index), name="patient_id")),
        var=pd.DataFrame(
            {
                "gene_symbol": [symbol_of.get(g) or _gene_symbol(str(g)) for g in genes],
                "feature_class": "gene_expression",
                "source": "rna_seq",
            },
            index=pd.Index(genes.astype(str), name="feature"),
        ),
    )
    if values == "counts":
        adata.layers["counts"] = counts
        adata.obs["library_size"] = library_size.astype(np.float64)
        # scanpy.pp.normalize_total(target_sum) then log1p, step for step on the dense float32 X, in place: its
        # per-cell totals are library_size, summed in the order the frame path summed them (in_gene_order)
        per_cell = library_size / target_sum
        np.true_divide(adata.X, (per_cell + (per_cell == 0))[:, None], out=adata.X)
        np.log1p(adata.X, out=adata.X)
    adata.uns["ingest"] = {
        "modality": "expression",
        "params": {
            "values": values,
            "normalisation": "scanpy.pp.normalize_total + log1p" if values == "counts" else "none (log-scale input)",
            "target_sum": float(target_sum),
            "integer_counts": bool(is_integer),
            "min_count": float(min_count),
            "min_samples": int(min_samples),
            "gene_ids": "Ensembl version suffixes stripped; rows sharing an ID summed",
        },
        "n_patients_in": int(len(samples)),
        "exclusions": exclusions,
    }
    log.info("expression: %d patients x %d genes", adata.n_obs, adata.n_vars)
    return adata


def _exclusions(
    *,
    values: str,
    samples: pd.DataFrame,
    claimed: pd.Series,
    n_unclaimed: int,
    n_uninformative: int,
    n_with_missing: int,
    n_duplicate_genes: int,
    n_low: int,
    attrs: dict,
    n_summary_rows: int,
    n_by_prefix: int,
) -> dict[str, int]:
    """The modality's exclusion counts, by reason, in one order for every input."""
    return {
        "patients_without_rna": int(len(samples) - len(claimed)),
        "rna_samples_not_in_samples_sheet": int(n_unclaimed),
        ("genes_zero_in_all_samples" if values == "counts" else "genes_constant_in_all_samples"): int(n_uninformative),
        "genes_with_missing_values": int(n_with_missing),
        "duplicate_gene_rows_summed": int(n_duplicate_genes),
        "genes_below_min_expression": int(n_low),
        **{
            key: int(attrs[key])
            for key in ("transcripts_not_in_tx2gene", "cells_without_sample_or_cell_type")
            if key in attrs
        },
        "summary_rows_removed": int(n_summary_rows),
        "rna_samples_matched_by_barcode_prefix": int(n_by_prefix),
    }


def _check_settings(values: str, min_samples: int) -> None:
    """``ingest.expression_values`` and ``ingest.min_expression.min_samples``, before any file is read."""
    if values not in EXPRESSION_VALUES:
        raise MultimodalError(f"expression values must be one of {EXPRESSION_VALUES}, got {values!r}")
    if min_samples < 1:
        raise MultimodalError(f"ingest.min_expression.min_samples must be at least 1, got {min_samples}")


def expression_matrix(
    counts: pd.DataFrame,
    samples: pd.DataFrame,
    *,
    source: str = "counts table",
    values: str = "counts",
    target_sum: float = 1e6,
    min_count: float = 0.0,
    min_samples: int = 1,
) -> anndata.AnnData:
    """Patients x genes AnnData from a genes x samples frame and the samples sheet.

    ``samples``: index patient_id, column ``rna_sample`` naming the counts column of each patient
    (empty = no RNA, counted). Columns of ``counts`` that no patient claims, genes with a zero
    count in every sample, and duplicate gene rows (summed) are counted in ``uns['ingest']``.
    With ``values="counts"`` writes ``layers['counts']`` (raw) and ``X`` (log1p CPM); with
    ``values="log"`` (a log2(x+1) or log-TPM table) ``X`` is the table as given and no counts layer is
    written. Also writes ``var['gene_symbol']``, ``var['feature_class']``, ``var['source']``.

    Gene IDs are harmonised first: Ensembl version suffixes are stripped (``ENSG00000141510.17`` ->
    ``ENSG00000141510``) and rows that then share an ID are summed (the duplicate rule: features are keyed
    by the ID the input gives, so two IDs with one symbol stay two features, and rows repeating one ID are
    summed). With ``min_count`` > 0, a gene is kept only when at least ``min_samples`` of the cohort's
    samples have a value >= ``min_count`` (raw counts; the given values for log-scale input); the others
    are counted as ``genes_below_min_expression``.
    """
    from multimodal.ingest.expression_formats import strip_version

    _check_settings(values, min_samples)
    claimed, n_by_prefix, n_unclaimed = _claimed_columns(
        counts.columns, samples, source=source, n_not_read=counts.attrs.get("sample_columns_not_read", 0)
    )
    symbol_of = _symbols_by_id(counts.attrs.get("gene_symbols", {}))
    n_duplicate_genes = int(counts.attrs.get("duplicate_gene_rows_summed", 0))
    attrs = dict(counts.attrs)
    counts = counts.copy(deep=False)  # new gene IDs on the same data, no copy of the values
    counts.index = strip_version(counts.index.astype(str))
    counts.attrs = attrs
    n_duplicate_genes += int(counts.index.duplicated().sum())
    if n_duplicate_genes:
        counts = counts.groupby(level=0, sort=False).sum()
    matrix = counts.loc[:, list(claimed)].T
    del counts  # the cohort's columns are all that is needed from here (memory: one copy at a time)
    if values == "counts":
        uninformative = (matrix.sum(axis=0) == 0).to_numpy()
    else:
        uninformative = (matrix.max(axis=0) == matrix.min(axis=0)).to_numpy()
    if uninformative.any():
        matrix = matrix.loc[:, ~uninformative]
    low = np.zeros(matrix.shape[1], dtype=bool)
    if min_count > 0:
        low = ((matrix >= min_count).sum(axis=0) < min_samples).to_numpy()
        matrix = matrix.loc[:, ~low]
    table = matrix.to_numpy(dtype=np.float64)
    genes = matrix.columns
    del matrix
    step = max(1, (1 << 22) // max(1, table.shape[1]))  # whole-number check in blocks of ~4M cells, no full temporary
    is_integer = all(bool(np.all(np.mod(table[i : i + step], 1) == 0)) for i in range(0, table.shape[0], step))
    largest = float(table.max()) if table.size else None
    counts32 = table.astype(np.float32)  # pandas' layout: Fortran order after summing duplicate rows
    del table
    in_gene_order = not counts32.flags.c_contiguous and counts32.flags.f_contiguous
    return _expression_anndata(
        np.ascontiguousarray(counts32),
        in_gene_order=in_gene_order,
        claimed=claimed,
        genes=genes,
        symbol_of=symbol_of,
        samples=samples,
        source=source,
        values=values,
        target_sum=target_sum,
        min_count=min_count,
        min_samples=min_samples,
        is_integer=is_integer,
        largest=largest,
        exclusions=_exclusions(
            values=values,
            samples=samples,
            claimed=claimed,
            n_unclaimed=n_unclaimed,
            n_uninformative=int(uninformative.sum()),
            n_with_missing=int(attrs.get("genes_with_missing_values", 0)),
            n_duplicate_genes=n_duplicate_genes,
            n_low=int(low.sum()),
            attrs=attrs,
            n_summary_rows=int(attrs.get("summary_rows_removed", 0)),
            n_by_prefix=n_by_prefix,
        ),
    )


def _table_modality(
    path: Path,
    samples: pd.DataFrame,
    *,
    values: str,
    target_sum: float = 1e6,
    min_count: float = 0.0,
    min_samples: int = 1,
    block_cells: int = BLOCK_CELLS,
) -> anndata.AnnData:
    """The modality straight from a cohort counts table, read in row blocks: equal to
    ``expression_matrix(read_counts_table(path, ...), samples, ...)`` value for value, in a fraction of the memory.

    Each block of rows is parsed as float64 by the same ``pandas.read_csv`` call, checked, reduced to the
    cohort's columns and kept as float32 (the cast the modality makes anyway); the checks that need the
    float64 values (whole numbers, largest value, zero or constant genes, the low-expression filter) are
    made per row on the block. Rows that share a gene ID after version stripping are summed in float64, as
    ``groupby().sum()`` sums them (from the float32 copy when it holds their values exactly, else re-read).
    The blocks are then laid into one patients x genes float32 matrix, each freed once copied: the peak is
    about one matrix plus a block while reading, two (raw counts and normalised) at the end. The parsing and
    row rules are the table's; the rest is :func:`modality_from_row_blocks`, which a bulk .h5ad feeds too.
    """
    _check_settings(values, min_samples)
    nonnegative = values == "counts"
    plan = _plan_table(path, [s for s in samples["rna_sample"] if s])
    if not plan.columns:  # nothing to parse: the frame path names what is missing
        return expression_matrix(
            _empty_counts(plan), samples, source=str(path), values=values, min_count=min_count, min_samples=min_samples
        )
    source = str(path)
    claimed, n_by_prefix, n_unclaimed = _claimed_columns(
        pd.Index(plan.columns), samples, source=source, n_not_read=len(plan.in_file) - len(plan.columns)
    )
    take = pd.Index(plan.columns).get_indexer(list(claimed))  # each patient's column among those parsed
    sep, names, n_comments, columns = plan.sep, plan.names, plan.n_comments, plan.columns

    chunksize = max(1, block_cells // len(columns))

    def bad_cells(**kwargs) -> None:
        _reread_and_raise_for_bad_cells(path, sep, names, columns, n_comments, chunksize=chunksize, **kwargs)

    def parsed_blocks() -> Iterator[tuple[pd.Index, np.ndarray, pd.Series | None]]:
        """Gene IDs (stripped), float64 values (rows x parsed columns) and symbols of each block of rows."""
        with _read(
            path, sep, names, columns, n_comments, np.float64, plan.symbol_column, chunksize=chunksize
        ) as reader:
            while True:
                try:
                    chunk = next(reader)
                except StopIteration:
                    return
                except ValueError:  # a cell that is not a number: find and name it
                    chunk = None
                symbol = chunk.pop(plan.symbol_column[0]) if chunk is not None and plan.symbol_column else None
                cells = None if chunk is None else chunk.to_numpy(dtype=np.float64)
                if cells is None or (~np.isfinite(cells) & ~np.isnan(cells)).any():
                    bad_cells(nonnegative=nonnegative)
                    raise MultimodalError(f"{path}: cannot read the counts table's values as numbers")
                yield chunk.index.astype(str).str.strip(), cells, symbol

    tally = {"summary_rows_removed": 0, "genes_with_missing_values": 0}

    def row_blocks() -> Iterator[RowBlock]:
        """The kept rows of each parsed block over the cohort's columns; summary, blank and gapped rows counted."""
        n_rows, negative = 0, False
        try:
            for index, cells, symbol in parsed_blocks():
                missing = np.isnan(cells)
                blank = np.asarray(index == "") & missing.all(axis=1)
                summary = _is_summary_row(index)
                negative = negative or bool(nonnegative and (cells < 0).any())
                keep = ~summary & ~blank
                gaps = keep & missing.any(axis=1)
                rows = np.flatnonzero(keep & ~gaps)
                tally["summary_rows_removed"] += int(summary.sum())
                tally["genes_with_missing_values"] += int(gaps.sum())
                del missing
                yield RowBlock(
                    ids=np.asarray(index[rows], dtype=object),
                    cells=cells[np.ix_(rows, take)],  # kept rows x patients, float64
                    symbols=None
                    if symbol is None
                    else symbol.iloc[rows].fillna("").astype(str).str.strip().to_numpy(dtype=object),
                    positions=n_rows + rows,
                )
                n_rows += len(cells)
                del cells
            if negative:
                bad_cells(skip_summary_rows=True)
        except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError, OSError, EOFError) as exc:
            diagnose_table(path, what="counts table", cause=exc, comments=True)
            raise MultimodalError(f"{path}: cannot read counts table: {str(exc).splitlines()[0]}") from exc

    def rows_again(wanted: np.ndarray) -> np.ndarray:
        """Those parsed rows (sorted positions) as float64 over the cohort's columns: a second pass over the file."""
        out, seen = [], 0
        for _, cells, _ in parsed_blocks():
            here = wanted[(wanted >= seen) & (wanted < seen + len(cells))] - seen
            out.append(cells[np.ix_(here, take)])
            seen += len(cells)
        return np.concatenate(out)

    return modality_from_row_blocks(
        row_blocks(),
        rows_again,
        tally,
        claimed=claimed,
        samples=samples,
        source=source,
        values=values,
        target_sum=target_sum,
        min_count=min_count,
        min_samples=min_samples,
        n_unclaimed=n_unclaimed,
        n_by_prefix=n_by_prefix,
    )


@dataclass(frozen=True)
class RowBlock:
    """A block of an input's gene rows, as :func:`modality_from_row_blocks` takes them."""

    ids: np.ndarray  #: each row's gene ID as the input writes it (version suffix and all), object
    cells: np.ndarray  #: float64, rows x the cohort's patients (in the order of ``claimed``)
    symbols: np.ndarray | None  #: each row's gene symbol, or None when the input has none
    positions: np.ndarray  #: each row's position among the input's rows, as ``rows_again`` takes them


def modality_from_row_blocks(
    row_blocks: Iterable[RowBlock],
    rows_again: Callable[[np.ndarray], np.ndarray],
    tally: dict[str, int],
    *,
    claimed: pd.Series,
    samples: pd.DataFrame,
    source: str,
    values: str,
    target_sum: float = 1e6,
    min_count: float = 0.0,
    min_samples: int = 1,
    n_unclaimed: int,
    n_by_prefix: int,
    gene_order: bool = False,
) -> anndata.AnnData:
    """The modality from an input's gene rows given in blocks (a counts table's, an .h5ad's genes): the block path.

    Each block's float64 cells are checked per row (whole numbers, largest value, zero or constant genes, the
    low-expression filter) and kept as float32 (the cast the modality makes anyway). Rows that share a gene ID
    after version stripping are summed in float64, as ``groupby().sum()`` sums them (from the float32 copy
    when it holds their values exactly, else from ``rows_again``: their float64 values, rows x patients, read
    again by position). The blocks are then laid into one patients x genes float32 matrix, each freed once
    copied. ``tally``: the input's counts of rows left out (``summary_rows_removed``,
    ``genes_with_missing_values``), complete once ``row_blocks`` is exhausted. Library sizes are summed gene
    after gene (see :func:`_row_sums`) when rows were summed, as on the frame path's matrix, or with
    ``gene_order`` (an input whose frame path gives a Fortran-ordered matrix anyway: a CSC .h5ad).
    """
    from multimodal.ingest.expression_formats import strip_version

    blocks: list[np.ndarray] = []  # kept rows x patients, float32
    ids: list[np.ndarray] = []
    symbols: list[np.ndarray] = []
    rows_read: list[np.ndarray] = []  # position of each kept row (for a second pass)
    stats: dict[str, list[np.ndarray]] = {"max": [], "min": [], "integer": [], "exact": [], "at_least": []}
    for part in row_blocks:
        cohort = part.cells
        block = cohort.astype(np.float32)
        stats["max"].append(cohort.max(axis=1, initial=-np.inf))
        stats["min"].append(cohort.min(axis=1, initial=np.inf))
        stats["integer"].append((np.mod(cohort, 1) == 0).all(axis=1))
        stats["exact"].append((block == cohort).all(axis=1))
        if min_count > 0:
            stats["at_least"].append((cohort >= min_count).sum(axis=1))
        blocks.append(block)
        ids.append(part.ids)
        if part.symbols is not None:
            symbols.append(part.symbols)
        rows_read.append(part.positions)
        del cohort, part

    def joined(parts: list[np.ndarray], dtype) -> np.ndarray:
        return np.concatenate(parts) if parts else np.zeros(0, dtype=dtype)

    row_ids = joined(ids, object)
    symbol_of = _symbols_by_id(dict(zip(row_ids, joined(symbols, object), strict=True))) if symbols else {}
    codes, genes = pd.factorize(strip_version(pd.Index(row_ids, dtype=object)))  # genes in order of first row
    genes = pd.Index(genes, dtype=object)
    n_genes = len(genes)
    gene_max = np.full(n_genes, -np.inf)
    gene_min = np.full(n_genes, np.inf)
    gene_integer = np.ones(n_genes, dtype=bool)
    gene_at_least = np.zeros(n_genes, dtype=np.int64)
    single = np.bincount(codes, minlength=n_genes)[codes] == 1  # rows that are a gene alone
    gene_max[codes[single]] = joined(stats["max"], float)[single]
    gene_min[codes[single]] = joined(stats["min"], float)[single]
    gene_integer[codes[single]] = joined(stats["integer"], bool)[single]
    if min_count > 0:
        gene_at_least[codes[single]] = joined(stats["at_least"], np.int64)[single]
    summed = None
    shared = np.flatnonzero(~single)
    if len(shared):
        if joined(stats["exact"], bool)[shared].all():  # the float32 copy is their float64 value
            offsets = np.cumsum([0, *(len(b) for b in blocks)])
            which = np.searchsorted(offsets, shared, side="right") - 1
            values64 = np.stack([blocks[b][r - offsets[b]] for b, r in zip(which, shared, strict=True)]).astype(
                np.float64
            )
        else:  # fractional values that float32 rounds: read those rows again as float64
            values64 = rows_again(joined(rows_read, np.int64)[shared])
        summed = pd.DataFrame(values64, index=codes[shared]).groupby(level=0, sort=False).sum()
        sums = summed.to_numpy()
        gene_max[summed.index] = sums.max(axis=1, initial=-np.inf)
        gene_min[summed.index] = sums.min(axis=1, initial=np.inf)
        gene_integer[summed.index] = (np.mod(sums, 1) == 0).all(axis=1)
        gene_at_least[summed.index] = (sums >= min_count).sum(axis=1)
    uninformative = gene_max == 0 if values == "counts" else gene_max == gene_min  # counts are >= 0: max 0 = all 0
    low = ~uninformative & (gene_at_least < min_samples) if min_count > 0 else np.zeros(n_genes, dtype=bool)
    kept = ~uninformative & ~low
    column_of = np.full(n_genes, -1)
    column_of[kept] = np.arange(int(kept.sum()))
    counts = np.empty((len(claimed), int(kept.sum())), dtype=np.float32)
    start = 0
    while blocks:  # each block laid into the matrix, then freed
        block = blocks.pop(0)
        columns_here = column_of[codes[start : start + len(block)]]
        alone = single[start : start + len(block)] & (columns_here >= 0)
        counts[:, columns_here[alone]] = block[alone].T
        start += len(block)
        del block
    if summed is not None:
        columns_here = column_of[summed.index]
        counts[:, columns_here[columns_here >= 0]] = summed.to_numpy()[columns_here >= 0].astype(np.float32).T
    return _expression_anndata(
        counts,
        in_gene_order=(gene_order or len(row_ids) > n_genes) and counts.shape[0] > 1 and counts.shape[1] > 1,
        claimed=claimed,
        genes=genes[kept],
        symbol_of=symbol_of,
        samples=samples,
        source=source,
        values=values,
        target_sum=target_sum,
        min_count=min_count,
        min_samples=min_samples,
        is_integer=bool(gene_integer[kept].all()),
        largest=float(gene_max[kept].max()) if kept.any() and len(claimed) else None,
        exclusions=_exclusions(
            values=values,
            samples=samples,
            claimed=claimed,
            n_unclaimed=n_unclaimed,
            n_uninformative=int(uninformative.sum()),
            n_with_missing=tally.get("genes_with_missing_values", 0),
            n_duplicate_genes=len(row_ids) - n_genes,
            n_low=int(low.sum()),
            attrs={},
            n_summary_rows=tally.get("summary_rows_removed", 0),
            n_by_prefix=n_by_prefix,
        ),
    )


def read_expression_inputs(
    samples: pd.DataFrame,
    *,
    counts: str | Path | None = None,
    values: str = "counts",
    tx2gene: str | Path | None = None,
    sample_key: str = "sample",
    cell_type_key: str | None = None,
    min_count: float = 0.0,
    min_samples: int = 1,
) -> anndata.AnnData:
    """The expression modality from whichever input the cohort has: one cohort file, or one file per patient.

    ``counts``: a cohort counts table (TSV/CSV, featureCounts, GCT ...; ``rna_sample`` names its columns) or
    an ``.h5ad``: bulk (``rna_sample`` names its ``obs_names``) or single-cell (``obs[sample_key]`` names the
    sample of each cell; cells summed per sample, per cell type too with ``cell_type_key``). Without it,
    the samples sheet's ``rna_file`` column names each patient's own file: Salmon ``quant.sf`` (gene level
    through ``tx2gene``), 10x ``.h5``, single-cell ``.h5ad`` or a one-sample counts table; such a patient's
    ``rna_sample`` defaults to its patient ID. Giving both is refused (one cohort, one way).
    """
    from multimodal.ingest.expression_formats import (
        bulk_h5ad_modality,
        read_h5ad_expression,
        read_sample_files,
        read_tx2gene,
    )

    files = samples["rna_file"].astype(str) if "rna_file" in samples else pd.Series("", index=samples.index)
    has_file = files.str.len() > 0
    if counts is not None and has_file.any():
        raise MultimodalError(
            f"{counts}: the config names a cohort expression file and the samples sheet's rna_file names "
            f"per-patient files (patient {has_file.index[has_file.to_numpy()][0]}); give expression one way"
        )
    if counts is None and not has_file.any():
        raise MultimodalError(
            "no expression input: give a cohort table or .h5ad (config expression, CLI --counts) or per-patient "
            "files in the samples sheet's rna_file column"
        )
    genes = read_tx2gene(tx2gene) if tx2gene else None
    if counts is not None:
        path = Path(counts)
        adata = None
        if path.name.lower().endswith(".h5ad"):  # a bulk one in blocks; single-cell (None here) through scanpy
            adata = bulk_h5ad_modality(
                path, samples, sample_key=sample_key, values=values, min_count=min_count, min_samples=min_samples
            )
            if adata is None:
                frame = read_h5ad_expression(path, sample_key=sample_key, cell_type_key=cell_type_key)
        else:
            adata = _table_modality(path, samples, values=values, min_count=min_count, min_samples=min_samples)
        if adata is not None:
            return _with_input_params(
                adata, source=str(path), tx2gene=tx2gene, sample_key=sample_key, cell_type_key=cell_type_key
            )
        source = str(path)
    else:
        samples = samples.copy()
        names = samples["rna_sample"].where(samples["rna_sample"].astype(str).str.len() > 0, samples.index)
        samples.loc[has_file, "rna_sample"] = names[has_file]
        samples.loc[~has_file, "rna_sample"] = ""
        frame = read_sample_files(pd.Series(files[has_file].to_numpy(), index=names[has_file]), tx2gene=genes)
        source = "rna_file of the samples sheet"
    frames = [frame]  # handed over, not kept here: expression_matrix frees it once the cohort's columns are taken
    del frame
    adata = expression_matrix(
        frames.pop(), samples, source=source, values=values, min_count=min_count, min_samples=min_samples
    )
    return _with_input_params(adata, source=source, tx2gene=tx2gene, sample_key=sample_key, cell_type_key=cell_type_key)


def _with_input_params(
    adata: anndata.AnnData,
    *,
    source: str,
    tx2gene: str | Path | None,
    sample_key: str,
    cell_type_key: str | None,
) -> anndata.AnnData:
    """The modality with its input's settings in ``uns['ingest']['params']``."""
    adata.uns["ingest"]["params"].update(
        input=source,
        tx2gene=str(tx2gene or ""),
        single_cell={"sample_key": sample_key, "cell_type_key": cell_type_key or None},
    )
    return adata
