"""BatchLoader: evaluation visits every sample exactly once; training order is seeded per epoch; resampling."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from core.data import BatchLoader, ModalitySpec, TaskSpec, seed_for
from datasets.base import DataBundle, stratified_holdout

N = 100


def gather(rows):
    return {"x": torch.from_numpy(rows.astype(np.float32))[:, None]}


def loader(batch_size, train, **kw):
    return BatchLoader(np.arange(N), np.arange(N) % 3, gather, batch_size=batch_size, train=train, seed=7, **kw)


@pytest.mark.parametrize("batch_size", [1, 32, 64, 1000])
def test_evaluation_visits_each_index_exactly_once(batch_size):
    seen = torch.cat([b["index"] for b in loader(batch_size, train=False)])
    assert sorted(seen.tolist()) == list(range(N))
    assert len(loader(batch_size, train=False)) == -(-N // batch_size)


def test_drop_last_is_refused_for_evaluation():
    with pytest.raises(ValueError, match="evaluation"):
        loader(32, train=False, drop_last=True)


def test_training_order_is_seeded_per_epoch_and_reproducible():
    a, b = loader(10, train=True), loader(10, train=True)
    first = [x["index"].tolist() for x in a]
    assert first == [x["index"].tolist() for x in b]
    a.set_epoch(1)
    assert [x["index"].tolist() for x in a] != first
    assert sorted(sum(first, [])) == list(range(N))
    # The permutation is the epoch's own "shuffle" stream, not the one the batch augmentation draws from.
    expected = torch.randperm(N, generator=torch.Generator().manual_seed(seed_for(7, 1, "shuffle")))
    assert [sorted(x["index"].tolist()) for x in a] == [sorted(b.tolist()) for b in expected.split(10)]


def test_batches_carry_matching_labels_and_data():
    for batch in loader(16, train=True):
        assert torch.equal(batch["x"][:, 0].long(), batch["index"])
        assert torch.equal(batch["label"], batch["index"] % 3)


def test_served_selection_repeats_rows_and_serves_extras():
    ld = loader(8, train=True)
    rows = np.concatenate([np.arange(N), np.arange(10)])
    ld._serve(rows, extras={"zero_modality": np.r_[np.zeros(N), np.ones(10)].astype(np.int64)})
    batches = list(ld)
    assert sum(len(b["index"]) for b in batches) == N + 10 and len(ld) == -(-(N + 10) // 8)
    flagged = torch.cat([b["index"][b["zero_modality"] == 1] for b in batches])
    assert sorted(flagged.tolist()) == list(range(10))
    ld._serve()
    assert ld.num_samples == N and "zero_modality" not in next(iter(ld))


def test_selection_api_is_read_only_and_checks_its_input():
    ld = loader(8, train=True)
    assert not hasattr(ld, "set_rows") and not hasattr(ld, "reset_rows")
    with pytest.raises(AttributeError):
        ld.rows = np.arange(3)
    with pytest.raises(ValueError, match=r"\[100\] are not rows"):
        ld._serve(np.array([1, 100]))
    with pytest.raises(ValueError, match="'zero_modality' has 1 entries for 2 rows"):
        ld._serve(np.array([1, 2]), extras={"zero_modality": np.zeros(1)})
    with pytest.raises(ValueError, match="'index'"):
        ld._serve(np.array([1, 2]), extras={"index": np.zeros(2)})


def test_stratified_holdout_is_per_class_and_seeded():
    labels = np.repeat(np.arange(4), 25)
    kept, held = stratified_holdout(np.arange(100), labels, 0.2, seed=3)
    assert len(held) == 20 and np.bincount(labels[held]).tolist() == [5, 5, 5, 5]
    assert np.intersect1d(kept, held).size == 0 and len(kept) + len(held) == 100
    assert np.array_equal(held, stratified_holdout(np.arange(100), labels, 0.2, seed=3)[1])


def test_the_holdout_rounds_each_class_to_the_nearest_count_and_draws_by_seed():
    # 0.1 of 27 clips is 2.7: 3 held out per class, not the 2 that truncation gives
    labels = np.repeat(np.arange(2), 27)
    draws = [stratified_holdout(np.arange(54), labels, 0.1, seed=s)[1] for s in range(4)]
    assert all(np.bincount(labels[held]).tolist() == [3, 3] for held in draws)
    assert len({tuple(held) for held in draws}) == 4, "another seed holds out other clips"
    assert all(held.tolist() == sorted(held.tolist()) for held in draws)


def test_a_bundle_serves_its_splits_rows_with_the_loader_settings_asked():
    bundle = DataBundle(TaskSpec("toy", 3, (ModalitySpec("audio", "spectrogram", (1, 1, 1)),)), np.arange(N) % 3,
                        {"train": np.arange(10, 30), "test": np.arange(5)}, gather, prefetch=2)
    ld = bundle.loader("train", batch_size=8, train=True, seed=7, drop_last=True)
    assert ld.drop_last and ld.prefetch == 2 and len(ld) == 2
    served = torch.cat([b["index"] for b in ld]).tolist()
    assert len(served) == 16 and len(set(served)) == 16 and set(served) <= set(range(10, 30))
    assert torch.cat([b["index"] for b in bundle.loader("test", batch_size=2, train=False, seed=0)]).tolist() == \
        list(range(5))
    with pytest.raises(KeyError, match=r"dataset 'toy' has no split 'val'; it has \['test', 'train'\]"):
        bundle.loader("val", batch_size=8, train=False, seed=0)


def test_a_grouped_holdout_takes_whole_groups_per_class():
    labels = np.repeat(np.arange(2), 30)
    groups = np.array([f"{c}/g{i // 3}" for c, i in zip(labels, np.tile(np.arange(30), 2))])
    kept, held = stratified_holdout(np.arange(60), labels, 0.2, seed=1, groups=groups)
    assert set(groups[held]).isdisjoint(groups[kept]) and np.bincount(labels[held]).tolist() == [6, 6]
    assert len(set(groups[held])) == 4, "2 of each class's 10 groups"


def test_groups_that_span_classes_are_held_out_whole_from_all_groups():
    # 20 subjects each performing all 4 classes 3 times: a per-class choice of subjects would hold out some of a
    # subject's clips and train on the rest.
    subjects = np.repeat(np.arange(20), 12)
    labels = np.tile(np.repeat(np.arange(4), 3), 20)
    groups = np.array([f"subject{k}" for k in subjects])
    kept, held = stratified_holdout(np.arange(240), labels, 0.1, seed=2, groups=groups)
    assert len(set(groups[held])) == 2 and set(groups[held]).isdisjoint(groups[kept])
    assert np.bincount(labels[held]).tolist() == [6, 6, 6, 6] and len(kept) + len(held) == 240
    assert not np.array_equal(held, stratified_holdout(np.arange(240), labels, 0.1, seed=3, groups=groups)[1])
    # Never every group, even at a fraction that rounds to all of them.
    assert len(set(groups[stratified_holdout(np.arange(240), labels, 0.99, seed=0, groups=groups)[1]])) == 19


def test_a_whole_group_holdout_that_empties_a_class_of_training_rows_is_an_error():
    # Class 2 lives only in image b (beside a class-0 row): the draws that hold out b are refused, the others kept.
    labels = np.array([0, 1, 0, 2, 1, 0])
    groups = np.array(["a", "a", "b", "b", "c", "c"])
    held_out = set()
    for seed in range(12):
        try:
            kept, held = stratified_holdout(np.arange(6), labels, 0.3, seed=seed, groups=groups)
        except ValueError as err:
            assert "1 whole group(s) of 3 left class(es) [2] without training rows" in str(err)
            held_out.add("b")
            continue
        assert len(set(groups[held])) == 1 and sorted(set(labels[kept])) == [0, 1, 2]
        held_out |= set(groups[held])
    assert held_out == {"a", "b", "c"}, "every group is drawn by some seed"


def test_a_grouped_holdout_keeps_a_training_group_in_every_class():
    # One group of 7 clips per class at fraction 0.6: round(0.6 * 1 group) = 1 held out every clip of the class, so
    # the class vanished from train_noval while prepare succeeded (clips alone kept 3 of the 7).
    labels = np.repeat(np.arange(3), 7)
    groups = np.array([f"{c}/g8" for c in labels])
    kept, held = stratified_holdout(np.arange(21), labels, 0.6, seed=0, groups=groups)
    assert np.unique(labels[kept]).tolist() == [0, 1, 2] and len(held) == 0
    two = np.array([f"{c}/g{8 + i % 2}" for c, i in zip(labels, np.tile(np.arange(7), 3))])
    kept, held = stratified_holdout(np.arange(21), labels, 0.75, seed=0, groups=two)
    assert np.unique(labels[kept]).tolist() == [0, 1, 2], "round(0.75 * 2 groups) = 2 held out both"
    assert len(set(two[held])) == 3 and set(two[held]).isdisjoint(two[kept])


def test_a_grouped_holdout_gives_every_class_with_two_groups_a_validation_group():
    # round(0.1 * groups) is 0 up to 5 groups: a list with 5 groups of 5 clips per class got no validation at all
    # (the cache then has no 'val' split and no clean protocol), where single clips held out 2 of each class's 25.
    labels = np.repeat(np.arange(3), 25)
    groups = np.array([f"{c}/g{i // 5}" for c, i in zip(labels, np.tile(np.arange(25), 3))])
    kept, held = stratified_holdout(np.arange(75), labels, 0.1, seed=0, groups=groups)
    assert np.bincount(labels[held]).tolist() == [5, 5, 5] and set(groups[held]).isdisjoint(groups[kept])
    assert len(stratified_holdout(np.arange(75), labels, 0.0, seed=0, groups=groups)[1]) == 0, "0 = no validation"


def test_derived_pass_is_in_order_over_the_whole_split_and_extra_pass_restores_the_epoch():
    ld = loader(16, train=True)
    ld._serve(np.arange(10))
    ordered = torch.cat([b["index"] for b in ld.derived(batch_size=7)])
    assert ordered.tolist() == list(range(N)), "derived() covers base rows in order, not the resampled ones"
    private = ld.derived(train=True, seed=123)
    assert [b["index"].tolist() for b in private] != [b["index"].tolist() for b in loader(16, train=True)]
    ld._serve()
    ld.set_epoch(5)
    tagged = [b["index"].tolist() for b in ld.extra_pass(-1, max_steps=2)]
    assert len(tagged) == 2 and ld.epoch == 5
    ld.set_epoch(-1)
    assert tagged == [b["index"].tolist() for b in list(ld)[:2]]


def test_a_derived_pass_of_a_sharded_loader_is_unsharded_in_global_batches():
    # Under data parallelism every rank makes a method's whole pass with the single-process batches: rank 1's loader of
    # 8 per rank (global 16) derives evaluation batches of 16 over all rows in order, and a private training pass of 16.
    ld = loader(8, train=True)
    ld.set_shard(1, 2)
    ordered = [b["index"].tolist() for b in ld.derived()]
    assert [len(b) for b in ordered] == [16] * 6 + [4] and sum(ordered, []) == list(range(N))
    private = ld.derived(train=True, seed=5)
    assert private.batch_size == 16 and private.world_size == 1 and len(private) == 7


def draw_augment(batch, generator, train):
    """A per-sample random draw, as the datasets' flips and crops take one."""
    batch["u"] = torch.rand(len(batch["index"]), generator=generator)
    return batch


def augment_draws(rank: int, world: int) -> dict[int, float]:
    shard = loader(20 // world, train=True, augment=draw_augment)
    if world > 1:
        shard.set_shard(rank, world)
    return {int(i): float(u) for batch in shard for i, u in zip(batch["index"], batch["u"])}


def test_data_parallel_ranks_draw_their_own_augmentations_and_a_single_process_keeps_its_stream():
    first, second = augment_draws(0, 2), augment_draws(1, 2)
    assert first.keys().isdisjoint(second.keys()) and len(first) + len(second) == N, "one shared shuffle"
    assert len(set(first.values()) | set(second.values())) == N, "rank 1 must not repeat rank 0's draws"
    single = loader(20, train=True, augment=draw_augment)
    expected = torch.rand(20, generator=torch.Generator().manual_seed(seed_for(7, 0, "augment")))
    torch.testing.assert_close(next(iter(single))["u"], expected, rtol=0, atol=0)


def test_bad_loader_arguments_are_refused_naming_the_argument():
    with pytest.raises(ValueError, match="batch_size must be >= 1, got 0"):
        loader(0, train=True)
    with pytest.raises(ValueError, match="prefetch must be >= 0, got -1"):
        loader(8, train=True, prefetch=-1)


def test_modality_kinds_are_checked_and_an_unknown_modality_names_the_dataset():
    with pytest.raises(ValueError, match="modality 'audio': unknown kind 'spectogram'"):
        ModalitySpec("audio", "spectogram", (1, 4, 4))
    task = TaskSpec("toy", 3, (ModalitySpec("audio", "spectrogram", (1, 4, 4)),))
    assert task.modality("audio").shape == (1, 4, 4)
    with pytest.raises(KeyError, match=r"dataset 'toy' has no modality 'visual'; it has \('audio',\)"):
        task.modality("visual")


def test_seeds_are_fixed_across_processes_and_versions():
    # Every shuffle and augmentation draw is seeded from seed_for: a change of its value would make a resumed or
    # re-run experiment draw other batches than the ones it recorded.
    assert seed_for(7, 0, "shuffle") == 8436713462465617017
    assert seed_for(0) == 7165777869350885009


def test_served_rows_are_refused_unless_a_1d_integer_array_and_extras_cannot_take_loader_keys():
    ld = loader(8, train=True)
    with pytest.raises(ValueError, match="1-D integer array.*dtype float64"):
        ld._serve(np.array([1.5, 2.0]))
    with pytest.raises(ValueError, match=r"1-D integer array, got shape \(2, 2\)"):
        ld._serve(np.array([[1, 2], [3, 4]]))
    for key in ("label", "_rows"):
        with pytest.raises(ValueError, match=f"extra '{key}' would overwrite"):
            ld._serve(np.array([1, 2]), extras={key: np.zeros(2)})
    with pytest.raises(ValueError, match="extras need rows"):
        ld._serve(None, extras={"weight": np.zeros(N)})
    assert ld.num_samples == N and not ld.extras, "a refused selection leaves the split's rows served"


def test_the_splits_rows_can_be_served_in_order_and_extras_are_a_copy():
    ld = loader(8, train=True)
    ld._serve(shuffle=False)
    assert torch.cat([b["index"] for b in ld]).tolist() == list(range(N))
    ld._serve(np.arange(4), extras={"weight": np.ones(4)})
    ld.extras["weight"] = np.zeros(4)
    assert next(iter(ld))["weight"].tolist() == [1.0] * 4


def test_only_training_loaders_are_sharded_and_the_rank_must_be_in_the_world():
    with pytest.raises(ValueError, match="only training loaders are sharded"):
        loader(8, train=False).set_shard(0, 2)
    for rank, world in ((2, 2), (-1, 2), (0, 0)):
        with pytest.raises(ValueError, match=f"bad shard rank={rank} world_size={world}"):
            loader(8, train=True).set_shard(rank, world)


def test_drop_last_serves_only_full_training_batches():
    ld = loader(32, train=True, drop_last=True)
    sizes = [len(b["index"]) for b in ld]
    assert sizes == [32, 32, 32] and len(ld) == 3, "100 rows: the last 4 are left out this epoch"


def record_train_flag(batch, generator, train):
    batch["train"] = torch.full((len(batch["index"]),), train)
    return batch


def test_augment_is_told_whether_the_loader_trains_and_derived_passes_keep_its_settings():
    assert next(iter(loader(8, train=True, augment=record_train_flag)))["train"].all()
    assert not next(iter(loader(8, train=False, augment=record_train_flag)))["train"].any()
    ld = loader(32, train=True, drop_last=True, augment=record_train_flag, device="meta")
    evaluation = list(ld.derived())
    assert [len(b["index"]) for b in evaluation] == [32, 32, 32, 4], "an evaluation pass never drops"
    assert evaluation[0]["index"].device.type == "meta" and not evaluation[0]["train"].any()
    private = list(ld.derived(train=True, seed=3))
    assert [len(b["index"]) for b in private] == [32, 32, 32], "a private training pass drops as the run does"


def test_prefetch_prepares_batches_at_most_depth_ahead_and_stops_reading_when_the_loop_is_left():
    gathered = []

    def counting_gather(rows):
        gathered.append(rows[0])
        return gather(rows)

    ld = BatchLoader(np.arange(N), np.zeros(N), counting_gather, batch_size=10, train=False, seed=0, prefetch=3)
    batches = iter(ld)
    assert next(batches)["index"][0].item() == 0
    deadline = time.monotonic() + 10
    while len(gathered) < 4 and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.1)
    # one batch served, three waiting in the queue, and the producer may hold one more it could not queue yet
    assert 4 <= len(gathered) <= 5
    assert [b["index"][0].item() for b in batches] == list(range(10, N, 10))
    # leaving the loop early (extra_pass's max_steps) stops the producer: it does not read the rest of the epoch
    gathered.clear()
    for _ in ld:
        break
    assert len(gathered) <= 5


def test_a_shuffled_batch_reads_its_rows_front_to_back():
    # Memory-mapped cache arrays are read fastest in file order; the batch holds the same rows either way.
    asked = []

    def recording_gather(rows):
        asked.append(rows.tolist())
        return gather(rows)

    ld = BatchLoader(np.arange(N), np.zeros(N), recording_gather, batch_size=10, train=True, seed=7)
    assert [b["index"].tolist() for b in ld] == asked
    assert all(rows == sorted(rows) for rows in asked) and sorted(sum(asked, [])) == list(range(N))
