"""Sweeps: expand an experiment config into runs, check up front that they can run, launch the unfinished ones
(locally, in a process pool, or on Slurm), resume on restart.

An experiment config (``benchmarks/configs/<paper>/<table>.yaml``) pins everything a published table needs::

    name: aug_neurips25/table1          # sweep name; W&B group and default output folder derive from it
    title: "AUG (NeurIPS 2025), Table 1"
    paper: aug_neurips25                # results/paper/<paper>.csv holds the published numbers
    table: table1                       # the rows of that file this table is compared with
    protocol: paper                     # paper | clean | last: which selection `augbench table` reports
    seeds: [0, 1, 2]
    command: augbench sweep benchmarks/configs/aug_neurips25/table1.yaml --out runs/aug_neurips25_table1
    source: "..."                       # optional free text: where the settings come from
    defaults: {train: {...}, model: {...}, data: {...}}       # every run
    datasets:                           # dataset name -> runner sections for that dataset
      cremad: {data: {recipe: aug}, train: {epochs: 200}}
    methods:                            # row label -> what to run
      joint: {}                         # label = registered method name
      ogm_ge:
        ogm_ge: {alpha: 0.8}            # the method's own namespace; also train/model/data
        per_dataset: {vggsound: {ogm_ge: {alpha: 0.1}}}
      unimodal_audio:                   # a second row of the same method
        method: unimodal
        title: "Unimodal (audio)"
        unimodal: {modality: audio}
        only_datasets: [cremad, kinetics_sounds]
        grid: {unimodal.modality: [audio]}   # optional: one run per combination ("ns.key": [values])
    grid: {train.lr: [0.01, 0.001]}     # optional, runner namespaces only: applies to every method
    evaluate: {missing: [0, 0.2, 0.5], split: test}   # optional follow-up after training (AUG Table 5)

Overrides merge in this order: ``defaults`` -> ``datasets[d]`` -> ``methods[m]`` -> ``methods[m].per_dataset[d]``
-> grid point -> ``--set`` -> seed; then ``benchmarks.config.build_config`` resolves and validates every key.

Modules: ``spec`` (the schema above), ``expand`` (config -> ``Job`` per cell; run states), ``preflight`` (what
would make runs fail: unregistered names, settings that do not resolve, missing caches and devices; all reported
at once and nothing started), ``worker`` (``run_job``: one cell, config -> train -> evaluate), ``launchers`` (local,
pool; the registry) and ``slurm``.

Each run lives in ``OUT/<RunConfig.run_name()>`` (``<dataset>-<method>-seed<S>-<hash of the full config>``), so the
folder *is* the run's identity and its state is read from disk: ``DONE`` -> skipped, ``checkpoint.pt`` -> resumed,
else started. Before launching, the sweep (the parent process only) writes two files into the run folder:
``job.yaml`` (the fully resolved config) and ``job.json`` (row label, title, sweep name, paper/table/protocol for
``augbench table``, the follow-up evaluation); a worker reads nothing else. Workers write only inside their own run
folder; sweep-level files (``OUT/sweep.json``, ``OUT/slurm_jobs.json``) are written atomically by the parent. Runs
checkpoint every epoch, so a sweep killed at any point and started again loses at most the epochs that were in
flight.
"""

from benchmarks.run_folder import RunBusyError, run_lock
from benchmarks.sweep.expand import (
                                     Job,
                                     MissingEntriesError,
                                     Plan,
                                     check_config,
                                     expand,
                                     missing_entries,
                                     plan,
                                     write_sweep_record,
)
from benchmarks.sweep.launchers import (
                                     LAUNCHERS,
                                     Launcher,
                                     LaunchOptions,
                                     LaunchReport,
                                     SweepBusyError,
                                     SweepLock,
                                     local_slots,
                                     run_local,
                                     run_pool,
)
from benchmarks.sweep.preflight import Preflight, PreflightError, check
from benchmarks.sweep.slurm import SlurmOptions, SlurmUnavailableError, TrainJob, make_executor, run_slurm
from benchmarks.sweep.spec import EvaluateSpec, SweepConfig, SweepConfigError, load_config, parse_config
from benchmarks.sweep.worker import run_job, worker_command

__all__ = ["EvaluateSpec", "Job", "LAUNCHERS", "LaunchOptions", "LaunchReport", "Launcher", "MissingEntriesError",
           "Plan", "Preflight", "PreflightError", "RunBusyError", "SlurmOptions", "SlurmUnavailableError",
           "SweepBusyError", "SweepConfig", "SweepConfigError", "SweepLock", "TrainJob", "check", "check_config",
           "expand", "load_config", "local_slots", "make_executor", "missing_entries", "parse_config", "plan",
           "run_job", "run_local", "run_lock", "run_pool", "run_slurm", "worker_command", "write_sweep_record"]
