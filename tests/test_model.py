"""Model parts: Cox loss against scikit-survival, fold-only preprocessing, masked fusion, splits."""

import json

import numpy as np
import pandas as pd
import torch
from scipy.optimize import minimize

from multimodal.model.data import (
    CohortArrays,
    FoldPreprocessor,
    cox_score_statistics,
    drop_redundant,
)
from multimodal.model.fusion import FusionNet
from multimodal.model.losses import cox_partial_likelihood, masked_bce, risk_set_ends
from multimodal.model.metrics import harrell_c
from multimodal.model.splits import assign_folds


def survival_data(n=120, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 2))
    time = np.round(rng.exponential(np.exp(-(x @ np.array([0.8, -0.5])))) * 10) + 1  # ties on purpose
    event = (rng.random(n) < 0.7).astype(float)
    return x, time, event


def test_risk_set_ends_handles_ties():
    order, ends = risk_set_ends(np.array([3.0, 5.0, 3.0, 1.0]))
    assert list(order) == [1, 0, 2, 3]
    assert list(ends) == [0, 2, 2, 3]


def test_cox_loss_minimiser_matches_scikit_survival_breslow():
    from sksurv.linear_model import CoxPHSurvivalAnalysis
    from sksurv.util import Surv

    x, time, event = survival_data()
    xt, tt, et = (torch.as_tensor(v, dtype=torch.float64) for v in (x, time, event))

    def loss(beta):
        b = torch.tensor(beta, dtype=torch.float64, requires_grad=True)
        value = cox_partial_likelihood(xt @ b, tt, et)
        value.backward()
        return value.item(), b.grad.numpy()

    ours = minimize(loss, np.zeros(2), jac=True, method="BFGS").x
    reference = CoxPHSurvivalAnalysis(ties="breslow").fit(x, Surv.from_arrays(event.astype(bool), time)).coef_
    np.testing.assert_allclose(ours, reference, atol=1e-4)


def test_cox_score_statistic_matches_loss_gradient():
    x, time, event = survival_data()
    z = cox_score_statistics(x, time, event)
    for j in range(2):
        b = torch.zeros(1, dtype=torch.float64, requires_grad=True)
        xt = torch.as_tensor(x[:, j], dtype=torch.float64)
        loss = cox_partial_likelihood(xt * b, torch.as_tensor(time), torch.as_tensor(event))
        (grad,) = torch.autograd.grad(loss, b)
        score = -grad.item() * event.sum()  # the loss is averaged over events
        assert np.sign(score) == np.sign(z[j]) and abs(score) > 0
    assert z[0] > 3 and z[1] < -2  # the generating signs


def test_masked_bce_ignores_unknown_targets():
    logit = torch.tensor([0.0, 2.0, -1.0])
    target = torch.tensor([1.0, float("nan"), 0.0])
    expected = torch.nn.functional.binary_cross_entropy_with_logits(logit[[0, 2]], target[[0, 2]])
    assert torch.isclose(masked_bce(logit, target), expected)


def arrays_for(x_by_modality, present, time, event):
    n = len(time)
    return CohortArrays(
        patients=[f"P{i}" for i in range(n)],
        modalities=list(x_by_modality),
        features={k: [f"{k}{j}" for j in range(v.shape[1])] for k, v in x_by_modality.items()},
        x=x_by_modality,
        present=present,
        time=time,
        event=event,
        response=np.full(n, np.nan),
        site=np.array(["s"] * n),
    )


def test_preprocessing_learns_from_training_rows_only():
    rng = np.random.default_rng(1)
    x = rng.normal(5, 2, size=(40, 3))
    present = np.ones(40, dtype=bool)
    time, event = rng.exponential(10, 40), np.ones(40)
    train = np.arange(30)
    fitted = FoldPreprocessor().fit(arrays_for({"m": x.copy()}, {"m": present}, time, event), train)
    x_changed = x.copy()
    x_changed[30:] *= 100  # held-out rows must not influence anything fitted
    refit = FoldPreprocessor().fit(arrays_for({"m": x_changed}, {"m": present}, time, event), train)
    np.testing.assert_allclose(fitted.mean["m"], refit.mean["m"])
    np.testing.assert_allclose(fitted.scale["m"], refit.scale["m"])
    np.testing.assert_allclose(fitted.mean["m"], x[train].mean(axis=0))


def test_absent_rows_are_zero_and_masked_and_missing_cells_take_the_training_mean():
    x = np.array([[1.0, 8.0], [3.0, np.nan], [5.0, 2.0], [np.nan, np.nan], [7.0, 6.0]])
    present = np.array([True, True, True, False, True])
    arrays = arrays_for({"m": x}, {"m": present}, np.arange(1.0, 6.0), np.ones(5))
    prep = FoldPreprocessor(min_nonzero=1).fit(arrays, np.arange(5))
    np.testing.assert_allclose(prep.mean["m"], [4.0, 16 / 3])
    inputs, mask = prep.transform(arrays, np.arange(5))
    assert mask[:, 0].tolist() == present.tolist()
    assert torch.all(inputs[0][3] == 0)
    assert inputs[0][1, 1] == 0  # imputed with the training mean, i.e. 0 after scaling


def test_redundant_features_keep_the_first_of_each_cluster():
    rng = np.random.default_rng(2)
    a = rng.normal(size=100)
    values = np.column_stack([a, a**3, rng.normal(size=100), 2 * a + 0.001 * rng.normal(size=100)])
    assert list(drop_redundant(values, max_correlation=0.95)) == [0, 2]


def test_fusion_ignores_the_inputs_of_a_masked_modality():
    torch.manual_seed(0)
    net = FusionNet({"a": 3, "b": 4}, hidden_dim=5, dropout=0.0, input_dropout=0.0).eval()
    xa, xb = torch.randn(6, 3), torch.randn(6, 4)
    mask = torch.tensor([[True, False]] * 3 + [[True, True]] * 3)
    risk1, _ = net(xa, xb, mask=mask)
    risk2, _ = net(xa, xb * 50 + 3, mask=mask)
    assert torch.allclose(risk1[:3], risk2[:3])
    assert not torch.allclose(risk1[3:], risk2[3:])


def test_folds_are_seeded_balanced_and_cover_everyone():
    rng = np.random.default_rng(3)
    obs = pd.DataFrame(
        {"event": rng.integers(0, 2, 100).astype(float), "site": rng.choice(["A", "B"], 100)},
        index=[f"P{i}" for i in range(100)],
    )
    folds = assign_folds(obs, n_folds=5, seed=7)
    assert folds.equals(assign_folds(obs, n_folds=5, seed=7))
    assert not folds.equals(assign_folds(obs, n_folds=5, seed=8))
    assert sorted(folds.value_counts()) == [20] * 5
    events = obs.groupby(folds)["event"].sum()
    assert events.max() - events.min() <= 2


def test_cross_validation_outputs(tiny_run):
    model_dir = tiny_run["model_dir"]
    folds = pd.read_csv(model_dir / "folds.tsv", sep="\t")
    predictions = pd.read_csv(model_dir / "predictions.tsv", sep="\t")
    metrics = json.loads((model_dir / "metrics.json").read_text())
    merged = predictions.merge(folds, on="patient_id", suffixes=("", "_assigned"))
    assert (merged["fold"] == merged["fold_assigned"]).all()
    assert predictions["risk"].notna().all() and len(predictions) == 60
    for fold in metrics["folds"]:
        part = predictions[predictions["fold"] == fold["fold"]]
        expected = harrell_c(part["time"].to_numpy(), part["event"].to_numpy(), part["risk"].to_numpy())
        assert fold["c_index"] == expected
        reference = harrell_c(part["time"].to_numpy(), part["event"].to_numpy(), part["risk_penalised_cox"].to_numpy())
        assert fold["penalised_cox"]["c_index"] == reference
        assert (model_dir / f"fold_{fold['fold']}" / "model_0.ckpt").is_file()


def test_rerun_gives_identical_predictions(tiny_run, tmp_path):
    from multimodal.model.train import TrainParams, cross_validate
    from multimodal.store import read_cohort_store

    params = json.loads((tiny_run["model_dir"] / "params.json").read_text())["train"]
    cross_validate(
        read_cohort_store(tiny_run["store"]), tmp_path / "again", params=TrainParams(**params), progress=False
    )
    first = pd.read_csv(tiny_run["model_dir"] / "predictions.tsv", sep="\t")
    again = pd.read_csv(tmp_path / "again" / "predictions.tsv", sep="\t")
    pd.testing.assert_frame_equal(first, again)


def test_too_few_events_for_the_folds_is_an_error(tiny_run, tmp_path):
    import pytest

    from multimodal.errors import MultimodalError
    from multimodal.model.train import TrainParams, cross_validate
    from multimodal.store import read_cohort_store

    mdata = read_cohort_store(tiny_run["store"])
    mdata.obs["event"] = 0.0
    mdata.obs.iloc[:2, mdata.obs.columns.get_loc("event")] = 1.0
    with pytest.raises(MultimodalError, match="2 observed events cannot be spread over 3 folds"):
        cross_validate(mdata, tmp_path / "m", params=TrainParams(folds=3, epochs=1), progress=False)
    assert not (tmp_path / "m").exists()


def test_all_censored_is_named_as_such(tiny_run, tmp_path):
    import pytest

    from multimodal.errors import MultimodalError
    from multimodal.model.train import TrainParams, cross_validate
    from multimodal.store import read_cohort_store

    mdata = read_cohort_store(tiny_run["store"])
    mdata.obs["event"] = 0.0
    with pytest.raises(MultimodalError, match="no observed event among 60 patients .*all censored"):
        cross_validate(mdata, tmp_path / "m", params=TrainParams(folds=3, epochs=1), progress=False)


def test_c_index_without_comparable_pairs_is_undefined_not_a_crash():
    # the only event is at the shortest time... of nobody else: every other patient was censored earlier
    time = np.array([10.0, 2.0, 3.0])
    event = np.array([1.0, 0.0, 0.0])
    assert np.isnan(harrell_c(time, event, np.array([0.1, 0.2, 0.3])))


def test_no_response_labels_give_no_response_probability_and_strict_json(tiny_run, tmp_path):
    """With no response column the response head is never trained: its output is not reported, and
    metrics.json holds null (valid JSON), not NaN, for the undefined AUROC."""
    from multimodal.model.train import TrainParams, cross_validate
    from multimodal.store import read_cohort_store

    mdata = read_cohort_store(tiny_run["store"])
    mdata.obs["response"] = np.nan
    cross_validate(mdata, tmp_path / "m", params=TrainParams(folds=3, epochs=2, baseline=False), progress=False)
    predictions = pd.read_csv(tmp_path / "m" / "predictions.tsv", sep="\t")
    assert predictions["response_prob"].isna().all() and predictions["risk"].notna().all()

    def refuse(token):
        raise ValueError(f"not JSON: {token}")

    metrics = json.loads((tmp_path / "m" / "metrics.json").read_text(), parse_constant=refuse)
    assert metrics["mean"]["auroc"] is None and all(f["auroc"] is None for f in metrics["folds"])
    assert metrics["mean"]["c_index"] > 0


def test_interaction_head_learns_a_cross_modality_interaction_the_additive_head_cannot():
    """Risk driven by arm x mutation (a treatment that helps only carriers): an additive head fits a sum of
    per-modality effects and ranks near chance; the interaction head recovers it."""
    torch.manual_seed(0)
    n = 400
    arm = torch.randint(0, 2, (n, 1)).float()
    mutant = torch.randint(0, 2, (n, 1)).float()
    eta = 2.0 * (2 * arm - 1) * (2 * mutant - 1)  # XOR: no additive part at all
    time = torch.distributions.Exponential(torch.exp(eta.squeeze())).sample()
    event = torch.ones(n)
    mask = torch.ones(n, 2, dtype=torch.bool)
    c_index = {}
    for head in ("additive", "interaction"):
        torch.manual_seed(1)
        net = FusionNet({"clinical": 1, "variants": 1}, hidden_dim=8, dropout=0.0, input_dropout=0.0, head=head)
        optimiser = torch.optim.Adam(net.parameters(), lr=0.03)
        for _ in range(300):
            optimiser.zero_grad()
            risk, _ = net(arm, mutant, mask=mask)
            loss = cox_partial_likelihood(risk, time, event)
            loss.backward()
            optimiser.step()
        with torch.no_grad():
            risk, _ = net(arm, mutant, mask=mask)
        c_index[head] = harrell_c(time.numpy(), event.numpy(), risk.numpy())
    assert c_index["additive"] < 0.6 and c_index["interaction"] > 0.7, c_index  # the truth itself ranks ~0.76
