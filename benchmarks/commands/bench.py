"""``augbench bench [data|step|epoch|all]``: speed figures (JSON + Markdown) written under ``runs/bench/``, or with
``--publish`` to the committed ``results/bench/`` (as ``augbench demo``, a plain run never changes a tracked file).

- ``data``: samples/s of the cache loader vs the per-sample media loader on the same files, one CPU thread, for the
  training and the test view. The cache is ``--cache DIR`` (raw media from its manifest or ``--raw``), or the
  prepared cache of ``--dataset`` found through ``--set data.cache_dir=...``/``data.cache=...``; without either, an
  AV-Digits tree is generated, its frames extracted to JPEG folders and prepared as CREMA-D under ``--work``
  (once; later runs reuse it).
- ``step``: per-step time of every registered method vs ``joint`` on the same synthetic batches (``--shape``).
- ``epoch``: a training epoch through the loader vs the same updates on device-resident batches. ``all`` at
  ``--shape cremad`` (the GPU check) times it on the cache the data benchmark measured, through the real loader.
"""

from __future__ import annotations

import argparse
import hashlib
import platform
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from baselines.registry import get_method, list_methods
from benchmarks.bench import (
    SHAPES,
    bench_epoch,
    bench_steps,
    check_method_namespaces,
    markdown_data,
    markdown_epoch,
    markdown_steps,
    own_overrides,
)
from benchmarks.bench_data import ROUND_ORDERS, bench_tree, benchmark_data
from benchmarks.commands import positive_int
from benchmarks.config import TRAIN_HPARAMS, build_config, merge_overrides
from benchmarks.errors import UsageError
from benchmarks.records import atomic_write_text, environment, write_json
from benchmarks.runner import seed_everything, select_device
from core.hparams import parse_assignments, resolve
from datasets.cache import default_cache_root
from datasets.registry import get_dataset

HELP = "benchmark the data pipeline, per-step cost of every method vs joint, and epoch vs model-only time"
# The data benchmark's generated tree and batch size when not given: a figure measured otherwise is filed under a name
# that says so.
DATA_DEFAULTS = {"preset": "small", "batch_size": 32}


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("what", nargs="?", default="all", choices=("data", "step", "epoch", "all"))
    p.add_argument("--shape", default="small", choices=sorted(SHAPES),
                   help="synthetic input shapes: 'cremad' = AUG's CREMA-D inputs (use on a GPU), 'small' for CPU")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--methods", nargs="*", help="methods to time (default: all registered)")
    p.add_argument("--dataset", default="synthetic",
                   help="dataset for the epoch benchmark and, when not synthetic, the prepared cache for data")
    p.add_argument("--epoch-method", default="aug", help="method for the epoch benchmark")
    p.add_argument("--amp", action="store_true", help="bf16 autocast (train.amp=true; on a CPU too, usually slower)")
    p.add_argument("--channels-last", action="store_true", help="model.channels_last=true")
    p.add_argument("--compile", action="store_true", help="torch.compile the encoders (train.compile=true)")
    p.add_argument("--set", dest="assignments", action="append", default=[], metavar="NS.KEY=VALUE",
                   help="a run setting (train./model./data.), or a benchmarked method's knob, which only that method "
                        "takes (e.g. midas.warmup_epochs=0 times MIDAS past its warm-up against plain joint)")
    p.add_argument("--repeats", type=positive_int, default=5, help="timed steps per method of the step benchmark")
    p.add_argument("--epoch-repeats", type=positive_int, default=2,
                   help="timed epochs (and model-only passes) of the epoch benchmark; the best counts")
    p.add_argument("--out", type=Path, help="where the figures go (default: runs/bench; with --publish "
                                            "results/bench)")
    p.add_argument("--publish", action="store_true", help="write to the committed results/bench/ (record figures)")
    data = p.add_argument_group("data benchmark")
    data.add_argument("--cache", type=Path, help="a prepared cache folder to measure (also used by epoch)")
    data.add_argument("--raw", type=Path, help="the raw tree that cache was built from (default: its manifest's)")
    data.add_argument("--work", type=Path, help="where the generated AV-Digits tree and its cache live "
                                                "(default: $AUG_BENCH_CACHE/bench, else ./cache/bench)")
    data.add_argument("--preset", default=DATA_DEFAULTS["preset"], choices=("tiny", "small", "cremad"),
                      help="AV-Digits size preset of a generated tree")
    data.add_argument("--recipe", default="aug", help="audio recipe of a generated tree's cache (AUG's is 'aug')")
    data.add_argument("--batch-size", type=positive_int, default=DATA_DEFAULTS["batch_size"],
                      help="samples per batch of the data benchmark")
    data.add_argument("--batches", type=positive_int, default=5, help="timed batches per loader per round")
    data.add_argument("--rounds", type=positive_int, default=len(ROUND_ORDERS),
                      help=f"interleaved rounds of the data benchmark (the stream order cycles every "
                           f"{len(ROUND_ORDERS)} rounds: use a multiple of {len(ROUND_ORDERS)})")


def _machine(device: str) -> dict:
    env = environment(torch.device("cuda" if device == "cuda" or (device == "auto" and torch.cuda.is_available())
                                   else "cpu"))
    env["processor"] = platform.processor() or platform.machine()
    env["torch_threads"] = torch.get_num_threads()
    return env


def _execution(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    train: dict[str, Any] = {"device": args.device}
    if args.amp:
        train["amp"] = True
    if args.compile:
        train["compile"] = True
    return {"train": train, **({"model": {"channels_last": True}} if args.channels_last else {})}


def _settings_tag(args: argparse.Namespace) -> tuple[str, str]:
    """(file-name suffix, caption phrase) of the execution settings beyond the defaults (--amp, --channels-last,
    --compile, --set), so that figures of other settings go beside the defaults' instead of replacing them."""
    flags = [name for name, on in (("amp", args.amp), ("channels_last", args.channels_last),
                                   ("compile", args.compile)) if on]
    # the last --set of a key is the one in force; where the cache lies is not a setting of the figures
    last = {a.partition("=")[0].strip(): a for a in args.assignments}
    sets = sorted(a for key, a in last.items() if key not in ("data.cache", "data.cache_dir"))
    # --set values can hold any character: the name carries a short hash of them, the caption and JSON the values
    suffix = "".join(f"-{f}" for f in flags) + (f"-set-{_short_hash(sets)}" if sets else "")
    return suffix, (f"; {', '.join(flags + sets)}" if flags or sets else "")


def _short_hash(values: list[str], sep: str = "\n") -> str:
    """Six hex digits naming a list of settings in a file name (the caption and JSON carry the values)."""
    return hashlib.sha256(sep.join(values).encode()).hexdigest()[:6]


def _data_cache(args: argparse.Namespace, data_overrides: dict[str, Any]) -> Path:
    if args.cache is not None:
        return args.cache
    if args.dataset != "synthetic":
        cls = get_dataset(args.dataset)
        return cls.locate_cache(resolve("data", cls.HPARAMS, cls.NAME, data_overrides))
    work = args.work if args.work is not None else default_cache_root() / "bench"
    return bench_tree(work, preset=args.preset, recipe=args.recipe)


def code_of(env: Mapping[str, Any]) -> str:
    """The commit a figure was measured at, and whether the tree had uncommitted changes (then not that commit's
    code)."""
    return f"{env['git_commit']}" + (" with uncommitted changes" if env.get("git_dirty") else "")


def run_data(args: argparse.Namespace, env: dict, tag: str) -> tuple[list[dict[str, Any]], Path]:
    overrides = parse_assignments(args.assignments).get("data", {})
    if overrides.get("prefetch"):
        # One timed thread: a prefetching thread would keep working during the other loaders' timing windows and
        # charge them the cache loader's work.
        raise ValueError("augbench bench data times one thread; data.prefetch runs a background thread whose work "
                         "would be charged to the other loaders: leave it at 0 here")
    cache = _data_cache(args, overrides)
    serving = {k: v for k, v in overrides.items() if k not in ("cache", "cache_dir")}
    device = "cuda" if "cuda" in env["device"] else "cpu"
    rows = []
    for split, train in (("train", True), ("test", False)):
        print(f"data loaders, {split} view of {cache}:")
        row = benchmark_data(cache, raw_dir=args.raw, split=split, train=train, batch_size=args.batch_size,
                             batches=args.batches, rounds=args.rounds, data=serving, device=device)
        cpu = row["cpu_samples_per_s"]
        print(f"  CPU time: cache {cpu['cache']:.0f} samples/s, media {cpu['media']:.1f} samples/s "
              f"-> {row['cpu_speedup']:.1f}x; floor {cpu['floor']:.0f} samples/s "
              f"(floor / cache {row['cpu_floor_ratio']:.2f}); GPU path host share {cpu['host']:.0f} "
              f"samples/s ({row['cpu_host_speedup']:.0f}x media)")
        print(f"  wall time: cache / media {row['speedup']:.1f}x, floor / cache {row['floor_ratio']:.2f}, "
              f"host share / media {row['host_speedup']:.0f}x")
        rows.append(row)
    first = rows[0]
    name = f"{first['dataset']}-{first['recipe']}"
    # Figures with other serving settings, another generated tree or another batch size go beside the defaults'
    # instead of replacing them; the timing repetitions (--batches, --rounds) only make a figure more or less
    # precise, and the caption states them.
    generated = args.cache is None and args.dataset == "synthetic"
    settings = f"-preset-{args.preset}" if generated and args.preset != DATA_DEFAULTS["preset"] else ""
    settings += f"-batch-{args.batch_size}" if args.batch_size != DATA_DEFAULTS["batch_size"] else ""
    settings += "".join(f"-{key}-{str(value).lower()}" for key, value in sorted(serving.items()))
    settings_note = f", {', '.join(f'data.{k}={v}' for k, v in sorted(serving.items()))}" if serving else ""
    caption = (f"Data loaders on {cache.name} ({first['dataset']}, recipe {first['recipe']}, audio "
               f"{'x'.join(map(str, first['audio_shape']))}, frames stored {'x'.join(map(str, first['stored_frame']))}"
               f" from {first['visual_source']}, served {first['image_size']}, T={first['frames']}, batch "
               f"{args.batch_size}{settings_note}), one CPU thread, {args.rounds} interleaved rounds of "
               f"{args.batches} batches after a warm epoch (stream order cycling every {len(ROUND_ORDERS)} rounds), "
               f"cache loader on {device} ({env.get('gpu', env['processor'])}, {env['cpu_count']} CPUs, load average "
               f"{rows[-1]['load_average']} at the end, torch {env['torch']}, commit {code_of(env)})")
    write_json(args.out / f"data-{name}-{tag}{settings}.json", {"rows": rows, "env": env, "cache": str(cache)})
    atomic_write_text(args.out / f"data-{name}-{tag}{settings}.md", markdown_data(rows, caption))
    print(markdown_data(rows, caption))
    return rows, cache


def epoch_target(args: argparse.Namespace, data: tuple[list[dict[str, Any]], Path] | None) -> tuple[str, Path | None]:
    """The dataset and cache the epoch benchmark trains on. ``all`` at the CREMA-D shape times the epoch through the
    real loader on the cache the data benchmark just measured (a synthetic epoch would time the generic host path,
    which gathers float32 batches on the host and copies each through pinned memory, not the cache loader);
    otherwise ``--dataset`` and ``--cache``."""
    if args.what == "all" and args.shape == "cremad" and args.dataset == "synthetic" and data is not None:
        rows, cache = data
        return rows[0]["dataset"], cache
    return args.dataset, args.cache


def run(args: argparse.Namespace) -> int:
    shape = SHAPES[args.shape]
    assignments = parse_assignments(args.assignments)
    base = merge_overrides({ns: dict(v) for ns, v in shape.items()}, _execution(args), assignments)
    # Refused before minutes of measuring, not after: a misspelt method or knob namespace, or a device this machine
    # does not have.
    for name in [*(args.methods or []), args.epoch_method]:
        get_method(name)
    timed = list(args.methods or list_methods()) if args.what in ("step", "all") else []
    check_method_namespaces(assignments, timed + ([args.epoch_method] if args.what in ("epoch", "all") else []))
    if "device" in assignments.get("train", {}):
        # --device names the files and the machine record and places the data benchmark's loader; a --set would
        # move the steps alone.
        raise UsageError("augbench bench takes its device from --device, not --set train.device")
    select_device(args.device)
    # The environment records the deterministic-algorithm switch, which the timers' seeding sets: set it first.
    train = resolve("train", TRAIN_HPARAMS, None, base.get("train", {}))
    seed_everything(train.seed, train.deterministic)
    env = _machine(args.device)
    suffix, settings = _settings_tag(args)
    tag = f"{args.shape}-{'cuda' if 'cuda' in env['device'] else 'cpu'}"
    args.out = args.out or Path("results/bench" if args.publish else "runs/bench")
    args.out.mkdir(parents=True, exist_ok=True)
    data = run_data(args, env, "cuda" if "cuda" in env["device"] else "cpu") if args.what in ("data", "all") else None
    if args.what in ("step", "all"):
        print(f"per-step time, shape {args.shape}, device {env['device']}:")
        rows = bench_steps(base, args.methods, repeats=args.repeats)
        timing = (f"fastest of {rows[0]['rounds']} interleaved rounds, each the median of {rows[0]['repeats']} steps "
                  f"after {rows[0]['warmup']} warm-up, at epoch 0: a method with a warm-up phase is timed in it")
        caption = (f"Per-step time on shape '{args.shape}' ({env['device']}, {env.get('gpu', env['processor'])}, "
                   f"torch {env['torch']}, {env['torch_threads']} threads, {timing}, load average "
                   f"{rows[-1]['load_average']} at the end, commit {code_of(env)}{settings})")
        # A subset's table goes beside the every-method one instead of replacing it; its rows name the methods.
        subset = f"-methods-{_short_hash(sorted(args.methods), sep=' ')}" if args.methods else ""
        write_json(args.out / f"step-{tag}{suffix}{subset}.json", {"rows": rows, "env": env, "settings": base})
        atomic_write_text(args.out / f"step-{tag}{suffix}{subset}.md", markdown_steps(rows, caption))
        print(markdown_steps(rows, caption))
    if args.what in ("epoch", "all"):
        dataset, cache_dir = epoch_target(args, data)
        if dataset == "synthetic":
            overrides = base
        else:
            cache = {"data": {"cache": str(cache_dir)}} if cache_dir is not None else {}
            # the cache given or just measured wins over --set data.cache, as it does for the data benchmark
            overrides = merge_overrides(_execution(args), assignments, cache)
        cfg = build_config(args.epoch_method, dataset, own_overrides(overrides, args.epoch_method))
        print(f"epoch time, {args.epoch_method} on {dataset}:")
        row = bench_epoch(cfg, repeats=args.epoch_repeats)
        caption = (f"Epoch vs model-only time ({env['device']}, {env.get('gpu', env['processor'])}, "
                   f"torch {env['torch']}, {env['torch_threads']} threads, best of {row['repeats']} interleaved "
                   f"epochs and model-only passes, load average {row['load_average']} at the end, commit "
                   f"{code_of(env)}{settings})")
        name = f"{dataset}-{row['recipe']}" if row["recipe"] else dataset
        epoch_tag = (tag if dataset == "synthetic" else tag.split("-", 1)[1]) + suffix
        write_json(args.out / f"epoch-{args.epoch_method}-{name}-{epoch_tag}.json",
                   {"rows": [row], "env": env, "settings": cfg.as_dict()})
        atomic_write_text(args.out / f"epoch-{args.epoch_method}-{name}-{epoch_tag}.md",
                          markdown_epoch([row], caption))
        print(markdown_epoch([row], caption))
    return 0
