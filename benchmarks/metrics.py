"""Classification metrics on fused and per-modality logits (docs/methods/README.md#metrics).

- accuracy;
- macro-F1: unweighted mean over classes of per-class F1 (scikit-learn ``average='macro'``, all K classes);
- mAP: (1/K') sum_c AP(one_hot[:, c], softmax(z)[:, c]) over the K' classes present in the labels (AP is undefined
  for a class with no positives; the AUG/LFM code definition otherwise);
- conf: mean true-class softmax probability, the per-sample form of the confidence score
  (docs/methods/README.md#confidence-score); the ratio of two modalities' ``conf`` is the imbalance diagnostic plotted
  by the demo.
"""

from __future__ import annotations

import numpy as np
import torch
from sklearn.metrics import average_precision_score, f1_score


def classification_metrics(logits: torch.Tensor, labels: torch.Tensor, num_classes: int) -> dict[str, float]:
    logits = logits.detach().float().cpu()
    y = labels.detach().cpu().numpy()
    pred = logits.argmax(dim=1).numpy()
    probs = torch.softmax(logits, dim=1).numpy()
    present = np.unique(y)
    onehot = np.eye(num_classes, dtype=np.int64)[y]
    ap = average_precision_score(onehot[:, present], probs[:, present], average=None)
    return {
        "acc": float((pred == y).mean()),
        "macro_f1": float(f1_score(y, pred, labels=np.arange(num_classes), average="macro", zero_division=0)),
        "map": float(np.mean(np.atleast_1d(ap))),
        "conf": float(probs[np.arange(len(y)), y].mean()),
    }
