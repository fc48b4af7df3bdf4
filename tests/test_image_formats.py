"""Images and masks in NRRD and DICOM (series, SEG, RTSTRUCT) read as the same volumes as their NIfTI copies.

Every fixture is written here: a 16 x 16 x 8 CT-like series (pydicom), a SEG over it (highdicom), an
RTSTRUCT over it (pydicom), NRRD copies (pynrrd) and the NIfTI reference (nibabel).
"""

from __future__ import annotations

import datetime
import os
import shutil
from pathlib import Path

import anndata
import nibabel as nib
import nrrd
import numpy as np
import pandas as pd
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from multimodal.errors import MultimodalError
from multimodal.ingest.imaging import check_pair, imaging_matrix, read_image_and_mask
from multimodal.ingest.medical_images import LPS_TO_RAS, rasterise, read_dicom_series
from multimodal.ingest.radiomics import extract_radiomics

CT_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
RTSTRUCT_STORAGE = "1.2.840.10008.5.1.4.1.1.481.3"
SHAPE = (16, 16, 8)  # i (columns), j (rows), k (slices)
SPACING = (0.8, 0.7, 2.5)  # mm along i, j, k: PixelSpacing is (0.7, 0.8), row spacing first
ORIGIN = np.array([-6.0, -5.0, 10.0])  # LPS mm of voxel (0, 0, 0)
PHI = {"PatientName": "Doe^Jane", "PatientID": "SECRET-4711", "PatientBirthDate": "19471103"}
GTV = (slice(4, 11), slice(3, 12), slice(2, 6))
LUNG = (slice(1, 4), slice(1, 15), slice(1, 7))


def lps_affine(origin: np.ndarray = ORIGIN, spacing: tuple[float, float, float] = SPACING) -> np.ndarray:
    affine = np.diag([*spacing, 1.0])
    affine[:3, 3] = origin
    return affine


def ct_volume() -> np.ndarray:
    rng = np.random.default_rng(12)
    hu = rng.integers(-120, 220, size=SHAPE).astype(np.int16)
    hu[GTV] += 60  # a brighter tumour
    return hu


def label_map() -> np.ndarray:
    mask = np.zeros(SHAPE, dtype=np.uint8)
    mask[LUNG] = 2
    mask[GTV] = 1
    return mask


def write_series(
    directory: Path,
    hu: np.ndarray,
    *,
    origin: np.ndarray = ORIGIN,
    spacing: tuple[float, float, float] = SPACING,
    series_uid: str | None = None,
    study_uid: str | None = None,
    frame_uid: str | None = None,
    skip: tuple[int, ...] = (),
) -> list[Dataset]:
    """One CT slice file per k, named so that name order is not position order; returns the datasets."""
    directory.mkdir(parents=True, exist_ok=True)
    series_uid = series_uid or generate_uid()
    study_uid = study_uid or generate_uid()
    frame_uid = frame_uid or generate_uid()
    written = []
    for k in range(hu.shape[2]):
        if k in skip:
            continue
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = CT_STORAGE
        ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.SOPClassUID, ds.SOPInstanceUID = CT_STORAGE, ds.file_meta.MediaStorageSOPInstanceUID
        for keyword, value in PHI.items():
            setattr(ds, keyword, value)
        ds.PatientSex = "F"
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study_uid, series_uid, frame_uid
        ds.StudyID, ds.AccessionNumber, ds.ReferringPhysicianName = "1", "A1", "Ref^Doc"
        ds.StudyDate, ds.StudyTime = "20260101", "120000"
        ds.SeriesNumber, ds.InstanceNumber, ds.Modality = 1, k + 1, "CT"
        ds.Manufacturer = "test"
        ds.ImagePositionPatient = [f"{v:.6f}" for v in origin + np.array([0.0, 0.0, k * spacing[2]])]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.PixelSpacing = [spacing[1], spacing[0]]
        ds.SliceThickness = spacing[2]
        ds.Rows, ds.Columns = hu.shape[1], hu.shape[0]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = -1024, 1, "HU"
        ds.PixelData = np.ascontiguousarray((hu[:, :, k].T.astype(np.int32) + 1024).astype(np.uint16)).tobytes()
        ds.save_as(
            directory / f"slice_{(7 * k + 3) % hu.shape[2]:02d}_{generate_uid()[-6:]}.dcm", enforce_file_format=True
        )
        written.append(ds)
    return written


def write_nifti(path: Path, data: np.ndarray, affine_lps: np.ndarray) -> str:
    nib.save(nib.Nifti1Image(np.asarray(data), LPS_TO_RAS @ affine_lps), path)
    return str(path)


def write_nrrd(path: Path, data: np.ndarray, affine_lps: np.ndarray, **extra) -> str:
    header = {
        "space": "left-posterior-superior",
        "space directions": affine_lps[:3, :3].T,
        "space origin": affine_lps[:3, 3],
        "kinds": ["domain"] * 3,
        **extra,
    }
    nrrd.write(str(path), np.asarray(data), header, detached_header=str(path).endswith(".nhdr"))
    return str(path)


def write_seg(path: Path, sources: list[Dataset], mask: np.ndarray) -> str:
    import highdicom as hd
    from pydicom.sr.codedict import codes

    frames = np.stack([mask[:, :, k].T for k in range(mask.shape[2])])  # (slices, rows, columns)
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=number,
            segment_label=name,
            segmented_property_category=codes.SCT.Tissue,
            segmented_property_type=codes.SCT.Neoplasm if name == "GTV" else codes.SCT.Lung,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL,
        )
        for number, name in ((1, "GTV"), (2, "Lung"))
    ]
    seg = hd.seg.Segmentation(
        source_images=sorted(sources, key=lambda ds: float(ds.ImagePositionPatient[2])),
        pixel_array=np.stack([frames == 1, frames == 2], axis=-1).astype(np.uint8),
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=generate_uid(),
        series_number=2,
        sop_instance_uid=generate_uid(),
        instance_number=1,
        manufacturer="test",
        manufacturer_model_name="test",
        software_versions="1",
        device_serial_number="1",
    )
    seg.save_as(path)
    return str(path)


def box_contour(box: tuple[slice, slice, slice], k: int, affine: np.ndarray) -> list[float]:
    """The closed polygon, in LPS mm on slice k, around the voxel centres of ``box`` (half a voxel out)."""
    i0, i1, j0, j1 = box[0].start - 0.5, box[0].stop - 0.5, box[1].start - 0.5, box[1].stop - 0.5
    corners = np.array([[i0, j0, k, 1], [i1, j0, k, 1], [i1, j1, k, 1], [i0, j1, k, 1]], dtype=float)
    return [round(float(v), 4) for v in (affine @ corners.T).T[:, :3].ravel()]


def write_rtstruct(
    path: Path, sources: list[Dataset], rois: dict[str, list[tuple[slice, slice, slice]]], *, k_shift: float = 0.0
) -> str:
    ref = sources[0]
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = RTSTRUCT_STORAGE
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID, ds.SOPInstanceUID = RTSTRUCT_STORAGE, ds.file_meta.MediaStorageSOPInstanceUID
    for keyword in (*PHI, "StudyInstanceUID", "FrameOfReferenceUID"):
        setattr(ds, keyword, getattr(ref, keyword))
    ds.Modality, ds.SeriesInstanceUID, ds.StructureSetLabel = "RTSTRUCT", generate_uid(), "test"
    ds.StructureSetDate = datetime.date(2026, 1, 1).strftime("%Y%m%d")
    series = Dataset()
    series.SeriesInstanceUID = ref.SeriesInstanceUID
    series.ContourImageSequence = Sequence(
        [Dataset() for _ in sources]  # the per-slice references are not needed to place contours
    )
    study = Dataset()
    study.ReferencedSOPInstanceUID = ref.StudyInstanceUID
    study.RTReferencedSeriesSequence = Sequence([series])
    frame = Dataset()
    frame.FrameOfReferenceUID = ref.FrameOfReferenceUID
    frame.RTReferencedStudySequence = Sequence([study])
    ds.ReferencedFrameOfReferenceSequence = Sequence([frame])
    ds.StructureSetROISequence, ds.ROIContourSequence = Sequence(), Sequence()
    affine = lps_affine(
        np.array([float(v) for v in min(sources, key=lambda s: float(s.ImagePositionPatient[2])).ImagePositionPatient])
    )
    for number, (name, boxes) in enumerate(rois.items(), start=1):
        item = Dataset()
        item.ROINumber, item.ROIName, item.ReferencedFrameOfReferenceUID = number, name, ref.FrameOfReferenceUID
        ds.StructureSetROISequence.append(item)
        contours = Sequence()
        for box in boxes:
            for k in range(box[2].start, box[2].stop):
                contour = Dataset()
                contour.ContourGeometricType = "CLOSED_PLANAR"
                contour.ContourData = box_contour(box, k + k_shift, affine)
                contour.NumberOfContourPoints = 4
                contours.append(contour)
        roi_contour = Dataset()
        roi_contour.ReferencedROINumber, roi_contour.ContourSequence = number, contours
        ds.ROIContourSequence.append(roi_contour)
    ds.save_as(path, enforce_file_format=True)
    return str(path)


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("formats")
    hu, labels = ct_volume(), label_map()
    sources = write_series(root / "ct", hu)
    out = {
        "ct": str(root / "ct"),
        "nifti": write_nifti(root / "ct.nii.gz", hu, lps_affine()),
        "nifti_mask": write_nifti(root / "gtv.nii.gz", (labels == 1).astype(np.uint8), lps_affine()),
        "nifti_labels": write_nifti(root / "labels.nii.gz", labels, lps_affine()),
        "nrrd": write_nrrd(root / "ct.nrrd", hu, lps_affine()),
        "nhdr": write_nrrd(root / "ct.nhdr", hu, lps_affine()),
        "nrrd_mask": write_nrrd(root / "gtv.nrrd", (labels == 1).astype(np.uint8), lps_affine()),
        "seg_nrrd": write_nrrd(
            root / "labels.seg.nrrd",
            labels,
            lps_affine(),
            Segment0_Name="Lung",
            Segment0_LabelValue="2",
            Segment1_Name="GTV",
            Segment1_LabelValue="1",
        ),
        "seg": write_seg(root / "seg.dcm", sources, labels),
        "rtstruct": write_rtstruct(root / "rt.dcm", sources, {"GTV": [GTV], "Lung": [LUNG]}),
    }
    return out


def test_every_format_gives_the_nifti_volumes_and_features(files: dict[str, str]) -> None:
    reference = read_image_and_mask(files["nifti"], files["nifti_mask"])
    expected = extract_radiomics(*reference[:2], spacing=reference[2], bin_count=16)
    cases = {
        "DICOM series + NIfTI": (files["ct"], files["nifti_mask"], {}),
        "NRRD + NRRD": (files["nrrd"], files["nrrd_mask"], {}),
        "detached NRRD + NIfTI": (files["nhdr"], files["nifti_mask"], {}),
        "NIfTI + .seg.nrrd by name": (files["nifti"], files["seg_nrrd"], {"roi": "GTV"}),
        "DICOM series + SEG by name": (files["ct"], files["seg"], {"roi": "GTV"}),
        "DICOM series + SEG by number": (files["ct"], files["seg"], {"label": 1}),
        "DICOM series + RTSTRUCT": (files["ct"], files["rtstruct"], {"roi": "GTV"}),
    }
    for case, (image_path, mask_path, choice) in cases.items():
        image, mask, spacing = read_image_and_mask(image_path, mask_path, **choice)
        np.testing.assert_array_equal(image, reference[0], err_msg=case)
        np.testing.assert_array_equal(mask, reference[1], err_msg=case)
        assert spacing == pytest.approx(SPACING, rel=1e-6), case  # NIfTI stores float32
        features = extract_radiomics(image, mask, spacing=spacing, bin_count=16)
        for name, value in expected.items():
            np.testing.assert_allclose(features[name], value, rtol=1e-6, atol=1e-9, err_msg=f"{case}: {name}")


def test_a_mixed_cohort_and_no_dicom_attribute_in_the_h5ad(files: dict[str, str], tmp_path: Path) -> None:
    samples = pd.DataFrame(
        {
            "image": [files["nifti"], files["ct"], files["ct"], files["nrrd"], files["nifti"]],
            "mask": [files["nifti_mask"], files["seg"], files["rtstruct"], files["nrrd_mask"], files["seg_nrrd"]],
            "roi": ["", "GTV", "", "", ""],
        },
        index=pd.Index(["NIFTI", "SEG", "RT", "NRRD", "SLICER"], name="patient_id"),
    )
    adata = imaging_matrix(samples, bin_count=16, roi_name="GTV", progress=False)
    assert adata.uns["ingest"]["params"]["roi_name"] == "GTV"
    assert adata.uns["ingest"]["exclusions"]["masks_with_several_labels_merged"] == 0
    for pid in adata.obs_names[1:]:
        np.testing.assert_allclose(adata[pid].X[0], adata["NIFTI"].X[0], rtol=1e-6, equal_nan=True, err_msg=pid)
    out = tmp_path / "imaging.h5ad"
    adata.write_h5ad(out)
    data = out.read_bytes()
    for value in (*PHI.values(), "Doe", "Jane", "SECRET", "19471103", "Ref^Doc"):
        assert value.encode() not in data, value
        assert value.encode("utf-16-le") not in data, value
    assert anndata.read_h5ad(out).shape == (5, adata.n_vars)


def test_slices_are_ordered_by_position_not_file_name(files: dict[str, str]) -> None:
    names = sorted(Path(files["ct"]).iterdir())
    positions = [float(pydicom.dcmread(p, stop_before_pixels=True).ImagePositionPatient[2]) for p in names]
    assert positions != sorted(positions)  # the fixture's names are out of order
    volume = read_dicom_series(files["ct"], "image")
    np.testing.assert_allclose(volume.affine, LPS_TO_RAS @ lps_affine())
    np.testing.assert_array_equal(volume.data, ct_volume())
    np.testing.assert_allclose(volume.origin, [6.0, 5.0, 10.0])
    np.testing.assert_allclose(volume.direction, np.diag([-1.0, -1.0, 1.0]))


def test_two_series_in_one_directory_are_named(tmp_path: Path) -> None:
    hu = ct_volume()
    first = write_series(tmp_path / "ct", hu)[0].SeriesInstanceUID
    second = write_series(tmp_path / "ct", hu[:, :, :3])[0].SeriesInstanceUID
    with pytest.raises(MultimodalError) as excinfo:
        read_dicom_series(tmp_path / "ct", "image")
    text = str(excinfo.value)
    assert text.startswith(f"{tmp_path / 'ct'}: image directory holds 2 DICOM series, SeriesInstanceUIDs ")
    assert f"{first} (8 files)" in text and f"{second} (3 files)" in text


def test_uneven_slice_spacing_names_the_gap(tmp_path: Path) -> None:
    write_series(tmp_path / "ct", ct_volume(), skip=(5,))
    with pytest.raises(
        MultimodalError,
        match=r"uneven image slice spacing: a gap of 5 mm between the slices at 20 and "
        r"25 mm along the slice normal \(slice_\d\d_\w+\.dcm, slice_\d\d_\w+\.dcm\) where the others "
        r"are 2\.5 mm apart \(a missing slice\?\)",
    ):
        read_dicom_series(tmp_path / "ct", "image")


def test_a_directory_without_dicom_images(tmp_path: Path) -> None:
    (tmp_path / "ct").mkdir()
    (tmp_path / "ct" / "README").write_text("not DICOM")
    with pytest.raises(
        MultimodalError, match=r"ct: image is a directory, not a NIfTI file \(a DICOM series\? it holds"
    ):
        read_image_and_mask(tmp_path / "ct", tmp_path / "ct")


@pytest.mark.parametrize("mask", ["seg", "rtstruct"])
def test_a_mask_of_another_series_names_both_uids(files: dict[str, str], tmp_path: Path, mask: str) -> None:
    other = write_series(tmp_path / "other", ct_volume())[0].SeriesInstanceUID
    referenced = pydicom.dcmread(files["ct"] + "/" + sorted(Path(files["ct"]).iterdir())[0].name).SeriesInstanceUID
    kind = mask.upper()
    with pytest.raises(MultimodalError) as excinfo:
        check_pair(tmp_path / "other", files[mask], roi="GTV")
    assert str(excinfo.value) == (
        f"{files[mask]}: the DICOM {kind} references series {referenced}, not the image series {other} of "
        f"{tmp_path / 'other'}; give the series it was drawn on as the image"
    )


def test_roi_names_absent_or_not_given(files: dict[str, str]) -> None:
    with pytest.raises(MultimodalError) as excinfo:
        read_image_and_mask(files["ct"], files["rtstruct"], roi="PTV")
    assert str(excinfo.value) == (
        f"{files['rtstruct']}: no ROI named 'PTV' (ROIs present: 'GTV', 'Lung'); set the samples sheet's roi "
        "column (or ingest.roi_name) to one of them"
    )
    with pytest.raises(MultimodalError, match=r"no segment named 'gtv' \(segments present: 'GTV', 'Lung'\)"):
        read_image_and_mask(files["ct"], files["seg"], roi="gtv")
    with pytest.raises(MultimodalError, match=r"the RTSTRUCT holds 2 ROIs \('GTV', 'Lung'\); name the one to use"):
        read_image_and_mask(files["ct"], files["rtstruct"])
    with pytest.raises(MultimodalError, match=r"gtv\.nii\.gz: roi 'GTV' is given, but this mask is a label map"):
        read_image_and_mask(files["ct"], files["nifti_mask"], roi="GTV", roi_from_sheet=True)
    # The cohort default (ingest.roi_name) does not apply to a label map without names.
    assert read_image_and_mask(files["ct"], files["nifti_mask"], roi="GTV")[1].sum() == 7 * 9 * 4
    # Without a choice a SEG's segments are a label map: merged, or one taken by its number.
    labels: list[int] = []
    read_image_and_mask(files["ct"], files["seg"], labels_seen=labels)
    assert labels == [1, 2]


def test_rtstruct_rasterisation_holes_and_planes(files: dict[str, str], tmp_path: Path) -> None:
    sources = [pydicom.dcmread(p) for p in sorted(Path(files["ct"]).iterdir())]
    outer, inner = (slice(2, 14), slice(2, 14), slice(3, 4)), (slice(5, 9), slice(6, 10), slice(3, 4))
    ring = write_rtstruct(tmp_path / "ring.dcm", sources, {"Ring": [outer, inner]})
    _, mask, _ = read_image_and_mask(files["ct"], ring)  # one ROI: no name needed
    expected = np.zeros(SHAPE, dtype=bool)
    expected[outer] = True
    expected[inner] = False
    np.testing.assert_array_equal(mask, expected)
    between = write_rtstruct(tmp_path / "between.dcm", sources, {"GTV": [GTV]}, k_shift=0.5)
    with pytest.raises(MultimodalError, match=r"between\.dcm: ROI 'GTV' contour 1 .* lies between the slices of image"):
        check_pair(files["ct"], between, roi="GTV")
    # a polygon through voxel centres: only the centres strictly inside, whatever the edge rule
    triangle = np.array([[0.0, 0.0], [6.0, 0.0], [0.0, 6.0]])
    drawn = rasterise([(0, triangle)], (8, 8, 1))[:, :, 0]
    assert drawn[1, 1] and drawn[2, 2] and not drawn[4, 4] and not drawn[7, 0]


def test_geometry_mismatches_keep_their_wording_for_every_format(files: dict[str, str], tmp_path: Path) -> None:
    hu, labels = ct_volume(), (label_map() == 1).astype(np.uint8)
    spaced = write_nrrd(tmp_path / "spaced.nrrd", labels, lps_affine(spacing=(0.8, 0.7, 3.0)))
    with pytest.raises(MultimodalError) as excinfo:
        check_pair(files["ct"], spaced)
    assert str(excinfo.value).startswith(
        f"{spaced}: mask voxel spacing (0.8, 0.7, 3) mm differs from image spacing (0.8, 0.7, 2.5) mm of {files['ct']}"
    )
    small = write_nrrd(tmp_path / "small.nrrd", labels[:, :, :7], lps_affine())
    with pytest.raises(
        MultimodalError,
        match=r"small\.nrrd: mask shape \(16, 16, 7\) differs from image shape "
        r"\(16, 16, 8\) of .*ct",
    ):
        check_pair(files["ct"], small)
    moved = write_nifti(tmp_path / "moved.nii.gz", labels, lps_affine(origin=ORIGIN + [1.6, 0.0, 0.0]))
    with pytest.raises(
        MultimodalError,
        match=r"moved\.nii\.gz: mask affine differs from the affine of image .*ct "
        r"\(origin \(4\.4, 5, 10\) mm vs \(6, 5, 10\) mm: the same grid, shifted",
    ):
        check_pair(files["ct"], moved)
    # A SEG drawn on a grid shifted in-plane, with the image's series UID (a re-export with another origin).
    image_uid = pydicom.dcmread(sorted(Path(files["ct"]).iterdir())[0], stop_before_pixels=True).SeriesInstanceUID
    shifted = write_series(tmp_path / "shifted", hu, origin=ORIGIN + [0.0, 1.4, 0.0], series_uid=image_uid)
    seg = write_seg(tmp_path / "shifted_seg.dcm", shifted, label_map())
    with pytest.raises(
        MultimodalError,
        match=r"shifted_seg\.dcm: mask affine differs from the affine of image .*ct "
        r"\(origin \(6, 3\.6, 10\) mm vs \(6, 5, 10\) mm: the same grid, shifted",
    ):
        check_pair(files["ct"], seg, roi="GTV")
    with pytest.raises(
        MultimodalError,
        match=r"seg\.dcm: a DICOM SEG mask is placed on the DICOM series it was drawn "
        r"on, but image .*ct\.nii\.gz is NIfTI",
    ):
        check_pair(files["nifti"], files["seg"], roi="GTV")


def test_an_oblique_series_follows_the_dicom_definition_of_position(tmp_path: Path) -> None:
    """Voxel (i, j) of slice k lies at ImagePositionPatient + i * column spacing * row + j * row spacing * column."""
    angle = np.deg2rad(20)
    row, col = np.array([np.cos(angle), np.sin(angle), 0.0]), np.array([0.0, 0.0, -1.0])  # tilted coronal
    normal = np.cross(row, col)
    hu = ct_volume()
    directory = tmp_path / "oblique"
    sources = write_series(directory, hu)
    for path in directory.iterdir():  # re-orient every slice; slice k at k * 2.5 mm against the normal
        ds = pydicom.dcmread(path)
        k = int(ds.InstanceNumber) - 1
        ds.ImageOrientationPatient = [f"{v:.8f}" for v in (*row, *col)]
        ds.ImagePositionPatient = [f"{v:.6f}" for v in ORIGIN - k * SPACING[2] * normal]
        ds.save_as(path)
    volume = read_dicom_series(directory, "image")
    assert len(sources) == volume.shape[2] == 8
    for path in directory.iterdir():
        ds = pydicom.dcmread(path)
        k_written = int(ds.InstanceNumber) - 1
        k = volume.shape[2] - 1 - k_written  # ordered along the normal: the last written slice comes first
        for i, j in ((0, 0), (5, 3), (15, 15)):
            expected = (
                np.array([float(v) for v in ds.ImagePositionPatient]) + i * SPACING[0] * row + j * SPACING[1] * col
            )
            np.testing.assert_allclose((volume.lps_affine @ [i, j, k, 1])[:3], expected, atol=1e-5)
            assert volume.data[i, j, k] == float(ds.pixel_array[j, i]) - 1024
    assert volume.spacing == pytest.approx(SPACING)


def test_a_nifti_mask_in_canonical_orientation_over_a_dicom_series(files: dict[str, str], tmp_path: Path) -> None:
    """dcm2niix-style RAS+ reorientation of the mask (axes flipped) is undone exactly, not interpolated."""
    stored = nib.Nifti1Image((label_map() == 1).astype(np.uint8), LPS_TO_RAS @ lps_affine())
    canonical = nib.as_closest_canonical(stored)
    assert nib.aff2axcodes(canonical.affine) != nib.aff2axcodes(stored.affine)
    nib.save(canonical, tmp_path / "ras.nii.gz")
    _, mask, _ = read_image_and_mask(files["ct"], tmp_path / "ras.nii.gz")
    np.testing.assert_array_equal(mask, label_map() == 1)


def test_the_samples_sheet_names_a_dicom_series_and_its_roi(files: dict[str, str], tmp_path: Path) -> None:
    """Through the command line: a directory in the image column, the ROI by the roi column or --roi-name."""
    from multimodal.cli import main

    copy = tmp_path / "ct_copy"  # one series per patient: the same directory twice would be a sample swap
    shutil.copytree(files["ct"], copy)
    sheet = tmp_path / "samples.tsv"
    sheet.write_text(
        f"patient_id\timage\tmask\troi\nRT\t{files['ct']}\t{files['rtstruct']}\tGTV\nSEG\t{copy}\t{files['seg']}\t\n"
    )
    out = tmp_path / "imaging.h5ad"
    root = str(Path(files["ct"]).parent)
    args = ["ingest", "imaging", "-q", "--samples", str(sheet), "--out", str(out), "--data-root", root]
    args += ["--data-root", str(tmp_path)]
    assert main([*args, "--roi-name", "GTV", "--bin-count", "16"]) == 0
    adata = anndata.read_h5ad(out)
    np.testing.assert_allclose(adata["RT"].X[0], adata["SEG"].X[0], rtol=1e-6, equal_nan=True)


def test_a_file_of_a_dicom_series_linking_out_of_the_data_roots_is_refused(
    files: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from multimodal.cli import main

    series = tmp_path / "ct"
    shutil.copytree(files["ct"], series)
    os.symlink("/etc/passwd", series / "zz.dcm")
    sheet = tmp_path / "samples.tsv"
    sheet.write_text(f"patient_id\timage\tmask\nP1\t{series}\t{files['nifti_mask']}\n")
    out = tmp_path / "imaging.h5ad"
    root = str(Path(files["ct"]).parent)
    code = main(
        [
            "ingest",
            "imaging",
            "-q",
            "--samples",
            str(sheet),
            "--out",
            str(out),
            "--data-root",
            str(tmp_path),
            "--data-root",
            root,
        ]
    )
    err = capsys.readouterr().err.strip()
    assert code != 0 and not out.exists()
    assert "line 2: column image" in err and "zz.dcm (resolves to /etc/passwd) is outside the data roots" in err, err
