"""Imaging ingest: image/mask pairs per patient into a patients x radiomics-features AnnData.

Images are NIfTI, NRRD or a DICOM series directory; masks NIfTI, NRRD, DICOM SEG or DICOM RTSTRUCT
(read by :mod:`multimodal.ingest.medical_images` into one volume-with-geometry representation).
"""

from __future__ import annotations

import json
import logging
import os
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import anndata
import nibabel as nib
import numpy as np
import pandas as pd
from tqdm import tqdm

from multimodal.errors import MultimodalError
from multimodal.ingest.ibsi_filters import check_filters, filter_feature_names, filter_features
from multimodal.ingest.ibsi_processing import ImageProcessing
from multimodal.ingest.medical_images import Volume, read_image, read_mask
from multimodal.ingest.radiomics import (
    DEFAULT_AGGREGATIONS,
    EXTRACTOR,
    NATIVE_NAMES,
    check_aggregations,
    extract_radiomics,
    feature_classes,
)

logger = logging.getLogger(__name__)

# Largest absolute difference allowed between the image's and the mask's voxel sizes and affines.
GEOMETRY_TOLERANCE = 1e-3


def read_image_and_mask(
    image_path: str | os.PathLike[str],
    mask_path: str | os.PathLike[str],
    *,
    label: int | None = None,
    labels_seen: list[int] | None = None,
    roi: str | None = None,
    roi_from_sheet: bool = False,
) -> tuple[np.ndarray, np.ndarray, tuple[float, float, float]]:
    """Read an image and its ROI mask, checked to be usable together.

    The image is NIfTI, NRRD or a directory holding one DICOM series; the mask NIfTI, NRRD, DICOM SEG or
    DICOM RTSTRUCT (see :mod:`multimodal.ingest.medical_images`). Returns the image as float64, the mask
    as bool (voxels equal to ``label``, or every voxel > 0 when ``label`` is None; the SEG segment or
    RTSTRUCT ROI named ``roi``) and the voxel spacing in mm. ``labels_seen``, when given, receives the
    mask's distinct non-zero labels (a segmentation may hold tumour, oedema, organ ...). A 4D file whose
    extra dimensions have size 1 counts as 3D. Raises :class:`MultimodalError` naming the file when a
    file is missing or unreadable, the image is not 3D, the mask's shape, voxel size or affine differs
    from the image's, the mask is empty (or lacks ``label``), or the image has non-finite intensities
    inside the mask.
    """
    image, mask, spacing, present, _ = _image_and_mask(
        image_path, mask_path, label=label, roi=roi, roi_from_sheet=roi_from_sheet
    )
    if labels_seen is not None:
        labels_seen[:] = present
    return image, mask, spacing


def _image_and_mask(
    image_path: str | os.PathLike[str],
    mask_path: str | os.PathLike[str],
    *,
    label: int | None,
    roi: str | None,
    roi_from_sheet: bool,
) -> tuple[np.ndarray, np.ndarray, tuple[float, float, float], list[int], int | None]:
    """:func:`read_image_and_mask`, also giving the labels present and the label taken (None: every non-zero)."""
    image_volume, mask_volume, label = _read_pair(
        image_path, mask_path, roi=roi, label=label, roi_from_sheet=roi_from_sheet, pixels=True
    )
    image = image_volume.data
    relation = grid_relation(image_volume, mask_volume, image_path, mask_path)
    mask_raw = _on_image_grid(mask_volume.data, relation, image.shape)
    values = np.unique(mask_raw)
    check_label_map(values, mask_path)
    present = [int(v) for v in values if v != 0]
    if label is None:
        mask = np.asarray(mask_raw) > 0
        if not mask.any():
            raise MultimodalError(f"{mask_path}: mask is empty (no voxel > 0)")
    else:
        mask = np.asarray(mask_raw) == label
        if not mask.any():
            raise MultimodalError(f"{mask_path}: no voxel has label {label} (labels present: {present[:10] or 'none'})")
    bad = mask & ~np.isfinite(image)
    if bad.any():
        first = tuple(int(i) for i in np.argwhere(bad)[0])
        raise MultimodalError(
            f"{image_path}: {int(bad.sum())} non-finite {'intensity' if bad.sum() == 1 else 'intensities'} "
            f"(NaN or inf) inside the mask {mask_path}, "
            f"the first at voxel {first}"
        )
    spacing = (float(image_volume.spacing[0]), float(image_volume.spacing[1]), float(image_volume.spacing[2]))
    return image, mask, spacing, present, label


def _read_pair(
    image_path: str | os.PathLike[str],
    mask_path: str | os.PathLike[str],
    *,
    roi: str | None,
    label: int | None,
    roi_from_sheet: bool,
    pixels: bool,
) -> tuple[Volume, Volume, int | None]:
    """The image and mask volumes (headers only unless ``pixels``) and the label that is the ROI."""
    image = read_image(image_path, pixels=pixels)
    if pixels and image.data is not None and image.data.ndim != 3:
        raise MultimodalError(f"{image_path}: image must be 3D, got {image.data.ndim}D with shape {image.data.shape}")
    mask, label = read_mask(mask_path, image, roi=roi, label=label, roi_from_sheet=roi_from_sheet, pixels=pixels)
    return image, mask, label


def check_pair(
    image_path: str | os.PathLike[str],
    mask_path: str | os.PathLike[str],
    *,
    roi: str | None = None,
    label: int | None = None,
    roi_from_sheet: bool = False,
) -> None:
    """Raise when an image and mask cannot be used together, from their headers (no voxel data read).

    Formats, geometry, the series a DICOM SEG/RTSTRUCT references and the ROI/segment name are checked.
    """
    image, mask, _ = _read_pair(
        image_path, mask_path, roi=roi, label=label, roi_from_sheet=roi_from_sheet, pixels=False
    )
    grid_relation(image, mask, image_path, mask_path)


#: More distinct values than a label map plausibly holds (TotalSegmentator has 117 labels).
MAX_MASK_LABELS = 1000


def grid_relation(
    image_img: Volume, mask_img: Volume, image_path: object, mask_path: object
) -> tuple[np.ndarray, np.ndarray]:
    """How mask voxels map onto image voxels, from the headers alone: (signed axis permutation, offset).

    Identity and zero when the mask shares the image's grid; a permutation/flip when the mask is the same
    grid stored in another orientation (LPS vs RAS, another axis order: reoriented exactly, no
    interpolation). Anything else (another shape, voxel size or position) raises, naming both files.
    Works on the geometry of any format (:class:`~multimodal.ingest.medical_images.Volume`).
    """
    image_shape, mask_shape = tuple(image_img.shape), tuple(mask_img.shape)
    for path, what, shape in ((image_path, "image", image_shape), (mask_path, "mask", mask_shape)):
        if len(shape) != 3:
            raise MultimodalError(f"{path}: {what} must be 3D, got {len(shape)}D with shape {shape}")
    image_affine, mask_affine = np.asarray(image_img.affine, float), np.asarray(mask_img.affine, float)
    if image_shape == mask_shape and np.max(np.abs(image_affine - mask_affine)) <= GEOMETRY_TOLERANCE:
        return np.eye(3), np.zeros(3)
    to_image = np.linalg.solve(image_affine, mask_affine)  # mask voxel index -> image voxel index
    rotation, shift = to_image[:3, :3], to_image[:3, 3]
    signed = np.round(rotation)
    is_permutation = (
        np.max(np.abs(rotation - signed)) <= GEOMETRY_TOLERANCE
        and (np.abs(signed).sum(axis=0) == 1).all()
        and (np.abs(signed).sum(axis=1) == 1).all()
    )
    if is_permutation:
        extent = np.abs(signed) @ np.asarray(mask_shape, float)  # the mask's shape along image axes
        first = shift + np.minimum(signed, 0) @ (np.asarray(mask_shape, float) - 1)  # image index of its corner
        if np.allclose(extent, image_shape) and np.max(np.abs(first)) <= GEOMETRY_TOLERANCE:
            return signed, shift
    orientation = f"image {''.join(nib.aff2axcodes(image_affine))}, mask {''.join(nib.aff2axcodes(mask_affine))}"
    if image_shape != mask_shape:
        inside = is_permutation and np.max(np.abs(first - np.round(first))) <= GEOMETRY_TOLERANCE
        inside = inside and (first >= -GEOMETRY_TOLERANCE).all() and (first + extent <= np.add(image_shape, 1e-3)).all()
        cropped = " (it covers a sub-block of the image: a cropped export? save the mask on the image's grid)"
        raise MultimodalError(
            f"{mask_path}: mask shape {mask_shape} differs from image shape {image_shape} of {image_path}"
            + (cropped if inside else f" ({orientation})")
        )
    image_zooms = np.sort(np.asarray(image_img.spacing[:3], dtype=float))
    mask_zooms = np.sort(np.asarray(mask_img.spacing[:3], dtype=float))
    if np.max(np.abs(image_zooms - mask_zooms)) > GEOMETRY_TOLERANCE:
        raise MultimodalError(
            f"{mask_path}: mask voxel spacing {_numbers(mask_img.spacing[:3])} mm differs from image "
            f"spacing {_numbers(image_img.spacing[:3])} mm of {image_path} (tolerance {GEOMETRY_TOLERANCE})"
        )
    difference = float(np.max(np.abs(image_affine - mask_affine)))
    moved = np.max(np.abs(image_affine[:3, :3] - mask_affine[:3, :3])) <= GEOMETRY_TOLERANCE
    where = (
        f"origin {_numbers(mask_affine[:3, 3])} mm vs {_numbers(image_affine[:3, 3])} mm: the same grid, shifted; "
        if moved
        else ""
    )
    raise MultimodalError(
        f"{mask_path}: mask affine differs from the affine of image {image_path} "
        f"({where}largest difference {difference:.4g} > {GEOMETRY_TOLERANCE}; {orientation})"
    )


def _numbers(values) -> str:
    """``(0.8, 0.8, 2.5)``: plain numbers (not ``np.float32(0.8)``), at most 4 significant digits."""
    return "(" + ", ".join(f"{float(v):.4g}" for v in values) + ")"


def _on_image_grid(mask: np.ndarray, relation: tuple[np.ndarray, np.ndarray], shape: tuple[int, ...]) -> np.ndarray:
    """The mask array laid out on the image's voxel grid (axes permuted and flipped as ``relation`` says)."""
    signed, _ = relation
    if np.array_equal(signed, np.eye(3)):
        return mask
    axes = [int(np.flatnonzero(signed[i])[0]) for i in range(3)]  # image axis i <- mask axis axes[i]
    out = np.transpose(mask, axes)
    flips = [i for i in range(3) if signed[i, axes[i]] < 0]
    out = np.flip(out, axis=flips) if flips else out
    assert out.shape == tuple(shape)
    return np.ascontiguousarray(out)


def check_label_map(values: np.ndarray, mask_path: object) -> None:
    """Raise when a mask's distinct values are not those of a label map (whole numbers >= 0, not too many)."""
    finite = values[np.isfinite(values)]
    if finite.size < values.size:
        raise MultimodalError(
            f"{mask_path}: mask has NaN or infinite voxels; a label map holds whole numbers (0 outside the ROI)"
        )
    # an image (the CT itself, the same file twice) before a soft mask: both have fractions, an image many values
    if finite.size and (finite.min() < 0 or finite.size > MAX_MASK_LABELS):
        raise MultimodalError(
            f"{mask_path}: looks like an image, not a label map ({finite.size} distinct values, lowest "
            f"{float(finite.min()):.4g}, highest {float(finite.max()):.4g}); are the image and mask columns swapped?"
        )
    fractional = finite[np.mod(finite, 1) != 0]
    if fractional.size:
        raise MultimodalError(
            f"{mask_path}: mask has non-integer values (e.g. {float(fractional[0]):.4g}): a soft or interpolated "
            "mask; threshold it, or resample it with nearest-neighbour interpolation"
        )


def imaging_matrix(
    samples: pd.DataFrame,
    *,
    bin_count: int = 32,
    bin_width: float | None = None,
    texture_aggregations: Iterable[str] = DEFAULT_AGGREGATIONS,
    mask_label: int | None = None,
    roi_name: str | None = None,
    resample_spacing: Iterable[float] | None = None,
    interpolation: str = "linear",
    round_intensities: bool = False,
    resegment_range: Iterable[float] | None = None,
    outlier_sd: float | None = None,
    lesion_rule: str = "largest",
    filters: list[dict] | None = None,
    threads: int = 1,
    progress: bool = True,
) -> anndata.AnnData:
    """IBSI 1 radiomics features of every patient with imaging, as a patients x features AnnData.

    Features (:func:`multimodal.ingest.radiomics.extract_radiomics`) are named by their IBSI tag, with
    ``var['ibsi_tag']``, ``var['feature_class']`` (the IBSI family) and ``var['native_name']`` (the
    multimodal.radiomics v1 name, empty where there was none). Discretisation is ``bin_count`` fixed
    bins (IBSI FBN) or, when given, fixed bins of width ``bin_width`` (FBS); ``texture_aggregations``
    any of ``"2D"``, ``"2_5D"``, ``"3D"``. The settings are recorded in ``uns["ingest"]["params"]``.

    ``samples`` is indexed by patient ID with columns ``image`` and ``mask`` (paths relative to the
    working directory: images NIfTI, NRRD or a DICOM series directory, masks NIfTI, NRRD, DICOM SEG or
    RTSTRUCT) and optionally ``roi``, the name of the RTSTRUCT ROI or SEG segment that is the tumour
    (default ``roi_name``; an RTSTRUCT of one ROI needs none). A patient whose image and mask are both
    empty or NaN has no imaging: it is left out and counted in
    ``uns["ingest"]["exclusions"]["patients_without_imaging"]``. Any unusable file, or an image without
    a mask or a mask without an image, raises :class:`MultimodalError`. With ``mask_label`` the ROI is
    the voxels with that label; without, every non-zero voxel, and masks holding more than one label are
    counted (``exclusions["masks_with_several_labels_merged"]``) so a merged ROI is never silent. Only
    voxel data and geometry are read from the files: no DICOM attribute reaches the AnnData.

    IBSI image processing (:mod:`multimodal.ingest.ibsi_processing`; all off by default):
    ``resample_spacing`` (mm along the image's array axes) resamples image and mask onto a grid of that
    spacing with centres aligned, the image by ``interpolation`` (``linear``, ``cubic_spline``,
    ``nearest``), the mask linearly then thresholded at 0.5; ``round_intensities`` rounds intensities
    to integers (CT). ``resegment_range`` ``(lo, hi)`` and ``outlier_sd`` (mean +- that many SD) take
    ROI voxels out of the intensity mask (the morphological mask stays as segmented); the voxels removed
    are ``obs['resegmented_voxels_removed']`` and, summed, ``exclusions['resegmented_voxels_removed']``.

    Several lesions and timepoints (``samples['imaging_rows']``, from a sheet with ``lesion`` /
    ``timepoint`` columns; :mod:`multimodal.ingest.samples`): each row is extracted, then a patient's
    lesions at one timepoint are combined by ``lesion_rule``: ``largest`` (the features of the lesion with
    the largest ``morph_volume``) or ``volume_weighted`` (each feature the mean over lesions weighted by
    their ``morph_volume``; lesions where a feature is undefined are left out of its mean). The baseline
    gives the features; with a ``timepoint`` column, the follow-up gives ``delta_<tag>`` (follow-up minus
    baseline) and ``delta_rel_<tag>`` ((follow-up - baseline) / |baseline|, missing where the baseline is
    0) for every feature. A patient without follow-up has them missing, counted in
    ``exclusions['patients_without_follow_up']``; a patient with a follow-up but no baseline is an error.
    ``obs['n_lesions']`` is the baseline lesion count.

    ``filters`` (IBSI 2, :mod:`multimodal.ingest.ibsi_filters`): each filter's response over the processed
    image gives the 18 intensity statistics inside the intensity mask, named ``<prefix>_stat_*`` (class
    ``filter_<type>``), after the IBSI 1 features.

    ``threads``: images extracted in parallel by that many worker processes (the rule's ``threads``);
    the result does not depend on it.
    """
    missing = [col for col in ("image", "mask") if col not in samples.columns]
    if missing:
        raise MultimodalError(f"imaging samples table has no column {', '.join(map(repr, missing))}")
    aggregations = check_aggregations(texture_aggregations)
    processing = ImageProcessing(
        resample_spacing=None if resample_spacing is None else tuple(resample_spacing),  # type: ignore[arg-type]
        interpolation=interpolation,
        round_intensities=bool(round_intensities),
        resegment_range=None if resegment_range is None else tuple(resegment_range),  # type: ignore[arg-type]
        outlier_sd=outlier_sd,
    )
    if bin_width is not None and not (np.isfinite(bin_width) and bin_width > 0):
        raise MultimodalError(f"bin_width must be a positive number, got {float(bin_width):g}")
    patient_ids = [str(pid) for pid in samples.index]
    index = pd.Index(patient_ids)
    duplicated = sorted(set(index[index.duplicated()]))
    if duplicated:
        raise MultimodalError(f"imaging samples table lists patients more than once: {duplicated[:10]}")

    if lesion_rule not in LESION_RULES:
        raise MultimodalError(f"lesion_rule must be one of {', '.join(LESION_RULES)}, got {lesion_rule!r}")
    several = "imaging_rows" in samples.columns
    with_deltas = several and "timepoint" in samples.columns
    todo, n_without = _imaging_entries(samples, patient_ids, roi_name)
    if n_without:
        logger.info("%d of %d patients have no imaging and are left out", n_without, len(patient_ids))

    # Every pair's headers (format, geometry) are checked before any slow extraction starts.
    for entry in todo:
        check_pair(entry.image, entry.mask, roi=entry.roi, label=mask_label, roi_from_sheet=entry.roi_from_sheet)

    filter_specs = check_filters(filters)
    classes = feature_classes(aggregations) | filter_feature_names(filter_specs)
    names = list(classes)
    extracted = np.empty((len(todo), len(names)), dtype=np.float32)
    n_merged, merged_example = 0, ""
    removed_per_entry = np.zeros(len(todo), dtype=np.int64)
    settings = {
        "mask_label": mask_label,
        "processing": processing,
        "bin_count": bin_count,
        "bin_width": bin_width,
        "aggregations": aggregations,
        "filters": filter_specs,
        "names": names,
    }
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise MultimodalError(f"threads must be a whole number of at least 1, got {threads!r}")
    results = _extract_all(todo, settings, threads=min(threads, max(len(todo), 1)), progress=progress)
    for row, (values, removed_here, labels, taken) in enumerate(results):
        extracted[row] = values
        removed_per_entry[row] = removed_here
        if taken is None and len(labels) > 1:
            n_merged += 1
            merged_example = merged_example or f"{todo[row].mask}: labels {labels[:10]}"
    logger.info("extracted %d radiomics features from %d images", len(names), len(todo))
    if n_merged:
        logger.warning(
            "%d mask(s) hold several labels, merged into one ROI (e.g. %s); set ingest.mask_label "
            "(--mask-label) to take the tumour label only",
            n_merged,
            merged_example,
        )
    all_entries = todo
    combined = _combine_lesions(todo, extracted, removed_per_entry, names, lesion_rule, with_deltas)
    rows, removed, todo, n_lesions, n_without_follow_up = combined
    obs = pd.DataFrame(
        {"image": [t.image for t in todo], "mask": [t.mask for t in todo]},
        index=pd.Index([t.patient for t in todo], name="patient_id"),
    )
    if several:  # per patient: baseline lesions, and whether a follow-up gave its delta features
        obs["n_lesions"] = n_lesions
        obs["n_images"] = [sum(e.patient == t.patient for e in all_entries) for t in todo]
    if processing.resegments:
        obs["resegmented_voxels_removed"] = removed
    prefixes = ("", *DELTA_PREFIXES) if with_deltas else ("",)
    var = pd.DataFrame(
        {
            "feature_class": [f"{p}{classes[name]}" for p in prefixes for name in names],
            "ibsi_tag": [f"{p}{name}" for p in prefixes for name in names],
            "native_name": [NATIVE_NAMES.get(name, "") if not p else "" for p in prefixes for name in names],
            "source": "radiomics",
        },
        index=pd.Index([f"{p}{name}" for p in prefixes for name in names], name="feature"),
    )
    uns = {
        "ingest": {
            "modality": "imaging",
            "params": {
                # IBSI FBN (fixed bin number) unless a bin width is given (FBS, from the ROI minimum)
                "discretisation": "FBN" if bin_width is None else "FBS",
                **({"bin_count": int(bin_count)} if bin_width is None else {"bin_width": float(bin_width)}),
                "extractor": EXTRACTOR,
                "texture_aggregations": list(aggregations),
                "ivh_levels": "integer intensities of an integer-valued ROI, else 1000 equal bins",
                # IBSI: with a re-segmentation range, FBS bins and the IVH start at its lower bound
                **({"range_lower_bound": processing.resegment_range[0]} if processing.resegment_range else {}),
                **processing.params(),  # resampling and re-segmentation: "none" unless configured
                "mask_label": "any non-zero" if mask_label is None else int(mask_label),
                **({"roi_name": str(roi_name)} if roi_name else {}),
                **({"lesion_rule": lesion_rule} if several else {}),
                **({"filters_json": json.dumps(filter_specs)} if filter_specs else {}),  # IBSI 2 filters as set
                **({"delta_features": [f"{p}<tag>" for p in DELTA_PREFIXES]} if with_deltas else {}),
            },
            "exclusions": {
                "patients_without_imaging": int(n_without),
                # e.g. texture of a one-voxel ROI: left missing, imputed inside each training fold
                "undefined_feature_values": int(np.isnan(rows[:, : len(names)]).sum()),
                **({"patients_with_several_lesions": int((np.asarray(n_lesions) > 1).sum())} if several else {}),
                # delta features of a patient scanned once: missing, imputed inside each training fold
                **({"patients_without_follow_up": int(n_without_follow_up)} if with_deltas else {}),
                "masks_with_several_labels_merged": int(n_merged),
                **({"resegmented_voxels_removed": int(removed.sum())} if processing.resegments else {}),
            },
            "n_patients_in": len(patient_ids),
        }
    }
    return anndata.AnnData(X=rows, obs=obs, var=var, uns=uns)


def _extract_one(entry: ImagingEntry, settings: dict) -> tuple[np.ndarray, int, list[int], int | None]:
    """One image/mask pair's feature values (in ``settings['names']`` order), voxels removed by
    re-segmentation, the mask's labels and the label taken."""
    processing = settings["processing"]
    image, mask, spacing, labels, taken = _image_and_mask(
        entry.image, entry.mask, label=settings["mask_label"], roi=entry.roi, roi_from_sheet=entry.roi_from_sheet
    )
    try:
        image, mask, intensity_mask, spacing, removed = processing.apply(image, mask, spacing)
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # tiny ROIs: undefined values become NaN, counted
            features = extract_radiomics(
                image,
                mask,
                spacing=spacing,
                bin_count=settings["bin_count"],
                bin_width=settings["bin_width"],
                aggregations=settings["aggregations"],
                intensity_mask=intensity_mask if processing.resegments else None,
                resegment_range=processing.resegment_range,
            )
            roi = intensity_mask if processing.resegments else mask
            features.update(filter_features(image, roi, spacing, settings["filters"]))
    except MultimodalError as err:
        raise MultimodalError(f"{entry.image} (mask {entry.mask}, patient {entry.patient}): {err}") from err
    values = np.asarray([features[name] for name in settings["names"]], dtype=np.float32)
    return values, int(removed), labels, taken


def _extract_all(todo: list[ImagingEntry], settings: dict, *, threads: int, progress: bool) -> list[tuple]:
    """:func:`_extract_one` for every entry, in order; with ``threads`` > 1 in that many worker processes
    (numpy's per-voxel work holds the GIL too often for threads to scale)."""
    bar = tqdm(total=len(todo), desc="radiomics", unit="image", disable=not progress)
    if threads <= 1:
        results = []
        for entry in todo:
            results.append(_extract_one(entry, settings))
            bar.update()
        bar.close()
        return results
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    # fork: workers start in milliseconds with the modules loaded (spawn re-imports anndata & co. per worker,
    # seconds each); the ingest verb loads no torch, so no threads are forked mid-flight
    methods = multiprocessing.get_all_start_methods()
    context = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
    with ProcessPoolExecutor(max_workers=threads, mp_context=context) as pool:
        futures = [pool.submit(_extract_one, entry, settings) for entry in todo]
        results = []
        for future in futures:
            results.append(future.result())
            bar.update()
    bar.close()
    return results


LESION_RULES = ("largest", "volume_weighted")
#: Names of the follow-up features: ``delta_<tag>`` (follow-up minus baseline), ``delta_rel_<tag>`` (relative)
DELTA_PREFIXES = ("delta_", "delta_rel_")
VOLUME_FEATURE = "morph_volume"


@dataclass(frozen=True)
class ImagingEntry:
    """One image/mask pair to extract: a patient's lesion at a timepoint (one per patient without them)."""

    patient: str
    image: str
    mask: str
    roi: str | None
    roi_from_sheet: bool
    lesion: str = ""
    timepoint: str = "baseline"
    line: int | None = None


def _imaging_entries(
    samples: pd.DataFrame, patient_ids: list[str], roi_name: str | None
) -> tuple[list[ImagingEntry], int]:
    """Every image/mask pair of ``samples`` (checked to exist), and the number of patients without imaging."""
    several = "imaging_rows" in samples.columns
    sheet_rois = samples["roi"] if "roi" in samples.columns else pd.Series([None] * len(samples), index=samples.index)
    todo: list[ImagingEntry] = []
    n_without = 0
    for k, pid in enumerate(patient_ids):
        if several:
            records = list(samples["imaging_rows"].iloc[k] or ())
        else:
            records = [{"image": samples["image"].iloc[k], "mask": samples["mask"].iloc[k], "roi": sheet_rois.iloc[k]}]
        records = [r for r in records if not (_blank(r["image"]) and _blank(r["mask"]))]
        if not records:
            n_without += 1
            continue
        for record in records:
            image_path, mask_path, cell = record["image"], record["mask"], record.get("roi")
            where = f" (samples sheet line {record['line']})" if record.get("line") else ""
            if _blank(mask_path):
                raise MultimodalError(f"{image_path}: patient {pid} has an image but no mask{where}")
            if _blank(image_path):
                raise MultimodalError(f"{mask_path}: patient {pid} has a mask but no image{where}")
            # Missing files fail here, before any (slow) feature extraction.
            for path, what in ((image_path, "image"), (mask_path, "mask")):
                if not Path(str(path)).exists():
                    raise MultimodalError(f"{path}: {what} file not found (patient {pid}){where}")
            if Path(str(image_path)).resolve() == Path(str(mask_path)).resolve():
                raise MultimodalError(f"{image_path}: given as both the image and the mask of patient {pid}")
            roi = None if _blank(cell) else str(cell).strip()
            todo.append(
                ImagingEntry(
                    patient=pid,
                    image=str(image_path),
                    mask=str(mask_path),
                    roi=roi or roi_name or None,
                    roi_from_sheet=roi is not None,
                    lesion=str(record.get("lesion") or ""),
                    timepoint=str(record.get("timepoint") or "baseline"),
                    line=record.get("line"),
                )
            )
        timepoints = {e.timepoint for e in todo if e.patient == pid}
        if "baseline" not in timepoints:
            raise MultimodalError(
                f"patient {pid} has a follow_up image but no baseline (samples sheet line {records[0].get('line')}); "
                "delta features need both"
            )
    return todo, n_without


def _combine_lesions(
    todo: list[ImagingEntry],
    extracted: np.ndarray,
    removed: np.ndarray,
    names: list[str],
    rule: str,
    with_deltas: bool,
) -> tuple[np.ndarray, np.ndarray, list[ImagingEntry], list[int], int]:
    """Per patient: lesions combined by ``rule`` at each timepoint, baseline features then (``with_deltas``)
    follow-up deltas. Returns rows, voxels removed per patient, one representative entry per patient (the
    largest baseline lesion), the baseline lesion count per patient, and how many patients lack a follow-up."""
    volume = names.index(VOLUME_FEATURE)
    patients = list(dict.fromkeys(e.patient for e in todo))
    width = len(names) * (1 + len(DELTA_PREFIXES) * with_deltas)
    rows = np.full((len(patients), width), np.nan, dtype=np.float32)
    removed_out = np.zeros(len(patients), dtype=np.int64)
    representative, n_lesions, n_without_follow_up = [], [], 0
    for i, pid in enumerate(patients):
        at = {
            tp: [j for j, e in enumerate(todo) if e.patient == pid and e.timepoint == tp]
            for tp in ("baseline", "follow_up")
        }
        removed_out[i] = removed[at["baseline"] + at["follow_up"]].sum()
        baseline = _lesion_rule(extracted[at["baseline"]], volume, rule)
        rows[i, : len(names)] = baseline
        largest = at["baseline"][int(np.nanargmax(np.nan_to_num(extracted[at["baseline"], volume], nan=-1.0)))]
        representative.append(todo[largest])
        n_lesions.append(len(at["baseline"]))
        if not with_deltas:
            continue
        if not at["follow_up"]:
            n_without_follow_up += 1
            continue
        follow_up = _lesion_rule(extracted[at["follow_up"]], volume, rule)
        delta = follow_up.astype(np.float64) - baseline
        with np.errstate(divide="ignore", invalid="ignore"):
            relative = np.where(baseline != 0, delta / np.abs(baseline), np.nan)
        rows[i, len(names) : 2 * len(names)] = delta
        rows[i, 2 * len(names) :] = relative
    return rows, removed_out, representative, n_lesions, n_without_follow_up


def _lesion_rule(lesions: np.ndarray, volume: int, rule: str) -> np.ndarray:
    """One feature vector from a timepoint's lesions (rows): the largest by volume, or the volume-weighted mean."""
    if len(lesions) == 1:
        return lesions[0].astype(np.float64)
    sizes = np.nan_to_num(lesions[:, volume].astype(np.float64), nan=0.0)
    if rule == "largest":
        return lesions[int(np.argmax(sizes))].astype(np.float64)
    values = lesions.astype(np.float64)
    defined = np.isfinite(values)
    weights = np.where(defined, sizes[:, None], 0.0)
    total = weights.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = (np.where(defined, values, 0.0) * weights).sum(axis=0) / total
    return np.where(total > 0, mean, np.nan)


def _blank(value: object) -> bool:
    """Whether a path cell is empty: NaN/None or a blank string."""
    if value is None:
        return True
    if isinstance(value, str):
        return not value.strip()
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):
        return False
