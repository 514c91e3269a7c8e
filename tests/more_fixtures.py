"""Tiny raw trees in the real layouts of Twitter-2015, Sarcasm, Food-101, CMU-MOSEI, NVGesture and UCF-101, a tiny
WordPiece vocabulary, and tiny model settings (a config-built BERT, no downloads).

Content is learnable and traceable: a sample of class c has image colour ``CLASS_COLOURS[c]`` and text built from
``CLASS_WORDS[c]``; video frame k has red level ``frame_level(k)`` (lossless FFV1 in AVI, so levels survive exactly);
optical flow frame k holds k in channel 0 and -k in channel 1; UCF frame folders use BalanceBenchmark's names
(``frame_0000{k}.jpg`` for RGB, ``frame00{k:04d}.jpg`` for flow).
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
CLASS_WORDS = (("sad", "bad", "awful"), ("plain", "okay", "fine"), ("happy", "great", "love"))
FILLER = ("the", "a", "cat", "dog", "is", "was", "today", "##s", "rt")
VOCAB = SPECIALS + tuple(w for words in CLASS_WORDS for w in words) + FILLER
CLASS_COLOURS = ((200, 30, 30), (30, 200, 30), (30, 30, 200))

# A config-built BERT small enough for CPU tests, plus the shared tiny trunk (tests/conftest.py TINY_MODEL).
TINY_TEXT_MODEL = {"width": 4, "blocks": [1, 1, 1, 1], "text_encoder": "bert", "text_pretrained": False,
                   "image_pretrained": False, "image_encoder": "resnet18", "proj_dim": 0,
                   "bert_vocab_size": len(VOCAB), "bert_hidden": 16, "bert_layers": 1, "bert_heads": 2,
                   "bert_intermediate": 32, "bert_max_positions": 64}


def write_vocab(folder: Path) -> Path:
    """``vocab.txt`` with one WordPiece token per line (ids = line numbers, [PAD] = 0)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "vocab.txt"
    path.write_text("".join(f"{t}\n" for t in VOCAB), encoding="utf-8")
    return path


def class_text(label: int, i: int) -> str:
    words = CLASS_WORDS[label % len(CLASS_WORDS)]
    return f"The {FILLER[2 + i % 2]} {words[i % 3]} {words[(i + 1) % 3]} today"


def write_image(path: Path, colour: Sequence[int], size: tuple[int, int] = (12, 16)) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    img = np.empty((*size, 3), dtype=np.uint8)
    img[:] = colour
    img[: size[0] // 3, : size[1] // 3] = 255  # an asymmetric corner so flips and rotations are visible
    Image.fromarray(img).save(path)


def write_lines(path: Path, lines: Sequence[str], newline: str = "\n", bom: bool = False) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = "".join(f"{line}{newline}" for line in lines).encode("utf-8")
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + data)
    return path


@dataclass
class Tree:
    """A generated raw folder and what a test needs to know about it."""

    root: Path
    labels: dict[str, list[int]] = field(default_factory=dict)
    ids: dict[str, list[str]] = field(default_factory=dict)
    extra: dict = field(default_factory=dict)


def make_image_text(root: Path, *, image_dir: str, classes: int, per_class: dict[str, int], fmt: str = "amss",
                    newline: str = "\n") -> Tree:
    """Twitter-2015 / Sarcasm in AMSS's layout (``fmt='amss'``: ``Label String ImageID`` TSVs with a pandas index
    column) or the TomBERT release format (``fmt='tombert'``); ``per_class`` gives samples per class per split
    (``train``, ``test``, optionally ``dev``)."""
    tree = Tree(root)
    k = 0
    for split, n in per_class.items():
        header = "\tLabel\tString\tImageID" if fmt == "amss" else "index\t#1 Label\t#2 ImageID\t#3 String\t#3 String"
        lines = [header]
        tree.labels[split], tree.ids[split] = [], []
        for i in range(n * classes):
            label, image = i % classes, f"{1000 + k}.jpg"
            write_image(root / image_dir / image, CLASS_COLOURS[label])
            text = class_text(label, i)
            if fmt == "amss":
                lines.append(f"{i}\t{label}\t{text}\t{image}")
                tree.ids[split].append(str(i))
            else:
                target = text.split()[2]
                lines.append(f"{k}\t{label}\t{image}\t{text.replace(target, '$T$', 1)}\t{target}")
                tree.ids[split].append(str(k))
            tree.labels[split].append(label)
            k += 1
        write_lines(root / "annotations" / f"{split}.tsv", lines, newline)
    return tree


FOOD_CLASSES = ("apple_pie", "cheese_plate", "cheesecake")


def make_food101(root: Path, per_class: int = 4, header: bool = True) -> Tree:
    """UPMC Food-101 in BalanceBenchmark's layout with three classes (Python-sorted: cheese_plate < cheesecake)."""
    tree = Tree(root)
    for split in ("train", "test"):
        lines = ["image_path,text,label"] if header else []
        tree.labels[split], tree.ids[split] = [], []
        for i in range(per_class * len(FOOD_CLASSES)):
            label = i % len(FOOD_CLASSES)
            name = f"{FOOD_CLASSES[label]}_{i}.jpg"
            write_image(root / "images" / split / FOOD_CLASSES[label] / name, CLASS_COLOURS[label])
            title = f'"RT #{class_text(label, i)}, http://x.co/{i}"' if i % 2 else class_text(label, i)
            lines.append(f"{name},{title},{FOOD_CLASSES[label]}")
            tree.labels[split].append(label)
            tree.ids[split].append(name)
        write_lines(root / "texts" / f"{split}_titles.csv", lines)
    return tree


MOSEI_DIMS = {"audio": 74, "vision": 35, "text": 300}
MOSEI_LENGTHS = {"audio": 7, "vision": 6, "text": 5}


def make_mosei(root: Path, sizes: dict[str, int] | None = None, aligned: bool = False, seed: int = 0) -> Tree:
    """A MulT-style ``mosei_senti_data(_noalign).pkl``: ``{train|valid|test: {vision, audio, text, labels, id}}``.

    Sentiment labels cycle through -2, -0.5, 0, 0.5, 2 (so acc2 policies differ on the zeros); audio holds a few
    ``-inf`` values, as the real COVAREP features do; features carry the binary class in their mean.
    """
    rng = np.random.default_rng(seed)
    sizes = sizes or {"train": 10, "valid": 5, "test": 5}
    doc, tree = {}, Tree(root)
    cycle = np.array([-2.0, -0.5, 0.0, 0.5, 2.0], dtype=np.float32)
    for split, n in sizes.items():
        y = cycle[np.arange(n) % len(cycle)]
        part = {"labels": y.reshape(n, 1, 1)}
        for key, dim in MOSEI_DIMS.items():
            x = rng.standard_normal((n, MOSEI_LENGTHS[key], dim)).astype(np.float32) + (y >= 0)[:, None, None]
            part[key] = x
        part["audio"][0, 0, :3] = -np.inf
        part["id"] = np.array([[f"vid{i % 4}".encode(), b"0", b"1"] for i in range(n)])
        doc[split] = part
        tree.labels[split] = y.tolist()
    root.mkdir(parents=True, exist_ok=True)
    name = "mosei_senti_data.pkl" if aligned else "mosei_senti_data_noalign.pkl"
    with (root / name).open("wb") as f:
        pickle.dump(doc, f, protocol=4)
    tree.extra["path"] = root / name
    return tree


def frame_level(k: int) -> int:
    """Red level of video frame k (distinct for k < 24)."""
    return 10 + 10 * (k % 24)


def write_avi(path: Path, frames: int, green: int, size: tuple[int, int] = (24, 32), fps: int = 30) -> None:
    """Lossless FFV1 AVI; frame k is uniform with red ``frame_level(k)``, green ``green``, blue 100."""
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as out:
        stream = out.add_stream("ffv1", rate=fps)
        stream.height, stream.width = size
        stream.pix_fmt = "bgr0"
        for k in range(frames):
            img = np.empty((*size, 3), dtype=np.uint8)
            img[..., 0], img[..., 1], img[..., 2] = frame_level(k), green, 100
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)


def make_nvgesture(root: Path, classes: int = 3, per_class: dict[str, int] | None = None, frames: int = 12,
                   start: int = 2, flow_size: int = 20, subjects: int = 0) -> Tree:
    """NVGesture in AMSS's layout: ``nvgesture_{train,test}_correct_v2.lst`` (1-based labels), videos
    ``Video_data/class_NN/subjectS_rR/sk_{color,depth}.avi`` and flow ``Video_data/flow_data/{train,test}/<i>.npy``
    of shape (H, W, 2, T). Every sensor window starts at frame ``start``. Clip i is by subject i, or with
    ``subjects`` by subject i % subjects (so every subject performs every class)."""
    per_class = per_class or {"train": 3, "test": 2}
    tree = Tree(root)
    for split, n in per_class.items():
        lines = []
        tree.labels[split], tree.ids[split] = [], []
        for i in range(n * classes):
            label = i % classes
            rel = f"./Video_data/class_{label + 1:02d}/" + (f"subject{i % subjects}_r{i}" if subjects
                                                             else f"subject{i}_r{0 if split == 'train' else 1}")
            clip = root / rel
            write_avi(clip / "sk_color.avi", frames + start, green=40 + 60 * label)
            write_avi(clip / "sk_depth.avi", frames + start, green=40 + 60 * label)
            end = start + frames
            lines.append(f"path:{rel} depth:sk_depth:{start}:{end} color:sk_color:{start}:{end} "
                         f"duo_left:duo_left:{start}:{end} label:{label + 1}")
            flow = np.zeros((flow_size, flow_size, 2, frames), dtype=np.float32)
            flow[:, :, 0, :] = np.arange(frames)
            flow[:, :, 1, :] = -np.arange(frames)
            (root / "Video_data" / "flow_data" / split).mkdir(parents=True, exist_ok=True)
            np.save(root / "Video_data" / "flow_data" / split / f"{i}.npy", flow)
            tree.labels[split].append(label)
            tree.ids[split].append(rel)
        write_lines(root / f"nvgesture_{split}_correct_v2.lst", lines)
    return tree


UCF_CLASSES = ("ApplyEyeMakeup", "Archery", "Basketball")


def make_ucf101(root: Path, per_class: dict[str, int] | None = None, rgb_frames: int = 7, flow_frames: int = 9,
                size: tuple[int, int] = (12, 16)) -> Tree:
    """UCF-101 split 1 in BalanceBenchmark's layout: ``ucfTrainTestlist/{classInd,trainlist01,testlist01}.txt``
    (CRLF), RGB frames ``ucf101-frames-1fps/video-set/<name>/frame_0000{k}.jpg`` and flow ``{u,v}/<name>/
    frame00{k:04d}.jpg``; classInd lists the classes in reverse order, so its numbering differs from sorted order."""
    from PIL import Image

    per_class = per_class or {"train": 3, "test": 2}
    tree = Tree(root)
    numbers = {name: i + 1 for i, name in enumerate(reversed(UCF_CLASSES))}
    write_lines(root / "ucfTrainTestlist" / "classInd.txt", [f"{numbers[c]} {c}" for c in reversed(UCF_CLASSES)],
                "\r\n")
    for split, n in per_class.items():
        lines = []
        tree.labels[split], tree.ids[split] = [], []
        for i in range(n * len(UCF_CLASSES)):
            label = i % len(UCF_CLASSES)
            cls = UCF_CLASSES[label]
            name = f"v_{cls}_g{i + (0 if split == 'train' else 50):02d}_c01"
            path = f"{cls}/{name}.avi"
            lines.append(f"{path} {numbers[cls]}" if split == "train" else path)
            rgb = root / "ucf101-frames-1fps" / "video-set" / name
            rgb.mkdir(parents=True, exist_ok=True)
            for k in range(rgb_frames):
                img = np.empty((*size, 3), dtype=np.uint8)
                img[:] = CLASS_COLOURS[label]
                img[..., 0] = frame_level(k)
                Image.fromarray(img).save(rgb / f"frame_0000{k + 1}.jpg", quality=95)
            for axis, sign in (("u", 1), ("v", -1)):
                folder = root / axis / name
                folder.mkdir(parents=True, exist_ok=True)
                for k in range(flow_frames):
                    level = 128 + sign * (10 + 10 * k)
                    Image.fromarray(np.full(size, level, dtype=np.uint8)).save(
                        folder / f"frame00{k + 1:04d}.jpg", quality=95)
            tree.labels[split].append(label)
            tree.ids[split].append(f"{cls}/{name}")
        write_lines(root / "ucfTrainTestlist" / f"{split}list01.txt", lines, "\r\n")
    return tree
