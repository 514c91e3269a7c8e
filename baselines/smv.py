"""SMV: sample-level modality valuation and resampling (docs/methods/smv.md), plus the modality-level variant.

Paper: Yake Wei, Ruoxuan Feng, Zihe Wang, Di Hu, "Enhancing Multimodal Cooperation via Sample-level Modality
Valuation", CVPR 2024, arXiv 2309.06255 (the acronym "SMV" is AUG's). Official code: GitHub
GeWu-Lab/Valuate-and-Enhance-Multimodal-Cooperation, ``code/sample_level.py`` (``execute_modulation``,
``train_epoch``, ``warmup_epoch``), ``code/modality_level.py`` (``execute_modulation``), ``code/models/models.py``
(``forward`` with ``drop``, ``exec_drop``) and ``code/datasets/dataloader.py`` (``AV_KS_Dataset_sample_level``,
``AV_KS_Dataset_modality_level``). BalanceBenchmark's "Modality-valuation" is ``trainer/Sample_trainer.py``.

Concat head, CE(z). The first ``warmup`` epochs train plainly. From then on, at the start of every epoch (the code
values after epoch warmup-1 and every later epoch; nothing changes the model in between), a no-grad eval-mode pass
over the training rows predicts with full features, with the second modality's features zeroed (first-only) and with
the first's zeroed (second-only), the head keeping its full bias as ``exec_drop`` does. Shapley values of the two
players: v_full = 2 [full correct], v_m = [m-only correct], phi_a = (v_a + v_full - v_v)/2, phi_v likewise.

``smv.level: sample`` adds, per sample and modality m, 1/2/3/0 copies for phi_m = 0.5/0/-0.5/>=1 that carry a flag
zeroing the *other* modality's features (so the copies train m alone). ``smv.level: modality`` values a random
``part_ratio`` subset drawn with replacement (the code's ``np.random.choice``), takes gap_m = 1 - mean(phi_m) and adds
int(d * N) copies of rows drawn with replacement, d = |gap_a - gap_v| * 2/3 * alpha (``linear``; ``tanh`` and
``square`` as in the dataset class), all flagged to zero the modality with the smaller gap (``modality_form: bb``:
BalanceBenchmark's sizes, see ``modality_level_rows``). The expanded row list is rebuilt from the original rows every
epoch (``select_rows``, extra key ``zero_modality``: 0 = none, i+1 = zero modality i's features), every expanded row
is trained once per epoch, and their count is logged as ``smv_samples``.

Cost: one no-grad pass (three head evaluations) over the training rows per epoch after warm-up (modality level:
over the subset only); at sample level an epoch grows to at most 5x the rows (4
extra copies per row, when the full prediction is wrong).

Deviations: the valuation pass serves evaluation transforms (the code's pass reads the training dataset with its
random crops); the modality-level pass evaluates only the drawn subset (the code evaluates every row but uses only
the subset). Randomness is seeded from (run seed, epoch) so a resumed run redraws the same subset and copies. Under
data parallelism (``approximate``) every step is the global batch's, but W ranks leave the last n mod W expanded rows
of the epoch's order untrained, and the expanded count varies by epoch.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from baselines.base import FusionMethod, Loaders, RowSelection, StepInfo, TrainContext, logged_values, loss_precision
from baselines.registry import register
from core.data import Batch, BatchLoader, TaskSpec, seed_for
from core.hparams import HParam, HParams

BB_BATCH = 64  # BalanceBenchmark's valuation batch size, hard-coded there


def shapley_contributions(correct_full: np.ndarray, correct_first: np.ndarray, correct_second: np.ndarray
                          ) -> tuple[np.ndarray, np.ndarray]:
    """phi of the first and second modality per sample, from correctness of full / first-only / second-only."""
    v_full = 2.0 * correct_full
    v_first, v_second = correct_first.astype(float), correct_second.astype(float)
    return (v_first + v_full - v_second) / 2.0, (v_second + v_full - v_first) / 2.0


def copy_counts(phi: np.ndarray) -> np.ndarray:
    """Extra copies per sample: phi 0.5 -> 1, 0 -> 2, -0.5 -> 3, >= 1 -> 0 (the dataset class's thresholds)."""
    return np.clip(np.rint(2.0 - 2.0 * np.asarray(phi, dtype=float)), 0, 3).astype(np.int64)


def sample_level_rows(rows: np.ndarray, phi_first: np.ndarray, phi_second: np.ndarray
                      ) -> tuple[np.ndarray, np.ndarray]:
    """Original rows (code 0) + copies training the first modality alone (code 2: zero the second) + copies
    training the second alone (code 1: zero the first)."""
    first = np.repeat(rows, copy_counts(phi_first))
    second = np.repeat(rows, copy_counts(phi_second))
    out = np.concatenate([rows, first, second])
    codes = np.concatenate([np.zeros(len(rows), np.int64), np.full(len(first), 2), np.full(len(second), 1)])
    return out, codes


def modality_level_rows(rows: np.ndarray, mean_phi_first: float, mean_phi_second: float, alpha: float, func: str,
                        rng: np.random.Generator, bb: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """``AV_KS_Dataset_modality_level``: int(d * N) extra rows, drawn with replacement, zeroing the modality with
    the smaller gap 1 - mean(phi). ``bb`` is BalanceBenchmark's ``create_dataset_modality_level``: |gap
    difference| summed over both ordered pairs (d doubled), drawn from the first N - N mod 64 rows, and every drawn
    row added twice, once zeroing that modality and once whole."""
    gap_first, gap_second = 1.0 - mean_phi_first, 1.0 - mean_phi_second
    base = abs(gap_first - gap_second) / 3.0 * 2.0
    if bb:
        base *= 2.0
    if func == "linear":
        d = base * alpha
    elif func == "tanh":
        d = float(np.tanh(base * alpha))
    elif func == "square":
        d = base ** 1.5 * alpha
    else:
        raise ValueError(f"smv.modality_func={func!r} is not one of linear, tanh, square")
    pool = bb_pool(len(rows)) if bb else len(rows)
    extra = rows[rng.choice(pool, int(d * pool))]
    code = 2 if gap_first > gap_second else 1
    codes = np.full(len(extra), code)
    if bb:
        extra, codes = np.repeat(extra, 2), np.stack([codes, np.zeros_like(codes)], 1).ravel()
    return np.concatenate([rows, extra]), np.concatenate([np.zeros(len(rows), np.int64), codes])


def bb_pool(n: int) -> int:
    """BalanceBenchmark values and resamples only the first n - n mod 64 rows (its drop_last valuation pass)."""
    return n - n % BB_BATCH


def zero_flagged(h: dict[str, torch.Tensor], names: tuple[str, ...], codes: torch.Tensor | None
                 ) -> dict[str, torch.Tensor]:
    """Zero modality i's features (or inputs, any shape with rows first) on the rows whose code is i+1 (the model's
    ``drop`` branch)."""
    if codes is None:
        return h
    return {m: h[m] * (codes != i + 1).to(h[m].dtype).view(-1, *[1] * (h[m].dim() - 1)) for i, m in enumerate(names)}


@register
class SMV(FusionMethod):
    name = "smv"
    title = "SMV"
    PAPER = ('Yake Wei, Ruoxuan Feng, Zihe Wang, Di Hu, "Enhancing Multimodal Cooperation via Sample-level '
             'Modality Valuation", CVPR 2024, arXiv 2309.06255')
    CODE = ('GitHub GeWu-Lab/Valuate-and-Enhance-Multimodal-Cooperation, code/sample_level.py (execute_modulation), '
            'code/modality_level.py (execute_modulation), code/datasets/dataloader.py')
    HEAD = "concat"
    MODALITIES = (2,)
    DATA_PARALLEL = "approximate"  # exact steps, but an epoch's expanded rows vary in number: n mod W go untrained
    HPARAMS = (
        HParam("level", "sample", "'sample' (sample_level.py, the AUG row) or 'modality' (modality_level.py).",
               choices=("sample", "modality")),
        HParam("warmup", 5, "Plain-CE epochs before the first resampling (--warmup 5, both scripts).", low=0),
        HParam("part_ratio", 0.2, "Modality level: fraction of training rows valued (--part_ratio 0.2; BB 0.2).",
               low=0, high=1),
        HParam("modality_alpha", 1.0, "Modality level: scale of the resampled fraction (--alpha 1)."),
        HParam("modality_func", "linear", "Modality level: map from gap difference to fraction "
                                          "(AV_KS_Dataset_modality_level func, default 'linear').",
               choices=("linear", "tanh", "square")),
        HParam("modality_form", "official", "Modality level: official = AV_KS_Dataset_modality_level; bb = "
                                            "BalanceBenchmark's Sample trainer (4909c17): inputs zeroed instead of "
                                            "features, values of the first 64 rows only, twice the fraction, each "
                                            "drawn row added zeroed and whole, the last n mod 64 rows never valued "
                                            "or drawn; linear only (its tanh and square branches call the gap dict "
                                            "and fail).",
               choices=("official", "bb")),
    )

    @classmethod
    def mechanism_acted(cls, history: Sequence[Mapping[str, Any]]) -> bool | None:
        """Whether SMV resampled: an epoch whose mean ``smv_extra`` (the rows its selection added to the training
        rows, the same at every step of the epoch; 0.0 in warm-up) is above 0. After warm-up a sample-level epoch
        adds none when every row is valued phi >= 1, a modality-level one when int(d N) = 0. None for a history
        without ``smv_extra`` (logged by older code)."""
        extra = logged_values(history, "train", "smv_extra")
        return any(v > 0.0 for v in extra) if extra else None

    def __init__(self, task: TaskSpec, hp: HParams, ctx: TrainContext) -> None:
        super().__init__(task, hp, ctx)
        # BalanceBenchmark's modality level: among its differences, it zeroes a modality's input (SampleDataset,
        # forward's padding) where the official code zeroes its features.
        self._bb = hp.level == "modality" and hp.modality_form == "bb"
        if self._bb and hp.modality_func != "linear":
            raise ValueError(f"smv.modality_form=bb runs only modality_func=linear (BalanceBenchmark's "
                             f"{hp.modality_func} branch fails), got {hp.modality_func!r}")
        self._diag: dict[str, float] = {}
        self._extra = 0.0

    @torch.no_grad()
    def valuate(self, loader: BatchLoader, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """phi of each modality for ``rows`` (in that order), from an eval-mode pass with features (``bb``: inputs)
        zeroed."""
        first, second = self.modalities
        pass_loader = loader.derived(rows, batch_size=self.ctx.train_hp.eval_batch_size)
        self.model.eval()
        correct = {"full": [], first: [], second: []}
        for batch in pass_loader:
            with self.ctx.autocast():
                x = self.inputs(batch)
                h = self.model.features(x)
                outs = {"full": self.model.head(h)[0], first: self._logits_keeping(first, x, h),
                        second: self._logits_keeping(second, x, h)}
            for key, z in outs.items():
                correct[key].append((z.argmax(1) == batch["label"]).cpu().numpy())
        self.model.train()
        return shapley_contributions(*(np.concatenate(correct[k]) for k in ("full", first, second)))

    def _logits_keeping(self, m: str, x: dict[str, torch.Tensor], h: dict[str, torch.Tensor]) -> torch.Tensor:
        """Fused logits with every modality but ``m`` zeroed: its features, or (``bb``) its input."""
        kept = {k: v if k == m else torch.zeros_like(v) for k, v in (x if self._bb else h).items()}
        return self.model.head(self.model.features(kept) if self._bb else kept)[0]

    def select_rows(self, epoch: int, loaders: Loaders) -> RowSelection | None:
        train = loaders.train
        rows = train.base_rows
        if epoch < self.hp.warmup:
            self._diag = {"smv_samples": float(len(rows))}
            self._extra = 0.0
            return None
        if self.hp.level == "sample":
            phi_first, phi_second = self.valuate(train, rows)
            new_rows, codes = sample_level_rows(rows, phi_first, phi_second)
        else:
            rng = np.random.default_rng(seed_for(self.ctx.train_hp.seed, epoch, "smv_modality"))
            pool = bb_pool(len(rows)) if self._bb else len(rows)
            if pool == 0:
                raise ValueError(f"smv.modality_form=bb values the first n - n mod 64 training rows, and this split "
                                 f"has {len(rows)} (BalanceBenchmark would divide by zero)")
            drawn = rng.choice(pool, int(pool * self.hp.part_ratio))
            if self._bb:
                # BB's valuation caches the first batch's predictions and never clears the cache: training row j
                # gets the value of row j mod 64, the first batch of its unshuffled 64-row pass.
                drawn = drawn % BB_BATCH
            unique, inverse = np.unique(drawn, return_inverse=True)
            phi_u = self.valuate(train, rows[unique])
            phi_first, phi_second = phi_u[0][inverse], phi_u[1][inverse]
            new_rows, codes = modality_level_rows(rows, float(phi_first.mean()), float(phi_second.mean()),
                                                  self.hp.modality_alpha, self.hp.modality_func, rng, self._bb)
        self._extra = float(len(new_rows) - len(rows))
        first, second = self.modalities
        self._diag = {"smv_samples": float(len(new_rows)), f"smv_phi_{first}": float(phi_first.mean()),
                      f"smv_phi_{second}": float(phi_second.mean())}
        return RowSelection(new_rows, {"zero_modality": codes})

    def update(self, batch: Batch, step: StepInfo) -> dict[str, float]:
        with self.ctx.autocast():
            codes = batch.get("zero_modality")
            if self._bb:
                h = self.model.features(zero_flagged(self.inputs(batch), self.modalities, codes))
            else:
                h = zero_flagged(self.model.features(self.inputs(batch)), self.modalities, codes)
            z, _ = self.model.head(h)
            loss = F.cross_entropy(loss_precision(z), batch["label"])
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        # The rows this epoch's selection added, constant over its steps: what mechanism_acted reads.
        return {"loss": loss.item(), "smv_extra": self._extra}

    def on_epoch_end(self, epoch: int, loaders: Loaders) -> dict[str, float]:
        return dict(self._diag)
