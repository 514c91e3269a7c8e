"""AUG's configurable classifier and sustained-boosting loss (docs/methods/aug.md#model, #loss, #gated).

Per modality m, learner k maps the encoder feature h_m to ReLU(A_k h_m + d_k) in R^256 and one head H: 256 -> K,
shared by every modality and learner, turns it into logits z_{m,k}. Learner 0 is the paper's base embedding; extra
learners are appended by adaptive classifier assignment. All learners of a modality run as one matrix product.
Reference: GitHub njustkmg/NeurIPS25-AUG, ``model/AudioVideo.py``, ``AVGBShareClassifier`` (``add_layer``,
``classfier``, and at commit 966dbf5 ``w_network``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

RESIDUAL_TARGETS = ("ensemble_softmax", "per_learner_prob_sum")


def new_learner(in_dim: int, hidden: int) -> nn.Linear:
    """One weak learner's layer, Xavier-normal weight and zero bias (``add_layer``); ReLU is applied in forward."""
    layer = nn.Linear(in_dim, hidden)
    nn.init.xavier_normal_(layer.weight)
    nn.init.zeros_(layer.bias)
    return layer


class LearnerStack(nn.Module):
    """A modality's growing list of learners; ``forward`` returns their 256-d outputs as (B, n + 1, hidden)."""

    def __init__(self, in_dim: int, hidden: int) -> None:
        super().__init__()
        self.in_dim, self.hidden = in_dim, hidden
        self.layers = nn.ModuleList([new_learner(in_dim, hidden)])

    def __len__(self) -> int:
        return len(self.layers)

    def grow(self) -> nn.Linear:
        ref = self.layers[0].weight
        layer = new_learner(self.in_dim, self.hidden).to(device=ref.device, dtype=ref.dtype)
        self.layers.append(layer)
        return layer

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        weight = torch.cat([layer.weight for layer in self.layers])
        bias = torch.cat([layer.bias for layer in self.layers])
        return F.relu(F.linear(h, weight, bias)).unflatten(-1, (len(self.layers), self.hidden))


class GateNet(nn.Module):
    """g: R -> (0, 1), Linear(1, 512)-ReLU-Linear(512, 64)-ReLU-Linear(64, 1)-Sigmoid, applied to each modality's
    running score separately (``AVGBShareClassifier.w_network`` at commit 966dbf5)."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(1, 512), nn.ReLU(), nn.Linear(512, 64), nn.ReLU(), nn.Linear(64, 1),
                                 nn.Sigmoid())

    def forward(self, scores: torch.Tensor) -> torch.Tensor:
        # In the network's own dtype: the scores are float64 sums, the network float32 (or float64 in parity runs).
        return self.net(scores.to(self.net[0].weight.dtype)[:, None])[:, 0]


def learner_logits(stack: LearnerStack, head: nn.Linear, h: torch.Tensor,
                   gate: torch.Tensor | None = None) -> torch.Tensor:
    """z_{m,k} = H(phi_{m,k}(h_m)) for every learner, shape (B, n + 1, K).

    With a gate value w_m (the gated variant), every extra learner's logits are multiplied by w_m before the
    ensemble, previous-ensemble and newest-learner logits are formed; learner 0 is never gated.
    """
    z = head(stack(h))
    if gate is not None and z.shape[1] > 1:
        z = torch.cat([z[:, :1], z[:, 1:] * gate.to(z.dtype)], dim=1)
    return z


def sustained_boosting_loss(z: torch.Tensor, labels: torch.Tensor, lam: float,
                            residual_target: str = "ensemble_softmax") -> tuple[torch.Tensor, torch.Tensor]:
    """L_m of docs/methods/aug.md#loss from the per-learner logits z (B, n + 1, K); returns (loss, ensemble logits).

    n = 0: CE(z_0, y). n >= 1: CE(z_all, y) + CE(z_prev, y) + CE_soft(z_new, e_y - lam * q_y * e_y), computed as
    the equivalent weighted CE -(1 - lam * q_y) log p(z_new)_y; each term is a batch mean. q is detached and is
    softmax(z_prev) (``ensemble_softmax``, the official code) or sum_{k<n} softmax(z_k) (``per_learner_prob_sum``,
    the paper's eq. (2) read literally; its weight may turn negative with many learners, as the formula allows).
    """
    if residual_target not in RESIDUAL_TARGETS:
        raise ValueError(f"aug.residual_target={residual_target!r} is not one of {list(RESIDUAL_TARGETS)}")
    z = z.to(torch.promote_types(z.dtype, torch.float32))
    z_all = z.sum(dim=1)
    if z.shape[1] == 1:
        return F.cross_entropy(z_all, labels), z_all
    z_prev = z[:, :-1].sum(dim=1)
    z_new = z[:, -1]
    with torch.no_grad():
        if residual_target == "ensemble_softmax":
            q = torch.softmax(z_prev, dim=1)
        else:
            q = torch.softmax(z[:, :-1], dim=2).sum(dim=1)
        weight = 1.0 - lam * q.gather(1, labels[:, None])[:, 0]
    residual = -(weight * F.log_softmax(z_new, dim=1).gather(1, labels[:, None])[:, 0]).mean()
    return F.cross_entropy(z_all, labels) + F.cross_entropy(z_prev, labels) + residual, z_all
