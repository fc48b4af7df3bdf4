"""Shared fixtures: a tiny simulated cohort and one library-level run of the whole path on it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
IBSI_DIR = Path(__file__).parent / "data" / "ibsi"
os.environ.setdefault("MULTIMODAL_NO_PROGRESS", "1")


def run_workflow_in(workdir: Path, config: str) -> int:
    """``multimodal run`` with the repository's Snakefile, in ``workdir`` (paths in the config are relative
    to it), as a user would from their project directory."""
    from multimodal.cli import main

    previous = os.getcwd()
    os.chdir(workdir)
    try:
        return main(
            [
                "run",
                "-q",
                "--config",
                config,
                "--snakefile",
                str(REPO / "Snakefile"),
                "--cores",
                "2",
                "--",
                "--quiet",
                "all",
            ]
        )
    finally:
        os.chdir(previous)


def ibsi_reference() -> dict[str, tuple[float, float]]:
    """IBSI 1 digital phantom consensus: tag -> (value, tolerance), for the tags that have a value."""
    import csv

    with open(IBSI_DIR / "ibsi_1_dig_phantom_reference.csv", newline="") as handle:
        rows = list(csv.DictReader(handle, delimiter=";"))
    return {
        row["tag"]: (float(row["reference value"]), float(row["tolerance"] or 0))
        for row in rows
        if row["reference value"]
    }


@pytest.fixture(scope="session")
def tiny_cohort(tmp_path_factory) -> Path:
    """60 simulated patients with small images, in real file formats."""
    from multimodal.simulate import SimulationParams, simulate_cohort

    root = tmp_path_factory.mktemp("tiny_cohort")
    simulate_cohort(
        root, params=SimulationParams(n_patients=60, seed=11, image_size=24, n_expression_genes=300, n_panel_genes=120)
    )
    return root


@pytest.fixture(scope="session")
def tiny_run(tiny_cohort, tmp_path_factory) -> dict[str, Path]:
    """ingest -> assemble -> train (3 folds) -> explain, through the library, on the tiny cohort."""
    from multimodal.explain import explain_cohort
    from multimodal.ingest.expression import expression_matrix, read_counts_table
    from multimodal.ingest.imaging import imaging_matrix
    from multimodal.ingest.samples import read_samples
    from multimodal.ingest.variants import mutation_matrix
    from multimodal.model.train import TrainParams, cross_validate
    from multimodal.store import build_cohort_store, read_cohort_store

    out = tmp_path_factory.mktemp("tiny_run")
    samples = read_samples(tiny_cohort / "samples.tsv")
    interim = out / "interim"
    interim.mkdir()
    chunks = {}
    for name, adata in (
        ("variants", mutation_matrix(samples, progress=False)),
        ("expression", expression_matrix(read_counts_table(tiny_cohort / "expression_counts.tsv"), samples)),
        ("imaging", imaging_matrix(samples, progress=False)),
    ):
        path = interim / f"{name}.h5ad"
        adata.write_h5ad(path)
        chunks[name] = [path]
    store = build_cohort_store(
        out / "cohort.zarr",
        clinical_path=tiny_cohort / "clinical.tsv",
        samples_path=tiny_cohort / "samples.tsv",
        modality_chunks=chunks,
        cohort_files=[tiny_cohort / "expression_counts.tsv"],
        config={"note": "tiny test cohort"},
    )
    mdata = read_cohort_store(store)
    params = TrainParams(folds=3, epochs=15, max_features={"expression": 20, "variants": 15})
    cross_validate(mdata, out / "model", params=params, store_path=str(store), progress=False)
    explain_cohort(mdata, out / "model", out / "explain", n_steps=16, progress=False)
    return {
        "store": store,
        "model_dir": out / "model",
        "explain_dir": out / "explain",
        "truth": tiny_cohort / "truth.json",
        "cohort": tiny_cohort,
    }
