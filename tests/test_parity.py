"""``augbench parity``: float64 precision of the shared step code, the golden parity records, the lockstep
comparison and the CLI's errors."""

from __future__ import annotations

import json
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
from benchmarks.parity.core import Case, compare, run_case
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


def test_two_empty_snapshots_are_an_error_naming_the_step_not_a_match():
    with pytest.raises(ValueError, match="at e0s1: neither side has anything to compare"):
        compare("e0s1", {}, {})


def test_nan_matches_only_nan_at_the_same_place():
    nan = float("nan")
    assert compare("x", {"a": _f64(nan, 1.0)}, {"a": _f64(nan, 1.0)}).failed == []
    for project, official in ((_f64(nan, 1.0), _f64(1.0, 1.0)), (_f64(1.0, 1.0), _f64(nan, 1.0)),
                              (_f64(nan, 1.0), _f64(1.0, nan))):
        rec = compare("x", {"a": project, "b": _f64(0.0)}, {"a": official, "b": _f64(1e-12)})
        assert rec.failed == ["a"] and (rec.worst, rec.max_diff) == ("a", float("inf"))


def test_infinity_matches_only_the_same_infinity():
    inf = float("inf")
    assert compare("x", {"a": _f64(inf, -inf)}, {"a": _f64(inf, -inf)}).failed == []
    assert compare("x", {"a": _f64(inf, -inf)}, {"a": _f64(inf, -inf).float()}).failed == []
    for project, official in ((1.0, inf), (-inf, inf), (inf, 1.0), (inf, -inf)):
        rec = compare("x", {"a": _f64(project)}, {"a": _f64(official)})
        assert rec.failed == ["a"] and rec.max_diff == inf


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


# --- golden records: the project's methods against the official code's recorded steps ------------------------------
GOLDEN = Path(__file__).parent / "golden" / "parity"
CASES = {c.name: c for c in get_cases()}
RECORDED = sorted(p.stem for p in GOLDEN.glob("*.pt"))


def test_every_case_has_a_golden_record_with_its_official_commit():
    assert RECORDED, f"no golden parity records in {GOLDEN}"
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
