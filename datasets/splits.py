"""Parsers for the published split files, in their real byte formats (docs/datasets/ (each dataset's page) and
docs/datasets/pitfalls.md#byte-variants, items 9-10).

Every parser accepts UTF-8 with or without a BOM, CRLF or LF line endings and a missing final newline, and returns
``ParsedList``: the kept rows plus every skipped line with its reason (blank lines, a recognised header), so
``len(rows) + len(skipped) == lines``. A malformed row is an error naming the file and line; with ``strict=False``
it is skipped and reported instead. Label maps are never derived here from which media exist
(docs/datasets/README.md#conventions).

Formats:
- CREMA-D (OGM-GE, PMR, MMCosine, Diagnosing): ``1088_IOM_NEU_XX,NEU``; Diagnosing's own train/test lists add a
  ``name,label`` header, accepted on the first line only. ``stat.csv``: one class code per line.
- Kinetics-Sounds: ``<id>,10,<label_int>`` (OGM-GE), also space-separated and without the middle field
  (BalanceBenchmark/InfoReg read ``name = item[0]``, ``label = int(item[-1])``). ``KS.json``: ``labels`` + ``database``.
- AVE: ``Category&VideoID&Quality&Start&End``; class names contain commas, so only ``&`` separates.
- VGGSound: ``vggsound.csv`` rows ``ytid,start_seconds,label,split`` read with a CSV reader (quoted commas); the
  start is digits (``30``, or zero-padded ``000030``).
"""

from __future__ import annotations

import csv
import json
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

DUPLICATE_POLICIES = ("first", "last", "drop")
LINE_BREAK = re.compile(r"\r\n|\n|\r")


def is_whole_number(text: str) -> bool:
    """``text`` is one or more ASCII digits. ``str.isdigit`` also accepts characters such as "²", which ``int`` then
    rejects with a bare ValueError, and decimal digits of other scripts, which ``int`` reads as numbers."""
    return text.isascii() and text.isdigit()


class SplitParseError(ValueError):
    """A split file that cannot be decoded, or a row that does not fit the file's format."""


@dataclass(frozen=True)
class SplitRow:
    """One data row of a split file.

    Attributes:
        id: sample id exactly as written (docs/datasets/README.md#conventions), no extension added or removed.
        label: the label as written: a class name/code, or an integer string (Kinetics-Sounds).
        line: 1-based line number, for error messages.
        fields: every field of the row.
    """

    id: str
    label: str
    line: int
    fields: tuple[str, ...] = ()


@dataclass
class ParsedList:
    """A parsed split file.

    Attributes:
        path: the file read.
        rows: data rows in file order.
        skipped: ``(line, text, reason)`` for every non-data line.
        bom: whether the file starts with a UTF-8 BOM.
        line_endings: ``CRLF``, ``LF``, ``mixed`` or ``none`` (a single line without terminator).
    """

    path: Path
    rows: list[SplitRow] = field(default_factory=list)
    skipped: list[tuple[int, str, str]] = field(default_factory=list)
    bom: bool = False
    line_endings: str = "none"

    @property
    def ids(self) -> list[str]:
        return [r.id for r in self.rows]

    def where(self, row: SplitRow) -> str:
        return f"{self.path.name}:{row.line}"


def read_lines(path: Path) -> tuple[list[str], bool, str]:
    """Decode ``path`` as UTF-8 (BOM optional) and split into lines.

    Returns:
        (lines without terminators, has_bom, line-ending kind).
    """
    path = Path(path)
    raw = path.read_bytes()
    bom = raw.startswith(b"\xef\xbb\xbf")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise SplitParseError(f"{path}: not UTF-8 text ({err})") from err
    crlf = text.count("\r\n")
    lf = text.count("\n") - crlf
    endings = "none" if crlf + lf == 0 else "CRLF" if lf == 0 else "LF" if crlf == 0 else "mixed"
    # Only CR/LF end a line: str.splitlines would also break on U+2028, U+0085 or a form feed inside a tweet or title.
    lines = LINE_BREAK.split(text)
    if lines[-1] == "":
        lines.pop()
    return lines, bom, endings


def _parse(path: Path, split_row, header: Sequence[str] | None, strict: bool) -> ParsedList:
    lines, bom, endings = read_lines(path)
    out = ParsedList(Path(path), bom=bom, line_endings=endings)
    for number, text in enumerate(lines, start=1):
        if not text.strip():
            out.skipped.append((number, text, "blank line"))
            continue
        if number == 1 and header is not None and [f.strip().lower() for f in text.split(",")] == list(header):
            out.skipped.append((number, text, "header"))
            continue
        try:
            out.rows.append(split_row(text, number))
        except SplitParseError as err:
            if strict:
                raise SplitParseError(f"{path}:{number}: {err} (line {text!r})") from None
            out.skipped.append((number, text, str(err)))
    return out


def parse_label_csv(path: Path, *, strict: bool = True) -> ParsedList:
    """CREMA-D-style ``<id>,<LABEL>`` rows; a ``name,label`` header is accepted on line 1 only."""
    def row(text: str, number: int) -> SplitRow:
        fields = tuple(f.strip() for f in text.split(","))
        if len(fields) != 2 or not fields[0] or not fields[1]:
            raise SplitParseError(f"expected '<id>,<label>', got {len(fields)} field(s)")
        return SplitRow(fields[0], fields[1], number, fields)
    return _parse(path, row, ("name", "label"), strict)


def parse_class_list(path: Path) -> list[str]:
    """``stat.csv``: one class name per line (BOM and CRLF tolerated); duplicates are an error."""
    lines, _, _ = read_lines(path)
    names = [line.strip() for line in lines if line.strip()]
    repeated = [n for n, c in Counter(names).items() if c > 1]
    if repeated:
        raise SplitParseError(f"{path}: class(es) listed twice: {repeated}")
    if not names:
        raise SplitParseError(f"{path}: no class names")
    return names


# One comma (spaces around it allowed) or a run of whitespace separates two fields. A run of commas must not: it would
# merge an empty field away, so that "<id>,10," (label missing) read as label 10 and ",10,4" as id "10".
_KS_SPLIT = re.compile(r"\s*,\s*|\s+")


def parse_ks_list(path: Path, *, strict: bool = True) -> ParsedList:
    """Kinetics-Sounds lists: ``<id>,10,<label>`` or ``<id> <label>`` (comma or whitespace, middle field optional).

    The label is the last field and must be a non-negative integer; ``SplitRow.label`` keeps it as text.
    """
    def row(text: str, number: int) -> SplitRow:
        fields = tuple(_KS_SPLIT.split(text.strip()))
        if len(fields) not in (2, 3) or not all(fields):
            raise SplitParseError(f"expected '<id>[,<n>],<label_int>', got {len(fields)} field(s)"
                                  f"{'' if all(fields) else ', one of them empty'}")
        if not is_whole_number(fields[-1]):
            raise SplitParseError(f"label {fields[-1]!r} is not a non-negative integer")
        return SplitRow(fields[0], fields[-1], number, fields)
    return _parse(path, row, None, strict)


def parse_ks_json(path: Path) -> tuple[list[str], dict[str, dict]]:
    """BML's ``KS.json``: (class names in index order, ``database`` id -> {"subset", "label"})."""
    try:
        doc = json.loads(Path(path).read_bytes().decode("utf-8-sig"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise SplitParseError(f"{path}: not a JSON document ({err})") from err
    if not isinstance(doc, dict) or not isinstance(doc.get("labels"), list) or not isinstance(doc.get("database"),
                                                                                                 dict):
        raise SplitParseError(f"{path}: expected an object with a 'labels' list and a 'database' mapping")
    # Each row's label is checked against its entry's "label", which a string or list entry cannot hold.
    bad = {key: type(entry).__name__ for key, entry in doc["database"].items() if not isinstance(entry, dict)}
    if bad:
        key, kind = next(iter(bad.items()))
        raise SplitParseError(f"{path}: database entry {key!r} is {kind}, not an object with 'subset' and 'label' "
                              f"({len(bad)} such entries)")
    return [str(x) for x in doc["labels"]], doc["database"]


def parse_ave_list(path: Path, *, strict: bool = True) -> ParsedList:
    """AVE lists: ``Category&VideoID&Quality&Start&End``; split on ``&`` only (class names contain commas). Start and
    End are whole seconds with Start <= End (the event segment, ``ave_segment``)."""
    def row(text: str, number: int) -> SplitRow:
        fields = tuple(text.split("&"))
        if len(fields) != 5 or not fields[0] or not fields[1]:
            raise SplitParseError(f"expected 5 '&'-separated fields, got {len(fields)}")
        out = SplitRow(fields[1], fields[0], number, fields)
        ave_segment(out)
        return out
    return _parse(path, row, None, strict)


def ave_segment(row: SplitRow) -> tuple[int, int]:
    """An AVE row's event segment (Start, End) in whole seconds, Start <= End (one row of the published trainSet.txt
    has ``0&0``)."""
    start, end = row.fields[3].strip(), row.fields[4].strip()
    if not (is_whole_number(start) and is_whole_number(end) and int(start) <= int(end)):
        raise SplitParseError(f"Start&End must be whole seconds with Start <= End, got {start!r}&{end!r}")
    return int(start), int(end)


def csv_line_fields(line: str) -> list[str] | None:
    """One physical line's CSV fields, or None when a quote opens and never closes on it. A reader over the whole
    file would join the following lines into that field, and the rows they hold would vanish without a count. Other
    loose quoting (``"b"c``) is read as the csv module reads it by default."""
    try:
        return _strict_fields(line)
    except csv.Error:
        pass
    try:
        _strict_fields(line + '"')  # closing the quote repairs the line: the quote was left open
        return None
    except csv.Error:
        return next(csv.reader([line]), [])


def _strict_fields(line: str) -> list[str]:
    return next(csv.reader([line], strict=True), [])


def parse_vggsound_csv(path: Path, *, strict: bool = True) -> dict[str, ParsedList]:
    """``vggsound.csv``: ``ytid,start_seconds,label,split`` (no header; quoted labels may contain commas).

    Returns one ``ParsedList`` per split value (``train``, ``test``); the id is ``f"{ytid}_{start}"`` with the start
    exactly as written (docs/datasets/vggsound.md).
    """
    path = Path(path)
    lines, bom, endings = read_lines(path)
    out: dict[str, ParsedList] = {}
    skipped: list[tuple[int, str, str]] = []
    for number, text in enumerate(lines, start=1):
        if not text.strip():
            skipped.append((number, text, "blank line"))
            continue
        fields = csv_line_fields(text) or []
        problem = _vggsound_row_problem(fields)
        if problem:
            message = f"{path}:{number}: {problem}, got {text!r}"
            if strict:
                raise SplitParseError(message)
            skipped.append((number, text, message))
            continue
        ytid, start, label, split = (f.strip() for f in fields)
        parsed = out.setdefault(split, ParsedList(path, bom=bom, line_endings=endings))
        parsed.rows.append(SplitRow(f"{ytid}_{start}", label, number, (ytid, start, label, split)))
    for parsed in out.values():
        parsed.skipped = list(skipped)
    return out


def _vggsound_row_problem(fields: list[str]) -> str | None:
    """Why a ``vggsound.csv`` row is refused, or None. The start is part of the clip name, so one that is not a whole
    number of seconds would only surface later as "missing media"; the published file writes it unpadded (``30``),
    other copies zero-pad it (``000030``), and both are digits."""
    # Stripped, as the row is read: a blank ytid or label would make a clip "_30" or a class "".
    if len(fields) != 4 or not fields[0].strip() or not fields[2].strip() or fields[3].strip() not in ("train", "test"):
        return "expected 'ytid,start,label,train|test'"
    if not is_whole_number(fields[1].strip()):
        return f"start_seconds (field 2) {fields[1]!r} is not a whole number of seconds"
    return None


def first_appearance(labels: Iterable[str]) -> list[str]:
    """Distinct labels in order of first appearance (AVE's PMR/AMSS convention over ``testSet.txt``)."""
    return list(dict.fromkeys(labels))


def duplicate_ids(rows: Sequence[SplitRow]) -> dict[str, int]:
    """Ids that occur more than once, with their counts."""
    return {k: v for k, v in Counter(r.id for r in rows).items() if v > 1}


def resolve_duplicates(rows: Sequence[SplitRow], policy: str
                       ) -> tuple[list[SplitRow], list[tuple[SplitRow, str]]]:
    """Apply a duplicate-id policy within one split.

    Args:
        rows: rows in file order.
        policy: ``first`` keeps the first occurrence (PMR/AMSS dedup by path), ``last`` the last one (OGM-GE's
            ``AVDataset`` overwrites), ``drop`` removes every row of a repeated id.

    Returns:
        (kept rows in file order, [(dropped row, reason)]).
    """
    if policy not in DUPLICATE_POLICIES:
        raise ValueError(f"unknown duplicate policy {policy!r}; valid: {DUPLICATE_POLICIES}")
    counts = Counter(r.id for r in rows)
    if policy == "drop":
        keep = [counts[r.id] == 1 for r in rows]
    else:
        chosen: dict[str, int] = {}
        for pos, r in enumerate(rows):
            if policy == "last" or r.id not in chosen:
                chosen[r.id] = pos
        keep = [chosen[r.id] == pos for pos, r in enumerate(rows)]
    kept = [r for r, k in zip(rows, keep) if k]
    dropped = [(r, f"duplicate id (occurs {counts[r.id]}x; policy '{policy}')") for r, k in zip(rows, keep) if not k]
    return kept, dropped


_NATURAL = re.compile(r"(\d+)")


def natural_key(name: str) -> tuple:
    """Sort key that orders digit runs numerically: ``frame_00009.jpg`` < ``frame_000010.jpg``, ``2.jpg`` < ``10.jpg``.

    Digit and text runs alternate starting with text, so the run tuples of any two names compare element by element;
    the name itself breaks ties (``01.jpg`` vs ``1.jpg``) so the order never depends on directory listing order.
    """
    parts = _NATURAL.split(name)
    return tuple(int(p) if i % 2 else p for i, p in enumerate(parts)), name
