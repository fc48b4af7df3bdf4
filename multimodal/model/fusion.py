"""Encoders, fusion strategies and the LightningModule that trains them.

One encoder per modality maps that modality's features to a shared embedding; a fusion strategy (a
plain ``nn.Module``, chosen by ``model.fusion``) combines what the modalities a patient *has* say
(a mask, never zero-filled inputs taken as measurements); two heads give the log relative hazard and
the response logit. Optionally a linear term on the same selected features is added to the risk
("wide and deep"): with the deep term weighted 0 the model is a penalised Cox model.

Every strategy takes ``mask`` (patients x modalities, bool) and guarantees that a patient's outputs do
not depend on the inputs of a modality it lacks: the gradient of its risk with respect to those
inputs is exactly zero.
"""

from __future__ import annotations

import lightning as L
import torch
from torch import nn

from multimodal.errors import MultimodalError
from multimodal.model.losses import cox_partial_likelihood, discrete_time_nll, log_cumulative_hazard, masked_bce
from multimodal.model.tasks import make_head, task_loss


class _DropoutLinear(torch.autograd.Function):
    """``linear(dropout(x, p), weight, bias)`` for a 2-D float CPU input, computed in blocks of rows.

    ``nn.Dropout`` on CPU draws one Bernoulli variable per entry (slow: ~15x the cost of the product that
    follows on a 3,000 x 4,000 input) and writes the masked, rescaled input as a new tensor the size of
    the input (page faults on every step). Here the mask comes from random bytes of the default generator
    (8 bits per entry, or 16 where ``p`` is not a multiple of 1/256: entry kept iff its bits are >= the
    threshold); the masked input exists only one block of rows at a time, in cache, right before its
    product, and the survivors' ``1/(1 - p)`` scaling is applied to the product (patients x hidden) rather
    than to the input. The random bits (1 or 2 bytes per entry) are kept for the backward pass, which
    rebuilds each masked block for its product (redrawing them there from the saved generator state
    instead measured slower: drawing costs more than holding them). No library fuses a dropout mask into
    a matrix product on CPU, hence this hand-written function.

    Same distribution as ``nn.Dropout``: each entry is zeroed independently with probability ``p_used`` =
    ``p`` rounded to a multiple of 2^-8 or 2^-16 (:func:`dropout_threshold`), survivors scaled by
    ``1 / (1 - p_used)``, so the expectation is ``linear(x)`` exactly.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, p: float) -> torch.Tensor:
        bits, threshold, p_used = dropout_threshold(p)
        n, d = x.shape
        per_word = 64 // bits  # one int64 draw gives 8 (or 4) entries' bits
        raw = torch.empty((n * d + per_word - 1) // per_word, dtype=torch.int64).random_(-(2**63), None)
        draws = raw.view(torch.uint8 if bits == 8 else torch.int16)[: n * d].view(n, d)
        out = torch.empty(n, weight.shape[0], dtype=x.dtype)
        for rows, masked in _masked_blocks(x, draws, threshold):
            torch.mm(masked, weight.t(), out=out[rows])
        out.mul_(1.0 / (1.0 - p_used))
        if bias is not None:
            out.add_(bias)
        ctx.save_for_backward(x, weight, draws)
        ctx.threshold, ctx.scale, ctx.has_bias = threshold, 1.0 / (1.0 - p_used), bias is not None
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, weight, draws = ctx.saved_tensors
        grad_scaled = grad * ctx.scale
        grad_x = torch.empty_like(x) if ctx.needs_input_grad[0] else None
        grad_weight = torch.zeros_like(weight) if ctx.needs_input_grad[1] else None
        if grad_weight is not None:
            for rows, masked in _masked_blocks(x, draws, ctx.threshold):
                # out= rather than addmm_: the same kernel, and FLOP counters (FlopCounterMode) see it
                torch.addmm(grad_weight, grad_scaled[rows].t(), masked, out=grad_weight)
        if grad_x is not None:  # only when the input needs a gradient (not in training): d(keep * x)/dx = keep
            for rows, keep in _masked_blocks(x, draws, ctx.threshold, keep_only=True):
                torch.mul(grad_scaled[rows] @ weight, keep, out=grad_x[rows])
        grad_bias = grad.sum(0) if ctx.has_bias and ctx.needs_input_grad[2] else None
        return grad_x, grad_weight, grad_bias, None


def _masked_blocks(x: torch.Tensor, draws: torch.Tensor, threshold: int, *, keep_only: bool = False):
    """Yield ``(rows, x[rows] with the entries whose draw is below threshold zeroed, unscaled)`` block by
    block of rows (or with ``keep_only`` the 0/1 mask itself). Blocks of ~256k entries (1 MiB of float32),
    so mask and masked block stay in cache; every block lives in one reused scratch buffer: use each
    before asking for the next."""
    n, d = x.shape
    block = max(8, min(n, (1 << 18) // max(d, 1)))
    scratch = torch.empty(block, d, dtype=x.dtype)
    for start in range(0, n, block):
        rows = slice(start, min(start + block, n))
        # a float 0/1 mask and a float product: a product with a bool mask runs ~7x slower on CPU
        keep = torch.ge(draws[rows], threshold, out=scratch[: rows.stop - start])
        yield rows, keep if keep_only else torch.mul(x[rows], keep, out=keep)


def dropout_threshold(p: float) -> tuple[int, int, float]:
    """``(bits, threshold, p_used)`` of :class:`_DropoutLinear`: an entry is kept iff its ``bits``-bit draw
    (uint8, or int16 from -2^15) is ``>= threshold``; ``p_used`` is the drop probability that gives."""
    if float(p * 256).is_integer():
        return 8, int(p * 256), p
    k = round(p * 65536)
    return 16, k - 32768, k / 65536


def dropout_linear(x: torch.Tensor, dropout: nn.Dropout, linear: nn.Linear) -> torch.Tensor:
    """``linear(dropout(x))``: by :class:`_DropoutLinear` where it applies (training, CPU, 2-D float32/64,
    no autocast, 0 < p_used < 1), else the two modules as they are."""
    p = dropout.p
    fast = (
        dropout.training
        and 0 < p < 1
        and x.device.type == "cpu"
        and x.dim() == 2
        and x.dtype in (torch.float32, torch.float64)
        and linear.weight.dtype == x.dtype
        and not torch.is_autocast_enabled("cpu")
        and 0 < dropout_threshold(p)[2] < 1
    )
    if not fast:
        return linear(dropout(x))
    return _DropoutLinear.apply(x.contiguous(), linear.weight, linear.bias, p)


class ModalityEncoder(nn.Module):
    """Input dropout, one linear layer and a nonlinearity: small on purpose for cohorts of hundreds."""

    def __init__(self, n_features: int, hidden_dim: int, *, dropout: float, input_dropout: float) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Dropout(input_dropout),
            nn.Linear(max(n_features, 1), hidden_dim),
            nn.ELU(),
            nn.Dropout(dropout),
        )
        self.n_features = n_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.n_features == 0:  # a modality with no usable feature in this fold contributes nothing
            x = torch.zeros(x.shape[0], 1, dtype=x.dtype, device=x.device)
        input_dropout, linear, activation, dropout = self.net
        return dropout(activation(dropout_linear(x, input_dropout, linear)))


def masked_softmax(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Softmax over the modalities each patient has (``logits``, ``mask``: patients x modalities).

    Absent modalities get weight exactly 0 (and no gradient); a patient with no modality gets all zeros.
    """
    filled = logits.masked_fill(~mask, torch.finfo(logits.dtype).min)
    return torch.softmax(filled, dim=1) * mask.to(logits.dtype)


class MaskedMeanFusion(nn.Module):
    """Mean of the embeddings of the modalities each patient has."""

    takes_inputs = False
    gives_outputs = False

    def forward(self, embeddings: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``embeddings``: patients x modalities x hidden; ``mask``: patients x modalities (bool)."""
        weight = mask.to(embeddings.dtype).unsqueeze(-1)
        return (embeddings * weight).sum(dim=1) / weight.sum(dim=1).clamp_min(1.0)


class MaskedSumFusion(nn.Module):
    """Sum of the embeddings of the modalities each patient has: each modality adds its own effect, as
    log-hazards of independent factors do; an absent modality adds nothing (its training mean)."""

    takes_inputs = False
    gives_outputs = False

    def forward(self, embeddings: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return (embeddings * mask.to(embeddings.dtype).unsqueeze(-1)).sum(dim=1)


class GatedAttentionFusion(nn.Module):
    """Gated attention over modality embeddings (Ilse et al. 2018): a weight per modality and patient from
    ``w . (tanh(V e) * sigmoid(U e))``, renormalised over the modalities the patient has; the fused
    embedding is the weighted mean. :meth:`weights` gives the per-patient modality weights."""

    takes_inputs = False
    gives_outputs = False

    def __init__(self, hidden_dim: int, *, attention_dim: int | None = None) -> None:
        super().__init__()
        attention_dim = attention_dim or hidden_dim
        self.value = nn.Linear(hidden_dim, attention_dim)
        self.gate = nn.Linear(hidden_dim, attention_dim)
        self.score = nn.Linear(attention_dim, 1)

    def weights(self, embeddings: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        logits = self.score(torch.tanh(self.value(embeddings)) * torch.sigmoid(self.gate(embeddings))).squeeze(-1)
        return masked_softmax(logits, mask)

    def forward(self, embeddings: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return (self.weights(embeddings, mask).unsqueeze(-1) * embeddings).sum(dim=1)


class BilinearFusion(nn.Module):
    """Gated Kronecker-product fusion (Pathomic Fusion, Chen et al. 2020), for any number of modalities.

    Each embedding is projected to ``bilinear_dim`` units and gated by a sigmoid of all the patient's
    (masked) embeddings; a 1 is appended to each gated vector, so the Kronecker product of them holds
    every unimodal term and every product of modalities; a linear layer maps it to the hidden size. An
    absent modality's vector is (0, ..., 0, 1), the neutral element: the product reduces to that of
    the modalities the patient has. Size: (bilinear_dim + 1) ** modalities inputs to the last layer.
    """

    takes_inputs = False
    gives_outputs = False

    def __init__(self, n_modalities: int, hidden_dim: int, *, bilinear_dim: int, dropout: float) -> None:
        super().__init__()
        self.projections = nn.ModuleList(
            nn.Sequential(nn.Linear(hidden_dim, bilinear_dim), nn.ELU()) for _ in range(n_modalities)
        )
        self.gates = nn.ModuleList(nn.Linear(n_modalities * hidden_dim, bilinear_dim) for _ in range(n_modalities))
        self.dropout = nn.Dropout(dropout)
        self.out = nn.Sequential(
            nn.Linear((bilinear_dim + 1) ** n_modalities, hidden_dim), nn.ELU(), nn.Dropout(dropout)
        )

    def forward(self, embeddings: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        present = mask.to(embeddings.dtype).unsqueeze(-1)
        embeddings = embeddings * present
        context = embeddings.flatten(1)
        one = torch.ones(embeddings.shape[0], 1, dtype=embeddings.dtype, device=embeddings.device)
        product = one
        for j, (projection, gate) in enumerate(zip(self.projections, self.gates, strict=True)):
            z = torch.sigmoid(gate(context)) * projection(embeddings[:, j]) * present[:, j]
            v = torch.cat([self.dropout(z), one], dim=1)
            product = (product.unsqueeze(2) * v.unsqueeze(1)).flatten(1)
        return self.out(product)


class EarlyFusion(nn.Module):
    """Early fusion: one projection of the concatenated features of the modalities a patient has.

    An absent modality's features are multiplied by 0 before the projection (masked), and a learned
    missing-indicator vector per modality is added instead, so "not measured" is told apart from
    "measured at the training mean". Replaces the per-modality encoders.
    """

    takes_inputs = True
    gives_outputs = False

    def __init__(self, input_dims: dict[str, int], hidden_dim: int, *, dropout: float, input_dropout: float) -> None:
        super().__init__()
        self.n_features = sum(input_dims.values())
        self.input_dropout = nn.Dropout(input_dropout)
        self.projection = nn.Linear(max(self.n_features, 1), hidden_dim)
        self.missing = nn.Parameter(torch.zeros(len(input_dims), hidden_dim))
        self.out = nn.Sequential(nn.ELU(), nn.Dropout(dropout))

    def forward(self, inputs: list[torch.Tensor], mask: torch.Tensor) -> torch.Tensor:
        present = mask.to(inputs[0].dtype)
        if self.n_features:
            x = torch.cat([x * present[:, j : j + 1] for j, x in enumerate(inputs)], dim=1)
        else:
            x = torch.zeros(mask.shape[0], 1, dtype=present.dtype, device=mask.device)
        return self.out(dropout_linear(x, self.input_dropout, self.projection) + (1 - present) @ self.missing)


class LateFusion(nn.Module):
    """Late fusion: each modality its own risk and response logit (a linear head on its embedding),
    combined by learned modality weights renormalised over the modalities each patient has."""

    takes_inputs = False
    gives_outputs = True

    def __init__(self, n_modalities: int, hidden_dim: int) -> None:
        super().__init__()
        self.heads = nn.ModuleList(nn.Linear(hidden_dim, 2) for _ in range(n_modalities))
        self.weight_logits = nn.Parameter(torch.zeros(n_modalities))

    def weights(self, mask: torch.Tensor) -> torch.Tensor:
        return masked_softmax(self.weight_logits.expand(mask.shape), mask)

    def forward(self, embeddings: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Patients x 2: combined (risk, response logit)."""
        outputs = torch.stack([head(embeddings[:, j]) for j, head in enumerate(self.heads)], dim=1)
        return (self.weights(mask).unsqueeze(-1) * outputs).sum(dim=1)


FUSIONS = ("sum", "mean", "early", "attention", "bilinear", "late")
HEADS = ("additive", "interaction")


def make_fusion(
    name: str, input_dims: dict[str, int], *, hidden_dim: int, dropout: float, input_dropout: float, bilinear_dim: int
) -> nn.Module:
    """The fusion module ``model.fusion`` names."""
    n = len(input_dims)
    if name == "sum":
        return MaskedSumFusion()
    if name == "mean":
        return MaskedMeanFusion()
    if name == "attention":
        return GatedAttentionFusion(hidden_dim)
    if name == "bilinear":
        return BilinearFusion(n, hidden_dim, bilinear_dim=bilinear_dim, dropout=dropout)
    if name == "early":
        return EarlyFusion(input_dims, hidden_dim, dropout=dropout, input_dropout=input_dropout)
    if name == "late":
        return LateFusion(n, hidden_dim)
    raise MultimodalError(f"model.fusion must be one of {', '.join(FUSIONS)}, got {name}")


class ModalityDropout(nn.Module):
    """In training only, drop each modality a patient has with probability ``p`` (per patient, per step),
    never all of them: a patient all of whose modalities were drawn keeps one, chosen at random. The
    dropped modality is masked, exactly as if the patient lacked it. Identity in eval mode."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = float(p)

    def forward(self, mask: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return mask
        keep = mask & ~(torch.rand(mask.shape, device=mask.device) < self.p)
        lost_all = mask.any(dim=1) & ~keep.any(dim=1)
        if lost_all.any():
            score = torch.rand(mask.shape, device=mask.device).masked_fill(~mask, -1.0)
            chosen = nn.functional.one_hot(score.argmax(dim=1), mask.shape[1]).bool()
            keep = keep | (chosen & lost_all.unsqueeze(1))
        return keep


class LinearRisk(nn.Module):
    """The wide part: ``beta . x`` over the selected, scaled features of the modalities a patient has,
    plus a learned offset per modality the patient lacks (the missing indicator) — the design of the
    penalised Cox reference. Starts at 0 (the Cox null model)."""

    def __init__(self, input_dims: dict[str, int]) -> None:
        super().__init__()
        self.n_features = sum(input_dims.values())
        self.coef = nn.Parameter(torch.zeros(self.n_features))
        self.missing = nn.Parameter(torch.zeros(len(input_dims)))

    def forward(self, inputs: list[torch.Tensor], mask: torch.Tensor) -> torch.Tensor:
        present = mask.to(self.coef.dtype)
        risk = (1 - present) @ self.missing
        if self.n_features:
            x = torch.cat([x * present[:, j : j + 1] for j, x in enumerate(inputs)], dim=1)
            risk = risk + x @ self.coef
        return risk

    def penalty(self, *, l1: float, l2: float) -> torch.Tensor:
        """``l1 * sum|beta| + l2 * sum(beta^2) / 2`` (the missing-indicator offsets are not penalised)."""
        return l1 * self.coef.abs().sum() + 0.5 * l2 * (self.coef**2).sum()


class FusionNet(nn.Module):
    """Per-modality encoders, a fusion strategy, risk and response heads, and an optional linear term:
    ``risk = linear(x) + neural_weight * deep(x)``."""

    def __init__(
        self,
        input_dims: dict[str, int],
        *,
        hidden_dim: int,
        dropout: float,
        input_dropout: float,
        fusion: str = "sum",
        head: str = "additive",
        modality_dropout: float = 0.0,
        linear: bool = False,
        neural_weight: float = 1.0,
        bilinear_dim: int = 8,
        treatment_modality: str | None = None,
        effect_modifiers: list[int] | None = None,
        n_time_bins: int = 0,
        tasks: list[dict] | None = None,
    ) -> None:
        super().__init__()
        if head not in HEADS:
            raise MultimodalError(f"model.head must be one of {', '.join(HEADS)}, got {head}")
        if fusion not in FUSIONS:
            raise MultimodalError(f"model.fusion must be one of {', '.join(FUSIONS)}, got {fusion}")
        if fusion == "late" and head != "additive":
            raise MultimodalError(
                "model.head: interaction needs a fusion that mixes modalities; model.fusion: late gives each "
                "modality its own risk (use head: additive, or another fusion)"
            )
        if neural_weight == 0 and not linear:
            raise MultimodalError(
                "model.neural_weight is 0 and model.linear is false: the model would have no risk term"
            )
        self.modalities = list(input_dims)
        # the treatment arm (``model.treatment``) is an input of its own: it enters only the arm term
        # below, never an encoder, the fusion or the linear term, so a counterfactual changes only it
        self.treatment_index = self.modalities.index(treatment_modality) if treatment_modality else None
        n_treatment = input_dims[treatment_modality] if treatment_modality else 0
        if treatment_modality:
            input_dims = {k: v for k, v in input_dims.items() if k != treatment_modality}
        self.feature_modalities = list(input_dims)
        self.modality_dropout = ModalityDropout(modality_dropout)
        self.fusion = make_fusion(
            fusion,
            input_dims,
            hidden_dim=hidden_dim,
            dropout=dropout,
            input_dropout=input_dropout,
            bilinear_dim=bilinear_dim,
        )
        self.encoders = nn.ModuleDict(
            {}
            if self.fusion.takes_inputs
            else {
                name: ModalityEncoder(dim, hidden_dim, dropout=dropout, input_dropout=input_dropout)
                for name, dim in input_dims.items()
            }
        )
        if not self.fusion.gives_outputs:
            # additive: risk is linear in the fused embedding, so with sum fusion each modality adds its own
            # effect (a sum of per-modality functions, as in a Cox model); interaction: one hidden layer after
            # fusion lets the effect of one modality depend on another (a treatment that helps only carriers).
            self.trunk = (
                nn.Sequential(nn.Linear(hidden_dim, hidden_dim), nn.ELU(), nn.Dropout(dropout))
                if head == "interaction"
                else nn.Identity()
            )
            self.risk_head = nn.Linear(hidden_dim, 1)
            self.response_head = nn.Linear(hidden_dim, 1)
        self.linear = LinearRisk(input_dims) if linear else None
        self.neural_weight = float(neural_weight)
        if treatment_modality:
            # arm x features: each non-reference arm's log-hazard effect is a linear function of the
            # patient's fused representation (after the interaction head's hidden layer, if any)
            self.treatment_effect = nn.Linear(hidden_dim, max(n_treatment, 1))
            # and linear in the patient's selected, scaled features (as a Cox model with arm x feature terms)
            self.treatment_linear = nn.Linear(max(sum(input_dims.values()), 1), max(n_treatment, 1), bias=False)
            nn.init.zeros_(self.treatment_linear.weight)
            self.n_treatment = n_treatment
        # the benefit head with its own effect modifiers (multimodal.model.benefit): each arm's effect is linear
        # in these selected features only (flat indices over the feature modalities), no representation term
        if treatment_modality and effect_modifiers is not None:
            self.register_buffer("effect_modifiers", torch.as_tensor(list(effect_modifiers), dtype=torch.long))
            self.treatment_effect = nn.Linear(max(len(effect_modifiers), 1), max(n_treatment, 1))
            nn.init.zeros_(self.treatment_effect.weight)
            self.treatment_linear = None
        else:
            self.effect_modifiers = None

        # discrete-time survival (``model.survival_loss: discrete``): interval j's hazard logit is a baseline
        # b_j plus the risk above plus a time-varying term of the representation (zero at the start)
        self.n_time_bins = int(n_time_bins)
        if self.n_time_bins:
            self.time_bias = nn.Parameter(torch.zeros(self.n_time_bins))
            self.time_head = nn.Linear(hidden_dim, self.n_time_bins, bias=False)
            nn.init.zeros_(self.time_head.weight)
        # quality-of-life heads (multimodal.model.tasks), one per task spec, on the fused representation
        self.task_specs = [dict(t) for t in (tasks or [])]
        self.task_heads = nn.ModuleDict({t["name"]: make_head(t, hidden_dim) for t in self.task_specs})
        self.needs_representation = bool(self.n_time_bins or self.task_specs)
        self._representation: torch.Tensor | None = None

    def embeddings(self, inputs: list[torch.Tensor]) -> torch.Tensor:
        """Patients x modalities x hidden: each modality's encoder output (masking is the fusion's job)."""
        return torch.stack([self.encoders[name](x) for name, x in zip(self.feature_modalities, inputs, strict=True)], 1)

    def forward(self, *inputs: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(risk, response logit)``; inputs are one tensor per modality (in ``self.modalities`` order),
        Captum-style. ``risk`` is the log relative hazard (Cox) or the log cumulative hazard at the last cut
        (discrete-time survival): the scalar risk score everything downstream ranks by."""
        out = self.outputs(*inputs, mask=mask)
        return out["risk"], out["logit"]

    def outputs(self, *inputs: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
        """Every head's output: ``risk``, ``logit``, ``hazard_logits`` (patients x intervals, discrete-time
        survival only) and ``task:<name>`` per QoL task (the head's raw output, see multimodal.model.tasks)."""
        self._representation = None
        risk, logit = self._risk_and_logit(*inputs, mask=mask)
        out = {"risk": risk, "logit": logit}
        representation, self._representation = self._representation, None  # hold no graph between calls
        if self.needs_representation and representation is None:  # late fusion without a treatment arm
            raise RuntimeError("the fused representation was not recorded")
        if self.n_time_bins:
            hazard = risk[:, None] + self.time_bias + self.neural_weight * self.time_head(representation)
            out["hazard_logits"] = hazard
            out["risk"] = log_cumulative_hazard(hazard)
        for spec in self.task_specs:
            out[f"task:{spec['name']}"] = self.task_heads[spec["name"]](representation)
        return out

    def _risk_and_logit(self, *inputs: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The Cox-scale risk (linear predictor) and the response logit; records the fused representation."""
        inputs = list(inputs)
        treatment = None
        if self.treatment_index is not None:
            j = self.treatment_index
            arm = inputs.pop(j)
            treatment = arm * mask[:, j : j + 1].to(arm.dtype)
            mask = torch.cat([mask[:, :j], mask[:, j + 1 :]], dim=1)
        mask = self.modality_dropout(mask)
        if self.fusion.takes_inputs:
            fused = self.fusion(inputs, mask)
        else:
            embeddings = self.embeddings(inputs)
            fused = self.fusion(embeddings, mask)
        if self.fusion.gives_outputs:
            risk, logit = fused[:, 0], fused[:, 1]
            representation = (
                MaskedMeanFusion()(embeddings, mask) if treatment is not None or self.needs_representation else None
            )
        else:
            fused = self.trunk(fused)
            representation = fused
            risk, logit = self.risk_head(fused).squeeze(-1), self.response_head(fused).squeeze(-1)
        self._representation = representation
        risk = self.neural_weight * risk
        if self.linear is not None:
            risk = risk + self.linear(inputs, mask)
        if treatment is not None and self.n_treatment:
            # sum over non-reference arms of (arm input) x (that arm's effect for this patient)
            if self.effect_modifiers is not None:
                present = mask.to(treatment.dtype)
                flat = torch.cat([x * present[:, j : j + 1] for j, x in enumerate(inputs)], dim=1)
                if len(self.effect_modifiers):
                    chosen = flat[:, self.effect_modifiers]
                else:  # no modifier: one common arm effect (the bias)
                    chosen = torch.zeros(flat.shape[0], 1, dtype=flat.dtype, device=flat.device)
                risk = risk + (treatment * self.treatment_effect(chosen)).sum(dim=1)
                return risk, logit
            effect = self.treatment_effect(representation)
            if sum(x.shape[1] for x in inputs):
                present = mask.to(treatment.dtype)
                flat = torch.cat([x * present[:, j : j + 1] for j, x in enumerate(inputs)], dim=1)
                effect = effect + self.treatment_linear(flat)
            risk = risk + (treatment * effect).sum(dim=1)
        return risk, logit


class FusionSurvivalModel(L.LightningModule):
    """Trains :class:`FusionNet` on Cox partial likelihood plus weighted response cross-entropy, plus the
    L1/L2 penalty of the linear term when there is one. Weight decay applies to the deep part only."""

    def __init__(
        self,
        input_dims: dict[str, int],
        *,
        hidden_dim: int = 16,
        dropout: float = 0.2,
        input_dropout: float = 0.5,
        learning_rate: float = 3e-3,
        weight_decay: float = 1e-3,
        response_weight: float = 0.3,
        fusion: str = "sum",
        head: str = "additive",
        modality_dropout: float = 0.0,
        linear: bool = False,
        neural_weight: float = 1.0,
        linear_l1: float = 0.03,
        linear_l2: float = 0.1,
        linear_learning_rate: float = 0.03,
        ties: str = "efron",
        survival_loss: str = "cox",
        time_cuts: list[float] | None = None,
        tasks: list[dict] | None = None,
        survival_weight: float = 1.0,
        bilinear_dim: int = 8,
        treatment_modality: str | None = None,
        effect_modifiers: list[int] | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = FusionNet(
            input_dims,
            hidden_dim=hidden_dim,
            dropout=dropout,
            input_dropout=input_dropout,
            fusion=fusion,
            head=head,
            modality_dropout=modality_dropout,
            linear=linear,
            neural_weight=neural_weight,
            bilinear_dim=bilinear_dim,
            treatment_modality=treatment_modality,
            effect_modifiers=effect_modifiers,
            n_time_bins=len(time_cuts or []) if survival_loss == "discrete" else 0,
            tasks=tasks,
        )

    @property
    def modalities(self) -> list[str]:
        return self.net.modalities

    def forward(self, *inputs: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.net(*inputs, mask=mask)

    def risk(self, *inputs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Log relative hazard only: the output attributions explain."""
        return self.net(*inputs, mask=mask)[0]

    def _split(self, batch):
        n = len(self.modalities)
        inputs, mask = batch[:n], batch[n]
        time, event, response, *rest = batch[n + 1 :]
        targets = rest[0] if rest else time.new_zeros(len(time), 0)  # QoL targets: patients x tasks
        return inputs, mask, time, event, response, targets

    def multitask_loss(
        self, out: dict[str, torch.Tensor], time, event, response, targets
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor], int]:
        """``survival_weight * survival + response_weight * response BCE + sum of weight * QoL task loss``,
        the parts for the log, and the number of patients. The survival part is the Cox partial likelihood
        (``ties``) or the discrete-time likelihood over the fold's ``time_cuts``; the batch is gathered
        whole first (:meth:`whole_batch`), column by column."""
        hazard = out.get("hazard_logits")
        hazard_columns = tuple(hazard.unbind(1)) if hazard is not None else ()
        specs = self.net.task_specs
        task_columns = tuple(targets[:, int(s["column"])] for s in specs)
        task_outputs = tuple(out[f"task:{s['name']}"] for s in specs)
        time, risk, logit, event, response, *rest = self.whole_batch(
            time, out["risk"], out["logit"], event, response, *hazard_columns, *task_columns, *task_outputs
        )
        n_bins, n_tasks = len(hazard_columns), len(specs)
        if hazard is not None:
            cuts = torch.as_tensor(self.hparams.time_cuts, dtype=time.dtype, device=time.device)
            survival = discrete_time_nll(torch.stack(rest[:n_bins], 1), time, event, cuts)
            logged = {"train_discrete_nll": survival}
        else:
            survival = cox_partial_likelihood(risk, time, event, ties=self.hparams.ties)
            logged = {"train_cox": survival}
        bce = masked_bce(logit, response)
        loss = self.hparams.survival_weight * survival + self.hparams.response_weight * bce
        logged["train_bce"] = bce
        for spec, target, output in zip(specs, rest[n_bins : n_bins + n_tasks], rest[n_bins + n_tasks :], strict=True):
            value = task_loss(spec, self.net.task_heads[spec["name"]], output, target)
            logged[f"train_{spec['name']}"] = value
            loss = loss + spec["weight"] * value
        return loss, logged, len(time)

    def whole_batch(self, time: torch.Tensor, *values: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The batch the loss sees, in float32 (bf16-mixed computes the model, not the loss, in bfloat16).

        Under several processes (``model.strategy: ddp``) each rank holds a share of the training rows, but
        the Cox partial likelihood needs the whole risk set: every rank gathers ``time`` and ``values`` of all
        ranks (``all_gather`` with gradients, so each rank's outputs get the gradient of the whole-batch
        loss), then drops the padding rows (time NaN) that gave the ranks equal shares. Every rank then
        computes the single-process loss; DDP's gradient averaging over ranks gives its gradient.
        """
        values = tuple(v.float() if v.is_floating_point() else v for v in values)
        trainer = self._trainer
        if trainer is None or trainer.world_size == 1:
            return (time, *values)
        time, *values = (self.all_gather(t, sync_grads=True).reshape(-1) for t in (time, *values))
        keep = torch.isfinite(time)
        return (time[keep], *(v[keep] for v in values))

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        inputs, mask, time, event, response, targets = self._split(batch)
        loss, logged, n = self.multitask_loss(self.net.outputs(*inputs, mask=mask), time, event, response, targets)
        if self.net.linear is not None:
            logged["train_linear_penalty"] = self.net.linear.penalty(
                l1=self.hparams.linear_l1, l2=self.hparams.linear_l2
            )
            loss = loss + logged["train_linear_penalty"]
        self.log_dict(logged | {"train_loss": loss}, prog_bar=False, on_epoch=True, on_step=False, batch_size=n)
        return loss

    def predict_step(self, batch, batch_idx: int) -> dict[str, torch.Tensor]:
        inputs, mask, *_ = self._split(batch)
        risk, logit = self(*inputs, mask=mask)
        return {"risk": risk, "response_prob": torch.sigmoid(logit)}

    def configure_optimizers(self) -> torch.optim.Optimizer:
        linear = list(self.net.linear.parameters()) if self.net.linear is not None else []
        if getattr(self.net, "effect_modifiers", None) is not None:  # the benefit head is a linear model too
            linear += list(self.net.treatment_effect.parameters())
        linear_ids = {id(p) for p in linear}
        deep = [p for p in self.parameters() if id(p) not in linear_ids]
        groups = [{"params": deep, "lr": self.hparams.learning_rate, "weight_decay": self.hparams.weight_decay}]
        if linear:  # penalised explicitly (L1/L2 in the loss), not by weight decay
            groups.append({"params": linear, "lr": self.hparams.linear_learning_rate, "weight_decay": 0.0})
        return torch.optim.AdamW(groups)
