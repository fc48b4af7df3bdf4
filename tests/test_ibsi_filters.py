"""IBSI 2 convolutional filters (ingest.filters), checked against independent implementations.

No IBSI 2 reference values are shipped (../shared/reference/ holds only the IBSI 1 digital phantom), so
each response map is compared with a second implementation on small volumes: numpy padding and sliding
windows, FFT convolution with kernels written out from their formulas (scipy.signal), scikit-image's
Gabor kernel, and PyWavelets' stationary wavelet transform.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from numpy.lib.stride_tricks import sliding_window_view
from scipy import signal

from multimodal.errors import MultimodalError
from multimodal.ingest.ibsi_filters import LAWS_1D, check_filters, filter_image, gabor_kernel

RNG = np.random.default_rng(12)
IMAGE = RNG.normal(100.0, 20.0, size=(12, 10, 8))
SPACING = (1.0, 1.0, 1.0)


def _one(spec: dict) -> dict:
    return check_filters([spec])[0]


def _pad(image: np.ndarray, radius: tuple[int, ...], padding: str) -> np.ndarray:
    mode = {"mirror": "symmetric", "nearest": "edge", "periodic": "wrap", "zero": "constant"}[padding]
    return np.pad(image, [(r, r) for r in radius], mode=mode)


def _correlate_valid(image: np.ndarray, kernel: np.ndarray, padding: str) -> np.ndarray:
    """Correlation of ``image`` with an odd-sized ``kernel`` by FFT on a padded copy."""
    radius = tuple(s // 2 for s in kernel.shape)
    flipped = kernel[tuple(slice(None, None, -1) for _ in kernel.shape)]
    return signal.fftconvolve(_pad(image, radius, padding), flipped, mode="valid")


@pytest.mark.parametrize("padding", ["mirror", "zero", "periodic", "nearest"])
def test_mean_filter_is_the_mean_of_the_padded_window(padding):
    response = filter_image(IMAGE, SPACING, _one({"type": "mean", "support": 3, "padding": padding}))
    windows = sliding_window_view(_pad(IMAGE, (1, 1, 1), padding), (3, 3, 3))
    np.testing.assert_allclose(response, windows.mean(axis=(-3, -2, -1)), rtol=1e-12)


@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (0.8, 0.8, 2.0)])
def test_laplacian_of_gaussian_matches_its_written_out_kernel(spacing):
    """The LoG kernel from its formula (sum over axes of the second derivative of a normalised sampled
    Gaussian times the Gaussians of the other axes; radius 4 sigma), applied by FFT."""
    sigma_mm = 1.5
    sig = [sigma_mm / s for s in spacing]
    radius = [int(4.0 * s + 0.5) for s in sig]
    axes = [np.arange(-r, r + 1, dtype=float) for r in radius]
    gauss = [np.exp(-0.5 * x**2 / s**2) for x, s in zip(axes, sig, strict=True)]
    gauss = [g / g.sum() for g in gauss]
    second = [(x**2 / s**4 - 1 / s**2) * g for x, s, g in zip(axes, sig, gauss, strict=True)]
    kernel = np.zeros([len(x) for x in axes])
    for k in range(3):
        parts = [second[a] if a == k else gauss[a] for a in range(3)]
        kernel += parts[0][:, None, None] * parts[1][None, :, None] * parts[2][None, None, :]
    image = RNG.normal(0.0, 1.0, size=(20, 20, 14))
    response = filter_image(image, spacing, _one({"type": "log", "sigma_mm": sigma_mm}))
    np.testing.assert_allclose(response, _correlate_valid(image, kernel, "mirror"), atol=1e-10)


def test_laws_energy_matches_the_outer_product_kernel():
    spec = _one({"type": "laws", "kernel": "L5E5S5", "energy_distance": 1, "padding": "periodic"})
    kernel = np.einsum("i,j,k->ijk", *(np.asarray(LAWS_1D[n]) for n in ("L5", "E5", "S5")))
    response = np.abs(_correlate_valid(IMAGE, kernel, "periodic"))
    energy = sliding_window_view(_pad(response, (1, 1, 1), "periodic"), (3, 3, 3)).mean(axis=(-3, -2, -1))
    np.testing.assert_allclose(filter_image(IMAGE, SPACING, spec), energy, rtol=1e-9, atol=1e-9)


def test_gabor_kernel_is_scikit_image_s_and_its_response_the_modulus_per_slice():
    from skimage.filters import gabor_kernel as skimage_gabor

    spec = _one({"type": "gabor", "sigma_mm": 1.5, "wavelength_mm": 4.0, "gamma": 1.0, "theta_deg": [0, 60]})
    for theta in (0.0, 60.0):
        ours = gabor_kernel((1.0, 1.0), spec, theta)
        # scikit-image: rows are y, columns x, normalised by 1/(2 pi sigma_x sigma_y); ours: axis 0 is x
        theirs = skimage_gabor(1 / 4.0, theta=math.radians(theta), sigma_x=1.5, sigma_y=1.5, n_stds=4)
        theirs = theirs.T * (2 * math.pi * 1.5 * 1.5)
        np.testing.assert_allclose(ours, theirs, atol=1e-12)
    expected = np.zeros(IMAGE.shape)
    for theta in (0.0, 60.0):
        kernel = gabor_kernel((1.0, 1.0), spec, theta)
        for z in range(IMAGE.shape[2]):
            real = _correlate_valid(IMAGE[:, :, z], kernel.real, "mirror")
            imag = _correlate_valid(IMAGE[:, :, z], kernel.imag, "mirror")
            expected[:, :, z] += np.hypot(real, imag) / 2
    np.testing.assert_allclose(filter_image(IMAGE, SPACING, spec), expected, rtol=1e-8, atol=1e-8)


@pytest.mark.parametrize("wavelet", ["haar", "db2", "db3"])
def test_wavelet_bands_are_pywavelets_stationary_transform(wavelet):
    import pywt

    image = RNG.normal(size=(8, 10, 6))
    (coefficients,) = pywt.swtn(image, wavelet, level=1, trim_approx=False, norm=False)
    for band in ("LLL", "LLH", "HLH", "HHH"):
        spec = _one({"type": "wavelet", "wavelet": wavelet, "band": band, "padding": "periodic"})
        key = band.replace("L", "a").replace("H", "d")
        np.testing.assert_allclose(filter_image(image, SPACING, spec), coefficients[key], atol=1e-10)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"type": "median"}, "type one of mean, log, laws, gabor, wavelet"),
        ({"type": "mean", "support": 4}, "support must be an odd whole number"),
        ({"type": "log"}, "sigma_mm must be a positive number"),
        ({"type": "laws", "kernel": "L5E5"}, "kernel must be three of"),
        ({"type": "wavelet", "wavelet": "nope", "band": "LLH"}, "not a discrete PyWavelets wavelet"),
        ({"type": "wavelet", "band": "LXH"}, "band must be three of L/H"),
        ({"type": "mean", "padding": "reflect"}, "padding must be one of"),
        ({"type": "mean", "sigma_mm": 1}, "unknown setting"),
    ],
)
def test_bad_filter_settings_name_the_filter(spec, message):
    with pytest.raises(MultimodalError, match=message):
        check_filters([{"type": "mean"}, spec])


def _write(path: Path, data: np.ndarray, dtype) -> str:
    nib.save(nib.Nifti1Image(data.astype(dtype), np.eye(4)), str(path))
    return str(path)


def test_imaging_ingest_adds_prefixed_filter_features(tmp_path):
    from multimodal.cli import main
    from multimodal.ingest.imaging import imaging_matrix
    from multimodal.ingest.samples import read_samples

    mask = np.zeros((16, 16, 10), dtype=bool)
    mask[4:12, 4:12, 3:7] = True
    image = np.round(RNG.normal(60, 15, size=mask.shape))
    sheet = tmp_path / "samples.tsv"
    pd.DataFrame(
        {
            "patient_id": ["P1"],
            "image": [_write(tmp_path / "img.nii.gz", image, np.int16)],
            "mask": [_write(tmp_path / "mask.nii.gz", mask, np.uint8)],
        }
    ).to_csv(sheet, sep="\t", index=False)
    filters = [{"type": "mean", "support": 3}, {"type": "wavelet", "wavelet": "haar", "band": "HHH"}]
    adata = imaging_matrix(read_samples(sheet), filters=filters, progress=False)
    names = list(adata.var_names)
    assert len(names) == 211 + 2 * 18
    assert "mean_d3_stat_mean" in names and "wav_haar_HHH_stat_var" in names
    assert set(adata.var.loc[adata.var_names.str.startswith("mean_d3_"), "feature_class"]) == {"filter_mean"}
    response = filter_image(image.astype(float), (1.0, 1.0, 1.0), _one(filters[0]))
    value = float(adata[:, "mean_d3_stat_mean"].X[0, 0])
    assert value == pytest.approx(response[mask].mean(), rel=1e-5)
    assert json.loads(adata.uns["ingest"]["params"]["filters_json"])[1]["prefix"] == "wav_haar_HHH"
    out = tmp_path / "imaging.h5ad"
    main(["ingest", "imaging", "-q", "--samples", str(sheet), "--filters", json.dumps(filters[:1]), "--out", str(out)])
    import anndata as ad

    assert "mean_d3_stat_mean" in ad.read_h5ad(out).var_names


def _rotation_group() -> list:
    """The 24 rotations of a cube as functions, generated by closing two np.rot90 quarter turns
    (independent of the module's permutation-and-flip enumeration)."""
    probe = np.arange(27).reshape(3, 3, 3)
    seen = {probe.tobytes(): ()}
    frontier = [()]
    moves = ((1, (0, 1)), (1, (1, 2)))
    while frontier:
        nxt = []
        for path in frontier:
            for move in moves:
                rotated = probe
                for k, axes in (*path, move):
                    rotated = np.rot90(rotated, k, axes)
                if rotated.tobytes() not in seen:
                    seen[rotated.tobytes()] = (*path, move)
                    nxt.append((*path, move))
        frontier = nxt
    return list(seen.values())


def _apply(volume: np.ndarray, path) -> np.ndarray:
    for k, axes in path:
        volume = np.rot90(volume, k, axes)
    return volume


def test_rotation_invariant_laws_is_the_max_over_the_24_rotated_kernels():
    from multimodal.ingest.ibsi_filters import rotations

    assert len(rotations()) == 24 and len(_rotation_group()) == 24
    image = RNG.normal(size=(9, 9, 9))
    spec = _one({"type": "laws", "kernel": "L3E3S3", "energy_distance": 0, "rotation_invariant": True})
    assert spec["prefix"] == "laws_L3E3S3_e0_ri"
    kernel = np.einsum("i,j,k->ijk", *(np.asarray(LAWS_1D[n]) for n in ("L3", "E3", "S3")))
    responses = [_correlate_valid(image, _apply(kernel, path), "mirror") for path in _rotation_group()]
    np.testing.assert_allclose(filter_image(image, SPACING, spec), np.abs(np.max(responses, axis=0)), atol=1e-10)
    # and the pooled response turns with the image
    turned = filter_image(np.rot90(image, 1, (0, 2)), SPACING, spec)
    np.testing.assert_allclose(turned, np.rot90(filter_image(image, SPACING, spec), 1, (0, 2)), atol=1e-10)


def test_rotation_invariant_wavelet_is_the_mean_over_rotations_and_turns_with_the_image():
    image = RNG.normal(size=(8, 8, 8))
    spec = _one({"type": "wavelet", "wavelet": "haar", "band": "LLH", "rotation_invariant": True})
    plain = _one({"type": "wavelet", "wavelet": "haar", "band": "LLH"})
    expected = np.mean(
        [_apply(filter_image(_apply(image, path), SPACING, plain), _inverse(path)) for path in _rotation_group()],
        axis=0,
    )
    np.testing.assert_allclose(filter_image(image, SPACING, spec), expected, atol=1e-10)
    with pytest.raises(MultimodalError, match="rotation_invariant must be true or false"):
        check_filters([{"type": "laws", "kernel": "L5E5E5", "rotation_invariant": "yes"}])


def _inverse(path) -> tuple:
    return tuple((-k, axes) for k, axes in reversed(path))
