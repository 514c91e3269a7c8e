"""Row selection goes through one runner-level hook (``Method.select_rows``): the runner trains on exactly the rows a
method selects, every epoch, sized from the selection, in order when asked, sharded across ranks, and the same after
a resume."""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pytest
import torch

import benchmarks.runner as runner
from baselines.base import Method, RowSelection
from baselines.registry import get_method, list_methods
from benchmarks.config import build_config
from benchmarks.runner import train_run
from core.data import BatchLoader
from tests.conftest import tiny_overrides

# Knobs that make a method's selection (or its expensive hooks) kick in within two tiny epochs.
SELECTING = {"smv": {"warmup": 0}, "lfm": {"schedule": "learnable"}}
FAST = {"umt": {"teacher_epochs": 1}, "reconboost": {"pretrain_epochs": 1}, "gblending": {"estimate_epochs": 2}}


def recording(cls: type[Method], log: dict) -> type[Method]:
    """``cls`` with its selection and the rows ``update`` sees recorded per epoch in ``log``."""

    class Recording(cls):  # type: ignore[valid-type,misc]
        def select_rows(self, epoch, loaders):
            selection = super().select_rows(epoch, loaders)
            log["selected"][epoch] = selection if selection is not None else RowSelection(loaders.train.base_rows)
            return selection

        def update(self, batch, step):
            log["fed"][step.epoch].append(batch["index"].cpu().numpy().copy())
            for key in log["selected"].get(step.epoch, RowSelection(np.empty(0))).extras:
                log["extras"][step.epoch].append((batch["index"].cpu().numpy(), batch[key].cpu().numpy()))
            return super().update(batch, step)

    Recording.__name__ = Recording.__qualname__ = f"Recording{cls.__name__}"
    return Recording


def new_log() -> dict:
    return {"selected": {}, "fed": defaultdict(list), "extras": defaultdict(list)}


def run(monkeypatch, tmp_path: Path, name: str, cls: type[Method] | None = None, *, epochs: int = 2,
        max_steps: int = 0, log_line=None, resume: bool = False, run_dir: str = "run", **method_hp) -> dict:
    log = new_log()
    patched = recording(cls or get_method(name), log)
    monkeypatch.setattr(runner, "get_method", lambda _: patched)
    overrides = tiny_overrides(name, **method_hp)
    overrides["train"].update(epochs=epochs, max_steps_per_epoch=max_steps)
    cfg = build_config(name, "synthetic", overrides)
    log["summary"] = train_run(cfg, tmp_path / run_dir, resume=resume, log=log_line or (lambda line: None))
    log["batch_size"] = cfg.train.batch_size
    return log


def check_fed_rows(log: dict, max_steps: int) -> None:
    """Per epoch: the rows ``update`` saw are the selection (a multiset), cut to the first ``max_steps`` batches."""
    assert log["selected"], "select_rows was never called"
    for epoch, selection in log["selected"].items():
        fed = np.concatenate(log["fed"][epoch]) if log["fed"][epoch] else np.empty(0, np.int64)
        want = np.asarray(selection.rows)
        served = len(want) if not max_steps else min(len(want), max_steps * log["batch_size"])
        assert len(fed) == served, f"epoch {epoch}: fed {len(fed)} rows, the selection has {len(want)}"
        if not selection.shuffle:
            assert fed.tolist() == want[:served].tolist(), f"epoch {epoch}: not served in the given order"
        elif served == len(want):
            assert Counter(fed.tolist()) == Counter(want.tolist()), f"epoch {epoch}: fed rows != selection"
        else:
            assert not Counter(fed.tolist()) - Counter(want.tolist()), f"epoch {epoch}: fed rows outside selection"


@pytest.mark.parametrize("name", sorted(list_methods()))
def test_runner_feeds_exactly_the_selected_rows(monkeypatch, tmp_path, name):
    log = run(monkeypatch, tmp_path, name, **SELECTING.get(name, {}), **FAST.get(name, {}))
    assert sorted(log["selected"]) == [0, 1]
    check_fed_rows(log, max_steps=0)


@pytest.mark.parametrize("name", sorted(SELECTING))
def test_selection_honours_max_steps_per_epoch(monkeypatch, tmp_path, name):
    log = run(monkeypatch, tmp_path, name, max_steps=3, **SELECTING[name])
    check_fed_rows(log, max_steps=3)
    assert all(len(log["fed"][e]) == 3 for e in (0, 1))


def test_smv_trains_every_resampled_row_each_epoch(monkeypatch, tmp_path):
    """The reported bug: steps were counted before SMV resampled, so an epoch trained only the old 64 rows."""
    log = run(monkeypatch, tmp_path, "smv", warmup=0)
    history = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    for record in history:
        fed = sum(len(rows) for rows in log["fed"][record["epoch"]])
        assert record["diag"]["smv_samples"] > 64 and fed == record["diag"]["smv_samples"]
    # The zero-modality codes travel with their rows: the original rows (code 0) appear once each.
    rows, codes = (np.concatenate(x) for x in zip(*log["extras"][0]))
    assert sorted(rows[codes == 0].tolist()) == list(range(64)) and set(codes.tolist()) <= {0, 1, 2}


def test_lfm_never_trains_on_its_holdout(monkeypatch, tmp_path):
    log = run(monkeypatch, tmp_path, "lfm", schedule="learnable")
    fed = np.concatenate(log["fed"][1])
    assert len(fed) == len(set(fed.tolist())) == 64 - 16


class Curriculum(get_method("joint")):  # type: ignore[misc]
    """Joint training on a fixed order with repeats and a per-row extra (not registered)."""

    def select_rows(self, epoch, loaders):
        rows = loaders.train.base_rows
        order = np.concatenate([rows[::-1], rows[: 5 + epoch]])
        return RowSelection(order, {"weight": np.arange(len(order), dtype=np.float32)}, shuffle=False)


def test_unshuffled_selection_is_served_in_order_with_its_extras(monkeypatch, tmp_path):
    log = run(monkeypatch, tmp_path, "joint", Curriculum)
    check_fed_rows(log, max_steps=0)
    assert len(np.concatenate(log["fed"][1])) == 64 + 6, "steps are recomputed from each epoch's selection"
    positions = np.concatenate([w for _, w in log["extras"][0]])
    assert positions.tolist() == list(range(69)), "extras travel with their rows"


class RandomSubset(get_method("joint")):  # type: ignore[misc]
    """Draws its rows from the global torch RNG, which checkpoints restore."""

    def select_rows(self, epoch, loaders):
        rows = loaders.train.base_rows
        return RowSelection(rows[torch.randint(len(rows), (40 + epoch,))])


class Interrupt(Exception):
    pass


def test_rng_selection_is_reproduced_after_resume(monkeypatch, tmp_path):
    full = run(monkeypatch, tmp_path, "joint", RandomSubset, epochs=4, run_dir="full")

    def stop_after_epoch_1(line: str) -> None:
        if line.startswith("epoch 1 "):
            raise Interrupt

    with pytest.raises(Interrupt):
        run(monkeypatch, tmp_path, "joint", RandomSubset, epochs=4, run_dir="resumed", log_line=stop_after_epoch_1)
    resumed = run(monkeypatch, tmp_path, "joint", RandomSubset, epochs=4, run_dir="resumed", resume=True)
    assert sorted(resumed["selected"]) == [2, 3]
    for epoch in (2, 3):
        assert resumed["selected"][epoch].rows.tolist() == full["selected"][epoch].rows.tolist()
        assert [b.tolist() for b in resumed["fed"][epoch]] == [b.tolist() for b in full["fed"][epoch]]
    assert resumed["summary"]["protocols"] == full["summary"]["protocols"]


ROOT = Path(__file__).resolve().parents[1]


def test_no_method_changes_the_training_rows_itself():
    """Only the runner serves rows (``BatchLoader._serve``); methods return a ``RowSelection``."""
    sources = [*(ROOT / "baselines").glob("*.py"), *(ROOT / "aug").glob("*.py")]
    offenders = [p.name for p in sources if any(s in p.read_text() for s in ("_serve(", "set_rows(", "reset_rows("))]
    assert len(sources) > 30 and not offenders


# --- the loader: ordering and data-parallel sharding of a selection ---------------------------------------------------
N = 23


def gather(rows: np.ndarray) -> dict[str, torch.Tensor]:
    return {"x": torch.from_numpy(rows.astype(np.float32))}


def loader(batch_size: int, rank: int = 0, world: int = 1) -> BatchLoader:
    out = BatchLoader(np.arange(100, 100 + N), np.zeros(200), gather, batch_size=batch_size, train=True, seed=3)
    if world > 1:
        out.set_shard(rank, world)
    return out


@pytest.mark.parametrize("shuffle", [True, False])
def test_sharded_selection_serves_the_single_process_global_batches(shuffle):
    selection = np.r_[np.arange(100, 100 + N), [100, 100, 105]]  # 26 rows with repeats
    single = loader(6)
    single._serve(selection, shuffle=shuffle)
    shards = [loader(3, rank, 2) for rank in range(2)]
    for shard in shards:
        shard._serve(selection, shuffle=shuffle)
    want = [b["index"].tolist() for b in single]
    got = [a["index"].tolist() + b["index"].tolist() for a, b in zip(*shards, strict=True)]
    assert len(shards[0]) == len(shards[1]) == len(single) == 5
    assert [sorted(g) for g in got] == [sorted(w) for w in want], "rank parts of a step = the global batch"
    if not shuffle:
        assert sum(got, []) == selection.tolist()


def test_odd_selection_leaves_one_row_out_and_ranks_run_equal_steps():
    selection = np.arange(100, 100 + N)
    shards = [loader(4, rank, 2) for rank in range(2)]
    for shard in shards:
        shard._serve(selection, shuffle=False)
    parts = [[b["index"].tolist() for b in shard] for shard in shards]
    assert [len(p) for p in parts] == [3, 3] and [len(b) for b in parts[0]] == [4, 4, 3]
    assert sorted(sum(parts[0] + parts[1], [])) == selection[:22].tolist()


def test_the_last_partial_global_batch_is_split_into_contiguous_rank_parts():
    # 23 rows, 2 ranks of 4: two full global batches of 8, then positions 16-21 (22 is the n mod W row left out).
    # As for the full ones, rank r takes the r-th of the W equal parts of that last global batch, not every W-th row.
    shards = [loader(4, rank, 2) for rank in range(2)]
    for shard in shards:
        shard._serve(np.arange(100, 100 + N), shuffle=False)
    parts = [[(b["index"] - 100).tolist() for b in shard] for shard in shards]
    assert parts[0] == [[0, 1, 2, 3], [8, 9, 10, 11], [16, 17, 18]]
    assert parts[1] == [[4, 5, 6, 7], [12, 13, 14, 15], [19, 20, 21]]


class SubsetAfterHooks(get_method("joint")):  # type: ignore[misc]
    """Serves 8 rows each epoch and records the rows its epoch-start hook sees."""

    seen: list[int] = []

    def on_epoch_start(self, epoch, loaders):
        SubsetAfterHooks.seen.append(len(loaders.train.rows))
        return super().on_epoch_start(epoch, loaders)

    def select_rows(self, epoch, loaders):
        return RowSelection(loaders.train.base_rows[:8])


def test_epoch_hooks_see_the_splits_rows_not_last_epochs_selection(monkeypatch, tmp_path):
    SubsetAfterHooks.seen = []
    log = run(monkeypatch, tmp_path, "joint", SubsetAfterHooks, epochs=3)
    assert SubsetAfterHooks.seen == [64, 64, 64], "epoch 1's hook would see epoch 0's 8 selected rows"
    assert [len(np.concatenate(log["fed"][e])) for e in range(3)] == [8, 8, 8]
