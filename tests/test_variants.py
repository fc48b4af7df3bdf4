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


def snpeff(*fields: str) -> str:
    """One SnpEff ANN entry: the given leading fields, the rest of its 16 empty, as SnpEff writes them."""
    return "|".join([*fields, *[""] * (16 - len(fields))])


def test_snpeff_ann_with_its_own_inframe_and_exon_loss_terms(tmp_path):
    records = [
        ("chr1", 100, "PASS", snpeff("T", "conservative_inframe_deletion", "MODERATE", "NRAS", "ENSG00000213281")),
        ("chr1", 200, "PASS", snpeff("T", "disruptive_inframe_insertion&splice_region_variant", "MODERATE", "NRAS")),
        ("chr1", 300, "PASS", snpeff("T", "exon_loss_variant", "HIGH", "PTEN", "ENSG00000171862")),
        ("chr1", 400, "PASS", snpeff("T", "synonymous_variant", "LOW", "PTEN", "ENSG00000171862")),
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


# --- nothing let through (issue 9): every bad record is one line naming file, record and value ---------------

RECORD = "chr1\t100\t.\tA\tT\t50\tPASS\tCSQ=T|missense_variant|MODERATE|TP53|G1\tGT\t0/1\n"
N_HEADER_LINES = len(HEADER.splitlines())


def write_text(path: Path, body: str, header: str = HEADER) -> Path:
    path.write_text(header + body)
    return path


def as_bgzip(plain: Path, *, index: bool) -> Path:
    """bgzip ``plain`` (as bgzip does), tabix-indexed or not."""
    if index:
        return Path(pysam.tabix_index(str(plain), preset="vcf", force=True, keep_original=True))
    out = Path(f"{plain}.gz")
    pysam.tabix_compress(str(plain), str(out), force=True)
    return out


def as_bcf(plain: Path) -> Path:
    out = plain.with_suffix(".bcf")
    with pysam.VariantFile(str(plain)) as src, pysam.VariantFile(str(out), "wb", header=src.header) as dst:
        for record in src:
            dst.write(record)
    return out


def error_of(path: Path, **kwargs) -> str:
    with pytest.raises(MultimodalError) as info:
        read_patient_variants(path, **kwargs)
    message = str(info.value)
    assert "\n" not in message and str(path) in message
    return message


@pytest.mark.parametrize(
    "entry, n_found",
    [
        ("T|missense_variant|MODERATE|TP53", 4),  # a field lost: every later field shifts
        ("T|missense_variant|MODERATE|TP53|G1|extra", 6),  # a field too many
        ("T|synonymous_variant|LOW|KRAS|G2,T|missense_variant|MODERATE|TP53", 4),  # only the second entry
    ],
)
def test_csq_entry_with_another_field_count_than_the_header_format(tmp_path, entry, n_found):
    body = RECORD + RECORD.replace("\t100\t", "\t200\t").replace("T|missense_variant|MODERATE|TP53|G1", entry)
    plain = write_text(tmp_path / "a.vcf", body)
    index = 2 if "," in entry else 1
    expected = f"INFO/CSQ entry {index} has {n_found} '|'-separated fields, the header's CSQ Format declares 5"
    line = N_HEADER_LINES + 2
    assert f"a.vcf: line {line} (chr1:200): {expected}" in error_of(plain)
    assert f"a.vcf.gz: line {line} (chr1:200): {expected}" in error_of(as_bgzip(plain, index=True))
    assert f"a.bcf: record 2 (chr1:200): {expected}" in error_of(as_bcf(plain))


def test_a_filtered_record_with_a_broken_annotation_is_not_let_through_either(tmp_path):
    body = RECORD.replace("PASS", "LowQual").replace("|TP53|G1", "|TP53")
    message = error_of(write_text(tmp_path / "a.vcf", body))
    assert f"line {N_HEADER_LINES + 1} (chr1:100): INFO/CSQ entry 1 has 4" in message


def test_snpeff_ann_entry_with_another_field_count_than_the_header(tmp_path):
    body = "chr1\t100\t.\tA\tT\t50\tPASS\tANN=" + snpeff("T", "stop_gained", "HIGH", "PTEN", "G9")[:-1] + "\tGT\t0/1\n"
    message = error_of(write_text(tmp_path / "ann.vcf", body, header=SNPEFF_HEADER))
    assert "INFO/ANN entry 1 has 15 '|'-separated fields, the header's ANN field list declares 16" in message


@pytest.mark.parametrize("pos, shown", [("0", "'0'"), ("-5", "'-5'"), ("", "''"), ("12ab", "'12ab'"), ("1.5", "'1.5'")])
def test_pos_that_is_not_a_positive_whole_number_is_named(tmp_path, pos, shown):
    body = RECORD + RECORD.replace("\t100\t", f"\t{pos}\t")
    message = error_of(write_text(tmp_path / "a.vcf", body))
    assert f"a.vcf: line {N_HEADER_LINES + 2}" in message and f"POS {shown} is not a" in message
    assert "truncated" not in message


def test_pos_0_in_a_bcf_names_the_record(tmp_path):
    plain = write_text(tmp_path / "a.vcf", RECORD + RECORD.replace("\t100\t", "\t0\t"))
    message = error_of(as_bcf(plain))
    assert "a.bcf: record 2 (chr1:0): POS 0 is not a position (VCF positions start at 1)" in message


def test_pos_beyond_the_contig_length_of_the_header(tmp_path):
    message = error_of(write_text(tmp_path / "a.vcf", RECORD.replace("\t100\t", "\t1000001\t")))
    assert "line 9 (chr1:1000001): POS 1000001 is beyond the end of chr1 (length 1000000" in message


@pytest.mark.parametrize("ref", ["AXZ", "R", ".", "A-"])
def test_ref_outside_acgtn_is_named(tmp_path, ref):
    plain = write_text(tmp_path / "a.vcf", RECORD + RECORD.replace("\t100\t.\tA\t", f"\t200\t.\t{ref}\t"))
    expected = f"(chr1:200): REF {ref!r} is not a sequence of A, C, G, T, N"
    assert f"a.vcf: line {N_HEADER_LINES + 2} {expected}" in error_of(plain)
    if ref != "A-":  # htslib writes any REF to BCF
        assert f"a.bcf: record 2 {expected}" in error_of(as_bcf(plain))


def test_lower_case_ref_and_symbolic_or_breakend_alts_are_fine(tmp_path):
    body = "".join(
        RECORD.replace("\t100\t.\tA\tT\t", f"\t{pos}\t.\t{ref}\t{alt}\t")
        for pos, ref, alt in [(100, "acgtn", "a"), (200, "A", "<DEL>"), (300, "G", "G]chr2:500]"), (400, "C", "*,T")]
    )
    assert dict(read_patient_variants(write_text(tmp_path / "a.vcf", body)).gene_counts) == {"TP53": 4}


def test_alt_that_is_not_an_allele_is_named(tmp_path):
    message = error_of(write_text(tmp_path / "a.vcf", RECORD.replace("\tA\tT\t", "\tA\tT,!!\t")))
    assert "line 9 (chr1:100): ALT allele '!!' is neither bases" in message


def test_vcf_without_fileformat_line_says_what_is_missing_and_where(tmp_path):
    message = error_of(write_text(tmp_path / "a.vcf", RECORD, header=HEADER.split("\n", 1)[1]))
    assert "a.vcf: line 1 should be ##fileformat=VCFv4.x (the ##fileformat line is missing); found '##FILTER" in message
    gz = as_bgzip(write_text(tmp_path / "b.vcf", RECORD, header=HEADER.split("\n", 1)[1]), index=False)
    assert "b.vcf.gz: line 1 should be ##fileformat=VCFv4.x" in error_of(gz)
    bom = tmp_path / "bom.vcf"
    bom.write_bytes(b"\xef\xbb\xbf" + (HEADER + RECORD).encode())
    assert "bom.vcf: line 1 starts with a byte-order mark (BOM)" in error_of(bom)
    empty = tmp_path / "empty.vcf"
    empty.write_text("")
    assert "empty.vcf: the file is empty; line 1 of a VCF is ##fileformat=VCFv4.x" in error_of(empty)


def test_column_header_line_with_spaces_is_named(tmp_path):
    header = HEADER.replace("#CHROM\tPOS\tID", "#CHROM POS ID")
    message = error_of(write_text(tmp_path / "a.vcf", RECORD, header=header))
    assert f"a.vcf: line {N_HEADER_LINES}: the column header line must be tab-separated" in message
    no_column_header = HEADER.replace(HEADER.splitlines()[-1] + "\n", "")
    message = error_of(write_text(tmp_path / "b.vcf", RECORD, header=no_column_header))
    assert f"b.vcf: line {N_HEADER_LINES}: a record before the #CHROM column header line" in message


@pytest.mark.parametrize(
    "bad, problem",
    [
        ("chr1\t300\t.\tA\tT\t50\tPASS\n", "7 tab-separated columns; a record has at least 8"),
        ("chr1\t300\t.\tA\tT\n", "5 tab-separated columns; a record has at least 8"),
        ("chr1\t300\t.\tA\tT\t50\tPASS\tCSQ=T|missense_variant|MODERATE|TP53|G1\tGT\n", "9 tab-separated columns, "),
        ("\n", "the line is empty (a VCF has no blank lines; delete it)"),
        ("# a note\n", "a '#' line after the #CHROM header line"),
        (RECORD.replace("\t", " "), "columns separated by spaces, not tabs"),
        (RECORD.replace("0/1\n", "x/y\n"), "htslib cannot parse this record"),
    ],
)
def test_record_htslib_cannot_parse_is_named_by_line_and_problem(tmp_path, bad, problem):
    plain = write_text(tmp_path / "a.vcf", RECORD + bad + RECORD.replace("\t100\t", "\t400\t"))
    for path in (plain, as_bgzip(plain, index=False)):  # tabix itself refuses to index such a file
        message = error_of(path)
        assert f"{path.name}: line {N_HEADER_LINES + 2} (the one after chr1:100): {problem}" in message
        assert "truncated" not in message


def test_contig_missing_from_the_header_is_accepted(tmp_path):
    """VCF does not require ##contig lines (htslib adds the contig); such records count as usual."""
    body = RECORD + RECORD.replace("chr1\t100", "chr7\t100").replace("TP53", "EGFR")
    assert dict(read_patient_variants(write_text(tmp_path / "a.vcf", body)).gene_counts) == {"TP53": 1, "EGFR": 1}


VEP_UNDER_VEP_KEY = HEADER.replace("ID=CSQ", "ID=vep").replace(
    "##FILTER=<ID=LowQual", '##INFO=<ID=DP,Number=1,Type=Integer,Description="Total depth">\n##FILTER=<ID=LowQual'
)


def test_vep_under_another_info_key_is_read_with_annotation_field(tmp_path):
    """gnomAD-style: VEP run with --vcf_info_field vep."""
    path = write_text(tmp_path / "a.vcf", RECORD.replace("CSQ=", "DP=40;vep="), header=VEP_UNDER_VEP_KEY)
    message = error_of(path)
    assert "a.vcf: no consequence annotation (INFO/CSQ from VEP or INFO/ANN from SnpEff); " in message
    assert (
        "the header declares INFO DP, vep; INFO/vep looks like VEP output (its Description has 'Format:'): " in message
    )
    assert "set ingest.annotation_field: vep" in message and "a cohort MAF (e.g. from vcf2maf)" in message
    assert dict(read_patient_variants(path, annotation_field="vep").gene_counts) == {"TP53": 1}
    message = error_of(path, annotation_field="CSQ")
    assert (
        "a.vcf: INFO/CSQ (ingest.annotation_field) is not declared in the header; the header declares INFO DP, vep"
        in message
    )
    message = error_of(path, annotation_field="DP")
    assert "a.vcf: INFO/DP is declared Type=Integer; VEP and SnpEff annotations are Type=String" in message


def test_annotation_field_from_the_command_line_and_the_workflow_rule(tmp_path):
    import subprocess

    import yaml
    from conftest import REPO

    from multimodal.cli import main
    from multimodal.workflow import snakemake_command

    vcf = write_text(tmp_path / "a.vcf", RECORD.replace("CSQ=", "DP=40;vep="), header=VEP_UNDER_VEP_KEY)
    (tmp_path / "samples.tsv").write_text(f"patient_id\tvcf\nP1\t{vcf}\n")
    out = tmp_path / "v.h5ad"
    args = ["ingest", "variants", "-q", "--samples", str(tmp_path / "samples.tsv"), "--out", str(out)]
    assert main(args) != 0 and not out.exists()
    assert main([*args, "--annotation-field", "vep"]) == 0
    import anndata as ad

    adata = ad.read_h5ad(out)
    assert list(adata.var["gene_symbol"]) == ["TP53"]
    assert adata.uns["ingest"]["params"]["annotation_field"] == "vep"

    (tmp_path / "clinical.tsv").write_text("patient_id\tos_time\tos_event\nP1\t10\t1\n")
    config = {
        "samples": "samples.tsv",
        "clinical": "clinical.tsv",
        "expression": None,
        "simulate": {"enabled": False},
        "clinical_columns": {"response_column": None, "site_column": None, "covariates": [], "categorical": []},
        "ingest": {"annotation_field": "vep"},
        "outdir": "out",
    }
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    command = snakemake_command(config=Path("c.yaml"), cores=1, snakefile=REPO / "Snakefile", dry_run=True)
    run = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]
    shown = run.stdout + run.stderr
    assert "multimodal ingest variants" in shown and "--annotation-field vep" in shown


def test_bgzipped_vcf_without_index_is_read_and_counted(tmp_path):
    plain = write_text(tmp_path / "a.vcf", RECORD)
    indexed = as_bgzip(plain, index=True)
    unindexed = as_bgzip(write_text(tmp_path / "b.vcf", RECORD), index=False)
    bcf = as_bcf(write_text(tmp_path / "c.vcf", RECORD))
    assert Path(f"{indexed}.tbi").is_file() and not Path(f"{unindexed}.tbi").exists()
    assert [read_patient_variants(p).without_index for p in (plain, indexed, unindexed, bcf)] == [
        False,
        False,
        True,
        True,
    ]
    samples = pd.DataFrame(
        {"vcf": [str(p) for p in (plain, indexed, unindexed, bcf)]},
        index=pd.Index(["P1", "P2", "P3", "P4"], name="patient_id"),
    )
    adata = mutation_matrix(samples, progress=False)
    assert adata.uns["ingest"]["exclusions"]["vcf_files_read_without_index"] == 2
    np.testing.assert_array_equal(adata.X, [[1], [1], [1], [1]])
    # chunks' counts add up in the store, like every other count
    from multimodal.store import read_chunks

    parts = []
    for k, rows in enumerate((samples.iloc[:3], samples.iloc[3:])):
        mutation_matrix(rows, progress=False).write_h5ad(tmp_path / f"chunk_{k}.h5ad")
        parts.append(tmp_path / f"chunk_{k}.h5ad")
    assert read_chunks(parts).uns["ingest"]["exclusions"]["vcf_files_read_without_index"] == 2


# --- consequence terms outside VEP's and SnpEff's vocabulary stop the run (issue 9) ------------------------


def test_vep_csq_with_a_misspelt_consequence_is_named_with_the_near_match(tmp_path):
    body = RECORD + RECORD.replace("\t100\t", "\t200\t").replace("missense_variant", "missense_varaint")
    plain = write_text(tmp_path / "a.vcf", body)
    expected = (
        "INFO/CSQ entry 1: Consequence 'missense_varaint' is not a known consequence term (did you mean "
        "'missense_variant'?); the known vocabulary is the Sequence Ontology terms of Ensembl VEP and SnpEff"
    )
    line = N_HEADER_LINES + 2
    assert f"a.vcf: line {line} (chr1:200): {expected}" in error_of(plain)
    assert f"a.vcf.gz: line {line} (chr1:200): {expected}" in error_of(as_bgzip(plain, index=True))
    assert f"a.bcf: record 2 (chr1:200): {expected}" in error_of(as_bcf(plain))


def test_snpeff_ann_with_another_tools_term_is_named(tmp_path):
    """ANNOVAR's ``nonsynonymous_SNV`` in a SnpEff-style ANN: not SnpEff's vocabulary, so not guessed at."""
    records = [
        ("chr1", 100, "PASS", snpeff("T", "stop_gained", "HIGH", "PTEN", "G9")),
        ("chr1", 200, "PASS", snpeff("T", "nonsynonymous_SNV", "MODERATE", "PTEN", "G9")),
    ]
    path = write_vcf(tmp_path / "ann.vcf", records=records, header=SNPEFF_HEADER, compress=False)
    path.write_text(path.read_text().replace("CSQ=", "ANN="))
    message = error_of(path)
    assert (
        f"ann.vcf: line {N_HEADER_LINES + 2} (chr1:200): INFO/ANN entry 1: Annotation 'nonsynonymous_SNV' "
        "is not a known consequence term; the known vocabulary is the Sequence Ontology terms of Ensembl VEP and "
        "SnpEff" in message
    )


def test_compound_consequence_checks_every_part(tmp_path):
    """``splice_region_variant&foo_variant``: one known part does not let the unknown one through."""
    body = RECORD.replace(
        "T|missense_variant|MODERATE|TP53|G1",
        "T|synonymous_variant|LOW|KRAS|G2,T|splice_region_variant&foo_variant|LOW|TP53|G1",
    )
    message = error_of(write_text(tmp_path / "a.vcf", body))
    assert (
        f"a.vcf: line {N_HEADER_LINES + 1} (chr1:100): INFO/CSQ entry 2: Consequence "
        "'splice_region_variant&foo_variant' has the unknown term 'foo_variant'; the known vocabulary" in message
    )


@pytest.mark.parametrize(
    "consequence, problem",
    [
        ("", "Consequence is empty"),
        ("missense_variant&", "Consequence 'missense_variant&' has an empty term"),
        ("Missense", "Consequence 'Missense' is not a known consequence term"),
    ],
)
def test_filtered_record_with_an_unknown_or_empty_consequence_is_not_let_through(tmp_path, consequence, problem):
    body = RECORD.replace("PASS", "LowQual").replace("|missense_variant|", f"|{consequence}|")
    message = error_of(write_text(tmp_path / "a.vcf", body))
    assert f"line {N_HEADER_LINES + 1} (chr1:100): INFO/CSQ entry 1: {problem}" in message


def test_every_vep_and_snpeff_term_is_accepted_and_only_protein_altering_ones_count(tmp_path):
    from multimodal.ingest.variants import (
        CONSEQUENCE_TERMS,
        PROTEIN_ALTERING,
        SNPEFF_EFFECTS,
        VEP_CONSEQUENCES,
    )

    assert len(VEP_CONSEQUENCES) == 41 and PROTEIN_ALTERING <= CONSEQUENCE_TERMS
    assert {"exon_loss_variant", "gene_fusion", "intragenic_variant", "sequence_feature"} <= SNPEFF_EFFECTS
    terms = sorted(CONSEQUENCE_TERMS)
    records = [("chr1", 100 + k, "PASS", f"T|{term}|MODIFIER|G_{term}|E{k}") for k, term in enumerate(terms)]
    records.append(("chr2", 100, "PASS", f"T|{'&'.join(terms)}|HIGH|ALL|E0"))  # every term in one compound
    records.append(("chr2", 200, "PASS", "T|Missense_Variant&SPLICE_REGION_VARIANT|MODERATE|CASE|E1"))  # case
    result = read_patient_variants(write_vcf(tmp_path / "all.vcf", records=records, compress=False))
    counted = {gene.removeprefix("G_") for gene in result.gene_counts} - {"ALL", "CASE"}
    assert counted == set(PROTEIN_ALTERING)
    assert result.gene_counts["ALL"] == 1 and result.gene_counts["CASE"] == 1
    assert result.excluded["not_protein_altering"] == len(terms) - len(PROTEIN_ALTERING)
    snpeff_records = [
        ("chr1", 100 + k, "PASS", snpeff("T", term, "MODIFIER", f"G_{term}")) for k, term in enumerate(terms)
    ]
    path = write_vcf(tmp_path / "all_ann.vcf", records=snpeff_records, header=SNPEFF_HEADER, compress=False)
    path.write_text(path.read_text().replace("CSQ=", "ANN="))
    assert {g.removeprefix("G_") for g in read_patient_variants(path).gene_counts} == set(PROTEIN_ALTERING)


def test_the_simulators_demo_vcfs_use_known_terms_and_pass(tiny_cohort):
    from multimodal.ingest.variants import CONSEQUENCE_TERMS
    from multimodal.simulate import DRIVER_CONSEQUENCES, PASSENGER_CONSEQUENCES

    for term, _, _ in (*PASSENGER_CONSEQUENCES, *DRIVER_CONSEQUENCES):
        assert CONSEQUENCE_TERMS.issuperset(term.split("&")), term
    vcfs = sorted((tiny_cohort / "vcf").glob("*.vcf.gz"))
    assert len(vcfs) == 60
    total = sum(sum(read_patient_variants(p).gene_counts.values()) for p in vcfs)
    assert total > 0


# --- tumour/normal VCFs, FORMAT filters, the transcript rule and the variant-level table -----------------

TN_HEADER = """##fileformat=VCFv4.2
##FILTER=<ID=PASS,Description="All filters passed">
##FILTER=<ID=clustered_events,Description="Clustered events">
##FILTER=<ID=germline,Description="Germline risk">
##contig=<ID=chr1,length=1000000>
##INFO=<ID=CSQ,Number=.,Type=String,Description="Consequence annotations from Ensembl VEP. \
Format: Allele|Consequence|IMPACT|SYMBOL|Gene|Feature|HGVSp|CANONICAL|MANE_SELECT">
##FORMAT=<ID=GT,Number=1,Type=String,Description="Genotype">
##FORMAT=<ID=AD,Number=R,Type=Integer,Description="Allelic depths">
##FORMAT=<ID=DP,Number=1,Type=Integer,Description="Read depth">
#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO\tFORMAT\tNORMAL\tTUMOR
"""
# (pos, alt, FILTER, CSQ, NORMAL AD:DP, TUMOR AD:DP). The normal column comes first and differs, so a
# reader taking the first sample column (or the wrong one) gets other counts.
TN_RECORDS = [
    # TP53 missense, tumour VAF 20/100 = 0.2, depth 100 (normal 0/30): passes every filter below
    (100, "T", "PASS", "T|missense_variant|MODERATE|TP53|G1|ENST1|p.R175H|YES|", "30,0:30", "80,20:100"),
    # KRAS missense, tumour depth 8 (normal 60): fails min_depth 10 in the tumour only
    (200, "T", "PASS", "T|missense_variant|MODERATE|KRAS|G2|ENST2|p.G12D|YES|", "60,0:60", "5,3:8"),
    # EGFR missense, tumour VAF 2/50 = 0.04 (normal 25/50): fails min_vaf 0.05 in the tumour only
    (300, "T", "PASS", "T|missense_variant|MODERATE|EGFR|G3|ENST3|p.L858R|YES|", "25,25:50", "48,2:50"),
    # multi-allelic: VAFs 3/60 and 15/60: the larger, 0.25, passes
    (
        400,
        "T,G",
        "PASS",
        "T|synonymous_variant|LOW|BRAF|G4|ENST4||YES|,G|missense_variant|MODERATE|BRAF|G4|ENST4|p.V600E|YES|",
        "40,0,0:40",
        "42,3,15:60",
    ),
    # clustered_events: passes only when that FILTER is accepted
    (500, "T", "clustered_events", "T|stop_gained|HIGH|PTEN|G5|ENST5|p.R130*|YES|", "30,0:30", "30,30:60"),
    # two FILTER values, one not accepted: filtered either way
    (600, "T", "clustered_events;germline", "T|stop_gained|HIGH|PTEN|G5|ENST5|p.Q17*|YES|", "30,0:30", "30,30:60"),
    # the canonical transcript is intronic, a non-canonical one missense: counts under 'any' only
    (
        700,
        "T",
        "PASS",
        "T|intron_variant|MODIFIER|NRAS|G6|ENST6a||YES|,T|missense_variant|MODERATE|NRAS|G6|ENST6b|p.Q61K||",
        "30,0:30",
        "50,50:100",
    ),
    # no CANONICAL flag: the MANE Select transcript stands for the gene (second entry, its HGVSp shown)
    (
        800,
        "T",
        "PASS",
        "T|missense_variant|MODERATE|PIK3CA|G7|ENST7a|p.E545K||,T|missense_variant|MODERATE|PIK3CA|"
        "G7|ENST7b|p.E542K||NM_006218.4",
        "30,0:30",
        "50,50:100",
    ),
]


def write_tn_vcf(path: Path, records=TN_RECORDS, header=TN_HEADER) -> Path:
    lines = [header]
    for pos, alt, filt, csq, normal, tumour in records:
        lines.append(f"chr1\t{pos}\t.\tA\t{alt}\t50\t{filt}\tCSQ={csq}\tAD:DP\t{normal}\t{tumour}\n")
    plain = path.with_suffix("")
    plain.write_text("".join(lines))
    pysam.tabix_index(str(plain), preset="vcf", force=True)
    return path


def test_tumour_normal_vcf_without_tumour_sample_is_refused_naming_the_columns(tmp_path):
    path = write_tn_vcf(tmp_path / "tn.vcf.gz")
    with pytest.raises(MultimodalError, match=r"tn\.vcf\.gz: 2 sample columns \(NORMAL, TUMOR\).*tumour_sample"):
        read_patient_variants(path)
    with pytest.raises(MultimodalError, match=r"tn\.vcf\.gz: no sample column 'TUMOUR'.*NORMAL, TUMOR"):
        read_patient_variants(path, tumour_sample="TUMOUR")


def test_depth_and_vaf_filters_read_the_tumour_column(tmp_path):
    from multimodal.ingest.variants import VariantFilters

    path = write_tn_vcf(tmp_path / "tn.vcf.gz")
    filters = VariantFilters(min_depth=10, min_vaf=0.05)
    result = read_patient_variants(path, tumour_sample="TUMOR", filters=filters)
    assert dict(result.gene_counts) == {"TP53": 1, "BRAF": 1, "NRAS": 1, "PIK3CA": 1}
    assert result.excluded == {"below_min_depth": 1, "below_min_vaf": 1, "filter_not_pass": 2}
    assert result.n_pass == 6
    # the normal column read as the tumour: only EGFR (normal VAF 0.5) passes
    normal = read_patient_variants(path, tumour_sample="NORMAL", filters=filters)
    assert dict(normal.gene_counts) == {"EGFR": 1}


def test_filter_set_accepts_listed_values_only_when_all_are_listed(tmp_path):
    from multimodal.ingest.variants import VariantFilters

    path = write_tn_vcf(tmp_path / "tn.vcf.gz")
    default = read_patient_variants(path, tumour_sample="TUMOR")
    assert "PTEN" not in default.gene_counts and default.excluded["filter_not_pass"] == 2
    lenient = read_patient_variants(
        path, tumour_sample="TUMOR", filters=VariantFilters(filter=("PASS", "clustered_events"))
    )
    assert lenient.gene_counts["PTEN"] == 1  # 500 passes; 600 also carries germline
    assert lenient.excluded["filter_not_pass"] == 1


def test_gene_allow_list_and_transcript_rule(tmp_path):
    from multimodal.ingest.variants import VariantFilters

    path = write_tn_vcf(tmp_path / "tn.vcf.gz")
    genes = tmp_path / "genes.txt"
    genes.write_text("# panel\nTP53\nNRAS\tRAS family\n\n")
    allowed = read_patient_variants(path, tumour_sample="TUMOR", filters=VariantFilters.from_settings(genes=genes))
    assert dict(allowed.gene_counts) == {"TP53": 1, "NRAS": 1}
    assert allowed.excluded["gene_not_in_allow_list"] == 4  # KRAS, EGFR, BRAF, PIK3CA
    canonical = read_patient_variants(path, tumour_sample="TUMOR", filters=VariantFilters(transcripts="canonical"))
    assert "NRAS" not in canonical.gene_counts  # its canonical transcript is intronic
    assert canonical.excluded["not_protein_altering"] == 1
    assert canonical.gene_counts["PIK3CA"] == 1


def test_variant_table_rows_show_the_representative_transcript_and_outcome(tmp_path):
    from multimodal.ingest.variants import VariantFilters

    path = write_tn_vcf(tmp_path / "tn.vcf.gz")
    samples = pd.DataFrame({"vcf": [str(path)], "tumour_sample": ["TUMOR"]}, index=pd.Index(["P1"], name="patient_id"))
    adata = mutation_matrix(samples, filters=VariantFilters(min_depth=10, min_vaf=0.05), progress=False)
    table = adata.uns["variant_table"].set_index("pos")
    assert len(table) == 8 and set(table["patient_id"]) == {"P1"}
    assert table.loc[100, ["gene", "hgvsp", "outcome"]].tolist() == ["TP53", "p.R175H", "counted"]
    assert table.loc[100, "vaf"] == pytest.approx(0.2) and table.loc[100, "depth"] == 100
    assert table.loc[200, "outcome"] == "below_min_depth"
    assert table.loc[300, "outcome"] == "below_min_vaf"
    assert table.loc[400, "vaf"] == pytest.approx(0.25) and table.loc[400, "alt"] == "T,G"
    assert table.loc[600, "filter"] == "clustered_events;germline"
    assert table.loc[700, ["transcript", "consequence", "outcome"]].tolist() == ["ENST6a", "intron_variant", "counted"]
    assert table.loc[800, ["transcript", "hgvsp"]].tolist() == ["ENST7b", "p.E542K"]  # MANE Select
    exclusions = adata.uns["ingest"]["exclusions"]
    assert exclusions["records_below_min_depth"] == 1 and exclusions["records_below_min_vaf"] == 1
    assert adata.uns["ingest"]["params"]["variant_filters"]["min_vaf"] == 0.05


def test_af_field_is_used_before_ad_and_checked(tmp_path):
    from multimodal.ingest.variants import VariantFilters

    header = TN_HEADER.replace(
        "##FORMAT=<ID=DP,", '##FORMAT=<ID=AF,Number=A,Type=Float,Description="Allele fraction">\n##FORMAT=<ID=DP,'
    )
    lines = [
        header,
        "chr1\t100\t.\tA\tT\t50\tPASS\tCSQ=T|missense_variant|MODERATE|TP53|G1|E1|p.X|YES|\t"
        "AD:AF:DP\t30,0:0:30\t50,50:0.03:100\n",
    ]
    path = tmp_path / "af.vcf"
    path.write_text("".join(lines))
    result = read_patient_variants(path, tumour_sample="TUMOR", filters=VariantFilters(min_vaf=0.05))
    assert result.excluded == {"below_min_vaf": 1}  # AF 0.03 wins over AD's 0.5
    bad = tmp_path / "badaf.vcf"
    bad.write_text("".join(lines).replace("0.03", "1.7"))
    with pytest.raises(MultimodalError, match=r"badaf\.vcf: line 12 \(chr1:100\): FORMAT AF 1\.7 of sample TUMOR"):
        read_patient_variants(bad, tumour_sample="TUMOR")


def test_depth_filter_on_a_vcf_without_depth_fields_is_refused(tmp_path):
    from multimodal.ingest.variants import VariantFilters

    path = write_vcf(tmp_path / "a.vcf.gz")
    with pytest.raises(MultimodalError, match=r"a\.vcf\.gz: ingest\.variant_filters\.min_depth is set .* FORMAT DP"):
        read_patient_variants(path, filters=VariantFilters(min_depth=10))
    with pytest.raises(MultimodalError, match=r"genes\.txt: gene list .* not found"):
        VariantFilters.from_settings(genes=tmp_path / "genes.txt")


def test_variant_table_and_filter_counts_reach_the_store_through_the_cli_chunks(tiny_cohort, tmp_path):
    from multimodal.cli import main
    from multimodal.store import build_cohort_store, read_cohort_store

    chunks = []
    for k in range(2):
        out = tmp_path / f"chunk_{k}.h5ad"
        argv = ["ingest", "variants", "-q", "--samples", str(tiny_cohort / "samples.tsv"), "--out", str(out)]
        argv += ["--chunk", str(k), "--n-chunks", "2", "--min-depth", "60", "--min-vaf", "0.1"]
        argv += ["--data-root", str(tiny_cohort)]
        assert main(argv) == 0
        chunks.append(out)
    store = build_cohort_store(
        tmp_path / "cohort.zarr",
        clinical_path=tiny_cohort / "clinical.tsv",
        samples_path=tiny_cohort / "samples.tsv",
        modality_chunks={"variants": chunks},
        data_roots=[tiny_cohort],
    )
    mdata = read_cohort_store(store)
    variants = mdata["variants"]
    table = variants.uns["variant_table"]
    assert set(table["patient_id"]) <= set(variants.obs_names) and len(set(table["patient_id"])) > 1
    # the chunks write the string columns as categoricals; the store holds the same strings as plain columns
    import anndata as ad

    written = pd.concat([ad.read_h5ad(c).uns["variant_table"] for c in chunks], ignore_index=True)
    assert ad.read_h5ad(chunks[0]).uns["variant_table"]["gene"].dtype == "category"
    strings = [c for c in table if c not in ("pos", "depth", "vaf")]
    assert all(table[c].dtype == object for c in strings)
    pd.testing.assert_frame_equal(table, written.astype({c: object for c in strings}))
    counted = table[table["outcome"] == "counted"]
    assert (counted["depth"] >= 60).all() and (counted["vaf"] >= 0.1).all()
    # the counted rows are the matrix, gene by gene and patient by patient
    per_cell = counted.groupby(["patient_id", "gene"]).size()
    matrix = pd.DataFrame(variants.X, index=variants.obs_names, columns=variants.var["gene_symbol"])
    stacked = matrix.stack()
    assert stacked[stacked > 0].sort_index().to_dict() == per_cell.astype(float).sort_index().to_dict()
    # each record's exclusion is counted once in the provenance (a record may have rows for several genes)
    exclusions = mdata.uns["provenance"]["exclusions"]["variants"]
    records = table.drop_duplicates(["patient_id", "chrom", "pos", "ref", "alt"])
    for reason in ("below_min_depth", "below_min_vaf", "filter_not_pass"):
        assert exclusions.get(f"records_{reason}", 0) == int((records["outcome"] == reason).sum())
    assert exclusions["records_below_min_depth"] > 0 and exclusions["records_below_min_vaf"] > 0


def test_sheet_tumour_sample_column_reaches_the_cli(tmp_path):
    import anndata as ad

    from multimodal.cli import main

    vcf = write_tn_vcf(tmp_path / "tn.vcf.gz")
    sheet = tmp_path / "samples.tsv"
    out = tmp_path / "variants.h5ad"
    argv = ["ingest", "variants", "-q", "--samples", str(sheet), "--out", str(out), "--data-root", str(tmp_path)]
    sheet.write_text(f"patient_id\tvcf\nP1\t{vcf}\n")
    assert main(argv) != 0  # two sample columns and none named: refused
    assert not out.exists()
    sheet.write_text(f"patient_id\tvcf\ttumour_sample\nP1\t{vcf}\tTUMOR\n")
    assert main([*argv, "--min-vaf", "0.05", "--min-depth", "10"]) == 0
    adata = ad.read_h5ad(out)
    assert sorted(adata.var["gene_symbol"]) == ["BRAF", "NRAS", "PIK3CA", "TP53"]
    assert adata.uns["ingest"]["exclusions"]["records_below_min_vaf"] == 1
    # a cohort in one chunk keeps its variant table on the way to the store, as plain strings
    from multimodal.store import read_chunks

    table = read_chunks([out]).uns["variant_table"]
    assert len(table) == 8 and table["gene"].dtype == object
    assert table.set_index("pos").loc[100, ["gene", "outcome"]].tolist() == ["TP53", "counted"]


# Callers that keep allele depths in FORMAT fields of their own (no AF, no per-allele AD), as their VCF headers
# declare them; TUMOR's VAF and depth worked out by hand per record.
CALLER_FORMATS = {
    "strelka2": (
        '##FORMAT=<ID=DP,Number=1,Type=Integer,Description="Read depth for tier1">\n'
        + "".join(
            f'##FORMAT=<ID={b}U,Number=2,Type=Integer,Description="Number of {b[0]} alleles used in tiers 1,2">\n'
            for b in "ACGT"
        )
        + '##FORMAT=<ID=TAR,Number=2,Type=Integer,Description="Reads strongly supporting alternate allele">\n'
        '##FORMAT=<ID=TIR,Number=2,Type=Integer,Description="Reads strongly supporting indel allele">\n'
    ),
    "varscan2": (
        '##FORMAT=<ID=DP,Number=1,Type=Integer,Description="Read Depth">\n'
        '##FORMAT=<ID=RD,Number=1,Type=Integer,Description="Depth of reference-supporting bases">\n'
        '##FORMAT=<ID=AD,Number=1,Type=Integer,Description="Depth of variant-supporting bases">\n'
        '##FORMAT=<ID=FREQ,Number=1,Type=String,Description="Variant allele frequency">\n'
    ),
    "freebayes": (
        '##FORMAT=<ID=DP,Number=1,Type=Integer,Description="Read Depth">\n'
        '##FORMAT=<ID=RO,Number=1,Type=Integer,Description="Reference allele observation count">\n'
        '##FORMAT=<ID=AO,Number=A,Type=Integer,Description="Alternate allele observation count">\n'
    ),
}
CALLER_RECORDS = {
    # (pos, REF, ALT, FORMAT, NORMAL, TUMOR, tumour depth, tumour VAF)
    "strelka2": [
        # SNV A>T: tier-1 AU 30 (ref), TU 10 (alt) -> 10/40; DP 42 wins as the depth
        (100, "A", "T", "DP:AU:CU:GU:TU", "40:40,41:0,0:0,0:0,0", "42:30,31:0,0:0,0:10,12", 42, 0.25),
        # SNV C>G, alt 2 of 40 -> 0.05, below 0.1
        (200, "C", "G", "DP:AU:CU:GU:TU", "40:0,0:40,40:0,0:0,0", "40:0,0:38,39:2,2:0,0", 40, 0.05),
        # indel: TAR 36, TIR 12 (tier 1) -> 12/48; DP 50
        (300, "AT", "A", "DP:TAR:TIR", "45:45,46:0,0", "50:36,38:12,13", 50, 0.25),
    ],
    "varscan2": [
        (100, "A", "T", "DP:RD:AD:FREQ", "40:40:0:0%", "42:30:10:25%", 42, 0.25),
        (200, "C", "G", "DP:RD:AD:FREQ", "40:40:0:0%", "40:38:2:5%", 40, 0.05),
        (300, "AT", "A", "DP:RD:AD:FREQ", "45:45:0:0%", "48:36:12:25%", 48, 0.25),
    ],
    "freebayes": [
        (100, "A", "T", "DP:RO:AO", "40:40:0", "42:30:10", 42, 0.25),
        (200, "C", "G", "DP:RO:AO", "40:40:0", "40:38:2", 40, 0.05),
        # multi-allelic: AO 6 and 18 of 60 -> the larger, 0.3; no DP -> RO + AO = 60
        (300, "A", "T,G", "RO:AO", "45:0,0", "36:6,18", 60, 0.3),
    ],
}


@pytest.mark.parametrize("caller", sorted(CALLER_RECORDS))
def test_callers_own_allele_depth_fields_give_depth_and_vaf(tmp_path, caller):
    from multimodal.ingest.variants import VariantFilters, caller_allele_depths

    header = TN_HEADER.split("##FORMAT=<ID=AD,")[0] + CALLER_FORMATS[caller] + TN_HEADER.split("\n")[-2] + "\n"
    csq = "|missense_variant|MODERATE|TP53|G1|E1|p.X|YES|"
    lines = [header] + [
        f"chr1\t{pos}\t.\t{ref}\t{alt}\t50\tPASS\tCSQ={','.join(a + csq for a in alt.split(','))}\t{fmt}\t{n}\t{t}\n"
        for pos, ref, alt, fmt, n, t, _, _ in CALLER_RECORDS[caller]
    ]
    path = tmp_path / f"{caller}.vcf"
    path.write_text("".join(lines))
    with pysam.VariantFile(str(path)) as vcf:
        assert caller_allele_depths(vcf.header.formats) == caller
    samples = pd.DataFrame({"vcf": [str(path)], "tumour_sample": ["TUMOR"]}, index=pd.Index(["P1"], name="patient_id"))
    adata = mutation_matrix(samples, filters=VariantFilters(min_depth=41, min_vaf=0.1), progress=False)
    table = adata.uns["variant_table"].set_index("pos")
    for pos, *_, depth, vaf in CALLER_RECORDS[caller]:
        assert table.loc[pos, "depth"] == depth, (caller, pos)
        assert table.loc[pos, "vaf"] == pytest.approx(vaf), (caller, pos)
    assert table["outcome"].tolist() == ["counted", "below_min_depth", "counted"]
    with_vaf_only = read_patient_variants(path, tumour_sample="TUMOR", filters=VariantFilters(min_vaf=0.1))
    assert with_vaf_only.excluded == {"below_min_vaf": 1} and with_vaf_only.gene_counts["TP53"] == 2


def test_the_store_does_not_depend_on_how_patients_are_chunked(tiny_cohort, tmp_path):
    """ingest.variant_chunk_size only changes the job layout: one chunk and three give identical store files."""
    import reduced_demo

    from multimodal.cli import main
    from multimodal.store import build_cohort_store

    digests = []
    for n in (1, 3):
        chunks = []
        for k in range(n):
            out = tmp_path / f"chunks_{n}" / f"chunk_{k}.h5ad"
            out.parent.mkdir(exist_ok=True)
            argv = ["ingest", "variants", "-q", "--samples", str(tiny_cohort / "samples.tsv"), "--out", str(out)]
            argv += ["--chunk", str(k), "--n-chunks", str(n), "--data-root", str(tiny_cohort)]
            assert main(argv) == 0
            chunks.append(out)
        store = build_cohort_store(
            tmp_path / f"store_{n}.zarr",
            clinical_path=tiny_cohort / "clinical.tsv",
            samples_path=tiny_cohort / "samples.tsv",
            modality_chunks={"variants": chunks},
            data_roots=[tiny_cohort],
        )
        digests.append(reduced_demo.tree_digests(store, skip=("created",)))
    one, three = digests
    assert len(one) > 50 and set(one) == set(three)
    assert [name for name in one if one[name] != three[name]] == []


BCSQ_HEADER = HEADER.replace(
    '##INFO=<ID=CSQ,Number=.,Type=String,Description="Consequence annotations from Ensembl VEP. '
    'Format: Allele|Consequence|IMPACT|SYMBOL|Gene">',
    '##INFO=<ID=BCSQ,Number=.,Type=String,Description="Haplotype-aware consequence annotation from BCFtools/csq, '
    "see http://samtools.github.io/bcftools/howtos/csq-calling.html for details. "
    'Format: Consequence|gene|transcript|biotype|strand|amino_acid_change|dna_change">',
)


@pytest.mark.parametrize("annotation_field", [None, "BCSQ"])
def test_bcftools_csq_annotation_is_named_and_refused_in_one_line(tmp_path, annotation_field):
    assert BCSQ_HEADER != HEADER
    lines = [
        BCSQ_HEADER,
        "chr1\t100\t.\tA\tT\t50\tPASS\tBCSQ=missense|TP53|ENST1|protein_coding|+|1A>1V|100A>T\tGT\t0/1\n",
    ]
    path = tmp_path / "bcsq.vcf"
    path.write_text("".join(lines))
    with pytest.raises(
        MultimodalError, match=r"bcsq\.vcf: .*INFO/BCSQ is bcftools csq's haplotype-aware annotation"
    ) as error:
        read_patient_variants(path, annotation_field=annotation_field)
    assert "\n" not in str(error.value) and "VEP (INFO/CSQ)" in str(error.value)
