"""Adaptive classifier assignment (ACA) and the gate's running scores, as pure functions
(docs/methods/aug.md#aca, #gated).

Kept free of models and optimizers so that the schedule and every decision can be pinned on hand-made numbers.
Modalities are passed in the dataset's declared order; for two modalities the first plays the paper's "audio"
role (s_a) and the second "visual" (s_v).
"""

from __future__ import annotations

from typing import Sequence

import torch

ACA_RULES = ("difference", "ratio")


def aca_check_epochs(epochs: int, interval: int, after_first: bool) -> list[int]:
    """The epochs after which ACA runs (0-based).

    ``paper``: after epoch e whenever (e + 1) mod t_N == 0 and e < E - 1 (a learner added after the last epoch is
    never trained or evaluated). ``official_compat`` (``after_first``): also after epoch 0 (``train_CREMAD.py``,
    ``__main__``: ``(epoch+1) % check == 0 or epoch == 0``).

    Args:
        epochs: E, the run's number of epochs.
        interval: t_N in epochs; must be >= 1.
        after_first: add the check after epoch 0.

    Returns:
        Sorted epoch indices, e.g. E=200, t_N=20 -> [19, 39, ..., 179] (paper) or [0, 19, ..., 179] (compat).
    """
    if interval < 1:
        raise ValueError(f"aug.aca_interval_epochs must be >= 1, got {interval}")
    return [e for e in range(epochs - 1) if (e + 1) % interval == 0 or (after_first and e == 0)]


def default_interval(epochs: int) -> int:
    """The official code's t_N when none is configured: ``epochs // 10``, or 1 for runs of 10 epochs or fewer."""
    return max(epochs // 10, 1)


def aca_decision(score_sums: Sequence[float], count: int, rule: str, sigma: float, tau: float,
                 threshold: float) -> list[int]:
    """Which modalities get one more learner at this check (indices into ``score_sums``); at most one each.

    Two modalities (S_a, S_v = epoch sums of the true-class probability of the ensemble logits):

    - ``difference`` (paper): d = s_a - sigma * s_v with s = S / N; d > tau -> visual, d < -tau -> audio.
    - ``ratio`` (official code): rho = S_a / S_v; rho > sigma + tau -> visual, rho < sigma - tau -> audio.

    Three or more modalities (old NVGesture script, the only known rule): every m with
    rho_m = S_m / sum_{j != m} S_j < ``threshold`` gets a learner; ``rule``, sigma and tau do not apply.

    Args:
        score_sums: S_m per modality.
        count: N, the number of training samples accumulated into each S_m.
        rule: ``difference`` or ``ratio``.
        sigma: the balance point (paper: 1.0).
        tau: the dead-zone half-width (paper: 0.01).
        threshold: the three-modality cut-off (code: 0.4).

    Returns:
        Modality indices to grow, in ascending order; empty inside the dead zone or without data.
    """
    if rule not in ACA_RULES:
        raise ValueError(f"aug.aca_rule={rule!r} is not one of {list(ACA_RULES)}")
    sums = [float(s) for s in score_sums]
    if count <= 0 or any(s <= 0 for s in sums):
        return []
    if len(sums) > 2:
        total = sum(sums)
        return [i for i, s in enumerate(sums) if s / (total - s) < threshold]
    s_a, s_v = sums
    if rule == "difference":
        gap = s_a / count - sigma * s_v / count
        return [1] if gap > tau else [0] if gap < -tau else []
    ratio = s_a / s_v
    return [1] if ratio > sigma + tau else [0] if ratio < sigma - tau else []


def running_scores(batch_sums: torch.Tensor, epoch_sums: torch.Tensor, step: int) -> torch.Tensor:
    """The gate's running score per modality (docs/methods/aug.md#gated; ``train_KS.py`` / ``train_NVGesture.py``).

    With T_m the current batch's confidence sum, S_m the epoch's cumulative sum including this batch and k the
    step index within the epoch, u_m = T_m + k * S_m and the score is u_m / sum_{j != m} u_j: for two modalities
    s_a = u_a / u_v and s_v = 1 / s_a, exactly the official expressions after multiplying them by (k + 1).
    """
    u = batch_sums + step * epoch_sums
    return u / (u.sum() - u)


def gate_targets(running: torch.Tensor) -> torch.Tensor:
    """MSE targets of the gate network: 0 switches a modality's extra learners off, 1 on (docs/methods/aug.md#gated).

    Two modalities (``train_KS.py``): s_a > 1 -> audio 0, visual 1; otherwise audio 1, visual 0. Three
    (``train_NVGesture.py``): each modality 0 if its score against the others exceeds 0.5, else 1.
    """
    if running.numel() == 2:
        # [0, 1] or [1, 0] made on the device (in torch.tensor's dtype): choosing between two host lists read the
        # score back and copied the list from pageable memory, two waits for the device before the gate's step.
        audio_off = (running[:1] > 1.0).to(torch.get_default_dtype())
        return torch.cat([1.0 - audio_off, audio_off])
    return (running <= 0.5).float()
