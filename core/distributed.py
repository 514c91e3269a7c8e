"""Data-parallel training of one run on several processes (``torchrun``), without wrapping methods in DDP.

Methods own their optimizer steps (several per batch for AUG and MLA, gradient edits between ``backward`` and
``step`` for OGM-GE), so ``DistributedDataParallel``'s backward-time all-reduce does not fit the contract. Instead:

- every optimizer built by ``TrainContext.make_optimizer`` gets a *step pre-hook* (``average_gradients``) that
  averages the gradients of all its parameter groups across ranks right before each ``step()``: it covers
  parameter groups added later (AUG's learners) and any number of steps per batch;
- the training loader serves each rank an equal part of every global batch of the same seeded order (a method's
  row selection included), ``train.batch_size / world_size`` samples per rank and step, so step i sees exactly the
  ``train.batch_size`` samples of a single process's batch i; the runner checks that every rank selected the same
  rows. A method's extra passes over the training loader (``extra_pass``) are sharded the same way, while its
  private passes (``derived``) are not: every rank makes the whole pass, in global batches by default;
- rank 0's initial parameters and buffers are broadcast to every rank, after which each rank reseeds its global RNG
  from ``(seed, "rank", r)`` (dropout masks and other global draws differ per rank, as in a single process they
  differ per sample; checkpoints keep every rank's RNG state) and the training loader draws rank r's augmentations
  from its own stream; before each evaluation the BatchNorm running statistics are averaged over ranks (the other
  tensors are broadcast from rank 0), and after every epoch's ``on_epoch_end`` everything is broadcast from rank 0
  again (method buffers follow rank 0, and a method whose epoch hook changed its structure differently on two ranks
  is reported instead of deadlocking);
- every rank evaluates the full val/test splits with identical weights (simple and deterministic); only rank 0
  writes files and logs.

Methods that *edit* gradients between ``backward`` and ``step`` (OGM/OGM-GE, AGM, MMPareto) would otherwise edit
each rank's local gradient with statistics of its own slice. They use the ``TrainContext`` API instead:
``sync_gradients`` makes gradients equal on every rank right after ``backward`` (the mean over ranks, or rank 0's
for edits drawn from the RNG such as OGM-GE's noise; the pre-step hook then skips them), and ``all_reduce_sum`` /
``all_reduce_mean`` reduce their batch statistics (P2's confidence *sums* with SUM, batch-mean losses with MEAN).
Batch-mean losses over equal slices average to the global batch's mean, so one such step equals the single-process
step on the global batch.

Deviations from single-process training with the same global batch: BatchNorm normalises each rank's slice with
its own batch statistics (no SyncBatchNorm; running statistics are averaged before each evaluation), so the step
differs from the single-process one for any encoder with BatchNorm; per-batch quantities that a method computes
inside ``update`` without reducing them come from the rank's own slice; and ``n % world_size`` training samples
of each epoch's permutation are left out. Methods whose epoch hooks take data-dependent decisions from
``loaders.train`` see only their rank's slice; ``TrainContext.all_reduce_sum`` lets such a method agree across ranks
(it is the identity in a single process).

Every method declares how far this holds for it (``Method.DATA_PARALLEL``): ``exact`` (tested on two gloo ranks
against the single-process steps, ``tests/test_distributed_methods.py``), ``approximate`` or ``unsupported`` (the
runner refuses it under torchrun); ``summary.json`` records the level.

Launch: ``torchrun --nproc_per_node 2 -m benchmarks train ...`` (or ``augbench sweep --gpus-per-run 2``). The process
group is initialised from ``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` (+ ``MASTER_ADDR``/``MASTER_PORT``): NCCL on CUDA,
gloo on CPU.
"""

from __future__ import annotations

import os
import weakref
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Callable, Iterable

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


class RankDivergenceError(RuntimeError):
    """Ranks disagree about the parameters they hold, so collectives cannot line up."""


@dataclass(frozen=True)
class DistContext:
    """Where this process sits in a data-parallel run; the default is a single process."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def device(self, device: torch.device) -> torch.device:
        """Pin CUDA runs to this rank's local GPU; CPU stays CPU."""
        if self.enabled and device.type == "cuda":
            torch.cuda.set_device(self.local_rank)
            return torch.device("cuda", self.local_rank)
        return device

    @property
    def step_pre_hook(self) -> Callable[..., None] | None:
        return average_gradients if self.enabled else None

    def broadcast_module(self, module: nn.Module) -> None:
        """Copy rank 0's parameters and buffers to every rank (after checking that all ranks hold the same)."""
        if not self.enabled:
            return
        check_same_structure(module)
        with torch.no_grad():
            for tensor in [*module.parameters(), *module.buffers()]:
                dist.broadcast(tensor.data, src=0)

    def sync_for_eval(self, module: nn.Module) -> None:
        """Average BatchNorm running statistics over ranks and broadcast every other tensor from rank 0, so that all
        ranks evaluate the same model."""
        if not self.enabled:
            return
        check_same_structure(module)
        averaged = {id(t) for m in module.modules() if isinstance(m, BATCH_NORMS)
                    for t in (m.running_mean, m.running_var) if t is not None}
        with torch.no_grad():
            for tensor in [*module.parameters(), *module.buffers()]:
                if id(tensor) in averaged:
                    dist.all_reduce(tensor.data, op=dist.ReduceOp.SUM)
                    tensor.data /= self.world_size
                else:
                    dist.broadcast(tensor.data, src=0)

    def check_same_rows(self, rows: np.ndarray) -> None:
        """Raise ``RankDivergenceError`` unless every rank serves the same training rows this epoch (a method's
        ``select_rows`` decided from data only one rank saw); different epoch lengths would deadlock."""
        if not self.enabled:
            return
        rows = np.asarray(rows, dtype=np.int64)
        mixed = int((rows * (np.arange(len(rows)) % 7919 + 1)).sum() % (1 << 61))
        device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else None
        stats = torch.tensor([len(rows), mixed], dtype=torch.int64, device=device)
        both = torch.cat([stats, -stats])
        dist.all_reduce(both, op=dist.ReduceOp.MAX)
        if both[:2].tolist() != (-both[2:]).tolist():
            raise RankDivergenceError(f"ranks select different training rows this epoch (this rank: {len(rows)} "
                                      "rows); decide the selection from statistics every rank shares")

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def sum_by_key(self, values: dict[str, float]) -> dict[str, float]:
        """Sum ``values`` key by key over ranks, a key missing on a rank counting 0 (a method may log a key on some
        steps only); the keys keep the order in which rank 0, then the others, first hold them. Every rank must call
        it; a single process gets its own values back."""
        if not self.enabled:
            return dict(values)
        held: list[Any] = [None] * self.world_size
        dist.all_gather_object(held, list(values))
        keys = list(dict.fromkeys(k for rank_keys in held for k in rank_keys))
        device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else None
        sums = torch.tensor([float(values.get(k, 0.0)) for k in keys], dtype=torch.float64, device=device)
        dist.all_reduce(sums, op=dist.ReduceOp.SUM)
        return dict(zip(keys, sums.tolist()))

    def gather_to_main(self, obj: Any) -> list[Any] | None:
        """Every rank's ``obj`` (picklable), in rank order, on rank 0; None on the other ranks. Every rank must call
        it. A single process gets ``[obj]``."""
        if not self.enabled:
            return [obj]
        gathered: list[Any] | None = [None] * self.world_size if self.is_main else None
        dist.gather_object(obj, gathered, dst=0)
        return gathered


def env_world() -> tuple[int, int, int]:
    """(rank, world_size, local_rank) from the torchrun environment; (0, 1, 0) when absent."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", str(rank)))
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"inconsistent distributed environment: RANK={rank}, WORLD_SIZE={world}")
    return rank, world, local


def init_from_env(device: str = "auto") -> tuple[DistContext, bool]:
    """Join the process group that torchrun describes in the environment.

    Args:
        device: the run's ``train.device``; ``cpu`` forces gloo even on a machine with GPUs.

    Returns:
        The context and whether this call created the process group (then the caller destroys it).
    """
    rank, world, local = env_world()
    if world == 1:
        return DistContext(), False
    if dist.is_initialized():
        return DistContext(dist.get_rank(), dist.get_world_size(), local), False
    use_cuda = device != "cpu" and torch.cuda.is_available()
    dist.init_process_group(backend="nccl" if use_cuda else "gloo", init_method="env://", rank=rank,
                            world_size=world)
    return DistContext(rank, world, local), True


def shutdown(created: bool) -> None:
    if created and dist.is_initialized():
        dist.destroy_process_group()


def _structure(params: list[torch.Tensor], device: torch.device) -> torch.Tensor:
    count, numel = len(params), sum(p.numel() for p in params)
    return torch.tensor([count, numel, -count, -numel], dtype=torch.int64, device=device)


def _check_structure(params: list[torch.Tensor], device: torch.device, what: str) -> None:
    stats = _structure(params, device)
    dist.all_reduce(stats, op=dist.ReduceOp.MAX)
    high, low = stats[:2].tolist(), (-stats[2:]).tolist()
    if high != low:
        raise RankDivergenceError(
            f"ranks disagree about {what}: parameter tensors {low[0]}..{high[0]}, elements {low[1]}..{high[1]} "
            f"(this rank: {len(params)}, {sum(p.numel() for p in params)}). A method's epoch hook changed its "
            "structure from data only this rank saw; reduce its statistics with TrainContext.all_reduce_sum "
            "before deciding.")


def check_same_structure(module: nn.Module) -> None:
    """Raise ``RankDivergenceError`` unless every rank holds the same number and size of parameters/buffers."""
    tensors = [*module.parameters(), *module.buffers()]
    device = tensors[0].device if tensors else torch.device("cpu")
    _check_structure(tensors, device, f"the tensors of {type(module).__name__}")


def average_gradients(optimizer: torch.optim.Optimizer, args: tuple, kwargs: dict[str, Any]) -> None:
    """Optimizer step pre-hook: replace every gradient of ``optimizer``'s groups by its mean over ranks.

    Gradients that ``sync_gradients`` made equal since this optimizer's last step are left as they are (averaging
    them again would cost a collective, and would shrink OGM-GE's noise if it were drawn per rank). A parameter whose
    gradient is None on every rank stays None (SGD then skips it, as in a single process, which AUG's ``zero_grad``
    semantics rely on); one that has a gradient on some ranks only counts zeros elsewhere.
    """
    pending = []
    for group in optimizer.param_groups:
        for p in group["params"]:
            synced = _SYNCED.pop(id(p), None)
            if synced is None or p.grad is None or synced() is not p.grad:
                pending.append(p)
    if pending:
        _exchange_gradients(pending, "mean")


SYNC_MODES = ("mean", "main", "equal")
# id(parameter) -> weak reference to the gradient tensor that sync_gradients made equal on every rank; an entry is
# dropped at the next step of an optimizer holding the parameter. Comparing the tensor itself (not the id) keeps an
# entry from exempting a gradient that a later backward created anew (zero_grad(set_to_none=True)).
_SYNCED: dict[int, weakref.ref] = {}


def sync_gradients(params: Iterable[torch.Tensor], how: str = "mean") -> None:
    """Make the gradients of ``params`` equal on every rank now, and exempt them from the next pre-step average.

    For methods that edit gradients between ``backward`` and ``step`` with statistics of the whole batch: sync right
    after the last ``backward`` before ``step``, then edit identically on every rank (the edit must use only reduced
    statistics). Identity in a single process.

    Args:
        params: the parameters whose ``.grad`` to synchronise.
        how: ``"mean"`` averages over ranks (the global batch's gradient of a batch-mean loss); ``"main"`` copies rank
            0's gradients (edits drawn from the RNG, which a rank's stream need not reproduce); ``"equal"`` only
            records that the gradients were computed from already reduced quantities and are equal on every rank.
    """
    if how not in SYNC_MODES:
        raise ValueError(f"sync_gradients(how={how!r}): expected one of {SYNC_MODES}")
    params = list(params)
    if _world_size() == 1 or not params:
        return
    if how != "equal":
        _exchange_gradients(params, how)
    for p in params:
        if p.grad is not None:
            _SYNCED[id(p)] = weakref.ref(p.grad)


def _exchange_gradients(params: list[torch.Tensor], how: str) -> None:
    """Average the gradients of ``params`` over ranks (``how="mean"``) or copy rank 0's (``"main"``), bucketed by
    dtype into one collective per dtype."""
    device = params[0].device
    _check_structure(params, device, "the parameters whose gradients are exchanged")
    has_grad = torch.tensor([p.grad is not None for p in params], dtype=torch.int32, device=device)
    dist.all_reduce(has_grad, op=dist.ReduceOp.MAX)
    world = dist.get_world_size()
    buckets: dict[torch.dtype, list[torch.Tensor]] = defaultdict(list)
    for p, flag in zip(params, has_grad.tolist()):
        if flag:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            buckets[p.grad.dtype].append(p)
    for members in buckets.values():
        flat = torch.cat([p.grad.reshape(-1) for p in members])
        if how == "mean":
            dist.all_reduce(flat, op=dist.ReduceOp.SUM)
            flat /= world
        else:
            dist.broadcast(flat, src=0)
        offset = 0
        for p in members:
            n = p.grad.numel()
            p.grad.copy_(flat[offset:offset + n].view(p.grad.shape))
            offset += n


def _world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over ranks in place (identity in a single process); for methods' batch and epoch statistics."""
    if _world_size() > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_reduce_mean(tensor: torch.Tensor) -> torch.Tensor:
    """Average a floating-point ``tensor`` over ranks in place (identity in a single process)."""
    if not tensor.is_floating_point():
        raise TypeError(f"all_reduce_mean needs a floating-point tensor, got {tensor.dtype}")
    world = _world_size()
    if world > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        tensor /= world
    return tensor
