"""Tiny raw dataset trees in the real layouts, for the prepare/loader tests.

Media are written with the libraries real data comes from: WAV with soundfile, FLV/MP4 with PyAV, JPEG with Pillow,
with real file naming (CREMA-D ids, OGM-GE ``00000.jpg`` / MMPareto ``frame_000NN.jpg`` frame names, AVE
``&``-separated lists, ...). Split files are written in their published byte formats (CRLF, BOM, LF).

Frames are uniform colours so that any crop or resize keeps them recognisable: red = ``second_level(k)`` for the
k-th second of a video (or the k-th file of a frame folder), green = a per-clip code, blue = 100. Audio is a sine
whose frequency is per clip.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

EMOTIONS = ("NEU", "HAP", "SAD", "FEA", "DIS", "ANG")
SENTENCES = ("IEO", "TIE", "IOM", "IWW", "TAI", "MTI", "IWL", "ITH", "DFA", "ITS", "TSI", "WSI")
BLUE = 100


def second_level(k: int) -> int:
    """Red level of the frames of second (or file) ``k``: distinct, JPEG/codec-robust steps."""
    return 20 + 20 * (k % 12)


def clip_code(i: int) -> int:
    """Green level identifying clip ``i``."""
    return 30 + 12 * (i % 18)


def frame_image(red: int, green: int, size: tuple[int, int]) -> np.ndarray:
    img = np.empty((*size, 3), dtype=np.uint8)
    img[..., 0], img[..., 1], img[..., 2] = red, green, BLUE
    return img


def write_wav(path: Path, seconds: float, sr: int = 16000, freq: float = 440.0) -> np.ndarray:
    import soundfile as sf

    t = np.arange(int(round(seconds * sr))) / sr
    y = (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32)
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), y, sr, subtype="PCM_16")
    return y


def write_video(path: Path, seconds: float, fps: int, green: int, size: tuple[int, int] = (48, 64),
                codec: str = "flv", audio_sr: int | None = None, freq: float = 440.0) -> int:
    """A video whose frames of second k have red ``second_level(k)``; optionally an AAC audio track (MP4).

    Returns:
        number of frames written.
    """
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    n = int(round(seconds * fps))
    with av.open(str(path), "w") as out:
        stream = out.add_stream(codec, rate=fps)
        stream.height, stream.width = size
        stream.pix_fmt = "yuv420p"
        audio = None
        if audio_sr:
            audio = out.add_stream("aac", rate=audio_sr)
            audio.layout = "mono"
        for i in range(n):
            frame = av.VideoFrame.from_ndarray(frame_image(second_level(i // fps), green, size), format="rgb24")
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
        if audio is not None:
            t = np.arange(int(round(seconds * audio_sr))) / audio_sr
            samples = (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32)[None]
            chunk = 1024
            for start in range(0, samples.shape[1], chunk):
                af = av.AudioFrame.from_ndarray(np.ascontiguousarray(samples[:, start:start + chunk]), format="flt",
                                                layout="mono")
                af.sample_rate = audio_sr
                af.pts = start
                for packet in audio.encode(af):
                    out.mux(packet)
            for packet in audio.encode():
                out.mux(packet)
    return n


FRAME_NAMINGS = {
    "ogm": lambda i, fps: f"{i * fps:05d}.jpg",          # OGM-GE video2frame_update: absolute frame index
    "mmpareto": lambda i, fps: f"frame_000{i + 1:02d}.jpg",  # MMPareto/Diagnosing, 1-based two digits
    "ks": lambda i, fps: f"frame_0000{i + 1}.jpg",        # KS loaders: unpadded 1-based tail, 10 -> frame_000010
}


def write_frame_folder(folder: Path, n: int, green: int, naming: str = "ogm", size: tuple[int, int] = (48, 64),
                       fps: int = 30) -> list[str]:
    """``n`` JPEG frames, frame k with red ``second_level(k)``; returns the file names in frame order."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    names = [FRAME_NAMINGS[naming](i, fps) for i in range(n)]
    for i, name in enumerate(names):
        Image.fromarray(frame_image(second_level(i), green, size)).save(folder / name, quality=95)
    return names


def write_lfs_pointer(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    oid = "4d7a214614ab2935c943f9e0ff69d22eadbb8f32b1258daaa5e2ca24d17e2393"
    path.write_bytes(f"version https://git-lfs.github.com/spec/v1\noid sha256:{oid}\nsize 327656\n".encode())


def write_lines(path: Path, lines: Sequence[str], *, crlf: bool, bom: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    end = "\r\n" if crlf else "\n"
    path.write_bytes(("\ufeff" if bom else "").encode() + "".join(f"{line}{end}" for line in lines).encode())


@dataclass
class Tree:
    """A generated raw tree: its root, where the split files are, and the clips per split."""

    root: Path
    splits_dir: Path
    clips: dict[str, list[tuple[str, str]]] = field(default_factory=dict)  # split -> [(id, label)]
    codes: dict[str, int] = field(default_factory=dict)  # id -> green clip code
    frames: dict[str, int] = field(default_factory=dict)  # id -> frames at 1 fps

    def ids(self, split: str) -> list[str]:
        return [i for i, _ in self.clips[split]]


def make_cremad(root: Path, *, train_per_class: int = 2, test_per_class: int = 1, visual: str = "flv",
                naming: str = "ogm", fps: int = 10, seconds: Sequence[float] = (1.3, 2.5, 3.2),
                size: tuple[int, int] = (48, 64)) -> Tree:
    """CREMA-D's layout: ``AudioWAV/<id>.wav``, ``VideoFlash/<id>.flv`` or ``Image-01-FPS/<id>/``, and OGM-GE +
    Diagnosing split files (byte formats of docs/datasets/README.md#pinned-split-files) in ``annotations/``.

    Each class gets ``train_per_class`` train clips (the last one of each class goes to ``val.csv``) and
    ``test_per_class`` test clips. Clip durations cycle through ``seconds``.
    """
    tree = Tree(root, root / "annotations")
    count = 0
    for split, per_class in (("train", train_per_class), ("test", test_per_class)):
        rows = []
        for j in range(per_class):
            for c, emo in enumerate(EMOTIONS):
                # (count mod 5, count mod 12) is unique for 60 clips, so ids never repeat across splits.
                actor = 1001 + (count % 5)
                clip_id = f"{actor}_{SENTENCES[count % len(SENTENCES)]}_{emo}_{'XX' if j % 2 == 0 else 'HI'}"
                duration = seconds[count % len(seconds)]
                code = clip_code(count)
                write_wav(root / "AudioWAV" / f"{clip_id}.wav", duration, freq=200.0 + 50 * count)
                n_sec = int(np.ceil(duration))
                if visual == "flv":
                    write_video(root / "VideoFlash" / f"{clip_id}.flv", duration, fps, code, size)
                else:
                    write_frame_folder(root / "Image-01-FPS" / clip_id, n_sec, code, naming, size, fps)
                rows.append((clip_id, emo))
                tree.codes[clip_id] = code
                tree.frames[clip_id] = n_sec
                count += 1
        tree.clips[split] = rows
    if len(tree.codes) != count:
        raise ValueError(f"make_cremad: {count} clips but {len(tree.codes)} distinct ids; lower the clip counts")
    train = tree.clips["train"]
    val = train[-len(EMOTIONS):]
    write_lines(tree.splits_dir / "train.csv", [f"{i},{e}" for i, e in train], crlf=True)
    write_lines(tree.splits_dir / "test.csv", [f"{i},{e}" for i, e in tree.clips["test"]], crlf=True)
    write_lines(tree.splits_dir / "stat.csv", list(EMOTIONS), crlf=True, bom=True)
    write_lines(tree.splits_dir / "my_train.csv", [f"{i},{e}" for i, e in train[:-len(EMOTIONS)]], crlf=False)
    write_lines(tree.splits_dir / "val.csv", [f"{i},{e}" for i, e in val], crlf=False)
    tree.clips["val"] = val
    return tree


def make_kinetics_sounds(root: Path, classes: Sequence[str], *, train_per_class: int = 2, test_per_class: int = 1,
                         visual: str = "frames", seconds: float = 2.0, n_frames: int = 4,
                         size: tuple[int, int] = (24, 32)) -> Tree:
    """KS layout: ``audio/<id>.wav`` + ``Image-01-FPS/<id>/frame_0000{t}.jpg`` (or ``video/<id>.mp4``), and
    ``my_train.txt``/``my_test.txt`` (``<id>,10,<label>``, CRLF) plus a ``KS.json`` with the given label list.
    Train ids look like ``<11 chars>_<start6>_<end6>``, test ids like ``<11 chars>_<n>``, as in OGM-GE's lists.
    """
    tree = Tree(root, root / "splits")
    database: dict[str, dict[str, str]] = {}
    count = 0
    for split, per_class, subset in (("train", train_per_class, "training"), ("test", test_per_class, "training")):
        rows = []
        for j in range(per_class):
            for label in range(len(classes)):
                clip_id = f"{chr(65 + count % 26)}{count:010d}"[:11] + (f"_{count:06d}_{count + 10:06d}"
                                                                        if split == "train" else f"_{j}")
                write_wav(root / "audio" / f"{clip_id}.wav", seconds, sr=22050, freq=300.0 + 40 * count)
                code = clip_code(count)
                if visual == "frames":
                    write_frame_folder(root / "Image-01-FPS" / clip_id, n_frames, code, "ks", size)
                else:
                    write_video(root / "video" / f"{clip_id}.mp4", seconds, 10, code, size, codec="mpeg4")
                rows.append((clip_id, str(label)))
                database[clip_id] = {"subset": subset, "label": classes[label]}
                tree.codes[clip_id] = code
                count += 1
        tree.clips[split] = rows
    write_lines(tree.splits_dir / "my_train.txt", [f"{i},10,{lab}" for i, lab in tree.clips["train"]], crlf=True)
    write_lines(tree.splits_dir / "my_test.txt", [f"{i},10,{lab}" for i, lab in tree.clips["test"]], crlf=True)
    (tree.splits_dir / "KS.json").write_text(json.dumps({"labels": list(classes), "database": database}))
    return tree


def make_ave(root: Path, classes: Sequence[str], *, seconds: float = 1.0, fps: int = 2,
             size: tuple[int, int] = (24, 32), train_dup: bool = True) -> Tree:
    """AVE layout: ``AVE/<videoid>.mp4`` with an AAC audio track, and PMR's ``&``-separated lists (LF).

    One clip per class and split, test rows in ``classes`` order (so first appearance = the declared map). With
    ``train_dup`` the first train id is listed a second time under another class, as in the real ``trainSet.txt``.
    """
    tree = Tree(root, root / "splits")
    count = 0
    for split in ("train", "val", "test"):
        rows = []
        for label in classes:
            clip_id = f"v{count:010d}"
            write_video(root / "AVE" / f"{clip_id}.mp4", seconds, fps, clip_code(count), size, codec="mpeg4",
                        audio_sr=16000, freq=250.0 + 30 * count)
            rows.append((clip_id, label))
            tree.codes[clip_id] = clip_code(count)
            count += 1
        tree.clips[split] = rows
    names = {"train": "trainSet.txt", "val": "valSet.txt", "test": "testSet.txt"}
    for split, rows in tree.clips.items():
        lines = [f"{label}&{clip_id}&good&0&10" for clip_id, label in rows]
        if split == "train" and train_dup:
            lines.insert(3, f"{rows[1][1]}&{rows[0][0]}&good&0&10")
        write_lines(tree.splits_dir / names[split], lines, crlf=False)
    return tree


def make_vggsound(root: Path, labels: Sequence[str], *, train_per_class: int = 2, test_per_class: int = 1,
                  seconds: float = 2.0, size: tuple[int, int] = (24, 32)) -> Tree:
    """VGGSound layout: ``audio/<ytid>_<start>.wav`` + ``Image-01-FPS/<ytid>_<start>.mp4/`` frame folders, and a
    ``vggsound.csv`` with quoted labels containing commas."""
    tree = Tree(root, root / "splits")
    lines = []
    count = 0
    for split, per_class in (("train", train_per_class), ("test", test_per_class)):
        rows = []
        for _ in range(per_class):
            for label in labels:
                ytid, start = f"yt{count:09d}", 30 * count
                clip_id = f"{ytid}_{start}"
                write_wav(root / "audio" / f"{clip_id}.wav", seconds, freq=220.0 + 20 * count)
                write_frame_folder(root / "Image-01-FPS" / f"{clip_id}.mp4", 4, clip_code(count), "ks", size)
                quoted = f'"{label}"' if "," in label else label
                lines.append(f"{ytid},{start},{quoted},{split}")
                rows.append((clip_id, label))
                tree.codes[clip_id] = clip_code(count)
                count += 1
        tree.clips[split] = rows
    write_lines(tree.splits_dir / "vggsound.csv", lines, crlf=False)
    return tree
