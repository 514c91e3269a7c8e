"""Diagnosing & Re-learning (docs/methods/relearning.md; "Relearning" in BalanceBenchmark).

Paper: Yake Wei, Siwei Li, Ruoxuan Feng, Di Hu, "Diagnosing and Re-learning for Balanced Multimodal Learning",
ECCV 2024, arXiv 2407.09705. Official code: GitHub GeWu-Lab/Diagnosing_Relearning_ECCV2024, ``code/ours.py``
(``purity_score``, ``reinit_score``, ``reinit``, ``get_feature``, main loop) and ``code/script/ours.sh`` (CREMA-D:
lambda 3, reinit_epoch 20, reinit_num 3). Re-implementation: BalanceBenchmark ``trainer/ReLearning_trainer.py``.

Joint training with CE(z) on the concat head, plus a diagnosis after the epochs e > 0 with e % reinit_epoch == 0,
at most reinit_num times (after that epoch's training and evaluation, as in the code's loop):

1. Encoder features h_m of the whole training split and of the validation split, in eval mode.
2. Per modality and split: MinMax-scale each feature to [-1, 1], KMeans(K clusters, random_state 0), purity against
   the labels (the majority label's share, summed over clusters).
3. alpha_m = tanh(lambda |purity_train - purity_val|): a modality whose clusters fit the training split much better
   than held-out data is over-trained.
4. Every parameter of encoder m: theta <- alpha_m theta_init + (1 - alpha_m) theta; the optimizer state is kept.

theta_init is a frozen copy of the encoders taken after initialisation; it is part of the state dict, so resumed
runs re-initialise towards the same point. Cost: per diagnosis, one no-grad pass over train + validation and 2M
KMeans fits. Needs a validation split (the code diagnoses on a 744-clip validation part of the OGM-GE train list;
BalanceBenchmark uses the test set, reinit_epoch 15, reinit_num 2).

Deviations: the training features are read with evaluation transforms and in row order (the code reuses its shuffled
training loader, with training transforms, in eval mode). ``kmeans_n_init`` pins scikit-learn's restart count,
whose default changed from 10 to 1 ("auto") in scikit-learn 1.4; 10 is the older default the code was written for
[unverified which version the authors ran].
"""

from __future__ import annotations

import copy
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import torch

from baselines.base import FusionMethod, Loaders, StepInfo, TrainContext, loss_precision
from baselines.registry import register
from core.data import Batch, BatchLoader, TaskSpec
from core.hparams import HParam, HParams


def purity(labels: np.ndarray, clusters: np.ndarray) -> float:
    """Sum over clusters of the count of its most frequent label, divided by the number of samples."""
    labels, clusters = np.asarray(labels, np.int64), np.asarray(clusters, np.int64)
    n_labels = labels.max() + 1
    table = np.bincount(clusters * n_labels + labels, minlength=(clusters.max() + 1) * n_labels)
    return float(table.reshape(-1, n_labels).max(axis=1).sum() / len(labels))


def cluster_purity(features: np.ndarray, labels: np.ndarray, num_classes: int, n_init: int) -> float:
    """``reinit_score`` for one (modality, split): MinMax to [-1, 1], KMeans(K, random_state 0), purity."""
    # Imported here: scikit-learn takes ~0.8 s to import, which every command and worker would pay through the registry.
    from sklearn.cluster import KMeans
    from sklearn.preprocessing import MinMaxScaler

    scaled = MinMaxScaler(feature_range=(-1, 1)).fit_transform(features)
    clusters = KMeans(n_clusters=num_classes, random_state=0, n_init=n_init).fit_predict(scaled)
    return purity(labels, clusters)


def reinit_strength(purity_train: float, purity_val: float, move_lambda: float) -> float:
    """alpha = tanh(lambda |purity_train - purity_val|)."""
    return float(np.tanh(move_lambda * abs(purity_train - purity_val)))


@torch.no_grad()
def interpolate_(params: Iterable[torch.nn.Parameter], init_params: Iterable[torch.Tensor], alpha: float) -> None:
    """theta <- alpha theta_init + (1 - alpha) theta, in place (the parameter objects, hence optimizer state, stay)."""
    for p, p0 in zip(params, init_params, strict=True):
        p.mul_(1.0 - alpha).add_(p0.to(p.dtype), alpha=alpha)


@register
class Relearning(FusionMethod):
    name = "relearning"
    title = "Diagnosing & Re-learning"
    DATA_PARALLEL = "exact"  # purities from whole-split passes with the same model on every rank
    PAPER = ('Yake Wei, Siwei Li, Ruoxuan Feng, Di Hu, "Diagnosing and Re-learning for Balanced Multimodal '
             'Learning", ECCV 2024, arXiv 2407.09705')
    CODE = 'GitHub GeWu-Lab/Diagnosing_Relearning_ECCV2024, code/ours.py (reinit_score, reinit, purity_score, main)'
    HEAD = "concat"
    HPARAMS = (
        HParam("move_lambda", 3.0, "lambda in alpha = tanh(lambda * purity gap) (ours.sh --move_lambda 3)."),
        HParam("reinit_epoch", 20, "Diagnose after every epoch e > 0 with e % reinit_epoch == 0 (ours.sh 20; BB 20 "
                                   "at 4909c17, 15 from ed3c41a on).", low=1),
        HParam("reinit_num", 3, "At most this many re-initialisations (ours.sh 3; BB 4 at 4909c17, 2 from ed3c41a "
                                "on).", low=0),
        HParam("kmeans_n_init", 10, "KMeans restarts; scikit-learn < 1.4 default, which ours.py relied on "
                                    "[project pin, unverified].", low=1),
        HParam("diagnose_split", "val", "Held-out split of the purity diagnosis: val (ours.py: the validation part "
                                        "of the train list); test = BB, whose 'validation' set is the test split.",
               choices=("val", "test")),
    )
    HELD_OUT_KEY = "diagnose_split"

    @classmethod
    def mechanism_acted(cls, history: Sequence[Mapping[str, Any]]) -> bool | None:
        """A diagnosis re-initialised some encoder: diag ``relearn_alpha_*`` above 0 in some epoch (alpha =
        tanh(lambda |purity gap|) is exactly 0.0 for equal purities, and then the interpolation leaves the encoder as
        it was). False when a diagnosis ran with every alpha 0 or none came due (train ``relearn_diagnoses``)."""
        judged = False
        for record in history:
            train, diag = record.get("train") or {}, record.get("diag") or {}
            alphas = [v for k, v in diag.items() if k.startswith("relearn_alpha_")]
            if any(a > 0 for a in alphas):
                return True
            judged = judged or bool(alphas) or "relearn_diagnoses" in train
        return False if judged else None

    def __init__(self, task: TaskSpec, hp: HParams, ctx: TrainContext) -> None:
        super().__init__(task, hp, ctx)
        self.theta_init = copy.deepcopy(self.model.encoders).requires_grad_(False)

    def due(self, epoch: int) -> bool:
        return epoch > 0 and epoch % self.hp.reinit_epoch == 0 and epoch // self.hp.reinit_epoch <= self.hp.reinit_num

    def update(self, batch: Batch, step: StepInfo) -> dict[str, float]:
        # The diagnoses due so far (a function of the schedule), logged at every step: a run in which none came due
        # is then told apart from a run logged before this key existed.
        due_so_far = sum(self.due(e) for e in range(step.epoch))
        return {**super().update(batch, step), "relearn_diagnoses": float(due_so_far)}

    @torch.no_grad()
    def split_features(self, loader: BatchLoader) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """Eval-mode encoder features of every row of ``loader``'s split, in row order."""
        pass_loader = loader.derived(batch_size=self.ctx.train_hp.eval_batch_size)
        feats: dict[str, list[np.ndarray]] = {m: [] for m in self.modalities}
        labels = []
        self.model.eval()
        for batch in pass_loader:
            with self.ctx.autocast():
                h = self.model.features(self.inputs(batch))
            for m in self.modalities:
                feats[m].append(loss_precision(h[m]).cpu().numpy())
            labels.append(batch["label"].cpu().numpy())
        self.model.train()
        return {m: np.concatenate(v) for m, v in feats.items()}, np.concatenate(labels)

    def on_epoch_end(self, epoch: int, loaders: Loaders) -> dict[str, float]:
        if not self.due(epoch):
            return {}
        held_out = self.held_out_loader(loaders)
        train_h, train_y = self.split_features(loaders.train)
        val_h, val_y = self.split_features(held_out)
        k, n_init = self.task.num_classes, self.hp.kmeans_n_init
        diag = {}
        for m in self.modalities:
            p_train = cluster_purity(train_h[m], train_y, k, n_init)
            p_val = cluster_purity(val_h[m], val_y, k, n_init)
            alpha = reinit_strength(p_train, p_val, self.hp.move_lambda)
            interpolate_(self.model.encoders[m].parameters(), self.theta_init[m].parameters(), alpha)
            diag.update({f"relearn_purity_train_{m}": p_train, f"relearn_purity_held_out_{m}": p_val,
                         f"relearn_alpha_{m}": alpha})
        return diag
