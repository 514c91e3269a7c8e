"""OPM against GitHub GeWu-Lab/BML_TPAMI2024: ``code/main.py`` ``train`` run unmodified (``--use_adam_drop``, no
OGM modulation) on ``code/models/Classifier.py`` ``Classifier`` (two ResNet-18 encoders, ``ConcatFusion`` with 31
classes, ``calcu_q`` / ``Modality_drop`` / ``custom_autograd``).

The released ``Classifier.py`` does not compile: ``Modality_drop.execute_drop`` ends the line
``cleaned_fea=torch.chunk(cleaned_fea,num_mod,dim=0) ]`` with a stray ``]``. The harness imports it with that one
character removed (an import hook compiles the clone's source with ``dim=0) ]`` replaced by ``dim=0)``; the file is not
touched and no bytecode is written); everything else is the released code. ``main.py``'s imports the training
function never uses are stubbed (TensorBoard, ``h5py``, the missing ``utils.log_file``).

``train`` hard-codes the warm-up (``warm_up = 1 if epoch <= 5``), so the harness calls it for epochs 5, 6 and 7 (one
warm-up epoch, then two dropping epochs) and the project runs the same epoch numbers with its default
``warmup_epochs`` 6. The draws are fed to both sides: before each step the harness seeds a generator; the project
draws from the global generator with the same seed (``torch.rand(())`` to execute, ``torch.rand(B, 2)`` for the keep
mask), and the official ``np.random.rand(1)`` returns 1 - u (official ``exe`` is ``v >= 1 - p_exe``, the project's
``u < p_exe``) and ``Bernoulli(1 - q).sample([B, 1])`` returns (U < 1 - q) in its [B, 1, 2] layout. Only the dominant
modality gets q > 0, so no sample loses both modalities and the official all-dropped ``continue`` cannot occur. The
optimizer is SGD on both sides (``main`` builds AdamW; the optimizer is not part of the method).
"""

from __future__ import annotations

import argparse
import importlib.abc
import importlib.machinery
import importlib.util
import io
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from baselines.base import StepInfo
from benchmarks.parity.core import (
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
    resnet_name,
)

FIRST_EPOCH, EPOCHS, STEPS, BATCH = 5, 3, 2, 8
LR, NUM_CLASSES, SEED = 1e-2, 31, 100
Q_BASE, LAM, P_EXE = 0.5, 0.5, 0.7
STRAY, FIXED = "dim=0) ]", "dim=0)"


# ``Classifier`` entry -> the project's ``OPM`` entry.
official_name = name_map((("encoder_1.", "model.encoders.audio.trunk.", resnet_name),
                          ("encoder_2.", "model.encoders.visual.trunk.", resnet_name),
                          ("fusion_model.fxy.", "model.head.fc.", None)), "Classifier")


def draws(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The step's execution draw u and keep-mask draws U (B, 2), in the order the project draws them."""
    gen = torch.Generator().manual_seed(SEED + step)
    return torch.rand((), generator=gen), torch.rand(BATCH, 2, generator=gen)


class Project:
    def __init__(self, case: Case, overrides: Mapping[str, Any]) -> None:
        task = av_task("kinetics_sounds", NUM_CLASSES)
        self.method = build_method(case.method, task, {**case.hparams, **overrides},
                                   epochs=FIRST_EPOCH + EPOCHS, lr=LR)
        self.batches = av_batches(task, EPOCHS * STEPS, BATCH, seed=7)
        self.values: dict[str, Any] = {}

    def steps(self) -> Iterator[str]:
        for e in range(EPOCHS):
            epoch = FIRST_EPOCH + e
            for k in range(STEPS):
                torch.manual_seed(SEED + epoch * STEPS + k)   # the same stream as draws(step)
                logs = self.method.update(self.batches[e * STEPS + k],
                                          StepInfo(epoch, k, STEPS, FIRST_EPOCH + EPOCHS))
                if "q_audio" in logs:
                    self.values = {"q_audio": logs["q_audio"], "q_visual": logs["q_visual"]}
                yield f"e{epoch}s{k}"

    def snapshot(self) -> Snapshot:
        return {**module_snapshot(self.method, [self.method.optimizer]), **quantities(self.values)}


class _WithoutStrayBracket(importlib.machinery.SourceFileLoader):
    """Compiles the released Classifier.py with its stray ``]`` removed; never reads or writes bytecode."""

    def get_code(self, fullname: str) -> Any:
        source = Path(self.path).read_text(encoding="utf-8")
        if source.count(STRAY) != 1:
            raise RuntimeError(f"{self.path}: expected the released syntax error {STRAY!r} once; the clone differs "
                               "from the recorded commit")
        return compile(source.replace(STRAY, FIXED), self.path, "exec", dont_inherit=True)


class _ClassifierFinder(importlib.abc.MetaPathFinder):
    def __init__(self, code: Path) -> None:
        self.path = code / "models" / "Classifier.py"

    def find_spec(self, name: str, path: Any, target: Any = None) -> Any:
        if name != "models.Classifier":
            return None
        loader = _WithoutStrayBracket(name, str(self.path))
        return importlib.util.spec_from_file_location(name, self.path, loader=loader)


def official_batch(b: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return b["audio"][:, 0], b["visual"], b["label"]


class Official:
    def __init__(self, case: Case, root: Path, project: Project) -> None:
        code = root / "code"
        with cpu_patches(("torch.utils.tensorboard", "h5py", "utils", "utils.log_file")), \
                patch(sys, "meta_path", [_ClassifierFinder(code), *sys.meta_path]):
            self.main, classifier = import_official(code, "main", "models.Classifier")
        # The argparse/Config fields the model and train() read (scripts/train_opm.sh: q_base 0.5, lam 0.5, p_exe 0.7).
        self.cfg = argparse.Namespace(use_adam_drop=True, use_modulation=False, d=[512, 512], p_exe=P_EXE,
                                      q_base=Q_BASE, lam=LAM)
        self.net = classifier.Classifier(self.cfg, device="cpu")
        load_mapped(self.net, project.method.state_dict(), official_name)
        self.optimizer = torch.optim.SGD(self.net.parameters(), lr=LR, momentum=0.9, weight_decay=1e-4)
        self.scheduler = torch.optim.lr_scheduler.StepLR(self.optimizer, 70, 0.1)
        self.batches = project.batches
        self.step_draws = draws(0)

    def before_step(self, step: int) -> None:
        self.step_draws = draws(step)

    def execution_draw(self, size: int) -> np.ndarray:
        """``np.random.rand(1)``: v = 1 - u, so the official ``v >= 1 - p_exe`` is the project's ``u < p_exe``."""
        return np.full(size, 1 - float(self.step_draws[0]))

    def mask_draw(self, probs: torch.Tensor) -> torch.Tensor:
        """``Bernoulli(1 - q).sample([B, 1])``: (U < 1 - q) as the project's (B, 2) mask, in the [B, 1, 2] layout."""
        return (self.step_draws[1] < probs).to(probs.dtype).unsqueeze(1)

    def run(self, checkpoint: Checkpoint) -> None:
        def sample(bernoulli: torch.distributions.Bernoulli, sample_shape: Any = ()) -> torch.Tensor:
            return self.mask_draw(bernoulli.probs)

        for e in range(EPOCHS):
            loader = EpochLoader(self.batches[e * STEPS:(e + 1) * STEPS], FIRST_EPOCH + e, checkpoint, official_batch,
                                 self.before_step)
            with cpu_patches(), patch(sys, "stdout", io.StringIO()), patch(sys, "stderr", io.StringIO()), \
                    patch(np.random, "rand", self.execution_draw), \
                    patch(torch.distributions.Bernoulli, "sample", sample):
                self.main.train(self.cfg, FIRST_EPOCH + e, self.net, torch.device("cpu"), loader, self.optimizer,
                                self.scheduler)

    def snapshot(self) -> Snapshot:
        q = getattr(self.net, "q", None)
        values = {} if q is None else {"q_audio": q[0], "q_visual": q[1]}
        return {**module_snapshot(self.net, [self.optimizer], official_name), **quantities(values)}


REPO = "GeWu-Lab/BML_TPAMI2024"
COMMIT = "4b3aa4fd841856c4acbebf48549e6c59fbf7635e"

CASES = [
    Case(name="opm_official_compat", method="opm",
         hparams={"variant": "official_compat", "q_base": Q_BASE, "lam": LAM, "p_exe": P_EXE}, repo=REPO, commit=COMMIT,
         entry="code/main.py train (--use_adam_drop, concat); code/models/Classifier.py Classifier, calcu_q, "
               "Modality_drop.execute_drop, custom_autograd",
         covers=f"epochs {FIRST_EPOCH}-{FIRST_EPOCH + EPOCHS - 1} x {STEPS} steps (batch {BATCH}): the last warm-up "
                f"epoch, then dropping from epoch {FIRST_EPOCH + 1} (q every step; drops executed at e6s0, e7s0, "
                "e7s1, skipped at e6s1; the dominant modality switches at e7s1)",
         deviations={"theta_gradient": False}, project=Project, official=Official, notes=__doc__),
]
