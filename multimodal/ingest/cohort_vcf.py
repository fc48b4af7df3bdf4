"""A multi-sample cohort VCF/BCF as VCF Zarr (bio2zarr), and its per-gene carrier matrix by array operations.

``vcf_to_zarr`` converts the cohort's VCF/BCF with ``bio2zarr.vcf.convert`` into the VCF Zarr layout
(``call_genotype`` variants x samples x ploidy, ``variant_allele``, ``variant_filter``, ``variant_CSQ``
...), Zarr format 3, chunked along variants and samples, written atomically.

``carrier_matrix`` reads it back in chunks with ``dask.array.from_zarr``: only the consequence annotation
(one string per variant and entry, no sample dimension) is parsed in Python, into a table of (record,
gene) pairs with the ALT alleles that alter the protein in that gene (the VEP HIGH/MODERATE terms and
SnpEff's equivalents of :mod:`multimodal.ingest.variants`, the same FILTER set, gene allow-list and
transcript rule). The genotypes are then looked up against that table per chunk of variants
(``lookup[pair, allele]`` indexed by each call), so a sample counts once per record and gene it
carries a protein-altering ALT allele of (``0/1``, ``1/1``, ``1/2`` all count once; a missing call
``./.`` does not, and is counted). Chunks are computed a batch at a time on the Dask scheduler in use
(threads by default; a ``distributed`` cluster when ``scheduler`` names its address), so memory is
bounded by the chunk size, not the cohort size.
"""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from multimodal.errors import MultimodalError
from multimodal.ingest.variants import (
    CONSEQUENCE_TERMS,
    PROTEIN_ALTERING,
    SNPEFF_ANN_FIELDS,
    VariantFilters,
    representative_entries,
)

if TYPE_CHECKING:
    import anndata

log = logging.getLogger(__name__)

CARRIER_SUFFIX = "_carrier"


def vcf_to_zarr(
    vcf: str | Path,
    out: str | Path,
    *,
    variants_chunk_size: int = 10_000,
    samples_chunk_size: int = 1_000,
    workers: int = 0,
) -> Path:
    """Convert a cohort VCF/BCF (bgzipped and indexed) to VCF Zarr, Zarr format 3, atomically."""
    from bio2zarr import vcf as b2z

    from multimodal.fileio import atomic_path
    from multimodal.ingest.variants import check_variant_file_complete

    vcf, out = Path(vcf), Path(out)
    if not vcf.is_file():
        raise MultimodalError(f"{vcf}: cohort VCF not found")
    check_variant_file_complete(vcf)
    if not any(Path(f"{vcf}{s}").is_file() for s in (".tbi", ".csi")):
        raise MultimodalError(f"{vcf}: no .tbi or .csi index beside it; index it: bcftools index {vcf.name}")
    with atomic_path(out) as tmp:
        try:
            b2z.convert(
                [str(vcf)],
                str(tmp),
                variants_chunk_size=variants_chunk_size,
                samples_chunk_size=samples_chunk_size,
                worker_processes=workers,
                zarr_format=3,
            )
        except (ValueError, OSError, KeyError) as exc:
            message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise MultimodalError(f"{vcf}: cannot convert to VCF Zarr: {message}") from exc
    return out


def _annotation_fields(description: str, key: str, path: Path) -> tuple:
    """Positions of Allele, Consequence, SYMBOL, Gene, CANONICAL/MANE in the annotation, from its header Description."""
    if "Format:" in description:
        fields = [f.strip() for f in description.split("Format:", 1)[1].strip().split("|")]
    elif key == "ANN":
        fields = list(SNPEFF_ANN_FIELDS)
    else:
        raise MultimodalError(f"{path}: INFO/{key} declares no field list in the VCF header")
    names = {"Allele": ("Allele",), "Consequence": ("Consequence", "Annotation"), "SYMBOL": ("SYMBOL", "Gene_Name")}
    at = {}
    for what, options in names.items():
        found = [fields.index(o) for o in options if o in fields]
        if not found:
            raise MultimodalError(f"{path}: the INFO/{key} field list lacks {what}")
        at[what] = found[0]
    gene_at = next((fields.index(o) for o in ("Gene", "Gene_ID") if o in fields), at["SYMBOL"])
    canonical_at = fields.index("CANONICAL") if "CANONICAL" in fields else -1
    mane_at = next((fields.index(o) for o in ("MANE_SELECT", "MANE") if o in fields), -1)
    feature_at = next((fields.index(o) for o in ("Feature", "Feature_ID") if o in fields), -1)
    return at["Allele"], at["Consequence"], at["SYMBOL"], gene_at, (canonical_at, mane_at, feature_at, len(fields))


def _allele_index(annotation_allele: str, ref: str, alts: list[str]) -> int:
    """Which ALT (1-based) a VEP/SnpEff entry's Allele names; VEP trims the shared first base of indels."""
    if annotation_allele in alts:
        return alts.index(annotation_allele) + 1
    trimmed = [a[1:] if len(a) and len(ref) and a[0] == ref[0] else a for a in alts]
    trimmed = [t or "-" for t in trimmed]
    if annotation_allele in trimmed:
        return trimmed.index(annotation_allele) + 1
    return 1 if len(alts) == 1 else 0


def _pairs(
    store, path: Path, filters: VariantFilters, key: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str], Counter]:
    """(record, gene, altering-allele lookup) pairs from the annotation; tallies of records left out."""
    name = f"variant_{key}"
    if name not in store:
        raise MultimodalError(f"{path}: no INFO/{key} consequence annotation in the cohort VCF")
    allele_at, consequence_at, symbol_at, gene_at, (canonical_at, mane_at, feature_at, n_fields) = _annotation_fields(
        str(store[name].attrs.get("description", "")), key, path
    )
    annotations = store[name][:]
    annotations = annotations if annotations.ndim == 2 else annotations[:, None]
    alleles = store["variant_allele"][:]
    filter_ids = [str(f) for f in store["filter_id"][:]]
    variant_filter = store["variant_filter"][:]
    positions = store["variant_position"][:]
    accepted = np.array([f in filters.filter for f in filter_ids])
    filtered = (variant_filter & ~accepted).any(axis=1)
    n_alleles = alleles.shape[1]
    tallies: Counter = Counter()
    pair_variant, pair_gene, lookups = [], [], []
    genes: dict[str, int] = {}
    for v in range(len(annotations)):
        if filtered[v]:
            tallies["filter_not_pass"] += 1
            continue
        ref = str(alleles[v, 0])
        alts = [str(a) for a in alleles[v, 1:] if str(a)]
        by_gene: dict[str, list[tuple[list[str], list[str], int]]] = {}
        entries = [str(e) for e in annotations[v] if str(e)]
        if not entries:
            tallies["no_annotation"] += 1
            continue
        for k, entry in enumerate(entries, start=1):
            parts = entry.split("|")
            if len(parts) != n_fields:
                raise MultimodalError(
                    f"{path}: record {v + 1} (position {positions[v]}): INFO/{key} entry {k} has {len(parts)} "
                    f"'|'-separated fields, the header declares {n_fields}"
                )
            terms = [t.strip() for t in parts[consequence_at].split("&")]
            unknown = [t for t in terms if t not in CONSEQUENCE_TERMS]
            if unknown:
                raise MultimodalError(
                    f"{path}: record {v + 1} (position {positions[v]}): INFO/{key} entry {k}: "
                    f"{unknown[0]!r} is not a known consequence term"
                )
            gene = parts[symbol_at].strip() or parts[gene_at].strip()
            if gene:
                by_gene.setdefault(gene, []).append((parts, terms, _allele_index(parts[allele_at], ref, alts)))
        if not by_gene:
            tallies["no_gene_symbol"] += 1
            continue
        counted = False
        for gene, gene_entries in by_gene.items():
            chosen = range(len(gene_entries))
            if filters.transcripts == "canonical":
                chosen = representative_entries([(p, t) for p, t, _ in gene_entries], canonical_at, mane_at, feature_at)
            lookup = np.zeros(n_alleles + 1, dtype=bool)  # index = allele code + 1 (0: missing call)
            for k in chosen:
                _, terms, allele = gene_entries[k]
                if allele and PROTEIN_ALTERING.intersection(terms):
                    lookup[allele + 1] = True
            if not lookup.any() or (filters.genes is not None and gene not in filters.genes):
                continue
            counted = True
            pair_variant.append(v)
            pair_gene.append(genes.setdefault(gene, len(genes)))
            lookups.append(lookup)
        if not counted:
            altering = any(PROTEIN_ALTERING.intersection(t) for g in by_gene.values() for _, t, _ in g)
            tallies["gene_not_in_allow_list" if altering and filters.genes is not None else "not_protein_altering"] += 1
    lookup_array = np.array(lookups, dtype=bool).reshape(len(lookups), n_alleles + 1)
    return (
        np.array(pair_variant, dtype=np.int64),
        np.array(pair_gene, dtype=np.int64),
        lookup_array,
        list(genes),
        tallies,
    )


def _chunk_carriers(
    gt: np.ndarray, start: int, pair_variant: np.ndarray, pair_gene: np.ndarray, lookup: np.ndarray
) -> tuple[np.ndarray, np.ndarray, int]:
    """For one chunk of variants: the genes it touches, per gene x sample the carried records, missing calls."""
    lo, hi = np.searchsorted(pair_variant, [start, start + gt.shape[0]])
    if hi == lo:
        return np.zeros(0, dtype=np.int64), np.zeros((0, gt.shape[1]), dtype=np.int32), 0
    local = pair_variant[lo:hi] - start
    calls = gt[local].astype(np.int16) + 1  # (pairs, samples, ploidy); -1 missing -> 0, ref -> 1, ALT k -> k + 1
    calls[calls < 0] = 0  # -2 (fill of a lower ploidy) -> missing
    carried = lookup[lo:hi][np.arange(hi - lo)[:, None, None], calls].any(axis=2)  # (pairs, samples)
    missing = int((calls == 0).all(axis=2).sum())
    genes, inverse = np.unique(pair_gene[lo:hi], return_inverse=True)
    counts = np.zeros((len(genes), gt.shape[1]), dtype=np.int32)
    np.add.at(counts, inverse, carried.astype(np.int32))
    return genes, counts, missing


def carrier_matrix(
    zarr_path: str | Path,
    *,
    patients: pd.Index,
    filters: VariantFilters | None = None,
    annotation_field: str = "CSQ",
    scheduler: str | None = None,
    batch_chunks: int = 4,
) -> anndata.AnnData:
    """Patients x genes: how many protein-altering records of the gene each patient carries an ALT allele of.

    ``patients``: the samples sheet's; VCF samples are matched by ID or unique barcode prefix, the others
    counted. ``scheduler``: a Dask ``distributed`` scheduler address (``tcp://host:8786``); None computes
    on local threads.
    """
    import anndata as ad
    import dask
    import dask.array as da
    import zarr

    from multimodal.ingest.samples import resolve_barcodes

    filters = filters or VariantFilters()
    path = Path(zarr_path)
    try:
        store = zarr.open_group(str(path), mode="r")
        samples = [str(s) for s in store["sample_id"][:]]
    except Exception as exc:  # zarr raises several types for a path that is not a VCF Zarr
        raise MultimodalError(f"{path}: not a VCF Zarr store: {type(exc).__name__}: {exc}") from exc
    pair_variant, pair_gene, lookup, genes, tallies = _pairs(store, path, filters, annotation_field)
    resolved = resolve_barcodes([str(p) for p in patients], samples, what=f"sample of {path.name}")
    if not resolved:
        raise MultimodalError(
            f"{path}: none of its {len(samples)} samples is a patient of the samples sheet "
            f"(VCF: {samples[0] if samples else 'none'!r}; sheet: {str(patients[0]) if len(patients) else 'empty'!r})"
        )
    gt = da.from_zarr(str(path), component="call_genotype")
    counts = np.zeros((len(genes), len(samples)), dtype=np.int32)
    missing = 0
    client = None
    if scheduler:
        from distributed import Client

        try:
            client = Client(scheduler, timeout="10s")
        except OSError as exc:
            raise MultimodalError(
                f"cannot reach the Dask scheduler {scheduler} (ingest.dask_scheduler): {exc}"
            ) from exc
    try:
        starts = np.cumsum((0, *gt.chunks[0]))
        tasks = [
            dask.delayed(_chunk_carriers)(gt.blocks[k], int(starts[k]), pair_variant, pair_gene, lookup)
            for k in range(len(gt.chunks[0]))
            if np.searchsorted(pair_variant, starts[k]) < np.searchsorted(pair_variant, starts[k + 1])
        ]
        for first in range(0, len(tasks), batch_chunks):  # a batch at a time: memory bounded by chunk size
            for chunk_genes, chunk_counts, chunk_missing in dask.compute(*tasks[first : first + batch_chunks]):
                counts[chunk_genes] += chunk_counts
                missing += chunk_missing
    finally:
        if client is not None:
            client.close()
    order = [samples.index(resolved[str(p)]) for p in patients if str(p) in resolved]
    kept = [str(p) for p in patients if str(p) in resolved]
    matrix = counts[:, order].T.astype(np.float32)
    adata = ad.AnnData(
        X=matrix,
        obs=pd.DataFrame({"vcf_sample": [resolved[p] for p in kept]}, index=pd.Index(kept, name="patient_id")),
        var=pd.DataFrame(
            {"gene_symbol": genes, "feature_class": "gene_carrier", "source": "cohort_vcf"},
            index=pd.Index([f"{g}{CARRIER_SUFFIX}" for g in genes], name="feature"),
        ),
    )
    adata.layers["counts"] = matrix.copy()
    adata.uns["ingest"] = {
        "modality": "cohort_variants",
        "params": {
            "vcf_zarr": str(path),
            "annotation_field": annotation_field,
            "variant_filters": filters.params(),
            "rule": "a patient counts once per record and gene when a call carries a protein-altering ALT allele",
            "scheduler": scheduler or "local threads",
        },
        "n_patients_in": int(len(patients)),
        "exclusions": {
            "patients_without_vcf_sample": int(len(patients) - len(kept)),
            "vcf_samples_not_in_samples_sheet": int(len(samples) - len(kept)),
            "missing_calls_at_counted_records": int(missing),
            **{f"records_{k}": int(v) for k, v in sorted(tallies.items())},
        },
    }
    log.info("cohort VCF: %d patients x %d genes from %s", adata.n_obs, adata.n_vars, path)
    return adata
