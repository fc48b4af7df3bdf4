"""Quality-of-life tasks (continuous and ordinal) and the discrete-time survival option, end to end.

The simulator plants a continuous QoL score (driven by the expression program and tumour size) and an ordinal
QoL grade (driven by the program, STK11 and tumour size); a store of its clinical table, variants and
expression (no images, to stay fast) goes through ingest and cross-validation, and each head must rank the
held-out patients' values.
"""

import json

import numpy as np
import pandas as pd
import pytest

from multimodal.errors import MultimodalError
from multimodal.ingest.clinical import ClinicalSpec, read_clinical
from multimodal.model.metrics import continuous_metrics, ordinal_metrics
from multimodal.model.train import TrainParams, cross_validate

QOL = (("qol_score", "continuous"), ("qol_grade", "ordinal"))


def qol_store(root, *, n, qol_columns=QOL):
    """clinical + variants + expression of a simulated cohort (no images), QoL columns as given."""
    from multimodal.ingest.expression import expression_matrix, read_counts_table
    from multimodal.ingest.samples import read_samples
    from multimodal.ingest.variants import mutation_matrix
    from multimodal.simulate import SimulationParams, simulate_cohort
    from multimodal.store import build_cohort_store, read_cohort_store

    if not (root / "clinical.tsv").exists():
        simulate_cohort(
            root,
            params=SimulationParams(
                n_patients=n,
                seed=5,
                image_size=16,
                n_expression_genes=120,
                n_panel_genes=60,
                imaging_missing_fraction=1.0,
            ),
        )
        samples = read_samples(root / "samples.tsv")
        mutation_matrix(samples, progress=False).write_h5ad(root / "variants.h5ad")
        expression_matrix(read_counts_table(root / "expression_counts.tsv"), samples).write_h5ad(
            root / "expression.h5ad"
        )
    name = "cohort_qol.zarr" if qol_columns else "cohort_plain.zarr"
    store = build_cohort_store(
        root / name,
        clinical_path=root / "clinical.tsv",
        samples_path=root / "samples.tsv",
        modality_chunks={"variants": [root / "variants.h5ad"], "expression": [root / "expression.h5ad"]},
        clinical_spec=ClinicalSpec(qol_columns=tuple(qol_columns)),
        cohort_files=[],
        config={},
    )
    return read_cohort_store(store)


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    return tmp_path_factory.mktemp("qol_cohort")


PARAMS = {"folds": 3, "bootstrap": 0, "baseline": False, "max_features": {"expression": 15, "variants": 10}}


@pytest.mark.slow
def test_each_qol_head_learns_its_planted_signal_on_held_out_patients(cohort, tmp_path):
    mdata = qol_store(cohort, n=300)
    assert dict(mdata.uns["tasks"]) == dict(QOL)
    n_missing = int(mdata.obs["qol_score"].isna().sum())
    assert n_missing > 0  # the simulator leaves some values out: kept, masked, counted
    exclusions = mdata.uns["provenance"]["exclusions"]["cohort"]
    assert exclusions["patients_without_qol_score"] == n_missing

    params = TrainParams(**PARAMS, task_weights={"qol_score": 1.0, "qol_grade": 1.0})
    metrics = cross_validate(mdata, tmp_path / "model", params=params, store_path="store", progress=False)
    tasks = metrics["tasks"]
    assert set(tasks) == {"qol_score", "qol_grade"}
    score, grade = tasks["qol_score"], tasks["qol_grade"]
    assert score["kind"] == "continuous" and grade["kind"] == "ordinal"
    assert score["pooled"]["spearman"] > 0.3, score["pooled"]
    assert grade["pooled"]["spearman"] > 0.3, grade["pooled"]
    assert grade["pooled"]["quadratic_kappa"] > 0.2, grade["pooled"]
    assert score["pooled"]["n_missing"] == n_missing and score["pooled"]["n"] == len(mdata.obs) - n_missing
    assert len(score["folds"]) == 3 and all(np.isfinite(f["rmse"]) for f in score["folds"])
    assert metrics["pooled_out_of_fold"]["c_index"] > 0.58  # survival still learned beside the QoL heads (no images)

    pred = pd.read_csv(tmp_path / "model" / "predictions.tsv", sep="\t")
    assert len(pred) == len(mdata.obs)  # patients without a QoL value are not dropped
    for column in ("qol_score", "pred_qol_score", "qol_grade", "pred_qol_grade", "pred_qol_grade_expected"):
        assert column in pred
    assert pred["pred_qol_score"].notna().all()  # predicted for everyone, measured or not
    assert set(pred["pred_qol_grade"].unique()) <= {0.0, 1.0, 2.0, 3.0}
    # the metrics are those of the table: recomputed from predictions.tsv
    again = continuous_metrics(pred["qol_score"].to_numpy(), pred["pred_qol_score"].to_numpy())
    assert again["spearman"] == pytest.approx(score["pooled"]["spearman"])
    saved = json.loads((tmp_path / "model" / "metrics.json").read_text())
    assert saved["tasks"]["qol_grade"]["pooled"]["accuracy"] == pytest.approx(grade["pooled"]["accuracy"])

    # with the QoL tasks weighted 0 they are not trained: no head, no column
    params = TrainParams(**(PARAMS | {"epochs": 3}), task_weights={"qol_score": 0.0, "qol_grade": 0.0})
    metrics = cross_validate(mdata, tmp_path / "none", params=params, store_path="store", progress=False)
    assert "tasks" not in metrics
    assert "pred_qol_score" not in pd.read_csv(tmp_path / "none" / "predictions.tsv", sep="\t")


@pytest.mark.slow
def test_an_absent_qol_column_is_not_trained_and_discrete_time_survival_ranks_like_cox(cohort, tmp_path):
    mdata = qol_store(cohort, n=300, qol_columns=())
    assert "tasks" not in mdata.uns and "qol_score" not in mdata.obs
    params = TrainParams(**PARAMS, task_weights={"qol_score": 1.0})
    cox = cross_validate(mdata, tmp_path / "cox", params=params, store_path="store", progress=False)
    assert "tasks" not in cox
    assert any("qol_score" in note and "not trained" in note for note in cox["notes"])
    assert not [c for c in pd.read_csv(tmp_path / "cox" / "predictions.tsv", sep="\t") if "qol" in c]

    params = TrainParams(**PARAMS, survival_loss="discrete", time_bins=8)
    discrete = cross_validate(mdata, tmp_path / "discrete", params=params, store_path="store", progress=False)
    c_cox, c_discrete = cox["pooled_out_of_fold"]["c_index"], discrete["pooled_out_of_fold"]["c_index"]
    assert c_cox > 0.58 and c_discrete > 0.58 and c_discrete > c_cox - 0.04, (c_cox, c_discrete)
    # the fold's cuts are saved with its model and are quantiles of that fold's training event times
    import torch

    checkpoint = torch.load(tmp_path / "discrete" / "fold_0" / "model_0.ckpt", map_location="cpu", weights_only=False)
    cuts = checkpoint["hyper_parameters"]["time_cuts"]
    assert 2 <= len(cuts) <= 8 and cuts == sorted(cuts)
    folds = pd.read_csv(tmp_path / "discrete" / "folds.tsv", sep="\t")
    assert set(folds.columns) >= {"patient_id"}


def test_qol_columns_are_validated_at_ingest(tmp_path):
    path = tmp_path / "clinical.tsv"
    path.write_text(
        "patient_id\tos_time\tos_event\tresponse\tage\tsex\tarm\tsite\tqol_score\tqol_grade\n"
        "P1\t10\t1\t1\t60\tf\ta\ts\t55.5\t2\n"
        "P2\t12\t0\t0\t61\tm\tb\ts\t\t\n"
        "P3\t14\t1\t0\t62\tm\tb\ts\t70\t1.5\n"
    )
    spec = ClinicalSpec(qol_columns=QOL)
    with pytest.raises(MultimodalError, match=r"line 4: ordinal quality-of-life column 'qol_grade' value '1.5'"):
        read_clinical(path, spec=spec)
    path.write_text(path.read_text().replace("\t1.5\n", "\t0\n"))
    clinical = read_clinical(path, spec=spec)
    assert clinical["qol_score"].tolist()[0] == 55.5 and np.isnan(clinical["qol_score"].iloc[1])
    assert clinical["qol_grade"].tolist()[::2] == [2.0, 0.0]
    with pytest.raises(MultimodalError, match="qol_columns.age: the column is already used as a covariate"):
        read_clinical(path, spec=ClinicalSpec(qol_columns=(("age", "continuous"),)))
    with pytest.raises(MultimodalError, match="must be continuous or ordinal, got nominal"):
        read_clinical(path, spec=ClinicalSpec(qol_columns=(("qol_grade", "nominal"),)))
    with pytest.raises(MultimodalError, match="lacks column"):
        read_clinical(path, spec=ClinicalSpec(qol_columns=(("qol_other", "continuous"),)))


def test_task_settings_are_checked_in_one_line():
    with pytest.raises(MultimodalError, match="model.ties must be one of efron, breslow, got exact"):
        TrainParams(ties="exact")
    with pytest.raises(MultimodalError, match="model.survival_loss must be one of cox, discrete"):
        TrainParams(survival_loss="weibull")
    with pytest.raises(MultimodalError, match="model.time_bins must be at least 2"):
        TrainParams(survival_loss="discrete", time_bins=1)
    with pytest.raises(MultimodalError, match="model.task_weights.qol_score must be a number of at least 0"):
        TrainParams(task_weights={"qol_score": -1})
    assert TrainParams(task_weights={"response": 0.7}).response_weight == 0.7


def test_qol_metrics_match_their_definitions():
    observed = np.array([1.0, 2.0, 3.0, np.nan, 5.0])
    predicted = np.array([1.5, 2.0, 2.0, 4.0, 6.0])
    m = continuous_metrics(observed, predicted)
    errors = np.array([0.5, 0.0, -1.0, 1.0])
    assert m["n"] == 4
    assert m["rmse"] == pytest.approx(np.sqrt(np.mean(errors**2)))
    assert m["mae"] == pytest.approx(np.mean(np.abs(errors)))
    assert m["r2"] == pytest.approx(1 - np.sum(errors**2) / np.sum((observed[[0, 1, 2, 4]] - 2.75) ** 2))
    grades = np.array([0, 1, 2, 2, 3, np.nan])
    guess = np.array([0, 2, 2, 1, 3, 1])
    o = ordinal_metrics(grades, guess)
    assert o["n"] == 5 and o["accuracy"] == pytest.approx(3 / 5) and o["mae"] == pytest.approx(2 / 5)
    # quadratic kappa by hand: 1 - sum(w O) / sum(w E), w = (i - j)^2 / (K - 1)^2
    y, p = grades[:5].astype(int), guess[:5].astype(int)
    counts = np.zeros((4, 4))
    np.add.at(counts, (y, p), 1)
    expected = np.outer(counts.sum(1), counts.sum(0)) / counts.sum()
    w = (np.subtract.outer(np.arange(4), np.arange(4)) ** 2) / 9
    assert o["quadratic_kappa"] == pytest.approx(1 - (w * counts).sum() / (w * expected).sum())


@pytest.mark.parametrize("fusion", ["sum", "late", "early"])
def test_heads_train_jointly_and_the_discrete_risk_is_the_log_cumulative_hazard(fusion):
    """One full-batch step of every loss on a small model; the training loss is the weighted sum of its parts."""
    import torch

    from multimodal.model.fusion import FusionSurvivalModel
    from multimodal.model.losses import cox_partial_likelihood, discrete_time_nll, log_cumulative_hazard

    torch.manual_seed(0)
    n = 30
    tasks = [
        {"name": "s", "kind": "continuous", "weight": 0.5, "mean": 50.0, "sd": 10.0, "levels": 0, "column": 1},
        {"name": "g", "kind": "ordinal", "weight": 2.0, "mean": 0.0, "sd": 1.0, "levels": 3, "column": 0},
    ]
    cuts = [2.0, 5.0, 9.0]
    inputs, mask = [torch.randn(n, 3), torch.randn(n, 2)], torch.ones(n, 2, dtype=torch.bool)
    time, event = torch.rand(n) * 10, (torch.rand(n) < 0.7).float()
    response = torch.full((n,), float("nan"))
    targets = torch.stack([torch.randint(0, 3, (n,)).float(), 50 + 10 * torch.randn(n)], 1)
    targets[::4] = float("nan")  # missing values: masked, the patients still train survival
    for survival in ("cox", "discrete"):
        model = FusionSurvivalModel(
            {"a": 3, "b": 2},
            fusion=fusion,
            dropout=0.0,
            input_dropout=0.0,
            survival_loss=survival,
            time_cuts=cuts,
            tasks=tasks,
            survival_weight=1.5,
        ).eval()
        out = model.net.outputs(*inputs, mask=mask)
        loss, logged, count = model.multitask_loss(out, time, event, response, targets)
        assert count == n and set(logged) >= {"train_bce", "train_s", "train_g"}
        if survival == "discrete":
            assert out["hazard_logits"].shape == (n, 3)
            assert torch.allclose(out["risk"], log_cumulative_hazard(out["hazard_logits"]))
            expected = discrete_time_nll(out["hazard_logits"], time, event, torch.tensor(cuts))
        else:
            assert "hazard_logits" not in out
            expected = cox_partial_likelihood(out["risk"], time, event, ties="efron")
        total = 1.5 * expected + 0.5 * logged["train_s"] + 2.0 * logged["train_g"]
        assert torch.isclose(loss, total)
        loss.backward()
        assert model.net.task_heads["g"].first.grad is not None
        risk, logit = model(*inputs, mask=mask)  # the plain forward gives the same risk score
        assert torch.allclose(risk, out["risk"])
