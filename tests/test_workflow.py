"""End to end: the shipped demo configuration through Snakemake, checked against the planted truth."""

import json
import shutil

import pandas as pd
import pytest
from conftest import REPO, run_workflow_in


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    """`multimodal run` with the shipped config/config.yaml, in a scratch working directory."""
    workdir = tmp_path_factory.mktemp("demo")
    shutil.copytree(REPO / "config", workdir / "config", symlinks=False)
    code = run_workflow_in(workdir, "config/config.yaml")
    assert code == 0
    return workdir


@pytest.mark.slow
def test_shipped_samples_sheet_is_what_the_simulator_writes(demo_run):
    assert (demo_run / "demo" / "samples.tsv").read_text() == (REPO / "config" / "samples.tsv").read_text()


@pytest.mark.slow
def test_demo_cross_validated_c_index(demo_run):
    metrics = json.loads((demo_run / "results/demo/model/metrics.json").read_text())
    assert metrics["mean"]["c_index"] >= 0.70
    assert metrics["n_patients_scored"] == metrics["n_patients"] == 300


@pytest.mark.slow
def test_demo_attributions_find_the_planted_truth(demo_run):
    truth = json.loads((demo_run / "demo/truth.json").read_text())
    importance = pd.read_csv(demo_run / "results/demo/explain/feature_importance.tsv", sep="\t")
    top = {m: list(g.sort_values("rank")["feature"].head(10)) for m, g in importance.groupby("modality")}
    for gene in truth["driver_genes"]:
        assert f"{gene}_mut" in top["variants"], (gene, top["variants"])
    program = truth["expression_program"]["genes"]
    in_top = [g for g in program if g in top["expression"]]
    assert len(in_top) >= 6, (in_top, top["expression"])  # most of the 8-gene program
    assert truth["imaging"]["planted_feature"] in top["imaging"], top["imaging"]


@pytest.mark.slow
def test_demo_outputs_and_logs(demo_run):
    out = demo_run / "results/demo"
    html = (out / "report.html").read_text()
    assert "<html" in html.lower()
    summary = (out / "cohort_summary.txt").read_text()
    assert "patients: 300" in summary
    for log in ("simulate.log", "assemble.log", "train.log", "explain.log", "report.log"):
        assert (out / "logs" / log).is_file()
    assert len(list((out / "interim" / "variants").glob("chunk_*.h5ad"))) == 3
