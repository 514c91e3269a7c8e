"""``augbench parity``: float64 precision of the shared step code, the golden parity records, the lockstep
comparison and the CLI's errors."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from aug.method import AUG
from baselines.base import StepInfo, confidence_scores, loss_precision
from baselines.ogm import OGM
from benchmarks.cli import main
from benchmarks.config import build_config, method_hparams
from benchmarks.parity import get_cases, golden, report
from benchmarks.parity.core import (
    Case,
    EpochLoader,
    ParityResult,
    StepRecord,
    compare,
    load_mapped,
    name_map,
    quantities,
    resnet_name,
    run_case,
)
from core.hparams import resolve
from tests.conftest import first_batch64, float64_default, make_context


# --- float64 runs keep float64 losses and scores (what parity in float64 needs) --------------------------------------
def test_loss_precision_promotes_half_and_keeps_float64():
    assert loss_precision(torch.zeros(2, dtype=torch.bfloat16)).dtype == torch.float32
    assert loss_precision(torch.zeros(2, dtype=torch.float32)).dtype == torch.float32
    assert loss_precision(torch.zeros(2, dtype=torch.float64)).dtype == torch.float64


def test_confidence_scores_of_float64_logits_are_float64():
    z = torch.randn(5, 3, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 1, 0])
    s = confidence_scores({"audio": z}, y)["audio"]
    assert s.dtype == torch.float64
    torch.testing.assert_close(s, torch.softmax(z, 1)[torch.arange(5), y].sum(), rtol=1e-15, atol=1e-15)


def test_ogm_step_in_float64_reports_the_float64_loss(tiny_bundle):
    with float64_default():
        torch.manual_seed(0)
        method = OGM(tiny_bundle.task, resolve("ogm", method_hparams(OGM), "synthetic", {}), make_context())
        batch = first_batch64(tiny_bundle)
        with torch.no_grad():
            _, z, _ = method.model(method.inputs(batch))
            expected = F.cross_entropy(z, batch["label"]).item()
        logs = method.update(batch, StepInfo(0, 0, 1, 1))
    assert logs["loss"] == expected   # a float32 loss would differ from the float64 one at ~1e-8


def test_gated_aug_steps_in_float64(tiny_bundle):
    with float64_default():
        hp = resolve("aug", method_hparams(AUG), "synthetic", {"variant": "official_gated"}, variants=AUG.VARIANTS)
        torch.manual_seed(0)
        method = AUG(tiny_bundle.task, hp, make_context())
        batch = first_batch64(tiny_bundle)
        method.update(batch, StepInfo(0, 0, 1, 1))   # a float32 gate input met float64 gate weights here
    assert method.running.dtype == torch.float64 and method.gate_values().dtype == torch.float64


# --- the lockstep comparison, on a stand-in case (no clones needed) -------------------------------------------------
class _Side:
    """Both sides of a fake case: a parameter that moves by ``step`` per checkpoint, plus ``offset``."""

    def __init__(self, offset: float, labels=("e0s0", "e0s1")) -> None:
        self.offset, self.labels, self.value = offset, labels, torch.zeros(3, dtype=torch.float64)

    def steps(self):
        for label in self.labels:
            self.value = self.value + 1.0
            yield label

    def run(self, checkpoint) -> None:
        for label in self.steps():
            checkpoint(label)

    def snapshot(self):
        return {"param/w": self.value + self.offset, "q/coeff": (self.value[:1] * 0.5)}


def _fake_case(official_offset: float, project_labels=("e0s0", "e0s1")) -> Case:
    return Case(name="fake", method="joint", hparams={}, repo="owner/fake", commit="0" * 40, entry="train",
                covers="two steps", project=lambda case, overrides: _Side(0.0, project_labels),
                official=lambda case, root, project: _Side(official_offset))


def test_run_case_passes_rounding_and_fails_a_real_difference(tmp_path):
    (tmp_path / "fake").mkdir()
    assert run_case(_fake_case(1e-13), tmp_path).passed
    result = run_case(_fake_case(1e-8), tmp_path)
    assert not result.passed
    assert result.first_failure.label == "e0s0" and result.first_failure.failed == ["param/w"]
    assert result.max_diff == pytest.approx(1e-8, rel=1e-6)


def test_a_quantity_on_one_side_only_is_a_difference():
    rec = compare("e0s0", {"param/w": torch.zeros(2), "optim/w/momentum_buffer": torch.zeros(2)},
                  {"param/w": torch.zeros(2)})
    assert rec.failed == ["optim/w/momentum_buffer"] and rec.max_diff == float("inf")


def _f64(*values):
    return torch.tensor(values, dtype=torch.float64)


def test_the_tolerance_is_atol_plus_rtol_of_the_official_value_inclusive():
    # 1e6 + 1e-4 is 1e-10 |1e6| away from 1e6 (plus ATOL's 1e-10): inside; twice that: outside.
    assert compare("x", {"a": _f64(1e-10, 1e6 + 9e-5)}, {"a": _f64(0.0, 1e6)}).failed == []
    assert compare("x", {"a": _f64(0.0, 1e6 + 2e-4)}, {"a": _f64(0.0, 1e6)}).failed == ["a"]
    assert compare("x", {"a": _f64(0.0, 1e6 - 2e-4)}, {"a": _f64(0.0, 1e6)}).failed == ["a"]


def test_max_difference_is_the_largest_element_of_every_key():
    rec = compare("x", {"a": _f64(1.0, 2.0, 3.0), "b": _f64(5.0), "c": _f64(0.0, 0.0)},
                  {"a": _f64(1.0, 2.5, 3.0), "b": _f64(5.75), "c": _f64(0.0, 0.0)})
    assert (rec.max_diff, rec.worst, rec.failed) == (0.75, "b", ["a", "b"])
    assert compare("x", {"a": _f64(1.0, 2.0, 3.0)}, {"a": _f64(1.0, 2.5, 3.0)}).max_diff == 0.5


def test_a_key_the_project_side_lacks_is_a_difference():
    rec = compare("e0s0", {"param/w": torch.zeros(2)}, {"param/w": torch.zeros(2), "q/alpha": torch.zeros(1)})
    assert rec.failed == ["q/alpha"] and rec.max_diff == float("inf") and rec.worst == "q/alpha"


def test_a_shape_mismatch_is_an_error_naming_the_key_not_a_broadcast():
    with pytest.raises(ValueError, match=r"at e0s1: param/w has shape \(3,\) \(project\) vs \(1, 3\)"):
        compare("e0s1", {"param/w": torch.zeros(3)}, {"param/w": torch.zeros(1, 3)})


def test_two_empty_snapshots_are_an_error_naming_the_step_not_a_match():
    with pytest.raises(ValueError, match="at e0s1: neither side has anything to compare"):
        compare("e0s1", {}, {})


def test_nan_matches_only_nan_at_the_same_place():
    nan = float("nan")
    assert compare("x", {"a": _f64(nan, 1.0)}, {"a": _f64(nan, 1.0)}) == StepRecord("x", 0.0, "a", [])
    for project, official in ((_f64(nan, 1.0), _f64(1.0, 1.0)), (_f64(1.0, 1.0), _f64(nan, 1.0)),
                              (_f64(nan, 1.0), _f64(1.0, nan))):
        rec = compare("x", {"a": project, "b": _f64(0.0)}, {"a": official, "b": _f64(1e-12)})
        assert rec.failed == ["a"] and (rec.worst, rec.max_diff) == ("a", float("inf"))


def test_infinity_matches_only_the_same_infinity():
    inf = float("inf")
    assert compare("x", {"a": _f64(inf, -inf)}, {"a": _f64(inf, -inf)}).failed == []
    assert compare("x", {"a": _f64(inf, -inf)}, {"a": _f64(inf, -inf).float()}) == StepRecord("x", 0.0, "a", [])
    for project, official in ((1.0, inf), (-inf, inf), (inf, 1.0), (inf, -inf)):
        rec = compare("x", {"a": _f64(project)}, {"a": _f64(official)})
        assert rec.failed == ["a"] and rec.max_diff == inf


def test_a_run_passes_only_if_every_step_passed_and_there_was_one():
    ok, bad = StepRecord("e0s0", 1e-12, "param/w", []), StepRecord("e0s1", 0.5, "param/w", ["param/w"])
    case = _fake_case(0.0)
    result = ParityResult(case, [ok, bad, StepRecord("e0s2", 1e-13, "param/w", [])])
    assert not result.passed and result.first_failure is bad and result.max_diff == 0.5
    assert ParityResult(case, [ok]).passed and ParityResult(case, [ok]).first_failure is None
    assert ParityResult(case, [bad, ok]).first_failure is bad
    empty = ParityResult(case, [])
    assert not empty.passed and math.isnan(empty.max_diff)
    assert report.summary(empty, [])["status"] == "no steps"


def test_stop_at_difference_stops_only_at_a_difference(tmp_path):
    (tmp_path / "fake").mkdir()
    assert len(run_case(_fake_case(1e-13), tmp_path, stop_at_difference=True).records) == 2
    result = run_case(_fake_case(1e-8), tmp_path, stop_at_difference=True)
    assert [r.label for r in result.records] == ["e0s0"] and not result.passed


def test_run_case_names_a_project_side_that_runs_on(tmp_path):
    (tmp_path / "fake").mkdir()
    with pytest.raises(RuntimeError, match="official run ended while the project side continues at 'e0s2'"):
        run_case(_fake_case(0.0, project_labels=("e0s0", "e0s1", "e0s2")), tmp_path)


def test_quantities_keep_every_element_in_float64():
    q = quantities({"coeff": torch.tensor([[0.5, 2.0]], dtype=torch.float32), "loss": 1.5})
    assert list(q) == ["q/coeff", "q/loss"] and all(v.dtype == torch.float64 for v in q.values())
    assert q["q/coeff"].tolist() == [0.5, 2.0] and q["q/loss"].tolist() == [1.5]


def test_run_case_names_a_schedule_mismatch(tmp_path):
    (tmp_path / "fake").mkdir()
    with pytest.raises(RuntimeError, match="'e0s1'.*'e0.aca'"):
        run_case(_fake_case(0.0, project_labels=("e0s0", "e0.aca")), tmp_path)


def test_golden_record_round_trip_and_drift(tmp_path):
    (tmp_path / "fake").mkdir()
    path, result = golden.record(_fake_case(1e-13), tmp_path, tmp_path / "golden")
    assert result.passed and golden.load(path)["labels"] == ["e0s0", "e0s1"]
    assert not any(r.failed for r in golden.check(_fake_case(1e-13), path))
    drifted = Case(**{**_fake_case(0.0).__dict__, "project": lambda case, overrides: _Side(1e-8)})
    records = golden.check(drifted, path)
    assert records[0].failed == ["param/w"] and len(records) == 1   # stops at the first difference


def test_a_partial_golden_record_steps_through_the_labels_it_left_out(tmp_path):
    (tmp_path / "fake").mkdir()
    labels = ("e0s0", "e0s1", "e1s0", "e1s1")

    def case(project_labels=labels) -> Case:
        return Case(**{**_fake_case(0.0).__dict__, "golden_labels": ("e0s1", "e1s1"),
                       "project": lambda c, overrides: _Side(0.0, project_labels),
                       "official": lambda c, root, project: _Side(1e-13, labels)})

    path, result = golden.record(case(), tmp_path, tmp_path / "golden")
    assert len(result.records) == 4 and golden.load(path)["labels"] == ["e0s1", "e1s1"]
    records = golden.check(case(), path)
    assert [r.label for r in records] == ["e0s1", "e1s1"] and not any(r.failed for r in records)
    with pytest.raises(RuntimeError, match="reached None where the record has 'e1s1'"):
        golden.check(case(labels[:3]), path)


def test_a_golden_label_the_run_never_reaches_is_an_error_not_a_shorter_record(tmp_path):
    (tmp_path / "fake").mkdir()
    case = Case(**{**_fake_case(0.0).__dict__, "golden_labels": ("e0s1", "e1s1")})
    with pytest.raises(ValueError, match=r"fake: the run never reached the golden labels \['e1s1'\]"):
        golden.record(case, tmp_path, tmp_path / "golden")
    assert not (tmp_path / "golden" / "fake.pt").exists()


def test_cpu_kind_is_a_clean_folder_name():
    assert golden.cpu_kind(" AMD EPYC 7B13 64-Core Processor (x) ") == "amd-epyc-7b13-64-core-processor-x"


def test_records_are_made_and_replayed_on_one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with golden.one_thread():
            assert torch.get_num_threads() == 1
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(threads)


def test_fingerprint_layout():
    x = torch.arange(5, dtype=torch.float32)
    w = torch.cos(torch.arange(5, dtype=torch.float64))
    expected = torch.tensor([2.0, 6.0, float((torch.arange(5.0, dtype=torch.float64) * w).mean()), 0.0, 2.0, 4.0],
                            dtype=torch.float64)
    torch.testing.assert_close(golden.fingerprint(x), expected, rtol=0, atol=1e-15)
    assert golden.fingerprint(torch.zeros(0, 3)).tolist() == [0.0] * 6   # one row of the (quantities, 6) matrix


def test_a_record_keeps_the_official_values_and_whether_the_live_run_matched(tmp_path):
    (tmp_path / "fake").mkdir()
    path, result = golden.record(_fake_case(1e-8), tmp_path, tmp_path / "golden")
    assert not result.passed and golden.load(path)["live_passed"] is False
    # The record is the official side's (offset 1e-8): a project side with that offset matches it, ours does not.
    shifted = Case(**{**_fake_case(0.0).__dict__, "project": lambda case, overrides: _Side(1e-8)})
    assert [r.failed for r in golden.check(shifted, path)] == [[], []]
    assert golden.check(_fake_case(0.0), path)[0].failed == ["param/w"]


def test_a_record_of_another_case_commit_or_format_is_refused(tmp_path):
    (tmp_path / "fake").mkdir()
    path, _ = golden.record(_fake_case(0.0), tmp_path, tmp_path / "golden")
    for changed in ({"name": "other"}, {"commit": "1" * 40}):
        with pytest.raises(ValueError, match="records case 'fake' at 0000000"):
            golden.check(Case(**{**_fake_case(0.0).__dict__, **changed}), path)
    data = torch.load(path, weights_only=False)
    torch.save({k: v for k, v in data.items() if k != "format"}, tmp_path / "old.pt")
    with pytest.raises(ValueError, match="old.pt: golden record format None, expected 2"):
        golden.load(tmp_path / "old.pt")


def test_a_record_of_another_method_repo_or_knobs_is_refused(tmp_path):
    # A knob that acts only after the first steps would otherwise pass the quick check against a stale record.
    (tmp_path / "fake").mkdir()
    path, _ = golden.record(_fake_case(0.0), tmp_path, tmp_path / "golden")
    for changed in ({"method": "ogm"}, {"repo": "owner/other"}, {"hparams": {"alpha": 0.5}}):
        with pytest.raises(ValueError, match="fake.pt records 'fake' as .*record it again"):
            golden.check(Case(**{**_fake_case(0.0).__dict__, **changed}), path, limit=1)


def test_a_golden_check_that_would_compare_nothing_is_refused(tmp_path):
    (tmp_path / "fake").mkdir()
    path, _ = golden.record(_fake_case(0.0), tmp_path, tmp_path / "golden")
    with pytest.raises(ValueError, match=r"fake.pt: nothing to compare \(the record has 2 labels, limit 0\)"):
        golden.check(_fake_case(0.0), path, limit=0)
    data = golden.load(path)
    torch.save({**data, "labels": [], "keys": [], "steps": {}}, tmp_path / "empty.pt")
    with pytest.raises(ValueError, match=r"empty.pt: nothing to compare \(the record has 0 labels, limit None\)"):
        golden.check(_fake_case(0.0), tmp_path / "empty.pt")


def test_a_golden_check_refuses_steps_out_of_the_recorded_order(tmp_path):
    (tmp_path / "fake").mkdir()
    path, _ = golden.record(_fake_case(0.0), tmp_path, tmp_path / "golden")
    # The values would match step by step (both sides count up); the labels are the schedule and must agree.
    with pytest.raises(RuntimeError, match="reached 'e0s1' where the record has 'e0s0'"):
        golden.check(_fake_case(0.0, project_labels=("e0s1", "e0s0")), path)
    labels = ("e0s0", "e0s1", "e1s0", "e1s1")
    partial = Case(**{**_fake_case(0.0).__dict__, "golden_labels": ("e0s1", "e1s1"),
                      "project": lambda c, o: _Side(0.0, labels),
                      "official": lambda c, root, project: _Side(0.0, labels)})
    path, _ = golden.record(partial, tmp_path, tmp_path / "partial")
    early = Case(**{**partial.__dict__, "project": lambda c, o: _Side(0.0, ("e0s0", "e1s1", "e0s1", "e1s0", "e1s1"))})
    with pytest.raises(RuntimeError, match="reached 'e1s1' where the record has 'e0s1'"):
        golden.check(early, path)


def test_a_full_golden_check_refuses_a_checkpoint_the_record_does_not_have(tmp_path):
    # The live run refuses a project side with an extra checkpoint; only a partial record may step over labels.
    (tmp_path / "fake").mkdir()
    path, _ = golden.record(_fake_case(0.0), tmp_path, tmp_path / "golden")
    with pytest.raises(RuntimeError, match="reached 'e0.aca' where the record has 'e0s1'"):
        golden.check(_fake_case(0.0, project_labels=("e0s0", "e0.aca", "e0s1")), path)


def test_a_full_golden_check_names_a_project_side_that_runs_on(tmp_path):
    (tmp_path / "fake").mkdir()
    path, _ = golden.record(_fake_case(0.0), tmp_path, tmp_path / "golden")
    longer = _fake_case(0.0, project_labels=("e0s0", "e0s1", "e0s2"))
    with pytest.raises(RuntimeError, match="record ends at 'e0s1' while the project side continues at 'e0s2'"):
        golden.check(longer, path)
    assert [r.failed for r in golden.check(longer, path, limit=1)] == [[]]

def test_the_step_hook_runs_before_each_golden_comparison(tmp_path):
    (tmp_path / "fake").mkdir()
    path, _ = golden.record(_fake_case(0.0), tmp_path, tmp_path / "golden")
    seen = []
    assert not any(r.failed for r in golden.check(_fake_case(0.0), path, step_hook=lambda side: seen.append(side)))
    assert len(seen) == 2
    records = golden.check(_fake_case(0.0), path, step_hook=lambda side: side.value.add_(1e-8))
    assert records[0].failed == ["param/w", "q/coeff"]


class _Reordering(_Side):
    """A side whose snapshot lists its keys in the other order at every second step."""

    def snapshot(self):
        snap = super().snapshot()
        return dict(reversed(snap.items())) if int(self.value[0]) % 2 == 0 else snap


def test_a_golden_record_pairs_each_fingerprint_with_its_key_whatever_the_order(tmp_path):
    (tmp_path / "fake").mkdir()
    case = Case(**{**_fake_case(0.0).__dict__, "project": lambda c, o: _Reordering(0.0),
                   "official": lambda c, root, project: _Reordering(0.0)})
    path, _ = golden.record(case, tmp_path, tmp_path / "golden")
    assert golden.load(path)["steps"]["e0s1"]["index"].tolist() == [1, 0]
    assert [r.failed for r in golden.check(case, path)] == [[], []]


def test_a_key_the_golden_record_lacks_is_a_difference(tmp_path):
    (tmp_path / "fake").mkdir()
    path, _ = golden.record(_fake_case(0.0), tmp_path, tmp_path / "golden")

    class Extra(_Side):
        def snapshot(self):
            return {**super().snapshot(), "optim/w/momentum_buffer": torch.zeros(3, dtype=torch.float64)}

    records = golden.check(Case(**{**_fake_case(0.0).__dict__, "project": lambda c, o: Extra(0.0)}), path)
    assert records[0].failed == ["optim/w/momentum_buffer"] and records[0].max_diff == float("inf")


def test_worst_is_the_largest_step_difference():
    records = [StepRecord("a", 1e-12, "w", []), StepRecord("b", 3e-11, "w", []), StepRecord("c", 2e-12, "w", [])]
    assert golden.worst(records) == 3e-11 and math.isnan(golden.worst([]))


# --- the weight map and the official loop's checkpoints ---------------------------------------------------------------
def test_epoch_loader_reports_every_step_after_it_ran_and_seeds_before_serving():
    events = []
    loader = EpochLoader([{"x": 0}, {"x": 1}, {"x": 2}], 1, lambda label: events.append(label),
                         convert=lambda b: (b["x"],), before_step=lambda step: events.append(step))
    for (x,) in loader:
        events.append(f"ran {x}")
    assert len(loader) == 3
    assert events == [3, "ran 0", "e1s0", 4, "ran 1", "e1s1", 5, "ran 2", "e1s2"]


def test_name_map_takes_the_first_matching_rule_and_refuses_an_unmapped_entry():
    rename = name_map((("audio_net.", "model.a.", resnet_name), ("audio_net_extra.", "never.", None),
                       ("aux.", None, None), ("fc.", "model.head.", None)), "Net")
    assert rename("audio_net.layer3.1.bn2.weight") == "model.a.stages.2.1.bn2.weight"
    assert rename("audio_net.bn1.running_mean") == "model.a.stem.1.running_mean"
    assert rename("aux.weight") is None and rename("fc.bias") == "model.head.bias"
    with pytest.raises(KeyError, match="unmapped Net entry 'head.weight'"):
        rename("head.weight")


def test_load_mapped_copies_every_official_entry_and_refuses_a_missing_or_misshapen_one():
    official = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.BatchNorm1d(3))
    source = {"m.lin.weight": torch.full((3, 2), 2.0), "m.lin.bias": torch.full((3,), 3.0),
              "m.bn.weight": torch.full((3,), 4.0), "m.bn.bias": torch.full((3,), 5.0),
              "m.bn.running_mean": torch.full((3,), 6.0), "m.bn.running_var": torch.full((3,), 7.0)}
    rename = name_map((("0.", "m.lin.", None), ("1.num_batches_tracked", None, None), ("1.", "m.bn.", None)), "Seq")
    load_mapped(official, source, rename)
    assert {k: v.unique().tolist() for k, v in official.state_dict().items()} == {
        "0.weight": [2.0], "0.bias": [3.0], "1.weight": [4.0], "1.bias": [5.0], "1.running_mean": [6.0],
        "1.running_var": [7.0], "1.num_batches_tracked": [0]}
    with pytest.raises(KeyError, match="'1.running_var' maps to 'm.bn.running_var', which the project model"):
        load_mapped(official, {k: v for k, v in source.items() if k != "m.bn.running_var"}, rename)
    with pytest.raises(ValueError, match=r"official '0.weight' \(3, 2\) vs project 'm.lin.weight' \(2, 3\)"):
        load_mapped(official, {**source, "m.lin.weight": torch.zeros(2, 3)}, rename)


# --- golden records: the project's methods against the official code's recorded steps ------------------------------
GOLDEN = Path(__file__).parent / "golden" / "parity"
CASES = {c.name: c for c in get_cases()}
RECORDED = sorted(p.stem for p in GOLDEN.glob("*.pt"))


def test_every_case_has_a_golden_record_with_its_official_commit():
    # The replay tests run over the records: a case without one would go unchecked without a word.
    assert RECORDED == sorted(CASES), f"cases without a golden record: {sorted(set(CASES) - set(RECORDED))}"
    for name in RECORDED:
        data = golden.load(GOLDEN / f"{name}.pt")
        assert data["case"] == name and data["commit"] == CASES[name].commit and data["repo"] == CASES[name].repo
        assert data["live_passed"], f"{name} did not match the official code when it was recorded"


def test_each_cpu_kinds_records_are_of_known_cases_and_matched_the_official_code_on_that_kind():
    kinds = [d for d in GOLDEN.iterdir() if d.is_dir()]
    for path in (p for d in kinds for p in d.glob("*.pt")):
        data = golden.load(path)
        assert data["case"] == path.stem and data["commit"] == CASES[path.stem].commit and data["live_passed"]
        assert path.parent.name == golden.cpu_kind(data["cpu"]), path


def test_a_record_of_this_cpu_kind_is_preferred(tmp_path, monkeypatch):
    monkeypatch.setattr(golden, "cpu_model", lambda: "Intel(R) Xeon(R) Processor")
    case = CASES["smv"]
    assert golden.record_path(tmp_path, case) == tmp_path / "smv.pt"
    (tmp_path / "intel-r-xeon-r-processor").mkdir()
    (tmp_path / "intel-r-xeon-r-processor" / "smv.pt").touch()
    assert golden.record_path(tmp_path, case) == tmp_path / "intel-r-xeon-r-processor" / "smv.pt"


def test_a_new_record_never_replaces_the_shared_record_of_another_cpu(tmp_path, monkeypatch):
    (tmp_path / "fake").mkdir()
    golden_dir, case = tmp_path / "golden", _fake_case(0.0)
    monkeypatch.setattr(golden, "cpu_model", lambda: "AMD EPYC 7B13")
    shared, _ = golden.record(case, tmp_path, golden_dir)
    assert shared == golden_dir / "fake.pt"  # the first record of a case is the shared one
    assert golden.record(case, tmp_path, golden_dir)[0] == shared  # re-recorded on the CPU it was made on
    monkeypatch.setattr(golden, "cpu_model", lambda: "Intel(R) Xeon(R) Processor")
    own = golden_dir / "intel-r-xeon-r-processor" / "fake.pt"
    assert golden.record(case, tmp_path, golden_dir)[0] == own
    assert golden.load(shared)["cpu"] == "AMD EPYC 7B13" and golden.load(own)["cpu"] == "Intel(R) Xeon(R) Processor"
    assert golden.record(case, tmp_path, golden_dir)[0] == own  # from now on this kind's own record
    # A shared record from before records named their CPU stays as it is too.
    data = golden.load(shared)
    torch.save({k: v for k, v in data.items() if k != "cpu"}, shared)
    monkeypatch.setattr(golden, "cpu_model", lambda: "AMD EPYC 7B13")
    assert golden.record(case, tmp_path, golden_dir)[0] == golden_dir / "amd-epyc-7b13" / "fake.pt"
    assert "cpu" not in golden.load(shared)


@pytest.mark.parametrize("name", sorted(n for n, c in CASES.items() if c.deviations))
def test_each_documented_deviation_is_the_paper_defaults_value(name):
    # The report lists these as the paper default's departures from the official code; a value the default does not
    # have would present an option as the default.
    case = CASES[name]
    default = build_config(case.method, "cremad").method_hp
    assert {k: getattr(default, k) for k in case.deviations} == dict(case.deviations)


def _check(name: str, limit: int | None = None, step_hook=None):
    records = golden.check(CASES[name], golden.record_path(GOLDEN, CASES[name]), limit=limit, step_hook=step_hook)
    assert records, name
    return records


@pytest.mark.parametrize("name", RECORDED)
def test_first_step_matches_the_golden_record(name):
    records = _check(name, limit=1)
    assert not records[0].failed, f"{name} at {records[0].label}: {records[0].failed[:4]}"


@pytest.mark.slow
@pytest.mark.parametrize("name", RECORDED)
def test_every_step_matches_the_golden_record(name):
    records = _check(name)
    bad = [r for r in records if r.failed]
    assert not bad, f"{name} drifts from its golden record at {bad[0].label}: {bad[0].failed[:4]}"
    assert len(records) == len(golden.load(golden.record_path(GOLDEN, CASES[name]))["labels"])


def test_a_perturbed_coefficient_fails_the_golden_check(monkeypatch):
    from baselines import ogm

    original = ogm.ogm_coefficients

    def perturbed(scores, alpha):
        return {m: k * (1 + 1e-7) for m, k in original(scores, alpha).items()}

    monkeypatch.setattr(ogm, "ogm_coefficients", perturbed)
    records = _check("ogm", limit=1)
    assert {"q/coeff_audio", "q/coeff_visual"} <= set(records[0].failed)
    assert any(k.startswith("param/model.encoders") for k in records[0].failed)


# --- the official sides run with the official configurations' values, not the project's ------------------------------
def _drift_defaults(monkeypatch, method: str, drifted: dict) -> None:
    """Replace the declared (and per-dataset) defaults of ``method``'s knobs, as a drifted project default would."""
    import dataclasses

    from baselines.registry import get_method

    cls = get_method(method)
    params = tuple(dataclasses.replace(h, default=drifted[h.name], per_dataset={}) if h.name in drifted else h
                   for h in cls.HPARAMS)
    assert {h.name for h in params} >= set(drifted)
    monkeypatch.setattr(cls, "HPARAMS", params)


def _stub_official(monkeypatch, module) -> None:
    """Stand-ins for the official modules (no clone needed): every class the harness builds is a small module; the
    weight map is skipped. What the harness hands the official code is what is checked."""
    import types

    from torch import nn

    class Net(nn.Module):
        def __init__(self, *args, **kwargs) -> None:
            super().__init__()
            self.net, self.classifier, self.fusion_module = nn.Linear(2, 2), nn.Linear(2, 2), nn.Linear(2, 2)

    fake = types.SimpleNamespace(AVClassifier=Net, AClassifier=Net, VClassifier=Net, KMeans=None)
    monkeypatch.setattr(module, "import_official", lambda root, *names: [fake for _ in names])
    monkeypatch.setattr(module, "load_mapped", lambda *args, **kwargs: None)


def _official_inputs(case_name: str, module, project):
    official = CASES[case_name].official(CASES[case_name], Path("unused"), project)
    if module.__name__.endswith("relearning"):
        a = official.args
        return {**{k: getattr(a, k) for k in ("dataset", "n_classes", "move_lambda", "reinit_epoch", "reinit_num")},
                "kmeans_n_init": official.n_init}
    out = {"temperature": official.temperature, "weight": official.weight}
    if hasattr(official, "stage2_args"):
        out["stage2_temperature"] = official.stage2_args.temperature
    return out


@pytest.mark.parametrize("case_name, method, drifted, expected", [
    ("relearning", "relearning", {"move_lambda": 2.0, "kmeans_n_init": 1, "reinit_epoch": 7, "reinit_num": 5},
     {"dataset": "CREMAD", "n_classes": 6, "move_lambda": 3.0, "reinit_epoch": 1, "reinit_num": 1,
      "kmeans_n_init": 10}),
    ("dimml", "dimml", {"duc_temperature": 10.0, "align_weight": 2.0}, {"temperature": 50.0, "weight": 1.0}),
    ("dimml_stage2", "dimml", {"duc_temperature": 10.0, "align_weight": 2.0, "fusion_temperature": 3.0},
     {"temperature": 50.0, "weight": 1.0, "stage2_temperature": 1.0}),
])
def test_a_drifted_project_default_reaches_the_project_side_only(monkeypatch, case_name, method, drifted, expected):
    # The official side must take the official configuration's values (ours.sh / run.sh, the argparse defaults), so
    # that a project default drifting from them shows as a difference; the project side takes the project's defaults.
    import importlib

    module = importlib.import_module(f"benchmarks.parity.{method}")
    case = CASES[case_name]
    _stub_official(monkeypatch, module)
    assert _official_inputs(case_name, module, case.project(case, {})) == expected
    _drift_defaults(monkeypatch, method, drifted)
    project = case.project(case, {})
    schedule = {"reinit_epoch", "reinit_num"}   # the case's shortened schedule, on both sides
    assert {k: getattr(project.method.hp, k) for k in set(drifted) - schedule} == {
        k: v for k, v in drifted.items() if k not in schedule}
    assert _official_inputs(case_name, module, project) == expected


@pytest.mark.slow
def test_a_drifted_relearning_default_fails_the_golden_check(monkeypatch):
    # The project side of the relearning case runs with the project's move_lambda (it used to pin 3), so a drifted
    # default shows in the purity-gap strengths at the diagnosis.
    _drift_defaults(monkeypatch, "relearning", {"move_lambda": 2.0})
    records = _check("relearning")
    assert records[-1].label == "e1.reinit" and "q/alpha" in records[-1].failed
    assert not any(r.failed for r in records[:-1])


# --- the CLI and the generated report ---------------------------------------------------------------------------------
def test_cli_names_the_missing_clone(tmp_path, capsys):
    assert main(["parity", "ogm_ge", "--official-root", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert str(tmp_path / "OGM-GE_CVPR2022") in err and "GeWu-Lab/OGM-GE_CVPR2022" in err and "343dc1d" in err


def test_golden_replay_with_a_report_dir_but_no_flip_says_it_writes_nothing(tmp_path, capsys):
    # It wrote nothing there without a word.
    assert main(["parity", "ogm", "--golden", "--report-dir", str(tmp_path)]) == 0
    assert f"writes no report without --flip; {tmp_path} is left as it is" in capsys.readouterr().out
    assert not any(tmp_path.iterdir())


def test_cli_rejects_an_unknown_case(tmp_path, capsys):
    assert main(["parity", "nosuch", "--official-root", str(tmp_path)]) == 2
    assert "no parity case or method 'nosuch'" in capsys.readouterr().err


def _cli_cases(monkeypatch, *cases: Case) -> None:
    from benchmarks.commands import parity as command

    monkeypatch.setattr(command, "get_cases", lambda names: list(cases))


def test_cli_exit_status_and_report_say_which_case_differs_or_compared_nothing(tmp_path, monkeypatch, capsys):
    (tmp_path / "fake").mkdir()
    same, drifted = _fake_case(1e-13), Case(**{**_fake_case(1e-8).__dict__, "name": "drifted"})
    silent = Case(**{**_fake_case(0.0, project_labels=()).__dict__, "name": "silent",
                     "official": lambda case, root, project: _Side(0.0, ())})
    args = ["parity", "--official-root", str(tmp_path), "--report-dir", str(tmp_path / "report")]
    _cli_cases(monkeypatch, same)
    assert main(args) == 0
    for bad, status in ((drifted, "differs from e0s0"), (silent, "no steps")):
        _cli_cases(monkeypatch, bad)
        assert main(args) == 1, bad.name
        assert json.loads((tmp_path / "report" / f"{bad.name}.json").read_text())["status"] == status
    assert json.loads((tmp_path / "report" / "fake.json").read_text())["status"] == "match"
    out = capsys.readouterr().out
    assert "MATCH: max |diff| 9.99e-14" in out and "DIFFERS: max |diff| 1.00e-08" in out


def test_cli_golden_replay_exits_1_naming_the_first_difference(tmp_path, monkeypatch, capsys):
    (tmp_path / "fake").mkdir()
    golden.record(_fake_case(0.0), tmp_path, tmp_path / "golden")
    drifted = Case(**{**_fake_case(0.0).__dict__, "project": lambda case, overrides: _Side(1e-8)})
    for case, code, said in ((_fake_case(0.0), 0, "fake: matches its golden record over 2 checkpoints"),
                             (drifted, 1, "fake: DIFFERS at e0s0 (param/w) its golden record over 1 checkpoints")):
        _cli_cases(monkeypatch, case)
        assert main(["parity", "--golden", "--golden-dir", str(tmp_path / "golden")]) == code
        assert said in capsys.readouterr().out


def test_results_readme_is_generated_from_the_case_files():
    directory = Path(__file__).resolve().parents[1] / "results" / "parity"
    for name, case in CASES.items():
        # The report reads the case files, so a case whose knobs changed without a rerun would show its old ones.
        recorded = json.loads((directory / f"{name}.json").read_text())
        assert (recorded["hparams"], recorded["commit"]) == (dict(case.hparams), case.commit), name
    assert (directory / "README.md").read_text() == report.render(directory)
    for name in RECORDED:
        assert f"`{name}`" in (directory / "README.md").read_text()


def test_methods_table_cell_lists_each_case_of_a_method(tmp_path):
    for case, method, status, diff in (("a_x", "a", "match", 5.7e-12), ("a_y", "a", "differs from e6s0", 0.61),
                                       ("b", "b", "match", 0.0)):
        (tmp_path / f"{case}.json").write_text(json.dumps({"case": case, "method": method, "status": status,
                                                           "max_diff": diff}))
    cells = report.method_statuses(tmp_path)
    assert cells == {"a": "`a_x` match (6e-12)<br>`a_y` differs from e6s0 (6e-01)", "b": "`b` match (0e+00)"}


def _result(*records, case_name="fake"):
    return ParityResult(Case(**{**_fake_case(0.0).__dict__, "name": case_name, "deviations": {"beta": 0.5}}),
                        list(records), {})


def test_report_summary_and_signature_of_a_run():
    steps = [StepRecord("e0s0", 1e-12, "param/w", []),
             StepRecord("e0s1", 0.25, "param/w", ["param/w", "q/gamma", "buffer/b", "q/alpha", "optim/w/m"]),
             StepRecord("e0s2", 0.75, "param/v", ["param/v"])]
    result = _result(*steps)
    data = report.summary(result, [("beta", 0.5, result), ("gamma", 1, _result(steps[0]))])
    assert data["status"] == "differs from e0s1" and data["max_diff"] == 0.75
    assert [s["label"] for s in data["steps"]] == ["e0s0", "e0s1", "e0s2"]
    assert data["deviations"][0] == {"knob": "beta", "value": 0.5, "first_divergence": "e0s1", "max_diff": 0.25,
                                     "quantities": ["q/alpha", "q/gamma", "buffer/b", "optim/w/m"], "diverging": 5}
    assert data["deviations"][1] == {"knob": "gamma", "value": 1, "first_divergence": None, "max_diff": 1e-12,
                                     "quantities": []}
    assert report.summary(_result(steps[0]), [])["status"] == "match"


def test_report_writes_a_case_file_into_a_new_folder_and_renders_it(tmp_path):
    steps = [StepRecord("e0s0", 1e-12, "param/w", []), StepRecord("e0s1", 0.5, "q/alpha", ["q/alpha"])]
    data = report.summary(_result(*steps), [("beta", 0.5, _result(*steps))])
    path = report.write_summary(tmp_path / "new", data)
    assert path == tmp_path / "new" / "fake.json" and json.loads(path.read_text()) == data
    text = report.render(tmp_path / "new")
    assert "| 2 checkpoints: two steps | 5.0e-01 | differs from e0s1 |" in text
    assert "`beta=0.5`: from e0s1 (`q/alpha`; max 5.0e-01)" in text
