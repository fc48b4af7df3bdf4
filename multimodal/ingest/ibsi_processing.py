"""IBSI 1 image processing before feature extraction: interpolation (2.4) and re-segmentation (2.5).

* :func:`resample` puts the image and the ROI mask on a grid of another voxel spacing. The new grid has
  ``ceil(n * s / s_new)`` voxels along each axis and its centre on the original grid's centre ("align
  grid centres", IBSI 2.4). The image is interpolated linearly (default), by cubic spline or nearest
  neighbour; the mask, as IBSI says, linearly as a fraction (partial volume) and then thresholded at
  0.5. Points beyond the original grid take the nearest edge voxel's intensity and lie outside the mask.
  Intensities may then be rounded to integers (CT HU, ``round_intensities``).
* :func:`resegment` gives the intensity mask: the ROI voxels inside ``[lo, hi]`` (range
  re-segmentation) and within mean +- ``outlier_sd`` standard deviations of the ROI's intensities
  (outlier filtering; both statistics from the ROI before re-segmentation, the two masks intersected).
  The morphological mask stays the ROI as segmented.

Everything is off by default (:class:`ImageProcessing` with no arguments does nothing).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from multimodal.errors import MultimodalError

#: interpolation name -> spline order of :func:`scipy.ndimage.affine_transform`
INTERPOLATIONS: dict[str, int] = {"nearest": 0, "linear": 1, "cubic_spline": 3}

#: IBSI's partial-volume threshold of an interpolated mask.
MASK_THRESHOLD = 0.5


@dataclass(frozen=True)
class ImageProcessing:
    """The IBSI processing settings of the imaging ingest (``ingest.resample_spacing`` ...); all off by default."""

    resample_spacing: tuple[float, float, float] | None = None
    interpolation: str = "linear"
    round_intensities: bool = False
    resegment_range: tuple[float, float] | None = None
    outlier_sd: float | None = None

    def __post_init__(self) -> None:
        if self.resample_spacing is not None:
            spacing = tuple(float(s) for s in self.resample_spacing)
            if len(spacing) != 3 or not all(math.isfinite(s) and s > 0 for s in spacing):
                raise MultimodalError(f"resample_spacing must be three positive numbers (mm), got {list(spacing)}")
            object.__setattr__(self, "resample_spacing", spacing)
        if self.interpolation not in INTERPOLATIONS:
            raise MultimodalError(f"interpolation must be one of {list(INTERPOLATIONS)}, got {self.interpolation!r}")
        if self.resegment_range is not None:
            bounds = tuple(float(b) for b in self.resegment_range)
            if len(bounds) != 2 or any(math.isnan(b) for b in bounds) or bounds[0] > bounds[1]:
                raise MultimodalError(f"resegment_range must be [low, high] with low <= high, got {list(bounds)}")
            object.__setattr__(self, "resegment_range", bounds)
        if self.outlier_sd is not None and not (math.isfinite(self.outlier_sd) and self.outlier_sd > 0):
            raise MultimodalError(f"outlier_sd must be a positive number, got {self.outlier_sd}")

    @property
    def resegments(self) -> bool:
        """Whether an intensity mask distinct from the morphological one is made."""
        return self.resegment_range is not None or self.outlier_sd is not None

    def params(self) -> dict[str, object]:
        """The settings for ``uns['ingest']['params']``: ``"none"`` for each step that is off (plain types only)."""
        params: dict[str, object] = {"resampling": "none", "re_segmentation": "none"}
        if self.resample_spacing is not None:
            params["resampling"] = {
                "spacing_mm": [float(s) for s in self.resample_spacing],
                "interpolation": self.interpolation,
                "mask": f"linear, thresholded at {MASK_THRESHOLD}",
                "grid": "centres aligned (IBSI 2.4)",
            }
        if self.resegments:
            reseg: dict[str, object] = {}
            if self.resegment_range is not None:
                reseg["range"] = [float(b) for b in self.resegment_range]
            if self.outlier_sd is not None:
                reseg["outlier_sd"] = float(self.outlier_sd)
            reseg["morphological_mask"] = "as segmented"
            params["re_segmentation"] = reseg
        if self.round_intensities:
            params["round_intensities"] = True
        return params

    def apply(
        self, image: np.ndarray, mask: np.ndarray, spacing: Sequence[float]
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, tuple[float, float, float], int]:
        """(image, morphological mask, intensity mask, spacing, ROI voxels removed by re-segmentation)."""
        spacing_t = tuple(float(s) for s in spacing)
        if self.resample_spacing is not None:
            image, mask = resample(image, mask, spacing_t, self.resample_spacing, interpolation=self.interpolation)
            spacing_t = self.resample_spacing
            if not mask.any():
                raise MultimodalError(
                    f"the ROI is empty after resampling to {list(spacing_t)} mm (smaller than half a new voxel)"
                )
        if self.round_intensities:
            image = np.round(image)
        mask = np.asarray(mask, dtype=bool)
        intensity_mask = mask
        if self.resegments:
            intensity_mask = resegment(image, mask, value_range=self.resegment_range, outlier_sd=self.outlier_sd)
            if not intensity_mask.any():
                raise MultimodalError(
                    f"re-segmentation ({self.params()['re_segmentation']}) leaves no ROI voxel "
                    f"(ROI intensities {float(image[mask].min()):.6g} to {float(image[mask].max()):.6g})"
                )
        removed = int(np.count_nonzero(mask)) - int(np.count_nonzero(intensity_mask))
        return image, mask, intensity_mask, spacing_t, removed  # type: ignore[return-value]


def resampled_grid(
    shape: Sequence[int], spacing: Sequence[float], new_spacing: Sequence[float]
) -> tuple[tuple[int, int, int], np.ndarray]:
    """The new grid's shape and its first voxel's position in original voxel indices (IBSI 2.4, centres aligned).

    Along each axis ``n_new = ceil(n * s / s_new)`` and the first new voxel lies at original index
    ``(s (n - 1) - s_new (n_new - 1)) / (2 s)``, so both grids share their centre.
    """
    n = np.asarray(shape, dtype=float)
    s = np.asarray(spacing, dtype=float)
    s_new = np.asarray(new_spacing, dtype=float)
    # a hair of slack: 5 voxels of 2 mm at 1 mm are 10, not 11 from 10.000000000000002
    n_new = np.ceil(n * s / s_new - 1e-9).astype(int)
    n_new = np.maximum(n_new, 1)
    origin = (s * (n - 1) - s_new * (n_new - 1)) / (2 * s)
    return tuple(int(v) for v in n_new), origin  # type: ignore[return-value]


def resample(
    image: np.ndarray,
    mask: np.ndarray,
    spacing: Sequence[float],
    new_spacing: Sequence[float],
    *,
    interpolation: str = "linear",
) -> tuple[np.ndarray, np.ndarray]:
    """``image`` (float64) and boolean ``mask`` resampled from ``spacing`` to ``new_spacing`` mm (IBSI 2.4).

    The image by ``interpolation`` (``"linear"``, ``"cubic_spline"`` or ``"nearest"``; beyond the
    original grid the nearest edge intensity); the mask linearly as a fraction, then ``>= 0.5``.
    """
    if interpolation not in INTERPOLATIONS:
        raise MultimodalError(f"interpolation must be one of {list(INTERPOLATIONS)}, got {interpolation!r}")
    image = np.asarray(image, dtype=np.float64)
    if image.ndim != 3 or np.shape(mask) != image.shape:
        raise MultimodalError(f"image and mask must be 3D of one shape, got {image.shape} and {np.shape(mask)}")
    shape, origin = resampled_grid(image.shape, spacing, new_spacing)
    step = np.asarray(new_spacing, dtype=float) / np.asarray(spacing, dtype=float)  # original voxels per new voxel
    order = INTERPOLATIONS[interpolation]
    new_image = ndimage.affine_transform(
        image, step, offset=origin, output_shape=shape, order=order, mode="nearest", prefilter=order > 1
    )
    fraction = ndimage.affine_transform(
        (np.asarray(mask) > 0).astype(np.float64), step, offset=origin, output_shape=shape, order=1, mode="constant"
    )
    return new_image, fraction >= MASK_THRESHOLD - 1e-9


def resegment(
    image: np.ndarray,
    mask: np.ndarray,
    *,
    value_range: Sequence[float] | None = None,
    outlier_sd: float | None = None,
) -> np.ndarray:
    """The IBSI intensity mask: ROI voxels within ``value_range`` (inclusive) and mean +- ``outlier_sd`` SD.

    Mean and (population) SD are those of the ROI as segmented; the two filters are intersected.
    """
    image = np.asarray(image, dtype=np.float64)
    roi = np.asarray(mask, dtype=bool)
    keep = roi.copy()
    if value_range is not None:
        lo, hi = (float(b) for b in value_range)
        keep &= (image >= lo) & (image <= hi)
    if outlier_sd is not None and roi.any():
        values = image[roi]
        mean, sd = float(values.mean()), float(values.std())
        keep &= (image >= mean - outlier_sd * sd) & (image <= mean + outlier_sd * sd)
    return keep
