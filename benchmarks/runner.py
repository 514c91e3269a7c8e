"""The one training/evaluation loop. Methods own their steps; this module owns data, schedule, evaluation,
checkpoints, resume and logging, and never branches on a method's name.

Per epoch: set the LR factor on every optimizer group -> ``on_epoch_start`` -> ``select_rows`` (served by the
training loader, which sizes the epoch) -> ``update`` per training batch ->
evaluate val and test (fused + per-modality) -> ``on_epoch_end`` (may grow the model) -> checkpoint -> log.
A run directory holds ``config.yaml``, ``data.json`` (the identity of the data it trains on,
``benchmarks.data_identity``), ``metrics.jsonl`` (one line per finished epoch), ``checkpoint.pt``, ``summary.json``
and ``DONE``. The checkpoint carries the model, optimizers, RNG states and the epoch history, so a
run killed at any point and resumed ends with the same metrics as an uninterrupted one (same device and seed).

``config.yaml`` is written once, when the run starts, and a resume must ask for exactly that config
(``config.check_resume_config``). The one sanctioned change is an extension of ``train.epochs``, recorded in
``extensions.json`` and in the summary; the run's config is ``config.yaml`` with its extensions applied.
"""

from __future__ import annotations

import os
import random
import shlex
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from tqdm import tqdm

from baselines.base import Loaders, Method, RowSelection, StepInfo, TrainContext
from baselines.networks import compile_encoders
from baselines.registry import get_method
from benchmarks.config import RunConfig, check_resume_config, config_digest
from benchmarks.data_identity import DATA_FILE, check_run_data, current_identity
from benchmarks.errors import UsageError
from benchmarks.metrics import classification_metrics
from benchmarks.records import (
    WandbSink,
    atomic_torch_save,
    environment,
    read_checkpoint,
    read_json,
    read_jsonl,
    read_yaml,
    resolve_wandb_mode,
    write_json,
    write_jsonl,
    write_yaml,
)
from benchmarks.run_folder import (
    EXTENSIONS,
    MISSING_RESULT,
    missing_result_file,
    read_extensions,
    read_job_file,
    recorded_config,
)
from core.data import BatchLoader, seed_for
from core.distributed import DistContext, init_from_env, shutdown
from datasets.base import DataBundle
from datasets.registry import get_dataset

CHECKPOINT = "checkpoint.pt"


class RunExistsError(UsageError, RuntimeError):
    """The run directory already holds a run and ``resume`` was not asked for."""


class DeviceUnavailableError(UsageError, RuntimeError):
    """``train.device`` names a device this machine does not have."""


class TrainingDiverged(UsageError, RuntimeError):
    """An epoch's mean training loss is not finite: the run stops before recording it."""


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C during a run; the message says where it stopped and how to resume."""


def select_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise DeviceUnavailableError("train.device=cuda but torch sees no CUDA device (torch "
                                     f"{torch.__version__}); use train.device=auto or train.device=cpu")
    return torch.device(name)


def seed_everything(seed: int, deterministic: bool) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    # Both settings are process-wide: set them either way, so one run's choice never leaks into the next run.
    torch.use_deterministic_algorithms(deterministic, warn_only=True)
    torch.backends.cudnn.benchmark = not deterministic
    # Deterministic mode would also NaN-fill every fresh allocation (a guard for code that reads memory it never
    # wrote); nothing here does, so the numbers are the same without it, and a small-model CPU step ~5% faster.
    torch.utils.deterministic.fill_uninitialized_memory = False


def seed_rank(seed: int, ddp: DistContext, *parts: object) -> None:
    """Give a data-parallel rank its own global RNG stream (dropout masks, per-sample drops, permutations), after
    rank 0's initial model went to every rank: with the run seed alone every rank would repeat rank 0's draws on its
    own slice. Rank 0, like a single process, keeps the stream ``seed_everything`` started, so what rank 0 draws and
    broadcasts (AUG's new learners, for one) is what one process would draw."""
    if not ddp.enabled or ddp.rank == 0:
        return
    rank_seed = seed_for(seed, "rank", ddp.rank, *parts)
    random.seed(rank_seed)
    np.random.seed(rank_seed % (1 << 32))
    torch.manual_seed(rank_seed)


def lr_factor(epoch: int, milestones: list[int], gamma: float) -> float:
    return gamma ** sum(epoch >= m for m in milestones)


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any], seed: int, ddp: DistContext, epoch: int) -> None:
    """Restore this rank's RNG state from a checkpoint. Checkpoints keep every rank's state (``rng_ranks``); one
    without them (a single process, or written before they were kept) holds rank 0's only, and a rank it lacks
    draws a fresh stream for the resumed epoch rather than replay rank 0's."""
    states = state.get("rng_ranks") or [state["rng"]]
    if ddp.rank < len(states):
        set_rng_state(states[ddp.rank])
    else:
        seed_rank(seed, ddp, "resume", epoch)


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore the generators; the states come back on the CPU, where torch requires them, even from a checkpoint read
    with ``map_location`` a GPU."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


@torch.no_grad()
def evaluate(method: Method, loader: BatchLoader, num_classes: int) -> dict[str, Any]:
    """Fused and per-modality metrics over every sample of ``loader`` exactly once."""
    method.eval()
    fused, labels, seen = [], [], []
    per_modality: dict[str, list[torch.Tensor]] = defaultdict(list)
    alternatives: dict[str, list[torch.Tensor]] = defaultdict(list)
    for batch in loader:
        pred = method.predict(batch)
        fused.append(pred.fused.cpu())
        labels.append(batch["label"].cpu())
        seen.append(batch["index"].cpu())
        for m, z in pred.per_modality.items():
            per_modality[m].append(z.cpu())
        for name, z in pred.alternatives.items():
            alternatives[name].append(z.cpu())
    seen_rows = torch.cat(seen)
    if len(seen_rows) != loader.num_samples or len(torch.unique(seen_rows)) != loader.num_samples:
        raise RuntimeError(f"evaluation saw {len(seen_rows)} rows ({len(torch.unique(seen_rows))} unique) of "
                           f"{loader.num_samples}")
    y = torch.cat(labels)
    out = classification_metrics(torch.cat(fused), y, num_classes)
    out["per_modality"] = {m: classification_metrics(torch.cat(z), y, num_classes) for m, z in
                           per_modality.items()}
    if alternatives:
        out["alternatives"] = {k: classification_metrics(torch.cat(z), y, num_classes) for k, z in
                               alternatives.items()}
    out["n"] = int(len(y))
    return out


def select_protocols(history: list[dict]) -> dict[str, Any]:
    """``paper``: the best test-accuracy epoch, as the published code selects (optimistic). ``clean``: the best
    validation-accuracy epoch and its test score. ``last``: the final epoch. Ties go to the earliest epoch."""
    def best(key: str) -> dict:
        return max(history, key=lambda r: (r[key]["acc"], -r["epoch"]))

    out: dict[str, Any] = {}
    if "test" in history[-1]:
        rec = best("test")
        out["paper"] = {"selection": "best test accuracy over epochs (optimistic)", "epoch": rec["epoch"],
                        "test": rec["test"]}
    if "val" in history[-1]:
        rec = best("val")
        out["clean"] = {"selection": "best validation accuracy; test at that epoch", "epoch": rec["epoch"],
                        "val": rec["val"], "test": rec.get("test")}
    last = history[-1]
    out["last"] = {"selection": "last epoch", "epoch": last["epoch"], "test": last.get("test"),
                   "val": last.get("val")}
    return out


def build_data(cfg: RunConfig) -> DataBundle:
    cls = get_dataset(cfg.dataset)
    bundle = cls.build(cfg.data)
    declared = cls.modality_names(cfg.data)
    if bundle.task.names != declared:
        # A sweep checked its methods' settings against the declared names; training must see the same.
        raise RuntimeError(f"dataset {cfg.dataset!r} declares modalities {list(declared)} (modality_names) but "
                           f"serves {list(bundle.task.names)}")
    return bundle


def build_method(cfg: RunConfig, bundle: DataBundle, device: torch.device,
                 step_pre_hook: Callable[..., None] | None = None) -> Method:
    ctx = TrainContext(device=device, epochs=cfg.train.epochs, train_hp=cfg.train, model_hp=cfg.model,
                       amp=cfg.train.amp, step_pre_hook=step_pre_hook)
    method = get_method(cfg.method)(bundle.task, cfg.method_hp, ctx)
    if cfg.train.compile:
        compile_encoders(method)
    return method


def check_held_out_split(cfg: RunConfig, bundle: DataBundle) -> None:
    """Refuse, before training, a run whose method reads a split (``Method.HELD_OUT_KEY``) its data does not serve,
    e.g. the validation split under ``data.train_split=full``; the method would otherwise fail at its first estimate.

    Raises:
        UsageError: naming the knob, the dataset and the two ways out.
    """
    cls = get_method(cfg.method)
    key, split = cls.HELD_OUT_KEY, cls.held_out_split(cfg.method_hp)
    if split and not len(bundle.splits.get(split, ())):
        why = ("data.train_split=full trains on the validation rows" if cfg.data.get("train_split") == "full" else
               "the data has none")
        raise UsageError(f"{cfg.method}.{key}={split!r}, but {cfg.dataset} serves no {split!r} split here ({why}); "
                         f"set {cfg.method}.{key}=test, as the published code does, or give the data a validation "
                         f"split (data.train_split=clean)")


def check_training_batches(cfg: RunConfig, train: BatchLoader, world_size: int = 1) -> None:
    """Refuse, before training, a run whose training split gives no batch in an epoch (fewer rows than
    ``train.batch_size`` under ``train.drop_last``, or than the data-parallel ranks, e.g. a small ``data.subset``):
    every epoch would train no step and the run would finish as DONE, an untrained model tabulated as a result.

    Raises:
        UsageError: naming the rows, the batch size and the ways out.
    """
    if len(train):
        return
    rows = len(train.rows)
    why = (f"fewer than its {world_size} data-parallel ranks" if rows < world_size else
           f"fewer than one batch of train.batch_size={cfg.train.batch_size} with train.drop_last=true")
    raise UsageError(f"{cfg.dataset} serves {rows} training rows, {why}: an epoch would take no training step; "
                     f"lower train.batch_size, set train.drop_last=false, train on fewer ranks or serve more rows "
                     f"(e.g. a larger data.subset)")


def make_loaders(cfg: RunConfig, bundle: DataBundle, device: torch.device, rank: int = 0,
                 world_size: int = 1) -> Loaders:
    """The run's loaders; with ``world_size`` > 1 the training loader serves this rank's share of each global batch
    of ``train.batch_size`` samples (``core.distributed``)."""
    seed, bs, ebs = cfg.train.seed, cfg.train.batch_size, cfg.train.eval_batch_size
    if bs % world_size:
        raise ValueError(f"train.batch_size={bs} is the global batch and must be divisible by the {world_size} "
                         "data-parallel processes")
    train = bundle.loader("train", batch_size=bs // world_size, train=True, seed=seed, device=device,
                          drop_last=cfg.train.drop_last)
    if world_size > 1:
        train.set_shard(rank, world_size)
    val = bundle.loader("val", batch_size=ebs, train=False, seed=seed, device=device) \
        if len(bundle.splits.get("val", ())) else None
    test = bundle.loader("test", batch_size=ebs, train=False, seed=seed, device=device)
    return Loaders(train, val, test)


def apply_selection(train: BatchLoader, selection: RowSelection | None) -> None:
    """Serve a method's ``select_rows`` for this epoch (None: every training row, shuffled)."""
    if selection is None:
        train._serve()
    elif isinstance(selection, RowSelection):
        train._serve(selection.rows, selection.extras, selection.shuffle)
    else:
        raise TypeError(f"select_rows must return a RowSelection or None, got {type(selection).__name__}")


def check_data_parallel(method: str, world_size: int) -> None:
    """Refuse a method whose ``DATA_PARALLEL`` is ``unsupported`` under torchrun."""
    level = get_method(method).DATA_PARALLEL
    if world_size > 1 and level == "unsupported":
        raise RuntimeError(f"method {method!r} declares DATA_PARALLEL = 'unsupported' (see its class); run it in one "
                           f"process instead of torchrun with {world_size} processes")


def _mean_logs(logs: list[dict[str, float]], ddp: DistContext = DistContext()) -> dict[str, float]:
    """The epoch's mean of every logged key over all steps of all ranks: rank 0's steps alone saw 1/W of the data.
    Every rank must call it."""
    sums: dict[str, float] = defaultdict(float)
    counts: dict[str, int] = defaultdict(int)
    for entry in logs:
        for k, v in entry.items():
            sums[k] += float(v)
            counts[k] += 1
    if ddp.enabled:
        sums, counts = ddp.sum_by_key(sums), ddp.sum_by_key(counts)
    return {k: sums[k] / counts[k] for k in sums}


def _epoch_line(record: dict) -> str:
    parts = [f"epoch {record['epoch']}", f"loss {record['train'].get('loss', float('nan')):.4f}"]
    for split in ("val", "test"):
        if split in record:
            uni = " ".join(f"{m} {v['acc']:.3f}" for m, v in record[split]["per_modality"].items())
            parts.append(f"{split} acc {record[split]['acc']:.3f} ({uni})")
    return " | ".join(parts)


def resume_command(run_dir: Path) -> str:
    return f"augbench train --run-dir {shlex.quote(str(run_dir))} --resume"


def _interrupted_message(run_dir: Path, epochs: int) -> str:
    """Where a Ctrl-C stopped the run, from what is on disk (so nothing in the loop has to track it)."""
    if not (run_dir / "config.yaml").exists():
        return f"interrupted before the run started; nothing was written to {run_dir}"
    metrics = run_dir / "metrics.jsonl"
    finished = len(read_jsonl(metrics)) if metrics.exists() else 0
    ckpt = run_dir / CHECKPOINT
    resume_at = read_checkpoint(ckpt, map_location="cpu", mmap=True)["epoch"] + 1 \
        if ckpt.exists() else 0
    where = f"during epoch {finished} (of epochs 0-{epochs - 1})" if finished < epochs else "after the last epoch"
    saved = f"epochs 0-{resume_at - 1} are checkpointed" if resume_at else "no epoch is checkpointed yet"
    return (f"interrupted {where}; {saved} in {run_dir}. Resume at epoch {resume_at} with: "
            f"{resume_command(run_dir)}")


def train_run(cfg: RunConfig, run_dir: Path, *, resume: bool = False, extend_epochs: bool = False,
              wandb_mode: str | None = "disabled", wandb_group: str | None = None, progress: bool = False,
              log=print) -> dict[str, Any]:
    """Train one run into ``run_dir`` and return its summary.

    ``resume`` continues from ``checkpoint.pt``, and a run that already has ``DONE`` is returned as is; either way
    ``cfg`` must be the run's own config (``ConfigMismatchError`` lists the keys that differ). ``extend_epochs``
    additionally lets ``cfg.train.epochs`` exceed the run's: the extension is recorded in ``extensions.json`` and
    the summary, and a finished run trains on. Ctrl-C raises ``RunInterrupted``, whose message names the epoch and
    the command that resumes. Under torchrun (``WORLD_SIZE`` > 1) every rank calls this and trains data-parallel;
    only rank 0 writes files (``core.distributed``)."""
    ddp, created = init_from_env(cfg.train.device)
    try:
        return _train_run(cfg, run_dir, ddp, resume=resume, extend_epochs=extend_epochs, wandb_mode=wandb_mode,
                          wandb_group=wandb_group, progress=progress, log=log)
    except RunInterrupted:
        raise
    except KeyboardInterrupt:
        raise RunInterrupted(_interrupted_message(Path(run_dir), cfg.train.epochs)) from None
    finally:
        shutdown(created)


def _record_extension(run_dir: Path, from_epochs: int, to_epochs: int, first_epoch: int) -> None:
    """Append one extension to ``extensions.json``: the run trained ``from_epochs`` under ``config.yaml`` and goes on
    to ``to_epochs``; ``first_epoch`` is the first epoch trained with the longer schedule (methods that read the
    total epoch count see the new one from there)."""
    entry = {"key": "train.epochs", "from_epochs": from_epochs, "to_epochs": to_epochs, "first_epoch": first_epoch,
             "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    write_json(run_dir / EXTENSIONS, read_extensions(run_dir) + [entry])


def quiet(*args: Any, **kwargs: Any) -> None:
    """The log of ranks other than 0."""


def trained_environment(segments: list[dict], device: torch.device) -> dict[str, Any]:
    """The environment that trained the run's last epochs (its last segment's), else this process's (a run recorded
    before segments were)."""
    if not segments:
        return environment(device)
    return {k: v for k, v in segments[-1].items() if k not in ("first_epoch", "world_size")}


def _train_run(cfg: RunConfig, run_dir: Path, ddp: DistContext, *, resume: bool, extend_epochs: bool,
               wandb_mode: str | None, wandb_group: str | None, progress: bool, log) -> dict[str, Any]:
    wandb_mode = resolve_wandb_mode(wandb_mode)   # every rank refuses a bad mode, before the run gets a folder
    if not ddp.is_main:
        log, progress, wandb_mode = quiet, False, "disabled"
    run_dir = Path(run_dir)
    ckpt_path = run_dir / CHECKPOINT
    done = (run_dir / "DONE").exists() and (run_dir / "summary.json").exists()
    if done and not resume:
        raise RunExistsError(f"{run_dir} holds a finished run; pass --resume to reuse it (or --extend-epochs N "
                             "to train it further), or train into another --out / --run-dir")
    # An unfinished run stopped before its first checkpoint still has its config, metrics and W&B id: a fresh start
    # there would take them over under other settings.
    if (ckpt_path.exists() or (run_dir / "config.yaml").exists()) and not resume:
        raise RunExistsError(f"{run_dir} holds an unfinished run; continue it with: {resume_command(run_dir)}")
    requested = cfg.as_dict()
    recorded = recorded_config(run_dir) if resume else None
    run_hash = cfg.digest()
    if recorded is not None:
        check_resume_config(run_dir, recorded, requested, extend_epochs=extend_epochs)
        # The recorded config names the run (an equal request may differ in form, e.g. 1 for 1.0).
        run_hash = config_digest(read_yaml(run_dir / "config.yaml"))
    extending = recorded is not None and cfg.train.epochs > recorded["train"]["epochs"]
    if done and not extending:
        return read_json(run_dir / "summary.json")
    if done and not ckpt_path.exists():
        # Without it the extension would train from epoch 0 and still be recorded as the finished run extended.
        raise RunExistsError(f"{run_dir} holds a finished run whose {CHECKPOINT} is gone, so it cannot be trained "
                             f"further; train {cfg.train.epochs} epochs into another --out / --run-dir")
    check_data_parallel(cfg.method, ddp.world_size)
    identity = current_identity(cfg)
    if recorded is not None:
        check_run_data(run_dir, identity)
    device = ddp.device(select_device(cfg.train.device))
    seed_everything(cfg.train.seed, cfg.train.deterministic)
    bundle = build_data(cfg)
    check_held_out_split(cfg, bundle)
    method = build_method(cfg, bundle, device, step_pre_hook=ddp.step_pre_hook)
    loaders = make_loaders(cfg, bundle, device, ddp.rank, ddp.world_size)
    check_training_batches(cfg, loaders.train, ddp.world_size)
    method.ctx.loaders = loaders
    # Every rank has made its checks on the folder above before rank 0 writes into it: a rank still checking would
    # otherwise find the config just written and refuse the run as someone else's.
    ddp.barrier()
    # Only a run that could be built gets a folder: a refused knob or split leaves nothing behind.
    if ddp.is_main and recorded is None:
        run_dir.mkdir(parents=True, exist_ok=True)
        write_yaml(run_dir / "config.yaml", requested)
        write_json(run_dir / DATA_FILE, identity)
    ddp.broadcast_module(method)
    seed_rank(cfg.train.seed, ddp)

    history: list[dict] = []
    segments: list[dict] = []
    start_epoch, elapsed = 0, 0.0
    if resume and ckpt_path.exists():
        state = read_checkpoint(ckpt_path, map_location=device)
        method.load_checkpoint_state(state["method"])
        restore_rng(state, cfg.train.seed, ddp, state["epoch"] + 1)
        history, start_epoch, elapsed = state["history"], state["epoch"] + 1, state["elapsed"]
        segments = state.get("segments", [])
        if ddp.is_main:
            write_jsonl(run_dir / "metrics.jsonl", history)
        log(f"resuming {run_dir.name} at epoch {start_epoch}")
    # Which code and machine trained which epochs: a resumed run's earlier segments may come from another commit,
    # library version, thread count or device (the summary's env is the last segment's).
    # A process that trains no epoch (one resumed after the last checkpoint, to write the records) adds none.
    if start_epoch < cfg.train.epochs:
        segments.append({"first_epoch": start_epoch, "world_size": ddp.world_size, **environment(device)})
    if extending and ddp.is_main:
        # DONE goes first: a crash in between leaves an unfinished run whose recorded epochs are still the old ones.
        (run_dir / "DONE").unlink(missing_ok=True)
        # They evaluated the old final checkpoint; a sweep evaluates the new one again.
        for result in (run_dir / MISSING_RESULT, *run_dir.glob(missing_result_file("*"))):
            result.unlink(missing_ok=True)
        _record_extension(run_dir, recorded["train"]["epochs"], cfg.train.epochs, start_epoch)
        log(f"extending {run_dir.name} from {recorded['train']['epochs']} to {cfg.train.epochs} epochs")

    # A sweep's run: its row label is a tag (rows of one method, such as the two unimodal references, told apart),
    # and a resume by hand keeps the sweep's group.
    job = read_job_file(run_dir)
    with WandbSink(wandb_mode, run_dir, cfg.as_dict(), cfg.run_name(run_hash), group=wandb_group or job.get("sweep"),
                   tags=[job["label"]] if job.get("label") else None, log=log) as sink:
        if ddp.is_main:
            sink.log_history(history)
        epochs, max_steps = cfg.train.epochs, cfg.train.max_steps_per_epoch
        for epoch in range(start_epoch, epochs):
            t0 = time.perf_counter()
            factor = lr_factor(epoch, cfg.train.lr_milestones, cfg.train.lr_gamma)
            method.ctx.set_lr_factor(factor)
            for loader in (loaders.train, loaders.val, loaders.test):
                if loader is not None:
                    loader.set_epoch(epoch)
            loaders.train._serve()  # epoch hooks see the split's rows, not last epoch's selection
            method.train()
            method.on_epoch_start(epoch, loaders)
            apply_selection(loaders.train, method.select_rows(epoch, loaders))
            ddp.check_same_rows(loaders.train.rows)
            method.train()
            steps = len(loaders.train) if not max_steps else min(max_steps, len(loaders.train))
            logs = []
            bar = tqdm(total=steps, desc=f"epoch {epoch} (of 0-{epochs - 1})", disable=not progress, leave=False,
                       file=sys.stderr)
            for i, batch in enumerate(loaders.train):
                if i >= steps:
                    break
                logs.append(method.update(batch, StepInfo(epoch, i, steps, epochs)))
                bar.update(1)
                if logs[-1]:
                    bar.set_postfix({k: f"{v:.3f}" for k, v in list(logs[-1].items())[:3]})
            bar.close()
            train_time = time.perf_counter() - t0
            ddp.sync_for_eval(method)
            # lr is the schedule's rate for train.lr; optimizer_lr the range the optimizers trained at (a method's own
            # rates, such as ReconBoost's m_lr/e_lr or AUG's gate group, differ from it).
            in_use = [group["lr"] for opt in method.ctx.optimizers for group in opt.param_groups]
            record: dict[str, Any] = {"epoch": epoch, "lr": cfg.train.lr * factor, "train": _mean_logs(logs, ddp),
                                      "optimizer_lr": {"min": min(in_use), "max": max(in_use)}}
            # Evaluating and tabulating a model trained on NaN would pass for a result; every rank sees the same mean.
            if not np.isfinite(record["train"].get("loss", 0.0)):
                raise TrainingDiverged(f"{cfg.method} diverged in epoch {epoch} of {run_dir}: its mean training loss "
                                       f"is {record['train']['loss']} (a learning rate too high for it, or bf16 "
                                       f"trouble with train.amp); the run stops unrecorded, keeping the checkpoint of "
                                       f"its last checkpointed epoch; train with other settings into another folder")
            if loaders.val is not None:
                record["val"] = evaluate(method, loaders.val, bundle.task.num_classes)
            record["test"] = evaluate(method, loaders.test, bundle.task.num_classes)
            method.train()
            record["diag"] = method.on_epoch_end(epoch, loaders) or {}
            ddp.broadcast_module(method)
            record["time"] = {"train_s": train_time, "epoch_s": time.perf_counter() - t0}
            history.append(record)
            elapsed += record["time"]["epoch_s"]
            checkpoint = (epoch + 1) % max(cfg.train.checkpoint_every, 1) == 0 or epoch == epochs - 1
            # Every rank takes part in gathering the RNG states; only rank 0 writes.
            rng_ranks = ddp.gather_to_main(rng_state()) if checkpoint else None
            if not ddp.is_main:
                continue
            if checkpoint:
                saved = {"epoch": epoch, "method": method.checkpoint_state(), "rng": rng_ranks[0], "history": history,
                         "elapsed": elapsed, "segments": segments}
                if ddp.enabled:
                    saved["rng_ranks"] = rng_ranks
                atomic_torch_save(ckpt_path, saved)
            write_jsonl(run_dir / "metrics.jsonl", history)
            sink.log_epoch(record)
            log(_epoch_line(record))

        summary = {"method": cfg.method, "dataset": cfg.dataset, "seed": cfg.train.seed, "epochs": epochs,
                   "config_hash": run_hash, "protocols": select_protocols(history),
                   "data_parallel": type(method).DATA_PARALLEL, "world_size": ddp.world_size, "wall_time_s": elapsed,
                   "env": trained_environment(segments, device), "segments": segments,
                   "split_files": bundle.info.get("split_files", {})}
        if "subset" in bundle.info:
            # data.subset: numbers of a few samples per class (a smoke run), said beside them
            summary["subset"] = bundle.info["subset"]
        extensions = read_extensions(run_dir)
        if extensions:
            summary["extensions"] = extensions
        if ddp.is_main:
            write_json(run_dir / "summary.json", summary)
            (run_dir / "DONE").write_text("")
        sink.log_summary(summary)
    ddp.barrier()
    return summary
