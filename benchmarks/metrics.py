"""Classification metrics on fused and per-modality logits (docs/methods/README.md#metrics).

- accuracy;
- macro-F1: unweighted mean over classes of per-class F1 (scikit-learn ``average='macro'``, all K classes);
- mAP: (1/K') sum_c AP(one_hot[:, c], softmax(z)[:, c]) over the K' classes present in the labels (AP is undefined
  for a class with no positives; the AUG/LFM code definition otherwise);
- conf: mean true-class softmax probability, the per-sample form of the confidence score
  (docs/methods/README.md#confidence-score); the ratio of two modalities' ``conf`` is the imbalance diagnostic plotted
  by ``augbench plot`` (a run's curves).
"""

from __future__ import annotations

import numpy as np
import torch


def macro_f1(y: np.ndarray, pred: np.ndarray, num_classes: int) -> float:
    """scikit-learn's ``f1_score(average='macro', labels=range(K), zero_division=0)``: per class
    2 TP / (|true| + |predicted|), 0 where both are empty."""
    true = np.bincount(y, minlength=num_classes)
    predicted = np.bincount(pred, minlength=num_classes)
    tp = np.bincount(y[pred == y], minlength=num_classes)
    denom = true + predicted
    f1 = np.divide(2.0 * tp, denom, out=np.zeros(num_classes), where=denom > 0)
    return float(f1.mean())


def average_precision(positive: np.ndarray, score: np.ndarray) -> float:
    """scikit-learn's ``average_precision_score`` for one class: sum over distinct score thresholds (ties form one
    step) of (recall step) x precision. ``positive`` must hold at least one True."""
    order = np.argsort(-score, kind="stable")
    ranked, hits = score[order], positive[order]
    last = np.r_[np.flatnonzero(np.diff(ranked)), len(ranked) - 1]
    tp = np.cumsum(hits, dtype=np.float64)[last]
    precision = tp / (last + 1)
    recall = tp / tp[-1]
    # Summed from the lowest threshold up, as scikit-learn (1.9) does: the same float64 value to the last bit.
    return float(np.sum((np.diff(recall, prepend=0.0) * precision)[::-1]))


def classification_metrics(logits: torch.Tensor, labels: torch.Tensor, num_classes: int) -> dict[str, float]:
    # numpy rather than scikit-learn's scorers: the same numbers (tests/test_metrics.py compares them), without the
    # ~10 ms of argument validation per call that made metrics 6% of a small CPU run's time.
    logits = logits.detach().float().cpu()
    y = labels.detach().cpu().numpy().astype(np.int64)
    pred = logits.argmax(dim=1).numpy()
    probs = torch.softmax(logits, dim=1).numpy()
    present = np.unique(y)
    return {
        "acc": float((pred == y).mean()),
        "macro_f1": macro_f1(y, pred, num_classes),
        "map": float(np.mean([average_precision(y == c, probs[:, c]) for c in present])),
        "conf": float(probs[np.arange(len(y)), y].mean()),
    }
