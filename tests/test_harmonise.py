"""ComBat harmonisation by site (model.harmonise), fitted inside each training fold.

On a simulated cohort whose scanners shift every image's intensities by site (multimodal.simulate's
SITE_INTENSITY_SHIFT), with IBSI features extracted from the NIfTI files by the imaging ingest.
"""

from __future__ import annotations

import contextlib
import io

import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedKFold

from multimodal.errors import MultimodalError
from multimodal.model import harmonise as H
from multimodal.model.data import CohortArrays, FoldPreprocessor, cox_score_statistics

SETTINGS = {"modality": "imaging", "site_column": "site", "covariates": ["age", "sex"], "unseen_site": "reference"}


@pytest.fixture(scope="module")
def simulated(tmp_path_factory):
    """90 simulated patients (about 70 with an image) from three sites; their imaging features."""
    from multimodal.ingest.imaging import imaging_matrix
    from multimodal.ingest.samples import read_samples
    from multimodal.simulate import SimulationParams, simulate_cohort

    root = tmp_path_factory.mktemp("harmonise_cohort")
    simulate_cohort(
        root, params=SimulationParams(n_patients=90, seed=11, image_size=24, n_expression_genes=300, n_panel_genes=120)
    )
    imaging = imaging_matrix(read_samples(root / "samples.tsv"), progress=False)
    imaging.write_h5ad(root / "imaging.h5ad")
    return root, imaging


@pytest.fixture(scope="module")
def cohort(simulated) -> CohortArrays:
    """The simulated patients with an image, as the model's arrays."""
    root, imaging = simulated
    clinical = pd.read_csv(root / "clinical.tsv", sep="\t", dtype={"patient_id": str}).set_index("patient_id")
    obs = clinical.loc[imaging.obs_names]  # patients with an image only: every row has the modality
    n = len(obs)
    return CohortArrays(
        patients=list(obs.index),
        modalities=["imaging"],
        features={"imaging": list(imaging.var_names)},
        x={"imaging": np.asarray(imaging.X, dtype=float)},
        present={"imaging": np.ones(n, dtype=bool)},
        time=obs["os_time"].to_numpy(float),
        event=obs["os_event"].to_numpy(float),
        response=np.full(n, np.nan),
        site=obs["site"].astype(str).to_numpy(),
        obs=obs,
    )


def _covariates(arrays: CohortArrays, rows: np.ndarray) -> pd.DataFrame:
    return arrays.obs[["age", "sex"]].iloc[rows].reset_index(drop=True)


def test_fit_and_apply_reproduce_neurocombat_on_the_training_rows(cohort):
    """Our application of the stored estimates gives what neuroCombat itself returns for its own input
    (neuroCombat given the raw categorical sex and numeric age, so its own design is used)."""
    from neuroCombat import neuroCombat

    rows = np.arange(len(cohort.patients))
    x = cohort.x["imaging"]
    fitted = H.fit(x, cohort.site, _covariates(cohort, rows))
    ours, counts = H.apply(fitted, x, cohort.site, _covariates(cohort, rows), unseen_site="reference")
    assert counts["unseen_site_patients"] == 0
    assert fitted.counts["fitted_sites"] == 3
    assert 150 < fitted.counts["harmonised_features"] <= x.shape[1]
    covars = pd.DataFrame(
        {"site": cohort.site, "age": cohort.obs["age"].to_numpy(float), "sex": cohort.obs["sex"].astype(str).to_numpy()}
    )
    with contextlib.redirect_stdout(io.StringIO()):
        theirs = neuroCombat(x[:, fitted.columns].T, covars, "site", categorical_cols=["sex"], continuous_cols=["age"])[
            "data"
        ].T
    np.testing.assert_allclose(ours[:, fitted.columns], theirs, rtol=1e-6, atol=1e-6 * np.abs(theirs).max())
    untouched = np.setdiff1d(np.arange(x.shape[1]), fitted.columns)
    np.testing.assert_array_equal(ours[:, untouched], x[:, untouched])


def _site_auroc(arrays: CohortArrays, harmonise: dict | None) -> float:
    """Held-out AUROC (one vs rest, macro) of a logistic regression predicting the site from the fold's
    preprocessed imaging features; preprocessing (and harmonisation) fitted on each fold's training rows."""
    site = arrays.site
    prob = np.zeros((len(site), 3))
    classes = np.unique(site)
    for train, test in StratifiedKFold(5, shuffle=True, random_state=0).split(site, site):
        prep = FoldPreprocessor(screening="variance", harmonise=harmonise).fit(arrays, train)
        x_train = prep.transform(arrays, train)[0][0].numpy()
        x_test = prep.transform(arrays, test)[0][0].numpy()
        model = LogisticRegression(max_iter=5000).fit(x_train, site[train])
        assert list(model.classes_) == list(classes)
        prob[test] = model.predict_proba(x_test)
    return float(roc_auc_score(site, prob, multi_class="ovr"))


def test_site_is_predictable_before_and_not_after_in_fold_harmonisation(cohort):
    before = _site_auroc(cohort, None)
    after = _site_auroc(cohort, SETTINGS)
    assert before >= 0.75, before
    assert after <= 0.6, after


def test_the_planted_imaging_signal_keeps_its_screening_rank_and_selection(cohort):
    """The tumour volume (the simulator's planted imaging hazard) stays among the strongest imaging features
    by Cox score and is selected by the fold's preprocessing, with and without harmonisation."""
    rows = np.arange(len(cohort.patients))
    names = np.asarray(cohort.features["imaging"])
    planted = int(np.flatnonzero(names == "morph_volume")[0])

    def rank(values: np.ndarray) -> int:
        finite = np.isfinite(values).all(axis=0) & (values.std(axis=0) > 0)
        z = np.abs(cox_score_statistics(values[:, finite], cohort.time, cohort.event))
        order = np.flatnonzero(finite)[np.argsort(-z, kind="stable")]
        return int(np.flatnonzero(order == planted)[0]) + 1

    raw = cohort.x["imaging"]
    _, harmonised = H.fit_fold(SETTINGS, cohort, rows, raw)
    assert rank(raw) <= 10
    assert rank(harmonised) <= 10
    for settings in (None, SETTINGS):
        prep = FoldPreprocessor(max_features={"imaging": 10}, harmonise=settings).fit(cohort, rows)
        assert "morph_volume" in prep.features["imaging"]


def test_held_out_patients_never_enter_the_fit(cohort):
    """Changing only held-out patients' features, sites and covariates leaves every fitted parameter
    identical, and their transformed values change."""
    n = len(cohort.patients)
    rng = np.random.default_rng(0)
    test = np.sort(rng.choice(n, size=n // 4, replace=False))
    train = np.setdiff1d(np.arange(n), test)
    first = FoldPreprocessor(max_features={"imaging": 10}, harmonise=SETTINGS).fit(cohort, train)

    x = cohort.x["imaging"].copy()
    x[test] = x[test] * rng.uniform(0.5, 2.0, size=x[test].shape) + 50.0
    obs = cohort.obs.copy()
    obs.iloc[test, obs.columns.get_loc("site")] = "site_A"
    obs.iloc[test, obs.columns.get_loc("age")] = 20
    changed = CohortArrays(**{**cohort.__dict__, "x": {"imaging": x}, "obs": obs, "site": obs["site"].to_numpy(str)})
    second = FoldPreprocessor(max_features={"imaging": 10}, harmonise=SETTINGS).fit(changed, train)

    a, b = first.combat["imaging"], second.combat["imaging"]
    for key in H.ComBatFit.ARRAYS:
        np.testing.assert_array_equal(getattr(a, key), getattr(b, key), err_msg=key)
    assert a.counts == b.counts
    for state in ("selected", "mean", "scale", "features"):
        np.testing.assert_array_equal(getattr(first, state)["imaging"], getattr(second, state)["imaging"])
    assert not np.allclose(first.transform(cohort, test)[0][0], second.transform(changed, test)[0][0])


def test_preprocessing_file_keeps_the_harmonisation(cohort, tmp_path):
    """explain reloads a fold's preprocessing: the reloaded state transforms exactly as the fitted one."""
    n = len(cohort.patients)
    train, test = np.arange(0, n, 2), np.arange(1, n, 2)
    prep = FoldPreprocessor(max_features={"imaging": 10}, harmonise=SETTINGS).fit(cohort, train)
    prep.save(tmp_path / "preprocessing.npz")
    loaded = FoldPreprocessor.load(tmp_path / "preprocessing.npz")
    assert loaded.harmonise == H.HarmoniseSpec.from_config(SETTINGS).as_dict()
    assert loaded.combat["imaging"].counts == prep.combat["imaging"].counts
    np.testing.assert_array_equal(loaded.transform(cohort, test)[0][0], prep.transform(cohort, test)[0][0])
    plain = FoldPreprocessor(max_features={"imaging": 10}).fit(cohort, train)
    plain.save(tmp_path / "plain.npz")
    assert FoldPreprocessor.load(tmp_path / "plain.npz").harmonise is None


@pytest.mark.parametrize("rule", ["reference", "none"])
def test_a_site_absent_from_training_follows_the_stated_rule(cohort, rule):
    site = cohort.site
    test = np.flatnonzero(site == "site_B")  # the +25 scanner shift
    train = np.flatnonzero(site != "site_B")
    settings = {**SETTINGS, "unseen_site": rule}
    prep = FoldPreprocessor(screening="variance", harmonise=settings).fit(cohort, train)
    names = np.asarray(cohort.features["imaging"])
    mean_col = int(np.flatnonzero(names == "stat_mean")[0])
    x = cohort.x["imaging"]
    harmonised, unseen = H.apply_fold(settings, prep.combat["imaging"], cohort, test, x[test])
    np.testing.assert_array_equal(unseen, test)
    prep.transform(cohort, test)
    assert prep.counts["imaging"]["harmonise"]["unseen_site_patients"] == len(test)
    train_mean = H.apply_fold(settings, prep.combat["imaging"], cohort, train, x[train])[0][:, mean_col].mean()
    if rule == "none":
        np.testing.assert_array_equal(harmonised, x[test])
    else:  # moved onto the pooled training mean: the scanner offset is gone
        assert abs(x[test, mean_col].mean() - train_mean) > 15
        assert abs(harmonised[:, mean_col].mean() - train_mean) < 5


def test_settings_are_checked_in_one_line(cohort):
    from multimodal.model.train import TrainParams

    assert TrainParams(harmonise={"modality": "imaging"}).harmonise["unseen_site"] == "reference"
    with pytest.raises(MultimodalError, match="unseen_site must be one of reference, none"):
        TrainParams(harmonise={"unseen_site": "drop"})
    with pytest.raises(MultimodalError, match="unknown setting"):
        H.HarmoniseSpec.from_config({"site": "x"})
    with pytest.raises(MultimodalError, match="must not hold the site column"):
        H.HarmoniseSpec.from_config({"covariates": ["site"]})
    with pytest.raises(MultimodalError, match="obs has no column 'scanner'"):
        FoldPreprocessor(harmonise={**SETTINGS, "site_column": "scanner"}).fit(cohort, np.arange(len(cohort.patients)))
    with pytest.raises(MultimodalError, match="model.harmonise.modality 'radiology' is not a modality of the model"):
        FoldPreprocessor(harmonise={**SETTINGS, "modality": "radiology"}).fit(cohort, np.arange(len(cohort.patients)))
    with pytest.raises(MultimodalError, match="obs has no column 'weight'"):
        FoldPreprocessor(harmonise={**SETTINGS, "covariates": ["weight"]}).fit(cohort, np.arange(len(cohort.patients)))


def test_one_training_site_harmonises_nothing_and_says_so(cohort):
    rows = np.flatnonzero(cohort.site == "site_A")
    prep = FoldPreprocessor(screening="variance", harmonise=SETTINGS).fit(cohort, rows)
    counts = prep.counts["imaging"]["harmonise"]
    assert counts["harmonised_features"] == 0
    assert counts["not_harmonised_fewer_than_2_sites"] == len(cohort.features["imaging"])


@pytest.mark.slow
def test_harmonised_cross_validation_and_explain_keep_the_planted_volume_on_top(simulated, tmp_path):
    """train (3 folds) with model.harmonise, then explain from the saved fold preprocessing: the planted
    tumour volume stays among the three most attributed imaging features; the folds' counts say what was
    harmonised."""
    import json

    from multimodal.explain import explain_cohort
    from multimodal.model.train import TrainParams, cross_validate
    from multimodal.store import build_cohort_store, read_cohort_store

    root, _ = simulated
    store = build_cohort_store(
        tmp_path / "cohort.zarr",
        clinical_path=root / "clinical.tsv",
        samples_path=root / "samples.tsv",
        modality_chunks={"imaging": [root / "imaging.h5ad"]},
    )
    mdata = read_cohort_store(store)
    params = TrainParams(
        folds=3,
        epochs=15,
        modalities=["clinical", "imaging"],
        max_features={"imaging": 10},
        harmonise=SETTINGS,
        baseline=False,
        bootstrap=50,
    )
    cross_validate(mdata, tmp_path / "model", params=params, store_path=str(store), progress=False)
    metrics = json.loads((tmp_path / "model" / "metrics.json").read_text())
    for fold in metrics["folds"]:
        counts = fold["features"]["imaging"]["harmonise"]
        assert counts["fitted_sites"] == 3 and counts["harmonised_features"] > 150
    importance = explain_cohort(mdata, tmp_path / "model", tmp_path / "explain", n_steps=16, progress=False)
    imaging = importance[importance["modality"] == "imaging"].sort_values("rank")
    assert "morph_volume" in list(imaging["feature"].head(3))


def test_the_config_schema_takes_model_harmonise_and_refuses_a_bad_rule():
    import yaml

    from multimodal.config import validate_config
    from multimodal.model.train import TrainParams

    config = yaml.safe_load(open("config/config.yaml"))
    config["model"]["harmonise"] = {"modality": "imaging", "covariates": ["age", "sex"]}
    checked = validate_config(config)
    params = TrainParams.from_config(checked["model"])
    assert params.harmonise == {
        "modality": "imaging",
        "site_column": "site",
        "covariates": ["age", "sex"],
        "unseen_site": "reference",
    }
    assert validate_config(yaml.safe_load(open("config/config.yaml")))["model"]["harmonise"] is None
    config["model"]["harmonise"] = {"unseen_site": "drop"}
    with pytest.raises(MultimodalError, match="unseen_site"):
        validate_config(config)
