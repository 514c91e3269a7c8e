"""``augbench demo`` end to end (smoke profile, a few rows) and the pool launcher it trains with."""

from __future__ import annotations

import json

import pytest

from baselines.registry import list_methods
from benchmarks import sweep
from benchmarks.demo import load_demo_config, run_demo, sweep_document
from tests.conftest import TINY_DATA, TINY_MODEL


def test_demo_config_covers_every_registered_method_and_profiles_merge(tmp_path):
    full, smoke = load_demo_config(), load_demo_config(profile="smoke")
    assert full["seeds"] == [0, 1, 2] and smoke["seeds"] == [0]
    assert smoke["generate"]["train_clips"] < full["generate"]["train_clips"]
    assert smoke["generate"]["classes"] == full["generate"]["classes"], "profiles override key by key"
    assert smoke["defaults"]["model"] == full["defaults"]["model"]
    doc = sweep_document(full, tmp_path / "cache")
    rows = doc["methods"]
    assert set(list_methods()) - {"unimodal"} <= set(rows)
    assert rows["unimodal_visual"]["unimodal"] == {"modality": "visual"}
    assert list(rows)[:3] == ["unimodal_audio", "unimodal_visual", "joint"] and list(rows)[-1] == "aug"
    with pytest.raises(ValueError, match="not demo rows"):
        sweep_document(full, tmp_path, methods=["nope"])


def test_pool_launcher_trains_then_skips_finished_runs(tmp_path):
    config = sweep.parse_config({"name": "pool", "seeds": [0], "datasets": {"synthetic": {}},
                                 "defaults": {"model": TINY_MODEL, "data": TINY_DATA, "train": {"epochs": 1}},
                                 "methods": {"joint": {}, "sum": {}}})
    jobs = sweep.expand(config, tmp_path, log=lambda line: None)
    report = sweep.run_pool(jobs, workers=1, out=tmp_path, config=config, log=lambda line: None)
    assert sorted(report.launched) == sorted(j.name for j in jobs) and not report.failed
    assert all(j.state() == "done" for j in jobs)
    again = sweep.run_pool(jobs, workers=1, log=lambda line: None)
    assert sorted(again.skipped) == sorted(j.name for j in jobs) and not again.launched


def test_demo_smoke_end_to_end(tmp_path):
    out = run_demo(results=tmp_path / "results", work=tmp_path / "work", profile="smoke", workers=1,
                   methods=["joint", "unimodal_visual", "aug"], log=lambda line: None)
    results = tmp_path / "results"
    for name in ("table_clean.md", "table_clean.csv", "table_paper.md", "table_paper.csv", "curves.png",
                 "README.md", "summary.json"):
        assert (results / name).stat().st_size > 0, name
    table = (results / "table_clean.md").read_text()
    for title in ("Concat", "Unimodal (visual)", "AUG"):
        assert title in table
    summary = json.loads((results / "summary.json").read_text())
    assert summary["runs"] == 3 and not summary["failed"]
    assert set(summary["imbalance"]["joint"]) == {"acc", "acc:audio", "acc:visual"}
    assert out["table"] == table
