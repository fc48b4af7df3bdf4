"""Attributions: Integrated Gradients completeness, held-out patients only, NaN for absent modalities."""

import mudata as md
import numpy as np
import pandas as pd
import torch

from multimodal.explain import attribute_fold
from multimodal.model.fusion import FusionSurvivalModel


def test_integrated_gradients_is_complete():
    torch.manual_seed(0)
    model = FusionSurvivalModel({"a": 3, "b": 2}, hidden_dim=4, dropout=0.0, input_dropout=0.0)
    inputs = [torch.randn(5, 3), torch.randn(5, 2)]
    mask = torch.tensor([[True, True], [True, False], [True, True], [True, True], [True, False]])
    attributions, delta = attribute_fold(model, inputs, mask, n_steps=64)
    with torch.no_grad():
        gap = model.risk(*inputs, mask=mask) - model.risk(*[torch.zeros_like(x) for x in inputs], mask=mask)
    total = attributions[0].sum(axis=1) + attributions[1].sum(axis=1)
    np.testing.assert_allclose(total, gap.numpy(), atol=1e-4)
    assert np.abs(delta).max() < 1e-4
    np.testing.assert_allclose(attributions[1][[1, 4]], 0.0)  # masked modality gets nothing


def test_attribution_outputs(tiny_run):
    explain_dir = tiny_run["explain_dir"]
    attr = md.read_zarr(str(explain_dir / "attributions.zarr"))
    store = md.read_zarr(str(tiny_run["store"]))
    for name in ("expression", "imaging"):
        assert attr.mod[name].n_obs == store.mod[name].n_obs  # only patients who have the modality
    importance = pd.read_csv(explain_dir / "feature_importance.tsv", sep="\t")
    imaging = importance[importance["modality"] == "imaging"].set_index("feature")
    recomputed = np.abs(attr.mod["imaging"].X).mean(axis=0)
    np.testing.assert_allclose(
        imaging.loc[list(attr.mod["imaging"].var_names), "mean_abs_attribution"], recomputed, rtol=1e-5
    )
    assert sorted(imaging["rank"]) == list(range(1, len(imaging) + 1))
    contributions = pd.read_csv(explain_dir / "modality_contributions.tsv", sep="\t", index_col=0)
    assert len(contributions) == 60
    lacking = ~store.obs["has_imaging"].to_numpy(bool)
    assert contributions.loc[store.obs_names[lacking], "imaging"].isna().all()


def test_explaining_with_a_store_that_does_not_match_the_model_is_an_error(tiny_run, tmp_path):
    import pytest

    from multimodal.errors import MultimodalError
    from multimodal.explain import explain_cohort
    from multimodal.store import configure_zarr_v3, read_cohort_store

    mdata = read_cohort_store(tiny_run["store"])
    configure_zarr_v3()
    changed = md.MuData({**dict(mdata.mod), "expression": mdata.mod["expression"][:, 1:].copy()})
    changed.obs = mdata.obs
    changed.uns["model_obs_features"] = dict(mdata.uns["model_obs_features"])
    with pytest.raises(MultimodalError, match="this model was trained on another cohort store"):
        explain_cohort(changed, tiny_run["model_dir"], tmp_path / "explain", n_steps=4, progress=False)
    assert not (tmp_path / "explain" / "attributions.zarr").exists()


def test_a_modality_too_rare_to_learn_is_masked_and_explained(tiny_run, tmp_path, monkeypatch):
    from multimodal.cli import main

    cohort = tiny_run["cohort"]
    monkeypatch.chdir(cohort)  # the sheet's files lie under the working directory, a default data root
    sheet = pd.read_csv(cohort / "samples.tsv", sep="\t", dtype=str, keep_default_na=False)
    with_image = sheet.index[sheet["image"] != ""]
    sheet.loc[with_image[2:], ["image", "mask"]] = ""  # imaging for two patients only
    sheet.to_csv(tmp_path / "samples.tsv", sep="\t", index=False)
    s = str(tmp_path / "samples.tsv")
    assert main(["ingest", "imaging", "-q", "--samples", s, "--out", str(tmp_path / "img.h5ad")]) == 0
    assert main(["ingest", "variants", "-q", "--samples", s, "--out", str(tmp_path / "var.h5ad")]) == 0
    assert (
        main(
            [
                "assemble",
                "-q",
                "--clinical",
                str(cohort / "clinical.tsv"),
                "--samples",
                s,
                "--variants",
                str(tmp_path / "var.h5ad"),
                "--imaging",
                str(tmp_path / "img.h5ad"),
                "--out",
                str(tmp_path / "c.zarr"),
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "train",
                "-q",
                "--store",
                str(tmp_path / "c.zarr"),
                "--folds",
                "3",
                "--epochs",
                "5",
                "--out",
                str(tmp_path / "model"),
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "explain",
                "-q",
                "--store",
                str(tmp_path / "c.zarr"),
                "--model",
                str(tmp_path / "model"),
                "--n-steps",
                "4",
                "--out",
                str(tmp_path / "explain"),
            ]
        )
        == 0
    )
    predictions = pd.read_csv(tmp_path / "model" / "predictions.tsv", sep="\t")
    assert not predictions["has_imaging"].any()  # never enough imaging in a training fold to use it
    contributions = pd.read_csv(tmp_path / "explain" / "modality_contributions.tsv", sep="\t", index_col=0)
    assert contributions["imaging"].notna().sum() == 2
    assert (contributions["imaging"].dropna() == 0).all()


def test_ensemble_members_are_averaged_in_predictions_and_attributions(tiny_run, tmp_path):
    from multimodal.explain import explain_cohort
    from multimodal.model.train import TrainParams, cross_validate
    from multimodal.store import read_cohort_store

    mdata = read_cohort_store(tiny_run["store"])
    params = TrainParams(folds=3, epochs=5, ensemble=2, baseline=False, max_features={"expression": 10})
    cross_validate(mdata, tmp_path / "model", params=params, progress=False)
    assert len(list((tmp_path / "model" / "fold_1").glob("model_*.ckpt"))) == 2
    explain_cohort(mdata, tmp_path / "model", tmp_path / "explain", n_steps=8, progress=False)
    predictions = pd.read_csv(tmp_path / "model" / "predictions.tsv", sep="\t").set_index("patient_id")
    contributions = pd.read_csv(tmp_path / "explain" / "modality_contributions.tsv", sep="\t", index_col=0)
    np.testing.assert_allclose(contributions.loc[predictions.index, "risk"], predictions["risk"], atol=1e-5)
