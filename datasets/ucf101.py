"""``ucf101``: UCF-101 actions from RGB frames and optical flow (101 classes; docs/datasets/ucf101.md), as
BalanceBenchmark reads it (GitHub: GeWu-Lab/BalanceBenchmark, ``balancemm/datasets/ucf101_dataset.py``,
``configs/dataset_config.yaml``).

Raw layout (folder names are settings; the defaults are BalanceBenchmark's config)::

    ucfTrainTestlist/classInd.txt       "1 ApplyEyeMakeup" per line
    ucfTrainTestlist/trainlist0N.txt    "ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi 1" (1-based classInd number)
    ucfTrainTestlist/testlist0N.txt     paths only
    ucf101-frames-1fps/video-set/<name>/frame_0000{k}.jpg    RGB at 1 fps (rgb_source=frames), or
    UCF-101/<Class>/<name>.avi                               decoded at 1 fps here (rgb_source=video)
    u/<name>/frame00{k:04d}.jpg, v/<name>/...                TV-L1-style flow as greyscale JPEGs (not computed here)

``<name>`` is the list path's basename before its first dot. Split ``N`` = setting ``split`` (published: 1, 2, 3;
split 1 has 9,537 / 3,783 videos [R]). Label map: ``sorted`` (default, BalanceBenchmark: indices into the sorted
``classInd`` names; labels come from the class folder in the path) or ``classind`` (the file's own numbering).
``classInd`` is the class list, the data-defined analogue of CREMA-D's ``stat.csv``. A train row whose number
disagrees with its class folder is a bad item. Validation: none is published (``validation: false``), so a
stratified, seeded hold-out of train is used and recorded, of whole groups (``_gNN_``: the clips of one actor and
scene, which the published splits keep apart) so that validation clips never share a group with training clips; a
clip whose name has no group is held out on its own (counted as ``train_clips_without_group``).

Prepare (recipe ``bb``): the first ``rgb_frames`` (6: BalanceBenchmark only ever reads ``frame_00001`` ..
``frame_00006``) RGB frames in natural file-name order and every flow frame (u and v must pair up), all resized to
224 x 224 (BalanceBenchmark's ``Resize((224, 224))``, PIL bilinear), stored ragged as uint8: RGB (n, 224, 224, 3),
flow (n, 224, 224, 2). Full UCF-101 flow is large (about 2.5 M frame pairs at 100 kB); ``flow_max_frames`` keeps
that many evenly spaced frames instead (a declared deviation: training then samples from the subset).

Serving (per batch): 3 frames per modality picked as BalanceBenchmark does, 1-based ``randint(i*seg + 1, i*seg +
seg)`` in training and ``i*seg + max(seg // 2, 1)`` in evaluation with ``seg = n // 3`` (n = 6 for RGB, the flow
frame count for flow), clamped to the frames that exist; a horizontal flip per frame in training (for flow, u and
v together: BalanceBenchmark flips them independently and never negates u, which we keep). RGB is
ImageNet-normalised, flow scaled to [0, 1] without normalisation (``a_norm`` false). Order (visual, flow).
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from core.data import Augment, Batch, Gather, ModalitySpec, TaskSpec
from core.hparams import HParam, HParams
from datasets.augment import IMAGENET_MEAN, IMAGENET_STD
from datasets.cache import ArraySpec, Cache
from datasets.media import MISSING_MEDIA, MediaError
from datasets.media.video import extract_frames, frame_files, load_image
from datasets.prepared import PreparedDataset, Recipe, Record, cache_hparams
from datasets.registry import register_dataset
from datasets.splits import ParsedList, SplitParseError, SplitRow, is_whole_number, read_lines
from datasets.tables import Dropped, PrepareOptions, Sample, SplitTables, malformed_rows

# ``v_<Class>_g08_c01``: clip 1 of group 8, the videos of one actor and scene (the published splits keep groups apart).
CLIP_GROUP = re.compile(r"_g(\d+)_c\d+$")
FRAMES_SERVED = 3


def parse_class_index(path: Path) -> list[tuple[int, str]]:
    """``classInd.txt``: ``(number, name)`` per line; numbers and names must be unique."""
    lines, _, _ = read_lines(path)
    out = []
    for number, text in enumerate(lines, start=1):
        if not text.strip():
            continue
        fields = text.split()
        if len(fields) != 2 or not is_whole_number(fields[0]):
            raise SplitParseError(f"{path}:{number}: expected '<number> <ClassName>', got {text!r}")
        out.append((int(fields[0]), fields[1]))
    for what, values in (("number", [n for n, _ in out]), ("class", [c for _, c in out])):
        repeated = [v for v, c in Counter(values).items() if c > 1]
        if repeated:
            raise SplitParseError(f"{path}: {what}(s) listed twice: {repeated}")
    if not out:
        raise SplitParseError(f"{path}: no classes")
    return out


def parse_video_list(path: Path, labelled: bool) -> ParsedList:
    """``trainlist0N.txt`` (``<Class>/<file>.avi <number>``) or ``testlist0N.txt`` (path only).

    Rows: ``SplitRow(path without extension, class folder, line, (path, number or ""))``.
    """
    lines, bom, endings = read_lines(path)
    out = ParsedList(Path(path), bom=bom, line_endings=endings)
    for number, text in enumerate(lines, start=1):
        if not text.strip():
            out.skipped.append((number, text, "blank line"))
            continue
        fields = text.split()
        expected = 2 if labelled else 1
        if len(fields) != expected or "/" not in fields[0] or (labelled and not is_whole_number(fields[1])):
            out.skipped.append((number, text, f"expected '<Class>/<video>.avi{' <number>' if labelled else ''}'"))
            continue
        video = fields[0]
        out.rows.append(SplitRow(video.rsplit(".", 1)[0], video.split("/")[0], number,
                                 (video, fields[1] if labelled else "")))
    return out


def clip_name(row: SplitRow) -> str:
    """BalanceBenchmark's name: the basename before its first dot."""
    return row.fields[0].split("/")[1].split(".")[0]


def clip_group(sample: Sample) -> str:
    """The hold-out unit of a train clip: its class and gNN group, or the clip itself when its name has no group."""
    match = CLIP_GROUP.search(clip_name(sample.row))
    return f"{sample.label_name}/g{int(match[1])}" if match else sample.id


def bb_offsets(counts: torch.Tensor, pool: torch.Tensor, train: bool, generator: torch.Generator | None
               ) -> torch.Tensor:
    """(B, 3) 0-based frame positions, BalanceBenchmark's segment rule over ``pool`` frames per clip.

    ``seg = pool // 3``; 1-based picks ``randint(i*seg + 1, i*seg + seg)`` (train) or ``i*seg + max(seg // 2, 1)``
    (evaluation), minus 1, clamped to ``counts - 1`` (BalanceBenchmark fails on clips with too few frames).
    """
    seg = (pool // FRAMES_SERVED).clamp(min=1)[:, None]
    i = torch.arange(FRAMES_SERVED)[None]
    if train:
        u = torch.rand((len(counts), FRAMES_SERVED), generator=generator, dtype=torch.float64)
        pos = i * seg + (u * seg).floor().long()
    else:
        pos = i * seg + (seg // 2).clamp(min=1) - 1
    return torch.minimum(pos, counts[:, None] - 1)


class UCFAugment:
    """Picks 3 RGB and 3 flow frames per clip (``bb_offsets``), flips per frame in training, normalises."""

    def __init__(self, hp: HParams, rgb: np.ndarray, flow: np.ndarray) -> None:
        self.hp, self.rgb, self.flow = hp, rgb, flow

    def frames(self, store: np.ndarray, starts: torch.Tensor, offsets: torch.Tensor, device: torch.device
               ) -> torch.Tensor:
        index = (starts[:, None] + offsets).reshape(-1).numpy()
        unique, inverse = np.unique(index, return_inverse=True)
        block = torch.from_numpy(np.ascontiguousarray(store[unique])).to(device)
        return block[torch.from_numpy(inverse.reshape(-1)).to(device)].permute(0, 3, 1, 2).float() / 255.0

    def __call__(self, batch: Batch, generator: torch.Generator, train: bool) -> Batch:
        device = batch["label"].device
        out = {}
        for name, store in (("visual", self.rgb), ("flow", self.flow)):
            starts, counts = batch.pop(f"_{name}_start").cpu(), batch.pop(f"_{name}_count").cpu()
            pool = torch.full_like(counts, self.hp.rgb_file_num) if name == "visual" else counts
            images = self.frames(store, starts, bb_offsets(counts, pool, train, generator), device)
            if train and self.hp.flip:
                flip = (torch.rand(len(images), generator=generator) < 0.5).to(device)
                images = torch.where(flip[:, None, None, None], images.flip(-1), images)
            b, c = len(starts), images.shape[1]
            out[name] = images.view(b, FRAMES_SERVED, c, *images.shape[-2:]).permute(0, 2, 1, 3, 4)
        mean = torch.tensor(self.hp.mean, device=device).view(1, 3, 1, 1, 1)
        std = torch.tensor(self.hp.std, device=device).view(1, 3, 1, 1, 1)
        batch["visual"] = (out["visual"] - mean) / std
        batch["flow"] = out["flow"].contiguous()
        return batch


@register_dataset
class UCF101(PreparedDataset):
    NAME = "ucf101"
    DESCRIPTION = "UCF-101: RGB frames + optical flow, from `augbench prepare` (BalanceBenchmark layout)"
    MODALITY_NAMES = ("visual", "flow")
    RECIPES = {"bb": Recipe("BalanceBenchmark ucf101_dataset.py: first 6 RGB frames at 1 fps and every flow frame, "
                            "Resize((224, 224))")}
    DEFAULT_RECIPE = "bb"
    SPLITS_IN_RAW = "ucfTrainTestlist"
    LABEL_ORDERS = ("sorted", "classind")
    SHARD_SIZE = 16
    SETTINGS = (
        HParam("split", 1, "Published split number N (trainlist0N / testlist0N); BalanceBenchmark uses 1.",
               choices=(1, 2, 3)),
        HParam("rgb_source", "frames", "RGB from 1 fps frame folders (BalanceBenchmark) or decoded from the videos "
                                       "at 1 fps here.", choices=("frames", "video")),
        HParam("rgb_dir", "ucf101-frames-1fps/video-set", "RGB frame folders (BalanceBenchmark visual_path)."),
        HParam("video_dir", "UCF-101", "Videos <video_dir>/<Class>/<name>.avi (rgb_source=video)."),
        HParam("flow_u_dir", "u", "Horizontal flow frame folders (BalanceBenchmark flow_path_u)."),
        HParam("flow_v_dir", "v", "Vertical flow frame folders (BalanceBenchmark flow_path_v)."),
        HParam("rgb_frames", 6, "RGB frames stored per clip: the first ones (BalanceBenchmark file_num = 6)."),
        HParam("flow_max_frames", 0, "Flow frames stored per clip, evenly spaced; 0 = all (exact)."),
        HParam("frame_size", 224, "Stored S x S frames (BalanceBenchmark Resize((224, 224)))."),
    )
    HPARAMS = cache_hparams(recipes=("bb",), recipe="bb", recipe_doc="Prepared preset: 'bb'.") + (
        HParam("rgb_file_num", 6, "Frames the RGB segments are drawn from (BalanceBenchmark file_num = 6)."),
        HParam("flip", True, "Training horizontal flip per frame (BalanceBenchmark RandomHorizontalFlip)."),
        HParam("mean", list(IMAGENET_MEAN), "RGB normalisation mean (BalanceBenchmark v_norm: ImageNet)."),
        HParam("std", list(IMAGENET_STD), "RGB normalisation std (BalanceBenchmark v_norm: ImageNet)."),
    )

    @classmethod
    def split_files(cls, settings: HParams) -> tuple[tuple[str, ...], tuple[str, ...]]:
        n = settings.split
        return ("classInd.txt", f"trainlist0{n}.txt", f"testlist0{n}.txt"), ()

    @classmethod
    def read_splits(cls, files: Mapping[str, Path], raw: Path, opts: PrepareOptions, settings: HParams
                    ) -> SplitTables:
        index = parse_class_index(files["classInd.txt"])
        by_number = dict(index)
        classes = tuple(sorted(by_number.values())) if opts.label_order == "sorted" else \
            tuple(name for _, name in sorted(index))
        tables = SplitTables(classes)
        skipped = {}
        n = settings.split
        for split, name, labelled in (("train", f"trainlist0{n}.txt", True), ("test", f"testlist0{n}.txt", False)):
            parsed = parse_video_list(files[name], labelled)
            tables.dropped += malformed_rows(parsed, split)
            if labelled:
                agree = []
                for r in parsed.rows:
                    if by_number.get(int(r.fields[1])) == r.label:
                        agree.append(r)
                        continue
                    tables.dropped.append(Dropped(r.id, split, "label mismatch", f"number {r.fields[1]} is "
                                                  f"{by_number.get(int(r.fields[1]))!r} in classInd.txt, the path "
                                                  f"says {r.label!r}", parsed.where(r), bad=True))
                parsed.rows = agree
            tables.add(parsed, split, label_name=lambda r: r.label, duplicates=opts.duplicates)
            skipped[name] = dict(Counter(reason for _, _, reason in parsed.skipped))
        tables.val_group = (clip_group, "gNN groups of a class")
        tables.info = {"label_map_source": {"sorted": "sorted classInd.txt names (BalanceBenchmark)",
                                            "classind": "classInd.txt numbering"}[opts.label_order],
                       "split": n, "skipped_lines": skipped,
                       "train_clips_without_group": sum(clip_group(s) == s.id for s in tables.splits.get("train", []))}
        return tables

    @classmethod
    def locate(cls, raw: Path, sample: Sample, settings: HParams) -> tuple[dict[str, str], dict[str, Any]]:
        row = sample.row
        name = clip_name(row)
        rgb = f"{settings.video_dir}/{row.fields[0]}" if settings.rgb_source == "video" else \
            f"{settings.rgb_dir}/{name}"
        media = {"visual": rgb, "flow_u": f"{settings.flow_u_dir}/{name}", "flow_v": f"{settings.flow_v_dir}/{name}"}
        for role, rel in media.items():
            path = raw / rel
            if not (path.is_file() if role == "visual" and settings.rgb_source == "video" else path.is_dir()):
                raise MediaError(path, MISSING_MEDIA, f"{role} of {sample.id} not found")
        return media, {}

    @classmethod
    def arrays(cls, settings: HParams, info: Mapping[str, Any]) -> tuple[ArraySpec, ...]:
        s = settings.frame_size
        return (ArraySpec("visual", "uint8", (s, s, 3), ragged=True),
                ArraySpec("flow", "uint8", (s, s, 2), ragged=True))

    @classmethod
    def load(cls, raw: Path, record: Record, settings: HParams) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        size = (settings.frame_size, settings.frame_size)
        if settings.rgb_source == "video":
            rgb = extract_frames(raw / record.media["visual"], size, 1)[0][:settings.rgb_frames]
        else:
            files = frame_files(raw / record.media["visual"])[:settings.rgb_frames]
            rgb = np.stack([load_image(p, size) for p in files]) if files else np.zeros((0, *size, 3), np.uint8)
        if len(rgb) == 0:
            raise MediaError(raw / record.media["visual"], "too few frames", "no RGB frame")
        u, v = (frame_files(raw / record.media[k]) for k in ("flow_u", "flow_v"))
        if [p.stem for p in u] != [p.stem for p in v] or not u:
            unpaired = sorted({p.stem for p in u} ^ {p.stem for p in v})[:3]
            raise MediaError(raw / record.media["flow_u"], "flow u/v mismatch",
                             f"{len(u)} u and {len(v)} v flow frames; each u frame pairs with the v frame of the same "
                             f"name and none may be missing (unpaired: {unpaired})")
        keep = np.arange(len(u))
        if settings.flow_max_frames and len(u) > settings.flow_max_frames:
            keep = np.round(np.linspace(0, len(u) - 1, settings.flow_max_frames)).astype(int)
        flow = np.stack([np.stack([load_image(u[k], size)[..., 0], load_image(v[k], size)[..., 0]], -1)
                         for k in keep])
        return {"visual": rgb, "flow": flow}, {"rgb_frames": len(rgb), "flow_frames": len(u)}

    @classmethod
    def manifest_entries(cls, settings: HParams, facts: Sequence[Mapping[str, Any]],
                         totals: Mapping[str, int]) -> dict[str, Any]:
        # Kept and served by repeating frames, where BalanceBenchmark's loader would not serve them as it does other
        # clips (a missing RGB frame file; random.randint on an empty range for flow in training), so they are counted.
        return {**super().manifest_entries(settings, facts, totals),
                "counts": {"rgb_clips_under_rgb_frames": sum(f["rgb_frames"] < settings.rgb_frames for f in facts),
                           "flow_clips_under_3_frames": sum(f["flow_frames"] < FRAMES_SERVED for f in facts)},
                "policies": {"short_clips": f"clips with fewer than rgb_frames {settings.rgb_frames} RGB frames or "
                                            f"{FRAMES_SERVED} flow frames are kept and repeat frames at load"}}

    @classmethod
    def deviations(cls, settings: HParams) -> list[str]:
        out = ["flow u and v are flipped together in training (BalanceBenchmark flips them independently)"]
        if settings.flow_max_frames:
            out.append(f"flow keeps at most {settings.flow_max_frames} evenly spaced frames per clip")
        if settings.rgb_source == "video":
            out.append("RGB frames decoded from the videos at 1 fps without the JPEG round trip")
        return out

    @classmethod
    def serve(cls, cache: Cache, hp: HParams) -> tuple[TaskSpec, Gather, Augment]:
        rgb, flow = cache.arrays["visual"], cache.arrays["flow"]
        s = rgb.shape[1]
        task = TaskSpec(cls.NAME, len(cache.classes),
                        (ModalitySpec("visual", "frames", (3, FRAMES_SERVED, s, s)),
                         ModalitySpec("flow", "frames", (2, FRAMES_SERVED, s, s))), cache.classes)
        offsets = {name: (torch.from_numpy(cache.starts[name]), torch.from_numpy(cache.counts[name]))
                   for name in ("visual", "flow")}

        def gather(rows: np.ndarray) -> dict[str, torch.Tensor]:
            index = torch.from_numpy(rows)
            out = {}
            for name, (starts, counts) in offsets.items():
                out[f"_{name}_start"], out[f"_{name}_count"] = starts[index], counts[index]
            return out

        return task, gather, UCFAugment(hp, rgb, flow)
