"""Bad input gets one line naming the file, the lines (first ten, and how many) and what is wrong (issue 9).

Clinical tables, expression counts tables, feature tables and NIfTI images; every input is written here.
"""

from __future__ import annotations

import gzip
import re
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from multimodal.errors import MultimodalError
from multimodal.ingest.clinical import read_clinical
from multimodal.ingest.expression import expression_matrix, read_counts_table
from multimodal.ingest.imaging import imaging_matrix, read_image_and_mask
from multimodal.ingest.table import feature_table

HEADER = "patient_id\tsite\tarm\tage\tsex\tos_time\tos_event\tresponse\n"


def clinical_row(pid: str, time: str = "10", event: str = "1", age: str = "60", response: str = "1") -> str:
    return f"{pid}\tA\tstandard\t{age}\tmale\t{time}\t{event}\t{response}\n"


def message(call) -> str:
    with pytest.raises(MultimodalError) as excinfo:
        call()
    text = str(excinfo.value)
    assert "\n" not in text
    return text


def read_any(kind: str, path: Path):
    if kind == "clinical":
        return read_clinical(path)
    if kind == "counts":
        return read_counts_table(path)
    return feature_table(path, modality="cnv", patients=pd.Index(["P1", "P2"]))


TABLES = {
    "clinical": HEADER + clinical_row("P1") + clinical_row("P2"),
    "counts": "gene\tP1\tP2\nA\t1\t2\nB\t3\t4\n",
    "features": "patient_id\tMYC\tERBB2\nP1\t0.5\t1\nP2\t0.1\t3\n",
}


# --- item 1: the separator the name promises ---------------------------------------------------------------


FIELDS = {"clinical": 8, "counts": 3, "features": 3}


@pytest.mark.parametrize("kind", list(TABLES))
def test_a_comma_separated_table_named_tsv_is_named_so(tmp_path, kind):
    """The counts table (read by its own reader) says what read_table says of the clinical and feature tables."""
    path = tmp_path / f"{kind}.tsv"
    path.write_text(TABLES[kind].replace("\t", ","))
    assert message(lambda: read_any(kind, path)) == (
        f"{path}: looks comma-separated (its header has {FIELDS[kind]} comma-separated fields), "
        "but the name says tab-separated; rename it .csv or save it tab-separated"
    )


@pytest.mark.parametrize("kind", list(TABLES))
def test_a_tab_separated_table_named_csv_is_named_so(tmp_path, kind):
    path = tmp_path / f"{kind}.csv.gz"
    with gzip.open(path, "wt") as handle:
        handle.write(TABLES[kind])
    assert message(lambda: read_any(kind, path)) == (
        f"{path}: looks tab-separated (its header has {FIELDS[kind]} tab-separated fields), "
        "but the name says comma-separated; rename it .tsv.gz or save it comma-separated"
    )


def test_a_tab_separated_table_named_csv_with_commas_in_cells(tmp_path):
    """Commas inside cells make the rows wider than the header: the field count is not the problem to report."""
    path = tmp_path / "clinical.csv"
    path.write_text(HEADER + clinical_row("P1") + clinical_row("P2").replace("\tA\t", "\tA, north\t"))
    assert "looks tab-separated (its header has 8 tab-separated fields)" in message(lambda: read_clinical(path))


@pytest.mark.parametrize("kind", ["clinical", "counts"])
def test_a_comma_separated_table_with_a_tab_in_its_header(tmp_path, kind):
    """One stray tab in the header: the rows, not the header alone, show the file is comma-separated."""
    path = tmp_path / f"{kind}.tsv"
    lines = TABLES[kind].replace("\t", ",").splitlines(keepends=True)
    path.write_text(lines[0].replace(",", "\t", 1) + "".join(lines[1:]))
    assert message(lambda: read_any(kind, path)) == (
        f"{path}: looks comma-separated (its rows have {FIELDS[kind]} comma-separated fields, its header 2 "
        "tab-separated ones), "
        "but the name says tab-separated; rename it .csv or save it tab-separated"
    )


# --- item 2: every offending line of the clinical table, at once -------------------------------------------


def test_clinical_time_checks_name_ten_lines_and_the_count(tmp_path):
    path = tmp_path / "clinical.tsv"
    times = ["-Inf", "3", "-1", "Inf", *(["-2"] * 9)]  # 12 bad values on lines 2, 4, 5, 6 ... 14
    path.write_text(HEADER + "".join(clinical_row(f"P{i}", time=t) for i, t in enumerate(times)))
    text = message(lambda: read_clinical(path))
    assert text == (
        f"{path}: survival time column 'os_time' is negative or not finite on 12 lines: line 2 ('-Inf'), "
        "line 4 ('-1'), line 5 ('Inf'), line 6 ('-2'), line 7 ('-2'), line 8 ('-2'), line 9 ('-2'), "
        "line 10 ('-2'), line 11 ('-2'), line 12 ('-2') and 2 more"
    )


def test_an_infinite_time_alone_is_an_error(tmp_path):
    path = tmp_path / "clinical.tsv"
    path.write_text(HEADER + clinical_row("P1") + clinical_row("P2", time="inf"))
    assert message(lambda: read_clinical(path)) == f"{path}: line 3: survival time 'inf' is not finite"


def test_every_clinical_problem_is_named_in_one_message(tmp_path):
    path = tmp_path / "clinical.tsv"
    rows = [
        clinical_row("P1", event="maybe"),
        clinical_row("P2", event="2", response="stable"),
        clinical_row("P3", age="old"),
        clinical_row("P1", time="x"),
        clinical_row("", response="PR"),
        clinical_row("P3"),
        clinical_row("P4", event="unsure", age="inf"),
    ]
    path.write_text(HEADER + "".join(rows))
    text = message(lambda: read_clinical(path))
    assert text == (
        f"{path}: line 6: empty patient_id; 2 duplicate patient_id values: 'P1' (lines 2, 5), 'P3' (lines 4, 7); "
        "line 5: survival time 'x' is not a number; "
        "column 'os_event' is not 0/1 on 3 lines: line 2 ('maybe'), line 3 ('2'), line 8 ('unsure') "
        "(also accepted: alive, dead, deceased, living, yes/no); "
        "line 3: column 'response' value 'stable' is not 0/1 (also accepted: cr, non-responder, nonresponder, pd, "
        "pr, responder, response, sd, yes/no); "
        "line 4: column 'age' value 'old' is not a number; line 8: column 'age' value 'inf' is not finite"
    )


def test_a_clinical_table_with_a_header_only(tmp_path):
    path = tmp_path / "clinical.tsv"
    path.write_text(HEADER)
    assert message(lambda: read_clinical(path)) == f"{path}: clinical table has a header but no rows"


# --- item 4: files that are not UTF-8 text tables ----------------------------------------------------------


@pytest.mark.parametrize("kind", list(TABLES))
@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("utf16", "{what} is UTF-16 text; save it as UTF-8"),
        ("xlsx", "{what} is an Excel workbook (or another binary file), not a text table"),
        ("binary", "{what} is a binary file, not a text table"),
        ("latin1", "line 3: byte 0xe4 is not UTF-8 (a Latin-1 or Windows-1252 export?); save the {what} as UTF-8"),
        ("gzip cut", "the gzip stream ends early: the file is cut short"),
        ("not gzip", "is named .gz but is not gzip-compressed"),
    ],
)
def test_unreadable_tables_say_why(tmp_path, kind, case, expected):
    text = TABLES[kind].replace("P2", "P2\u00e4") if case == "latin1" else TABLES[kind]
    path = tmp_path / ("table.tsv.gz" if "gzip" in case else "table.tsv")
    if case == "utf16":
        path.write_bytes(text.encode("utf-16"))
    elif case == "xlsx":
        path.write_bytes(b"PK\x03\x04" + bytes(range(256)) * 4)
    elif case == "binary":
        path.write_bytes(bytes(range(256)) * 4)
    elif case == "latin1":
        path.write_bytes(text.encode("latin-1"))
    elif case == "gzip cut":
        data = gzip.compress((text + "".join(text.splitlines(keepends=True)[1:]) * 2000).encode())
        path.write_bytes(data[: len(data) // 2])
    else:
        path.write_text(text)
    if kind == "counts" and case == "latin1":
        expected = expected.replace("line 3", "line 1")  # the sample P2ä is a column name
    what = {"clinical": "clinical table", "counts": "counts table", "features": "cnv feature table"}[kind]
    assert f"{path}: {expected.format(what=what)}" in message(lambda: read_any(kind, path))


def test_feature_table_with_a_header_only_or_infinite_cells(tmp_path):
    path = tmp_path / "cnv.tsv"
    path.write_text("patient_id\tMYC\tERBB2\n")
    assert message(lambda: read_any("features", path)) == f"{path}: cnv feature table has a header but no rows"
    path.write_text("patient_id\tMYC\tERBB2\nP1\t1\tinf\nP2\tx\t2\nP3\t3\t-Inf\nP4\t4\t1\n")
    text = message(lambda: feature_table(path, modality="cnv", patients=pd.Index(["P1", "P2", "P3"])))
    assert text == (
        f"{path}: line 3: column 'MYC' value 'x' is not a number; "
        "column 'ERBB2' is not finite on 2 lines: line 2 ('inf'), line 4 ('-Inf')"
    )


def test_feature_table_duplicate_and_empty_ids_are_all_named(tmp_path):
    path = tmp_path / "cnv.tsv"
    path.write_text("patient_id\tMYC\nP1\t1\nP2\t2\nP1\t3\n\t4\nP2\t5\n")
    text = message(lambda: read_any("features", path))
    assert (
        text == f"{path}: line 5: empty patient_id; 2 duplicate patient_id values: 'P1' (lines 2, 4), 'P2' (lines 3, 6)"
    )


def test_counts_table_names_bad_cells_by_kind_with_counts(tmp_path):
    path = tmp_path / "counts.tsv"
    rows = "".join(f"G{i}\t{-i}\t{'x' if i % 4 == 0 else 1}\n" for i in range(1, 13))
    path.write_text("gene\tS1\tS2\n" + rows + "Z\t1\tInf\n")
    text = message(lambda: read_counts_table(path))
    assert text == (
        f"{path}: 3 cells are not numbers: line 5 (gene 'G4', sample 'S2': 'x'), line 9 (gene 'G8', sample 'S2': "
        "'x'), line 13 (gene 'G12', sample 'S2': 'x'); line 14: gene 'Z', sample 'S2': value 'Inf' is not finite; "
        "12 cells hold negative counts: "
        + ", ".join(f"line {i + 1} (gene 'G{i}', sample 'S1': '-{i}')" for i in range(1, 11))
        + " and 2 more (a log-scale table? set ingest.expression_values: log, CLI --values log)"
    )


def test_samples_without_counts_and_absent_columns_are_all_named(tmp_path):
    path = tmp_path / "counts.tsv"
    path.write_text("gene\tS1\tS2\tS3\nA\t0\t0\t1\nB\t0\t0\t2\n")
    sheet = pd.DataFrame({"rna_sample": ["S1", "S2", "S3"]}, index=["P1", "P2", "P3"])
    text = message(lambda: expression_matrix(read_counts_table(path), sheet, source=str(path)))
    assert text == f"{path}: 2 samples have zero counts in every gene: 'S1', 'S2'"
    sheet["rna_sample"] = ["Q1", "Q2", "S3"]
    text = message(lambda: expression_matrix(read_counts_table(path), sheet, source=str(path)))
    assert text == f"{path}: 2 rna_sample values of the samples sheet are not columns of it: 'Q1' (patient P1), " + (
        "'Q2' (patient P2)"
    )


# --- items 3 and 4: imaging ---------------------------------------------------------------------------------


def write_nifti(path: Path, data: np.ndarray, zooms=(1.0, 1.0, 1.0), shift: float = 0.0) -> str:
    affine = np.diag([*zooms, 1.0])
    affine[:3, 3] = shift
    img = nib.Nifti1Image(np.asarray(data), affine)
    img.header.set_zooms(zooms)
    nib.save(img, path)
    return str(path)


@pytest.fixture()
def pair(tmp_path):
    rng = np.random.default_rng(0)
    image = rng.normal(50.0, 10.0, size=(12, 12, 8)).astype(np.float32)
    mask = np.zeros(image.shape, dtype=np.uint8)
    mask[3:9, 2:10, 2:6] = 1
    return image, mask, write_nifti(tmp_path / "img.nii.gz", image), write_nifti(tmp_path / "mask.nii.gz", mask)


def test_spacing_and_origin_mismatches_print_plain_numbers(tmp_path, pair):
    _, mask, image_path, _ = pair
    spaced = write_nifti(tmp_path / "spaced.nii.gz", mask, zooms=(0.7, 1.0, 1.5))
    text = message(lambda: read_image_and_mask(image_path, spaced))
    assert "np." not in text
    assert f"{spaced}: mask voxel spacing (0.7, 1, 1.5) mm differs from image spacing (1, 1, 1) mm" in text
    moved = write_nifti(tmp_path / "moved.nii.gz", mask, shift=2.0)
    text = message(lambda: read_image_and_mask(image_path, moved))
    assert "origin (2, 2, 2) mm vs (0, 0, 0) mm: the same grid, shifted" in text


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        (
            "gzip cut in the header",
            r"img\.nii\.gz: cannot read image as NIfTI \(the gzip stream ends early, after 200 ",
        ),
        ("nii cut in the voxels", r"img\.nii: cannot read image as NIfTI \(cut short: its header announces 4960 bytes"),
        ("nii shorter than a header", r"img\.nii: cannot read image as NIfTI \(100 bytes, shorter than a NIfTI header"),
        ("empty", r"img\.nii\.gz: cannot read image as NIfTI \(an empty file, 0 bytes\)"),
        ("not nifti", r"img\.nii: cannot read image as NIfTI \(no NIfTI-1 or NIfTI-2 magic in its header"),
        ("nan in the mask", r"mask\.nii\.gz: mask has NaN or infinite voxels"),
        ("image as mask", r"other\.nii\.gz: looks like an image, not a label map \(1152 distinct values"),
        (
            "nan in the roi",
            r"img\.nii\.gz: 1 non-finite intensity \(NaN or inf\) inside the mask .* at voxel \(5, 5, 3\)",
        ),
        ("directory", r"img\.nii\.gz: image is a directory, not a NIfTI file \(a DICOM series\?"),
    ],
)
def test_damaged_images_and_masks_say_why(tmp_path, pair, case, expected):
    image, mask, image_path, mask_path = pair
    if case == "gzip cut in the header":
        Path(image_path).write_bytes(Path(image_path).read_bytes()[:200])
    elif case.startswith("nii"):
        image_path = write_nifti(tmp_path / "img.nii", image)
        Path(image_path).write_bytes(Path(image_path).read_bytes()[: 2000 if "voxels" in case else 100])
    elif case == "empty":
        Path(image_path).write_bytes(b"")
    elif case == "not nifti":
        image_path = str(tmp_path / "img.nii")
        Path(image_path).write_bytes(b"DICM" * 200)
    elif case == "nan in the mask":
        mask_path = write_nifti(Path(mask_path), np.where(mask > 0, 1.0, np.nan).astype(np.float32))
    elif case == "image as mask":
        mask_path = write_nifti(tmp_path / "other.nii.gz", image + 20)
    elif case == "nan in the roi":
        image[5, 5, 3] = np.nan
        write_nifti(Path(image_path), image)
    else:
        Path(image_path).unlink()
        Path(image_path).mkdir()
    text = message(lambda: read_image_and_mask(image_path, mask_path))
    assert re.search(expected, text), text


def test_the_same_file_as_image_and_mask(tmp_path, pair):
    _, _, image_path, _ = pair
    samples = pd.DataFrame({"image": [image_path], "mask": [image_path]}, index=pd.Index(["P1"], name="patient_id"))
    text = message(lambda: imaging_matrix(samples, progress=False))
    assert text == f"{image_path}: given as both the image and the mask of patient P1"


def test_every_repeated_sample_column_is_named(tmp_path):
    path = tmp_path / "counts.tsv"
    path.write_text("gene\tS1\tS2\tS1\tS3\tS2\nA\t1\t2\t3\t4\t5\n")
    text = message(lambda: read_counts_table(path))
    assert text == f"{path}: 2 sample columns occur more than once in the header: 'S1', 'S2'"
