"""Our five top-level packages are ours; a shadowing 'datasets' (e.g. Hugging Face's) gives a clear message."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import types
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", ["core", "aug", "baselines", "benchmarks", "datasets"])
def test_package_resolves_to_this_project(name):
    module = __import__(name)
    assert Path(module.__file__).resolve().parent == ROOT / name
    assert module.__aug_bench__ is True


def test_shadowing_datasets_package_gives_a_clear_message(tmp_path):
    fake = tmp_path / "datasets"
    fake.mkdir()
    (fake / "__init__.py").write_text("load_dataset = None\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT)])}
    out = subprocess.run([sys.executable, "-c", "from benchmarks.cli import main; raise SystemExit(main(['list']))"],
                         env=env, capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 2
    assert "is not AUG-Bench's datasets package" in out.stderr and "virtual environment" in out.stderr
    assert "Traceback" not in out.stderr


def test_a_missing_transformers_package_names_the_extra_that_installs_it(monkeypatch):
    from core.extras import MissingExtraError, require_transformers

    monkeypatch.setitem(sys.modules, "transformers", None)  # what `import transformers` meets when not installed
    with pytest.raises(MissingExtraError, match=r"pip install 'augbench\[text\]' \(or set model.text_encoder="):
        require_transformers()


@pytest.mark.parametrize("name", ["core", "aug", "baselines", "benchmarks", "datasets"])
def test_each_of_our_packages_shadowed_is_refused_naming_the_impostors_file(tmp_path, monkeypatch, name):
    from benchmarks.guard import ShadowedPackageError, check_packages

    impostor = types.ModuleType(name)
    impostor.__file__ = str(tmp_path / name / "__init__.py")
    monkeypatch.setitem(sys.modules, name, impostor)
    with pytest.raises(ShadowedPackageError, match=rf"'import {name}' resolved to '{re.escape(impostor.__file__)}', "
                                                   rf"which is not AUG-Bench's {name} package"):
        check_packages()


def test_a_package_that_answers_every_attribute_is_not_taken_for_ours(tmp_path, monkeypatch):
    # A lazily loading package (module-level __getattr__) has an __aug_bench__ too: only the value True is ours.
    from benchmarks.guard import ShadowedPackageError, check_packages

    impostor = types.ModuleType("datasets")
    impostor.__getattr__ = lambda attribute: object()
    monkeypatch.setitem(sys.modules, "datasets", impostor)
    with pytest.raises(ShadowedPackageError, match="is not AUG-Bench's datasets package"):
        check_packages()
