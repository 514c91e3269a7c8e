"""BSS against GitHub njustkmg/IJCAI25-BSS: ``CREMA-D/train-SPL.py`` (the learning-based scheduler, ``bss``) and
``CREMA-D/train-CL.py`` (the heuristic scheduler, ``bss_heuristic``), on ``CREMA-D/models/basic_model.py`` ``AVNet``
wrapped in ``nn.DataParallel`` as ``__main__`` does.

The scripts' epoch loop lives in ``__main__``. The harness imports the script as a module and sets, as module
globals, the names ``__main__`` defines before its loop (lines 187-216): ``args``, ``net`` (AVNet with the project's
initial weights in place of ``weight_init``), ``device`` (the CPU), ``train_dataset`` (the fixed rows in
``CramedDataset``'s item format: spectrogram (F, T), frames (3, T, H, W), label), ``epoch_step_train``, and the SGD and
StepLR of lines 215-216. It then executes ``__main__``'s ``if True:`` block (train-SPL.py lines 219-251, train-CL.py
219-257), compiled from the script's own source text: the epoch loop with the measurer call (``assign_weights`` every
epoch / ``model_evaluate`` before epoch 0), the ``torch.multinomial`` draw or the root pacing function, the ``Subset``,
its ``DataLoader`` and ``train``, all as released. Names patched in the module for the run: ``test`` returns zeros
(an eval-mode, no-grad pass that changes no state); ``DataLoader`` runs in-process (``num_workers``/``pin_memory``
dropped) and, for the epoch's ``Subset``, reports the epoch's selection (``e<epoch>.rows``) and serves the Subset's
items in the project's batch order: in order for SPL (``shuffle=False``, as the script), the project loader's seeded
shuffle of the same rows for CL (the script's ``shuffle=True`` draws an unrelated permutation), ``drop_last`` as the
script asks. For SPL, ``assign_weights`` is wrapped to seed the global generator right after it returns with the seed
the project's permutation generator takes for the epoch, so the script's ``torch.multinomial`` draws the same
permutation. The loop's accuracy log goes to a temporary folder.

Compared at ``e<epoch>.rows``: the BatchNorm statistics the train-mode measurer moved, and as quantities SPL's
sampling probabilities ``q/p`` (all rows) and the epoch's sequence ``q/rows``; CL's full curriculum order ``q/order``,
the pacing fraction ``q/fraction`` and the epoch's rows ``q/rows`` (the order's prefix). The project's training loader
drops the last partial batch as the scripts do (``train.drop_last``, which the BSS recipe sets). Other documented
deviations do not apply to this setting: the harness has no augmentation (evaluation transforms in the measurer), the
Twitter and NVGesture scoring variants belong to other scripts.
"""

from __future__ import annotations

import ast
import contextlib
import io
import os
import sys
import tempfile
import types
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

import baselines.bss
from baselines.base import Loaders, RowSelection, StepInfo
from benchmarks.parity.core import (
    AV_TRUNKS,
    Case,
    Checkpoint,
    EpochLoader,
    Snapshot,
    av_batches,
    av_task,
    build_method,
    cpu_patches,
    import_official,
    load_mapped,
    module_snapshot,
    name_map,
    patch,
    quantities,
)
from benchmarks.runner import apply_selection
from core.data import BatchLoader, TaskSpec, seed_for

LR, NUM_CLASSES, EPOCHS = 1e-2, 6, 3
# What the scripts import but the loop never calls (torchvision.models.utils is gone from current torchvision).
OPTIONAL = ("librosa", "timm", "torchvision.models.utils")
# Rows and batch per scheduler: SPL trains all 10 rows in 2 batches of 4 (2 dropped); CL's pacing (T_grow = 40)
# selects 3, 4, 5 of 20 rows in epochs 0-2: 1, 2, 2 batches of 2.
SIZES = {"learning": (10, 4), "heuristic": (20, 2)}


# ``AVNet`` entry -> the project's ``BSS`` entry.
official_name = name_map((*AV_TRUNKS, ("linear_a.", "model.head.uni.audio.", None),
                          ("linear_v.", "model.head.uni.visual.", None), ("linear_last.", "model.head.fused.", None)),
                         "AVNet")


class Rows(Dataset):
    """The fixed training rows (float64), the same for both sides; items in ``CramedDataset``'s format."""

    def __init__(self, task: TaskSpec, rows: int) -> None:
        pool = av_batches(task, 1, rows, seed=7)[0]
        self.audio, self.visual, self.labels = pool["audio"], pool["visual"], pool["label"]

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        return self.audio[i, 0], self.visual[i], int(self.labels[i])

    def loader(self, batch: int, seed: int) -> BatchLoader:
        """The project's training loader over the rows (``drop_last`` as the scripts)."""
        return BatchLoader(np.arange(len(self)), self.labels.numpy(),
                           lambda rows: {"audio": self.audio[torch.as_tensor(rows)],
                                         "visual": self.visual[torch.as_tensor(rows)]},
                           batch_size=batch, train=True, seed=seed, drop_last=True)


def served_positions(n: int, batch: int, shuffle: bool, drop_last: bool, epoch: int, seed: int) -> list[list[int]]:
    """Batches of positions 0..n-1 in the order the project's training loader serves n selected rows in ``epoch``."""
    positions = BatchLoader(np.arange(n), np.zeros(n), lambda rows: {}, batch_size=batch, train=True, seed=seed,
                            drop_last=drop_last)
    positions.set_epoch(epoch)
    apply_selection(positions, RowSelection(np.arange(n), shuffle=shuffle))
    return [b["index"].tolist() for b in positions]


class Project:
    def __init__(self, case: Case, overrides: Mapping[str, Any]) -> None:
        task = av_task("cremad", NUM_CLASSES)
        self.method = build_method(case.method, task, {**case.hparams, **overrides}, epochs=EPOCHS, lr=LR)
        self.rows, self.batch = SIZES[self.method.hp.scheduler]
        self.data = Rows(task, self.rows)
        self.seed = self.method.ctx.train_hp.seed
        self.loaders = Loaders(self.data.loader(self.batch, self.seed))
        self.values: dict[str, Any] = {}

    def select(self, epoch: int) -> RowSelection:
        """``select_rows``, keeping the sampling probabilities it draws the sequence from (learning scheduler)."""
        kept: list[np.ndarray] = []

        def sampling_probabilities(*args: Any) -> np.ndarray:
            kept.append(probabilities(*args))
            return kept[-1]

        probabilities = baselines.bss.sampling_probabilities
        with patch(baselines.bss, "sampling_probabilities", sampling_probabilities):
            selection = self.method.select_rows(epoch, self.loaders)
        m = self.method
        self.values = ({"p": kept[0], "rows": selection.rows} if m.hp.scheduler == "learning" else
                       {"order": m.order, "fraction": m.on_epoch_end(epoch, self.loaders)["bss_fraction"],
                        "rows": selection.rows})
        return selection

    def steps(self) -> Iterator[str]:
        """The runner's epoch: ``on_epoch_start``, ``select_rows`` served through ``apply_selection``, ``update`` on
        every served batch (evaluation, which changes no state, is skipped)."""
        m, train = self.method, self.loaders.train
        for epoch in range(EPOCHS):
            train.set_epoch(epoch)
            m.train()
            m.on_epoch_start(epoch, self.loaders)
            apply_selection(train, self.select(epoch))
            yield f"e{epoch}.rows"
            m.train()
            self.values = {}
            for k, batch in enumerate(train):
                m.update(batch, StepInfo(epoch, k, len(train), EPOCHS))
                yield f"e{epoch}s{k}"

    def snapshot(self) -> Snapshot:
        return {**module_snapshot(self.method, [self.method.optimizer]), **quantities(self.values)}


def main_block(script: Path) -> types.CodeType:
    """``__main__``'s ``if True:`` block (the epoch loop), compiled from the script's source text with its own file
    name and line numbers."""
    tree = ast.parse(script.read_text(encoding="utf-8"), filename=str(script))
    main = next(n for n in tree.body if isinstance(n, ast.If) and ast.unparse(n.test) == "__name__ == '__main__'")
    block = next(n for n in main.body if isinstance(n, ast.If) and ast.unparse(n.test) == "True")
    return compile(ast.Module(body=[block], type_ignores=[]), str(script), "exec")


SCRIPTS = {"learning": "train-SPL", "heuristic": "train-CL"}


class Official:
    def __init__(self, case: Case, root: Path, project: Project) -> None:
        root = root / "CREMA-D"
        scheduler = project.method.hp.scheduler
        with cpu_patches(OPTIONAL), patch(sys, "stdout", io.StringIO()):
            (self.script,) = import_official(root, SCRIPTS[scheduler])
            self.net = self.script.AVNet(None)     # AVNet reads nothing from args
        load_mapped(self.net, project.method.state_dict(), official_name)
        self.block = main_block(root / f"{SCRIPTS[scheduler]}.py")
        self.scheduler, self.data, self.seed = scheduler, project.data, project.seed
        model = nn.DataParallel(self.net)
        # train-*.py lines 215-216: SGD(lr, momentum 0.9, weight_decay 1e-4), StepLR(lr_decay_step 70, 0.1).
        self.optimizer = torch.optim.SGD(model.parameters(), lr=LR, momentum=0.9, weight_decay=1e-4)
        lr_schedule = torch.optim.lr_scheduler.StepLR(self.optimizer, 70, 0.1)
        # What __main__ defines before its loop, under its names.
        self.names = {"args": types.SimpleNamespace(batch_size=project.batch, epochs=EPOCHS), "net": model,
                      "device": torch.device("cpu"), "train_dataset": self.data, "test_dataloader": None,
                      "optimizer": self.optimizer, "scheduler": lr_schedule,
                      "epoch_step_train": len(self.data) // project.batch, "epoch_step_test": 0}
        self.values: dict[str, Any] = {}

    def selection(self, g: Mapping[str, Any]) -> dict[str, Any]:
        """The epoch's selection from the loop's variables (module globals while the block runs)."""
        if self.scheduler == "learning":
            return {"p": g["sampling_probs"], "rows": g["sampled_indices"]}
        return {"order": g["sorted_indices"], "fraction": g["lambda_t"], "rows": g["subset_indices"]}

    def data_loader(self, g: dict[str, Any], checkpoint: Checkpoint) -> Callable[..., Any]:
        def loader(dataset: Dataset, batch_size: int, shuffle: bool = False, num_workers: int = 0,
                   pin_memory: bool = False, drop_last: bool = False) -> Any:
            if not isinstance(dataset, Subset):   # the measurer's pass over train_dataset, in order
                return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, drop_last=drop_last)
            epoch = g["epoch"]
            self.values = self.selection(g)
            checkpoint(f"e{epoch}.rows")
            self.values = {}
            order = served_positions(len(dataset), batch_size, shuffle, drop_last, epoch, self.seed)
            return EpochLoader(list(DataLoader(dataset, batch_sampler=order)), epoch, checkpoint, lambda b: b)
        return loader

    def assign_weights(self, g: dict[str, Any]) -> Callable[..., Any]:
        original = self.script.assign_weights

        def assign_weights(*args: Any) -> torch.Tensor:
            probs = original(*args)
            # The script's next line draws the permutation from the global generator; the project draws it from a
            # generator seeded by (run seed, epoch): the same seed here makes it the same draw.
            torch.manual_seed(seed_for(self.seed, g["epoch"], "bss_sequence"))
            return probs
        return assign_weights

    def run(self, checkpoint: Checkpoint) -> None:
        g = vars(self.script)
        g.update(self.names)
        stack = contextlib.ExitStack()
        if self.scheduler == "learning":
            stack.enter_context(patch(self.script, "assign_weights", self.assign_weights(g)))
        with tempfile.TemporaryDirectory() as folder, contextlib.chdir(folder), stack, cpu_patches(), \
                patch(sys, "stdout", io.StringIO()), patch(sys, "stderr", io.StringIO()), \
                patch(self.script, "DataLoader", self.data_loader(g, checkpoint)), \
                patch(self.script, "test", lambda *args: (0.0, 0.0, 0.0)):
            os.mkdir("results")     # the loop appends its test accuracy to ./results/<name>.txt
            exec(self.block, g)  # noqa: S102 - the script's own __main__ block, compiled from its source

    def snapshot(self) -> Snapshot:
        return {**module_snapshot(self.net, [self.optimizer], official_name), **quantities(self.values)}


REPO, COMMIT = "njustkmg/IJCAI25-BSS", "495b94e228fff7f1c7f760b19776b6917b1bc13b"
CASES = [
    Case(name="bss_official_compat", method="bss", hparams={"variant": "official_compat"}, repo=REPO, commit=COMMIT,
         entry="CREMA-D/train-SPL.py __main__ (lines 219-251: assign_weights, torch.multinomial, Subset, DataLoader, "
               "train); CREMA-D/models/basic_model.py AVNet",
         covers=f"{EPOCHS} epochs of {SIZES['learning'][0]} rows (batch {SIZES['learning'][1]}, drop_last: 2 steps, "
                f"2 rows dropped); before every epoch the train-mode measurer (BatchNorm statistics moved), the "
                f"sampling probabilities from the balance scores and the weighted permutation served in order; steps "
                f"across the epoch boundaries on the re-measured sequences",
         deviations={"measure_mode": "eval"}, project=Project, official=Official, notes=__doc__),
    Case(name="bss_heuristic_official_compat", method="bss",
         hparams={"variant": "official_compat", "scheduler": "heuristic"}, repo=REPO, commit=COMMIT,
         entry="CREMA-D/train-CL.py __main__ (lines 219-257: model_evaluate, root pacing, Subset, DataLoader, "
               "train); CREMA-D/models/basic_model.py AVNet",
         covers=f"{EPOCHS} epochs of {SIZES['heuristic'][0]} rows (batch {SIZES['heuristic'][1]}, drop_last); the "
                f"train-mode measurer once before epoch 0 (curriculum order from the balance scores), the pacing "
                f"fraction growing over epochs 0-2 (3, 4, 5 rows: 1, 2, 2 steps) on the order's prefix, shuffled",
         deviations={"measure_mode": "eval"}, project=Project, official=Official, notes=__doc__),
]
