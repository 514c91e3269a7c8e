"""What every dataset hands the runner: its task, its row splits and how to gather and augment batches of rows
(the batch types and the loader live in ``core.data``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch

from core.data import Augment, BatchLoader, Gather, TaskSpec, identity_augment


@dataclass
class DataBundle:
    """A prepared dataset: its task, its row splits and how to gather and augment batches of rows."""

    task: TaskSpec
    labels: np.ndarray
    splits: dict[str, np.ndarray]
    gather: Gather
    augment: Augment = identity_augment
    info: dict = field(default_factory=dict)
    prefetch: int = 0

    def loader(self, split: str, *, batch_size: int, train: bool, seed: int,
               device: torch.device | str = "cpu", drop_last: bool = False) -> BatchLoader:
        if split not in self.splits:
            raise KeyError(f"dataset {self.task.dataset!r} has no split {split!r}; it has {sorted(self.splits)}")
        return BatchLoader(self.splits[split], self.labels, self.gather, batch_size=batch_size, train=train,
                           seed=seed, device=device, augment=self.augment, drop_last=drop_last,
                           prefetch=self.prefetch)


def stratified_holdout(rows: Sequence[int], labels: np.ndarray, fraction: float, seed: int,
                       groups: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Split ``rows`` into (kept, held_out) with ``fraction`` of every class held out, reproducibly for ``seed``.

    With ``groups`` (a key per row), whole groups are held out, so rows that share a source never sit on both sides,
    which would let validation reward memorising it. Groups within one class each (UCF-101's actor-and-scene groups):
    ``fraction`` of each class's groups; at least one group of every class stays in train, and one is held out of a
    class with two or more. Groups whose rows span classes (one tweet's image with several targets, one subject
    performing every gesture) cannot be split per class: ``fraction`` of all groups, at least one and never all,
    drawn at random, so the classes are held out in proportion only on average.

    Raises:
        ValueError: holding out whole groups that span classes left a class without training rows.
    """
    rows = np.asarray(rows, dtype=np.int64)
    rng = np.random.default_rng(seed)
    if groups is not None and groups_span_classes(groups[rows], labels[rows]):
        return _whole_group_holdout(rows, labels, fraction, rng, groups)
    held: list[np.ndarray] = []
    for label in np.unique(labels[rows]):
        members = rows[labels[rows] == label]
        if groups is None:
            take = int(round(fraction * len(members)))
            held.append(rng.permutation(members)[:take])
            continue
        chosen = _draw_groups(np.unique(groups[members]), fraction, rng)
        held.append(members[np.isin(groups[members], chosen)])
    held_rows = np.sort(np.concatenate(held)) if held else np.empty(0, dtype=np.int64)
    kept = np.setdiff1d(rows, held_rows)
    return kept, held_rows


def groups_span_classes(groups: np.ndarray, labels: np.ndarray) -> bool:
    """Whether some group has rows of two classes."""
    return len(set(zip(groups.tolist(), labels.tolist()))) > len(set(groups.tolist()))


def _draw_groups(names: np.ndarray, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """``fraction`` of ``names``, drawn at random, at least one (at a fraction above 0) and never all. Groups are
    coarse: round(fraction * groups) may be every group (1 group at fraction > 0.5, 2 at >= 0.75), which would leave
    a class without training clips, or none of up to 5 groups at 0.1, which would leave it without validation clips."""
    take = max(int(round(fraction * len(names))), 1 if fraction > 0 else 0)
    return rng.permutation(names)[:min(take, len(names) - 1)]


def _whole_group_holdout(rows: np.ndarray, labels: np.ndarray, fraction: float, rng: np.random.Generator,
                         groups: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    names = np.unique(groups[rows])
    chosen = _draw_groups(names, fraction, rng)
    held_rows = np.sort(rows[np.isin(groups[rows], chosen)])
    kept = np.setdiff1d(rows, held_rows)
    lost = sorted(set(labels[rows].tolist()) - set(labels[kept].tolist()))
    if lost:
        raise ValueError(f"holding out {len(chosen)} whole group(s) of {len(names)} left class(es) {lost} without "
                         f"training rows; choose another validation seed or fraction")
    return kept, held_rows
