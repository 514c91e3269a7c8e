"""``augbench list``: registered methods and datasets with one-line descriptions (and, with ``-v``, every knob).

The plain listing reads the registries' modules as source (``ast``), without importing them: importing them costs
seconds (torch, torchvision, scikit-learn). Any entry whose name or description is not a literal in its class body
sends the listing through the imported registries instead; ``tests/test_startup.py`` checks both agree.
"""

from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path
from typing import Any

from core.listed_modules import listed_source

# The generated parity report the README's methods table reads and links to, relative to the repository root.
PARITY_RESULTS = Path("results/parity")
ROOT = Path(__file__).resolve().parents[2]

HELP = "list methods and datasets (and their hyperparameters with -v)"


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("-v", "--verbose", action="store_true", help="also list every hyperparameter and its default")
    p.add_argument("--markdown", choices=("methods", "datasets"), help="print a README table (generated)")


def variant_source(cls: type, name: str) -> str:
    """Whose behaviour a variant preset reproduces: ``bb*`` presets BalanceBenchmark's trainer, any other preset the
    code the method's ``CODE`` names (BalanceBenchmark, a third-party re-implementation, or the official code)."""
    if name.startswith("bb") or cls.CODE.startswith(("BalanceBenchmark", "BB re-implementation")):
        return "BalanceBenchmark"
    return "re-implementation" if cls.CODE.startswith("Re-implementation") else "official code"


def methods_markdown() -> str:
    """The README's methods table, generated from the registry so that it cannot drift from the code."""
    from baselines.registry import list_methods
    from benchmarks.parity.report import method_statuses

    parity = method_statuses(ROOT / PARITY_RESULTS)
    lines = ["| method | `--method` | paper | official code | variants beside the paper default | "
             f"[parity with the official code]({PARITY_RESULTS.as_posix()}/README.md) |", "|---|---|---|---|---|---|"]
    for name, cls in list_methods().items():
        variants = "; ".join(f"`{name}.variant={v}` ({variant_source(cls, v)}: "
                             f"{', '.join(f'{k}={val}' for k, val in preset.items())})"
                             for v, preset in cls.VARIANTS.items()) or "none"
        lines.append(f"| {cls.title} | `{name}` | {cls.PAPER} | {cls.CODE} | {variants} | "
                     f"{parity.get(name, 'not checked')} |")
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
    """A docstring's first sentence, whichever line it ends on (its first line can stop mid-sentence)."""
    paragraph = " ".join((doc or "").strip().split("\n\n")[0].split())
    end = paragraph.find(". ")
    return paragraph if end < 0 else paragraph[:end + 1]


def _knobs(namespace: str, params) -> list[str]:
    lines = []
    for p in params:
        extra = f" per-dataset {dict(p.per_dataset)}" if p.per_dataset else ""
        lines.append(f"      {namespace}.{p.name} = {p.default!r}{extra}  # {p.doc}")
    return lines


def _source(module: str, listed_in: str) -> ast.Module:
    return ast.parse(listed_source(module, listed_in).read_text())


def _registered(module: str, decorator: str, listed_in: str) -> list[dict[str, Any]]:
    """The literal class attributes (plus the module docstring) of each class in ``module`` under ``@decorator``."""
    tree = _source(module, listed_in)
    out = []
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and any(isinstance(d, ast.Name) and d.id == decorator
                                                  for d in node.decorator_list):
            attrs: dict[str, Any] = {"module_doc": ast.get_docstring(tree, clean=False)}
            for stmt in node.body:
                if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 and isinstance(stmt.targets[0], ast.Name):
                    try:
                        attrs[stmt.targets[0].id] = ast.literal_eval(stmt.value)
                    except ValueError:
                        continue
            out.append(attrs)
    return out


def _module_list(registry: str, name: str) -> tuple[str, ...]:
    for node in _source(registry, "the registries").body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == name for t in node.targets):
            return ast.literal_eval(node.value)
    raise LookupError(f"{registry} has no literal {name}")


def static_listing() -> tuple[list[tuple[str, str, str]], list[tuple[str, str]]] | None:
    """(methods as (name, title, summary), datasets as (name, description)) read from source, or None when some
    entry is not literal there (inherited, computed)."""
    methods, datasets = [], []
    for module in _module_list("baselines.registry", "METHOD_MODULES"):
        for attrs in _registered(module, "register", "METHOD_MODULES in baselines/registry.py"):
            if not isinstance(attrs.get("name"), str) or not isinstance(attrs.get("title"), str):
                return None
            methods.append((attrs["name"], attrs["title"], _summary(attrs["module_doc"])))
    for module in _module_list("datasets.registry", "DATASET_MODULES"):
        for attrs in _registered(module, "register_dataset", "DATASET_MODULES in datasets/registry.py"):
            if not isinstance(attrs.get("NAME"), str) or not isinstance(attrs.get("DESCRIPTION"), str):
                return None
            datasets.append((attrs["NAME"], attrs["DESCRIPTION"]))
    return sorted(methods), sorted(datasets)


def imported_listing() -> tuple[list[tuple[str, str, str]], list[tuple[str, str]]]:
    from baselines.registry import list_methods
    from datasets.registry import list_datasets

    methods = [(name, cls.title, _summary(sys.modules[cls.__module__].__doc__))
               for name, cls in list_methods().items()]
    return methods, [(name, cls.DESCRIPTION) for name, cls in list_datasets().items()]


def run(args: argparse.Namespace) -> int:
    if args.markdown:
        print(README_BLOCKS[args.markdown](), end="")
        return 0
    if not args.verbose:
        methods, datasets = static_listing() or imported_listing()
        print("methods:")
        print("".join(f"  {name:<16} {title:<30} {summary}\n" for name, title, summary in methods), end="")
        print("datasets:")
        print("".join(f"  {name:<16} {description}\n" for name, description in datasets), end="")
        return 0
    from baselines.networks import MODEL_HPARAMS
    from baselines.registry import list_methods
    from benchmarks.config import TRAIN_HPARAMS, method_hparams
    from datasets.registry import list_datasets

    print("methods:")
    for name, cls in list_methods().items():
        print(f"  {name:<16} {cls.title:<30} {_summary(sys.modules[cls.__module__].__doc__)}")
        print("\n".join(_knobs(name, method_hparams(cls))))
    print("datasets:")
    for name, cls in list_datasets().items():
        print(f"  {name:<16} {cls.DESCRIPTION}")
        print("\n".join(_knobs("data", cls.HPARAMS)))
    print("runner:")
    print("\n".join(_knobs("train", TRAIN_HPARAMS) + _knobs("model", MODEL_HPARAMS)))
    return 0
