"""A run records the identity of the data it trains on; it is never resumed, or skipped as finished, on other data."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import soundfile as sf

from benchmarks import data_identity
from benchmarks.collect import MixedDataError, RunRecord, build_table, load_runs
from benchmarks.config import build_config
from benchmarks.data_identity import DATA_FILE, DataChangedError, check_finished_runs, check_run_data, stale_runs
from benchmarks.evaluate import evaluate_missing
from benchmarks.runner import train_run
from benchmarks.sweep import expand, parse_config, run_local
from core.hparams import resolve
from datasets.cremad import CremaD
from datasets.prepare import prepare
from datasets.synthetic import Synthetic
from datasets.tables import PrepareOptions
from tests.conftest import TINY_DATA, TINY_MODEL, TINY_TRAIN, interrupted_run, tiny_overrides
from tests.media_fixtures import make_cremad


@pytest.fixture
def identity(monkeypatch):
    """The synthetic dataset's identity, set by the test (a generated dataset has none of its own)."""
    current = {"cache_options_hash": "a"}
    monkeypatch.setattr(Synthetic, "identity", classmethod(lambda cls, hp: dict(current)))
    return current


def test_a_run_records_its_data_and_is_not_resumed_on_other_data(tmp_path, identity):
    run = tmp_path / "run"
    cfg = interrupted_run(run, epochs=2)
    assert json.loads((run / DATA_FILE).read_text()) == {"cache_options_hash": "a"}
    checkpoint = (run / "checkpoint.pt").read_bytes()
    identity["cache_options_hash"] = "b"
    with pytest.raises(DataChangedError, match=r"cache_options_hash: 'a' in the run, 'b' now.*refusing to continue"):
        train_run(cfg, run, resume=True)
    assert (run / "checkpoint.pt").read_bytes() == checkpoint and not (run / "DONE").exists()
    identity["cache_options_hash"] = "a"
    train_run(cfg, run, resume=True, log=lambda line: None)
    assert (run / "DONE").exists() and json.loads((run / DATA_FILE).read_text()) == {"cache_options_hash": "a"}


def test_a_run_from_before_the_record_resumes_unchecked(tmp_path, identity):
    run = tmp_path / "run"
    cfg = interrupted_run(run, epochs=2)
    (run / DATA_FILE).unlink()
    identity["cache_options_hash"] = "b"
    assert train_run(cfg, run, resume=True, log=lambda line: None)["epochs"] == 2


def test_a_sweep_refuses_to_skip_finished_runs_trained_on_other_data(tmp_path, identity):
    config = parse_config({"name": "test/identity", "seeds": [0, 1], "protocol": "clean",
                           "defaults": {"model": dict(TINY_MODEL), "train": {**TINY_TRAIN, "epochs": 1},
                                        "data": dict(TINY_DATA)},
                           "datasets": {"synthetic": {}}, "methods": {"joint": {}}})
    jobs = expand(config, tmp_path / "sweep")
    for job in jobs:
        train_run(job.cfg, job.run_dir, log=lambda line: None)
    check_finished_runs(jobs)
    assert [r.data for r in load_runs(tmp_path / "sweep")] == [{"cache_options_hash": "a"}] * 2
    identity["cache_options_hash"] = "b"
    assert [s.split(" ")[0] for s in stale_runs(jobs)] == [job.name for job in jobs]
    with pytest.raises(DataChangedError, match=r"2 finished run\(s\) were trained on other data.*"
                                               r"cache_options_hash: 'a' in the run, 'b' now"):
        run_local(jobs, workers=1, log=lambda line: None)
    (jobs[1].run_dir / DATA_FILE).unlink()
    assert [s.split(" ")[0] for s in stale_runs(jobs)] == [jobs[0].name], "an unrecorded run is not checked"


def test_finished_runs_whose_cache_is_gone_are_not_counted(tmp_path, monkeypatch):
    (job,) = expand(parse_config({"name": "test/gone", "seeds": [0], "protocol": "clean",
                                  "defaults": {"data": {"cache": str(tmp_path / "gone")}},
                                  "datasets": {"cremad": {}}, "methods": {"joint": {}}}), tmp_path / "sweep")
    job.run_dir.mkdir(parents=True)
    (job.run_dir / DATA_FILE).write_text(json.dumps({"cache_options_hash": "a"}))
    assert stale_runs([job]) == []


def test_a_cache_rebuilt_from_other_media_has_another_identity(tmp_path):
    tree = make_cremad(tmp_path / "raw", seconds=(1.3, 2.5))
    opts = PrepareOptions(recipe="ogm", splits_dir=tree.splits_dir, frame_size=(24, 32))
    cache = prepare(CremaD, tree.root, tmp_path / "cache", opts, log=lambda s: None)
    hp = resolve("data", CremaD.HPARAMS, "cremad", {"cache": str(cache)})
    before = CremaD.identity(hp)
    assert set(before) == {"cache_options_hash", "raw_fingerprint", "prepared_at_commit"}
    assert before["cache_options_hash"] == cache.name.split("-", 1)[1]
    wav = sorted((tree.root / "AudioWAV").glob("*.wav"))[0]
    audio, rate = sf.read(wav)
    sf.write(wav, np.zeros(len(audio) + rate // 10), rate)
    rebuilt = prepare(CremaD, tree.root, tmp_path / "cache",
                      PrepareOptions(recipe="ogm", splits_dir=tree.splits_dir, frame_size=(24, 32), force=True),
                      log=lambda s: None)
    after = CremaD.identity(hp)
    assert rebuilt == cache, "the same options name the same folder"
    assert after["raw_fingerprint"] != before["raw_fingerprint"]
    assert after["cache_options_hash"] == before["cache_options_hash"]


def test_a_finished_run_is_not_evaluated_on_other_data(tmp_path, identity):
    run = tmp_path / "run"
    overrides = tiny_overrides()
    overrides["train"].update(epochs=1)
    train_run(build_config("joint", "synthetic", overrides), run, log=lambda line: None)
    identity["cache_options_hash"] = "b"
    with pytest.raises(DataChangedError, match="refusing to evaluate it on that data"):
        evaluate_missing(run, [0.5])
    assert not (run / "missing_modality.json").exists()


def _record(name: str, seed: int, data: dict | None) -> RunRecord:
    test = {"acc": 0.5, "macro_f1": 0.5, "map": 0.5}
    return RunRecord(run_dir=Path(name), label="joint", title="Concat", method="joint", dataset="cremad", seed=seed,
                     protocols={"clean": {"test": test}}, data=data)


def test_a_table_never_mixes_runs_of_two_builds_of_one_cache():
    old, new = ({"cache_options_hash": "h", "raw_fingerprint": f} for f in ("old", "new"))
    other_recipe = {"cache_options_hash": "k", "raw_fingerprint": "new"}
    runs = [_record("a", 0, old), _record("b", 1, old), _record("c", 2, None), _record("d", 3, other_recipe)]
    assert build_table(runs, protocol="clean").rows, "other cache options are other data on purpose"
    with pytest.raises(MixedDataError, match=r"runs of cremad trained on 2 builds of the same cache.*1 run\(s\) such "
                                             r"as e on .*\"new\".*delete those runs' data.json"):
        build_table([*runs, _record("e", 4, new)], protocol="clean")


def test_a_key_on_one_side_only_is_a_difference(tmp_path):
    # a dataset that reports a key the run did not record (or no longer reports one it did) serves other data
    (tmp_path / DATA_FILE).write_text(json.dumps({"cache_options_hash": "a"}))
    check_run_data(tmp_path, {"cache_options_hash": "a"})
    with pytest.raises(DataChangedError, match=rf"^{tmp_path} was trained on other data than its cache now holds "
                                               r"\(raw_fingerprint: '<absent>' in the run, 'f' now\); refusing to "
                                               r"continue it\. Retrain"):
        check_run_data(tmp_path, {"cache_options_hash": "a", "raw_fingerprint": "f"})
    with pytest.raises(DataChangedError, match=r"\(cache_options_hash: 'a' in the run, '<absent>' now\); refusing "
                                               r"to evaluate it"):
        check_run_data(tmp_path, {}, "evaluate it")


def test_each_data_config_is_checked_against_its_own_identity(tmp_path, monkeypatch):
    # identities are looked up once per dataset *and data settings*: two caches of one dataset are two identities
    monkeypatch.setattr(Synthetic, "identity", classmethod(lambda cls, hp: {"n_train": str(hp.n_train)}))
    jobs = []
    for n_train in (32, 64):
        overrides = tiny_overrides()
        overrides["data"]["n_train"] = n_train
        run_dir = tmp_path / f"n{n_train}"
        run_dir.mkdir()
        (run_dir / DATA_FILE).write_text(json.dumps({"n_train": str(n_train)}))
        jobs.append(SimpleNamespace(name=f"n{n_train}", run_dir=run_dir,
                                    cfg=build_config("joint", "synthetic", overrides)))
    assert stale_runs(jobs) == []
    (jobs[1].run_dir / DATA_FILE).write_text(json.dumps({"n_train": "32"}))
    assert stale_runs(jobs) == ["n64 (n_train: '32' in the run, '64' now)"]


def test_one_stale_run_stops_a_sweep_and_a_long_list_is_cut(monkeypatch):
    monkeypatch.setattr(data_identity, "stale_runs", lambda jobs: list(jobs))
    check_finished_runs([])
    with pytest.raises(DataChangedError, match=r"^1 finished run\(s\) were trained on .* datasets: r0\. Retrain"):
        check_finished_runs(["r0"])
    with pytest.raises(DataChangedError, match=r"^5 finished run\(s\) .*: r0; r1; r2; r3; r4\. Retrain"):
        check_finished_runs([f"r{i}" for i in range(5)])
    with pytest.raises(DataChangedError, match=r"^7 finished run\(s\) .*: r0; r1; r2; r3; r4 \(and 2 more\)\. Retrain"):
        check_finished_runs([f"r{i}" for i in range(7)])


def test_two_datasets_with_the_same_data_settings_are_each_checked_against_their_own_identity(tmp_path, monkeypatch):
    # av_digits is served from a cache prepared as cremad and takes the same data.* knobs: identical settings of the
    # two still name two caches (one under each dataset's folder), so one's identity must never stand for the other's.
    from datasets.av_digits_cache import AVDigits

    monkeypatch.setattr(CremaD, "identity", classmethod(lambda cls, hp: {"raw_fingerprint": "cremad"}))
    monkeypatch.setattr(AVDigits, "identity", classmethod(lambda cls, hp: {"raw_fingerprint": "digits"}))
    settings = SimpleNamespace(as_dict=lambda: {"cache_dir": "cache", "recipe": "ogm"})
    jobs = []
    for name in ("cremad", "av_digits"):
        run_dir = tmp_path / name
        run_dir.mkdir()
        (run_dir / DATA_FILE).write_text(json.dumps({"raw_fingerprint": "digits"}))
        jobs.append(SimpleNamespace(name=name, run_dir=run_dir, cfg=SimpleNamespace(dataset=name, data=settings)))
    assert stale_runs(jobs) == ["cremad (raw_fingerprint: 'digits' in the run, 'cremad' now)"]
    assert stale_runs(jobs[::-1]) == ["cremad (raw_fingerprint: 'digits' in the run, 'cremad' now)"]


def test_only_a_missing_cache_exempts_a_finished_run_from_the_check(tmp_path, monkeypatch):
    # A cache that is there but cannot be read is no evidence that the run's data is still served: the error stands.
    def unreadable(cls, hp):
        raise PermissionError("manifest.json: permission denied")

    monkeypatch.setattr(Synthetic, "identity", classmethod(unreadable))
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / DATA_FILE).write_text(json.dumps({"cache_options_hash": "a"}))
    job = SimpleNamespace(name="run", run_dir=run_dir, cfg=build_config("joint", "synthetic", tiny_overrides()))
    with pytest.raises(PermissionError, match="permission denied"):
        stale_runs([job])


def test_an_empty_record_is_a_record(tmp_path):
    # A run of data without identity records {}; a dataset that reports one now serves other data than it did.
    (tmp_path / DATA_FILE).write_text("{}")
    check_run_data(tmp_path, {})
    with pytest.raises(DataChangedError, match=r"\(raw_fingerprint: '<absent>' in the run, 'f' now\)"):
        check_run_data(tmp_path, {"raw_fingerprint": "f"})
