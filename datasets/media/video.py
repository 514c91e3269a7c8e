"""Frame extraction (docs/datasets/recipes.md): frames at 1 fps from a video, or from an already extracted frame folder.

From a video (``frames_1fps``, GitHub: GeWu-Lab/OGM-GE_CVPR2022, ``data/CREMAD/video_preprocessing.py``,
``video2frame_update``): decode every frame with PyAV and keep the first frame of every second, where a second is
``int(fps)`` decoded frames (truncated, as the published ``int(CAP_PROP_FPS)``). Frames are *counted as decoded*: FLV
files written by common tools report no frame count or duration (docs/datasets/pitfalls.md#video-metadata), and the
published loop's ``CAP_PROP_FRAME_COUNT`` bound is not trusted. The published script writes each kept frame as a JPEG
and the loaders read it back; here the decoded frame goes straight to storage (no JPEG round trip, a declared
deviation).

Other extraction rules (``EXTRACTIONS``) choose other frames of the decoded video:

- ``frames_1fps_min3`` (PMR, GitHub: fanyunfeng-bit/Modal-Imbalance-PMR, ``data/CREMAD/video_preprocessing.py``,
  ``video2frame_update(min_save_frame=3)``): as ``frames_1fps``, then a clip with fewer than 3 kept frames gets extra
  ones. PMR draws them at random (``np.random.randint``, unseeded); here they are evenly spaced over the frames not
  kept (``top_up_indices``), so that a rebuild gives the same cache.
- ``frames_1fps_min10`` (PMR's AVE, ``data/AVE/video_preprocessing.py``, ``video2frame_update_SE(min_save_frame=10)``):
  the same with 10 frames; on an event segment (``seconds``) the extra frames come from the segment's seconds
  [Start, End) (``top_up_span``), as PMR draws them.
- ``frames_hdf5_mid`` (BML's hdf5 frames, GitHub: GeWu-Lab/AV_preprocess_tool, ``video_2_frame.py``,
  ``extract_frames``): the middle frame of each second (``mid_second_indices``). How many seconds count depends on the
  clip's frame count, known only once it is decoded: every second's middle frame is kept on the way and the extra
  ones dropped at the end.

From a folder (``Image-01-FPS/<clip>/`` and friends): every image file, in natural numeric order of the file names,
so ``00000.jpg``/``00030.jpg``, ``frame_00001.jpg``, ``frame_000010.jpg`` vs ``frame_00009.jpg`` and unpadded names all
sort by their numbers, never by directory listing order (docs/datasets/pitfalls.md, items 1-3).

Stored frames are resized to a fixed ``(H, W)`` with PIL bilinear (antialiased when shrinking), the interpolation
the published transforms apply to PIL images.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from datasets.media import MISSING_MEDIA, MediaError, is_lfs_pointer, lfs_error
from datasets.splits import natural_key

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")
INTERPOLATION = "PIL bilinear (antialiased when downscaling)"


def frame_files(folder: Path) -> list[Path]:
    """Image files of ``folder`` in natural numeric order of their names (never directory listing order). A link
    whose target is gone stays listed, so that loading it fails as a bad item: left out, it would shorten the clip
    without a count and shift every later frame's position (and so its second)."""
    folder = Path(folder)
    names = [n for n in os.listdir(folder) if Path(n).suffix.lower() in IMAGE_SUFFIXES and not (folder / n).is_dir()]
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

    if not path.exists():
        raise MediaError(path, MISSING_MEDIA, "image missing (a link to a file that is gone?)")
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


@dataclass(frozen=True)
class Extraction:
    """A rule choosing which decoded frames of a video are stored (``EXTRACTIONS``); recipes name one.

    Attributes:
        name: registry key.
        follows: the published extraction reproduced.
        deviation: what differs from it, and why ("" = nothing beyond the shared JPEG round trip).
        minimum: frames a clip with fewer kept frames is topped up to (0 = none).
    """

    name: str
    follows: str
    deviation: str = ""
    minimum: int = 0


FIRST_OF_SECOND = "frames_1fps"
PMR_TOP_UP = "frames_1fps_min3"
PMR_AVE_TOP_UP = "frames_1fps_min10"
MID_OF_SECOND = "frames_hdf5_mid"
# PMR's extractImage calls video2frame_update(..., min_save_frame=3) (data/CREMAD/video_preprocessing.py): its loader
# draws num_frame = 3 frames without replacement (dataset/CramedDataset.py), which fails on fewer.
PMR_MIN_FRAMES = 3
# PMR's AVE extractImage_SE calls video2frame_update_SE(..., min_save_frame=10) (data/AVE/video_preprocessing.py); its
# AVE loader (dataset/AVEDataset.py) reads the first num_frame files of the folder, which fails on fewer.
PMR_AVE_MIN_FRAMES = 10
# Frame rates at which the published hdf5 extraction reads the frames it computes: below 2 fps the first position
# rounds to 0 and moviepy's reader restarts, shifting every later frame; above 100 fps a jump of over 100 frames
# restarts the reader at frame 1 (video_2_frame.py read_frame calls reader.initialize() without a start time).
MID_RATES = (2, 100)
_EVEN_TOP_UP = ("the top-up frames are evenly spaced over the frames not kept (PMR draws them with an unseeded "
                "np.random.randint, so its folders differ run to run)")
EXTRACTIONS = {e.name: e for e in (
    Extraction(FIRST_OF_SECOND, "GitHub: GeWu-Lab/OGM-GE_CVPR2022, data/CREMAD/video_preprocessing.py, "
                                "video2frame_update: the first frame of every int(fps) decoded frames"),
    Extraction(PMR_TOP_UP, "GitHub: fanyunfeng-bit/Modal-Imbalance-PMR, data/CREMAD/video_preprocessing.py, "
                           "video2frame_update(min_save_frame=3): the first frame of every second, then clips with "
                           "fewer than 3 are topped up to 3",
               _EVEN_TOP_UP, PMR_MIN_FRAMES),
    Extraction(PMR_AVE_TOP_UP, "GitHub: fanyunfeng-bit/Modal-Imbalance-PMR, data/AVE/video_preprocessing.py, "
                               "video2frame_update_SE(min_save_frame=10): the first frame of every second of the "
                               "event segment's seconds Start..End, then segments with fewer than 10 are topped up to "
                               "10 with frames of its seconds [Start, End) (video2frame_update(min_save_frame=10) on "
                               "whole clips)",
               _EVEN_TOP_UP + "; a segment with Start == End tops up from "
               "second Start, one past the video's end from the frames that exist (PMR's draw fails on both), and "
               "one with fewer frames left than missing keeps them all (PMR's loop never ends)", PMR_AVE_MIN_FRAMES),
    Extraction(MID_OF_SECOND, "GitHub: GeWu-Lab/AV_preprocess_tool, video_2_frame.py, extract_frames (fps_count 1): "
                              "the middle frame of each second, round(total / fps) seconds; read as <id>.hdf5 by "
                              "GitHub: GeWu-Lab/BML_TPAMI2024, code/dataset/KS.py",
               "the frame count is the decoded one (moviepy 1.x estimates it from the container duration, "
               "int(duration * fps) + 1)"),
)}


def get_extraction(name: str) -> Extraction:
    if name not in EXTRACTIONS:
        raise KeyError(f"unknown frame extraction {name!r}; valid: {sorted(EXTRACTIONS)}")
    return EXTRACTIONS[name]


def mid_second_indices(total: int, fps: float) -> list[int]:
    """0-based indices of the frames AV_preprocess_tool's ``extract_frames`` keeps from ``total`` frames at ``fps``
    (within ``MID_RATES``).

    Second i's frame is at position ``round((0.5 + i) * fps)`` (Python's round: ties to even, so 25 fps gives 12, 38,
    62, 88...) for ``i < round(total / fps)``; positions count from 1, as moviepy 1.x's reader does (it has read frame
    1 when opened), so the 0-based index is one less: 14, 44, 74... at 30 and 29.97 fps. The published code also wraps
    a position past the last frame into the last partial second, which never happens at one frame per second: the
    last position, round((round(total / fps) - 0.5) * fps), is at most ``total``.
    """
    return [round((0.5 + i) * fps) - 1 for i in range(round(total / fps))]


def top_up_indices(total: int, kept: Sequence[int], minimum: int, span: range | None = None) -> list[int]:
    """The frame indices added to a clip of ``total`` frames whose kept frames (``kept``) are fewer than ``minimum``.

    They are the middle frames of equal runs of the frames of ``span`` (default: the whole video) not kept; PMR draws
    them at random. A span with no more free frames than missing gives all of them (PMR draws distinct frames until
    it has enough, which never ends there). A video of fewer than ``minimum`` frames gets frame 0 repeated, as PMR
    saves frame 0 under the missing names.
    """
    need = minimum - len(kept)
    if need <= 0:
        return []
    if total < minimum:
        return [0] * need
    taken = set(kept)
    free = [i for i in (range(total) if span is None else span) if i not in taken]
    if len(free) <= need:
        return free
    return [free[(2 * j + 1) * len(free) // (2 * need)] for j in range(need)]


def top_up_span(total: int, fps: int, seconds: tuple[int, int] | None) -> range | None:
    """The frames a clip is topped up from: the whole video (None), or an event segment's seconds [Start, End), as
    PMR's video2frame_update_SE draws ``randint(start_t * fps, end_t * fps)``; Start == End, where that draw fails,
    takes second Start (as the audio of such a segment), and frames past the video's end do not exist."""
    if seconds is None:
        return None
    start, end = seconds
    return range(start * fps, min(max(end, start + 1) * fps, total))


def in_segment(second, seconds: tuple[int, int] | None):
    """Whether frames of ``second`` (an int, or an integer array for a mask) belong to the event segment ``seconds``
    (Start..End, both included, as PMR's video2frame_update_SE ``start_t <= num_count <= end_t``), or to the whole
    clip (None)."""
    return True if seconds is None else (seconds[0] <= second) & (second <= seconds[1])


def _decode(path: Path, size: tuple[int, int] | None, keep: Callable[[int, Fraction], bool]
            ) -> tuple[dict[int, np.ndarray], Fraction, int, tuple[int, int] | None]:
    """One decoding pass over ``path``: the frames whose index ``keep(index, rate)`` accepts, at the storage ``size``.

    Returns:
        (index -> uint8 (H, W, 3), the stream's frame rate, frames decoded, (H, W) of the source frames or None when
        none was kept).

    Raises:
        MediaError: unreadable container, no video stream, or unknown frame rate.
    """
    import av

    if is_lfs_pointer(path):
        raise lfs_error(path)
    kept: dict[int, np.ndarray] = {}
    count = 0
    source_size = None
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise MediaError(path, "corrupt video", "no video stream")
            stream = container.streams.video[0]
            rate = stream.average_rate or stream.guessed_rate or stream.base_rate
            if not rate or rate < 1:
                raise MediaError(path, "corrupt video", f"frame rate unknown or below 1 ({rate})")
            for frame in container.decode(stream):
                if keep(count, rate):
                    source_size = source_size or (frame.height, frame.width)
                    kept[count] = to_storage(frame.to_image(), size)
                count += 1
    except (av.error.FFmpegError, OSError, ValueError) as err:
        raise MediaError(path, "corrupt video", f"cannot decode video ({type(err).__name__}: {err})") from err
    return kept, Fraction(rate), count, source_size


def _stack(frames: Sequence[np.ndarray], size: tuple[int, int] | None) -> np.ndarray:
    return np.stack(frames) if frames else np.zeros((0, *(size or (0, 0)), 3), dtype=np.uint8)


def _is_mid_of_second(index: int, fps: float) -> bool:
    """Whether 0-based frame ``index`` is the middle frame of some second (``mid_second_indices`` without its bound on
    the number of seconds): that second is the one holding the 1-based position ``index + 1`` or a neighbour."""
    second = int((index + 1) // fps)
    return any(round((0.5 + s) * fps) - 1 == index for s in (second - 1, second, second + 1) if s >= 0)


def _middle_of_each_second(path: Path, size: tuple[int, int] | None) -> tuple[np.ndarray, dict]:
    """``frames_hdf5_mid`` in one decoding pass: the middle frame of every second is kept as it goes by, and those of
    seconds beyond ``round(total / fps)``, which the frame count decides only at the end, are dropped after."""
    kept, rate, total, source_size = _decode(path, size, lambda index, rate: _is_mid_of_second(index, float(rate)))
    if not MID_RATES[0] <= rate <= MID_RATES[1]:
        raise MediaError(path, "unsupported video", f"{MID_OF_SECOND} reproduces the published frames at "
                                                    f"{MID_RATES[0]}-{MID_RATES[1]} fps only, not {float(rate):g}")
    wanted = mid_second_indices(total, float(rate))
    return _stack([kept[i] for i in wanted], size), {"fps": float(rate), "decoded": total,
                                                     "source_size": source_size if wanted else None}


def _top_up(path: Path, size: tuple[int, int] | None, kept: dict[int, np.ndarray], total: int, minimum: int,
            span: range | None) -> list[np.ndarray]:
    """The kept frames plus the ``top_up_indices`` ones, in time order. A second pass reads the added frames; only
    the short clips that need them pay for it."""
    extra = top_up_indices(total, sorted(kept), minimum, span)
    wanted = set(extra) - set(kept)
    more, _, _, _ = _decode(path, size, lambda index, rate: index in wanted)
    return [{**kept, **more}[i] for i in sorted([*kept, *extra])]


def extract_frames(path: Path, size: tuple[int, int] | None, per_second: int = 1,
                   extraction: str = FIRST_OF_SECOND, seconds: tuple[int, int] | None = None
                   ) -> tuple[np.ndarray, dict]:
    """Decode a video and keep the frames the ``extraction`` rule chooses, in time order: by default ``per_second``
    frames of every second (1 = the first frame of each second); with ``seconds`` (an event segment, Start..End),
    only those of seconds Start to End, both included.

    Returns:
        (uint8 ``(n, H, W, 3)``, {"fps": the frame rate the rule used (int(fps) for second boundaries, the exact rate
        for ``frames_hdf5_mid``), "decoded": frames decoded, "source_size": (H, W) of the decoded frames before
        resizing, or None when none was kept}).

    Raises:
        MediaError: unreadable container, no video stream, unknown frame rate (or one ``frames_hdf5_mid`` cannot
            reproduce).
        ValueError: ``frames_hdf5_mid`` with ``per_second`` other than 1 (the published rule has one frame per
            second) or with ``seconds`` (it stores whole clips).
        KeyError: an unknown rule.
    """
    path = Path(path)
    minimum = get_extraction(extraction).minimum
    if extraction == MID_OF_SECOND:
        if per_second != 1 or seconds is not None:
            raise ValueError(f"{MID_OF_SECOND} keeps one frame of every second of the whole clip; got per_second "
                             f"{per_second}, seconds {seconds}")
        return _middle_of_each_second(path, size)
    kept, rate, count, source_size = _decode(
        path, size, lambda index, rate: kept_frame(index % int(rate), int(rate), per_second)
        and in_segment(index // int(rate), seconds))
    # A clip with no kept frame (an empty video, a segment past the video's end) is not topped up: min_frames drops
    # it. PMR would store copies of frame 0 for a segment past the end of a video shorter than its minimum, which
    # AVE's 10 s clips never are.
    frames = _top_up(path, size, kept, count, minimum, top_up_span(count, int(rate), seconds)) \
        if 0 < len(kept) < minimum else [kept[i] for i in sorted(kept)]
    return _stack(frames, size), {"fps": int(rate), "decoded": count, "source_size": source_size}
