"""Encoders, fusion and the LightningModule that trains them.

One encoder per modality maps that modality's features to a shared embedding; the fusion layer
combines the embeddings of the modalities a patient *has* (a mask, never zero-filled inputs taken
as measurements); two heads give the log relative hazard and the response logit.
"""

from __future__ import annotations

import lightning as L
import torch
from torch import nn

from multimodal.errors import MultimodalError
from multimodal.model.losses import cox_partial_likelihood, masked_bce


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
        return self.net(x)


class MaskedMeanFusion(nn.Module):
    """Mean of the embeddings of the modalities each patient has."""

    def forward(self, embeddings: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``embeddings``: patients x modalities x hidden; ``mask``: patients x modalities (bool)."""
        weight = mask.to(embeddings.dtype).unsqueeze(-1)
        return (embeddings * weight).sum(dim=1) / weight.sum(dim=1).clamp_min(1.0)


class MaskedSumFusion(nn.Module):
    """Sum of the embeddings of the modalities each patient has: each modality adds its own effect, as
    log-hazards of independent factors do; an absent modality adds nothing (its training mean)."""

    def forward(self, embeddings: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return (embeddings * mask.to(embeddings.dtype).unsqueeze(-1)).sum(dim=1)


FUSIONS = {"mean": MaskedMeanFusion, "sum": MaskedSumFusion}
HEADS = ("additive", "interaction")


class FusionNet(nn.Module):
    """Per-modality encoders, masked fusion, and risk and response heads."""

    def __init__(
        self,
        input_dims: dict[str, int],
        *,
        hidden_dim: int,
        dropout: float,
        input_dropout: float,
        fusion: str = "sum",
        head: str = "additive",
    ) -> None:
        super().__init__()
        if head not in HEADS:
            raise MultimodalError(f"model.head must be one of {', '.join(HEADS)}, got {head}")
        if fusion not in FUSIONS:
            raise MultimodalError(f"model.fusion must be one of {', '.join(FUSIONS)}, got {fusion}")
        self.modalities = list(input_dims)
        self.encoders = nn.ModuleDict(
            {
                name: ModalityEncoder(dim, hidden_dim, dropout=dropout, input_dropout=input_dropout)
                for name, dim in input_dims.items()
            }
        )
        self.fusion = FUSIONS[fusion]()
        # additive: risk is linear in the fused embedding, so each modality adds its own effect (a sum of
        # per-modality functions, as in a Cox model); interaction: one hidden layer after fusion lets the
        # effect of one modality depend on another (a treatment that helps only mutation carriers).
        self.trunk = (
            nn.Sequential(nn.Linear(hidden_dim, hidden_dim), nn.ELU(), nn.Dropout(dropout))
            if head == "interaction"
            else nn.Identity()
        )
        self.risk_head = nn.Linear(hidden_dim, 1)
        self.response_head = nn.Linear(hidden_dim, 1)

    def forward(self, *inputs: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Inputs are one tensor per modality (in ``self.modalities`` order), Captum-style."""
        embeddings = torch.stack([self.encoders[name](x) for name, x in zip(self.modalities, inputs, strict=True)], 1)
        fused = self.trunk(self.fusion(embeddings, mask))
        return self.risk_head(fused).squeeze(-1), self.response_head(fused).squeeze(-1)


class FusionSurvivalModel(L.LightningModule):
    """Trains :class:`FusionNet` on Cox partial likelihood plus weighted response cross-entropy."""

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
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = FusionNet(
            input_dims, hidden_dim=hidden_dim, dropout=dropout, input_dropout=input_dropout, fusion=fusion, head=head
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
        time, event, response = batch[n + 1 :]
        return inputs, mask, time, event, response

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        inputs, mask, time, event, response = self._split(batch)
        risk, logit = self(*inputs, mask=mask)
        cox = cox_partial_likelihood(risk, time, event)
        bce = masked_bce(logit, response)
        loss = cox + self.hparams.response_weight * bce
        self.log_dict(
            {"train_cox": cox, "train_bce": bce, "train_loss": loss},
            prog_bar=False,
            on_epoch=True,
            on_step=False,
            batch_size=len(time),
        )
        return loss

    def predict_step(self, batch, batch_idx: int) -> dict[str, torch.Tensor]:
        inputs, mask, *_ = self._split(batch)
        risk, logit = self(*inputs, mask=mask)
        return {"risk": risk, "response_prob": torch.sigmoid(logit)}

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(
            self.parameters(), lr=self.hparams.learning_rate, weight_decay=self.hparams.weight_decay
        )
