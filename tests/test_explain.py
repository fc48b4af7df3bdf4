"""Attributions: Integrated Gradients completeness, held-out patients only, NaN for absent modalities."""

import mudata as md
import numpy as np
import pandas as pd
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
