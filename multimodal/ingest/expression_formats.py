"""Expression inputs beyond a counts table: Salmon ``quant.sf``, AnnData ``.h5ad`` (bulk or single-cell), 10x ``.h5``.

Every reader gives a genes x samples float64 frame of raw counts (as :func:`read_counts_table` does), so
:func:`multimodal.ingest.expression.expression_matrix` normalises all of them the same way, and notes
what it left out in ``frame.attrs``. Gene IDs are harmonised by :func:`strip_version`
(``ENSG00000141510.17`` -> ``ENSG00000141510``); rows that then share an ID are summed.

- **Salmon** ``quant.sf`` (one per sample, named by the samples sheet's ``rna_file``): its exact header
  ``Name Length EffectiveLength TPM NumReads``; transcripts summed to genes through a tx2gene table
  (two columns, transcript then gene, as tximport's ``tx2gene``), counts (``NumReads``) and TPM alike.
  Transcripts missing from tx2gene are left out and counted; none found is an error.
- **featureCounts** output is a counts table (``read_counts_table`` reads its ``#`` line and annotation
  columns), cohort-wide or one per sample.
- **bulk** ``.h5ad``: rows are samples (``obs_names`` named by ``rna_sample``), columns genes; raw counts
  from ``layers['counts']`` when present, else ``X``. On its way to the store (:func:`bulk_h5ad_modality`)
  only the cohort's rows are read, in blocks (dense, CSR or CSC), into the block path the counts tables
  take: the same modality as the frame path in about two matrices of memory.
- **single-cell** ``.h5ad`` (its ``obs`` has the ``sample_key`` column): cells summed per sample with
  ``scanpy.get.aggregate`` (a pseudobulk profile per patient); with ``cell_type_key``, per sample and cell
  type, each cell type's genes becoming features of their own (``<cell type>:<gene>``).
- **10x** ``.h5`` (Cell Ranger's filtered feature-barcode matrix, one per sample): read with
  ``scanpy.read_10x_h5`` (Gene Expression features only) and summed over its cell barcodes; genes keyed
  by their Ensembl ID, the symbol kept as ``gene_symbol``.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from multimodal.errors import MultimodalError
from multimodal.ingest.textfile import MAX_LINES_NAMED, listing

if TYPE_CHECKING:
    import anndata

#: Salmon's quant.sf columns, in order.
SALMON_COLUMNS = ("Name", "Length", "EffectiveLength", "TPM", "NumReads")
#: An Ensembl/GENCODE gene or transcript ID with a version: ``ENSG00000141510.17``, ``ENST00000269305.9``,
#: ``ENSMUSG00000059552.13``, GENCODE's ``ENSG00000182378.14_PAR_Y`` (whose suffix is kept: the Y copy).
_VERSIONED = re.compile(r"^(ENS[A-Z]*[GTP]\d{6,})\.\d+(_PAR_Y)?$")


def strip_version(ids: pd.Index) -> pd.Index:
    """Ensembl IDs without their version suffix; any other name as it is."""
    return pd.Index([_VERSIONED.sub(r"\1\2", str(name)) for name in ids], name=ids.name)


def sum_duplicate_ids(frame: pd.DataFrame) -> pd.DataFrame:
    """Rows (genes) that share an ID after :func:`strip_version` summed; the count in ``attrs``."""
    attrs = dict(frame.attrs)
    frame = frame.copy(deep=False)  # new IDs on the same values; summing duplicates makes the only copy
    frame.index = strip_version(frame.index)
    duplicated = int(frame.index.duplicated().sum())
    if duplicated:
        frame = frame.groupby(level=0, sort=False).sum()
    attrs["duplicate_gene_rows_summed"] = attrs.get("duplicate_gene_rows_summed", 0) + duplicated
    frame.attrs = attrs
    return frame


def read_tx2gene(path: str | Path) -> pd.Series:
    """A transcript -> gene table (TSV/CSV, two columns; a header line is allowed), versions stripped."""
    from multimodal.ingest.textfile import read_table

    path = Path(path)
    frame = read_table(path, what="tx2gene table")
    if frame.shape[1] < 2:
        raise MultimodalError(f"{path}: a tx2gene table has two columns (transcript, gene); found {frame.shape[1]}")
    first = frame.columns[:2]
    header_is_data = bool(_VERSIONED.match(first[0]) or first[0].startswith("ENST"))
    rows = frame.iloc[:, :2].copy()
    if header_is_data:
        rows = pd.concat([pd.DataFrame([list(first)], columns=first), rows], ignore_index=True)
    tx = strip_version(pd.Index(rows.iloc[:, 0].str.strip()))
    genes = pd.Series(strip_version(pd.Index(rows.iloc[:, 1].str.strip())), index=tx)
    empty = genes.index[(genes == "") | (genes.index == "")]
    if len(empty):
        raise MultimodalError(f"{path}: tx2gene has an empty transcript or gene ({empty[0]!r})")
    return genes[~genes.index.duplicated()]


def read_salmon_quant(path: str | Path, tx2gene: pd.Series | None) -> tuple[pd.Series, pd.Series, dict[str, int]]:
    """Gene-level (counts, TPM) of one Salmon ``quant.sf``, tximport-style: transcripts summed per gene.

    Without ``tx2gene`` the transcripts are the features. Returns the two series (indexed by gene) and
    counts of what was left out.
    """
    path = Path(path)
    if not path.is_file():
        raise MultimodalError(f"{path}: Salmon quant.sf not found")
    try:
        with open(path, encoding="utf-8") as handle:
            header = handle.readline().rstrip("\r\n").split("\t")
    except (OSError, UnicodeDecodeError) as exc:
        raise MultimodalError(f"{path}: cannot read Salmon quant.sf: {exc}") from exc
    if tuple(header) != SALMON_COLUMNS:
        raise MultimodalError(
            f"{path}: line 1 is not Salmon's quant.sf header ({' '.join(SALMON_COLUMNS)}, tab-separated); "
            f"found {' '.join(header)[:80]!r}"
        )
    from multimodal.ingest.textfile import check_field_counts

    check_field_counts(path, sep="\t", first_line=2, n_fields=len(SALMON_COLUMNS), what="Salmon quant.sf")
    quant = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
    for column in ("TPM", "NumReads"):
        values = pd.to_numeric(quant[column], errors="coerce")
        bad = np.flatnonzero(values.isna().to_numpy() | (values < 0).to_numpy())
        if len(bad):
            raise MultimodalError(
                f"{path}: line {bad[0] + 2}: {column} {quant[column].iloc[bad[0]]!r} is not a non-negative number"
                + (f" ({len(bad)} such lines)" if len(bad) > 1 else "")
            )
        quant[column] = values.astype(np.float64)
    names = strip_version(pd.Index(quant["Name"].str.strip()))
    counts = pd.Series(quant["NumReads"].to_numpy(), index=names)
    tpm = pd.Series(quant["TPM"].to_numpy(), index=names)
    left_out = {"transcripts_not_in_tx2gene": 0}
    if tx2gene is not None:
        gene = names.map(lambda t: tx2gene.get(t, ""))
        known = np.asarray(gene != "")
        if not known.any():
            raise MultimodalError(
                f"{path}: none of its {len(names)} transcripts ({names[0]!r} ...) is in the tx2gene table "
                f"({tx2gene.index[0]!r} ...); another annotation release?"
            )
        left_out["transcripts_not_in_tx2gene"] = int((~known).sum())
        gene = pd.Index(np.asarray(gene)[known])
        counts = pd.Series(counts.to_numpy()[known], index=gene).groupby(level=0, sort=False).sum()
        tpm = pd.Series(tpm.to_numpy()[known], index=gene).groupby(level=0, sort=False).sum()
    return counts, tpm, left_out


def read_h5ad_expression(
    path: str | Path, *, sample_key: str = "sample", cell_type_key: str | None = None
) -> pd.DataFrame:
    """Genes x samples raw counts from an ``.h5ad``: bulk (one row per sample), or single-cell summed per sample.

    Single-cell when ``obs`` has ``sample_key``: cells are summed per sample (``scanpy.get.aggregate``),
    or per sample and ``cell_type_key`` with features ``<cell type>:<gene>``. Counts come from
    ``layers['counts']`` when present, else ``X``; they must be finite and non-negative.
    """
    frame = _h5ad_frame(path, sample_key=sample_key, cell_type_key=cell_type_key)  # the file's AnnData freed on return
    return sum_duplicate_ids(frame)


def _h5ad_frame(path: str | Path, *, sample_key: str, cell_type_key: str | None) -> pd.DataFrame:
    """:func:`read_h5ad_expression` before duplicate IDs are summed."""
    import anndata as ad
    import scanpy as sc

    path = Path(path)
    if not path.is_file():
        raise MultimodalError(f"{path}: expression .h5ad not found")
    try:
        adata = ad.read_h5ad(path)
    except Exception as exc:  # h5py/anndata raise many types for a file that is not an h5ad
        raise MultimodalError(f"{path}: cannot read as AnnData (.h5ad): {type(exc).__name__}: {exc}") from exc
    layer = "counts" if "counts" in adata.layers else None
    matrix = adata.layers[layer] if layer else adata.X
    values = matrix.data if hasattr(matrix, "data") and not isinstance(matrix, np.ndarray) else np.asarray(matrix)
    if values.size and (not np.isfinite(values).all() or (values < 0).any()):
        if hasattr(matrix, "tocoo"):  # the stored entries, in row-major order as a dense matrix is scanned
            entries = matrix.tocoo()
            bad = ~np.isfinite(entries.data) | (entries.data < 0)
            order = np.lexsort((entries.col[bad], entries.row[bad]))
            rows, cols, cells = entries.row[bad][order], entries.col[bad][order], entries.data[bad][order]
        else:
            dense = np.asarray(matrix)
            rows, cols = np.nonzero(~np.isfinite(dense) | (dense < 0))
            cells = dense[rows, cols]
        raise _bad_counts_error(
            path,
            layer,
            adata.obs_names[rows[:MAX_LINES_NAMED]],
            adata.var_names[cols[:MAX_LINES_NAMED]],
            cells,
            len(rows),
        )
    symbols = _var_symbols(adata.var)
    attrs: dict = {}
    if sample_key in adata.obs:
        if cell_type_key and cell_type_key not in adata.obs:
            raise MultimodalError(
                f"{path}: obs has no column {cell_type_key!r} (ingest.single_cell.cell_type_key); "
                f"obs columns: {', '.join(map(str, adata.obs.columns[:20]))}"
            )
        keys = [sample_key, *([cell_type_key] if cell_type_key else [])]
        missing = adata.obs[keys].isna().any(axis=1).to_numpy()
        attrs["cells_without_sample_or_cell_type"] = int(missing.sum())
        attrs["cells_aggregated"] = int((~missing).sum())
        cells = adata[~missing].copy() if missing.any() else adata  # no second copy of the cells when all are kept
        for key in keys:
            cells.obs[key] = cells.obs[key].astype(str).astype("category")
        summed = sc.get.aggregate(cells, by=keys, func="sum", layer=layer)
        sums = summed.layers["sum"]
        sums = sums.toarray() if hasattr(sums, "toarray") else np.asarray(sums)
        genes = strip_version(pd.Index(summed.var_names.astype(str)))
        if cell_type_key:
            frames = []
            for cell_type in summed.obs[cell_type_key].cat.categories:
                rows = (summed.obs[cell_type_key] == cell_type).to_numpy()
                block = pd.DataFrame(
                    sums[rows].T,
                    index=[f"{cell_type}:{g}" for g in genes],
                    columns=summed.obs.loc[rows, sample_key].astype(str).to_numpy(),
                )
                frames.append(block)
            frame = pd.concat(frames, axis=0).fillna(0.0)
            if symbols is not None:
                symbol_of = dict(zip(genes, symbols.to_numpy(), strict=True))
                attrs["gene_symbols"] = {name: symbol_of.get(name.split(":", 1)[1], "") for name in frame.index}
        else:
            frame = pd.DataFrame(sums.T, index=genes, columns=summed.obs[sample_key].astype(str).to_numpy())
    else:
        dense = matrix.toarray() if hasattr(matrix, "toarray") else np.asarray(matrix)
        frame = pd.DataFrame(
            dense.T.astype(np.float64),
            index=strip_version(pd.Index(adata.var_names.astype(str))),
            columns=adata.obs_names.astype(str),
        )
    if symbols is not None and "gene_symbols" not in attrs:
        attrs["gene_symbols"] = dict(zip(frame.index, symbols.to_numpy(), strict=False))
    frame = frame.astype(np.float64, copy=False)  # float64 already (built so above): no second copy
    frame.attrs.update(attrs)
    return frame


#: ``var`` columns that hold gene symbols, in order of preference.
SYMBOL_VAR_COLUMNS = ("gene_symbol", "gene_name", "feature_name", "gene_symbols")


def _var_symbols(var: pd.DataFrame) -> pd.Series | None:
    """The gene symbols of an AnnData's ``var`` (its first :data:`SYMBOL_VAR_COLUMNS` column, as text), or None."""
    for column in SYMBOL_VAR_COLUMNS:
        if column in var:
            return var[column].astype(str)
    return None


def _bad_counts_error(
    path: Path, layer: str | None, obs: Sequence, var: Sequence, cells: np.ndarray, total: int
) -> MultimodalError:
    """The error for negative or non-finite counts: the first cells (``obs``, ``var`` names and value) and how many."""
    entries = [f"obs {str(o)!r}, var {str(v)!r}: {float(c):g}" for o, v, c in zip(obs, var, cells, strict=False)]
    found = entries[0] if total == 1 else f"{total} cells: {listing(entries, total=total)}"
    return MultimodalError(
        f"{path}: {f'layers[{layer}]' if layer else 'X'} holds negative or non-finite values; raw counts expected "
        f"({found})"
    )


def bulk_h5ad_modality(
    path: str | Path,
    samples: pd.DataFrame,
    *,
    sample_key: str = "sample",
    values: str = "counts",
    target_sum: float = 1e6,
    min_count: float = 0.0,
    min_samples: int = 1,
    block_cells: int | None = None,
) -> anndata.AnnData | None:
    """The expression modality of a bulk ``.h5ad`` read in blocks; None for a single-cell one (``obs[sample_key]``).

    Equal, value for value and in its ingest notes, to ``expression_matrix(read_h5ad_expression(path), samples,
    ...)``, in a fraction of the memory. Only the cohort's rows (``rna_sample`` names ``obs_names``) of
    ``layers['counts']`` (else ``X``; dense, CSR or CSC; any number type) are read, ``block_cells`` cells at
    a time, through h5py and anndata's :func:`anndata.io.sparse_dataset` (``read_h5ad(backed="r")`` would
    load every layer whole); each block is checked as float64 (negative or non-finite cells are an error
    naming them) and laid, transposed, into gene-row blocks of the cohort's matrix, held as float32 (float64
    if a value has no exact float32). Those feed :func:`multimodal.ingest.expression.modality_from_row_blocks`,
    the block path the counts tables take: about one matrix while reading, two at the end.
    """
    import h5py
    from anndata.abc import CSCDataset
    from anndata.io import read_elem, sparse_dataset

    from multimodal.ingest.expression import (
        BLOCK_CELLS,
        RowBlock,
        _check_settings,
        _claimed_columns,
        modality_from_row_blocks,
    )

    _check_settings(values, min_samples)
    block_cells = block_cells or BLOCK_CELLS
    path = Path(path)
    if not path.is_file():
        raise MultimodalError(f"{path}: expression .h5ad not found")
    with ExitStack() as stack:
        try:
            handle = stack.enter_context(h5py.File(path, "r"))
            obs, var = read_elem(handle["obs"]), read_elem(handle["var"])
            layer = "counts" if "counts" in handle.get("layers", {}) else None
            element = handle["layers"]["counts"] if layer else handle["X"]
            matrix = sparse_dataset(element) if isinstance(element, h5py.Group) else element
        except Exception as exc:  # h5py/anndata raise many types for a file that is not an h5ad
            raise MultimodalError(f"{path}: cannot read as AnnData (.h5ad): {type(exc).__name__}: {exc}") from exc
        if sample_key in obs:
            return None
        source = str(path)
        obs_names = pd.Index(obs.index.astype(str))
        claimed, n_by_prefix, n_unclaimed = _claimed_columns(obs_names, samples, source=source)
        if not obs_names.is_unique:
            twice = obs_names[obs_names.duplicated()].intersection(list(claimed))
            if len(twice):
                raise MultimodalError(
                    f"{path}: obs name {twice[0]!r}, an rna_sample of the samples sheet, names more than one row"
                )
        position = obs_names.get_indexer_for(list(claimed))  # one row each (checked above)
        rows = np.unique(position)  # the cohort's rows in file order: h5py reads increasing indices
        take = np.searchsorted(rows, position)  # each patient's row among those read
        n_genes = len(var)
        row_step = max(1, block_cells // max(1, n_genes))
        # staged as float32 while every value read has an exact float32 (always so for these types), else float64
        stage64 = False
        always_exact = np.dtype(matrix.dtype) in (np.float32, np.float16, np.int8, np.uint8, np.int16, np.uint16)

        by_gene = isinstance(matrix, CSCDataset)  # anndata reads a CSC's rows by loading it whole: read its columns
        gene_step = max(1, block_cells // max(1, len(rows)))
        starts = range(0, n_genes, gene_step)

        def read_pieces(genes: np.ndarray | None = None) -> Iterator[tuple[int, int, np.ndarray]]:
            """(first of the cohort's rows, first gene, float64 values) of each piece read: blocks of the cohort's
            rows over all genes (or ``genes``), or of a CSC's columns (``gene_step`` of them, or ``genes``) over
            the cohort's rows."""
            if by_gene:
                for g in [0] if genes is not None else starts:
                    part = matrix[:, genes if genes is not None else slice(g, g + gene_step)][rows]
                    yield 0, g, part.toarray().astype(np.float64, copy=False)
                return
            for start in range(0, len(rows), row_step):
                here = rows[start : start + row_step]
                wanted = slice(here[0], here[-1] + 1) if here[-1] - here[0] == len(here) - 1 else here
                part = matrix[wanted]
                part = part.toarray() if hasattr(part, "toarray") else np.asarray(part)
                yield start, 0, (part if genes is None else part[:, genes]).astype(np.float64, copy=False)

        staged = [np.empty((min(gene_step, n_genes - g), len(rows)), dtype=np.float32) for g in starts]
        first_bad = np.zeros((3, 0))  # (row among the cohort's, gene, value) of the first bad cells in row-major order
        n_bad = 0
        for row0, gene0, part in read_pieces():
            bad = ~np.isfinite(part) | (part < 0)
            if bad.any():
                r, c = np.nonzero(bad)  # row-major: the piece's first cells first
                n_bad += len(r)
                r, c = r[:MAX_LINES_NAMED], c[:MAX_LINES_NAMED]
                found = np.concatenate([first_bad, [r + row0, c + gene0, part[r, c]]], axis=1)
                first_bad = found[:, np.lexsort((found[1], found[0]))[:MAX_LINES_NAMED]]
            if not (always_exact or stage64 or n_bad or (part.astype(np.float32) == part).all()):
                stage64 = True  # from now on every staged block is float64, so the values stay exact
                for k, block in enumerate(staged):  # one block at a time: a block more at the peak, not a matrix
                    staged[k] = block.astype(np.float64)
            for k in range(gene0 // gene_step, (gene0 + part.shape[1] - 1) // gene_step + 1):
                block, g = staged[k], starts[k]
                block[:, row0 : row0 + len(part)] = part[:, g - gene0 : g - gene0 + len(block)].T
            del part, bad
        if n_bad:
            at_row, at_gene = first_bad[0].astype(int), first_bad[1].astype(int)
            raise _bad_counts_error(path, layer, obs_names[rows[at_row]], var.index[at_gene], first_bad[2], n_bad)

        # IDs stripped here, as the frame path strips them before it keys symbols by ID (the last row's symbol wins)
        ids = np.asarray(strip_version(pd.Index(var.index.astype(str))), dtype=object)
        symbols = _var_symbols(var)
        symbols = None if symbols is None else symbols.to_numpy(dtype=object)
        identity = len(take) == len(rows) and bool((take == np.arange(len(rows))).all())

        def row_blocks() -> Iterator[RowBlock]:
            """The staged gene-row blocks as float64, over the cohort's patients, each freed once handed on."""
            for k, g in enumerate(starts):
                block, staged[k] = staged[k], None
                cells = block.astype(np.float64, copy=False)
                del block
                end = g + len(cells)
                yield RowBlock(
                    ids=ids[g:end],
                    cells=cells if identity else cells[:, take],
                    symbols=None if symbols is None else symbols[g:end],
                    positions=np.arange(g, end),
                )
                del cells

        def rows_again(genes: np.ndarray) -> np.ndarray:
            """Those genes (var positions) as float64 over the cohort's patients: a second pass over the rows."""
            out = np.empty((len(genes), len(rows)))
            for row0, _, part in read_pieces(genes):
                out[:, row0 : row0 + len(part)] = part.T
            return out[:, take]

        return modality_from_row_blocks(
            row_blocks(),
            rows_again,
            {},
            claimed=claimed,
            samples=samples,
            source=source,
            values=values,
            target_sum=target_sum,
            min_count=min_count,
            min_samples=min_samples,
            n_unclaimed=n_unclaimed,
            n_by_prefix=n_by_prefix,
            gene_order=by_gene,  # a CSC: the frame path's toarray() of it is Fortran-ordered
        )


def read_10x_h5_profile(path: str | Path) -> tuple[pd.Series, dict[str, str], int]:
    """One sample's 10x ``.h5``: counts summed over its cell barcodes, by Ensembl gene ID.

    Returns the per-gene sums, the gene symbol of each ID, and the number of cells.
    """
    import scanpy as sc

    path = Path(path)
    if not path.is_file():
        raise MultimodalError(f"{path}: 10x .h5 not found")
    try:
        adata = sc.read_10x_h5(path)
    except Exception as exc:  # h5py raises KeyError/OSError for another layout
        raise MultimodalError(
            f"{path}: cannot read as a 10x Cell Ranger feature-barcode matrix (.h5): {type(exc).__name__}: {exc}"
        ) from exc
    ids = strip_version(pd.Index(adata.var["gene_ids"].astype(str))) if "gene_ids" in adata.var else None
    ids = ids if ids is not None else pd.Index(adata.var_names.astype(str))
    totals = np.asarray(adata.X.sum(axis=0)).ravel().astype(np.float64)
    sums = pd.Series(totals, index=ids).groupby(level=0, sort=False).sum()
    symbols = dict(zip(ids, adata.var_names.astype(str), strict=True))
    return sums, symbols, int(adata.n_obs)


def _h5ad_total(path: Path) -> tuple[pd.Series, dict[str, str], int]:
    """One sample's single-cell ``.h5ad`` summed over its cells (sparse stays sparse)."""
    import anndata as ad

    try:
        adata = ad.read_h5ad(path)
    except Exception as exc:  # h5py/anndata raise many types for a file that is not an h5ad
        raise MultimodalError(f"{path}: cannot read as AnnData (.h5ad): {type(exc).__name__}: {exc}") from exc
    matrix = adata.layers["counts"] if "counts" in adata.layers else adata.X
    totals = np.asarray(matrix.sum(axis=0)).ravel().astype(np.float64)
    if not np.isfinite(totals).all() or (totals < 0).any():
        raise MultimodalError(f"{path}: negative or non-finite values; raw counts expected")
    ids = strip_version(pd.Index(adata.var_names.astype(str)))
    found = _var_symbols(adata.var)
    symbols = {} if found is None else dict(zip(ids, found, strict=True))
    return pd.Series(totals, index=ids), symbols, int(adata.n_obs)


def is_salmon_quant(path: Path) -> bool:
    """Whether a file starts with Salmon's quant.sf header."""
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            return tuple(handle.readline().rstrip("\r\n").split("\t")) == SALMON_COLUMNS
    except OSError:
        return False


def read_sample_files(
    files: pd.Series, *, tx2gene: pd.Series | None = None, sample_key: str = "sample"
) -> pd.DataFrame:
    """Genes x samples counts from one file per sample (``files``: sample name -> path).

    Each file is a Salmon ``quant.sf`` (needs ``tx2gene`` for genes), a 10x ``.h5``, a single-cell
    ``.h5ad`` (summed over its cells) or a one-sample counts table (featureCounts, HTSeq, STAR). Genes
    absent from one sample's file are 0 there (as a quantifier writes no row for them).
    """
    from multimodal.ingest.expression import read_counts_table

    columns: dict[str, pd.Series] = {}
    symbols: dict[str, str] = {}
    left_out = {"transcripts_not_in_tx2gene": 0, "cells_summed": 0, "summary_rows_removed": 0}
    for sample, file in files.items():
        path = Path(file)
        name = path.name.lower()
        if name.endswith(".h5") and not name.endswith(".h5ad"):
            counts, gene_symbols, n_cells = read_10x_h5_profile(path)
            symbols.update(gene_symbols)
            left_out["cells_summed"] += n_cells
        elif name.endswith(".h5ad"):
            counts, gene_symbols, n_cells = _h5ad_total(path)
            symbols.update(gene_symbols)
            left_out["cells_summed"] += n_cells
        elif name.endswith(".sf") or is_salmon_quant(path):
            counts, _, dropped = read_salmon_quant(path, tx2gene)
            left_out["transcripts_not_in_tx2gene"] += dropped["transcripts_not_in_tx2gene"]
        else:
            table = read_counts_table(path)
            if table.shape[1] != 1:
                raise MultimodalError(
                    f"{path}: a per-sample expression file holds one sample; this table has {table.shape[1]} "
                    "(give a cohort table as the config's expression instead)"
                )
            counts = table.iloc[:, 0]
            left_out["summary_rows_removed"] += int(table.attrs.get("summary_rows_removed", 0))
            symbols.update(table.attrs.get("gene_symbols", {}))
        counts.index = strip_version(pd.Index(counts.index.astype(str)))
        columns[str(sample)] = counts.groupby(level=0, sort=False).sum()
    frame = pd.DataFrame(columns).fillna(0.0).astype(np.float64)
    frame.attrs.update(left_out)
    if symbols:
        frame.attrs["gene_symbols"] = symbols
    return frame
