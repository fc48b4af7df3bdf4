"""The columnar VCF reader gives exactly what the record-by-record pysam reader gives, or hands the file to it.

Every per-patient VCF fixture of tests/test_variants.py, the simulator's demo VCFs and random VCFs written
by pysam (multi-allelic, several transcripts and genes, tumour/normal, missing AD/DP/AF, '.' values,
FILTER sets) are read both ways under several filter settings: the gene counts, tallies, exclusions and
variant-level tables must be identical, and the columnar reader must really have read them. Files it does
not fully check go to pysam, whose one-line errors stay the same.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pysam
import pytest
from test_variants import HEADER, RECORDS, SNPEFF_HEADER, TN_RECORDS, snpeff, write_tn_vcf, write_vcf

from multimodal.errors import MultimodalError
from multimodal.ingest.variants import (
    CONSEQUENCE_TERMS,
    VariantFilters,
    mutation_matrix,
    read_patient_variants,
)

SETTINGS = [
    VariantFilters(),
    VariantFilters(filter=("PASS", "LowQual", "clustered_events"), transcripts="canonical"),
    VariantFilters(min_depth=25, min_vaf=0.1),
    VariantFilters(min_vaf=0.2, genes=frozenset({"TP53", "KRAS", "G1", "GENE3", "GENE7", "ENSG9"})),
]


def table(result) -> pd.DataFrame:
    frame = result.variant_rows()
    for column in ("pos", "depth", "vaf"):
        frame[column] = pd.to_numeric(frame[column]).astype(np.float64)
    return frame.reset_index(drop=True)


def both(path: Path, *, reader: str = "columnar", **kwargs):
    """Read ``path`` both ways, assert identical results and that ``reader`` counted the fast way's records."""
    fast = read_patient_variants(path, **kwargs)
    slow = read_patient_variants(path, columnar=False, **kwargs)
    assert fast.reader == reader and slow.reader == "pysam"
    assert (fast.n_records, fast.n_pass, fast.tumour_sample, fast.without_index) == (
        slow.n_records,
        slow.n_pass,
        slow.tumour_sample,
        slow.without_index,
    )
    assert dict(fast.gene_counts) == dict(slow.gene_counts)
    assert dict(fast.excluded) == dict(slow.excluded)
    pd.testing.assert_frame_equal(table(fast), table(slow))
    return fast


def error(path: Path, **kwargs) -> str:
    with pytest.raises(MultimodalError) as caught:
        read_patient_variants(path, **kwargs)
    return str(caught.value)


@pytest.mark.parametrize("filters", SETTINGS)
def test_the_fixtures_of_test_variants_read_the_same_both_ways(tmp_path, filters):
    if filters.min_depth or filters.min_vaf:  # these VCFs have no depth: both refuse alike
        path = write_vcf(tmp_path / "a.vcf.gz")
        assert error(path, filters=filters) == error(path, filters=filters, columnar=False)
    else:
        result = both(write_vcf(tmp_path / "a.vcf.gz"), filters=filters)
        assert result.n_records == len(RECORDS)
        both(write_vcf(tmp_path / "b.vcf", compress=False), filters=filters)
        ann = [(c, p, f, snpeff("T", "missense_variant", "MODERATE", "TP53")) for c, p, f, _ in RECORDS]
        plain = write_vcf(tmp_path / "ann.vcf", records=ann, header=SNPEFF_HEADER, compress=False)
        plain.write_text(plain.read_text().replace("CSQ=", "ANN="))
        both(plain, filters=filters)
    tn = write_tn_vcf(tmp_path / "tn.vcf.gz")
    for tumour in ("TUMOR", "NORMAL"):
        result = both(tn, tumour_sample=tumour, filters=filters)
        assert result.n_records == len(TN_RECORDS)


def test_the_simulators_demo_vcfs_read_the_same_both_ways(tiny_cohort):
    vcfs = sorted((tiny_cohort / "vcf").glob("*.vcf.gz"))[:12]
    assert vcfs
    for path in vcfs:
        for filters in SETTINGS[:2]:
            both(path, filters=filters)


# --- random VCFs written by pysam ------------------------------------------------------------------------

CSQ_FIELDS = "Allele|Consequence|IMPACT|SYMBOL|Gene|Feature|HGVSp|CANONICAL|MANE_SELECT"
TERMS = sorted(CONSEQUENCE_TERMS)


def random_vcf(path: Path, rng: np.random.Generator, n_records: int, *, with_af: bool) -> Path:
    """A tumour/normal VCF written by pysam (then bgzipped and indexed by pysam), every field randomly
    given, left out or '.'."""
    header = pysam.VariantHeader()
    for name in ("LowQual", "clustered_events"):
        header.filters.add(name, None, None, name)
    for contig, length in (("chr1", 5_000_000), ("chr2", 3_000_000)):
        header.contigs.add(contig, length=length)
    header.info.add("CSQ", ".", "String", f"Consequence annotations from Ensembl VEP. Format: {CSQ_FIELDS}")
    header.info.add("DB", 0, "Flag", "dbSNP")
    header.info.add("TLOD", "A", "Float", "Tumour LOD")
    header.formats.add("GT", 1, "String", "Genotype")
    header.formats.add("AD", "R", "Integer", "Allelic depths")
    header.formats.add("DP", 1, "Integer", "Depth")
    if with_af:
        header.formats.add("AF", "A", "Float", "Allele fraction")
    header.add_sample("NORMAL")
    header.add_sample("TUMOR")
    plain = path.with_suffix("")
    with pysam.VariantFile(str(plain), "w", header=header) as out:
        positions = {c: np.sort(rng.choice(2_000_000, n_records, replace=False)) + 1 for c in ("chr1", "chr2")}
        for k in range(n_records):
            contig = "chr1" if k < n_records // 2 else "chr2"
            alts = tuple(rng.choice(["T", "G", "C", "TA", "AT"], size=int(rng.integers(1, 4)), replace=False))
            record = out.new_record(contig=contig, start=int(positions[contig][k]) - 1, alleles=("A", *alts))
            record.qual = None if rng.random() < 0.2 else float(rng.integers(1, 99))
            for name in rng.choice(["PASS", "LowQual", "clustered_events", "."], p=[0.6, 0.2, 0.1, 0.1], size=2):
                if name == "PASS":
                    record.filter.add("PASS")
                    break
                if name != ".":
                    record.filter.add(str(name))
            entries = []
            for _ in range(int(rng.choice([0, 1, 2, 3, 4], p=[0.1, 0.3, 0.3, 0.2, 0.1]))):
                gene = f"GENE{int(rng.integers(0, 10))}"
                terms = "&".join(rng.choice(TERMS, size=int(rng.integers(1, 3)), replace=False))
                symbol = "" if rng.random() < 0.1 else gene
                entries.append(
                    "|".join(
                        [
                            str(rng.choice(alts)),
                            terms,
                            "MODERATE",
                            symbol,
                            "" if rng.random() < 0.05 else f"ENSG{gene[4:]}",
                            f"ENST{int(rng.integers(0, 4))}",
                            str(rng.choice(["", "p.V600E", "p.R130*"])),
                            str(rng.choice(["", "YES", "NO"], p=[0.6, 0.3, 0.1])),
                            str(rng.choice(["", "NM_1.1"], p=[0.8, 0.2])),
                        ]
                    )
                )
            if entries:
                record.info["CSQ"] = tuple(entries)
            if rng.random() < 0.3:
                record.info["DB"] = True
            if rng.random() < 0.5:
                record.info["TLOD"] = tuple(float(x) for x in rng.uniform(0, 50, len(alts)).round(2))
            for sample in ("NORMAL", "TUMOR"):
                call = record.samples[sample]
                if rng.random() < 0.9:
                    call["GT"] = (0, 1)
                if rng.random() < 0.85:
                    ad = [int(x) for x in rng.integers(0, 60, 1 + len(alts))]
                    call["AD"] = tuple(None if rng.random() < 0.1 else a for a in ad)
                if rng.random() < 0.7:
                    call["DP"] = int(rng.integers(0, 150))
                if with_af and rng.random() < 0.6:
                    call["AF"] = tuple(None if rng.random() < 0.1 else float(x) for x in rng.uniform(0, 1, len(alts)))
            out.write(record)
    pysam.tabix_index(str(plain), preset="vcf", force=True)
    return path


@pytest.mark.parametrize("seed", range(6))
def test_random_pysam_written_vcfs_read_the_same_both_ways(tmp_path, seed):
    rng = np.random.default_rng(seed)
    path = random_vcf(tmp_path / f"r{seed}.vcf.gz", rng, 150, with_af=seed % 2 == 0)
    counted = 0
    for filters in SETTINGS:
        for tumour in ("TUMOR", "NORMAL"):
            result = both(path, tumour_sample=tumour, filters=filters)
            counted += sum(result.gene_counts.values())
    assert result.n_records == 150 and counted > 0
    assert len(result.excluded) >= 2  # several exclusion reasons met, so the ordering of reasons is exercised


def test_a_cohort_of_columnar_and_pysam_read_patients_gives_one_table_in_sheet_order(tmp_path):
    rng = np.random.default_rng(7)
    paths = [random_vcf(tmp_path / f"p{k}.vcf.gz", rng, 40, with_af=False) for k in range(3)]
    bcf = tmp_path / "p1.bcf"  # a BCF is read by pysam: its rows sit between the others'
    with pysam.VariantFile(str(paths[1])) as src, pysam.VariantFile(str(bcf), "wb", header=src.header) as dst:
        for record in src:
            dst.write(record)
    sheet = pd.DataFrame(
        {"vcf": [str(paths[0]), str(bcf), str(paths[2])], "tumour_sample": "TUMOR"},
        index=pd.Index(["A", "B", "C"], name="patient_id"),
    )
    adata = mutation_matrix(sheet, progress=False)
    rows = adata.uns["variant_table"]
    assert list(dict.fromkeys(rows["patient_id"])) == ["A", "B", "C"]
    assert read_patient_variants(bcf, tumour_sample="TUMOR").reader == "pysam"
    from_b = rows[rows["patient_id"] == "B"].drop(columns="patient_id").reset_index(drop=True)
    same = table(read_patient_variants(paths[1], tumour_sample="TUMOR"))
    # the cohort table's string columns are categoricals (written as codes): the same strings
    assert {c for c in rows if rows[c].dtype == "category"} == set(rows) - {"pos", "depth", "vaf"}
    from_b = from_b.astype({c: object for c in from_b if c not in ("pos", "depth", "vaf")})
    pd.testing.assert_frame_equal(from_b, same, check_dtype=False)


# --- what the columnar reader hands to pysam ---------------------------------------------------------------


@pytest.mark.parametrize(
    "change",
    [
        ("T|missense_variant|MODERATE|TP53|G1", "T|missense_variant|MODERATE|TP53"),  # field count
        ("T|missense_variant|MODERATE|TP53|G1", "T|misense_variant|MODERATE|TP53|G1"),  # unknown term
        ("chr1\t100\t", "chr1\t2000000\t"),  # beyond the contig
        ("chr1\t100\t.\tA", "chr1\t100\t.\tX"),  # REF
        ("chr1\t100\t.\tA\tT", "chr1\t100\t.\tA\tT!"),  # ALT
        ("chr2\t100\t", "chr2\t0\t"),  # POS 0
        ("\t50\tLowQual", "\tfifty\tLowQual"),  # QUAL: htslib reads it (as missing), the columnar reader not
        ("\tGT\t0/1\n", "\tGT\t0/1\tEXTRA\n"),  # a column more: htslib ignores it, the columnar reader not
    ],
)
def test_a_broken_record_gives_the_pysam_readers_exact_error_or_result(tmp_path, change):
    plain = write_vcf(tmp_path / "a.vcf", compress=False)
    old, new = change
    assert old in plain.read_text()
    plain.write_text(plain.read_text().replace(old, new, 1))
    if _fails(plain):
        assert error(plain) == error(plain, columnar=False)
    else:
        assert change[1].startswith(("\tfifty", "\tGT"))
        both(plain, reader="pysam")


def test_a_file_the_columnar_reader_does_not_check_is_read_by_pysam(tmp_path):
    # a consequence term in another case is taken as the term by the pysam reader only
    records = [(c, p, f, csq.replace("missense_variant", "Missense_Variant")) for c, p, f, csq in RECORDS]
    both(write_vcf(tmp_path / "a.vcf.gz", records=records), reader="pysam")
    # an undeclared INFO key and CRLF line ends
    plain = write_vcf(tmp_path / "b.vcf", compress=False)
    plain.write_text(plain.read_text().replace("CSQ=", "XX=1;CSQ="))
    both(plain, reader="pysam")
    crlf = write_vcf(tmp_path / "c.vcf", compress=False)
    crlf.write_bytes(crlf.read_bytes().replace(b"\n", b"\r\n"))
    assert error(crlf) == error(crlf, columnar=False) if _fails(crlf) else both(crlf, reader="pysam")
    # bytes that are not UTF-8 (a Latin-1 gene name)
    latin = write_vcf(tmp_path / "e.vcf", compress=False)
    latin.write_bytes(latin.read_bytes().replace(b"|KRAS|", b"|KRAS\xe9|"))
    assert error(latin) == error(latin, columnar=False) if _fails(latin) else both(latin, reader="pysam")
    # a VCF without records
    empty = tmp_path / "d.vcf"
    empty.write_text(HEADER)
    assert both(empty).n_records == 0


def test_a_vcf_over_the_size_limit_streams_through_pysam(tmp_path, monkeypatch):
    from multimodal.ingest import vcf_columnar

    path = write_tn_vcf(tmp_path / "tn.vcf.gz")
    both(path, tumour_sample="TUMOR")
    monkeypatch.setattr(vcf_columnar, "MAX_TEXT_BYTES", path.stat().st_size * 8 - 1)
    both(path, tumour_sample="TUMOR", reader="pysam")
    plain = write_vcf(tmp_path / "a.vcf", compress=False)
    monkeypatch.setattr(vcf_columnar, "MAX_TEXT_BYTES", plain.stat().st_size - 1)
    both(plain, reader="pysam")


def _fails(path: Path) -> bool:
    try:
        read_patient_variants(path, columnar=False)
    except MultimodalError:
        return True
    return False


def test_an_annotation_whose_first_field_is_read_gives_the_same_counts(tmp_path):
    # SYMBOL first: its values are read without the 'CSQ=' the first entry's first field starts with
    order = [3, 1, 2, 0, 4]  # SYMBOL|Consequence|IMPACT|Allele|Gene
    header = HEADER.replace("Allele|Consequence|IMPACT|SYMBOL|Gene", "SYMBOL|Consequence|IMPACT|Allele|Gene")
    records = [
        (c, p, f, ",".join("|".join(e.split("|")[k] for k in order) for e in csq.split(",")))
        for c, p, f, csq in RECORDS
    ]
    first = both(write_vcf(tmp_path / "s.vcf.gz", records=records, header=header))
    usual = both(write_vcf(tmp_path / "a.vcf.gz"))
    assert dict(first.gene_counts) == dict(usual.gene_counts) == {"TP53": 2, "EGFR": 1, "BRAF": 1}
    assert list(first.table["gene"]) == list(usual.table["gene"])
