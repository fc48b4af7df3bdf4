"""Radiomics extraction per patient: our full IBSI 1 extraction against pyradiomics 3.0.1 (and MIRP 2.x
when given), on the same volume in the same run.

The volume is clinical-sized: 128 x 128 x 64 voxels of 0.8 x 0.8 x 2.5 mm, CT-like integer intensities
(smoothed noise, a brighter heterogeneous tumour), an ellipsoidal ROI of ~30,000 voxels. Timed, each
single-threaded (BLAS/OpenMP threads 1, as one ingest job per core), median of ``--repeats`` runs
after one warm-up:

- ``multimodal``: ``extract_radiomics`` (morphology, local intensity, statistics, intensity histogram,
  IVH, the six texture families) with the ingest defaults (32 bins, 3D aggregations), and with every
  aggregation (2D, 2.5D, 3D);
- ``pyradiomics``: ``RadiomicsFeatureExtractor`` with every default feature class (first order, shape,
  GLCM, GLRLM, GLSZM, GLDM, NGTDM), ``binCount`` 32, on the same NIfTI files, in its own interpreter
  (pyradiomics is not a project dependency; see below);
- ``mirp`` (``--mirp-python``): ``mirp.extract_features`` with every IBSI 1 family, 32 bins (FBN), 3D.

Prints seconds per volume, the ratio multimodal / pyradiomics (target <= 0.5) and patients per hour on
2 cores (two ingest jobs in parallel, one patient per core at a time). Then, end to end through the
ingest (``imaging_matrix``: reading and checking the NIfTI pairs, extraction), a chunk of
``--chunk-patients`` such patients with ``threads`` 1 and 2 (worker processes, as rule ingest_imaging's
``ingest.imaging_threads``): patients per hour on 2 cores and the speed-up of 2 against 1 in the same run.

pyradiomics' interpreter: ``--reference-python PATH``, else ``/tmp/pyrad/bin/python`` when it exists,
else that venv is created (``python3.11 -m venv /tmp/pyrad``, numpy and SimpleITK, then
``pip install --no-build-isolation pyradiomics==3.0.1``: a plain ``pip install pyradiomics`` fails on
the 3.1.0 sdist, see ../shared/STACK.md).

Usage: python benchmarks/radiomics_benchmark.py [--repeats 5] [--reference-python PATH]
       [--mirp-python PATH] [--no-reference] [--workdir DIR] [--chunk-patients 8]
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"  # before numpy: one core per job, as ingest runs

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import nibabel as nib  # noqa: E402
import numpy as np  # noqa: E402
from scipy import ndimage  # noqa: E402

SHAPE = (128, 128, 64)
SPACING = (0.8, 0.8, 2.5)
SIDE_VENV = Path("/tmp/pyrad")

PYRADIOMICS = """
import json, logging, statistics, sys, time
import radiomics
from radiomics import featureextractor
radiomics.setVerbosity(logging.ERROR)
image, mask, repeats = sys.argv[1], sys.argv[2], int(sys.argv[3])
extractor = featureextractor.RadiomicsFeatureExtractor(binCount=32)
extractor.enableAllFeatures()  # the default classes: firstorder, shape, glcm, glrlm, glszm, gldm, ngtdm
extractor.execute(image, mask)  # warm-up
times = []
for _ in range(repeats):
    start = time.perf_counter()
    result = extractor.execute(image, mask)
    times.append(time.perf_counter() - start)
n = sum(1 for k in result if k.startswith("original_"))
print(json.dumps({"seconds": statistics.median(times), "features": n, "version": radiomics.__version__}))
"""

MIRP = """
import json, statistics, sys, time, warnings
warnings.filterwarnings("ignore")
from mirp import extract_features
image, mask, repeats = sys.argv[1], sys.argv[2], int(sys.argv[3])
def run():
    return extract_features(
        image=image, mask=mask, by_slice=False, base_discretisation_method="fixed_bin_number",
        base_discretisation_n_bins=32, ivh_discretisation_method="none", new_spacing=None,
        glcm_spatial_method=["3d_average", "3d_volume_merge"], glrlm_spatial_method=["3d_average", "3d_volume_merge"],
    )
run()  # warm-up
times = []
for _ in range(repeats):
    start = time.perf_counter()
    result = run()
    times.append(time.perf_counter() - start)
frame = result[0]
n = sum(1 for c in frame.columns if c.split("_", 1)[0] in
        ("morph", "loc", "stat", "ih", "ivh", "cm", "rlm", "szm", "dzm", "ngt", "ngl"))
from importlib.metadata import version as _version
version = _version("mirp")
print(json.dumps({"seconds": statistics.median(times), "features": n, "version": version}))
"""


MIRP_PHANTOM = """
import sys, warnings
warnings.filterwarnings("ignore")
from mirp import extract_features
every = ["2d_average", "2d_slice_merge", "2.5d_direction_merge", "2.5d_volume_merge", "3d_average", "3d_volume_merge"]
zones = ["2d", "2.5d", "3d"]
# IBSI 1 phantom configuration: no resampling, bin width 1 from 1 (MIRP takes the FBS lower bound from the
# re-segmentation range, which excludes nothing here: every ROI intensity is >= 1), integer IVH levels.
frame = extract_features(
    image=sys.argv[1], mask=sys.argv[2], by_slice=False, base_discretisation_method="fixed_bin_size",
    base_discretisation_bin_width=1.0, resegmentation_intensity_range=[1.0, float("nan")],
    ivh_discretisation_method="none", glcm_spatial_method=every, glrlm_spatial_method=every,
    glszm_spatial_method=zones, gldzm_spatial_method=zones, ngtdm_spatial_method=zones, ngldm_spatial_method=zones,
)[0]
frame.T.to_csv(sys.stdout, sep="\t", header=False)
"""

#: MIRP's column name suffixes -> IBSI aggregation suffixes.
_MIRP_SUFFIXES = {
    "2.5d_d_mrg": "2_5D_avg",
    "2.5d_v_mrg": "2_5D_comb",
    "2d_s_mrg": "2D_comb",
    "3d_v_mrg": "3D_comb",
    "2d_avg": "2D_avg",
    "3d_avg": "3D_avg",
    "2.5d": "2_5D",
    "2d": "2D",
    "3d": "3D",
}


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def mirp_phantom_within_tolerance(python: Path) -> tuple[int, int, list[str]]:
    """MIRP's IBSI 1 digital phantom features within the IBSI tolerance: (within, reference tags, outside)."""
    import csv
    import math
    import re

    data = Path(__file__).resolve().parent.parent / "tests" / "data" / "ibsi"
    done = subprocess.run(
        [str(python), "-c", MIRP_PHANTOM, str(data / "phantom.nii.gz"), str(data / "mask.nii.gz")],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise SystemExit(f"{python} failed on the phantom:\n{done.stderr[-3000:]}")
    values: dict[str, float] = {}
    for line in done.stdout.splitlines():
        name, _, value = line.partition("\t")
        name = re.sub(r"_d1(_a0\.0)?_", "_", re.sub(r"_fb[sn]_[wn][0-9.]+$", "", name))
        for mirp_suffix, ibsi_suffix in _MIRP_SUFFIXES.items():
            if name.endswith("_" + mirp_suffix):
                name = name[: -len(mirp_suffix)] + ibsi_suffix
                break
        try:
            values[name] = float(value)
        except ValueError:
            continue
    with open(data / "ibsi_1_dig_phantom_reference.csv", newline="") as handle:
        rows = [row for row in csv.DictReader(handle, delimiter=";") if row["reference value"]]
    within, outside = 0, []
    for row in rows:
        reference, tolerance = float(row["reference value"]), float(row["tolerance"] or 0)
        rounding = 0.5 * 10 ** (math.floor(math.log10(abs(reference))) - 2) if reference else 0.0
        value = values.get(row["tag"], math.nan)
        if abs(value - reference) <= max(tolerance, rounding) + 1e-12:
            within += 1
        else:
            outside.append(f"{row['tag']} {value:g} (IBSI {reference:g})")
    return within, len(rows), outside


def make_volume(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A CT-like int16 volume and an ellipsoidal ROI of ~30,000 voxels."""
    rng = np.random.default_rng(seed)
    background = 40.0 + 12.0 * ndimage.gaussian_filter(rng.normal(size=SHAPE), 1.0) / 0.3
    x, y, z = np.ogrid[: SHAPE[0], : SHAPE[1], : SHAPE[2]]
    mask = ((x - 64) / 22) ** 2 + ((y - 64) / 22) ** 2 + ((z - 32) / 15) ** 2 <= 1
    texture = ndimage.gaussian_filter(rng.normal(size=SHAPE), 1.5)
    tumour = 100.0 + 15.0 * texture / texture.std()
    image = np.where(mask, tumour, background) + rng.normal(0, 4.0, SHAPE)
    return np.round(image).astype(np.int16), mask.astype(np.uint8)


def time_ours(image: np.ndarray, mask: np.ndarray, repeats: int, aggregations: tuple[str, ...]) -> tuple[float, int]:
    from multimodal.ingest.radiomics import extract_radiomics

    def run() -> dict[str, float]:
        return extract_radiomics(image, mask, spacing=SPACING, bin_count=32, aggregations=aggregations)

    run()  # warm-up (imports, FFT plans)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        features = run()
        times.append(time.perf_counter() - start)
    return statistics.median(times), len(features)


def time_chunk(workdir: Path, n_patients: int, threads: int) -> float:
    """Seconds for ``imaging_matrix`` over a chunk of ``n_patients`` image/mask pairs with ``threads``."""
    import pandas as pd

    from multimodal.ingest.imaging import imaging_matrix
    from multimodal.ingest.samples import read_samples

    sheet = workdir / "chunk_samples.tsv"
    if not sheet.exists():
        rows = []
        affine = np.diag([*SPACING, 1.0])
        for k in range(n_patients):
            image, mask = make_volume(seed=k + 1)
            image_path, mask_path = workdir / f"P{k}_image.nii.gz", workdir / f"P{k}_mask.nii.gz"
            nib.save(nib.Nifti1Image(image, affine), image_path)
            nib.save(nib.Nifti1Image(mask, affine), mask_path)
            rows.append({"patient_id": f"P{k}", "image": str(image_path), "mask": str(mask_path)})
        pd.DataFrame(rows).to_csv(sheet, sep="\t", index=False)
    samples = read_samples(sheet)
    start = time.perf_counter()
    imaging_matrix(samples, threads=threads, progress=False)
    return time.perf_counter() - start


def reference_python(given: str | None) -> Path:
    if given:
        return Path(given)
    python = SIDE_VENV / "bin" / "python"
    if python.exists():
        return python
    print(f"creating the pyradiomics 3.0.1 side venv in {SIDE_VENV} (a few minutes) ...", flush=True)
    subprocess.run(["python3.11", "-m", "venv", str(SIDE_VENV)], check=True)
    pip = [str(SIDE_VENV / "bin" / "pip"), "install", "-q"]
    subprocess.run([*pip, "numpy", "SimpleITK"], check=True)
    subprocess.run([*pip, "--no-build-isolation", "pyradiomics==3.0.1"], check=True)
    return python


def run_other(python: Path, script: str, image: Path, mask: Path, repeats: int) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    done = subprocess.run(
        [str(python), "-c", script, str(image), str(mask), str(repeats)],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    if done.returncode != 0:
        raise SystemExit(f"{python} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--reference-python", help="a Python with pyradiomics 3.0.1 (default: /tmp/pyrad)")
    parser.add_argument("--mirp-python", help="a Python with mirp 2.x, to time it too")
    parser.add_argument("--no-reference", action="store_true", help="time ours only")
    parser.add_argument("--workdir", type=Path, help="where the NIfTI files go (default: a temporary directory)")
    parser.add_argument("--chunk-patients", type=int, default=8, help="patients of the ingest chunk timed (0: skip)")
    args = parser.parse_args()

    image, mask = make_volume()
    print(f"volume {SHAPE} voxels of {SPACING} mm, ROI {int(mask.sum())} voxels")
    print(f"machine: {cpu_model()}, {os.cpu_count()} cores, Python {platform.python_version()}")

    ours_3d, n_3d = time_ours(image, mask, args.repeats, ("3D",))
    ours_all, n_all = time_ours(image, mask, args.repeats, ("2D", "2_5D", "3D"))
    print(f"multimodal (3D, the ingest default): {ours_3d:.3f} s per volume, {n_3d} features")
    print(f"multimodal (2D + 2.5D + 3D): {ours_all:.3f} s per volume, {n_all} features")
    print(f"multimodal patients/hour on 2 cores (3D): {2 * 3600 / ours_3d:,.0f}")
    if args.chunk_patients > 0:
        with tempfile.TemporaryDirectory() as tmp:
            chunk_dir = (args.workdir or Path(tmp)) / "chunk"
            chunk_dir.mkdir(parents=True, exist_ok=True)
            one = time_chunk(chunk_dir, args.chunk_patients, threads=1)
            two = time_chunk(chunk_dir, args.chunk_patients, threads=2)
        n = args.chunk_patients
        print(f"ingest chunk of {n} patients (read, check, extract), threads 1: {one:.2f} s, {n * 3600 / one:,.0f} /h")
        print(f"ingest chunk of {n} patients, threads 2 (2 cores): {two:.2f} s, {n * 3600 / two:,.0f} patients/hour")
        print(f"speed-up threads 2 / threads 1: {one / two:.2f}")
    if args.no_reference:
        return

    with tempfile.TemporaryDirectory() as tmp:
        workdir = args.workdir or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        affine = np.diag([*SPACING, 1.0])
        image_path, mask_path = workdir / "image.nii.gz", workdir / "mask.nii.gz"
        nib.save(nib.Nifti1Image(image, affine), image_path)
        nib.save(nib.Nifti1Image(mask, affine), mask_path)

        ref = run_other(reference_python(args.reference_python), PYRADIOMICS, image_path, mask_path, args.repeats)
        print(f"pyradiomics {ref['version']}: {ref['seconds']:.3f} s per volume, {ref['features']} features")
        print(f"pyradiomics patients/hour on 2 cores: {2 * 3600 / ref['seconds']:,.0f}")
        print(f"ratio multimodal / pyradiomics (3D default): {ours_3d / ref['seconds']:.2f} (target <= 0.5)")
        print(f"ratio multimodal / pyradiomics (every aggregation): {ours_all / ref['seconds']:.2f}")

        if args.mirp_python:
            other = run_other(Path(args.mirp_python), MIRP, image_path, mask_path, args.repeats)
            print(f"mirp {other['version']}: {other['seconds']:.3f} s per volume, {other['features']} features")
            print(f"ratio multimodal / mirp (3D): {ours_3d / other['seconds']:.2f}")
            within, total, outside = mirp_phantom_within_tolerance(Path(args.mirp_python))
            print(f"mirp IBSI 1 phantom: {within} of {total} reference tags within tolerance; outside: {outside}")


if __name__ == "__main__":
    sys.exit(main())
