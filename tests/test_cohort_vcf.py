"""Cohort VCF -> VCF Zarr (bio2zarr, Zarr v3) -> per-gene carrier matrix by array operations on Dask."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pysam
import pytest

from multimodal.errors import MultimodalError
from multimodal.ingest.cohort_vcf import carrier_matrix, vcf_to_zarr
from multimodal.ingest.variants import VariantFilters

HEADER = """##fileformat=VCFv4.2
##FILTER=<ID=PASS,Description="All filters passed">
##FILTER=<ID=LowQual,Description="Low quality">
##contig=<ID=chr1,length=1000000>
##INFO=<ID=CSQ,Number=.,Type=String,Description="Consequence annotations from Ensembl VEP. \
Format: Allele|Consequence|IMPACT|SYMBOL|Gene|Feature|CANONICAL">
##FORMAT=<ID=GT,Number=1,Type=String,Description="Genotype">
#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO\tFORMAT\tS1\tS2\tS3\tS4\tS5
"""
RECORDS = [
    # multi-allelic: T is synonymous, G missense (both TP53's canonical transcript). A reader ignoring which
    # ALT an annotation belongs to counts S1 (0/1, T only); one counting alleles counts S3 (1/2) twice.
    (
        "100",
        "A",
        "T,G",
        "PASS",
        "T|synonymous_variant|LOW|TP53|G1|E1|YES,G|missense_variant|MODERATE|TP53|G1|E1|YES",
        ["0/1", "0/2", "1/2", "./.", "2/2"],
    ),
    # one record, two genes: KRAS missense counts, NRAS upstream does not
    (
        "200",
        "G",
        "C",
        "PASS",
        "C|missense_variant|MODERATE|KRAS|G2|E2|YES,C|upstream_gene_variant|MODIFIER|NRAS|G3|E3|YES",
        ["0/1", "0/0", "0/0", "0/0", "0/0"],
    ),
    # filtered: not counted although S2 is homozygous
    ("300", "G", "A", "LowQual", "A|stop_gained|HIGH|KRAS|G2|E2|YES", ["0/0", "1/1", "0/0", "0/0", "0/0"]),
    # a deletion: VEP writes its Allele as '-' (the shared first base trimmed)
    ("400", "ATG", "A", "PASS", "-|frameshift_variant|HIGH|EGFR|G4|E4|YES", ["0/0", "0/0", "0/1", "0/0", "0|0"]),
    # the canonical transcript is intronic, another missense: counts under 'any', not 'canonical'
    (
        "500",
        "C",
        "T",
        "PASS",
        "T|intron_variant|MODIFIER|BRAF|G5|E5a|YES,T|missense_variant|MODERATE|BRAF|G5|E5b|",
        ["0/0", "0/0", "0/0", "0|1", "0/0"],
    ),
    # a second TP53 record: S2 carries both
    ("600", "C", "A", "PASS", "A|missense_variant|MODERATE|TP53|G1|E1|YES", ["0/0", "0/1", "0/0", "0/0", "0/0"]),
]


def write_cohort_vcf(path: Path, records=RECORDS) -> Path:
    """A bgzipped, tabix-indexed multi-sample VCF written through pysam."""
    text = path.with_name("cohort_text.vcf")
    lines = [HEADER] + [
        f"chr1\t{pos}\t.\t{ref}\t{alt}\t50\t{filt}\tCSQ={csq}\tGT\t" + "\t".join(gts) + "\n"
        for pos, ref, alt, filt, csq, gts in records
    ]
    text.write_text("".join(lines))
    with pysam.VariantFile(str(text)) as src, pysam.VariantFile(str(path), "wz", header=src.header) as dst:
        for record in src:
            dst.write(record)
    pysam.tabix_index(str(path), preset="vcf", force=True)
    return path


@pytest.fixture(scope="module")
def cohort_zarr(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cohort_vcf")
    vcf = write_cohort_vcf(root / "cohort.vcf.gz")
    return vcf_to_zarr(vcf, root / "cohort.vcz", variants_chunk_size=2, samples_chunk_size=2)


def test_vcf_zarr_is_zarr_v3_chunked(cohort_zarr):
    import zarr

    assert json.loads((cohort_zarr / "zarr.json").read_text())["zarr_format"] == 3
    store = zarr.open_group(str(cohort_zarr), mode="r")
    assert store["call_genotype"].shape == (6, 5, 2) and store["call_genotype"].chunks == (2, 2, 2)


def test_carrier_counts_are_exact(cohort_zarr):
    patients = pd.Index(["S1", "S2", "S3", "S4", "S5", "S6"], name="patient_id")
    adata = carrier_matrix(cohort_zarr, patients=patients)
    table = pd.DataFrame(adata.X, index=adata.obs_names, columns=adata.var["gene_symbol"])
    assert list(adata.obs_names) == ["S1", "S2", "S3", "S4", "S5"]
    expected = {
        "S1": {"KRAS": 1},
        "S2": {"TP53": 2},
        "S3": {"TP53": 1, "EGFR": 1},
        "S4": {"BRAF": 1},
        "S5": {"TP53": 1},
    }
    for patient, genes in expected.items():
        row = table.loc[patient]
        assert row[row > 0].to_dict() == {g: float(n) for g, n in genes.items()}, patient
    assert "NRAS" not in set(adata.var["gene_symbol"])
    exclusions = adata.uns["ingest"]["exclusions"]
    assert exclusions["records_filter_not_pass"] == 1
    assert exclusions["patients_without_vcf_sample"] == 1
    assert exclusions["missing_calls_at_counted_records"] == 1  # S4 ./. at the TP53 record
    assert set(adata.var["feature_class"]) == {"gene_carrier"}


def test_canonical_rule_and_allow_list(cohort_zarr, tmp_path):
    patients = pd.Index(["S1", "S2", "S3", "S4", "S5"])
    canonical = carrier_matrix(cohort_zarr, patients=patients, filters=VariantFilters(transcripts="canonical"))
    assert "BRAF" not in set(canonical.var["gene_symbol"])
    genes = tmp_path / "genes.txt"
    genes.write_text("TP53\n")
    allowed = carrier_matrix(cohort_zarr, patients=patients, filters=VariantFilters.from_settings(genes=genes))
    assert list(allowed.var["gene_symbol"]) == ["TP53"]
    np.testing.assert_array_equal(allowed.X[:, 0], [0, 2, 1, 0, 1])
    lenient = carrier_matrix(cohort_zarr, patients=patients, filters=VariantFilters(filter=("PASS", "LowQual")))
    assert lenient.X[1, list(lenient.var["gene_symbol"]).index("KRAS")] == 1


def test_a_dask_distributed_cluster_gives_the_same_matrix(cohort_zarr):
    from distributed import LocalCluster

    patients = pd.Index(["S1", "S2", "S3", "S4", "S5"])
    local = carrier_matrix(cohort_zarr, patients=patients)
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None) as cluster:
        remote = carrier_matrix(cohort_zarr, patients=patients, scheduler=cluster.scheduler_address)
    np.testing.assert_array_equal(local.X, remote.X)
    assert remote.uns["ingest"]["params"]["scheduler"] == cluster.scheduler_address


def test_bad_inputs_are_one_line_errors(tmp_path):
    unindexed = tmp_path / "plain.vcf.gz"
    write_cohort_vcf(unindexed)
    Path(f"{unindexed}.tbi").unlink()
    with pytest.raises(MultimodalError, match=r"plain\.vcf\.gz: no \.tbi or \.csi index"):
        vcf_to_zarr(unindexed, tmp_path / "x.vcz")
    bad = write_cohort_vcf(
        tmp_path / "bad.vcf.gz", [("100", "A", "T", "PASS", "T|missense_varaint|MODERATE|TP53|G1|E1|YES", ["0/1"] * 5)]
    )
    store = vcf_to_zarr(bad, tmp_path / "bad.vcz")
    with pytest.raises(MultimodalError, match=r"bad\.vcz: record 1 \(position 100\): .*'missense_varaint'"):
        carrier_matrix(store, patients=pd.Index(["S1"]))
    with pytest.raises(MultimodalError, match=r"nothing\.vcz: not a VCF Zarr store"):
        carrier_matrix(tmp_path / "nothing.vcz", patients=pd.Index(["S1"]))
