"""The audio-visual datasets (CREMA-D, Kinetics-Sounds, AVE, VGGSound, AV-Digits): one ``PreparedDataset`` case whose
cache holds two arrays, ``audio`` float16 (F, T) spectrograms computed by the recipe's audio pipeline, and ``frames``
uint8 (H, W, 3) at 1 fps, ragged (clip i owns ``frame_count[i]`` frames from ``frame_start[i]``).

A subclass declares the raw layout (``LAYOUT``), the split files and how to read them (``read_splits``), and its
recipes (``Recipe(doc, {"audio": <pipeline name>})``, optionally ``"extraction"``: which frames of a video are stored,
``datasets.media.video.EXTRACTIONS``); the audio pipeline parameters, frame size, frame rate and
frame source are ``augbench prepare`` options (``--audio KEY=VALUE``, ``--frame-size``, ``--fps``, ``--visual``,
``--min-frames``). ``serve`` hands a batch's rows and frame ranges to ``AVAugment``, which reads the audio rows and
chosen frames (from the memory map, RAM or the device, ``data.resident``) and transforms them per batch on the device.
"""

from __future__ import annotations

import dataclasses
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Iterable, Mapping, Sequence

import numpy as np
import torch

from core.data import Augment, Gather, ModalitySpec, TaskSpec
from core.hparams import HParam, HParams, resolve
from datasets.augment import (
    CROP_PER,
    CROP_SCALE,
    EVAL_VIEWS,
    FRAME_COUNT_KEY,
    FRAME_RULES,
    FRAME_START_KEY,
    RESAMPLE_MODES,
    RESIDENT_MODES,
    ROWS_KEY,
    AVAugment,
    check_crop_scale,
)
from datasets.cache import ArraySpec, Cache, CacheError
from datasets.media import MISSING_MEDIA, MediaError
from datasets.media.audio import PIPELINES, AudioPipeline, features_from_file, get_pipeline, require_backend
from datasets.media.video import (
    EXTRACTIONS,
    FIRST_OF_SECOND,
    INTERPOLATION,
    MID_OF_SECOND,
    extract_frames,
    get_extraction,
    in_segment,
    load_frame_folder,
)
from datasets.prepared import PreparedDataset, Record, cache_hparams
from datasets.tables import PrepareOptions, Sample

VISUAL_SOURCES = ("auto", "video", "frames")
# What part of each clip a recipe stores (its ``segment`` setting).
SEGMENTS = {"whole": "the whole clip",
            "event": "each row's annotated event, seconds Start..End: audio samples [Start, End) s (the second at "
                     "Start when Start == End) tiled to the pipeline's length, frames of seconds Start..End (PMR "
                     "data/AVE/video_preprocessing.py extractWav_SE, video2frame_update_SE, at 1 fps; at a higher "
                     "--fps, the kept frames of those whole seconds)"}
# The manifest counts clips with fewer frames than this (the published loaders serve 1-3 frames per clip).
FEW_FRAMES = 4
# A stored frame keeps its source's aspect ratio within this fraction (CREMA-D's 480x360 -> 341x256 is off by 0.1%).
ASPECT_TOLERANCE = 0.02
SOURCE_SIZES_SHOWN = 8
# OGM-GE's frame folders name their extraction rate: Image-01-FPS, Image-02-FPS...
FRAME_FOLDER_RATE = re.compile(r"Image-(\d+)-FPS", re.IGNORECASE)
# The layout settings ``augbench prepare --audio-dir/--video-dir/--frames-dir`` override.
LAYOUT_SETTINGS = ("audio_dir", "video_dir", "frames_dir")
# Stands for a row's split in a layout folder: published trees keep train and test media apart, OGM-GE's VGGSound in
# train-audios/train-set and test-audios/test-set (dataset/VGGSoundDataset.py), AMSS's Kinetics-Sounds in
# train_img/Image-01-FPS and test_img/Image-01-FPS (AMSS/MyDataset.py).
SPLIT_FIELD = "{split}"


@dataclass(frozen=True)
class Layout:
    """Where a dataset's media live under the raw root (paths relative to it).

    Attributes:
        audio_dir: folder of audio files; ``None`` decodes the audio track of the video file (AVE).
        audio_suffixes: audio file suffixes to try.
        video_dir: folder of video files.
        video_suffixes: video file suffixes to try.
        frames_dir: folder of per-clip frame folders (used instead of videos when it exists, or on request).
        frames_suffixes: suffixes of frame folder names (OGM-GE's VGGSound folders keep ``.mp4``).

    A folder may contain ``{split}`` (``SPLIT_FIELD``), which ``for_split`` replaces with a row's split.
    """

    audio_dir: str | None
    audio_suffixes: tuple[str, ...]
    video_dir: str
    video_suffixes: tuple[str, ...]
    frames_dir: str = "Image-01-FPS"
    frames_suffixes: tuple[str, ...] = ("",)

    def replace(self, overrides: Mapping[str, str]) -> "Layout":
        unknown = sorted(set(overrides) - set(LAYOUT_SETTINGS))
        if unknown:
            raise ValueError(f"unknown layout setting(s) {unknown}; valid: {list(LAYOUT_SETTINGS)}")
        return dataclasses.replace(self, **overrides)

    def for_split(self, split: str) -> "Layout":
        """The folders of one split's media: ``{split}`` replaced by ``split`` (a folder without it is shared)."""
        return dataclasses.replace(self, **{key: folder.replace(SPLIT_FIELD, split) for key in LAYOUT_SETTINGS
                                            if (folder := getattr(self, key)) is not None})


def few_frame_clips(frame_counts: Iterable[int]) -> dict[str, int]:
    """Clips of 1 to ``FEW_FRAMES - 1`` frames by frame count: served with repeated frames when T exceeds their count
    (the published loaders need 2-4 frames, or fail)."""
    counts = Counter(n for n in frame_counts if n < FEW_FRAMES)
    return {str(n): counts[n] for n in sorted(counts)}


def source_frame_sizes(sizes: Sequence[Sequence[int] | None], frame_size: Sequence[int]) -> dict[str, Any]:
    """The source frame sizes ("HxW": clips, the most common first) and how many clips were resized from another
    aspect ratio than the stored ``frame_size`` (H, W): the training crop sees those squeezed or stretched, while the
    published loaders crop the source image (``augbench prepare --frame-size`` stores another aspect)."""
    known = Counter(tuple(s) for s in sizes if s)
    target = frame_size[1] / frame_size[0]
    other = sum(n for (h, w), n in known.items() if abs(w / h / target - 1) > ASPECT_TOLERANCE)
    return {"source_frame_sizes": {f"{h}x{w}": n for (h, w), n in known.most_common(SOURCE_SIZES_SHOWN)},
            "other_aspect_clips": other}


def check_folder_rate(frames_dir: Path, per_second: int) -> None:
    """Frame folders are read as extracted, so ``--fps`` would only be recorded, not applied: it must be the rate
    the folder's name states (Image-NN-FPS), or 1, the rate of the published extractions, for a name that states
    none."""
    # any part of the path may state the rate (Image-02-FPS/train), in either case
    named = next((m for part in reversed(frames_dir.parts) if (m := FRAME_FOLDER_RATE.search(part))), None)
    rate = int(named[1]) if named else 1
    if rate != per_second:
        holds = f"holds {rate} frame(s) per second" if named else \
            "is taken to hold 1 frame per second (its name states no rate, as Image-NN-FPS does)"
        raise ValueError(f"--fps {per_second}: the frames come from {frames_dir}, which {holds}; extract from the "
                         f"videos instead (--visual video) or name a folder of that rate (--frames-dir DIR)")


def av_hparams(*, recipes: Sequence[str], recipe: str, recipe_doc: str, frames: int, frames_doc: str,
               image_size: int = 224) -> tuple[HParam, ...]:
    """The ``data.*`` knobs of an audio-visual dataset, with that dataset's defaults."""
    serving = (
        HParam("image_size", image_size, "S of the served visual (3, T, S, S): RandomResizedCrop(S) for training, "
                                         "the data.eval_view for evaluation (224 in OGM-GE, AUG, AMSS, PMR "
                                         "loaders).",
               low=1),
        HParam("crop_scale", list(CROP_SCALE), "RandomResizedCrop's range of the training crop's share of the frame "
                                               "area: torchvision's default (0.08, 1), which the OGM-GE, AUG, AMSS "
                                               "and PMR loaders use (docs/datasets/recipes.md#image-transforms).",
               check=check_crop_scale),
        HParam("crop_per", "frame", "How often the training crop box and horizontal flip are drawn: 'frame' = for "
                                    "every frame, as the OGM-GE, AUG, PMR and BalanceBenchmark loaders apply their "
                                    "torchvision Compose to each frame (e.g. GitHub GeWu-Lab/OGM-GE_CVPR2022 "
                                    "dataset/CramedDataset.py); 'clip' = once per clip, the same box and flip on its "
                                    "T frames, as BML does (GitHub GeWu-Lab/BML_TPAMI2024 code/dataset/KS.py "
                                    "KSDataset.__loading calls randomize_parameters once per clip; "
                                    "code/dataset/spatial_transforms.py RandomResizedCrop, RandomHorizontalFlip). "
                                    "Added after runs were recorded without it: a run at 'frame' does not record it.",
               choices=CROP_PER, absent_value="frame"),
        HParam("eval_view", "resize", "The evaluation view of a stored frame: 'resize' = Resize((S, S)), squeezing "
                                      "it to S x S (the OGM-GE, AUG, AMSS, PMR loaders); 'short_side_center' = "
                                      "Resize(S) of the short side (long side int(S * long / short), truncated), then "
                                      "CenterCrop(S) (offsets int(round((h - S) / 2)), halves to even), as BML "
                                      "evaluates (GitHub GeWu-Lab/BML_TPAMI2024 code/dataset/spatial_transforms.py "
                                      "get_val_spatial_transforms, with torchvision 0.14's Resize and CenterCrop on "
                                      "PIL images). Added after runs were recorded without it: a run at 'resize' "
                                      "does not record it.",
               choices=EVAL_VIEWS, absent_value="resize"),
        HParam("frames", frames, frames_doc, low=1),
        HParam("frame_rule", "segments", "How T frames are chosen from a clip's sorted 1 fps frames: 'segments' = "
                                         "T segments of n // T frames, a random frame of each for training, frame "
                                         "i*seg + seg//2 for evaluation (BalanceBenchmark's CREMA-D loader, Data "
                                         "Remixing); 'segments_ks' = BalanceBenchmark KS_dataset.py's 1-based "
                                         "variant, its training draws capped at frame 9; 'first_k' = the first T (what "
                                         "OGM-GE/AUG do on a listing, made deterministic by sorting); 'random_k' = "
                                         "T distinct random frames in clip order for training, the first T for "
                                         "evaluation (IPRM); 'bml_ks' = stored frames n-1, (n-1)//2 - 1 and n-2 "
                                         "(wrapping), in that order, for training and evaluation, T = 3 only (GitHub "
                                         "GeWu-Lab/BML_TPAMI2024 code/dataset/KS.py with its loader.py's hdf5 "
                                         "indexing).",
               choices=FRAME_RULES),
    )
    return cache_hparams(recipes=recipes, recipe=recipe, recipe_doc=recipe_doc, serving=serving) + (
        HParam("resample", "pil", "Training crop filter: 'pil' = PIL's antialiased bilinear on the uint8 crop, rounded "
                                  "to uint8, as the published RandomResizedCrop computes it (torch's uint8 kernel on "
                                  "a CPU, the fastest; float32 + rounding on CUDA, within one grey level); 'fast' = "
                                  "one batched torchvision roi_align on float frames (bilinear, area-averaged when "
                                  "shrinking; docs/datasets/cache.md#serving names grid_sample/roi_align); 'exact' = "
                                  "PIL's filter in float32 without the rounding, as torchvision "
                                  "resized_crop(antialias=True) computes it [project; deviations bounded in "
                                  "tests/test_speed_paths.py and tests/test_serving_buffers.py].",
               choices=RESAMPLE_MODES),
        HParam("resident", "auto", "Where batches are gathered from: 'none' = the memory-mapped cache; 'memory' = "
                                   "loaded once into RAM; 'device' = copied once to the training device (no "
                                   "per-batch host->device copy); 'auto' = 'device' on CUDA when the arrays take at "
                                   "most half of its free memory, else 'memory' when they take at most half of the "
                                   "available RAM, else 'none'; 'none' under data.subset [project].",
               choices=RESIDENT_MODES),
        HParam("eval_cache_mb", 2048, "Test-time frame views (data.eval_view) are computed once and kept, up to "
                                      "this many MiB of uint8 (0 = resize on every use) [project]."),
        HParam("compile_views", False, "On a CPU, serve the kept test-time views with one kernel that torch.compile "
                                       "generates (gather, uint8->float32 conversion and normalisation in a single "
                                       "pass; bit-identical values, about half the time of the per-view eager path); "
                                       "the first evaluation compiles it (seconds; needs a C++ compiler) [project]."),
        HParam("prefetch", 0, "Batches a background thread prepares ahead of the training loop (0 = none, the "
                              "single-thread loader); the batch sequence is the same either way [project]."),
    )


def audio_pipeline(cache: Cache) -> AudioPipeline:
    """The audio pipeline an audio-visual cache was computed with.

    Raises ``CacheError`` when the cache was built by an earlier version of that pipeline: its recorded ``follows``
    and ``deviation`` text (part of the cache hash, changed whenever the computation changes) differ from this
    code's, so ``augbench prepare`` would now build another cache, and training on this one would serve features
    this code no longer computes."""
    recorded = cache.manifest["audio"]
    current = PIPELINES.get(recorded.get("name"))
    if current is not None:
        stale = [key for key in ("follows", "deviation") if recorded.get(key) != getattr(current, key)]
        if stale:
            raise CacheError(f"{cache.path}: built by an earlier version of the {current.name!r} audio pipeline "
                             f"(recorded {stale[0]}: {recorded.get(stale[0])!r}; this code: "
                             f"{getattr(current, stale[0])!r}); rebuild it with augbench prepare ... --force, "
                             f"or build a new cache beside it and set data.cache")
    return AudioPipeline(**recorded)


def _first_existing(raw: Path, folder: str, names: Sequence[str], suffixes: Sequence[str], want_dir: bool
                    ) -> Path | None:
    for name in names:
        for suffix in suffixes:
            path = raw / folder / f"{name}{suffix}"
            if (path.is_dir() if want_dir else path.is_file()):
                return path
    return None


def min_frames_stale(policies: Mapping[str, Any], wanted: int) -> bool:
    """Whether a cache's recorded ``min_frames`` came from its recipe and differs from the recipe's ``wanted`` now
    (the recipe changed since); a value chosen with ``--min-frames`` is kept."""
    recorded, source = policies.get("min_frames", 1), policies.get("min_frames_from")
    if source is None:
        # Manifests from before min_frames_from: the default was 1 frame until recipes set their own minimum, so a
        # recorded 1 below the recipe's is taken as that old default; another value was chosen with --min-frames.
        return recorded == 1 < wanted
    return source == "recipe" and recorded != wanted


def extraction_record(settings: HParams) -> dict[str, str]:
    """The manifest's record of which frames of a video were stored: the recipe's extraction rule and what it follows,
    or that frame folders were read as extracted (no rule can choose other frames from them)."""
    if settings.visual != "video":
        return {"name": "none", "follows": "frame folders are read as extracted; the recipe's rule "
                                           f"{settings.extraction!r} applies to videos (--visual video)"}
    return {"name": settings.extraction, "follows": EXTRACTIONS[settings.extraction].follows}


def frame_top_up(settings: HParams) -> str:
    """The manifest's account of what happens to clips with few frames."""
    at_load = ("clips with fewer than T frames repeat frames at load (few_frame_clips counts the clips of 1 to 3 "
               "frames by frame count)")
    minimum = get_extraction(settings.extraction).minimum
    if settings.visual == "video" and minimum:
        source = " of the event segment's seconds [Start, End)" if settings.segment == "event" else ""
        return (f"clips with fewer than {minimum} kept frames are topped up to {minimum} at extraction with evenly "
                f"spaced frames{source} (PMR: random ones); then " + at_load)
    return "none at prepare time; " + at_load


def second_boundaries(settings: HParams) -> str:
    """The manifest's account of where a video's seconds start, which the extraction rule decides."""
    if settings.visual == "video" and settings.extraction == MID_OF_SECOND:
        return "the exact average frame rate: second i's frame is round((i + 0.5) * fps) - 1, as AV_preprocess_tool"
    return "int(average frame rate) decoded frames, as OGM-GE's int(CAP_PROP_FPS)"


def recorded_extraction(manifest: Mapping[str, Any]) -> str:
    """The extraction rule a cache's frames were chosen by: caches from frame folders, and those built before rules
    were recorded, hold the first frame of each second or whatever the folders held ("none")."""
    visual = manifest.get("visual", {})
    if visual.get("source") != "video":
        return "none"
    return visual.get("extraction", {}).get("name", FIRST_OF_SECOND)


def check_distinct_frames(cache: Cache, counts: np.ndarray, hp: HParams) -> None:
    """``random_k`` draws T distinct frames (IPRM's ``np.random.choice(n, T, replace=False)``, which fails on a clip of
    fewer): refuse a cache holding such clips instead of serving repeated frames."""
    short = int((counts < hp.frames).sum()) if hp.frame_rule == "random_k" else 0
    if short:
        raise CacheError(f"{cache.path}: data.frame_rule=random_k draws {hp.frames} distinct frames per clip, but "
                         f"{short} clip(s) have fewer; prepare the cache with --min-frames {hp.frames} --skip-bad "
                         f"(the published loader cannot read them either; it goes to a new folder: set data.cache to "
                         f"it), or choose another data.frame_rule")


class AVCacheDataset(PreparedDataset):
    """Base of the cache-backed audio-visual datasets; see the module docstring.

    Attributes:
        LAYOUT: where the media live under the raw root.
        FRAME_SIZE: stored frame (H, W); docs/datasets/recipes.md#visual: short side 256, CREMA-D's 4:3 -> 256x341.
    """

    SPLITS_IN_RAW: ClassVar[str | None] = None
    LAYOUT: ClassVar[Layout]
    FRAME_SIZE: ClassVar[tuple[int, int]] = (256, 341)

    @classmethod
    def media_names(cls, sample_id: str) -> tuple[str, ...]:
        """File stems to try for a sample's media, in order (VGGSound adds a zero-padded start)."""
        return (sample_id,)

    # --- prepare -----------------------------------------------------------------------------------------------------
    @classmethod
    def resolve_settings(cls, recipe: str, overrides: Mapping[str, Any], opts: PrepareOptions, raw: Path) -> HParams:
        """The audio pipeline, layout and frame policy from the recipe and the prepare options (``--option`` has no
        keys here: unknown keys are errors)."""
        if recipe not in cls.RECIPES:
            raise ValueError(f"{cls.NAME} has no recipe {recipe!r}; valid: {sorted(cls.RECIPES)}")
        resolve(f"{cls.NAME} prepare", (), None, overrides)
        chosen = cls.RECIPES[recipe].settings
        pipeline = get_pipeline(chosen["audio"]).replace(opts.audio)
        require_backend(pipeline)
        layout = cls.LAYOUT.replace(opts.layout)
        min_frames = chosen.get("min_frames", 1) if opts.min_frames is None else opts.min_frames
        if min_frames < 1:
            raise ValueError(f"min_frames must be >= 1 (a clip without frames cannot be served), got {min_frames}")
        if opts.visual not in VISUAL_SOURCES:
            raise ValueError(f"unknown visual source {opts.visual!r}; valid: {VISUAL_SOURCES}")
        # With {split} in the name there is one frames folder per split; every dataset here has train and test rows.
        frames_found = any((raw / layout.for_split(split).frames_dir).is_dir() for split in ("train", "test"))
        visual = opts.visual if opts.visual != "auto" else ("frames" if frames_found else "video")
        if visual == "frames":
            check_folder_rate(raw / layout.frames_dir, opts.frames_per_second)
        extraction = get_extraction(chosen.get("extraction", FIRST_OF_SECOND)).name
        if extraction == MID_OF_SECOND and opts.frames_per_second != 1:
            raise ValueError(f"recipe {recipe!r} stores the middle frame of each second ({MID_OF_SECOND}); --fps "
                             f"{opts.frames_per_second} would be recorded, not applied")
        segment = chosen.get("segment", "whole")
        if segment not in SEGMENTS:
            raise ValueError(f"{cls.NAME} recipe {recipe!r}: segment {segment!r} is not one of {tuple(SEGMENTS)}")
        if segment == "event" and visual == "frames" and layout.frames_dir.rstrip("/").endswith("-SE"):
            # PMR's -SE folders hold a segment already, topped up with random frames: positions are not seconds.
            raise ValueError(f"recipe {recipe!r} cuts each clip to its event segment itself: give the whole-clip "
                             f"frame folders (e.g. Image-01-FPS), not {layout.frames_dir!r}")
        return HParams(f"{cls.NAME} prepare", {
            "audio": pipeline.params(), "layout": dataclasses.asdict(layout), "visual": visual,
            "frame_size": [int(x) for x in (opts.frame_size or cls.FRAME_SIZE)],
            "per_second": opts.frames_per_second, "min_frames": min_frames,
            "min_frames_from": "recipe" if opts.min_frames is None else "--min-frames", "segment": segment,
            "extraction": extraction})

    @classmethod
    def locate(cls, raw: Path, sample: Sample, settings: HParams) -> tuple[dict[str, str], dict[str, Any]]:
        """The sample's audio file and video file / frame folder; ``MediaError`` if missing."""
        layout = Layout(**settings.layout).for_split(sample.split)
        names = cls.media_names(sample.id)
        if settings.visual == "frames":
            visual = _first_existing(raw, layout.frames_dir, names, layout.frames_suffixes, want_dir=True)
            expected = raw / layout.frames_dir / names[0]
        else:
            visual = _first_existing(raw, layout.video_dir, names, layout.video_suffixes, want_dir=False)
            expected = raw / layout.video_dir / f"{names[0]}{layout.video_suffixes[0]}"
        if visual is None:
            raise MediaError(expected, MISSING_MEDIA, f"{settings.visual} not found for {sample.id}")
        # Datasets distributed as videos only (AVE) take the audio track of the video file.
        audio_dir, audio_suffixes = (layout.audio_dir, layout.audio_suffixes) if layout.audio_dir is not None \
            else (layout.video_dir, layout.video_suffixes)
        audio = _first_existing(raw, audio_dir, names, audio_suffixes, want_dir=False)
        if audio is None:
            raise MediaError(raw / audio_dir / f"{names[0]}{audio_suffixes[0]}", MISSING_MEDIA,
                             f"audio not found for {sample.id}")
        return {"audio": audio.relative_to(raw).as_posix(), "visual": visual.relative_to(raw).as_posix()}, {}

    @classmethod
    def arrays(cls, settings: HParams, info: Mapping[str, Any]) -> tuple[ArraySpec, ...]:
        return (ArraySpec("audio", "float16", AudioPipeline(**settings.audio).output_shape()),
                ArraySpec("frames", "uint8", (*settings.frame_size, 3), ragged=True))

    @classmethod
    def load(cls, raw: Path, record: Record, settings: HParams) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        audio_path, visual_path = raw / record.media["audio"], raw / record.media["visual"]
        segment = tuple(record.extra["segment"]) if "segment" in record.extra else None
        # Audio [Start, End) s; Start == End, where PMR's cut would be empty, keeps the one second at Start.
        window = (segment[0], max(segment[1], segment[0] + 1)) if segment is not None else None
        features, duration, short = features_from_file(AudioPipeline(**settings.audio), audio_path, window)
        half = features.astype(np.float16)
        if not np.isfinite(half).all():
            raise MediaError(audio_path, "corrupt audio", "features overflow float16")
        size = tuple(settings.frame_size)
        if settings.visual == "frames":
            clip, info = load_frame_folder(visual_path, size)
            if segment is not None:
                clip = clip[in_segment(np.arange(len(clip)) // settings.per_second, segment)]
        else:
            # The extraction cuts the segment itself: a rule that tops a clip up draws from the segment's frames.
            clip, info = extract_frames(visual_path, size, settings.per_second, settings.extraction, segment)
        source = info["source_size"]
        if len(clip) < settings.min_frames:
            raise MediaError(visual_path, "too few frames", f"{len(clip)} frame(s) at {settings.per_second} fps, "
                                                            f"fewer than min_frames {settings.min_frames}")
        return {"audio": half, "frames": clip}, {"duration_s": round(duration, 6), "short": short, "frames": len(clip),
                                                 "source_size": list(source) if source else None}

    @classmethod
    def _visual_options(cls, settings: HParams) -> dict[str, Any]:
        # The extraction rule only applies to videos, and the first-of-second rule is left out so that the caches
        # built before rules existed keep their names; another rule makes another cache.
        applied = settings.visual == "video" and settings.extraction != FIRST_OF_SECOND
        return {"source": settings.visual, "frame_size": list(settings.frame_size), "per_second": settings.per_second,
                "min_frames": settings.min_frames, "interpolation": INTERPOLATION,
                **({"extraction": settings.extraction} if applied else {})}

    @classmethod
    def cache_options(cls, settings: HParams, specs: Sequence[ArraySpec]) -> dict[str, Any]:
        layout = {key: settings.layout[key] for key in LAYOUT_SETTINGS}
        own = {key: getattr(cls.LAYOUT, key) for key in LAYOUT_SETTINGS}
        # Media from another layout make another cache; the dataset's own layout is left out of the hash, so the
        # caches built before the layout was hashed keep their names.
        other_layout = {"layout": layout} if layout != own else {}
        # Likewise the segment: whole clips keep the names the caches had before segments existed.
        segment = {"segment": settings.segment} if settings.segment != "whole" else {}
        return {"audio": settings.audio, "visual": cls._visual_options(settings), **other_layout, **segment}

    @classmethod
    def manifest_entries(cls, settings: HParams, facts: Sequence[Mapping[str, Any]],
                         totals: Mapping[str, int]) -> dict[str, Any]:
        pipeline = AudioPipeline(**settings.audio)
        short_audio = ("fbank frames zero-padded or cut to target_frames" if pipeline.kind == "kaldi_fbank" else
                       "clips (or event segments) with under 1 s of audio are tiled until the audio pipeline's "
                       "length; index duration_s is the source clip's length")
        return {
            "audio": settings.audio, "audio_applied": pipeline.applied(), "audio_shape": list(pipeline.output_shape()),
            "served_audio_shape": list(pipeline.served_shape()),
            "visual": {**cls._visual_options(settings), "extraction": extraction_record(settings),
                       "frame_order": "natural numeric sort of frame file names (folders); decode order (videos)",
                       "second_boundaries": second_boundaries(settings)},
            "layout": settings.layout,
            "policies": {"min_frames": settings.min_frames, "min_frames_from": settings.min_frames_from,
                         "segment": SEGMENTS[settings.segment],
                         "short_audio": short_audio,
                         "frame_resize": f"every frame is resized to frame_size {list(settings.frame_size)} (H, W); "
                                         f"other_aspect_clips counts the clips whose source aspect ratio differs by "
                                         f"more than {ASPECT_TOLERANCE:.0%}",
                         "frame_top_up": frame_top_up(settings)},
            "counts": {"frames": totals["frames"], "short_audio_clips": sum(bool(f.get("short")) for f in facts),
                       "few_frame_clips": few_frame_clips(f["frames"] for f in facts),
                       **source_frame_sizes([f["source_size"] for f in facts], settings.frame_size)},
        }

    @classmethod
    def deviations(cls, settings: HParams) -> list[str]:
        video = settings.visual == "video"
        jpeg = "video frames go to storage without the published JPEG round trip" if video else ""
        rule = EXTRACTIONS[settings.extraction].deviation if video else ""
        return [d for d in (settings.audio["deviation"], jpeg, rule) if d]

    # --- serving -----------------------------------------------------------------------------------------------------
    @classmethod
    def check_recipe_current(cls, cache: Cache) -> None:
        """Refuse a cache built before its recipe stored event segments (its manifest's policies have no
        ``segment``), its recipe's current minimum frame count (``min_frames_stale``) or its current extraction rule
        (frames decoded from videos by another rule, e.g. a ``pmr`` CREMA-D cache from before the top-up): it holds
        other samples or other media than ``augbench prepare`` builds for that recipe today."""
        policies, recipe = cache.manifest.get("policies", {}), cls.RECIPES.get(cache.manifest.get("recipe"))
        if recipe is None:
            return
        segment, min_frames = recipe.settings.get("segment", "whole"), recipe.settings.get("min_frames", 1)
        old_segments = segment != "whole" and "segment" not in policies
        extraction, recorded = recipe.settings.get("extraction", FIRST_OF_SECOND), recorded_extraction(cache.manifest)
        if recorded not in ("none", extraction):
            raise CacheError(f"{cache.path}: its frames were chosen by {recorded!r}, but recipe "
                             f"{cache.manifest['recipe']!r} now extracts {extraction!r}; build the recipe's cache "
                             f"again with augbench prepare (it goes to a new folder beside this one; set data.cache to "
                             f"it) and remove this one")
        if old_segments or min_frames_stale(policies, min_frames):
            stored = "event segments" if old_segments else f"only clips of >= {min_frames} frames"
            keep = "" if old_segments else (f" (to keep its {policies.get('min_frames', 1)}-frame minimum instead, "
                                            f"prepare it again with --min-frames {policies.get('min_frames', 1)} "
                                            f"--force)")
            raise CacheError(f"{cache.path}: built before recipe {cache.manifest['recipe']!r} stored {stored}; "
                             f"build the recipe's cache again with augbench prepare (it goes to a new folder beside "
                             f"this one; set data.cache to it) and remove this one{keep}")

    @classmethod
    def serve(cls, cache: Cache, hp: HParams) -> tuple[TaskSpec, Gather, Augment]:
        cls.check_recipe_current(cache)
        if hp.eval_cache_mb < 0 or hp.prefetch < 0:
            raise ValueError(f"data.eval_cache_mb={hp.eval_cache_mb} and data.prefetch={hp.prefetch} must be >= 0")
        pipeline = audio_pipeline(cache)
        f, t = pipeline.served_shape()
        task = TaskSpec(cls.NAME, len(cache.classes),
                        (ModalitySpec("audio", "spectrogram", (1, f, t)),
                         ModalitySpec("visual", "frames", (3, hp.frames, hp.image_size, hp.image_size))),
                        cache.classes)
        starts, counts = cache.starts["frames"], cache.counts["frames"]
        check_distinct_frames(cache, counts, hp)

        def gather(rows: np.ndarray) -> dict[str, torch.Tensor]:
            # Row metadata only: AVAugment reads audio and frames where the arrays are resident (host or device).
            return {ROWS_KEY: torch.from_numpy(rows), FRAME_START_KEY: torch.from_numpy(starts[rows]),
                    FRAME_COUNT_KEY: torch.from_numpy(counts[rows])}

        view_bytes = hp.image_size * hp.image_size * 3
        # A subset (data.subset) serves a few rows of each class: copying the whole cache into RAM or onto the GPU for
        # them would cost a smoke run more than it saves.
        resident = "none" if hp.subset and hp.resident == "auto" else hp.resident
        augment = AVAugment(cache.arrays["frames"], num_frames=hp.frames, image_size=hp.image_size,
                            frame_rule=hp.frame_rule, audio_frames=pipeline.serve_frames, audio=cache.arrays["audio"],
                            resample=hp.resample, resident=resident,
                            eval_cache_frames=int(hp.eval_cache_mb * 2**20) // view_bytes,
                            compile_views=hp.compile_views, crop_scale=hp.crop_scale, crop_per=hp.crop_per,
                            eval_view=hp.eval_view)
        return task, gather, augment

    @classmethod
    def prefetch(cls, hp: HParams) -> int:
        return hp.prefetch
