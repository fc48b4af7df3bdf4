"""Medical image files read into one representation: a 3D volume with its geometry.

Images: NIfTI (nibabel), NRRD (``.nrrd``, ``.nhdr``; pynrrd) and a directory holding one DICOM series
(pydicom). Masks: NIfTI, NRRD (a 3D Slicer ``.seg.nrrd`` also names its segments), DICOM SEG and DICOM
RTSTRUCT, the last two placed on the grid of the DICOM image series they reference.

Every reader returns a :class:`Volume`: voxel array indexed ``[i, j, k]`` (i along the DICOM row direction,
the fastest-varying axis in every format), voxel spacing in mm and the 4 x 4 affine from voxel index to
RAS+ millimetres, as nibabel gives it for NIfTI (DICOM and NRRD LPS coordinates are converted), so the
geometry of any image can be compared with that of any mask. Only geometry (and, for DICOM, the series
and frame-of-reference UIDs needed to check that a mask belongs to its image) is taken from a header:
patient names, IDs, dates and every other DICOM attribute stay in the files.
"""

from __future__ import annotations

import io
import os
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel.filebasedimages import ImageFileError
from nibabel.spatialimages import HeaderDataError

from multimodal.errors import MultimodalError

# What nibabel, gzip and the file system raise for a damaged or unreadable NIfTI file.
_READ_ERRORS = (ImageFileError, HeaderDataError, OSError, EOFError, ValueError, zlib.error)

#: LPS (DICOM, ITK, most NRRD) to RAS (NIfTI, nibabel) and back: flip x and y.
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])

SEG_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"
LABELMAP_SEG_STORAGE = "1.2.840.10008.5.1.4.1.1.66.7"
RTSTRUCT_STORAGE = "1.2.840.10008.5.1.4.1.1.481.3"
_DICOM_KIND = {SEG_STORAGE: "SEG", LABELMAP_SEG_STORAGE: "SEG", RTSTRUCT_STORAGE: "RTSTRUCT"}

#: Largest deviation, in mm, of a DICOM position from the regular grid (slice gaps, in-plane drift,
#: SEG frame and RTSTRUCT contour planes). Positions are decimal strings of at most 16 characters.
POSITION_TOLERANCE = 0.01
#: Largest distance, in mm, of an RTSTRUCT contour point from the image slice it is drawn on (contour
#: coordinates are often written with 1-2 decimals).
CONTOUR_PLANE_TOLERANCE = 0.1


@dataclass
class Volume:
    """A 3D volume and its geometry; ``data`` is None when only the header was read."""

    path: str
    what: str  # "image" or "mask"
    format: str  # "NIfTI", "NRRD", "DICOM series", "DICOM SEG", "DICOM RTSTRUCT"
    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]  # mm, along i, j, k
    affine: np.ndarray  # 4 x 4, voxel index -> RAS+ mm
    data: np.ndarray | None = None
    series_uid: str | None = None  # DICOM series: its SeriesInstanceUID
    frame_of_reference_uid: str | None = None
    names: dict[str, int] = field(default_factory=dict)  # segment / ROI name -> label value, where the file names them

    @property
    def origin(self) -> np.ndarray:
        """The centre of voxel (0, 0, 0), RAS+ mm."""
        return self.affine[:3, 3].copy()

    @property
    def direction(self) -> np.ndarray:
        """Unit vectors of the i, j, k axes as columns, RAS+."""
        return self.affine[:3, :3] / np.asarray(self.spacing)[None, :]

    @property
    def lps_affine(self) -> np.ndarray:
        """Voxel index -> DICOM patient coordinates (LPS mm)."""
        return LPS_TO_RAS @ self.affine


def image_format(path: str | os.PathLike[str]) -> str:
    """Which reader a path needs: "DICOM series" (a directory), "NRRD", "DICOM" (one file) or "NIfTI"."""
    p = Path(path)
    if p.is_dir():
        return "DICOM series"
    name = p.name.lower()
    if name.endswith((".nrrd", ".nhdr")):
        return "NRRD"
    if name.endswith((".nii", ".nii.gz")):
        return "NIfTI"
    try:
        with open(p, "rb") as handle:
            head = handle.read(132)
    except OSError:
        return "NIfTI"
    if head[128:132] == b"DICM":
        return "DICOM"
    if head.startswith(b"NRRD000"):
        return "NRRD"
    return "NIfTI"  # nibabel reads the rest it knows (Analyze, MGH); anything else is refused with a hint


def read_image(path: str | os.PathLike[str], *, pixels: bool = True) -> Volume:
    """The image at ``path`` as float64 (NIfTI scaled, DICOM rescaled to HU/modality units)."""
    if not Path(path).exists():
        raise MultimodalError(f"{path}: image file not found")
    kind = image_format(path)
    if kind == "DICOM series":
        return read_dicom_series(path, "image", pixels=pixels)
    if kind == "NRRD":
        return read_nrrd(path, "image", np.float64, pixels=pixels)
    if kind == "DICOM":
        sop = _sop_class(path)
        if sop in _DICOM_KIND:
            raise MultimodalError(f"{path}: image is a DICOM {_DICOM_KIND[sop]}, a mask: give it in the mask column")
        raise MultimodalError(
            f"{path}: image is a single DICOM file; give the directory holding the whole series (one series per "
            "directory)"
        )
    return read_nifti(path, "image", np.float64, pixels=pixels)


def read_mask(
    path: str | os.PathLike[str],
    image: Volume,
    *,
    roi: str | None = None,
    label: int | None = None,
    roi_from_sheet: bool = False,
    pixels: bool = True,
) -> tuple[Volume, int | None]:
    """The mask at ``path`` (stored values, a label map) and the label that is the ROI (None: every non-zero).

    A DICOM SEG or RTSTRUCT is placed on the grid of ``image``, which must be the DICOM series it
    references; its segment or ROI is chosen by name (``roi``), or for a SEG by segment number (``label``).
    A NIfTI/NRRD label map keeps its own grid, compared with the image's by the caller; ``roi`` selects a
    named segment of a 3D Slicer ``.seg.nrrd``, and is an error for a label map without names when it was
    given for this patient (``roi_from_sheet``) rather than as the cohort default.
    """
    if not Path(path).exists():
        raise MultimodalError(f"{path}: mask file not found")
    kind = image_format(path)
    if kind == "DICOM":
        sop = _sop_class(path)
        if sop in (SEG_STORAGE, LABELMAP_SEG_STORAGE):
            return read_seg(path, image, roi=roi, label=label, pixels=pixels)
        if sop == RTSTRUCT_STORAGE:
            return read_rtstruct(path, image, roi=roi, pixels=pixels)
        raise MultimodalError(
            f"{path}: mask is a DICOM file that is neither a SEG nor an RTSTRUCT (SOP class {sop or 'unknown'})"
        )
    if kind == "DICOM series":
        volume = read_dicom_series(path, "mask", pixels=pixels, dtype=None)
    elif kind == "NRRD":
        volume = read_nrrd(path, "mask", None, pixels=pixels)
    else:
        volume = read_nifti(path, "mask", None, pixels=pixels)
    if roi is not None and volume.names:
        return volume, _choose(volume.names, roi, path, "segment")
    if roi is not None and roi_from_sheet:
        raise MultimodalError(
            f"{path}: roi {roi!r} is given, but this mask is a label map without segment names; roi names a "
            "DICOM RTSTRUCT ROI, DICOM SEG segment or .seg.nrrd segment: choose a label with ingest.mask_label"
        )
    return volume, label


# --------------------------------------------------------------------------------------------- NIfTI


def read_nifti(path: str | os.PathLike[str], what: str, dtype: type | None, *, pixels: bool = True) -> Volume:
    """A NIfTI file (or another format nibabel reads) as a Volume; data scaled as float ``dtype`` or stored."""
    img = load_nifti_header(path, what)
    shape = tuple(int(n) for n in img.shape)
    if len(shape) > 3 and all(n == 1 for n in shape[3:]):
        shape = shape[:3]
    data = None
    if pixels:
        try:
            data = img.get_fdata(dtype=dtype) if dtype is not None else np.asanyarray(img.dataobj)
        except _READ_ERRORS as err:
            raise unreadable_nifti(path, what, err) from err
        if data.ndim > 3 and all(n == 1 for n in data.shape[3:]):
            data = data.reshape(data.shape[:3])
        if data.ndim != 3:
            raise MultimodalError(f"{path}: {what} must be 3D, got {data.ndim}D with shape {data.shape}")
    zooms = img.header.get_zooms()
    spacing = tuple(float(z) for z in (tuple(zooms[:3]) + (1.0,) * 3)[:3])
    return Volume(str(path), what, "NIfTI", shape, spacing, np.asarray(img.affine, float), data)  # type: ignore[arg-type]


def load_nifti_header(path: str | os.PathLike[str], what: str):
    """The nibabel image object (header read, data not yet loaded)."""
    if Path(path).is_dir():
        raise MultimodalError(
            f"{path}: {what} is a directory, not a NIfTI file (a DICOM series? it holds no DICOM image file)"
        )
    try:
        return nib.load(path)
    except _READ_ERRORS as err:
        raise unreadable_nifti(path, what, err) from err


def unreadable_nifti(path: str | os.PathLike[str], what: str, err: BaseException) -> MultimodalError:
    """The error for a file nibabel cannot read: a cut-short or non-NIfTI file said so, else nibabel's words."""
    reason = _why_unreadable(Path(path))
    if reason is None:
        reason = f"{type(err).__name__}: {' '.join(str(err).split())}"
    hint = (
        ""
        if str(path).lower().endswith((".nii", ".nii.gz"))
        else "; convert it to NIfTI (dcm2niix, SimpleITK), or give NRRD or a DICOM series directory"
    )
    return MultimodalError(f"{path}: cannot read {what} as NIfTI ({reason}){hint}")


#: Bytes of a NIfTI-1 header; where its magic (``n+1``/``ni1``) sits; the NIfTI-2 magic at offset 4.
_NIFTI1_HEADER, _NIFTI1_MAGIC_AT, _NIFTI2_MAGICS = 348, 344, (b"n+2\0", b"ni2\0")


def _why_unreadable(path: Path) -> str | None:
    """Why a ``.nii``/``.nii.gz`` file cannot be read, when it is empty, cut short or not NIfTI; None when unclear."""
    import gzip

    if not path.name.lower().endswith((".nii", ".nii.gz")):
        return None  # another format (MHA, ...): nibabel's words and the hint to convert
    try:
        data = path.read_bytes()
    except OSError:
        return None
    if not data:
        return "an empty file, 0 bytes"
    if data[:2] == b"\x1f\x8b":
        try:
            data = gzip.decompress(data)
        except EOFError:
            return f"the gzip stream ends early, after {len(data)} bytes: the file is cut short, an interrupted copy?"
        except (OSError, zlib.error) as exc:
            return f"damaged gzip stream: {exc}"
    elif path.name.lower().endswith(".gz"):
        return "named .gz but not gzip-compressed"
    if len(data) < _NIFTI1_HEADER:
        return f"{len(data)} bytes, shorter than a NIfTI header of {_NIFTI1_HEADER}: the file is cut short"
    if data[_NIFTI1_MAGIC_AT : _NIFTI1_MAGIC_AT + 4] not in (b"n+1\0", b"ni1\0") and data[4:8] not in _NIFTI2_MAGICS:
        return "no NIfTI-1 or NIfTI-2 magic in its header: not a NIfTI file"
    header_class = nib.Nifti2Header if data[4:8] in _NIFTI2_MAGICS else nib.Nifti1Header
    try:
        header = header_class.from_fileobj(io.BytesIO(data), check=False)
        n_voxels = int(np.prod(header.get_data_shape()))
        needed = int(header.get_data_offset()) + n_voxels * header.get_data_dtype().itemsize
    except (HeaderDataError, ValueError, TypeError, OverflowError):  # leave the reason to nibabel
        return None
    if len(data) < needed:
        return f"cut short: its header announces {needed} bytes of header and voxels, the file holds {len(data)}"
    return None


# ---------------------------------------------------------------------------------------------- NRRD

#: NRRD ``space`` values (long and short forms) and the signs taking their x, y, z to RAS.
_NRRD_SPACES = {
    "right-anterior-superior": (1, 1, 1),
    "ras": (1, 1, 1),
    "left-anterior-superior": (-1, 1, 1),
    "las": (-1, 1, 1),
    "left-posterior-superior": (-1, -1, 1),
    "lps": (-1, -1, 1),
}


def read_nrrd(path: str | os.PathLike[str], what: str, dtype: type | None, *, pixels: bool = True) -> Volume:
    """An NRRD file (``.nrrd``, or a detached ``.nhdr`` header and its data file) as a Volume."""
    import nrrd

    try:
        if pixels:
            data, header = nrrd.read(str(path), index_order="F")
        else:
            data, header = None, nrrd.read_header(str(path))
    except (nrrd.NRRDError, OSError, EOFError, ValueError, TypeError, KeyError, IndexError, zlib.error) as err:
        raise _unreadable_nrrd(path, what, f"{type(err).__name__}: {' '.join(str(err).split())}") from err
    sizes = [int(n) for n in header.get("sizes", ())]
    if not sizes:
        raise _unreadable_nrrd(path, what, "its header has no 'sizes' field")
    directions = header.get("space directions")
    spatial = list(range(len(sizes)))
    if directions is not None:  # a non-spatial axis (a list of segment layers, vector components) is 'none'
        rows = [np.asarray(row, dtype=float) if row is not None else None for row in directions]
        spatial = [axis for axis, row in enumerate(rows) if row is not None and np.all(np.isfinite(row))]
    extra = [axis for axis in range(len(sizes)) if axis not in spatial]
    if len(spatial) != 3 or any(sizes[axis] != 1 for axis in extra):
        raise MultimodalError(f"{path}: {what} must be 3D, got {len(sizes)}D with shape {tuple(sizes)}")
    shape = (sizes[spatial[0]], sizes[spatial[1]], sizes[spatial[2]])
    space = str(header.get("space", "left-posterior-superior")).strip().lower()
    if space not in _NRRD_SPACES:
        raise MultimodalError(
            f"{path}: {what} NRRD space {header.get('space')!r} is not anatomical (expected "
            "left-posterior-superior or right-anterior-superior): its position relative to the mask is unknown"
        )
    linear = np.eye(3)
    if directions is not None:
        linear = np.column_stack([np.asarray(directions[axis], dtype=float)[:3] for axis in spatial])
    elif "spacings" in header:
        linear = np.diag([float(header["spacings"][axis]) for axis in spatial])
    origin = np.asarray(header.get("space origin", np.zeros(3)), dtype=float)[:3]
    if not np.all(np.isfinite(origin)):
        origin = np.zeros(3)
    to_ras = np.diag([*_NRRD_SPACES[space], 1.0])
    affine = np.eye(4)
    affine[:3, :3], affine[:3, 3] = linear, origin
    affine = to_ras @ affine
    spacing = tuple(float(s) for s in np.linalg.norm(linear, axis=0))
    if pixels:
        data = np.asarray(data).reshape(shape)
        data = data.astype(dtype) if dtype is not None else data
    names = _slicer_segment_names(header)
    return Volume(str(path), what, "NRRD", shape, spacing, affine, data, names=names)  # type: ignore[arg-type]


def _unreadable_nrrd(path: str | os.PathLike[str], what: str, reason: str) -> MultimodalError:
    return MultimodalError(
        f"{path}: cannot read {what} as NIfTI or NRRD (NRRD: {reason}); convert it to NIfTI (dcm2niix, SimpleITK)"
    )


def _slicer_segment_names(header: dict) -> dict[str, int]:
    """Segment name -> label value of a 3D Slicer ``.seg.nrrd`` (``SegmentN_Name``/``SegmentN_LabelValue``)."""
    names: dict[str, int] = {}
    for key, value in header.items():
        if isinstance(key, str) and key.startswith("Segment") and key.endswith("_Name"):
            number = key[len("Segment") : -len("_Name")]
            try:
                names[str(value)] = int(str(header.get(f"Segment{number}_LabelValue", int(number) + 1)))
            except ValueError:
                continue
    return names


# -------------------------------------------------------------------------------------- DICOM series


def _dcmread(path: str | os.PathLike[str], what: str, *, pixels: bool):
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        return pydicom.dcmread(str(path), stop_before_pixels=not pixels)
    except InvalidDicomError as err:
        raise MultimodalError(f"{path}: cannot read {what} as DICOM ({' '.join(str(err).split())})") from err
    except (OSError, EOFError, ValueError, KeyError, TypeError) as err:
        raise MultimodalError(
            f"{path}: cannot read {what} as DICOM ({type(err).__name__}: {' '.join(str(err).split())}; "
            "a cut-short file?)"
        ) from err


def _sop_class(path: str | os.PathLike[str]) -> str | None:
    import pydicom

    try:
        ds = pydicom.dcmread(str(path), stop_before_pixels=True, specific_tags=["SOPClassUID"])
    except Exception:  # noqa: BLE001 - unreadable: the reader that follows says why
        return None
    uid = ds.get("SOPClassUID")
    return str(uid) if uid else None


def _floats(value, n: int, path: object, keyword: str) -> np.ndarray:
    try:
        out = np.asarray([float(v) for v in value], dtype=float)
    except (TypeError, ValueError) as err:
        raise MultimodalError(f"{path}: DICOM {keyword} is not {n} numbers: {value!r}") from err
    if out.shape != (n,) or not np.all(np.isfinite(out)):
        raise MultimodalError(f"{path}: DICOM {keyword} is not {n} numbers: {value!r}")
    return out


def _plane_axes(orientation: np.ndarray, path: object) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    row, col = orientation[:3], orientation[3:]
    if abs(np.linalg.norm(row) - 1) > 1e-3 or abs(np.linalg.norm(col) - 1) > 1e-3 or abs(row @ col) > 1e-3:
        raise MultimodalError(f"{path}: DICOM ImageOrientationPatient {_numbers(orientation)} is not two unit vectors")
    row, col = row / np.linalg.norm(row), col / np.linalg.norm(col)
    return row, col, np.cross(row, col)


def read_dicom_series(
    path: str | os.PathLike[str], what: str, *, pixels: bool = True, dtype: type | None = np.float64
) -> Volume:
    """The one DICOM image series in directory ``path``, slices ordered by position along their normal.

    Files that are not DICOM (a README, ``.DS_Store``), DICOMDIR and non-image objects (an RTSTRUCT or
    SEG stored beside the slices) are passed over. More than one image series, slices of differing size,
    spacing or orientation, two slices at one position, uneven slice spacing (a missing slice) and
    sheared stacks (gantry tilt) are errors. Values are rescaled (RescaleSlope/Intercept) as float64,
    or kept as stored when ``dtype`` is None.
    """
    import pydicom
    from pydicom.errors import InvalidDicomError

    directory = Path(path)
    series: dict[str, list[tuple[Path, object]]] = {}
    for file in sorted(p for p in directory.iterdir() if p.is_file()):
        try:
            ds = pydicom.dcmread(str(file), stop_before_pixels=not pixels)
        except InvalidDicomError:
            continue  # not DICOM
        except (OSError, EOFError, ValueError, KeyError, TypeError) as err:
            raise MultimodalError(
                f"{file}: cannot read {what} slice as DICOM ({type(err).__name__}: {' '.join(str(err).split())})"
            ) from err
        if "Rows" not in ds or str(ds.get("SOPClassUID", "")) in _DICOM_KIND:
            continue  # DICOMDIR, RTSTRUCT, SEG, SR, ...: not slices of an image
        series.setdefault(str(ds.get("SeriesInstanceUID", "")), []).append((file, ds))
    if not series:
        raise MultimodalError(
            f"{path}: {what} is a directory, not a NIfTI file (a DICOM series? it holds no DICOM image file)"
        )
    if len(series) > 1:
        listed = ", ".join(f"{uid or '(none)'} ({len(files)} files)" for uid, files in sorted(series.items()))
        raise MultimodalError(
            f"{path}: {what} directory holds {len(series)} DICOM series, SeriesInstanceUIDs {listed}; "
            "give a directory holding one series"
        )
    ((series_uid, slices),) = series.items()
    first_file, first = slices[0]
    if int(first.get("NumberOfFrames", 1) or 1) > 1:
        raise MultimodalError(
            f"{first_file}: {what} is a multi-frame DICOM image, not read here; convert it to NIfTI (dcm2niix)"
        )
    for keyword in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing"):
        for file, ds in slices:
            if keyword not in ds:
                raise MultimodalError(f"{file}: {what} slice has no {keyword}, so its position is unknown")
    orientation = _floats(first.ImageOrientationPatient, 6, first_file, "ImageOrientationPatient")
    row, col, normal = _plane_axes(orientation, first_file)
    pixel_spacing = _floats(first.PixelSpacing, 2, first_file, "PixelSpacing")
    size = (int(first.Rows), int(first.Columns))
    for file, ds in slices[1:]:
        if (int(ds.Rows), int(ds.Columns)) != size:
            raise MultimodalError(
                f"{file}: {what} slice is {int(ds.Rows)} x {int(ds.Columns)} pixels, {first_file} is "
                f"{size[0]} x {size[1]}: not one series"
            )
        if np.max(np.abs(_floats(ds.ImageOrientationPatient, 6, file, "ImageOrientationPatient") - orientation)) > 1e-4:
            raise MultimodalError(f"{file}: {what} slice orientation differs from that of {first_file}")
        if np.max(np.abs(_floats(ds.PixelSpacing, 2, file, "PixelSpacing") - pixel_spacing)) > 1e-4:
            raise MultimodalError(f"{file}: {what} slice pixel spacing differs from that of {first_file}")
    positions = np.array([_floats(ds.ImagePositionPatient, 3, file, "ImagePositionPatient") for file, ds in slices])
    along = positions @ normal
    order = np.argsort(along, kind="stable")
    slices = [slices[i] for i in order]
    positions, along = positions[order], along[order]
    gaps = np.diff(along)
    if len(slices) > 1:
        same = np.flatnonzero(gaps <= POSITION_TOLERANCE)
        if same.size:
            a, b = slices[same[0]][0], slices[same[0] + 1][0]
            raise MultimodalError(
                f"{path}: two {what} slices at one position ({along[same[0]]:.4g} mm along the slice normal): "
                f"{a.name} and {b.name}; a duplicated slice or two series with one SeriesInstanceUID?"
            )
        typical = float(np.median(gaps))
        uneven = np.flatnonzero(np.abs(gaps - typical) > POSITION_TOLERANCE)
        if uneven.size:
            g = int(uneven[0])
            raise MultimodalError(
                f"{path}: uneven {what} slice spacing: a gap of {gaps[g]:.4g} mm between the slices at "
                f"{along[g]:.4g} and {along[g + 1]:.4g} mm along the slice normal ({slices[g][0].name}, "
                f"{slices[g + 1][0].name}) where the others are {typical:.4g} mm apart"
                f"{' (a missing slice?)' if gaps[g] > typical else ''}; give the complete series or resample it "
                "to a regular grid"
            )
        dz = float((along[-1] - along[0]) / (len(slices) - 1))
        drift = positions - positions[0] - np.outer(along - along[0], normal)
        if np.max(np.abs(drift)) > POSITION_TOLERANCE:
            worst = int(np.argmax(np.max(np.abs(drift), axis=1)))
            raise MultimodalError(
                f"{path}: {what} slices are not stacked along their normal ({slices[worst][0].name} is offset "
                f"{np.linalg.norm(drift[worst]):.4g} mm sideways: gantry tilt?); resample it to a regular grid"
            )
    else:
        dz = float(first.get("SpacingBetweenSlices", 0) or first.get("SliceThickness", 0) or 1.0)
    spacing = (float(pixel_spacing[1]), float(pixel_spacing[0]), dz)
    lps = np.eye(4)
    lps[:3, 0], lps[:3, 1], lps[:3, 2] = row * spacing[0], col * spacing[1], normal * spacing[2]
    lps[:3, 3] = positions[0]
    shape = (size[1], size[0], len(slices))
    data = None
    if pixels:
        planes = []
        for file, ds in slices:
            try:
                array = np.asarray(ds.pixel_array)
            except Exception as err:  # noqa: BLE001 - pydicom raises several types for an undecodable encoding
                syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
                raise MultimodalError(
                    f"{file}: cannot decode the {what} pixel data ({getattr(syntax, 'name', syntax)}: "
                    f"{' '.join(str(err).split())}); decompress the series first (gdcmconv --raw, dcmdjpeg)"
                ) from err
            if array.shape != size:
                raise MultimodalError(f"{file}: {what} slice pixel data is {array.shape}, not one 2D {size} plane")
            if dtype is not None:
                array = array.astype(np.float64) * float(ds.get("RescaleSlope", 1) or 1) + float(
                    ds.get("RescaleIntercept", 0) or 0
                )
            planes.append(array.T)
        data = np.stack(planes, axis=-1)
        data = data.astype(dtype) if dtype is not None else data
    frame_of_reference = str(first.get("FrameOfReferenceUID", "")) or None
    return Volume(
        str(path),
        what,
        "DICOM series",
        shape,
        spacing,
        LPS_TO_RAS @ lps,
        data,  # type: ignore[arg-type]
        series_uid=series_uid or None,
        frame_of_reference_uid=frame_of_reference,
    )


# ------------------------------------------------------------------------------------ SEG, RTSTRUCT


def _needs_series(path: object, image: Volume, kind: str) -> None:
    if image.format != "DICOM series":
        raise MultimodalError(
            f"{path}: a DICOM {kind} mask is placed on the DICOM series it was drawn on, but image {image.path} is "
            f"{image.format}: give that series' directory as the image"
        )


def _check_reference(path: object, image: Volume, kind: str, referenced: Sequence[str]) -> None:
    referenced = [uid for uid in referenced if uid]
    if not referenced:
        raise MultimodalError(f"{path}: the DICOM {kind} does not say which image series it was drawn on")
    if image.series_uid not in referenced:
        raise MultimodalError(
            f"{path}: the DICOM {kind} references series {', '.join(dict.fromkeys(referenced))}, not the image series "
            f"{image.series_uid} of {image.path}; give the series it was drawn on as the image"
        )


def _choose(names: dict[str, int], roi: str, path: object, what: str) -> int:
    if roi in names:
        return names[roi]
    present = ", ".join(repr(n) for n in names) or "none"
    raise MultimodalError(
        f"{path}: no {what} named {roi!r} ({what}s present: {present}); set the samples sheet's roi column "
        "(or ingest.roi_name) to one of them"
    )


def _group(ds, frame: int, sequence: str):
    """The item of functional group ``sequence`` for ``frame`` (per-frame, else shared), or None."""
    per_frame = ds.get("PerFrameFunctionalGroupsSequence") or []
    shared = ds.get("SharedFunctionalGroupsSequence") or []
    for item in ([per_frame[frame]] if frame < len(per_frame) else []) + list(shared[:1]):
        if sequence in item and len(item[sequence].value):
            return item[sequence].value[0]
    return None


def read_seg(
    path: str | os.PathLike[str], image: Volume, *, roi: str | None, label: int | None, pixels: bool = True
) -> tuple[Volume, int | None]:
    """A DICOM SEG placed on the grid of its image series: a label map of segment numbers.

    Frames are placed by position (a SEG may omit empty frames); a frame off the image's slices, or a
    SEG whose pixel grid differs from the image's, is an error naming both. With ``roi`` (a
    SegmentLabel) or ``label`` (a SegmentNumber) only that segment is drawn; otherwise every segment,
    each with its number. FRACTIONAL segments are thresholded at one half.
    """
    _needs_series(path, image, "SEG")
    ds = _dcmread(path, "mask", pixels=pixels)
    referenced = [str(item.get("SeriesInstanceUID", "")) for item in ds.get("ReferencedSeriesSequence", [])]
    _check_reference(path, image, "SEG", referenced)
    labelmap = str(ds.get("SegmentationType", "")).upper() == "LABELMAP"
    names = {str(s.get("SegmentLabel", s.SegmentNumber)): int(s.SegmentNumber) for s in ds.get("SegmentSequence", [])}
    chosen = _choose(names, roi, path, "segment") if roi is not None else label
    if chosen is not None and chosen not in names.values():
        present = ", ".join(f"{number} {name!r}" for name, number in names.items()) or "none"
        raise MultimodalError(f"{path}: no voxel has label {chosen} (segments present: {present})")
    n_frames = int(ds.get("NumberOfFrames", 1) or 1)
    rows, cols = int(ds.Rows), int(ds.Columns)
    # The SEG's own grid, with its slice axis through the image's first slice (see grid_relation).
    orientation = positions = spacing_xy = None
    frame_positions, frame_segments = [], []
    for frame in range(n_frames):
        plane = _group(ds, frame, "PlaneOrientationSequence")
        measures = _group(ds, frame, "PixelMeasuresSequence")
        position = _group(ds, frame, "PlanePositionSequence")
        if plane is None or measures is None or position is None:
            raise MultimodalError(f"{path}: SEG frame {frame + 1} has no plane position, orientation or pixel spacing")
        o = _floats(plane.ImageOrientationPatient, 6, path, "ImageOrientationPatient")
        s = _floats(measures.PixelSpacing, 2, path, "PixelSpacing")
        if orientation is None:
            orientation, spacing_xy = o, s
            slice_gap = measures.get("SpacingBetweenSlices")
        elif np.max(np.abs(o - orientation)) > 1e-4 or np.max(np.abs(s - spacing_xy)) > 1e-4:
            raise MultimodalError(f"{path}: SEG frames differ in orientation or pixel spacing")
        frame_positions.append(_floats(position.ImagePositionPatient, 3, path, "ImagePositionPatient"))
        segment = _group(ds, frame, "SegmentIdentificationSequence")
        frame_segments.append(int(segment.ReferencedSegmentNumber) if segment is not None else 0)
    if orientation is None:
        raise MultimodalError(f"{path}: the SEG holds no frames: the mask is empty")
    row, col, normal = _plane_axes(orientation, path)
    image_lps = image.lps_affine
    dz = float(slice_gap) if slice_gap is not None else float(image.spacing[2])
    positions = np.asarray(frame_positions)
    first = positions[int(np.argmin(positions @ normal))]
    origin = first - ((first - image_lps[:3, 3]) @ normal) * normal
    lps = np.eye(4)
    lps[:3, 0], lps[:3, 1] = row * spacing_xy[1], col * spacing_xy[0]
    lps[:3, 2], lps[:3, 3] = normal * dz, origin
    shape = (cols, rows, int(image.shape[2]))
    steps = (positions - origin) @ normal / dz
    ks = np.round(steps).astype(int)
    sideways = positions - origin - np.outer(steps * dz, normal)
    for frame in range(n_frames):
        where = f"SEG frame {frame + 1} at {_numbers(positions[frame])} mm (LPS)"
        if np.max(np.abs(sideways[frame])) > POSITION_TOLERANCE:
            raise MultimodalError(
                f"{path}: {where} is shifted in-plane from the other frames; mask and image {image.path} differ in grid"
            )
        if abs(steps[frame] - ks[frame]) * dz > POSITION_TOLERANCE or not 0 <= ks[frame] < shape[2]:
            raise MultimodalError(
                f"{path}: {where} lies {'between' if 0 <= ks[frame] < shape[2] else 'outside'} the slices of image "
                f"{image.path} (slices every {image.spacing[2]:.4g} mm); the mask was not drawn on this grid"
            )
    spacing = (float(spacing_xy[1]), float(spacing_xy[0]), dz)
    volume = Volume(
        str(path),
        "mask",
        "DICOM SEG",
        shape,
        spacing,
        LPS_TO_RAS @ lps,
        None,
        names=names,  # type: ignore[arg-type]
        series_uid=str(ds.get("SeriesInstanceUID", "")) or None,
    )
    if pixels:
        frames = np.asarray(ds.pixel_array).reshape(n_frames, rows, cols)
        if str(ds.get("SegmentationType", "")).upper() == "FRACTIONAL":
            frames = frames >= float(ds.get("MaximumFractionalValue", 255)) / 2
        data = np.zeros(shape, dtype=np.uint16)
        for frame in range(n_frames):
            plane_data = frames[frame].T
            if labelmap:
                values = plane_data.astype(np.uint16)
                if chosen is not None:
                    values = np.where(values == chosen, values, 0).astype(np.uint16)
                drawn = values > 0
                data[:, :, ks[frame]][drawn] = values[drawn]
            elif chosen is None or frame_segments[frame] == chosen:
                data[:, :, ks[frame]][plane_data > 0] = frame_segments[frame]
        volume.data = data
    return volume, chosen


def read_rtstruct(
    path: str | os.PathLike[str], image: Volume, *, roi: str | None, pixels: bool = True
) -> tuple[Volume, int | None]:
    """One ROI of a DICOM RTSTRUCT rasterised on the grid of its image series (1 inside, 0 outside).

    The ROI is the one named ``roi``; without a name, the only ROI of the structure set. Each closed
    planar contour must lie on a slice of the image; a voxel whose centre lies inside the polygon is in
    the ROI, several contours on one slice combine by parity (a contour inside another is a hole).
    Rasterised here with matplotlib's point-in-polygon test: rt-utils needs OpenCV, a large binary
    dependency, for the same.
    """
    _needs_series(path, image, "RTSTRUCT")
    ds = _dcmread(path, "mask", pixels=True)
    referenced = [
        str(series.get("SeriesInstanceUID", ""))
        for frame in ds.get("ReferencedFrameOfReferenceSequence", [])
        for study in frame.get("RTReferencedStudySequence", [])
        for series in study.get("RTReferencedSeriesSequence", [])
    ]
    _check_reference(path, image, "RTSTRUCT", referenced)
    rois = [
        (int(item.ROINumber), str(item.get("ROIName", item.ROINumber)))
        for item in ds.get("StructureSetROISequence", [])
    ]
    names = {name: number for number, name in rois}
    if roi is None:
        if len(rois) != 1:
            present = ", ".join(repr(name) for _, name in rois) or "none"
            raise MultimodalError(
                f"{path}: the RTSTRUCT holds {len(rois)} ROIs ({present}); name the one to use in the samples "
                "sheet's roi column or ingest.roi_name"
            )
        roi = rois[0][1]
    number = _choose(names, roi, path, "ROI")
    if sum(1 for _, name in rois if name == roi) > 1:
        raise MultimodalError(f"{path}: the RTSTRUCT holds several ROIs named {roi!r}; rename one")
    contours = [
        contour
        for item in ds.get("ROIContourSequence", [])
        if int(item.get("ReferencedROINumber", -1)) == number
        for contour in item.get("ContourSequence", [])
        if str(contour.get("ContourGeometricType", "CLOSED_PLANAR")).upper() == "CLOSED_PLANAR"
    ]
    if not contours:
        raise MultimodalError(f"{path}: mask is empty (ROI {roi!r} has no closed planar contour)")
    to_index = np.linalg.inv(image.lps_affine)
    shape = tuple(int(n) for n in image.shape)
    planes: list[tuple[int, np.ndarray]] = []
    for n, contour in enumerate(contours, start=1):
        points = np.asarray([float(v) for v in contour.ContourData], dtype=float)
        if points.size < 9 or points.size % 3:
            raise MultimodalError(
                f"{path}: ROI {roi!r} contour {n} has {points.size} coordinates, not 3 or more points"
            )
        points = points.reshape(-1, 3)
        index = (to_index @ np.column_stack([points, np.ones(len(points))]).T).T[:, :3]
        k = float(np.median(index[:, 2]))
        if np.max(np.abs(index[:, 2] - round(k))) * image.spacing[2] > CONTOUR_PLANE_TOLERANCE or not (
            0 <= round(k) < shape[2]
        ):
            inside = 0 <= round(k) < shape[2]
            raise MultimodalError(
                f"{path}: ROI {roi!r} contour {n} (first point {_numbers(points[0])} mm, LPS) lies "
                f"{'between' if inside else 'outside'} the slices of image {image.path} "
                f"(slices every {image.spacing[2]:.4g} mm); mask and image differ in grid"
            )
        planes.append((int(round(k)), index[:, :2]))
    volume = Volume(
        str(path),
        "mask",
        "DICOM RTSTRUCT",
        shape,
        image.spacing,
        image.affine.copy(),
        None,  # type: ignore[arg-type]
        names=names,
    )
    if pixels:
        volume.data = rasterise(planes, shape)
    return volume, 1


def rasterise(planes: Sequence[tuple[int, np.ndarray]], shape: tuple[int, ...]) -> np.ndarray:
    """A uint8 mask of ``shape`` from polygons ``(slice k, (n, 2) vertices in voxel index units i, j)``.

    A voxel is inside when its centre is inside the polygon; polygons on one slice combine by parity.
    """
    from matplotlib.path import Path as Polygon

    mask = np.zeros(shape, dtype=bool)
    for k, vertices in planes:
        low = np.maximum(np.floor(vertices.min(axis=0)).astype(int), 0)
        high = np.minimum(np.ceil(vertices.max(axis=0)).astype(int), np.asarray(shape[:2]) - 1)
        if np.any(high < low):
            continue
        ii, jj = np.meshgrid(np.arange(low[0], high[0] + 1), np.arange(low[1], high[1] + 1), indexing="ij")
        inside = Polygon(vertices).contains_points(np.column_stack([ii.ravel(), jj.ravel()])).reshape(ii.shape)
        mask[low[0] : high[0] + 1, low[1] : high[1] + 1, k] ^= inside
    return mask.astype(np.uint8)


def _numbers(values) -> str:
    """``(0.8, 0.8, 2.5)``: plain numbers, at most 4 significant digits."""
    return "(" + ", ".join(f"{float(v):.4g}" for v in values) + ")"
