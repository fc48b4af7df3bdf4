"""IBSI 1 intensity discretisation (reference manual 2.7): grey levels 1..Ng of the ROI intensities.

Used by the intensity histogram (:mod:`multimodal.ingest.ibsi_intensity`) and, through the composer
:mod:`multimodal.ingest.radiomics`, by every texture family (:mod:`multimodal.ingest.ibsi_texture`).
"""

from __future__ import annotations

import numpy as np

from multimodal.errors import MultimodalError


def discretise(
    values: np.ndarray, *, bin_count: int = 32, bin_width: float | None = None, lower_bound: float | None = None
) -> tuple[np.ndarray, int]:
    """Grey levels 1..Ng of ``values`` and the number of levels Ng.

    Fixed bin number (IBSI FBN): ``floor(Ng * (x - min) / (max - min)) + 1``, the maximum going to
    level Ng; a constant ROI is all level 1. Fixed bin width (IBSI FBS, when ``bin_width`` is given):
    ``floor((x - lower) / bin_width) + 1`` where ``lower`` is ``lower_bound`` (IBSI: the lower bound of
    the re-segmentation range, ``ingest.resegment_range``) or, without one, the ROI minimum. FBN ignores
    ``lower_bound``. A value below ``lower_bound`` is an error.
    """
    values = np.asarray(values, dtype=np.float64)
    lo = float(values.min())
    hi = float(values.max())
    if bin_width is not None and lower_bound is not None:
        if lo < lower_bound:
            raise MultimodalError(
                f"an ROI intensity ({lo:g}) lies below the fixed-bin-width lower bound {lower_bound:g} "
                "(the re-segmentation range's lower bound)"
            )
        lo = float(lower_bound)
    if bin_width is not None:
        levels = np.floor((values - lo) / bin_width).astype(np.int64) + 1
        return levels, int(levels.max())
    if hi == lo:
        return np.ones(values.shape, dtype=np.int64), int(bin_count)
    levels = np.floor(bin_count * (values - lo) / (hi - lo)).astype(np.int64) + 1
    np.minimum(levels, bin_count, out=levels)
    return levels, int(bin_count)
