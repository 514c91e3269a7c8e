"""Per-step host reads that would stall a GPU (``tests/syncs.py``): the ones a step does not need stay out."""

from __future__ import annotations

import pytest
import torch

from baselines.base import StepInfo, read_logs
from baselines.registry import list_methods
from tests.conftest import build_with, first_batch
from tests.syncs import host_reads


def steady_step_reads(name: str, bundle, **hp) -> list[tuple[str, str]]:
    """The host reads of one ``update`` of method ``name`` after a first one (which may read its buffers once)."""
    method = build_with(list_methods()[name], bundle, **hp).train()
    batch = first_batch(bundle)
    method.update(batch, StepInfo(epoch=0, step=0, steps_per_epoch=4, epochs=2))
    with host_reads() as reads:
        method.update(batch, StepInfo(epoch=0, step=1, steps_per_epoch=4, epochs=2))
    return reads


def test_aug_step_reads_only_its_logged_losses(tiny_bundle):
    # Was 3: torch.tensor([len(y)]) onto the device (a pageable copy that waits for the device), the batch size back
    # with .item(), and the losses for the log.
    for variant in ("paper", "official_gated"):
        reads = steady_step_reads("aug", tiny_bundle, variant=variant)
        assert [what for what, _ in reads] == ["tolist"], (variant, reads)


def test_greedy_mmtm_running_average_reads_nothing(tiny_bundle):
    # Each MMTM block read its step count with .item() to update the running gate average: 4 reads per forward.
    # Left: whether it is curating (a host decision, as in the official callback), the speeds for that decision, and
    # the logged values (one read_logs read).
    reads = steady_step_reads("greedy", tiny_bundle)
    assert [what for what, _ in reads] == ["__bool__", "tolist", "tolist"], reads


def test_read_logs_reads_every_value_at_once():
    values = {"z": torch.tensor(0.1), "a": torch.tensor([1 / 3], dtype=torch.bfloat16), "m": 0.25,
              "d": torch.tensor(1 / 3, dtype=torch.float64)}
    with host_reads() as reads:
        logs = read_logs(values)
    assert [what for what, _ in reads] == ["tolist"], reads
    assert list(logs) == ["z", "a", "m", "d"]
    # The float32, bfloat16 and float64 values exactly, as .item() gives them (float64 runs log float64 losses).
    assert logs == {"z": 0.10000000149011612, "a": 0.333984375, "m": 0.25, "d": 1 / 3}
    assert all(type(v) is float for v in logs.values())


# Each read its logged values one .item() (or float(), .tolist()) at a time; now they come in one read_logs tolist.
# What is left decides something on the host: a branch, a clip, a curation or drop, a projection's first turn.
@pytest.mark.parametrize("name, hp, left", [
    ("agm", {}, ["__bool__", "tolist"]),
    ("amco", {}, ["__bool__", "__bool__", "tolist"]),
    ("arl", {}, ["tolist"]),
    ("arl", {"start_epoch": -1}, ["tolist"]),
    ("cml", {}, ["tolist"]),
    ("dgl", {}, ["tolist"]),
    ("dimml", {}, ["__bool__", "tolist"]),
    ("gblending", {}, ["tolist"]),
    ("inforeg", {}, ["tolist"]),
    ("iprm", {}, ["tolist"]),
    ("lfm", {}, ["tolist"]),
    ("mbsd", {}, ["tolist"]),
    ("midas", {}, ["tolist"]),
    ("midas", {"warmup_epochs": 0}, ["__bool__", "__int__", "tolist"]),
    ("mla", {}, ["item", "item", "tolist"]),
    ("mmpareto", {}, ["tolist"]),
    ("mnl", {}, ["tolist"]),
    ("ogm", {}, ["tolist"]),
    ("ogm_ge", {}, ["tolist"]),
    ("opm", {"warmup_epochs": 0, "p_exe": 1.0}, ["__bool__", "tensor", "__bool__", "tensor", "item", "tolist"]),
    ("pmr", {}, ["item", "tolist"]),
    ("reconboost", {}, ["__bool__", "__bool__", "tolist"]),
    ("uniform", {}, ["tolist"]),
])
def test_step_reads_its_logged_values_at_once(tiny_bundle, name, hp, left):
    reads = steady_step_reads(name, tiny_bundle, **hp)
    assert [what for what, _ in reads] == left, reads


def test_greedy_mmtm_step_count_survives_a_checkpoint_with_one_read():
    # The running average divides by the step count held on the host; a loaded block reads the count once.
    from baselines.greedy import MMTM

    torch.manual_seed(0)
    inputs = [{"a": torch.rand(4, 8), "v": torch.rand(4, 6)} for _ in range(4)]
    trained = MMTM({"a": 8, "v": 6}, ratio=4).train()
    for x in inputs[:3]:
        trained(x)
    loaded = MMTM({"a": 8, "v": 6}, ratio=4).train()
    loaded.load_state_dict(trained.state_dict())
    with host_reads() as reads:
        loaded(inputs[3])
    trained(inputs[3])
    assert [what for what, _ in reads] == ["__int__"], reads
    assert int(loaded.steps) == 4
    assert torch.equal(loaded.avg_a, trained.avg_a) and torch.equal(loaded.avg_v, trained.avg_v)
    gates = [trained.excite["a"](torch.relu(trained.squeeze(torch.cat([x["a"], x["v"]], 1)))).sigmoid() for x in inputs]
    expected = sum(g.mean(0) for g in gates) / 4
    torch.testing.assert_close(trained.avg_a, expected, rtol=1e-6, atol=1e-7)
