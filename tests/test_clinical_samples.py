"""Samples sheet and clinical table: typed outcomes, duplicates and missing files named by line."""

import numpy as np
import pytest

from multimodal.errors import MultimodalError
from multimodal.ingest.clinical import ClinicalSpec, clinical_features, read_clinical
from multimodal.ingest.samples import chunk, read_samples

CLINICAL = (
    "patient_id\tsite\tarm\tage\tsex\tos_time\tos_event\tresponse\n"
    "P1\tA\tstandard\t60\tmale\t12.5\t1\tyes\n"
    "P2\tB\texperimental\t\tfemale\t30\t0\t0\n"
    "P3\tA\tstandard\t71\tfemale\t\t\tNA\n"
)


def test_clinical_outcomes_and_features(tmp_path):
    path = tmp_path / "clinical.tsv"
    path.write_text(CLINICAL)
    clinical = read_clinical(path)
    assert list(clinical.index) == ["P1", "P2", "P3"]
    np.testing.assert_array_equal(clinical["time"].to_numpy()[:2], [12.5, 30.0])
    assert np.isnan(clinical.loc["P3", "time"]) and np.isnan(clinical.loc["P3", "event"])
    np.testing.assert_array_equal(clinical["response"].to_numpy()[:2], [1.0, 0.0])
    features = clinical_features(clinical, spec=ClinicalSpec())
    assert list(features.var_names) == [
        "age",
        "sex=female",
        "sex=male",
        "arm=experimental",
        "arm=standard",
        "site=A",
        "site=B",
    ]
    np.testing.assert_array_equal(features.X[0], [60, 0, 1, 0, 1, 1, 0])
    assert np.isnan(features.X[1, 0])
    assert features.uns["ingest"]["exclusions"]["missing_numeric_values"] == 1


def test_clinical_duplicate_ids_name_both_lines(tmp_path):
    path = tmp_path / "clinical.tsv"
    path.write_text(CLINICAL + "P2\tA\tstandard\t50\tmale\t3\t1\t1\n")
    with pytest.raises(MultimodalError, match=r"clinical\.tsv: duplicate patient_id 'P2' on lines 3, 5"):
        read_clinical(path)


@pytest.mark.parametrize(
    ("bad_row", "message"),
    [
        ("P9\tA\tstandard\t50\tmale\t-3\t1\t1\n", r"line 5: survival time '-3' is negative"),
        ("P9\tA\tstandard\t50\tmale\t3\tmaybe\t1\n", r"line 5: column 'os_event' value 'maybe' is not 0/1"),
        (
            "P9\tA\tstandard\t50\tmale\t3\t1\tdead\n",
            r"line 5: column 'response' value 'dead' is not 0/1 \(also accepted: cr",
        ),
        ("P9\tA\tstandard\told\tmale\t3\t1\t1\n", r"line 5: column 'age' value 'old' is not a number"),
    ],
)
def test_clinical_bad_values(tmp_path, bad_row, message):
    path = tmp_path / "clinical.tsv"
    path.write_text(CLINICAL + bad_row)
    with pytest.raises(MultimodalError, match=message):
        read_clinical(path)


def test_samples_sheet_missing_file_and_duplicates(tmp_path):
    vcf = tmp_path / "a.vcf.gz"
    vcf.write_bytes(b"")
    sheet = tmp_path / "samples.tsv"
    sheet.write_text(f"patient_id\tvcf\nP1\t{vcf}\nP2\t{tmp_path}/gone.vcf.gz\n")
    with pytest.raises(
        MultimodalError, match=r"samples\.tsv: line 3: vcf file .*gone\.vcf\.gz for patient P2 does not exist"
    ):
        read_samples(sheet)
    sheet.write_text(f"patient_id\tvcf\nP1\t{vcf}\nP1\t{vcf}\n")
    with pytest.raises(MultimodalError, match=r"duplicate patient_id 'P1' on lines 2, 3"):
        read_samples(sheet)


def test_chunks_cover_every_patient_once(tmp_path):
    sheet = tmp_path / "samples.tsv"
    sheet.write_text("patient_id\n" + "".join(f"P{i}\n" for i in range(10)))
    frame = read_samples(sheet)
    parts = [chunk(frame, index=i, n_chunks=3) for i in range(3)]
    assert [len(p) for p in parts] == [3, 4, 3]
    assert sum((list(p.index) for p in parts), []) == list(frame.index)


def test_line_numbers_survive_blank_lines_and_short_rows_are_errors(tmp_path):
    path = tmp_path / "clinical.tsv"
    lines = CLINICAL.splitlines(keepends=True)
    path.write_text(lines[0] + "\n" + "".join(lines[1:]) + "\n" + "P9\tA\tstandard\t50\tmale\t-3\t1\t1\n")
    with pytest.raises(MultimodalError, match=r"line 7: survival time '-3' is negative"):
        read_clinical(path)
    path.write_text(CLINICAL + "P9\tA\tstandard\t50\n")
    with pytest.raises(MultimodalError, match=r"clinical\.tsv: line 5: 4 fields, the header has 8"):
        read_clinical(path)


def test_gzipped_csv_float_events_and_empty_site(tmp_path):
    import gzip

    text = CLINICAL.replace("\t", ",").replace(",1,yes", ",1.0,yes").replace("P2,B,", "P2,,")
    path = tmp_path / "clinical.csv.gz"
    with gzip.open(path, "wt") as handle:
        handle.write(text)
    clinical = read_clinical(path)
    assert clinical.loc["P1", "event"] == 1.0
    assert clinical.loc["P2", "site"] == "unknown"


def test_two_patients_sharing_an_input_is_an_error(tmp_path):
    sheet = tmp_path / "samples.tsv"
    sheet.write_text("patient_id\trna_sample\nP1\tS1\nP2\tS2\nP3\tS1\n")
    with pytest.raises(MultimodalError, match=r"duplicate rna_sample 'S1' on lines 2, 4"):
        read_samples(sheet)


def test_tcga_cdr_style_table(tmp_path):
    """TCGA-CDR conventions: an unnamed row-number column, OS.time 0, [Not Available], #N/A, [Discrepancy]."""
    path = tmp_path / "cdr.tsv"
    path.write_text(
        "\tbcr_patient_barcode\ttype\tage_at_initial_pathologic_diagnosis\tgender\tajcc_stage\tOS\tOS.time\n"
        "1\tTCGA-05-4244\tLUAD\t70\tMALE\tStage IV\t0\t0\n"
        "2\tTCGA-05-4249\tLUAD\t#N/A\tMALE\t[Discrepancy]\t1\t1523\n"
        "3\tTCGA-05-4250\tLUAD\t79\tFEMALE\t[Not Available]\t'--\t\n"
    )
    spec = ClinicalSpec(
        id_column="bcr_patient_barcode",
        time_column="OS.time",
        event_column="OS",
        response_column=None,
        site_column=None,
        covariates=("age_at_initial_pathologic_diagnosis", "gender", "ajcc_stage"),
        categorical=("gender", "ajcc_stage"),
    )
    clinical = read_clinical(path, spec=spec)
    np.testing.assert_array_equal(clinical["time"].to_numpy()[:2], [0.0, 1523.0])
    np.testing.assert_array_equal(clinical["event"].to_numpy()[:2], [0.0, 1.0])
    assert np.isnan(clinical.loc["TCGA-05-4250", "event"]) and np.isnan(clinical.loc["TCGA-05-4250", "time"])
    assert np.isnan(clinical.loc["TCGA-05-4249", "age_at_initial_pathologic_diagnosis"])
    assert list(clinical["ajcc_stage"]) == ["Stage IV", "unknown", "unknown"]
