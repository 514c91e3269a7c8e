"""``ave``: AVE (28 event classes, audio + video; docs/datasets/ave.md), served from a prepared cache.

Raw layout (``AVE_Dataset``, GitHub: GeWu-Lab/OGM-GE_CVPR2022, issue #9)::

    AVE/<videoid>.mp4      10 s clips; the audio track is decoded from the same file (``--audio-dir`` points to
                           extracted WAVs instead), frames are extracted at 1 fps, or taken from
    Image-01-FPS/<videoid>/

Split files (docs/datasets/README.md#pinned-split-files): PMR's ``trainSet.txt``/``valSet.txt``/``testSet.txt`` (3,339 /
402 / 402 rows ``Category&VideoID&Quality&Start&End``, LF; class names contain commas). The published validation list is
the validation split. The whole clip is used; Start/End (the event segment) are kept in the split files only, as in
the PMR and AMSS loaders.

Label map: first appearance in ``testSet.txt`` (PMR and AMSS loaders), declared in ``CLASSES`` and checked against
the file. Duplicates: 27 ids repeat in ``trainSet.txt`` and 1 in ``valSet.txt``, always with different labels;
``--duplicates first`` (default; PMR and AMSS dedup by path) keeps the first, ``last`` the last (OGM-GE
``AVDataset``), ``drop`` removes both. Ids shared between splits (8 train/test, 10 train/val) are kept in each split,
as published, and counted in the manifest.
"""

from __future__ import annotations

from itertools import combinations
from pathlib import Path
from typing import Mapping

from core.hparams import HParams
from datasets.audio_visual import AVCacheDataset, Layout, av_hparams
from datasets.prepared import Recipe
from datasets.registry import register_dataset
from datasets.splits import duplicate_ids, first_appearance, parse_ave_list
from datasets.tables import PrepareError, PrepareOptions, SplitTables

RECIPES = {
    "pmr": Recipe("PMR/AMSS AVE audio (Audio-1004): 16 kHz, 10 s, scipy spectrogram, log, z-score -> 257x1004",
                  {"audio": "pmr_spec10s"}),
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
    LAYOUT = Layout(None, (), "AVE", (".mp4",), "Image-01-FPS")
    LABEL_ORDERS = ("test_first_appearance",)
    HPARAMS = av_hparams(
        recipes=tuple(RECIPES), recipe="pmr",
        recipe_doc="Audio front-end preset: 'pmr' (PMR/AMSS Audio-1004, 257x1004), 'ogm', 'fbank'.",
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
            "segment": "whole clip; Start/End not applied (as the PMR and AMSS loaders)",
        }
        return tables
