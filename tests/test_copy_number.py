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


def test_cli_ingest_and_assemble_as_the_cnv_modality(tmp_path):
    from multimodal.cli import main
    from multimodal.store import read_cohort_store

    gistic = write(tmp_path / "all_thresholded.by_genes.txt")
    (tmp_path / "samples.tsv").write_text("patient_id\nTCGA-AB-0001\nTCGA-AB-0002\nTCGA-AB-0003\n")
    (tmp_path / "clinical.tsv").write_text(
        "patient_id\tos_time\tos_event\tage\tsex\tarm\tsite\tresponse\n"
        "TCGA-AB-0001\t10\t1\t60\tF\tA\tS1\t1\n"
        "TCGA-AB-0002\t20\t0\t55\tM\tB\tS1\t0\n"
        "TCGA-AB-0003\t5\t1\t70\tF\tA\tS2\t1\n"
    )
    common = ["--samples", str(tmp_path / "samples.tsv"), "--data-root", str(tmp_path)]
    out = tmp_path / "cnv.h5ad"
    assert main(["ingest", "copy-number", "-q", *common, "--table", str(gistic), "--out", str(out)]) == 0
    store = tmp_path / "cohort.zarr"
    argv = ["assemble", "-q", *common, "--clinical", str(tmp_path / "clinical.tsv"), "--table", f"cnv={out}"]
    assert main([*argv, "--table-source", str(gistic), "--out", str(store)]) == 0
    mdata = read_cohort_store(store)
    assert mdata["cnv"].var["feature_class"].unique().tolist() == ["gene_copy_number"]
    assert mdata["cnv"]["TCGA-AB-0002"].X.tolist() == [[-1, 0, -2]]
    assert mdata.uns["provenance"]["exclusions"]["cnv"]["cnv_samples_not_in_samples_sheet"] == 1
