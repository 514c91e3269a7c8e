"""``kinetics_sounds``: Kinetics-Sounds (31 classes, audio + video; docs/datasets/kinetics_sounds.md), served from a
prepared cache.

Raw layout (there is no official KS archive: Kinetics-400 clips from the cvdfoundation tarballs, audio extracted to
WAV as the published pipelines do; folder names are settable with ``--audio-dir/--video-dir/--frames-dir``)::

    audio/<id>.wav         any rate (resampled by the audio pipeline)
    video/<id>.mp4         frames extracted at 1 fps by ``prepare``, or instead
    Image-01-FPS/<id>/     already extracted frames (``frame_00001.jpg``..., any numeric naming)

AMSS keeps the splits apart (``train_img/Image-01-FPS/<id>/``, ``test_img/...``): ``{split}`` in a folder name stands
for a row's split (docs/datasets/kinetics_sounds.md).

Split files (docs/datasets/README.md#pinned-split-files): OGM-GE's ``my_train.txt``/``my_test.txt`` (14,799 / 2,597 rows
``<id>,10,<label>``, CRLF) and BML's ``KS.json``, whose ``labels`` list is the label map: integer label i is
``labels[i]`` (alphabetical); each row's label is checked against ``KS.json["database"]`` where the id is listed.
``KS.json`` subsets are never used to split (its OGM-GE test ids are marked ``training``). Validation: a stratified
hold-out of train (``--val-fraction``/``--val-seed``, recorded; docs/methods/README.md#protocols, clean protocol prefers
BML's 1,320-clip list, which is not among the pinned files).
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

from core.hparams import HParams
from datasets.audio_visual import AVCacheDataset, Layout, av_hparams
from datasets.prepared import Recipe
from datasets.registry import register_dataset
from datasets.splits import SplitRow, parse_ks_json, parse_ks_list
from datasets.tables import PrepareError, PrepareOptions, RowError, SplitTables

RECIPES = {
    # min_frames 4: the loaders keep a clip only with len(os.listdir(frames)) > 3 (GitHub njustkmg/TPAMI-AMSS
    # AMSS/MyDataset.py, KS branch; GeWu-Lab/BalanceBenchmark balancemm/datasets/KS_dataset.py).
    "aug": Recipe("AUG/AMSS KS audio (docs/methods/README.md#front-ends): 35.4 kHz, 10 s, STFT 512/353, log -> "
                  "257x1003; clips with at least 4 frames",
                  {"audio": "amss_stft10s_35k", "min_frames": 4}),
    "fbank": Recipe("OGM-GE KS script / BalanceBenchmark / InfoReg: Kaldi fbank 1024x128 (needs the [audio] extra); "
                    "clips with at least 4 frames", {"audio": "kaldi_fbank1024", "min_frames": 4}),
    # min_frames stays 1: BML's loader (GitHub: GeWu-Lab/BML_TPAMI2024, code/dataset/KS.py) reads clip[0],
    # clip[(n - 1) // 2] and clip[n - 1], which every clip of at least 1 frame has.
    "bml": Recipe("BML (GeWu-Lab/AV_preprocess_tool): 44.1 kHz, last partial second repeated to 10 s, |STFT 512/440| "
                  "without log -> 257x1003; the middle frame of each second",
                  {"audio": "bml_stft10s_44k", "extraction": "frames_hdf5_mid"}),
}


@register_dataset
class KineticsSounds(AVCacheDataset):
    NAME = "kinetics_sounds"
    DESCRIPTION = "Kinetics-Sounds: 31 classes, audio spectrogram + video frames, from `augbench prepare`"
    CLASSES = (
        "blowing_nose", "blowing_out_candles", "bowling", "chopping_wood", "dribbling_basketball", "laughing",
        "mowing_lawn", "playing_accordion", "playing_bagpipes", "playing_bass_guitar", "playing_clarinet",
        "playing_drums", "playing_guitar", "playing_harmonica", "playing_keyboard", "playing_organ", "playing_piano",
        "playing_saxophone", "playing_trombone", "playing_trumpet", "playing_violin", "playing_xylophone",
        "ripping_paper", "shoveling_snow", "shuffling_cards", "singing", "stomping_grapes", "tap_dancing",
        "tapping_guitar", "tapping_pen", "tickling",
    )
    RECIPES = RECIPES
    DEFAULT_RECIPE = "aug"
    SPLIT_FILES = ("my_train.txt", "my_test.txt", "KS.json")
    LAYOUT = Layout("audio", (".wav",), "video", (".mp4",), "Image-01-FPS")
    LABEL_ORDERS = ("ks_json",)
    HPARAMS = av_hparams(
        recipes=tuple(RECIPES), recipe="aug",
        recipe_doc="Audio front-end preset (docs/methods/README.md#front-ends): 'aug' (35.4 kHz, 10 s -> 257x1003) for "
                   "AUG tables, "
                   "'fbank' (1024x128) for the OGM-GE/BalanceBenchmark family, 'bml' (44.1 kHz |STFT| -> 257x1003, "
                   "middle frame of each second) for BML.",
        frames=3, frames_doc="T frames per clip: 3 in the KS loaders ('evenly pick 3 frames', GitHub: GeWu-Lab/"
                             "Valuate-and-Enhance-Multimodal-Cooperation, issue #1) and AMSS.")

    @classmethod
    def read_splits(cls, files: Mapping[str, Path], raw: Path, opts: PrepareOptions, settings: HParams
                    ) -> SplitTables:
        labels, database = parse_ks_json(files["KS.json"])
        if tuple(labels) != cls.CLASSES:
            raise PrepareError(f"KS.json 'labels' {labels} differ from the declared 31 classes {list(cls.CLASSES)}")

        def label_name(row: SplitRow) -> str:
            index = int(row.label)
            if index >= len(labels):
                raise RowError("unknown label", f"label {index} is outside 0..{len(labels) - 1}")
            name = labels[index]
            listed = database.get(row.id, {}).get("label")
            if listed is not None and listed != name:
                raise RowError("label mismatch", f"label {index} ({name}) but KS.json lists {listed!r}")
            return name

        tables = SplitTables(cls.CLASSES, {})
        for split, name in (("train", "my_train.txt"), ("test", "my_test.txt")):
            tables.add(parse_ks_list(files[name]), split, label_name=label_name, duplicates=opts.duplicates)
        tables.info = {"label_map_source": "KS.json['labels'] index (GitHub: GeWu-Lab/BML_TPAMI2024, "
                                           "code/dataset/KS.json)"}
        return tables
