"""Somatic variant calls (VCF/BCF with VEP ``CSQ`` or SnpEff ``ANN``) to a patients x genes matrix.

A record counts for a gene when it passed every filter (FILTER=PASS, or ``.`` meaning no filters
were applied) and at least one of its annotations for that gene has a protein-altering
consequence (the HIGH and MODERATE impact terms below). Each record counts once per gene, however
many transcripts it hits. Everything not counted is tallied by reason.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from multimodal.errors import MultimodalError

if TYPE_CHECKING:
    import anndata

log = logging.getLogger(__name__)

#: Sequence Ontology terms that change the protein: Ensembl VEP's HIGH and MODERATE impact classes
#: (https://www.ensembl.org/info/genome/variation/prediction/predicted_data.html). LOW (synonymous,
#: splice_region, ...) and MODIFIER (intronic, UTR, intergenic, ...) terms are not counted.
HIGH_IMPACT = frozenset(
    {
        "transcript_ablation",
        "splice_acceptor_variant",
        "splice_donor_variant",
        "stop_gained",
        "frameshift_variant",
        "stop_lost",
        "start_lost",
        "transcript_amplification",
        "feature_elongation",
        "feature_truncation",
    }
)
MODERATE_IMPACT = frozenset({"inframe_insertion", "inframe_deletion", "missense_variant", "protein_altering_variant"})
#: SnpEff's own HIGH/MODERATE protein-level terms that VEP names differently or lacks
#: (https://pcingola.github.io/SnpEff/snpeff/inputoutput/#effect-prediction-details).
SNPEFF_PROTEIN_ALTERING = frozenset(
    {
        "conservative_inframe_insertion",
        "conservative_inframe_deletion",
        "disruptive_inframe_insertion",
        "disruptive_inframe_deletion",
        "exon_loss_variant",
        "rare_amino_acid_variant",
        "gene_fusion",
        "bidirectional_gene_fusion",
    }
)
PROTEIN_ALTERING = HIGH_IMPACT | MODERATE_IMPACT | SNPEFF_PROTEIN_ALTERING

#: SnpEff ANN is a fixed layout: Allele | Annotation | Annotation_Impact | Gene_Name | Gene_ID | ...
SNPEFF_FIELDS = ("Allele", "Consequence", "IMPACT", "SYMBOL", "Gene")
MUTATION_SUFFIX = "_mut"
BGZF_EOF = bytes.fromhex("1f8b08040000000000ff0600424302001b0003000000000000000000")


@dataclass
class PatientVariants:
    """What one patient's call set contributes: protein-altering counts per gene and tallies."""

    gene_counts: Counter = field(default_factory=Counter)
    n_records: int = 0
    n_pass: int = 0
    excluded: Counter = field(default_factory=Counter)


def check_variant_file_complete(path: Path) -> None:
    """Raise if a bgzipped file lacks the BGZF end-of-file block, or a plain VCF its final line end (a truncated copy).

    Plain gzip (not BGZF) is rejected with the fix: htslib cannot read it as a VCF.
    """
    with open(path, "rb") as handle:
        head = handle.read(16)
        if head[:2] != b"\x1f\x8b":
            if head[:3] != b"BCF":  # plain-text VCF: a copy cut short ends inside a record, not after "\n"
                handle.seek(0, 2)
                if handle.tell():
                    handle.seek(handle.tell() - 1)
                    if handle.read(1) != b"\n":
                        raise MultimodalError(
                            f"{path}: truncated file (the last line has no line end); re-copy or re-export it"
                        )
            return
        if not (len(head) >= 14 and head[3] & 4 and head[12:14] == b"BC"):
            raise MultimodalError(
                f"{path}: compressed with gzip, not bgzip; recompress it: zcat {path.name} | bgzip > {path.name}.bgz"
            )
        handle.seek(0, 2)
        size = handle.tell()
        handle.seek(max(0, size - len(BGZF_EOF)))
        if handle.read() != BGZF_EOF:
            raise MultimodalError(f"{path}: truncated file (no BGZF end-of-file block); re-copy or re-compress it")


def _annotation_layout(header, path: Path) -> tuple[str, list[str]]:
    """Which INFO key holds consequence annotations and the field names inside it.

    VEP declares its fields after ``Format:`` (in ``CSQ``, or in ``ANN`` with ``--vcf_info_field ANN``);
    SnpEff's ``ANN`` has a fixed layout.
    """
    info = header.info
    for key in ("CSQ", "ANN"):
        if key not in info:
            continue
        description = info[key].description or ""
        if "Format:" in description:
            fields = [f.strip() for f in description.split("Format:", 1)[1].strip().strip("\"'").split("|")]
            for needed in ("Consequence", "SYMBOL"):
                if needed not in fields:
                    raise MultimodalError(f"{path}: {key} Format lacks the {needed} field")
            return key, fields
        if key == "CSQ":
            raise MultimodalError(f"{path}: CSQ header has no 'Format:' field list")
        return key, list(SNPEFF_FIELDS)
    if "EFF" in info:
        raise MultimodalError(f"{path}: INFO/EFF is SnpEff's pre-4.0 format; re-annotate with SnpEff >= 4 (INFO/ANN)")
    raise MultimodalError(
        f"{path}: no consequence annotation (INFO/CSQ from VEP or INFO/ANN from SnpEff); annotate the calls first"
    )


def read_patient_variants(path: str | Path) -> PatientVariants:
    """Count PASS protein-altering variants per gene in one VCF/BCF (plain, bgzipped or BCF)."""
    import pysam

    path = Path(path)
    if not path.is_file():
        raise MultimodalError(f"{path}: variant file not found")
    check_variant_file_complete(path)
    result = PatientVariants()
    # htslib's own stderr lines (no .tbi index: not needed to stream; contigs missing from the header)
    # are noise here: every real problem reaches us as an exception and becomes a one-line error.
    verbosity = pysam.set_verbosity(0)
    try:
        with pysam.VariantFile(str(path)) as vcf:
            key, fields = _annotation_layout(vcf.header, path)
            consequence_at, symbol_at = fields.index("Consequence"), fields.index("SYMBOL")
            gene_id_at = fields.index("Gene") if "Gene" in fields else symbol_at
            for record in vcf:
                result.n_records += 1
                filters = list(record.filter.keys())
                if filters and filters != ["PASS"]:
                    result.excluded["filter_not_pass"] += 1
                    continue
                result.n_pass += 1
                annotations = record.info.get(key)
                if not annotations:
                    result.excluded["no_annotation"] += 1
                    continue
                if isinstance(annotations, str):
                    annotations = (annotations,)
                genes_hit: set[str] = set()
                genes_seen: set[str] = set()
                for annotation in annotations:
                    parts = annotation.split("|")
                    if len(parts) <= max(consequence_at, symbol_at):
                        raise MultimodalError(
                            f"{path}: {record.chrom}:{record.pos}: {key} entry has {len(parts)} fields, "
                            f"header declares {len(fields)}"
                        )
                    # A transcript without an HGNC symbol (novel genes) is counted under its gene ID.
                    gene = parts[symbol_at].strip() or (parts[gene_id_at].strip() if gene_id_at < len(parts) else "")
                    if not gene:
                        continue
                    genes_seen.add(gene)
                    if PROTEIN_ALTERING.intersection(parts[consequence_at].split("&")):
                        genes_hit.add(gene)
                if not genes_seen:
                    result.excluded["no_gene_symbol"] += 1
                elif not genes_hit:
                    result.excluded["not_protein_altering"] += 1
                for gene in genes_hit:
                    result.gene_counts[gene] += 1
    except MultimodalError:
        raise
    except (OSError, ValueError) as exc:
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        where = f"record {result.n_records + 1}"
        raise MultimodalError(f"{path}: cannot read variant calls at {where}: {message}") from exc
    finally:
        pysam.set_verbosity(verbosity)
    return result


#: MAF ``Variant_Classification`` values that change the protein (the MAF counterpart of the VEP
#: HIGH/MODERATE set above), including Oncotator's start/stop codon classes found in older TCGA MAFs.
#: Silent, Intron, UTR, Flank, IGR, RNA, Splice_Region and De_novo_Start_* (5' UTR) are not counted.
MAF_PROTEIN_ALTERING = frozenset(
    {
        "Missense_Mutation",
        "Nonsense_Mutation",
        "Nonstop_Mutation",
        "Frame_Shift_Del",
        "Frame_Shift_Ins",
        "In_Frame_Del",
        "In_Frame_Ins",
        "Splice_Site",
        "Translation_Start_Site",
        "Start_Codon_SNP",
        "Start_Codon_Del",
        "Start_Codon_Ins",
        "Stop_Codon_Del",
        "Stop_Codon_Ins",
    }
)
MAF_REQUIRED = ("Hugo_Symbol", "Variant_Classification", "Tumor_Sample_Barcode")


def _maf_header(path: Path) -> tuple[list[str], int]:
    """The MAF's column names and how many leading ``#`` lines (``#version 2.4`` ...) precede them."""
    from multimodal.ingest.samples import open_text

    n_comments = 0
    try:
        with open_text(path) as handle:
            for line in handle:
                if not line.startswith("#"):
                    return [c.strip() for c in line.rstrip("\r\n").split("\t")], n_comments
                n_comments += 1
    except (OSError, EOFError, UnicodeDecodeError) as exc:
        raise MultimodalError(f"{path}: cannot read MAF: {exc}") from exc
    raise MultimodalError(f"{path}: MAF is empty")


def read_maf(path: str | Path) -> dict[str, PatientVariants]:
    """Count PASS protein-altering variants per gene for every tumour sample of a MAF (plain or gzipped).

    Records whose ``FILTER`` column (when present, as in GDC MAFs) is not PASS or ``.`` are counted as
    filtered; ``Hugo_Symbol`` ``Unknown`` or empty counts as no gene symbol. Only the three required
    columns and FILTER are parsed, so a multi-million-row, 120-column MAF fits in memory; only leading
    ``#`` lines are skipped (a ``#`` inside a field is data) and quotes are not special, as in GDC MAFs.
    """
    import csv

    from multimodal.ingest.samples import check_field_counts

    path = Path(path)
    if not path.is_file():
        raise MultimodalError(f"{path}: MAF not found")
    header, n_comments = _maf_header(path)
    absent = [c for c in MAF_REQUIRED if c not in header]
    if absent:
        raise MultimodalError(f"{path}: MAF lacks column(s) {absent} (a tab-separated MAF header was expected)")
    check_field_counts(path, sep="\t", first_line=n_comments + 2, n_fields=len(header), what="MAF")
    columns = [*MAF_REQUIRED, *(["FILTER"] if "FILTER" in header else [])]
    try:
        maf = pd.read_csv(
            path,
            sep="\t",
            skiprows=n_comments,
            usecols=columns,
            dtype=str,
            keep_default_na=False,
            quoting=csv.QUOTE_NONE,
            encoding="utf-8-sig",
        )
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError, OSError, EOFError) as exc:
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise MultimodalError(f"{path}: cannot read MAF (after {n_comments} '#' lines): {message}") from exc
    sample = maf["Tumor_Sample_Barcode"].str.strip()
    gene = maf["Hugo_Symbol"].str.strip()
    passed = maf["FILTER"].str.strip().isin(["PASS", ".", ""]) if "FILTER" in maf else pd.Series(True, index=maf.index)
    no_gene = passed & gene.isin(["", "Unknown"])
    altering = passed & ~no_gene & maf["Variant_Classification"].str.strip().isin(MAF_PROTEIN_ALTERING)
    tallies = (
        pd.DataFrame(
            {
                "n_records": 1,
                "n_pass": passed.astype(int),
                "filter_not_pass": (~passed).astype(int),
                "no_gene_symbol": no_gene.astype(int),
                "not_protein_altering": (passed & ~no_gene & ~altering).astype(int),
            }
        )
        .groupby(sample.to_numpy(), sort=False)
        .sum()
    )
    per_sample_genes = pd.DataFrame({"sample": sample[altering], "gene": gene[altering]}).value_counts(sort=False)
    result: dict[str, PatientVariants] = {}
    for barcode, row in tallies.iterrows():
        excluded = Counter({k: int(row[k]) for k in ("filter_not_pass", "no_gene_symbol", "not_protein_altering")})
        result[str(barcode)] = PatientVariants(
            n_records=int(row["n_records"]), n_pass=int(row["n_pass"]), excluded=+excluded
        )
    for (barcode, symbol), n in per_sample_genes.items():
        result[str(barcode)].gene_counts[symbol] = int(n)
    return result


def mutation_matrix(
    samples: pd.DataFrame,
    *,
    maf: str | Path | None = None,
    maf_sheet_barcodes: Collection[str] | None = None,
    territory_mb: float = 38.0,
    progress: bool = True,
) -> anndata.AnnData:
    """Patients x genes counts of PASS protein-altering variants, plus tumour mutational burden.

    ``samples``: index patient_id, column ``vcf`` (a per-patient VCF/BCF) and, with a cohort ``maf``,
    column ``maf_sample`` (the patient's Tumor_Sample_Barcode). A patient with neither has no variant
    calls (counted, not dropped); one listed in the sheet but absent from the MAF has no mutation that
    passed the MAF's own calling and is kept with zero counts (counted as
    ``maf_samples_without_records``). MAF barcodes claimed by no patient are counted against
    ``maf_sheet_barcodes`` (the whole sheet's, when ``samples`` is one chunk of it; pass an empty
    collection in all chunks but one so the count is made once).

    Writes ``obs['tmb']`` (protein-altering PASS variants per Mb of ``territory_mb``), ``obs['n_records']``,
    ``obs['n_pass']``, ``layers['counts']`` and ``uns['ingest']`` with the parameters and every exclusion
    by reason.
    """
    import anndata as ad
    from tqdm.auto import tqdm

    from multimodal.ingest.samples import resolve_barcodes

    if territory_mb <= 0:
        raise MultimodalError(f"territory_mb must be positive, got {territory_mb}")
    has_vcf = samples["vcf"].astype(str).str.len() > 0
    maf_sample = samples["maf_sample"].astype(str) if "maf_sample" in samples else pd.Series("", index=samples.index)
    has_maf = (maf_sample.str.len() > 0) & (maf is not None)
    both = samples.index[has_vcf & has_maf]
    if len(both):
        raise MultimodalError(f"patient {both[0]} has both a vcf and a maf_sample in the samples sheet; keep one")
    per_patient: dict[str, PatientVariants] = {}
    maf_records = read_maf(maf) if maf is not None and (has_maf.any() or maf_sheet_barcodes) else {}
    resolved = resolve_barcodes(set(maf_sample[has_maf]), maf_records.keys(), what="MAF Tumor_Sample_Barcode")
    if has_maf.any() and maf_records and not resolved:
        raise MultimodalError(
            f"{maf}: none of the {int(has_maf.sum())} maf_sample barcodes of the samples sheet occurs in the MAF "
            f"(sheet: {maf_sample[has_maf].iloc[0]!r}; MAF: {next(iter(maf_records))!r}); "
            "maf_sample must be the Tumor_Sample_Barcode or a unique prefix of it"
        )
    n_maf_missing = 0
    for pid in tqdm(samples.index, desc="variants", unit="patient", disable=not progress):
        if has_vcf[pid]:
            per_patient[str(pid)] = read_patient_variants(samples.at[pid, "vcf"])
        elif has_maf[pid]:
            n_maf_missing += maf_sample[pid] not in resolved
            per_patient[str(pid)] = maf_records.get(resolved.get(maf_sample[pid], ""), PatientVariants())
    if maf_sheet_barcodes is None:
        claimed = set(resolved.values())
    else:
        claimed = set(resolve_barcodes(set(maf_sheet_barcodes), maf_records.keys(), what="MAF barcode").values())
    counts_unclaimed = maf_sheet_barcodes is None or len(maf_sheet_barcodes) > 0
    n_maf_unclaimed = sum(barcode not in claimed for barcode in maf_records) if counts_unclaimed else 0
    n_by_prefix = sum(1 for sheet, full in resolved.items() if sheet != full)

    genes = sorted({g for pv in per_patient.values() for g in pv.gene_counts})
    patients = list(per_patient)
    counts = np.zeros((len(patients), len(genes)), dtype=np.float32)
    gene_at = {g: j for j, g in enumerate(genes)}
    excluded: Counter = Counter()
    for i, pv in enumerate(per_patient.values()):
        for gene, n in pv.gene_counts.items():
            counts[i, gene_at[gene]] = n
        excluded.update(pv.excluded)
    obs = pd.DataFrame(
        {
            "n_records": [pv.n_records for pv in per_patient.values()],
            "n_pass": [pv.n_pass for pv in per_patient.values()],
            "n_protein_altering": [int(sum(pv.gene_counts.values())) for pv in per_patient.values()],
        },
        index=pd.Index(patients, name="patient_id"),
    )
    obs["tmb"] = obs["n_protein_altering"] / territory_mb
    # Feature names carry a suffix so they stay unique beside expression genes in the MuData store.
    var = pd.DataFrame(
        {"gene_symbol": genes, "feature_class": "gene_mutation_count", "source": "variant_calls"},
        index=pd.Index([f"{g}{MUTATION_SUFFIX}" for g in genes], name="feature"),
    )
    adata = ad.AnnData(X=counts, obs=obs, var=var)
    adata.layers["counts"] = counts.copy()
    adata.uns["ingest"] = {
        "modality": "variants",
        "params": {
            "territory_mb": float(territory_mb),
            "filter": "FILTER in {PASS, .}",
            "protein_altering_terms": sorted(PROTEIN_ALTERING),
            "maf": str(maf or ""),
            "maf_protein_altering_classes": sorted(MAF_PROTEIN_ALTERING),
        },
        "n_patients_in": int(len(samples)),
        "model_obs_features": ["tmb"],
        "exclusions": {
            "patients_without_variant_calls": int(len(samples) - len(per_patient)),
            "maf_samples_without_records": int(n_maf_missing),
            "maf_samples_matched_by_barcode_prefix": int(n_by_prefix),
            "maf_samples_not_in_samples_sheet": int(n_maf_unclaimed),
            **{f"records_{k}": int(v) for k, v in sorted(excluded.items())},
        },
    }
    log.info("variants: %d patients x %d genes", len(patients), len(genes))
    return adata
