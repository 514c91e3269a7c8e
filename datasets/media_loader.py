"""Per-sample media loading the way the published loaders do it, as a reference and a speed baseline.

``MediaDataset.__getitem__`` does, for one clip, what OGM-GE's ``CramedDataset`` (GitHub: GeWu-Lab/OGM-GE_CVPR2022,
``dataset/CramedDataset.py``) and its descendants do: decode the audio file and compute the audio pipeline's
features, list the clip's frames, decode the chosen JPEGs (or decode the video when no frame folder exists) and run
torchvision's PIL transforms on each frame (train: RandomResizedCrop(S), RandomHorizontalFlip, ToTensor, ImageNet
Normalize; test: Resize((S, S)), ToTensor, Normalize), or BML's serving when asked (``crop_per: clip``: one crop box
and flip per clip, GitHub: GeWu-Lab/BML_TPAMI2024 ``code/dataset/KS.py``; ``eval_view: short_side_center``:
Resize(S), CenterCrop(S), its ``code/dataset/spatial_transforms.py``). It differs from the published code only where
those were bugs: frames are chosen from the *sorted* listing with the same rule as the cache loader (``segments`` or
``first_k``), and the audio pipeline is the cached one. It is used to check that the cache reproduces on-the-fly
features, and by ``benchmarks.bench_data`` to measure what the cache saves. Training never uses it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from datasets.augment import (
    CROP_PER,
    CROP_SCALE,
    EVAL_VIEWS,
    FLIP_PROB,
    IMAGENET_MEAN,
    IMAGENET_STD,
    check_choice,
    frame_offsets,
)
from datasets.cache import Cache
from datasets.media.audio import AudioPipeline, features_from_file
from datasets.media.video import extract_frames, frame_files


@dataclass(frozen=True)
class MediaItem:
    """One clip's raw media.

    Attributes:
        row: cache row (served as ``index``).
        label: integer label.
        audio: audio file.
        visual: frame folder or video file.
        visual_kind: ``frames`` or ``video``.
    """

    row: int
    label: int
    audio: Path
    visual: Path
    visual_kind: str


def items_from_cache(cache: Cache, rows: np.ndarray, raw_root: Path | None = None) -> list[MediaItem]:
    """The raw media of cache ``rows``, found through ``index.csv`` under ``raw_root`` (default: the manifest's)."""
    root = Path(raw_root) if raw_root is not None else Path(cache.manifest["raw_root"])
    kind = cache.manifest["visual"]["source"]
    index = cache.index
    return [MediaItem(int(r), int(index["label"][r]), root / index["audio_path"][r], root / index["visual_path"][r],
                      kind) for r in rows]


class MediaDataset(torch.utils.data.Dataset):
    """Per-item decoding + features + transforms, as a ``torch.utils.data.Dataset``.

    Args:
        items: the clips.
        pipeline: the audio pipeline (normally the cache's).
        num_frames: T frames per clip.
        image_size: S.
        train: random transforms and frame choice (True) or the deterministic test view.
        frame_rule: ``segments`` or ``first_k`` (as the cache loader).
        frames_per_second: frames kept per second when decoding a video.
        seed: seed of this dataset's frame-choice generator.
        crop_scale: RandomResizedCrop's area range (``data.crop_scale``).
        crop_per: ``frame`` or ``clip`` (``data.crop_per``).
        eval_view: ``resize`` or ``short_side_center`` (``data.eval_view``).
    """

    def __init__(self, items: list[MediaItem], pipeline: AudioPipeline, *, num_frames: int, image_size: int,
                 train: bool, frame_rule: str = "segments", frames_per_second: int = 1, seed: int = 0,
                 crop_scale: tuple[float, float] = CROP_SCALE, crop_per: str = "frame",
                 eval_view: str = "resize") -> None:
        from torchvision import transforms

        check_choice("data.crop_per", crop_per, CROP_PER)
        check_choice("data.eval_view", eval_view, EVAL_VIEWS)
        self.items = items
        self.pipeline = pipeline
        self.num_frames = num_frames
        self.train = train
        self.frame_rule = frame_rule
        self.frames_per_second = frames_per_second
        self.generator = torch.Generator().manual_seed(seed)
        self.per_clip = train and crop_per == "clip"
        self.crop = transforms.RandomResizedCrop(image_size, scale=tuple(crop_scale))
        self.finish = transforms.Compose([transforms.ToTensor(), transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
        if train:
            views = [self.crop, transforms.RandomHorizontalFlip()]
        elif eval_view == "short_side_center":
            views = [transforms.Resize(image_size), transforms.CenterCrop(image_size)]
        else:
            views = [transforms.Resize((image_size, image_size))]
        self.transform = transforms.Compose([*views, self.finish])

    def __len__(self) -> int:
        return len(self.items)

    def _offsets(self, count: int) -> list[int]:
        offsets = frame_offsets(torch.tensor([count]), self.num_frames, self.frame_rule, self.train, self.generator)
        return offsets[0].tolist()

    def _frames(self, item: MediaItem) -> list:
        from PIL import Image

        if item.visual_kind == "frames":
            files = frame_files(item.visual)
            chosen = [files[k] for k in self._offsets(len(files))]
            images = []
            for path in chosen:
                with Image.open(path) as image:
                    images.append(image.convert("RGB"))
            return images
        frames, _ = extract_frames(item.visual, None, self.frames_per_second)
        return [Image.fromarray(frames[k]) for k in self._offsets(len(frames))]

    def __getitem__(self, i: int) -> dict[str, Any]:
        item = self.items[i]
        features = torch.from_numpy(features_from_file(self.pipeline, item.audio)[0])
        crop = self.pipeline.serve_frames
        if crop:
            start = int(torch.randint(0, features.shape[1] - crop + 1, (1,), generator=self.generator)) \
                if self.train else 0
            features = features[:, start:start + crop]
        images = self._frames(item)
        views = self._clip_views(images) if self.per_clip else [self.transform(image) for image in images]
        visual = torch.stack(views).permute(1, 0, 2, 3)
        return {"audio": features[None], "visual": visual, "label": torch.tensor(item.label),
                "index": torch.tensor(item.row)}

    def _clip_views(self, images: list) -> list[torch.Tensor]:
        """One RandomResizedCrop box and one flip draw for all of a clip's frames (torch's global generator, as the
        per-frame transforms draw), as BML's ``randomize_parameters`` fixes them once per clip."""
        from torchvision.transforms import functional as TF

        box = self.crop.get_params(images[0], self.crop.scale, self.crop.ratio)
        mirror = bool(torch.rand(1) < FLIP_PROB)
        views = []
        for image in images:
            view = TF.resized_crop(image, *box, self.crop.size, self.crop.interpolation, antialias=True)
            views.append(self.finish(TF.hflip(view) if mirror else view))
        return views
