"""Frame extraction (docs/datasets/recipes.md): frames at 1 fps from a video, or from an already extracted frame folder.

From a video (``frames_1fps``, GitHub: GeWu-Lab/OGM-GE_CVPR2022, ``data/CREMAD/video_preprocessing.py``,
``video2frame_update``): decode every frame with PyAV and keep the first frame of every second, where a second is
``int(fps)`` decoded frames (truncated, as the published ``int(CAP_PROP_FPS)``). Frames are *counted as decoded*: FLV
files written by common tools report no frame count or duration (docs/datasets/pitfalls.md#video-metadata), and the
published loop's ``CAP_PROP_FRAME_COUNT`` bound is not trusted. The published script writes each kept frame as a JPEG
and the loaders read it back; here the decoded frame goes straight to storage (no JPEG round trip, a declared
deviation).

From a folder (``Image-01-FPS/<clip>/`` and friends): every image file, in natural numeric order of the file names,
so ``00000.jpg``/``00030.jpg``, ``frame_00001.jpg``, ``frame_000010.jpg`` vs ``frame_00009.jpg`` and unpadded names all
sort by their numbers, never by directory listing order (docs/datasets/pitfalls.md, items 1-3).

Stored frames are resized to a fixed ``(H, W)`` with PIL bilinear (antialiased when shrinking), the interpolation
the published transforms apply to PIL images.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from datasets.media import MISSING_MEDIA, MediaError, is_lfs_pointer, lfs_error
from datasets.splits import natural_key

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")
INTERPOLATION = "PIL bilinear (antialiased when downscaling)"


def frame_files(folder: Path) -> list[Path]:
    """Image files of ``folder`` in natural numeric order of their names (never directory listing order)."""
    folder = Path(folder)
    names = [n for n in os.listdir(folder) if Path(n).suffix.lower() in IMAGE_SUFFIXES and (folder / n).is_file()]
    return [folder / n for n in sorted(names, key=natural_key)]


def to_storage(image, size: tuple[int, int] | None) -> np.ndarray:
    """A PIL image as uint8 ``(H, W, 3)`` RGB at the storage ``size`` = (H, W) (``None`` keeps its size)."""
    from PIL import Image

    image = image.convert("RGB")
    if size is not None and (image.height, image.width) != tuple(size):
        image = image.resize((size[1], size[0]), Image.BILINEAR)
    return np.asarray(image, dtype=np.uint8)


def load_image(path: Path, size: tuple[int, int] | None) -> np.ndarray:
    """Decode one image file to uint8 ``(H, W, 3)``; a truncated or unreadable file raises ``MediaError``."""
    from PIL import Image, UnidentifiedImageError

    if is_lfs_pointer(path):
        raise lfs_error(path)
    try:
        with Image.open(path) as image:
            image.load()
            return to_storage(image, size)
    except (UnidentifiedImageError, OSError, ValueError) as err:
        raise MediaError(path, "corrupt image", f"cannot decode image ({type(err).__name__}: {err})") from err


def _image_size(path: Path) -> tuple[int, int]:
    """(H, W) of an image file from its header (the file has already been decoded once)."""
    from PIL import Image

    with Image.open(path) as image:
        return image.height, image.width


def load_frame_folder(folder: Path, size: tuple[int, int] | None) -> tuple[np.ndarray, dict]:
    """All frames of an extracted frame folder, naturally sorted.

    Returns:
        (uint8 ``(n, H, W, 3)``, {"source_size": (H, W) of the first frame before resizing, or None without frames}),
        as ``extract_frames`` returns a video's.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise MediaError(folder, MISSING_MEDIA, "frame folder missing")
    files = frame_files(folder)
    frames = [load_image(p, size) for p in files]
    if not frames:
        return np.zeros((0, *(size or (0, 0)), 3), dtype=np.uint8), {"source_size": None}
    shapes = {f.shape for f in frames}
    if len(shapes) > 1:
        raise MediaError(folder, "corrupt image", f"frames of different sizes {sorted(shapes)}; give a storage size")
    return np.stack(frames), {"source_size": _image_size(files[0])}


def kept_frame(position_in_second: int, fps: int, per_second: int) -> bool:
    """OGM-GE's ``video2frame_update`` rule: ``per_second`` evenly spaced frames at the start of each second."""
    interval = max(fps // per_second, 1)
    return position_in_second < interval * per_second and position_in_second % interval == 0


def extract_frames(path: Path, size: tuple[int, int] | None, per_second: int = 1) -> tuple[np.ndarray, dict]:
    """Decode a video and keep ``per_second`` frames of every second (1 = the first frame of each second).

    Returns:
        (uint8 ``(n, H, W, 3)``, {"fps": int(fps) used for second boundaries, "decoded": frames decoded,
        "source_size": (H, W) of the decoded frames before resizing, or None when none was kept}).

    Raises:
        MediaError: unreadable container, no video stream, or unknown frame rate.
    """
    import av

    path = Path(path)
    if is_lfs_pointer(path):
        raise lfs_error(path)
    kept: list[np.ndarray] = []
    count = 0
    source_size = None
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise MediaError(path, "corrupt video", "no video stream")
            stream = container.streams.video[0]
            rate = stream.average_rate or stream.guessed_rate or stream.base_rate
            fps = int(rate) if rate else 0
            if fps < 1:
                raise MediaError(path, "corrupt video", f"frame rate unknown or below 1 ({rate})")
            for frame in container.decode(stream):
                if kept_frame(count % fps, fps, per_second):
                    source_size = source_size or (frame.height, frame.width)
                    kept.append(to_storage(frame.to_image(), size))
                count += 1
    except (av.error.FFmpegError, OSError, ValueError) as err:
        raise MediaError(path, "corrupt video", f"cannot decode video ({type(err).__name__}: {err})") from err
    frames = np.stack(kept) if kept else np.zeros((0, *(size or (0, 0)), 3), dtype=np.uint8)
    return frames, {"fps": fps, "decoded": count, "source_size": source_size}
