"""IBSI 1 radiomics of a 3D image inside a region of interest (ROI): the composer.

Checks the input, discretises the ROI intensities once (:mod:`multimodal.ingest.ibsi_discretisation`) and
calls the feature families, each in its own module and keyed by its IBSI 1 tag (Zwanenburg et al.,
Radiology 2020):

* :mod:`multimodal.ingest.ibsi_morphology`: morphology (``morph_*``, mesh based);
* :mod:`multimodal.ingest.ibsi_intensity`: local intensity (``loc_*``), intensity-based statistics
  (``stat_*``), intensity histogram (``ih_*``) and intensity-volume histogram (``ivh_*``);
* :mod:`multimodal.ingest.ibsi_texture`: GLCM (``cm_*``), GLRLM (``rlm_*``), GLSZM (``szm_*``), GLDZM
  (``dzm_*``), NGTDM (``ngt_*``) and NGLDM (``ngl_*``), in the 3D aggregations by default (``*_3D_avg``,
  ``*_3D_comb``, ``*_3D``), 2D and 2.5D on request (slices along the array's last axis, z for NIfTI).

Every IBSI 1 digital phantom tag these modules compute is within the IBSI tolerance
(``tests/test_ibsi_intensity_morphology.py``, ``tests/test_ibsi_texture.py``). Every non-zero mask
voxel is the ROI, the morphological mask and, unless re-segmentation gives another (``intensity_mask``,
:mod:`multimodal.ingest.ibsi_processing`), the intensity mask; resampling happens before, in the ingest.
Discretisation (``ih_*`` and texture) is a fixed bin number over the ROI range (IBSI FBN, default 32)
or a fixed bin width from the ROI minimum (FBS); the IVH uses an integer-valued ROI's intensities as
its levels (CT HU), else 1000 equal bins. A feature undefined for the ROI (PCA axes of one voxel,
GLCM of a ROI without two adjacent voxels) is NaN, with a warning in the log.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable

import numpy as np

from multimodal.errors import MultimodalError
from multimodal.ingest.ibsi_discretisation import discretise
from multimodal.ingest.ibsi_intensity import (
    IH_TAGS,
    IVH_TAGS,
    LOC_TAGS,
    STAT_TAGS,
    ibsi_intensity_features,
    validate_roi,
)
from multimodal.ingest.ibsi_morphology import MORPH_TAGS, ibsi_morphology_features
from multimodal.ingest.ibsi_texture import AGGREGATIONS, ibsi_texture_features, texture_tags

__all__ = [
    "AGGREGATIONS",
    "DEFAULT_AGGREGATIONS",
    "EXTRACTOR",
    "FAMILY_NAMES",
    "NATIVE_NAMES",
    "discretise",
    "extract_radiomics",
    "feature_classes",
]

logger = logging.getLogger(__name__)

EXTRACTOR = "multimodal.radiomics v2 (IBSI 1)"

#: Texture aggregations extracted unless the configuration names others (``ingest.texture_aggregations``).
DEFAULT_AGGREGATIONS: tuple[str, ...] = ("3D",)

#: IBSI tag prefix -> the feature family (``var['feature_class']`` of the imaging modality).
FAMILY_NAMES: dict[str, str] = {
    "morph": "morphology",
    "loc": "local_intensity",
    "stat": "intensity_statistics",
    "ih": "intensity_histogram",
    "ivh": "intensity_volume_histogram",
    "cm": "glcm",
    "rlm": "glrlm",
    "szm": "glszm",
    "dzm": "gldzm",
    "ngt": "ngtdm",
    "ngl": "ngldm",
}

#: IBSI tag -> the name the feature had in multimodal.radiomics v1 (store ``var['native_name']``), for
#: continuity with stores written before. v1's ``firstorder_std`` has no IBSI tag (``stat_var`` is its
#: square) and is gone. The area-based v1 values (voxel-face area) and its diameter (between boundary
#: voxel centres) differed from the mesh-based IBSI ones; every other value is unchanged.
NATIVE_NAMES: dict[str, str] = {
    "morph_vol_approx": "shape_voxel_volume",
    "morph_area_mesh": "shape_surface_area",
    "morph_av": "shape_surface_to_volume_ratio",
    "morph_comp_2": "shape_compactness",
    "morph_sphericity": "shape_sphericity",
    "morph_diam": "shape_maximum_3d_diameter",
    "morph_pca_maj_axis": "shape_major_axis_length",
    "morph_pca_min_axis": "shape_minor_axis_length",
    "morph_pca_least_axis": "shape_least_axis_length",
    "morph_pca_elongation": "shape_elongation",
    "morph_pca_flatness": "shape_flatness",
    "stat_mean": "firstorder_mean",
    "stat_var": "firstorder_variance",
    "stat_skew": "firstorder_skewness",
    "stat_kurt": "firstorder_excess_kurtosis",
    "stat_median": "firstorder_median",
    "stat_min": "firstorder_min",
    "stat_p10": "firstorder_p10",
    "stat_p90": "firstorder_p90",
    "stat_max": "firstorder_max",
    "stat_iqr": "firstorder_interquartile_range",
    "stat_range": "firstorder_range",
    "stat_mad": "firstorder_mean_absolute_deviation",
    "stat_rmad": "firstorder_robust_mean_absolute_deviation",
    "stat_energy": "firstorder_energy",
    "stat_rms": "firstorder_root_mean_squared",
    "ih_entropy": "firstorder_entropy",
    "ih_uniformity": "firstorder_uniformity",
    "cm_joint_max_3D_avg": "glcm_joint_maximum",
    "cm_joint_avg_3D_avg": "glcm_joint_average",
    "cm_joint_var_3D_avg": "glcm_joint_variance",
    "cm_joint_entr_3D_avg": "glcm_joint_entropy",
    "cm_contrast_3D_avg": "glcm_contrast",
    "cm_dissimilarity_3D_avg": "glcm_dissimilarity",
    "cm_inv_diff_3D_avg": "glcm_inverse_difference",
    "cm_inv_diff_mom_3D_avg": "glcm_inverse_difference_moment",
    "cm_corr_3D_avg": "glcm_correlation",
    "cm_auto_corr_3D_avg": "glcm_autocorrelation",
    "cm_clust_tend_3D_avg": "glcm_cluster_tendency",
    "cm_clust_shade_3D_avg": "glcm_cluster_shade",
    "cm_clust_prom_3D_avg": "glcm_cluster_prominence",
    "cm_energy_3D_avg": "glcm_angular_second_moment",
    "rlm_sre_3D_avg": "glrlm_short_runs_emphasis",
    "rlm_lre_3D_avg": "glrlm_long_runs_emphasis",
    "rlm_glnu_3D_avg": "glrlm_grey_level_nonuniformity",
    "rlm_rlnu_3D_avg": "glrlm_run_length_nonuniformity",
    "rlm_r_perc_3D_avg": "glrlm_run_percentage",
    "rlm_lgre_3D_avg": "glrlm_low_grey_level_run_emphasis",
    "rlm_hgre_3D_avg": "glrlm_high_grey_level_run_emphasis",
}

_NON_TEXTURE_TAGS: tuple[str, ...] = MORPH_TAGS + LOC_TAGS + STAT_TAGS + IH_TAGS + IVH_TAGS


def check_aggregations(aggregations: Iterable[str]) -> tuple[str, ...]:
    """``aggregations`` as a tuple in :data:`AGGREGATIONS` order, or MultimodalError naming the bad ones."""
    given = [str(a) for a in aggregations]
    unknown = [a for a in given if a not in AGGREGATIONS]
    if unknown or not given:
        raise MultimodalError(f"texture aggregations must be one or more of {list(AGGREGATIONS)}, got {given}")
    return tuple(a for a in AGGREGATIONS if a in given)


def feature_classes(aggregations: Iterable[str] = DEFAULT_AGGREGATIONS) -> dict[str, str]:
    """IBSI tag -> feature family, in the order :func:`extract_radiomics` returns the features."""
    tags = list(_NON_TEXTURE_TAGS) + texture_tags(aggregations=check_aggregations(aggregations))
    return {tag: FAMILY_NAMES[tag.split("_", 1)[0]] for tag in tags}


def extract_radiomics(
    image: np.ndarray,
    mask: np.ndarray,
    *,
    spacing: tuple[float, float, float],
    bin_count: int = 32,
    bin_width: float | None = None,
    aggregations: Iterable[str] = DEFAULT_AGGREGATIONS,
    intensity_mask: np.ndarray | None = None,
    resegment_range: tuple[float, float] | None = None,
) -> dict[str, float]:
    """IBSI 1 features of ``image`` inside ``mask`` (voxels > 0), keyed and ordered as :func:`feature_classes`.

    ``spacing`` is the voxel size in mm along each array axis. Grey levels for the intensity histogram
    and texture come from ``bin_count`` equal bins over the ROI range, or from bins of width
    ``bin_width`` (from the ROI minimum) when it is given. ``aggregations``: the texture aggregations,
    any of ``"2D"``, ``"2_5D"``, ``"3D"``. Raises :class:`MultimodalError` for an empty mask, non-finite
    intensities in the ROI, or inconsistent arguments. ``intensity_mask``, when given (IBSI
    re-segmentation, :mod:`multimodal.ingest.ibsi_processing`), is the ROI of every intensity and texture
    family; ``mask`` stays the morphological mask (``morph_*``). ``resegment_range`` ``(a, b)``, the
    re-segmentation range the intensity mask was cut to: fixed bin width bins start at ``a`` (IBSI), and
    the intensity-volume histogram spans ``[a, b]``.
    """
    aggregations = check_aggregations(aggregations)
    if bin_width is None:
        if isinstance(bin_count, bool) or int(bin_count) != bin_count or bin_count < 1:
            raise MultimodalError(f"bin_count must be a positive integer, got {bin_count}")
        bin_count = int(bin_count)
    elif not (math.isfinite(bin_width) and bin_width > 0):
        raise MultimodalError(f"bin_width must be a positive number, got {float(bin_width):g}")
    image, morph_roi, spacing_t = validate_roi(image, mask, spacing)
    roi = morph_roi if intensity_mask is None else validate_roi(image, intensity_mask, spacing_t)[1]

    features: dict[str, float] = {}
    features.update(ibsi_morphology_features(image, morph_roi, spacing_t))
    features.update(
        ibsi_intensity_features(
            image, roi, spacing_t, bin_count=bin_count, bin_width=bin_width, resegment_range=resegment_range
        )
    )
    lower = None if resegment_range is None else float(resegment_range[0])
    grey, n_levels = discretise(image[roi], bin_count=bin_count, bin_width=bin_width, lower_bound=lower)
    levels = np.zeros(roi.shape, dtype=np.int64)
    levels[roi] = grey
    features.update(ibsi_texture_features(levels, roi, n_levels, aggregations=aggregations))

    names = feature_classes(aggregations)
    undefined = [name for name in names if not math.isfinite(features[name])]
    if undefined:
        logger.warning("%d radiomics features are undefined for this ROI (NaN): %s", len(undefined), undefined)
    return {name: float(features[name]) for name in names}
