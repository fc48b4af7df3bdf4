"""Several lesions and timepoints per patient from the samples sheet (columns lesion, timepoint).

NIfTI images and masks written with nibabel; each combined value is checked against the same lesion
extracted alone from a one-row-per-patient sheet.
"""

from __future__ import annotations

import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from multimodal.errors import MultimodalError
from multimodal.ingest.imaging import imaging_matrix
from multimodal.ingest.samples import read_samples


def _write(path: Path, array: np.ndarray, dtype) -> str:
    nib.save(nib.Nifti1Image(array.astype(dtype), np.diag([1.0, 1.0, 2.0, 1.0])), str(path))
    return str(path)


def _scan(root: Path, name: str, lesions: list[tuple[tuple[int, int, int], float, float]], seed: int) -> dict:
    """One image with spherical lesions (centre, radius, intensity) and one mask file per lesion."""
    rng = np.random.default_rng(seed)
    grid = np.indices((28, 28, 14), dtype=float)
    image = 40.0 + rng.normal(0, 5.0, grid.shape[1:])
    masks = []
    for k, (centre, radius, level) in enumerate(lesions):
        inside = sum(((grid[a] - centre[a]) * (1.0, 1.0, 2.0)[a]) ** 2 for a in range(3)) <= radius**2
        image[inside] = level + rng.normal(0, 8.0, int(inside.sum()))
        masks.append(_write(root / f"{name}_lesion{k + 1}_mask.nii.gz", inside, np.uint8))
    return {"image": _write(root / f"{name}_image.nii.gz", image.round(), np.int16), "masks": masks}


@pytest.fixture(scope="module")
def scans(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("lesions")
    return {
        "root": root,
        "P1_baseline": _scan(root, "P1_base", [((8, 8, 4), 3.0, 120.0), ((18, 18, 9), 5.0, 90.0)], seed=1),
        "P1_follow_up": _scan(root, "P1_fu", [((8, 8, 4), 2.0, 110.0), ((18, 18, 9), 3.5, 95.0)], seed=2),
        "P2_baseline": _scan(root, "P2_base", [((14, 14, 7), 4.0, 100.0)], seed=3),
        "P3_baseline": _scan(root, "P3_base", [((14, 14, 7), 4.0, 100.0)], seed=4),
        "P3_follow_up": _scan(root, "P3_fu", [((14, 14, 7), 5.0, 130.0)], seed=5),
    }


def _sheet(path: Path, rows: list[dict]) -> Path:
    pd.DataFrame(rows).fillna("").to_csv(path, sep="\t", index=False)
    return path


def _rows(scans: dict, *, with_vcf: bool = False) -> list[dict]:
    rows = []
    for key in ("P1_baseline", "P1_follow_up", "P2_baseline", "P3_baseline", "P3_follow_up"):
        patient, timepoint = key.split("_", 1)
        for k, mask in enumerate(scans[key]["masks"]):
            rows.append(
                {
                    "patient_id": patient,
                    "lesion": f"L{k + 1}",
                    "timepoint": timepoint,
                    "image": scans[key]["image"],
                    "mask": mask,
                }
            )
    if with_vcf:
        rows[0]["rna_sample"] = "S1"
    return rows


def _alone(scans: dict, key: str, lesion: int) -> pd.Series:
    """Features of one lesion extracted from a plain one-row sheet (no lesion/timepoint columns)."""
    sheet = _sheet(
        scans["root"] / f"alone_{key}_{lesion}.tsv",
        [{"patient_id": "X", "image": scans[key]["image"], "mask": scans[key]["masks"][lesion]}],
    )
    adata = imaging_matrix(read_samples(sheet), progress=False)
    return pd.Series(np.asarray(adata.X[0], dtype=float), index=adata.var_names)


def test_sheet_rows_are_grouped_by_patient(scans):
    sheet = read_samples(_sheet(scans["root"] / "grouped.tsv", _rows(scans, with_vcf=True)))
    assert list(sheet.index) == ["P1", "P2", "P3"]
    assert [len(r) for r in sheet["imaging_rows"]] == [4, 1, 2]
    assert sheet.loc["P1", "rna_sample"] == "S1"
    assert {(r["lesion"], r["timepoint"]) for r in sheet.loc["P1", "imaging_rows"]} == {
        ("L1", "baseline"),
        ("L2", "baseline"),
        ("L1", "follow_up"),
        ("L2", "follow_up"),
    }


@pytest.mark.parametrize("rule", ["largest", "volume_weighted"])
def test_lesions_combined_by_rule_and_deltas_from_the_follow_up(scans, rule):
    sheet = read_samples(_sheet(scans["root"] / f"sheet_{rule}.tsv", _rows(scans)))
    adata = imaging_matrix(sheet, lesion_rule=rule, progress=False)
    x = pd.DataFrame(np.asarray(adata.X, dtype=float), index=adata.obs_names, columns=adata.var_names)
    base = [_alone(scans, "P1_baseline", k) for k in (0, 1)]
    follow = [_alone(scans, "P1_follow_up", k) for k in (0, 1)]
    names = list(base[0].index)
    assert list(adata.var_names) == names + [f"delta_{n}" for n in names] + [f"delta_rel_{n}" for n in names]

    def combine(lesions: list[pd.Series]) -> pd.Series:
        if rule == "largest":
            return max(lesions, key=lambda s: s["morph_volume"])
        weights = np.array([s["morph_volume"] for s in lesions])
        return sum(w * s for w, s in zip(weights, lesions, strict=True)) / weights.sum()

    expected_base, expected_follow = combine(base), combine(follow)
    for feature in ("morph_volume", "stat_mean", "stat_var", "cm_joint_max_3D_avg"):
        assert x.loc["P1", feature] == pytest.approx(expected_base[feature], rel=1e-5)
        delta = expected_follow[feature] - expected_base[feature]
        assert x.loc["P1", f"delta_{feature}"] == pytest.approx(delta, rel=1e-4, abs=1e-6)
        assert x.loc["P1", f"delta_rel_{feature}"] == pytest.approx(delta / abs(expected_base[feature]), rel=1e-4)
    # the follow-up lesions shrank: the planted change under treatment
    assert x.loc["P1", "delta_morph_volume"] < 0 and x.loc["P3", "delta_morph_volume"] > 0
    assert x.loc["P2", [f"delta_{n}" for n in names]].isna().all()
    assert x.loc["P2", names].notna().sum() > 150
    assert list(adata.obs["n_lesions"]) == [2, 1, 1]
    ingest = adata.uns["ingest"]
    assert ingest["exclusions"]["patients_without_follow_up"] == 1
    assert ingest["exclusions"]["patients_with_several_lesions"] == 1
    assert ingest["params"]["lesion_rule"] == rule
    assert list(adata.obs["n_images"]) == [4, 1, 2]


def test_lesions_without_timepoints_add_no_deltas(scans):
    rows = [{k: v for k, v in r.items() if k != "timepoint"} for r in _rows(scans) if r["timepoint"] == "baseline"]
    adata = imaging_matrix(read_samples(_sheet(scans["root"] / "lesions_only.tsv", rows)), progress=False)
    assert not any(n.startswith("delta_") for n in adata.var_names)
    assert "patients_without_follow_up" not in adata.uns["ingest"]["exclusions"]
    big = _alone(scans, "P1_baseline", 1)
    assert float(adata.X[0, list(adata.var_names).index("morph_volume")]) == pytest.approx(big["morph_volume"])


def test_cli_lesion_rule(scans, tmp_path):
    import anndata as ad

    from multimodal.cli import main

    sheet = _sheet(scans["root"] / "cli.tsv", _rows(scans))
    out = tmp_path / "imaging.h5ad"
    main(["ingest", "imaging", "-q", "--samples", str(sheet), "--lesion-rule", "volume_weighted", "--out", str(out)])
    assert ad.read_h5ad(out).uns["ingest"]["params"]["lesion_rule"] == "volume_weighted"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda rows: rows.append(dict(rows[0])), r"duplicate \(patient_id, lesion, timepoint\) 'P1\|L1\|baseline'"),
        (
            lambda rows: rows[1].update(timepoint="week_6"),
            "line 3: timepoint 'week_6' is not one of baseline, follow_up",
        ),
        (
            lambda rows: rows[1].update(rna_sample="S2") or rows[0].update(rna_sample="S1"),
            "line 3: patient P1 has rna_sample 'S2'",
        ),
    ],
)
def test_sheet_errors_name_the_line(scans, change, message):
    rows = _rows(scans)
    for row in rows:
        row.setdefault("rna_sample", "")
    change(rows)
    with pytest.raises(MultimodalError, match=message):
        read_samples(_sheet(scans["root"] / "bad.tsv", rows))


def test_follow_up_without_baseline_is_an_error(scans):
    rows = [r for r in _rows(scans) if not (r["patient_id"] == "P3" and r["timepoint"] == "baseline")]
    with pytest.raises(MultimodalError, match="patient P3 has a follow_up image but no baseline"):
        imaging_matrix(read_samples(_sheet(scans["root"] / "no_baseline.tsv", rows)), progress=False)


def test_parallel_extraction_gives_the_same_features(scans):
    """threads (worker processes per chunk, the rule's threads) change nothing in the result."""
    sheet = read_samples(_sheet(scans["root"] / "threads.tsv", _rows(scans)))
    one = imaging_matrix(sheet, progress=False)
    two = imaging_matrix(sheet, threads=2, progress=False)
    np.testing.assert_array_equal(np.asarray(one.X), np.asarray(two.X))
    assert list(one.obs_names) == list(two.obs_names)
    assert one.uns["ingest"] == two.uns["ingest"]
    with pytest.raises(MultimodalError, match="threads must be a whole number of at least 1"):
        imaging_matrix(sheet, threads=0, progress=False)


@pytest.mark.slow
def test_the_workflow_chunks_patients_not_sheet_rows(scans, tmp_path):
    """rule ingest_imaging (through multimodal run): with 2 patients per chunk, P1's four sheet rows stay in
    chunk 0 and P3's follow-up in chunk 1; each chunk's table holds its patients' deltas."""
    import anndata as ad
    import yaml
    from conftest import REPO

    from multimodal.cli import main

    _sheet(tmp_path / "samples.tsv", _rows(scans))
    pd.DataFrame(
        {
            "patient_id": ["P1", "P2", "P3"],
            "site": ["a", "b", "a"],
            "age": [60, 70, 80],
            "sex": ["f", "m", "f"],
            "arm": ["x", "y", "x"],
            "os_time": [10, 20, 30],
            "os_event": [1, 0, 1],
        }
    ).to_csv(tmp_path / "clinical.tsv", sep="\t", index=False)
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    config.update(
        samples="samples.tsv",
        clinical="clinical.tsv",
        expression=None,
        outdir="results",
        data_roots=[str(scans["root"]), str(tmp_path)],
    )
    config["simulate"]["enabled"] = False
    config["ingest"]["chunk_size"] = 2
    config["clinical_columns"]["response_column"] = None
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    targets = [f"results/interim/imaging/chunk_{k}.h5ad" for k in (0, 1)]
    previous = os.getcwd()
    os.chdir(tmp_path)
    try:
        code = main(
            ["run", "-q", "--config", "config.yaml", "--snakefile", str(REPO / "Snakefile"), "--cores", "1"]
            + ["--", *targets, "--quiet", "all"]
        )
    finally:
        os.chdir(previous)
    assert code == 0
    first, second = (ad.read_h5ad(tmp_path / t) for t in targets)
    assert list(first.obs_names) == ["P1", "P2"] and list(second.obs_names) == ["P3"]
    assert list(first.obs["n_images"]) == [4, 1]
    assert float(second[:, "delta_morph_volume"].X[0, 0]) > 0
