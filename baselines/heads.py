"""Fusion heads (docs/methods/README.md#heads). Each maps ``{modality: (B, d_m)}`` to fused logits and, where the
head defines them, per-modality logits. Modalities are combined in the dataset's declared order (audio first), for 2
or 3 modalities.
"""

from __future__ import annotations

import torch
from torch import nn

Features = dict[str, torch.Tensor]


class ConcatHead(nn.Module):
    """z = W [h_1; ...; h_M] + b. Split-head logits z_m = W[:, slice_m] h_m + b/M, so sum_m z_m == z exactly."""

    has_unimodal = True

    def __init__(self, dims: dict[str, int], num_classes: int) -> None:
        super().__init__()
        self.names = tuple(dims)
        self.fc = nn.Linear(sum(dims.values()), num_classes)
        bounds, start = {}, 0
        for name, d in dims.items():
            bounds[name] = (start, start + d)
            start += d
        self.bounds = bounds

    def split_logits(self, h: Features, weight: torch.Tensor | None = None, bias: torch.Tensor | None = None
                     ) -> dict[str, torch.Tensor]:
        weight = self.fc.weight if weight is None else weight
        bias = self.fc.bias if bias is None else bias
        m = len(self.names)
        return {n: h[n] @ weight[:, a:b].t() + bias / m for n, (a, b) in self.bounds.items()}

    def forward(self, h: Features) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        z = self.fc(torch.cat([h[n] for n in self.names], dim=1))
        return z, self.split_logits(h)


class SumHead(nn.Module):
    """z = sum_m (W_m h_m + b_m); per-modality logits are the summands (OGM-GE ``SumFusion``)."""

    has_unimodal = True

    def __init__(self, dims: dict[str, int], num_classes: int) -> None:
        super().__init__()
        self.heads = nn.ModuleDict({n: nn.Linear(d, num_classes) for n, d in dims.items()})

    def forward(self, h: Features) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        z_uni = {n: head(h[n]) for n, head in self.heads.items()}
        return torch.stack(list(z_uni.values())).sum(0), z_uni


class WeightHead(nn.Module):
    """z = sum_m w_m (W_m h_m + b_m), (w_m) = softmax of a learnable M-vector.

    docs/methods/fusion.md: AUG's "Weight" row does not state the weight form; this is the project's placeholder
    ``weight_learned_scalar`` and is labelled as ours.
    """

    has_unimodal = True

    def __init__(self, dims: dict[str, int], num_classes: int) -> None:
        super().__init__()
        self.heads = nn.ModuleDict({n: nn.Linear(d, num_classes) for n, d in dims.items()})
        self.mix = nn.Parameter(torch.zeros(len(dims)))

    def forward(self, h: Features) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        z_uni = {n: head(h[n]) for n, head in self.heads.items()}
        w = torch.softmax(self.mix, dim=0)
        return sum(w[i] * z for i, z in enumerate(z_uni.values())), z_uni


class FiLMHead(nn.Module):
    """(gamma, beta) from the conditioning modalities (all but the last: audio for A/V) modulate the last one:
    z = W_out(gamma * h_last + beta). OGM-GE ``FiLM`` with x_film=True. No per-modality logits."""

    has_unimodal = False

    def __init__(self, dims: dict[str, int], num_classes: int) -> None:
        super().__init__()
        names = tuple(dims)
        self.cond, self.target = names[:-1], names[-1]
        d = dims[self.target]
        self.film = nn.Linear(sum(dims[n] for n in self.cond), 2 * d)
        self.out = nn.Linear(d, num_classes)

    def forward(self, h: Features) -> tuple[torch.Tensor, None]:
        gamma, beta = self.film(torch.cat([h[n] for n in self.cond], dim=1)).chunk(2, dim=1)
        return self.out(gamma * h[self.target] + beta), None


class GatedHead(nn.Module):
    """z = W_out(sigmoid(W_x h_gate) * (W_y h_last)); the gating modalities (audio for A/V) gate the last one.
    OGM-GE ``GatedFusion`` with x_gate=True. No per-modality logits."""

    has_unimodal = False

    def __init__(self, dims: dict[str, int], num_classes: int, hidden: int = 512) -> None:
        super().__init__()
        names = tuple(dims)
        self.gate, self.target = names[:-1], names[-1]
        self.fc_x = nn.Linear(sum(dims[n] for n in self.gate), hidden)
        self.fc_y = nn.Linear(dims[self.target], hidden)
        self.out = nn.Linear(hidden, num_classes)

    def forward(self, h: Features) -> tuple[torch.Tensor, None]:
        gate = torch.sigmoid(self.fc_x(torch.cat([h[n] for n in self.gate], dim=1)))
        return self.out(gate * self.fc_y(h[self.target])), None


class SeparateHeads(nn.Module):
    """Concat head for the fused logits plus an independent Linear head per modality (H-sep; MMPareto, uniform)."""

    has_unimodal = True

    def __init__(self, dims: dict[str, int], num_classes: int) -> None:
        super().__init__()
        self.names = tuple(dims)
        self.fused = nn.Linear(sum(dims.values()), num_classes)
        self.uni = nn.ModuleDict({n: nn.Linear(d, num_classes) for n, d in dims.items()})

    def forward(self, h: Features) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        z = self.fused(torch.cat([h[n] for n in self.names], dim=1))
        return z, {n: head(h[n]) for n, head in self.uni.items()}


HEADS = {"concat": ConcatHead, "sum": SumHead, "weight": WeightHead, "film": FiLMHead, "gated": GatedHead,
         "separate": SeparateHeads}


def build_head(kind: str, dims: dict[str, int], num_classes: int) -> nn.Module:
    if kind not in HEADS:
        raise ValueError(f"unknown head {kind!r}; valid: {sorted(HEADS)}")
    return HEADS[kind](dims, num_classes)
