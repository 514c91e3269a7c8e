"""``nvgesture``: NVGesture hand gestures from RGB, optical flow and depth clips (25 classes;
docs/datasets/nvgesture.md), as AMSS reads them (GitHub: njustkmg/TPAMI-AMSS, ``AMSS_rod/MyDataset.py``; AUG's old
``train_NVGesture.py`` and ``dataset/nvGesture.py`` @966dbf5 follow it).

Raw layout::

    nvgesture_train_correct_v2.lst, nvgesture_test_correct_v2.lst     (settings train_list / test_list; NVIDIA's
        own files are named nvgesture_*_correct_cvpr2016_v2.lst)
        one clip per line: path:./Video_data/class_01/subject13_r0 depth:sk_depth:138:218
                           color:sk_color:138:218 duo_left:duo_left:161:254 label:1
    Video_data/class_NN/subjectS_rR/sk_color.avi, sk_depth.avi
    Video_data/flow_data/{train,test}/<i>.npy     precomputed flow of the i-th line of that list, (H, W, 2, T)

Labels are 1-based in the lists; class i is ``class_{i:02d}`` (the ``Video_data`` folder names); ``--label-order
lists`` keeps only the classes the lists use (for subsets), in label order. The sample id is
the ``path:`` value; ``speaker`` is the subject. Validation: none is published (1,050 / 482 clips [R]), so a
seeded hold-out of train by whole subjects is used and recorded: the dataset's paper split train and test by
subject (Molchanov et al., CVPR 2016), so validation does too (held out by clips, it would score subjects the model
trained on).

Prepare (recipe ``amss``): each sensor reads ``frames`` (80) frames from the list's start frame, as AMSS's 80-frame
container; frames past the list's end frame or the video's end stay zero, as there. Frames are resized to 256 x 256
(PIL bilinear; AMSS uses OpenCV's non-antialiased ``INTER_LINEAR``, a declared deviation) and stored as uint8: RGB
(80, 256, 256, 3), depth one channel (80, 256, 256), taken from the blue channel as OpenCV's ``frame[..., 0]`` of a
BGR frame. Flow is stored as given (first ``frames`` steps, zero-padded; resized bilinearly only if its size differs
from the storage size, a declared deviation), float16; a clip whose flow has no step, holds NaN or inf, or exceeds
the storage dtype, is a bad item.

Serving (per batch, on the device): train takes one random 224 crop and one random 64-frame window per clip, shared
by the three modalities; evaluation takes the centre crop of all 80 frames. RGB is scaled to [0, 1] and
ImageNet-normalised, depth scaled to [0, 1], flow left as stored, as AMSS does. Deviations, each with a knob:
AMSS feeds OpenCV's BGR frames to an ImageNet-normalised network (``channel_order=bgr`` reproduces it); AMSS's flow
skips the 64-frame window in training (``flow_full_clip``); AMSS's flip has probability 0 (``random_seed = 0``), so
``flip`` is off by default. Modality order (rgb, flow, depth) matches AUG's test-time weights 0.33 RGB + 0.33 OF +
0.34 depth (``train_NVGesture.py`` ``--merge_alpha1/2``).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from core.data import Augment, Batch, Gather, ModalitySpec, TaskSpec
from core.hparams import HParam, HParams
from datasets.augment import IMAGENET_MEAN, IMAGENET_STD
from datasets.cache import ArraySpec, Cache
from datasets.media import MISSING_MEDIA, MediaError, check_inside
from datasets.prepared import PreparedDataset, Recipe, Record, cache_hparams
from datasets.registry import register_dataset
from datasets.splits import ParsedList, SplitParseError, SplitRow, is_whole_number, read_lines
from datasets.tables import PrepareOptions, Sample, SplitTables, malformed_rows

CLASSES = tuple(f"class_{i:02d}" for i in range(1, 26))
SENSORS = ("color", "depth")


def parse_nvgesture_list(path: Path) -> ParsedList:
    """An NVGesture ``.lst``: rows ``SplitRow(path, label (1-based text), line, (list position, color folder,
    color start, color end, depth folder, depth start, depth end))``.

    The list position counts the non-blank lines before this one; it names the flow file (AMSS's ``idx``).
    Malformed lines (a key given twice among them) are kept in ``skipped`` with the reason, and still take a position.
    """
    lines, bom, endings = read_lines(path)
    out = ParsedList(Path(path), bom=bom, line_endings=endings)
    position = 0
    for number, text in enumerate(lines, start=1):
        if not text.strip():
            out.skipped.append((number, text, "blank line"))
            continue
        index, position = position, position + 1
        try:
            fields: dict[str, list[str]] = {}
            for token in text.split():
                key, sep, value = token.partition(":")
                if not sep:
                    raise SplitParseError(f"token {token!r} is not key:value")
                if key in fields:
                    raise SplitParseError(f"key {key!r} given twice")
                fields[key] = value.split(":")
            missing = [k for k in ("path", *SENSORS, "label") if k not in fields]
            if missing:
                raise SplitParseError(f"missing {missing}")
            label = fields["label"][0]
            if not is_whole_number(label) or not 1 <= int(label) <= len(CLASSES):
                raise SplitParseError(f"label {label!r} is not 1..{len(CLASSES)}")
            sensor = []
            for key in SENSORS:
                value = fields[key]
                if len(value) != 3 or not is_whole_number(value[1]) or not is_whole_number(value[2]):
                    raise SplitParseError(f"{key} should be <folder>:<start>:<end>, got {':'.join(value)!r}")
                sensor += value
            out.rows.append(SplitRow(":".join(fields["path"]), label, number, (str(index), *sensor)))
        except SplitParseError as err:
            out.skipped.append((number, text, str(err)))
    return out


def clip_folder(sample_id: str) -> str:
    """The ``path:`` value relative to the raw root (``./Video_data/...`` -> ``Video_data/...``)."""
    return sample_id[2:] if sample_id.startswith("./") else sample_id


def read_clip(path: Path, start: int, stop: int, frames: int, size: int) -> np.ndarray:
    """Frames [start, stop) of a video as uint8 (frames, size, size, 3) RGB, resized; missing frames stay zero."""
    import av
    from PIL import Image

    out = np.zeros((frames, size, size, 3), dtype=np.uint8)
    stop = min(stop, start + frames)
    got = 0
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise MediaError(path, "corrupt video", "no video stream")
            for k, frame in enumerate(container.decode(container.streams.video[0])):
                if k >= stop:
                    break
                if k >= start:
                    out[k - start] = np.asarray(frame.to_image().resize((size, size), Image.BILINEAR), dtype=np.uint8)
                    got += 1
    except (av.error.FFmpegError, OSError, ValueError) as err:
        raise MediaError(path, "corrupt video", f"cannot decode video ({type(err).__name__}: {err})") from err
    if got == 0:
        raise MediaError(path, "too few frames", f"no frame in [{start}, {stop})")
    return out


def read_flow(path: Path, frames: int, size: int, channels: int) -> np.ndarray:
    """A flow ``.npy`` (H, W, C, T) as float32 (frames, size, size, C): first ``frames`` steps, zero-padded."""
    try:
        with open(path, "rb") as f:
            magic = f.read(6)
        # np.load reads any other bytes as a pickle and refuses them with advice to load unsafely.
        if magic != b"\x93NUMPY" and not magic.startswith(b"PK\x03\x04"):
            raise MediaError(path, "corrupt flow", f"not a .npy file (it starts with {magic!r})")
        flow = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as err:
        raise MediaError(path, "corrupt flow", f"cannot read a NumPy array ({type(err).__name__}: {err})") from err
    if not isinstance(flow, np.ndarray):  # np.load opens a .npz archive whatever the file is named
        flow.close()
        raise MediaError(path, "corrupt flow", f"expected one NumPy array, got {type(flow).__name__}")
    if flow.ndim != 4 or flow.shape[2] != channels or not flow.shape[0] * flow.shape[1]:
        raise MediaError(path, "corrupt flow", f"expected (H, W, {channels}, T) as AMSS permutes it, H and W > 0, "
                                               f"got {flow.shape}")
    if flow.shape[3] == 0:
        raise MediaError(path, "too few frames", "no flow step")
    clip = torch.from_numpy(np.ascontiguousarray(flow[..., :frames], dtype=np.float32)).permute(3, 2, 0, 1)
    if clip.shape[-2:] != (size, size):
        clip = torch.nn.functional.interpolate(clip, size=(size, size), mode="bilinear", align_corners=False)
    out = np.zeros((frames, size, size, channels), dtype=np.float32)
    out[:clip.shape[0]] = clip.permute(0, 2, 3, 1).numpy()
    return out


def crop_clips(clips: torch.Tensor, tops: torch.Tensor, lefts: torch.Tensor, size: int) -> torch.Tensor:
    """Per-clip spatial crops of (B, T, H, W, C) at ``(tops, lefts)``, returned as (B, C, T, size, size)."""
    device = clips.device
    span = torch.arange(size, device=device)
    rows = (tops.to(device)[:, None] + span)[:, :, None]
    cols = (lefts.to(device)[:, None] + span)[:, None, :]
    batch = torch.arange(len(clips), device=device)[:, None, None]
    return clips[batch, :, rows, cols].permute(0, 4, 3, 1, 2)


def window(clips: torch.Tensor, starts: torch.Tensor, length: int) -> torch.Tensor:
    """Frames ``starts[i] : starts[i] + length`` of each clip (B, T, ...)."""
    index = starts.to(clips.device)[:, None] + torch.arange(length, device=clips.device)
    return clips[torch.arange(len(clips), device=clips.device)[:, None], index]


class NVGestureAugment:
    """Shared random crop + frame window (train) or centre crop of all frames (evaluation), per batch."""

    def __init__(self, hp: HParams, stored: int, frames: int) -> None:
        if hp.crop_size > stored or hp.train_frames > frames:
            raise ValueError(f"data.crop_size={hp.crop_size} / data.train_frames={hp.train_frames} exceed the cache's "
                             f"{stored} x {stored} frames / {frames} frames")
        self.hp, self.stored, self.frames = hp, stored, frames

    def __call__(self, batch: Batch, generator: torch.Generator, train: bool) -> Batch:
        hp, b, size = self.hp, len(batch["rgb"]), self.hp.crop_size
        if train:
            tops, lefts = (torch.rand((2, b), generator=generator, dtype=torch.float64)
                           * (self.stored - size + 1)).floor().long()
            starts = (torch.rand(b, generator=generator, dtype=torch.float64)
                      * (self.frames - hp.train_frames + 1)).floor().long()
            flip = torch.rand(b, generator=generator) < 0.5
        else:
            tops = lefts = torch.full((b,), int(round((self.stored - size) / 2.0)), dtype=torch.long)
        out = {}
        for name in ("rgb", "flow", "depth"):
            clips = batch[name] if batch[name].dim() == 5 else batch[name][..., None]
            if train and not (name == "flow" and hp.flow_full_clip):
                clips = window(clips, starts, hp.train_frames)
            clip = crop_clips(clips, tops, lefts, size).float()
            if train and hp.flip:
                clip = torch.where(flip.to(clip.device)[:, None, None, None, None], clip.flip(-1), clip)
            out[name] = clip
        rgb = out["rgb"] / 255.0
        if hp.channel_order == "bgr":
            rgb = rgb.flip(1)
        mean = torch.tensor(hp.mean, device=rgb.device).view(1, 3, 1, 1, 1)
        std = torch.tensor(hp.std, device=rgb.device).view(1, 3, 1, 1, 1)
        batch["rgb"], batch["flow"], batch["depth"] = (rgb - mean) / std, out["flow"], out["depth"] / 255.0
        return batch


@register_dataset
class NVGesture(PreparedDataset):
    NAME = "nvgesture"
    DESCRIPTION = "NVGesture: RGB, optical flow and depth clips, from `augbench prepare` (AMSS layout)"
    MODALITY_NAMES = ("rgb", "flow", "depth")
    CLASSES = CLASSES
    RECIPES = {"amss": Recipe("AMSS_rod/MyDataset.py: 80 frames from the list's start frame, 256 x 256; "
                              "precomputed flow .npy per list line")}
    DEFAULT_RECIPE = "amss"
    LABEL_ORDERS = ("declared", "lists")
    SHARD_SIZE = 8
    SETTINGS = (
        HParam("train_list", "nvgesture_train_correct_v2.lst", "Train list under the raw root (AMSS's name)."),
        HParam("test_list", "nvgesture_test_correct_v2.lst", "Test list under the raw root (AMSS's name)."),
        HParam("frames", 80, "Frames read per clip from the start frame (AMSS: an 80-frame container).", low=1),
        HParam("frame_size", 256, "Stored S x S frames (AMSS: cv2.resize to 256 x 256)."),
        HParam("flow_dir", "Video_data/flow_data", "Flow folder: <flow_dir>/<train|test>/<list position>.npy."),
        HParam("flow_channels", 2, "Channels of the flow arrays (x and y displacement)."),
        HParam("flow_dtype", "float16", "Storage dtype of the flow (docs/datasets/cache.md#layout).",
               choices=("float16", "float32")),
    )
    HPARAMS = cache_hparams(recipes=("amss",), recipe="amss", recipe_doc="Prepared preset: 'amss'.") + (
        HParam("crop_size", 224, "Spatial crop: random for training, centre for evaluation (AMSS: 224 of 256)."),
        HParam("train_frames", 64, "Frames of the random training window (AMSS: 64 of 80; evaluation: all)."),
        HParam("flip", False, "Horizontal flip of the whole clip (p = 0.5) in training; AMSS's flip has p = 0."),
        HParam("flow_full_clip", False, "Training flow keeps all frames (AMSS: the 64-frame window is commented out "
                                        "for flow); false = the same window as RGB and depth."),
        HParam("channel_order", "rgb", "RGB channel order fed to the network; 'bgr' = AMSS (OpenCV frames are BGR "
                                       "and never converted).", choices=("rgb", "bgr")),
        HParam("mean", list(IMAGENET_MEAN), "RGB normalisation mean (AMSS: ImageNet)."),
        HParam("std", list(IMAGENET_STD), "RGB normalisation std (AMSS: ImageNet)."),
    )

    @classmethod
    def split_files(cls, settings: HParams) -> tuple[tuple[str, ...], tuple[str, ...]]:
        return (settings.train_list, settings.test_list), ()

    @classmethod
    def read_splits(cls, files: Mapping[str, Path], raw: Path, opts: PrepareOptions, settings: HParams
                    ) -> SplitTables:
        parsed = {split: parse_nvgesture_list(files[name])
                  for split, name in (("train", settings.train_list), ("test", settings.test_list))}
        classes = cls.CLASSES
        if opts.label_order == "lists":
            classes = tuple(CLASSES[n - 1] for n in sorted({int(r.label) for p in parsed.values() for r in p.rows}))
        tables = SplitTables(classes)
        for split, p in parsed.items():
            tables.dropped += malformed_rows(p, split)
            tables.add(p, split, label_name=lambda r: CLASSES[int(r.label) - 1], duplicates=opts.duplicates,
                       speaker=lambda r: Path(r.id).name.split("_")[0])
        tables.val_group = (lambda sample: sample.speaker, "subjects")
        tables.info = {"label_map_source": {"declared": "list label N (1-based) -> class_NN",
                                            "lists": "the labels present in the two lists, in order"}[opts.label_order],
                       "skipped_lines": {p.path.name: dict(Counter(reason for _, _, reason in p.skipped))
                                         for p in parsed.values()}}
        return tables

    @classmethod
    def locate(cls, raw: Path, sample: Sample, settings: HParams) -> tuple[dict[str, str], dict[str, Any]]:
        position, color, c_start, c_end, depth, d_start, d_end = sample.row.fields
        folder = clip_folder(sample.id)
        check_inside(raw, folder)
        media = {"rgb": f"{folder}/{color}.avi", "depth": f"{folder}/{depth}.avi",
                 "flow": f"{settings.flow_dir}/{sample.split}/{position}.npy"}
        for role, rel in media.items():
            if not (raw / rel).is_file():
                raise MediaError(raw / rel, MISSING_MEDIA, f"{role} of {sample.id} not found")
        windows = {"rgb": (int(c_start), int(c_end)), "depth": (int(d_start), int(d_end))}
        return media, {"windows": windows}

    @classmethod
    def arrays(cls, settings: HParams, info: Mapping[str, Any]) -> tuple[ArraySpec, ...]:
        f, s = settings.frames, settings.frame_size
        return (ArraySpec("rgb", "uint8", (f, s, s, 3)), ArraySpec("flow", settings.flow_dtype,
                                                                   (f, s, s, settings.flow_channels)),
                ArraySpec("depth", "uint8", (f, s, s)))

    @classmethod
    def load(cls, raw: Path, record: Record, settings: HParams) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        f, s = settings.frames, settings.frame_size
        out = {}
        for role in ("rgb", "depth"):
            start, stop = record.extra["windows"][role]
            clip = read_clip(raw / record.media[role], start, stop, f, s)
            # OpenCV's frame[..., 0] of a BGR frame is blue: index 2 of RGB.
            out[role] = clip if role == "rgb" else np.ascontiguousarray(clip[..., 2])
        flow = read_flow(raw / record.media["flow"], f, s, settings.flow_channels)
        # before the range check: NaN compares false there and would reach every batch holding this clip
        if not np.isfinite(flow).all():
            raise MediaError(raw / record.media["flow"], "non-finite features", "flow holds NaN or inf")
        if np.abs(flow).max(initial=0.0) > np.finfo(settings.flow_dtype).max:
            raise MediaError(raw / record.media["flow"], "feature overflow", f"flow exceeds {settings.flow_dtype}")
        out["flow"] = flow.astype(settings.flow_dtype)
        return out, {}

    @classmethod
    def deviations(cls, settings: HParams) -> list[str]:
        return ["frames resized with PIL bilinear (antialiased); AMSS uses cv2.resize INTER_LINEAR",
                "depth keeps the blue channel of the decoded RGB frame, as OpenCV's frame[..., 0] of BGR"]

    @classmethod
    def serve(cls, cache: Cache, hp: HParams) -> tuple[TaskSpec, Gather, Augment]:
        rgb, flow, depth = cache.arrays["rgb"], cache.arrays["flow"], cache.arrays["depth"]
        frames, stored = rgb.shape[1], rgb.shape[2]
        augment = NVGestureAugment(hp, stored, frames)
        t, c = hp.train_frames, hp.crop_size
        task = TaskSpec(cls.NAME, len(cache.classes),
                        (ModalitySpec("rgb", "frames", (3, t, c, c)),
                         ModalitySpec("flow", "frames", (flow.shape[-1], frames if hp.flow_full_clip else t, c, c)),
                         ModalitySpec("depth", "frames", (1, t, c, c))), cache.classes)

        def gather(rows: np.ndarray) -> dict[str, torch.Tensor]:
            return {"rgb": torch.from_numpy(np.ascontiguousarray(rgb[rows])),
                    "flow": torch.from_numpy(np.ascontiguousarray(flow[rows])),
                    "depth": torch.from_numpy(np.ascontiguousarray(depth[rows]))}

        return task, gather, augment
