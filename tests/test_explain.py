"""Attributions: Integrated Gradients completeness, held-out patients only, NaN for absent modalities."""

import mudata as md
import numpy as np
import pandas as pd
import pytest
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


def test_value_layer_holds_the_raw_store_values(tiny_run):
    attr = md.read_zarr(str(tiny_run["explain_dir"] / "attributions.zarr"))
    store = md.read_zarr(str(tiny_run["store"]))
    for name in ("variants", "expression", "imaging"):
        explained = attr.mod[name]
        assert explained.layers["value"].shape == explained.X.shape
        source = store.mod[name][explained.obs_names]
        stored = [f for f in explained.var_names if f in source.var_names]
        x = source[:, stored].X
        x = x.toarray() if hasattr(x, "toarray") else np.asarray(x)
        columns = explained.var_names.get_indexer(stored)
        np.testing.assert_allclose(explained.layers["value"][:, columns], x, rtol=1e-6)
    variants = attr.mod["variants"]
    if "TMB" in variants.var_names:  # an obs-derived feature: its stored value, not the model's log1p
        tmb = store.mod["variants"].obs.loc[variants.obs_names, "tmb"].to_numpy(float)
        np.testing.assert_allclose(variants[:, "TMB"].layers["value"].ravel(), tmb, rtol=1e-6)


def test_feature_importance_has_a_direction_for_every_feature(tiny_run):
    importance = pd.read_csv(tiny_run["explain_dir"] / "feature_importance.tsv", sep="\t")
    assert {"direction", "direction_kind", "direction_sign"} <= set(importance.columns)
    assert set(importance["direction_kind"]) <= {"carrier_difference", "rank_correlation"}
    assert set(importance["direction_sign"]) <= {"raises_risk", "lowers_risk", "unclear"}
    mutations = importance[importance["feature"].str.endswith("_mut")]
    assert (mutations["direction_kind"] == "carrier_difference").all()
    unused = importance[importance["mean_abs_attribution"] == 0]
    assert (unused["direction_sign"] == "unclear").all()
    signed = importance[importance["direction_sign"] != "unclear"]
    assert ((signed["direction"] > 0) == (signed["direction_sign"] == "raises_risk")).all()


def test_explain_patient_prints_what_the_files_hold(tiny_run, capsys):
    import json

    from multimodal.cli import main

    explain_dir = tiny_run["explain_dir"]
    contributions = pd.read_csv(explain_dir / "modality_contributions.tsv", sep="\t", index_col=0)
    patient = str(contributions["risk"].idxmax())
    assert main(["explain", "--patient", patient, "--json", "--top", "5", "--out", str(explain_dir)]) == 0
    summary = json.loads(capsys.readouterr().out)
    row = contributions.loc[patient]
    assert summary["risk"] == pytest.approx(row["risk"])
    assert summary["risk_percentile"] == pytest.approx(100.0) and summary["risk_group"] == "high"
    assert summary["response_prob"] == pytest.approx(row["response_prob"])
    for entry in summary["modalities"]:
        if entry["has_modality"]:
            assert entry["attribution_sum"] == pytest.approx(row[entry["modality"]], abs=1e-5)
            assert entry["group_contribution"] == pytest.approx(row[f"group_{entry['modality']}"])
        else:
            assert np.isnan(row[entry["modality"]])
    attr = md.read_zarr(str(explain_dir / "attributions.zarr"))
    everything = []
    for name, adata in attr.mod.items():
        if patient in adata.obs_names:
            i = adata.obs_names.get_loc(patient)
            everything += [
                (abs(float(a)), name, str(f), float(a), float(v))
                for f, a, v in zip(adata.var_names, adata.X[i], adata.layers["value"][i], strict=True)
            ]
    expected = sorted(everything, key=lambda r: -r[0])[:5]
    assert [(t["modality"], t["feature"]) for t in summary["top_attributions"]] == [(e[1], e[2]) for e in expected]
    for shown, e in zip(summary["top_attributions"], expected, strict=True):
        assert shown["attribution"] == pytest.approx(e[3]) and shown["value"] == pytest.approx(e[4])
    # the text view: same numbers; the explain directory found beside --model
    assert main(["explain", "--patient", patient, "--top", "5", "--model", str(tiny_run["model_dir"])]) == 0
    text = capsys.readouterr().out
    assert f"patient {patient}: predicted log relative hazard {row['risk']:.3f}" in text
    assert "high risk group" in text
    for e in expected:
        assert e[2][:28] in text and f"{e[3]:+.3f}" in text


def test_explain_unknown_patient_is_one_line_with_near_matches(tiny_run, capsys):
    from multimodal.cli import main

    assert main(["explain", "--patient", "P001", "--out", str(tiny_run["explain_dir"])]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "unknown patient 'P001'" in err and "near matches: P0001" in err
    assert main(["explain", "--json", "--out", str(tiny_run["explain_dir"])]) == 2
    assert "--json goes with --patient" in capsys.readouterr().err
    assert main(["explain", "--model", str(tiny_run["model_dir"]), "--out", "x"]) == 2
    assert "--store required" in capsys.readouterr().err


def test_explain_patient_refuses_attributions_of_another_model_run(tiny_run, tmp_path, capsys):
    import shutil

    from multimodal.cli import main

    other = tmp_path / "model"
    other.mkdir()
    for name in ("params.json", "folds.tsv", "predictions.tsv"):
        shutil.copy(tiny_run["model_dir"] / name, other / name)
    args = ["explain", "--patient", "P0001", "--out", str(tiny_run["explain_dir"])]
    assert main([*args, "--model", str(other), "--store", str(tiny_run["store"])]) == 0  # same run, same store
    capsys.readouterr()
    with open(other / "predictions.tsv", "a") as handle:
        handle.write("\n")  # another run's predictions
    assert main([*args, "--model", str(other)]) == 2
    assert "another model run" in capsys.readouterr().err


@pytest.mark.parametrize("method", ["gradient_shap", "deeplift"])
def test_other_methods_run_and_a_large_delta_is_flagged(tiny_run, tmp_path, method, caplog):
    from multimodal.explain import explain_cohort
    from multimodal.store import read_cohort_store

    mdata = read_cohort_store(tiny_run["store"])
    with caplog.at_level("WARNING", logger="multimodal.explain"):
        explain_cohort(
            mdata,
            tiny_run["model_dir"],
            tmp_path,
            method=method,
            n_samples=5,
            group_method="feature_ablation",
            bootstrap=50,
            delta_warning=1e-9,  # far below any real delta: must warn
            progress=False,
        )
    attr = md.read_zarr(str(tmp_path / "attributions.zarr"))
    uns = attr.uns["attribution"]
    assert uns["method"] == method and uns["group_method"] == "feature_ablation"
    assert uns["convergence_warning"].startswith("mean |convergence delta|")
    assert "exceeds" in caplog.text
    assert uns["convergence_delta_mean_abs"] > uns["convergence_threshold"]
    contributions = pd.read_csv(tmp_path / "modality_contributions.tsv", sep="\t", index_col=0)
    reference = pd.read_csv(tiny_run["explain_dir"] / "modality_contributions.tsv", sep="\t", index_col=0)
    np.testing.assert_allclose(contributions["risk"], reference["risk"], atol=1e-6)
    assert (tmp_path / "trust.json").is_file() and (tmp_path / "modality_value.tsv").is_file()


def test_default_delta_threshold_is_quiet_for_converged_integrated_gradients(tiny_run):
    attr = md.read_zarr(str(tiny_run["explain_dir"] / "attributions.zarr"))
    uns = attr.uns["attribution"]
    assert uns["delta_warning"] == 0.05 and uns["convergence_warning"] == ""
    assert uns["convergence_delta_mean_abs"] <= uns["convergence_threshold"]
