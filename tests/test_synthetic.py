"""The synthetic dataset's dominance knob: the dominant modality shows its own class at strong_reliability, the
others at weak_reliability, and a sample not shown its own class shows a uniformly random one."""

from __future__ import annotations

import numpy as np
import torch

from core.hparams import resolve
from datasets.synthetic import Synthetic

K = 4


def build(**knobs):
    hp = resolve("data", Synthetic.HPARAMS, "synthetic",
                 {"num_classes": K, "n_train": 600, "n_val": 200, "n_test": 200, "noise": 0.0,
                  "strong_reliability": 1.0, "weak_reliability": 0.0, **knobs})
    bundle = Synthetic.build(hp)
    return bundle, bundle.gather(np.arange(1000))


def shown_classes(x: torch.Tensor, prototypes: torch.Tensor) -> np.ndarray:
    """The class whose prototype each noiseless sample shows."""
    match = (x.flatten(1)[:, None] == prototypes.flatten(1)[None]).all(dim=2)
    assert match.sum(dim=1).eq(1).all(), "every sample is exactly one class prototype"
    return match.int().argmax(dim=1).numpy()


def prototypes_of(x: torch.Tensor, labels: np.ndarray) -> torch.Tensor:
    first = [int(np.flatnonzero(labels == c)[0]) for c in range(K)]
    assert all(torch.equal(x[i], x[first[labels[i]]]) for i in range(len(labels))), "one prototype per class"
    return x[first]


def test_the_dominant_modality_shows_its_class_and_a_weak_one_a_uniformly_random_class():
    audio_led, a = build(dominant="audio")
    visual_led, v = build(dominant="visual")
    labels = audio_led.labels
    assert np.array_equal(labels, visual_led.labels) and np.bincount(labels).tolist() == [250] * K
    # the same data.seed draws the same prototypes whichever modality leads
    visual = prototypes_of(v["visual"], labels)
    audio = prototypes_of(a["audio"], labels)
    for weak in (shown_classes(a["visual"], visual), shown_classes(v["audio"], audio)):
        assert set(weak.tolist()) == set(range(K)), "every class, the last one included, can be shown"
        assert 0.15 < np.mean(weak == labels) < 0.35, "reliability 0 leaves the 1/K chance match"
    _, none = build(dominant="none")
    assert 0.15 < np.mean(shown_classes(none["audio"], audio) == labels) < 0.35


def test_splits_partition_the_rows_in_order():
    bundle, _ = build()
    assert [bundle.splits[s].tolist() for s in ("train", "val", "test")] == \
        [list(range(600)), list(range(600, 800)), list(range(800, 1000))]


def test_data_is_drawn_from_data_seed():
    first, again, other = (build(seed=s)[1]["audio"] for s in (0, 0, 1))
    assert torch.equal(first, again) and not torch.equal(first, other)
