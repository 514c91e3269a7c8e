"""Run configuration: the runner's own knobs (``train.*``) and the resolution of every namespace for one run.

A run is (method, dataset, overrides). Namespaces: ``train`` (below), ``model`` (``baselines.networks``), ``data``
(the dataset class) and the method's name. The shared optimisation recipe per dataset follows methods.md §1.4
(AUG's recipe); methods that need their official recipe get it through a config file under
``benchmarks/configs/``.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import yaml

from baselines.hparams import HParam, HParamError, HParams, resolve, variant_param
from baselines.networks import MODEL_HPARAMS
from baselines.registry import get_method
from datasets.registry import get_dataset

TRAIN_HPARAMS = (
    HParam("epochs", 10, "Training epochs. methods.md §1.4 shared recipe: CREMA-D 200, KS 100.",
           per_dataset={"cremad": 200, "kinetics_sounds": 100}),
    HParam("batch_size", 64, "Training batch size (methods.md §1.4: 64 for CREMA-D and KS)."),
    HParam("eval_batch_size", 256, "Evaluation batch size; evaluation never drops samples."),
    HParam("optimizer", "sgd", "methods.md §1.4: SGD for the A/V datasets.", choices=("sgd", "adam", "adamw")),
    HParam("lr", 1e-2, "methods.md §1.4 (AUG recipe): lr 1e-2."),
    HParam("momentum", 0.9, "methods.md §1.4: SGD momentum 0.9."),
    HParam("weight_decay", 1e-4, "methods.md §1.4: weight decay 1e-4."),
    HParam("lr_milestones", [], "Epochs at whose start lr is multiplied by lr_gamma. AUG's StepLR(70) stepped at "
                                "epoch start decays at epochs 69 and 139 (methods.md §3.8).",
           per_dataset={"cremad": [69, 139], "kinetics_sounds": [69]}),
    HParam("lr_gamma", 0.1, "LR decay factor at each milestone (StepLR gamma 0.1)."),
    HParam("seed", 0, "Run seed: Python, NumPy and torch generators and the loaders' per-epoch generators."),
    HParam("deterministic", True, "torch deterministic algorithms (warn-only) and no cuDNN autotuning."),
    HParam("device", "auto", "'auto' = cuda when available, else cpu.", choices=("auto", "cpu", "cuda")),
    HParam("amp", False, "bf16 autocast on CUDA (no effect on CPU)."),
    HParam("compile", False, "torch.compile every modality encoder in place (baselines.networks.compile_encoders; "
                             "parameter names and checkpoints unchanged). Off: compiling costs minutes, which pays "
                             "off only on long GPU runs [project]."),
    HParam("max_steps_per_epoch", 0, "Cap on training batches per epoch (0 = the whole split); for smoke runs."),
    HParam("checkpoint_every", 1, "Write a resumable checkpoint every N epochs (the last epoch always)."),
)

RUNNER_NAMESPACES = ("train", "model", "data")


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
        blob = json.dumps(self.as_dict(), sort_keys=True, default=str).encode()
        return hashlib.sha256(blob).hexdigest()[:8]

    def run_name(self) -> str:
        return f"{self.dataset}-{self.method}-seed{self.train.seed}-{self.digest()}"


def method_hparams(method_cls) -> tuple[HParam, ...]:
    declared = tuple(method_cls.HPARAMS)
    if method_cls.VARIANTS and not any(p.name == "variant" for p in declared):
        declared += (variant_param(method_cls.VARIANTS, "paper = the paper; other names reproduce the official "
                                                        "code's behaviour (see the method's docstring)."),)
    return declared


def build_config(method: str, dataset: str, overrides: Mapping[str, Mapping[str, Any]] | None = None
                 ) -> RunConfig:
    """Resolve all namespaces; an override for an unknown namespace or key is an error."""
    overrides = {ns: dict(v) for ns, v in (overrides or {}).items()}
    method_cls = get_method(method)
    dataset_cls = get_dataset(dataset)
    valid = set(RUNNER_NAMESPACES) | {method}
    unknown = sorted(set(overrides) - valid)
    if unknown:
        raise HParamError(f"unknown hyperparameter namespace(s) {unknown} for method {method!r}; valid: "
                          f"{sorted(valid)}")
    return RunConfig(
        method=method, dataset=dataset,
        train=resolve("train", TRAIN_HPARAMS, dataset, overrides.get("train")),
        model=resolve("model", MODEL_HPARAMS, dataset, overrides.get("model")),
        data=resolve("data", dataset_cls.HPARAMS, dataset, overrides.get("data")),
        method_hp=resolve(method, method_hparams(method_cls), dataset, overrides.get(method),
                          variants=method_cls.VARIANTS))


def merge_overrides(*layers: Mapping[str, Mapping[str, Any]] | None) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for layer in layers:
        for ns, values in (layer or {}).items():
            if not isinstance(values, Mapping):
                raise HParamError(f"config section {ns!r} must be a mapping of keys to values, got {values!r}")
            out.setdefault(ns, {}).update(values)
    return out


def load_config_file(path: Path) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """A run config file: optional ``method``/``dataset`` plus namespace sections, e.g.::

        method: ogm_ge
        dataset: cremad
        train: {lr: 0.001, epochs: 100}
        ogm_ge: {alpha: 0.8}
    """
    with open(path) as f:
        doc = yaml.safe_load(f) or {}
    if not isinstance(doc, dict):
        raise HParamError(f"{path}: expected a mapping at the top level")
    head = {k: doc.pop(k) for k in ("method", "dataset") if k in doc}
    return head, merge_overrides(doc)
