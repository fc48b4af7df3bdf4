"""The tiny library-level run produces every output, with every patient scored once."""

import json

import pandas as pd


def test_tiny_run_outputs(tiny_run):
    metrics = json.loads((tiny_run["model_dir"] / "metrics.json").read_text())
    predictions = pd.read_csv(tiny_run["model_dir"] / "predictions.tsv", sep="\t")
    assert metrics["n_patients"] == 60 == len(predictions) == predictions["patient_id"].nunique()
    assert len(metrics["folds"]) == 3
    assert (tiny_run["explain_dir"] / "attributions.zarr" / "zarr.json").is_file()
