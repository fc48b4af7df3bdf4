"""Evaluation (issue 10): split files in and out, bootstrap metrics, references that never cost the model its
results, and a feature budget for every modality."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from test_small_cohorts import tiny_store

from multimodal.errors import MultimodalError
from multimodal.model.metrics import (
    _censoring,
    _order_score,
    _weighted_average_precision,
    _weighted_pairs,
    breslow_survival,
    brier_contributions,
    evaluate_held_out,
    evaluation_settings,
    harrell_pairs,
)
from multimodal.model.splits import read_splits

FAST = {"epochs": 1, "bootstrap": 50}


def strict_json(path):
    def refuse(token):
        raise ValueError(f"not JSON: {token}")

    return json.loads(path.read_text(), parse_constant=refuse)


def survival_sample(n=150, seed=0):
    rng = np.random.default_rng(seed)
    risk = rng.normal(size=n)
    time = np.round(rng.exponential(np.exp(-risk)) * 20) + 1  # ties on purpose
    event = (rng.random(n) < 0.6).astype(float)
    return time, event, risk + rng.normal(scale=0.8, size=n), risk


@pytest.fixture(scope="module")
def store40_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("store40") / "cohort.zarr"
    tiny_store(path, 40, seed=1)
    return path


@pytest.fixture(scope="module")
def store40(store40_path):
    from multimodal.store import read_cohort_store

    return read_cohort_store(store40_path)


@pytest.fixture(scope="module")
def run40(store40, tmp_path_factory):
    """One 2-fold run on 40 patients (the reference fits included)."""
    from multimodal.model.train import TrainParams, cross_validate

    out = tmp_path_factory.mktemp("run40") / "model"
    cross_validate(store40, out, params=TrainParams(folds=2, **FAST), progress=False)
    return out


# ---------------------------------------------------------------------------------------------- splits


def write_split(path, train, val):
    """A split file as MCAT/PORPOISE share them: an unnamed index column, then train and val."""
    n = max(len(train), len(val))
    pd.DataFrame({"train": list(train) + [""] * (n - len(train)), "val": list(val) + [""] * (n - len(val))}).to_csv(
        path
    )


def test_benchmark_split_files_are_read_and_untested_patients_counted(tmp_path):
    patients = [f"P{i}" for i in range(10)]
    write_split(tmp_path / "splits_0.csv", patients[4:9], patients[:4])
    write_split(tmp_path / "splits_1.csv", patients[:4] + patients[6:9], patients[4:6])
    (tmp_path / "splits_0_bool.csv").write_text("not a split file\n")  # PORPOISE's companions are ignored
    plan = read_splits(tmp_path, patients)
    assert plan.n_folds == 2 and plan.repeats == 1
    (train0, test0), (train1, test1) = plan.folds[0]
    assert test0.tolist() == [0, 1, 2, 3] and train0.tolist() == [4, 5, 6, 7, 8]
    assert test1.tolist() == [4, 5] and train1.tolist() == [0, 1, 2, 3, 6, 7, 8]
    assert plan.untested == ["P6", "P7", "P8", "P9"]


@pytest.mark.parametrize(
    ("train", "val", "message"),
    [
        (["P1", "P2", "X9"], ["P0"], r"splits_0.csv: line 4: patient X9 \(column train\) is not in the cohort$"),
        (
            ["P1", "P2"],
            ["P0", "P2"],
            r"splits_0.csv: line 3: patient P2 is in both train \(line 3\) and val of this fold$",
        ),
        (["P1", "P2"], ["P0", "P0"], r"splits_0.csv: line 3: patient P0 is listed twice in column val \(also line 2\)"),
    ],
)
def test_a_bad_split_file_is_one_line_naming_file_line_and_id(tmp_path, train, val, message):
    write_split(tmp_path / "splits_0.csv", train, val)
    with pytest.raises(MultimodalError, match=message):
        read_splits(tmp_path, ["P0", "P1", "P2", "P3"])


def test_a_patient_held_out_by_two_folds_is_refused(tmp_path):
    write_split(tmp_path / "splits_0.csv", ["P1"], ["P0"])
    write_split(tmp_path / "splits_1.csv", ["P1"], ["P0"])
    with pytest.raises(MultimodalError, match=r"splits_1.csv: line 2: patient P0 is held out by two folds"):
        read_splits(tmp_path, ["P0", "P1"])


def test_folds_written_by_a_run_read_back_give_identical_folds_and_predictions(run40, store40, tmp_path):
    from multimodal.model.train import TrainParams, cross_validate

    folds = pd.read_csv(run40 / "folds.tsv", sep="\t", dtype={"patient_id": str})
    # our own folds.tsv, given as a file and as the model directory
    cross_validate(store40, tmp_path / "again", params=TrainParams(splits=str(run40), **FAST), progress=False)
    # the same folds as benchmark split files
    for k in range(2):
        write_split(
            tmp_path / f"splits_{k}.csv",
            folds.loc[folds["fold"] != k, "patient_id"],
            folds.loc[folds["fold"] == k, "patient_id"],
        )
    cross_validate(store40, tmp_path / "bench", params=TrainParams(splits=str(tmp_path), **FAST), progress=False)
    first = pd.read_csv(run40 / "predictions.tsv", sep="\t")
    for other in ("again", "bench"):
        pd.testing.assert_frame_equal(
            pd.read_csv(tmp_path / other / "folds.tsv", sep="\t", dtype={"patient_id": str}), folds
        )
        pd.testing.assert_frame_equal(pd.read_csv(tmp_path / other / "predictions.tsv", sep="\t"), first)
    metrics = strict_json(tmp_path / "bench" / "metrics.json")
    assert metrics["splits"]["n_folds"] == 2 and metrics["splits"]["n_patients_held_out_by_no_fold"] == 0


def test_user_splits_leaving_patients_out_are_counted_and_round_trip(store40, tmp_path):
    from multimodal.model.train import TrainParams, cross_validate

    ids = list(store40.obs_names)
    (tmp_path / "s").mkdir()
    write_split(tmp_path / "s" / "splits_0.csv", ids[10:36], ids[:10])
    write_split(tmp_path / "s" / "splits_1.csv", ids[:10] + ids[20:36], ids[10:20])
    cross_validate(store40, tmp_path / "m", params=TrainParams(splits=str(tmp_path / "s"), **FAST), progress=False)
    metrics = strict_json(tmp_path / "m" / "metrics.json")
    assert metrics["splits"]["patients_held_out_by_no_fold"] == ids[20:]
    assert any("20 cohort patient(s) are held out by no fold" in n for n in metrics["notes"])
    predictions = pd.read_csv(tmp_path / "m" / "predictions.tsv", sep="\t")
    assert sorted(predictions["patient_id"]) == sorted(ids[:20])
    # training sets that are not 'everyone else' are written out, and read back the same
    plan = read_splits(tmp_path / "m" / "folds.tsv", ids)
    assert [t.tolist() for t, _ in plan.folds[0]] == [list(range(10, 36)), list(range(10)) + list(range(20, 36))]
    cross_validate(store40, tmp_path / "m2", params=TrainParams(splits=str(tmp_path / "m"), **FAST), progress=False)
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "m2" / "predictions.tsv", sep="\t"), predictions)
    # explained: held-out patients only; the ones no fold holds out get no attribution (was a crash)
    from multimodal.explain import explain_cohort

    explain_cohort(store40, tmp_path / "m", tmp_path / "x", n_steps=4, progress=False)
    contributions = pd.read_csv(tmp_path / "x" / "modality_contributions.tsv", sep="\t", index_col=0)
    assert contributions["risk"].notna().sum() == 20 and contributions.loc[ids[20:], "risk"].isna().all()


def test_repeated_k_fold(run40, store40, tmp_path):
    from multimodal.model.train import TrainParams, cross_validate

    cross_validate(store40, tmp_path / "m", params=TrainParams(folds=2, repeats=2, **FAST), progress=False)
    metrics = strict_json(tmp_path / "m" / "metrics.json")
    assert metrics["repeats"]["n"] == 2 and len(metrics["repeats"]["per_repeat"]) == 2
    assert [f["repeat"] for f in metrics["repeats"]["folds"]] == [1, 1]
    everything = pd.read_csv(tmp_path / "m" / "predictions_repeats.tsv", sep="\t")
    assert everything.groupby("patient_id").size().eq(2).all()
    folds = pd.read_csv(tmp_path / "m" / "folds.tsv", sep="\t")
    assert list(folds.columns) == ["patient_id", "fold", "fold_repeat_1"]
    assert not folds["fold"].equals(folds["fold_repeat_1"].rename("fold"))
    # the first repeat is the single run
    pd.testing.assert_frame_equal(
        pd.read_csv(tmp_path / "m" / "predictions.tsv", sep="\t"), pd.read_csv(run40 / "predictions.tsv", sep="\t")
    )
    # and the written repeats read back as they were
    plan = read_splits(tmp_path / "m" / "folds.tsv", list(store40.obs_names))
    assert plan.repeats == 2
    with pytest.raises(MultimodalError, match="set model.repeats to 1"):
        TrainParams(splits="x", repeats=2)


# ---------------------------------------------------------------------------------------------- metrics


def test_weighted_statistics_at_unit_weights_are_scikit_survivals():
    from sklearn.metrics import average_precision_score
    from sksurv.metrics import (
        concordance_index_censored,
        concordance_index_ipcw,
        cumulative_dynamic_auc,
        integrated_brier_score,
    )
    from sksurv.util import Surv

    time, event, risk, truth = survival_sample()
    settings = evaluation_settings(time, event, n_bootstrap=0)
    y = Surv.from_arrays(event > 0, time)
    one = np.ones((1, len(time)))
    comparable, concordant, rows = harrell_pairs(time, event > 0, risk)
    expected = concordance_index_censored(event > 0, time, risk)[0]
    assert _weighted_pairs(one, comparable, concordant, rows)[0] == pytest.approx(expected, abs=1e-12)

    cens = _censoring(settings)
    ipcw = np.zeros(len(time))
    below = time < settings.tau
    ipcw[below] = cens.predict_ipcw(y[below])
    comparable, concordant, rows = harrell_pairs(time, event > 0, risk, ipcw_squared=ipcw**2)
    expected = concordance_index_ipcw(y, y, risk, tau=settings.tau)[0]
    assert _weighted_pairs(one, comparable, concordant, rows)[0] == pytest.approx(expected, abs=1e-12)

    when = settings.times[1]
    case, control = (time <= when) & (event > 0), time > when
    pairs = np.outer(case * cens.predict_ipcw(y), control.astype(float))
    expected = cumulative_dynamic_auc(y, y, risk, [when])[0][0]
    got = _weighted_pairs(one, pairs, pairs * _order_score(risk), np.flatnonzero(case))[0]
    assert got == pytest.approx(expected, abs=1e-12)

    survival = breslow_survival(truth, time, event, risk, settings.grid)
    grid = settings.grid[settings.grid < time.max()]
    expected = integrated_brier_score(y, y, survival[:, : len(grid)], grid)
    assert brier_contributions(time, event, survival[:, : len(grid)], grid, cens).mean() == pytest.approx(expected)

    label = (risk > 0).astype(float)
    score = np.round(truth, 1)  # ties
    weights = np.random.default_rng(0).multinomial(len(label), np.full(len(label), 1 / len(label)), size=3)
    got = _weighted_average_precision(weights.astype(float), label, score)
    assert got == pytest.approx([average_precision_score(label, score, sample_weight=w) for w in weights])


def test_breslow_survival_matches_scikit_survival():
    from sksurv.linear_model.coxph import BreslowEstimator

    time, event, risk, _ = survival_sample(80, seed=2)
    times = np.array([2.0, 5.0, 11.0, 30.0])
    reference = BreslowEstimator().fit(risk, event > 0, time).get_survival_function(risk[:5])
    expected = np.array([[f(t) for t in times] for f in reference])
    np.testing.assert_allclose(breslow_survival(risk, time, event, risk[:5], times), expected, rtol=1e-10)


def test_bootstrap_cis_are_seeded_and_paired_and_null_where_undefined():
    time, event, risk, truth = survival_sample()
    settings = evaluation_settings(time, event, n_bootstrap=200, seed=3)
    survival = breslow_survival(risk, time, event, risk, settings.grid)
    response = (truth > 0).astype(float)
    kwargs = {"survival": survival, "response": response, "response_prob": 1 / (1 + np.exp(-risk))}
    first = evaluate_held_out(time, event, risk, settings, references={"same": risk, "truth": truth}, **kwargs)
    assert first == evaluate_held_out(time, event, risk, settings, references={"same": risk, "truth": truth}, **kwargs)
    for key in ("harrell_c", "uno_c", "integrated_brier", "auroc", "auprc"):
        low, high = first[key]["ci95"]
        assert low <= first[key]["value"] <= high, key
    assert all(a["ci95"][0] <= a["value"] <= a["ci95"][1] for a in first["time_auc"])
    # paired: a model against itself differs by exactly 0 in every resample
    assert first["c_index_difference"]["same"] == {"value": 0.0, "ci95": [0.0, 0.0], "n": len(time)}
    low, high = first["c_index_difference"]["truth"]["ci95"]
    assert high < 0  # the noisy risk is worse than the one the times were drawn from
    # no event: the survival metrics are undefined (None), not a crash
    none = evaluate_held_out(time[:20], np.zeros(20), risk[:20], settings)
    assert none["harrell_c"] == {"value": None, "ci95": None}
    assert json.dumps(none, allow_nan=False)


def test_metrics_json_and_report_show_bootstrap_metrics_and_references(run40, store40, store40_path, tmp_path):
    metrics = strict_json(run40 / "metrics.json")
    pooled = metrics["evaluation"]["pooled"]
    assert set(pooled) >= {"harrell_c", "uno_c", "time_auc", "integrated_brier", "auroc", "auprc"}
    assert pooled["harrell_c"]["value"] == pytest.approx(metrics["pooled_out_of_fold"]["c_index"])
    assert set(pooled["c_index_difference"]) == {"penalised_cox", "clinical_cox"}
    assert metrics["evaluation"]["settings"]["bootstrap_resamples"] == 50
    assert all("evaluation" in f and "clinical_cox" in f for f in metrics["folds"])
    assert metrics["baseline"]["clinical_cox"]["n_folds_fitted"] == 2
    predictions = pd.read_csv(run40 / "predictions.tsv", sep="\t")
    assert predictions["risk_clinical_cox"].notna().all()

    from multimodal.explain import explain_cohort
    from multimodal.report import build_report

    explain_cohort(store40, run40, tmp_path / "explain", n_steps=4, progress=False)
    html = build_report(
        store=store40_path,
        model_dir=run40,
        explain_dir=tmp_path / "explain",
        out=tmp_path / "report.html",
    ).read_text()
    assert 'id="metrics-ci"' in html and "Uno&#x27;s C" in html and "integrated Brier" in html
    assert 'id="c-index-difference"' in html and "fusion model minus clinical-only Cox" in html
    assert "clinical-only Cox (reference)" in html


# ---------------------------------------------------------------------------------------------- references


def test_penalised_cox_fits_one_path_per_fit(monkeypatch):
    from sksurv.linear_model import CoxnetSurvivalAnalysis

    from multimodal.model.baselines import penalised_cox_risk

    calls = []
    original = CoxnetSurvivalAnalysis.fit

    def counted(self, x, y):
        calls.append(self.alphas)
        return original(self, x, y)

    monkeypatch.setattr(CoxnetSurvivalAnalysis, "fit", counted)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(90, 30))
    time = rng.exponential(np.exp(-x[:, 0])) * 10
    event = (rng.random(90) < 0.7).astype(float)
    risk, alpha, inner = penalised_cox_risk(x[:70], time[:70], event[:70], x[70:], seed=1)
    assert inner == 3 and len(calls) == 1 + 3  # the training fold's path, then one path per inner fold
    assert np.isfinite(risk).all() and alpha > 0


def test_any_failure_of_a_reference_fit_is_recorded_and_training_goes_on(store40, tmp_path, monkeypatch):
    import multimodal.model.baselines as baselines
    from multimodal.model.train import TrainParams, cross_validate

    def broken(*args, **kwargs):
        raise RuntimeError("weights are too large")

    monkeypatch.setattr(baselines, "penalised_cox_risk", broken)
    metrics = cross_validate(store40, tmp_path / "m", params=TrainParams(folds=2, **FAST), progress=False)
    assert metrics["mean"]["c_index"] is not None
    for fold in metrics["folds"]:
        assert fold["penalised_cox"]["skipped"] == "RuntimeError: weights are too large"
        assert fold["clinical_cox"]["skipped"] == "RuntimeError: weights are too large"
    assert metrics["baseline"]["penalised_cox"]["n_folds_fitted"] == 0
    predictions = pd.read_csv(tmp_path / "m" / "predictions.tsv", sep="\t")
    assert predictions["risk"].notna().all() and predictions["risk_penalised_cox"].isna().all()


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_a_coxnet_error_inside_the_path_fit_becomes_a_skip():
    from multimodal.model import baselines

    x = np.random.default_rng(0).normal(size=(20, 3))
    x[0, 0] = np.inf  # sksurv refuses non-finite input with a ValueError; anything else is caught the same
    with pytest.raises(baselines.BaselineSkipped, match="Coxnet could not be fitted"):
        baselines.penalised_cox_risk(x, np.arange(1.0, 21.0), np.ones(20), x[:2])


# ---------------------------------------------------------------------------------------------- budget


def test_every_modality_has_a_feature_budget_and_the_report_shows_it(store40, tmp_path):
    import anndata as ad
    import mudata as md

    from multimodal.explain import explain_cohort
    from multimodal.model.train import TrainParams, cross_validate
    from multimodal.report import build_report
    from multimodal.store import build_provenance, cohort_exclusions, read_cohort_store, write_cohort_store

    ids = list(store40.obs_names)
    rng = np.random.default_rng(5)
    wide = ad.AnnData(
        X=rng.normal(size=(len(ids), 300)).astype(np.float32),
        obs=pd.DataFrame(index=ids),
        var=pd.DataFrame(
            {"feature_class": "table_numeric", "source": "test"},
            index=pd.Index([f"cnv_{j}" for j in range(300)], name="feature"),
        ),
    )
    mods = {name: store40.mod[name] for name in store40.mod} | {"cnv": wide}
    mdata = md.MuData(mods)
    mdata.uns["model_obs_features"] = {"variants": ["tmb"]}
    mdata.obs = store40.obs.reindex(mdata.obs_names).copy()
    mdata.obs["has_cnv"] = True
    provenance = build_provenance(
        inputs=[], config={"clinical_columns": {"time_unit": "months"}}, exclusions=cohort_exclusions(mdata), command=[]
    )
    write_cohort_store(mdata, tmp_path / "cohort.zarr", provenance=provenance)
    mdata = read_cohort_store(tmp_path / "cohort.zarr")
    params = TrainParams(folds=2, default_max_features=25, baseline=False, **FAST)
    metrics = cross_validate(mdata, tmp_path / "model", params=params, progress=False)
    for fold in metrics["folds"]:
        assert fold["features"]["cnv"]["used"] == 25 and fold["features"]["cnv"]["features"] == 300
        assert fold["feature_budget"] == {"clinical": 25, "variants": 20, "expression": 20, "imaging": 25, "cnv": 25}
    explain_cohort(mdata, tmp_path / "model", tmp_path / "explain", n_steps=4, progress=False)
    html = build_report(
        store=tmp_path / "cohort.zarr",
        model_dir=tmp_path / "model",
        explain_dir=tmp_path / "explain",
        out=tmp_path / "report.html",
    ).read_text()
    table = html[html.index('id="feature-selection"') :].split("</table>")[0]
    assert '<th class="num">budget</th>' in table
    assert '<td>cnv</td>\n<td class="num">300</td>' in table
