"""Run configuration: the runner's own knobs (``train.*``) and the resolution of every namespace for one run.

A run is (method, dataset, overrides). Namespaces: ``train`` (below), ``model`` (``baselines.networks``), ``data``
(the dataset class) and the method's name. The shared optimisation recipe per dataset follows
docs/methods/README.md#optimiser-recipes (AUG's recipe); methods that need their official recipe get it through a config
file under ``benchmarks/configs/``.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import yaml

from baselines.networks import MODEL_HPARAMS
from baselines.registry import get_method, list_methods
from benchmarks.errors import UsageError
from benchmarks.records import DuplicateKeyError, read_config_yaml
from core.hparams import ALWAYS_RECORDED, HParam, HParamError, HParams, resolve, variant_param
from datasets.registry import get_dataset, list_datasets

TRAIN_HPARAMS = (
    HParam("epochs", 10, "Training epochs. docs/methods/README.md#optimiser-recipes shared recipe: CREMA-D 200, KS "
                         "100.",
           per_dataset={"cremad": 200, "kinetics_sounds": 100}, low=1),
    HParam("batch_size", 64, "Training batch size (docs/methods/README.md#optimiser-recipes: 64 for CREMA-D and KS).",
           low=1),
    HParam("eval_batch_size", 256, "Evaluation batch size; evaluation never drops samples.", low=1),
    HParam("optimizer", "sgd", "docs/methods/README.md#optimiser-recipes: SGD for the A/V "
                               "datasets.", choices=("sgd", "adam", "adamw")),
    HParam("lr", 1e-2, "docs/methods/README.md#optimiser-recipes (AUG recipe): lr 1e-2.", low=0, open_low=True),
    HParam("momentum", 0.9, "docs/methods/README.md#optimiser-recipes: SGD momentum 0.9.", low=0),
    HParam("weight_decay", 1e-4, "docs/methods/README.md#optimiser-recipes: weight decay 1e-4.", low=0),
    HParam("lr_milestones", [], "Epochs at whose start lr is multiplied by lr_gamma. AUG's StepLR(70) stepped at "
                                "epoch start decays at epochs 69 and 139 (docs/methods/aug.md#hyperparameters).",
           per_dataset={"cremad": [69, 139], "kinetics_sounds": [69]}, element=int, low=0),
    HParam("lr_gamma", 0.1, "LR decay factor at each milestone (StepLR gamma 0.1).", low=0, open_low=True),
    HParam("seed", 0, "Run seed: Python, NumPy and torch generators and the loaders' per-epoch generators; 0 to "
                      "2**32 - 1, the range NumPy's global seed takes.", low=0, high=2**32 - 1),
    HParam("deterministic", True, "true: torch deterministic algorithms (warn-only) and no cuDNN autotuning; false: "
                                  "cuDNN autotuning picks the fastest convolution algorithms for the fixed input "
                                  "shapes (faster on GPU; results then vary from run to run) [project]."),
    HParam("device", "auto", "'auto' = cuda when available, else cpu.", choices=("auto", "cpu", "cuda")),
    HParam("amp", False, "bf16 autocast (CUDA; also on the CPU, where it is usually slower, and where torch 2.14's "
                         "bf16 convolution backward returns garbage weight gradients on 1x1 maps: ResNet-trunk inputs "
                         "of 16x16 or less)."),
    HParam("compile", False, "torch.compile every modality encoder in place (baselines.networks.compile_encoders; "
                             "parameter names and checkpoints unchanged). Off: compiling costs minutes, which pays "
                             "off only on long GPU runs [project]."),
    HParam("drop_last", False, "Drop each epoch's last partial training batch (evaluation never drops): the AUG, "
                               "OGM-GE and PMR loaders keep it; BalanceBenchmark's global_config and the BSS, ARL "
                               "and DGL scripts drop it (DataLoader drop_last=True)."),
    HParam("max_steps_per_epoch", 0, "Cap on training batches per epoch (0 = the whole split); for smoke runs.",
           low=0),
    HParam("checkpoint_every", 1, "Write a resumable checkpoint every N epochs (the last epoch always).", low=1),
)

RUNNER_NAMESPACES = ("train", "model", "data")


class ConfigMismatchError(UsageError):
    """``--resume`` with a config that differs from the one the run was trained with."""


def config_digest(as_dict: Mapping[str, Any]) -> str:
    """The 8-hex-digit hash of a ``RunConfig.as_dict()`` (or a run's ``config.yaml``) that names run folders."""
    blob = json.dumps(as_dict, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:8]


@dataclass
class RunConfig:
    """Every resolved knob of one run; ``as_dict`` is what ``config.yaml`` holds and what the run hash covers."""

    method: str
    dataset: str
    train: HParams
    model: HParams
    data: HParams
    method_hp: HParams
    meta: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"method": self.method, "dataset": self.dataset, "train": self.train.as_dict(),
                "model": self.model.as_dict(), "data": self.data.as_dict(),
                "hparams": {self.method: self.method_hp.as_dict()}}

    def digest(self) -> str:
        return config_digest(self.as_dict())

    def run_name(self, digest: str | None = None) -> str:
        """The run folder's name; ``digest`` replaces this config's hash (an extended run keeps its original one)."""
        return f"{self.dataset}-{self.method}-seed{self.train.seed}-{digest or self.digest()}"


def method_hparams(method_cls) -> tuple[HParam, ...]:
    declared = tuple(method_cls.HPARAMS)
    if method_cls.VARIANTS and not any(p.name == "variant" for p in declared):
        declared += (variant_param(method_cls.VARIANTS, "paper = the paper; other names reproduce released code, "
                                                        "which the method's docstring names (bb* names: "
                                                        "BalanceBenchmark's trainer)."),)
    return declared


def build_config(method: str, dataset: str, overrides: Mapping[str, Mapping[str, Any]] | None = None
                 ) -> RunConfig:
    """Resolve all namespaces; an override for an unknown namespace or key is an error."""
    overrides = {ns: dict(v) for ns, v in (overrides or {}).items()}
    method_cls = get_method(method)
    get_dataset(dataset)  # an unregistered dataset is an error here, naming the registered ones
    valid = set(RUNNER_NAMESPACES) | {method}
    unknown = sorted(set(overrides) - valid)
    if unknown:
        raise HParamError(f"unknown hyperparameter namespace(s) {unknown} for method {method!r}; valid: "
                          f"{sorted(valid)}")
    knobs = declared_knobs(method, dataset)
    return RunConfig(
        method=method, dataset=dataset, train=resolve("train", knobs["train"], dataset, overrides.get("train")),
        model=resolve("model", knobs["model"], dataset, overrides.get("model")),
        data=resolve("data", knobs["data"], dataset, overrides.get("data")),
        method_hp=resolve(method, knobs[method], dataset, overrides.get(method), variants=method_cls.VARIANTS))


def declared_knobs(method: str, dataset: str) -> dict[str, tuple[HParam, ...]]:
    """Namespace -> its declared knobs: the runner's (train, model), and the dataset's (data) and method's where they
    are registered."""
    out = {"train": TRAIN_HPARAMS, "model": MODEL_HPARAMS}
    if dataset in list_datasets():
        out["data"] = tuple(get_dataset(dataset).HPARAMS)
    if method in list_methods():
        out[method] = method_hparams(get_method(method))
    return out


def merge_overrides(*layers: Mapping[str, Mapping[str, Any]] | None) -> dict[str, dict[str, Any]]:
    """Later layers win, key by key. A method ``variant`` chosen on a later layer also wins over the keys its preset
    sets that an earlier layer gave (a recipe file's paper values under ``--set aug.variant=official_gated``): the
    earlier values are dropped so that the preset applies; a key given on the variant's own layer or after it stays."""
    out: dict[str, dict[str, Any]] = {}
    for layer in layers:
        for ns, values in (layer or {}).items():
            if not isinstance(values, Mapping):
                raise HParamError(f"config section {ns!r} must be a mapping of keys to values, got {values!r}")
            section = out.setdefault(ns, {})
            variant = values.get("variant")
            # Only a change of variant: naming the one already chosen again keeps the keys given with it.
            if isinstance(variant, str) and variant != section.get("variant") and ns in list_methods():
                for key in get_method(ns).VARIANTS.get(variant, {}):
                    if key not in values:
                        section.pop(key, None)
            section.update(values)
    return out


def load_config_file(path: Path) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """A run config file: optional ``method``/``dataset`` plus namespace sections, e.g.::

        method: ogm_ge
        dataset: cremad
        train: {lr: 0.001, epochs: 100}
        ogm_ge: {alpha: 0.8}
    """
    try:
        doc = read_config_yaml(path) or {}
    except DuplicateKeyError as err:
        raise HParamError(str(err)) from None
    if not isinstance(doc, dict):
        raise HParamError(f"{path}: expected a mapping at the top level")
    head = {k: doc.pop(k) for k in ("method", "dataset") if k in doc}
    return head, merge_overrides(doc)


def config_overrides(as_dict: Mapping[str, Any]) -> tuple[str, str, dict[str, dict[str, Any]]]:
    """``RunConfig.as_dict()`` (or a run's ``config.yaml``) -> (method, dataset, overrides for ``build_config``).

    A knob with an ``absent_value`` that the record lacks ran at that value (``HParams.as_dict`` leaves it out
    there), which need not be its default, its per-dataset default or its variant's preset: it is given back
    explicitly, so that the rebuilt config is the recorded one."""
    method, dataset = as_dict["method"], as_dict["dataset"]
    sections = {ns: dict(as_dict[ns]) for ns in RUNNER_NAMESPACES}
    sections[method] = dict(as_dict.get("hparams", {}).get(method, {}))
    for ns, params in declared_knobs(method, dataset).items():
        for p in params:
            if p.absent_value is not ALWAYS_RECORDED and p.name not in sections[ns]:
                sections[ns][p.name] = p.absent_value
    return method, dataset, sections


def _flat(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in d.items():
        if isinstance(value, Mapping):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def config_differences(recorded: Mapping[str, Any], requested: Mapping[str, Any]) -> dict[str, tuple[Any, Any]]:
    """Dotted key -> (recorded value, requested value) for every key whose value differs (``<absent>`` if missing).
    Values are compared as they read back from ``config.yaml``."""
    def normal(d: Mapping[str, Any]) -> dict[str, Any]:
        return _flat(yaml.safe_load(yaml.safe_dump(dict(d))))

    old, new = normal(recorded), normal(requested)
    absent = "<absent>"
    return {k: (old.get(k, absent), new.get(k, absent)) for k in sorted(set(old) | set(new))
            if old.get(k, absent) != new.get(k, absent)}


def check_resume_config(run_dir: Path, recorded: Mapping[str, Any], requested: Mapping[str, Any], *,
                        extend_epochs: bool = False, shown: int = 8) -> None:
    """Refuse to continue a run under a config other than its own.

    Every key counts, paths included: the run's record (``config.yaml``, the hash in its folder name) describes every
    epoch, so nothing may change mid-run. The one exception is growing ``train.epochs`` when the caller asks for an
    extension (``extend_epochs``), which the runner records in the run folder.
    """
    diffs = config_differences(recorded, requested)
    if extend_epochs and "train.epochs" in diffs:
        old, new = diffs["train.epochs"]
        if new < old:
            raise ConfigMismatchError(f"{run_dir} already has train.epochs={old}; an extension can only add epochs, "
                                      f"not shrink the run to {new}")
        del diffs["train.epochs"]
    if not diffs:
        return
    keys = list(diffs)
    if "method" in diffs or "dataset" in diffs:
        keys = [k for k in ("method", "dataset") if k in diffs]
    listed = "; ".join(f"{k}: {diffs[k][0]!r} in the run, {diffs[k][1]!r} now" for k in keys[:shown])
    more = f" (and {len(diffs) - min(len(keys), shown)} more)" if len(diffs) > min(len(keys), shown) else ""
    hint = "only train.epochs may grow, with --extend-epochs" if "train.epochs" in diffs else \
        "resume it with its own config (--run-dir DIR --resume alone) or train into another directory"
    raise ConfigMismatchError(f"{run_dir} was trained with a different config; {listed}{more}. Refusing to resume: "
                              f"{hint}")
