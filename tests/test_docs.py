"""The documentation is self-contained: nothing cites the internal spec files, and every docs path or link resolves.

A user clones the repository alone, so a citation such as "methods.md §4.13" points nowhere; code and configs cite
papers, official repositories and the pages under ``docs/`` instead. Every registered method, dataset and method knob
is documented, and ``python -m benchmarks.readme`` says which generated README tables it rewrote.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from baselines.registry import list_methods
from benchmarks.config import method_hparams
from datasets.registry import list_datasets

ROOT = Path(__file__).resolve().parents[1]
THIS = Path(__file__).resolve().relative_to(ROOT).as_posix()
SPEC_CITATION = re.compile(r"\b(?:methods|datasets|style)\.md\b")
DOCS_PATH = re.compile(r"\bdocs/[\w./-]*?\.md(?:#[\w-]+)?")
MD_LINK = re.compile(r"\]\(([^)\s]+)\)")
SKIP_DIRS = {".git", ".venv", "__pycache__", ".pytest_cache", "node_modules"}


def tracked_files() -> list[Path]:
    """Files git tracks (plus untracked, not ignored ones); without git, every file outside caches and venvs."""
    try:
        out = subprocess.run(["git", "-C", str(ROOT), "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
                             check=True, capture_output=True, timeout=60).stdout.decode()
        names = [n for n in out.split("\0") if n]
    except (OSError, subprocess.SubprocessError):
        names = [p.relative_to(ROOT).as_posix() for p in ROOT.rglob("*")
                 if p.is_file() and not SKIP_DIRS & set(p.relative_to(ROOT).parts)]
    return [ROOT / n for n in sorted(set(names)) if n != THIS and (ROOT / n).is_file()]


def text_of(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        return None


def anchors(page: Path) -> set[str]:
    """Explicit ``id="..."`` anchors plus GitHub-style heading slugs of a Markdown page."""
    text = page.read_text(encoding="utf-8")
    found = set(re.findall(r'id="([\w-]+)"', text))
    for heading in re.findall(r"^#+\s+(.+?)\s*$", text, re.M):
        found.add(re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-"))
    return found


def check_target(page: Path, anchor: str, where: str) -> str | None:
    if not page.is_file():
        return f"{where}: {page.relative_to(ROOT) if page.is_relative_to(ROOT) else page} does not exist"
    if anchor and page.suffix == ".md" and anchor not in anchors(page):
        return f"{where}: {page.relative_to(ROOT)} has no anchor #{anchor}"
    return None


def test_no_file_cites_the_internal_spec():
    hits = []
    for path in tracked_files():
        text = text_of(path)
        if text is None:
            continue
        for i, line in enumerate(text.splitlines(), 1):
            if SPEC_CITATION.search(line):
                hits.append(f"{path.relative_to(ROOT)}:{i}: {line.strip()[:120]}")
    assert not hits, "cite docs/ (or the paper / official code) instead of the internal spec:\n" + "\n".join(hits)


def test_every_cited_docs_path_exists():
    problems = []
    for path in tracked_files():
        text = text_of(path)
        if text is None:
            continue
        for i, line in enumerate(text.splitlines(), 1):
            for cited in DOCS_PATH.findall(line):
                target, _, anchor = cited.partition("#")
                problem = check_target(ROOT / target, anchor, f"{path.relative_to(ROOT)}:{i} cites {cited}")
                if problem:
                    problems.append(problem)
    assert not problems, "\n".join(problems)


def test_markdown_links_resolve():
    problems = []
    for page in [p for p in tracked_files() if p.suffix == ".md"]:
        for i, line in enumerate(page.read_text(encoding="utf-8").splitlines(), 1):
            for link in MD_LINK.findall(line):
                if re.match(r"[a-z]+:", link):
                    continue  # http(s), mailto: not checked offline
                target, _, anchor = link.partition("#")
                resolved = (page.parent / target).resolve() if target else page
                problem = check_target(resolved, anchor, f"{page.relative_to(ROOT)}:{i} links {link}")
                if problem:
                    problems.append(problem)
    assert not problems, "\n".join(problems)


def test_every_registered_method_and_dataset_is_indexed_in_docs():
    methods_index = (ROOT / "docs" / "methods" / "README.md").read_text(encoding="utf-8")
    datasets_index = (ROOT / "docs" / "datasets" / "README.md").read_text(encoding="utf-8")
    missing = [f"method {m}" for m in list_methods() if f"`{m}`" not in methods_index]
    missing += [f"dataset {d}" for d in list_datasets() if f"`{d}`" not in datasets_index]
    assert not missing, f"add these to the index in docs/methods/README.md or docs/datasets/README.md: {missing}"


def test_every_method_knob_is_documented():
    pages = "\n".join(p.read_text(encoding="utf-8") for p in sorted((ROOT / "docs" / "methods").glob("*.md")))
    missing = [f"{name}.{p.name}" for name, cls in list_methods().items() for p in method_hparams(cls)
               if f"`{name}.{p.name}`" not in pages]
    assert not missing, f"document these knobs in docs/methods/ (their default and source): {missing}"


def _readme(tmp_path: Path, methods: str, datasets: str) -> Path:
    path = tmp_path / "README.md"
    path.write_text(f"intro\n<!-- methods:begin -->\n{methods}<!-- methods:end -->\nmiddle\n"
                    f"<!-- datasets:begin -->\n{datasets}<!-- datasets:end -->\noutro\n", encoding="utf-8")
    return path


def test_readme_refresh_rewrites_only_stale_blocks_and_says_so(tmp_path, monkeypatch):
    from benchmarks.readme import refresh, report
    blocks = {"methods": lambda: "| m |\n", "datasets": lambda: "| d |\n"}
    path = _readme(tmp_path, "| old |\n", "| d |\n")
    assert refresh(path, blocks) == ["methods"]
    assert path.read_text(encoding="utf-8") == ("intro\n<!-- methods:begin -->\n| m |\n<!-- methods:end -->\nmiddle\n"
                                                 "<!-- datasets:begin -->\n| d |\n<!-- datasets:end -->\noutro\n")
    assert report(path, ["methods"], blocks) == "README.md: rewrote methods table(s)"

    def no_write(*args, **kwargs):
        raise AssertionError("an already current README must not be rewritten")

    monkeypatch.setattr(Path, "write_text", no_write)
    assert refresh(path, blocks) == []
    assert report(path, [], blocks) == "README.md: methods, datasets table(s) already current; nothing written"


def test_readme_refresh_names_a_missing_block(tmp_path):
    from benchmarks.readme import refresh
    path = tmp_path / "README.md"
    path.write_text("<!-- methods:begin -->\nx\n<!-- methods:end -->\n", encoding="utf-8")
    with pytest.raises(ValueError, match="datasets:begin"):
        refresh(path, {"methods": lambda: "x\n", "datasets": lambda: "y\n"})
    assert path.read_text(encoding="utf-8") == "<!-- methods:begin -->\nx\n<!-- methods:end -->\n"


def test_readme_command_prints_what_it_did(tmp_path, monkeypatch, capsys):
    import benchmarks.readme as readme
    path = _readme(tmp_path, "stale\n", "stale\n")
    monkeypatch.setattr(readme, "README", path)
    assert readme.main() == 0
    assert capsys.readouterr().out == "README.md: rewrote methods, datasets table(s)\n"
    assert readme.main() == 0
    assert capsys.readouterr().out == "README.md: methods, datasets table(s) already current; nothing written\n"


KNOB_ROW = re.compile(r"^\| `(\w+)\.(\w+)` \| `(.*?)` \| (.*?) \|")


def test_knob_tables_state_the_declared_defaults():
    """Every knob-table row on a method page names a declared knob with its current default and per-dataset
    defaults (a changed default, or a removed knob, leaves a stale row otherwise)."""
    declared = {}
    for name, cls in list_methods().items():
        for p in method_hparams(cls):
            per_dataset = ", ".join(f"{k}: {v}" for k, v in p.per_dataset.items())
            declared[f"{name}.{p.name}"] = (repr(p.default).replace("|", "\\|"), per_dataset)
    problems, rows = [], set()
    for page in sorted((ROOT / "docs" / "methods").glob("*.md")):
        for i, line in enumerate(page.read_text(encoding="utf-8").splitlines(), 1):
            match = KNOB_ROW.match(line)
            if not match:
                continue
            knob, stated = f"{match[1]}.{match[2]}", (match[3], match[4].strip())
            rows.add(knob)
            where = f"{page.relative_to(ROOT)}:{i}"
            if knob not in declared:
                problems.append(f"{where}: {knob} is not a declared knob")
            elif stated != declared[knob]:
                problems.append(f"{where}: {knob} states default/per-dataset {stated}, the code declares "
                                f"{declared[knob]}")
    problems += [f"{knob} has no row in a knob table under docs/methods/ (a row like | `{knob}` | `<default as "
                 f"Python writes it>` | <per-dataset defaults> | <source / meaning> |, see docs/add-a-method.md "
                 f"section 7)" for knob in sorted(set(declared) - rows)]
    assert not problems, "\n".join(problems)
