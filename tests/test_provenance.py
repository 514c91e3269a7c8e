"""Where a run or a cache came from: the checkout's commit and whether it had uncommitted changes, the CPU, and the
installed libraries."""

from __future__ import annotations

import importlib.metadata
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from core import provenance
from core.provenance import cpu_model, git_commit, git_dirty, library_versions

ROOT = Path(__file__).resolve().parents[1]


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@example.org", *args], cwd=repo,
                          capture_output=True, text=True, check=True).stdout


@pytest.fixture
def checkout(tmp_path, monkeypatch):
    """A git checkout with one committed file, which git consults instead of this code's own (GIT_DIR)."""
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    repo = tmp_path / "repo"
    repo.mkdir()
    git(repo, "init", "-q")
    (repo / "tracked.txt").write_text("one\n")
    git(repo, "add", "tracked.txt")
    git(repo, "commit", "-q", "-m", "first")
    monkeypatch.setenv("GIT_DIR", str(repo / ".git"))
    monkeypatch.setenv("GIT_WORK_TREE", str(repo))
    return repo


def test_the_commit_is_the_checkouts_head_and_untracked_files_do_not_make_it_dirty(checkout):
    assert git_commit() == git(checkout, "rev-parse", "HEAD").strip()
    (checkout / "notes.txt").write_text("a scratch file\n")
    assert git_dirty() is False, "an untracked file is not a change to the code"
    (checkout / "tracked.txt").write_text("two\n")
    assert git_dirty() is True


def test_outside_a_git_checkout_or_without_git_commit_and_dirty_are_unknown(tmp_path, monkeypatch):
    monkeypatch.setenv("GIT_DIR", str(tmp_path / "not-a-repo"))
    assert (git_commit(), git_dirty()) == (None, None), "git fails: unknown, not 'clean'"
    monkeypatch.setenv("PATH", str(tmp_path))
    assert (git_commit(), git_dirty()) == (None, None), "no git program"


def test_a_git_that_hangs_is_given_up_on(monkeypatch):
    def hang(*args, **kwargs):
        raise subprocess.TimeoutExpired(args[0], kwargs.get("timeout"))

    monkeypatch.setattr(provenance.subprocess, "run", hang)
    assert (git_commit(), git_dirty()) == (None, None)


def test_the_commit_is_this_codes_whatever_the_working_folder(tmp_path, monkeypatch):
    # A run started from another folder (a scratch disk) records the commit of the code that trained it.
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    monkeypatch.chdir(tmp_path)
    assert git_commit() == (head.stdout.strip() if head.returncode == 0 else None)


def test_the_cpu_model_is_the_model_name_of_proc_cpuinfo(monkeypatch):
    cpuinfo = Path("/proc/cpuinfo")
    if not cpuinfo.exists():
        pytest.skip("no /proc/cpuinfo")
    names = re.findall(r"^model name\s*:\s*(.*?)\s*$", cpuinfo.read_text(), re.M)
    if not names:
        pytest.skip("this CPU's /proc/cpuinfo names no model")
    assert cpu_model() == names[0]


def test_a_cpuinfo_without_a_model_name_falls_back_to_the_machine(tmp_path, monkeypatch):
    # An ARM Linux cpuinfo has "model : 1" lines but no "model name"; platform.processor() is often empty there.
    (tmp_path / "cpuinfo").write_text("processor\t: 0\nmodel\t\t: 1\nCPU part\t: 0xd0c\n")
    monkeypatch.setattr(provenance, "Path", lambda _: tmp_path / "cpuinfo")
    monkeypatch.setattr(provenance.platform, "processor", lambda: "")
    monkeypatch.setattr(provenance.platform, "machine", lambda: "aarch64")
    assert cpu_model() == "aarch64"


def test_library_versions_name_each_library_and_none_for_one_not_installed(monkeypatch):
    monkeypatch.setattr(provenance, "LIBRARIES", ("numpy", "surely-not-an-installed-distribution"))
    assert library_versions() == {"numpy": importlib.metadata.version("numpy"),
                                  "surely-not-an-installed-distribution": None}


def test_recording_whether_the_checkout_is_dirty_writes_nothing_into_it(checkout):
    # `git status` refreshes the index under .git/index.lock: a user's own git command at that moment failed with
    # "index.lock: File exists", and a status killed at the timeout left the lock behind for good.
    tracked = checkout / "tracked.txt"
    later = tracked.stat().st_mtime + 60
    os.utime(tracked, (later, later))  # a new mtime, the same content: a plain status rewrites the index
    index = (checkout / ".git" / "index").read_bytes()
    assert git_dirty() is False
    assert (checkout / ".git" / "index").read_bytes() == index
