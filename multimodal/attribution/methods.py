"""Captum attribution methods over the fusion model's risk output, for one batch of patients.

Inputs are one tensor per modality (Captum's tuple form) plus the patients' modality mask, passed to the
model as an additional forward argument: Captum repeats it alongside the inputs across integration steps and
internal batches, so every row keeps its own mask.

Feature methods (``explain.method``):

- ``integrated_gradients``: path integral from the baseline (training-fold mean: 0 after fold scaling);
  complete, so per patient attributions sum to risk(x) - risk(baseline) up to the convergence delta;
  evaluated in internal batches of ``internal_batch_size`` rows so large cohorts fit in memory;
- ``gradient_shap``: expected gradients with baselines drawn from the fold's *training* patients (seeded);
  the delta is the completeness gap averaged over the drawn samples;
- ``deeplift``: DeepLift (rescale rule) against the same zero baseline as Integrated Gradients.

Group methods (``explain.group_method``), one group per modality via Captum's ``feature_mask``: the group
holds the modality's features and its presence flag, and removing a group marks the modality absent (its
mask set to 0), which is how the model treats a patient without that modality. ``shapley_value_sampling``
(permutation sampling; efficient, so the groups sum to risk(x) - risk(no modality)) or ``feature_ablation``
(one group removed at a time).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from multimodal.errors import MultimodalError

if TYPE_CHECKING:
    import torch

    from multimodal.model.fusion import FusionSurvivalModel

METHODS = ("integrated_gradients", "gradient_shap", "deeplift")
GROUP_METHODS = ("shapley_value_sampling", "feature_ablation")
#: Floats per internal batch of Integrated Gradients when ``internal_batch_size`` is not set (64 MiB in float32).
AUTO_BATCH_FLOATS = 2**24


@dataclass(frozen=True)
class MethodSettings:
    """How a batch is attributed (the ``explain`` config section, checked)."""

    method: str = "integrated_gradients"
    n_steps: int = 64
    n_samples: int = 20
    internal_batch_size: int | None = None
    group_method: str = "shapley_value_sampling"
    group_samples: int = 25
    seed: int = 0

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise MultimodalError(f"explain.method: unknown '{self.method}'; available: {', '.join(METHODS)}")
        if self.group_method not in GROUP_METHODS:
            raise MultimodalError(
                f"explain.group_method: unknown '{self.group_method}'; available: {', '.join(GROUP_METHODS)}"
            )
        for key in ("n_steps", "n_samples", "group_samples"):
            if int(getattr(self, key)) < 1:
                raise MultimodalError(f"explain.{key} must be at least 1, got {getattr(self, key)}")
        if self.internal_batch_size is not None and int(self.internal_batch_size) < 1:
            raise MultimodalError(f"explain.internal_batch_size must be at least 1, got {self.internal_batch_size}")


def auto_internal_batch_size(n_features: int, n_steps: int) -> int:
    """Rows (patient x step) per internal batch so one batch's inputs hold about 2^24 floats, at least one step
    set."""
    return max(n_steps, AUTO_BATCH_FLOATS // max(n_features, 1))


class _Risk:
    """The model's risk as a function of the attributed (non-empty) modality tensors and the mask."""

    def __init__(self, model: FusionSurvivalModel, widths: list[int], used: list[int]) -> None:
        self.model, self.widths, self.used = model, widths, used

    def full(self, xs, mask):
        import torch

        device, dtype = mask.device, xs[0].dtype if xs else torch.float32
        full = [torch.zeros(mask.shape[0], 0, device=device, dtype=dtype) for _ in self.widths]
        for j, x in zip(self.used, xs, strict=True):
            full[j] = x
        return full

    def __call__(self, *args):
        *xs, mask = args
        return self.model.risk(*self.full(xs, mask), mask=mask)


def _module(risk: _Risk):
    """An ``nn.Module`` around the risk (DeepLift hooks the model's layers through it)."""
    from torch import nn

    class RiskModule(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = risk.model

        def forward(self, *args):
            return risk(*args)

    return RiskModule()


def attribute_batch(
    model: FusionSurvivalModel,
    inputs: list[torch.Tensor],
    mask: torch.Tensor,
    *,
    settings: MethodSettings,
    background: list[torch.Tensor] | None = None,
) -> tuple[list[np.ndarray], np.ndarray]:
    """Attributions of the risk for a batch (one array per modality) and each patient's convergence delta.

    ``background``: the fold's training patients' inputs (same layout as ``inputs``), required by
    ``gradient_shap``, which draws its baselines from them. A modality with no feature in this fold has
    nothing to attribute (an empty array is returned for it).
    """
    import torch
    from captum.attr import DeepLift, GradientShap, IntegratedGradients

    model.eval()
    n = int(mask.shape[0])
    used = [j for j, x in enumerate(inputs) if x.shape[1] > 0]
    out = [np.zeros((x.shape[0], 0)) for x in inputs]
    if not used or n == 0:  # no feature in any modality: the risk is the same for everyone, nothing to attribute
        return out, np.zeros(n)
    risk = _Risk(model, [x.shape[1] for x in inputs], used)
    attributed = tuple(inputs[j] for j in used)
    zeros = tuple(torch.zeros_like(x) for x in attributed)
    if settings.method == "integrated_gradients":
        width = sum(x.shape[1] for x in attributed) + mask.shape[1]
        batch = settings.internal_batch_size or auto_internal_batch_size(width, settings.n_steps)
        ig = IntegratedGradients(risk)
        pieces = []
        # Captum's internal batches hold at least one step of every patient given: patients go in chunks of
        # ``batch`` so an internal batch never exceeds ``batch`` rows, however large the cohort
        for start in range(0, n, batch):
            rows = slice(start, start + batch)
            pieces.append(
                ig.attribute(
                    tuple(x[rows] for x in attributed),
                    baselines=tuple(z[rows] for z in zeros),
                    additional_forward_args=(mask[rows],),
                    n_steps=settings.n_steps,
                    method="gausslegendre",
                    internal_batch_size=batch,
                    return_convergence_delta=True,
                )
            )
        attributions = tuple(torch.cat([p[0][i] for p in pieces]) for i in range(len(attributed)))
        delta = torch.cat([p[1] for p in pieces])
    elif settings.method == "deeplift":
        attributions, delta = DeepLift(_module(risk)).attribute(
            tuple(x.detach().clone().requires_grad_() for x in attributed),
            baselines=zeros,
            additional_forward_args=(mask,),
            return_convergence_delta=True,
        )
    else:
        if background is None or not len(background) or background[0].shape[0] == 0:
            raise MultimodalError("gradient_shap needs the fold's training patients as baselines; none were given")
        # Captum draws the baselines and path points from numpy's and torch's global generators: seed both
        generator_state, numpy_state = torch.random.get_rng_state(), np.random.get_state()
        torch.manual_seed(settings.seed)
        np.random.seed(settings.seed)
        try:
            attributions, delta = GradientShap(risk).attribute(
                attributed,
                baselines=tuple(background[j].to(attributed[0].device) for j in used),
                n_samples=settings.n_samples,
                additional_forward_args=(mask,),
                return_convergence_delta=True,
            )
        finally:
            torch.random.set_rng_state(generator_state)
            np.random.set_state(numpy_state)
        delta = delta.reshape(n, settings.n_samples).mean(dim=1)
    for j, a in zip(used, attributions, strict=True):
        out[j] = a.detach().cpu().numpy().astype(np.float64)
    return out, delta.detach().cpu().numpy().astype(np.float64).reshape(n)


def attribute_groups(
    model: FusionSurvivalModel,
    inputs: list[torch.Tensor],
    mask: torch.Tensor,
    *,
    settings: MethodSettings,
) -> np.ndarray:
    """Per patient and modality (patients x modalities), the modality's contribution to the risk by the group
    method: its features and presence flag form one Captum ``feature_mask`` group, removed = modality masked.

    With ``shapley_value_sampling`` a patient's row sums to risk(x) minus the risk with every modality absent;
    a modality the patient lacks contributes exactly 0.
    """
    import torch
    from captum.attr import FeatureAblation, ShapleyValueSampling

    model.eval()
    n, m = int(mask.shape[0]), int(mask.shape[1])
    if n == 0:
        return np.zeros((0, m))
    used = [j for j, x in enumerate(inputs) if x.shape[1] > 0]

    def forward(*args):
        *xs, presence, base_mask = args
        full = [torch.zeros(presence.shape[0], x.shape[1], dtype=x.dtype, device=x.device) for x in inputs]
        for j, x in zip(used, xs, strict=True):
            full[j] = x
        return model.risk(*full, mask=base_mask & (presence > 0.5))

    presence = torch.ones(n, m, dtype=torch.float32, device=mask.device)
    attributed = (*(inputs[j] for j in used), presence)
    groups = (
        *(torch.full((1, inputs[j].shape[1]), j, dtype=torch.long, device=mask.device) for j in used),
        torch.arange(m, device=mask.device).reshape(1, m),
    )
    baselines = tuple(torch.zeros_like(x[:1]) for x in attributed)
    with torch.no_grad():
        if settings.group_method == "shapley_value_sampling":
            generator_state = torch.random.get_rng_state()
            torch.manual_seed(settings.seed)  # the sampled permutations
            try:
                result = ShapleyValueSampling(forward).attribute(
                    attributed,
                    baselines=baselines,
                    additional_forward_args=(mask,),
                    feature_mask=groups,
                    n_samples=settings.group_samples,
                    perturbations_per_eval=m,
                )
            finally:
                torch.random.set_rng_state(generator_state)
        else:
            result = FeatureAblation(forward).attribute(
                attributed,
                baselines=baselines,
                additional_forward_args=(mask,),
                feature_mask=groups,
                perturbations_per_eval=m,
            )
    # every member of a group carries the group's value; the presence column holds one per modality
    return result[-1].detach().cpu().numpy().astype(np.float64)


def masked_risk(
    model: FusionSurvivalModel, inputs: list[torch.Tensor], mask: torch.Tensor, *, drop: int | None = None
) -> np.ndarray:
    """The model's risk for a batch, with modality ``drop`` (an index) masked out for everyone when given."""
    import torch

    model.eval()
    if drop is not None:
        mask = mask.clone()
        mask[:, drop] = False
    with torch.no_grad():
        return model.risk(*inputs, mask=mask).detach().cpu().numpy().astype(np.float64)
