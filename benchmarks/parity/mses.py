"""MSES against its only public implementation, the re-implementation in GitHub lihong2303/AGM_ICCV2023:
``run/CREMAD_main.py`` ``CREMAD_main`` (``--methods MSES``) run unmodified, with its ``train`` and ``test``, on
``model/CREMAD_net.py`` ``AVClassifier_Sum``.

The MSES state (smoothed test losses, best epochs, stops, checkpoint reloads) lives in ``CREMAD_main``'s locals, so the
harness runs the whole official loop rather than repeating it. Its only patches: ``Cramed_Task`` is the official
class with ``load_dataloader`` replaced (in-memory loaders, ``CreamdDataset``'s item format) and the project's initial
weights mapped in after its ``build_model``; ``weight_init`` is a no-op (it would re-draw those weights);
``get_device`` answers the CPU; ``get_logger`` and ``SummaryWriter`` are recording stand-ins; ``torch.save`` and
``torch.load`` keep the checkpoints in memory (a float64 ResNet-18 pair with its momentum is ~350 MB per file), and a
file is dropped once the logged best epochs no longer name it (only those files can be reloaded). ``test`` is wrapped
to observe the per-modality test losses it returns; the best epochs and the stops are read from the official log
lines ("audio_min_loss_epoch:..." ends each epoch's MSES block and triggers the end-of-epoch comparison).

The patience (80) is hard-coded in ``CREMAD_main``, so a stop first fires at its 1-based epoch 82; each epoch here is
one step on a fixed batch of 8 and ``test`` one batch of 8, on 8x8 inputs (the ResNet-18s are full size: compute is
dominated by their weights). The test batch is built so that the two modalities part ways: its visual inputs are the
training batch's, its audio inputs those of other training samples (other labels) plus noise, so the visual test loss
falls (best epoch 42) while the audio one rises after epoch 2 (1-based). ``--learning_rate 3e-3``;
``--lr_decay_step`` past the run: with the default 70 the official reload would also restore the learning rate of the
best epoch (it is in the optimizer state), which the project leaves to the runner's schedule (not covered; see
baselines/mses.py). ``--save_checkpoint False`` (default), so the epoch-1 checkpoint is never written; the reloaded
best epoch is 2. Not reached: the second stop and the ``exit()`` that follows it.
"""

from __future__ import annotations

import argparse
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch

from baselines.base import Loaders, StepInfo
from benchmarks.parity.agm import OPTIONAL, RecordingWriter, official_batch, sum_name
from benchmarks.parity.core import (
    DTYPE,
    Case,
    Checkpoint,
    EpochLoader,
    Snapshot,
    build_method,
    cpu_patches,
    import_official,
    load_mapped,
    module_snapshot,
    patch,
    quantities,
)
from core.data import ModalitySpec, TaskSpec

# Audio's best epoch is 1 (0-based), so it stops at the end of epoch 82; the window ends at epoch 83 (official
# 1-based --modulation_ends 84), so audio's gradients are zeroed in epoch 83 only; visual keeps improving up to
# epoch 41 and never stops; epochs 84 and 85 run past the window.
EPOCHS, BATCH, SIDE, PATIENCE = 86, 8, 8, 80
LR, NUM_CLASSES, MOD_END = 3e-3, 6, 83
AUDIO = ModalitySpec("audio", "spectrogram", (1, SIDE, SIDE))
VISUAL = ModalitySpec("visual", "frames", (3, 1, SIDE, SIDE))
# The project's MSES state, compared as quantities against what the official log and ``test`` reveal.
STATE = ("stopped", "best_loss", "best_epoch", "last_raw")


def mses_batches(seed: int = 0) -> tuple[dict, dict, dict]:
    """(train, test, val) batches: the test batch's visual inputs are the training batch's, its audio inputs those
    of training samples with other labels plus noise; val (for the ``eval_split`` flip) is random."""
    gen = torch.Generator().manual_seed(seed)
    labels = torch.tensor([0, 1, 2, 3, 4, 5, 0, 1])

    def randn(spec: ModalitySpec) -> torch.Tensor:
        return torch.randn((BATCH, *spec.shape), generator=gen, dtype=DTYPE)

    train = {"audio": randn(AUDIO), "visual": randn(VISUAL), "label": labels, "index": torch.arange(BATCH)}
    other = torch.tensor([1, 2, 3, 4, 5, 0, 2, 3])     # a training sample with another label, per test sample
    test = {"audio": train["audio"][other] + 0.5 * randn(AUDIO), "visual": train["visual"].clone(), "label": labels,
            "index": torch.arange(BATCH)}
    val = {"audio": randn(AUDIO), "visual": randn(VISUAL),
           "label": torch.randint(NUM_CLASSES, (BATCH,), generator=gen), "index": torch.arange(BATCH)}
    return train, test, val


class Project:
    def __init__(self, case: Case, overrides: Mapping[str, Any]) -> None:
        task = TaskSpec(dataset="cremad", num_classes=NUM_CLASSES, modalities=(AUDIO, VISUAL))
        self.method = build_method(case.method, task, {**case.hparams, **overrides}, epochs=EPOCHS, lr=LR)
        self.train, self.test, self.val = mses_batches()
        self.values: dict[str, Any] = {}

    def steps(self) -> Iterator[str]:
        m = self.method
        loaders = Loaders(train=None, val=[self.val], test=[self.test])
        for epoch in range(EPOCHS):
            logs = m.update(self.train, StepInfo(epoch, 0, 1, EPOCHS))
            self.values = {"loss": logs["loss"]}
            yield f"e{epoch}s0"
            diag = m.on_epoch_end(epoch, loaders)
            self.values = {"ce": [diag["held_out_ce_audio"], diag["held_out_ce_visual"]],
                           "best_epoch": (m.best_epoch + 1).tolist(),    # official epochs are 1-based
                           "stopped": m.stopped.tolist()}
            yield f"e{epoch}.end"

    def snapshot(self) -> Snapshot:
        state = module_snapshot(self.method, [self.method.optimizer], lambda n: None if n in STATE else n)
        return {**state, **quantities(self.values)}


class MemoryFiles:
    """``torch.save``/``torch.load`` on a dict: a save stores a copy, a load returns a fresh one (as a file would)."""

    def __init__(self) -> None:
        self.files: dict[str, Any] = {}

    def save(self, obj: Any, path: str, *args: Any, **kwargs: Any) -> None:
        self.files[str(path)] = _copy(obj)

    def load(self, path: str, *args: Any, **kwargs: Any) -> Any:
        return _copy(self.files[str(path)])

    def keep_epochs(self, epochs: set[int]) -> None:
        self.files = {p: v for p, v in self.files.items()
                      if any(p.endswith(f"ckpt_full_epoch{e}.pth.tar") for e in epochs)}


def _copy(obj: Any) -> Any:
    if torch.is_tensor(obj):
        return obj.detach().clone()
    if isinstance(obj, dict):
        return {k: _copy(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_copy(v) for v in obj)
    return obj


class MSESLog:
    """``get_logger`` stand-in: reads the epoch, the stops and the best epochs from ``CREMAD_main``'s log lines; the
    best-epoch line closes each epoch's MSES block, where it calls ``at_epoch_end``."""

    def __init__(self, at_epoch_end: Any) -> None:
        self.at_epoch_end, self.epoch = at_epoch_end, 0
        self.best = [0.0, 0.0]
        self.stopped = [False, False]

    def info(self, msg: Any, *args: Any, **kwargs: Any) -> None:
        msg = str(msg)
        if msg.startswith("Training for epoch "):
            self.epoch = int(msg[len("Training for epoch "):].rstrip("."))
        elif msg == "Audio modality training finished.":
            self.stopped[0] = True
        elif msg == "Visual modality training finished.":
            self.stopped[1] = True
        elif msg.startswith("audio_min_loss_epoch:"):
            audio, visual = msg.split(",")
            self.best = [float(audio.split(":")[1]), float(visual.split(":")[1])]
            self.at_epoch_end(self.epoch)


class TrainLoader:
    """The training loader ``CREMAD_main`` iterates once per epoch: one epoch of the fixed batch each time, with a
    checkpoint after the step."""

    def __init__(self, batch: dict, checkpoint: Checkpoint) -> None:
        self.batch, self.checkpoint, self.epoch = batch, checkpoint, 0

    def __len__(self) -> int:
        return 1

    def __iter__(self) -> Iterator[tuple]:
        loader = EpochLoader([self.batch], self.epoch, self.checkpoint, official_batch)
        self.epoch += 1
        return iter(loader)


class Official:
    def __init__(self, case: Case, root: Path, project: Project) -> None:
        with cpu_patches(OPTIONAL):
            self.main, = import_official(root, "run.CREMAD_main")
        self.project = project
        self.writer = RecordingWriter()
        self.files = MemoryFiles()
        self.values: dict[str, Any] = {}
        self.model: torch.nn.Module | None = None
        self.optimizer: torch.optim.Optimizer | None = None
        self.test_losses = [0.0, 0.0]

    def task_class(self, checkpoint: Checkpoint) -> type:
        official, harness = self.main.Cramed_Task, self

        class Task(official):
            def load_dataloader(self) -> tuple[Any, Any, Any]:
                p = harness.project
                return TrainLoader(p.train, checkpoint), [official_batch(p.test)], None

            def build_model(self) -> torch.nn.Module:
                model = super().build_model()     # AVClassifier_Sum for --methods MSES
                load_mapped(model, harness.project.method.state_dict(), sum_name)
                harness.model = model
                return model

            def build_optimizer(self) -> tuple[Any, Any]:
                optimizer, scheduler = super().build_optimizer()
                harness.optimizer = optimizer
                return optimizer, scheduler

        return Task

    def run(self, checkpoint: Checkpoint) -> None:
        main, files, original_test = self.main, self.files, self.main.test

        def step_done(label: str) -> None:
            self.values = {"loss": self.writer.last["loss/step"]}
            checkpoint(label)

        def epoch_done(epoch: int) -> None:
            files.keep_epochs({int(e) for e in log.best})
            self.values = {"ce": self.test_losses, "best_epoch": log.best, "stopped": log.stopped}
            checkpoint(f"e{epoch - 1}.end")

        def observed_test(*args: Any, **kwargs: Any) -> Any:
            out = original_test(*args, **kwargs)
            self.test_losses = [out[3], out[4]]
            return out

        log = MSESLog(epoch_done)
        with tempfile.TemporaryDirectory() as expt_dir:
            # utils/config.py names; --modulation_ends on the official 1-based epochs.
            cfgs = argparse.Namespace(
                dataset="CREMAD", modality="Multimodal", fusion_type="late_fusion", methods="MSES", mode="train",
                alpha=1.0, modulation_starts=0, modulation_ends=MOD_END + 1, use_mgpu=False, EPOCHS=EPOCHS,
                learning_rate=LR, lr_decay_step=EPOCHS + 1, lr_decay_ratio=0.1, random_seed=999,
                expt_dir=expt_dir, expt_name="mses", device="cpu", gpu_ids="0", breakpoint_path=None,
                save_checkpoint=False)
            with cpu_patches(), patch(main, "Cramed_Task", self.task_class(step_done)), \
                    patch(main, "weight_init", lambda module: None), \
                    patch(main, "get_device", lambda dev: torch.device("cpu")), \
                    patch(main, "get_logger", lambda *a, **k: log), \
                    patch(main, "SummaryWriter", lambda *a, **k: self.writer), \
                    patch(main, "test", observed_test), \
                    patch(torch, "save", files.save), patch(torch, "load", files.load):
                main.CREMAD_main(cfgs)

    def snapshot(self) -> Snapshot:
        return {**module_snapshot(self.model, [self.optimizer], sum_name), **quantities(self.values)}


REPO = "lihong2303/AGM_ICCV2023"
COMMIT = "5a65542c70b1c7c15c5df291e77fa9cf2bbb9549"

CASES = [
    Case(name="mses_official_compat", method="mses",
         hparams={"variant": "official_compat", "patience": PATIENCE, "modulation_ends": MOD_END}, repo=REPO,
         commit=COMMIT,
         entry="run/CREMAD_main.py CREMAD_main with train and test (--methods MSES); model/CREMAD_net.py "
               "AVClassifier_Sum",
         covers=f"{EPOCHS} epochs x 1 step (batch {BATCH}), per-modality test CE after every epoch (1 batch); "
                f"smoothed-loss best epochs (audio 2, visual up to 42, official 1-based); audio stops after epoch 83 "
                f"(patience {PATIENCE}), the full checkpoint of epoch 2 is reloaded (both modalities rewound); "
                f"audio's gradients zeroed in epoch 84 (weight decay and momentum still move it), then past the "
                f"window (--modulation_ends {MOD_END + 1}) in epochs 85-86 while visual keeps training",
         project=Project, official=Official,
         deviations={"eval_split": "val", "modulation_ends": -1},
         golden_labels=("e0s0", "e0.end", "e1.end", "e2.end", "e81.end", "e82s0", "e82.end", "e83s0", "e83.end",
                        "e84s0", "e85.end"),
         notes=__doc__),
]
