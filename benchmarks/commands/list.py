"""``augbench list``: registered methods and datasets with one-line descriptions (and, with ``-v``, every knob)."""

from __future__ import annotations

import argparse
import sys

HELP = "list methods and datasets (and their hyperparameters with -v)"


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("-v", "--verbose", action="store_true", help="also list every hyperparameter and its default")
    p.add_argument("--markdown", choices=("methods", "datasets"), help="print a README table (generated)")


def methods_markdown() -> str:
    """The README's methods table, generated from the registry so that it cannot drift from the code."""
    from baselines.registry import list_methods

    lines = ["| method | `--method` | paper | official code | official behaviour |", "|---|---|---|---|---|"]
    for name, cls in list_methods().items():
        variants = "; ".join(f"`{name}.variant={v}` ({', '.join(f'{k}={val}' for k, val in preset.items())})"
                             for v, preset in cls.VARIANTS.items()) or "same as paper default"
        lines.append(f"| {cls.title} | `{name}` | {cls.PAPER} | {cls.CODE} | {variants} |")
    return "\n".join(lines) + "\n"


def datasets_markdown() -> str:
    """The README's datasets table, generated from the dataset registry."""
    from datasets.registry import list_datasets

    lines = ["| dataset | `--dataset` | modalities / notes |", "|---|---|---|"]
    for name, cls in list_datasets().items():
        lines.append(f"| {cls.DESCRIPTION.split(':')[0]} | `{name}` | {cls.DESCRIPTION.partition(': ')[2]} |")
    return "\n".join(lines) + "\n"


README_BLOCKS = {"methods": methods_markdown, "datasets": datasets_markdown}


def _summary(doc: str | None) -> str:
    return (doc or "").strip().splitlines()[0] if doc else ""


def _knobs(namespace: str, params) -> list[str]:
    lines = []
    for p in params:
        extra = f" per-dataset {dict(p.per_dataset)}" if p.per_dataset else ""
        lines.append(f"      {namespace}.{p.name} = {p.default!r}{extra}  # {p.doc}")
    return lines


def run(args: argparse.Namespace) -> int:
    if args.markdown:
        print(README_BLOCKS[args.markdown](), end="")
        return 0
    # The registries import every method and dataset module (torch); `augbench list --help` does not need them.
    from baselines.networks import MODEL_HPARAMS
    from baselines.registry import list_methods
    from benchmarks.config import TRAIN_HPARAMS, method_hparams
    from datasets.registry import list_datasets

    print("methods:")
    for name, cls in list_methods().items():
        print(f"  {name:<16} {cls.title:<30} {_summary(sys.modules[cls.__module__].__doc__)}")
        if args.verbose:
            print("\n".join(_knobs(name, method_hparams(cls))))
    print("datasets:")
    for name, cls in list_datasets().items():
        print(f"  {name:<16} {cls.DESCRIPTION}")
        if args.verbose:
            print("\n".join(_knobs("data", cls.HPARAMS)))
    if args.verbose:
        print("runner:")
        print("\n".join(_knobs("train", TRAIN_HPARAMS) + _knobs("model", MODEL_HPARAMS)))
    return 0
