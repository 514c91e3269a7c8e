"""Data Remixing against GitHub MatthewMaxy/Remix_ICML2025: ``train.py`` ``train_epoch``, ``remix`` (with
``kl_divergence``) and ``special_train_epoch`` run unmodified on ``models/models.py`` ``AVClassifier`` (concat head
plus ``head_audio`` / ``head_video``, ``forward(mode=...)`` zeroing the other modality's features) wrapped in
``nn.DataParallel`` as ``main`` does, with ``datasets/dataloader.py`` ``AV_CD_Dataset_Remix`` reading the subsets back.

``main``'s epoch loop is repeated by the harness: warm-up epochs (``--warmup``) run ``train_epoch``; every later
epoch runs ``remix`` on the training rows in evaluation form (``train_val_dataloader``), then ``special_train_epoch``.
Files are redirected: ``remix``'s two CSV files are written to memory, where ``AV_CD_Dataset_Remix`` reads them
back (``os.path.exists`` true, ``stat.csv`` the clone's own); ``DataLoader`` returns an in-memory loader in the
datasets' format (frames (B, 3, T, H, W), spectrogram (B, 1, F, T), label, label name, file name) over the rows its
dataset lists. Its shuffle is the project's within-subset order, read from the rows the project serves that epoch
(each is a random permutation; the decoupling, which decides the subsets, is compared before). Warm-up batches are
those of the project's training loader. ``valid`` is skipped (eval mode, no state change). The optimizer is SGD on
both sides (``main`` builds Adam; the optimizer is not part of the method). The decoupling is compared at
``e<k>.remix``: each row's KL to uniform per modality (read by wrapping ``kl_divergence`` and the project's
``kl_to_uniform``, results kept) and the modality each row goes to.

The project batches the epoch's one ordered list, so a batch can straddle the two subsets where the official code
ends the first subset with its own partial batch (a documented deviation with no knob: the runner has no way to end a
batch early). The rows are chosen so that the video subset, trained first, fills whole batches at every remix, where
both batchings agree: 14 rows in batches of 4; the first remix sends 8 rows to video and 6 to audio (4 + a partial
batch of 2, on both sides), the second all 14 to audio (``special_train_epoch``'s empty-subset branch). The audio
spectrograms are 64 x 64 so that the last ResNet stage still has 2 x 2 positions: 2-row batches at 1 x 1 left
BatchNorm running statistics that saturated the eval-mode audio predictions (KL = log2 6 for every row). No knob of
the method departs from the official defaults, so there is nothing to flip (``deviations`` is empty): K = 6 is the
case's class count, and the seeded within-subset shuffle is served to both sides.
"""

from __future__ import annotations

import contextlib
import io
import sys
import types
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

import baselines.remix as remix_module
from baselines.base import Loaders, StepInfo
from benchmarks.parity.core import (
    AV_TRUNKS,
    FUSED_UNI_HEADS,
    Case,
    Checkpoint,
    Snapshot,
    av_batches,
    build_method,
    cpu_patches,
    import_official,
    load_mapped,
    module_snapshot,
    name_map,
    patch,
    quantities,
)
from benchmarks.parity.smv import own_datasets_package
from benchmarks.runner import apply_selection
from core.data import BatchLoader, ModalitySpec, TaskSpec

EPOCHS, WARMUP, ROWS, BATCH = 3, 1, 14, 4
LR, NUM_CLASSES, DATA_SEED = 2e-3, 6, 0
# AV_CD_Dataset_Remix picks 2 frames per clip (pick_num = 2).
VISUAL = ModalitySpec("visual", "frames", (3, 2, 32, 32))
AUDIO = ModalitySpec("audio", "spectrogram", (1, 64, 64))
MODALITIES = ("audio", "visual")


# ``AVClassifier`` entry -> the project's ``Remix`` entry.
official_name = name_map((*AV_TRUNKS, *FUSED_UNI_HEADS), "AVClassifier")


class Data:
    """The fixed training rows (float64 inputs) and the project's training loader over them."""

    def __init__(self) -> None:
        self.task = TaskSpec(dataset="cremad", num_classes=NUM_CLASSES, modalities=(AUDIO, VISUAL))
        pool = av_batches(self.task, 1, ROWS, seed=DATA_SEED)[0]
        self.pool = {k: pool[k] for k in ("audio", "visual", "label")}

    def gather(self, rows: np.ndarray) -> dict[str, torch.Tensor]:
        return {m: self.pool[m][torch.as_tensor(rows)] for m in MODALITIES}

    def loader(self) -> BatchLoader:
        return BatchLoader(np.arange(ROWS), self.pool["label"].numpy(), self.gather, batch_size=BATCH, train=True,
                           seed=0)


@contextlib.contextmanager
def recording(owner: Any, attr: str, calls: list) -> Iterator[None]:
    """Wrap ``owner.attr`` so that every result is appended to ``calls`` (and returned unchanged)."""
    original = getattr(owner, attr)

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        out = original(*args, **kwargs)
        calls.append(out)
        return out
    with patch(owner, attr, wrapper):
        yield


class Project:
    """The method as the runner drives it: ``select_rows`` served by the training loader, ``update`` per batch."""

    def __init__(self, case: Case, overrides: Mapping[str, Any]) -> None:
        self.data = Data()
        self.method = build_method(case.method, self.data.task, {**case.hparams, **overrides},
                                   epochs=EPOCHS, lr=LR)
        self.loaders = Loaders(self.data.loader())
        self.values: dict[str, Any] = {}

    def steps(self) -> Iterator[str]:
        m, train = self.method, self.loaders.train
        for epoch in range(EPOCHS):
            train.set_epoch(epoch)
            apply_selection(train, None)
            m.train()
            m.on_epoch_start(epoch, self.loaders)
            kls: list[np.ndarray] = []
            with recording(remix_module, "kl_to_uniform", kls):
                selection = m.select_rows(epoch, self.loaders)
            apply_selection(train, selection)
            if selection is not None:
                # assign() scores each pass batch for the first modality, then the second.
                codes = np.empty(ROWS, np.int64)
                codes[selection.rows] = selection.extras[remix_module.EXTRA_KEY]
                self.values = {"kl_audio": np.concatenate(kls[0::2]), "kl_visual": np.concatenate(kls[1::2]),
                               "codes": codes}
                yield f"e{epoch}.remix"
            n = len(train)
            for k, batch in enumerate(train):
                m.update(batch, StepInfo(epoch, k, n, EPOCHS))
                yield f"e{epoch}s{k}"

    def snapshot(self) -> Snapshot:
        return {**module_snapshot(self.method, [self.method.optimizer]), **quantities(self.values)}


class StepLoader:
    """An official ``DataLoader`` stand-in: the given batches in the datasets' format, reporting each finished step
    (``done()``) when the loop asks for the next batch or ends. Unlike ``EpochLoader`` it leaves the step numbering
    to its owner, which counts on across a remix epoch's two subset loaders."""

    def __init__(self, batches: list[tuple], done: Callable[[], None]) -> None:
        self.batches, self.done = batches, done

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator[tuple]:
        for b in self.batches:
            yield b
            self.done()


class CapturedFile(io.StringIO):
    """A file opened for writing whose text is kept in ``store[path]`` when it is closed."""

    def __init__(self, store: dict[str, str], path: str) -> None:
        super().__init__()
        self.store, self.path = store, path

    def close(self) -> None:
        self.store[self.path] = self.getvalue()
        super().close()


class Official:
    def __init__(self, case: Case, root: Path, project: Project) -> None:
        self.root = root
        with cpu_patches(), own_datasets_package(root / "datasets"):
            self.train, self.datasets, models = import_official(root, "train", "datasets.dataloader", "models.models")
        # get_arguments defaults (--alpha, --beta, --gamma1, --gamma2), with the case's warm-up and batch size.
        self.args = types.SimpleNamespace(dataset="CREMAD", batch_size=BATCH, warmup=WARMUP, alpha=0.5, beta=0.5,
                                          gamma1=1.0, gamma2=1.0, n_classes=NUM_CLASSES)
        self.net = models.AVClassifier(self.args)
        load_mapped(self.net, project.method.state_dict(), official_name)
        self.model = nn.DataParallel(self.net)
        # main builds Adam; both sides use SGD(lr, momentum 0.9, weight_decay 1e-4) (see the notes), StepLR(30, 0.1).
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=LR, momentum=0.9, weight_decay=1e-4)
        self.scheduler = torch.optim.lr_scheduler.StepLR(self.optimizer, 30, 0.1)
        self.project = project
        self.data = project.data
        with open(root / "data" / "stat.csv", encoding="UTF-8-sig") as f:
            self.classes = sorted(line.strip() for line in f if line.strip())
        self.eval_batch = project.method.ctx.train_hp.eval_batch_size
        self.files: dict[str, str] = {}
        self.values: dict[str, Any] = {}
        self.epoch, self.step = 0, 0

    def batch(self, rows: np.ndarray) -> tuple:
        """Rows in ``AV_CD_Dataset``'s item format, collated."""
        r = torch.as_tensor(rows)
        labels = self.data.pool["label"][r]
        return (self.data.pool["visual"][r], self.data.pool["audio"][r], labels,
                [self.classes[int(y)] for y in labels], [f"row{int(i)}" for i in rows])

    def done(self) -> None:
        self.checkpoint(f"e{self.epoch}s{self.step}")
        self.step += 1

    def data_loader(self, dataset: Any, batch_size: int, shuffle: bool, **kwargs: Any) -> StepLoader:
        """``special_train_epoch``'s ``DataLoader(subset, shuffle=True)``: the subset in the project's order."""
        rows = [int(name[3:]) for name in dataset.data]
        served = [int(r) for r in self.project.loaders.train.rows if int(r) in rows]
        order = served + [r for r in rows if r not in served]
        return StepLoader([self.batch(np.array(order[i:i + batch_size])) for i in range(0, len(order), batch_size)],
                          self.done)

    def open_file(self, path: str, mode: str = "r", **kwargs: Any) -> Any:
        """``open`` for both modules: ``remix`` writes its CSVs to memory, the dataset reads them (and the clone's
        ``stat.csv``) back."""
        if "w" in mode:
            return CapturedFile(self.files, path)
        if Path(path).name == "stat.csv":
            return open(self.root / "data" / "stat.csv", mode, **kwargs)
        return io.StringIO(self.files[path])

    @contextlib.contextmanager
    def redirected(self) -> Iterator[None]:
        fs = types.SimpleNamespace(path=types.SimpleNamespace(exists=lambda path: True))
        # A module-level ``open`` shadows the builtin for that module only.
        self.train.open = self.datasets.open = self.open_file
        try:
            with patch(self.datasets, "os", fs), patch(self.train, "DataLoader", self.data_loader):
                yield
        finally:
            del self.train.open, self.datasets.open

    def run(self, checkpoint: Checkpoint) -> None:
        t = self.train
        self.checkpoint = checkpoint
        warmup_loader = self.data.loader()
        valuation = [self.batch(np.arange(ROWS)[i:i + self.eval_batch]) for i in range(0, ROWS, self.eval_batch)]
        with cpu_patches(), self.redirected(), patch(sys, "stdout", io.StringIO()), \
                patch(sys, "stderr", io.StringIO()):
            for epoch in range(EPOCHS):
                self.epoch, self.step = epoch, 0
                if epoch < WARMUP:
                    warmup_loader.set_epoch(epoch)
                    loader = StepLoader([self.batch(b["index"].numpy()) for b in warmup_loader], self.done)
                    t.train_epoch(self.args, epoch, self.model, torch.device("cpu"), loader, self.optimizer)
                else:
                    kls: list[float] = []
                    with recording(t, "kl_divergence", kls):
                        a_dataset, v_dataset = t.remix(self.args, self.model, torch.device("cpu"), valuation, epoch)
                    codes = np.empty(ROWS, np.int64)
                    for code, dataset in ((0, a_dataset), (1, v_dataset)):
                        codes[[int(name[3:]) for name in dataset.data]] = code
                    # remix scores each row's audio, then its video prediction.
                    self.values = {"kl_audio": kls[0::2], "kl_visual": kls[1::2], "codes": codes}
                    checkpoint(f"e{epoch}.remix")
                    t.special_train_epoch(self.args, epoch, self.model, torch.device("cpu"), a_dataset, v_dataset,
                                          self.optimizer)
                self.scheduler.step()

    def snapshot(self) -> Snapshot:
        return {**module_snapshot(self.net, [self.optimizer], official_name), **quantities(self.values)}


CASES = [
    Case(name="remix", method="remix", hparams={"warmup": WARMUP}, repo="MatthewMaxy/Remix_ICML2025",
         commit="80898aa0ad8077af535e7ade4b4583525592956f",
         entry="train.py train_epoch, remix, kl_divergence, special_train_epoch (main's epoch loop); "
               "models/models.py AVClassifier; datasets/dataloader.py AV_CD_Dataset_Remix",
         covers=f"{EPOCHS} epochs, {ROWS} rows in batches of {BATCH}: a warm-up epoch (4 steps, the last a partial "
                f"batch), then two remix epochs; decoupling at each remix (per-row KL of both modalities, each row's "
                f"subset): 8 rows to video and 6 to audio, then all 14 to audio; the video subset trained first with "
                f"audio zeroed (2 steps), then the audio subset with video zeroed ending with its own partial batch "
                f"(2 steps), then the empty-video-subset branch (4 audio steps); warm-up -> remix and remix -> remix "
                f"epoch boundaries",
         project=Project, official=Official, notes=__doc__),
]
