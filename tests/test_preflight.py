"""The sweep's preflight check: what it reports before anything trains."""

from __future__ import annotations

from types import SimpleNamespace

from benchmarks.sweep import preflight


def test_an_ambiguous_cache_is_reported_with_its_runs_not_raised(monkeypatch):
    # A dataset with several caches for one recipe: locate_cache raises ValueError, which must join the report.
    class Ambiguous:
        @staticmethod
        def locate_cache(data):
            raise ValueError("several cremad caches for recipe 'aug'")

    monkeypatch.setattr(preflight, "get_dataset", lambda name: Ambiguous)
    data = SimpleNamespace(as_dict=lambda: {"recipe": "aug"})
    jobs = [SimpleNamespace(cfg=SimpleNamespace(dataset="cremad", data=data)) for _ in range(2)]
    assert preflight.data_problems(jobs) == ["cremad (2 runs): several cremad caches for recipe 'aug'"]
