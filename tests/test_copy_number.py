"""Copy number: GISTIC2's all_thresholded.by_genes.txt as the cnv modality with its own feature class."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from multimodal.errors import MultimodalError
from multimodal.ingest.copy_number import copy_number_matrix

# The exact layout GISTIC2 writes: tab-separated, Gene Symbol / Locus ID / Cytoband, then sample barcodes.
GISTIC = (
    "Gene Symbol\tLocus ID\tCytoband\tTCGA-AB-0001-01A-11D-A00R-01\tTCGA-AB-0002-01A-11D-A00R-01\t"
    "TCGA-AB-0003-01A-11D-A00R-01\tTCGA-ZZ-9999-01A-11D-A00R-01\n"
    "ACAP3\t116983\t1p36.33\t0\t-1\t0\t0\n"
    "ERBB2\t2064\t17q12\t2\t0\t1\t0\n"
    "CDKN2A\t1029\t9p21.3\t-2\t-2\t0\t-1\n"
    "MYC\t4609\t8q24.21\t0\t0\t0\t2\n"  # constant over the sheet's patients (only the unclaimed sample varies)
)


def write(path: Path, text: str = GISTIC) -> Path:
    path.write_text(text)
    return path


def test_gistic_thresholded_calls_by_barcode_prefix(tmp_path):
    path = write(tmp_path / "all_thresholded.by_genes.txt")
    patients = pd.Index(["TCGA-AB-0002", "TCGA-AB-0001", "TCGA-AB-0003", "TCGA-AB-0004"], name="patient_id")
    adata = copy_number_matrix(path, patients=patients)
    assert list(adata.obs_names) == ["TCGA-AB-0001", "TCGA-AB-0002", "TCGA-AB-0003"]
    assert list(adata.var_names) == ["ACAP3_cn", "ERBB2_cn", "CDKN2A_cn"]
    np.testing.assert_array_equal(adata.X, [[0, 2, -2], [-1, 0, -2], [0, 1, 0]])
    assert set(adata.var["feature_class"]) == {"gene_copy_number"}
    assert adata.var.loc["ERBB2_cn", "cytoband"] == "17q12"
    assert adata.uns["ingest"]["exclusions"] == {
        "patients_without_copy_number": 1,
        "cnv_samples_not_in_samples_sheet": 1,
        "cnv_samples_matched_by_barcode_prefix": 3,
        "genes_constant_in_all_patients": 1,
    }


def test_bad_calls_and_repeated_genes_are_named(tmp_path):
    patients = pd.Index(["TCGA-AB-0001", "TCGA-AB-0002"])
    bad = write(tmp_path / "bad.txt", GISTIC.replace("ERBB2\t2064\t17q12\t2\t0", "ERBB2\t2064\t17q12\t3.5\t0"))
    with pytest.raises(MultimodalError, match=r"bad\.txt: 1 cell\(s\) .*line 3 \(gene 'ERBB2', sample 'TCGA-AB-0001"):
        copy_number_matrix(bad, patients=patients)
    twice = write(tmp_path / "twice.txt", GISTIC + "ERBB2\t2064\t17q12\t0\t0\t0\t0\n")
    with pytest.raises(MultimodalError, match=r"twice\.txt: gene symbol repeated: line 3 \('ERBB2'\), line 6"):
        copy_number_matrix(twice, patients=patients)
    seg = write(tmp_path / "seg.txt", "ID\tchrom\tloc.start\tloc.end\tnum.mark\tseg.mean\nS1\t1\t1\t100\t5\t0.1\n")
    with pytest.raises(MultimodalError, match=r"seg\.txt: no 'Gene Symbol' column"):
        copy_number_matrix(seg, patients=patients)
    short = write(tmp_path / "short.txt", GISTIC.replace("\t-1\n", "\n"))
    with pytest.raises(MultimodalError, match=r"short\.txt: line 4: 6 fields, the header has 7"):
        copy_number_matrix(short, patients=patients)


CLINICAL_ROWS = [
    "TCGA-AB-0001\t10\t1\t60\tF\tA\tS1\t1\n",
    "TCGA-AB-0002\t20\t0\t55\tM\tB\tS1\t0\n",
    "TCGA-AB-0003\t5\t1\t70\tF\tA\tS2\t1\n",
    "TCGA-AB-0004\t8\t1\t64\tM\tB\tS2\t0\n",
]


def cli_cnv_store(tmp_path: Path, n_patients: int, source: list[str], source_files: list[Path]):
    """``multimodal ingest copy-number`` (``source``: its input options) then ``assemble`` for the first
    ``n_patients`` of TCGA-AB-0001..4; returns the store read back and the CLI's common options."""
    from multimodal.cli import main
    from multimodal.store import read_cohort_store

    rows = CLINICAL_ROWS[:n_patients]
    (tmp_path / "samples.tsv").write_text("patient_id\n" + "".join(r.split("\t")[0] + "\n" for r in rows))
    (tmp_path / "clinical.tsv").write_text(
        "patient_id\tos_time\tos_event\tage\tsex\tarm\tsite\tresponse\n" + "".join(rows)
    )
    common = ["--samples", str(tmp_path / "samples.tsv"), "--data-root", str(tmp_path)]
    out = tmp_path / "cnv.h5ad"
    assert main(["ingest", "copy-number", "-q", *common, *source, "--out", str(out)]) == 0
    store = tmp_path / "cohort.zarr"
    argv = ["assemble", "-q", *common, "--clinical", str(tmp_path / "clinical.tsv"), "--table", f"cnv={out}"]
    assert main([*argv, "--table-source", *map(str, source_files), "--out", str(store)]) == 0
    return read_cohort_store(store), common


def test_cli_ingest_and_assemble_as_the_cnv_modality(tmp_path):
    gistic = write(tmp_path / "all_thresholded.by_genes.txt")
    mdata, _ = cli_cnv_store(tmp_path, 3, ["--table", str(gistic)], [gistic])
    assert mdata["cnv"].var["feature_class"].unique().tolist() == ["gene_copy_number"]
    assert mdata["cnv"]["TCGA-AB-0002"].X.tolist() == [[-1, 0, -2]]
    assert mdata.uns["provenance"]["exclusions"]["cnv"]["cnv_samples_not_in_samples_sheet"] == 1


# --- segments + a gene BED ------------------------------------------------------------------------
# A DNAcopy/cBioPortal .seg (1-based, both ends included), as DNAcopy's segments table is written. Sample 1
# on chromosome 1: bases 1-1000 at +1, 1001-2000 at -1, a gap, 3001-4000 at +0.5; X as 23; one segment on
# an unplaced contig; an R-printed 1e+05 end. Sample 3: chromosome 1 at -1.5, nothing on X. Sample ZZ is
# not in the sheet.
SEG = (
    "ID\tchrom\tloc.start\tloc.end\tnum.mark\tseg.mean\n"
    "TCGA-AB-0001-01A-11D-A00R-01\t1\t1\t1000\t12\t1\n"
    "TCGA-AB-0001-01A-11D-A00R-01\t1\t1001\t2000\t15\t-1\n"
    "TCGA-AB-0001-01A-11D-A00R-01\t1\t3001\t4000\t9\t0.5\n"
    "TCGA-AB-0001-01A-11D-A00R-01\t2\t1\t1000\t9\t0.3\n"
    "TCGA-AB-0001-01A-11D-A00R-01\t23\t1\t1e+05\t40\t0.25\n"
    "TCGA-AB-0001-01A-11D-A00R-01\tGL000192.1\t1\t500\t3\t-0.7\n"
    "TCGA-AB-0003-01A-11D-A00R-01\t1\t1\t4000\t30\t-1.5\n"
    "TCGA-ZZ-9999-01A-11D-A00R-01\t1\t1\t4000\t30\t0.1\n"
)
# A CNVkit .cns for sample 2 (0-based half-open like BED, chr-prefixed names; the sample is the file name).
CNS = (
    "chromosome\tstart\tend\tgene\tlog2\tdepth\tprobes\tweight\n"
    "chr1\t0\t4000\tGENE1,GENE2\t-2\t120.5\t40\t35.2\n"
    "chr2\t0\t1000\tGENE3\t0.3\t300.1\t9\t8.1\n"
    "chrX\t0\t5000\tGENE4\t1\t410.0\t50\t44.0\n"
    "chrY\t0\t1000\tGENE5\t-1\t50.2\t10\t9.0\n"
)
# The gene BED (0-based half-open), with what sample 1's segments give each gene, by hand:
BED = (
    "# genes\n"
    "chr1\t968\t1096\tSPAN\t0\t+\n"  # bases 969-1096: 32 at +1, 96 at -1 -> (32 - 96) / 128 = -0.5
    "chr1\t1000\t1001\tEDGE\t0\t+\n"  # base 1001, the first of the second segment -> -1
    "chr1\t999\t1000\tLAST\t0\t-\n"  # base 1000, the last of the first segment -> +1
    "chr1\t2000\t3000\tGAP\t0\t+\n"  # bases 2001-3000, between the segments -> missing
    "chr1\t1984\t3016\tPARTIAL\t0\t+\n"  # 16 bases at -1, the gap, 16 at +0.5 -> -0.25
    "chrX\t0\t100\tXGENE\t0\t+\n"  # 23 = X -> 0.25
    "chrX\t200\t300\tPARGENE\t0\t+\n"  # pooled with its chrY line below
    "chr2\t100\t200\tCONST\t0\t+\n"  # 0.3 in both patients that have a value -> dropped
    "chr5\t0\t100\tNOWHERE\t0\t+\n"  # no segment in any sample -> dropped
    "chr1_KI270706v1_random\t0\t100\tRANDOM\t0\t+\n"  # other contig -> counted
    "chrY\t200\t300\tPARGENE\t0\t+\n"
)
SEG_PATIENTS = pd.Index(["TCGA-AB-0001", "TCGA-AB-0002", "TCGA-AB-0003", "TCGA-AB-0004"], name="patient_id")


def segment_inputs(tmp_path: Path) -> tuple[list[Path], Path]:
    seg = write(tmp_path / "cohort.seg", SEG)
    cns = write(tmp_path / "TCGA-AB-0002-01A.call.cns", CNS)
    return [seg, cns], write(tmp_path / "genes.bed", BED)


def test_segments_length_weighted_per_gene(tmp_path):
    from multimodal.ingest.copy_number import segment_copy_number

    segments, bed = segment_inputs(tmp_path)
    adata = segment_copy_number(segments, bed, patients=SEG_PATIENTS)
    assert list(adata.obs_names) == ["TCGA-AB-0001", "TCGA-AB-0003", "TCGA-AB-0002"]
    assert list(adata.obs["cnv_sample"]) == [
        "TCGA-AB-0001-01A-11D-A00R-01",
        "TCGA-AB-0003-01A-11D-A00R-01",
        "TCGA-AB-0002-01A",
    ]
    genes = ["SPAN", "EDGE", "LAST", "GAP", "PARTIAL", "XGENE", "PARGENE"]
    assert list(adata.var_names) == [f"{g}_cn" for g in genes]
    # sample 2 (.cns): chr1 all -2; X +1 and Y -1 weigh 100 bases each in PARGENE -> 0
    expected = [
        [-0.5, -1, 1, np.nan, -0.25, 0.25, 0.25],
        [-1.5, -1.5, -1.5, -1.5, -1.5, np.nan, np.nan],
        [-2, -2, -2, -2, -2, 1, 0],
    ]
    np.testing.assert_allclose(adata.X, expected, rtol=0, atol=1e-7)
    assert list(adata.obs["cnv_genes_missing"]) == [1, 2, 0]
    assert adata.var.loc["PARTIAL_cn", "locus"] == "1:1985-3016"  # shown 1-based
    assert set(adata.var["feature_class"]) == {"gene_copy_number"}
    assert adata.uns["ingest"]["exclusions"] == {
        "patients_without_copy_number": 1,
        "cnv_samples_not_in_samples_sheet": 1,
        "cnv_samples_matched_by_barcode_prefix": 3,
        "segments_on_other_contigs": 1,
        "segments_without_copy_ratio_estimate": 0,
        "gene_bed_lines_on_other_contigs": 1,
        "gene_bed_lines_pooled_into_one_gene": 2,
        "genes_without_segments_in_any_patient": 1,
        "genes_constant_in_all_patients": 1,
        "gene_values_missing": 3,
    }


def test_segments_thresholded_to_calls(tmp_path):
    from multimodal.ingest.copy_number import call_thresholds, segment_copy_number

    # a value on a threshold takes the call beyond it; missing stays missing
    values = np.array([-1.5, -1.0, -0.5, -0.25, 0.0, 0.25, 0.5, 1.0, 3.0, np.nan])
    np.testing.assert_array_equal(
        call_thresholds(values, [-1.0, -0.25, 0.25, 1.0]), [-2, -2, -1, -1, 0, 1, 1, 2, 2, np.nan]
    )
    segments, bed = segment_inputs(tmp_path)
    adata = segment_copy_number(segments, bed, patients=SEG_PATIENTS, thresholds=[-1.0, -0.25, 0.25, 1.0])
    # EDGE and GAP are -2 in every patient with a value once called: dropped with CONST
    assert list(adata.var_names) == ["SPAN_cn", "LAST_cn", "PARTIAL_cn", "XGENE_cn", "PARGENE_cn"]
    np.testing.assert_array_equal(adata.X, [[-1, 2, -1, 1, 1], [-2, -2, -2, np.nan, np.nan], [-2, -2, -2, 2, 0]])
    assert adata.uns["ingest"]["exclusions"]["genes_constant_in_all_patients"] == 3
    with pytest.raises(MultimodalError, match=r"thresholds: \[0.2, -0.25, 0.5, 1.0\] is not four ascending"):
        segment_copy_number(segments, bed, patients=SEG_PATIENTS, thresholds=[0.2, -0.25, 0.5, 1.0])


def test_gdc_segment_header(tmp_path):
    from multimodal.ingest.copy_number import segment_copy_number

    gdc = SEG.replace(
        "ID\tchrom\tloc.start\tloc.end\tnum.mark\tseg.mean",
        "GDC_Aliquot\tChromosome\tStart\tEnd\tNum_Probes\tSegment_Mean",
    )
    seg = write(tmp_path / "masked.seg.txt", gdc)
    bed = write(tmp_path / "genes.bed", BED)
    adata = segment_copy_number([seg], bed, patients=SEG_PATIENTS)
    assert adata.obs_names.tolist() == ["TCGA-AB-0001", "TCGA-AB-0003"]
    assert adata[:, ["EDGE_cn", "LAST_cn"]].X.tolist() == [[-1, 1], [-1.5, -1.5]]


# GATK ModelSegments output for sample 4 (1-based, SAM-style header naming the sample): the second segment has
# allele-fraction points only, so GATK gives it no copy ratio (NaN); genes count only the bases of the others.
GATK_MODEL_FINAL = (
    "@HD\tVN:1.6\n"
    "@SQ\tSN:chr1\tLN:248956422\n"
    "@SQ\tSN:chrX\tLN:156040895\n"
    "@RG\tID:GATKCopyNumber\tSM:TCGA-AB-0004-01A\n"
    "CONTIG\tSTART\tEND\tNUM_POINTS_COPY_RATIO\tNUM_POINTS_ALLELE_FRACTION\tLOG2_COPY_RATIO_POSTERIOR_10\t"
    "LOG2_COPY_RATIO_POSTERIOR_50\tLOG2_COPY_RATIO_POSTERIOR_90\tMINOR_ALLELE_FRACTION_POSTERIOR_10\t"
    "MINOR_ALLELE_FRACTION_POSTERIOR_50\tMINOR_ALLELE_FRACTION_POSTERIOR_90\n"
    "chr1\t1\t1000\t12\t3\t0.9\t1\t1.1\t0.2\t0.3\t0.4\n"
    "chr1\t1001\t2000\t0\t5\tNaN\tNaN\tNaN\t0.1\t0.2\t0.3\n"
    "chr1\t2001\t4000\t30\t8\t0.4\t0.5\t0.6\t0.4\t0.45\t0.5\n"
    "chrX\t1\t300\t10\t0\t0.7\t0.8\t0.9\tNaN\tNaN\tNaN\n"
)


def test_gatk_model_segments_with_a_segment_without_copy_ratio(tmp_path):
    from multimodal.ingest.copy_number import read_segments, segment_copy_number

    seg = write(tmp_path / "tumour.modelFinal.seg", GATK_MODEL_FINAL)
    bed = write(tmp_path / "genes.bed", BED)
    frame, kind = read_segments(seg)
    assert kind == "GATK .seg (1-based)"
    assert frame.index.tolist() == [6, 7, 8, 9]  # file lines: the four header lines and the column names count
    assert frame["start"].tolist() == [0, 1000, 2000, 0]  # 1-based -> 0-based half-open
    adata = segment_copy_number([seg], bed, patients=SEG_PATIENTS)
    assert adata.obs_names.tolist() == ["TCGA-AB-0004"]
    assert adata.obs["cnv_sample"].tolist() == ["TCGA-AB-0004-01A"]
    # SPAN: 32 bases at +1, 96 in the segment without an estimate -> +1; EDGE lies only in that one -> no value
    # (dropped); PARTIAL: 16 bases there, 1,016 at 0.5 -> 0.5; PARGENE: chrX 0.8, nothing on chrY
    assert adata.var_names.tolist() == ["SPAN_cn", "LAST_cn", "GAP_cn", "PARTIAL_cn", "XGENE_cn", "PARGENE_cn"]
    np.testing.assert_allclose(adata.X, [[1, 1, 0.5, 0.5, 0.8, 0.8]], rtol=0, atol=1e-7)
    exclusions = adata.uns["ingest"]["exclusions"]
    assert exclusions["segments_without_copy_ratio_estimate"] == 1
    assert exclusions["genes_without_segments_in_any_patient"] == 3  # EDGE, CONST, NOWHERE (RANDOM: other contig)
    called = (
        "@HD\tVN:1.6\n@RG\tID:GATKCopyNumber\tSM:TCGA-AB-0004-01A\n"
        "CONTIG\tSTART\tEND\tNUM_POINTS_COPY_RATIO\tMEAN_LOG2_COPY_RATIO\tCALL\n"
        "1\t1\t1000\t12\t-1\t-\n1\t1001\t4000\t40\t0.25\t0\n"
    )
    adata = segment_copy_number([write(tmp_path / "tumour.called.seg", called)], bed, patients=SEG_PATIENTS)
    assert adata[:, ["SPAN_cn", "EDGE_cn", "GAP_cn"]].X.tolist() == [[-0.0625, 0.25, 0.25]]  # (32 x -1 + 96 x 0.25)/128


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        (
            "chr1\t2001\t4000\t30\t8\t0.4\t0.5\t",
            "chr1\t2001\t4000\t30\t8\t0.4\tNaN\t",
            r"modelFinal\.seg: line 8: LOG2_COPY_RATIO_POSTERIOR_50 'NaN' is not a finite number",
        ),
        ("\tSM:TCGA-AB-0004-01A\n", "\n", r"modelFinal\.seg: a GATK segment file's @RG header line names its one "),
        ("\tLOG2_COPY_RATIO_POSTERIOR_50\t", "\tLOG2_POSTERIOR_50\t", r"modelFinal\.seg: no log2 column .* a GATK"),
    ],
)
def test_gatk_segment_errors_name_file_and_line(tmp_path, old, new, message):
    from multimodal.ingest.copy_number import segment_copy_number

    assert old in GATK_MODEL_FINAL
    seg = write(tmp_path / "tumour.modelFinal.seg", GATK_MODEL_FINAL.replace(old, new, 1))
    with pytest.raises(MultimodalError, match=message):
        segment_copy_number([seg], write(tmp_path / "genes.bed", BED), patients=SEG_PATIENTS)


@pytest.mark.parametrize(
    ("file", "old", "new", "message"),
    [
        ("seg", "\t3001\t4000\t", "\t4000\t3001\t", r"cohort\.seg: line 4: segment '4000-3001' ends before it starts"),
        (
            "seg",
            "\t1\t1001\t2000\t",
            "\tchromosome1\t1001\t2000\t",
            r"cohort\.seg: line 3: chromosome 'chromosome1' is not a chromosome name",
        ),
        ("seg", "\t0.5\n", "\thigh\n", r"cohort\.seg: line 4: seg\.mean 'high' is not a finite number"),
        (
            "seg",
            "\t1\t1001\t2000\t",
            "\t1\t1000\t2000\t",
            r"cohort\.seg: segments of sample 'TCGA-AB-0001-01A-11D-A00R-01' overlap: "
            r"line 2 \(1:1-1000\) and line 3 \(1:1000-2000\)",
        ),
        ("seg", "\t1\t1\t1000\t", "\t1\t0\t1000\t", r"cohort\.seg: line 2: loc\.start '0' is below 1"),
        (
            "seg",
            "\t1\t1001\t2000\t",
            "\t1\t1001.5\t2000\t",
            r"cohort\.seg: line 3: loc\.start '1001\.5' is not a whole number",
        ),
        (
            "bed",
            "chr1\t968\t1096",
            "chr1\t1096\t968",
            r"genes\.bed: line 2: gene '1096-968' does not end after it starts",
        ),
        (
            "bed",
            "# genes\n",
            "chrom\tstart\tend\tname\n",
            r"genes\.bed: line 1: start 'start' is not a whole number \(a header line\?",
        ),
        ("bed", "chr5\t0\t100\tNOWHERE\t0\t+\n", "chr5\t0\t100\n", r"genes\.bed: line 10: 3 tab-separated field\(s\)"),
    ],
)
def test_segment_and_bed_errors_name_file_and_line(tmp_path, file, old, new, message):
    from multimodal.ingest.copy_number import segment_copy_number

    text = {"seg": SEG, "bed": BED}[file]
    assert old in text
    seg = write(tmp_path / "cohort.seg", SEG.replace(old, new, 1) if file == "seg" else SEG)
    bed = write(tmp_path / "genes.bed", BED.replace(old, new, 1) if file == "bed" else BED)
    with pytest.raises(MultimodalError, match=message):
        segment_copy_number([seg], bed, patients=SEG_PATIENTS)


def test_sample_in_two_segment_files_is_refused(tmp_path):
    from multimodal.ingest.copy_number import segment_copy_number

    segments, bed = segment_inputs(tmp_path)
    again = write(tmp_path / "again.seg", SEG)
    with pytest.raises(
        MultimodalError, match=r"again\.seg: sample 'TCGA-AB-0001-01A-11D-A00R-01' also has segments in"
    ):
        segment_copy_number([*segments, again], bed, patients=SEG_PATIENTS)


def test_cli_segments_to_the_store_with_counts_in_provenance(tmp_path):
    from multimodal.cli import main

    segments, bed = segment_inputs(tmp_path)
    source = ["--segments", *map(str, segments), "--genes-bed", str(bed), "--thresholds", "-1", "-0.25", "0.25", "1"]
    mdata, common = cli_cnv_store(tmp_path, 4, source, [*segments, bed])
    out = tmp_path / "cnv.h5ad"
    assert mdata["cnv"]["TCGA-AB-0001"].X.tolist() == [[-1, 2, -1, 1, 1]]
    assert mdata["cnv"].obs.loc["TCGA-AB-0003", "cnv_genes_missing"] == 2
    counts = mdata.uns["provenance"]["exclusions"]["cnv"]
    assert counts["segments_on_other_contigs"] == 1 and counts["gene_values_missing"] == 2
    assert counts["patients_without_copy_number"] == 1
    # --segments without --genes-bed: one line, exit 2
    assert main(["ingest", "copy-number", "-q", *common, "--segments", str(segments[0]), "--out", str(out)]) == 2


def test_workflow_runs_ingest_copy_number_from_segments(tmp_path):
    """The config's copy_number mapping reaches the rule's command (a Snakemake dry run) and is path-checked."""
    import subprocess
    import sys

    import yaml

    from multimodal.workflow import check_inputs

    segments, bed = segment_inputs(tmp_path)
    (tmp_path / "samples.tsv").write_text("patient_id\nTCGA-AB-0001\nTCGA-AB-0002\n")
    (tmp_path / "clinical.tsv").write_text("patient_id\tos_time\tos_event\nTCGA-AB-0001\t1\t0\nTCGA-AB-0002\t2\t1\n")
    repo = Path(__file__).resolve().parents[1]
    config = yaml.safe_load((repo / "config/config.yaml").read_text())
    config |= {"samples": str(tmp_path / "samples.tsv"), "clinical": str(tmp_path / "clinical.tsv")}
    config |= {"expression": None, "outdir": str(tmp_path / "out"), "data_roots": [str(tmp_path)]}
    config["simulate"]["enabled"] = False
    config["copy_number"] = {
        "segments": [str(s) for s in segments],
        "genes_bed": str(bed),
        "thresholds": [-1, -0.2, 0.2, 1],
    }
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    check_inputs(tmp_path / "c.yaml")
    command = [sys.executable, "-m", "snakemake", "--snakefile", str(repo / "Snakefile"), "--directory", str(repo)]
    command += ["--configfile", str(tmp_path / "c.yaml"), "--cores", "1", "--nolock"]
    command += [
        "--dry-run",
        "--printshellcmds",
        "--forcerun",
        "ingest_copy_number",
        f"{tmp_path}/out/interim/cnv/cnv.h5ad",
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    shell = next(line for line in done.stdout.splitlines() if "multimodal ingest copy-number" in line)
    assert f"--segments {segments[0]} {segments[1]} --genes-bed {bed} --thresholds -1.0 -0.2 0.2 1.0" in shell
    config["copy_number"]["genes_bed"] = "/etc/hostname"
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    with pytest.raises(MultimodalError, match=r"c\.yaml: copy_number\.genes_bed: .* outside the data roots"):
        check_inputs(tmp_path / "c.yaml")


def test_gene_inside_one_segment_gets_its_value_exactly(tmp_path):
    """(3 x 0.7) / 3 is 0.6999999999999998 in floating point: a naive weighted mean would call it a gain (1),
    not the amplification (2) the segment's own 0.7 is at CNVkit's thresholds."""
    from multimodal.ingest.copy_number import segment_copy_number

    seg = write(
        tmp_path / "two.seg",
        "ID\tchrom\tloc.start\tloc.end\tnum.mark\tseg.mean\nS1\tchr7\t101\t200\t8\t0.7\nS2\tchr7\t101\t200\t8\t0\n",
    )
    bed = write(tmp_path / "genes.bed", "chr7\t110\t113\tEGFR\n")
    adata = segment_copy_number([seg], bed, patients=pd.Index(["S1", "S2"]), thresholds=[-1.1, -0.25, 0.2, 0.7])
    assert adata.X.tolist() == [[2], [0]]
    assert segment_copy_number([seg], bed, patients=pd.Index(["S1", "S2"])).X[0, 0] == np.float32(0.7)


def test_segments_agree_with_a_brute_force_overlap(tmp_path):
    """Random tilings with gaps (three samples, two chromosomes) and random genes: every value equals a
    plain loop over (gene, segment) pairs in 1-based closed coordinates."""
    from multimodal.ingest.copy_number import segment_copy_number

    rng = np.random.default_rng(3)
    rows, segs = [], {}
    for sample in ("S1", "S2", "S3"):
        for chrom in ("3", "12"):
            cuts = np.unique(rng.integers(2, 5000, 12))
            for a, b in zip(cuts[:-1], cuts[1:], strict=True):
                if rng.random() < 0.2:
                    continue  # a gap
                value = round(float(rng.normal()), 3)
                rows.append(f"{sample}\t{chrom}\t{a}\t{b - 1}\t5\t{value}")
                segs.setdefault(sample, []).append((chrom, int(a), int(b) - 1, value))
    seg = write(tmp_path / "random.seg", "ID\tchrom\tloc.start\tloc.end\tnum.mark\tseg.mean\n" + "\n".join(rows) + "\n")
    genes = []
    for g in range(60):
        chrom = ("3", "12")[g % 2]
        start = int(rng.integers(0, 5000))
        genes.append((f"G{g}", chrom, start, start + int(rng.integers(1, 400))))
    bed = write(tmp_path / "genes.bed", "".join(f"chr{c}\t{s}\t{e}\t{n}\n" for n, c, s, e in genes))
    adata = segment_copy_number([seg], bed, patients=pd.Index(["S1", "S2", "S3"]))
    dropped = adata.uns["ingest"]["exclusions"]
    assert (
        adata.n_vars + dropped["genes_without_segments_in_any_patient"] + dropped["genes_constant_in_all_patients"]
        == 60
    )
    assert adata.n_vars >= 50 and 0 < np.isnan(adata.X).sum() < adata.X.size / 2  # values and gaps both tested
    for sample in adata.obs_names:
        for name, chrom, start, end in genes:
            weight = total = 0.0
            for c, a, b, value in segs[sample]:  # BED [start, end) is 1-based start+1..end
                shared = min(b, end) - max(a, start + 1) + 1
                if c == chrom and shared > 0:
                    weight, total = weight + shared, total + shared * value
            if f"{name}_cn" in adata.var_names:
                got = adata[sample, f"{name}_cn"].X[0, 0]
                np.testing.assert_allclose(got, total / weight if weight else np.nan, rtol=1e-6, atol=1e-6)


def test_cnv_sample_maps_aliquot_uuids_to_patients(tmp_path):
    """A GDC segment file names aliquot UUIDs, no barcode: the sheet's cnv_sample maps each patient to its own,
    giving exactly the values the barcodes gave; a cnv_sample naming no sample stops the run."""
    from multimodal.ingest.copy_number import segment_copy_number

    uuids = {
        "TCGA-AB-0001": "0b6a7c3e-1f2d-4e5a-9b8c-7d6e5f4a3b21",
        "TCGA-AB-0003": "9f8e7d6c-5b4a-4c3d-8e2f-1a0b9c8d7e6f",
    }
    text = SEG
    for patient, uuid in uuids.items():
        text = text.replace(f"{patient}-01A-11D-A00R-01", uuid)
    segments, bed = segment_inputs(tmp_path)
    by_barcode = segment_copy_number(segments, bed, patients=SEG_PATIENTS)
    segments[0].write_text(text)
    by_uuid = segment_copy_number(segments, bed, patients=SEG_PATIENTS, sample_names=uuids)
    assert list(by_uuid.obs_names) == list(by_barcode.obs_names)
    assert list(by_uuid.obs["cnv_sample"]) == [uuids["TCGA-AB-0001"], uuids["TCGA-AB-0003"], "TCGA-AB-0002-01A"]
    np.testing.assert_array_equal(by_uuid.X, by_barcode.X)
    # the UUIDs name their samples exactly: only TCGA-AB-0002 (-> TCGA-AB-0002-01A) is a barcode-prefix match
    assert by_barcode.uns["ingest"]["exclusions"]["cnv_samples_matched_by_barcode_prefix"] == 3
    assert by_uuid.uns["ingest"]["exclusions"]["cnv_samples_matched_by_barcode_prefix"] == 1
    without = segment_copy_number(segments, bed, patients=SEG_PATIENTS)  # the UUID patients are not found
    assert list(without.obs_names) == ["TCGA-AB-0002"]
    with pytest.raises(MultimodalError, match=r"cnv_sample names no segment sample: TCGA-AB-0001 \('0b6a7c3e-typo'\)"):
        segment_copy_number(segments, bed, patients=SEG_PATIENTS, sample_names={"TCGA-AB-0001": "0b6a7c3e-typo"})


def test_cnv_sample_names_gistic_columns_from_the_samples_sheet(tmp_path):
    """The sheet's cnv_sample column (read by read_samples) picks the GISTIC column of a patient whose ID is not
    a prefix of it; two patients naming one column is a sample swap, refused by the sheet."""
    from multimodal.ingest.samples import read_samples

    table = write(tmp_path / "all_thresholded.by_genes.txt")
    sheet = tmp_path / "samples.tsv"
    sheet.write_text("patient_id\tcnv_sample\nP1\tTCGA-AB-0002-01A-11D-A00R-01\nP2\t\nTCGA-AB-0003\t\n")
    samples = read_samples(sheet)
    adata = copy_number_matrix(table, patients=samples.index, sample_names=samples["cnv_sample"].to_dict())
    assert list(adata.obs_names) == ["P1", "TCGA-AB-0003"]
    assert adata[:, "ERBB2_cn"].X.ravel().tolist() == [0, 1]
    assert adata[:, "CDKN2A_cn"].X.ravel().tolist() == [-2, 0]
    sheet.write_text("patient_id\tcnv_sample\nP1\tS1\nP2\tS1\n")
    with pytest.raises(MultimodalError, match="cnv_sample"):
        read_samples(sheet)
