"""Metrics against hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score, f1_score

from benchmarks.metrics import classification_metrics
from tests.numeric import approx, approx64


def test_accuracy_macro_f1_and_map_by_hand():
    # 3 classes, 4 samples: predictions 0, 1, 1, 2; labels 0, 1, 2, 2.
    logits = torch.tensor([[3.0, 0, 0], [0, 3.0, 0], [0, 3.0, 1.0], [0, 0, 3.0]])
    labels = torch.tensor([0, 1, 2, 2])
    m = classification_metrics(logits, labels, 3)
    assert m["acc"] == approx64(0.75)
    # F1: class0 1.0; class1 P=1/2 R=1 -> 2/3; class2 P=1 R=1/2 -> 2/3.
    assert m["macro_f1"] == approx64((1 + 2 / 3 + 2 / 3) / 3)
    # AP per class on softmax scores: class0 and class1 rank their positives first (AP 1); class2 scores:
    # s3 highest (pos), s2 next (pos) -> AP 1.
    assert m["map"] == approx64(1.0)
    p = torch.softmax(logits, dim=1)
    # Confidence is a float32 mean of float32 softmax values; the others are float64 counts and rank statistics.
    assert m["conf"] == approx(float((p[0, 0] + p[1, 1] + p[2, 2] + p[3, 2]) / 4))


def test_map_penalises_bad_ranking_and_skips_absent_classes():
    logits = torch.tensor([[0.0, 2.0, 0], [2.0, 0.0, 0], [1.0, 0.0, 0]])
    labels = torch.tensor([0, 1, 0])  # class 2 absent: excluded from the mean
    m = classification_metrics(logits, labels, 3)
    # class0 scores: s1 (neg) > s2 (pos) > s0 (pos): precision at the two positives 1/2 and 2/3 -> AP 7/12.
    # class1 scores: softmax puts the only positive (s1) last of three -> AP 1/3.
    assert m["map"] == approx64((7 / 12 + 1 / 3) / 2)
    assert m["acc"] == approx64(1 / 3)


def test_macro_f1_averages_over_all_k_classes_even_one_neither_true_nor_predicted():
    # K = 3, class 2 never occurs nor is predicted: its F1 is 0 and still counts, as in scikit-learn with labels=K.
    logits = torch.tensor([[3.0, 0, 0], [3.0, 0, 0], [0, 3.0, 0], [0, 3.0, 0]])
    labels = torch.tensor([0, 0, 1, 1])
    m = classification_metrics(logits, labels, 3)
    assert m["acc"] == approx64(1.0)
    assert m["macro_f1"] == approx64(2 / 3)
    assert m["macro_f1"] == approx64(f1_score(labels.numpy(), logits.argmax(dim=1).numpy(), labels=np.arange(3),
                                              average="macro", zero_division=0))


@pytest.mark.parametrize("seed", range(6))
def test_macro_f1_and_map_equal_scikit_learns_on_random_and_tied_scores(seed):
    g = torch.Generator().manual_seed(seed)
    n, k = 200, 5
    labels = torch.randint(0, k - (seed % 2), (n,), generator=g)  # odd seeds leave the last class absent
    logits = torch.randn(n, k, generator=g)
    if seed >= 3:
        logits = logits.round()  # many tied scores: each tie must form one precision/recall step
    m = classification_metrics(logits, labels, k)
    y, pred = labels.numpy(), logits.argmax(dim=1).numpy()
    probs = torch.softmax(logits, dim=1).numpy()
    present = np.unique(y)
    ap = average_precision_score(np.eye(k, dtype=np.int64)[y][:, present], probs[:, present], average=None)
    assert m["macro_f1"] == approx64(f1_score(y, pred, labels=np.arange(k), average="macro", zero_division=0))
    assert m["map"] == approx64(float(np.mean(ap)))
