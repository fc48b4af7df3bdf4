"""First-version radiomics features of a 3D image inside a region of interest (ROI).

Written here in numpy/scipy rather than taken from pyradiomics: the pyradiomics 3.1 sdist fails to
install on our stack. Definitions follow the IBSI 1 reference manual (Zwanenburg et al., Radiology
2020) where noted, and the IBSI 1 digital phantom values are checked in ``tests/test_radiomics.py``.
A fully IBSI-validated extractor (resampling, re-segmentation, mesh-based morphology, the remaining
texture families) is a later issue.

Conventions of this version:

* first-order statistics use the raw ROI intensities; entropy and uniformity use the discretised
  grey levels. Kurtosis is *excess* kurtosis (IBSI ``stat_kurt``; pyradiomics reports it + 3).
* discretisation: fixed bin number over the ROI range (IBSI FBN) by default, or fixed bin width
  (IBSI FBS) with the ROI minimum as the lower bound; grey levels are 1..Ng.
* texture matrices (GLCM, GLRLM) are 3D with the 13 unique directions of the 26-neighbourhood at
  distance 1, only voxels inside the ROI take part, features are computed per direction and then
  averaged over directions (IBSI ``*_3D_avg``).
* morphology is voxel based: the surface area counts exposed voxel faces, which over-estimates the
  area of a smooth surface (by about 1.5x for a large sphere, ~1.3x vs the IBSI mesh area on the
  phantom), so the area-derived features (surface-to-volume ratio, sphericity, compactness) are not
  comparable with mesh-based values from other tools.
* a feature that is undefined for the ROI (GLCM of a ROI with no two adjacent voxels, elongation of
  a single voxel) is NaN, with a warning in the log.
"""

from __future__ import annotations

import logging
import math

import numpy as np
from scipy.spatial import ConvexHull
from scipy.spatial.distance import pdist

from multimodal.errors import MultimodalError

logger = logging.getLogger(__name__)

#: The 13 unique directions of the 3D 26-neighbourhood (the other 13 are their opposites). The first
#: non-zero component of each is +1, which the run-length code relies on.
DIRECTIONS: tuple[tuple[int, int, int], ...] = (
    (0, 0, 1),
    (0, 1, 0),
    (1, 0, 0),
    (0, 1, 1),
    (0, 1, -1),
    (1, 0, 1),
    (1, 0, -1),
    (1, 1, 0),
    (1, -1, 0),
    (1, 1, 1),
    (1, 1, -1),
    (1, -1, 1),
    (1, -1, -1),
)

_FIRSTORDER = (
    "mean",
    "median",
    "std",
    "variance",
    "skewness",
    "excess_kurtosis",
    "min",
    "max",
    "p10",
    "p90",
    "interquartile_range",
    "range",
    "mean_absolute_deviation",
    "robust_mean_absolute_deviation",
    "root_mean_squared",
    "energy",
    "entropy",
    "uniformity",
)
_SHAPE = (
    "voxel_volume",
    "surface_area",
    "surface_to_volume_ratio",
    "sphericity",
    "compactness",
    "maximum_3d_diameter",
    "major_axis_length",
    "minor_axis_length",
    "least_axis_length",
    "elongation",
    "flatness",
)
_GLCM = (
    "joint_maximum",
    "joint_average",
    "joint_variance",
    "joint_entropy",
    "contrast",
    "dissimilarity",
    "inverse_difference",
    "inverse_difference_moment",
    "correlation",
    "autocorrelation",
    "cluster_tendency",
    "cluster_shade",
    "cluster_prominence",
    "angular_second_moment",
)
_GLRLM = (
    "short_runs_emphasis",
    "long_runs_emphasis",
    "grey_level_nonuniformity",
    "run_length_nonuniformity",
    "run_percentage",
    "low_grey_level_run_emphasis",
    "high_grey_level_run_emphasis",
)

#: Feature name -> feature class, in the order :func:`extract_radiomics` returns the features.
FEATURE_CLASSES: dict[str, str] = {
    f"{cls}_{name}": cls
    for cls, names in (("firstorder", _FIRSTORDER), ("shape", _SHAPE), ("glcm", _GLCM), ("glrlm", _GLRLM))
    for name in names
}

# Above this many cells a co-occurrence / run-length histogram is counted with np.unique instead of a
# dense np.bincount, so a very fine bin width cannot exhaust memory.
_DENSE_HISTOGRAM_LIMIT = 1 << 22


def extract_radiomics(
    image: np.ndarray,
    mask: np.ndarray,
    *,
    spacing: tuple[float, float, float],
    bin_count: int = 32,
    bin_width: float | None = None,
) -> dict[str, float]:
    """Radiomics features of ``image`` inside ``mask`` (voxels > 0), keyed and ordered as ``FEATURE_CLASSES``.

    ``spacing`` is the voxel size in mm along each array axis. Grey levels for entropy, uniformity and
    texture come from ``bin_count`` equal bins over the ROI range, or from bins of width ``bin_width``
    (starting at the ROI minimum) when it is given. Raises :class:`MultimodalError` for an empty
    mask, non-finite intensities in the ROI, or inconsistent arguments.
    """
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
    if bin_width is None:
        if isinstance(bin_count, bool) or int(bin_count) != bin_count or bin_count < 1:
            raise MultimodalError(f"bin_count must be a positive integer, got {bin_count}")
    elif not (math.isfinite(bin_width) and bin_width > 0):
        raise MultimodalError(f"bin_width must be a positive number, got {bin_width:g}")

    roi = mask > 0
    n_voxels = int(np.count_nonzero(roi))
    if n_voxels == 0:
        raise MultimodalError("mask is empty (no voxel > 0)")
    values = image[roi].astype(np.float64)
    n_bad = int(np.count_nonzero(~np.isfinite(values)))
    if n_bad:
        raise MultimodalError(f"image has {n_bad} non-finite intensities (NaN or inf) inside the mask")

    levels_roi, n_levels = discretise(values, bin_count=int(bin_count), bin_width=bin_width)

    # Crop to the ROI bounding box; grey level 0 marks voxels outside the ROI.
    box = tuple(slice(int(ix.min()), int(ix.max()) + 1) for ix in np.nonzero(roi))
    roi_box = roi[box]
    levels = np.zeros(roi_box.shape, dtype=np.int64)
    levels[roi_box] = levels_roi  # boolean indexing visits voxels in C order in both arrays

    features: dict[str, float] = {}
    features.update(_first_order(values, levels_roi, n_levels))
    features.update(_shape(roi_box, spacing_t))
    features.update(_glcm_features(levels, n_levels))
    features.update(_glrlm_features(levels, n_levels, n_voxels))
    undefined = [name for name, value in features.items() if not math.isfinite(value)]
    if undefined:
        logger.warning("%d radiomics features are undefined for this ROI (NaN): %s", len(undefined), undefined)
    return {name: float(features[name]) for name in FEATURE_CLASSES}


def discretise(values: np.ndarray, *, bin_count: int = 32, bin_width: float | None = None) -> tuple[np.ndarray, int]:
    """Grey levels 1..Ng of ``values`` and the number of levels Ng.

    Fixed bin number (IBSI FBN): ``floor(Ng * (x - min) / (max - min)) + 1``, the maximum going to
    level Ng; a constant ROI is all level 1. Fixed bin width (IBSI FBS, when ``bin_width`` is given):
    ``floor((x - min) / bin_width) + 1`` with the ROI minimum as the lower bound.
    """
    values = np.asarray(values, dtype=np.float64)
    lo = float(values.min())
    hi = float(values.max())
    if bin_width is not None:
        levels = np.floor((values - lo) / bin_width).astype(np.int64) + 1
        return levels, int(levels.max())
    if hi == lo:
        return np.ones(values.shape, dtype=np.int64), int(bin_count)
    levels = np.floor(bin_count * (values - lo) / (hi - lo)).astype(np.int64) + 1
    np.minimum(levels, bin_count, out=levels)
    return levels, int(bin_count)


# --------------------------------------------------------------------------------------------------
# first order


def _first_order(values: np.ndarray, levels: np.ndarray, n_levels: int) -> dict[str, float]:
    n = values.size
    mean = float(values.mean())
    dev = values - mean
    m2 = float(np.mean(dev**2))
    m3 = float(np.mean(dev**3))
    m4 = float(np.mean(dev**4))
    # IBSI: skewness and kurtosis are 0 for a constant ROI.
    skewness = m3 / m2**1.5 if m2 > 0 else 0.0
    kurtosis = m4 / m2**2 - 3.0 if m2 > 0 else 0.0
    p10, p25, p75, p90 = (float(q) for q in np.percentile(values, [10, 25, 75, 90]))
    robust = values[(values >= p10) & (values <= p90)]
    probs = np.bincount(levels, minlength=n_levels + 1)[1:] / n
    probs_nz = probs[probs > 0]
    vmin = float(values.min())
    vmax = float(values.max())
    return {
        "firstorder_mean": mean,
        "firstorder_median": float(np.median(values)),
        "firstorder_std": math.sqrt(m2),
        "firstorder_variance": m2,
        "firstorder_skewness": skewness,
        "firstorder_excess_kurtosis": kurtosis,
        "firstorder_min": vmin,
        "firstorder_max": vmax,
        "firstorder_p10": p10,
        "firstorder_p90": p90,
        "firstorder_interquartile_range": p75 - p25,
        "firstorder_range": vmax - vmin,
        "firstorder_mean_absolute_deviation": float(np.mean(np.abs(dev))),
        "firstorder_robust_mean_absolute_deviation": float(np.mean(np.abs(robust - robust.mean()))),
        "firstorder_root_mean_squared": math.sqrt(float(np.mean(values**2))),
        "firstorder_energy": float(np.sum(values**2)),
        "firstorder_entropy": float(-np.sum(probs_nz * np.log2(probs_nz))),
        "firstorder_uniformity": float(np.sum(probs**2)),
    }


# --------------------------------------------------------------------------------------------------
# shape


def _shape(roi: np.ndarray, spacing: tuple[float, float, float]) -> dict[str, float]:
    sx, sy, sz = spacing
    n_voxels = int(np.count_nonzero(roi))
    volume = n_voxels * sx * sy * sz

    # Exposed faces: ROI/background transitions along each axis of the zero-padded mask.
    padded = np.pad(roi, 1)
    face_areas = (sy * sz, sx * sz, sx * sy)
    area = 0.0
    for axis, face_area in enumerate(face_areas):
        area += face_area * int(np.count_nonzero(np.diff(padded, axis=axis)))

    coords = np.argwhere(roi) * np.asarray(spacing)
    if n_voxels > 1:
        # Sample covariance (N - 1), as in the IBSI reference values.
        eigvals = np.linalg.eigvalsh(np.cov(coords, rowvar=False))
        eigvals = np.clip(eigvals, 0.0, None)[::-1]  # major, minor, least
    else:
        eigvals = np.zeros(3)
    lam_major, lam_minor, lam_least = (float(v) for v in eigvals)

    # Boundary voxels: ROI voxels with a 6-neighbour outside the ROI.
    inner = padded[1:-1, 1:-1, 1:-1].copy()
    for axis in range(3):
        for shift in (-1, 1):
            inner &= np.roll(padded, shift, axis=axis)[1:-1, 1:-1, 1:-1]
    boundary = np.argwhere(roi & ~inner) * np.asarray(spacing)

    return {
        "shape_voxel_volume": volume,
        "shape_surface_area": area,
        "shape_surface_to_volume_ratio": area / volume,
        "shape_sphericity": (36.0 * math.pi * volume**2) ** (1.0 / 3.0) / area,
        "shape_compactness": 36.0 * math.pi * volume**2 / area**3,
        "shape_maximum_3d_diameter": _max_diameter(boundary),
        "shape_major_axis_length": 4.0 * math.sqrt(lam_major),
        "shape_minor_axis_length": 4.0 * math.sqrt(lam_minor),
        "shape_least_axis_length": 4.0 * math.sqrt(lam_least),
        "shape_elongation": math.sqrt(lam_minor / lam_major) if lam_major > 0 else math.nan,
        "shape_flatness": math.sqrt(lam_least / lam_major) if lam_major > 0 else math.nan,
    }


def _max_diameter(points: np.ndarray) -> float:
    """Largest distance between two of ``points`` (the farthest pair always lies on the convex hull)."""
    if len(points) < 2:
        return 0.0
    if len(points) > 4:
        try:
            # QJ joggles flat or collinear input; vertex indices still refer to the original points.
            points = points[ConvexHull(points, qhull_options="QJ").vertices]
        except Exception:  # noqa: BLE001 - Qhull failure: fall back to all points below
            logger.debug("convex hull failed; using all %d boundary points for the diameter", len(points))
    return float(pdist(points).max())


# --------------------------------------------------------------------------------------------------
# texture helpers


def _count_codes(codes: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Distinct codes in ``codes`` (all in 0..size-1) and how often each occurs."""
    if size <= _DENSE_HISTOGRAM_LIMIT:
        counts = np.bincount(codes, minlength=size)
        present = np.flatnonzero(counts)
        return present, counts[present]
    return np.unique(codes, return_counts=True)


def _pair_slices(shape: tuple[int, ...], direction: tuple[int, int, int]) -> tuple[tuple[slice, ...], ...]:
    """Slices selecting the voxels v and v + direction wherever both lie inside an array of ``shape``."""
    src: list[slice] = []
    dst: list[slice] = []
    for n, d in zip(shape, direction, strict=True):
        if d == 0:
            src.append(slice(None))
            dst.append(slice(None))
        elif d > 0:
            src.append(slice(0, max(n - d, 0)))
            dst.append(slice(d, n))
        else:
            src.append(slice(-d, n))
            dst.append(slice(0, max(n + d, 0)))
    return tuple(src), tuple(dst)


def _glcm_codes(levels: np.ndarray, direction: tuple[int, int, int], n_levels: int) -> np.ndarray:
    """Symmetric co-occurrence codes ``(i - 1) * Ng + (j - 1)`` of ROI voxel pairs along ``direction``."""
    src, dst = _pair_slices(levels.shape, direction)
    a = levels[src]
    b = levels[dst]
    both = (a > 0) & (b > 0)
    a = a[both] - 1
    b = b[both] - 1
    return np.concatenate([a * n_levels + b, b * n_levels + a])


def glcm_matrices(levels: np.ndarray, n_levels: int) -> np.ndarray:
    """Symmetric grey-level co-occurrence counts, shape (13, Ng, Ng), one matrix per ``DIRECTIONS`` entry.

    ``levels`` holds grey levels 1..Ng inside the ROI and 0 outside; ``[d, i - 1, j - 1]`` counts
    ordered voxel pairs (v, v + d) and (v + d, v) with levels (i, j), distance 1, both in the ROI.
    """
    levels = np.asarray(levels, dtype=np.int64)
    out = np.zeros((len(DIRECTIONS), n_levels, n_levels), dtype=np.int64)
    for k, direction in enumerate(DIRECTIONS):
        codes = _glcm_codes(levels, direction, n_levels)
        out[k] = np.bincount(codes, minlength=n_levels * n_levels).reshape(n_levels, n_levels)
    return out


def _glcm_features(levels: np.ndarray, n_levels: int) -> dict[str, float]:
    per_direction: list[dict[str, float]] = []
    for direction in DIRECTIONS:
        codes, counts = _count_codes(_glcm_codes(levels, direction, n_levels), n_levels * n_levels)
        if counts.size == 0:
            continue  # no pair of ROI voxels along this direction
        i = (codes // n_levels + 1).astype(np.float64)
        j = (codes % n_levels + 1).astype(np.float64)
        p = counts / counts.sum()
        mu = float(np.sum(i * p))  # the matrix is symmetric: row and column means are equal
        var = float(np.sum((i - mu) ** 2 * p))
        diff = i - j
        cluster = i + j - 2.0 * mu
        per_direction.append(
            {
                "glcm_joint_maximum": float(p.max()),
                "glcm_joint_average": mu,
                "glcm_joint_variance": var,
                "glcm_joint_entropy": float(-np.sum(p * np.log2(p))),
                "glcm_contrast": float(np.sum(diff**2 * p)),
                "glcm_dissimilarity": float(np.sum(np.abs(diff) * p)),
                "glcm_inverse_difference": float(np.sum(p / (1.0 + np.abs(diff)))),
                "glcm_inverse_difference_moment": float(np.sum(p / (1.0 + diff**2))),
                # A single grey level has no variance: correlation is set to 1 (perfectly predictable).
                "glcm_correlation": float(np.sum((i - mu) * (j - mu) * p)) / var if var > 0 else 1.0,
                "glcm_autocorrelation": float(np.sum(i * j * p)),
                "glcm_cluster_tendency": float(np.sum(cluster**2 * p)),
                "glcm_cluster_shade": float(np.sum(cluster**3 * p)),
                "glcm_cluster_prominence": float(np.sum(cluster**4 * p)),
                "glcm_angular_second_moment": float(np.sum(p**2)),
            }
        )
    return _average(per_direction, _GLCM, "glcm")


def _lines_along(levels: np.ndarray, direction: tuple[int, int, int]) -> np.ndarray:
    """One 1D array holding every line of ``levels`` along ``direction``, lines separated by a 0.

    The array is sheared so that the lines along ``direction`` become rows along one axis (the first
    axis whose direction component is non-zero), then that axis is made last and padded with a 0.
    """
    shape = levels.shape
    k = next(ax for ax, d in enumerate(direction) if d != 0)
    others = [ax for ax in range(3) if ax != k]
    grids = np.ogrid[tuple(slice(0, n) for n in shape)]
    new_shape: list[int] = []
    index: list[np.ndarray] = []
    for ax in others:
        d = direction[ax]
        if d == 0:
            new_shape.append(shape[ax])
            index.append(grids[ax])
        else:
            # Along a line, coordinate ax changes by d per step of coordinate k: undo that.
            offset = shape[k] - 1 if d > 0 else 0
            new_shape.append(shape[ax] + shape[k] - 1)
            index.append(grids[ax] - d * grids[k] + offset)
    sheared = np.zeros((*new_shape, shape[k] + 1), dtype=levels.dtype)
    sheared[index[0], index[1], grids[k]] = levels
    return sheared.ravel()


def _run_length_codes(levels: np.ndarray, direction: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Grey level and length of every run of equal ROI grey levels along ``direction``."""
    flat = _lines_along(levels, direction)
    starts = np.concatenate(([0], np.flatnonzero(flat[1:] != flat[:-1]) + 1))
    lengths = np.diff(np.append(starts, flat.size))
    run_levels = flat[starts]
    in_roi = run_levels > 0
    return run_levels[in_roi], lengths[in_roi]


def glrlm_matrices(levels: np.ndarray, n_levels: int) -> np.ndarray:
    """Grey-level run-length counts, shape (13, Ng, Lmax), one matrix per ``DIRECTIONS`` entry.

    ``levels`` holds grey levels 1..Ng inside the ROI and 0 outside; ``[d, i - 1, r - 1]`` counts the
    runs of ``r`` consecutive ROI voxels of level ``i`` along direction d. Lmax is the largest array
    dimension.
    """
    levels = np.asarray(levels, dtype=np.int64)
    max_len = max(levels.shape)
    out = np.zeros((len(DIRECTIONS), n_levels, max_len), dtype=np.int64)
    for k, direction in enumerate(DIRECTIONS):
        run_levels, lengths = _run_length_codes(levels, direction)
        np.add.at(out[k], (run_levels - 1, lengths - 1), 1)
    return out


def _glrlm_features(levels: np.ndarray, n_levels: int, n_voxels: int) -> dict[str, float]:
    max_len = max(levels.shape)
    per_direction: list[dict[str, float]] = []
    for direction in DIRECTIONS:
        run_levels, lengths = _run_length_codes(levels, direction)
        codes, counts = _count_codes((run_levels - 1) * max_len + (lengths - 1), n_levels * max_len)
        i = (codes // max_len + 1).astype(np.float64)
        r = (codes % max_len + 1).astype(np.float64)
        counts = counts.astype(np.float64)
        n_runs = float(counts.sum())
        per_level = np.bincount(codes // max_len, weights=counts)
        per_length = np.bincount(codes % max_len, weights=counts)
        per_direction.append(
            {
                "glrlm_short_runs_emphasis": float(np.sum(counts / r**2)) / n_runs,
                "glrlm_long_runs_emphasis": float(np.sum(counts * r**2)) / n_runs,
                "glrlm_grey_level_nonuniformity": float(np.sum(per_level**2)) / n_runs,
                "glrlm_run_length_nonuniformity": float(np.sum(per_length**2)) / n_runs,
                "glrlm_run_percentage": n_runs / n_voxels,
                "glrlm_low_grey_level_run_emphasis": float(np.sum(counts / i**2)) / n_runs,
                "glrlm_high_grey_level_run_emphasis": float(np.sum(counts * i**2)) / n_runs,
            }
        )
    return _average(per_direction, _GLRLM, "glrlm")


def _average(per_direction: list[dict[str, float]], names: tuple[str, ...], cls: str) -> dict[str, float]:
    """Mean of each feature over the directions that had any data (IBSI ``*_3D_avg``); NaN if none."""
    keys = [f"{cls}_{name}" for name in names]
    if not per_direction:
        return dict.fromkeys(keys, math.nan)
    return {key: float(np.mean([d[key] for d in per_direction])) for key in keys}
