"""``synthetic``: tiny random multimodal tensors with a knob for which modality carries more signal.

Each class c has a fixed random prototype per modality. A sample of class y shows, in modality m, the prototype of
y with probability ``reliability_m`` and the prototype of a uniformly random class otherwise, plus Gaussian noise.
So a unimodal model's accuracy is capped near ``r_m + (1 - r_m)/K``: the dominant modality (``data.dominant``)
gets ``strong_reliability``, the others ``weak_reliability``. Data is generated from ``data.seed``, independent of
the run seed, so every run of a sweep sees the same data. Shapes match the real encoders' inputs (spectrogram and
frames), so smoke tests exercise the real model code with tiny widths.
"""

from __future__ import annotations

import numpy as np
import torch

from core.data import ModalitySpec, TaskSpec
from core.hparams import HParam, HParams
from datasets.base import DataBundle
from datasets.registry import Dataset, register_dataset


@register_dataset
class Synthetic(Dataset):
    NAME = "synthetic"
    DESCRIPTION = "Synthetic: tiny random audio/visual(/text) tensors with a dominance knob, for tests and smoke runs"
    HPARAMS = (
        HParam("num_classes", 4, "Number of classes (at least 2).", low=2),
        HParam("n_train", 256, "Training samples."),
        HParam("n_val", 64, "Validation samples (clean protocol)."),
        HParam("n_test", 64, "Test samples."),
        HParam("modalities", 2, "2 = audio + visual; 3 adds a 'text' feature vector.", choices=(2, 3)),
        HParam("dominant", "audio", "Which modality gets strong_reliability; 'none' gives all the weak one.",
               choices=("audio", "visual", "text", "none")),
        HParam("strong_reliability", 0.95, "P(the dominant modality shows its own class prototype).", low=0, high=1),
        HParam("weak_reliability", 0.5, "P(a non-dominant modality shows its own class prototype).", low=0, high=1),
        HParam("noise", 1.0, "Std of the additive Gaussian noise; prototypes have unit variance.", low=0),
        HParam("audio_shape", [1, 16, 24], "Spectrogram shape (1, F, T)."),
        HParam("visual_shape", [3, 1, 16, 16], "Frames shape (3, T, H, W)."),
        HParam("text_dim", 16, "Width of the third modality's feature vector."),
        HParam("seed", 0, "Data generation seed (independent of the run seed).", low=0),
    )

    @classmethod
    def modality_names(cls, hp: HParams) -> tuple[str, ...]:
        return ("audio", "visual", "text")[:hp.modalities]

    @classmethod
    def build(cls, hp) -> DataBundle:
        specs = [ModalitySpec("audio", "spectrogram", tuple(hp.audio_shape)),
                 ModalitySpec("visual", "frames", tuple(hp.visual_shape))]
        if hp.modalities == 3:
            specs.append(ModalitySpec("text", "vector", (hp.text_dim,)))
        k = hp.num_classes
        task = TaskSpec("synthetic", k, tuple(specs), tuple(f"class{i}" for i in range(k)))
        n = hp.n_train + hp.n_val + hp.n_test
        rng = np.random.default_rng(hp.seed)
        labels = np.arange(n) % k
        rng.shuffle(labels)
        arrays = {}
        for spec in specs:
            reliability = hp.strong_reliability if spec.name == hp.dominant else hp.weak_reliability
            prototypes = rng.standard_normal((k, *spec.shape)).astype(np.float32)
            shown = np.where(rng.random(n) < reliability, labels, rng.integers(0, k, n))
            x = prototypes[shown] + hp.noise * rng.standard_normal((n, *spec.shape)).astype(np.float32)
            arrays[spec.name] = torch.from_numpy(x)
        splits = {"train": np.arange(hp.n_train),
                  "val": np.arange(hp.n_train, hp.n_train + hp.n_val),
                  "test": np.arange(hp.n_train + hp.n_val, n)}

        def gather(rows: np.ndarray) -> dict[str, torch.Tensor]:
            index = torch.from_numpy(rows)
            return {name: x.index_select(0, index) for name, x in arrays.items()}

        return DataBundle(task, labels.astype(np.int64), splits, gather)
