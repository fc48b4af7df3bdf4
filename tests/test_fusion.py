"""Fusion strategies, modality dropout and the linear ("wide") term of the fusion model.

Every strategy is checked with and without missing modalities: a patient's outputs never depend on the
inputs of a modality it lacks (exactly zero gradient), every modality it has is used, and a missing
modality is not the same as one measured at the training mean.
"""

import numpy as np
import pytest
import torch
from torch import nn

from multimodal.errors import MultimodalError
from multimodal.explain import attribute_fold
from multimodal.model import fusion as fusion_module
from multimodal.model.fusion import (
    FUSIONS,
    FusionNet,
    FusionSurvivalModel,
    ModalityDropout,
    ModalityEncoder,
    dropout_linear,
    dropout_threshold,
)
from multimodal.model.losses import cox_partial_likelihood
from multimodal.model.metrics import harrell_c

DIMS = {"a": 3, "b": 4, "c": 2}
#: each row: which of a, b, c the patient has (all, one missing, two missing, only the first)
MASK = torch.tensor(
    [[True, True, True], [True, False, True], [False, True, False], [True, False, False], [True, True, True]] * 2
)
CONFIGS = [
    pytest.param(fusion, head, linear, id=f"{fusion}-{head}-{'linear' if linear else 'deep'}")
    for fusion in FUSIONS
    for head in ("additive", "interaction")
    for linear in (False, True)
    if not (fusion == "late" and head == "interaction")
]


def make_net(fusion, head="additive", linear=False, **kwargs):
    torch.manual_seed(0)
    net = FusionNet(
        DIMS, hidden_dim=5, dropout=0.0, input_dropout=0.0, fusion=fusion, head=head, linear=linear, **kwargs
    )
    if fusion == "early":  # the learned missing-indicator vectors start at 0 (absent = the mean), as trained:
        with torch.no_grad():
            net.fusion.missing.normal_()
    if linear:  # the linear term starts at 0 (the Cox null model); give it something to say
        with torch.no_grad():
            net.linear.coef.normal_()
            net.linear.missing.normal_()
    return net.eval()


def random_inputs(n=None):
    n = len(MASK) if n is None else n
    torch.manual_seed(1)
    return [torch.randn(n, d) for d in DIMS.values()]


@pytest.mark.parametrize(("fusion", "head", "linear"), CONFIGS)
def test_a_missing_modality_is_masked_not_read(fusion, head, linear):
    net = make_net(fusion, head, linear)
    inputs = [x.requires_grad_() for x in random_inputs()]
    risk, logit = net(*inputs, mask=MASK)
    assert torch.isfinite(risk).all() and torch.isfinite(logit).all()
    grads = torch.autograd.grad(risk.sum() + logit.sum(), inputs)
    for j, g in enumerate(grads):
        absent, present = ~MASK[:, j], MASK[:, j]
        assert torch.all(g[absent] == 0), f"modality {j}: an absent modality's inputs reach the output"
        assert torch.all(g[present].abs().sum(dim=1) > 0), f"modality {j}: a present modality is ignored"
    # any value in an absent modality's inputs gives the same outputs
    scrambled = [torch.where(MASK[:, j : j + 1], x, 50 * torch.randn_like(x) + 3) for j, x in enumerate(inputs)]
    again = net(*scrambled, mask=MASK)
    torch.testing.assert_close(again[0], risk, rtol=0, atol=0)
    torch.testing.assert_close(again[1], logit, rtol=0, atol=0)


@pytest.mark.parametrize(("fusion", "head", "linear"), CONFIGS)
def test_missing_is_not_the_same_as_measured_at_the_training_mean(fusion, head, linear):
    net = make_net(fusion, head, linear)
    zeros = [torch.zeros(len(MASK), d) for d in DIMS.values()]  # 0 = the training mean after scaling
    everything = torch.ones_like(MASK)
    with torch.no_grad():
        measured = net(*zeros, mask=everything)[0]
        missing = net(*zeros, mask=MASK)[0]
    incomplete = ~MASK.all(dim=1)
    assert torch.all(measured[incomplete] != missing[incomplete])


@pytest.mark.parametrize("fusion", ["attention", "late"])
def test_modality_weights_are_renormalised_over_the_modalities_a_patient_has(fusion):
    net = make_net(fusion)
    with torch.no_grad():
        if fusion == "attention":
            weights = net.fusion.weights(net.embeddings(random_inputs()), MASK)
        else:
            net.fusion.weight_logits.copy_(torch.tensor([0.5, -1.0, 2.0]))
            weights = net.fusion.weights(MASK)
    assert torch.all(weights[~MASK] == 0)
    torch.testing.assert_close(weights.sum(dim=1), torch.ones(len(MASK)))
    if fusion == "late":  # a patient with a and c only: the weights of a and c, renormalised
        expected = torch.softmax(torch.tensor([0.5, 2.0]), dim=0)
        torch.testing.assert_close(weights[1, [0, 2]], expected)


def test_bilinear_fusion_of_a_unimodal_patient_keeps_the_unimodal_terms():
    """With b and c absent their vectors are (0, ..., 0, 1): the Kronecker product is a's gated vector
    (plus the constant), so a patient with one modality is scored from it."""
    net = make_net("bilinear")
    a = random_inputs()[0][:1].requires_grad_()
    only_a = torch.tensor([[True, False, False]])
    risk = net(a, torch.randn(1, 4), torch.randn(1, 2), mask=only_a)[0]
    (grad,) = torch.autograd.grad(risk.sum(), a)
    assert grad.abs().sum() > 0
    # the product vector: every entry involving b's or c's units is 0, the rest is a's [z, 1]
    captured = {}
    net.fusion.out.register_forward_pre_hook(lambda module, args: captured.setdefault("product", args[0]))
    with torch.no_grad():
        net(a, torch.randn(1, 4), torch.randn(1, 2), mask=only_a)
    product = captured["product"].reshape(9, 9, 9)  # bilinear_dim 8, plus the appended 1
    assert torch.all(product[:, :8, :] == 0) and torch.all(product[:, 8, :8] == 0)
    assert product[8, 8, 8] == 1


@pytest.mark.parametrize("fusion", FUSIONS)
def test_every_strategy_learns_from_incomplete_patients(fusion):
    """Risk carried by two modalities, 30% of patients without the second: each strategy ranks the
    training patients well above chance after a short fit."""
    generator = np.random.default_rng(5)
    n = 200
    a, b = generator.normal(size=(n, 2)), generator.normal(size=(n, 2))
    has_b = generator.random(n) > 0.3
    eta = a[:, 0] + np.where(has_b, b[:, 0], 0.0)
    time = torch.as_tensor(generator.exponential(np.exp(-eta)), dtype=torch.float32)
    event = torch.ones(n)
    inputs = [torch.as_tensor(a, dtype=torch.float32), torch.as_tensor(np.where(has_b[:, None], b, 0.0)).float()]
    mask = torch.as_tensor(np.column_stack([np.ones(n, dtype=bool), has_b]))
    torch.manual_seed(0)
    net = FusionNet({"a": 2, "b": 2}, hidden_dim=8, dropout=0.0, input_dropout=0.0, fusion=fusion)
    optimiser = torch.optim.Adam(net.parameters(), lr=0.02)
    for _ in range(80):
        optimiser.zero_grad()
        cox_partial_likelihood(net(*inputs, mask=mask)[0], time, event).backward()
        optimiser.step()
    with torch.no_grad():
        risk = net.eval()(*inputs, mask=mask)[0].numpy()
    assert harrell_c(time.numpy(), event.numpy(), risk) > 0.7
    assert harrell_c(time.numpy()[~has_b], event.numpy()[~has_b], risk[~has_b]) > 0.6


@pytest.mark.parametrize(("fusion", "head", "linear"), [c for c in CONFIGS if c.values[1] == "additive"])
def test_integrated_gradients_stay_complete_with_every_strategy(fusion, head, linear):
    torch.manual_seed(0)
    model = FusionSurvivalModel(
        {"a": 3, "b": 0, "c": 2}, hidden_dim=4, dropout=0.0, input_dropout=0.0, fusion=fusion, linear=linear
    )
    inputs = [torch.randn(5, 3), torch.zeros(5, 0), torch.randn(5, 2)]
    mask = torch.tensor([[True, False, True], [True, False, False], [False, False, True]] + [[True, False, True]] * 2)
    attributions, delta = attribute_fold(model, inputs, mask, n_steps=64)
    with torch.no_grad():
        gap = model.risk(*inputs, mask=mask) - model.risk(*[torch.zeros_like(x) for x in inputs], mask=mask)
    np.testing.assert_allclose(attributions[0].sum(axis=1) + attributions[2].sum(axis=1), gap.numpy(), atol=1e-4)
    assert np.abs(delta).max() < 1e-4 and attributions[1].shape == (5, 0)
    np.testing.assert_allclose(attributions[0][2], 0.0)  # a missing modality gets nothing
    np.testing.assert_allclose(attributions[2][1], 0.0)


def test_modality_dropout_never_drops_all_of_a_patients_modalities_and_is_off_in_eval():
    torch.manual_seed(0)
    mask = torch.rand(4000, 3) > 0.3
    dropout = ModalityDropout(0.9).train()
    kept = dropout(mask)
    assert torch.all(kept <= mask)  # only modalities the patient has are kept
    assert torch.all(kept.any(dim=1) == mask.any(dim=1))  # never all of them dropped
    two_or_more = mask.sum(dim=1) >= 2
    assert kept[two_or_more].sum() < mask[two_or_more].sum() * 0.5  # it does drop
    dropout = ModalityDropout(0.25).train()
    rate = 1 - dropout(mask)[mask.all(dim=1)].float().mean().item()
    assert 0.2 < rate < 0.3, rate  # with three present, p = 0.25, rarely all three: close to p
    assert torch.equal(ModalityDropout(0.9).eval()(mask), mask)


@pytest.mark.parametrize("fusion", FUSIONS)
def test_a_dropped_modality_is_really_absent(fusion):
    """In training, the output equals the eval-mode output with the dropped modalities masked, and the
    gradient with respect to a dropped modality's inputs is exactly zero."""
    torch.manual_seed(0)
    net = FusionNet(
        DIMS, hidden_dim=5, dropout=0.0, input_dropout=0.0, fusion=fusion, linear=True, modality_dropout=0.5
    )
    with torch.no_grad():
        net.linear.coef.normal_()
    mask = torch.ones(40, 3, dtype=torch.bool)
    inputs = [x.requires_grad_() for x in random_inputs(40)]
    torch.manual_seed(3)
    risk, _ = net.train()(*inputs, mask=mask)
    torch.manual_seed(3)
    dropped = ~net.modality_dropout(mask)
    assert dropped.any() and not dropped.all(dim=1).any()
    grads = torch.autograd.grad(risk.sum(), inputs)
    for j, g in enumerate(grads):
        assert torch.all(g[dropped[:, j]] == 0) and torch.all(g[~dropped[:, j]].abs().sum(dim=1) > 0)
    with torch.no_grad():
        masked = net.eval()(*inputs, mask=~dropped)[0]
    torch.testing.assert_close(risk.detach(), masked, rtol=0, atol=0)


def log_linear_cohort(n=300, seed=0):
    generator = np.random.default_rng(seed)
    x = generator.normal(size=(n, 6))
    beta = np.array([0.8, -0.5, 0.3, 0.0, 0.6, -0.2])
    t, censor = generator.exponential(np.exp(-(x @ beta))), generator.exponential(2.0, n)
    return x, np.minimum(t, censor), (t <= censor).astype(float)


def fit_linear_only(x, time, event, *, linear_l1=0.0, linear_l2=0.0, epochs=100):
    """The fusion model with its deep term off, trained as `multimodal train` trains it (Lightning, full batch)."""
    import lightning as L
    from torch.utils.data import DataLoader, TensorDataset

    torch.manual_seed(0)
    model = FusionSurvivalModel(
        {"a": 3, "b": 3}, linear=True, neural_weight=0.0, linear_l1=linear_l1, linear_l2=linear_l2
    )
    tensors = [torch.as_tensor(v, dtype=torch.float32) for v in (x[:, :3], x[:, 3:])]
    outcome = [torch.as_tensor(v, dtype=torch.float32) for v in (time, event, np.full(len(time), np.nan))]
    data = TensorDataset(*tensors, torch.ones(len(time), 2, dtype=torch.bool), *outcome)
    trainer = L.Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(model, DataLoader(data, batch_size=len(time)))
    return model.eval()


def test_with_the_deep_term_off_the_model_is_a_cox_model():
    """neural_weight 0 + linear: the coefficients and held-out C-index are those of scikit-survival's
    Cox fit on the same training data (unpenalised here, so the fits should agree)."""
    from sksurv.linear_model import CoxPHSurvivalAnalysis
    from sksurv.util import Surv

    x, time, event = log_linear_cohort()
    train, test = np.arange(220), np.arange(220, 300)
    model = fit_linear_only(x[train], time[train], event[train])
    coef = model.net.linear.coef.detach().numpy()
    cox = CoxPHSurvivalAnalysis(ties="breslow").fit(x[train], Surv.from_arrays(event[train] > 0, time[train]))
    assert np.corrcoef(coef, cox.coef_)[0, 1] > 0.99
    np.testing.assert_allclose(coef, cox.coef_, atol=0.02)
    with torch.no_grad():
        risk = model.risk(
            *(torch.as_tensor(v, dtype=torch.float32) for v in (x[test, :3], x[test, 3:])),
            mask=torch.ones(len(test), 2, dtype=torch.bool),
        ).numpy()
    ours = harrell_c(time[test], event[test], risk)
    reference = harrell_c(time[test], event[test], x[test] @ cox.coef_)
    assert abs(ours - reference) < 0.01, (ours, reference)


def test_the_linear_penalties_shrink_and_the_deep_weight_decay_leaves_the_linear_term_alone():
    x, time, event = log_linear_cohort(n=200, seed=1)
    free = fit_linear_only(x, time, event, epochs=60).net.linear.coef.detach().abs().sum()
    ridge = fit_linear_only(x, time, event, linear_l2=1.0, epochs=60).net.linear.coef.detach().abs().sum()
    lasso = fit_linear_only(x, time, event, linear_l1=0.1, epochs=60).net.linear.coef.detach()
    assert ridge < 0.7 * free and lasso.abs().sum() < 0.7 * free
    assert lasso.abs().min() < 0.02  # L1 pushes the null feature (true coefficient 0) to about 0
    groups = FusionSurvivalModel({"a": 3}, linear=True, weight_decay=0.1).configure_optimizers().param_groups
    assert [g["weight_decay"] for g in groups] == [0.1, 0.0] and groups[1]["lr"] == 0.03
    assert len(groups[1]["params"]) == 2  # coefficients and missing-indicator offsets only


def test_default_model_keeps_todays_parameters():
    """Defaults (sum fusion, additive head, no linear term, no modality dropout) build the same network
    as before these options existed, so checkpoints of earlier runs still load."""
    model = FusionSurvivalModel({"a": 3, "b": 2})
    assert sorted(model.state_dict()) == sorted(
        [f"net.encoders.{m}.net.1.{p}" for m in "ab" for p in ("weight", "bias")]
        + [f"net.{h}.{p}" for h in ("risk_head", "response_head") for p in ("weight", "bias")]
    )
    assert model.net.linear is None and model.net.modality_dropout.p == 0


def test_settings_are_validated_in_one_line_and_match_the_schema():
    import yaml

    from multimodal.config import schema_path
    from multimodal.model import train

    assert train.FUSIONS == fusion_module.FUSIONS
    schema = yaml.safe_load(schema_path().read_text())["properties"]["model"]["properties"]
    assert schema["fusion"]["enum"] == list(FUSIONS)
    defaults = train.TrainParams()
    for key in (
        "fusion",
        "modality_dropout",
        "linear",
        "neural_weight",
        "linear_l1",
        "linear_l2",
        "linear_learning_rate",
        "bilinear_dim",
    ):
        assert schema[key]["default"] == getattr(defaults, key), key
    for settings, message in (
        ({"fusion": "late", "head": "interaction"}, "head: interaction needs a fusion that mixes modalities"),
        ({"neural_weight": 0}, "neural_weight is 0 and model.linear is false"),
        ({"modality_dropout": 1.0}, "modality_dropout must be below 1"),
        ({"linear_l1": -1}, "linear_l1 must be at least 0"),
        ({"linear": "yes"}, "linear must be true or false"),
        ({"fusion": "concat"}, "fusion must be one of sum, mean, early, attention, bilinear, late, got concat"),
        ({"bilinear_dim": 0}, "bilinear_dim must be at least 1"),
    ):
        with pytest.raises(MultimodalError, match=message):
            train.TrainParams(**settings)
    with pytest.raises(MultimodalError, match="head: interaction needs"):
        FusionNet({"a": 1}, hidden_dim=2, dropout=0, input_dropout=0, fusion="late", head="interaction")


def test_cross_validation_and_attributions_with_a_non_default_strategy(tiny_run, tmp_path):
    """The settings reach the trained models (checkpoint hyperparameters) and explain reads them back."""
    import json

    from multimodal.explain import explain_cohort
    from multimodal.model.train import TrainParams, cross_validate
    from multimodal.store import read_cohort_store

    mdata = read_cohort_store(tiny_run["store"])
    settings = {"fusion": "attention", "modality_dropout": 0.3, "linear": True, "neural_weight": 0.5}
    params = TrainParams(folds=3, epochs=3, baseline=False, **settings)
    cross_validate(mdata, tmp_path / "model", params=params, progress=False)
    model = FusionSurvivalModel.load_from_checkpoint(
        str(tmp_path / "model" / "fold_0" / "model_0.ckpt"), map_location="cpu", weights_only=False
    )
    assert {k: model.hparams[k] for k in settings} == settings and model.net.linear is not None
    recorded = json.loads((tmp_path / "model" / "params.json").read_text())["train"]
    assert {k: recorded[k] for k in settings} == settings
    importance = explain_cohort(mdata, tmp_path / "model", tmp_path / "explain", n_steps=16, progress=False)
    assert importance["mean_abs_attribution"].notna().all() and (importance["mean_abs_attribution"] > 0).any()


# --- input dropout fused with the first linear layer (CPU): same distribution as nn.Dropout, ~4x cheaper ---


@pytest.mark.parametrize("p", [0.5, 0.2, 0.9])
def test_input_dropout_zeroes_each_entry_independently_with_probability_p_and_rescales_survivors(p):
    bits, _, p_used = dropout_threshold(p)
    assert bits == (8 if p == 0.5 else 16) and abs(p_used - p) <= 2**-17
    n, d = 2000, 500  # 1M entries in 4 blocks of rows
    torch.manual_seed(1)
    x = torch.ones(n, d, requires_grad=True)
    linear = nn.Linear(d, 1, bias=False)
    with torch.no_grad():
        linear.weight.fill_(1.0)
    dropout_linear(x, nn.Dropout(p).train(), linear).sum().backward()
    applied = x.grad  # = keep / (1 - p_used) per entry
    dropped = applied == 0
    assert torch.allclose(applied[~dropped], torch.full_like(applied[~dropped], 1 / (1 - p_used)), rtol=1e-6)
    bound = 5 * (p * (1 - p) / dropped.numel()) ** 0.5  # 5 binomial standard deviations
    assert abs(dropped.double().mean().item() - p) < bound
    # independent: rows and columns alike, and blocks of rows are not copies of one another
    for left, right in (
        (dropped[:, :-1], dropped[:, 1:]),
        (dropped[:-1], dropped[1:]),
        (dropped[:1000], dropped[1000:]),
    ):
        both = (left & right).double().mean().item()
        assert abs(both - p * p) < 5 * (p * p * (1 - p * p) / left.numel()) ** 0.5, both


def test_input_dropout_expectation_is_the_undropped_layer():
    """Averaged over many draws (one patient repeated 100,000 times), the layer's output is linear(x)."""
    torch.manual_seed(2)
    linear = nn.Linear(8, 3)
    x = torch.randn(1, 8).expand(100_000, 8)
    out = dropout_linear(x, nn.Dropout(0.2).train(), linear)
    expected = linear(x[:1])[0]
    spread = out.std(dim=0) / 100_000**0.5
    assert torch.all((out.mean(dim=0) - expected).abs() < 5 * spread), (out.mean(dim=0), expected)


@pytest.mark.parametrize("p", [0.5, 0.3])
def test_fused_input_dropout_equals_dropout_then_linear_with_the_same_mask(p):
    """Forward and every gradient (input, weight, bias) equal nn.Linear applied to the masked, rescaled
    input, the mask read back from the input's gradient; one call's masks differ from the next's."""
    torch.manual_seed(0)
    x = torch.randn(400, 1500, dtype=torch.float64, requires_grad=True)  # 3 blocks of 262,144 // 1500 rows
    linear = nn.Linear(1500, 4).double()
    state = torch.get_rng_state()
    out = dropout_linear(x, nn.Dropout(p).train(), linear)
    upstream = torch.randn_like(out)
    out.backward(upstream)
    grads = x.grad.clone(), linear.weight.grad.clone(), linear.bias.grad.clone()
    # the mask times the scale, per entry: the input gradient of the summed output of a weight of ones
    probe = nn.Linear(1500, 1, bias=False).double()
    with torch.no_grad():
        probe.weight.fill_(1.0)
    torch.set_rng_state(state)
    probe_x = x.detach().clone().requires_grad_()
    dropout_linear(probe_x, nn.Dropout(p).train(), probe).sum().backward()
    applied = probe_x.grad
    x.grad, linear.weight.grad, linear.bias.grad = None, None, None
    reference = linear(x * applied)
    reference.backward(upstream)
    assert torch.allclose(out, reference, atol=1e-6, rtol=0)
    for fused, plain in zip(grads, (x.grad, linear.weight.grad, linear.bias.grad), strict=True):
        assert torch.allclose(fused, plain, atol=1e-6, rtol=0)
    again = dropout_linear(x, nn.Dropout(p).train(), linear)
    assert not torch.allclose(again, out)


def test_input_dropout_is_off_in_eval_and_seeded_in_training():
    torch.manual_seed(3)
    encoder = ModalityEncoder(300, 6, dropout=0.0, input_dropout=0.5)
    x = torch.randn(50, 300)
    linear = encoder.net[1]
    assert torch.equal(encoder.eval()(x), nn.functional.elu(linear(x)))
    encoder.train()
    runs = []
    for seed in (7, 7, 8):
        torch.manual_seed(seed)
        runs.append(encoder(x))
    assert torch.equal(runs[0], runs[1]) and not torch.allclose(runs[0], runs[2])
    assert not torch.allclose(runs[0], encoder.eval()(x))


def test_fused_input_dropout_counts_the_flops_of_the_plain_layer():
    """The benchmark's FLOP count (FlopCounterMode) of a training forward and backward is the plain
    layer's: two n x d x hidden products, nothing more, nothing missed."""
    from torch.utils.flop_counter import FlopCounterMode

    n, d, hidden = 600, 1000, 16
    encoder = ModalityEncoder(d, hidden, dropout=0.0, input_dropout=0.5).train()
    with FlopCounterMode(display=False) as counter:
        encoder(torch.randn(n, d)).sum().backward()
    assert counter.get_total_flops() == 2 * (2 * n * d * hidden)
