"""``augbench prepare DATASET --raw DIR --out DIR``: build the memory-mapped cache a dataset is trained from.

Reads the raw media as distributed and the published split files (downloaded by pinned URL and SHA-256 verified,
or ``--splits DIR``), computes each sample's arrays once (e.g. audio features and 1 fps frames), and writes
``<out>/<dataset>/<recipe>-<hash8>/`` (docs/datasets/cache.md). Re-running resumes an interrupted build or does nothing
for a finished one; ``--force`` rebuilds. See ``datasets/prepare.py`` for the steps and ``augbench list -v`` for
recipes.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from benchmarks.commands import fraction, holdout_fraction, nonnegative_int, positive_int
from core.hparams import HParamError, command_line_value
from datasets.audio_visual import VISUAL_SOURCES
from datasets.cache import CacheError
from datasets.media.audio import PAD_MODES, MissingExtraError
from datasets.prepare import prepare
from datasets.prepared import PreparedDataset
from datasets.registry import get_dataset, list_datasets
from datasets.sources import RAW_URL, SplitFileError
from datasets.splits import DUPLICATE_POLICIES, SplitParseError
from datasets.tables import PrepareError, PrepareOptions

HELP = "build a dataset's cache from raw media and the published split files"


def _assignment(text: str) -> tuple[str, object]:
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        return key.strip(), command_line_value(value, repr(text))
    except HParamError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def configure(p: argparse.ArgumentParser) -> None:
    preparable = [n for n, c in list_datasets().items() if issubclass(c, PreparedDataset)]
    p.add_argument("dataset", choices=preparable, help="dataset to prepare")
    p.add_argument("--raw", type=Path, help="the dataset folder as distributed (default: $AUG_BENCH_DATA/<dataset>)")
    p.add_argument("--out", type=Path, help="cache root (default: $AUG_BENCH_CACHE, else ./cache)")
    p.add_argument("--recipe", default="", help="preset (data.recipe); default: the dataset's")
    p.add_argument("--splits", type=Path, help="read the split files from this folder instead of downloading them")
    p.add_argument("--splits-url", default=RAW_URL, help="base URL replacing raw.githubusercontent.com (a mirror)")
    p.add_argument("--strict-splits", action="store_true",
                   help="refuse local split files whose SHA-256 differs from the pinned published ones, or that "
                        "have no pinned version (such as VGGSound's list)")
    p.add_argument("--audio", dest="audio", action="append", default=[], type=_assignment, metavar="KEY=VALUE",
                   help="override an audio pipeline parameter, e.g. --audio seconds=5 (repeatable)")
    p.add_argument("--pad-mode", choices=PAD_MODES,
                   help="librosa STFT pad_mode (recorded; default: the audio pipeline's)")
    p.add_argument("--frame-size", type=positive_int, nargs=2, metavar=("H", "W"), help="stored frame size")
    p.add_argument("--fps", type=positive_int, default=1, help="frames kept per second of video (default 1)")
    p.add_argument("--visual", choices=VISUAL_SOURCES, default="auto",
                   help="frames from videos or from extracted frame folders (auto: folders when present)")
    for kind in ("audio", "video", "frames"):
        p.add_argument(f"--{kind}-dir", help=f"{kind} folder under the raw root (default: the dataset's layout); "
                                             "{split} in it stands for each row's split, for trees that keep the "
                                             "splits apart")
    p.add_argument("--min-frames", type=positive_int,
                   help="clips with fewer 1 fps frames are bad items (default: the recipe's)")
    p.add_argument("--label-order", default="", help="label map convention (CREMA-D: ogm | stat | sorted)")
    p.add_argument("--duplicates", choices=DUPLICATE_POLICIES, default="first", help="repeated ids within a split")
    p.add_argument("--val-fraction", type=holdout_fraction, default=0.1,
                   help="hold-out fraction when no validation list (0 = no validation split)")
    p.add_argument("--val-seed", type=int, default=0, help="seed of that hold-out")
    p.add_argument("--skip-bad", action="store_true",
                   help="drop bad items (missing/corrupt media, unknown labels, ...) and record them, not stop")
    p.add_argument("--max-drop-fraction", type=fraction, default=1.0, help="with --skip-bad: stop above this fraction")
    p.add_argument("--force", action="store_true", help="rebuild even if a finished cache exists")
    p.add_argument("--workers", type=nonnegative_int, default=0, help="extraction processes (0 = this process)")
    p.add_argument("--shard-size", type=positive_int, help="samples per resumable shard (default: the dataset's)")
    p.add_argument("--option", action="append", default=[], type=_assignment, metavar="KEY=VALUE",
                   help="a prepare-time setting of the image-text, feature and clip datasets (their SETTINGS, see "
                        "each dataset module), e.g. --option tokenizer=bert-base-uncased (repeatable)")


def run(args: argparse.Namespace) -> int:
    raw = args.raw
    if raw is None:
        if not os.environ.get("AUG_BENCH_DATA"):
            raise ValueError("give --raw DIR (or set AUG_BENCH_DATA to the folder holding <dataset>/)")
        raw = Path(os.environ["AUG_BENCH_DATA"]) / args.dataset
    audio = dict(args.audio)
    if args.pad_mode:
        audio["pad_mode"] = args.pad_mode
    layout = {f"{k}_dir": getattr(args, f"{k}_dir") for k in ("audio", "video", "frames") if getattr(args, f"{k}_dir")}
    opts = PrepareOptions(
        recipe=args.recipe, audio=audio, layout=layout, frame_size=tuple(args.frame_size) if args.frame_size else None,
        frames_per_second=args.fps, visual=args.visual, min_frames=args.min_frames, label_order=args.label_order,
        duplicates=args.duplicates, val_fraction=args.val_fraction, val_seed=args.val_seed, skip_bad=args.skip_bad,
        max_drop_fraction=args.max_drop_fraction, force=args.force, workers=args.workers,
        shard_size=args.shard_size, splits_dir=args.splits, splits_url=args.splits_url,
        strict_splits=args.strict_splits)
    try:
        dataset = get_dataset(args.dataset)
        path = prepare(dataset, raw, args.out, opts, dict(args.option))
    except (PrepareError, SplitFileError, SplitParseError, CacheError, MissingExtraError) as err:
        print(f"augbench prepare: error: {err}", file=sys.stderr)
        return 2
    print(path)
    return 0
