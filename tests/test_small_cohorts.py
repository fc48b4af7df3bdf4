"""Small and odd cohorts through train -> explain -> report: every case either stops with one line saying
what would work, or adapts and says so (logged, in metrics.json ``notes`` and in the report)."""

from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
import pytest

from multimodal.errors import MultimodalError

GENES, VARIANTS, IMAGING = 12, 6, 4


def tiny_store(path, n, *, seed=0, time=None, event=None, response=None, site=None, imaging_in=None, constant=False):
    """A cohort store of ``n`` patients built the way store.py writes one (clinical, variants with TMB,
    expression, imaging for the first ``imaging_in`` patients); returns the store as read back."""
    import anndata as ad
    import mudata as md

    from multimodal.store import (
        build_provenance,
        cohort_exclusions,
        configure_zarr_v3,
        read_cohort_store,
        write_cohort_store,
    )

    rng = np.random.default_rng(seed)
    configure_zarr_v3()
    ids = [f"P{i:03d}" for i in range(n)]

    def matrix(rows, cols, draw):
        return np.ones((rows, cols), np.float32) if constant else draw((rows, cols)).astype(np.float32)

    def modality(x, names, feature_class, rows):
        var = pd.DataFrame({"feature_class": feature_class, "source": "test"}, index=pd.Index(names, name="feature"))
        return ad.AnnData(X=x, obs=pd.DataFrame(index=rows), var=var)

    obs = pd.DataFrame(
        {
            "time": rng.uniform(1, 50, n) if time is None else np.asarray(time, float),
            "event": (np.arange(n) % 2 == 0).astype(float) if event is None else np.asarray(event, float),
            "response": (np.arange(n) % 2).astype(float) if response is None else np.asarray(response, float),
            "site": ["site_A"] * n if site is None else list(site),
            "age": np.full(n, 60.0) if constant else rng.normal(60, 10, n).round(),
        },
        index=pd.Index(ids),
    )
    mods = {
        "clinical": modality(obs[["age"]].to_numpy(np.float32), ["age"], "clinical_numeric", ids),
        "variants": modality(
            matrix(n, VARIANTS, lambda s: rng.poisson(1.0, s)),
            [f"G{j}_mut" for j in range(VARIANTS)],
            "gene_mutation_count",
            ids,
        ),
        "expression": modality(
            matrix(n, GENES, lambda s: rng.normal(5, 1, s)), [f"E{j}" for j in range(GENES)], "gene_expression", ids
        ),
    }
    mods["variants"].obs["tmb"] = 1.0 if constant else rng.uniform(0, 10, n)
    with_image = ids if imaging_in is None else ids[:imaging_in]
    mods["imaging"] = modality(
        matrix(len(with_image), IMAGING, lambda s: rng.normal(size=s)),
        [f"shape_f{j}" for j in range(IMAGING)],
        "shape",
        with_image,
    )
    mdata = md.MuData(mods)
    mdata.uns["model_obs_features"] = {"variants": ["tmb"]}
    mdata.obs = obs.reindex(mdata.obs_names).copy()
    for name, adata in mods.items():
        mdata.obs[f"has_{name}"] = np.isin(mdata.obs_names, adata.obs_names)
    provenance = build_provenance(
        inputs=[], config={"clinical_columns": {"time_unit": "months"}}, exclusions=cohort_exclusions(mdata), command=[]
    )
    write_cohort_store(mdata, path, provenance=provenance)
    return read_cohort_store(path)


def run_all(tmp_path, mdata, **settings):
    """train -> explain -> report on ``mdata`` (stored at tmp_path/cohort.zarr); returns metrics.json,
    predictions, contributions and the report's HTML."""
    from multimodal.explain import explain_cohort
    from multimodal.model.train import TrainParams, cross_validate
    from multimodal.report import build_report

    params = TrainParams(**({"epochs": 1} | settings))
    cross_validate(mdata, tmp_path / "model", params=params, progress=False)
    explain_cohort(mdata, tmp_path / "model", tmp_path / "explain", n_steps=4, progress=False)
    report = build_report(
        store=tmp_path / "cohort.zarr",
        model_dir=tmp_path / "model",
        explain_dir=tmp_path / "explain",
        out=tmp_path / "report.html",
    )
    metrics = json.loads((tmp_path / "model" / "metrics.json").read_text())
    predictions = pd.read_csv(tmp_path / "model" / "predictions.tsv", sep="\t", index_col="patient_id")
    contributions = pd.read_csv(tmp_path / "explain" / "modality_contributions.tsv", sep="\t", index_col=0)
    return metrics, predictions, contributions, report.read_text()


def test_four_patients_and_default_folds_is_one_line_naming_the_setting_that_works(tmp_path):
    from multimodal.model.train import TrainParams, cross_validate

    mdata = tiny_store(tmp_path / "cohort.zarr", 4)
    with pytest.raises(MultimodalError) as info:
        cross_validate(mdata, tmp_path / "model", params=TrainParams(), store_path="c.zarr", progress=False)
    assert str(info.value) == (
        "c.zarr: only 4 patients have a survival outcome; 5 folds need at least 10 (2 held out per fold): "
        "set model.folds (--folds) to 2 or fewer"
    )
    assert not (tmp_path / "model").exists()


def test_too_few_to_cross_validate_at_all_is_one_line(tmp_path):
    from multimodal.model.train import TrainParams, cross_validate

    mdata = tiny_store(tmp_path / "cohort.zarr", 6, event=[1, 0, 0, 0, 0, 0])
    with pytest.raises(MultimodalError) as info:
        cross_validate(mdata, tmp_path / "model", params=TrainParams(folds=2), store_path="c.zarr", progress=False)
    assert str(info.value) == (
        "c.zarr: 6 patients with a survival outcome and 1 observed event(s) are too few to cross-validate "
        "(2 folds need at least 4 such patients and 2 events)"
    )


def test_four_patients_in_two_folds_train_explain_and_report_without_the_reference(tmp_path):
    """The penalised Cox reference cannot choose its penalty on 2 training patients: it is skipped, and
    metrics.json and the report say so (it crashed with sklearn's KFold ValueError)."""
    mdata = tiny_store(tmp_path / "cohort.zarr", 4)
    metrics, predictions, contributions, html = run_all(tmp_path, mdata, folds=2)
    reason = (
        "2 training patients with a survival outcome and 1 event(s) are too few to choose its penalty by inner "
        "cross-validation (at least 2 events and 4 patients are needed)"
    )
    for fold in metrics["folds"]:
        assert fold["penalised_cox"] == {"c_index": None, "alpha": None, "inner_folds": None, "skipped": reason}
    cox = metrics["baseline"]["penalised_cox"]
    assert cox["skipped"] == f"skipped in every fold: {reason}"
    assert cox["n_folds_fitted"] == 0 and cox["mean_c_index"] is None and cox["pooled_c_index"] is None
    assert metrics["notes"] == [f"fold {k}: penalised Cox reference skipped: {reason}" for k in (0, 1)]
    assert predictions["risk"].notna().all() and predictions["risk_penalised_cox"].isna().all()
    assert len(contributions) == 4
    assert f"The penalised Cox reference was not fitted: skipped in every fold: {reason}." in html
    assert 'id="baseline-comparison"' not in html
    notes = html.split('id="model-notes"')[1].split("</div>")[0]
    assert notes.count("<li>") == 2 and "fold 1: penalised Cox reference skipped" in notes


def test_a_small_training_fold_chooses_the_penalty_with_fewer_inner_folds(tmp_path):
    mdata = tiny_store(tmp_path / "cohort.zarr", 8)
    metrics, predictions, _, html = run_all(tmp_path, mdata, folds=2)
    for fold in metrics["folds"]:
        assert fold["penalised_cox"]["inner_folds"] == 2 and fold["penalised_cox"]["alpha"] > 0
        assert "skipped" not in fold["penalised_cox"]
    assert metrics["notes"] == [
        f"fold {k}: penalised Cox penalty chosen by 2-fold instead of 3-fold inner cross-validation "
        "(4 training patients, 2 events)"
        for k in (0, 1)
    ]
    assert predictions["risk_penalised_cox"].notna().all()
    assert metrics["baseline"]["penalised_cox"]["n_folds_fitted"] == 2
    assert 'id="baseline-comparison"' in html and "chosen by 2-fold instead of 3-fold" in html


def test_a_modality_of_one_patient_and_one_site_for_everyone(tmp_path):
    """Imaging in one patient only: no training fold can learn it; it is masked, said so per fold, counted
    in the report's feature-selection table, and the patient's imaging attribution is 0 (not missing)."""
    mdata = tiny_store(tmp_path / "cohort.zarr", 8, imaging_in=1)
    metrics, predictions, contributions, html = run_all(tmp_path, mdata, folds=2, baseline=False)
    assert metrics["notes"] == [
        f"fold {k}: modality imaging is present in fewer than 2 training patients; it is not used by this fold's model"
        for k in (0, 1)
    ]
    for fold in metrics["folds"]:
        counts = fold["features"]["imaging"]
        assert counts["too_few_training_patients"] == IMAGING == counts["features"] and counts["used"] == 0
        assert fold["n_events"] >= 1
    assert metrics["baseline"] == {}
    assert not predictions["has_imaging"].any()
    assert contributions["imaging"].notna().sum() == 1 and contributions["imaging"].dropna().iloc[0] == 0
    assert "modality in &lt; 2 training patients" in html or "modality in < 2 training patients" in html


def test_constant_features_everywhere_give_the_same_risk_and_nothing_to_attribute(tmp_path):
    mdata = tiny_store(tmp_path / "cohort.zarr", 8, constant=True)
    metrics, predictions, contributions, html = run_all(tmp_path, mdata, folds=2)
    assert metrics["notes"] == [
        note
        for k in (0, 1)
        for note in (
            f"fold {k}: no feature of any modality varies enough among its training patients to be used; "
            "this fold's model gives every held-out patient the same risk",
            f"fold {k}: penalised Cox reference skipped: no feature varies among the training patients",
        )
    ]
    assert (predictions.groupby("fold")["risk"].nunique() == 1).all()
    assert metrics["pooled_out_of_fold"]["n_events"] == 4
    for name in ("clinical", "variants", "expression", "imaging"):
        assert (contributions[name] == 0).all()
    assert (contributions["convergence_delta"] == 0).all()
    assert "no feature varies among the training patients" in html


def test_no_site_column_and_a_fold_without_response_labels(tmp_path):
    mdata = tiny_store(tmp_path / "cohort.zarr", 8, response=[np.nan] * 6 + [1, 0])
    mdata.obs = mdata.obs.drop(columns="site")
    from multimodal.model.train import TrainParams, cross_validate

    metrics = cross_validate(mdata, tmp_path / "model", params=TrainParams(folds=2, epochs=1), progress=False)
    predictions = pd.read_csv(tmp_path / "model" / "predictions.tsv", sep="\t")
    unlabelled = [k for k in (0, 1) if predictions.query("fold != @k")["response"].isna().all()]
    assert [n for n in metrics["notes"] if "response label" in n] == [
        f"fold {k}: none of its training patients has a response label; its held-out patients get no response "
        "probability"
        for k in unlabelled
    ]
    assert predictions.loc[predictions["fold"].isin(unlabelled), "response_prob"].isna().all()
    assert sorted(predictions["fold"].value_counts()) == [4, 4]


def test_a_training_fold_without_events_is_one_line(tmp_path, monkeypatch):
    import multimodal.model.splits
    from multimodal.model.train import TrainParams, cross_validate

    mdata = tiny_store(tmp_path / "cohort.zarr", 8, event=[1, 1, 1, 1, 0, 0, 0, 0])
    rigged = pd.Series([0, 0, 0, 0, 1, 1, 1, 1], index=mdata.obs_names, name="fold")  # every event in fold 0
    monkeypatch.setattr(multimodal.model.splits, "assign_folds", lambda obs, n_folds, seed: rigged)
    with pytest.raises(MultimodalError) as info:
        cross_validate(mdata, tmp_path / "model", params=TrainParams(folds=2, epochs=1), progress=False)
    assert str(info.value) == (
        "store: fold 0: none of its 4 training patients with a survival outcome has an observed event, "
        "so no survival model can be trained; use fewer folds"
    )


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ({"ensemble": 0}, "model.ensemble must be at least 1, got 0"),
        ({"folds": 1}, "model.folds must be at least 2, got 1"),
        ({"epochs": 2.5}, "model.epochs must be a whole number, got 2.5"),
        ({"head": "deep"}, "model.head must be one of additive, interaction, got deep"),
        ({"fusion": "max"}, "model.fusion must be one of sum, mean, early, attention, bilinear, late, got max"),
        ({"dropout": np.float32(1.5)}, "model.dropout must be below 1 (a fraction of units dropped), got 1.5"),
        ({"learning_rate": np.float64(0)}, "model.learning_rate must be above 0, got 0.0"),
        (
            {"max_features": {"expression": np.int64(0)}},
            "model.max_features.expression must be a whole number of at least 1, got 0",
        ),
    ],
)
def test_impossible_settings_are_one_line_with_plain_numbers(setting, message):
    from multimodal.model.train import TrainParams

    with pytest.raises(MultimodalError, match=f"^{re.escape(message)}$"):
        TrainParams(**setting)


def test_numpy_strings_and_numbers_print_plainly_in_messages(tmp_path):
    from multimodal.explain import explain_cohort
    from multimodal.model.data import cohort_arrays

    mdata = tiny_store(tmp_path / "cohort.zarr", 4)
    with pytest.raises(MultimodalError) as info:
        cohort_arrays(mdata, modalities=[np.str_("radiology")])
    assert (
        str(info.value) == "modality 'radiology' is not in the store (it has clinical, variants, expression, imaging)"
    )
    with pytest.raises(MultimodalError) as info:
        explain_cohort(mdata, tmp_path, tmp_path / "explain", method=np.str_("shap"))
    assert str(info.value) == (
        "explain.method: unknown 'shap'; available: integrated_gradients, gradient_shap, deeplift"
    )


def test_an_event_without_a_time_is_counted_nowhere(tmp_path):
    """Patients P000 and P001 have event = 1 but no time: they are not events in the store summary,
    metrics.json (per fold and pooled) or the report's cohort, site and risk-group tables."""
    from multimodal.store import outcome_counts, summarize_store

    n = 12
    time = np.r_[np.nan, np.nan, np.arange(3.0, n + 1)]
    event = np.array([1, 1, 1, 0, 1, 0, 1, 0, 1, 0, 1, 1], dtype=float)
    mdata = tiny_store(tmp_path / "cohort.zarr", n, time=time, event=event, site=["A", "B"] * 6)
    usable_events = int(event[2:].sum())  # 6, where summing the event column gives 8
    assert outcome_counts(time, event) == {"n_with_outcome": 10, "n_events": usable_events, "n_censored": 4}
    assert f"survival: {usable_events} events / 10 patients with outcome" in summarize_store(mdata)
    metrics, predictions, _, html = run_all(tmp_path, mdata, folds=2, baseline=False)
    assert metrics["n_events"] == metrics["pooled_out_of_fold"]["n_events"] == usable_events
    assert sum(f["n_events"] for f in metrics["folds"]) == usable_events
    assert metrics["n_patients_with_survival_outcome"] == 10
    assert 'id="warnings"' not in html  # store and metrics agree: no disagreement flagged
    cohort = html.split('id="cohort-outcomes"')[1].split("</dl>")[0]
    assert f"<dt>events</dt><dd>{usable_events}</dd>" in cohort
    sites = table_rows(html, "cohort-sites")
    assert sites[0][4] == "events" and sum(int(row[4]) for row in sites[1:]) == usable_events
    total = table_rows(html, "risk-groups-table")[-1]
    assert total[:4] == ["total", "12", "10", str(usable_events)]


def table_rows(html: str, table_id: str) -> list[list[str]]:
    """The cells of each row of the table with ``table_id`` (header row first)."""
    table = html.split(f'id="{table_id}"')[1].split("</table>")[0]
    return [
        re.findall(r"<t[dh][^>]*>(.*?)</t[dh]>", row, re.S) for row in re.findall(r"<tr[^>]*>(.*?)</tr>", table, re.S)
    ]
