"""What a sweep checks before starting anything (registered names, settings, dataset caches, devices, Slurm), the
dry-run listing, and the data-free example sweep run end to end."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from benchmarks.cli import main
from benchmarks.config import load_config_file
from benchmarks.records import read_config_yaml
from benchmarks.sweep import expand, parse_config
from benchmarks.sweep.expand import plan
from benchmarks.sweep.preflight import modality_problems
from benchmarks.sweep.spec import SweepConfigError, load_config
from core.hparams import HParamError
from tests.conftest import TINY_DATA, TINY_MODEL, TINY_TRAIN

ROOT = Path(__file__).resolve().parents[1]
TABLE1 = ROOT / "benchmarks" / "configs" / "aug_neurips25" / "table1.yaml"
EXAMPLE = ROOT / "benchmarks" / "configs" / "examples" / "synthetic_sweep.yaml"


@pytest.fixture
def no_launch(monkeypatch, tmp_path):
    """No GPU, an empty cache root, and any attempt to start a run process is a test failure."""
    def refuse(*args, **kwargs):
        raise AssertionError(f"a run process was started: {args[0] if args else kwargs}")

    monkeypatch.setattr(subprocess, "Popen", refuse)
    monkeypatch.setattr("torch.cuda.device_count", lambda: 0)
    monkeypatch.setenv("AUG_BENCH_CACHE", str(tmp_path / "empty-cache"))


def write_config(path: Path, **extra) -> Path:
    doc = {"name": "test/checks", "seeds": [0, 1], "protocol": "clean",
           "defaults": {"model": dict(TINY_MODEL), "train": dict(TINY_TRAIN), "data": {}},
           "datasets": {"synthetic": {"data": dict(TINY_DATA)}}, "methods": {"joint": {}, "sum": {}}}
    doc.update(extra)
    path.write_text(yaml.safe_dump(doc))
    return path


def test_table1_without_data_or_gpus_reports_once_grouped_and_starts_nothing(no_launch, tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["sweep", str(TABLE1), "--gpus", "0,1,2,3", "--skip-missing", "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2
    assert "342 runs" in err and "nothing was launched" in err
    lines = err.splitlines()
    assert len(lines) <= 20, "one screen, grouped by dataset, not a line per run"
    for dataset in ("cremad", "kinetics_sounds", "vggsound", "twitter2015", "sarcasm", "nvgesture"):
        (line,) = [x for x in lines if x.strip().startswith(f"- {dataset} (")]
        assert f"no prepared {dataset} cache" in line and "augbench prepare" in line
    assert "GPU(s) [0, 1, 2, 3] are not present" in err
    assert not out.exists() or not any(out.iterdir()), "nothing written, nothing started"


def test_every_kind_of_problem_is_reported_together(no_launch, tmp_path, capsys):
    path = write_config(tmp_path / "sweep.yaml",
                        datasets={"synthetic": {"data": dict(TINY_DATA)}, "cremad": {}},
                        methods={"joint": {"train": {"epochs": "ten"}}, "sum": {"sum": {"bogus": 1}},
                                 "nope": {}, "ogm_ge": {}})
    assert main(["sweep", str(path), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "unregistered method(s) ['nope']" in err and "--skip-missing" in err
    # one line per (row, error) naming every dataset it hits, not one per run
    (bogus,) = [x for x in err.splitlines() if "bogus" in x]
    assert "methods.sum on cremad, synthetic: unknown hyperparameter(s) ['sum.bogus']" in bogus
    assert "methods.joint on cremad, synthetic" in err and "train.epochs" in err
    assert "cremad (2 runs): no prepared cremad cache" in err, "the valid ogm_ge row's cremad runs need data"
    assert not (tmp_path / "out").exists()


def test_a_method_planned_on_a_dataset_with_more_modalities_than_it_supports_is_refused(no_launch, tmp_path, capsys):
    three = {"data": {**TINY_DATA, "modalities": 3}}
    path = write_config(tmp_path / "sweep.yaml", datasets={"synthetic": three}, methods={"joint": {}, "ogm_ge": {}})
    assert main(["sweep", str(path), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "ogm_ge on synthetic (2 runs): the method supports [2] modalities, the dataset serves 3" in err
    assert "methods.ogm_ge.only_datasets" in err and "joint on" not in err
    assert not (tmp_path / "out").exists()


def test_every_shipped_table_plans_each_method_only_on_datasets_it_supports():
    for path in sorted((ROOT / "benchmarks" / "configs").glob("*/*.yaml")):
        if "methods" not in yaml.safe_load(path.read_text()):
            continue  # a single-run config
        jobs = plan(load_config(path), Path("/nonexistent")).jobs
        assert jobs and modality_problems(jobs) == [], path


def test_a_bad_command_line_value_is_blamed_on_the_set_not_on_a_row(no_launch, tmp_path, capsys):
    path = write_config(tmp_path / "sweep.yaml")
    assert main(["sweep", str(path), "--out", str(tmp_path / "out"), "--set", "train.epochs=0"]) == 2
    err = capsys.readouterr().err
    assert "--set train.epochs on synthetic:" in err and "methods.joint" not in err


def test_skip_missing_leaves_out_unregistered_names_only(no_launch, tmp_path, capsys):
    path = write_config(tmp_path / "sweep.yaml", datasets={"synthetic": {"data": dict(TINY_DATA)}, "cremad": {}},
                        methods={"joint": {}, "nope": {}})
    assert main(["sweep", str(path), "--out", str(tmp_path / "out"), "--skip-missing"]) == 2
    err = capsys.readouterr().err
    assert "unregistered" not in err and "cremad (2 runs): no prepared cremad cache" in err
    assert main(["sweep", str(path), "--out", str(tmp_path / "out"), "--skip-missing", "--datasets", "synthetic",
                 "--dry-run"]) == 0


def test_cuda_runs_without_a_cuda_device_are_refused(no_launch, tmp_path, capsys):
    path = write_config(tmp_path / "sweep.yaml", defaults={"model": dict(TINY_MODEL), "data": {},
                                                           "train": {**TINY_TRAIN, "device": "cuda"}})
    assert main(["sweep", str(path), "--out", str(tmp_path / "out"), "--launcher", "pool"]) == 2
    assert "train.device=cuda in 4 runs" in capsys.readouterr().err


def test_slurm_and_local_gpu_sweeps_refuse_batches_that_do_not_split_and_cuda_jobs_without_a_gpu(no_launch, tmp_path,
                                                                                                  monkeypatch):
    # Each of these runs would have been launched only to fail on its node.
    from benchmarks.sweep.launchers import LAUNCHERS, LaunchOptions
    from benchmarks.sweep.slurm import SlurmOptions

    path = write_config(tmp_path / "sweep.yaml", seeds=[0], methods={"joint": {}},
                        defaults={"model": {"width": 4}, "train": {"batch_size": 33, "device": "cuda"}, "data": {}})
    jobs = plan(load_config(path), tmp_path / "out").jobs
    slurm = LAUNCHERS["slurm"].device_problems
    (split,) = slurm(jobs, LaunchOptions(slurm=SlurmOptions(gpus_per_run=2)))
    assert split.startswith("train.batch_size=33 (e.g. synthetic-joint-seed0-") and "over the 2 GPUs" in split
    (no_gpu,) = slurm(jobs, LaunchOptions(slurm=SlurmOptions(gpus_per_run=0)))
    assert "train.device=cuda in 1 run" in no_gpu and "--gpus-per-run 0 gives their jobs no GPU" in no_gpu
    assert slurm(jobs, LaunchOptions(slurm=SlurmOptions(gpus_per_run=3))) == []
    monkeypatch.setattr("torch.cuda.device_count", lambda: 2)
    assert LAUNCHERS["local"].device_problems(jobs, LaunchOptions(gpus=[0, 1], gpus_per_run=2)) == [split]
    assert LAUNCHERS["local"].device_problems(jobs, LaunchOptions(gpus=[0, 1], gpus_per_run=1)) == []


def test_method_settings_that_do_not_fit_the_datasets_modalities_are_refused_before_any_run(no_launch, tmp_path,
                                                                                            capsys):
    # They failed only as each run started (on Slurm: every job of the array).
    path = write_config(tmp_path / "sweep.yaml", seeds=[0, 1], methods={
        "aug": {"aug": {"fusion_weights": [0.33, 0.33, 0.34], "modality_order": ["audio", "visaul"]}}})
    assert main(["sweep", str(path), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "method settings that do not fit the dataset's modalities:" in err
    assert ("aug on synthetic (2 runs): aug.modality_order=['audio', 'visaul'] must list each of ['audio', 'visual'] "
            "once") in err
    assert "aug on synthetic (2 runs): aug.fusion_weights=[0.33, 0.33, 0.34] needs one number per modality" in err


def test_dry_run_lists_folder_method_dataset_seed_overrides_and_done_partial_new(no_launch, tmp_path, capsys):
    path = write_config(tmp_path / "sweep.yaml",
                        methods={"joint": {}, "ogm_ge": {"ogm_ge": {"alpha": 0.3}}})
    out = tmp_path / "out"
    assert main(["sweep", str(path), "--out", str(out), "--dry-run"]) == 0
    rows = [x for x in capsys.readouterr().out.splitlines() if "synthetic-" in x]
    assert len(rows) == 4 and all(x.split()[0] == "new" for x in rows)
    done, partial = (out / rows[0].split()[4]), (out / rows[3].split()[4])
    done.mkdir(parents=True)
    (done / "DONE").write_text("")
    (done / "summary.json").write_text("{}")
    partial.mkdir(parents=True)
    (partial / "checkpoint.pt").write_bytes(b"")
    (partial / "metrics.jsonl").write_text(json.dumps({"epoch": 0}) + "\n")

    assert main(["sweep", str(path), "--out", str(out), "--dry-run"]) == 0
    text = capsys.readouterr().out
    by_run = {next(t for t in x.split() if t.startswith("synthetic-")): x for x in text.splitlines()
              if "synthetic-" in x}
    assert by_run[done.name].split()[:4] == ["done", "synthetic", "joint", "0"]
    assert by_run[partial.name].startswith("partial (1/2 epochs)") and "ogm_ge.alpha=0.3" in by_run[partial.name]
    assert "4 runs in" in text and "1 done, 1 partial, 2 new" in text
    assert "defaults (every run): " in text and "model.width=4" in text
    assert sorted(p.name for p in out.iterdir()) == sorted([done.name, partial.name]), "a dry run writes nothing"


def test_a_finished_run_extended_past_the_config_is_refused_not_skipped_as_done(no_launch, tmp_path, capsys):
    # The config's table would not count it (other settings), so skipping it as done hid that it is missing.
    path = write_config(tmp_path / "sweep.yaml", seeds=[0], methods={"joint": {}})
    out = tmp_path / "out"
    (job,) = plan(load_config(path), out).jobs
    job.run_dir.mkdir(parents=True)
    (job.run_dir / "DONE").write_text("")
    (job.run_dir / "summary.json").write_text("{}")
    epochs = job.cfg.train.epochs
    (job.run_dir / "extensions.json").write_text(json.dumps([{"from_epochs": epochs, "to_epochs": epochs + 3}]))
    assert main(["sweep", str(path), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "finished runs extended with --extend-epochs past this config" in err
    assert f"{job.run_dir}: trained to {epochs + 3} epochs, the config plans {epochs}" in err
    (job.run_dir / "extensions.json").unlink()
    assert main(["sweep", str(path), "--out", str(out)]) == 0, "the unextended run is skipped as done"


def test_dry_run_header_names_the_set_values_that_replace_the_defaults(no_launch, tmp_path, capsys):
    path = write_config(tmp_path / "sweep.yaml")
    assert main(["sweep", str(path), "--out", str(tmp_path / "out"), "--dry-run", "--set", "model.width=2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    defaults = next(x for x in lines if x.startswith("defaults (every run): "))
    assert "model.width=4" in defaults
    header = "--set (over the config's settings; a method's keys on its rows): model.width=2"
    assert lines[lines.index(defaults) + 1] == header


def test_slurm_without_sbatch_is_one_line_and_a_nonzero_exit(no_launch, tmp_path, monkeypatch, capsys):
    pytest.importorskip("submitit")
    monkeypatch.setenv("PATH", str(tmp_path / "no-slurm-here"))
    path = write_config(tmp_path / "sweep.yaml")
    assert main(["sweep", str(path), "--out", str(tmp_path / "out"), "--launcher", "slurm"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert "sbatch" in err and "--launcher local" in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("launcher, options, named", [
    ("local", ["--partition", "gpu", "--time", "60"], "--partition, --time"),
    ("pool", ["--gpus", "0,1", "--resubmit"], "--resubmit, --gpus"),
])
def test_options_another_launcher_would_ignore_are_refused(no_launch, tmp_path, capsys, launcher, options, named):
    # They were dropped without a word, a dry run included (exit 0).
    path = write_config(tmp_path / "sweep.yaml")
    assert main(["sweep", str(path), "--out", str(tmp_path / "out"), "--launcher", launcher, "--dry-run",
                 *options]) == 2
    assert f"{named}: not options of --launcher {launcher}, which would ignore them" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_slurm_without_submitit_is_one_line_and_a_nonzero_exit(no_launch, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "submitit", None)
    path = write_config(tmp_path / "sweep.yaml")
    assert main(["sweep", str(path), "--out", str(tmp_path / "out"), "--launcher", "slurm"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "augbench[slurm]" in err


def test_example_sweep_needs_no_data_and_runs_end_to_end(tmp_path, capsys):
    """The README's first sweep: the full config expands without data; a reduced version (1 seed, 3 rows,
    1 epoch) trains in a pool worker, evaluates the missing-modality follow-up and tabulates."""
    assert main(["sweep", str(EXAMPLE), "--dry-run", "--out", str(tmp_path / "full")]) == 0
    assert "10 runs in" in capsys.readouterr().out
    out = tmp_path / "runs"
    assert main(["sweep", str(EXAMPLE), "--launcher", "pool", "--workers", "1", "--out", str(out), "--seeds", "0",
                 "--methods", "unimodal_visual", "joint", "aug", "--set", "train.epochs=1"]) == 0
    assert "3 launched, 0 already finished, 0 failed" in capsys.readouterr().out
    assert len(list(out.glob("*/missing_modality.json"))) == 3
    assert main(["table", str(out), "--config", str(EXAMPLE)]) == 0
    captured = capsys.readouterr()
    table = captured.out
    for title in ("Unimodal (visual)", "Concat", "AUG"):
        assert title in table
    # --set train.epochs=1 made other runs than the config's, and the other rows were not run: both are said
    assert "3 of the 3 runs shown were trained with settings other than synthetic_sweep.yaml's" in table
    assert "note: 3 of the 3 runs shown were trained with settings other than" in captured.err, "a CSV has no caption"
    assert "synthetic_sweep.yaml rows with no finished run, not shown: " in captured.err
    assert main(["table", str(out), "--config", str(EXAMPLE), "--missing"]) == 0
    assert "missing 50%" in capsys.readouterr().out
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Reproduce paper tables"):]
    assert section.index(str(EXAMPLE.relative_to(ROOT))) < section.index("aug_neurips25/table1.yaml")


def test_a_config_table_names_the_runs_of_rows_it_does_not_list_and_counts_only_runs_shown(tmp_path, capsys):
    from tests.test_collect import write_run

    jobs = [j for j in plan(load_config(EXAMPLE), tmp_path).jobs if j.label == "joint"]
    for job in jobs:  # the config's own joint runs, as a sweep writes them
        run = write_run(tmp_path, "joint", "synthetic", job.cfg.train.seed, (0.6, 0.6, 0.6),
                        job={"label": job.label, "title": job.title})
        (run / "config.yaml").write_text(yaml.safe_dump(job.cfg.as_dict()))
        other = job.cfg.as_dict()  # another sweep's row filed into the same folder
        other["train"]["lr"] *= 10
        run = write_run(tmp_path / "other", "joint", "synthetic", job.cfg.train.seed, (0.9, 0.9, 0.9),
                        job={"label": "joint_lr", "title": "Concat (lr x10)"})
        (run / "config.yaml").write_text(yaml.safe_dump(other))
    assert main(["table", str(tmp_path), "--config", str(EXAMPLE)]) == 0
    out = capsys.readouterr()
    assert "Concat (lr x10)" not in out.out and "settings other than" not in out.out, "the shown runs are the config's"
    assert (f"{len(jobs)} finished run(s) of rows or datasets that synthetic_sweep.yaml does not list are not shown"
            in out.err and "rows: joint_lr" in out.err)


def test_a_config_table_names_the_planned_runs_it_lacks_and_the_seeds_it_does_not_plan(tmp_path, capsys):
    # A cell's n alone said neither: seed 1 never trained and seed 7 counted as the config's gave "(2)" for joint.
    from tests.test_collect import write_run

    job = next(j for j in plan(load_config(EXAMPLE), tmp_path).jobs if j.label == "joint" and j.cfg.train.seed == 0)
    for seed in (0, 7):
        run = write_run(tmp_path, "joint", "synthetic", seed, (0.6, 0.6, 0.6),
                        job={"label": job.label, "title": job.title})
        recorded = job.cfg.as_dict()
        recorded["train"]["seed"] = seed
        (run / "config.yaml").write_text(yaml.safe_dump(recorded))
    assert main(["table", str(tmp_path), "--config", str(EXAMPLE)]) == 0
    out = capsys.readouterr()
    absent = "9 of the 10 runs synthetic_sweep.yaml plans are not among the finished runs, such as"
    extra = "seed(s) [7], which synthetic_sweep.yaml does not list, are counted"
    assert absent in out.err and extra in out.err
    assert absent in out.out and extra in out.out, "the table file says it too"
    assert "(2)" in out.out


def test_runs_with_the_configs_settings_are_its_own_whatever_their_folder_or_seed(tmp_path):
    from benchmarks.collect import RunRecord
    from benchmarks.commands.table import runs_outside_config

    job = plan(load_config(EXAMPLE), tmp_path).jobs[0]
    own = yaml.safe_load(yaml.safe_dump(job.cfg.as_dict()))  # as config.yaml records it
    reseeded = {**own, "train": {**own["train"], "seed": 99, "device": "cpu"}}  # seed and device: not settings
    other = {**own, "train": {**own["train"], "epochs": own["train"]["epochs"] + 1}}
    records = [RunRecord(tmp_path / name, job.label, job.title, job.cfg.method, job.cfg.dataset, 0, {}, config=cfg)
               for name, cfg in (("by-hand", own), ("seed-99", reseeded), ("longer", other))]
    assert runs_outside_config(records, EXAMPLE) == [tmp_path / "longer"]


def test_evaluate_does_not_import_the_sweep():
    """``benchmarks.evaluate`` reads run folders through ``benchmarks.run_folder``; the sweep imports evaluate, never
    the other way round (a fresh interpreter, since this one has both loaded)."""
    code = ("import sys, benchmarks.evaluate; "
            "assert not any(m.startswith('benchmarks.sweep') for m in sys.modules), sorted(sys.modules)")
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)


def test_gpu_ids_are_those_this_process_sees(no_launch, tmp_path, monkeypatch, capsys):
    from benchmarks.sweep import local_slots

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
    assert local_slots(1, [1, 0]) == [{"CUDA_VISIBLE_DEVICES": "3"}, {"CUDA_VISIBLE_DEVICES": "2"}]
    monkeypatch.setattr("torch.cuda.device_count", lambda: 2)
    path = write_config(tmp_path / "sweep.yaml")
    assert main(["sweep", str(path), "--out", str(tmp_path / "out"), "--gpus", "0,1,2"]) == 2
    err = capsys.readouterr().err
    assert "GPU(s) [2] are not present; this process sees 2 CUDA device(s)" in err


@pytest.mark.parametrize("gpus", [",", " ", "0,0", "1,-1", "0,a"])
def test_a_gpu_list_that_is_empty_repeats_an_id_or_is_no_id_is_a_usage_error(no_launch, tmp_path, gpus, capsys):
    # "," ran every run without a GPU and "0,0" two at once on GPU 0, both without a word.
    path = write_config(tmp_path / "sweep.yaml")
    with pytest.raises(SystemExit) as exit_:
        main(["sweep", str(path), "--out", str(tmp_path / "out"), "--gpus", gpus])
    assert exit_.value.code == 2
    assert f"--gpus expects a comma-separated list of distinct GPU ids, got {gpus!r}" in capsys.readouterr().err


@pytest.mark.parametrize("place, patch", [
    ("defaults", {"defaults": {"train": {"seed": 3}}}),
    ("datasets.synthetic", {"datasets": {"synthetic": {"train": {"seed": 3}}}}),
    ("methods.joint", {"methods": {"joint": {"train": {"seed": 3}}}}),
    ("methods.joint.per_dataset.synthetic",
     {"methods": {"joint": {"per_dataset": {"synthetic": {"train": {"seed": 3}}}}}}),
    ("grid key", {"methods": {"joint": {"grid": {"train.seed": [3, 4]}}}}),
])
def test_a_seed_anywhere_but_the_seeds_list_is_refused_not_overwritten(place, patch):
    # The seeds loop sets train.seed on every run; a seed elsewhere was listed as an override and then ignored.
    doc = {"name": "test/seed", "seeds": [0, 1], "datasets": {"synthetic": {}}, "methods": {"joint": {}}}
    doc.update(patch)
    with pytest.raises(SweepConfigError, match=rf"{place}.*'seeds' list"):
        parse_config(doc)


def test_two_rows_of_one_method_get_distinct_default_titles(tmp_path):
    # Both rows of a table were titled "AUG"; the one named after the method keeps it, the other adds its label.
    config = parse_config({"name": "test/titles", "seeds": [0], "datasets": {"synthetic": {}},
                           "methods": {"aug": {}, "aug_tau": {"method": "aug", "aug": {"tau": 0.1}}, "joint": {}}})
    jobs = expand(config, tmp_path, log=lambda msg: None)
    assert sorted({(j.label, j.title) for j in jobs}) == [
        ("aug", "AUG"), ("aug_tau", "AUG (aug_tau)"), ("joint", "Concat")]
    narrowed = expand(config, tmp_path, methods=["aug_tau"], log=lambda msg: None)
    assert {j.title for j in narrowed} == {"AUG (aug_tau)"}, "the title does not depend on --methods"


def test_a_key_given_twice_in_a_config_is_refused_with_file_and_line(tmp_path):
    path = write_config(tmp_path / "sweep.yaml")
    path.write_text(path.read_text().replace("protocol: clean\n", "protocol: clean\nprotocol: paper\n"))
    line = path.read_text().splitlines().index("protocol: paper") + 1
    with pytest.raises(SweepConfigError, match=f"{path}:{line}: key 'protocol' is given twice"):
        load_config(path)
    run = tmp_path / "run.yaml"
    run.write_text("method: joint\ntrain:\n  lr: 0.1\n  epochs: 3\n  lr: 0.2\n")
    with pytest.raises(HParamError, match=rf"{run}:5: key 'lr' is given twice in one mapping \(first on line 3\)"):
        load_config_file(run)
    merged = tmp_path / "merged.yaml"
    merged.write_text("a: &base {x: 1}\nb:\n  <<: *base\n  x: 2\n")
    assert read_config_yaml(merged) == {"a": {"x": 1}, "b": {"x": 2}}, "overriding a merged key is no duplicate"


def test_a_config_with_a_list_for_a_key_is_one_line_naming_the_file_and_line(tmp_path, capsys):
    # The duplicate-key check hashed the key first: a bare TypeError and a traceback naming no file.
    path = tmp_path / "sweep.yaml"
    path.write_text("name: x\n? [a, b]\n: 1\n")
    assert main(["sweep", str(path), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "found unhashable key" in err and f'in "{path}", line 2' in err


def test_a_misspelt_evaluation_split_is_refused_before_anything_trains(no_launch, tmp_path, capsys):
    path = write_config(tmp_path / "sweep.yaml", evaluate={"missing": [0, 0.5], "split": "tset"})
    assert main(["sweep", str(path), "--out", str(tmp_path / "out")]) == 2
    assert "evaluate.split must be one of ['train', 'val', 'test'], got 'tset'" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_an_empty_only_datasets_is_refused_not_a_row_without_runs():
    doc = {"name": "test/only", "seeds": [0], "datasets": {"synthetic": {}},
           "methods": {"joint": {"only_datasets": []}, "sum": {}}}
    with pytest.raises(SweepConfigError, match=r"methods.joint.only_datasets must be a non-empty list.*got \[\]"):
        parse_config(doc)


@pytest.mark.parametrize("patch, seeds, message", [
    ({"seeds": [0, 0, 1]}, None, r"seeds \[0, 0, 1\] names seed\(s\) \[0\] more than once"),
    ({}, [1, 1], r"--seeds \[1, 1\] names seed\(s\) \[1\] more than once"),
    ({"grid": {"train.lr": [0.1, 0.1]}}, None, r"grid\['train.lr'\] lists \[0.1\] more than once"),
    ({"methods": {"joint": {"grid": {"train.lr": [1, 1.0]}}}}, None,
     r"methods.joint: grid\['train.lr'\] lists \[1.0\] more than once"),
])
def test_a_repeated_seed_or_grid_value_is_named_not_reported_as_two_rows_of_one_run(tmp_path, patch, seeds, message):
    # Each planned the same run twice, which the planner reported as "rows 'joint' and 'joint' resolve to the same run".
    doc = {"name": "test/repeats", "seeds": [0, 1], "datasets": {"synthetic": {"data": dict(TINY_DATA)}},
           "defaults": {"model": dict(TINY_MODEL), "train": dict(TINY_TRAIN)}, "methods": {"joint": {}}}
    doc.update(patch)
    with pytest.raises(SweepConfigError, match=message):
        expand(parse_config(doc), tmp_path, seeds=seeds, log=lambda msg: None)


@pytest.mark.parametrize("grids", [{"grid": {"train.lr": [0.1]}},
                                   {"methods": {"joint": {"grid": {"train.lr": [0.1]}}}}])
def test_set_on_a_key_a_grid_sets_is_refused(tmp_path, grids):
    # --set won over the grid point while the row label still read "joint [train.lr=0.1]".
    doc = {"name": "test/set-grid", "seeds": [0], "datasets": {"synthetic": {"data": dict(TINY_DATA)}},
           "defaults": {"model": dict(TINY_MODEL), "train": dict(TINY_TRAIN)}, "methods": {"joint": {}}}
    doc.update(grids)
    where = "grid" if "grid" in grids else "methods.joint.grid"
    message = rf"--set train.lr: {where} of sweep config 'test/set-grid' sets train.lr"
    with pytest.raises(SweepConfigError, match=message):
        expand(parse_config(doc), tmp_path, assignments={"train": {"lr": 0.5}}, log=lambda msg: None)


def test_a_key_both_the_top_level_and_a_rows_grid_give_names_the_config_and_both_grids(tmp_path):
    path = write_config(tmp_path / "sweep.yaml", grid={"train.lr": [0.2]},
                        methods={"joint": {"grid": {"train.lr": [0.1]}}})
    with pytest.raises(SweepConfigError, match=rf"{path}: the top-level grid and methods.joint.grid: grid key\(s\) "
                                               r"given twice: \['train.lr'\]"):
        plan(load_config(path), tmp_path / "out")


def test_a_folder_given_as_the_sweep_config_is_named_as_a_folder(tmp_path):
    # It said "does not exist" of a folder that exists (most often the sweep's output folder, given in its place).
    with pytest.raises(FileNotFoundError, match=f"sweep config {tmp_path} is a folder, not a config file"):
        load_config(tmp_path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")


@pytest.mark.parametrize("dataset, section, message", [
    ("synthetic", {"train": {"epochs": 0}}, r"train.epochs must be >= 1, got 0"),
    ("synthetic", {"train": {"lr": 0.0}}, r"train.lr must be > 0, got 0.0"),
    ("synthetic", {"train": {"lr_milestones": [4, -1]}}, r"train.lr_milestones\[1\] must be >= 0, got -1"),
    ("cremad", {"data": {"crop_scale": [0.8, 0.5]}}, r"data.crop_scale=\[0.8, 0.5\] must be two area fractions"),
    ("cremad", {"data": {"image_size": 0}}, r"data.image_size must be >= 1, got 0"),
    # null, a value only of knobs whose default is None, passed the type check of every knob: the run failed on it
    # mid-way, or the crop check raised a TypeError that no caller reports
    ("synthetic", {"train": {"epochs": None}}, r"train.epochs expects an integer, got None"),
    ("synthetic", {"train": {"lr_milestones": [4, None]}}, r"train.lr_milestones\[1\] expects an integer, got None"),
    ("cremad", {"data": {"crop_scale": None}}, r"data.crop_scale expects a list, got None"),
    ("cremad", {"data": {"crop_scale": [None, 1.0]}}, r"data.crop_scale\[0\] expects a number, got None"),
])
def test_a_value_out_of_its_knobs_range_is_refused_by_the_sweep_check_naming_row_and_key(dataset, section, message):
    # These were checked only when the run itself started (the train bounds) or built its data (the data knobs):
    # a sweep then trained every other run before the bad one failed.
    from benchmarks.sweep.expand import check_config

    config = parse_config({"name": "test/bounds", "seeds": [0], "datasets": {dataset: {}},
                           "methods": {"joint": {}, "bad": {"method": "joint", **section}}})
    with pytest.raises(HParamError, match=rf"methods.bad on {dataset}: {message}"):
        check_config(config)


def test_the_sweep_check_resolves_a_rows_per_dataset_settings():
    from benchmarks.sweep.expand import check_config

    config = parse_config({"name": "test/bounds", "seeds": [0], "datasets": {"synthetic": {}},
                           "methods": {"joint": {"per_dataset": {"synthetic": {"train": {"epochs": 0}}}}}})
    with pytest.raises(HParamError, match=r"methods.joint on synthetic: train.epochs must be >= 1, got 0"):
        check_config(config)


@pytest.fixture
def fake_launch(monkeypatch):
    """``augbench sweep``'s preflight check and local launcher replaced by ones that record what they were given;
    the launcher reports the run names in ``failed`` as failed."""
    from types import SimpleNamespace

    from benchmarks.commands import sweep as command
    from benchmarks.sweep import LaunchReport, Preflight

    fake = SimpleNamespace(checked=[], started=[], failed=[])

    def check(cells, launcher, opts, *, skip_missing=False):
        fake.checked.append((cells, opts, skip_missing))
        return Preflight()

    def start(jobs, out, config, opts, log):
        fake.started.append((jobs, out, config, opts))
        return LaunchReport(launched=[j.name for j in jobs], failed={name: 1 for name in fake.failed})

    launcher = SimpleNamespace(help="fake", unavailable=lambda: None, start=start)
    monkeypatch.setattr(command, "check", check)
    monkeypatch.setitem(command.LAUNCHERS, "local", launcher)
    monkeypatch.setitem(command.LAUNCHERS, "slurm", launcher)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    return fake


def test_sweep_passes_its_filters_and_launch_options(fake_launch, tmp_path, capsys):
    path = write_config(tmp_path / "sweep.yaml", seeds=[0, 1, 2], methods={"joint": {}, "sum": {}, "ogm_ge": {}})
    out = tmp_path / "out"
    common = ["sweep", str(path), "--out", str(out), "--seeds", "4", "5", "--methods", "joint", "ogm_ge", "--set",
              "train.lr=0.25", "--gpus-per-run", "2", "--workers", "3", "--threads-per-worker", "2", "--skip-missing",
              "--wandb", "offline", "--wandb-group", "g"]
    assert main([*common, "--gpus", "0,1"]) == 0
    assert fake_launch.checked[0][1].gpus == [0, 1]
    assert main([*common, "--launcher", "slurm", "--resubmit", "--time", "30", "--partition", "p", "--cpus-per-task",
                 "4", "--mem-gb", "16", "--account", "a", "--qos", "q", "--constraint", "c", "--array-parallelism",
                 "5"]) == 0
    (cells, opts, skip_missing) = fake_launch.checked[1]
    (jobs, started_out, config, started_opts) = fake_launch.started[1]
    assert skip_missing and started_out == out and started_opts is opts and jobs == cells.jobs
    assert sorted((j.label, j.cfg.train.seed, j.cfg.train.lr) for j in jobs) == [
        ("joint", 4, 0.25), ("joint", 5, 0.25), ("ogm_ge", 4, 0.25), ("ogm_ge", 5, 0.25)]
    assert (opts.workers, opts.gpus, opts.gpus_per_run, opts.threads_per_worker, opts.resubmit) == (3, None, 2, 2,
                                                                                                   True)
    assert (opts.wandb_mode, opts.wandb_group) == ("offline", "g")
    s = opts.slurm
    assert (s.partition, s.time_min, s.gpus_per_run, s.cpus_per_task, s.mem_gb, s.account, s.qos, s.constraint,
            s.array_parallelism) == ("p", 30, 2, 4, 16, "a", "q", "c", 5)
    assert capsys.readouterr().out.strip().endswith("4 launched, 0 already finished, 0 failed")


def test_sweep_defaults_and_exit_1_when_a_run_failed(fake_launch, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = write_config(tmp_path / "sweep.yaml", datasets={"synthetic": {"data": dict(TINY_DATA)}, "cremad": {}})
    assert main(["sweep", str(path), "--datasets", "synthetic"]) == 0
    (cells, opts, skip_missing), = fake_launch.checked
    jobs, out, config, _ = fake_launch.started[-1]
    assert out == Path("runs") / "test_checks" and not skip_missing
    assert sorted((j.label, j.cfg.dataset, j.cfg.train.seed) for j in jobs) == [
        ("joint", "synthetic", 0), ("joint", "synthetic", 1), ("sum", "synthetic", 0), ("sum", "synthetic", 1)]
    assert (opts.workers, opts.gpus, opts.gpus_per_run, opts.threads_per_worker, opts.resubmit) == (1, None, 1, None,
                                                                                                   False)
    assert opts.wandb_group == "test/checks"
    fake_launch.failed.append("x")
    assert main(["sweep", str(path), "--datasets", "synthetic"]) == 1
    assert capsys.readouterr().out.strip().endswith("4 launched, 0 already finished, 1 failed: x (each run's "
                                                    "train.log has why)")


@pytest.mark.parametrize("patch, where", [({"grid": {"train.lr": []}}, ""),
                                          ({"methods": {"joint": {"grid": {"train.lr": []}}}}, "methods.joint: ")])
def test_an_empty_grid_list_is_refused_not_a_row_without_runs(patch, where):
    # The cartesian product over an empty list has no point: the row (or, top-level, the whole sweep) would plan
    # no run at all, without a word.
    doc = {"name": "test/empty-grid", "seeds": [0], "datasets": {"synthetic": {}}, "methods": {"joint": {}}}
    doc.update(patch)
    with pytest.raises(SweepConfigError, match=rf"{where}grid\['train.lr'\] must be a non-empty list, got \[\]"):
        parse_config(doc)


def test_an_evaluate_section_fills_the_keys_it_leaves_out_with_the_documented_defaults():
    doc = {"name": "test/evaluate", "seeds": [0], "datasets": {"synthetic": {}}, "methods": {"joint": {}},
           "evaluate": {"split": "val"}}
    assert parse_config(doc).evaluate.as_dict() == {"missing": [0.0, 0.2, 0.5], "split": "val", "seed": 0}
    doc["evaluate"] = {"missing": [0, 0.5]}
    assert parse_config(doc).evaluate.as_dict() == {"missing": [0.0, 0.5], "split": "test", "seed": 0}


def test_a_per_dataset_entry_for_a_dataset_the_config_lacks_is_refused_naming_it():
    # A misspelt dataset there would leave the row's settings for the real dataset unapplied, without a word.
    doc = {"name": "test/per-dataset", "seeds": [0], "datasets": {"synthetic": {}},
           "methods": {"joint": {"per_dataset": {"synthtic": {"train": {"lr": 0.5}}}}}}
    with pytest.raises(SweepConfigError, match=r"methods.joint.per_dataset.synthtic: not a dataset of this config "
                                               r"\(\['synthetic'\]\)"):
        parse_config(doc)


@pytest.mark.parametrize("patch, message", [
    ({"protocol": "best"}, r"protocol 'best' is not one of \['paper', 'clean', 'last'\]"),
    ({"evaluate": {"seed": "0"}}, r"evaluate.seed must be an integer >= 0 \(as train.seed\), got '0'"),
    ({"evaluate": {"seed": True}}, r"evaluate.seed must be an integer >= 0 \(as train.seed\), got True"),
    ({"evaluate": {"seed": -1}}, r"evaluate.seed must be an integer >= 0 \(as train.seed\), got -1"),
    ({"evaluate": {"missing": 0.5}}, r"evaluate.missing: expected a list of fractions .*got 0.5"),
])
def test_a_bad_protocol_or_evaluate_value_is_refused_before_anything_trains(patch, message):
    doc = {"name": "test/spec", "seeds": [0], "datasets": {"synthetic": {}}, "methods": {"joint": {}}}
    doc.update(patch)
    with pytest.raises(SweepConfigError, match=message):
        parse_config(doc)


def test_set_train_seed_is_refused_pointing_to_seeds():
    # The seeds loop sets train.seed last: a --set seed would be listed as an override and then ignored.
    doc = {"name": "test/set-seed", "seeds": [0, 1], "datasets": {"synthetic": {}}, "methods": {"joint": {}}}
    with pytest.raises(SweepConfigError, match=r"^use --seeds to choose seeds, not --set train.seed$"):
        expand(parse_config(doc), Path("unused"), assignments={"train": {"seed": 3}}, log=lambda msg: None)


def test_sweep_slurm_options_default_to_a_day_8_cpus_64_gb_and_64_jobs_at_once(fake_launch, tmp_path):
    path = write_config(tmp_path / "sweep.yaml", seeds=[0], methods={"joint": {}})
    assert main(["sweep", str(path), "--out", str(tmp_path / "out")]) == 0
    (_, opts, _), = fake_launch.checked
    s = opts.slurm
    assert (s.partition, s.time_min, s.gpus_per_run, s.cpus_per_task, s.mem_gb, s.account, s.qos, s.constraint,
            s.array_parallelism) == (None, 1440, 1, 8, 64, None, None, None, 64)


@pytest.mark.parametrize("argv, refusal", [
    (["--workers", "0"], "must be >= 1, got 0"), (["--threads-per-worker", "0"], "must be >= 1, got 0"),
    (["--threads-per-worker", "-1"], "must be >= 1, got -1"), (["--gpus-per-run", "-1"], "must be >= 0, got -1"),
    (["--time", "-1"], "must be >= 0, got -1"), (["--cpus-per-task", "0"], "must be >= 1, got 0"),
    (["--mem-gb", "-4"], "must be >= 0, got -4"), (["--array-parallelism", "0"], "must be >= 1, got 0"),
    (["--workers", "2.5"], "expected a whole number, got '2.5'")])
def test_a_sweep_count_out_of_range_is_refused_naming_the_argument_before_anything_is_planned(
        fake_launch, tmp_path, capsys, argv, refusal):
    # --workers 0 and --threads-per-worker -1 passed the dry run's checks: the first failed only once the sweep
    # started, the second gave every run OMP_NUM_THREADS=-1; --threads-per-worker 0 silently meant the default, and
    # a negative --gpus-per-run silently submitted CPU jobs.
    path = write_config(tmp_path / "sweep.yaml", seeds=[0], methods={"joint": {}})
    with pytest.raises(SystemExit) as exit_:
        main(["sweep", str(path), "--out", str(tmp_path / "out"), *argv])
    assert exit_.value.code == 2 and not fake_launch.checked and not fake_launch.started
    err = capsys.readouterr().err
    assert f"argument {argv[0]}: {refusal}" in err and "Traceback" not in err


def test_zero_gpus_per_run_memory_and_time_reach_the_slurm_options(fake_launch, tmp_path):
    # 0 GPUs per run submits CPU jobs; 0 GB is Slurm's "all of a node's memory", 0 minutes its "no time limit".
    path = write_config(tmp_path / "sweep.yaml", seeds=[0], methods={"joint": {}})
    assert main(["sweep", str(path), "--out", str(tmp_path / "out"), "--launcher", "slurm", "--gpus-per-run", "0",
                 "--mem-gb", "0", "--time", "0"]) == 0
    (_, opts, _), = fake_launch.checked
    assert (opts.slurm.gpus_per_run, opts.slurm.mem_gb, opts.slurm.time_min) == (0, 0, 0)
    params = opts.slurm.parameters("x")
    assert params["mem_gb"] == 0 and params["timeout_min"] == 0 and params["tasks_per_node"] == 1
    assert "gpus_per_node" not in params
