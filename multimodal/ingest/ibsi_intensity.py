"""IBSI 1 intensity features of a 3D image inside a region of interest (ROI): local intensity (IBSI 3.2),
intensity-based statistics (3.3), intensity histogram (3.4) and intensity-volume histogram (3.5).

Features are keyed by their IBSI tag (``stat_kurt``, ``ih_entropy``, ``ivh_v10``, ...), as in the IBSI 1
reference manual (Zwanenburg et al., Radiology 2020) and ``tests/data/ibsi/ibsi_1_dig_phantom_reference.csv``.
Every non-zero mask voxel is the ROI; it is both the morphological and the intensity mask (no resampling,
no re-segmentation: that is the caller's business, before this is called).

Conventions, as in IBSI 1:

* ``stat_*`` use the raw intensities, ``ih_*`` the discretised grey levels 1..Ng (fixed bin number, FBN,
  by default; fixed bin width, FBS, starting at the ROI minimum when ``bin_width`` is given). Variance is
  the population variance, kurtosis is *excess* kurtosis (pyradiomics reports it + 3); skewness and
  kurtosis of a constant ROI are 0. Percentiles interpolate linearly (numpy's default).
* ``ih_mode``: of several equally frequent grey levels, the one closest to the mean (then the lowest).
  The histogram gradient is numpy's (central differences inside, one-sided at the ends) over all levels
  1..Ng, empty ones included.
* ``loc_peak_*``: the mean intensity inside a sphere of 1 cm^3 (radius 6.20 mm, voxel centres within the
  radius) around a voxel, over every image voxel in the sphere (not only ROI voxels; voxels beyond the
  image edge are simply absent). ``loc_peak_loc`` is that mean around the ROI's hottest voxel (the highest
  such mean if several voxels share the maximum), ``loc_peak_glob`` the highest mean around any ROI voxel.
* ``ivh_*``: without ``ivh_bin_width`` an integer-valued ROI (CT HU, the IBSI phantom) is used as is,
  with every integer from the ROI minimum to its maximum as a level (up to a million levels); another
  ROI gets ``ivh_bin_count`` equal bins (FBN, levels 1..N). With ``ivh_bin_width`` the levels are the
  bin centres of an FBS discretisation from the ROI minimum. ``V_x`` is the volume fraction at
  intensity fraction ``x``, ``I_x`` the lowest level present in at most a fraction ``x`` of the volume
  (one level above the maximum when none is). ``ivh_auc`` (trapezoidal area under the IVH) has no
  IBSI consensus value.
* With a re-segmentation range ``[a, b]`` (``resegment_range``, IBSI 2.5) fixed bin width
  discretisation starts at ``a`` (``ih_*`` and texture), and the IVH spans the range: its levels run from
  ``a`` (integer-valued ROI: every integer ``a..b``; ``ivh_bin_width``: bins of that width from ``a`` up
  to the bin holding ``b``), so the intensity fraction is ``(level - a) / (b - a)`` as IBSI defines it
  for a definite range. Without a range the ROI minimum and maximum take these places. The FBN IVH of a
  non-integer ROI ignores the range (levels 1..N of the ROI's own span).
"""

from __future__ import annotations

import math

import numpy as np
from scipy import fft as sfft

from multimodal.errors import MultimodalError
from multimodal.ingest.ibsi_discretisation import discretise

#: An integer-valued ROI spanning more levels than this gets the fixed bin number IVH instead.
_IVH_MAX_LEVELS = 1_000_000

#: Radius (mm) of the sphere of 1 cm^3 used by the local intensity features.
PEAK_RADIUS_MM = 10.0 * (3.0 / (4.0 * math.pi)) ** (1.0 / 3.0)

STAT_TAGS = (
    "stat_mean",
    "stat_var",
    "stat_skew",
    "stat_kurt",
    "stat_median",
    "stat_min",
    "stat_p10",
    "stat_p90",
    "stat_max",
    "stat_iqr",
    "stat_range",
    "stat_mad",
    "stat_rmad",
    "stat_medad",
    "stat_cov",
    "stat_qcod",
    "stat_energy",
    "stat_rms",
)
IH_TAGS = (
    "ih_mean",
    "ih_var",
    "ih_skew",
    "ih_kurt",
    "ih_median",
    "ih_min",
    "ih_p10",
    "ih_p90",
    "ih_max",
    "ih_mode",
    "ih_iqr",
    "ih_range",
    "ih_mad",
    "ih_rmad",
    "ih_medad",
    "ih_cov",
    "ih_qcod",
    "ih_entropy",
    "ih_uniformity",
    "ih_max_grad",
    "ih_max_grad_g",
    "ih_min_grad",
    "ih_min_grad_g",
)
LOC_TAGS = ("loc_peak_loc", "loc_peak_glob")
IVH_TAGS = ("ivh_v10", "ivh_v90", "ivh_i10", "ivh_i90", "ivh_diff_v10_v90", "ivh_diff_i10_i90", "ivh_auc")


def validate_roi(
    image: np.ndarray, mask: np.ndarray, spacing: tuple[float, float, float]
) -> tuple[np.ndarray, np.ndarray, tuple[float, float, float]]:
    """``image`` as float64, the boolean ROI (``mask > 0``) and the spacing as floats, or MultimodalError."""
    image = np.asarray(image)
    mask = np.asarray(mask)
    if image.ndim != 3:
        raise MultimodalError(f"image must be 3D, got {image.ndim}D with shape {image.shape}")
    if mask.shape != image.shape:
        raise MultimodalError(f"mask shape {mask.shape} differs from image shape {image.shape}")
    spacing_t = tuple(float(s) for s in spacing)
    if len(spacing_t) != 3 or not all(math.isfinite(s) and s > 0 for s in spacing_t):
        shown = ", ".join(f"{v:g}" for v in spacing_t)
        raise MultimodalError(f"spacing must be three positive numbers (mm), got {shown}")
    roi = mask > 0
    if not roi.any():
        raise MultimodalError("mask is empty (no voxel > 0)")
    image = image.astype(np.float64, copy=False)
    n_bad = int(np.count_nonzero(~np.isfinite(image[roi])))
    if n_bad:
        raise MultimodalError(f"image has {n_bad} non-finite intensities (NaN or inf) inside the mask")
    return image, roi, spacing_t  # type: ignore[return-value]


def ibsi_intensity_features(
    image: np.ndarray,
    mask: np.ndarray,
    spacing: tuple[float, float, float],
    *,
    bin_count: int = 32,
    bin_width: float | None = None,
    ivh_bin_count: int = 1000,
    ivh_bin_width: float | None = None,
    resegment_range: tuple[float, float] | None = None,
) -> dict[str, float]:
    """IBSI 1 local intensity, intensity statistics, intensity histogram and IVH features, by IBSI tag.

    ``spacing`` is the voxel size (mm) along each array axis. ``bin_count``/``bin_width`` discretise the
    intensity histogram (FBN, or FBS from the ROI minimum when ``bin_width`` is given; the IBSI phantom
    uses ``bin_width=1``); ``ivh_bin_count``/``ivh_bin_width`` the intensity-volume histogram (see the
    module docstring). ``resegment_range`` ``(a, b)``: the re-segmentation range, lower bound of FBS
    and span of the IVH.
    """
    for name, count in (("bin_count", bin_count), ("ivh_bin_count", ivh_bin_count)):
        if isinstance(count, bool) or not isinstance(count, int | np.integer) or count < 1:
            raise MultimodalError(f"{name} must be a positive integer, got {count}")
    for name, width in (("bin_width", bin_width), ("ivh_bin_width", ivh_bin_width)):
        if width is not None and not (math.isfinite(width) and width > 0):
            raise MultimodalError(f"{name} must be a positive number, got {float(width):g}")
    image, roi, spacing_t = validate_roi(image, mask, spacing)
    values = image[roi]
    features: dict[str, float] = {}
    features.update(_local_intensity(image, roi, spacing_t))
    features.update(intensity_statistics(values))
    lower = None if resegment_range is None else float(resegment_range[0])
    features.update(intensity_histogram_features(values, bin_count=bin_count, bin_width=bin_width, lower_bound=lower))
    features.update(
        intensity_volume_histogram_features(
            values, bin_count=ivh_bin_count, bin_width=ivh_bin_width, value_range=resegment_range
        )
    )
    return features


# --------------------------------------------------------------------------------------------------
# local intensity (IBSI 3.2)


def local_intensity_features(
    image: np.ndarray, mask: np.ndarray, spacing: tuple[float, float, float]
) -> dict[str, float]:
    """``loc_peak_loc`` and ``loc_peak_glob`` of ``image`` inside ``mask`` (voxel size ``spacing`` mm)."""
    return _local_intensity(*validate_roi(image, mask, spacing))


def _sphere_kernel(spacing: tuple[float, float, float]) -> np.ndarray:
    half = [int(math.floor(PEAK_RADIUS_MM / s)) for s in spacing]
    grids = np.ogrid[tuple(slice(-h, h + 1) for h in half)]
    dist2 = sum((g * s) ** 2 for g, s in zip(grids, spacing, strict=True))
    # A hair of slack so a voxel centre lying exactly on the sphere is not lost to rounding.
    return (dist2 <= PEAK_RADIUS_MM**2 * (1 + 1e-12)).astype(np.float64)


def bounding_box(roi: np.ndarray) -> tuple[slice, ...]:
    """Slices of the bounding box of the non-empty 3D boolean ``roi``."""
    # One pass over the full array (any along the last axis), then only the small projections.
    plane = roi.any(axis=2)
    rows = np.flatnonzero(plane.any(axis=1))
    cols = np.flatnonzero(plane.any(axis=0))
    r0, r1, c0, c1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
    depth = np.flatnonzero(roi[r0:r1, c0:c1].any(axis=(0, 1)))
    return slice(r0, r1), slice(c0, c1), slice(int(depth[0]), int(depth[-1]) + 1)


def _local_intensity(image: np.ndarray, roi: np.ndarray, spacing: tuple[float, float, float]) -> dict[str, float]:
    kernel = _sphere_kernel(spacing)
    # Work on the ROI bounding box grown by the sphere radius (clipped to the image): every voxel a
    # sphere around an ROI voxel can reach, and zero padding beyond it is exactly "outside the image".
    half = [n // 2 for n in kernel.shape]
    inner = bounding_box(roi)
    # The box grown by the radius reaches beyond the image: spheres there average fewer voxels.
    clipped = any(b.start < h or b.stop + h > n for b, h, n in zip(inner, half, roi.shape, strict=True))
    box = tuple(slice(max(b.start - h, 0), min(b.stop + h, n)) for b, h, n in zip(inner, half, roi.shape, strict=True))
    img = image[box]
    sub_roi = roi[box]
    finite = np.isfinite(img)
    if not finite.all():
        # NaN/inf outside the ROI (a scanner's padding value): left out of the spheres, like voxels
        # beyond the image edge.
        img = np.where(finite, img, 0.0)
        clipped = True
    # Sphere sums by FFT convolution (scipy): with ~10^3 kernel cells a direct filter costs ~10^3
    # operations per voxel. Circular, of length >= box + radius and >= the kernel, the kernel centred on
    # index 0: a sphere wrapping around either end meets only zero padding.
    fast = [sfft.next_fast_len(max(d + h, 2 * h + 1), real=True) for d, h in zip(img.shape, half, strict=True)]
    padded = np.zeros(fast)
    padded[tuple(slice(0, k) for k in kernel.shape)] = kernel
    kernel_hat = sfft.rfftn(np.roll(padded, [-h for h in half], axis=(0, 1, 2)))
    crop = tuple(slice(0, d) for d in img.shape)
    sums = sfft.irfftn(sfft.rfftn(img, fast) * kernel_hat, fast)[crop][sub_roi]
    if clipped:
        # Count the (finite) image voxels in each sphere.
        counts = np.rint(sfft.irfftn(sfft.rfftn(finite.astype(np.float64), fast) * kernel_hat, fast)[crop][sub_roi])
    else:
        counts = kernel.sum()
    local_mean = sums / counts
    values = img[sub_roi]
    hottest = values == values.max()
    return {
        "loc_peak_loc": float(local_mean[hottest].max()),
        "loc_peak_glob": float(local_mean.max()),
    }


# --------------------------------------------------------------------------------------------------
# intensity-based statistics (IBSI 3.3) and intensity histogram (IBSI 3.4)


def _moments(values: np.ndarray) -> dict[str, float]:
    """The statistics IBSI 3.3 and 3.4 share, of ``values`` (intensities or grey levels), by tag suffix."""
    mean = float(values.mean())
    dev = values - mean
    var = float(np.mean(dev**2))
    skew = float(np.mean(dev**3)) / var**1.5 if var > 0 else 0.0
    kurt = float(np.mean(dev**4)) / var**2 - 3.0 if var > 0 else 0.0
    p10, p25, median, p75, p90 = (float(q) for q in np.percentile(values, [10, 25, 50, 75, 90]))
    robust = values[(values >= p10) & (values <= p90)]
    vmin = float(values.min())
    vmax = float(values.max())
    return {
        "mean": mean,
        "var": var,
        "skew": skew,
        "kurt": kurt,
        "median": median,
        "min": vmin,
        "p10": p10,
        "p90": p90,
        "max": vmax,
        "iqr": p75 - p25,
        "range": vmax - vmin,
        "mad": float(np.mean(np.abs(dev))),
        "rmad": float(np.mean(np.abs(robust - robust.mean()))),
        "medad": float(np.mean(np.abs(values - median))),
        "cov": math.sqrt(var) / mean if mean != 0 else math.nan,
        "qcod": (p75 - p25) / (p75 + p25) if p75 + p25 != 0 else math.nan,
    }


def intensity_statistics(values: np.ndarray) -> dict[str, float]:
    """The 18 IBSI intensity-based statistics (``stat_*``) of the ROI intensities ``values``."""
    values = np.asarray(values, dtype=np.float64).ravel()
    out = {f"stat_{k}": v for k, v in _moments(values).items()}
    energy = float(np.dot(values, values))
    out["stat_energy"] = energy
    out["stat_rms"] = math.sqrt(energy / values.size)
    return {tag: out[tag] for tag in STAT_TAGS}


def intensity_histogram_features(
    values: np.ndarray, *, bin_count: int = 32, bin_width: float | None = None, lower_bound: float | None = None
) -> dict[str, float]:
    """The 23 IBSI intensity histogram features (``ih_*``) of the ROI intensities ``values``, discretised
    to grey levels 1..Ng by ``discretise`` (FBN with ``bin_count``, or FBS with ``bin_width`` from
    ``lower_bound``, default the ROI minimum)."""
    values = np.asarray(values, dtype=np.float64).ravel()
    levels, n_levels = discretise(values, bin_count=bin_count, bin_width=bin_width, lower_bound=lower_bound)
    grey = levels.astype(np.float64)
    out = {f"ih_{k}": v for k, v in _moments(grey).items()}
    counts = np.bincount(levels, minlength=n_levels + 1)[1:].astype(np.float64)
    probs = counts / values.size
    nz = probs[probs > 0]
    out["ih_entropy"] = float(-np.sum(nz * np.log2(nz)))
    out["ih_uniformity"] = float(np.sum(probs**2))
    modes = np.flatnonzero(counts == counts.max()) + 1.0
    out["ih_mode"] = float(modes[np.argmin(np.abs(modes - out["ih_mean"]))])
    grad = np.gradient(counts) if counts.size > 1 else np.zeros(1)
    out["ih_max_grad"] = float(grad.max())
    out["ih_max_grad_g"] = float(np.argmax(grad) + 1)
    out["ih_min_grad"] = float(grad.min())
    out["ih_min_grad_g"] = float(np.argmin(grad) + 1)
    return {tag: out[tag] for tag in IH_TAGS}


# --------------------------------------------------------------------------------------------------
# intensity-volume histogram (IBSI 3.5)


def intensity_volume_histogram_features(
    values: np.ndarray,
    *,
    bin_count: int = 1000,
    bin_width: float | None = None,
    value_range: tuple[float, float] | None = None,
) -> dict[str, float]:
    """IBSI intensity-volume histogram features (``ivh_*``) of the ROI intensities ``values``; with
    ``value_range`` (the re-segmentation range) the levels span it rather than the ROI's own range."""
    values = np.asarray(values, dtype=np.float64).ravel()
    lo = float(values.min())
    hi = float(values.max())
    if value_range is not None:
        if lo < value_range[0] or hi > value_range[1]:
            raise MultimodalError(
                f"ROI intensities ({lo:g} to {hi:g}) outside the re-segmentation range "
                f"[{value_range[0]:g}, {value_range[1]:g}] given to the intensity-volume histogram"
            )
        lo, hi = float(value_range[0]), float(value_range[1])
    integer_range = value_range is None or (lo == round(lo) and hi == round(hi))
    if bin_width is not None:
        index = np.floor((values - lo) / bin_width).astype(np.int64)
        n_bins = max(int(index.max()), int(np.floor((hi - lo) / bin_width))) + 1
        level_values = lo + (np.arange(n_bins) + 0.5) * bin_width
        step = float(bin_width)
    elif hi - lo < _IVH_MAX_LEVELS and integer_range and np.all(values == np.round(values)):
        index = (values - lo).astype(np.int64)
        n_bins = int(hi - lo) + 1
        level_values = lo + np.arange(n_bins, dtype=np.float64)
        step = 1.0
    else:
        levels, n_bins = discretise(values, bin_count=bin_count)
        index = levels - 1
        level_values = np.arange(1, n_bins + 1, dtype=np.float64)
        step = 1.0
    counts = np.bincount(index, minlength=n_bins).astype(np.float64)
    # nu[i]: fraction of the volume at level i or above; gamma[i]: intensity fraction of level i.
    nu = 1.0 - np.concatenate(([0.0], np.cumsum(counts)[:-1])) / values.size
    span = level_values[-1] - level_values[0]
    if span > 0:
        gamma = (level_values - level_values[0]) / span
    else:
        gamma = np.full(1, math.nan)  # a single level has no intensity fraction

    def v_at(x: float) -> float:
        sel = gamma >= x
        return float(nu[sel].max()) if sel.any() else math.nan

    def i_at(x: float) -> float:
        sel = nu <= x
        return float(level_values[sel].min()) if sel.any() else float(level_values[-1] + step)

    v10, v90, i10, i90 = v_at(0.1), v_at(0.9), i_at(0.1), i_at(0.9)
    return {
        "ivh_v10": v10,
        "ivh_v90": v90,
        "ivh_i10": i10,
        "ivh_i90": i90,
        "ivh_diff_v10_v90": v10 - v90,
        "ivh_diff_i10_i90": i10 - i90,
        "ivh_auc": float(np.trapezoid(nu, gamma)) if span > 0 else math.nan,
    }
