"""The data types every layer shares: what a dataset serves and what a method consumes.

A batch is ``{"audio": Tensor, "visual": Tensor, ..., "label": LongTensor, "index": LongTensor}`` (plus any per-row
extras a method asked the loader to carry). Batches are built by fancy-indexing whole arrays (memory-mapped cache
arrays or in-memory tensors), never by a per-sample ``__getitem__``; random augmentation runs once per batch on the
batch's device, drawn from a generator seeded by (run seed, epoch), so an interrupted epoch replays identically.
Batch keys starting with ``_`` are the gather's private notes to the augment (row numbers, frame ranges): they stay
on the host, so the augment can read them without waiting for the device, and the augment removes them.
"""

from __future__ import annotations

import hashlib
import queue
import threading
from dataclasses import dataclass
from typing import Callable, Iterator, Mapping

import numpy as np
import torch

Batch = dict[str, torch.Tensor]
# gather(rows) -> CPU tensors for those dataset rows (no label/index; the loader adds them).
Gather = Callable[[np.ndarray], Batch]
# augment(batch_on_device, generator, train) -> batch; must be deterministic given the generator state.
Augment = Callable[[Batch, torch.Generator, bool], Batch]

MODALITY_KINDS = ("spectrogram", "frames", "vector", "sequence", "tokens")


@dataclass(frozen=True)
class ModalitySpec:
    """One input modality as served in a batch.

    Attributes:
        name: batch key, e.g. ``"audio"``.
        kind: one of ``MODALITY_KINDS``; picks the encoder family.
        shape: per-sample shape as served: spectrogram ``(1, F, T)``, frames ``(3, T, H, W)``, vector ``(D,)``,
            sequence ``(L, D)``, tokens ``(L,)``.
    """

    name: str
    kind: str
    shape: tuple[int, ...]

    def __post_init__(self) -> None:
        if self.kind not in MODALITY_KINDS:
            raise ValueError(f"modality {self.name!r}: unknown kind {self.kind!r}; valid: {MODALITY_KINDS}")


@dataclass(frozen=True)
class TaskSpec:
    """The dataset's description of the learning problem, handed to every method."""

    dataset: str
    num_classes: int
    modalities: tuple[ModalitySpec, ...]
    class_names: tuple[str, ...] = ()

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(m.name for m in self.modalities)

    def modality(self, name: str) -> ModalitySpec:
        for m in self.modalities:
            if m.name == name:
                return m
        raise KeyError(f"dataset {self.dataset!r} has no modality {name!r}; it has {self.names}")


def seed_for(*parts: object) -> int:
    """A stable 63-bit seed from any parts (run seed, epoch, purpose); unlike ``hash`` it survives restarts."""
    digest = hashlib.sha256(repr(parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def identity_augment(batch: Batch, generator: torch.Generator, train: bool) -> Batch:
    return batch


class BatchLoader:
    """Iterates one split in batches of whole-array slices.

    Training loaders shuffle with a generator seeded by ``(seed, epoch)``; evaluation loaders visit every row exactly
    once, in order, and never drop the last partial batch. The runner alone may replace a training loader's rows for
    one epoch (``_serve``, applying a method's ``select_rows``): any rows with repeats, per-row extras served under
    their own batch keys, shuffled or in the given order. ``rows``, ``extras`` and ``shuffle`` are read-only views.
    ``prefetch`` > 0 prepares up to that many batches ahead in a background thread while the caller trains on the
    current one; the batches and their order are exactly those of the single-thread loader.
    """

    def __init__(self, rows: np.ndarray, labels: np.ndarray, gather: Gather, *, batch_size: int, train: bool,
                 seed: int, device: torch.device | str = "cpu", augment: Augment = identity_augment,
                 drop_last: bool = False, prefetch: int = 0) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if not train and drop_last:
            raise ValueError("drop_last is only allowed for training loaders: evaluation must see every sample")
        self.base_rows = np.asarray(rows, dtype=np.int64)
        self._rows = self.base_rows
        self._extras: dict[str, np.ndarray] = {}
        self._shuffle = True
        self.labels = np.asarray(labels, dtype=np.int64)
        self.gather = gather
        self.batch_size = batch_size
        self.train = train
        self.seed = seed
        self.device = torch.device(device)
        self.augment = augment
        self.drop_last = drop_last
        if prefetch < 0:
            raise ValueError(f"prefetch must be >= 0, got {prefetch}")
        self.prefetch = prefetch
        self.epoch = 0
        self.rank, self.world_size = 0, 1

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    @property
    def rows(self) -> np.ndarray:
        """The dataset rows served this epoch (the split's rows unless the runner applied a selection)."""
        return self._rows

    @property
    def extras(self) -> Mapping[str, np.ndarray]:
        return dict(self._extras)

    @property
    def shuffle(self) -> bool:
        return self._shuffle

    def _serve(self, rows: np.ndarray | None = None, extras: Mapping[str, np.ndarray] | None = None,
               shuffle: bool = True) -> None:
        """Runner only: serve ``rows`` (None: the split's rows) with per-row ``extras``, shuffled or in order."""
        if rows is None:
            if extras:
                raise ValueError("extras need rows to attach to")
            self._rows, self._extras, self._shuffle = self.base_rows, {}, shuffle
            return
        rows = np.asarray(rows)
        if rows.ndim != 1 or (rows.size and not np.issubdtype(rows.dtype, np.integer)):
            raise ValueError(f"selected rows must be a 1-D integer array, got shape {rows.shape} dtype {rows.dtype}")
        rows = rows.astype(np.int64)
        unknown = np.setdiff1d(rows, self.base_rows)
        if unknown.size:
            raise ValueError(f"selected rows {unknown[:5].tolist()} are not rows of this split")
        extras = {k: np.asarray(v) for k, v in (extras or {}).items()}
        for key, values in extras.items():
            if key in ("label", "index") or key.startswith("_"):
                raise ValueError(f"extra {key!r} would overwrite a batch key the loader owns")
            if len(values) != len(rows):
                raise ValueError(f"extra {key!r} has {len(values)} entries for {len(rows)} rows")
        self._rows, self._extras, self._shuffle = rows, extras, shuffle

    def set_shard(self, rank: int, world_size: int) -> None:
        """Data-parallel training: serve this rank's part of every global batch.

        All ranks draw the same seeded order; global batch i is positions [i*G, (i+1)*G) of it with G =
        batch_size * world_size, exactly the batch one process with batch size G serves, and rank r takes the r-th
        of its W equal parts. The n mod W positions left over at the end are not served, so every rank runs the
        same number of batches.
        """
        if not self.train:
            raise ValueError("only training loaders are sharded: every rank evaluates the full split")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"bad shard rank={rank} world_size={world_size}")
        self.rank, self.world_size = rank, world_size

    def _served(self) -> int:
        n = len(self._rows)
        return n // self.world_size if self.world_size > 1 else n

    def _order(self) -> np.ndarray:
        """Positions into ``rows`` that this rank serves, in serving order."""
        n = len(self._rows)
        order = np.arange(n)
        if self.train and self._shuffle:
            order = torch.randperm(n, generator=self.generator("shuffle")).numpy()
        if self.world_size == 1:
            return order
        w, b, per_rank = self.world_size, self.batch_size, self._served()
        full = per_rank // b
        head = order[:full * b * w].reshape(full, w, b)[:, self.rank].reshape(-1)
        tail = order[full * b * w:per_rank * w].reshape(w, -1)[self.rank]
        return np.concatenate([head, tail])

    def derived(self, rows: np.ndarray | None = None, *, train: bool = False, batch_size: int | None = None,
                seed: int | None = None) -> "BatchLoader":
        """A loader over the same arrays for a method's own pass: by default every row of this split once, in order,
        with evaluation transforms (feature passes for valuation, diagnosis, effective dimensions); with
        ``train=True`` and its own ``seed``, a private shuffled training pass (teachers, pre-training). It is never
        sharded: under data parallelism every rank makes the whole pass, by default in global batches (this
        loader's batch size times the number of ranks), so every rank takes the single-process steps."""
        # A private training pass drops its partial batch when the run does (train.drop_last), as the published
        # codes' teacher and pre-training loaders share the main loader's settings; evaluation passes never drop.
        return BatchLoader(self.base_rows if rows is None else rows, self.labels, self.gather,
                           batch_size=batch_size or self.batch_size * self.world_size, train=train,
                           seed=self.seed if seed is None else seed, device=self.device, augment=self.augment,
                           drop_last=train and self.drop_last)

    def extra_pass(self, tag: int, max_steps: int = 0) -> Iterator[Batch]:
        """One more training pass with the shuffle and augmentation of epoch ``tag`` (negative tags never collide
        with the runner's epochs), stopping after ``max_steps`` batches if set; the runner's epoch is restored."""
        epoch = self.epoch
        self.set_epoch(tag)
        try:
            for i, batch in enumerate(self):
                if max_steps and i >= max_steps:
                    break
                yield batch
        finally:
            self.set_epoch(epoch)

    @property
    def num_samples(self) -> int:
        return len(self._rows)

    def __len__(self) -> int:
        n = self._served()
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def generator(self, purpose: str) -> torch.Generator:
        return torch.Generator().manual_seed(seed_for(self.seed, self.epoch, purpose))

    def _augment_generator(self) -> torch.Generator:
        """Per-sample augmentation draws (flips, crops, frames): a rank's own stream under data parallelism, or
        every rank would repeat rank 0's draws on its part of the global batch. A single process keeps the
        unranked seed, so its runs stay as they were."""
        if self.world_size == 1:
            return self.generator("augment")
        return torch.Generator().manual_seed(seed_for(self.seed, self.epoch, "augment", self.rank))

    def __iter__(self) -> Iterator[Batch]:
        if self.prefetch:
            return prefetched(self._batches(), self.prefetch, self.device)
        return self._batches()

    def _batches(self) -> Iterator[Batch]:
        order = self._order()
        aug_gen = self._augment_generator()
        pin = self.device.type == "cuda"
        for start in range(0, len(self), 1):
            pos = order[start * self.batch_size:(start + 1) * self.batch_size]
            # Sorted positions read memory-mapped arrays front to back; the batch content is the same set.
            pos = np.sort(pos)
            rows = self._rows[pos]
            batch = self.gather(rows)
            batch["label"] = torch.from_numpy(self.labels[rows])
            batch["index"] = torch.from_numpy(rows)
            for key, values in self._extras.items():
                batch[key] = torch.as_tensor(values[pos])
            batch = {k: v if k.startswith("_") else (v.pin_memory() if pin else v).to(self.device, non_blocking=pin)
                     for k, v in batch.items()}
            yield self.augment(batch, aug_gen, self.train)


def prefetched(batches: Iterator[Batch], depth: int, device: torch.device) -> Iterator[Batch]:
    """Run ``batches`` in a background thread, at most ``depth`` ahead, yielding them in order.

    The producer is the only thread advancing ``batches``, so the sequence (and every random draw in it) is the
    single-thread one. An exception in the producer is raised here; leaving the loop early stops the producer.
    """
    slots: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    done = object()

    def put(item: object) -> bool:
        while not stop.is_set():
            try:
                slots.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    # The current CUDA device is per thread: the producer must use the caller's (a data-parallel rank's own GPU).
    cuda_index = (device.index if device.index is not None else torch.cuda.current_device()) \
        if device.type == "cuda" else None

    def produce() -> None:
        outcome: object = done
        try:
            if cuda_index is not None:
                torch.cuda.set_device(cuda_index)
            for batch in batches:
                if not put(batch):
                    return
        except Exception as err:  # handed to the consuming thread, which re-raises it
            outcome = err
        finally:
            put(outcome)

    thread = threading.Thread(target=produce, name="batch-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            item = slots.get()
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        thread.join()
