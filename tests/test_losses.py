"""The survival and quality-of-life losses against independently computed reference values.

References: the Cox partial likelihood written plainly from its textbook definition (one loop per event
time), scikit-survival's ``CoxPHSurvivalAnalysis`` (Efron and Breslow ties), and hand-computed likelihoods
of the discrete-time and cumulative-link models on tiny data.
"""

import math

import numpy as np
import pytest
import torch

from multimodal.model.losses import (
    cox_partial_likelihood,
    discrete_time_nll,
    discrete_time_targets,
    log_cumulative_hazard,
    masked_mse,
    ordinal_nll,
    ordinal_probabilities,
    time_bin_cuts,
)

#: tiny data with ties: two events tied at 2, an event and a censoring tied at 4, three events tied at 7
TIME = np.array([2.0, 2.0, 3.0, 4.0, 4.0, 5.0, 7.0, 7.0, 7.0, 9.0, 1.0])
EVENT = np.array([1, 1, 0, 1, 0, 1, 1, 1, 1, 0, 0], dtype=float)
RISK = np.array([0.3, -1.2, 0.5, 2.0, -0.1, 0.7, -0.4, 1.1, 0.0, -0.8, 0.9])


def textbook_cox(risk, time, event, ties):
    """Negative partial log-likelihood / number of events, straight from the definitions (loops on purpose)."""
    total = 0.0
    for t in sorted(set(time[event == 1])):
        tied = [i for i in range(len(time)) if time[i] == t and event[i] == 1]
        at_risk = [i for i in range(len(time)) if time[i] >= t]
        s_risk = sum(math.exp(risk[i]) for i in at_risk)
        s_tied = sum(math.exp(risk[i]) for i in tied)
        d = len(tied)
        total += sum(risk[i] for i in tied)
        for k in range(d):
            total -= math.log(s_risk - (k / d if ties == "efron" else 0.0) * s_tied)
    return -total / event.sum()


def torch_loss(risk, time, event, ties):
    return cox_partial_likelihood(
        torch.as_tensor(risk, dtype=torch.float64),
        torch.as_tensor(time, dtype=torch.float64),
        torch.as_tensor(event, dtype=torch.float64),
        ties=ties,
    ).item()


@pytest.mark.parametrize("ties", ["efron", "breslow"])
def test_cox_loss_equals_the_textbook_definition_with_ties(ties):
    expected = textbook_cox(RISK, TIME, EVENT, ties)
    assert torch_loss(RISK, TIME, EVENT, ties) == pytest.approx(expected, rel=1e-12)
    # order of the patients does not matter
    perm = np.random.default_rng(0).permutation(len(TIME))
    assert torch_loss(RISK[perm], TIME[perm], EVENT[perm], ties) == pytest.approx(expected, rel=1e-12)


def test_efron_differs_from_breslow_with_ties_and_equals_it_without():
    assert abs(torch_loss(RISK, TIME, EVENT, "efron") - torch_loss(RISK, TIME, EVENT, "breslow")) > 1e-3
    distinct = TIME + np.arange(len(TIME)) * 1e-3
    assert torch_loss(RISK, distinct, EVENT, "efron") == torch_loss(RISK, distinct, EVENT, "breslow")
    assert torch_loss(RISK, distinct, EVENT, "efron") == pytest.approx(
        textbook_cox(RISK, distinct, EVENT, "efron"), rel=1e-12
    )


def test_cox_loss_is_stable_for_large_risks_and_float32():
    big = RISK * 200.0
    assert torch_loss(big, TIME, EVENT, "efron") == pytest.approx(textbook_cox_logspace(big), rel=1e-9)
    value = cox_partial_likelihood(
        torch.tensor(RISK, dtype=torch.float32), torch.tensor(TIME), torch.tensor(EVENT), ties="efron"
    )
    assert value.item() == pytest.approx(textbook_cox(RISK, TIME, EVENT, "efron"), rel=1e-5)


def textbook_cox_logspace(risk):
    """Efron loss via shifted exponentials (the plain textbook version overflows at these risks)."""
    shift = risk.max()
    return textbook_cox(risk - shift, TIME, EVENT, "efron") + 0.0  # a common shift cancels in the likelihood


def survival_data(n=120, seed=3):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 3))
    time = np.ceil(rng.exponential(np.exp(-(x @ np.array([0.9, -0.6, 0.3])))) * 4)  # heavy ties on purpose
    event = (rng.random(n) < 0.75).astype(float)
    return x, time, event


@pytest.mark.parametrize("ties", ["efron", "breslow"])
def test_cox_loss_minimiser_and_gradient_match_scikit_survival(ties):
    from sksurv.linear_model import CoxPHSurvivalAnalysis
    from sksurv.util import Surv

    x, time, event = survival_data()
    assert len(np.unique(time[event == 1])) < event.sum() / 3  # many ties
    reference = CoxPHSurvivalAnalysis(ties=ties).fit(x, Surv.from_arrays(event.astype(bool), time)).coef_
    xt, tt, et = (torch.as_tensor(v, dtype=torch.float64) for v in (x, time, event))

    beta = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    optimiser = torch.optim.LBFGS([beta], lr=1.0, max_iter=200, tolerance_grad=1e-12, line_search_fn="strong_wolfe")

    def closure():
        optimiser.zero_grad()
        loss = cox_partial_likelihood(xt @ beta, tt, et, ties=ties)
        loss.backward()
        return loss

    optimiser.step(closure)
    np.testing.assert_allclose(beta.detach().numpy(), reference, atol=1e-4)

    at_reference = torch.tensor(reference, dtype=torch.float64, requires_grad=True)
    (grad,) = torch.autograd.grad(cox_partial_likelihood(xt @ at_reference, tt, et, ties=ties), at_reference)
    assert grad.abs().max().item() < 1e-6
    # and the other tie method's optimum is a different point: the test can tell them apart
    other = "breslow" if ties == "efron" else "efron"
    other_coef = CoxPHSurvivalAnalysis(ties=other).fit(x, Surv.from_arrays(event.astype(bool), time)).coef_
    assert np.abs(other_coef - reference).max() > 1e-3


def test_cox_loss_without_events_is_zero_with_a_gradient_path():
    risk = torch.tensor([0.5, -0.2], requires_grad=True)
    loss = cox_partial_likelihood(risk, torch.tensor([1.0, 2.0]), torch.tensor([0.0, 0.0]), ties="efron")
    assert loss.item() == 0.0
    loss.backward()
    assert torch.equal(risk.grad, torch.zeros(2))


# ------------------------------------------------------------------------------------------------
# discrete-time (logistic hazard)


def test_time_bin_cuts_are_quantiles_of_event_times_only():
    time = np.array([1.0, 2.0, 3.0, 4.0, 100.0, 200.0])
    event = np.array([1, 1, 1, 1, 0, 0])
    np.testing.assert_array_equal(time_bin_cuts(time, event, 2), [2.0, 4.0])  # censored times never cut
    np.testing.assert_array_equal(time_bin_cuts(time, event, 4), [1.0, 2.0, 3.0, 4.0])
    assert len(time_bin_cuts(np.array([5.0, 5.0, 5.0]), np.ones(3), 3)) == 1  # distinct cuts only
    with pytest.raises(ValueError, match="no observed event"):
        time_bin_cuts(time, np.zeros(6), 3)


def test_discrete_time_nll_equals_hand_computed_likelihood():
    cuts = torch.tensor([2.0, 5.0, 8.0])  # intervals (0,2], (2,5], (5,8]
    time = torch.tensor([1.0, 5.0, 6.0, 4.0, 2.0, 9.0])
    event = torch.tensor([1.0, 1.0, 0.0, 0.0, 0.0, 1.0])
    logits = torch.tensor(
        [[0.1, -0.3, 0.2], [-1.0, 0.5, 0.0], [0.3, 0.3, -2.0], [1.0, -1.0, 0.4], [0.0, 2.0, 1.0], [-0.5, 0.2, 0.9]],
        dtype=torch.float64,
    )
    h = torch.sigmoid(logits).numpy()
    by_hand = [
        math.log(h[0, 0]),  # event at 1: first interval
        math.log(1 - h[1, 0]) + math.log(h[1, 1]),  # event at 5 = right end of (2,5]
        math.log(1 - h[2, 0]) + math.log(1 - h[2, 1]),  # censored at 6: survived (0,2] and (2,5]
        math.log(1 - h[3, 0]),  # censored at 4: survived (0,2] only
        math.log(1 - h[4, 0]),  # censored at 2 = end of (0,2]: survived it
        math.log(1 - h[5, 0]) + math.log(1 - h[5, 1]) + math.log(h[5, 2]),  # event after the last cut: last interval
    ]
    expected = -sum(by_hand) / 6
    assert discrete_time_nll(logits, time.double(), event.double(), cuts.double()).item() == pytest.approx(expected)
    at_risk, died = discrete_time_targets(time, event, cuts)
    assert at_risk.sum(1).tolist() == [1, 2, 2, 1, 1, 3]
    assert died.sum(1).tolist() == [1, 1, 0, 0, 0, 1]


def test_log_cumulative_hazard_is_minus_log_survival():
    logits = torch.tensor([[0.2, -1.0, 0.5], [-40.0, -45.0, -50.0], [3.0, 2.0, 1.0]], dtype=torch.float64)
    survival = torch.prod(1 - torch.sigmoid(logits), dim=1)
    expected = torch.log(-torch.log(survival[[0, 2]]))
    got = log_cumulative_hazard(logits)
    assert torch.allclose(got[[0, 2]], expected)
    assert torch.isfinite(got[1]) and got[1].item() == pytest.approx(-40.0, abs=0.01)  # no underflow to -inf


# ------------------------------------------------------------------------------------------------
# quality-of-life heads


def test_masked_mse_ignores_missing_values():
    prediction = torch.tensor([1.0, 2.0, 3.0])
    target = torch.tensor([1.5, float("nan"), 1.0])
    assert masked_mse(prediction, target).item() == pytest.approx((0.25 + 4.0) / 2)
    assert masked_mse(prediction, torch.full((3,), float("nan"))).item() == 0.0


def test_ordinal_nll_equals_hand_computed_cumulative_logit():
    eta = torch.tensor([0.0, 1.5, -0.5, 2.0], dtype=torch.float64)
    thresholds = torch.tensor([-1.0, 0.5, 2.0], dtype=torch.float64)  # 4 grades
    target = torch.tensor([0.0, 2.0, float("nan"), 3.0], dtype=torch.float64)

    def sig(v):
        return 1 / (1 + math.exp(-v))

    p0 = sig(-1.0 - 0.0)
    p2 = sig(2.0 - 1.5) - sig(0.5 - 1.5)
    p3 = 1 - sig(2.0 - 2.0)
    expected = -(math.log(p0) + math.log(p2) + math.log(p3)) / 3
    assert ordinal_nll(eta, thresholds, target).item() == pytest.approx(expected)
    probs = ordinal_probabilities(eta, thresholds)
    assert torch.allclose(probs.sum(1), torch.ones(4, dtype=torch.float64))
    assert (probs >= 0).all()
