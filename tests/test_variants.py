"""Variant ingest: PASS + protein-altering counting per gene, TMB, annotation layouts, broken files."""

from pathlib import Path

import numpy as np
import pandas as pd
import pysam
import pytest

from multimodal.errors import MultimodalError
from multimodal.ingest.variants import mutation_matrix, read_patient_variants

HEADER = """##fileformat=VCFv4.2
##FILTER=<ID=PASS,Description="All filters passed">
##FILTER=<ID=LowQual,Description="Low quality">
##contig=<ID=chr1,length=1000000>
##contig=<ID=chr2,length=1000000>
##INFO=<ID=CSQ,Number=.,Type=String,Description="Consequence annotations from Ensembl VEP. \
Format: Allele|Consequence|IMPACT|SYMBOL|Gene">
##FORMAT=<ID=GT,Number=1,Type=String,Description="Genotype">
#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO\tFORMAT\tTUMOR
"""

RECORDS = [
    # counted: PASS missense in TP53
    ("chr1", 100, "PASS", "T|missense_variant|MODERATE|TP53|G1"),
    # counted once although two transcripts of TP53 are hit
    ("chr1", 200, "PASS", "T|stop_gained|HIGH|TP53|G1,T|intron_variant|MODIFIER|TP53|G1"),
    # not counted: filtered
    ("chr1", 300, "LowQual", "T|frameshift_variant|HIGH|KRAS|G2"),
    # not counted: synonymous
    ("chr1", 400, "PASS", "T|synonymous_variant|LOW|KRAS|G2"),
    # counted: '&'-joined terms, one of them protein-altering; '.' FILTER means no filter applied
    ("chr2", 100, ".", "T|splice_region_variant&missense_variant|MODERATE|EGFR|G3"),
    # one record hitting two genes: counted for the one with a protein-altering consequence only
    ("chr2", 200, "PASS", "T|missense_variant|MODERATE|BRAF|G4,T|upstream_gene_variant|MODIFIER|NRAS|G5"),
]


def write_vcf(path: Path, records=RECORDS, header=HEADER, compress=True) -> Path:
    lines = [header] + [f"{c}\t{p}\t.\tA\tT\t50\t{f}\tCSQ={csq}\tGT\t0/1\n" for c, p, f, csq in records]
    plain = path.with_suffix("") if compress else path
    plain.write_text("".join(lines))
    if compress:
        pysam.tabix_index(str(plain), preset="vcf", force=True)
    return path


def test_counts_pass_protein_altering_once_per_gene(tmp_path):
    result = read_patient_variants(write_vcf(tmp_path / "a.vcf.gz"))
    assert dict(result.gene_counts) == {"TP53": 2, "EGFR": 1, "BRAF": 1}
    assert result.n_records == 6
    assert result.excluded["filter_not_pass"] == 1
    assert result.excluded["not_protein_altering"] == 1


def test_plain_vcf_and_bcf_give_the_same_counts(tmp_path):
    plain = write_vcf(tmp_path / "a.vcf", compress=False)
    bcf = tmp_path / "a.bcf"
    with pysam.VariantFile(str(plain)) as src, pysam.VariantFile(str(bcf), "wb", header=src.header) as dst:
        for record in src:
            dst.write(record)
    assert read_patient_variants(plain).gene_counts == read_patient_variants(bcf).gene_counts


def test_snpeff_ann_is_read(tmp_path):
    header = HEADER.replace(
        '##INFO=<ID=CSQ,Number=.,Type=String,Description="Consequence annotations from Ensembl VEP. '
        'Format: Allele|Consequence|IMPACT|SYMBOL|Gene">',
        "##INFO=<ID=ANN,Number=.,Type=String,Description=\"Functional annotations: 'Allele | Annotation | "
        "Annotation_Impact | Gene_Name | Gene_ID'\">",
    )
    path = tmp_path / "ann.vcf"
    path.write_text(
        header
        + "chr1\t100\t.\tA\tT\t50\tPASS\tANN=T|stop_gained|HIGH|PTEN|G9\tGT\t0/1\n"
        + "chr1\t200\t.\tA\tT\t50\tPASS\tANN=T|synonymous_variant|LOW|PTEN|G9\tGT\t0/1\n"
    )
    assert dict(read_patient_variants(path).gene_counts) == {"PTEN": 1}


def test_mutation_matrix_counts_tmb_and_missing_patients(tmp_path):
    a = write_vcf(tmp_path / "a.vcf.gz")
    b = write_vcf(tmp_path / "b.vcf.gz", records=[("chr1", 100, "PASS", "T|missense_variant|MODERATE|KRAS|G2")])
    samples = pd.DataFrame({"vcf": [str(a), str(b), ""]}, index=pd.Index(["P1", "P2", "P3"], name="patient_id"))
    adata = mutation_matrix(samples, territory_mb=2.0, progress=False)
    assert list(adata.obs_names) == ["P1", "P2"]
    assert list(adata.var["gene_symbol"]) == ["BRAF", "EGFR", "KRAS", "TP53"]
    np.testing.assert_array_equal(adata.X, [[1, 1, 0, 2], [0, 0, 1, 0]])
    np.testing.assert_allclose(adata.obs["tmb"], [4 / 2.0, 1 / 2.0])
    exclusions = adata.uns["ingest"]["exclusions"]
    assert exclusions["patients_without_variant_calls"] == 1
    assert exclusions["records_filter_not_pass"] == 1


def test_truncated_bgzip_is_rejected_with_file_name(tmp_path):
    good = write_vcf(tmp_path / "a.vcf.gz")
    data = good.read_bytes()
    bad = tmp_path / "cut.vcf.gz"
    bad.write_bytes(data[: len(data) - 40])
    with pytest.raises(MultimodalError, match=r"cut\.vcf\.gz: truncated"):
        read_patient_variants(bad)


def test_vcf_without_consequence_annotation_is_rejected(tmp_path):
    path = tmp_path / "bare.vcf"
    path.write_text(HEADER.replace(HEADER.splitlines()[5] + "\n", "") + "chr1\t1\t.\tA\tT\t50\tPASS\t.\tGT\t0/1\n")
    with pytest.raises(MultimodalError, match=r"bare\.vcf: no consequence annotation"):
        read_patient_variants(path)


def test_garbage_file_is_a_one_line_error(tmp_path):
    path = tmp_path / "junk.vcf"
    path.write_text("this is not a VCF\n")
    with pytest.raises(MultimodalError, match=r"junk\.vcf"):
        read_patient_variants(path)


def test_plain_gzip_vcf_says_how_to_fix_it(tmp_path):
    import gzip

    plain = write_vcf(tmp_path / "a.vcf", compress=False)
    gz = tmp_path / "plain.vcf.gz"
    with gzip.open(gz, "wb") as handle:
        handle.write(plain.read_bytes())
    with pytest.raises(MultimodalError, match=r"plain\.vcf\.gz: compressed with gzip, not bgzip; recompress it"):
        read_patient_variants(gz)


def test_plain_vcf_cut_inside_a_record_is_rejected(tmp_path):
    good = write_vcf(tmp_path / "a.vcf", compress=False)
    cut = tmp_path / "cut.vcf"
    cut.write_text(good.read_text()[:-12])
    with pytest.raises(MultimodalError, match=r"cut\.vcf: truncated file \(the last line has no line end\)"):
        read_patient_variants(cut)


SNPEFF_HEADER = HEADER.replace(
    HEADER.splitlines()[5] + "\n",
    "##INFO=<ID=ANN,Number=.,Type=String,Description=\"Functional annotations: 'Allele | Annotation | "
    "Annotation_Impact | Gene_Name | Gene_ID | Feature_Type | Feature_ID | Transcript_BioType | Rank | HGVS.c | "
    "HGVS.p | cDNA.pos / cDNA.length | CDS.pos / CDS.length | AA.pos / AA.length | Distance | ERRORS / WARNINGS / "
    "INFO'\">\n",
)


def test_snpeff_ann_with_its_own_inframe_and_exon_loss_terms(tmp_path):
    records = [
        ("chr1", 100, "PASS", "T|conservative_inframe_deletion|MODERATE|NRAS|ENSG00000213281|transcript|ENST1"),
        ("chr1", 200, "PASS", "T|disruptive_inframe_insertion&splice_region_variant|MODERATE|NRAS|ENSG00000213281"),
        ("chr1", 300, "PASS", "T|exon_loss_variant|HIGH|PTEN|ENSG00000171862"),
        ("chr1", 400, "PASS", "T|synonymous_variant|LOW|PTEN|ENSG00000171862"),
    ]
    path = write_vcf(tmp_path / "snpeff.vcf", records=records, header=SNPEFF_HEADER, compress=False)
    path.write_text(path.read_text().replace("CSQ=", "ANN="))
    result = read_patient_variants(path)
    assert dict(result.gene_counts) == {"NRAS": 2, "PTEN": 1}
    assert result.excluded["not_protein_altering"] == 1


def test_vep_fields_in_ann_follow_the_header_format_and_gene_id_stands_in_for_a_missing_symbol(tmp_path):
    """VEP run with --vcf_info_field ANN and its own --fields order; a novel gene has no SYMBOL."""
    header = HEADER.replace(
        HEADER.splitlines()[5],
        '##INFO=<ID=ANN,Number=.,Type=String,Description="Consequence annotations from Ensembl VEP. '
        'Format: Gene|SYMBOL|Allele|Consequence|IMPACT">',
    )
    assert "ID=ANN" in header and "ID=CSQ" not in header
    records = [
        ("chr1", 100, "PASS", "ENSG00000141510|TP53|T|missense_variant|MODERATE"),
        ("chr1", 200, "PASS", "ENSG00000289000||T|stop_gained|HIGH"),
    ]
    path = write_vcf(tmp_path / "vep_ann.vcf", records=records, header=header, compress=False)
    path.write_text(path.read_text().replace("CSQ=", "ANN="))
    result = read_patient_variants(path)
    assert dict(result.gene_counts) == {"TP53": 1, "ENSG00000289000": 1}


def test_pre_4_snpeff_eff_says_what_to_do(tmp_path):
    header = HEADER.replace("ID=CSQ", "ID=EFF")
    path = write_vcf(tmp_path / "eff.vcf", records=[("chr1", 1, "PASS", "x")], header=header, compress=False)
    with pytest.raises(MultimodalError, match=r"eff\.vcf: INFO/EFF is SnpEff's pre-4\.0 format"):
        read_patient_variants(path)
