"""Treatment benefit: counterfactual risk under every arm, the benefit sign, C-for-benefit, and a planted
arm x KRAS interaction that the model must find (against a Cox model with arm interactions and the oracle)."""

import json
import shutil
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch

from multimodal.errors import MultimodalError
from multimodal.model.benefit import (
    TREATMENT_MODALITY,
    TreatmentSpec,
    add_benefit_columns,
    benefit_calibration,
    c_for_benefit,
    counterfactual_arrays,
    counterfactual_risks,
    with_treatment,
)
from multimodal.model.data import CohortArrays, FoldPreprocessor
from multimodal.model.fusion import FusionNet, FusionSurvivalModel
from multimodal.model.train import TrainParams

SPEC = TreatmentSpec(column="arm", reference="standard")


def small_cohort(n=40, seed=0):
    """Clinical covariates with the arm one-hot (as the clinical ingest writes them) and a mutation modality."""
    rng = np.random.default_rng(seed)
    arm = np.where(rng.random(n) < 0.5, "experimental", "standard").astype(object)
    arm[3] = None  # one patient without a recorded arm
    clinical = np.column_stack([rng.normal(60, 8, n), arm == "experimental", arm == "standard"]).astype(float)
    variants = (rng.random((n, 3)) < 0.4).astype(float)
    arrays = CohortArrays(
        patients=[f"P{i}" for i in range(n)],
        modalities=["clinical", "variants"],
        features={"clinical": ["age", "arm=experimental", "arm=standard"], "variants": ["KRAS", "TP53", "EGFR"]},
        x={"clinical": clinical, "variants": variants},
        present={"clinical": np.ones(n, bool), "variants": rng.random(n) < 0.8},
        time=rng.exponential(10, n) + 0.1,
        event=(rng.random(n) < 0.7).astype(float),
        response=np.full(n, np.nan),
        site=np.array(["s"] * n),
    )
    obs = pd.DataFrame({"arm": arm}, index=arrays.patients)
    return arrays, obs


def test_the_arm_leaves_the_clinical_features_and_becomes_its_own_input():
    arrays, obs = small_cohort()
    out, levels = with_treatment(arrays, obs, SPEC)
    assert levels == ["standard", "experimental"]
    assert out.features["clinical"] == ["age"] and out.x["clinical"].shape[1] == 1
    assert out.modalities == ["clinical", "variants", TREATMENT_MODALITY]
    assert out.features[TREATMENT_MODALITY] == ["arm=experimental"]
    expected = (obs["arm"] == "experimental").to_numpy(float)
    known = obs["arm"].notna().to_numpy()
    assert np.array_equal(out.x[TREATMENT_MODALITY][known, 0], expected[known])
    assert not out.present[TREATMENT_MODALITY][3] and np.isnan(out.x[TREATMENT_MODALITY][3]).all()
    assert np.array_equal(out.x["variants"], arrays.x["variants"])  # other modalities untouched


def test_counterfactual_prediction_changes_only_the_arm_input():
    arrays, obs = small_cohort()
    arrays, levels = with_treatment(arrays, obs, SPEC)
    rows = np.arange(len(arrays.patients))
    pre = FoldPreprocessor(max_features={}).fit(arrays, rows)
    factual, factual_mask = pre.transform(arrays, rows)
    j = arrays.modalities.index(TREATMENT_MODALITY)
    built = {lv: pre.transform(counterfactual_arrays(arrays, lv, levels), rows) for lv in levels}
    for level, (inputs, mask) in built.items():
        for i, (x, y) in enumerate(zip(inputs, factual, strict=True)):
            if i != j:
                assert torch.equal(x, y), level  # every other input exactly as measured
        assert np.array_equal(np.delete(mask.numpy(), j, 1), np.delete(factual_mask.numpy(), j, 1))
        assert mask[:, j].all()  # every patient gets an arm, the one without a recorded arm too
    assert not torch.equal(built["standard"][0][j], built["experimental"][0][j])

    torch.manual_seed(0)
    model = FusionSurvivalModel(
        {name: len(pre.selected[name]) for name in arrays.modalities}, treatment_modality=TREATMENT_MODALITY
    ).eval()
    risks = counterfactual_risks(model, pre, arrays, rows, levels)
    with torch.no_grad():
        observed = model(*factual, mask=factual_mask)[0].numpy()
    arm = obs["arm"].to_numpy()
    for i, level in enumerate(levels):  # the counterfactual under the arm received is the factual prediction
        assert np.allclose(risks[arm == level, i], observed[arm == level], atol=1e-6)

    # the arm enters the risk only through the arm term: a model whose arm term is zero sees no difference
    with torch.no_grad():
        model.net.treatment_effect.weight.zero_()
        model.net.treatment_effect.bias.zero_()
        model.net.treatment_linear.weight.zero_()
    flat = counterfactual_risks(model, pre, arrays, rows, levels)
    assert np.allclose(flat[:, 0], flat[:, 1])


def test_benefit_is_risk_under_the_reference_minus_risk_under_the_arm():
    frame = pd.DataFrame(index=range(2))
    add_benefit_columns(frame, np.array([[1.0, 0.2], [0.0, 0.5]]), ["standard", "experimental"])
    assert frame["risk_standard"].tolist() == [1.0, 0.0] and frame["risk_experimental"].tolist() == [0.2, 0.5]
    assert np.allclose(frame["benefit"], [0.8, -0.5])  # positive: the experimental arm lowers the hazard
    assert np.allclose(frame["benefit_experimental"], frame["benefit"])

    # a model whose experimental arm multiplies the hazard by exp(-0.7) for everyone: benefit +0.7 for all
    arrays, obs = small_cohort()
    arrays, levels = with_treatment(arrays, obs, SPEC)
    rows = np.arange(len(arrays.patients))
    pre = FoldPreprocessor(max_features={}).fit(arrays, rows)
    torch.manual_seed(0)
    net = FusionNet(
        {name: len(pre.selected[name]) for name in arrays.modalities},
        hidden_dim=4,
        dropout=0,
        input_dropout=0,
        treatment_modality=TREATMENT_MODALITY,
    ).eval()
    scale = float(pre.scale[TREATMENT_MODALITY][0])  # the arm input is fold-scaled like any feature
    with torch.no_grad():
        net.treatment_effect.weight.zero_()
        net.treatment_linear.weight.zero_()
        net.treatment_effect.bias.fill_(-0.7 * scale)
    risks = counterfactual_risks(net, pre, arrays, rows, levels)
    assert np.allclose(risks[:, 0] - risks[:, 1], 0.7, atol=1e-5)


def test_c_for_benefit_matches_a_hand_computed_example():
    # treated A-D and controls a, b, x, c, d (benefit, time, event)
    treated = {"A": (0.1, 12, 1), "B": (0.5, 4, 1), "C": (0.9, 30, 0), "D": (1.3, 2, 0)}
    control = {"a": (0.2, 6, 1), "b": (0.6, 9, 1), "x": (0.7, 1, 1), "c": (1.0, 10, 1), "d": (1.4, 7, 1)}
    rows = list(treated.values()) + list(control.values())
    benefit, time, event = (np.array([r[k] for r in rows], dtype=float) for k in range(3))
    is_treated = np.array([True] * 4 + [False] * 5)
    # matched by rank, the 5 controls thinned to 4 at ranks 0, 1, 3, 4 (x dropped): pairs Aa, Bb, Cc, Dd with
    # predicted benefit 0.15, 0.55, 0.95, 1.35 and observed +1 (a died first), -1 (B died first), +1 (c died,
    # C censored later), unknown (D censored before d's death: left out). Pairs of pairs with different
    # observed benefit: (Aa > Bb) discordant (0.15 < 0.55), (Cc > Bb) concordant: C = 1/2.
    result = c_for_benefit(benefit, is_treated, time, event)
    assert result == {"c_for_benefit": 0.5, "n_pairs": 4, "n_informative_pairs": 3}
    # reversing the predicted benefit reverses the concordance
    assert c_for_benefit(-benefit, is_treated, time, event)["c_for_benefit"] == 0.5
    swap = benefit.copy()
    swap[[0, 1]] = swap[[1, 0]]  # A predicted 0.5, B 0.1: pairs Ba (0.15, B died first: -1), Ab (0.55, +1),
    # Cc (0.95, +1): both comparisons concordant
    assert c_for_benefit(swap, is_treated, time, event)["c_for_benefit"] == 1.0


def test_calibration_of_benefit_groups_by_predicted_benefit():
    rng = np.random.default_rng(0)
    n = 600
    modifier = rng.random(n) < 0.5
    treated = rng.random(n) < 0.5
    eta = -1.5 * (treated & modifier)
    time = rng.exponential(np.exp(-eta))
    event = np.ones(n)
    rows = benefit_calibration(1.5 * modifier + rng.normal(0, 0.01, n), treated, time, event, at=1.0)
    assert [r["group"] for r in rows] == [1, 2, 3] and sum(r["n"] for r in rows) == n
    assert abs(rows[0]["observed_minus_log_hr"]) < 0.35 and rows[2]["observed_minus_log_hr"] > 1.0
    assert rows[2]["km_difference"] > 0.2


def test_treatment_settings_are_checked_in_one_line(tmp_path):
    with pytest.raises(MultimodalError, match="model.treatment.reference must be given"):
        TrainParams(treatment={"column": "arm"})
    with pytest.raises(MultimodalError, match="unknown setting"):
        TrainParams(treatment={"column": "arm", "reference": "standard", "arms": 2})
    assert TrainParams(treatment={"column": "arm", "reference": "standard"}).treatment["truth"] is None
    arrays, obs = small_cohort()
    with pytest.raises(MultimodalError, match="'placebo' is not a level of column 'arm'"):
        with_treatment(arrays, obs, TreatmentSpec(column="arm", reference="placebo"))
    with pytest.raises(MultimodalError, match="no column 'therapy'"):
        with_treatment(arrays, obs, TreatmentSpec(column="therapy", reference="standard"))


def test_without_treatment_the_network_and_outputs_are_as_before(tiny_run):
    model = FusionSurvivalModel({"a": 3, "b": 2})
    assert not hasattr(model.net, "treatment_effect") and model.net.treatment_index is None
    assert model.net.feature_modalities == model.net.modalities
    metrics = json.loads((tiny_run["model_dir"] / "metrics.json").read_text())
    pred = pd.read_csv(tiny_run["model_dir"] / "predictions.tsv", sep="\t")
    assert "benefit" not in metrics
    assert not [c for c in pred.columns if c.startswith("benefit") or c in ("arm", "has_treatment")]
    assert json.loads((tiny_run["model_dir"] / "params.json").read_text())["train"]["treatment"] is None


def planted_store(root, *, n, seed=3):
    """clinical + variants of a simulated cohort with a strong arm x KRAS interaction (no images, few genes)."""
    from multimodal.ingest.samples import read_samples
    from multimodal.ingest.variants import mutation_matrix
    from multimodal.simulate import SimulationParams, simulate_cohort
    from multimodal.store import build_cohort_store, read_cohort_store

    simulate_cohort(
        root,
        params=SimulationParams(
            n_patients=n,
            seed=seed,
            image_size=16,
            n_expression_genes=100,
            n_panel_genes=60,
            imaging_missing_fraction=1.0,
            arm_kras_interaction=-1.5,
        ),
    )
    mutation_matrix(read_samples(root / "samples.tsv"), progress=False).write_h5ad(root / "variants.h5ad")
    store = build_cohort_store(
        root / "cohort.zarr",
        clinical_path=root / "clinical.tsv",
        samples_path=root / "samples.tsv",
        modality_chunks={"variants": [root / "variants.h5ad"]},
        cohort_files=[],
        config={},
    )
    return read_cohort_store(store)


def test_planted_arm_by_kras_interaction_is_found(tmp_path):
    """600 patients, experimental arm x KRAS log-hazard -1.5: the true benefiters are the KRAS-mutant patients.
    The oracle's AUROC is 1 (benefit is a function of KRAS); the model must reach 0.7 on held-out patients."""
    from multimodal.model.train import cross_validate

    mdata = planted_store(tmp_path / "cohort", n=600)
    params = TrainParams(
        folds=3,
        bootstrap=20,
        max_features={"variants": 10},
        treatment={"column": "arm", "reference": "standard", "truth": str(tmp_path / "cohort" / "truth.json")},
    )
    metrics = cross_validate(mdata, tmp_path / "model", params=params, store_path="store", progress=False)
    entry = metrics["benefit"]["by_arm"]["experimental"]
    truth = entry["truth"]
    assert truth["auroc_oracle"] == 1.0
    assert truth["auroc_model"] > 0.7, truth
    assert truth["auroc_cox_interaction"] > 0.7, truth
    assert 0 <= entry["model"]["c_for_benefit"] <= 1 and len(entry["model"]["calibration"]) == 3
    assert "randomised" in metrics["benefit"]["assumption"] or "random" in metrics["benefit"]["assumption"]
    pred = pd.read_csv(tmp_path / "model" / "predictions.tsv", sep="\t")
    assert np.allclose(pred["benefit"], pred["risk_standard"] - pred["risk_experimental"])
    assert set(pred["arm"]) == {"standard", "experimental"}


def test_a_treatment_run_on_the_pipeline_store_and_its_who_benefits_section(tiny_run, tmp_path):
    """The arm of the clinical ingest (one-hot arm=... covariates) becomes the treatment input; the report shows
    the benefit distribution, calibration table, C-for-benefit and the assumption."""
    from multimodal.model.train import cross_validate
    from multimodal.report.html import _benefit_section, render_report
    from multimodal.store import read_cohort_store

    mdata = read_cohort_store(tiny_run["store"])
    params = TrainParams(
        folds=3,
        epochs=5,
        bootstrap=10,
        max_features={"expression": 5, "variants": 5},
        treatment={"column": "arm", "reference": "standard", "truth": str(tiny_run["truth"])},
    )
    metrics = cross_validate(mdata, tmp_path / "model", params=params, store_path="store", progress=False)
    pre = np.load(tmp_path / "model" / "fold_0" / "preprocessing.npz")
    assert not [f for f in pre["clinical/features"] if str(f).startswith("arm")]
    assert list(pre["treatment/features"]) == ["arm=experimental"]
    pred = pd.read_csv(tmp_path / "model" / "predictions.tsv", sep="\t")
    for column in ("arm", "risk_standard", "risk_experimental", "benefit", "benefit_cox_interaction"):
        assert pred[column].notna().all(), column
    observed = np.where(pred["arm"] == "standard", pred["risk_standard"], pred["risk_experimental"])
    assert np.allclose(observed, pred["risk"], atol=1e-5)  # the counterfactual under the arm received is factual
    assert metrics["benefit"]["by_arm"]["experimental"]["truth"]["auroc_oracle"] is not None
    # explained and reported end to end: the arm input is rebuilt from obs, attributions cover it
    from multimodal.explain import explain_cohort

    explain_cohort(mdata, tmp_path / "model", tmp_path / "explain", n_steps=4, progress=False)
    importance = pd.read_csv(tmp_path / "explain" / "feature_importance.tsv", sep="\t")
    assert "arm=experimental" in set(importance["feature"])
    full = render_report(store=tiny_run["store"], model_dir=tmp_path / "model", explain_dir=tmp_path / "explain")
    assert '<section id="benefit">' in full
    run = SimpleNamespace(metrics=json.loads((tmp_path / "model" / "metrics.json").read_text()), predictions=pred)
    html = _benefit_section(run)
    assert "<img" in html and 'id="benefit-calibration-experimental"' in html and "C-for-benefit" in html
    assert "assigned at random" in html and "reference arm minus under that arm" in html
    assert "AUROC for true benefiters, oracle" in html
    default = render_report(
        store=tiny_run["store"], model_dir=tiny_run["model_dir"], explain_dir=tiny_run["explain_dir"]
    )
    assert '<section id="benefit">' not in default and "Who benefits" not in default
    with_benefit = tmp_path / "default_with_benefit"  # a run whose metrics.json has a benefit section shows it
    shutil.copytree(tiny_run["model_dir"], with_benefit)
    (with_benefit / "metrics.json").write_text(
        json.dumps(
            json.loads((tiny_run["model_dir"] / "metrics.json").read_text()) | {"benefit": run.metrics["benefit"]}
        )
    )
    shown = render_report(store=tiny_run["store"], model_dir=with_benefit, explain_dir=tiny_run["explain_dir"])
    assert '<section id="benefit">\n<h2>Who benefits</h2>' in shown and 'href="#benefit"' in shown
    assert shown.index('id="risk-groups"') < shown.index('id="benefit"') < shown.index('id="features"')


def test_the_config_schema_takes_a_treatment_and_defaults_to_none():
    from multimodal.config import validate_config

    base = {"samples": "s.tsv", "clinical": "c.tsv"}
    assert validate_config(dict(base))["model"].get("treatment") is None
    config = validate_config(dict(base, model={"treatment": {"column": "arm", "reference": "standard"}}))
    assert TrainParams.from_config(config["model"]).treatment == {
        "column": "arm",
        "reference": "standard",
        "truth": None,
    }
    with pytest.raises(MultimodalError, match="'reference' is a required property"):
        validate_config(dict(base, model={"treatment": {"column": "arm"}}))


def test_interaction_scores_find_the_effect_modifier_as_a_cox_fit_does():
    """The arm x feature Wald z of each feature (own Newton-Raphson Cox fit) equals lifelines' for the same model,
    and ranks the planted effect modifier first, ahead of a feature with a main effect only."""
    from lifelines import CoxPHFitter

    from multimodal.model.benefit import interaction_scores

    rng = np.random.default_rng(4)
    n = 500
    x = rng.normal(size=(n, 6))
    arm = (rng.random(n) < 0.5).astype(float)[:, None]
    eta = 0.8 * x[:, 0] - 1.0 * arm[:, 0] * x[:, 3]  # x0: prognostic only; x3: modifies the arm's effect
    time = rng.exponential(np.exp(-eta))
    event = (rng.random(n) < 0.8).astype(float)
    scores = interaction_scores(x, arm, time, event)
    assert int(np.argmax(scores)) == 3 and scores[3] > 5 and scores[0] < 3
    for j in (0, 3):
        frame = pd.DataFrame({"arm": arm[:, 0], "x": x[:, j], "arm_x": arm[:, 0] * x[:, j], "t": time, "e": event})
        fit = CoxPHFitter().fit(frame, duration_col="t", event_col="e")
        assert scores[j] == pytest.approx(abs(fit.summary.loc["arm_x", "z"]), rel=0.02)


def test_the_effect_modifier_head_reads_only_its_modifiers():
    """With effect_modifiers the arm's effect (benefit) depends on those features only: its gradient with respect
    to every other input is exactly zero, and the rest of the network is as without a treatment head."""
    torch.manual_seed(0)
    dims = {"clinical": 2, "variants": 3, TREATMENT_MODALITY: 1}
    net = FusionNet(
        dims, hidden_dim=4, dropout=0, input_dropout=0, treatment_modality=TREATMENT_MODALITY, effect_modifiers=[3]
    ).eval()  # flat index 3: the second variant
    with torch.no_grad():
        net.treatment_effect.weight.fill_(-0.9)
    inputs = [torch.randn(5, 2, requires_grad=True), torch.randn(5, 3, requires_grad=True)]
    mask = torch.ones(5, 3, dtype=torch.bool)
    treated = net(*inputs, torch.ones(5, 1), mask=mask)[0]
    control = net(*inputs, torch.zeros(5, 1), mask=mask)[0]
    (control - treated).sum().backward()
    assert torch.all(inputs[0].grad == 0)
    assert torch.all(inputs[1].grad[:, [0, 2]] == 0) and torch.all(inputs[1].grad[:, 1] != 0)
    assert np.allclose(
        (control - treated).detach().numpy(),
        -(net.treatment_effect.bias.item() - 0.9 * inputs[1][:, 1].detach().numpy()),
        atol=1e-6,
    )


@pytest.mark.slow
@pytest.mark.parametrize("seed", [4, 5])
def test_the_effect_modifier_head_recovers_benefiters_better_than_cox_with_interactions(tmp_path, seed):
    """The planted arm x KRAS interaction (600 patients, log-hazard -1.5) on simulation seeds where the default
    head trails the Cox model with arm interactions: with model.effect_modifiers 3 the model's AUROC for the true
    benefiters beats that reference's on the very same folds, fitted in the same run."""
    from multimodal.model.train import cross_validate

    mdata = planted_store(tmp_path / "cohort", n=600, seed=seed)
    params = TrainParams(
        folds=3,
        bootstrap=20,
        max_features={"variants": 10},
        effect_modifiers=3,
        treatment={"column": "arm", "reference": "standard", "truth": str(tmp_path / "cohort" / "truth.json")},
    )
    metrics = cross_validate(mdata, tmp_path / "model", params=params, store_path="store", progress=False)
    truth = metrics["benefit"]["by_arm"]["experimental"]["truth"]
    # measured (2026-12-02): seed 4 0.869 vs 0.781, seed 5 0.924 vs 0.886; the default head 0.781 / 0.833
    assert truth["auroc_model"] > truth["auroc_cox_interaction"] + 0.02, truth
    modifiers = metrics["benefit"]["effect_modifiers_per_fold"]
    assert sorted(modifiers) == ["0", "1", "2"] and all(len(m) == 3 for m in modifiers.values())
    assert "effect modifiers" in metrics["benefit"]["head"]
