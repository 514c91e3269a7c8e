"""``vggsound``: VGGSound (audio + video; docs/datasets/vggsound.md), served from a prepared cache.

Raw layout (the OGM-GE pipeline: ``data/VGGSound/mp4_to_wav.py`` and ``video_preprocessing.py``)::

    audio/<ytid>_<start>.wav            16 kHz WAV extracted from the clip
    video/<ytid>_<start>.mp4            frames extracted at 1 fps by ``prepare``, or instead
    Image-01-FPS/<ytid>_<start>.mp4/    extracted frames (OGM-GE keeps ``.mp4`` in the folder name; a folder
                                        without it is accepted too)

OGM-GE's own tree keeps train and test media apart (``train-audios/train-set/``, ``test-audios/test-set/``, ...):
``{split}`` in ``--audio-dir/--video-dir/--frames-dir`` stands for a row's split (docs/datasets/vggsound.md).

Clip names are ``f"{ytid}_{start}"`` with the start as written in the CSV; a zero-padded ``_000030`` file name is
also found, and an unpadded ``_30`` one for a CSV that pads the start. Split file: ``vggsound.csv``
(``ytid,start_seconds,label,split``, no header) from the VGGSound page. It is not pinned here (not in any pinned
repository, docs/datasets/vggsound.md), so ``prepare`` needs ``--splits DIR`` holding it; its SHA-256 is recorded in
the manifest.

Label map: the sorted distinct labels of the whole CSV. This replaces OGM-GE's "first appearance among rows whose
media exist", which changes with every partial download (docs/datasets/pitfalls.md#label-order (d)); the map is written
to the manifest, and ``CLASSES`` is empty because it is data from that file. Validation: a stratified hold-out of train,
recorded. Audio: ``vgg_stft10s`` caches the 10 s STFT (129x1251) and serves a 5 s (626-frame) crop per batch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

from core.hparams import HParams
from datasets.audio_visual import AVCacheDataset, Layout, av_hparams
from datasets.prepared import Recipe
from datasets.registry import register_dataset
from datasets.splits import is_whole_number, parse_vggsound_csv
from datasets.tables import PrepareError, PrepareOptions, SplitTables

RECIPES = {
    # min_frames 4: OGM-GE dataset/VGGSoundDataset.py keeps a clip only with len(os.listdir(frames)) > 3.
    "ogm": Recipe("OGM-GE VGGSound audio: 16 kHz, 10 s, STFT 256/128, log; 5 s crop (129x626) served per batch; "
                  "clips with at least 4 frames", {"audio": "vgg_stft10s", "min_frames": 4}),
}


@register_dataset
class VGGSound(AVCacheDataset):
    NAME = "vggsound"
    DESCRIPTION = "VGGSound: audio spectrogram + video frames, from `augbench prepare` (needs vggsound.csv)"
    RECIPES = RECIPES
    DEFAULT_RECIPE = "ogm"
    SPLIT_FILES = ("vggsound.csv",)
    LAYOUT = Layout("audio", (".wav",), "video", (".mp4",), "Image-01-FPS", frames_suffixes=(".mp4", ""))
    LABEL_ORDERS = ("sorted",)
    HPARAMS = av_hparams(
        recipes=tuple(RECIPES), recipe="ogm",
        recipe_doc="Audio front-end preset: 'ogm' (OGM-GE VGGSound: 5 s crops of a 10 s STFT, 129x626).",
        frames=3, frames_doc="T frames per clip: 3 in OGM-GE's VGGSound loader and BalanceBenchmark.")

    @classmethod
    def media_names(cls, sample_id: str) -> tuple[str, ...]:
        ytid, _, start = sample_id.rpartition("_")
        if not is_whole_number(start):
            return (sample_id,)
        # The start as written, then zero-padded (other codebases' names), then unpadded (the published file's names,
        # for a copy of vggsound.csv that pads it).
        return tuple(dict.fromkeys((sample_id, f"{ytid}_{int(start):06d}", f"{ytid}_{int(start)}")))

    @classmethod
    def read_splits(cls, files: Mapping[str, Path], raw: Path, opts: PrepareOptions, settings: HParams
                    ) -> SplitTables:
        parsed = parse_vggsound_csv(files["vggsound.csv"])
        missing = [s for s in ("train", "test") if s not in parsed]
        if missing:
            raise PrepareError(f"{files['vggsound.csv']}: no rows for split(s) {missing}")
        classes = tuple(sorted({r.label for p in parsed.values() for r in p.rows}))
        tables = SplitTables(classes, {})
        for split in ("train", "test"):
            tables.add(parsed[split], split, label_name=lambda r: r.label, duplicates=opts.duplicates)
        tables.info = {"label_map_source": "sorted distinct labels of vggsound.csv (all rows)",
                       "num_classes": len(classes)}
        return tables
