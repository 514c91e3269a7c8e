"""``cremad``: CREMA-D (6 emotions, speech + face video; docs/datasets/cremad.md), served from a prepared cache.

Raw layout (GitHub: CheyneyComputerScience/CREMA-D, with its Git LFS media pulled)::

    AudioWAV/<id>.wav      16 kHz mono speech
    VideoFlash/<id>.flv    480x360, 30 fps (frames are extracted at 1 fps by ``prepare``), or instead
    Image-01-FPS/<id>/     already extracted frames, ``00000.jpg``... (OGM-GE) or ``frame_000NN.jpg`` (MMPareto)

Split files (docs/datasets/README.md#pinned-split-files): OGM-GE's ``train.csv``/``test.csv`` (6,698 / 744, CRLF) and
``stat.csv`` (BOM + CRLF), plus Diagnosing & Re-learning's ``my_train.csv``/``val.csv`` (5,954 / 744, LF), an exact
partition of ``train.csv`` that is the clean protocol's train/validation split (docs/methods/README.md#protocols, clean
protocol). ``data.train_split=full`` trains on all 6,698 (the papers' protocol A) and then has no validation split,
since ``val.csv`` is part of train. Without ``my_train.csv``/``val.csv`` (a local ``--splits`` folder lacking them) a
stratified hold-out is used and recorded.

Label map ``ogm`` (default): NEU 0, HAP 1, SAD 2, FEA 3, DIS 4, ANG 5, hard-coded in OGM-GE/PMR/AGM/AMSS/AUG and
equal to ``stat.csv`` order; ``sorted`` (MMPareto, Diagnosing) and ``stat`` (whatever ``stat.csv`` lists, e.g.
AV-Digits' 10-class codes) are selectable with ``--label-order``. The split is per clip, not per speaker: all 91
actors are in train and test (the ``speaker`` column of ``index.csv`` holds the actor id).

The same class serves AV-Digits (docs/datasets/av_digits.md), which is generated in exactly this layout: ``augbench
prepare cremad --raw <AV-Digits> --splits <AV-Digits>/annotations`` works unchanged, and a subclass with another
``NAME``, ``SPLITS_IN_RAW = "annotations"``, a smaller ``FRAME_SIZE`` and its own ``HPARAMS`` reuses everything else.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Mapping, Sequence

from core.hparams import HParams
from datasets.audio_visual import AVCacheDataset, Layout, av_hparams
from datasets.prepared import Recipe
from datasets.registry import register_dataset
from datasets.splits import ParsedList, parse_class_list, parse_label_csv
from datasets.tables import PrepareError, PrepareOptions, Sample, SplitTables

RECIPES = {
    "ogm": Recipe("OGM-GE/AGM/InfoReg/AMSS CREMA-D audio: 22.05 kHz, 3 s, STFT 512/353, log -> 257x188",
                  {"audio": "ogm_stft3s"}),
    "aug": Recipe("AUG/LFM CREMA-D audio (GitHub: njustkmg/NeurIPS25-AUG, dataset/CREMA.py): 22.05 kHz, 20 s, STFT "
                  "512/353, log -> 257x1250", {"audio": "aug_stft20s"}),
    # PMR trains on 3 frames (bash.sh --num_frame 3) and its extraction tops up the clips of fewer (about 1 in 7 CREMA-D
    # clips has 2 frames at 1 fps), with random frames; frames_1fps_min3 takes evenly spaced ones instead.
    "pmr": Recipe("PMR CREMA-D audio: 16 kHz, 10 s, scipy spectrogram, log, z-score -> 257x1004; frames at 1 fps, "
                  "topped up to 3 per clip", {"audio": "pmr_spec10s", "extraction": "frames_1fps_min3"}),
    # min_frames 2: BalanceBenchmark's cremad_dataset.py keeps a clip only with len(os.listdir(frames)) >= fps (2),
    # and the 2-frame training draws of MMPareto's and Diagnosing's av_dataset.py (random.randint(i*seg + 1, i*seg +
    # seg), seg = 0) fail on a 1-frame folder, so none of these loaders trains on a 1-frame clip.
    "fbank": Recipe("MMPareto/Diagnosing/BalanceBenchmark: Kaldi fbank 1024x128 (needs the [audio] extra); clips "
                    "with at least 2 frames", {"audio": "kaldi_fbank1024", "min_frames": 2}),
}


def check_partition(train: ParsedList, samples: Sequence[Sample], my_train: ParsedList, val: ParsedList) -> None:
    """``my_train.csv`` and ``val.csv`` list every id of ``train.csv`` once, with its label there (``samples``: the
    train rows kept). A repeated row or another label is an error, not collapsed or overridden: either means the
    files are not the published partition, whose validation scores would then not be comparable."""
    train_ids, fit_ids, val_ids = set(train.ids), set(my_train.ids), set(val.ids)
    problems = {"id(s) in both my_train.csv and val.csv": sorted(fit_ids & val_ids),
                "id(s) in my_train.csv/val.csv but not train.csv": sorted((fit_ids | val_ids) - train_ids),
                "id(s) in train.csv but in neither my_train.csv nor val.csv": sorted(train_ids - fit_ids - val_ids)}
    kept = {s.id: s for s in samples}
    for part in (my_train, val):
        first: dict[str, int] = {}
        for row in part.rows:
            if row.id in first:
                problems.setdefault(f"row(s) repeating an id in {part.path.name}", []).append(
                    f"{part.where(row)} {row.id} (first on line {first[row.id]})")
            first.setdefault(row.id, row.line)
            sample = kept.get(row.id)
            if sample is not None and row.label != sample.label_name:
                problems.setdefault("row(s) whose label differs from train.csv's", []).append(
                    f"{part.where(row)} {row.id} {row.label} but {sample.where} {sample.label_name}")
    problems = {k: v for k, v in problems.items() if v}
    if problems:
        detail = "; ".join(f"{len(v)} {k} (e.g. {v[:3]})" for k, v in problems.items())
        raise PrepareError(f"my_train.csv and val.csv must partition train.csv exactly: {detail}")


@register_dataset
class CremaD(AVCacheDataset):
    NAME = "cremad"
    DESCRIPTION = "CREMA-D: 6 emotions, speech spectrogram + face frames, from `augbench prepare cremad`"
    CLASSES = ("NEU", "HAP", "SAD", "FEA", "DIS", "ANG")
    RECIPES = RECIPES
    DEFAULT_RECIPE = "aug"
    SPLIT_FILES = ("train.csv", "test.csv", "stat.csv")
    OPTIONAL_SPLIT_FILES = ("my_train.csv", "val.csv")
    LAYOUT = Layout("AudioWAV", (".wav",), "VideoFlash", (".flv",), "Image-01-FPS")
    FRAME_SIZE = (256, 341)
    LABEL_ORDERS = ("ogm", "stat", "sorted")
    HPARAMS = av_hparams(
        recipes=tuple(RECIPES), recipe="aug",
        recipe_doc="Audio front-end preset (docs/methods/README.md#front-ends): 'aug' for tables reproducing AUG (20 s "
                   "-> 257x1250), "
                   "'ogm' (3 s -> 257x188), 'pmr', 'fbank'. Must have been built by `augbench prepare`.",
        frames=1, frames_doc="T frames per clip: 1 in OGM-GE (args.fps default) and AUG (use_pre_frame = 1); "
                             "MMPareto uses 2, PMR 3.")

    @classmethod
    def label_map(cls, stat: list[str], order: str, where: str) -> tuple[str, ...]:
        """The class list for ``order`` given ``stat.csv``'s classes."""
        if order == "ogm":
            if set(stat) != set(cls.CLASSES):
                raise PrepareError(f"{where} lists {stat}; the 'ogm' label map needs exactly {list(cls.CLASSES)}. "
                                   f"Use --label-order stat for another class set (e.g. AV-Digits with 10 classes)")
            return cls.CLASSES
        return tuple(stat) if order == "stat" else tuple(sorted(stat))

    @classmethod
    def read_splits(cls, files: Mapping[str, Path], raw: Path, opts: PrepareOptions, settings: HParams
                    ) -> SplitTables:
        stat = parse_class_list(files["stat.csv"])
        classes = cls.label_map(stat, opts.label_order, files["stat.csv"].name)
        tables = SplitTables(classes, {})
        skipped: dict[str, dict[str, int]] = {}
        parsed = {}
        for split, name in (("train", "train.csv"), ("test", "test.csv")):
            parsed[split] = parse_label_csv(files[name])
            tables.add(parsed[split], split, label_name=lambda r: r.label, duplicates=opts.duplicates,
                       speaker=lambda r: r.id.split("_")[0])
            skipped[name] = dict(Counter(reason for _, _, reason in parsed[split].skipped))
        have = [n for n in cls.OPTIONAL_SPLIT_FILES if n in files]
        if len(have) == 1:
            raise PrepareError(f"found {have[0]} without its partner; the validation partition needs both "
                               f"{' and '.join(cls.OPTIONAL_SPLIT_FILES)}")
        if have:
            my_train, val = parse_label_csv(files["my_train.csv"]), parse_label_csv(files["val.csv"])
            check_partition(parsed["train"], tables.splits["train"], my_train, val)
            tables.val_ids = val.ids
            # split_files (pinned or custom) says whether these are the published files
            tables.val_source = ("my_train.csv / val.csv partition of train.csv (published by GitHub: GeWu-Lab/"
                                 "Diagnosing_Relearning_ECCV2024, code/dataset/cremad/; the manifest's split_files "
                                 "says whether these are those files)")
        label_source = {"ogm": "hard-coded OGM-GE map (== stat.csv order)", "stat": "stat.csv order",
                        "sorted": "sorted(stat.csv) (MMPareto, Diagnosing)"}[opts.label_order]
        actors = {split: {s.speaker for s in samples} for split, samples in tables.splits.items()}
        tables.info = {"label_map_source": label_source, "stat_csv": stat, "skipped_lines": skipped,
                       "actors": {"train": len(actors["train"]), "test": len(actors["test"]),
                                  "in_both": len(actors["train"] & actors["test"])},
                       "split_kind": "random per clip (not speaker-independent), as published"}
        return tables
