"""What preparing a dataset starts from: the options ``augbench prepare`` is given, and the split tables a dataset's
annotation files turn into (samples per base split, plus the rows left out on the way).

Every prepared dataset parses its files into a ``SplitTables`` (``PreparedDataset.read_splits``); ``SplitTables.add``
applies the duplicate policy and the label map to one parsed list, so the drop accounting is the same everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from core.errors import InputError
from datasets.sources import RAW_URL
from datasets.splits import ParsedList, SplitRow, is_whole_number, resolve_duplicates


class PrepareError(InputError, RuntimeError):
    """``prepare`` cannot produce a valid cache; the message names the bad rows/files and what to do."""


class StaleCacheError(PrepareError):
    """A finished cache of the same options was built from raw media that have changed since."""


class RowError(ValueError):
    """A split row that cannot become a sample (e.g. an unknown label); ``kind`` is the drop reason category."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(detail)
        self.kind = kind


@dataclass
class PrepareOptions:
    """Everything ``prepare`` can be told besides the dataset, raw folder, cache root and dataset settings.

    Attributes:
        recipe: the dataset's named recipe (``data.recipe``); empty = the dataset's default.
        audio: audio pipeline parameter overrides (e.g. ``{"pad_mode": "reflect"}``; audio-visual datasets).
        layout: raw layout overrides (``audio_dir``, ``video_dir``, ``frames_dir``; audio-visual datasets).
        frame_size: stored frame (H, W); ``None`` = the dataset's ``FRAME_SIZE`` (audio-visual datasets).
        frames_per_second: frames kept per second of video (audio-visual datasets).
        visual: ``auto`` (frame folders when ``frames_dir`` exists, else videos), ``video`` or ``frames``.
        min_frames: override the recipe's minimum frames per clip (audio-visual datasets).
        label_order: the dataset's label map convention; empty = its default.
        duplicates: policy for repeated ids within a split (``first``, ``last``, ``drop``).
        val_fraction: stratified hold-out fraction when there is no published validation split; 0 = no validation
            split (the cache then has none, and the manifest says so).
        val_seed: seed of that hold-out.
        skip_bad: drop and record bad items instead of stopping.
        max_drop_fraction: with ``skip_bad``, stop when more than this fraction of rows is bad.
        force: rebuild even if a finished cache exists.
        workers: extraction processes (0 or 1 = in this process).
        shard_size: samples per resumable shard; ``None`` = the dataset's ``SHARD_SIZE``.
        splits_dir: read split files from here instead of downloading them.
        splits_url: base URL replacing ``https://raw.githubusercontent.com``.
        strict_splits: refuse local split files that differ from the pinned ones.
    """

    recipe: str = ""
    audio: dict[str, Any] = field(default_factory=dict)
    layout: dict[str, str] = field(default_factory=dict)
    frame_size: tuple[int, int] | None = None
    frames_per_second: int = 1
    visual: str = "auto"
    min_frames: int | None = None
    label_order: str = ""
    duplicates: str = "first"
    val_fraction: float = 0.1
    val_seed: int = 0
    skip_bad: bool = False
    max_drop_fraction: float = 1.0
    force: bool = False
    workers: int = 0
    shard_size: int | None = None
    splits_dir: Path | None = None
    splits_url: str = RAW_URL
    strict_splits: bool = False


@dataclass(frozen=True)
class Sample:
    """One split row that became a sample; ``row`` is the parsed row it came from (what ``locate`` reads)."""

    id: str
    split: str
    label: int
    label_name: str
    where: str
    speaker: str = ""
    row: SplitRow | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class Dropped:
    """A row left out of the cache: ``bad`` items are input errors; the others follow a stated policy."""

    id: str
    split: str
    kind: str
    detail: str
    where: str
    bad: bool

    def row(self) -> dict[str, str]:
        return {"id": self.id, "split": self.split, "reason": self.kind, "detail": self.detail, "where": self.where}


@dataclass
class SplitTables:
    """What a dataset's ``read_splits`` returns.

    Attributes:
        classes: the label map in index order.
        splits: base split name (``train``, ``test``, optionally ``val``) -> samples in file order.
        dropped: rows dropped while parsing (duplicates by policy, bad rows).
        val_ids: published validation ids, a subset of train (CREMA-D ``val.csv``); ``None`` = hold-out (or a
            ``val`` base split).
        val_source: how the validation split was obtained, for the manifest.
        val_group: for a hold-out, the key of the clips that must be held out together (UCF-101: class and gNN
            group, one actor and scene), with its description for the manifest; ``None`` = single clips.
        info: extra facts for the manifest (label map source, duplicate and overlap counts, parse skips).
    """

    classes: tuple[str, ...]
    splits: dict[str, list[Sample]] = field(default_factory=dict)
    dropped: list[Dropped] = field(default_factory=list)
    val_ids: list[str] | None = None
    val_source: str = ""
    val_group: tuple[Callable[[Sample], str], str] | None = None
    info: dict[str, Any] = field(default_factory=dict)

    def add(self, parsed: ParsedList, split: str, *, label_name: Callable[[SplitRow], str], duplicates: str,
            speaker: Callable[[SplitRow], str] | None = None) -> None:
        """Append one parsed list's rows to ``split`` as samples: the duplicate policy first, then the label map
        (an unknown label, or a ``RowError`` from ``label_name``, makes a bad row)."""
        kept, dups = resolve_duplicates(parsed.rows, duplicates)
        self.dropped += [Dropped(r.id, split, "duplicate id", reason, parsed.where(r), bad=False) for r, reason in dups]
        index = {name: i for i, name in enumerate(self.classes)}
        samples = self.splits.setdefault(split, [])
        for r in kept:
            try:
                name = label_name(r)
                if name not in index:
                    raise RowError("unknown label", f"unknown label {r.label!r}; valid: {list(self.classes)[:10]}"
                                                    f"{' ...' if len(self.classes) > 10 else ''}")
            except RowError as err:
                self.dropped.append(Dropped(r.id, split, err.kind, str(err), parsed.where(r), bad=True))
                continue
            samples.append(Sample(r.id, split, index[name], name, parsed.where(r), speaker(r) if speaker else "", r))


def malformed_rows(parsed: ParsedList, split: str) -> list[Dropped]:
    """Lines a lenient parser skipped for a format error (not blank lines or the header), as bad items naming the
    file and line, so that ``--skip-bad`` drops and counts them and its absence stops ``prepare`` with the list."""
    return [Dropped(f"L{line}", split, "malformed row", reason, f"{parsed.path.name}:{line}", bad=True)
            for line, _, reason in parsed.skipped if reason not in ("blank line", "header")]


def indexed_label(classes: Sequence[str]) -> Callable[[SplitRow], str]:
    """Label fields holding the class index (``0`` .. ``K-1``, as AMSS's one-hot ``np.eye(K)[label]``) -> name; any
    other value is returned as written and then reported as an unknown label."""
    def name(row: SplitRow) -> str:
        text = row.label.strip()
        return classes[int(text)] if is_whole_number(text) and int(text) < len(classes) else text
    return name
