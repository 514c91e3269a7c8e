"""The speed benchmarks' method (``augbench bench``): the order the data benchmark times its streams in, what its
tables print beside each figure, when an epoch is projected to a CREMA-D run, and the generated media's size.
Nothing here times anything."""

from __future__ import annotations

from collections import Counter
from itertools import permutations

import pytest

from benchmarks import bench_data
from datasets.cremad import CremaD
from datasets.prepare import prepare
from datasets.tables import PrepareOptions
from tests.media_fixtures import make_cremad

STREAMS = ("cache", "floor", "host", "media")


@pytest.fixture(scope="module")
def cache_path(tmp_path_factory):
    tree = make_cremad(tmp_path_factory.mktemp("cremad") / "raw", seconds=(1.3, 2.5, 3.2, 4.1))
    opts = PrepareOptions(recipe="ogm", splits_dir=tree.splits_dir, frame_size=(24, 32), shard_size=8)
    return prepare(CremaD, tree.root, tmp_path_factory.mktemp("cache"), opts, log=lambda s: None)


def test_every_stream_follows_every_other_equally_often(cache_path, monkeypatch):
    # Each batch pulled, in order, by name: the warm-up's skips and the timed rounds' takes.
    pulled: list[str] = []
    take, skip = bench_data._Timed.take, bench_data._Timed.skip
    monkeypatch.setattr(bench_data._Timed, "take", lambda self, n: (pulled.append(self.name), take(self, n)))
    monkeypatch.setattr(bench_data._Timed, "skip", lambda self, n: (pulled.append(self.name), skip(self, n)))
    bench_data.benchmark_data(cache_path, batch_size=2, batches=1, rounds=3, warmup=1)
    timed = pulled[len(STREAMS):]
    assert [Counter(timed[r * 4:(r + 1) * 4]) for r in range(3)] == [Counter(STREAMS)] * 3, "each round times all"
    # Every timed batch's predecessor, the warm-up's last stream before round 0's first.
    after = Counter(zip(pulled[len(STREAMS) - 1:], timed))
    assert after == Counter(permutations(STREAMS, 2)), "each stream right after each other one, once"
