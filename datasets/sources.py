"""Pinned public split files (docs/datasets/README.md#pinned-split-files): where each one lives, its SHA-256, and how to
fetch it.

``prepare`` never reads a split file it has not verified. A downloaded file must match the pinned SHA-256 byte for
byte (raw URLs serve the blob as stored, so CRLF and BOMs survive; a ``git clone`` may rewrite them,
docs/datasets/README.md#conventions). A local copy (``--splits DIR``) is checked against the same table: a match is
recorded as ``pinned``; a mismatch (for example AV-Digits' generated annotations, or a user's own lists) is recorded as
``custom`` with its own SHA-256 and a printed notice, or refused with ``strict=True``. Every file read is copied next to
the cache so the cache documents exactly which lists built it.
"""

from __future__ import annotations

import hashlib
import shutil
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

from core.errors import InputError

RAW_URL = "https://raw.githubusercontent.com"

COMMITS = {
    "GeWu-Lab/OGM-GE_CVPR2022": "343dc1d95c9bda88f105c0da8d24f185e0e98b54",
    "GeWu-Lab/Diagnosing_Relearning_ECCV2024": "025085ea82ed784c6ab6e5fb1b08bfe498dd0fc7",
    "GeWu-Lab/BML_TPAMI2024": "4b3aa4fd841856c4acbebf48549e6c59fbf7635e",
    "fanyunfeng-bit/Modal-Imbalance-PMR": "3615e48983555089b0e693380087617c3797a641",
    "CheyneyComputerScience/CREMA-D": "1658cd342dff90010aa843eaeebd53610a08b1dc",
}


@dataclass(frozen=True)
class PinnedFile:
    """One published split or metadata file, pinned by commit and SHA-256 (docs/datasets/README.md#pinned-split-files).

    Attributes:
        dataset: dataset name (folder in ``../shared/splits/``).
        name: file name, as in ``../shared/splits/<dataset>/`` and in the cache's ``split_files/``.
        repo: GitHub ``owner/name``.
        path: path inside the repository.
        sha256: expected SHA-256 of the raw bytes.
        rows: data rows (ids for ``KS.json``), for documentation and tests.
        size: bytes.
    """

    dataset: str
    name: str
    repo: str
    path: str
    sha256: str
    rows: int
    size: int

    @property
    def commit(self) -> str:
        return COMMITS[self.repo]

    def url(self, base: str = RAW_URL) -> str:
        return f"{base.rstrip('/')}/{self.repo}/{self.commit}/{self.path}"


_OGM, _DIAG, _BML = "GeWu-Lab/OGM-GE_CVPR2022", "GeWu-Lab/Diagnosing_Relearning_ECCV2024", "GeWu-Lab/BML_TPAMI2024"
_PMR, _CREMA = "fanyunfeng-bit/Modal-Imbalance-PMR", "CheyneyComputerScience/CREMA-D"

PINNED: tuple[PinnedFile, ...] = (
    PinnedFile("cremad", "train.csv", _OGM, "data/CREMAD/train.csv",
               "68d0d3fd253830328fc92c68f3cf2e215db8c5b86757ad9c5112d2c76ba68bde", 6698, 140658),
    PinnedFile("cremad", "test.csv", _OGM, "data/CREMAD/test.csv",
               "14866c99301fd56fb4a16f8a7048a8a6372a47069aee9f216443bc718be45f1f", 744, 15624),
    PinnedFile("cremad", "stat.csv", _OGM, "data/CREMAD/stat.csv",
               "827044c2e7dae878abf30db1a789dcedac2ae260df34d62e6c28c9f8ed82546c", 6, 33),
    PinnedFile("cremad", "my_train.csv", _DIAG, "code/dataset/cremad/my_train.csv",
               "eaf4d9332c743a8e0a0538e53f15f86552fb961858a8347588f6ffc09071b232", 5954, 119080),
    PinnedFile("cremad", "val.csv", _DIAG, "code/dataset/cremad/val.csv",
               "ecbd82453caca8a7126df010d67b33813387af3cbe32efe5eb5a94ed2d161291", 744, 14880),
    PinnedFile("cremad", "summaryTable.csv", _CREMA, "processedResults/summaryTable.csv",
               "fb0e382700d32c0d9adc0c6815292215a36bcf912f2657048862c91e3bd2b317", 7442, 449048),
    PinnedFile("cremad", "VideoDemographics.csv", _CREMA, "VideoDemographics.csv",
               "e33ddc8b60bedf98541735801127cbb67098b5957271adbdd5dea8a44294eec3", 91, 4033),
    PinnedFile("kinetics_sounds", "my_train.txt", _OGM, "data/KineticSound/my_train.txt",
               "e75bb596c30bf839adb3c2dc73b4a4617add66b36c2f416f96ac2e56a251751f", 14799, 483173),
    PinnedFile("kinetics_sounds", "my_test.txt", _OGM, "data/KineticSound/my_test.txt",
               "3bb1fee2c9d30919cec6887a3e2fa27b7936cc3f46dff447d85ea21892a80a58", 2597, 56016),
    PinnedFile("kinetics_sounds", "KS.json", _BML, "code/dataset/KS.json",
               "b5aaf5b66603de8c1be7b4eedac942eb2a81787f840d79f06afdd0ad597ca346", 18716, 1457658),
    PinnedFile("ave", "trainSet.txt", _PMR, "data/AVE/trainSet.txt",
               "4f6c37aff56d4a3407f8beff47ca59dcefb8e94b3e02bbc34b0c89b5cdad6945", 3339, 116313),
    PinnedFile("ave", "valSet.txt", _PMR, "data/AVE/valSet.txt",
               "76c3c51b67aacbbacd5708e17aab491638a5e9032f786adad1a13be55d9cb3ca", 402, 13991),
    PinnedFile("ave", "testSet.txt", _PMR, "data/AVE/testSet.txt",
               "e73c25a509bb38a691c1e08064af66d0512554f2fbc883cddd6d2a51ede8449d", 402, 13983),
)


class SplitFileError(InputError, RuntimeError):
    """A split file is missing, cannot be downloaded, or does not match its pinned SHA-256."""


@dataclass(frozen=True)
class FetchedFile:
    """A verified split file as ``prepare`` will read it.

    Attributes:
        name: file name.
        path: the verified copy (inside the cache's staging folder).
        sha256: SHA-256 of its bytes.
        origin: the URL or local path it came from.
        status: ``pinned`` (matches docs/datasets/README.md#pinned-split-files), ``custom`` (a local file with no pin,
        or a different one).
    """

    name: str
    path: Path
    sha256: str
    origin: str
    status: str

    def record(self) -> dict[str, str]:
        return {"sha256": self.sha256, "origin": self.origin, "status": self.status}


def pinned_files(dataset: str) -> dict[str, PinnedFile]:
    """The pinned files of ``dataset`` by file name (empty for datasets without pinned lists, e.g. VGGSound)."""
    return {p.name: p for p in PINNED if p.dataset == dataset}


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _download(url: str, timeout: float) -> bytes:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.read()
    except (urllib.error.URLError, OSError) as err:
        raise SplitFileError(f"cannot download {url}: {err}. Pass --splits DIR with local copies of the published "
                             f"files instead.") from err


def fetch_split_files(dataset: str, names: Iterable[str], dest: Path, *, local_dir: Path | None = None,
                      base_url: str = RAW_URL, optional: Iterable[str] = (), strict: bool = False,
                      timeout: float = 60.0, log: Callable[[str], None] = print) -> dict[str, FetchedFile]:
    """Verify and copy the named split files of ``dataset`` into ``dest``.

    Args:
        dataset: dataset name whose pinned table applies.
        names: file names to fetch.
        dest: folder that receives the verified copies.
        local_dir: read local copies from here instead of downloading (``--splits DIR``).
        base_url: URL prefix replacing ``https://raw.githubusercontent.com`` (a mirror, or ``file://`` in tests).
        optional: names that may be absent from ``local_dir`` (they are then left out of the result).
        strict: refuse local files whose SHA-256 differs from the pin instead of recording them as ``custom``.
        timeout: per-download timeout in seconds.
        log: where notices go.

    Returns:
        File name -> ``FetchedFile`` for every file found.

    Raises:
        SplitFileError: a required file is missing, a download fails, or a checksum does not match.
    """
    pins = pinned_files(dataset)
    optional = set(optional)
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    out: dict[str, FetchedFile] = {}
    for name in names:
        pin = pins.get(name)
        if local_dir is not None:
            src = Path(local_dir) / name
            if not src.is_file():
                if name in optional:
                    continue
                raise SplitFileError(f"split file {src} not found (needed for {dataset}: {', '.join(names)})")
            digest = sha256_file(src)
            status = "pinned" if pin is not None and digest == pin.sha256 else "custom"
            if status == "custom":
                detail = (f"differs from the pinned {pin.repo}@{pin.commit[:8]}:{pin.path} ({pin.sha256[:12]}…)"
                          if pin is not None else "has no pinned published version")
                if strict:
                    raise SplitFileError(f"{src}: SHA-256 {digest} {detail}")
                log(f"note: {src} {detail}; recorded as a custom split file (sha256 {digest[:12]}…)")
            target = dest / name
            if src.resolve() != target.resolve():
                shutil.copyfile(src, target)
            out[name] = FetchedFile(name, target, digest, str(src), status)
            continue
        if pin is None:
            if name in optional:
                continue
            raise SplitFileError(f"{dataset}: {name} has no pinned download; pass --splits DIR with a local copy")
        target = dest / name
        if target.is_file() and sha256_file(target) == pin.sha256:
            out[name] = FetchedFile(name, target, pin.sha256, pin.url(base_url), "pinned")
            continue
        url = pin.url(base_url)
        data = _download(url, timeout)
        digest = sha256_bytes(data)
        if digest != pin.sha256:
            raise SplitFileError(f"{url}: SHA-256 {digest} does not match the pinned {pin.sha256} "
                                 f"({pin.repo}@{pin.commit[:8]}:{pin.path}); refusing to use it")
        target.write_bytes(data)
        out[name] = FetchedFile(name, target, digest, url, "pinned")
    return out
