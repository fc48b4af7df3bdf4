"""Tests of the IBSI image processing: resampling (IBSI 2.4) and re-segmentation (2.5) in the imaging ingest."""

from __future__ import annotations

import json
from pathlib import Path

import anndata
import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from multimodal.errors import MultimodalError
from multimodal.ingest.ibsi_processing import ImageProcessing, resample, resampled_grid, resegment
from multimodal.ingest.imaging import imaging_matrix, read_image_and_mask
from multimodal.ingest.radiomics import extract_radiomics


def _write(path: Path, data: np.ndarray, zooms: tuple[float, float, float] = (1.0, 1.0, 1.0)) -> str:
    img = nib.Nifti1Image(np.asarray(data), np.diag([*zooms, 1.0]))
    img.header.set_zooms(zooms)
    nib.save(img, path)
    return path.name


def test_grid_of_a_5x4x4_volume_at_2mm_resampled_to_1mm_keeps_its_centre() -> None:
    shape, origin = resampled_grid((5, 4, 4), (2.0, 2.0, 2.0), (1.0, 1.0, 1.0))
    # IBSI 2.4: n_b = ceil(n_a s_a / s_b); x_b0 = x_a0 + (s_a (n_a - 1) - s_b (n_b - 1)) / 2 (in mm)
    assert shape == (10, 8, 8)
    np.testing.assert_allclose(origin * 2.0, [(2 * 4 - 9) / 2, (2 * 3 - 7) / 2, (2 * 3 - 7) / 2])  # -0.5 mm each
    centre_a = np.array([4, 3, 3]) / 2 * 2.0  # original centre (mm from the first original voxel)
    centre_b = origin * 2.0 + (np.array(shape) - 1) / 2 * 1.0
    np.testing.assert_allclose(centre_b, centre_a)  # (4, 3, 3) mm
    # A volume whose intensity is its x position in mm lands on those positions.
    x = np.arange(5, dtype=float)[:, None, None] * 2.0 + np.zeros((5, 4, 4))
    image, _ = resample(x, np.ones(x.shape, bool), (2, 2, 2), (1, 1, 1))
    np.testing.assert_allclose(image[1:-1, 0, 0], -0.5 + np.arange(1, 9))  # interior: -0.5 mm + 1 mm steps
    assert image[0, 0, 0] == 0.0  # beyond the original grid: the edge intensity


def test_a_linear_ramp_is_reproduced_exactly_by_linear_interpolation() -> None:
    ii, jj, kk = np.meshgrid(np.arange(12.0), np.arange(10.0), np.arange(8.0), indexing="ij")
    spacing, new = (1.5, 2.0, 3.0), (1.0, 1.25, 2.0)
    ramp = 3.0 * ii * spacing[0] - 2.0 * jj * spacing[1] + 0.5 * kk * spacing[2] + 7.0  # linear in mm
    image, _ = resample(ramp, np.ones(ramp.shape, bool), spacing, new, interpolation="linear")
    shape, origin = resampled_grid(ramp.shape, spacing, new)
    assert image.shape == shape
    pos = [(origin[a] * spacing[a] + np.arange(shape[a]) * new[a]) for a in range(3)]  # mm from original voxel 0
    x, y, z = np.meshgrid(*pos, indexing="ij")
    expected = 3.0 * x - 2.0 * y + 0.5 * z + 7.0
    inside = (x >= 0) & (x <= 11 * spacing[0]) & (y >= 0) & (y <= 9 * spacing[1]) & (z >= 0) & (z <= 7 * spacing[2])
    assert inside.sum() > 0.6 * inside.size
    np.testing.assert_allclose(image[inside], expected[inside], atol=1e-9)
    cubic, _ = resample(ramp, np.ones(ramp.shape, bool), spacing, new, interpolation="cubic_spline")
    deep = (  # a spline with edge-clamped boundaries bends only near the edges
        (x >= 4 * spacing[0]) & (x <= 7 * spacing[0]) & (y >= 4 * spacing[1]) & (y <= 5 * spacing[1])
    )
    deep &= (z >= 3 * spacing[2]) & (z <= 4 * spacing[2])
    assert deep.any()
    np.testing.assert_allclose(cubic[deep], expected[deep], atol=0.05)
    nearest, _ = resample(ramp, np.ones(ramp.shape, bool), spacing, new, interpolation="nearest")
    assert set(np.unique(nearest)) <= set(np.unique(ramp))


def test_a_box_mask_resampled_keeps_its_volume_within_one_voxel_layer() -> None:
    mask = np.zeros((20, 20, 12), bool)
    mask[4:14, 5:15, 3:9] = True  # 10 x 10 x 6 voxels of 1 x 1 x 2.5 mm: 20 x 10 x 15 mm... per axis below
    spacing, new = (1.0, 1.0, 2.5), (0.7, 0.7, 0.7)
    image = np.zeros(mask.shape)
    _, resampled = resample(image, mask, spacing, new)
    extent = np.array([10 * 1.0, 10 * 1.0, 6 * 2.5])  # mm
    volume = resampled.sum() * np.prod(new)
    low = np.prod(extent - 2 * np.asarray(new))
    high = np.prod(extent + 2 * np.asarray(new))
    assert low <= volume <= high
    # and it is still one box: along each axis a run of new voxels covering the extent within one voxel
    for axis in range(3):
        other = tuple(a for a in range(3) if a != axis)
        n = int(resampled.any(axis=other).sum())
        assert abs(n * new[axis] - extent[axis]) <= new[axis]


def test_round_intensities_and_mask_threshold() -> None:
    image = np.arange(4 * 4 * 4, dtype=float).reshape(4, 4, 4) * 1.3
    mask = np.zeros(image.shape, bool)
    mask[1:3, 1:3, 1:3] = True
    out, morph, intensity, spacing, removed = ImageProcessing(
        resample_spacing=(0.5, 0.5, 0.5), round_intensities=True
    ).apply(image, mask, (1.0, 1.0, 1.0))
    assert spacing == (0.5, 0.5, 0.5) and out.shape == (8, 8, 8)
    np.testing.assert_array_equal(out, np.round(out))
    assert morph is intensity and removed == 0
    # new voxel centres at original indices -0.25, 0.25, ... 3.25: fractions 0, .25, .75, 1, 1, .75, .25, 0
    # along each axis, so 4 per axis reach 0.5, less the 8 corners where .75 ** 3 < 0.5
    assert morph.sum() == 4**3 - 8


def test_resegmentation_removes_exactly_the_voxels_outside_the_range() -> None:
    rng = np.random.default_rng(3)
    image = rng.normal(0.0, 400.0, size=(12, 12, 8)).round()
    mask = np.zeros(image.shape, bool)
    mask[2:10, 3:11, 1:7] = True
    keep = resegment(image, mask, value_range=(-1000, 400))
    np.testing.assert_array_equal(keep, mask & (image >= -1000) & (image <= 400))
    values = image[mask]
    sd = resegment(image, mask, outlier_sd=1.0)
    np.testing.assert_array_equal(sd, mask & (np.abs(image - values.mean()) <= values.std()))
    both = resegment(image, mask, value_range=(-1000, 400), outlier_sd=1.0)
    np.testing.assert_array_equal(both, keep & sd)


@pytest.fixture()
def ct_cohort(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> pd.DataFrame:
    monkeypatch.chdir(tmp_path)
    rng = np.random.default_rng(5)
    rows = {}
    for i, zooms in enumerate([(1.0, 1.0, 2.0), (0.8, 0.8, 3.0)], start=1):
        image = rng.normal(40.0, 300.0, size=(14, 14, 8)).round().astype(np.int16)
        image[6, 6, 3:5] = 3000  # bone / metal: outside [-1000, 400]
        mask = np.zeros(image.shape, np.uint8)
        mask[3:11, 3:11, 2:6] = 1
        rows[f"P{i}"] = (
            _write(tmp_path / f"p{i}.nii.gz", image, zooms),
            _write(tmp_path / f"p{i}_m.nii.gz", mask, zooms),
        )
    samples = pd.DataFrame.from_dict(rows, orient="index", columns=["image", "mask"])
    samples.index.name = "patient_id"
    return samples


def test_resegmentation_changes_intensity_features_not_morphology(ct_cohort: pd.DataFrame) -> None:
    plain = imaging_matrix(ct_cohort, progress=False)
    reseg = imaging_matrix(ct_cohort, resegment_range=[-1000, 400], progress=False)
    expected = []
    for pid in ("P1", "P2"):
        image = np.asarray(nib.load(ct_cohort.loc[pid, "image"]).dataobj, dtype=float)
        mask = np.asarray(nib.load(ct_cohort.loc[pid, "mask"]).dataobj) > 0
        expected.append(int((mask & ((image < -1000) | (image > 400))).sum()))
    assert min(expected) > 2
    assert reseg.obs["resegmented_voxels_removed"].tolist() == expected
    assert reseg.uns["ingest"]["exclusions"]["resegmented_voxels_removed"] == sum(expected)
    assert "resegmented_voxels_removed" not in plain.obs
    morph = [v for v in plain.var_names if v.startswith("morph_")]
    volume_only = ["morph_volume", "morph_vol_approx", "morph_area_mesh", "morph_diam"]
    np.testing.assert_array_equal(reseg[:, volume_only].X, plain[:, volume_only].X)
    assert len(morph) > 20
    for tag in ("stat_max", "stat_mean", "stat_var", "ih_entropy", "cm_joint_max_3D_avg"):
        assert not np.allclose(reseg[:, tag].X, plain[:, tag].X), tag
    assert (reseg[:, "stat_max"].X <= 400).all()
    params = reseg.uns["ingest"]["params"]
    assert params["re_segmentation"] == {"range": [-1000.0, 400.0], "morphological_mask": "as segmented"}
    assert params["resampling"] == "none"


def test_settings_recorded_in_uns_params(ct_cohort: pd.DataFrame, tmp_path: Path) -> None:
    adata = imaging_matrix(
        ct_cohort,
        resample_spacing=[1.0, 1.0, 1.0],
        interpolation="cubic_spline",
        round_intensities=True,
        resegment_range=(-1000, 400),
        outlier_sd=3,
        progress=False,
    )
    params = adata.uns["ingest"]["params"]
    assert params["resampling"] == {
        "spacing_mm": [1.0, 1.0, 1.0],
        "interpolation": "cubic_spline",
        "mask": "linear, thresholded at 0.5",
        "grid": "centres aligned (IBSI 2.4)",
    }
    assert params["round_intensities"] is True
    assert params["re_segmentation"] == {
        "range": [-1000.0, 400.0],
        "outlier_sd": 3.0,
        "morphological_mask": "as segmented",
    }
    json.dumps(params)  # plain types: what the store's provenance ingest_params_json holds
    adata.write_h5ad(tmp_path / "imaging.h5ad")  # a chunk file, as rule ingest_imaging writes it
    back = anndata.read_h5ad(tmp_path / "imaging.h5ad")
    assert back.uns["ingest"]["params"]["resampling"]["interpolation"] == "cubic_spline"
    assert back.obs["resegmented_voxels_removed"].tolist() == adata.obs["resegmented_voxels_removed"].tolist()
    # P1 is 14 x 14 x 8 voxels of 1 x 1 x 2 mm: its ROI 8 x 8 x 4 voxels = 512 mm^3, resampled to 1 mm
    assert adata["P1", "morph_vol_approx"].X[0, 0] == pytest.approx(512, rel=0.15)
    assert np.isfinite(adata[:, "stat_mean"].X).all()


def test_defaults_change_nothing(ct_cohort: pd.DataFrame) -> None:
    adata = imaging_matrix(ct_cohort, progress=False)
    image, mask, spacing = read_image_and_mask(ct_cohort.loc["P2", "image"], ct_cohort.loc["P2", "mask"])
    expected = extract_radiomics(image, mask, spacing=spacing)
    np.testing.assert_array_equal(adata["P2"].X[0], np.array(list(expected.values()), dtype=np.float32))
    assert adata.uns["ingest"]["params"]["resampling"] == "none"
    assert adata.uns["ingest"]["params"]["re_segmentation"] == "none"
    assert "round_intensities" not in adata.uns["ingest"]["params"]
    assert "resegmented_voxels_removed" not in adata.uns["ingest"]["exclusions"]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"resample_spacing": (1.0, 0.0, 1.0)}, "resample_spacing must be three positive numbers"),
        ({"interpolation": "bspline"}, "interpolation must be one of"),
        ({"resegment_range": (400, -1000)}, "low <= high"),
        ({"outlier_sd": -1.0}, "outlier_sd must be a positive number"),
    ],
)
def test_bad_settings_raise(kwargs: dict, message: str) -> None:
    with pytest.raises(MultimodalError, match=message):
        ImageProcessing(**kwargs)


def test_a_range_excluding_the_whole_roi_names_the_patient(ct_cohort: pd.DataFrame) -> None:
    with pytest.raises(MultimodalError, match=r"p1\.nii\.gz .*re-segmentation .* leaves no ROI voxel"):
        imaging_matrix(ct_cohort, resegment_range=(5000, 6000), progress=False)


def test_fixed_bin_width_starts_at_the_resegmentation_lower_bound() -> None:
    """IBSI 2.7: FBS bins start at the re-segmentation range's lower bound when there is one."""
    from multimodal.ingest.ibsi_discretisation import discretise

    values = np.array([3.0, 4.9, 7.0, 12.5])
    levels, n = discretise(values, bin_width=2.0, lower_bound=0.0)
    np.testing.assert_array_equal(levels, [2, 3, 4, 7])  # floor((x - 0) / 2) + 1
    assert n == 7
    np.testing.assert_array_equal(discretise(values, bin_width=2.0)[0], [1, 1, 3, 5])  # from the ROI minimum
    np.testing.assert_array_equal(discretise(values, bin_count=4, lower_bound=0.0)[0], [1, 1, 2, 4])  # FBN: no bound
    with pytest.raises(MultimodalError, match="below the fixed-bin-width lower bound 4"):
        discretise(values, bin_width=2.0, lower_bound=4.0)


def _ivh_by_definition(values: np.ndarray, a: int, b: int) -> dict[str, float]:
    """IVH of integer intensities over the definite range [a, b], written out from IBSI 3.5 level by level:
    nu(i) = fraction of voxels with intensity >= i; gamma(i) = (i - a) / (b - a); V_x = nu at the lowest
    level with gamma >= x; I_x = the lowest level with nu <= x."""
    levels = np.arange(a, b + 2)
    nu = {int(i): float(np.mean(values >= i)) for i in levels}
    out = {}
    for x, tag in ((0.1, "v10"), (0.9, "v90")):
        out[f"ivh_{tag}"] = nu[min(i for i in range(a, b + 1) if (i - a) / (b - a) >= x)]
    for x, tag in ((0.1, "i10"), (0.9, "i90")):
        out[f"ivh_{tag}"] = float(min(i for i in levels if nu[int(i)] <= x))
    return out


def test_the_intensity_volume_histogram_spans_the_resegmentation_range() -> None:
    from multimodal.ingest.ibsi_intensity import intensity_volume_histogram_features

    rng = np.random.default_rng(3)
    values = rng.integers(-50, 120, size=400).astype(float)
    features = intensity_volume_histogram_features(values, value_range=(-100.0, 200.0))
    for tag, expected in _ivh_by_definition(values, -100, 200).items():
        assert features[tag] == pytest.approx(expected), tag
    own = intensity_volume_histogram_features(values)  # no range: the ROI's own minimum and maximum
    for tag, expected in _ivh_by_definition(values, int(values.min()), int(values.max())).items():
        assert own[tag] == pytest.approx(expected), tag
    assert features["ivh_v10"] != own["ivh_v10"]
    # fixed bin width from the range's lower bound: bins of 10 from -100, level values at the bin centres
    binned = intensity_volume_histogram_features(values, bin_width=10.0, value_range=(-100.0, 200.0))
    centres = -100.0 + (np.floor((values + 100.0) / 10.0) + 0.5) * 10.0
    assert binned["ivh_i10"] == pytest.approx(min(c for c in np.unique(centres) if np.mean(centres >= c) <= 0.1))
    with pytest.raises(MultimodalError, match="outside the re-segmentation range"):
        intensity_volume_histogram_features(values, value_range=(0.0, 200.0))


def test_extraction_with_a_range_discretises_from_its_lower_bound() -> None:
    """Through extract_radiomics: the lowest grey level of the intensity histogram and the texture is the
    bin of the ROI minimum counted from the range's lower bound, not 1."""
    rng = np.random.default_rng(5)
    image = rng.integers(0, 100, size=(12, 12, 8)).astype(float)
    mask = np.zeros(image.shape, dtype=bool)
    mask[2:10, 2:10, 2:6] = True
    processing = ImageProcessing(resegment_range=(-40.0, 60.0))
    image2, mask2, intensity_mask, spacing, _ = processing.apply(image, mask, (1.0, 1.0, 1.0))
    kwargs = {"spacing": spacing, "bin_width": 10.0, "intensity_mask": intensity_mask}
    bounded = extract_radiomics(image2, mask2, resegment_range=(-40.0, 60.0), **kwargs)
    plain = extract_radiomics(image2, mask2, **kwargs)
    roi_min = image2[intensity_mask].min()
    assert bounded["ih_min"] == np.floor((roi_min + 40.0) / 10.0) + 1 == 5
    assert plain["ih_min"] == 1
    assert bounded["ih_mean"] == pytest.approx(plain["ih_mean"] + 4)  # every level shifted by 4 bins
    assert bounded["stat_mean"] == plain["stat_mean"]
    assert bounded["cm_joint_avg_3D_avg"] == pytest.approx(plain["cm_joint_avg_3D_avg"] + 4)
