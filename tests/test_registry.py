"""The registry is explicit and complete, and bad names/keys fail with the valid alternatives listed."""

from __future__ import annotations

import importlib
import inspect
import re
from pathlib import Path

import pytest

from baselines.base import DATA_PARALLEL_LEVELS, Method
from baselines.registry import METHOD_MODULES, UnknownMethodError, get_method, list_methods, register
from benchmarks.config import build_config, declared_knobs, method_hparams
from core.hparams import HParamError
from datasets.registry import (
    DATASET_MODULES,
    Dataset,
    UnknownDatasetError,
    get_dataset,
    list_datasets,
    register_dataset,
)

ROOT = Path(__file__).resolve().parents[1]
SUPPORT_MODULES = {"__init__", "base", "registry", "hparams", "networks", "heads", "encoders"}


def method_files() -> list[str]:
    files = [f"baselines.{p.stem}" for p in sorted((ROOT / "baselines").glob("*.py")) if p.stem not in SUPPORT_MODULES]
    return files + ["aug.method"] if (ROOT / "aug" / "method.py").exists() else files


@pytest.mark.parametrize("module", method_files())
def test_every_method_file_is_listed_and_registers_exactly_one_method(module):
    assert module in METHOD_MODULES, f"{module} is not listed in baselines/registry.py METHOD_MODULES"
    mod = importlib.import_module(module)
    defined = [c for _, c in inspect.getmembers(mod, inspect.isclass)
               if issubclass(c, Method) and c.__module__ == module and c in list_methods().values()]
    assert len(defined) == 1, f"{module} registers {[c.__name__ for c in defined]}"


def test_every_listed_module_registers_exactly_one_method():
    registered = [cls.__module__ for cls in list_methods().values()]
    for module in METHOD_MODULES:
        importlib.import_module(module)
        assert registered.count(module) == 1, f"{module} registers {registered.count(module)} methods"
    assert sorted(registered) == sorted(METHOD_MODULES)


@pytest.mark.parametrize("name", sorted(list_methods()))
def test_registered_methods_are_documented(name):
    cls = list_methods()[name]
    assert cls.title and cls.PAPER and cls.CODE, f"{name} lacks title/PAPER/CODE"
    assert inspect.getmodule(cls).__doc__, f"{name}'s module has no docstring citing its source"
    for p in cls.HPARAMS:
        assert p.doc, f"{name}.{p.name} has no source/doc"


def test_unknown_method_lists_valid_names():
    with pytest.raises(UnknownMethodError) as err:
        get_method("no_such_method")
    assert "joint" in str(err.value) and "no_such_method" in str(err.value)


def test_unknown_dataset_lists_valid_names():
    with pytest.raises(UnknownDatasetError) as err:
        get_dataset("no_such_dataset")
    assert "synthetic" in str(err.value)


def test_unknown_dataset_message_lists_every_registered_name_sorted():
    names = {cls.NAME for cls in list_datasets().values()}
    assert {"synthetic", "cremad", "av_digits", "ucf101"} <= names
    with pytest.raises(UnknownDatasetError) as err:
        get_dataset("cremadd")
    assert str(err.value) == f"unknown dataset 'cremadd'; valid datasets: {', '.join(sorted(names))}"


def test_every_dataset_file_is_listed_and_every_listed_module_registers_a_dataset():
    # an unlisted file's dataset would be unknown by name; a listed module must register what it defines
    registering = {f"datasets.{p.stem}" for p in (ROOT / "datasets").glob("*.py")
                   if re.search(r"^@register_dataset$", p.read_text(), re.M)}
    assert registering == set(DATASET_MODULES)
    modules = {cls.__module__ for cls in list_datasets().values()}
    assert modules == set(DATASET_MODULES)


def test_a_second_dataset_under_a_taken_name_is_refused_and_the_first_kept():
    from datasets.synthetic import Synthetic

    class Impostor(Dataset):
        NAME = "synthetic"

    with pytest.raises(ValueError, match="dataset name 'synthetic' registered twice"):
        register_dataset(Impostor)
    assert get_dataset("synthetic") is Synthetic
    assert register_dataset(Synthetic) is Synthetic, "registering the same class again is a no-op"
    assert get_dataset("synthetic") is Synthetic


def test_duplicate_method_name_is_rejected():
    class Impostor(Method):
        name = "joint"

    with pytest.raises(ValueError, match="registered twice"):
        register(Impostor)


def test_unknown_hparam_key_and_namespace_fail_clearly():
    with pytest.raises(HParamError, match=r"train\.lrr.*valid keys"):
        build_config("joint", "synthetic", {"train": {"lrr": 0.1}})
    with pytest.raises(HParamError, match="namespace"):
        build_config("joint", "synthetic", {"ogm_ge": {"alpha": 0.8}})
    with pytest.raises(HParamError, match="unimodal.nope"):
        build_config("unimodal", "synthetic", {"unimodal": {"nope": 1}})


@pytest.mark.parametrize("name", sorted(list_methods()))
def test_every_method_declares_its_data_parallel_level_with_a_reason(name):
    cls = list_methods()[name]
    assert vars(cls).get("DATA_PARALLEL") in DATA_PARALLEL_LEVELS, f"{name} does not declare DATA_PARALLEL itself"
    source = inspect.getsource(cls)
    declared = re.search(r'^ +DATA_PARALLEL = "(\w+)" +# (.{10,})$', source, re.M)
    assert declared and declared.group(1) == cls.DATA_PARALLEL, f"{name}: no one-line reason beside DATA_PARALLEL"


def test_register_refuses_a_method_without_a_data_parallel_level():
    class Undeclared(Method):
        name = "undeclared_method"

    class Inheriting(list_methods()["joint"]):
        name = "inheriting_method"

    class Misspelled(Method):
        name = "misspelled_method"
        DATA_PARALLEL = "exactly"

    for cls in (Undeclared, Inheriting, Misspelled):
        with pytest.raises(ValueError, match=f"{cls.name}.*must declare DATA_PARALLEL as one of"):
            register(cls)
        assert cls.name not in list_methods()


def test_a_listed_module_without_its_file_is_one_line_naming_the_tuple_and_the_file(tmp_path, monkeypatch):
    from core.listed_modules import ListedModuleError, import_listed, listed_source

    for check in (import_listed, listed_source):
        with pytest.raises(ListedModuleError, match=r"METHOD_MODULES in baselines/registry.py lists "
                                                    r"'baselines.fixedwieght', but there is no file "
                                                    r"baselines/fixedwieght.py"):
            check("baselines.fixedwieght", "METHOD_MODULES in baselines/registry.py")
    # a listed module whose own import fails keeps its error: that is not a naming mistake
    (tmp_path / "broken_listed.py").write_text("import no_such_dependency_here\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ModuleNotFoundError, match="no_such_dependency_here"):
        import_listed("broken_listed", "X")
    # a folder of that name without the module file is still no module file to register from
    (tmp_path / "folder_listed").mkdir()
    with pytest.raises(ListedModuleError, match="lists 'folder_listed', but there is no file folder_listed.py"):
        listed_source("folder_listed", "X")


def test_every_per_dataset_default_names_a_registered_dataset_and_reads_back_as_written():
    # A misspelt dataset key (crema_d) left that dataset at the plain default without a word; resolve() applies a
    # per-dataset value as written, so an int on a float knob would change the run's hash when read back.
    datasets = set(list_datasets())
    for method in list_methods():
        for namespace, knobs in declared_knobs(method, "synthetic").items():
            for knob in knobs:
                for dataset, value in knob.per_dataset.items():
                    where = f"{namespace}.{knob.name} per_dataset[{dataset!r}]"
                    assert dataset in datasets, f"{where}: no registered dataset {dataset!r}"
                    typed = knob.coerce(namespace, value)
                    assert repr(typed) == repr(value), f"{where}: {value!r} reads back {typed!r}"


def test_every_variant_preset_sets_declared_knobs_to_valid_typed_values():
    # resolve() applies a preset's values as written (only overrides are coerced): an int where a float knob's runs
    # hold floats, or a value outside the knob's choices or bounds, would train unchecked and change the run's hash
    # when its record is read back as overrides (evaluate, resume with --run-dir alone).
    for name in list_methods():
        cls = get_method(name)
        table = {p.name: p for p in method_hparams(cls)}
        for variant, preset in cls.VARIANTS.items():
            for key, value in preset.items():
                assert key in table, f"{name} variant {variant!r} sets undeclared {key!r}"
                typed = table[key].coerce(name, value)
                assert repr(typed) == repr(value), f"{name} variant {variant!r}: {key}={value!r} reads back {typed!r}"


@pytest.mark.parametrize("method, key, value, message", [
    ("ogm_ge", "alpha", -5.0, "ogm_ge.alpha must be >= 0"),    # k = 1 - tanh(-5 rho) > 1 sped the dominant one up
    ("ogm", "mod_end", -1, "ogm.mod_end must be >= 0"),
    ("aug", "learner_dim", 0, "aug.learner_dim must be >= 1"),  # a chance-level run recorded as finished AUG
    ("aug", "sigma", -1.0, "aug.sigma must be > 0"),
])
def test_method_knobs_whose_nonsense_values_trained_to_the_end_are_refused(method, key, value, message):
    with pytest.raises(HParamError, match=message):
        build_config(method, "synthetic", {method: {key: value}})
