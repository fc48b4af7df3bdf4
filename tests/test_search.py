"""Model and hyperparameter search by inner cross-validation (multimodal.model.search): the outer test rows never
enter it, the choice is deterministic for a seed, the budget holds, and a bad space is refused in one line."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from test_small_cohorts import tiny_store

from multimodal.errors import MultimodalError
from multimodal.model.search import SearchSpec, search_fold
from multimodal.model.train import TrainParams, cross_validate

SEARCH = {"enabled": True, "method": "grid", "trials": 3, "inner_folds": 2}


def leaky_store(tmp_path):
    """40 patients; expression feature E0 carries the outcome on the first 20 (fold 0's held-out rows) only and is
    constant on the other 20 (its training rows). Split files hold the two folds."""
    mdata = tiny_store(tmp_path / "cohort.zarr", 40, seed=3)
    ids = list(mdata.obs_names)
    held_out, training = ids[:20], ids[20:]
    expression = mdata.mod["expression"]
    x = np.asarray(expression.X, dtype=np.float32).copy()
    rows = {p: i for i, p in enumerate(expression.obs_names)}
    leaky = list(expression.var_names).index("E0")
    x[[rows[p] for p in training], leaky] = 5.0
    x[[rows[p] for p in held_out], leaky] = -mdata.obs.loc[held_out, "time"].to_numpy()
    expression.X = x
    splits = tmp_path / "splits"
    splits.mkdir()
    pad = [""] * (len(training) - len(held_out))
    pd.DataFrame({"train": training, "val": held_out + pad}).to_csv(splits / "splits_0.csv")
    pd.DataFrame({"train": held_out + pad, "val": training}).to_csv(splits / "splits_1.csv")
    return mdata, held_out, training, splits


def test_the_outer_test_rows_never_enter_the_search(tmp_path):
    from multimodal.model.data import cohort_arrays

    mdata, held_out, training, splits = leaky_store(tmp_path)
    params = TrainParams(
        splits=str(splits),
        epochs=10,
        bootstrap=10,
        max_features={"expression": 12, "variants": 6},
        search=SEARCH | {"space": {"hidden_dim": [4, 8], "max_features": [3, 1.0]}},
    )
    arrays = cohort_arrays(mdata)
    train_rows = np.array([arrays.patients.index(p) for p in training])
    spec = SearchSpec(**params.search)
    budget = {name: params.max_features.get(name, params.default_max_features) for name in arrays.modalities}
    found = search_fold(arrays, train_rows, params, spec, budget, seed=params.seed)
    # every inner fit (2 inner folds x the run's own settings and 3 candidates) trained and was scored on outer
    # training patients only
    assert len(found.seen) == 2 * 4
    for fit in found.seen:
        assert not set(fit["train"]) & set(held_out) and not set(fit["val"]) & set(held_out)
        assert not set(fit["train"]) & set(fit["val"])
        assert set(fit["train"]) | set(fit["val"]) == set(training)

    metrics = cross_validate(mdata, tmp_path / "model", params=params, progress=False)
    fold0 = np.load(tmp_path / "model" / "fold_0" / "preprocessing.npz")
    assert "E0" not in [str(f) for f in fold0["expression/features"]]  # the refit on the outer training rows
    table = pd.read_csv(tmp_path / "model" / "search.tsv", sep="\t")
    assert list(table.groupby("fold").size()) == [4, 4] and table.groupby("fold")["chosen"].sum().tolist() == [1, 1]
    assert set(table.columns) >= {"repeat", "fold", "candidate", "hidden_dim", "max_features", "inner_c_index"}
    per_fold = metrics["search"]["per_fold"]
    assert [f["fold"] for f in per_fold] == [0, 1]
    for f, entry in zip(per_fold, metrics["folds"], strict=True):
        assert entry["search"]["chosen"] == f["chosen"]
        chosen = table[(table["fold"] == f["fold"]) & table["chosen"]].iloc[0]
        assert chosen["inner_c_index"] == pytest.approx(f["inner_c_index"])
        assert 1 <= f["epochs"] <= 10
        if f["chosen"].get("max_features") == 3:  # the chosen feature budget is the one the refit used
            assert entry["feature_budget"]["expression"] == 3 and entry["features"]["expression"]["used"] <= 3
    written = json.loads((tmp_path / "model" / "params.json").read_text())["train"]["search"]
    assert written["enabled"] and written["space"]["hidden_dim"] == [4, 8]


def test_the_choice_is_deterministic_for_a_seed_and_keeps_the_budget(tmp_path):
    from multimodal.model.data import cohort_arrays

    mdata = tiny_store(tmp_path / "cohort.zarr", 36, seed=5)
    arrays = cohort_arrays(mdata)
    space = {"fusion": ["sum", "attention"], "dropout": [0.0, 0.2, 0.4]}
    params = TrainParams(epochs=5, max_features={"expression": 6, "variants": 4}, search=SEARCH | {"space": space})
    spec = SearchSpec(**(params.search | {"select": "best", "incumbent": False}))
    assert len(spec.candidates(1)) == 3 and spec.candidates(1) == spec.candidates(1)  # 3 of the 6-candidate grid
    assert len(SearchSpec(**(params.search | {"trials": 10})).candidates(1)) == 6  # the whole grid within budget
    rows = np.arange(30)
    budget = {name: 6 for name in arrays.modalities}
    first = search_fold(arrays, rows, params, spec, budget, seed=11)
    second = search_fold(arrays, rows, params, spec, budget, seed=11)
    assert len(first.rows) == 3  # the budget
    assert [r["inner_c_index"] for r in first.rows] == [r["inner_c_index"] for r in second.rows]
    assert (first.chosen, first.epochs) == (second.chosen, second.epochs)
    best = max(r["inner_c_index"] for r in first.rows)
    assert first.rows[first.chosen_index]["inner_c_index"] == best
    # ties go to the earlier candidate
    assert first.chosen_index == min(i for i, r in enumerate(first.rows) if r["inner_c_index"] == best)
    # the defaults: the run's own settings as candidate 0, then the first candidate within one standard error
    # (of the best candidate's three inner C's) of the best score
    default = search_fold(arrays, rows, params, SearchSpec(**params.search), budget, seed=11)
    assert default.rows[0]["settings"] == {} and [r["settings"] for r in default.rows[1:]] == spec.candidates(11)
    assert default.rows[0]["epochs"] == params.epochs  # as configured: scored at its last epoch, no early stopping
    assert [r["inner_c_index"] for r in default.rows[1:]] == [r["inner_c_index"] for r in first.rows]
    scores = [r["inner_c_index"] for r in default.rows]
    top = int(np.argmax(scores))
    per_fold = default.rows[top]["inner_c_per_fold"]
    se = np.std(per_fold, ddof=1) / np.sqrt(len(per_fold))
    assert default.chosen_index == min(i for i, c in enumerate(scores) if c >= scores[top] - se - 1e-12)
    assert default.rows[default.chosen_index]["chosen"] and sum(r["chosen"] for r in default.rows) == 1


def test_one_standard_error_rule_keeps_the_earlier_candidate_within_the_noise():
    """Scores by hand: candidate 2 is best (0.70; inner C's 0.60, 0.70, 0.80: SE 0.1 / sqrt(3) = 0.0577);
    candidate 1 (0.66) is within one SE of it and listed earlier, candidate 0 (0.60) is not: one_se takes 1,
    best takes 2; a skipped candidate is never taken."""
    from multimodal.model.search import chosen_candidate

    rows = [
        {"inner_c_index": 0.60, "inner_c_per_fold": [0.6, 0.6, 0.6], "skipped": ""},
        {"inner_c_index": 0.66, "inner_c_per_fold": [0.66, 0.66, 0.66], "skipped": ""},
        {"inner_c_index": 0.70, "inner_c_per_fold": [0.6, 0.7, 0.8], "skipped": ""},
    ]
    assert chosen_candidate(rows, "one_se") == 1
    assert chosen_candidate(rows, "best") == 2
    rows[2]["inner_c_per_fold"] = [0.69, 0.70, 0.71]  # SE 0.0058: nothing else is within it
    assert chosen_candidate(rows, "one_se") == 2
    rows[1] |= {"skipped": "late fusion has no interaction head", "inner_c_index": float("nan")}
    rows[2]["inner_c_per_fold"] = [0.5, 0.7, 0.9]  # SE 0.115: candidate 0 is within it
    assert chosen_candidate(rows, "one_se") == 0


def test_optuna_search_is_seeded_and_keeps_the_budget(tmp_path):
    pytest.importorskip("optuna")
    from multimodal.model.data import cohort_arrays

    mdata = tiny_store(tmp_path / "cohort.zarr", 36, seed=6)
    arrays = cohort_arrays(mdata)
    space = {"hidden_dim": [4, 8, 16], "dropout": [0.0, 0.3]}
    params = TrainParams(
        epochs=5, max_features={"expression": 6}, search=SEARCH | {"method": "optuna", "trials": 3, "space": space}
    )
    spec = SearchSpec(**params.search)
    budget = {name: 6 for name in arrays.modalities}
    first = search_fold(arrays, np.arange(30), params, spec, budget, seed=3)
    second = search_fold(arrays, np.arange(30), params, spec, budget, seed=3)
    assert first.rows[0]["settings"] == {}  # the run's own settings first
    assert 1 <= len(first.rows) - 1 <= 3  # the budget; repeated proposals are not refitted
    assert [r["settings"] for r in first.rows] == [r["settings"] for r in second.rows]
    assert first.chosen == second.chosen


@pytest.mark.parametrize(
    ("search", "message"),
    [
        ({"space": {"dropout": [0.1, 1.5]}}, "model.search.space.dropout: 1.5 is not a valid setting"),
        ({"space": {"fusion": ["sum", "tensor"]}}, "model.search.space.fusion: 'tensor' is not a valid setting"),
        ({"space": {"max_features": [10, 0]}}, "model.search.space.max_features: 0"),
        ({"space": {"hidden_dim": 8}}, "model.search.space.hidden_dim must be a non-empty list"),
        ({"space": {"depth": [1, 2]}}, "model.search.space.depth: not a searchable setting"),
        ({"method": "bayes", "space": {"hidden_dim": [8]}}, "model.search.method must be one of grid, optuna"),
        ({"trials": 0, "space": {"hidden_dim": [8]}}, "model.search.trials must be a whole number of at least 1"),
        ({"select": "max", "space": {"hidden_dim": [8]}}, "model.search.select must be one of one_se, best"),
        ({"incumbent": "yes", "space": {"hidden_dim": [8]}}, "model.search.incumbent must be true or false"),
        ({"inner_folds": 1, "space": {"hidden_dim": [8]}}, "model.search.inner_folds must be a whole number"),
        ({"enabled": True}, "model.search.space is empty"),
        ({"budget": 3}, r"model.search: unknown setting\(s\) \['budget'\]"),
    ],
)
def test_a_bad_search_setting_is_refused_in_one_line(search, message):
    with pytest.raises(MultimodalError, match=message) as caught:
        TrainParams(search=search)
    assert "\n" not in str(caught.value)


def test_the_config_schema_takes_a_search_and_defaults_to_none():
    from multimodal.config import validate_config

    base = {"samples": "s.tsv", "clinical": "c.tsv"}
    assert validate_config(dict(base))["model"].get("search") is None
    config = validate_config(dict(base, model={"search": {"enabled": True, "space": {"hidden_dim": [8, 16]}}}))
    params = TrainParams.from_config(config["model"])
    assert params.search["enabled"] and params.search["inner_folds"] == 3 and params.search["method"] == "grid"
    with pytest.raises(MultimodalError, match="model.search"):
        validate_config(dict(base, model={"search": {"enabled": True, "method": "bayes"}}))


def test_a_space_whose_combinations_are_all_invalid_is_refused_in_one_line(tmp_path):
    """Values valid one by one may clash together (late fusion has no interaction head): such a candidate is
    skipped; when no candidate is left the search is refused, naming model.search.space."""
    from multimodal.model.data import cohort_arrays

    arrays = cohort_arrays(tiny_store(tmp_path / "cohort.zarr", 20, seed=1))
    params = TrainParams(search=SEARCH | {"space": {"fusion": ["late"], "head": ["interaction"]}})
    with pytest.raises(MultimodalError, match="model.search.space: no candidate is a valid model setting") as caught:
        search_fold(arrays, np.arange(20), params, SearchSpec(**params.search), {}, seed=1)
    assert "\n" not in str(caught.value)
