"""Every registered method resumes to the run it would have been: a run killed mid-way and resumed from its last
checkpoint ends with the same per-epoch records and summary as one trained straight through. A method that keeps
training state outside its checkpoint (a counter, a running estimate, a grown module, an optimizer it built late)
fails here; the per-method smoke test only checks that a loaded checkpoint predicts the same."""

from __future__ import annotations

import json

import pytest

from baselines.registry import list_methods
from benchmarks.config import build_config
from benchmarks.demo import load_demo_config, scaled_schedule
from benchmarks.runner import train_run
from tests.conftest import tiny_overrides

EPOCHS = 8
# Killed once epoch 4 is logged; with a checkpoint every 2 epochs the last one is after epoch 3, so the resume also
# repeats an epoch that the killed run had trained.
KILLED_AFTER, CHECKPOINT_EVERY = 4, 2
# The demo's epoch-count knobs scaled to EPOCHS, so that every mechanism (warm-ups, re-estimates, stages, learner
# growth) acts within the run and on both sides of the kill.
SCHEDULE = load_demo_config()["schedule"]


def _epoch_records(run_dir) -> list[dict]:
    """metrics.jsonl without the wall-clock times."""
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    for record in records:
        record.pop("time")
    return records


@pytest.mark.parametrize("name", sorted(list_methods()))
def test_a_killed_and_resumed_run_ends_like_the_straight_run(name, tmp_path):
    overrides = tiny_overrides()
    overrides["train"].update(epochs=EPOCHS, checkpoint_every=CHECKPOINT_EVERY)
    overrides.update(scaled_schedule(SCHEDULE.get(name, {}), name, EPOCHS))
    _killed_and_resumed(name, overrides, tmp_path)


# Variants that keep training state of their own: ReconBoost bb's one optimizer and its had-gradient flags, which decide
# which idle parameters take a zero-gradient step after the resume.
@pytest.mark.parametrize("name, hp", [
    ("reconboost", {"variant": "bb"}),
    # alpha carried across epochs must come back from the checkpoint, not restart at 1.
    ("midas", {"alpha_reset": "never", "warmup_epochs": 2}),
    # the valued subset and the drawn copies are redrawn from (seed, epoch).
    ("smv", {"level": "modality", "warmup": 2}),
], ids=["reconboost-bb", "midas-alpha-never", "smv-modality"])
def test_a_killed_and_resumed_variant_run_ends_like_the_straight_run(name, hp, tmp_path):
    overrides = tiny_overrides()
    overrides["train"].update(epochs=EPOCHS, checkpoint_every=CHECKPOINT_EVERY)
    overrides[name] = dict(hp)
    _killed_and_resumed(name, overrides, tmp_path)


def _killed_and_resumed(name: str, overrides: dict, tmp_path) -> None:
    cfg = build_config(name, "synthetic", overrides)
    straight = train_run(cfg, tmp_path / "straight", log=lambda _: None)

    def kill(line: str) -> None:
        if line.startswith(f"epoch {KILLED_AFTER}"):
            raise RuntimeError("killed")

    with pytest.raises(RuntimeError, match="killed"):
        train_run(cfg, tmp_path / "resumed", log=kill)
    lines: list[str] = []
    resumed = train_run(cfg, tmp_path / "resumed", resume=True, log=lines.append)

    assert any(line.endswith(f"at epoch {KILLED_AFTER}") for line in lines), (
        f"{name}: the run did not resume from its checkpoint: {lines[:3]}")
    assert _epoch_records(tmp_path / "resumed") == _epoch_records(tmp_path / "straight")
    assert resumed["protocols"] == straight["protocols"]
