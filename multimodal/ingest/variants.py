"""Somatic variant calls (VCF/BCF with VEP ``CSQ`` or SnpEff ``ANN``) to a patients x genes matrix.

A record counts for a gene when it passed every filter (FILTER=PASS, or ``.`` meaning no filters
were applied) and at least one of its annotations for that gene has a protein-altering
consequence (the HIGH and MODERATE impact terms below). Each record counts once per gene, however
many transcripts it hits. Everything not counted is tallied by reason. A consequence term outside
VEP's and SnpEff's vocabulary (:data:`CONSEQUENCE_TERMS`) stops the run: it would otherwise count as
not protein-altering without a word.
"""

from __future__ import annotations

import difflib
import logging
import re
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

#: Every consequence term Ensembl VEP calculates (its 41 Sequence Ontology terms, most severe first, as in
#: Bio::EnsEMBL::Variation::Utils::Constants %OVERLAP_CONSEQUENCES and the "Calculated variant
#: consequences" page above). TFBS_ablation is MODERATE there but regulatory, so not counted.
VEP_CONSEQUENCES = frozenset(
    {
        *HIGH_IMPACT,
        *MODERATE_IMPACT,
        "splice_donor_5th_base_variant",
        "splice_region_variant",
        "splice_donor_region_variant",
        "splice_polypyrimidine_tract_variant",
        "incomplete_terminal_codon_variant",
        "start_retained_variant",
        "stop_retained_variant",
        "synonymous_variant",
        "coding_sequence_variant",
        "mature_miRNA_variant",
        "5_prime_UTR_variant",
        "3_prime_UTR_variant",
        "non_coding_transcript_exon_variant",
        "intron_variant",
        "NMD_transcript_variant",
        "non_coding_transcript_variant",
        "coding_transcript_variant",
        "upstream_gene_variant",
        "downstream_gene_variant",
        "TFBS_ablation",
        "TFBS_amplification",
        "TF_binding_site_variant",
        "regulatory_region_ablation",
        "regulatory_region_amplification",
        "regulatory_region_variant",
        "intergenic_variant",
        "sequence_variant",
    }
)
#: Terms of older VEP releases, still found in archived annotations: nc_transcript_variant and
#: non_coding_exon_variant (non_coding_transcript_* since Ensembl 77), initiator_codon_variant (LOW impact;
#: start_lost since Ensembl 80). Not counted, as before.
VEP_RETIRED_CONSEQUENCES = frozenset({"initiator_codon_variant", "non_coding_exon_variant", "nc_transcript_variant"})
#: SnpEff's ANN effect terms (org.snpeff.snpEffect.EffectType.toSequenceOntology, all releases since 4.0,
#: and the effect table of https://pcingola.github.io/SnpEff/snpeff/inputoutput/) that VEP does not write.
#: Its HIGH structural terms (feature_ablation, duplication, inversion, chromosome_number_variation,
#: rearranged_at_DNA_level, protein_protein_contact, structural_interaction_variant) are not counted: they
#: are copy-number/structural or structure-annotation events, not protein-altering point mutations.
SNPEFF_EFFECTS = frozenset(
    {
        *SNPEFF_PROTEIN_ALTERING,
        "chromosome_number_variation",
        "duplication",
        "inversion",
        "feature_ablation",
        "feature_fusion",
        "rearranged_at_DNA_level",
        "protein_protein_contact",
        "structural_interaction_variant",
        "initiator_codon_variant",
        "non_canonical_start_codon",
        "5_prime_UTR_premature_start_codon_gain_variant",
        "5_prime_UTR_truncation",
        "3_prime_UTR_truncation",
        "splice_branch_variant",
        "non_coding_exon_variant",
        "exon_variant",
        "exon_region",
        "intragenic_variant",
        "intergenic_region",
        "conserved_intergenic_variant",
        "conserved_intron_variant",
        "gene_variant",
        "transcript_variant",
        "transcript",
        "miRNA",
        "sequence_feature",
        "chromosome",
        "custom",
    }
)
CONSEQUENCE_TERMS = VEP_CONSEQUENCES | VEP_RETIRED_CONSEQUENCES | SNPEFF_EFFECTS
#: Known terms by lower case: a known term in another case (``Missense_Variant``) is taken as that term.
_CONSEQUENCE_BY_LOWER = {t.lower(): t for t in CONSEQUENCE_TERMS}

#: SnpEff ANN is a fixed layout of 16 fields (the ANN standard), declared in quotes in the header.
SNPEFF_ANN_FIELDS = (
    "Allele",
    "Annotation",
    "Annotation_Impact",
    "Gene_Name",
    "Gene_ID",
    "Feature_Type",
    "Feature_ID",
    "Transcript_BioType",
    "Rank",
    "HGVS.c",
    "HGVS.p",
    "cDNA.pos / cDNA.length",
    "CDS.pos / CDS.length",
    "AA.pos / AA.length",
    "Distance",
    "ERRORS / WARNINGS / INFO",
)
MUTATION_SUFFIX = "_mut"
BGZF_EOF = bytes.fromhex("1f8b08040000000000ff0600424302001b0003000000000000000000")


#: Columns of the variant-level table (``uns['variant_table']`` of the variants modality): one row per
#: record and gene it touches (one row with an empty gene for a record with none), whatever its outcome.
VARIANT_TABLE_COLUMNS = (
    "patient_id",
    "chrom",
    "pos",
    "ref",
    "alt",
    "gene",
    "consequence",
    "hgvsp",
    "transcript",
    "depth",
    "vaf",
    "filter",
    "outcome",
)
#: ``outcome`` of a counted row; every other outcome is the exclusion reason of its record (or gene).
COUNTED = "counted"
#: How a record's transcripts decide whether it counts for a gene (``ingest.variant_filters.transcripts``).
TRANSCRIPT_RULES = ("any", "canonical")


@dataclass(frozen=True)
class VariantFilters:
    """The per-record filters of ``ingest.variant_filters``, applied in this order.

    ``filter``: the FILTER values accepted (a record passes when its FILTER is ``.``, or every one of its
    values is listed); ``min_depth``: minimum read depth of the tumour sample (FORMAT DP, else the sum of
    FORMAT AD; a MAF's ``t_depth``); ``min_vaf``: minimum variant allele fraction of the tumour sample
    (FORMAT AF, else AD alt / sum(AD), the largest over ALT alleles; a MAF's ``t_alt_count / t_depth``);
    ``genes``: an allow-list of gene symbols (None: every gene); ``transcripts``: ``any`` counts a record for
    a gene when any of its transcripts of that gene is protein-altering, ``canonical`` only when the
    gene's representative transcript is (see :func:`representative_entries`).
    """

    filter: tuple[str, ...] = ("PASS",)
    min_depth: int = 0
    min_vaf: float = 0.0
    genes: frozenset[str] | None = None
    genes_path: str = ""
    transcripts: str = "any"

    def __post_init__(self) -> None:
        if self.min_depth < 0:
            raise MultimodalError(f"ingest.variant_filters.min_depth must be >= 0, got {self.min_depth}")
        if not 0 <= self.min_vaf <= 1:
            raise MultimodalError(f"ingest.variant_filters.min_vaf must be within 0..1, got {self.min_vaf}")
        if self.transcripts not in TRANSCRIPT_RULES:
            raise MultimodalError(
                f"ingest.variant_filters.transcripts must be one of {TRANSCRIPT_RULES}, got {self.transcripts!r}"
            )
        if not self.filter:
            raise MultimodalError("ingest.variant_filters.filter must list at least one FILTER value (e.g. PASS)")

    @classmethod
    def from_settings(
        cls,
        *,
        filter: Collection[str] | None = None,  # noqa: A002 - the VCF column's name
        min_depth: int | None = None,
        min_vaf: float | None = None,
        genes: str | Path | None = None,
        transcripts: str | None = None,
    ) -> VariantFilters:
        """Filters from config/CLI values (None: the default), the gene allow-list read from its file."""
        return cls(
            filter=tuple(filter) if filter else ("PASS",),
            min_depth=int(min_depth or 0),
            min_vaf=float(min_vaf or 0.0),
            genes=read_gene_list(genes) if genes else None,
            genes_path=str(genes or ""),
            transcripts=transcripts or "any",
        )

    def accepts_filter(self, values: Collection[str]) -> bool:
        """Whether a record's FILTER values (empty for ``.``) pass."""
        return not values or all(v in self.filter for v in values)

    def params(self) -> dict:
        """The settings as recorded in ``uns['ingest']['params']``."""
        return {
            "filter": list(self.filter),
            "min_depth": int(self.min_depth),
            "min_vaf": float(self.min_vaf),
            "genes": self.genes_path or None,
            "n_genes_allowed": len(self.genes) if self.genes is not None else None,
            "transcripts": self.transcripts,
        }


def read_gene_list(path: str | Path) -> frozenset[str]:
    """A gene allow-list: one symbol per line (its first tab/comma-separated field); ``#`` lines, blanks skipped."""
    path = Path(path)
    if not path.is_file():
        raise MultimodalError(f"{path}: gene list (ingest.variant_filters.genes) not found")
    genes = set()
    try:
        with open(path, encoding="utf-8-sig") as handle:
            for line in handle:
                if line.strip() and not line.startswith("#"):
                    genes.add(re.split(r"[\t,]", line.strip(), maxsplit=1)[0].strip())
    except (OSError, UnicodeDecodeError) as exc:
        raise MultimodalError(f"{path}: cannot read gene list: {exc}") from exc
    if not genes:
        raise MultimodalError(f"{path}: gene list (ingest.variant_filters.genes) names no gene")
    return frozenset(genes)


@dataclass
class PatientVariants:
    """What one patient's call set contributes: protein-altering counts per gene and tallies."""

    gene_counts: Counter = field(default_factory=Counter)
    n_records: int = 0
    n_pass: int = 0
    excluded: Counter = field(default_factory=Counter)
    #: the variant-level rows (:data:`VARIANT_TABLE_COLUMNS` without ``patient_id``), as tuples (pysam
    #: reader) or, from the columnar reader, as ``table``; :meth:`variant_rows` gives either as a frame
    rows: list = field(default_factory=list)
    table: dict[str, np.ndarray] | None = None
    #: the sample column read as the tumour ("" for a VCF without sample columns)
    tumour_sample: str = ""
    #: a bgzipped VCF or a BCF with neither ``.tbi`` nor ``.csi`` beside it (read in full, which is fine
    #: for one patient's calls; counted so that a run on unindexed files is visible in the provenance)
    without_index: bool = False
    #: which reader counted the records: ``columnar`` (:mod:`multimodal.ingest.vcf_columnar`) or ``pysam``
    reader: str = ""

    def variant_rows(self) -> pd.DataFrame:
        """The variant-level rows as a frame (:data:`VARIANT_TABLE_COLUMNS` without ``patient_id``)."""
        if self.table is not None:
            return pd.DataFrame(self.table)
        return pd.DataFrame(self.rows, columns=list(VARIANT_TABLE_COLUMNS[1:]))

    def has_rows(self) -> bool:
        """Whether any record gave a variant-level row."""
        return bool(self.rows) or (self.table is not None and len(self.table["gene"]) > 0)


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


def _has_index(path: Path) -> bool:
    """A tabix (``.tbi``) or CSI (``.csi``) index beside a bgzipped VCF or a BCF, as htslib looks for it."""
    return any(Path(f"{path}{suffix}").is_file() for suffix in (".tbi", ".csi"))


@dataclass(frozen=True)
class AnnotationLayout:
    """Where the consequence annotations are: the INFO key, its declared fields and the three we read."""

    key: str
    fields: tuple[str, ...]
    consequence_at: int
    symbol_at: int
    gene_id_at: int
    declared_by: str  # how the message names the declaration ("the header's CSQ Format")


def _info_keys_summary(info) -> str:
    """The header's INFO keys for a message, flagging any that looks like VEP or SnpEff output."""
    if not len(info):
        return "the header declares no INFO keys"
    keys = sorted(info)
    shown = ", ".join(keys[:30]) + (f", ... ({len(keys)} in all)" if len(keys) > 30 else "")
    text = f"the header declares INFO {shown}"
    bcsq = next((m for k in keys if (m := bcftools_csq_message(k, info[k].description or ""))), None)
    if bcsq:
        return f"{text}; {bcsq}"
    vep_like = [k for k in keys if "Format:" in (info[k].description or "")]
    snpeff_like = [k for k in keys if _snpeff_field_list(info[k].description or "")]
    if vep_like:
        text += (
            f"; INFO/{vep_like[0]} looks like VEP output (its Description has 'Format:'): set "
            f"ingest.annotation_field: {vep_like[0]} (--annotation-field {vep_like[0]})"
        )
    elif snpeff_like:
        text += (
            f"; INFO/{snpeff_like[0]} looks like SnpEff output: set ingest.annotation_field: {snpeff_like[0]} "
            f"(--annotation-field {snpeff_like[0]})"
        )
    return text


def bcftools_csq_message(key: str, description: str) -> str | None:
    """The one-line explanation when INFO/``key`` is bcftools csq's annotation (``BCSQ``), which is not read:
    its consequence terms are bcftools' own and which sample carries which consequence is in a per-sample
    haplotype bitmask (FORMAT/BCSQ), not per ALT allele; None for any other key."""
    if key != "BCSQ" and "bcftools/csq" not in description.lower():
        return None
    return (
        f"INFO/{key} is bcftools csq's haplotype-aware annotation, which multimodal does not read (its own "
        "consequence terms, carriers in FORMAT/BCSQ bitmasks): annotate the calls with VEP (INFO/CSQ) or SnpEff "
        "(INFO/ANN), or give them as a MAF"
    )


def _snpeff_field_list(description: str) -> list[str]:
    """SnpEff's declared ANN fields (``'Allele | Annotation | ...'``), or [] when the Description has none."""
    match = re.search(r"'([^']*\|[^']*)'", description)
    if not match:
        return []
    fields = [f.strip() for f in match.group(1).split("|")]
    return fields if {"Annotation", "Gene_Name"} <= set(fields) else []


def _annotation_layout(header, path: Path, annotation_field: str | None = None) -> AnnotationLayout:
    """Which INFO key holds consequence annotations and the field names inside it.

    VEP declares its fields after ``Format:`` (in ``CSQ``, in ``ANN`` with ``--vcf_info_field ANN``, or in
    any key named by ``--vcf_info_field``, given here as ``annotation_field``); SnpEff's ``ANN`` declares
    its fixed layout in quotes (``'Allele | Annotation | ...'``), 16 fields by the ANN standard.
    """
    info = header.info
    if annotation_field:
        if annotation_field not in info:
            raise MultimodalError(
                f"{path}: INFO/{annotation_field} (ingest.annotation_field) is not declared in the header; "
                f"{_info_keys_summary(info)}"
            )
        candidates: tuple[str, ...] = (annotation_field,)
    else:
        candidates = tuple(k for k in ("CSQ", "ANN") if k in info)
    for key in candidates:
        declared = info[key]
        if declared.type != "String":
            raise MultimodalError(
                f"{path}: INFO/{key} is declared Type={declared.type}; VEP and SnpEff annotations are Type=String"
            )
        description = declared.description or ""
        if message := bcftools_csq_message(key, description):
            raise MultimodalError(f"{path}: {message}")
        if "Format:" in description:
            fields = [f.strip() for f in description.split("Format:", 1)[1].strip().strip("\"'").split("|")]
            for needed in ("Consequence", "SYMBOL"):
                if needed not in fields:
                    raise MultimodalError(f"{path}: the INFO/{key} Format in the header lacks the {needed} field")
            symbol_at = fields.index("SYMBOL")
            return AnnotationLayout(
                key,
                tuple(fields),
                fields.index("Consequence"),
                symbol_at,
                fields.index("Gene") if "Gene" in fields else symbol_at,
                f"the header's {key} Format",
            )
        snpeff = _snpeff_field_list(description)
        if snpeff:
            gene_at = snpeff.index("Gene_ID") if "Gene_ID" in snpeff else snpeff.index("Gene_Name")
            return AnnotationLayout(
                key,
                tuple(snpeff),
                snpeff.index("Annotation"),
                snpeff.index("Gene_Name"),
                gene_at,
                f"the header's {key} field list",
            )
        if key == "ANN":  # SnpEff's ANN with its field list left out: the standard's
            return AnnotationLayout(key, SNPEFF_ANN_FIELDS, 1, 3, 4, "the ANN standard (SnpEff)")
        raise MultimodalError(
            f"{path}: INFO/{key} declares no field list (VEP writes 'Format: Allele|Consequence|...', SnpEff "
            "'Allele | Annotation | ...' in its Description); cannot tell which field is the consequence"
        )
    if "EFF" in info and not annotation_field:
        raise MultimodalError(f"{path}: INFO/EFF is SnpEff's pre-4.0 format; re-annotate with SnpEff >= 4 (INFO/ANN)")
    raise MultimodalError(
        f"{path}: no consequence annotation (INFO/CSQ from VEP or INFO/ANN from SnpEff); {_info_keys_summary(info)}; "
        "annotate the calls with VEP or SnpEff, or give them as a cohort MAF (e.g. from vcf2maf) with maf_sample"
    )


# --- naming a record, and explaining what htslib could not read ------------------------------------------


def _open_text(path: Path):
    """A binary handle on a VCF's text: BGZF is gzip, so Python's gzip reads a bgzipped VCF."""
    import gzip

    with open(path, "rb") as handle:
        magic = handle.read(2)
    return gzip.open(path, "rb") if magic == b"\x1f\x8b" else open(path, "rb")


def _show(raw: bytes, limit: int = 60) -> str:
    text = raw.rstrip(b"\r\n").decode("utf-8", "replace")
    return repr(text if len(text) <= limit else text[:limit] + "...")


class _Lines:
    """Line numbers of a text VCF's records, found by reading the file again only on an error path.

    htslib refuses blank and ``#`` lines after the header, so the k-th record is the k-th line after
    the header lines.
    """

    def __init__(self, path: Path, text: bool) -> None:
        self.path, self.text = path, text
        self._n_header: int | None = None

    def n_header(self) -> int:
        if self._n_header is None:
            n = 0
            with _open_text(self.path) as handle:
                for line in handle:
                    if not line.startswith(b"#"):
                        break
                    n += 1
            self._n_header = n
        return self._n_header

    def record_line(self, ordinal: int) -> tuple[int, bytes | None]:
        """(line number, raw line) of the ``ordinal``-th record (1-based); the line is None past the end."""
        number = self.n_header() + ordinal
        try:
            with _open_text(self.path) as handle:
                for k, line in enumerate(handle, start=1):
                    if k == number:
                        return number, line
        except (OSError, EOFError):
            pass
        return number, None

    def where(self, ordinal: int, chrom: str, pos: int) -> str:
        """``line 12 (chr1:100)`` for a text VCF; ``record 5 (chr1:100)`` for a BCF."""
        if self.text:
            return f"line {self.n_header() + ordinal} ({chrom}:{pos})"
        return f"record {ordinal} ({chrom}:{pos})"


def _header_problem(path: Path, message: str) -> str:
    """Why htslib refused a file's header, said from the text itself (htslib only asks 'is it VCF/BCF format?')."""
    try:
        with _open_text(path) as handle:
            start = handle.read(4)
            if start[:3] == b"BCF":
                return f"{path}: htslib cannot read this BCF's header ({message}); check it with bcftools view -h"
            handle.seek(0)
            lines = []
            for line in handle:
                lines.append(line)
                if not line.startswith(b"#") or len(lines) > 100_000:
                    break
    except (OSError, EOFError) as exc:
        return f"{path}: cannot read the file: {exc}"
    if not lines or not lines[0].strip():
        found = "the file is empty" if not lines else "line 1 is empty"
        return f"{path}: {found}; line 1 of a VCF is ##fileformat=VCFv4.x"
    first = lines[0]
    if first.startswith(b"\xef\xbb\xbf"):
        return f"{path}: line 1 starts with a byte-order mark (BOM); save the file without it"
    if not first.startswith(b"##fileformat=VCFv4"):
        what = "is missing" if not first.startswith(b"##fileformat") else "is not VCFv4.x"
        return f"{path}: line 1 should be ##fileformat=VCFv4.x (the ##fileformat line {what}); found {_show(first)}"
    for number, line in enumerate(lines, start=1):
        if line.startswith(b"##"):
            continue
        if line.startswith(b"#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO"):
            break
        if line.startswith(b"#"):
            return (
                f"{path}: line {number}: the column header line must be tab-separated "
                f"#CHROM POS ID REF ALT QUAL FILTER INFO [FORMAT samples...]; found {_show(line)}"
            )
        return f"{path}: line {number}: a record before the #CHROM column header line (the header ends with it)"
    return f"{path}: htslib cannot read the VCF header ({message})"


def _record_problem(line: bytes | None, n_columns: int) -> str | None:
    """What is wrong with a text record htslib could not parse, or None when it cannot be told."""
    if line is None:
        return None
    if not line.strip():
        return "the line is empty (a VCF has no blank lines; delete it)"
    if line.startswith(b"#"):
        return f"a '#' line after the #CHROM header line: {_show(line)}"
    columns = line.rstrip(b"\r\n").split(b"\t")
    if len(columns) < 8:
        if len(line.split()) >= 8:
            return "columns separated by spaces, not tabs"
        return (
            f"{len(columns)} tab-separated columns; a record has at least 8 "
            f"(CHROM POS ID REF ALT QUAL FILTER INFO): {_show(line)}"
        )
    if len(columns) != n_columns and len(columns) != 8:
        return f"{len(columns)} tab-separated columns, the #CHROM header line has {n_columns}"
    pos = columns[1]
    if not (pos.isdigit() and int(pos) >= 1):
        return f"POS {_show(pos)} is not a positive whole number"
    return None


_BASES = re.compile(r"[ACGTN]+", re.IGNORECASE)
#: ALT alleles: bases, '*' (overlapping deletion), symbolic <ID>, breakends (t[p[, ]p]t, .t, t.)
_ALT = re.compile(r"\.?[ACGTN]+\.?|\*|<[^<>]+>|[ACGTN]*[\[\]][^\[\]]+[\[\]][ACGTN]*", re.IGNORECASE)


def read_patient_variants(
    path: str | Path,
    *,
    annotation_field: str | None = None,
    tumour_sample: str | None = None,
    filters: VariantFilters | None = None,
    columnar: bool = True,
) -> PatientVariants:
    """Count PASS protein-altering variants per gene in one VCF/BCF (plain, bgzipped or BCF).

    ``tumour_sample``: the sample column that is the tumour (a tumour/normal VCF); None reads the only
    sample column, and a VCF with several is refused naming them. ``filters``: the FILTER set, depth, VAF
    and gene filters (default: FILTER PASS or ``.``, nothing else). Every record, counted or not, gives
    rows of the variant-level table (``result.rows``), its consequence and HGVSp those of the gene's
    representative transcript (:func:`representative_entries`).

    ``annotation_field``: the INFO key holding VEP/SnpEff annotations (VEP's ``--vcf_info_field``);
    None tries ``CSQ``, then ``ANN``. Every record is checked, whatever its FILTER: POS at least 1 (and
    within its contig when the header gives the length), REF of A/C/G/T/N only, valid ALT alleles, and
    each annotation entry with as many ``|``-separated fields as the header declares, and each of its
    ``&``-joined consequence terms in :data:`CONSEQUENCE_TERMS` (VEP's and SnpEff's); any other record
    stops the run with one line naming the file, the record and the value.

    ``columnar``: read a text VCF's records as columns (:mod:`multimodal.ingest.vcf_columnar`) when it
    passes that reader's checks; any file it does not fully check, every BCF, and ``columnar=False`` are
    read record by record with pysam, which gives the same counts and table and every one-line error.
    The header is always parsed by htslib (pysam). ``result.reader`` says which reader counted.
    """
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
        try:
            vcf = pysam.VariantFile(str(path))
        except (OSError, ValueError) as exc:
            message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise MultimodalError(_header_problem(path, message)) from exc
        with vcf:
            text = vcf.format != "BCF"
            result.without_index = vcf.compression != "NONE" and not _has_index(path)
            lines = _Lines(path, text)
            tumour = _tumour_column(vcf.header, path, tumour_sample)
            result.tumour_sample = tumour or ""
            _count_records(
                vcf, path, annotation_field, lines, result, tumour, filters or VariantFilters(), columnar=columnar
            )
    finally:
        pysam.set_verbosity(verbosity)
    return result


def _tumour_column(header, path: Path, tumour_sample: str | None) -> str | None:
    """The tumour's sample column: the one named, else the only one; None for a VCF without sample columns."""
    names = list(header.samples)
    if tumour_sample:
        if tumour_sample not in names:
            shown = ", ".join(names) if names else "none"
            raise MultimodalError(
                f"{path}: no sample column {tumour_sample!r} (tumour_sample in the samples sheet); "
                f"its sample columns: {shown}"
            )
        return tumour_sample
    if len(names) > 1:
        raise MultimodalError(
            f"{path}: {len(names)} sample columns ({', '.join(names[:10])}{', ...' if len(names) > 10 else ''}); "
            "name the tumour's in the samples sheet's tumour_sample column"
        )
    return names[0] if names else None


#: Tier-1 base counts of a Strelka2 somatic SNV VCF (FORMAT AU/CU/GU/TU), and its indel counts (TAR/TIR).
STRELKA_BASE_COUNTS = ("AU", "CU", "GU", "TU")


def caller_allele_depths(formats) -> str | None:
    """The caller whose own FORMAT fields hold a VCF's allele depths, where it has neither FORMAT AF nor a
    per-allele AD (Number=R or .): ``strelka2`` (somatic: AU/CU/GU/TU tier-1 base counts for SNVs, TAR/TIR for
    indels), ``varscan2`` (RD reference and AD alternate depth, Number=1 each), ``freebayes`` (RO, AO); else None.
    """
    keys = set(formats.keys())
    if "AF" in keys or ("AD" in keys and str(formats["AD"].number) in ("R", ".")):
        return None
    if set(STRELKA_BASE_COUNTS) <= keys or {"TAR", "TIR"} <= keys:
        return "strelka2"
    if {"RD", "AD"} <= keys:
        return "varscan2"
    if {"RO", "AO"} <= keys:
        return "freebayes"
    return None


def _first(value) -> float | None:
    """A FORMAT value's first number (Strelka2's tier 1 of two), None when missing."""
    if isinstance(value, tuple):
        value = value[0] if value else None
    return None if value is None else float(value)


def _caller_depths(caller: str, record, sample) -> tuple[float | None, list[float]]:
    """(reference depth, each ALT allele's depth) of one sample from the caller's own fields (None/[] missing)."""
    if caller == "strelka2":
        alts = list(record.alts or ())
        snv = len(record.ref) == 1 and alts and all(len(a) == 1 for a in alts)
        if snv and f"{record.ref.upper()}U" in sample:
            counts = [_first(sample.get(f"{base.upper()}U")) if base.upper() in "ACGT" else None for base in alts]
            return _first(sample.get(f"{record.ref.upper()}U")), [c for c in counts if c is not None]
        if "TAR" in sample and "TIR" in sample:
            alt = _first(sample.get("TIR"))
            return _first(sample.get("TAR")), [] if alt is None else [alt]
        return None, []
    if caller == "varscan2":
        alt = _first(sample.get("AD"))
        return _first(sample.get("RD")), [] if alt is None else [alt]
    alts = sample.get("AO")  # freebayes: one count per ALT
    alts = [float(a) for a in (alts if isinstance(alts, tuple) else (alts,)) if a is not None]
    return _first(sample.get("RO")), alts


def _format_reader(header, path: Path, tumour: str | None, filters: VariantFilters):
    """A function giving (depth, VAF) of the tumour sample of a record (None where not given).

    Depth: FORMAT DP, else the sum of AD. VAF: FORMAT AF (the largest over ALT alleles), else the largest
    AD alt / sum(AD). A VCF with neither AF nor a per-allele AD whose caller keeps allele depths in fields of
    its own (:func:`caller_allele_depths`: Strelka2, VarScan2, FreeBayes) gives the largest ALT depth over the
    reference plus ALT depths, and that sum as the depth where there is no DP. A depth or VAF filter on a VCF
    whose header declares no source of it is refused.
    """
    formats = header.formats
    has = {key: key in formats for key in ("DP", "AD", "AF")}
    caller = caller_allele_depths(formats)
    if filters.min_depth and (tumour is None or not (has["DP"] or has["AD"] or caller)):
        why = "has no sample columns" if tumour is None else "declares neither FORMAT DP nor FORMAT AD"
        raise MultimodalError(f"{path}: ingest.variant_filters.min_depth is set but the VCF {why}")
    if filters.min_vaf and (tumour is None or not (has["AF"] or has["AD"] or caller)):
        why = "has no sample columns" if tumour is None else "declares neither FORMAT AF nor FORMAT AD"
        raise MultimodalError(f"{path}: ingest.variant_filters.min_vaf is set but the VCF {why}")
    if tumour is None:
        return lambda record: (None, None)

    def values(record) -> tuple[float | None, float | None]:
        sample = record.samples[tumour]
        depth = sample.get("DP") if has["DP"] else None
        if caller is not None:
            ref, alts = _caller_depths(caller, record, sample)
            total = (ref or 0.0) + sum(alts) if ref is not None or alts else None
            if depth is None and total is not None:
                depth = total
            return depth, (max(alts) / total if alts and total else None)
        ad = sample.get("AD") if has["AD"] else None
        ad = [a for a in ad if a is not None] if isinstance(ad, tuple) else []
        if depth is None and ad:
            depth = sum(ad)
        vaf = None
        if has["AF"]:
            af = sample.get("AF")
            af = [a for a in (af if isinstance(af, tuple) else (af,)) if a is not None]
            vaf = max(af) if af else None
        if vaf is None and len(ad) > 1 and sum(ad) > 0:
            vaf = max(ad[1:]) / sum(ad)
        return depth, vaf

    return values


def representative_entries(
    entries: list[tuple[list[str], list[str]]], canonical_at: int, mane_at: int, feature_at: int
) -> list[int]:
    """Which of one gene's annotation entries stand for it: the canonical transcript's, else MANE's, else the first's.

    VEP run with ``--canonical`` writes ``CANONICAL=YES`` on the Ensembl canonical transcript; with
    ``--mane_select`` it names the MANE Select transcript in ``MANE_SELECT`` (``MANE`` in older releases).
    SnpEff declares neither, so its first transcript for the gene (SnpEff sorts by severity) stands for it.
    A multi-allelic record has one entry per ALT allele and transcript: every allele's entry of the chosen
    transcript is returned.
    """
    for at in (canonical_at, mane_at):
        if at >= 0:
            chosen = [k for k, (parts, _) in enumerate(entries) if parts[at].strip() not in ("", "NO")]
            if chosen:
                return chosen
    if feature_at >= 0:
        first = entries[0][0][feature_at]
        return [k for k, (parts, _) in enumerate(entries) if parts[feature_at] == first]
    return [0]


def _shown_entry(entries: list[tuple[list[str], list[str]]], chosen: list[int]) -> tuple[list[str], list[str]]:
    """The representative entry the variant table shows: the first protein-altering one, else the first."""
    for k in chosen:
        if PROTEIN_ALTERING.intersection(entries[k][1]):
            return entries[k]
    return entries[chosen[0]]


def _field_at(layout: AnnotationLayout, *names: str) -> int:
    return next((layout.fields.index(n) for n in names if n in layout.fields), -1)


def _count_records(
    vcf,
    path: Path,
    annotation_field: str | None,
    lines: _Lines,
    result: PatientVariants,
    tumour: str | None,
    filters: VariantFilters,
    *,
    columnar: bool = True,
) -> None:
    layout = _annotation_layout(vcf.header, path, annotation_field)
    canonical_at = _field_at(layout, "CANONICAL")
    mane_at = _field_at(layout, "MANE_SELECT", "MANE")
    hgvsp_at = _field_at(layout, "HGVSp", "HGVS.p")
    feature_at = _field_at(layout, "Feature", "Feature_ID")
    depth_vaf = _format_reader(vcf.header, path, tumour, filters)
    rows = result.rows
    key, n_fields = layout.key, len(layout.fields)
    contig_length = {name: contig.length for name, contig in vcf.header.contigs.items() if contig.length}
    n_columns = 8 + (1 + len(vcf.header.samples) if len(vcf.header.samples) else 0)
    if columnar and lines.text:
        from multimodal.ingest.vcf_columnar import Declined, count_columnar

        try:
            found = count_columnar(path, vcf.header, layout, tumour, filters, contig_length)
        except Declined as exc:  # read record by record below: same counts, and pysam's exact errors
            log.debug("%s: read record by record (the columnar reader declined: %s)", path, exc)
        else:
            result.n_records, result.n_pass = found.n_records, found.n_pass
            result.excluded, result.gene_counts, result.table = found.excluded, found.gene_counts, found.table
            result.reader = "columnar"
            return
    result.reader = "pysam"
    records = iter(vcf)
    previous = ""
    while True:
        try:
            record = next(records)
        except StopIteration:
            break
        except (OSError, ValueError) as exc:
            message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            ordinal = result.n_records + 1
            after = f" (the one after {previous})" if previous else ""
            if not lines.text:
                raise MultimodalError(
                    f"{path}: record {ordinal}{after}: htslib cannot read it ({message}); check the file with "
                    "bcftools view"
                ) from exc
            number, line = lines.record_line(ordinal)
            # htslib says "truncated file" for any record it cannot parse; the file's end was checked above.
            detail = "" if "truncated" in message else f" ({message})"
            problem = _record_problem(line, n_columns) or (
                f"htslib cannot parse this record{detail}; check its QUAL, INFO, FORMAT and sample columns "
                "against the header"
            )
            raise MultimodalError(f"{path}: line {number}{after}: {problem}") from exc
        result.n_records += 1
        chrom, pos = record.chrom, record.pos
        previous = f"{chrom}:{pos}"
        if pos < 1:
            where = lines.where(result.n_records, chrom, pos)
            value = str(pos)
            if lines.text:
                _, line = lines.record_line(result.n_records)
                columns = line.split(b"\t") if line else []
                value = _show(columns[1]) if len(columns) > 1 else value
            raise MultimodalError(f"{path}: {where}: POS {value} is not a position (VCF positions start at 1)")
        if pos > contig_length.get(chrom, pos):
            raise MultimodalError(
                f"{path}: {lines.where(result.n_records, chrom, pos)}: POS {pos} is beyond the end of {chrom} "
                f"(length {contig_length[chrom]} in the header's ##contig line); calls on another reference?"
            )
        ref = record.ref
        if not ref or not _BASES.fullmatch(ref):
            raise MultimodalError(
                f"{path}: {lines.where(result.n_records, chrom, pos)}: REF {ref!r} is not a sequence of A, C, G, T, N"
            )
        for alt in record.alts or ():
            if not _ALT.fullmatch(alt):
                raise MultimodalError(
                    f"{path}: {lines.where(result.n_records, chrom, pos)}: ALT allele {alt!r} is neither bases "
                    "(A, C, G, T, N), '*', a symbolic <ID> nor a breakend"
                )
        try:
            annotations = record.info.get(key)
        except (ValueError, KeyError) as exc:
            raise MultimodalError(
                f"{path}: {lines.where(result.n_records, chrom, pos)}: cannot read INFO/{key}: {exc}"
            ) from exc
        if isinstance(annotations, str):
            annotations = annotations.split(",")
        entries: list[tuple[list[str], list[str]]] = []  # (fields, consequence terms) of each entry
        for i, annotation in enumerate(annotations or (), start=1):
            parts = annotation.split("|")
            if len(parts) != n_fields:
                entry = f" ({annotation[:80]!r}{'...' if len(annotation) > 80 else ''})"
                raise MultimodalError(
                    f"{path}: {lines.where(result.n_records, chrom, pos)}: INFO/{key} entry {i} has {len(parts)} "
                    f"'|'-separated fields, {layout.declared_by} declares {n_fields}{entry}"
                )
            consequence = parts[layout.consequence_at]
            terms = [t.strip() for t in consequence.split("&")]
            if not CONSEQUENCE_TERMS.issuperset(terms):
                terms = _known_terms(terms, consequence, path, lines.where(result.n_records, chrom, pos), layout, i)
            entries.append((parts, terms))
        record_filters = list(record.filter.keys())
        depth, vaf = depth_vaf(record)
        if vaf is not None and not 0 <= vaf <= 1:
            raise MultimodalError(
                f"{path}: {lines.where(result.n_records, chrom, pos)}: FORMAT AF {vaf:.6g} of sample {tumour} "
                "is not an allele fraction (0..1)"
            )
        by_gene: dict[str, list[tuple[list[str], list[str]]]] = {}
        for parts, terms in entries:
            # A transcript without an HGNC symbol (novel genes) is counted under its gene ID.
            gene = parts[layout.symbol_at].strip() or parts[layout.gene_id_at].strip()
            if gene:
                by_gene.setdefault(gene, []).append((parts, terms))
        outcome = ""  # the record's exclusion, if any, before genes are looked at
        if not filters.accepts_filter(record_filters):
            outcome = "filter_not_pass"
        else:
            result.n_pass += 1
            if filters.min_depth and depth is None:
                outcome = "missing_depth"
            elif filters.min_depth and depth < filters.min_depth:
                outcome = "below_min_depth"
            elif filters.min_vaf and vaf is None:
                outcome = "missing_vaf"
            elif filters.min_vaf and vaf < filters.min_vaf:
                outcome = "below_min_vaf"
            elif not entries:
                outcome = "no_annotation"
            elif not by_gene:
                outcome = "no_gene_symbol"
        gene_outcome: dict[str, str] = {}
        shown: dict[str, tuple[list[str], list[str]]] = {}
        for gene, gene_entries in by_gene.items():
            chosen = representative_entries(gene_entries, canonical_at, mane_at, feature_at)
            shown[gene] = _shown_entry(gene_entries, chosen)
            if filters.transcripts == "canonical":
                altering = any(PROTEIN_ALTERING.intersection(gene_entries[k][1]) for k in chosen)
            else:
                altering = any(PROTEIN_ALTERING.intersection(terms) for _, terms in gene_entries)
            if outcome:
                gene_outcome[gene] = outcome
            elif not altering:
                gene_outcome[gene] = "not_protein_altering"
            elif filters.genes is not None and gene not in filters.genes:
                gene_outcome[gene] = "gene_not_in_allow_list"
            else:
                gene_outcome[gene] = COUNTED
        if not outcome:
            found = set(gene_outcome.values())
            if COUNTED in found:
                for gene, what in gene_outcome.items():
                    if what == COUNTED:
                        result.gene_counts[gene] += 1
            else:
                outcome = "gene_not_in_allow_list" if "gene_not_in_allow_list" in found else "not_protein_altering"
        if outcome:
            result.excluded[outcome] += 1
        filter_text = ";".join(record_filters) or "."
        alt = ",".join(record.alts or ())
        if not by_gene:
            rows.append((chrom, pos, ref, alt, "", "", "", "", depth, vaf, filter_text, outcome))
        for gene in by_gene:
            parts, terms = shown[gene]
            rows.append(
                (
                    chrom,
                    pos,
                    ref,
                    alt,
                    gene,
                    "&".join(terms),
                    parts[hgvsp_at] if hgvsp_at >= 0 else "",
                    parts[feature_at] if feature_at >= 0 else "",
                    depth,
                    vaf,
                    filter_text,
                    gene_outcome[gene],
                )
            )


def _known_terms(
    terms: list[str], consequence: str, path: Path, where: str, layout: AnnotationLayout, entry: int
) -> list[str]:
    """``terms`` as known consequence terms (one in another case taken as that term), or the error.

    A term outside :data:`CONSEQUENCE_TERMS` (a typo, another tool's vocabulary) would count as not
    protein-altering without a word, so the run stops naming the file, the record, the entry and the term.
    """
    known = [_CONSEQUENCE_BY_LOWER.get(t.lower(), t) for t in terms]
    unknown = next((t for t in known if t not in CONSEQUENCE_TERMS), None)
    if unknown is None:
        return known
    field_name = layout.fields[layout.consequence_at]
    shown = f"{consequence[:80]!r}{'...' if len(consequence) > 80 else ''}"
    if not consequence.strip():
        what = f"{field_name} is empty"
    elif not unknown:
        what = f"{field_name} {shown} has an empty term"
    else:
        close = difflib.get_close_matches(unknown.lower(), _CONSEQUENCE_BY_LOWER, n=3, cutoff=0.8)
        hint = f" (did you mean {' or '.join(repr(_CONSEQUENCE_BY_LOWER[c]) for c in close)}?)" if close else ""
        if len(terms) > 1:
            what = f"{field_name} {shown} has the unknown term {unknown!r}{hint}"
        else:
            what = f"{field_name} {unknown!r} is not a known consequence term{hint}"
    raise MultimodalError(
        f"{path}: {where}: INFO/{layout.key} entry {entry}: {what}; the known vocabulary is the Sequence Ontology "
        "terms of Ensembl VEP and SnpEff (multimodal.ingest.variants.CONSEQUENCE_TERMS); annotate the calls with "
        "VEP or SnpEff, or fix the term"
    )


#: MAF ``Variant_Classification`` values that change the protein (the MAF counterpart of the VEP
#: HIGH/MODERATE set above): GDC/MC3/vcf2maf/cBioPortal classes, Oncotator's start/stop codon classes
#: and the per-variant-type splice/start/stop classes of older TCGA (Broad) MAFs.
MAF_PROTEIN_ALTERING = frozenset(
    {
        "Missense_Mutation",
        "Nonsense_Mutation",
        "Nonstop_Mutation",
        "Frame_Shift_Del",
        "Frame_Shift_Ins",
        "Frame_Shift_Sub",
        "In_Frame_Del",
        "In_Frame_Ins",
        "Splice_Site",
        "Translation_Start_Site",
        *(f"Splice_Site_{t}" for t in ("SNP", "DNP", "TNP", "ONP", "Del", "Ins")),
        *(f"Start_Codon_{t}" for t in ("SNP", "DNP", "TNP", "ONP", "Del", "Ins")),
        *(f"Stop_Codon_{t}" for t in ("SNP", "DNP", "TNP", "ONP", "Del", "Ins")),
    }
)
#: Known classes that leave the protein as it is (or lie outside it): counted as not protein-altering.
#: De_novo_Start_* are 5' UTR changes; a cBioPortal ``Fusion`` row is a structural event, not a call.
MAF_NOT_PROTEIN_ALTERING = frozenset(
    {
        "Silent",
        "Intron",
        "3'UTR",
        "5'UTR",
        "3'Flank",
        "5'Flank",
        "IGR",
        "RNA",
        "lincRNA",
        "Splice_Region",
        "Targeted_Region",
        "De_novo_Start_InFrame",
        "De_novo_Start_OutOfFrame",
        "Fusion",
    }
)
#: Classes saying the annotator could not classify the variant: known, not counted, tallied on their own.
MAF_UNCLASSIFIED = frozenset({"Unknown", "COULD_NOT_DETERMINE"})
MAF_KNOWN_CLASSES = MAF_PROTEIN_ALTERING | MAF_NOT_PROTEIN_ALTERING | MAF_UNCLASSIFIED
MAF_REQUIRED = ("Hugo_Symbol", "Variant_Classification", "Tumor_Sample_Barcode")


def _maf_header(path: Path) -> tuple[list[str], int]:
    """The MAF's column names and how many leading ``#`` lines (``#version 2.4`` ...) precede them."""
    from multimodal.ingest.textfile import open_text

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


def _maf_classes(values: pd.Series, path: Path, n_comments: int) -> pd.Series:
    """``Variant_Classification`` stripped, and checked: a class not known (a typo, another tool's
    vocabulary) would silently count as not protein-altering, so the run stops naming its lines.

    A known class written in another case (``missense_mutation``) is taken as that class.
    """
    classes = values.str.strip()
    unknown = ~classes.isin(MAF_KNOWN_CLASSES)
    if not unknown.any():
        return classes
    by_lower = {c.lower(): c for c in MAF_KNOWN_CLASSES}
    fixed = classes[unknown].str.lower().map(by_lower)
    classes = classes.where(~unknown, fixed.fillna(classes[unknown]))
    unknown = ~classes.isin(MAF_KNOWN_CLASSES)
    if not unknown.any():
        return classes
    rows = np.flatnonzero(unknown.to_numpy())
    numbers = _maf_line_numbers(path, n_comments, rows[:10])
    shown = ", ".join(f"line {n} {v!r}" for n, v in zip(numbers, classes.iloc[rows[:10]], strict=True))
    more = f" (the first 10 of {len(rows)})" if len(rows) > 10 else ""
    raise MultimodalError(
        f"{path}: unknown Variant_Classification on {len(rows)} line(s): {shown}{more}; "
        f"accepted: {', '.join(sorted(MAF_KNOWN_CLASSES, key=str.lower))}"
    )


def _maf_line_numbers(path: Path, n_comments: int, rows: np.ndarray) -> list[int | str]:
    """1-based line numbers of the MAF's 0-based data rows as pandas numbers them (blank lines skipped)."""
    import gzip

    wanted = {int(r): "?" for r in rows}
    left = len(wanted)
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    row = -1
    with opener(path, "rb") as handle:
        for number, line in enumerate(handle, start=1):
            if number <= n_comments + 1 or not line.strip(b" \r\n"):
                continue
            row += 1
            if row in wanted:
                wanted[row] = number
                left -= 1
                if not left:
                    break
    return [wanted[int(r)] for r in rows]


MAF_DEPTH_COLUMNS = ("t_depth", "t_alt_count")
#: MAF columns copied into the variant-level table when present.
MAF_TABLE_COLUMNS = {
    "Chromosome": "chrom",
    "Start_Position": "pos",
    "Reference_Allele": "ref",
    "Tumor_Seq_Allele2": "alt",
    "HGVSp_Short": "hgvsp",
    "Transcript_ID": "transcript",
}


def _read_maf_columns(path: Path, header: list[str], n_comments: int, columns: list[str]) -> pd.DataFrame:
    """The MAF's ``columns`` as strings, read by Arrow's multithreaded CSV reader.

    Arrow checks every row's field count while it parses (a row cut short or with an extra tab is an
    error, even for columns not read), so no separate pass is needed; on that error path the offending
    line is found and named. Quotes are not special and empty cells stay empty strings.
    """
    import pyarrow as pa
    import pyarrow.csv as pacsv

    from multimodal.ingest.textfile import check_field_counts

    try:
        table = pacsv.read_csv(
            path,
            read_options=pacsv.ReadOptions(skip_rows=n_comments + 1, column_names=header, block_size=1 << 24),
            parse_options=pacsv.ParseOptions(delimiter="\t", quote_char=False, double_quote=False),
            convert_options=pacsv.ConvertOptions(
                include_columns=columns,
                column_types={c: pa.string() for c in columns},
                strings_can_be_null=False,
                quoted_strings_can_be_null=False,
            ),
        )
    except (pa.ArrowInvalid, OSError, EOFError) as exc:
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if "Expected" in message and "columns" in message:
            check_field_counts(path, sep="\t", first_line=n_comments + 2, n_fields=len(header), what="MAF")
        if "UTF8" in message or "UTF-8" in message:
            message = "a cell is not UTF-8 text (a Latin-1 or Windows-1252 export?); save it as UTF-8"
        raise MultimodalError(f"{path}: cannot read MAF (after {n_comments} '#' lines): {message}") from exc
    return table.to_pandas()


class FirstFailure:
    """Each record's first reason to leave it out, in the order the reasons are tried (FILTER first, then depth and
    VAF, then the caller's own); records no reason took stay ``undecided``. Shared by the MAF and the columnar VCF
    readers so that both order and name the outcomes as the record-by-record reader does."""

    def __init__(self, passed: np.ndarray) -> None:
        self.outcome = np.full(len(passed), "", dtype=object)
        self.outcome[~passed] = "filter_not_pass"
        self.undecided = passed.copy()
        self.reasons = ["filter_not_pass"]

    def decide(self, mask: np.ndarray, reason: str) -> None:
        hit = self.undecided & mask
        self.outcome[hit] = reason
        self.undecided &= ~hit
        self.reasons.append(reason)

    def depth_and_vaf(self, depth: np.ndarray | None, vaf: np.ndarray | None, filters: VariantFilters) -> None:
        """``ingest.variant_filters`` min_depth and min_vaf: a missing value, then one below the minimum."""
        with np.errstate(invalid="ignore"):
            if filters.min_depth:
                self.decide(np.isnan(depth), "missing_depth")
                self.decide(depth < filters.min_depth, "below_min_depth")
            if filters.min_vaf:
                self.decide(np.isnan(vaf), "missing_vaf")
                self.decide(vaf < filters.min_vaf, "below_min_vaf")


def read_maf(path: str | Path, *, filters: VariantFilters | None = None) -> dict[str, PatientVariants]:
    """Count PASS protein-altering variants per gene for every tumour sample of a MAF (plain or gzipped).

    See :func:`read_maf_with_table`, which also gives the variant-level table.
    """
    return read_maf_with_table(path, filters=filters)[0]


def read_maf_with_table(
    path: str | Path, *, filters: VariantFilters | None = None
) -> tuple[dict[str, PatientVariants], pd.DataFrame]:
    """Per tumour sample of a MAF, the counts of :func:`read_maf`, and the variant-level table of all rows.

    Records whose ``FILTER`` column (when present, as in GDC MAFs) is not accepted by ``filters.filter``
    (PASS or ``.`` by default; ``;``-joined values must all be accepted) are counted as filtered; depth
    and VAF filters read ``t_depth`` and ``t_alt_count``; ``Hugo_Symbol`` ``Unknown`` or empty counts as no
    gene symbol; a ``Variant_Classification`` outside :data:`MAF_KNOWN_CLASSES` stops the run, naming its
    lines. Only the needed columns are converted (so a multi-million-row, 120-column MAF fits in memory),
    by Arrow's CSV reader, which also checks each row's field count as it parses (no pass of its own);
    the tallies per sample are array operations (no loop over rows). Only leading ``#`` lines are
    skipped (a ``#`` inside a field is data) and quotes are not special, as in GDC MAFs. The table's
    ``patient_id`` column holds the Tumor_Sample_Barcode.
    """
    filters = filters or VariantFilters()
    path = Path(path)
    if not path.is_file():
        raise MultimodalError(f"{path}: MAF not found")
    header, n_comments = _maf_header(path)
    absent = [c for c in MAF_REQUIRED if c not in header]
    if absent:
        raise MultimodalError(f"{path}: MAF lacks column(s) {absent} (a tab-separated MAF header was expected)")
    needs_depth = bool(filters.min_depth or filters.min_vaf)
    lacking = [c for c in MAF_DEPTH_COLUMNS if c not in header]
    if needs_depth and lacking:
        raise MultimodalError(
            f"{path}: ingest.variant_filters min_depth/min_vaf need MAF column(s) {lacking}, which the header lacks"
        )
    optional = [c for c in ("FILTER", *MAF_DEPTH_COLUMNS, *MAF_TABLE_COLUMNS) if c in header]
    columns = list(dict.fromkeys([*MAF_REQUIRED, *optional]))
    if len(set(header)) != len(header):
        repeated = sorted({c for c in header if header.count(c) > 1})
        raise MultimodalError(f"{path}: MAF header repeats column(s) {repeated}")
    maf = _read_maf_columns(path, header, n_comments, columns)
    sample = maf["Tumor_Sample_Barcode"].str.strip()
    gene = maf["Hugo_Symbol"].str.strip()
    classes = _maf_classes(maf["Variant_Classification"], path, n_comments)
    if "FILTER" in maf:
        filt = maf["FILTER"].str.strip()
        passed = filt.isin(["PASS", ".", "", *filters.filter])
        joined = ~passed & filt.str.contains(";", regex=False)
        if joined.any():
            passed[joined] = [filters.accepts_filter(v.split(";")) for v in filt[joined]]
        passed = passed.to_numpy()
    else:
        filt = pd.Series(".", index=maf.index)
        passed = np.ones(len(maf), dtype=bool)
    depth = vaf = None
    if not lacking:
        depth = pd.to_numeric(maf["t_depth"].str.strip(), errors="coerce").to_numpy(dtype=float)
        alt_count = pd.to_numeric(maf["t_alt_count"].str.strip(), errors="coerce").to_numpy(dtype=float)
        with np.errstate(divide="ignore", invalid="ignore"):
            vaf = np.where(depth > 0, alt_count / depth, np.nan)
    first = FirstFailure(passed)
    first.depth_and_vaf(depth, vaf, filters)
    first.decide(gene.isin(["", "Unknown"]).to_numpy(), "no_gene_symbol")
    first.decide(classes.isin(MAF_UNCLASSIFIED).to_numpy(), "unclassified")
    first.decide(~classes.isin(MAF_PROTEIN_ALTERING).to_numpy(), "not_protein_altering")
    if filters.genes is not None:
        first.decide(~gene.isin(filters.genes).to_numpy(), "gene_not_in_allow_list")
    outcome, undecided, reasons = first.outcome, first.undecided, first.reasons
    outcome[undecided] = COUNTED
    codes, barcodes = pd.factorize(sample, sort=False)
    n_samples = len(barcodes)
    n_records = np.bincount(codes, minlength=n_samples)
    n_pass = np.bincount(codes, weights=passed, minlength=n_samples).astype(int)
    tallies = {r: np.bincount(codes, weights=outcome == r, minlength=n_samples).astype(int) for r in reasons}
    result = {
        str(barcode): PatientVariants(
            n_records=int(n_records[i]),
            n_pass=int(n_pass[i]),
            excluded=+Counter({r: int(tallies[r][i]) for r in reasons}),
        )
        for i, barcode in enumerate(barcodes)
    }
    counted = undecided
    pairs = pd.DataFrame({"code": codes[counted], "gene": gene.to_numpy()[counted]}).value_counts(sort=False)
    pair_codes = pairs.index.get_level_values(0).to_numpy()
    pair_genes = pairs.index.get_level_values(1).to_numpy()
    pair_n = pairs.to_numpy()
    order = np.argsort(pair_codes, kind="stable")
    bounds = np.searchsorted(pair_codes[order], np.arange(n_samples + 1))
    for i in np.flatnonzero(np.diff(bounds)):
        take = order[bounds[i] : bounds[i + 1]]
        result[str(barcodes[i])].gene_counts = Counter(dict(zip(pair_genes[take], pair_n[take].tolist(), strict=True)))

    def column(name: str) -> np.ndarray:
        return maf[name].to_numpy() if name in maf else np.full(len(maf), "", dtype=object)

    nothing = np.full(len(maf), np.nan)
    table = pd.DataFrame(
        {
            "patient_id": sample.to_numpy(),
            **{out: column(name) for name, out in MAF_TABLE_COLUMNS.items() if out not in ("hgvsp", "transcript")},
            "gene": gene.to_numpy(),
            "consequence": classes.to_numpy(),
            "hgvsp": column("HGVSp_Short"),
            "transcript": column("Transcript_ID"),
            "depth": nothing if depth is None else depth,
            "vaf": nothing if vaf is None else vaf,
            "filter": filt.to_numpy(),
            "outcome": outcome,
        }
    )
    return result, table


def _variant_table(
    per_patient: dict[str, PatientVariants],
    maf_table: pd.DataFrame | None,
    patient_of: dict[str, str],
    has_vcf: pd.Series,
) -> pd.DataFrame:
    """The variant-level table of the patients' VCF rows and their MAF rows (``patient_of``: barcode -> patient).

    ``pos``, ``depth`` and ``vaf`` are float64 (NaN where not given); every other column is categorical
    (:func:`_categorical`): the same strings as plain columns, written to the .h5ad as codes and one copy of
    each distinct value (as variable-length strings they took most of a chunk's writing time).
    """
    parts, columns = [], []
    for pid, pv in per_patient.items():
        if not (pv.has_rows() and has_vcf.get(pid, False)):
            continue
        # the patients' columns, joined below into one frame (one frame per patient costs ms each)
        table = pv.table if pv.table is not None else dict(pv.variant_rows().items())
        columns.append({"patient_id": np.full(len(table["gene"]), pid, dtype=object), **table})
    if columns:
        parts.append({c: np.concatenate([part[c] for part in columns]) for c in VARIANT_TABLE_COLUMNS})
    if maf_table is not None:
        claimed = maf_table["patient_id"].map(patient_of)
        rows = maf_table[claimed.notna().to_numpy()]
        parts.append({c: rows[c].to_numpy() for c in VARIANT_TABLE_COLUMNS[1:]})
        parts[-1]["patient_id"] = claimed[claimed.notna()].to_numpy()
    joined = {}
    for column in VARIANT_TABLE_COLUMNS:
        values = [part[column] for part in parts]
        if column in ("pos", "depth", "vaf"):
            numbers = [pd.to_numeric(pd.Series(v), errors="coerce").to_numpy(np.float64) for v in values]
            joined[column] = np.concatenate([np.zeros(0), *numbers])
        else:
            joined[column] = _categorical(np.concatenate([np.zeros(0, dtype=object), *values]))
    return pd.DataFrame(joined, columns=list(VARIANT_TABLE_COLUMNS))


def _categorical(values: np.ndarray) -> pd.Categorical:
    """A string column as a categorical: missing values as "", any other non-string value as its ``str``."""
    column = pd.Categorical(values)
    categories = column.categories
    if (column.codes < 0).any() or not (categories.dtype == object and all(isinstance(c, str) for c in categories)):
        column = pd.Categorical(pd.Series(values, dtype=object).fillna("").astype(str))
    return column


def mutation_matrix(
    samples: pd.DataFrame,
    *,
    maf: str | Path | None = None,
    maf_sheet_barcodes: Collection[str] | None = None,
    territory_mb: float = 38.0,
    annotation_field: str | None = None,
    filters: VariantFilters | None = None,
    progress: bool = True,
) -> anndata.AnnData:
    """Patients x genes counts of PASS protein-altering variants, plus tumour mutational burden.

    ``filters``: FILTER set, tumour depth/VAF and gene allow-list (:class:`VariantFilters`); a
    tumour/normal VCF's tumour column is named by the sheet's ``tumour_sample`` column.
    ``uns['variant_table']``: every record (by gene) of the patients, with its outcome
    (:data:`VARIANT_TABLE_COLUMNS`; ``counted`` or the exclusion reason); its string columns are categoricals,
    ``pos``, ``depth`` and ``vaf`` float64.

    ``samples``: index patient_id, column ``vcf`` (a per-patient VCF/BCF) and, with a cohort ``maf``,
    column ``maf_sample`` (the patient's Tumor_Sample_Barcode). A patient with neither has no variant
    calls (counted, not dropped); one listed in the sheet but absent from the MAF has no mutation that
    passed the MAF's own calling and is kept with zero counts (counted as
    ``maf_samples_without_records``). MAF barcodes claimed by no patient are counted against
    ``maf_sheet_barcodes`` (the whole sheet's, when ``samples`` is one chunk of it; pass an empty
    collection in all chunks but one so the count is made once). ``annotation_field``: the VCFs' INFO key
    of VEP/SnpEff annotations (None: ``CSQ``, then ``ANN``).

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
    filters = filters or VariantFilters()
    tumour = samples["tumour_sample"].astype(str) if "tumour_sample" in samples else pd.Series("", index=samples.index)
    per_patient: dict[str, PatientVariants] = {}
    maf_records, maf_table = {}, None
    if maf is not None and (has_maf.any() or maf_sheet_barcodes):
        maf_records, maf_table = read_maf_with_table(maf, filters=filters)
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
            per_patient[str(pid)] = read_patient_variants(
                samples.at[pid, "vcf"],
                annotation_field=annotation_field,
                tumour_sample=tumour[pid] or None,
                filters=filters,
            )
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
    patient_of = {resolved[maf_sample[pid]]: str(pid) for pid in samples.index[has_maf] if maf_sample[pid] in resolved}
    adata.uns["variant_table"] = _variant_table(per_patient, maf_table, patient_of, has_vcf)
    adata.uns["ingest"] = {
        "modality": "variants",
        "params": {
            "territory_mb": float(territory_mb),
            "filter": f"FILTER . or every value in {{{', '.join(filters.filter)}}}",
            "variant_filters": filters.params(),
            "transcript_rule": (
                "a record counts for a gene when any of its transcripts of the gene is protein-altering"
                if filters.transcripts == "any"
                else "a record counts for a gene when the gene's representative transcript is protein-altering"
            )
            + "; the table shows the representative transcript: CANONICAL=YES, else MANE_SELECT, else the first",
            "protein_altering_terms": sorted(PROTEIN_ALTERING),
            "annotation_field": annotation_field or "auto (CSQ, then ANN)",
            "maf": str(maf or ""),
            "maf_protein_altering_classes": sorted(MAF_PROTEIN_ALTERING),
            "maf_known_classes": sorted(MAF_KNOWN_CLASSES),
        },
        "n_patients_in": int(len(samples)),
        "model_obs_features": ["tmb"],
        "exclusions": {
            "patients_without_variant_calls": int(len(samples) - len(per_patient)),
            "maf_samples_without_records": int(n_maf_missing),
            "maf_samples_matched_by_barcode_prefix": int(n_by_prefix),
            "maf_samples_not_in_samples_sheet": int(n_maf_unclaimed),
            "vcf_files_read_without_index": int(sum(pv.without_index for pv in per_patient.values())),
            **{f"records_{k}": int(v) for k, v in sorted(excluded.items())},
        },
    }
    log.info("variants: %d patients x %d genes", len(patients), len(genes))
    return adata
