"""Benchmark of the training path: the train-lightgbm KFP component vs plain `lgb.train`,
and the whole local pipeline run vs calling its step functions directly.

    .venv/bin/python bench/training_bench.py --prepared /tmp/tb5m   # 5M events, 50 rounds
    .venv/bin/python bench/training_bench.py --quick          # 60k events: a smoke run
    .venv/bin/python bench/training_bench.py --events 300000 --rounds 0 --pipeline-reps 2

The default run (issue 14's comparison) trains exactly 50 LightGBM rounds (--rounds; no
early stopping) in every path on a 5M-event training set, 3 repetitions: about 10 minutes
to prepare the data (kept and reused with --prepared) and 30 to measure on 2 cores.
--rounds 0 trains the trainer's defaults instead (up to 500 rounds, early stopping).

Prepared once: a lake (`generate_lake`, GeneratorConfig defaults but `events`) and its
training set (`run_features`, FeaturesStepConfig(progress=False)).

Part 1, interleaved over --reps repetitions in a rotating order, on that training set:
  component   a two-task pipeline `dsl.importer(training set)` -> `train_lightgbm`, run by
              kfp.local's SubprocessRunner(use_venv=False) with a fresh pipeline_root;
              the train-lightgbm task is timed by wrapping kfp.local's own task dispatcher
              (and, inside it, the subprocess), so the importer and the DAG run are
              not in the component's figure (they are reported apart);
  plain       in this process: `load_splits` (read + time split), `FeatureTransform.fit`
              / `transform`, `lgb.train` with the parameters of models/lightgbm_trainer.py,
              `booster.save_model`;
  train_step  in this process: `kubeloop.pipeline.steps.train_step("lightgbm", ...)`.
All three train with the same rounds, early stopping and threads (the component and
train_step through their train_config), and every run's saved booster is hashed: the
report says whether every path saved the same model, i.e. did the same work.
The modules the in-process paths use are imported before any timing; the component pays
a new interpreter and its imports on every run, which is part of what it costs.

Part 2, interleaved over --pipeline-reps repetitions, each on a fresh workdir holding a
copy of the lake: `run_local` (the training pipeline under kfp.local) vs the same step
functions called in-process in the same order. Torch trains for 2 epochs so that the
difference is orchestration, not model training.

A "where the time goes" section times the component's cold costs apart: interpreter start,
the imports of the executor and of the step, and the step's phases in a fresh process.

On a shared machine other processes slow LightGBM's OpenMP threads a lot, and with
libgomp's default spin-waiting erratically (a 60k-row training took 4-32 s with 2 threads,
1-2 s with OMP_WAIT_POLICY=PASSIVE), so the bench exports OMP_WAIT_POLICY=PASSIVE for every
path (--omp-wait-policy). Every timed run records the cores other processes kept busy
meanwhile (/proc/stat), the bench waits up to --quiet-wait seconds for a quiet machine
before each run, and the headline ratios use the median of the quiet runs (the fastest
run where none was quiet).

Everything but --prepared goes under one temporary directory, removed at the end (also on
error, Ctrl-C or SIGTERM). The markdown goes to stdout and to --out; progress to stderr.
"""

from __future__ import annotations

# Only the standard library and the bench helpers at module level: the fresh-process probe
# (multiprocessing spawn) imports this module again and must start from a cold interpreter.
import argparse
import contextlib
import functools
import io
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from _util import (
    RunClock,
    add_output_arguments,
    conditions_lines,
    exit_on_sigterm,
    fmt_ratio,
    log,
    machine_busy_s,
    markdown_table,
    publish,
    run_fresh,
    write_json,
)

# Issue 14 compares the train component with plain `lgb.train` at 5M rows.
DEFAULT_EVENTS = 5_000_000
DEFAULT_ROUNDS = 50
DEFAULT_PIPELINE_REPS = 0
DEFAULT_PROBES = 1
QUICK_EVENTS = 60_000
DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "training_bench.md"
DEFAULT_JSON = DEFAULT_OUT.with_suffix(".json")
PACKAGES = ["kfp", "lightgbm", "torch", "pandas", "pyarrow", "numpy"]
# Issue 14: "Train component <= 1.2x plain `lgb.train` at 5M rows".
TARGET_RATIO = 1.2
# Part 2 trains torch briefly: the comparison is about orchestration, not the model.
PIPELINE_TRAIN_CONFIG = {"torch": {"max_epochs": 2}}
PIPELINE_FEATURE_CONFIG = {"progress": False}
MODEL_NAME = "ctr"

# The parameters of models/lightgbm_trainer.py's `train_lightgbm` at LightGBMTrainConfig's
# defaults, written out so that the plain path depends on nothing of kubeloop's trainer
# (--threads replaces num_threads in every path). `check_plain_params` fails the run if
# the trainer's parameters for the bench's settings differ from these.
PLAIN_PARAMS = {
    "objective": "binary",
    "metric": "binary_logloss",
    "num_leaves": 31,
    "learning_rate": 0.05,
    "min_data_in_leaf": 50,
    "feature_fraction": 0.9,
    "lambda_l2": 1.0,
    "min_data_per_group": 50,
    "max_bin": 255,
    "seed": 42,
    "deterministic": True,
    "force_row_wise": True,
    "num_threads": 2,
    "verbosity": -1,
}
PLAIN_ROUNDS = 500
PLAIN_EARLY_STOPPING = 30
OMP_WAIT_POLICY = "OMP_WAIT_POLICY"


def lgb_settings(rounds: int | None, threads: int | None) -> dict[str, int]:
    """The LightGBM settings every path of part 1 trains with: the trainer's defaults
    (up to 500 rounds, early stopping after 30, 2 threads), or with `rounds` exactly
    `rounds` rounds (early stopping after as many, so it never stops early) and with
    `threads` that many threads. The component and train_step get them as their
    train_config's `lightgbm` section, the plain path as its arguments."""
    return {
        "max_rounds": rounds or PLAIN_ROUNDS,
        "early_stopping_rounds": rounds or PLAIN_EARLY_STOPPING,
        "num_threads": threads or PLAIN_PARAMS["num_threads"],
    }


def train_config_json(settings: dict[str, int]) -> str:
    """The train_config the component and train_step get: `settings` as its lightgbm
    section."""
    return json.dumps({"lightgbm": settings})


def model_sha256(model_txt: Path) -> str:
    """Digest of a saved booster (model.txt): equal digests mean the paths trained the same
    model, i.e. did the same work."""
    import hashlib

    return hashlib.sha256(model_txt.read_bytes()).hexdigest()


def median(values: list[float]) -> float:
    return statistics.median(values)


def fmt_s(value: float) -> str:
    return f"{value:.2f}"


def fmt_runs(values: list[float]) -> str:
    return ", ".join(f"{v:.2f}" for v in values)


def fmt_loads(runs: list[dict]) -> str:
    return ", ".join(f"{r['others']:.2f}" for r in runs)


def quiet_runs(runs: list[dict]) -> list[dict]:
    """The runs during which other processes kept fewer than QUIET_CORES cores busy, or all
    of them when none was quiet."""
    return [r for r in runs if r["others"] < QUIET_CORES] or runs


def undisturbed(runs: list[dict], key: str = "seconds") -> tuple[float, str]:
    """The figure to trust on a shared machine: the median over the runs during which other
    processes kept fewer than QUIET_CORES cores busy, else (none quiet) the fastest run."""
    quiet = [r[key] for r in runs if r["others"] < QUIET_CORES]
    if quiet:
        return median(quiet), f"{len(quiet)} quiet"
    return min(r[key] for r in runs), "fastest"


# --- CPU accounting ---------------------------------------------------------------------


def own_cpu_s() -> float:
    """CPU seconds of this process (all threads) and of its waited-for children."""
    me, kids = (
        resource.getrusage(resource.RUSAGE_SELF),
        resource.getrusage(resource.RUSAGE_CHILDREN),
    )
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


QUIET_CORES = 0.3  # other processes' load under which the machine counts as quiet


def wait_for_quiet(max_wait: float) -> float:
    """Wait (up to `max_wait` seconds) until other processes keep fewer than QUIET_CORES
    cores busy over one second; returns the seconds waited. This process idles meanwhile,
    so all the machine's busy time is other processes'."""
    started = time.perf_counter()
    while True:
        busy, mark = machine_busy_s(), time.perf_counter()
        time.sleep(1.0)
        load = (machine_busy_s() - busy) / (time.perf_counter() - mark)
        waited = time.perf_counter() - started
        if load < QUIET_CORES or waited >= max_wait:
            return waited


def metered(fn, *args, quiet_wait: float = 0.0) -> dict:
    """`fn(*args)` (a dict) plus `cpu_s`, the CPU this process and its children used, and
    `others`, the cores other processes kept busy on average meanwhile: the sign that the
    machine was shared during that run (on 2 cores, 1.0 means half of it was taken).
    With `quiet_wait`, first waits up to that many seconds for a quiet machine."""
    waited = wait_for_quiet(quiet_wait) if quiet_wait > 0 else 0.0
    busy, cpu, started = machine_busy_s(), own_cpu_s(), time.perf_counter()
    result = fn(*args)
    wall = time.perf_counter() - started
    own = own_cpu_s() - cpu
    return {
        **result,
        "cpu_s": own,
        "others": max(0.0, (machine_busy_s() - busy - own) / wall),
        "waited_s": waited,
    }


def interleaved(
    runs: dict[str, Callable[[Path, Path], dict]],
    data: Path,
    reps: int,
    where: Callable[[int, str], Path],
    *,
    quiet_wait: float,
    digits: int,
    detail: Callable[[dict], str] = lambda result: "",
) -> dict[str, list[dict]]:
    """Each of `runs` on `data`, `reps` times, metered; each rep starts one run later in the
    order (so that no run always goes first on a cold or warm machine). A run writes into
    `where(rep, name)`, removed after it; the log line shows `digits` decimals, then
    `detail(result)`."""
    names = list(runs)
    results: dict[str, list[dict]] = {name: [] for name in names}
    for rep in range(reps):
        shift = rep % len(names)
        for name in names[shift:] + names[:shift]:
            directory = where(rep, name)
            result = metered(runs[name], data, directory, quiet_wait=quiet_wait)
            results[name].append(result)
            log(
                f"  rep {rep + 1}/{reps} {name}: {result['seconds']:.{digits}f}s "
                f"(CPU {result['cpu_s']:.{digits}f}s, other processes {result['others']:.2f} "
                f"cores; waited {result['waited_s']:.0f}s for quiet){detail(result)}"
            )
            shutil.rmtree(directory, ignore_errors=True)
    return results


# --- kfp.local instrumentation ----------------------------------------------------------


@contextlib.contextmanager
def timed_kfp_tasks(records: list[dict]):
    """While active, every task kfp.local runs appends {component, task_s, subprocess_s}
    to `records`: task_s is kfp's whole task (executor input, subprocess, reading the
    outputs back), subprocess_s the component's process alone (None for an importer).

    Wraps kfp.local's module-level functions, which its orchestrator looks up at call
    time; the originals are put back on exit."""
    from kfp.local import importer_handler, subprocess_task_handler, task_dispatcher

    originals = {
        (task_dispatcher, "run_single_task_implementation"),
        (subprocess_task_handler, "run_local_subprocess"),
        (importer_handler, "run_importer"),
    }
    saved = {(module, name): getattr(module, name) for module, name in originals}
    current = threading.local()

    def wrap_task(original):
        def run(*args, **kwargs):
            current.subprocess_s = None
            started = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                records.append(
                    {
                        "component": kwargs.get("component_name", "?"),
                        "task_s": time.perf_counter() - started,
                        "subprocess_s": current.subprocess_s,
                    }
                )

        return run

    def wrap_subprocess(original):
        def run(*args, **kwargs):
            started = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                current.subprocess_s = time.perf_counter() - started

        return run

    task_dispatcher.run_single_task_implementation = wrap_task(
        saved[(task_dispatcher, "run_single_task_implementation")]
    )
    importer_handler.run_importer = wrap_task(saved[(importer_handler, "run_importer")])
    subprocess_task_handler.run_local_subprocess = wrap_subprocess(
        saved[(subprocess_task_handler, "run_local_subprocess")]
    )
    try:
        yield records
    finally:
        for (module, name), value in saved.items():
            setattr(module, name, value)


@contextlib.contextmanager
def captured_stdout():
    """kfp.local writes its logs and the components' output to stdout; keep it off the
    report, and show it on stderr if the run fails."""
    buffer = io.StringIO()
    try:
        with contextlib.redirect_stdout(buffer):
            yield buffer
    except BaseException:
        sys.stderr.write(buffer.getvalue()[-20_000:])
        raise


def task_by_name(records: list[dict], component: str) -> dict:
    found = [r for r in records if r["component"] == component]
    if len(found) != 1:
        raise RuntimeError(
            f"expected one {component} task, got {[r['component'] for r in records]}"
        )
    return found[0]


# --- preparation ------------------------------------------------------------------------


PREPARED_JSON = "prepared.json"


def prepare(events: int, root: Path) -> dict:
    """Generate the lake and build the training set once into `root`, or reuse what an
    earlier run prepared there (--prepared: its prepared.json, for the same `events`);
    then import what the in-process paths need so that no timed call pays an import."""
    record = root / PREPARED_JSON
    if record.is_file():
        prepared = json.loads(record.read_text())
        if prepared["events"] != events:
            raise SystemExit(f"{record} holds {prepared['events']:,} events, not {events:,}")
        log(f"reusing the lake and training set prepared in {root}")
        prepared.update(lake=root / "lake", training_set=Path(prepared["training_set"]))
    else:
        prepared = generate_and_build(events, root)
        record.write_text(json.dumps(prepared, indent=1, default=str) + "\n")
    import_in_process_modules()
    return prepared


def generate_and_build(events: int, root: Path) -> dict:
    """generate_lake (GeneratorConfig defaults but `events`) and run_features into `root`."""
    from kubeloop.features.pipeline_config import FeaturesStepConfig
    from kubeloop.pipeline.steps import run_features
    from usecases.ctr.generator import GeneratorConfig, generate_lake

    lake = root / "lake"
    log(f"generate_lake: {events:,} events")
    started = time.perf_counter()
    generated = generate_lake(GeneratorConfig(events=events), str(lake), progress=False)
    generate_s = time.perf_counter() - started
    log(f"  {generate_s:.1f}s; run_features")
    training_set = root / "training" / "training_set.parquet"
    started = time.perf_counter()
    features = run_features(
        str(lake),
        root / "features",
        root / "feature_repo",
        training_set,
        FeaturesStepConfig(progress=False),
    )
    features_s = time.perf_counter() - started
    log(f"  {features_s:.1f}s, {features['training_rows']:,} training rows")
    return {
        "lake": lake,
        "training_set": training_set,
        "events": generated.events,
        "days": generated.days,
        "training_rows": features["training_rows"],
        "generate_s": generate_s,
        "features_s": features_s,
        "training_set_mib": training_set.stat().st_size / 2**20,
    }


def import_in_process_modules() -> None:
    """Everything the timed in-process calls would otherwise import on first use."""
    import kfp.local  # noqa: F401
    import lightgbm  # noqa: F401

    import kubeloop.data.validate
    import kubeloop.evaluation.gate
    import kubeloop.evaluation.metrics
    import kubeloop.evaluation.plots
    import kubeloop.features.build
    import kubeloop.features.materialize
    import kubeloop.features.store
    import kubeloop.features.training_set
    import kubeloop.registry
    import kubeloop.training.artifacts
    import kubeloop.training.config
    import kubeloop.training.split
    import kubeloop.training.transform  # noqa: F401
    import models.lightgbm_trainer
    import models.torch_trainer  # noqa: F401
    import pipelines.training  # noqa: F401


def plain_params(settings: dict[str, int]) -> dict[str, Any]:
    """PLAIN_PARAMS with the bench's thread count."""
    return {**PLAIN_PARAMS, "num_threads": settings["num_threads"]}


def check_plain_params(settings: dict[str, int]) -> None:
    """The plain path must train what train_lightgbm trains with `settings`; stop if the
    trainer's defaults moved (rounds and early stopping: the trainer's unless --rounds)."""
    from models.lightgbm_trainer import LightGBMTrainConfig

    default = LightGBMTrainConfig()
    if (default.max_rounds, default.early_stopping_rounds) != (PLAIN_ROUNDS, PLAIN_EARLY_STOPPING):
        raise RuntimeError("LightGBMTrainConfig's rounds / early stopping moved; update the bench")
    expected = LightGBMTrainConfig(**settings).booster_params()
    params = plain_params(settings)
    differ = {k: (params.get(k), v) for k, v in expected.items() if params.get(k) != v}
    if differ:
        raise RuntimeError(f"PLAIN_PARAMS no longer match LightGBMTrainConfig: {differ}")


# --- part 1: one LightGBM training, three ways ------------------------------------------


def _train_pipeline(training_set: Path, name: str, config_json: str) -> Callable[[], Any]:
    """The KFP pipeline `name`: importer -> the generic train component as train-lightgbm
    on `training_set` with train_config `config_json` (the default use case)."""
    from kfp import dsl

    from components.train import train_component
    from kubeloop.usecase import DEFAULT_USE_CASE

    train_lightgbm = train_component("lightgbm")

    @dsl.pipeline(name=name)
    def bench_pipeline():
        imported = dsl.importer(artifact_uri=str(training_set), artifact_class=dsl.Dataset)
        train_lightgbm(
            kind="lightgbm",
            training_set=imported.output,
            train_config_json=config_json,
            use_case=DEFAULT_USE_CASE,
        )

    return bench_pipeline


def _init_local(pipeline_root: Path) -> None:
    """kfp.local with a fresh `pipeline_root`, each task a subprocess of this interpreter
    (no venv of its own), raising on a failed task."""
    from kfp import local

    pipeline_root.mkdir(parents=True)
    local.init(
        runner=local.SubprocessRunner(use_venv=False),
        pipeline_root=str(pipeline_root),
        raise_on_error=True,
    )


def run_component(training_set: Path, pipeline_root: Path, settings: dict[str, int]) -> dict:
    """importer -> train_lightgbm under kfp.local; the train-lightgbm task's own time."""
    bench_pipeline = _train_pipeline(
        training_set, "bench-train-lightgbm", train_config_json(settings)
    )
    records: list[dict] = []
    with captured_stdout(), timed_kfp_tasks(records):
        _init_local(pipeline_root)
        started = time.perf_counter()
        bench_pipeline()
        pipeline_s = time.perf_counter() - started
    task = task_by_name(records, "comp-train-lightgbm")
    importer = task_by_name(records, "comp-importer")
    model_json = list(pipeline_root.rglob("model.json"))
    if len(model_json) != 1:
        raise RuntimeError(f"expected one model.json under {pipeline_root}, found {model_json}")
    info = json.loads(model_json[0].read_text())
    return {
        "seconds": task["task_s"],
        "model_sha256": model_sha256(model_json[0].parent / "model.txt"),
        "subprocess_s": task["subprocess_s"],
        "pipeline_s": pipeline_s,
        "importer_s": importer["task_s"],
        "best_iteration": info["best_iteration"],
        "train_seconds": info["train_seconds"],
    }


def run_plain(training_set: Path, model_dir: Path, settings: dict[str, int]) -> dict:
    """The same training without kubeloop's trainer: read, split, transform, lgb.train, save.
    With `settings`' rounds, early stopping and threads (see `lgb_settings`)."""
    import lightgbm as lgb
    import numpy as np

    from kubeloop.pipeline.steps import load_splits
    from kubeloop.training.config import TrainingConfig
    from kubeloop.training.transform import FeatureTransform
    from usecases.ctr import schema

    phases = {}
    started = mark = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal mark
        now = time.perf_counter()
        phases[name] = now - mark
        mark = now

    train, valid, _ = load_splits(training_set, TrainingConfig())
    lap("read + split")
    transform = FeatureTransform.fit(train)
    lap("transform fit")
    tr, va = transform.transform(train), transform.transform(valid)
    lap("transform")
    categorical = list(range(len(tr.numeric_names), len(tr.names)))
    dtrain = lgb.Dataset(
        tr.matrix(),
        label=train[schema.LABEL].to_numpy(dtype=np.float64),
        feature_name=tr.names,
        categorical_feature=categorical,
        free_raw_data=True,
    )
    dvalid = lgb.Dataset(
        va.matrix(),
        label=valid[schema.LABEL].to_numpy(dtype=np.float64),
        reference=dtrain,
        categorical_feature=categorical,
    )
    booster = lgb.train(
        plain_params(settings),
        dtrain,
        num_boost_round=settings["max_rounds"],
        valid_sets=[dvalid],
        valid_names=["valid"],
        callbacks=[lgb.early_stopping(settings["early_stopping_rounds"], verbose=False)],
    )
    best = int(booster.best_iteration) or int(booster.current_iteration())
    lap("lgb.train")
    model_dir.mkdir(parents=True)
    booster.save_model(str(model_dir / "model.txt"), num_iteration=best)
    lap("save")
    return {
        "seconds": time.perf_counter() - started,
        "model_sha256": model_sha256(model_dir / "model.txt"),
        "best_iteration": best,
        "rounds_run": int(booster.current_iteration()),
        "phases": phases,
        # what train_lightgbm's own train_seconds spans, bar its valid-set log loss
        "train_seconds": phases["transform"] + phases["lgb.train"],
    }


def run_train_step(training_set: Path, model_dir: Path, settings: dict[str, int]) -> dict:
    from kubeloop.pipeline.steps import train_step

    started = time.perf_counter()
    summary = train_step("lightgbm", str(training_set), train_config_json(settings), str(model_dir))
    return {
        "seconds": time.perf_counter() - started,
        "model_sha256": model_sha256(model_dir / "model.txt"),
        "best_iteration": summary["best_iteration"],
        "train_seconds": summary["train_seconds"],
    }


def part1(
    training_set: Path, reps: int, root: Path, quiet_wait: float, settings: dict[str, int]
) -> dict[str, list[dict]]:
    runs = {
        name: functools.partial(fn, settings=settings)
        for name, fn in (
            ("component", run_component),
            ("plain", run_plain),
            ("train_step", run_train_step),
        )
    }
    return interleaved(
        runs, training_set, reps, lambda rep, name: root / f"rep{rep}" / name,
        quiet_wait=quiet_wait, digits=2,
    )  # fmt: skip


def same_work(results: dict[str, list[dict]]) -> dict[str, Any]:
    """Whether every run of every path saved the same booster (sha256 of model.txt) and
    kept the same best iteration: then the paths did the same work and their times
    compare. Runs recorded before the digest was kept count as unknown."""
    digests = {r.get("model_sha256") for runs in results.values() for r in runs}
    bests = sorted({r["best_iteration"] for runs in results.values() for r in runs})
    known = None not in digests
    return {
        "same_model": known and len(digests) == 1,
        "model_digests": len(digests) if known else None,
        "best_iterations": bests,
    }


def verdict(results: dict[str, list[dict]]) -> dict[str, Any]:
    """The headline: component / plain and train_step / plain from each path's undisturbed
    figure, whether it meets TARGET_RATIO, and how far to trust it (the same model in
    every path; a quiet run in every path, else fastest runs of a shared machine)."""
    (comp, comp_how), (step, step_how), (plain, plain_how) = (
        undisturbed(results[k]) for k in ("component", "train_step", "plain")
    )

    def rest(runs: list[dict]) -> float:
        return median([r["seconds"] - r["train_seconds"] for r in runs])

    def cpu(runs: list[dict]) -> float:
        return median([r["cpu_s"] for r in runs])

    work = same_work(results)
    ratio = comp / plain
    return {
        **work,
        # CPU seconds (this process and its children): with passive OpenMP waiting the work
        # itself, which other processes' load stretches over more wall time but hardly
        # changes, so the steadier comparison on a shared machine.
        "component_vs_plain_cpu": cpu(results["component"]) / cpu(results["plain"]),
        "train_step_vs_plain_cpu": cpu(results["train_step"]) / cpu(results["plain"]),
        "all_paths_quiet": all(h != "fastest" for h in (comp_how, step_how, plain_how)),
        "component_vs_plain": ratio,
        "train_step_vs_plain": step / plain,
        "meets_target": ratio <= TARGET_RATIO,
        "target_ratio": TARGET_RATIO,
        # Outside the core training (transform + lgb.train): the time kubeloop adds, which
        # contention on the cores slows far less than LightGBM's threads.
        "component_overhead_seconds": rest(results["component"]) - rest(results["plain"]),
        "train_step_overhead_seconds": rest(results["train_step"]) - rest(results["plain"]),
    }


def trust_line(v: dict[str, Any]) -> str:
    """What the verdict can be trusted for, in words."""
    if v["model_digests"] is None:
        return (
            f"the boosters' digests were not recorded (best iterations {v['best_iterations']}): "
            "same work not checked"
        )
    if not v["same_model"]:
        return (
            "**the paths did not all save the same booster**"
            + (f" ({v['model_digests']} distinct model.txt)" if v["model_digests"] else "")
            + f", best iterations {v['best_iterations']}: the times do not compare like for like"
        )
    if not v["all_paths_quiet"]:
        return (
            "same booster in every run of every path (same data, parameters, rounds), but "
            "**some path had no quiet run**: its figure is its fastest run on a shared machine, "
            "whose other processes stretch each run's wall time unevenly, so the ratio is only "
            "indicative (the CPU-second ratio below is the steadier one)"
        )
    return (
        "same booster in every run of every path (same data, parameters, rounds) and a quiet "
        "run in every path: a like-for-like comparison"
    )


def settings_text(settings: dict[str, int], fixed: bool) -> str:
    if fixed:
        rounds = (
            f"exactly {settings['max_rounds']} rounds in every path (--rounds: no early stopping, "
            "the booster kept at its best valid iteration within them)"
        )
    else:
        rounds = (
            f"up to {settings['max_rounds']} rounds, early stopping after "
            f"{settings['early_stopping_rounds']} on the valid split"
        )
    return f"{rounds}, {settings['num_threads']} threads"


def part1_section(
    results: dict[str, list[dict]],
    prepared: dict,
    reps: int,
    settings: dict[str, int] | None = None,
    fixed: bool = False,
) -> list[str]:
    comp, plain, step = results["component"], results["plain"], results["train_step"]
    settings = settings or lgb_settings(None, None)
    v = verdict(results)

    def col(runs, key="seconds"):
        return [r[key] for r in runs]

    plain_med = median(col(plain))
    plain_q, _ = undisturbed(plain)
    rows = []

    def row(label, what, runs, key="seconds", vs_plain=True, whole_run=True):
        values = col(runs, key)
        quiet, how = undisturbed(runs, key)
        rows.append(
            [
                label,
                what,
                fmt_s(median(values)),
                fmt_runs(values),
                fmt_loads(runs) if whole_run else "",
                f"{fmt_s(quiet)} ({how})",
                fmt_ratio(quiet / plain_q) if vs_plain else "",
                fmt_s(median(col(runs, "cpu_s"))) if whole_run else "",
                fmt_s(median(col(runs, "train_seconds"))) if whole_run else "",
                fmt_s(median([r["seconds"] - r["train_seconds"] for r in runs]))
                if whole_run
                else "",
                bests(runs) if whole_run else "",
            ]
        )

    def bests(runs):
        return ", ".join(sorted({str(r["best_iteration"]) for r in runs}))

    row(
        "**component** (kfp.local task `train-lightgbm`)",
        "kfp's task dispatch: executor input, subprocess, outputs read back",
        comp,
    )
    row(
        "  of which the subprocess",
        "`sh` + `python -m kfp.dsl.executor_main`, start to exit",
        comp,
        "subprocess_s",
        whole_run=False,
    )
    row("**train_step** in-process", "`steps.train_step('lightgbm', ...)`", step)
    row("**plain** in-process", "load_splits, fit/transform, `lgb.train`, save booster", plain)
    row(
        "(tiny pipeline, whole)",
        "the pipeline call: DAG run, importer, component",
        comp,
        "pipeline_s",
        vs_plain=False,
        whole_run=False,
    )
    row(
        "(importer task)",
        "`dsl.importer` of the training set",
        comp,
        "importer_s",
        vs_plain=False,
        whole_run=False,
    )

    comp_med, step_med = median(col(comp)), median(col(step))
    (comp_q, comp_how), (step_q, step_how) = undisturbed(comp), undisturbed(step)
    plain_how = undisturbed(plain)[1]

    def rest(runs):
        return median([r["seconds"] - r["train_seconds"] for r in runs])

    fastest = {name: min(col(runs)) for name, runs in results.items()}
    outcome = "meets" if v["meets_target"] else "misses"
    if not (v["same_model"] and v["all_paths_quiet"]):
        outcome += ", indicative only (see same work)"
    pairs = [c["seconds"] / p["seconds"] for c, p in zip(comp, plain)]
    phase_names = list(plain[0]["phases"])
    plain_quiet = quiet_runs(plain)
    phase_rows = [
        [
            name,
            fmt_s(median([r["phases"][name] for r in plain_quiet])),
            f"{median([r['phases'][name] for r in plain_quiet]) / plain_q:.0%}",
        ]
        for name in phase_names
    ]
    return [
        "### 1. train-lightgbm: KFP component vs train_step vs plain `lgb.train`",
        "",
        (
            f"Training set: {prepared['training_rows']:,} rows "
            f"({prepared['training_set_mib']:.1f} MiB Parquet) from a {prepared['events']:,}-event, "
            f"{prepared['days']}-day lake; TrainingConfig() defaults (1 burn-in day, 10% valid, "
            "20% holdout; LightGBM num_leaves 31, learning_rate 0.05, "
            f"{settings_text(settings, fixed)}; the component and train_step get these as "
            "their train_config, the plain path as lgb.train's arguments). "
            f"{reps} repetitions, the three paths in a rotating order; median, and every run "
            "in the order run. The component figure is kfp.local's own task for "
            "`train-lightgbm`, timed by wrapping its task dispatcher (not the pipeline minus "
            "the importer); the whole pipeline call (DAG run, importer, component) and the importer are shown apart. "
            "In-process paths run with their modules already imported; the component starts "
            "a new interpreter each time. *CPU s*: CPU time of this process and its "
            "children during the run (the component's: during the whole tiny pipeline). "
            "*Other load*: cores kept busy by other processes on average during the run "
            "(machine busy time from /proc/stat minus ours); well above 0 means the machine "
            "was shared and that run is pessimistic. *Quiet median*: the median over the runs "
            f"with other load under {QUIET_CORES} cores (the fastest run where none was); the "
            "verdict uses it. *train_seconds*: transform + "
            "`lgb.train` (+ valid log loss), as the trainer records it in model.json; for "
            "plain, its transform + lgb.train phases: the core work, the same in every path. "
            "*rest*: each run's seconds minus its train_seconds (median), i.e. all but the "
            "core work: reading, fitting the transform, saving, and for the component the "
            "interpreter, imports and KFP executor. Before each timed run the bench waited up "
            "to --quiet-wait seconds for other processes to fall under "
            f"{QUIET_CORES} busy cores."
        ),
        "",
        markdown_table(
            [
                "path",
                "what is timed",
                "median s",
                "runs (s)",
                "other load per run (cores)",
                "quiet median s",
                "vs plain (quiet)",
                "CPU s",
                "train_seconds",
                "rest (s - train_seconds)",
                "best iteration",
            ],
            rows,
            align="llrrrrrrrrr",
        ),
        "",
        (
            f"- **quiet runs** (other load < {QUIET_CORES} cores; component {comp_how}, "
            f"train_step {step_how}, plain {plain_how}): component / plain = "
            f"**{fmt_ratio(comp_q / plain_q)}** (target <= {TARGET_RATIO}x: **{outcome}**); "
            f"train_step / plain = **{fmt_ratio(step_q / plain_q)}**; "
            f"component / train_step = {fmt_ratio(comp_q / step_q)}"
        ),
        f"- same work: {trust_line(v)}",
        (
            f"- CPU seconds (medians of all runs; steadier than wall time under other load): "
            f"component / plain = {fmt_ratio(v['component_vs_plain_cpu'])}, train_step / plain "
            f"= {fmt_ratio(v['train_step_vs_plain_cpu'])}"
        ),
        (
            f"- per repetition (the two runs closest in time): component / plain = "
            f"{', '.join(fmt_ratio(x) for x in pairs)}"
        ),
        (
            f"- all runs (medians): component / plain = {fmt_ratio(comp_med / plain_med)}, "
            f"train_step / plain = {fmt_ratio(step_med / plain_med)}, component / train_step "
            f"= {fmt_ratio(comp_med / step_med)}"
        ),
        (
            f"- by the fastest run of each (the least disturbed): component / plain = "
            f"{fmt_ratio(fastest['component'] / fastest['plain'])}, train_step / plain = "
            f"{fmt_ratio(fastest['train_step'] / fastest['plain'])}"
        ),
        (
            f"- outside the core training (the *rest* column, robust to a slowed lgb.train): "
            f"component {fmt_s(rest(comp))}s, train_step {fmt_s(rest(step))}s, plain "
            f"{fmt_s(rest(plain))}s: the component's fixed cost over train_step is "
            f"{rest(comp) - rest(step):+.2f}s, over plain {v['component_overhead_seconds']:+.2f}s "
            f"({v['component_overhead_seconds'] / plain_q:+.0%} of plain's figure)"
        ),
        (
            f"- quiet runs: component - train_step = {comp_q - step_q:+.2f}s (subprocess, "
            f"interpreter, imports, KFP executor); train_step - plain = {step_q - plain_q:+.2f}s "
            "(kubeloop's wrapper: config parsing, valid-set log loss, model.json/transform.json)"
        ),
        "",
        "Plain path by phase (median of the quiet runs):",
        "",
        markdown_table(["phase", "median s", "share"], phase_rows),
        "",
    ]


# --- where the component's time goes ----------------------------------------------------


def probe_cold_component(training_set: str) -> dict:
    """In a fresh interpreter: what the component's process does before it trains, timed
    phase by phase (the executor's imports, the step's lazy imports, reading and splitting
    the training set, fitting the transform). The training itself is part 1's
    train_seconds, so the probe does not repeat it (at millions of rows it is minutes)."""
    timings = {}
    mark = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal mark
        now = time.perf_counter()
        timings[name] = now - mark
        mark = now

    import kfp.dsl.executor_main  # noqa: F401  (what `python -m kfp.dsl.executor_main` loads)

    lap("import kfp executor")
    from kubeloop.pipeline.steps import load_splits

    lap("import kubeloop.pipeline.steps (pandas, ...)")
    import lightgbm  # noqa: F401

    import kubeloop.training.config
    import models.lightgbm_trainer  # noqa: F401

    lap("import trainer, lightgbm, config (train_step's lazy imports)")
    import kubeloop.evaluation.metrics
    import kubeloop.training.split  # noqa: F401

    lap("import split, metrics (inside the trainer)")
    from kubeloop.training.config import TrainingConfig
    from kubeloop.training.transform import FeatureTransform

    config = TrainingConfig.model_validate({})
    train, _, _ = load_splits(training_set, config)
    lap("read + split (first in process)")
    FeatureTransform.fit(train)
    lap("transform fit")
    return timings


def interpreter_start_s(runs: int = 5) -> float:
    values = []
    for _ in range(runs):
        started = time.perf_counter()
        subprocess.run([sys.executable, "-c", "pass"], check=True)
        values.append(time.perf_counter() - started)
    return median(values)


def parse_import_times(text: str) -> dict:
    """Read `-X importtime` lines (wherever they appear in `text`): the total import time
    of the process (sum of its outermost imports) and, for every third-party top-level
    package, the cumulative time of its first import and the module that imported it."""
    entries = []  # (cumulative s, depth, module), in the order Python prints them
    for line in text.splitlines():
        line = line.strip()
        if not line.startswith("import time:") or "cumulative" in line:
            continue
        _, cumulative, name = line[len("import time:") :].split("|")
        # " name" at the top level, two more spaces per level of nesting.
        depth = (len(name) - len(name.lstrip(" ")) - 1) // 2
        entries.append((int(cumulative) / 1e6, depth, name.strip()))
    total = sum(cum for cum, depth, _ in entries if depth == 0)
    stdlib = set(sys.stdlib_module_names)
    packages: dict[str, tuple[float, str]] = {}
    for i, (cum, depth, name) in enumerate(entries):
        if "." in name or name in stdlib or name.startswith("_") or name in packages:
            continue
        # Children print before their parent: the importer is the next shallower entry.
        parent = next((n for _, d, n in entries[i + 1 :] if d < depth), "(run time)")
        packages[name] = (cum, parent)
    return {"total_s": total, "packages": packages}


def import_profile_run(training_set: Path, pipeline_root: Path, settings: dict[str, int]) -> dict:
    """One more component run, untimed, whose subprocess inherits PYTHONPROFILEIMPORTTIME=1:
    the import times of the real component process, read from its captured output."""
    bench_pipeline = _train_pipeline(
        training_set, "bench-train-lightgbm-importtime", train_config_json(settings)
    )
    previous = os.environ.get("PYTHONPROFILEIMPORTTIME")
    os.environ["PYTHONPROFILEIMPORTTIME"] = "1"
    try:
        with captured_stdout() as output:
            _init_local(pipeline_root)
            bench_pipeline()
    finally:
        if previous is None:
            del os.environ["PYTHONPROFILEIMPORTTIME"]
        else:
            os.environ["PYTHONPROFILEIMPORTTIME"] = previous
    return parse_import_times(output.getvalue())


def _probe(training_set: str) -> dict:
    return {"phases": run_fresh(probe_cold_component, training_set)}


def diagnose(
    training_set: Path, root: Path, quiet_wait: float, settings: dict[str, int], probes: int = 3
) -> dict:
    log("where the component's time goes: interpreter start, imports, cold phases")
    if quiet_wait > 0:
        wait_for_quiet(quiet_wait)
    start_s = interpreter_start_s()
    runs = [metered(_probe, str(training_set), quiet_wait=quiet_wait) for _ in range(probes)]
    imports = import_profile_run(training_set, root / "importtime", settings)
    shutil.rmtree(root / "importtime", ignore_errors=True)
    return {"interpreter_s": start_s, "probes": runs, "imports": imports}


def diagnose_section(diag: dict, results: dict[str, list[dict]]) -> list[str]:
    comp, step = results["component"], results["train_step"]
    comp_med = undisturbed(comp)[0]
    sub_med = undisturbed(comp, "subprocess_s")[0]
    step_med = undisturbed(step)[0]
    probes = diag["probes"]
    phases = list(probes[0]["phases"])
    # The least disturbed value of each phase: contention only ever adds time.
    fastest = {p: min(probe["phases"][p] for probe in probes) for p in phases}
    rows = [
        ["python interpreter start (`python -c pass`, median of 5)", fmt_s(diag["interpreter_s"])]
    ]
    rows += [[p, fmt_s(v)] for p, v in fastest.items()]
    rows.append(
        [
            "**sum: a fresh process up to the training**",
            fmt_s(diag["interpreter_s"] + sum(fastest.values())),
        ]
    )
    imports = sum(v for p, v in fastest.items() if p.startswith("import"))
    excess = comp_med - step_med
    slower_training = undisturbed(comp, "train_seconds")[0] - undisturbed(step, "train_seconds")[0]
    dispatch = comp_med - sub_med
    remainder = excess - diag["interpreter_s"] - imports - slower_training - dispatch
    attribution = [
        ["interpreter start", fmt_s(diag["interpreter_s"])],
        [
            "imports (kfp executor, steps, trainer, lightgbm with sklearn, ...)",
            fmt_s(imports),
        ],
        [
            "core training slower in the component (its train_seconds - train_step's, part 1)",
            fmt_s(slower_training),
        ],
        ["kfp.local's task dispatch in this process (outside the subprocess)", fmt_s(dispatch)],
        [
            "remainder: sh, the KFP executor's own work, cold read/fit/save, noise",
            fmt_s(remainder),
        ],
        ["**component - train_step (quiet medians of part 1)**", fmt_s(excess)],
    ]
    packages = sorted(diag["imports"]["packages"].items(), key=lambda kv: -kv[1][0])
    import_rows = [
        [f"`{name}`", fmt_s(cum), f"`{parent}`"] for name, (cum, parent) in packages if cum >= 0.05
    ]
    return [
        "### Where the component's time goes",
        "",
        (
            f"{len(probes)} fresh interpreters (multiprocessing spawn) run what train_step does "
            "before it trains, phase by phase on the same training set: imports, reading and "
            "splitting, fitting the transform (the training is part 1's train_seconds); each "
            "phase's fastest of the runs (other load during the probes, median: "
            f"{median([p['others'] for p in probes]):.2f} cores). Then the component ran once "
            "more, untimed, with PYTHONPROFILEIMPORTTIME=1 in its environment, for the import "
            "times of the real component process."
        ),
        "",
        markdown_table(["cold phase (fresh process)", "fastest s"], rows),
        "",
        (
            "Attribution of component - train_step: the first four parts are measured, the "
            "remainder is what they leave of the measured difference:"
        ),
        "",
        markdown_table(["part", "seconds"], attribution),
        "",
        (
            f"Imports in the real component process (`-X importtime`, which inflates them a "
            f"little): {fmt_s(diag['imports']['total_s'])}s in all. Third-party packages "
            "costing >= 0.05s, each with the module that first imported it, or *(run time)* "
            "for an import inside a function body (a package's time includes the packages it "
            "imports, so rows nest):"
        ),
        "",
        markdown_table(["package", "cumulative s", "imported by"], import_rows, align="lrl"),
        "",
    ]


# --- part 2: the whole local pipeline vs its step functions -----------------------------

STEP_OF_COMPONENT = {
    "comp-ingest": "ingest_step",
    "comp-features": "features_step",
    "comp-train-lightgbm": "train_step lightgbm",
    "comp-train-torch": "train_step torch",
    "comp-evaluate": "evaluate_step",
    "comp-gate": "gate_step",
    "comp-register": "register_step",
}


def fresh_workdir(lake: Path, root: Path):
    from kubeloop.workdir import Workdir

    workdir = Workdir.at(root).ensure()
    shutil.copytree(lake, workdir.lake)
    return workdir


def run_pipeline(lake: Path, root: Path) -> dict:
    from kubeloop.pipeline.local_run import run_local
    from kubeloop.pipeline.params import TrainingRunParams

    workdir = fresh_workdir(lake, root)
    params = TrainingRunParams.for_workdir(
        workdir,
        model_name=MODEL_NAME,
        generate=False,
        train_config=PIPELINE_TRAIN_CONFIG,
        feature_config=PIPELINE_FEATURE_CONFIG,
    )
    records: list[dict] = []
    with captured_stdout(), timed_kfp_tasks(records):
        started = time.perf_counter()
        result = run_local(params, workdir.root / "kfp_local")
        seconds = time.perf_counter() - started
    steps = {}
    for record in records:
        name = STEP_OF_COMPONENT.get(record["component"], record["component"])
        steps[name] = {"task_s": record["task_s"], "subprocess_s": record["subprocess_s"]}
    return {
        "seconds": seconds,
        "inner_s": result.seconds,
        "steps": steps,
        "lgb_train_seconds": result.evaluation["train_seconds"]["lightgbm"],
        "passed": result.decision["passed"],
        "champion": result.decision["champion"],
    }


def run_direct(lake: Path, root: Path) -> dict:
    from kubeloop.pipeline import steps as s

    workdir = fresh_workdir(lake, root)
    out = workdir.root / "direct"
    lake_uri, registry = str(workdir.lake), str(workdir.registry)
    train_json = json.dumps(PIPELINE_TRAIN_CONFIG)
    training_set = str(workdir.training_set)
    models = {"lightgbm": str(out / "model_lightgbm"), "torch": str(out / "model_torch")}
    times: dict[str, float] = {}

    def timed(name, fn, *args):
        started = time.perf_counter()
        value = fn(*args)
        times[name] = time.perf_counter() - started
        return value

    started = time.perf_counter()
    timed("ingest_step", s.ingest_step, lake_uri, "{}", False, str(out / "data_summary.json"))
    timed(
        "features_step",
        s.features_step,
        lake_uri,
        str(workdir.features),
        str(workdir.feature_repo),
        json.dumps(PIPELINE_FEATURE_CONFIG),
        training_set,
        str(out / "features_summary.json"),
    )
    trained = {
        kind: timed(
            f"train_step {kind}", s.train_step, kind, training_set, train_json, models[kind]
        )
        for kind in ("lightgbm", "torch")
    }
    timed(
        "evaluate_step",
        s.evaluate_step,
        training_set,
        models,
        registry,
        MODEL_NAME,
        train_json,
        str(out / "evaluation"),
    )
    passed, champion = timed(
        "gate_step", s.gate_step, str(out / "evaluation"), "{}", str(out / "decision.json")
    )
    if passed:
        timed(
            "register_step",
            s.register_step,
            models[s.champion_of(str(out / "decision.json"))],
            champion,
            training_set,
            str(out / "evaluation"),
            str(out / "decision.json"),
            registry,
            MODEL_NAME,
            "baseline",
            "bench-direct",
            str(out / "registration.json"),
        )
    seconds = time.perf_counter() - started
    return {
        "seconds": seconds,
        "steps": {k: {"task_s": v} for k, v in times.items()},
        "lgb_train_seconds": trained["lightgbm"]["train_seconds"],
        "passed": passed,
        "champion": champion,
    }


def part2(lake: Path, reps: int, root: Path, quiet_wait: float) -> dict[str, list[dict]]:
    return interleaved(
        {"pipeline": run_pipeline, "direct": run_direct}, lake, reps,
        lambda rep, name: root / f"rep{rep}-{name}", quiet_wait=quiet_wait, digits=1,
        detail=lambda r: f", (gate passed: {r['passed']}, champion {r['champion']})",
    )  # fmt: skip


def part2_section(results: dict[str, list[dict]], reps: int) -> list[str]:
    pipe, direct = results["pipeline"], results["direct"]
    pipe_s = [r["seconds"] for r in pipe]
    direct_s = [r["seconds"] for r in direct]
    p_med, d_med = median(pipe_s), median(direct_s)

    def usage(runs):
        return [
            fmt_s(median([r["cpu_s"] for r in runs])),
            fmt_loads(runs),
        ]

    (p_q, p_how), (d_q, d_how) = undisturbed(pipe), undisturbed(direct)
    rows = [
        [
            "**run_local** (kfp.local SubprocessRunner, 7 tasks)",
            fmt_s(p_med),
            fmt_runs(pipe_s),
            *usage(pipe),
            f"{fmt_s(p_q)} ({p_how})",
        ],
        [
            "**direct** step calls in-process, same order",
            fmt_s(d_med),
            fmt_runs(direct_s),
            *usage(direct),
            f"{fmt_s(d_q)} ({d_how})",
        ],
        [
            "difference (run_local - direct)",
            f"{p_med - d_med:+.2f}",
            "",
            "",
            "",
            f"{p_q - d_q:+.2f}",
        ],
        ["ratio (run_local / direct)", fmt_ratio(p_med / d_med), "", "", "", fmt_ratio(p_q / d_q)],
    ]
    step_names = list(STEP_OF_COMPONENT.values())
    step_rows = []
    pipe_quiet, direct_quiet = quiet_runs(pipe), quiet_runs(direct)
    for name in step_names:
        d = [r["steps"][name]["task_s"] for r in direct_quiet if name in r["steps"]]
        t = [r["steps"][name]["task_s"] for r in pipe_quiet if name in r["steps"]]
        sp = [r["steps"][name]["subprocess_s"] for r in pipe_quiet if name in r["steps"]]
        if not d or not t:
            step_rows.append(
                [name, fmt_s(median(d)) if d else "-", fmt_s(median(t)) if t else "-", "", ""]
            )
            continue
        step_rows.append(
            [
                name,
                fmt_s(median(d)),
                fmt_s(median(t)),
                fmt_s(median(sp)),
                f"{median(t) - median(d):+.2f}",
            ]
        )
    tasks_sum = median([sum(v["task_s"] for v in r["steps"].values()) for r in pipe_quiet])
    direct_sum = median([sum(v["task_s"] for v in r["steps"].values()) for r in direct_quiet])
    step_rows.append(
        [
            "sum of steps / tasks",
            fmt_s(direct_sum),
            fmt_s(tasks_sum),
            "",
            f"{tasks_sum - direct_sum:+.2f}",
        ]
    )
    step_rows.append(
        [
            "outside any task (local.init, DAG orchestration, reading the summaries)",
            "",
            fmt_s(median([r["seconds"] for r in pipe_quiet]) - tasks_sum),
            "",
            "",
        ]
    )
    gates = {(r["passed"], r["champion"]) for r in pipe + direct}
    return [
        "### 2. Whole local pipeline vs its step functions called directly",
        "",
        (
            f"Each run on a fresh workdir holding a copy of the same lake (copy not timed); "
            f"{reps} repetitions, the two in alternating order. Both use "
            f"train_config `{json.dumps(PIPELINE_TRAIN_CONFIG)}` (torch trains 2 epochs, "
            'LightGBM its defaults), feature_config `{"progress": false}`, generate=False, '
            "an empty registry. So the difference is orchestration: a new interpreter and its "
            "imports per task, KFP's executor and artifact handling, the DAG orchestration. "
            "run_local is timed around the call (kfp.local.init included). Other load and "
            f"quiet median as in part 1 (quiet: other processes under {QUIET_CORES} cores)."
        ),
        "",
        markdown_table(
            [
                "run",
                "median s",
                "runs (s)",
                "CPU s",
                "other load per run (cores)",
                "quiet median s",
            ],
            rows,
            align="lrrrrr",
        ),
        "",
        (
            f"Per step, median s over the quiet runs ({len(pipe_quiet)} run_local, "
            f"{len(direct_quiet)} direct; all runs of a kind where none was quiet): the "
            "direct call, the kfp.local task (dispatch + subprocess), and its subprocess alone:"
        ),
        "",
        markdown_table(
            ["step", "direct", "pipeline task", "of which subprocess", "task - direct"], step_rows
        ),
        "",
        (
            "- LightGBM train_seconds inside the trainer (transform + lgb.train), runs: "
            f"pipeline {fmt_runs([r['lgb_train_seconds'] for r in pipe])}; "
            f"direct {fmt_runs([r['lgb_train_seconds'] for r in direct])}"
        ),
        f"- gate outcome (passed, champion) over all runs: {sorted(gates)}",
        "",
    ]


# --- main -------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--events", type=int, default=None, help=f"lake size in events (default {DEFAULT_EVENTS:,})"
    )
    parser.add_argument("--quick", action="store_true", help=f"smoke run: {QUICK_EVENTS:,} events")
    parser.add_argument("--reps", type=int, default=3, help="repetitions of part 1 (default 3)")
    parser.add_argument(
        "--pipeline-reps",
        type=int,
        default=DEFAULT_PIPELINE_REPS,
        help="repetitions of part 2 (default 0, i.e. skipped: at millions of events it trains "
        "torch on every row; 2 at --events 300000 take about 5 minutes)",
    )
    parser.add_argument(
        "--probes",
        type=int,
        default=DEFAULT_PROBES,
        help=f"fresh-process probes of the component's cold phases (default {DEFAULT_PROBES}; 0 skips the "
        "diagnosis, which at millions of rows trains the model once per probe)",
    )
    parser.add_argument(
        "--quiet-wait",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="before each timed run, wait up to this long for other processes to use less "
        f"than {QUIET_CORES} cores (default 30; 0 disables)",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=DEFAULT_ROUNDS,
        help=f"train exactly this many LightGBM rounds in every path (no early stopping; "
        f"default {DEFAULT_ROUNDS}, which bounds a 5M-row run on 2 cores); 0: the trainer's "
        "up to 500 with early stopping after 30",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="LightGBM threads in every path (default: the trainer's 2)",
    )
    parser.add_argument(
        "--omp-wait-policy",
        choices=["passive", "active", "inherit"],
        default="passive",
        help="OMP_WAIT_POLICY for every path (set before LightGBM loads; the component's "
        "process inherits it). Default passive: with libgomp's default spin-waiting, 2 "
        "LightGBM threads on 2 shared cores ran one 60k-row training in 4-32 s, 1-2 s with "
        "passive waiting; inherit: leave the environment as it is",
    )
    parser.add_argument(
        "--prepared",
        type=Path,
        default=None,
        metavar="DIR",
        help="keep the generated lake and training set in DIR and reuse them on a later run "
        "with the same --events (preparing 5M events takes minutes)",
    )
    add_output_arguments(parser, DEFAULT_JSON, DEFAULT_OUT)
    parser.add_argument(
        "--refresh-summary",
        action="store_true",
        help="with --render: recompute the JSON's summary from its recorded runs and rewrite it",
    )
    args = parser.parse_args(argv)
    if args.quick and args.events:
        parser.error("--quick and --events are exclusive")
    args.events = QUICK_EVENTS if args.quick else args.events or DEFAULT_EVENTS
    if args.reps < 1 or args.pipeline_reps < 0 or args.probes < 0:
        parser.error("--reps must be >= 1, --pipeline-reps and --probes >= 0")
    if args.rounds < 0 or (args.threads is not None and args.threads < 1):
        parser.error("--rounds must be >= 0 and --threads >= 1")
    args.rounds = args.rounds or None
    return args


def run_mode(args: argparse.Namespace) -> str:
    """full (the defaults), quick, or reduced (any other size), as the JSON records it."""
    if args.quick:
        return "quick"
    given = (args.events, args.reps, args.pipeline_reps, args.probes, args.rounds, args.threads)
    defaults = (DEFAULT_EVENTS, 3, DEFAULT_PIPELINE_REPS, DEFAULT_PROBES, DEFAULT_ROUNDS, None)
    full = given == defaults and args.omp_wait_policy == "PASSIVE"
    return "full" if full else "reduced"


def measure(args: argparse.Namespace) -> dict:
    """Prepare, then parts 1, the diagnosis and 2; returns the JSON document."""
    clock = RunClock()
    with tempfile.TemporaryDirectory(prefix="kubeloop-trainbench-", dir=args.tmp_dir) as tmp:
        tmp = Path(tmp)
        prepared = prepare(args.events, args.prepared or tmp / "prepared")
        settings = lgb_settings(args.rounds, args.threads)
        check_plain_params(settings)
        log(
            f"part 1: component vs plain vs train_step, {args.reps} repetitions, "
            f"LightGBM {settings}"
        )
        results1 = part1(
            prepared["training_set"], args.reps, tmp / "part1", args.quiet_wait, settings
        )
        diag = None
        if args.probes:
            diag = diagnose(
                prepared["training_set"], tmp / "diagnose", args.quiet_wait, settings, args.probes
            )
        results2 = None
        if args.pipeline_reps:
            log(f"part 2: run_local vs direct step calls, {args.pipeline_reps} repetitions")
            results2 = part2(prepared["lake"], args.pipeline_reps, tmp / "part2", args.quiet_wait)
    cond = clock.conditions("training", run_mode(args), PACKAGES)
    keep = ("events", "days", "training_rows", "generate_s", "features_s", "training_set_mib")
    return {
        "conditions": cond,
        "prepared": {k: prepared[k] for k in keep},
        "reused_preparation": args.prepared is not None,
        "lightgbm_settings": settings,
        "rounds_fixed": args.rounds is not None,
        "omp_wait_policy": args.omp_wait_policy,
        "reps": args.reps,
        "pipeline_reps": args.pipeline_reps,
        "part1": results1,
        "diagnose": diag,
        "part2": results2,
        "summary": summary(results1, results2, settings),
    }


def summary(
    results1: dict[str, list[dict]],
    results2: dict[str, list[dict]] | None,
    settings: dict[str, int] | None = None,
) -> dict:
    """The headline ratios (quiet medians, as the verdict uses) the README renders."""
    comp, step, plain = (undisturbed(results1[k])[0] for k in ("component", "train_step", "plain"))
    runs = [r for k in ("component", "train_step", "plain") for r in results1[k]]
    if results2:
        runs += results2["pipeline"] + results2["direct"]
    quiet = [r for r in runs if r["others"] < QUIET_CORES]
    out = {
        # Whether the ratios are quiet medians or (no quiet run) the fastest runs: only the
        # former are comparable between machines and runs.
        "runs": len(runs),
        "quiet_runs": len(quiet),
        "quiet_cores": QUIET_CORES,
        "median_other_load": median([r["others"] for r in runs]),
        "how": {k: undisturbed(v)[1] for k, v in results1.items()},
        **verdict(results1),
        "lightgbm_settings": settings,
        "component_seconds": comp,
        "train_step_seconds": step,
        "plain_seconds": plain,
        "train_seconds": {
            k: undisturbed(results1[k], "train_seconds")[0]
            for k in ("component", "train_step", "plain")
        },
        "core_train_seconds": undisturbed(results1["plain"], "train_seconds")[0],
        "component_fixed_seconds": comp - step,
    }
    if results2:
        pipe, direct = undisturbed(results2["pipeline"])[0], undisturbed(results2["direct"])[0]
        out["pipeline_vs_direct"] = pipe / direct
        out["how"].update({k: undisturbed(v)[1] for k, v in results2.items()})
        out["pipeline_vs_direct_median"] = median(
            [r["seconds"] for r in results2["pipeline"]]
        ) / median([r["seconds"] for r in results2["direct"]])
    return out


def render(doc: dict) -> str:
    """The markdown report, rendered from the bench's JSON alone."""
    prepared = doc["prepared"]
    return "\n".join(
        [
            "## Training path benchmark (bench/training_bench.py)",
            "",
            *conditions_lines(doc["conditions"]),
            (
                f"- preparation (not timed below): generate_lake {prepared['generate_s']:.1f}s, "
                f"run_features {prepared['features_s']:.1f}s"
            ),
            "",
            *part1_section(
                doc["part1"],
                prepared,
                doc["reps"],
                doc.get("lightgbm_settings"),
                doc.get("rounds_fixed", False),
            ),
            *(diagnose_section(doc["diagnose"], doc["part1"]) if doc.get("diagnose") else []),
            *(part2_section(doc["part2"], doc["pipeline_reps"]) if doc["part2"] else []),
        ]
    )


def set_omp_wait_policy(policy: str) -> str | None:
    """Export OMP_WAIT_POLICY (unless `policy` is inherit) before anything loads LightGBM's
    OpenMP runtime, which reads it once; returns the value every path runs with."""
    if policy != "inherit":
        os.environ[OMP_WAIT_POLICY] = policy.upper()
    return os.environ.get(OMP_WAIT_POLICY)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    exit_on_sigterm()
    if not args.render:
        args.omp_wait_policy = set_omp_wait_policy(args.omp_wait_policy)
    if args.render:
        doc = json.loads(args.render.read_text())
        if args.refresh_summary:
            # The summary is a function of the recorded runs: recompute it after its
            # definition changed, without measuring again.
            doc["summary"] = summary(doc["part1"], doc["part2"], doc.get("lightgbm_settings"))
            doc = write_json(args.render, doc)
            log(f"recomputed the summary of {args.render}")
    else:
        doc = write_json(args.json, measure(args))
        log(f"wrote {args.json}")
    publish(render(doc), args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
