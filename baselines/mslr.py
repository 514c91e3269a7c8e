"""MSLR (modality-specific learning rates), as re-implemented in the AGM repository (docs/methods/mses-mslr.md#mslr).

Paper: Yiqun Yao, Rada Mihalcea, "Modality-specific Learning Rates for Effective Multimodal Additive Late-fusion",
Findings of ACL 2022, pp. 1824-1834, DOI 10.18653/v1/2022.findings-acl.143. Only the abstract could be read here: it
builds additive late-fusion models from fine-tuned unimodal models and studies three strategies for assigning
per-modality learning rates; which strategy (if any) the re-implementation below corresponds to, and which one AUG
used, is unknown. The authors' code was not located, so this module follows the public re-implementation, hence the
row label "MSLR (AGM re-impl.)".

Re-implementation: GitHub lihong2303/AGM_ICCV2023, ``run/CREMAD_main.py``, ``train`` and ``CREMAD_main`` (branch
``methods == "MSLR"``); model ``model/CREMAD_net.py`` ``AVClassifier_Sum`` (H-sum).

- L = CE(z_a + z_v) with the sum head; one backward.
- Gradient multipliers c_a = 0.9 r_a and c_v = 1.1 r_v scale the gradients of that modality's encoder and classifier
  before the optimizer step (weight decay, applied inside the step, is not scaled, as in the re-implementation).
- r_m = 1 until 5 epochs of unimodal accuracy are stored; from then on, at the end of every epoch,
  r_m = acc_m(e) / mean(acc_m over the previous 5 epochs) and the memory rolls by one.

Deviations (the re-implementation's behaviour is the ``official_compat`` variant):
- acc_m is measured on the VALIDATION split (``mslr.eval_split=val``, paper-consistent: the mechanism must not see
  test labels); the re-implementation uses the test split.
- The re-implementation's ``test`` increments the audio hit counter inside the visual-correct branch, so its "audio
  accuracy" is the visual accuracy and r_a = r_v; ``mslr.shared_accuracy=true`` reproduces this.
- The re-implementation applies the multipliers only while modulation_starts=0 <= epoch <= modulation_ends=20 with
  1-based epochs (``utils/config.py`` defaults), i.e. in its first 20 epochs; the project default applies them in
  every epoch (``mslr.modulation_ends=-1``).

The coefficients 0.9 / 1.1 are defined for the audio-visual pair, so MODALITIES = (2,). Cost: one forward and one
backward per step, plus one no-grad pass over the evaluation split per epoch for the unimodal accuracies.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch
import torch.nn.functional as F

from baselines.base import FusionMethod, Loaders, StepInfo, TrainContext, logged_values, loss_precision
from baselines.registry import register
from core.data import Batch, BatchLoader, TaskSpec
from core.hparams import HParam, HParams, variant_param


def mslr_step(memory: Sequence[float], acc: float, ratio: float, window: int) -> tuple[float, list[float]]:
    """One modality's end-of-epoch bookkeeping.

    Args:
        memory: the stored accuracies of previous epochs (at most ``window``).
        acc: this epoch's unimodal accuracy.
        ratio: the current r_m.
        window: how many epochs are remembered (5).

    Returns:
        The new r_m and memory. While the memory is filling, r_m is unchanged and ``acc`` is appended; afterwards
        r_m = acc / mean(memory) (kept at its value if that mean is 0) and the oldest entry is dropped.
    """
    if len(memory) < window:
        return ratio, [*memory, acc]
    mean = sum(memory) / len(memory)
    return (acc / mean if mean > 0 else ratio), [*memory[1:], acc]


def mslr_multipliers(coeffs: Sequence[float], ratios: Sequence[float]) -> list[float]:
    """c_m = coeff_m * r_m (0.9 r_a for audio, 1.1 r_v for visual in the re-implementation)."""
    return [c * r for c, r in zip(coeffs, ratios)]


_VARIANTS = {"official_compat": {"eval_split": "test", "shared_accuracy": True, "modulation_ends": 19}}


@register
class MSLR(FusionMethod):
    """Sum head; per-modality gradient multipliers driven by each modality's recent unimodal-accuracy trend."""

    name = "mslr"
    title = "MSLR (AGM re-impl.)"
    DATA_PARALLEL = "exact"  # multipliers from whole-split accuracies, equal on every rank
    PAPER = ('Yiqun Yao, Rada Mihalcea, "Modality-specific Learning Rates for Effective Multimodal Additive '
             'Late-fusion", Findings of ACL 2022, pp. 1824-1834, DOI 10.18653/v1/2022.findings-acl.143')
    CODE = ('Re-implementation: GitHub lihong2303/AGM_ICCV2023, run/CREMAD_main.py, train / CREMAD_main '
            '(methods == "MSLR")')
    HEAD = "sum"
    MODALITIES = (2,)
    VARIANTS = _VARIANTS
    HELD_OUT_KEY = "eval_split"
    HPARAMS = (
        HParam("coeffs", [0.9, 1.1], "Initial multipliers in the dataset's modality order (audio 0.9, visual 1.1): "
                                     "AGM re-impl. run/CREMAD_main.py train, audio/visual_lr_init_coeff."),
        HParam("memory", 5, "Epochs of unimodal accuracy remembered; r_m = 1 until they are stored (AGM re-impl. "
                            "CREMAD_main, audio_lr_memory; docs/methods/mses-mslr.md#mslr).", low=1),
        HParam("eval_split", "val", "Split whose unimodal accuracy drives r_m: 'val' = paper-consistent project "
                                    "default; 'test' = the AGM re-impl.", choices=("val", "test")),
        HParam("shared_accuracy", False, "Use the last (visual) modality's accuracy for every modality, reproducing "
                                         "the AGM re-impl. test(), whose acc_a counts visual hits (r_a = r_v)."),
        HParam("modulation_ends", -1, "Last epoch (0-based, inclusive) with multipliers; -1 = all epochs. The AGM "
                                      "re-impl. applies them while 0 <= epoch <= 20 with 1-based epochs "
                                      "(utils/config.py defaults), i.e. through 0-based epoch 19."),
        variant_param(_VARIANTS, "paper = validation-split accuracies, multipliers in every epoch (project reading); "
                                 "official_compat = the AGM re-impl.: test split, shared (visual) accuracy, epochs "
                                 "0-19 only."),
    )

    @classmethod
    def mechanism_acted(cls, history: Sequence[Mapping[str, Any]]) -> bool | None:
        """Whether MSLR scaled a gradient: an epoch whose applied multiplier (diag ``mslr_applied_<m>``: c_m in a
        modulated epoch, 1.0 outside) differs from 1 for some modality. c_m = coeff_m r_m is exactly 1.0 when both
        factors are (r_m starts as the literal 1.0). None for a history without ``mslr_applied_`` keys."""
        applied = logged_values(history, "diag", "mslr_applied_")
        return any(v != 1.0 for v in applied) if applied else None

    def __init__(self, task: TaskSpec, hp: HParams, ctx: TrainContext) -> None:
        super().__init__(task, hp, ctx)
        if len(hp.coeffs) != len(self.modalities):
            raise ValueError(f"mslr.coeffs needs one value per modality {self.modalities}, got {hp.coeffs!r}")
        self.groups = {m: [*self.model.encoders[m].parameters(), *self.model.head.heads[m].parameters()]
                       for m in self.modalities}
        self.ratios = {m: 1.0 for m in self.modalities}
        self.memory: dict[str, list[float]] = {m: [] for m in self.modalities}

    def multipliers(self) -> dict[str, float]:
        """The current gradient multiplier c_m = coeff_m * r_m of every modality."""
        return dict(zip(self.modalities, mslr_multipliers(self.hp.coeffs, [self.ratios[m] for m in self.modalities])))

    def update(self, batch: Batch, step: StepInfo) -> dict[str, float]:
        with self.ctx.autocast():
            _, z, _ = self.model(self.inputs(batch))
        loss = F.cross_entropy(loss_precision(z), batch["label"])
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.modulating(step.epoch):
            for m, c in self.multipliers().items():
                for p in self.groups[m]:
                    if p.grad is not None:
                        p.grad.mul_(c)
        self.optimizer.step()
        return {"loss": loss.item()}

    def modulating(self, epoch: int) -> bool:
        return self.hp.modulation_ends < 0 or epoch <= self.hp.modulation_ends

    @torch.no_grad()
    def unimodal_accuracy(self, loader: BatchLoader) -> dict[str, float]:
        """Accuracy of each modality's own logits z_m over every sample of ``loader``, in eval mode."""
        was_training = self.training
        self.eval()
        hits = {m: torch.zeros((), dtype=torch.long, device=self.ctx.device) for m in self.modalities}
        seen = 0
        for batch in loader:
            pred = self.predict(batch)
            for m in self.modalities:
                hits[m] += (pred.per_modality[m].argmax(dim=1) == batch["label"]).sum()
            seen += len(batch["label"])
        self.train(was_training)
        return {m: hits[m].item() / max(seen, 1) for m in self.modalities}

    def on_epoch_end(self, epoch: int, loaders: Loaders) -> dict[str, float]:
        # The multipliers this epoch's steps used, read before the ratios move.
        applied = {f"mslr_applied_{m}": float(c) if self.modulating(epoch) else 1.0
                   for m, c in self.multipliers().items()}
        loader = self.held_out_loader(loaders)
        acc = self.unimodal_accuracy(loader)
        if self.hp.shared_accuracy:
            acc = {m: acc[self.modalities[-1]] for m in self.modalities}
        for m in self.modalities:
            self.ratios[m], self.memory[m] = mslr_step(self.memory[m], acc[m], self.ratios[m], self.hp.memory)
        diag = {f"mslr_acc_{m}": acc[m] for m in self.modalities}
        diag.update({f"mslr_coeff_{m}": c for m, c in self.multipliers().items()})
        diag.update(applied)
        return diag

    def extra_state(self) -> dict[str, Any]:
        return {"ratios": dict(self.ratios), "memory": {m: list(v) for m, v in self.memory.items()}}

    def load_extra_state(self, state: Mapping[str, Any]) -> None:
        self.ratios = {m: float(state["ratios"][m]) for m in self.modalities}
        self.memory = {m: [float(a) for a in state["memory"][m]] for m in self.modalities}
