"""Per-step host reads that would stall a GPU (``tests/syncs.py``): the ones a step does not need stay out."""

from __future__ import annotations

from baselines.base import StepInfo
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
    # the two logged values.
    reads = steady_step_reads("greedy", tiny_bundle)
    assert [what for what, _ in reads] == ["__bool__", "tolist", "item", "item"], reads
