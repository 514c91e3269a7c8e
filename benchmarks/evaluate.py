"""Test-time missing-modality evaluation of a finished run (AUG paper, Table 5: 0% / 20% / 50% missing).

Protocol [project; the AUG paper does not describe its sampling]: for a missing rate r, round(r·N) of the N samples
of the split lose one modality each, its input tensor replaced by zeros before ``predict`` (the P1 ``input`` drop,
applied generically to the batch, so every method is evaluated the same way). One generator seeded by
``seed_for(seed, "missing-modality")`` draws a permutation of the samples and, per sample, the modality it would lose
(uniform over the dataset's modalities). The first round(r·N) samples of the permutation are the missing ones, so
the missing sets are nested across rates and a sample always loses the same modality. Metrics come from the same
``evaluate`` the runner uses, on the *final* checkpoint (the last epoch, not the best-on-test epoch), so rate 0
reproduces the run's last-epoch test metrics; when it does not (a method's ``on_epoch_end`` changed the model after
that last evaluation), the evaluation is refused rather than recorded (for the train split, which training does
not evaluate, that check is made on test). Results go to ``<run>/missing_modality.json`` (the test split, which
tables read) or ``<run>/missing_modality-<split>.json``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch

from benchmarks.data_identity import check_run_data, current_identity
from benchmarks.records import read_checkpoint, read_json, write_json
from benchmarks.run_folder import load_run_config, missing_result_file
from benchmarks.runner import CHECKPOINT, build_data, build_method, evaluate, seed_everything, select_device
from core.data import Batch, BatchLoader, seed_for

# AUG Table 5's rates; the default of `augbench evaluate` and of a sweep's `evaluate:` section.
DEFAULT_MISSING_RATES = (0.0, 0.2, 0.5)


class RunNotFinishedError(ValueError):
    """The run folder has no finished run (no ``DONE``/``checkpoint.pt``)."""


class CheckpointMismatchError(ValueError):
    """The final checkpoint does not score what the run recorded for its last epoch."""


def check_reference(run_dir: Path, split: str, results: Sequence[dict[str, Any]], recorded: float, n: int) -> None:
    """Rate 0 must reproduce the run's recorded last-epoch accuracy (to within half a sample), or the checkpoint is
    not the model those metrics came from and every missing rate would describe another model."""
    at_zero = [r["metrics"]["acc"] for r in results if r["rate"] == 0]
    if not at_zero or abs(at_zero[0] - recorded) <= 0.5 / max(n, 1):
        return
    raise CheckpointMismatchError(
        f"{run_dir}: the final checkpoint scores {at_zero[0]:.4f} {split} accuracy with nothing missing, but the run "
        f"recorded {recorded:.4f} for its last epoch: the method changed the model after that evaluation (an "
        f"on_epoch_end step in the last epoch), or this evaluation computes otherwise than training's did (another "
        f"device or precision: evaluate with the run's own --device; or another --batch-size, for a method whose "
        f"prediction depends on the batch, such as MLA's per-batch entropy gate), so no missing-modality result is "
        f"written")


def parse_rates(text: str) -> list[float]:
    """``"0,0.2,0.5"`` -> ``[0.0, 0.2, 0.5]``; every rate must lie in [0, 1]."""
    try:
        rates = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"--missing expects comma-separated fractions like 0,0.2,0.5, got {text!r}") from None
    check_rates(rates)
    return rates


def check_rates(rates: Sequence[float]) -> None:
    bad = [r for r in rates if not 0.0 <= r <= 1.0]
    if not rates or bad:
        raise ValueError(f"missing rates must be fractions in [0, 1], got {list(rates)}")
    # A rate is evaluated and written once: a result asked for with a repeat would never count as current.
    if len({float(r) for r in rates}) != len(rates):
        raise ValueError(f"missing rates must differ from each other, got {list(rates)}")


def missing_plan(n: int, rates: Sequence[float], num_modalities: int, seed: int) -> dict[float, np.ndarray]:
    """Per rate, an array of length ``n``: -1 for a complete sample, else the index of the modality it loses."""
    check_rates(rates)
    rng = np.random.default_rng(seed_for(seed, "missing-modality"))
    order = rng.permutation(n)
    loses = rng.integers(0, num_modalities, size=n)
    plans = {}
    for rate in rates:
        chosen = order[:int(round(rate * n))]
        codes = np.full(n, -1, dtype=np.int64)
        codes[chosen] = loses[chosen]
        plans[float(rate)] = codes
    return plans


def apply_missing(batch: Batch, codes: torch.Tensor, modalities: Sequence[str]) -> Batch:
    """Zero modality ``modalities[k]``'s input for every sample whose code is k (codes: (B,), -1 = complete)."""
    out = dict(batch)
    for k, name in enumerate(modalities):
        x = batch[name]
        drop = (codes == k).to(x.device).view(-1, *([1] * (x.dim() - 1)))
        out[name] = x.masked_fill(drop, 0)
    return out


class _MissingLoader:
    """A split's loader whose batches have the planned modalities zeroed (``evaluate`` only needs these two)."""

    def __init__(self, loader: BatchLoader, code_of_row: torch.Tensor, modalities: Sequence[str]) -> None:
        self.loader = loader
        self.code_of_row = code_of_row
        self.modalities = modalities

    @property
    def num_samples(self) -> int:
        return self.loader.num_samples

    def __iter__(self) -> Iterator[Batch]:
        for batch in self.loader:
            yield apply_missing(batch, self.code_of_row[batch["index"].cpu()], self.modalities)


def evaluate_missing(run_dir: Path, rates: Sequence[float] = DEFAULT_MISSING_RATES, *, split: str = "test",
                     seed: int = 0, device: str | None = None, batch_size: int | None = None) -> dict[str, Any]:
    """Evaluate a finished run's final checkpoint with missing modalities and write its result file
    (``missing_result_file(split)``).

    Args:
        run_dir: a run folder holding ``DONE``, ``config.yaml`` and ``checkpoint.pt``.
        rates: fractions of samples that lose one modality.
        split: the split to evaluate.
        seed: seeds which samples lose which modality (independent of the run seed).
        device: ``auto``/``cpu``/``cuda``; default the run's ``train.device``.
        batch_size: evaluation batch size; default the run's ``train.eval_batch_size``.
    """
    run_dir = Path(run_dir)
    # Refused before any work: the implicit rate 0 (check_reference) would let an empty list pass, and a bad rate
    # would be reported beside a 0 the caller never gave.
    check_rates(rates)
    if batch_size is not None and batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    ckpt = run_dir / CHECKPOINT
    if not (run_dir / "DONE").exists() or not ckpt.exists():
        raise RunNotFinishedError(f"{run_dir} holds no finished run (needs DONE and {CHECKPOINT}); the "
                                  "missing-modality evaluation uses the final checkpoint")
    cfg = load_run_config(run_dir)
    dev = select_device(device or cfg.train.device)
    seed_everything(cfg.train.seed, cfg.train.deterministic)
    check_run_data(run_dir, current_identity(cfg), "evaluate it on that data")
    bundle = build_data(cfg)
    if split in bundle.splits and not len(bundle.splits[split]):
        # (an unknown split name is refused by bundle.loader, naming the splits there are)
        raise ValueError(f"{run_dir}: {cfg.dataset} serves no {split!r} rows to this run (e.g. no validation split "
                         f"under data.train_split=full), so there is nothing to evaluate; choose another --split")
    method = build_method(cfg, bundle, dev)
    state = read_checkpoint(ckpt, map_location=dev)
    method.load_checkpoint_state(state["method"])
    batch_size = cfg.train.eval_batch_size if batch_size is None else batch_size
    loader = bundle.loader(split, batch_size=batch_size, train=False, seed=cfg.train.seed, device=dev)
    loader.set_epoch(state["epoch"])
    names = bundle.task.names
    # rate 0 is always evaluated: it must reproduce the run's recorded last epoch (check_reference)
    plans = missing_plan(loader.num_samples, sorted({0.0, *map(float, rates)}), len(names), seed)
    results = []
    for rate, codes in plans.items():
        code_of_row = torch.full((int(bundle.labels.shape[0]),), -1, dtype=torch.int64)
        code_of_row[torch.from_numpy(loader.rows)] = torch.from_numpy(codes)
        metrics = evaluate(method, _MissingLoader(loader, code_of_row, names), bundle.task.num_classes)
        results.append({"rate": rate, "n_missing": int((codes >= 0).sum()),
                        "missing_by_modality": {m: int((codes == k).sum()) for k, m in enumerate(names)},
                        "metrics": metrics})
    last = read_json(run_dir / "summary.json")["protocols"]["last"]
    reference = (last.get(split) or {}).get("acc")
    if reference is None:
        # Training records no metrics of this split (train), so the checkpoint is checked on test, which every epoch
        # evaluates: a checkpoint that is another model than the recorded one is refused for every split.
        test = bundle.loader("test", batch_size=batch_size, train=False, seed=cfg.train.seed, device=dev)
        test.set_epoch(state["epoch"])
        at_zero = {"rate": 0.0, "metrics": evaluate(method, test, bundle.task.num_classes)}
        check_reference(run_dir, "test", [at_zero], last["test"]["acc"], test.num_samples)
    else:
        check_reference(run_dir, split, results, reference, loader.num_samples)
    results = [r for r in results if r["rate"] in {float(x) for x in rates}]
    # The batch size is recorded: a method whose prediction looks at its batch (MLA's official entropy gate) scores
    # differently under another one.
    out = {"split": split, "seed": seed, "checkpoint_epoch": state["epoch"], "n": loader.num_samples,
           "batch_size": batch_size,
           "protocol": "each missing sample loses one modality chosen uniformly (input zeroed); nested sets across "
                       "rates; final checkpoint",
           "reference_last_epoch_acc": reference, "rates": results}
    write_json(run_dir / missing_result_file(split), out)
    return out
