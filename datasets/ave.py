"""``ave``: AVE (28 event classes, audio + video; docs/datasets/ave.md), served from a prepared cache.

Raw layout (``AVE_Dataset``, GitHub: GeWu-Lab/OGM-GE_CVPR2022, issue #9)::

    AVE/<videoid>.mp4      10 s clips; the audio track is decoded from the same file (``--audio-dir`` points to
                           extracted WAVs instead), frames are extracted at 1 fps, or taken from
    Image-01-FPS/<videoid>/

Split files (docs/datasets/README.md#pinned-split-files): PMR's ``trainSet.txt``/``valSet.txt``/``testSet.txt`` (3,339 /
402 / 402 rows ``Category&VideoID&Quality&Start&End``, LF; class names contain commas). The published validation list is
the validation split. Recipe ``pmr`` (the default) stores each row's event segment, as the PMR and AMSS loaders read
it (``Audio-1004-SE``, ``Image-01-FPS-SE``, made by PMR ``data/AVE/video_preprocessing.py``): the audio of seconds
[Start, End) tiled to 10 s, the 1-fps frames of seconds Start..End (1,108 train, 144 val and 141 test rows have a
segment shorter than the clip), topped up to 10 frames of seconds [Start, End) (``frames_1fps_min10``: evenly spaced,
where PMR's are random and unseeded). The ``ogm`` and ``fbank`` recipes store the whole clip.

Label map: first appearance in ``testSet.txt`` (PMR and AMSS loaders), declared in ``CLASSES`` and checked against
the file. Duplicates: 27 ids repeat in ``trainSet.txt`` and 1 in ``valSet.txt``, always with different labels;
``--duplicates first`` (default; PMR and AMSS dedup by path) keeps the first, ``last`` the last (OGM-GE
``AVDataset``), ``drop`` removes both. Ids shared between splits (8 train/test, 10 train/val) are kept in each split,
as published, and counted in the manifest.
"""

from __future__ import annotations

from itertools import combinations
from pathlib import Path
from typing import Any, Mapping

from core.hparams import HParams
from datasets.audio_visual import AVCacheDataset, Layout, av_hparams
from datasets.prepared import Recipe
from datasets.registry import register_dataset
from datasets.splits import ave_segment, duplicate_ids, first_appearance, parse_ave_list
from datasets.tables import PrepareError, PrepareOptions, Sample, SplitTables

RECIPES = {
    # PMR extracts Image-01-FPS-SE with video2frame_update_SE(min_save_frame=10) (data/AVE/video_preprocessing.py):
    # segments of fewer than 10 frames at 1 fps (the 1 s events keep 2) get random frames of the segment;
    # frames_1fps_min10 takes evenly spaced ones instead.
    "pmr": Recipe("PMR/AMSS AVE (Audio-1004-SE, Image-01-FPS-SE): each row's event segment, its frames topped up to "
                  "10; 16 kHz, tiled to 10 s, scipy spectrogram, log, z-score -> 257x1004",
                  {"audio": "pmr_spec10s", "segment": "event", "extraction": "frames_1fps_min10"}),
    "ogm": Recipe("OGM-GE-style STFT: 22.05 kHz, 3 s, STFT 512/353, log -> 257x188", {"audio": "ogm_stft3s"}),
    "fbank": Recipe("Kaldi fbank 1024x128 (needs the [audio] extra)", {"audio": "kaldi_fbank1024"}),
}

FILES = {"train": "trainSet.txt", "val": "valSet.txt", "test": "testSet.txt"}


@register_dataset
class AVE(AVCacheDataset):
    NAME = "ave"
    DESCRIPTION = "AVE: 28 audio-visual event classes, audio spectrogram + video frames, from `augbench prepare`"
    CLASSES = (
        "Church bell", "Male speech, man speaking", "Bark", "Fixed-wing aircraft, airplane", "Race car, auto racing",
        "Female speech, woman speaking", "Helicopter", "Violin, fiddle", "Flute", "Ukulele", "Frying (food)", "Truck",
        "Shofar", "Motorcycle", "Acoustic guitar", "Train horn", "Clock", "Banjo", "Goat", "Baby cry, infant cry",
        "Bus", "Chainsaw", "Cat", "Horse", "Toilet flush", "Rodents, rats, mice", "Accordion", "Mandolin",
    )
    RECIPES = RECIPES
    DEFAULT_RECIPE = "pmr"
    SPLIT_FILES = tuple(FILES.values())
    LAYOUT = Layout(None, (".wav",), "AVE", (".mp4",), "Image-01-FPS")  # WAVs only with --audio-dir
    LABEL_ORDERS = ("test_first_appearance",)
    HPARAMS = av_hparams(
        recipes=tuple(RECIPES), recipe="pmr",
        recipe_doc="Prepared preset: 'pmr' (PMR/AMSS Audio-1004-SE / Image-01-FPS-SE: each row's event segment, "
                   "257x1004), 'ogm', 'fbank' (whole clips).",
        frames=3, frames_doc="T frames per clip: 3 in PMR (num_frame); AMSS's AVE loader uses 1.")

    @classmethod
    def read_splits(cls, files: Mapping[str, Path], raw: Path, opts: PrepareOptions, settings: HParams
                    ) -> SplitTables:
        parsed = {split: parse_ave_list(files[name]) for split, name in FILES.items()}
        order = first_appearance(r.label for r in parsed["test"].rows)
        if tuple(order) != cls.CLASSES:
            raise PrepareError(f"first appearance of classes in {FILES['test']} is {order}, not the declared AVE "
                               f"label map {list(cls.CLASSES)}")
        tables = SplitTables(cls.CLASSES, {}, val_source="published valSet.txt (GitHub: fanyunfeng-bit/"
                                                         "Modal-Imbalance-PMR, data/AVE/)")
        for split, rows in parsed.items():
            tables.add(rows, split, label_name=lambda r: r.label, duplicates=opts.duplicates)
        ids = {split: set(rows.ids) for split, rows in parsed.items()}
        tables.info = {
            "label_map_source": "first appearance in testSet.txt (PMR, AMSS loaders)",
            "rows": {FILES[s]: {"lines": len(p.rows), "unique_ids": len(ids[s]),
                                "repeated_ids": len(duplicate_ids(p.rows))} for s, p in parsed.items()},
            "ids_in_two_splits": {f"{a}&{b}": len(ids[a] & ids[b]) for a, b in combinations(FILES, 2)},
            "segments": {FILES[s]: {"shorter_than_clip": sum(ave_segment(r) != (0, 10) for r in p.rows),
                                    "start_equals_end_read_as_one_second": sum(r.fields[3] == r.fields[4]
                                                                               for r in p.rows)}
                         for s, p in parsed.items()},
        }
        return tables

    @classmethod
    def locate(cls, raw: Path, sample: Sample, settings: HParams) -> tuple[dict[str, str], dict[str, Any]]:
        media, extra = super().locate(raw, sample, settings)
        if settings.segment == "event":
            extra = {**extra, "segment": ave_segment(sample.row)}
        return media, extra
