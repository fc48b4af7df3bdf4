"""Tests of the imaging ingest: NIfTI image/mask pairs per patient into a radiomics AnnData."""

from __future__ import annotations

from pathlib import Path

import anndata
import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from multimodal.errors import MultimodalError
from multimodal.ingest.imaging import imaging_matrix, read_image_and_mask
from multimodal.ingest.radiomics import AGGREGATIONS, NATIVE_NAMES, extract_radiomics, feature_classes

FEATURE_CLASSES = feature_classes()  # the default: 3D texture aggregations

IBSI_DIR = Path(__file__).parent / "data" / "ibsi"


def _write(path: Path, data: np.ndarray, zooms: tuple[float, ...] = (1.0, 1.0, 1.0), shift: float = 0.0) -> str:
    affine = np.diag([*zooms[:3], 1.0])
    affine[:3, 3] = shift
    img = nib.Nifti1Image(np.asarray(data), affine)
    img.header.set_zooms(zooms[: np.asarray(data).ndim])
    nib.save(img, path)
    return path.name


def _blob(shape: tuple[int, int, int] = (12, 12, 8), seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    image = rng.normal(50.0, 10.0, size=shape).astype(np.float32)
    mask = np.zeros(shape, dtype=np.uint8)
    mask[3:9, 2:10, 2:6] = 1
    return image, mask


def _plain(value: object) -> bool:
    if isinstance(value, dict):
        return all(isinstance(k, str) and _plain(v) for k, v in value.items())
    if isinstance(value, list):
        return all(_plain(v) for v in value)
    return type(value) in (int, float, str, bool)


@pytest.fixture()
def cohort(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> pd.DataFrame:
    """Two patients with imaging and one without; paths relative to the working directory."""
    monkeypatch.chdir(tmp_path)
    image1, mask1 = _blob(seed=1)
    image2, mask2 = _blob(shape=(10, 14, 9), seed=2)
    mask2[:] = 0
    mask2[2:7, 3:12, 1:8] = 1
    zooms2 = (0.8, 0.8, 2.5)
    rows = {
        "P1": (_write(tmp_path / "p1.nii.gz", image1), _write(tmp_path / "p1_mask.nii.gz", mask1)),
        "P2": (_write(tmp_path / "p2.nii", image2, zooms2), _write(tmp_path / "p2_mask.nii", mask2, zooms2)),
        "P3": ("", np.nan),
    }
    samples = pd.DataFrame.from_dict(rows, orient="index", columns=["image", "mask"])
    samples.index.name = "patient_id"
    return samples


def test_imaging_matrix_two_patients_and_one_without_imaging(cohort: pd.DataFrame, tmp_path: Path) -> None:
    adata = imaging_matrix(cohort, bin_count=16, progress=False)

    assert adata.obs_names.tolist() == ["P1", "P2"]
    assert adata.var_names.tolist() == list(FEATURE_CLASSES)
    assert adata.X.dtype == np.float32
    assert adata.var["feature_class"].tolist() == list(FEATURE_CLASSES.values())
    assert adata.var["ibsi_tag"].tolist() == list(FEATURE_CLASSES)
    assert adata.var.loc["morph_vol_approx", "native_name"] == "shape_voxel_volume"
    assert adata.var.loc["cm_joint_max_3D_avg", "native_name"] == "glcm_joint_maximum"
    assert adata.var.loc["szm_sze_3D", "native_name"] == ""  # no v1 name
    assert (adata.var["native_name"] != "").sum() == len(NATIVE_NAMES)
    assert set(adata.var["source"]) == {"radiomics"}
    assert adata.obs["image"].tolist() == ["p1.nii.gz", "p2.nii"]

    image2, mask2, spacing2 = read_image_and_mask("p2.nii", "p2_mask.nii")
    assert spacing2 == pytest.approx((0.8, 0.8, 2.5))
    expected = extract_radiomics(image2, mask2, spacing=spacing2, bin_count=16)
    np.testing.assert_allclose(adata["P2"].X[0], np.array(list(expected.values()), dtype=np.float32))
    # The voxel size comes from the header: 5 x 9 x 7 voxels of 0.8 x 0.8 x 2.5 mm.
    volume = adata["P2", "morph_vol_approx"].X[0, 0]
    assert volume == pytest.approx(5 * 9 * 7 * 0.8 * 0.8 * 2.5, rel=1e-5)
    assert adata["P1", "morph_vol_approx"].X[0, 0] == pytest.approx(6 * 8 * 4)

    ingest = adata.uns["ingest"]
    assert ingest == {
        "modality": "imaging",
        "params": {
            "discretisation": "FBN",
            "bin_count": 16,
            "extractor": "multimodal.radiomics v2 (IBSI 1)",
            "texture_aggregations": ["3D"],
            "ivh_levels": "integer intensities of an integer-valued ROI, else 1000 equal bins",
            "resampling": "none",
            "re_segmentation": "none",
            "mask_label": "any non-zero",
        },
        "exclusions": {
            "patients_without_imaging": 1,
            "undefined_feature_values": 0,
            "masks_with_several_labels_merged": 0,
        },
        "n_patients_in": 3,
    }
    assert _plain(ingest)
    adata.write_h5ad(tmp_path / "imaging.h5ad")
    back = anndata.read_h5ad(tmp_path / "imaging.h5ad")
    assert back.uns["ingest"]["exclusions"]["patients_without_imaging"] == 1
    assert back.var["native_name"].tolist() == adata.var["native_name"].tolist()


def test_bin_width_and_aggregations_from_the_settings(cohort: pd.DataFrame) -> None:
    adata = imaging_matrix(cohort, bin_width=5.0, texture_aggregations=["2D", "3D"], progress=False)
    assert adata.var_names.tolist() == list(feature_classes(["2D", "3D"]))
    assert "rlm_sre_2D_avg" in adata.var_names and "rlm_sre_2_5D_avg" not in adata.var_names
    params = adata.uns["ingest"]["params"]
    assert params["discretisation"] == "FBS" and params["bin_width"] == 5.0 and "bin_count" not in params
    assert params["texture_aggregations"] == ["2D", "3D"]
    image2, mask2, spacing2 = read_image_and_mask("p2.nii", "p2_mask.nii")
    expected = extract_radiomics(image2, mask2, spacing=spacing2, bin_width=5.0, aggregations=["2D", "3D"])
    np.testing.assert_allclose(adata["P2"].X[0], np.array(list(expected.values()), dtype=np.float32))
    every = imaging_matrix(cohort, texture_aggregations=AGGREGATIONS, progress=False)
    assert every.shape == (2, 75 + 3 * 136)
    with pytest.raises(MultimodalError, match="texture aggregations"):
        imaging_matrix(cohort, texture_aggregations=["4D"], progress=False)
    with pytest.raises(MultimodalError, match="bin_width"):
        imaging_matrix(cohort, bin_width=-1.0, progress=False)


def test_no_patient_with_imaging_gives_empty_matrix() -> None:
    samples = pd.DataFrame({"image": ["", None], "mask": [np.nan, " "]}, index=["A", "B"])
    adata = imaging_matrix(samples, progress=False)
    assert adata.shape == (0, len(FEATURE_CLASSES))
    assert adata.uns["ingest"]["exclusions"]["patients_without_imaging"] == 2


def test_missing_column_raises() -> None:
    with pytest.raises(MultimodalError, match="'mask'"):
        imaging_matrix(pd.DataFrame({"image": ["a.nii"]}, index=["A"]), progress=False)


def test_ibsi_phantom_reads_with_its_spacing() -> None:
    image, mask, spacing = read_image_and_mask(IBSI_DIR / "phantom.nii.gz", IBSI_DIR / "mask.nii.gz")
    assert image.dtype == np.float64 and mask.dtype == bool
    assert image.shape == (5, 4, 4) and int(mask.sum()) == 74
    assert spacing == (2.0, 2.0, 2.0)


def _case(tmp_path: Path, case: str) -> tuple[str, str, str, str]:
    """Write one broken patient; return (image cell, mask cell, file the message names, problem words)."""
    image, mask = _blob()
    img = _write(tmp_path / "img.nii.gz", image)
    msk = _write(tmp_path / "msk.nii.gz", mask)
    if case == "image missing":
        return "nothere.nii.gz", msk, "nothere.nii.gz", "not found"
    if case == "mask missing":
        return img, "nomask.nii.gz", "nomask.nii.gz", "not found"
    if case == "corrupt":
        (tmp_path / "bad.nii.gz").write_bytes(b"this is not a NIfTI file")
        return "bad.nii.gz", msk, "bad.nii.gz", "cannot read"
    if case == "truncated":
        (tmp_path / "cut.nii.gz").write_bytes((tmp_path / "img.nii.gz").read_bytes()[:-200])
        return "cut.nii.gz", msk, "cut.nii.gz", "cannot read"
    if case == "not 3D":
        return _write(tmp_path / "flat.nii.gz", image[:, :, 0]), msk, "flat.nii.gz", "3D"
    if case == "4D":
        four = _write(tmp_path / "four.nii.gz", np.stack([image, image], axis=-1), (1.0, 1.0, 1.0, 1.0))
        return four, msk, "four.nii.gz", "3D"
    if case == "shape mismatch":
        return img, _write(tmp_path / "small.nii.gz", mask[:-1]), "small.nii.gz", "shape (11, 12, 8) differs"
    if case == "spacing mismatch":
        return img, _write(tmp_path / "sp.nii.gz", mask, (1.0, 1.0, 1.5)), "sp.nii.gz", "spacing"
    if case == "affine mismatch":
        return img, _write(tmp_path / "moved.nii.gz", mask, shift=2.0), "moved.nii.gz", "affine"
    if case == "empty mask":
        return img, _write(tmp_path / "empty.nii.gz", np.zeros_like(mask)), "empty.nii.gz", "empty"
    if case == "nan in roi":
        image[5, 5, 3] = np.nan
        return _write(tmp_path / "nan.nii.gz", image), msk, "nan.nii.gz", "non-finite"
    if case == "image without mask":
        return img, "", "img.nii.gz", "no mask"
    if case == "mask without image":
        return np.nan, msk, "msk.nii.gz", "no image"
    raise AssertionError(case)


@pytest.mark.parametrize(
    "case",
    [
        "image missing",
        "mask missing",
        "corrupt",
        "truncated",
        "not 3D",
        "4D",
        "shape mismatch",
        "spacing mismatch",
        "affine mismatch",
        "empty mask",
        "nan in roi",
        "image without mask",
        "mask without image",
    ],
)
def test_errors_name_the_file_and_the_problem(case: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    image_cell, mask_cell, named_file, problem = _case(tmp_path, case)
    good_image, good_mask = _blob(seed=5)
    samples = pd.DataFrame(
        {
            "image": [_write(tmp_path / "ok.nii.gz", good_image), image_cell],
            "mask": [_write(tmp_path / "ok_mask.nii.gz", good_mask), mask_cell],
        },
        index=pd.Index(["OK", "BAD"], name="patient_id"),
    )
    with pytest.raises(MultimodalError) as excinfo:
        imaging_matrix(samples, progress=False)
    message = str(excinfo.value)
    assert named_file in message
    assert problem in message
    assert "\n" not in message
    if case == "shape mismatch":
        assert "(12, 12, 8)" in message  # both shapes are given


def test_undefined_features_of_a_one_voxel_roi_are_counted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    image, mask = _blob(seed=3)
    mask[:] = 0
    mask[5, 5, 4] = 1
    samples = pd.DataFrame(
        {"image": [_write(tmp_path / "i.nii.gz", image)], "mask": [_write(tmp_path / "m.nii.gz", mask)]},
        index=pd.Index(["P1"], name="patient_id"),
    )
    adata = imaging_matrix(samples, progress=False)
    n_nan = int(np.isnan(adata.X).sum())
    assert n_nan > 0
    assert adata.uns["ingest"]["exclusions"]["undefined_feature_values"] == n_nan


def test_multi_label_masks_are_counted_or_one_label_selected(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A segmentation holding tumour (1) and oedema (2): merged and counted by default, or one label chosen."""
    monkeypatch.chdir(tmp_path)
    image, mask = _blob(seed=4)
    mask[3:9, 2:10, 2:4] = 2  # the lower half of the blob is another label
    samples = pd.DataFrame(
        {"image": [_write(tmp_path / "i.nii.gz", image)], "mask": [_write(tmp_path / "m.nii.gz", mask)]},
        index=pd.Index(["P1"], name="patient_id"),
    )
    merged = imaging_matrix(samples, progress=False)
    assert merged.uns["ingest"]["exclusions"]["masks_with_several_labels_merged"] == 1
    tumour = imaging_matrix(samples, mask_label=1, progress=False)
    assert tumour.uns["ingest"]["exclusions"]["masks_with_several_labels_merged"] == 0
    assert tumour.uns["ingest"]["params"]["mask_label"] == 1
    volume = list(tumour.var_names).index("morph_vol_approx")
    assert merged.X[0, volume] == pytest.approx(6 * 8 * 4)
    assert tumour.X[0, volume] == pytest.approx(6 * 8 * 2)
    with pytest.raises(MultimodalError, match=r"m\.nii\.gz: no voxel has label 3 \(labels present: \[1, 2\]\)"):
        imaging_matrix(samples, mask_label=3, progress=False)


def test_a_mask_stored_in_another_orientation_is_reoriented_exactly(tmp_path: Path, monkeypatch) -> None:
    """Same physical grid, mask stored LPS-flipped and with axes swapped (as another tool may write it)."""
    monkeypatch.chdir(tmp_path)
    image, mask = _blob(shape=(12, 10, 8), seed=5)
    zooms = (0.7, 0.8, 2.5)
    _write(tmp_path / "img.nii.gz", image, zooms)
    affine = np.diag([*zooms, 1.0])
    # mask axes (y, x, z) with x and y flipped: voxel (j, i, k) of the mask is voxel (11 - i, 9 - j, k) of the image
    stored = np.flip(mask, axis=(0, 1)).transpose(1, 0, 2)
    to_image = np.array([[0, -1, 0, 11], [-1, 0, 0, 9], [0, 0, 1, 0], [0, 0, 0, 1]], dtype=float)
    nib.save(nib.Nifti1Image(stored, affine @ to_image), tmp_path / "lps_mask.nii.gz")
    reference = read_image_and_mask("img.nii.gz", _write(tmp_path / "m.nii.gz", mask, zooms))
    image2, mask2, spacing2 = read_image_and_mask("img.nii.gz", "lps_mask.nii.gz")
    np.testing.assert_array_equal(mask2, reference[1])
    assert spacing2 == pytest.approx(zooms)


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("soft", r"soft\.nii\.gz: mask has non-integer values \(e\.g\. 0\.25.*nearest-neighbour"),
        ("swapped", r"swapped\.nii\.gz: looks like an image, not a label map .*columns swapped"),
        ("cropped", r"cropped\.nii\.gz: mask shape \(6, 8, 4\) differs .* a cropped export"),
    ],
)
def test_masks_that_are_not_label_maps_on_the_image_grid(tmp_path: Path, monkeypatch, case, message) -> None:
    monkeypatch.chdir(tmp_path)
    image, mask = _blob(seed=6)
    _write(tmp_path / "img.nii.gz", image)
    if case == "soft":  # an interpolated mask: fractions at the border
        soft = mask.astype(np.float32)
        soft[2, 2:10, 2:6] = 0.25
        _write(tmp_path / "soft.nii.gz", soft)
    elif case == "swapped":  # the CT given as the mask
        _write(tmp_path / "swapped.nii.gz", (image * 10 - 300).astype(np.int16))
    else:  # a sub-block around the ROI, positioned by its affine (3D Slicer's cropped export)
        _write(tmp_path / "cropped.nii.gz", mask[3:9, 2:10, 2:6], shift=(3.0, 2.0, 2.0))
    with pytest.raises(MultimodalError, match=message):
        read_image_and_mask("img.nii.gz", f"{case}.nii.gz")


def test_non_nifti_files_say_how_to_convert(tmp_path: Path) -> None:
    image, mask = _blob(seed=7)
    _write(tmp_path / "img.nii.gz", image)
    (tmp_path / "ct.nrrd").write_bytes(b"NRRD0004\ntype: short\ndimension: 3\n")
    with pytest.raises(MultimodalError, match=r"ct\.nrrd: cannot read mask as NIfTI .*convert it to NIfTI"):
        read_image_and_mask(tmp_path / "img.nii.gz", tmp_path / "ct.nrrd")


def test_merged_multi_label_masks_are_warned_about(tmp_path: Path, monkeypatch, caplog) -> None:
    monkeypatch.chdir(tmp_path)
    image, mask = _blob(seed=8)
    mask[3:9, 2:10, 2:4] = 2
    samples = pd.DataFrame(
        {"image": [_write(tmp_path / "i.nii.gz", image)], "mask": [_write(tmp_path / "m.nii.gz", mask)]},
        index=pd.Index(["P1"], name="patient_id"),
    )
    with caplog.at_level("WARNING"):
        imaging_matrix(samples, progress=False)
    assert "1 mask(s) hold several labels" in caplog.text and "m.nii.gz: labels [1, 2]" in caplog.text
