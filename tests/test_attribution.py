"""Attributions a researcher can act on: methods, modality groups, direction of effect, added value per
modality, trust checks. Unit tests on small models; the planted-truth tests on a demo-like simulated cohort
(300 patients, built once for the module, marked slow)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from multimodal.attribution.methods import MethodSettings, attribute_batch, attribute_groups, masked_risk
from multimodal.attribution.summaries import (
    bootstrap_c_drop,
    feature_direction,
    precision_at_k,
    rank_stability,
)
from multimodal.errors import MultimodalError
from multimodal.explain import risk_groups
from multimodal.model.fusion import FusionSurvivalModel


def _model_and_batch(seed: int = 0):
    torch.manual_seed(seed)
    model = FusionSurvivalModel({"a": 4, "b": 3, "c": 2}, hidden_dim=6, dropout=0.0, input_dropout=0.0).eval()
    inputs = [torch.randn(12, 4), torch.randn(12, 3), torch.randn(12, 2)]
    mask = torch.ones(12, 3, dtype=torch.bool)
    mask[[1, 5, 9], 1] = False  # three patients lack modality b
    inputs[1][~mask[:, 1]] = 0.0  # as the fold preprocessing leaves an absent modality
    return model, inputs, mask


@pytest.mark.parametrize("method", ["integrated_gradients", "gradient_shap", "deeplift"])
def test_each_method_attributes_every_modality_and_leaves_an_absent_one_at_zero(method):
    model, inputs, mask = _model_and_batch()
    background = [torch.randn(30, 4), torch.randn(30, 3), torch.randn(30, 2)]
    settings = MethodSettings(method=method, n_steps=32, n_samples=50, internal_batch_size=40)
    attributions, delta = attribute_batch(model, inputs, mask, settings=settings, background=background)
    assert [a.shape for a in attributions] == [(12, 4), (12, 3), (12, 2)]
    assert delta.shape == (12,)
    np.testing.assert_allclose(attributions[1][[1, 5, 9]], 0.0, atol=1e-7)
    assert all(np.abs(a).sum() > 0 for a in attributions)
    if method != "gradient_shap":  # zero baseline: complete up to the delta
        gap = masked_risk(model, inputs, mask) - masked_risk(model, [torch.zeros_like(x) for x in inputs], mask)
        total = sum(a.sum(axis=1) for a in attributions)
        np.testing.assert_allclose(total - delta, gap, atol=1e-5)  # Captum: delta = sum - gap
    if method == "integrated_gradients":
        assert np.abs(delta).max() < 1e-3


def test_internal_batches_give_the_same_integrated_gradients():
    model, inputs, mask = _model_and_batch(1)
    whole, delta = attribute_batch(model, inputs, mask, settings=MethodSettings(n_steps=16, internal_batch_size=10_000))
    for size in (16, 5):  # one step of every patient per internal batch; patients in chunks of 5
        part, part_delta = attribute_batch(
            model, inputs, mask, settings=MethodSettings(n_steps=16, internal_batch_size=size)
        )
        for a, b in zip(part, whole, strict=True):
            np.testing.assert_allclose(a, b, atol=1e-6)
        np.testing.assert_allclose(part_delta, delta, atol=1e-6)


def test_gradient_shap_needs_training_baselines_and_is_seeded():
    model, inputs, mask = _model_and_batch(2)
    settings = MethodSettings(method="gradient_shap", n_samples=8, seed=3)
    with pytest.raises(MultimodalError, match="training patients"):
        attribute_batch(model, inputs, mask, settings=settings)
    background = [torch.randn(20, 4), torch.randn(20, 3), torch.randn(20, 2)]
    first, _ = attribute_batch(model, inputs, mask, settings=settings, background=background)
    again, _ = attribute_batch(model, inputs, mask, settings=settings, background=background)
    other, _ = attribute_batch(
        model, inputs, mask, settings=MethodSettings(method="gradient_shap", n_samples=8, seed=4), background=background
    )
    np.testing.assert_array_equal(first[0], again[0])
    assert not np.allclose(first[0], other[0])


def test_unknown_methods_are_one_line_errors():
    with pytest.raises(MultimodalError, match="explain.method: unknown 'lime'"):
        MethodSettings(method="lime")
    with pytest.raises(MultimodalError, match="explain.group_method"):
        MethodSettings(group_method="kernel_shap")


@pytest.mark.parametrize("group_method", ["shapley_value_sampling", "feature_ablation"])
def test_modality_groups_remove_a_modality_by_its_mask(group_method):
    model, inputs, mask = _model_and_batch(3)
    settings = MethodSettings(group_method=group_method, group_samples=30)
    groups = attribute_groups(model, inputs, mask, settings=settings)
    assert groups.shape == (12, 3)
    np.testing.assert_allclose(groups[[1, 5, 9], 1], 0.0, atol=1e-7)  # lacking b: removing it changes nothing
    full = masked_risk(model, inputs, mask)
    if group_method == "shapley_value_sampling":  # efficient: sums to risk(x) - risk(no modality)
        none = masked_risk(model, inputs, torch.zeros_like(mask))
        np.testing.assert_allclose(groups.sum(axis=1), full - none, atol=1e-5)
    else:  # ablation of one group = the risk drop when that modality is masked
        for j in range(3):
            np.testing.assert_allclose(groups[:, j], full - masked_risk(model, inputs, mask, drop=j), atol=1e-5)


def test_direction_of_a_binary_feature_is_the_carrier_difference():
    rng = np.random.default_rng(0)
    carrier = rng.integers(0, 2, 200).astype(float)
    attribution = 0.3 * carrier - 0.1 + rng.normal(0, 0.05, 200)
    direction, kind, sign, p = feature_direction(carrier, attribution, binary=True)
    assert kind == "carrier_difference" and sign == "raises_risk" and p < 1e-6
    assert direction == pytest.approx(attribution[carrier == 1].mean() - attribution[carrier == 0].mean())
    assert feature_direction(carrier, -attribution, binary=True)[2] == "lowers_risk"
    assert feature_direction(np.zeros(200), attribution, binary=True)[2] == "unclear"  # no carrier


def test_direction_of_a_continuous_feature_is_the_rank_correlation():
    rng = np.random.default_rng(1)
    value = rng.normal(size=300)
    direction, kind, sign, _ = feature_direction(value, -np.exp(value), binary=False)
    assert kind == "rank_correlation" and sign == "lowers_risk" and direction == pytest.approx(-1.0)
    _, _, sign, p = feature_direction(value, rng.normal(size=300), binary=False)
    assert p > 0.001 or sign != "unclear"
    assert feature_direction(value, np.zeros(300), binary=False)[2] == "unclear"  # feature never used


def test_c_index_drop_has_a_paired_bootstrap_ci():
    rng = np.random.default_rng(2)
    n = 200
    eta = rng.normal(size=n)
    time = rng.exponential(np.exp(-eta))
    event = (rng.uniform(size=n) < 0.8).astype(float)
    c_full, c_masked, drop, low, high = bootstrap_c_drop(time, event, eta, rng.normal(size=n), n_boot=300, seed=1)
    assert c_full > 0.65 and abs(c_masked - 0.5) < 0.1
    assert drop == pytest.approx(c_full - c_masked)
    assert 0 < low < drop < high
    same = bootstrap_c_drop(time, event, eta, eta, n_boot=100, seed=1)
    assert same[2] == 0 and same[3] == 0 and same[4] == 0
    again = bootstrap_c_drop(time, event, eta, rng.normal(size=n), n_boot=300, seed=1)
    assert again[3] != low  # another masked risk, another interval (the seed fixes the draws, not the answer)


def test_rank_stability_and_precision_definitions():
    same = rank_stability({"m": [np.array([3.0, 2, 1, 0]), np.array([3.0, 2, 1, 0]), np.array([6.0, 4, 2, 0])]})
    assert same["m"]["spearman"] == pytest.approx(1.0) and same["m"]["top_overlap"] == 1.0
    flipped = rank_stability({"m": [np.array([3.0, 2, 1, 0.5]), np.array([0.5, 1, 2, 3.0])]}, top_k=2)
    assert flipped["m"]["spearman"] == pytest.approx(-1.0) and flipped["m"]["top_overlap"] == 0.0
    assert precision_at_k(["a", "x", "b", "y"], ["a", "b", "c"], k=2) == 0.5
    assert precision_at_k(["a", "x", "b"], ["a"], k=10) == 1.0


def test_risk_groups_are_tertiles():
    risk = np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, np.nan])
    percentile, group = risk_groups(risk)
    assert list(group) == ["low", "low", "intermediate", "intermediate", "high", "high", ""]
    np.testing.assert_allclose(percentile[:6], 100 * np.arange(1, 7) / 6)
    assert np.isnan(percentile[6])


# --- a demo-like cohort with a planted truth ------------------------------------------------------


@pytest.fixture(scope="module")
def demo_like(tmp_path_factory):
    """300 simulated patients (the demo's size, smaller images and gene lists) -> store -> 3-fold model ->
    explain with the shipped defaults (Integrated Gradients, Shapley value sampling over modalities)."""
    from multimodal.explain import explain_cohort
    from multimodal.ingest.expression import expression_matrix, read_counts_table
    from multimodal.ingest.imaging import imaging_matrix
    from multimodal.ingest.samples import read_samples
    from multimodal.ingest.variants import mutation_matrix
    from multimodal.model.train import TrainParams, cross_validate
    from multimodal.simulate import SimulationParams, simulate_cohort
    from multimodal.store import build_cohort_store, read_cohort_store

    root = tmp_path_factory.mktemp("demo_like")
    cohort = root / "cohort"
    simulate_cohort(
        cohort,
        params=SimulationParams(n_patients=300, seed=7, image_size=16, n_expression_genes=300, n_panel_genes=120),
    )
    samples = read_samples(cohort / "samples.tsv")
    chunks = {}
    for name, adata in (
        ("variants", mutation_matrix(samples, progress=False)),
        ("expression", expression_matrix(read_counts_table(cohort / "expression_counts.tsv"), samples)),
        ("imaging", imaging_matrix(samples, progress=False)),
    ):
        path = root / f"{name}.h5ad"
        adata.write_h5ad(path)
        chunks[name] = [path]
    store = build_cohort_store(
        root / "cohort.zarr",
        clinical_path=cohort / "clinical.tsv",
        samples_path=cohort / "samples.tsv",
        modality_chunks=chunks,
        cohort_files=[cohort / "expression_counts.tsv"],
    )
    mdata = read_cohort_store(store)
    params = TrainParams(folds=3, epochs=30, max_features={"expression": 20, "variants": 20, "imaging": 10})
    cross_validate(mdata, root / "model", params=params, store_path=str(store), progress=False)
    explain_cohort(mdata, root / "model", root / "explain", n_steps=32, bootstrap=500, progress=False)
    truth = json.loads((cohort / "truth.json").read_text())
    return {"root": root, "explain": root / "explain", "truth": truth, "mdata": mdata}


@pytest.mark.slow
def test_planted_risk_raising_features_have_a_positive_direction(demo_like):
    importance = pd.read_csv(demo_like["explain"] / "feature_importance.tsv", sep="\t")
    truth = demo_like["truth"]
    planted = {
        "variants": [f"{g}_mut" for g in truth["driver_genes"]],  # every planted effect raises the hazard
        "expression": truth["expression_program"]["genes"],
        "imaging": [truth["imaging"]["planted_feature"]],
    }
    assert all(v > 0 for v in truth["driver_genes"].values()) and truth["expression_program"]["log_hazard_per_sd"] > 0
    for modality, features in planted.items():
        rows = importance[(importance["modality"] == modality) & importance["feature"].isin(features)]
        used = rows[rows["mean_abs_attribution"] > 0]
        assert len(used) >= 1, modality
        assert (used["direction"] > 0).all(), used[["feature", "direction"]]
        assert (used["direction_sign"] == "raises_risk").all(), used[["feature", "direction_sign", "direction_p"]]
        kinds = set(used["direction_kind"])
        assert kinds == ({"carrier_difference"} if modality == "variants" else {"rank_correlation"})


@pytest.mark.slow
def test_planted_precision_at_10_per_modality(demo_like):
    trust = json.loads((demo_like["explain"] / "trust.json").read_text())
    precision = trust["planted_precision_at_10"]
    assert set(precision) == {"variants", "expression", "imaging"}
    assert trust["planted_source"].endswith("truth.json")  # found through the store's provenance
    importance = pd.read_csv(demo_like["explain"] / "feature_importance.tsv", sep="\t")
    for modality, entry in precision.items():
        top = importance[importance["modality"] == modality].sort_values("rank")["feature"].head(10)
        recomputed = len(set(top) & set(entry["planted"])) / min(10, len(entry["planted"]))
        assert entry["precision"] == pytest.approx(recomputed)
        assert entry["precision"] >= 0.8, (modality, entry)


@pytest.mark.slow
def test_randomised_model_attributions_differ(demo_like):
    trust = json.loads((demo_like["explain"] / "trust.json").read_text())
    randomisation = trust["randomisation"]
    assert randomisation["passed"] is True
    assert randomisation["spearman"] < 0.5
    assert len(randomisation["per_fold"]) == 3
    stability = trust["rank_stability"]
    assert set(stability) >= {"variants", "expression", "imaging"}
    assert all(-1 <= s["spearman"] <= 1 and 0 <= s["top_overlap"] <= 1 for s in stability.values())


@pytest.mark.slow
def test_masking_a_planted_modality_lowers_the_c_index(demo_like):
    value = pd.read_csv(demo_like["explain"] / "modality_value.tsv", sep="\t").set_index("modality")
    assert list(value.columns[:6]) == [
        "c_index_full",
        "c_index_masked",
        "drop",
        "drop_ci_low",
        "drop_ci_high",
        "shapley_share",
    ]
    for modality in ("expression", "imaging"):
        row = value.loc[modality]
        assert row["drop"] > 0 and row["drop_ci_low"] > 0, row
        assert row["drop"] == pytest.approx(row["c_index_full"] - row["c_index_masked"])
    assert value["shapley_share"].sum() == pytest.approx(1.0)
    predictions = pd.read_csv(demo_like["root"] / "model" / "predictions.tsv", sep="\t")
    from multimodal.model.metrics import harrell_c

    pooled = harrell_c(*(predictions[c].to_numpy(float) for c in ("time", "event", "risk")))
    np.testing.assert_allclose(value["c_index_full"], pooled, atol=1e-6)


def test_ig_benchmark_runs_and_its_two_paths_agree(capsys):
    """benchmarks/ig_benchmark.py at toy size: prints the ratio, and the batched and per-patient paths give the
    same attributions (the timing itself is never asserted)."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "ig_benchmark.py"
    spec = importlib.util.spec_from_file_location("ig_benchmark", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.main(["--patients", "6", "--features", "40", "--steps", "8", "--internal-batch-size", "20", "--target", "0"])
    out = capsys.readouterr().out
    assert "6 patients x 40 features x 8 steps" in out and "ratio" in out
    difference = float(out.split("max |difference| ")[1].split(";")[0])
    assert difference < 1e-5
