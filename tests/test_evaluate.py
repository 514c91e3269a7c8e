"""Missing-modality evaluation (AUG Table 5) on crafted batches and on a tiny trained run."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from benchmarks import evaluate as evaluate_module
from benchmarks.cli import main
from benchmarks.commands import evaluate as evaluate_command
from benchmarks.config import build_config
from benchmarks.evaluate import (
    CheckpointMismatchError,
    RunNotFinishedError,
    apply_missing,
    check_reference,
    evaluate_missing,
    missing_plan,
    parse_rates,
)
from benchmarks.run_folder import (
    MISSING_RESULT,
    missing_evaluation_current,
    missing_result_file,
    missing_result_problem,
)
from benchmarks.runner import build_data, train_run
from benchmarks.sweep.spec import EvaluateSpec, SweepConfigError
from tests.conftest import TINY_TRAIN, interrupted_run, tiny_overrides
from tests.numeric import approx

# The runs' own evaluation batch size, at which a sweep's missing-modality evaluation is made.
EVAL_BATCH = TINY_TRAIN["eval_batch_size"]


def test_missing_plan_is_seeded_nested_and_loses_one_modality_per_sample():
    plans = missing_plan(1000, [0.0, 0.2, 0.5], num_modalities=2, seed=0)
    assert [int((plans[r] >= 0).sum()) for r in (0.0, 0.2, 0.5)] == [0, 200, 500]
    small, large = plans[0.2], plans[0.5]
    assert np.all(large[small >= 0] == small[small >= 0]), "20% missing samples are a subset, same modality"
    assert 200 < int((large == 0).sum()) < 300, "the lost modality is drawn uniformly"
    assert np.array_equal(missing_plan(1000, [0.5], 2, seed=0)[0.5], large)
    assert not np.array_equal(missing_plan(1000, [0.5], 2, seed=1)[0.5], large)
    # round(r * N) samples, not its floor: 20% of 9 is 1.8 -> 2, 60% of 9 is 5.4 -> 5.
    odd = missing_plan(9, [0.2, 0.6, 1.0], num_modalities=2, seed=0)
    assert [int((odd[r] >= 0).sum()) for r in (0.2, 0.6, 1.0)] == [2, 5, 9]
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        parse_rates("0,1.5")


def test_apply_missing_zeroes_exactly_the_planned_inputs():
    batch = {"audio": torch.ones(4, 1, 2, 2), "visual": torch.full((4, 3, 1, 2, 2), 2.0), "label": torch.arange(4)}
    out = apply_missing(batch, torch.tensor([-1, 0, 1, 0]), ["audio", "visual"])
    assert out["audio"].flatten(1).sum(1).tolist() == [4.0, 0.0, 4.0, 0.0]
    assert out["visual"].flatten(1).sum(1).tolist() == [24.0, 24.0, 0.0, 24.0]
    assert torch.equal(out["label"], batch["label"]) and batch["audio"].sum() == 16, "the input batch is untouched"


def test_evaluate_missing_on_a_trained_run(tmp_path, capsys):
    run_dir = tmp_path / "run"
    with pytest.raises(RunNotFinishedError):
        evaluate_missing(run_dir)
    cfg = build_config("joint", "synthetic", tiny_overrides())
    summary = train_run(cfg, run_dir, log=lambda msg: None)
    assert main(["evaluate", str(run_dir), "--missing", "0,0.25,1", "--device", "cpu"]) == 0
    result = json.loads((run_dir / "missing_modality.json").read_text())
    rates = {row["rate"]: row for row in result["rates"]}
    last = summary["protocols"]["last"]["test"]
    assert rates[0.0]["metrics"]["acc"] == last["acc"] and rates[0.0]["metrics"]["map"] == approx(last["map"])
    assert result["reference_last_epoch_acc"] == last["acc"] and result["checkpoint_epoch"] == 1
    assert result["batch_size"] == cfg.train.eval_batch_size, "the run's evaluation batch size unless asked otherwise"
    assert [rates[r]["n_missing"] for r in (0.0, 0.25, 1.0)] == [0, 4, 16]
    assert sum(rates[1.0]["missing_by_modality"].values()) == 16
    assert "missing 25%" in capsys.readouterr().out
    assert evaluate_missing(run_dir, [0.25])["rates"][0]["metrics"] == rates[0.25]["metrics"], "deterministic"


def test_a_checkpoint_that_does_not_reproduce_the_last_epoch_is_refused_not_recorded(tmp_path):
    # Re-learning re-initialises its encoders in on_epoch_end, after the last epoch's evaluation when its interval
    # divides the run: the final checkpoint is then another model than the one the last-epoch metrics describe.
    overrides = tiny_overrides()
    overrides["relearning"] = {"reinit_epoch": 1}
    run_dir = tmp_path / "run"
    train_run(build_config("relearning", "synthetic", overrides), run_dir, log=lambda msg: None)
    with pytest.raises(CheckpointMismatchError, match=rf"{run_dir}: the final checkpoint scores .* but the run "
                                                      r"recorded .* for its last epoch"):
        evaluate_missing(run_dir, [0.0, 0.5])
    with pytest.raises(CheckpointMismatchError):
        evaluate_missing(run_dir, [0.5])  # rate 0 is checked even when not asked for
    # Training records no train-split metrics to compare with, and the check was skipped: --split train wrote a result
    # of this other model. The checkpoint is now checked on test first.
    with pytest.raises(CheckpointMismatchError, match=rf"{run_dir}: the final checkpoint scores .* test accuracy"):
        evaluate_missing(run_dir, [0.5], split="train")
    assert not list(run_dir.glob("missing_modality*.json"))


def test_extending_a_run_drops_its_missing_modality_result_and_a_stale_one_is_not_current(tmp_path):
    run_dir = tmp_path / "run"
    train_run(build_config("joint", "synthetic", tiny_overrides()), run_dir, log=lambda msg: None)
    evaluate_missing(run_dir, [0.0])
    assert missing_evaluation_current(run_dir, batch_size=EVAL_BATCH, split="test", seed=0, rates=[0.0])
    assert not missing_evaluation_current(run_dir, batch_size=EVAL_BATCH, split="val", seed=0, rates=[0.0])
    assert not missing_evaluation_current(run_dir, batch_size=EVAL_BATCH, split="test", seed=1, rates=[0.0])
    assert not missing_evaluation_current(run_dir, batch_size=EVAL_BATCH, split="test", seed=0, rates=[0.0, 0.5])
    old = (run_dir / MISSING_RESULT).read_text()
    # Made by hand at another batch size: MLA's gate scores per batch, so the sweep's own evaluation is made again.
    evaluate_missing(run_dir, [0.0], batch_size=3)
    assert not missing_evaluation_current(run_dir, batch_size=EVAL_BATCH, split="test", seed=0, rates=[0.0])
    (run_dir / MISSING_RESULT).write_text(old)
    assert missing_evaluation_current(run_dir, batch_size=EVAL_BATCH, split="test", seed=0, rates=[0.0])
    longer = tiny_overrides()
    longer["train"]["epochs"] += 1
    train_run(build_config("joint", "synthetic", longer), run_dir, resume=True, extend_epochs=True,
              log=lambda msg: None)
    assert not (run_dir / MISSING_RESULT).exists(), "it described the old final checkpoint"
    (run_dir / MISSING_RESULT).write_text(old)  # a run extended before the file was dropped on extension
    assert not missing_evaluation_current(run_dir, batch_size=EVAL_BATCH, split="test", seed=0, rates=[0.0]), \
        "a sweep evaluates it again"


def test_a_split_the_run_does_not_serve_is_refused_naming_the_run_and_split(tmp_path):
    # A run without a validation split (data.train_split=full, here n_val=0): --split val used to fail deep in the
    # metrics with "torch.cat(): expected a non-empty list of Tensors", naming neither the run nor the split.
    overrides = tiny_overrides()
    overrides["data"]["n_val"] = 0
    run_dir = tmp_path / "run"
    train_run(build_config("joint", "synthetic", overrides), run_dir, log=lambda msg: None)
    with pytest.raises(ValueError, match=rf"{run_dir}.*no 'val' rows"):
        evaluate_missing(run_dir, [0.5], split="val", device="cpu")
    assert not (run_dir / MISSING_RESULT).exists()


def test_bad_rates_and_batch_sizes_are_refused_before_any_work(tmp_path, capsys):
    run_dir = tmp_path / "run"
    train_run(build_config("joint", "synthetic", tiny_overrides()), run_dir, log=lambda msg: None)
    # an empty rate list (the implicit rate 0 made it pass) wrote a result with no rates in it
    with pytest.raises(ValueError, match=r"\[0, 1\], got \[\]"):
        evaluate_missing(run_dir, [], device="cpu")
    # the message showed the implicit 0 the caller never gave: "got [0.0, 1.5]"
    with pytest.raises(ValueError, match=r"got \[1\.5\]"):
        evaluate_missing(run_dir, [1.5], device="cpu")
    assert not (run_dir / MISSING_RESULT).exists()
    # --batch-size 0 was taken as "not given" and silently evaluated with train.eval_batch_size
    with pytest.raises(SystemExit):
        main(["evaluate", str(run_dir), "--batch-size", "0", "--device", "cpu"])
    assert "--batch-size" in capsys.readouterr().err
    # --seed -1 was taken and its result replaced the sweep's evaluation; train.seed refuses it too
    with pytest.raises(SystemExit):
        main(["evaluate", str(run_dir), "--seed", "-1", "--device", "cpu"])
    assert "--seed: must be >= 0, got -1" in capsys.readouterr().err
    with pytest.raises(ValueError, match="batch_size"):
        evaluate_missing(run_dir, [0.5], device="cpu", batch_size=0)
    assert not (run_dir / MISSING_RESULT).exists()


def test_another_splits_result_has_its_own_file_and_keeps_the_test_result(tmp_path):
    # Evaluating --split val wrote missing_modality.json too, replacing the test result that tables read; the table
    # then refused the run until it was evaluated on test again.
    run_dir = tmp_path / "run"
    train_run(build_config("joint", "synthetic", tiny_overrides()), run_dir, log=lambda msg: None)
    test_result = evaluate_missing(run_dir, [0.5])
    assert evaluate_missing(run_dir, [0.5], split="val")["split"] == "val"
    assert json.loads((run_dir / MISSING_RESULT).read_text()) == json.loads(json.dumps(test_result))
    assert json.loads((run_dir / missing_result_file("val")).read_text())["split"] == "val"
    train_result = evaluate_missing(run_dir, [0.5], split="train")
    assert train_result["n"] == 64 and train_result["reference_last_epoch_acc"] is None, "training records no train acc"
    assert missing_evaluation_current(run_dir, batch_size=EVAL_BATCH, split="test", seed=0, rates=[0.5])
    assert missing_evaluation_current(run_dir, batch_size=EVAL_BATCH, split="val", seed=0, rates=[0.5])
    longer = tiny_overrides()
    longer["train"]["epochs"] += 1
    train_run(build_config("joint", "synthetic", longer), run_dir, resume=True, extend_epochs=True,
              log=lambda msg: None)
    assert not list(run_dir.glob("missing_modality*.json")), "both described the old final checkpoint"


def test_a_result_holds_the_rates_asked_for_in_whatever_order_they_are_asked():
    summary = {"protocols": {"last": {"epoch": 4}}}
    result = {"checkpoint_epoch": 4, "split": "test", "seed": 0, "rates": [{"rate": 0.5}, {"rate": 0.0}]}
    assert missing_result_problem(summary, result, split="test", seed=0, rates=[0.5, 0.0]) is None
    assert missing_result_problem(summary, result, rates=[0, 0.5]) is None
    assert missing_result_problem(summary, result, rates=[0.0, 0.3]) == "it holds the rates [0.0, 0.5], not [0.0, 0.3]"
    # rates given as none at all are asked for too, unlike rates not given
    assert missing_result_problem(summary, result, rates=[]) == "it holds the rates [0.0, 0.5], not []"
    # a result of another split (copied or renamed into this split's file) is not this split's
    assert missing_result_problem(summary, result, split="val") == "it evaluated the 'test' split, not 'val'"


def test_a_seeds_missing_samples_are_spread_over_the_split_and_fixed_across_versions():
    # The missing samples are a random draw, not the split's first rows (some datasets list rows by class) ...
    missing = np.flatnonzero(missing_plan(1000, [0.2], num_modalities=2, seed=0)[0.2] >= 0)
    assert 60 < int((missing < 500).sum()) < 140
    # ... and a seed keeps naming the same samples and modalities: a result file is current by its seed alone.
    plans = missing_plan(8, [0.25, 0.5], num_modalities=3, seed=0)
    assert plans[0.25].tolist() == [-1, -1, -1, 0, 0, -1, -1, -1]
    assert plans[0.5].tolist() == [1, -1, -1, 0, 0, -1, -1, 1]


def test_parse_rates_takes_spaces_and_a_trailing_comma_and_names_bad_text():
    assert parse_rates(" 0, 0.2,0.5,") == [0.0, 0.2, 0.5]
    with pytest.raises(ValueError, match=r"comma-separated fractions.*'0,x'"):
        parse_rates("0,x")


def test_the_planned_dataset_rows_lose_the_planned_modality(tmp_path, monkeypatch):
    # The plan is over positions in the split; the loader's batches carry dataset rows (the test split's rows come
    # after train and val), so a mask looked up by position or by place in the batch zeroes other samples.
    run_dir = tmp_path / "run"
    cfg = build_config("joint", "synthetic", tiny_overrides())
    train_run(cfg, run_dir, log=lambda msg: None)
    test_rows = build_data(cfg).splits["test"]
    assert test_rows.min() > 0, "positions and rows differ"
    # the reference is the last epoch, never the best-on-test one
    summary = json.loads((run_dir / "summary.json").read_text())
    summary["protocols"]["paper"]["test"]["acc"] = -1.0
    (run_dir / "summary.json").write_text(json.dumps(summary))
    real_evaluate, real_select_device, seen, devices = evaluate_module.evaluate, evaluate_module.select_device, [], []

    def spy(method, loader, num_classes):
        order, codes, sizes = [], {}, []
        for batch in loader:
            sizes.append(len(batch["index"]))
            for row, a, v in zip(batch["index"].tolist(), batch["audio"].flatten(1), batch["visual"].flatten(1)):
                assert not (a.eq(0).all() and v.eq(0).all()), "a sample loses one modality, never both"
                order.append(row)
                codes[row] = 0 if a.eq(0).all() else 1 if v.eq(0).all() else -1
        seen.append((order, codes, sizes, torch.rand(1).item()))
        return real_evaluate(method, loader, num_classes)

    def select_device(name):
        devices.append(name)
        return real_select_device("cpu")

    monkeypatch.setattr(evaluate_module, "evaluate", spy)
    monkeypatch.setattr(evaluate_module, "select_device", select_device)
    out = evaluate_missing(run_dir, [0.5, 1.0], seed=3, device="cpu", batch_size=5)
    assert devices == ["cpu"]
    plans = missing_plan(len(test_rows), [0.0, 0.5, 1.0], num_modalities=2, seed=3)
    assert [codes for _, codes, _, _ in seen] == [dict(zip(test_rows.tolist(), plans[r].tolist())) for r in plans]
    assert all(order == test_rows.tolist() for order, _, _, _ in seen), "every row once, in order, unshuffled"
    assert all(sizes == [5, 5, 5, 1] for _, _, sizes, _ in seen), "the batch size asked for"
    assert out["n"] == len(test_rows) == 16 and out["batch_size"] == 5
    assert json.loads((run_dir / MISSING_RESULT).read_text())["seed"] == out["seed"] == 3, "the seed it ran with"
    assert out["reference_last_epoch_acc"] == summary["protocols"]["last"]["test"]["acc"]
    by_rate = {row["rate"]: row for row in out["rates"]}
    assert list(by_rate) == [0.5, 1.0] and by_rate[0.5]["n_missing"] == 8
    lost = by_rate[1.0]["missing_by_modality"]
    assert lost == {"audio": int((plans[1.0] == 0).sum()), "visual": int((plans[1.0] == 1).sum())}
    assert min(lost.values()) > 0, "both modalities are lost"
    # the process's random state before the call does not reach the evaluation (methods may draw in predict)
    draws = [draw for _, _, _, draw in seen]
    seen.clear()
    torch.manual_seed(12345)
    evaluate_missing(run_dir, [0.5, 1.0], seed=3, device="cpu", batch_size=5)
    assert [draw for _, _, _, draw in seen] == draws


def test_an_interrupted_run_is_not_evaluated(tmp_path):
    # its checkpoint is not the final one
    run_dir = tmp_path / "run"
    interrupted_run(run_dir)
    with pytest.raises(RunNotFinishedError, match=rf"{run_dir} holds no finished run"):
        evaluate_missing(run_dir, [0.5])
    assert not list(run_dir.glob("missing_modality*.json"))


def test_the_cli_passes_its_options_and_reports_each_rate(tmp_path, monkeypatch, capsys):
    calls = []

    def fake(run_dir, rates, **options):
        calls.append((run_dir, rates, options))
        return {"n": 10, "rates": [{"rate": r, "n_missing": round(10 * r),
                                    "metrics": {"acc": 1 - r, "macro_f1": 0.5, "map": 0.25}} for r in rates]}

    monkeypatch.setattr(evaluate_command, "evaluate_missing", fake)
    assert main(["evaluate", str(tmp_path)]) == 0
    assert calls[-1] == (tmp_path, [0.0, 0.2, 0.5], {"split": "test", "seed": 0, "device": None, "batch_size": None})
    assert f"wrote {tmp_path / MISSING_RESULT}" in capsys.readouterr().out
    assert main(["evaluate", str(tmp_path), "--missing", "0.5,0.125", "--split", "val", "--seed", "3", "--device",
                 "cpu", "--batch-size", "7"]) == 0
    assert calls[-1] == (tmp_path, [0.5, 0.125], {"split": "val", "seed": 3, "device": "cpu", "batch_size": 7})
    out = capsys.readouterr().out
    assert "missing 50%: acc 0.5000  macro_f1 0.5000  map 0.2500  (5/10 samples missing a modality)" in out
    assert "missing 12.5%: acc 0.8750" in out and f"wrote {tmp_path / 'missing_modality-val.json'}" in out


def test_a_repeated_rate_is_refused(tmp_path):
    # A rate is evaluated and written once, so a sweep whose evaluate.missing repeated one never found its result
    # current ("it holds the rates [0.5], not [0.5, 0.5]") and evaluated the finished run again at every launch.
    with pytest.raises(ValueError, match=r"rates must differ from each other, got \[0\.5, 0\.2, 0\.5\]"):
        parse_rates("0.5,0.2,0.5")
    with pytest.raises(SweepConfigError, match=r"evaluate\.missing: .*must differ"):
        EvaluateSpec.from_dict({"missing": [0, 0.0]})
    with pytest.raises(ValueError, match="must differ"):
        evaluate_missing(tmp_path / "run", [0.5, 0.5])


def test_rate_zero_must_reproduce_the_last_epoch_to_within_half_a_sample():
    # 10 samples: one sample more right (0.6 vs 0.5) is another model; 0.54 (a float difference) is the same one.
    at_zero = [{"rate": 0.0, "metrics": {"acc": 0.54}}, {"rate": 0.5, "metrics": {"acc": 0.1}}]
    check_reference("run", "test", at_zero, recorded=0.5, n=10)
    with pytest.raises(CheckpointMismatchError, match=r"run: the final checkpoint scores 0\.6000 test accuracy .* "
                                                      r"recorded 0\.5000"):
        check_reference("run", "test", [{"rate": 0.0, "metrics": {"acc": 0.6}}], recorded=0.5, n=10)
