"""AV-Digits: the offline audio-visual demo dataset, generated in CREMA-D's exact raw layout
(docs/datasets/av_digits.md).

Each clip shows one real handwritten digit (scikit-learn's bundled ``load_digits``) and speaks the digit's word with
eSpeak NG (``datasets.espeak``). The files mirror CREMA-D byte conventions, so the unchanged CREMA-D prepare/loader
path runs on them: ``AudioWAV/<id>.wav`` (16 kHz mono PCM16), ``VideoFlash/<id>.flv`` (FLV1 160x120, 30 fps,
yuv420p, MP3 track), ``annotations/{train,test}.csv`` (OGM-GE bytes: no header, CRLF), ``annotations/stat.csv``
(BOM + CRLF), the clean-protocol partition ``annotations/{my_train,val}.csv`` (Diagnosing-Relearning bytes: LF) and
``processedResults/summaryTable.csv`` (CREMA-D's header, votes empty). ``speakers.csv``, ``meta.csv`` and
``manifest.json`` (parameters, counts, SHA-256 of every file) describe what was generated.

Content (docs/datasets/av_digits.md#content). A speaker is (voice, variant, base rate, base pitch); the (voice, variant)
pairs are partitioned between train and test, and ``val`` takes whole train speakers (plus any validation-only speakers,
``val_only_speakers``), so every split boundary is speaker-disjoint. Each clip jitters rate and pitch, applies a gain,
places the trimmed utterance at a random onset inside a clip of uniform length, optionally adds white noise at
``audio_snr_db``, and resamples 22,050 -> 16,000 Hz with ``scipy.signal.resample_poly(320, 441)``. The image comes from
the split's own stratified image pool (train and test images are disjoint), gets Gaussian pixel noise once per clip, is
upscaled x12 and placed on a mid-grey frame; it moves by ``motion_px`` each second, and a 6x6 top-left block of grey
level 40*(k+1) marks second k. The dominance presets (docs/datasets/av_digits.md#dominance) set ``image_noise_sigma``
and ``audio_snr_db``.

Determinism. Same parameters, seed and library versions give byte-identical files. All random draws are made up
front in the parent from per-purpose generators seeded by ``(seed, purpose)``. eSpeak NG's output depends on the
library's uncleared internal state (see ``datasets.espeak``), so the clips are rendered in fixed shards of
``SPEAKERS_PER_SHARD`` speakers, each in a fresh forked process (``maxtasksperchild=1``) that loads the library
anew: the output does not depend on ``workers``. Encoders run with ``bitexact`` flags so no library version string is
embedded; FLV1 and libmp3lame output were checked to be byte-stable across runs (PyAV 18.1).

Choices of this generator:

- The FLV video uses a fixed quantiser (``video_qscale``, default 1) and a keyframe every 30 frames, so the frame
  that starts each second is an intra frame and the marker survives compression (measured error <= 2 grey levels).
- The MP3 track is 22,050 Hz mono (FLV cannot hold 16 kHz MP3). Its packets are shifted by the encoder priming delay
  (1,105 samples with LAME) so the video starts at t = 0; the MP3 audio is therefore about 50 ms late. The WAV is
  the canonical audio; the MP3 track only mirrors CREMA-D's container layout. ``mp3_track=False`` drops it.
- If an utterance is longer than its drawn clip length (never seen with the default 1.3 s minimum; digit words
  last at most about 0.75 s at 110 wpm), the clip is lengthened within its started second to hold it, and
  generation fails if that is not enough; ``meta.csv`` records the real duration.
- ``manifest.json`` records every knob except ``workers``, which cannot change the files.
- ``meta.csv`` records, beside each clip's labels, ``clean_split``, ``offset_x``, ``offset_y`` and ``utterance_s``.
- Speech is synthetic: real content, but weaker evidence than recorded speech.

Usage::

    python -m datasets.av_digits --out DIR --preset small --dominance audio-dominant --seed 0
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import math
import multiprocessing
import os
import platform
import shutil
import sys
import time
from fractions import Fraction
from multiprocessing.connection import Connection, wait
from multiprocessing.pool import ExceptionWithTraceback
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import yaml

from core.data import seed_for
from core.errors import InputError
from core.hparams import HParam, HParamError, resolve
from datasets import espeak
from datasets.sources import sha256_file

GENERATOR_VERSION = "1.0.0"
ROOT_NAME = "AV-Digits"
DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
# 6-class mode reuses CREMA-D's emotion codes so that OGM-GE's hard-coded map gives label == digit
# (docs/datasets/av_digits.md#layout).
CODES_6 = ("NEU", "HAP", "SAD", "FEA", "DIS", "ANG")
CODES_10 = ("ZER", "ONE", "TWO", "THR", "FOU", "FIV", "SIX", "SEV", "EIG", "NIN")
LEVEL = "XX"
FIRST_SPEAKER = 2001  # outside CREMA-D's actors 1001-1091, so ids of the two can never be confused
# CREMA-D's per-class counts (docs/datasets/cremad.md) in CODES_6 order, i.e. mapped onto digits 0-5.
CREMAD_CLASS_COUNTS = {"train": (973, 1148, 1131, 1138, 1142, 1166), "test": (114, 123, 140, 133, 129, 105)}
SUMMARY_HEADER = '"","FileName","VoiceVote","VoiceLevel","FaceVote","FaceLevel","MultiModalVote","MultiModalLevel"'
DEFAULT_VARIANTS = ("f1", "f2", "f3", "f4", "f5", "m1", "m2", "m3", "m4", "m5", "m6", "m7", "m8", "klatt", "klatt2",
                    "klatt3")

AUDIO_RATE = 16_000
MP3_RATE = 22_050  # FLV stores MP3 at 11,025 / 22,050 / 44,100 Hz only
FPS = 30
WIDTH, HEIGHT = 160, 120  # CREMA-D's 4:3
SCALE = 12  # 8x8 digits -> 96x96
TILE = 8 * SCALE
BACKGROUND = 128
MARKER_SIZE = 6
MARKER_STEP = 40  # second k is marked with grey level MARKER_STEP * (k + 1)
MARKER_CLEARANCE = 16  # the digit never enters the first 16x16 macroblock, so it cannot disturb the marker
SPEAKERS_PER_SHARD = 4  # fixed, so the output does not depend on the number of workers
_TRIM_LEVEL = 16  # int16 units: samples at or below this at either end count as eSpeak's padding silence
_MAX_TAKES = 36 ** 3  # three base-36 characters

HPARAMS = (
    HParam("preset", "tiny", "Size preset (docs/datasets/av_digits.md#sizes): tiny 6 classes 8/4 speakers 48/24 clips; "
                             "small 10 classes 160/40 "
           "speakers 1,600/400 clips; cremad 6 classes 200/50 speakers 6,698/744 clips with CREMA-D's class counts. "
           "Individual size knobs override it.", choices=("tiny", "small", "cremad")),
    HParam("dominance", "audio-dominant", "Dominance preset (docs/datasets/av_digits.md#dominance): sets "
                                          "image_noise_sigma and audio_snr_db. "
           "audio-dominant is the default because the demo needs audio to dominate, as on CREMA-D.",
           choices=("audio-dominant", "balanced", "visual-dominant", "clean")),
    HParam("classes", 6, "Number of digit classes: 6 uses CREMA-D's emotion codes, 10 the ZER..NIN codes "
                         "(docs/datasets/av_digits.md#layout).",
           choices=(6, 10)),
    HParam("train_speakers", 8, "Speakers in the train split (docs/datasets/av_digits.md#sizes tiny: 8)."),
    HParam("test_speakers", 4, "Speakers in the test split, disjoint from train by (voice, variant) "
                               "(docs/datasets/av_digits.md#sizes tiny: 4)."),
    HParam("val_speakers", None, "Train speakers moved to val.csv in the clean protocol; None picks "
           "round(train_speakers * test_clips / train_clips), so val is about as large as test, as in CREMA-D."),
    HParam("val_only_speakers", 0, "Extra speakers whose clips join train.csv only to be val.csv's (the clean "
                                   "protocol's validation split), drawn after every other draw from random streams "
                                   "of their own, so the training and test clips stay byte-identical: a larger "
                                   "validation set without another draw of training speakers "
                                   "(docs/datasets/av_digits.md#content); the project's choice. Under "
                                   "data.train_split=full, which trains on all of train.csv, they are trained on."),
    HParam("val_only_clips", 0, "Clips of the val_only_speakers in all, the same number of each class where it "
                                "divides (docs/datasets/av_digits.md#content)."),
    HParam("train_clips", 48, "Clips in train.csv (docs/datasets/av_digits.md#sizes tiny: 48)."),
    HParam("test_clips", 24, "Clips in test.csv (docs/datasets/av_digits.md#sizes tiny: 24)."),
    HParam("class_balance", "uniform", "Per-class clip counts: uniform, or cremad (CREMA-D's counts, "
                                       "docs/datasets/cremad.md, mapped "
           "onto digits 0-5 and scaled to train_clips/test_clips; exact at 6,698/744).",
           choices=("uniform", "cremad")),
    HParam("image_noise_sigma", 8.0, "Gaussian pixel noise on the 0-16 scale, drawn once per clip "
                                     "(docs/datasets/av_digits.md#content); 8 leaves "
           "a linear image probe at about 66% (docs/datasets/av_digits.md#dominance)."),
    HParam("audio_snr_db", None, "White-noise SNR in dB relative to the utterance power; None = clean "
                                 "(docs/datasets/av_digits.md#content, docs/datasets/av_digits.md#dominance)."),
    HParam("min_duration_s", 1.3, "Shortest clip, seconds (docs/datasets/av_digits.md#content: uniform 1.3-3.0 s, like "
                                  "CREMA-D's 1.27-5 s)."),
    HParam("max_duration_s", 3.0, "Longest clip, seconds (docs/datasets/av_digits.md#content); at most 6 so the marker "
                                  "grey level fits a byte."),
    HParam("rate_range", [120, 200], "Speaker base rate range, words per minute (docs/datasets/av_digits.md#content)."),
    HParam("pitch_range", [20, 80], "Speaker base pitch range, eSpeak 0-99 scale "
                                    "(docs/datasets/av_digits.md#content)."),
    HParam("rate_jitter", 10, "Per-clip rate jitter, +/- words per minute (docs/datasets/av_digits.md#content)."),
    HParam("pitch_jitter", 5, "Per-clip pitch jitter, +/- eSpeak pitch units (docs/datasets/av_digits.md#content)."),
    HParam("gain_db_range", [-6.0, 0.0], "Per-clip gain range in dB (docs/datasets/av_digits.md#content)."),
    HParam("voices", list(espeak.ENGLISH_VOICES), "eSpeak NG English voices (docs/datasets/av_digits.md#sources, all "
                                                  "measured valid)."),
    HParam("variants", list(DEFAULT_VARIANTS), "Voice variants from espeak-ng-data/voices/!v "
                                               "(docs/datasets/av_digits.md#sources): the standard "
           "female/male variants plus three Klatt ones; the project's choice."),
    HParam("image_test_fraction", 0.2, "Share of each digit's images in the test image pool "
                                       "(docs/datasets/av_digits.md#content: 80/20)."),
    HParam("motion_px", [4, 2], "Digit displacement (x, y) in pixels per second of clip "
                                "(docs/datasets/av_digits.md#content, 'a small fixed "
           "offset'; the project's value)."),
    HParam("video_qscale", 1, "FLV1 fixed quantiser (1 best); 1 keeps the marker within 2 grey levels."),
    HParam("mp3_track", True, "Add an MP3 audio track to each FLV like CREMA-D (docs/datasets/av_digits.md#layout); "
                              "costs about 30 ms per clip."),
    HParam("workers", 0, "Worker processes; 0 = one per available CPU. Does not change the output."),
    HParam("seed", 0, "Generation seed; every random draw derives from (seed, purpose)."),
)
_HPARAM_NAMES = tuple(p.name for p in HPARAMS)

SIZE_PRESETS: dict[str, dict[str, Any]] = {
    "tiny": {"classes": 6, "train_speakers": 8, "test_speakers": 4, "train_clips": 48, "test_clips": 24,
             "class_balance": "uniform"},
    "small": {"classes": 10, "train_speakers": 160, "test_speakers": 40, "train_clips": 1600, "test_clips": 400,
              "class_balance": "uniform"},
    "cremad": {"classes": 6, "train_speakers": 200, "test_speakers": 50, "train_clips": 6698, "test_clips": 744,
               "class_balance": "cremad"},
}
DOMINANCE_PRESETS: dict[str, dict[str, Any]] = {
    "audio-dominant": {"image_noise_sigma": 8.0, "audio_snr_db": None},
    "balanced": {"image_noise_sigma": 8.0, "audio_snr_db": 5.0},
    "visual-dominant": {"image_noise_sigma": 0.0, "audio_snr_db": 0.0},
    "clean": {"image_noise_sigma": 0.0, "audio_snr_db": None},
}

_DEMO_HINT = 'install the demo extra: pip install "augbench[demo]" (or pip install -e ".[demo]" in a checkout)'


def _require(module: str, package: str) -> Any:
    try:
        return __import__(module, fromlist=["_"])
    except ImportError as err:
        raise ImportError(f"AV-Digits generation needs the '{package}' package, which is missing; {_DEMO_HINT}") \
            from err


def class_codes(classes: int) -> tuple[str, ...]:
    """The class codes in label order for 6- or 10-class mode."""
    if classes == 6:
        return CODES_6
    if classes == 10:
        return CODES_10
    raise ValueError(f"AV-Digits has 6 or 10 classes, not {classes!r}")


def resolve_params(**params: Any) -> dict[str, Any]:
    """Declared defaults <- size preset <- dominance preset <- explicit ``params``; validated.

    Raises:
        HParamError: an unknown key, an ill-typed value, or an inconsistent combination (named in the message).
    """
    explicit = resolve("av_digits", HPARAMS, None, params)
    values = {p.name: p.default for p in HPARAMS}
    values.update(SIZE_PRESETS[explicit.preset])
    values.update(DOMINANCE_PRESETS[explicit.dominance])
    values.update({name: explicit[name] for name in params})
    for name in ("audio_snr_db", "val_speakers"):
        if values[name] is not None and (isinstance(values[name], bool) or not isinstance(values[name], (int, float))):
            raise HParamError(f"av_digits.{name} expects a number or None, got {values[name]!r}")
    if values["audio_snr_db"] is not None:
        values["audio_snr_db"] = float(values["audio_snr_db"])  # finite: resolve refuses any other number
    if values["val_speakers"] is not None:
        if not float(values["val_speakers"]).is_integer():
            raise HParamError(f"av_digits.val_speakers expects an integer or None, got {values['val_speakers']!r}")
        values["val_speakers"] = int(values["val_speakers"])
    _validate(values)
    return values


def _validate(v: Mapping[str, Any]) -> None:
    def bad(name: str, why: str) -> HParamError:
        return HParamError(f"av_digits.{name}={v[name]!r}: {why}")

    if v["train_speakers"] < 2:
        # One speaker would leave val.csv empty (val speakers are train speakers moved out), and the clean
        # protocol would then pick no epoch at all.
        raise bad("train_speakers", "needs at least two speakers: one or more to train on, one or more moved to "
                  "val.csv")
    if v["test_speakers"] < 1:
        raise bad("test_speakers", "needs at least one speaker")
    for split in ("train", "test"):
        if v[f"{split}_clips"] < v[f"{split}_speakers"]:
            raise bad(f"{split}_clips", f"fewer clips than {split}_speakers={v[f'{split}_speakers']}; every speaker "
                      "needs a clip")
    if v["val_speakers"] is not None and not 1 <= v["val_speakers"] < v["train_speakers"]:
        raise bad("val_speakers", f"must be between 1 and train_speakers - 1 = {v['train_speakers'] - 1}")
    for name in ("val_only_speakers", "val_only_clips"):
        if v[name] < 0:
            raise bad(name, "must be >= 0")
    if v["val_only_clips"] < v["val_only_speakers"]:
        raise bad("val_only_clips", f"fewer clips than val_only_speakers={v['val_only_speakers']}; every speaker "
                  "needs a clip")
    if v["val_only_clips"] and not v["val_only_speakers"]:
        raise bad("val_only_clips", "val-only clips need val_only_speakers >= 1")
    n_speakers = v["train_speakers"] + v["test_speakers"] + v["val_only_speakers"]
    if FIRST_SPEAKER + n_speakers - 1 > 9999:
        raise bad("train_speakers", f"train_speakers + test_speakers + val_only_speakers = {v['train_speakers']} + "
                  f"{v['test_speakers']} + {v['val_only_speakers']} = {n_speakers} speakers; at most "
                  f"{9999 - FIRST_SPEAKER + 1} keep CREMA-D's four-digit ids from {FIRST_SPEAKER}")
    if v["class_balance"] == "cremad" and v["classes"] != 6:
        raise bad("class_balance", "CREMA-D's class counts exist for 6 classes only")
    if not 1.0 <= v["min_duration_s"] <= v["max_duration_s"] <= 6.0:
        raise bad("max_duration_s", f"need 1.0 <= min_duration_s ({v['min_duration_s']}) <= max_duration_s <= 6.0")
    for name, lo, hi in (("rate_range", 80 + v["rate_jitter"], 450 - v["rate_jitter"]),
                         ("pitch_range", v["pitch_jitter"], 99 - v["pitch_jitter"])):
        if len(v[name]) != 2 or not lo <= v[name][0] <= v[name][1] <= hi:
            raise bad(name, f"need [low, high] within [{lo}, {hi}] (eSpeak limits minus the jitter)")
    if len(v["gain_db_range"]) != 2 or not v["gain_db_range"][0] <= v["gain_db_range"][1] <= 0:
        raise bad("gain_db_range", "need [low, high] with low <= high <= 0 dB")
    if v["image_noise_sigma"] < 0:
        raise bad("image_noise_sigma", "must be >= 0")
    if not 0 < v["image_test_fraction"] < 1:
        raise bad("image_test_fraction", "must be strictly between 0 and 1")
    for name in ("voices", "variants"):
        repeated = sorted({x for x in v[name] if v[name].count(x) > 1})
        if repeated:
            # Equal (voice, variant) pairs could fall on both sides of the train/test partition.
            raise bad(name, f"{repeated} given more than once; every (voice, variant) pair must be distinct")
    if len(v["voices"]) * len(v["variants"]) < 2:
        raise bad("voices", "need at least two (voice, variant) pairs to keep train and test speakers disjoint")
    if len(v["motion_px"]) != 2:
        raise bad("motion_px", "need [x, y] pixels per second")
    seconds = int(np.ceil(v["max_duration_s"]))
    dx, dy = v["motion_px"]
    if MARKER_CLEARANCE + TILE + (seconds - 1) * dx > WIDTH or TILE + (seconds - 1) * dy > HEIGHT or min(dx, dy) < 0:
        raise bad("motion_px", f"the digit must stay inside the {WIDTH}x{HEIGHT} frame for {seconds} s")
    if not 1 <= v["video_qscale"] <= 31:
        raise bad("video_qscale", "FLV1 quantisers run from 1 to 31")
    if v["workers"] < 0:
        raise bad("workers", "must be >= 0 (0 = one per CPU)")


def _rng(seed: int, purpose: str) -> np.random.Generator:
    # One stream per purpose, so adding a draw for one purpose never reshuffles another.
    return np.random.default_rng(seed_for("av_digits", seed, purpose))


def _cumcount(keys: np.ndarray) -> np.ndarray:
    """Position of each element among the earlier elements with the same key (pandas' ``cumcount``)."""
    order = np.argsort(keys, kind="stable")
    sorted_keys = keys[order]
    starts = np.flatnonzero(np.r_[True, sorted_keys[1:] != sorted_keys[:-1]])
    sizes = np.diff(np.r_[starts, len(keys)])
    out = np.empty(len(keys), np.int64)
    out[order] = np.arange(len(keys)) - np.repeat(starts, sizes)
    return out


def _class_counts(v: Mapping[str, Any], split: str) -> np.ndarray:
    n, k = v[f"{split}_clips"], v["classes"]
    if v["class_balance"] == "uniform":
        return n // k + (np.arange(k) < n % k)
    # Largest-remainder scaling of CREMA-D's counts to n clips; exact when n equals CREMA-D's split size.
    weights = np.asarray(CREMAD_CLASS_COUNTS[split], np.float64)
    share = weights / weights.sum() * n
    counts = np.floor(share).astype(np.int64)
    counts[np.argsort(-(share - counts), kind="stable")[:n - counts.sum()]] += 1
    return counts


def _base36(values: np.ndarray) -> list[str]:
    return [np.base_repr(int(t), 36).rjust(3, "0") for t in values]


def _plan(v: Mapping[str, Any]) -> dict[str, Any]:
    """Every random draw of the dataset, made up front: speakers, clips, image choices and per-clip parameters."""
    load_digits = _require("sklearn.datasets", "scikit-learn").load_digits
    seed, k = v["seed"], v["classes"]
    codes = class_codes(k)

    # Speakers: (voice, variant) pairs are partitioned between splits, then cycled within a split.
    rng = _rng(seed, "speakers")
    pairs = [(voice, variant) for voice in v["voices"] for variant in v["variants"]]
    n_tr, n_te = v["train_speakers"], v["test_speakers"]
    n_spk = n_tr + n_te
    order = rng.permutation(len(pairs))
    n_test_pairs = min(len(pairs) - 1, max(1, round(len(pairs) * n_te / n_spk)))
    test_pairs, train_pairs = order[:n_test_pairs], order[n_test_pairs:]
    spk_pair = np.r_[train_pairs[np.arange(n_tr) % len(train_pairs)], test_pairs[np.arange(n_te) % len(test_pairs)]]
    spk_split = np.array(["train"] * n_tr + ["test"] * n_te)
    spk_rate = rng.integers(v["rate_range"][0], v["rate_range"][1] + 1, n_spk)
    spk_pitch = rng.integers(v["pitch_range"][0], v["pitch_range"][1] + 1, n_spk)
    spk_id = FIRST_SPEAKER + rng.permutation(n_spk)  # ids carry no split information
    n_val = v["val_speakers"]
    if n_val is None:
        n_val = min(n_tr - 1, max(1, round(n_tr * v["test_clips"] / v["train_clips"])))
    spk_clean = spk_split.astype("<U8")
    spk_clean[rng.choice(n_tr, n_val, replace=False)] = "val"
    spk_clean[:n_tr][spk_clean[:n_tr] == "train"] = "my_train"

    # Clips: classes in blocks, speakers round-robin over a shuffled order, so per-speaker totals differ by <= 1.
    rng = _rng(seed, "clips")
    digit_parts, speaker_parts, split_parts = [], [], []
    for split, members in (("train", np.arange(n_tr)), ("test", np.arange(n_tr, n_spk))):
        digits = np.repeat(np.arange(k), _class_counts(v, split))
        digit_parts.append(digits)
        speaker_parts.append(rng.permutation(members)[np.arange(len(digits)) % len(members)])
        split_parts.append(np.full(len(digits), split))
    digit, speaker, split = np.concatenate(digit_parts), np.concatenate(speaker_parts), np.concatenate(split_parts)
    ids = _clip_ids(spk_id, speaker, digit, codes)
    clips = _clip_draws(rng, len(digit), v)

    # Images: stratified, seeded train/test pools; each (split, digit) walks through its shuffled pool.
    bunch = load_digits()
    rng = _rng(seed, "images")
    in_test = np.zeros(len(bunch.target), bool)
    for d in range(10):
        members = rng.permutation(np.flatnonzero(bunch.target == d))
        in_test[members[:round(v["image_test_fraction"] * len(members))]] = True
    for d in range(k):
        for pool, mask in (("test", in_test), ("training", ~in_test)):
            if not (mask & (bunch.target == d)).any():
                raise HParamError(f"av_digits.image_test_fraction={v['image_test_fraction']!r}: leaves no {pool} image "
                                  f"of digit {d} (of {(bunch.target == d).sum()})")
    image_index = np.empty(len(digit), np.int64)
    position = _cumcount((split == "test") * k + digit)
    for s, pool_mask in (("train", ~in_test), ("test", in_test)):
        for d in range(k):
            rows = np.flatnonzero((split == s) & (digit == d))
            pool = rng.permutation(np.flatnonzero(pool_mask & (bunch.target == d)))
            image_index[rows] = pool[position[rows] % len(pool)]
    noise = _rng(seed, "image_noise").standard_normal((len(digit), 8, 8))

    plan = {"codes": codes, "pairs": pairs, "in_test_pool": in_test, "spk_id": spk_id, "spk_pair": spk_pair,
            "spk_split": spk_split, "spk_clean": spk_clean, "spk_rate": spk_rate, "spk_pitch": spk_pitch,
            "id": ids, "digit": digit, "speaker": speaker, "split": split, "image_index": image_index,
            "noise": noise, **clips}
    if v["val_only_speakers"]:
        for name, extra in _val_only(v, plan, train_pairs, bunch.target).items():
            plan[name] = np.concatenate([plan[name], extra])
    plan["rate"] = plan["spk_rate"][plan["speaker"]] + plan.pop("jitter_rate")
    plan["pitch"] = plan["spk_pitch"][plan["speaker"]] + plan.pop("jitter_pitch")
    plan["image"] = np.clip(bunch.images[plan["image_index"]] + v["image_noise_sigma"] * plan.pop("noise"),
                            0.0, 16.0).astype(np.float32)
    return plan


def _clip_ids(spk_id: np.ndarray, speaker: np.ndarray, digit: np.ndarray, codes: Sequence[str],
              more: str = "speakers") -> np.ndarray:
    """CREMA-D-style ids ``<speaker>_<take>_<code>_XX``: a speaker's takes of one digit counted in clip order;
    ``more`` names what to add when a speaker has too many."""
    take = _cumcount(speaker * len(codes) + digit)
    if take.max() >= _MAX_TAKES:
        raise HParamError(f"more than {_MAX_TAKES} takes of one digit by one speaker; add {more}")
    return np.array([f"{s}_{t}_{codes[d]}_{LEVEL}" for s, t, d in zip(spk_id[speaker], _base36(take), digit)])


def _clip_draws(rng: np.random.Generator, n: int, v: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Per-clip jitter, gain, length, onset, placement and noise seed of ``n`` clips, drawn from ``rng`` in this
    order (the order is part of the output)."""
    jitter_rate = rng.integers(-v["rate_jitter"], v["rate_jitter"] + 1, n)
    jitter_pitch = rng.integers(-v["pitch_jitter"], v["pitch_jitter"] + 1, n)
    gain_db = rng.uniform(*v["gain_db_range"], n)
    duration = rng.uniform(v["min_duration_s"], v["max_duration_s"], n)
    n_frames = np.clip(np.round(duration * FPS).astype(np.int64), 1, int(v["max_duration_s"] * FPS))
    onset_u = rng.random(n)
    dx, dy = v["motion_px"]
    seconds = np.ceil(n_frames / FPS).astype(np.int64)
    offset_x = MARKER_CLEARANCE + (rng.random(n) * (WIDTH - TILE - MARKER_CLEARANCE - (seconds - 1) * dx + 1))
    offset_y = rng.random(n) * (HEIGHT - TILE - (seconds - 1) * dy + 1)
    noise_seed = rng.integers(0, 2 ** 63, n)
    return {"jitter_rate": jitter_rate, "jitter_pitch": jitter_pitch, "gain_db": gain_db, "n_frames": n_frames,
            "onset_u": onset_u, "offset_x": offset_x.astype(np.int64), "offset_y": offset_y.astype(np.int64),
            "noise_seed": noise_seed}


def _val_only(v: Mapping[str, Any], plan: Mapping[str, Any], train_pairs: np.ndarray,
              targets: np.ndarray) -> dict[str, np.ndarray]:
    """The val-only speakers and their clips, every draw from streams of their own, so that no draw of the rest of
    the dataset changes: speakers numbered after the others, on training-side (voice, variant) pairs that no training
    speaker uses where there are enough (voices unheard in training, like the val speakers' own), else on any
    training-side pair; their images from the training pool."""
    seed, k, n_x, n_spk = v["seed"], v["classes"], v["val_only_speakers"], len(plan["spk_id"])
    rng = _rng(seed, "val_only_speakers")
    used = set(plan["spk_pair"][:v["train_speakers"]].tolist())
    unused = np.array([p for p in train_pairs if p not in used])
    candidates = unused if len(unused) >= n_x else train_pairs
    digit = np.repeat(np.arange(k), v["val_only_clips"] // k + (np.arange(k) < v["val_only_clips"] % k))
    extra = {"spk_id": FIRST_SPEAKER + n_spk + np.arange(n_x),
             "spk_pair": rng.permutation(candidates)[np.arange(n_x) % len(candidates)],
             "spk_split": np.full(n_x, "train"), "spk_clean": np.full(n_x, "val", dtype="<U8"),
             "spk_rate": rng.integers(v["rate_range"][0], v["rate_range"][1] + 1, n_x),
             "spk_pitch": rng.integers(v["pitch_range"][0], v["pitch_range"][1] + 1, n_x),
             "digit": digit, "speaker": n_spk + rng.permutation(n_x)[np.arange(len(digit)) % n_x],
             "split": np.full(len(digit), "train")}
    spk_id = np.concatenate([plan["spk_id"], extra["spk_id"]])
    extra["id"] = _clip_ids(spk_id, extra["speaker"], digit, plan["codes"], "val_only_speakers")
    extra |= _clip_draws(rng, len(digit), v)
    rng = _rng(seed, "val_only_images")
    image_index = np.empty(len(digit), np.int64)
    for d in range(k):
        rows = np.flatnonzero(digit == d)
        pool = rng.permutation(np.flatnonzero(~plan["in_test_pool"] & (targets == d)))
        image_index[rows] = pool[np.arange(len(rows)) % len(pool)]
    extra["image_index"] = image_index
    extra["noise"] = _rng(seed, "val_only_image_noise").standard_normal((len(digit), 8, 8))
    return extra


def _shards(plan: Mapping[str, Any], v: Mapping[str, Any], tmp: Path) -> list[dict[str, Any]]:
    """Fixed groups of SPEAKERS_PER_SHARD speakers (in speaker-id order), clips sorted by id within a shard. The
    val-only speakers (numbered last) come in shards after the others', which keep their speakers and eSpeak seeds."""
    spk_order = np.argsort(plan["spk_id"])
    shard_of_speaker = np.empty(len(spk_order), np.int64)
    shard_of_speaker[spk_order] = np.arange(len(spk_order)) // SPEAKERS_PER_SHARD
    others = v["train_speakers"] + v["test_speakers"]
    first_extra_shard = -(-others // SPEAKERS_PER_SHARD)
    shard_of_speaker[others:] = first_extra_shard + np.arange(v["val_only_speakers"]) // SPEAKERS_PER_SHARD
    clip_shard = shard_of_speaker[plan["speaker"]]
    order = np.lexsort((plan["id"], clip_shard))
    bounds = np.flatnonzero(np.r_[True, clip_shard[order][1:] != clip_shard[order][:-1], True])
    pair_names = [f"{voice}+{variant}" for voice, variant in plan["pairs"]]
    tasks = []
    for index, (lo, hi) in enumerate(zip(bounds[:-1], bounds[1:])):
        rows = order[lo:hi]
        tasks.append({
            "root": str(tmp), "espeak_seed": seed_for("av_digits", v["seed"], "espeak", index) % 2 ** 31,
            "rows": rows, "id": plan["id"][rows].tolist(), "digit": plan["digit"][rows],
            "voice": [pair_names[p] for p in plan["spk_pair"][plan["speaker"][rows]]],
            "rate": plan["rate"][rows], "pitch": plan["pitch"][rows], "gain_db": plan["gain_db"][rows],
            "n_frames": plan["n_frames"][rows], "onset_u": plan["onset_u"][rows], "image": plan["image"][rows],
            "offset_x": plan["offset_x"][rows], "offset_y": plan["offset_y"][rows],
            "noise_seed": plan["noise_seed"][rows], "audio_snr_db": v["audio_snr_db"], "motion_px": v["motion_px"],
            "video_qscale": v["video_qscale"], "mp3_track": v["mp3_track"],
        })
    return tasks


def _trim(samples: np.ndarray) -> np.ndarray:
    loud = np.flatnonzero(np.abs(samples.astype(np.int32)) > _TRIM_LEVEL)
    return samples[loud[0]:loud[-1] + 1] if len(loud) else samples[:0]


def _render_audio(utterance: np.ndarray, n_samples: int, onset_u: float, gain_db: float, snr_db: float | None,
                  noise_seed: int) -> tuple[np.ndarray, int]:
    """Place the 16 kHz ``utterance`` in a clip of ``n_samples``; returns (int16 PCM, onset sample)."""
    utt = utterance * 10.0 ** (gain_db / 20.0)
    onset = int(onset_u * (n_samples - len(utt)))
    clip = np.zeros(n_samples)
    clip[onset:onset + len(utt)] = utt
    if snr_db is not None:
        noise_power = np.mean(utt ** 2) / 10.0 ** (snr_db / 10.0)
        clip += np.sqrt(noise_power) * np.random.default_rng(noise_seed).standard_normal(n_samples)
    return np.round(np.clip(clip, -1.0, 1.0) * 32767.0).astype(np.int16), onset


def _second_frames(image: np.ndarray, n_frames: int, offset_x: int, offset_y: int,
                   motion: Sequence[int]) -> np.ndarray:
    """One grey frame per started second of the clip: digit tile at its moving offset plus the marker block."""
    seconds = -(-n_frames // FPS)
    tile = np.round(np.kron(image, np.ones((SCALE, SCALE))) * (255.0 / 16.0)).astype(np.uint8)
    frames = np.full((seconds, HEIGHT, WIDTH), BACKGROUND, np.uint8)
    for k in range(seconds):
        x, y = offset_x + k * motion[0], offset_y + k * motion[1]
        frames[k, y:y + TILE, x:x + TILE] = tile
        frames[k, :MARKER_SIZE, :MARKER_SIZE] = MARKER_STEP * (k + 1)
    return frames


def _encode_flv(frames: np.ndarray, n_frames: int, pcm: np.ndarray | None, qscale: int) -> bytes:
    import av
    from scipy.signal import resample_poly

    buffer = io.BytesIO()
    container = av.open(buffer, "w", format="flv", options={"fflags": "+bitexact"})
    video = container.add_stream("flv", rate=FPS, options={"qmin": str(qscale), "qmax": str(qscale),
                                                          "flags": "+bitexact"})
    video.width, video.height, video.pix_fmt = WIDTH, HEIGHT, "yuv420p"
    video.codec_context.gop_size = FPS  # the first frame of every second is a keyframe, the frame 1 fps loaders pick
    audio = None
    if pcm is not None:
        audio = container.add_stream("libmp3lame", rate=MP3_RATE, layout="mono",
                                     options={"compression_level": "9", "flags": "+bitexact"})
    # Limited-range luma with neutral chroma is what swscale makes of a grey frame (checked bit-exact); building it
    # here skips a per-frame colour conversion.
    luma = np.round(16.0 + frames * (219.0 / 255.0)).astype(np.uint8)
    chroma = np.full((HEIGHT // 2, WIDTH), 128, np.uint8)
    for k in range(len(frames)):
        frame = av.VideoFrame.from_ndarray(np.concatenate([luma[k], chroma]), format="yuv420p")
        frame.time_base = Fraction(1, FPS)
        for i in range(k * FPS, min((k + 1) * FPS, n_frames)):
            frame.pts = i
            for packet in video.encode(frame):
                container.mux(packet)
    for packet in video.encode():
        container.mux(packet)
    if audio is not None:
        g = math.gcd(MP3_RATE, AUDIO_RATE)
        signal = resample_poly(pcm / 32767.0, MP3_RATE // g, AUDIO_RATE // g).astype(np.float32)[None]
        frame = av.AudioFrame.from_ndarray(signal, format="flt", layout="mono")
        frame.sample_rate, frame.pts = MP3_RATE, 0
        packets = [*audio.encode(frame), *audio.encode()]
        # The encoder's priming samples give the first packet a negative timestamp; the FLV muxer would shift the
        # video to compensate. Shift the audio instead so the video starts at t = 0.
        priming = -packets[0].pts if packets and packets[0].pts < 0 else 0
        for packet in packets:
            packet.pts, packet.dts = packet.pts + priming, packet.dts + priming
            container.mux(packet)
    container.close()
    return buffer.getvalue()


def _write(path: Path, data: bytes) -> str:
    path.write_bytes(data)
    return hashlib.sha256(data).hexdigest()


def _render_shard(task: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Worker: synthesise, render and write every clip of one shard in a fresh eSpeak instance."""
    import soundfile
    from scipy.signal import resample_poly

    engine = espeak.Espeak(seed=task["espeak_seed"])
    root = Path(task["root"])
    results = []
    current = None
    for i, clip_id in enumerate(task["id"]):
        voice = task["voice"][i]
        if voice != current:
            engine.set_voice(*voice.split("+", 1))
            current = voice
        raw = _trim(engine.synthesize(DIGIT_WORDS[task["digit"][i]], int(task["rate"][i]), int(task["pitch"][i])))
        if len(raw) == 0:
            raise espeak.EspeakError(f"voice {voice!r} produced no audio for {DIGIT_WORDS[task['digit'][i]]!r} "
                                     f"(clip {clip_id}); choose another voice or variant")
        g = math.gcd(AUDIO_RATE, engine.sample_rate)
        utterance = resample_poly(raw / 32768.0, AUDIO_RATE // g, engine.sample_rate // g)
        n_frames = planned = int(task["n_frames"][i])
        if round(n_frames * AUDIO_RATE / FPS) < len(utterance):
            n_frames = -(-len(utterance) * FPS // AUDIO_RATE)
            if -(-n_frames // FPS) > -(-planned // FPS):
                # The digit's offset was drawn for the planned number of seconds; more would move it off-frame.
                raise ValueError(f"clip {clip_id}: the {len(utterance) / AUDIO_RATE:.2f} s utterance does not fit its "
                                 f"{planned / FPS:.2f} s clip; raise min_duration_s or rate_range")
        n_samples = round(n_frames * AUDIO_RATE / FPS)
        pcm, onset = _render_audio(utterance, n_samples, float(task["onset_u"][i]), float(task["gain_db"][i]),
                                   task["audio_snr_db"], int(task["noise_seed"][i]))
        wav = io.BytesIO()
        soundfile.write(wav, pcm, AUDIO_RATE, subtype="PCM_16", format="WAV")
        frames = _second_frames(task["image"][i], n_frames, int(task["offset_x"][i]), int(task["offset_y"][i]),
                                task["motion_px"])
        flv = _encode_flv(frames, n_frames, pcm if task["mp3_track"] else None, task["video_qscale"])
        results.append({
            "row": int(task["rows"][i]), "onset_s": onset / AUDIO_RATE, "utterance_s": len(utterance) / AUDIO_RATE,
            "n_frames": n_frames,
            f"AudioWAV/{clip_id}.wav": _write(root / "AudioWAV" / f"{clip_id}.wav", wav.getvalue()),
            f"VideoFlash/{clip_id}.flv": _write(root / "VideoFlash" / f"{clip_id}.flv", flv),
        })
    return results


def _check_voices(voices: Sequence[str]) -> list[str]:
    """Worker: the voices eSpeak rejects (run in its own process, since loading the library taints the process)."""
    engine = espeak.Espeak()
    rejected = []
    for voice in voices:
        try:
            engine.set_voice(voice)
        except espeak.UnknownVoiceError:
            rejected.append(voice)
    return rejected


class WorkerDiedError(RuntimeError):
    """A generator worker process ended without returning its result (killed, crashed, or out of memory)."""


def _run_and_send(fn: Callable[[Any], Any], task: Any, conn: Connection) -> None:
    """Worker: send ``(True, fn(task))``, or ``(False, error)`` with the worker's traceback attached as its cause."""
    try:
        reply = (True, fn(task))
    except Exception as err:
        reply = (False, ExceptionWithTraceback(err, err.__traceback__))
    conn.send(reply)
    conn.close()


def _start(context: multiprocessing.context.BaseContext, fn: Callable[[Any], Any], task: Any) -> tuple[Connection, Any]:
    reader, writer = context.Pipe(duplex=False)
    process = context.Process(target=_run_and_send, args=(fn, task, writer), daemon=True)
    process.start()
    # Only the child holds the writing end now, so its death (with or without a reply) wakes the reader.
    writer.close()
    return reader, process


def _receive(reader: Connection, process: Any, what: str) -> Any:
    try:
        ok, value = reader.recv()
    except EOFError:
        process.join()
        raise WorkerDiedError(f"the worker process for {what} died (exit code {process.exitcode}) without returning "
                              "its result; if the system ran out of memory, pass fewer workers") from None
    finally:
        reader.close()
    process.join()
    if not ok:
        raise value
    return value


def _map_in_fresh_processes(context: multiprocessing.context.BaseContext, fn: Callable[[Any], Any],
                            tasks: Sequence[Any], workers: int, what: str = "shard") -> list[Any]:
    """``[fn(t) for t in tasks]``, each call in a process of its own, at most ``workers`` at a time.

    eSpeak NG keeps synthesis state that no call resets, so each task needs a fresh process. A
    ``multiprocessing.Pool(maxtasksperchild=1)`` gives that, but it silently replaces a worker that dies and then
    waits forever for the lost task; here a dead worker raises ``WorkerDiedError``. ``ProcessPoolExecutor`` would
    raise too, but it refuses one task per process with fork, and spawn re-imports scipy and av for every shard.
    """
    results: list[Any] = [None] * len(tasks)
    waiting = list(enumerate(tasks))[::-1]
    running: dict[Connection, tuple[int, Any]] = {}
    try:
        while waiting or running:
            while waiting and len(running) < workers:
                index, task = waiting.pop()
                reader, process = _start(context, fn, task)
                running[reader] = (index, process)
            for reader in wait(list(running)):
                index, process = running.pop(reader)
                results[index] = _receive(reader, process, f"{what} {index}" if len(tasks) > 1 else what)
    finally:
        for reader, (_, process) in running.items():
            process.terminate()
            process.join()
            reader.close()
    return results


def _context() -> multiprocessing.context.BaseContext:
    # fork is cheap and the parent never loads eSpeak, so each child starts from a clean library; elsewhere spawn.
    return multiprocessing.get_context("fork" if sys.platform.startswith("linux") else "spawn")


def _cpu_count() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _csv_text(rows: Sequence[Sequence[Any]], newline: str) -> str:
    return "".join(",".join(str(x) for x in row) + newline for row in rows)


def _library_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for package in ("numpy", "scipy", "scikit-learn", "av", "soundfile", "espeakng-loader"):
        try:
            out[package] = version(package)
        except PackageNotFoundError:
            out[package] = "not installed"
    # libespeak-ng takes its maths (sin, cos, exp, pow) from the system's C library, not from a wheel.
    libc, libc_version = platform.libc_ver()
    out["libc"] = f"{libc} {libc_version}" if libc else "unknown"
    return out


def generate(out_dir: str | Path, *, overwrite: bool = False, **params: Any) -> Path:
    """Generate AV-Digits into ``out_dir / "AV-Digits"`` and return that folder.

    The folder is built in a temporary sibling and renamed when complete, so an interrupted run leaves nothing that
    looks valid.

    Args:
        out_dir: parent folder; created if missing.
        overwrite: replace an existing ``AV-Digits`` folder instead of failing.
        **params: knobs from ``HPARAMS`` (``preset``, ``dominance``, ``classes``, ``seed``, ...); explicit knobs
            override the presets.

    Returns:
        The dataset root, ready for ``prepare --dataset cremad --data_dir <root>``.

    Raises:
        HParamError: unknown or inconsistent parameters.
        ImportError: ``espeakng-loader``, ``av`` or ``scikit-learn`` is missing (the message names the extra).
        espeak.UnknownVoiceError: a voice or variant name eSpeak NG does not know.
        espeak.EspeakError: eSpeak NG cannot load its voice data (a broken espeakng-loader install).
        WorkerDiedError: a worker process died without a result (killed, crashed, out of memory).
        FileExistsError: the target exists and ``overwrite`` is false.
        OSError: a written file changed on disk before the tree was published (another process writing there).
    """
    loader = espeak.require_espeakng_loader()
    _require("av", "av")
    _require("sklearn", "scikit-learn")
    import soundfile  # noqa: F401  (a base dependency; imported here so a broken install fails before any work)

    # Imported before the shard workers fork, so each inherits it instead of importing it again (about 1 s a shard).
    from scipy.signal import resample_poly  # noqa: F401

    v = resolve_params(**params)
    unknown_variants = sorted(set(v["variants"]) - set(espeak.variant_names(loader.get_data_path())))
    if unknown_variants:
        raise espeak.UnknownVoiceError(f"unknown eSpeak NG voice variant(s) {unknown_variants}; valid variants: "
                                       f"{list(espeak.variant_names(loader.get_data_path()))}")
    out_dir = Path(out_dir)
    final = out_dir / ROOT_NAME
    if final.exists() and not overwrite:
        raise FileExistsError(f"{final} already exists; pass overwrite=True (CLI: --force) to replace it")
    context = _context()
    [rejected] = _map_in_fresh_processes(context, _check_voices, [list(v["voices"])], 1, "the voice check")
    if rejected:
        raise espeak.UnknownVoiceError(f"eSpeak NG rejected voice(s) {rejected}; valid English voices: "
                                       f"{list(espeak.ENGLISH_VOICES)}")

    plan = _plan(v)
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = out_dir / f".{ROOT_NAME}.partial"
    if tmp.exists():
        shutil.rmtree(tmp)
    try:
        for sub in ("AudioWAV", "VideoFlash", "annotations", "processedResults"):
            (tmp / sub).mkdir(parents=True)
        tasks = _shards(plan, v, tmp)
        workers = min(v["workers"] or _cpu_count(), len(tasks))
        results = [r for shard in _map_in_fresh_processes(context, _render_shard, tasks, workers) for r in shard]
        hashes = _write_tables(tmp, plan, v, results)
        for r in results:
            hashes.update({key: value for key, value in r.items() if "/" in key})
        _write_manifest(tmp, plan, v, hashes)
        # What is on disk, not only what the workers wrote: a worker of a killed earlier run (they outlive a SIGKILL
        # for the rest of their shard) writing into this same partial folder would otherwise go unseen.
        changed = _changed_files(tmp, hashes)
        if changed:
            raise OSError(f"{tmp}: {changed} changed on disk while generating; generate again (is another "
                          f"generation writing into {out_dir}?)")
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def _write_tables(root: Path, plan: Mapping[str, Any], v: Mapping[str, Any],
                  results: Sequence[Mapping[str, Any]]) -> dict[str, str]:
    """Split files, summaryTable, speakers.csv and meta.csv; returns their SHA-256 by relative path."""
    codes, ids, split = plan["codes"], plan["id"], plan["split"]
    n = len(ids)
    onset, utterance, n_frames = np.zeros(n), np.zeros(n), plan["n_frames"].copy()
    for r in results:
        onset[r["row"]], utterance[r["row"]], n_frames[r["row"]] = r["onset_s"], r["utterance_s"], r["n_frames"]
    clean = plan["spk_clean"][plan["speaker"]]
    # Split files list clips in a seeded random order, as OGM-GE's do; the clean partition keeps train.csv's order.
    # Val-only clips (last in the plan) follow the others in train.csv, in an order of their own.
    others = n - v["val_only_clips"]
    rng = _rng(v["seed"], "order")
    rows = {s: rng.permutation(np.flatnonzero(split[:others] == s)) for s in ("train", "test")}
    rows["train"] = np.concatenate([rows["train"], others + _rng(v["seed"], "val_only_order").permutation(n - others)])
    label = [codes[d] for d in plan["digit"]]
    files: dict[str, bytes] = {
        "annotations/train.csv": _csv_text([(ids[i], label[i]) for i in rows["train"]], "\r\n").encode(),
        "annotations/test.csv": _csv_text([(ids[i], label[i]) for i in rows["test"]], "\r\n").encode(),
        "annotations/stat.csv": ("\ufeff" + _csv_text([(c,) for c in codes], "\r\n")).encode("utf-8"),
        "annotations/my_train.csv": _csv_text([(ids[i], label[i]) for i in rows["train"] if clean[i] == "my_train"],
                                              "\n").encode(),
        "annotations/val.csv": _csv_text([(ids[i], label[i]) for i in rows["train"] if clean[i] == "val"],
                                         "\n").encode(),
    }
    by_id = np.argsort(ids)
    files["processedResults/summaryTable.csv"] = (SUMMARY_HEADER + "\n" + "".join(
        f'"{j + 1}","{ids[i]}","","","","","",""\n' for j, i in enumerate(by_id))).encode()
    spk_rows = [("speaker", "voice", "variant", "base_rate", "base_pitch", "split", "clean_split")]
    for s in np.argsort(plan["spk_id"]):
        voice, variant = plan["pairs"][plan["spk_pair"][s]]
        spk_rows.append((plan["spk_id"][s], voice, variant, plan["spk_rate"][s], plan["spk_pitch"][s],
                         plan["spk_split"][s], plan["spk_clean"][s]))
    files["speakers.csv"] = _csv_text(spk_rows, "\n").encode()
    snr = "" if v["audio_snr_db"] is None else f"{v['audio_snr_db']:g}"
    meta = [("id", "split", "digit", "code", "image_index", "speaker", "rate", "pitch", "gain_db", "onset_s",
             "duration_s", "image_noise_sigma", "audio_snr_db", "clean_split", "offset_x", "offset_y", "utterance_s")]
    for i in by_id:
        meta.append((ids[i], split[i], plan["digit"][i], label[i], plan["image_index"][i],
                     plan["spk_id"][plan["speaker"][i]], plan["rate"][i], plan["pitch"][i], f"{plan['gain_db'][i]:.4f}",
                     f"{onset[i]:.5f}", f"{n_frames[i] / FPS:.5f}", f"{v['image_noise_sigma']:g}", snr, clean[i],
                     plan["offset_x"][i], plan["offset_y"][i], f"{utterance[i]:.5f}"))
    files["meta.csv"] = _csv_text(meta, "\n").encode()
    return {name: _write(root / name, data) for name, data in files.items()}


class TreeMismatchError(InputError, ValueError):
    """A generated tree that is not the one asked for, or whose files changed after generation."""


def check_tree(root: str | Path, **params: Any) -> None:
    """Refuse to reuse the tree at ``root`` unless ``generate(**params)`` would write it: same generator version and
    knobs (``workers`` aside), and every file the manifest lists still has its SHA-256 (a truncated copy or a damaged
    disk would otherwise reach the cache, whose own check sees only sizes and times after it is built).

    Raises:
        TreeMismatchError: naming the tree, the knobs that differ or the files that changed, and what to do.
    """
    root = Path(root)
    fix = f"delete {root} to generate it again, or use another folder"
    try:
        manifest = json.loads((root / "manifest.json").read_text())
    except (OSError, ValueError) as err:
        raise TreeMismatchError(f"{root}: no readable manifest.json ({err}); {fix}") from None
    wanted = resolve_params(**params)
    # Through JSON, as the manifest stores them (tuples as lists).
    wanted = json.loads(json.dumps({name: wanted[name] for name in _HPARAM_NAMES if name != "workers"}))
    recorded = manifest.get("params", {})
    differ = [f"{name}={recorded.get(name)!r} (asked {value!r})" for name, value in wanted.items()
              if recorded.get(name) != value]
    if manifest.get("generator_version") != GENERATOR_VERSION:
        differ.insert(0, f"generator_version={manifest.get('generator_version')!r} (this one {GENERATOR_VERSION!r})")
    if differ:
        raise TreeMismatchError(f"{root} was generated with {', '.join(differ)}: not the tree asked for; {fix}")
    changed = _changed_files(root, manifest.get("files", {}))
    if changed:
        raise TreeMismatchError(f"{root}: {changed} differ from the SHA-256 generation recorded in manifest.json; "
                                f"{fix}")


def _changed_files(root: Path, hashes: Mapping[str, str]) -> str:
    """The files under ``root`` that are missing or whose SHA-256 is not ``hashes[relative path]``, counted and
    named (the first five); empty when every file matches."""
    changed = []
    for rel, digest in hashes.items():
        path = root / rel
        if not path.is_file():
            changed.append(f"{rel} (missing)")
            continue
        if sha256_file(path) != digest:
            changed.append(rel)
    if not changed:
        return ""
    return f"{len(changed)} file(s) (" + ", ".join(changed[:5]) + (
        f" and {len(changed) - 5} more" if len(changed) > 5 else "") + ")"


def _write_manifest(root: Path, plan: Mapping[str, Any], v: Mapping[str, Any], hashes: Mapping[str, str]) -> None:
    codes, split, digit = plan["codes"], plan["split"], plan["digit"]
    clean = plan["spk_clean"][plan["speaker"]]
    counts: dict[str, Any] = {}
    for name, mask in (("train", split == "train"), ("test", split == "test"), ("my_train", clean == "my_train"),
                       ("val", clean == "val")):
        counts[name] = {"clips": int(mask.sum()),
                        "speakers": int(len(np.unique(plan["speaker"][mask]))),
                        "per_class": {c: int(((digit == d) & mask).sum()) for d, c in enumerate(codes)}}
    manifest = {
        "dataset": ROOT_NAME, "generator": "datasets.av_digits", "generator_version": GENERATOR_VERSION,
        "seed": v["seed"], "params": {name: v[name] for name in _HPARAM_NAMES if name != "workers"},
        "class_codes": list(codes), "counts": counts,
        "image_pools": {"test_images": int(plan["in_test_pool"].sum()),
                        "train_images": int((~plan["in_test_pool"]).sum())},
        "library_versions": _library_versions(),
        "files": dict(sorted(hashes.items())),
    }
    (root / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")


def _parse_value(text: str) -> Any:
    value = yaml.safe_load(text)
    return None if isinstance(value, str) and value.lower() == "none" else value


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point: ``python -m datasets.av_digits --out DIR [--preset ...] [--<knob-name> VALUE ...]``."""
    parser = argparse.ArgumentParser(prog="python -m datasets.av_digits",
                                     description="Generate the AV-Digits demo dataset in CREMA-D's raw layout.")
    parser.add_argument("--out", required=True, type=Path, help=f"parent folder; the data goes to OUT/{ROOT_NAME}")
    parser.add_argument("--force", action="store_true", help=f"replace an existing OUT/{ROOT_NAME}")
    for p in HPARAMS:
        choices = f" Choices: {', '.join(map(str, p.choices))}." if p.choices else ""
        # hyphenated like augbench's own flags; the knob's own name (underscored) is accepted too
        spellings = dict.fromkeys([f"--{p.name.replace('_', '-')}", f"--{p.name}"])
        parser.add_argument(*spellings, dest=p.name, type=_parse_value, default=argparse.SUPPRESS,
                            # argparse formats help with %: a literal one ("about 66%") must be doubled
                            help=f"{p.doc}{choices} Default: {p.default!r}.".replace("%", "%%"))
    args = vars(parser.parse_args(argv))
    out, force = args.pop("out"), args.pop("force")
    start = time.perf_counter()
    try:
        root = generate(out, overwrite=force, **args)
    except (HParamError, espeak.UnknownVoiceError, espeak.EspeakError, FileExistsError, ImportError) as err:
        parser.error(str(err))
    elapsed = time.perf_counter() - start
    counts = json.loads((root / "manifest.json").read_text())["counts"]
    clips = counts["train"]["clips"] + counts["test"]["clips"]
    print(f"wrote {root}: {counts['train']['clips']} train / {counts['test']['clips']} test clips "
          f"({counts['my_train']['clips']} my_train / {counts['val']['clips']} val) in {elapsed:.1f} s "
          f"({clips / elapsed:.1f} clips/s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
