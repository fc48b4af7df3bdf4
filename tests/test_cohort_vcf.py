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


def bgzipped_through_pysam(lines: list[str], path: Path) -> Path:
    """The VCF text ``lines`` written beside ``path``, re-written by pysam to ``path`` bgzipped, tabix-indexed."""
    text = path.with_name(path.name.removesuffix(".vcf.gz") + "_text.vcf")
    text.write_text("".join(lines))
    with pysam.VariantFile(str(text)) as src, pysam.VariantFile(str(path), "wz", header=src.header) as dst:
        for record in src:
            dst.write(record)
    pysam.tabix_index(str(path), preset="vcf", force=True)
    return path


def write_cohort_vcf(path: Path, records=RECORDS) -> Path:
    """A bgzipped, tabix-indexed multi-sample VCF written through pysam."""
    lines = [HEADER] + [
        f"chr1\t{pos}\t.\t{ref}\t{alt}\t50\t{filt}\tCSQ={csq}\tGT\t" + "\t".join(gts) + "\n"
        for pos, ref, alt, filt, csq, gts in records
    ]
    return bgzipped_through_pysam(lines, path)


def same_vcf_zarr(ours: Path, theirs: Path):
    """Assert two VCF Zarr stores hold the same arrays (names, dimension names, values; missing and fill floats
    told apart by their bits); return the first, opened."""
    import zarr

    a, b = zarr.open_group(str(ours), mode="r"), zarr.open_group(str(theirs), mode="r")
    assert set(a.array_keys()) == set(b.array_keys())
    for name in a.array_keys():
        x, y = a[name], b[name]
        assert x.metadata.dimension_names == y.metadata.dimension_names, name
        if x.dtype.kind == "f":  # missing / fill floats are NaNs told apart by their bits
            np.testing.assert_array_equal(x[:].view(np.int32), y[:].view(np.int32), err_msg=name)
        else:
            np.testing.assert_array_equal(x[:], y[:], err_msg=name)
    return a


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


HAPLOID_HEADER = HEADER.replace(
    "##contig=<ID=chr1,length=1000000>",
    '##contig=<ID=chr1,length=1000000>\n##contig=<ID=chrX>\n##INFO=<ID=SRC,Number=1,Type=String,Description="Caller">',
)
# chrX in a cohort of three women and two men: diploid and haploid calls in the same records; a tri-allelic
# record whose ALTs have different consequences, phased calls, a record without the annotation, a record in
# a later chunk with three ALTs and one with a triploid call (the arrays widen: alleles 4, ploidy 3)
HAPLOID_RECORDS = [
    (
        "100",
        "G",
        "A,T",
        "PASS",
        "A|missense_variant|MODERATE|AR|G6|E6|YES,T|synonymous_variant|LOW|AR|G6|E6|YES",
        ["0/1", "0|2", "1|1", "1", "2"],
    ),
    (
        "200",
        "C",
        "G",
        "PASS",
        "G|stop_gained|HIGH|DMD|G7|E7|YES,G|intron_variant|MODIFIER|DMD|G7|E7b|",
        ["./.", "0/0", "0/1", ".", "1"],
    ),
    ("300", "T", "C", "PASS", None, ["1/1", "1/1", "1/1", "1", "1"]),
    (
        "400",
        "A",
        "C,G,T",
        "PASS",
        "C|synonymous_variant|LOW|MECP2|G8|E8|YES,G|synonymous_variant|LOW|MECP2|G8|E8|YES,"
        "T|missense_variant&splice_region_variant|MODERATE|MECP2|G8|E8|YES",
        ["0/3", "1/2", "2/2", "3", "0"],
    ),
    ("500", "G", "A", "PASS", "A|frameshift_variant|HIGH|AR|G6|E6|YES", ["0/0/1", "0/0", "0/1", "0", "1"]),
]


def write_x_vcf(path: Path) -> Path:
    """The chrX cohort through pysam: bgzipped and tabix-indexed."""
    lines = [HAPLOID_HEADER]
    for pos, ref, alt, filt, csq, gts in HAPLOID_RECORDS:
        info = ";".join([f"CSQ={csq}"] * bool(csq) + [f"SRC=caller{pos}"] * (pos != "200")) or "."
        lines.append(f"chrX\t{pos}\t.\t{ref}\t{alt}\t50\t{filt}\t{info}\tGT\t" + "\t".join(gts) + "\n")
    return bgzipped_through_pysam(lines, path)


@pytest.fixture(scope="module")
def x_zarr(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("cohort_x")
    vcf = write_x_vcf(root / "x.vcf.gz")
    return vcf, vcf_to_zarr(vcf, root / "x.vcz", variants_chunk_size=2, samples_chunk_size=3, fields=("CSQ", "SRC"))


def test_haploid_multiallelic_counts_are_exact(x_zarr):
    _, store = x_zarr
    adata = carrier_matrix(store, patients=pd.Index(["S1", "S2", "S3", "S4", "S5"]))
    table = pd.DataFrame(adata.X, index=adata.obs_names, columns=adata.var["gene_symbol"])
    # AR 100: only A (allele 1) alters: S1 0/1, S3 1|1, S4 haploid 1; S2 0|2 and S5 haploid 2 carry the
    # synonymous T. AR 500: S2 is 0/0 and S4 haploid 0; S1's triploid 0/0/1, S3 0/1 and S5 haploid 1 carry it.
    # DMD: S3 0/1 and S5 haploid 1 (S1 ./. and S4 . are missing). 300 has no annotation. MECP2: only T (allele 3)
    # alters: S1 0/3 and S4 haploid 3; S2 1/2 and S3 2/2 carry synonymous ALTs.
    expected = {
        "S1": {"AR": 2, "MECP2": 1},
        "S2": {},
        "S3": {"AR": 2, "DMD": 1},
        "S4": {"AR": 1, "MECP2": 1},
        "S5": {"AR": 1, "DMD": 1},
    }
    for patient, genes in expected.items():
        row = table.loc[patient]
        assert row[row > 0].to_dict() == {g: float(n) for g, n in genes.items()}, patient
    exclusions = adata.uns["ingest"]["exclusions"]
    assert exclusions["records_no_annotation"] == 1
    assert exclusions["missing_calls_at_counted_records"] == 2  # S1 ./. and S4 . at the DMD record
    canonical = carrier_matrix(store, patients=pd.Index(["S1", "S3"]), filters=VariantFilters(transcripts="canonical"))
    s3 = dict(zip(canonical.var["gene_symbol"], canonical.X[1], strict=True))
    assert {g: n for g, n in s3.items() if n} == {"AR": 2.0, "DMD": 1.0}


def test_vcf_zarr_equals_bio2zarr_and_passes_its_verify(x_zarr, tmp_path):
    """The one-pass writer's arrays hold bio2zarr's values, dimension names and missing/fill codes."""
    from bio2zarr.vcz_verification import verify

    diploid = write_cohort_vcf(tmp_path / "diploid.vcf.gz")
    # bio2zarr's own check of every array against the VCF through cyvcf2 (it assumes one ploidy throughout)
    verify(str(diploid), str(vcf_to_zarr(diploid, tmp_path / "diploid.vcz", variants_chunk_size=4)))
    vcf, ours = x_zarr
    reference = vcf_to_zarr(vcf, tmp_path / "b2z.vcz", variants_chunk_size=2, samples_chunk_size=3, fields="all")
    a = same_vcf_zarr(ours, reference)
    assert a["call_genotype"].shape == (5, 5, 3) and a["variant_allele"].shape == (5, 4)
    assert a["call_genotype"][0, 3].tolist() == [1, -2, -2]  # a haploid call: padded with the fill value
    assert a["variant_CSQ"][2].tolist() == [".", ".", "."]  # no annotation: missing
    assert a["variant_SRC"][:].tolist() == ["caller100", ".", "caller300", "caller400", "caller500"]  # Number=1: 1-D
    assert a.attrs["vcf_zarr_version"] == "0.5"


def test_undeclared_filter_is_a_one_line_error(tmp_path):
    text = tmp_path / "undeclared.vcf"  # bgzipped as written (pysam refuses to write the record)
    text.write_text(HEADER + "chr1\t100\t.\tA\tT\t50\tq10\t.\tGT\t" + "\t".join(["0/1"] * 5) + "\n")
    vcf = Path(pysam.tabix_index(str(text), preset="vcf", force=True))
    with pytest.raises(MultimodalError, match=r"undeclared\.vcf\.gz: record 1 \(chr1:100\): FILTER 'q10' is not"):
        vcf_to_zarr(vcf, tmp_path / "u.vcz")


# Calls with FORMAT DP and AD for the per-call depth and allele-fraction filters (min_depth 10, min_vaf 0.2),
# what each call gives worked out by hand in the comments.
DEPTH_HEADER = HEADER.replace(
    "##FORMAT=<ID=GT",
    '##FORMAT=<ID=DP,Number=1,Type=Integer,Description="Read depth">\n'
    '##FORMAT=<ID=AD,Number=R,Type=Integer,Description="Allelic depths">\n##FORMAT=<ID=GT',
)
DEPTH_RECORDS = [
    # TP53 missense is G (allele 2); T synonymous. S1: G 10/30 kept. S2: depth 5 < 10. S3: G 5/40 = 0.125 < 0.2
    # (its T does not count). S4: no DP, depth from AD 12, G 4/12 kept. S5: no DP, no AD: missing depth.
    (
        "100",
        "A",
        "T,G",
        "T|synonymous_variant|LOW|TP53|G1|E1|YES,G|missense_variant|MODERATE|TP53|G1|E1|YES",
        ["0/2:30:20,0,10", "0/2:5:3,0,2", "1/2:40:10,25,5", "0/2:.:8,0,4", "2/2:.:."],
    ),
    # KRAS missense. S1: 5/20 kept. S2: depth 20, no AD: missing VAF. S4: 2/20 = 0.1 < 0.2.
    (
        "200",
        "G",
        "C",
        "C|missense_variant|MODERATE|KRAS|G2|E2|YES",
        ["0/1:20:15,5", "0/1:20:.", "0/0:20:20,0", "0/1:20:18,2", "0/0:30:30,0"],
    ),
]


@pytest.fixture(scope="module")
def depth_vcf(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("depth_vcf")
    lines = [DEPTH_HEADER] + [
        f"chr1\t{pos}\t.\t{ref}\t{alt}\t50\tPASS\tCSQ={csq}\tGT:DP:AD\t" + "\t".join(calls) + "\n"
        for pos, ref, alt, csq, calls in DEPTH_RECORDS
    ]
    return bgzipped_through_pysam(lines, root / "depth.vcf.gz")


def carriers(adata) -> dict[str, dict[str, float]]:
    table = pd.DataFrame(adata.X, index=adata.obs_names, columns=adata.var["gene_symbol"])
    return {p: {g: float(n) for g, n in row.items() if n} for p, row in table.iterrows()}


def test_per_call_depth_and_vaf_thresholds(depth_vcf, tmp_path):
    import zarr

    patients = pd.Index(["S1", "S2", "S3", "S4", "S5"])
    store = vcf_to_zarr(
        depth_vcf, tmp_path / "d.vcz", variants_chunk_size=1, samples_chunk_size=2, format_fields=("DP", "AD")
    )
    group = zarr.open_group(str(store), mode="r")
    assert group["call_DP"][:].tolist() == [[30, 5, 40, -1, -1], [20, 20, 20, 20, 30]]  # -1: missing
    assert group["call_AD"][0].tolist() == [[20, 0, 10], [3, 0, 2], [10, 25, 5], [8, 0, 4], [-1, -2, -2]]
    assert group["call_AD"][1, 1].tolist() == [-1, -2, -2]  # '.' then the fill of the wider record's width
    everyone = carriers(carrier_matrix(store, patients=patients))
    assert everyone == {
        "S1": {"TP53": 1, "KRAS": 1},
        "S2": {"TP53": 1, "KRAS": 1},
        "S3": {"TP53": 1},
        "S4": {"TP53": 1, "KRAS": 1},
        "S5": {"TP53": 1},
    }
    both = carrier_matrix(store, patients=patients, filters=VariantFilters(min_depth=10, min_vaf=0.2))
    assert carriers(both) == {"S1": {"TP53": 1, "KRAS": 1}, "S2": {}, "S3": {}, "S4": {"TP53": 1}, "S5": {}}
    exclusions = both.uns["ingest"]["exclusions"]
    assert {k: v for k, v in exclusions.items() if k.startswith("carrier_calls")} == {
        "carrier_calls_missing_depth": 1,  # S5 at TP53
        "carrier_calls_below_min_depth": 1,  # S2 at TP53
        "carrier_calls_missing_vaf": 1,  # S2 at KRAS
        "carrier_calls_below_min_vaf": 2,  # S3 at TP53, S4 at KRAS
    }
    depth_only = carrier_matrix(store, patients=patients, filters=VariantFilters(min_depth=10))
    assert carriers(depth_only) == {
        "S1": {"TP53": 1, "KRAS": 1},
        "S2": {"KRAS": 1},
        "S3": {"TP53": 1},
        "S4": {"TP53": 1, "KRAS": 1},
        "S5": {},
    }
    plain = vcf_to_zarr(depth_vcf, tmp_path / "plain.vcz")  # converted without DP/AD
    with pytest.raises(MultimodalError, match=r"plain\.vcz: ingest\.variant_filters\.min_vaf is set but .* no call_AD"):
        carrier_matrix(plain, patients=patients, filters=VariantFilters(min_vaf=0.2))
    # the same arrays as bio2zarr's converter keeps for DP and AD
    reference = zarr.open_group(str(vcf_to_zarr(depth_vcf, tmp_path / "b2z.vcz", fields="all")), mode="r")
    for name in ("call_DP", "call_AD"):
        np.testing.assert_array_equal(group[name][:], reference[name][:], err_msg=name)
    assert carriers(
        carrier_matrix(reference.store.root, patients=patients, filters=VariantFilters(min_depth=10, min_vaf=0.2))
    ) == carriers(both)


def test_the_workflow_passes_depth_and_vaf_to_the_verb(depth_vcf, tmp_path):
    """The rule's command carries the config's variant filters (a Snakemake dry run), and the verb, run as that
    command runs it, converts DP and AD and applies them."""
    import subprocess
    import sys

    import anndata as ad
    import yaml

    (tmp_path / "samples.tsv").write_text("patient_id\nS1\nS2\nS3\n")
    (tmp_path / "clinical.tsv").write_text("patient_id\tos_time\tos_event\nS1\t1\t0\nS2\t2\t1\nS3\t3\t1\n")
    repo = Path(__file__).resolve().parents[1]
    config = yaml.safe_load((repo / "config/config.yaml").read_text())
    config |= {"samples": str(tmp_path / "samples.tsv"), "clinical": str(tmp_path / "clinical.tsv")}
    config |= {"expression": None, "outdir": str(tmp_path / "out"), "data_roots": [str(depth_vcf.parent)]}
    config |= {"cohort_vcf": str(depth_vcf)}
    config["simulate"]["enabled"] = False
    config["ingest"]["variant_filters"] |= {"min_depth": 10, "min_vaf": 0.2, "filter": ["PASS", "LowQual"]}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    command = [sys.executable, "-m", "snakemake", "--snakefile", str(repo / "Snakefile"), "--directory", str(repo)]
    command += ["--configfile", str(tmp_path / "c.yaml"), "--cores", "1", "--nolock", "--dry-run"]
    command += ["--printshellcmds", f"{tmp_path}/out/interim/cohort_variants/cohort_variants.h5ad"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    shell = next(line for line in done.stdout.splitlines() if "multimodal ingest cohort-vcf" in line)
    assert "--filter PASS LowQual --min-depth 10 --min-vaf 0.2" in shell
    out = tmp_path / "carriers.h5ad"
    entry_point = str(Path(sys.executable).parent / "multimodal")  # as the rule's shell runs it
    cli = [entry_point, "ingest", "cohort-vcf", "-q", "--samples", str(tmp_path / "samples.tsv")]
    cli += ["--vcf", str(depth_vcf), "--zarr", str(tmp_path / "c.vcz"), "--data-root", str(depth_vcf.parent)]
    cli += ["--data-root", str(tmp_path), "--min-depth", "10", "--min-vaf", "0.2", "--out", str(out)]
    done = subprocess.run(cli, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert carriers(ad.read_h5ad(out)) == {"S1": {"TP53": 1, "KRAS": 1}, "S2": {}, "S3": {}}


def _same_matrix(one_pass, two_step) -> None:
    assert list(one_pass.obs_names) == list(two_step.obs_names)
    pd.testing.assert_frame_equal(one_pass.var, two_step.var)
    np.testing.assert_array_equal(one_pass.X, two_step.X)
    np.testing.assert_array_equal(one_pass.layers["counts"], two_step.layers["counts"])
    ours, theirs = dict(one_pass.uns["ingest"]), dict(two_step.uns["ingest"])
    assert ours["exclusions"] == theirs["exclusions"]
    assert {k: v for k, v in ours["params"].items() if k != "vcf_zarr"} == {
        k: v for k, v in theirs["params"].items() if k != "vcf_zarr"
    }


@pytest.mark.parametrize(
    "fixture, filters, chunks",
    [
        ("cohort", VariantFilters(), (2, 2)),
        ("cohort", VariantFilters(transcripts="canonical"), (4, 3)),
        ("cohort", VariantFilters(filter=("PASS", "LowQual")), (1, 5)),
        ("x", VariantFilters(), (2, 3)),  # haploid, tri-allelic, widening alleles and ploidy across chunks
        ("x", VariantFilters(transcripts="canonical"), (3, 2)),
        ("depth", VariantFilters(min_depth=10, min_vaf=0.2), (1, 2)),
        ("depth", VariantFilters(min_depth=10), (2, 5)),
    ],
)
def test_one_pass_conversion_gives_the_two_step_matrix_and_store(fixture, filters, chunks, depth_vcf, tmp_path):
    """`cohort_vcf_carriers` (the matrix reduced chunk by chunk as the VCF is converted) against converting, then
    `carrier_matrix` on the written VCF Zarr: the same matrix, gene order, exclusions, and the same VCF Zarr."""

    from multimodal.ingest.cohort_vcf import cohort_vcf_carriers

    vcf = {
        "cohort": lambda: write_cohort_vcf(tmp_path / "c.vcf.gz"),
        "x": lambda: write_x_vcf(tmp_path / "x.vcf.gz"),
        "depth": lambda: depth_vcf,
    }[fixture]()
    patients = pd.Index(["S5", "S1", "S2", "S3", "S4", "S9"])  # an order of their own, one without a sample
    format_fields = ("DP", "AD") if filters.min_depth or filters.min_vaf else ()
    size = {"variants_chunk_size": chunks[0], "samples_chunk_size": chunks[1]}
    store = vcf_to_zarr(vcf, tmp_path / "two.vcz", format_fields=format_fields, **size)
    two_step = carrier_matrix(store, patients=patients, filters=filters)
    one_pass = cohort_vcf_carriers(vcf, tmp_path / "one.vcz", patients=patients, filters=filters, **size)
    _same_matrix(one_pass, two_step)
    assert one_pass.X.sum() > 0 and one_pass.uns["ingest"]["params"]["vcf_zarr"] == str(tmp_path / "one.vcz")
    same_vcf_zarr(tmp_path / "one.vcz", store)


def test_one_pass_errors_name_the_vcf_and_record_and_write_nothing(tmp_path):
    from multimodal.ingest.cohort_vcf import cohort_vcf_carriers

    good = [r for r in RECORDS if r[3] == "PASS"][:3]
    bad = write_cohort_vcf(
        tmp_path / "bad.vcf.gz",
        [*good, ("900", "A", "T", "PASS", "T|missense_varaint|MODERATE|TP53|G1|E1|YES", ["0/1"] * 5)],
    )
    # the bad record is the 4th, in the second chunk of 2: its number counts the records before the chunk
    with pytest.raises(MultimodalError, match=r"bad\.vcf\.gz: record 4 \(position 900\): .*'missense_varaint'"):
        cohort_vcf_carriers(bad, tmp_path / "bad.vcz", patients=pd.Index(["S1"]), variants_chunk_size=2)
    assert not (tmp_path / "bad.vcz").exists()
    short = write_cohort_vcf(
        tmp_path / "short.vcf.gz",
        [
            *good,
            ("900", "A", "T", "PASS", "T|missense_variant|MODERATE|TP53|G1|E1|YES,T|missense_variant", ["0/1"] * 5),
        ],
    )
    with pytest.raises(
        MultimodalError, match=r"short\.vcf\.gz: record 4 \(position 900\): INFO/CSQ entry 2 has 2 '\|'"
    ):
        cohort_vcf_carriers(short, tmp_path / "short.vcz", patients=pd.Index(["S1"]), variants_chunk_size=3)
    assert not (tmp_path / "short.vcz").exists()
    with pytest.raises(MultimodalError, match=r"bad\.vcf\.gz: none of its 5 samples is a patient"):
        cohort_vcf_carriers(bad, tmp_path / "none.vcz", patients=pd.Index(["P1", "P2"]))
    assert not (tmp_path / "none.vcz").exists()
    with pytest.raises(MultimodalError, match=r"bad\.vcf\.gz: ingest\.variant_filters\.min_vaf is set but .* call_AD"):
        cohort_vcf_carriers(bad, tmp_path / "vaf.vcz", patients=pd.Index(["S1"]), filters=VariantFilters(min_vaf=0.2))
    assert not (tmp_path / "vaf.vcz").exists()


@pytest.mark.parametrize("annotation_field", ["CSQ", "BCSQ"])
def test_a_bcftools_csq_cohort_vcf_is_named_and_refused_in_one_line(tmp_path, annotation_field):
    from multimodal.ingest.cohort_vcf import cohort_vcf_carriers

    header = HEADER.split("##INFO=<ID=CSQ")[0] + (
        '##INFO=<ID=BCSQ,Number=.,Type=String,Description="Haplotype-aware consequence annotation from BCFtools/csq. '
        'Format: Consequence|gene|transcript|biotype|strand|amino_acid_change|dna_change">\n'
    )
    header += HEADER.split("##INFO=<ID=CSQ")[1].split("\n", 1)[1]
    line = "chr1\t100\t.\tA\tT\t50\tPASS\tBCSQ=missense|TP53|ENST1|protein_coding|+|1A>1V|100A>T\tGT\t" + "\t".join(
        ["0/1"] * 5
    )
    vcf = bgzipped_through_pysam([header, line + "\n"], tmp_path / "bcsq.vcf.gz")
    with pytest.raises(MultimodalError, match=r"bcsq\.vcf\.gz: .*INFO/BCSQ is bcftools csq's haplotype-aware"):
        cohort_vcf_carriers(
            vcf, tmp_path / "b.vcz", patients=pd.Index(["S1"]), annotation_field=annotation_field, fields=()
        )
    assert not (tmp_path / "b.vcz").exists()


def test_a_cohort_bcf_gives_the_matrix_of_its_vcf(tmp_path):
    """The same cohort as BCF (written and CSI-indexed by pysam's htslib): the same store arrays and matrix."""

    from multimodal.ingest.cohort_vcf import cohort_vcf_carriers

    vcf = write_x_vcf(tmp_path / "x.vcf.gz")
    bcf = tmp_path / "x.bcf"
    with pysam.VariantFile(str(vcf)) as src, pysam.VariantFile(str(bcf), "wb", header=src.header) as dst:
        for record in src:
            dst.write(record)
    pysam.tabix_index(str(bcf), preset="bcf", csi=True, force=True)
    patients = pd.Index(["S1", "S2", "S3", "S4", "S5"])
    from_vcf = cohort_vcf_carriers(vcf, tmp_path / "v.vcz", patients=patients, variants_chunk_size=2)
    from_bcf = cohort_vcf_carriers(bcf, tmp_path / "b.vcz", patients=patients, variants_chunk_size=2)
    _same_matrix(from_bcf, from_vcf)
    assert from_bcf.X.sum() == 10  # test_haploid_multiallelic_counts_are_exact: 3 + 0 + 3 + 2 + 2
    same_vcf_zarr(tmp_path / "b.vcz", tmp_path / "v.vcz")
