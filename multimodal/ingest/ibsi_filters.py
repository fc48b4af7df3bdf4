"""IBSI 2 convolutional filters (``ingest.filters``): filtered images and their intensity statistics.

Each filter turns the (processed) image into a response map over the whole volume; the 18 IBSI
intensity-statistics features (``stat_*``) of the response inside the intensity mask are then named
``<prefix>_<tag>``, e.g. ``log_s1p5_stat_mean``. Filters (mappings in ``ingest.filters``):

- ``{type: mean, support: 3}``: the mean over a ``support``-voxel cube (odd);
- ``{type: log, sigma_mm: 1.5}``: Laplacian of Gaussian, scale ``sigma_mm`` converted to voxels per axis,
  the kernel truncated at 4 sigma (IBSI 2);
- ``{type: laws, kernel: L5E5E5, energy_distance: 7}``: the separable Laws kernel (1D kernels L3 E3 S3
  L5 E5 S5 W5 R5, one per array axis), then the energy map: the mean absolute response over a cube of
  Chebyshev distance ``energy_distance`` (0: the absolute response);
- ``{type: gabor, sigma_mm: 2, wavelength_mm: 4, gamma: 1, theta_deg: [0, 45, 90, 135]}``: the modulus of the
  complex Gabor response in each axial plane (the first two array axes), averaged over the orientations;
- ``{type: wavelet, wavelet: haar, band: LLH}``: one level of the undecimated separable wavelet
  transform: the decomposition low-pass (L) or high-pass (H) filter of the PyWavelets wavelet (``haar``,
  ``db2``, ``db3``, ...) along each array axis in turn.

Laws and wavelet filters take ``rotation_invariant: true`` (prefix suffix ``_ri``): the response pooled
over the 24 right-angle rotations of the image (each response rotated back), by maximum for Laws (before
the energy map) and by mean for wavelets, as IBSI 2 pools them. Every filter takes ``padding``:
``mirror`` (default; symmetric, ``d c b a | a b c d``), ``nearest``, ``periodic`` or ``zero``. Not
covered: Simoncelli and Riesz filters, wavelet levels above 1.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
from scipy import ndimage

from multimodal.errors import MultimodalError

PADDING = {"mirror": "reflect", "nearest": "nearest", "periodic": "wrap", "zero": "constant"}
LAWS_1D = {
    "L3": (1.0, 2.0, 1.0),
    "E3": (-1.0, 0.0, 1.0),
    "S3": (-1.0, 2.0, -1.0),
    "L5": (1.0, 4.0, 6.0, 4.0, 1.0),
    "E5": (-1.0, -2.0, 0.0, 2.0, 1.0),
    "S5": (-1.0, 0.0, 2.0, 0.0, -1.0),
    "W5": (-1.0, 2.0, 0.0, -2.0, 1.0),
    "R5": (1.0, -4.0, 6.0, -4.0, 1.0),
}
KNOWN = {
    "mean": {"support"},
    "log": {"sigma_mm"},
    "laws": {"kernel", "energy_distance", "rotation_invariant"},
    "gabor": {"sigma_mm", "wavelength_mm", "gamma", "theta_deg"},
    "wavelet": {"wavelet", "band", "rotation_invariant"},
}


def _tag(value: float) -> str:
    return f"{float(value):g}".replace(".", "p").replace("-", "m")


def check_filters(filters) -> list[dict]:
    """Validated filter specifications (defaults filled in), each with its feature-name ``prefix``."""
    out = []
    for k, spec in enumerate(filters or []):
        where = f"ingest.filters[{k}]"
        if not isinstance(spec, dict) or spec.get("type") not in KNOWN:
            raise MultimodalError(f"{where}: expected a mapping with type one of {', '.join(KNOWN)}, got {spec!r}")
        kind = spec["type"]
        unknown = sorted(set(spec) - KNOWN[kind] - {"type", "padding"})
        if unknown:
            raise MultimodalError(f"{where}: unknown setting(s) {unknown} for a {kind} filter")
        padding = spec.get("padding", "mirror")
        if padding not in PADDING:
            raise MultimodalError(f"{where}: padding must be one of {', '.join(PADDING)}, got {padding!r}")
        full = {"type": kind, "padding": padding}
        if kind == "mean":
            support = spec.get("support", 3)
            if not isinstance(support, int) or support < 1 or support % 2 == 0:
                raise MultimodalError(f"{where}: support must be an odd whole number of voxels, got {support!r}")
            full |= {"support": support, "prefix": f"mean_d{support}"}
        elif kind == "log":
            sigma = _positive(spec.get("sigma_mm"), f"{where}.sigma_mm")
            full |= {"sigma_mm": sigma, "prefix": f"log_s{_tag(sigma)}"}
        elif kind == "laws":
            kernel = str(spec.get("kernel", ""))
            parts = [kernel[i : i + 2] for i in range(0, len(kernel), 2)]
            if len(parts) != 3 or any(p not in LAWS_1D for p in parts):
                raise MultimodalError(
                    f"{where}: kernel must be three of {', '.join(LAWS_1D)} (one per axis), e.g. L5E5E5; got {kernel!r}"
                )
            distance = spec.get("energy_distance", 7)
            if not isinstance(distance, int) or distance < 0:
                raise MultimodalError(f"{where}: energy_distance must be a whole number >= 0, got {distance!r}")
            full |= {"kernel": kernel, "energy_distance": distance, "prefix": f"laws_{kernel}_e{distance}"}
            full |= _rotation(spec, where, full["prefix"])
        elif kind == "gabor":
            sigma = _positive(spec.get("sigma_mm"), f"{where}.sigma_mm")
            wavelength = _positive(spec.get("wavelength_mm"), f"{where}.wavelength_mm")
            gamma = _positive(spec.get("gamma", 1.0), f"{where}.gamma")
            theta = spec.get("theta_deg", [0.0])
            theta = [float(t) for t in (theta if isinstance(theta, list | tuple) else [theta])]
            full |= {
                "sigma_mm": sigma,
                "wavelength_mm": wavelength,
                "gamma": gamma,
                "theta_deg": theta,
                "prefix": f"gabor_s{_tag(sigma)}_l{_tag(wavelength)}_g{_tag(gamma)}_t"
                + "_".join(_tag(t) for t in theta),
            }
        else:
            import pywt

            name = str(spec.get("wavelet", "haar"))
            if name not in pywt.wavelist(kind="discrete"):
                raise MultimodalError(
                    f"{where}: wavelet {name!r} is not a discrete PyWavelets wavelet (haar, db2, ...)"
                )
            band = str(spec.get("band", ""))
            if len(band) != 3 or set(band) - {"L", "H"}:
                raise MultimodalError(f"{where}: band must be three of L/H (one per axis), e.g. LLH; got {band!r}")
            full |= {"wavelet": name, "band": band, "prefix": f"wav_{name}_{band}"}
            full |= _rotation(spec, where, full["prefix"])
        out.append(full)
    prefixes = [f["prefix"] for f in out]
    if len(set(prefixes)) != len(prefixes):
        raise MultimodalError(f"ingest.filters: two filters have the same settings ({sorted(prefixes)})")
    return out


def _rotation(spec: dict, where: str, prefix: str) -> dict:
    value = spec.get("rotation_invariant", False)
    if not isinstance(value, bool):
        raise MultimodalError(f"{where}.rotation_invariant must be true or false, got {value!r}")
    return {"rotation_invariant": value, "prefix": f"{prefix}_ri" if value else prefix}


def rotations() -> list[tuple[tuple[int, int, int], tuple[int, int, int]]]:
    """The 24 right-angle rotations of a volume as (axis permutation, flips) with determinant +1."""
    out = []
    for perm in itertools.permutations(range(3)):
        inversions = sum(perm[i] > perm[j] for i in range(3) for j in range(i + 1, 3))
        for flips in itertools.product((1, -1), repeat=3):
            if (-1) ** inversions * flips[0] * flips[1] * flips[2] == 1:
                out.append((perm, flips))
    return out


def _rotate(volume: np.ndarray, perm, flips) -> np.ndarray:
    out = np.transpose(volume, perm)
    return np.flip(out, axis=[a for a in range(3) if flips[a] < 0]) if min(flips) < 0 else out


def _unrotate(volume: np.ndarray, perm, flips) -> np.ndarray:
    out = np.flip(volume, axis=[a for a in range(3) if flips[a] < 0]) if min(flips) < 0 else volume
    return np.transpose(out, np.argsort(perm))


def _pooled(image: np.ndarray, response, pooling: str) -> np.ndarray:
    """``response`` (a function of a volume) made rotation invariant: pooled (max or mean) over the 24
    right-angle rotations of the image, each response rotated back (IBSI 2)."""
    pooled = None
    for perm, flips in rotations():
        here = _unrotate(response(_rotate(image, perm, flips)), perm, flips)
        if pooled is None:
            pooled = here.copy()
        elif pooling == "max":
            np.maximum(pooled, here, out=pooled)
        else:
            pooled += here
    return pooled if pooling == "max" else pooled / 24


def _positive(value, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not (math.isfinite(value) and value > 0):
        raise MultimodalError(f"{where} must be a positive number, got {value!r}")
    return float(value)


def filter_image(image: np.ndarray, spacing: tuple[float, float, float], spec: dict) -> np.ndarray:
    """The response map of one checked filter ``spec`` over the whole ``image`` (float64)."""
    image = np.asarray(image, dtype=np.float64)
    mode = PADDING[spec["padding"]]
    kind = spec["type"]
    if kind == "mean":
        return ndimage.uniform_filter(image, size=spec["support"], mode=mode)
    if kind == "log":
        sigma = [spec["sigma_mm"] / s for s in spacing]
        return ndimage.gaussian_laplace(image, sigma=sigma, mode=mode, truncate=4.0)
    if kind == "laws":

        def laws(volume: np.ndarray) -> np.ndarray:
            for axis, name in enumerate(spec["kernel"][i : i + 2] for i in range(0, 6, 2)):
                volume = ndimage.correlate1d(volume, np.asarray(LAWS_1D[name]), axis=axis, mode=mode)
            return volume

        # rotation invariant: max pooling of the responses, then the energy (IBSI 2)
        response = _pooled(image, laws, "max") if spec.get("rotation_invariant") else laws(image)
        size = 2 * spec["energy_distance"] + 1
        return ndimage.uniform_filter(np.abs(response), size=size, mode=mode)
    if kind == "gabor":
        responses = [_gabor(image, spacing, spec, theta) for theta in spec["theta_deg"]]
        return np.mean(responses, axis=0)
    import pywt

    wavelet = pywt.Wavelet(spec["wavelet"])

    def band(volume: np.ndarray) -> np.ndarray:
        for axis, which in enumerate(spec["band"]):
            taps = np.asarray(wavelet.dec_lo if which == "L" else wavelet.dec_hi, dtype=np.float64)
            # aligned as PyWavelets' stationary wavelet transform (pywt.swtn) aligns its coefficients
            volume = ndimage.convolve1d(volume, taps, axis=axis, mode=mode)
        return volume

    # rotation invariant: average pooling of the responses (IBSI 2)
    return _pooled(image, band, "mean") if spec.get("rotation_invariant") else band(image)


def gabor_kernel(spacing_xy: tuple[float, float], spec: dict, theta_deg: float) -> np.ndarray:
    """The complex 2D Gabor kernel on the voxel grid, ``exp(-(x'^2 + gamma^2 y'^2) / (2 sigma^2))``
    ``* exp(i 2 pi x' / lambda)`` with ``x'``, ``y'`` rotated by ``theta``, in mm, truncated at 4 sigma
    (4 sigma / gamma when gamma < 1)."""
    sigma, wavelength, gamma = spec["sigma_mm"], spec["wavelength_mm"], spec["gamma"]
    theta = math.radians(theta_deg)
    half = [max(1, int(math.ceil(4 * sigma * max(1.0, 1.0 / gamma) / s))) for s in spacing_xy]
    x = np.arange(-half[0], half[0] + 1)[:, None] * spacing_xy[0]
    y = np.arange(-half[1], half[1] + 1)[None, :] * spacing_xy[1]
    xr = x * math.cos(theta) + y * math.sin(theta)
    yr = -x * math.sin(theta) + y * math.cos(theta)
    return np.exp(-(xr**2 + gamma**2 * yr**2) / (2 * sigma**2)) * np.exp(2j * math.pi * xr / wavelength)


def _gabor(image: np.ndarray, spacing, spec: dict, theta_deg: float) -> np.ndarray:
    kernel = gabor_kernel((spacing[0], spacing[1]), spec, theta_deg)[:, :, None]
    mode = PADDING[spec["padding"]]
    real = ndimage.correlate(image, kernel.real, mode=mode)
    imag = ndimage.correlate(image, kernel.imag, mode=mode)
    return np.hypot(real, imag)


def filter_feature_names(filters: list[dict]) -> dict[str, str]:
    """Feature name -> feature class (``filter_<type>``) of every checked filter, in extraction order."""
    from multimodal.ingest.ibsi_intensity import STAT_TAGS

    return {f"{spec['prefix']}_{tag}": f"filter_{spec['type']}" for spec in filters for tag in STAT_TAGS}


def filter_features(
    image: np.ndarray, roi: np.ndarray, spacing: tuple[float, float, float], filters: list[dict]
) -> dict[str, float]:
    """Intensity statistics (``stat_*``) of every filter's response inside ``roi``, prefixed by filter."""
    from multimodal.ingest.ibsi_intensity import intensity_statistics

    out: dict[str, float] = {}
    for spec in filters:
        response = filter_image(image, spacing, spec)
        for tag, value in intensity_statistics(response[roi]).items():
            out[f"{spec['prefix']}_{tag}"] = float(value)
    return out
