"""No leakage from held-out patients: a feature that carries the outcome only in a fold's held-out rows (and
is constant in its training rows) is never used by that fold's model, nor credited by its attributions."""

from __future__ import annotations

import numpy as np
import pandas as pd
from test_small_cohorts import tiny_store


def test_a_feature_informative_only_on_held_out_rows_is_never_used(tmp_path):
    from multimodal.explain import explain_cohort
    from multimodal.model.train import TrainParams, cross_validate

    mdata = tiny_store(tmp_path / "cohort.zarr", 40, seed=3)
    ids = list(mdata.obs_names)
    held_out, training = ids[:20], ids[20:]
    expression = mdata.mod["expression"]
    x = np.asarray(expression.X, dtype=np.float32).copy()
    rows = {p: i for i, p in enumerate(expression.obs_names)}
    leaky = list(expression.var_names).index("E0")
    x[[rows[p] for p in training], leaky] = 5.0  # constant where fold 0 trains
    x[[rows[p] for p in held_out], leaky] = -mdata.obs.loc[held_out, "time"].to_numpy()  # the outcome, held out
    expression.X = x
    splits = tmp_path / "splits"
    splits.mkdir()
    pad = [""] * (len(training) - len(held_out))
    pd.DataFrame({"train": training, "val": held_out + pad}).to_csv(splits / "splits_0.csv")
    pd.DataFrame({"train": held_out + pad, "val": training}).to_csv(splits / "splits_1.csv")
    params = TrainParams(splits=str(splits), epochs=5, bootstrap=10, max_features={"expression": 12, "variants": 6})
    cross_validate(mdata, tmp_path / "model", params=params, progress=False)

    fold0 = np.load(tmp_path / "model" / "fold_0" / "preprocessing.npz")
    used = [str(f) for f in fold0["expression/features"]]  # the fold's selected features, by name
    assert "E0" not in used and len(used) > 0  # screened out on training rows, where it carries nothing
    fold1 = np.load(tmp_path / "model" / "fold_1" / "preprocessing.npz")
    assert "E0" in [str(f) for f in fold1["expression/features"]]  # where it does vary in training, it may be used

    explain_cohort(mdata, tmp_path / "model", tmp_path / "explain", n_steps=4, progress=False)
    import anndata

    attributions = anndata.read_zarr(tmp_path / "explain" / "attributions.zarr" / "mod" / "expression")
    fold0_rows = attributions.obs["fold"].to_numpy() == 0
    e0 = list(attributions.var_names).index("E0")
    assert fold0_rows.sum() == 20 and np.all(np.asarray(attributions.X)[fold0_rows, e0] == 0)
