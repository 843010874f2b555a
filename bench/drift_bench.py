"""Benchmark of drift monitoring: what the detector costs, how often it cries wolf, how
fast it finds real drift, and what turning it on costs the serving path.

    .venv/bin/python bench/drift_bench.py                    # the full run (see README)
    .venv/bin/python bench/drift_bench.py --quick            # a smoke run
    .venv/bin/python bench/drift_bench.py --seeds 30 --events 300000 --out /tmp/drift.md

A "world" is one seeded lake replayed the way the demo replays it, in this process:
`generate_lake(GeneratorConfig(seed=s, scenario=..., events=N))` (14 days, change on day
10), `run_features(..., FeaturesStepConfig(progress=False))`, `train_step("lightgbm", ...)`
with the demo's first-training config (`DemoConfig.first_training()`: `until` = day 9),
the reference = `reference_sample(train split, model_input_columns(), config)` scored by the
model (the monitor's prediction test), with the version's metrics from `evaluate_frame` on
the holdout (the performance test). The traffic is days 9..13 of the training set (the
point-in-time features Feast would have served for those impressions), scored by the
model's `predict_proba`, fed in time order to `DriftMonitor.observe` in requests of 8
consecutive impressions (as the demo's replayer batches them), event time = the request's
first impression. Then `flush()`, every click as a delayed label (`add_labels`), `flush()`.

Part 1 (cost): one baseline world; the first N windows of 2,000 events through
`DriftMonitor.observe` (hour limit off, so every window holds exactly 2,000 events),
against alibi-detect's `TabularDrift` (+ `KSDrift` for the scores) built and called
directly on the very arrays the monitor tested (recorded during the monitor's pass).
Part 2 (false alarms): baseline worlds over --seeds seeds, default `MonitorConfig()`.
Part 3 (power): covariate_shift, concept_drift, new_ads (and baseline, for the false
alarms at the same window sizes) over --power-seeds seeds, windows of 1,000 / 2,000 /
5,000 events (hour limit off).
Part 4 (serving): a small demo run (`run_demo`, `serve=False`) gives the model and Feast
repo; two `LocalStack`s of the same version run side by side, one with `logger_urls`
pointing at `python -m kubeloop.drift.service` (started as the drift stage starts it), one
without; a closed-loop httpx client in its own process sends 8-impression requests, in
rounds that alternate the order of the two.

Everything lives under one temporary directory, removed at the end; every server is
stopped at the end, also on error, Ctrl-C or SIGTERM. The markdown goes to stdout and to
--out; progress to stderr.
"""

from __future__ import annotations

# Only the standard library and the bench helpers at module level: spawned children
# (the serving client, --workers) import this module again.
import argparse
import asyncio
import contextlib
import itertools
import multiprocessing
import os
import resource
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Self

from _util import (
    conditions,
    exit_on_sigterm,
    fmt_int,
    fmt_ratio,
    load_average,
    load_averages,
    log,
    machine_busy_s,
    machine_facts,
    markdown_table,
    now_utc,
    percentile,
    pid_cpu_s,
    process_table,
    write_json,
)

BENCH_DIR = Path(__file__).resolve().parent
DEFAULT_OUT = BENCH_DIR / "results" / "drift_bench.md"
PACKAGES = ["alibi-detect", "scipy", "lightgbm", "numpy", "pandas", "kserve", "httpx", "uvicorn"]

MODEL_NAME = "ctr"
VERSION = "bench"
CHANGE_DAY = 10
REPLAY_FROM_DAY = 9  # = DemoConfig.train_until_day: the first day the model never saw
REQUEST_ROWS = 8
LABEL_CHUNK = 5000
SCENARIOS = ("covariate_shift", "concept_drift", "new_ads")
EXPECTED = {
    "covariate_shift": ("feature",),
    "new_ads": ("feature",),
    "concept_drift": ("performance", "feature"),
}
POWER_WINDOWS = (1000, 2000, 5000)
SERVE_DETECTORS = ("feature", "prediction")
JSON_HEADERS = {"content-type": "application/json"}


# --- CPU accounting ---------------------------------------------------------------------


def tree_cpu_s() -> float:
    """CPU seconds of this process, its reaped children and its live descendants."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    reaped = resource.getrusage(resource.RUSAGE_CHILDREN)
    total = own.ru_utime + own.ru_stime + reaped.ru_utime + reaped.ru_stime
    table = process_table()
    children: dict[int, list[int]] = {}
    for pid, (ppid, _, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    stack = list(children.get(os.getpid(), ()))
    while stack:
        pid = stack.pop()
        total += table[pid][2]
        stack.extend(children.get(pid, ()))
    return total


@dataclass
class Meter:
    """Wall time, our CPU and the other processes' load over a stretch of work."""

    wall: float = 0.0
    cpu: float = 0.0
    other_cores: float = 0.0
    _t: tuple[float, float, float] = (0.0, 0.0, 0.0)

    def __enter__(self) -> Self:
        self._t = (time.perf_counter(), tree_cpu_s(), machine_busy_s())
        return self

    def __exit__(self, *exc: object) -> None:
        wall = time.perf_counter() - self._t[0]
        cpu = tree_cpu_s() - self._t[1]
        busy = machine_busy_s() - self._t[2]
        self.wall, self.cpu = wall, cpu
        self.other_cores = max(0.0, busy - cpu) / wall if wall > 0 else 0.0


@contextlib.contextmanager
def stdout_to_stderr():
    """Send file descriptor 1 to stderr for a while (kfp.local prints its task logs there;
    stdout is for the report)."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        os.dup2(2, 1)
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


# --- worlds: a lake, a model, a reference and the traffic after training ---------------


@dataclass
class World:
    """One seeded lake reduced to what a replay needs."""

    scenario: str
    seed: int
    events: int
    change_at: float | None  # epoch seconds of the change (None for baseline)
    instances: list[dict[str, Any]]  # model inputs of every replayed impression
    predictions: Any  # np.ndarray, the model's scores on them
    times: Any  # np.ndarray, event time (epoch seconds) of each impression
    clicks: Any  # np.ndarray of 0/1
    references: dict[str, Any]  # kind -> kubeloop.drift.reference.Reference
    reference_days: dict[str, str]  # kind -> the days its rows come from
    build_seconds: dict[str, float]


def build_world(scenario: str, seed: int, events: int, root: Path, lgb_threads: int) -> World:
    """Lake -> features -> LightGBM (days before 9) -> references + the days 9..13 traffic.

    Two references, both `reference_sample(train split, model_input_columns(), config)`:
    "registered" splits the training set with `TrainingConfig()` as `register_step` does
    (so it is the sample the demo registers with this model), "training" splits it with
    the model's own config (`until` = day 9), i.e. the rows the model learnt from. Both
    carry the model's scores on them and the metrics `evaluate_step` records (on the
    holdout of the model's own split)."""
    import numpy as np
    import pandas as pd

    from usecases.ctr import schema
    from usecases.ctr.generator import GeneratorConfig, generate_lake
    from kubeloop.demo import DemoConfig
    from kubeloop.drift.reference import Reference
    from kubeloop.evaluation.metrics import evaluate_frame
    from kubeloop.features.pipeline_config import FeaturesStepConfig
    from kubeloop.pipeline.steps import load_splits, reference_sample, run_features, train_step
    from kubeloop.training.artifacts import load_model
    from kubeloop.training.config import TrainingConfig
    from kubeloop.training.transform import model_input_columns

    work = Path(tempfile.mkdtemp(prefix=f"{scenario}-{seed}-", dir=root))
    seconds: dict[str, float] = {}
    try:
        gen = GeneratorConfig(seed=seed, events=events, scenario=scenario, change_day=CHANGE_DAY)
        demo = DemoConfig(generator=gen, train_until_day=REPLAY_FROM_DAY)
        train_config = TrainingConfig.model_validate(
            {**demo.first_training(), "lightgbm": {"num_threads": lgb_threads}}
        )
        lake, training_set = work / "lake", work / "training_set.parquet"

        t = time.perf_counter()
        generate_lake(gen, str(lake), progress=False)
        seconds["generate"] = time.perf_counter() - t
        t = time.perf_counter()
        run_features(
            str(lake),
            work / "features",
            work / "feature_repo",
            training_set,
            FeaturesStepConfig(progress=False),
        )
        seconds["features"] = time.perf_counter() - t
        t = time.perf_counter()
        train_step(
            "lightgbm", str(training_set), train_config.model_dump_json(), str(work / "model")
        )
        seconds["train"] = time.perf_counter() - t

        t = time.perf_counter()
        train, _, holdout = load_splits(training_set, train_config)
        features = model_input_columns()
        model = load_model(work / "model")
        report = evaluate_frame(holdout, model.predict_proba(holdout), train).model_dump()
        metrics = {
            k: report.get(k)
            for k in ("auc", "log_loss", "normalized_entropy", "calibration_ratio", "base_rate")
        }
        day0 = pd.Timestamp(demo.day_start(0))
        references, reference_days = {}, {}
        for kind, config in (("registered", TrainingConfig()), ("training", train_config)):
            pool = train if config is train_config else load_splits(training_set, config)[0]
            sample = reference_sample(pool, features, config)
            pool_ts = pd.to_datetime(pool["event_timestamp"], utc=True)
            last = int((pool_ts.max() - day0).days)
            first = max(int((pool_ts.min() - day0).days), last - config.reference_days + 1)
            reference_days[kind] = f"{first}-{last}"
            references[kind] = Reference(
                MODEL_NAME, VERSION, sample, model.predict_proba(sample), metrics
            )

        frame = pd.read_parquet(training_set)
        ts = pd.to_datetime(frame["event_timestamp"], utc=True)
        start = pd.Timestamp(demo.day_start(REPLAY_FROM_DAY))
        traffic = frame[ts >= start].sort_values(["event_timestamp", "event_id"])
        traffic = traffic.reset_index(drop=True)
        predictions = np.asarray(model.predict_proba(traffic), dtype=np.float64)
        epoch = pd.Timestamp(0, tz="UTC")
        times = (
            (pd.to_datetime(traffic["event_timestamp"], utc=True) - epoch) / pd.Timedelta(seconds=1)
        ).to_numpy(dtype=np.float64)
        instances = traffic[features].to_dict("records")
        change_at = (
            None if scenario == "baseline" else pd.Timestamp(demo.day_start(CHANGE_DAY)).timestamp()
        )
        seconds["prepare"] = time.perf_counter() - t
        return World(
            scenario,
            seed,
            events,
            change_at,
            instances,
            predictions,
            times,
            traffic[schema.LABEL].to_numpy().astype(int),
            references,
            reference_days,
            seconds,
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


# --- the in-process replay ---------------------------------------------------------------


@dataclass
class Evaluated:
    """One detector's verdict on one closed window (what the bench keeps of it)."""

    detector: str
    index: int
    start: float
    end: float
    n: int
    tested: bool
    drift: bool
    p_value: float
    threshold: float
    features: list[str]


@dataclass
class Replay:
    """What one replay of a world through one monitor config produced."""

    scenario: str
    seed: int
    window: str
    evaluations: list[Evaluated]
    served_times: Any  # np.ndarray: the event time the monitor saw for each impression
    change_at: float | None
    seconds: float
    observe_seconds: float
    windows_seconds: float = 0.0  # time inside the detectors' tests (part 1 only)


def monitor_config(max_events: int | None, hour_limit: bool):
    from kubeloop.drift.config import MonitorConfig
    from kubeloop.drift.windows import WindowConfig

    if max_events is None and hour_limit:
        return MonitorConfig()  # the defaults, untouched
    window = WindowConfig(max_events=max_events or 2000, max_seconds=3600.0 if hour_limit else None)
    return MonitorConfig(window=window)


def replay_world(
    world: World,
    config,
    state_dir: Path,
    label: str,
    *,
    reference: str = "registered",
    labels: bool = True,
    limit: int | None = None,
    probe=None,
) -> Replay:
    """Feed the world's traffic to a fresh DriftMonitor in 8-impression requests, in time
    order; then flush, post every label (unless `labels` is off), flush. With `limit`, only
    the first `limit` impressions and no flush (open windows stay untested)."""
    import numpy as np

    from kubeloop.drift.monitor import DriftMonitor

    evaluations: list[Evaluated] = []

    def keep(e) -> None:
        r = e.result
        evaluations.append(
            Evaluated(
                e.detector,
                e.window_index,
                e.start.timestamp(),
                e.end.timestamp(),
                e.n,
                r.skipped is None,
                bool(r.is_drift),
                float(r.p_value),
                float(r.threshold),
                list(r.features[:3]),
            )
        )

    n = len(world.instances) if limit is None else min(limit, len(world.instances))
    served = np.empty(n, dtype=np.float64)
    ids: list[str] = []
    started = time.perf_counter()
    monitor = DriftMonitor(
        world.references[reference], state_dir, config=config, on_evaluation=[keep]
    )
    if probe is not None:
        probe.attach(monitor)
    observe = 0.0
    try:
        for i in range(0, n, REQUEST_ROWS):
            j = min(i + REQUEST_ROWS, n)
            request_id = f"r{i}"
            t = float(world.times[i])
            served[i:j] = t
            ids.extend([request_id] if j - i == 1 else [f"{request_id}/{k}" for k in range(j - i)])
            t0 = time.perf_counter()
            monitor.observe(
                world.instances[i:j],
                world.predictions[i:j],
                request_id=request_id,
                event_time=t,
            )
            observe += time.perf_counter() - t0
        if limit is None:
            monitor.flush()
            if labels:
                clicks = world.clicks[:n].tolist()
                for k in range(0, n, LABEL_CHUNK):
                    monitor.add_labels(
                        dict(zip(ids[k : k + LABEL_CHUNK], clicks[k : k + LABEL_CHUNK]))
                    )
                monitor.flush()
    finally:
        monitor.close()
        shutil.rmtree(state_dir, ignore_errors=True)
    return Replay(
        world.scenario,
        world.seed,
        label,
        evaluations,
        served,
        world.change_at,
        time.perf_counter() - started,
        observe,
    )


# --- part 1: detector cost ---------------------------------------------------------------


class Probe:
    """Wraps the monitor's two detectors' `test` to time them and keep a copy of every
    array they were given (the monitor's detectors are private attributes: a bench may
    look inside)."""

    def __init__(self, record: bool) -> None:
        self.record = record
        self.calls: list[tuple[str, Any, Any, list[int], Any]] = []
        self.seconds = 0.0

    def attach(self, monitor) -> None:
        for name, detector in (
            ("feature", monitor._feature_detector),
            ("prediction", monitor._prediction_detector),
        ):
            detector.test = self._wrap(name, detector.test)

    def _wrap(self, name: str, test):
        def timed(x_ref, x, categorical=()):
            t0 = time.perf_counter()
            result = test(x_ref, x, categorical)
            self.seconds += time.perf_counter() - t0
            if self.record:  # only in the untimed first pass: copying costs time
                self.calls.append(
                    (name, x_ref.copy(), x.copy(), list(categorical), result.p_values)
                )
            return result

        return timed


def alibi_direct(calls, p_vals: dict[str, float]) -> tuple[dict[str, float], float]:
    """Build and call alibi-detect's detectors on the recorded arrays, as a user of
    alibi-detect would; returns seconds per phase and the largest |p-value difference|
    against what the monitor got."""
    import numpy as np
    from alibi_detect.cd import KSDrift, TabularDrift

    seconds = {
        "feature_init": 0.0,
        "feature_predict": 0.0,
        "prediction_init": 0.0,
        "prediction_predict": 0.0,
    }
    worst = 0.0
    for name, x_ref, x, categorical, p_monitor in calls:
        t0 = time.perf_counter()
        if name == "feature":
            det = TabularDrift(
                x_ref,
                p_val=p_vals[name],
                categories_per_feature={int(i): None for i in categorical},
                correction="bonferroni",
                x_ref_preprocessed=True,
            )
        else:
            det = KSDrift(
                x_ref, p_val=p_vals[name], correction="bonferroni", x_ref_preprocessed=True
            )
        t1 = time.perf_counter()
        out = det.predict(x, drift_type="batch", return_p_val=True, return_distance=True)
        t2 = time.perf_counter()
        seconds[f"{name}_init"] += t1 - t0
        seconds[f"{name}_predict"] += t2 - t1
        worst = max(worst, float(np.max(np.abs(np.asarray(out["data"]["p_val"]) - p_monitor))))
    return seconds, worst


def part_cost(world: World, windows: int, reps: int, root: Path) -> dict[str, Any]:
    size = 2000
    events = windows * size
    if len(world.instances) < events:
        windows = len(world.instances) // size
        events = windows * size
        log(f"part 1: the world holds only {len(world.instances)} impressions: {windows} windows")
    config = monitor_config(size, hour_limit=False)
    p_vals = {
        "feature": config.feature_detector.p_val,
        "prediction": config.prediction_detector.p_val,
    }

    def monitor_pass(tag: str, record: bool) -> tuple[Probe, Replay, Meter]:
        probe = Probe(record)
        with Meter() as m:
            r = replay_world(world, config, root / f"cost-{tag}", "cost", limit=events, probe=probe)
        return probe, r, m

    # An untimed first pass records the arrays the detectors get (and warms every path).
    first, _, _ = monitor_pass("record", True)
    calls = first.calls
    monitor_runs, alibi_runs = [], []
    for rep in range(reps):
        order = ("monitor", "alibi") if rep % 2 == 0 else ("alibi", "monitor")
        for what in order:
            if what == "monitor":
                probe, r, m = monitor_pass(str(rep), False)
                tested = [e for e in r.evaluations if e.tested and e.detector == "feature"]
                monitor_runs.append(
                    {
                        "observe": r.observe_seconds,
                        "tests": probe.seconds,
                        "meter": m,
                        "windows": len(tested),
                    }
                )
            else:
                with Meter() as m:
                    seconds, worst = alibi_direct(calls, p_vals)
                alibi_runs.append({"seconds": seconds, "worst": worst, "meter": m})
    return {
        "windows": windows,
        "events": events,
        "monitor": monitor_runs,
        "alibi": alibi_runs,
        "feature_calls": sum(1 for c in calls if c[0] == "feature"),
        "prediction_calls": sum(1 for c in calls if c[0] == "prediction"),
        "reference_rows": [len(c[1]) for c in calls if c[0] == "feature"],
        "columns": calls[0][1].shape[1] if calls else 0,
        "categorical": len(calls[0][3]) if calls else 0,
    }


def report_cost(cost: dict[str, Any], figures: dict[str, Any]) -> list[str]:
    windows, events = cost["windows"], cost["events"]
    med = statistics.median
    mon_total = med(r["observe"] for r in cost["monitor"])
    mon_tests = med(r["tests"] for r in cost["monitor"])
    a = cost["alibi"]
    feat = med(r["seconds"]["feature_init"] + r["seconds"]["feature_predict"] for r in a)
    feat_pred = med(r["seconds"]["feature_predict"] for r in a)
    both = med(sum(r["seconds"].values()) for r in a)
    worst = max(r["worst"] for r in a)

    def row(name: str, seconds: float) -> list[str]:
        return [
            name,
            f"{seconds * 1000 / windows:.1f}",
            f"{seconds * 1e6 / events:.1f}",
            fmt_ratio(mon_total / seconds) if seconds > 0 else "n/a",
        ]

    rows = [
        row(
            "DriftMonitor.observe, whole replay (windowing, SQLite state, encoding, "
            "matching, feature + prediction tests)",
            mon_total,
        ),
        row(
            "  of which inside the two detectors' test() (alibi build + predict, correction)",
            mon_tests,
        ),
        row(
            "  the rest: windowing, state persistence, encoding, reference matching",
            mon_total - mon_tests,
        ),
        row("alibi direct: TabularDrift(x_ref) + predict(x), same arrays", feat),
        row("alibi direct: TabularDrift.predict(x) alone (detector built beforehand)", feat_pred),
        row(
            "alibi direct: TabularDrift + KSDrift on scores (the same two tests the monitor runs)",
            both,
        ),
    ]
    figures["cost"] = {
        "windows": windows,
        "events_per_window": events / windows,
        "monitor_ms_per_window": mon_total * 1000 / windows,
        "alibi_build_predict_ms_per_window": feat * 1000 / windows,
        "alibi_predict_ms_per_window": feat_pred * 1000 / windows,
        "monitor_vs_alibi_build_predict": mon_total / feat,
        "monitor_vs_alibi_predict": mon_total / feat_pred,
        "max_p_value_difference": worst,
    }
    refs = cost["reference_rows"]
    other = [r["meter"].other_cores for r in cost["monitor"]] + [
        r["meter"].other_cores for r in cost["alibi"]
    ]
    lines = [
        "## 1. Detector cost per window and per event",
        "",
        (
            f"{windows} windows of 2,000 events ({fmt_int(events)} events, requests of "
            f"{REQUEST_ROWS}) of one baseline world; `MonitorConfig()` with the window's hour "
            "limit off (`max_seconds=None`) so every window holds 2,000 events. Figures are the "
            f"median of {len(cost['monitor'])} monitor passes (fresh state directory each) and "
            f"{len(a)} alibi passes, alternating. Each window's test compares "
            f"{cost['columns']} inputs ({cost['categorical']} categorical, chi-square; the rest "
            f"KS) against an hour-matched reference sample of {min(refs):,}-{max(refs):,} rows."
        ),
        "",
        markdown_table(
            ["path", "ms / window", "µs / event", "monitor / this"],
            rows,
        ),
        "",
        (
            f"- **ratio monitor / alibi direct (TabularDrift build + predict): "
            f"{fmt_ratio(mon_total / feat)}**; against both tests the monitor runs: "
            f"{fmt_ratio(mon_total / both)}."
        ),
        (
            f"- largest |p-value difference| between the monitor's tests and the direct calls: "
            f"{worst:.1e} (the same arrays give the same p-values)."
        ),
        (
            f"- other processes kept {min(other):.2f}-{max(other):.2f} cores busy during these "
            "passes (out of the machine's cores; see the load averages)."
        ),
    ]
    return lines


# --- parts 2 and 3: alarms and power -----------------------------------------------------


def run_world_job(job: dict[str, Any]) -> dict[str, Any]:
    """Build one world and replay it through every monitor config of the job. A
    module-level function of plain data in and out, so a spawned worker can run it."""
    root = Path(job["root"])
    with Meter() as build:
        world = build_world(job["scenario"], job["seed"], job["events"], root, job["lgb_threads"])
    return replay_all(world, job["configs"], root, build.wall)


def replay_all(world: World, configs: list[dict[str, Any]], root: Path, build_wall: float):
    """Replay `world` once per config ({label, max_events, hour_limit, reference,
    labels}). Replays without labels get the performance verdicts of the labelled one:
    labelled windows depend only on the labelled rows, never on the serving windows."""
    replays = []
    for c in configs:
        config = monitor_config(c["max_events"], c["hour_limit"])
        state = root / f"state-{world.scenario}-{world.seed}-{c['label']}"
        replays.append(
            replay_world(
                world, config, state, c["label"], reference=c["reference"], labels=c["labels"]
            )
        )
    labelled = [
        r for c, r in zip(configs, replays) if c["labels"] and c["reference"] == "registered"
    ]
    for c, r in zip(configs, replays):
        if not c["labels"] and labelled:
            r.evaluations += [e for e in labelled[0].evaluations if e.detector == "performance"]
    return {
        "scenario": world.scenario,
        "seed": world.seed,
        "build": world.build_seconds,
        "build_wall": build_wall,
        "impressions": len(world.instances),
        "reference_days": world.reference_days,
        "replays": {r.window: r for r in replays},
    }


def replay_config(label, max_events=None, hour_limit=True, reference="registered", labels=True):
    return {
        "label": label,
        "max_events": max_events,
        "hour_limit": hour_limit,
        "reference": reference,
        "labels": labels,
    }


def run_jobs(jobs: list[dict[str, Any]], workers: int, what: str) -> list[dict[str, Any]]:
    results = []
    if workers <= 1:
        for i, job in enumerate(jobs):
            t = time.perf_counter()
            results.append(run_world_job(job))
            log(
                f"{what}: {i + 1}/{len(jobs)} ({job['scenario']} seed {job['seed']}) "
                f"{time.perf_counter() - t:.1f}s"
            )
        return results
    context = multiprocessing.get_context("spawn")
    with context.Pool(workers) as pool:
        for i, result in enumerate(pool.imap(run_world_job, jobs)):
            results.append(result)
            log(f"{what}: {i + 1}/{len(jobs)} ({result['scenario']} seed {result['seed']})")
    return results


def serve_windows(replay: Replay, detector: str) -> list[Evaluated]:
    return [e for e in replay.evaluations if e.detector == detector and e.tested]


def window_groups(replay: Replay) -> dict[tuple[int, str], dict[str, Evaluated]]:
    """Serving windows by (index, 'serve'), with their feature and prediction verdicts."""
    out: dict[tuple[int, str], dict[str, Evaluated]] = {}
    for e in replay.evaluations:
        if e.detector in SERVE_DETECTORS:
            out.setdefault((e.index, "serve"), {})[e.detector] = e
    return out


def fmt_rate(k: int, n: int) -> str:
    return f"{k}/{n} = {k / n:.3f}" if n else "n/a"


def far_stats(replays: list[Replay]) -> dict[str, Any]:
    """False-alarm figures of baseline replays (every alert is false)."""
    from collections import Counter

    out: dict[str, Any] = {
        "replays": len(replays),
        "windows": 0,
        "skipped": 0,
        "any": 0,
        "alerting_replays": 0,
        "detectors": {d: [0, 0] for d in ("feature", "prediction", "performance")},
        "min_ratio": {},
        "sizes": [],
        "features": Counter(),
        "when": Counter(),
    }
    for rep in replays:
        alerts = 0
        for group in window_groups(rep).values():
            tested = [e for e in group.values() if e.tested]
            if not tested:
                out["skipped"] += 1
                continue
            out["windows"] += 1
            out["sizes"].append(tested[0].n)
            out["any"] += any(e.drift for e in tested)
            if any(e.drift for e in tested):
                day = datetime.fromtimestamp(tested[0].start, UTC).strftime("%a %Y-%m-%d")
                out["when"][day] += 1
        for d, counts in out["detectors"].items():
            ws = serve_windows(rep, d)
            counts[0] += sum(e.drift for e in ws)
            counts[1] += len(ws)
            alerts += sum(e.drift for e in ws)
            for e in ws:
                if d != "performance" and e.threshold > 0:
                    ratio = e.p_value / e.threshold
                    out["min_ratio"][d] = min(out["min_ratio"].get(d, float("inf")), ratio)
                if e.drift and d == "feature":
                    out["features"].update(e.features[:1])
        out["alerting_replays"] += alerts > 0
    return out


def far_rows(label: str, st: dict[str, Any]) -> list[Any]:
    return [
        label,
        st["replays"],
        fmt_int(st["windows"]),
        fmt_rate(st["any"], st["windows"]),
        fmt_rate(*st["detectors"]["feature"]),
        fmt_rate(*st["detectors"]["prediction"]),
        fmt_rate(*st["detectors"]["performance"]),
        fmt_rate(st["alerting_replays"], st["replays"]),
    ]


def report_false_alarms(
    results: list[dict[str, Any]], events: int, figures: dict[str, Any]
) -> list[str]:
    main = far_stats([r["replays"]["default"] for r in results])
    figures["false_alarms"] = {
        "events": events,
        "seeds": main["replays"],
        "windows": main["windows"],
        "windows_skipped": main["skipped"],
        "windows_with_alert": main["any"],
        "alerting_replays": main["alerting_replays"],
        "by_detector": {d: {"alerts": a, "windows": n} for d, (a, n) in main["detectors"].items()},
    }
    sizes = main["sizes"]
    summary = [
        ["seeds (one replay each)", main["replays"]],
        ["serving windows evaluated (feature + prediction)", fmt_int(main["windows"])],
        ["serving windows too small to test (< 200 events)", fmt_int(main["skipped"])],
        ["serving windows with any alert", fmt_int(main["any"])],
        [
            "**false alarm rate per serving window (any detector)**",
            f"**{fmt_rate(main['any'], main['windows'])}**",
        ],
        ["  feature detector, per window", fmt_rate(*main["detectors"]["feature"])],
        ["  prediction detector, per window", fmt_rate(*main["detectors"]["prediction"])],
        [
            "  performance detector, per labelled window",
            fmt_rate(*main["detectors"]["performance"]),
        ],
        [
            "**false alarm rate per replay (seeds with >= 1 alert of any detector)**",
            f"**{fmt_rate(main['alerting_replays'], main['replays'])}**",
        ],
    ]
    for d in ("feature", "prediction"):
        if d in main["min_ratio"]:
            summary.append(
                [
                    f"  smallest {d} p-value / its threshold, over all windows",
                    f"{main['min_ratio'][d]:.3g}",
                ]
            )
    if main["when"]:
        summary.append(
            [
                "  serving windows with an alert, by start day (UTC)",
                ", ".join(f"{k} {v}" for k, v in sorted(main["when"].items())),
            ]
        )
    if main["features"]:
        summary.append(
            [
                "  strongest feature of the feature alerts (count)",
                ", ".join(f"{k} {v}" for k, v in main["features"].most_common(4)),
            ]
        )
    rows = []
    for res in results:
        rep = res["replays"]["default"]
        rows.append(
            [
                res["seed"],
                fmt_int(res["impressions"]),
                len([g for g in window_groups(rep).values() if any(e.tested for e in g.values())]),
                sum(e.drift for e in serve_windows(rep, "feature")),
                sum(e.drift for e in serve_windows(rep, "prediction")),
                (
                    f"{sum(e.drift for e in serve_windows(rep, 'performance'))}"
                    f"/{len(serve_windows(rep, 'performance'))}"
                ),
                f"{res['build_wall']:.1f}",
                f"{rep.seconds:.1f}",
            ]
        )
    days = sorted({r["reference_days"]["registered"] for r in results})
    train_days = sorted({r["reference_days"]["training"] for r in results})
    n_events = sum(r["impressions"] for r in results)
    lines = [
        "## 2. False alarms on `baseline`",
        "",
        (
            f"{len(results)} seeds (0-{len(results) - 1}), `GeneratorConfig(seed=s, "
            f"events={fmt_int(events)})` (14 days, 4,000 users, 600 ads), LightGBM trained with "
            "`until` = day 9 (its split: train days 1-5, valid 6, holdout 7-8); days 9-13 "
            f"replayed: {fmt_int(n_events)} impressions in all. Reference: the sample "
            "`register_step` registers with this model (`reference_sample` on the split of "
            f"`TrainingConfig()`, days {', '.join(days)}). Default `MonitorConfig()`: windows of "
            "2,000 events or one hour of event time, whichever closes first (at this lake size "
            f"the hour closes most: median window {statistics.median(sizes):,.0f} events, range "
            f"{min(sizes):,}-{max(sizes):,}); labelled windows of 10,000 events or a day."
        ),
        "",
        markdown_table(["", "value"], summary),
    ]
    variants = [("reference as registered (days " + ", ".join(days) + ")", main)]
    trained = [
        r["replays"]["default-training"] for r in results if "default-training" in r["replays"]
    ]
    if trained:
        variants.append(
            (
                f"reference from the model's own train split (days {', '.join(train_days)})",
                far_stats(trained),
            )
        )
        lines += [
            "",
            (
                "The same replays against the other reference `reference_sample` can give: the "
                "model's own training rows (`load_splits` with `until` = day 9). Days 3-5 lie in "
                "the lake's first week, when the 7-day counts are still filling up (see the "
                "`kubeloop.drift.monitor` docstring):"
            ),
            "",
            markdown_table(
                [
                    "reference",
                    "replays",
                    "windows",
                    "any detector",
                    "feature",
                    "prediction",
                    "performance",
                    "replays with >= 1 alert",
                ],
                [far_rows(label, st) for label, st in variants],
            ),
        ]
        st = variants[-1][1]
        if st["features"]:
            lines.append(
                "\nStrongest feature of those feature alerts (count): "
                + ", ".join(f"`{k}` {v}" for k, v in st["features"].most_common(4))
                + "."
            )
    lines += [
        "",
        "<details><summary>per seed (registered reference)</summary>",
        "",
        markdown_table(
            [
                "seed",
                "impressions",
                "windows",
                "feature alerts",
                "prediction alerts",
                "performance alerts / windows",
                "build s",
                "replay s",
            ],
            rows,
        ),
        "",
        "</details>",
    ]
    return lines


def power_stats(rep: Replay) -> dict[str, Any]:
    """Post-change detection of one replay: per detector (windows, alerts) among windows
    that start at or after the change, windows before it with an alert, and the delay."""
    import numpy as np

    change = rep.change_at
    out: dict[str, Any] = {"post": {}, "pre": {}, "delay": None}
    for d in ("feature", "prediction", "performance"):
        ws = serve_windows(rep, d)
        if change is None:
            post, pre = [], ws
        else:
            post = [e for e in ws if e.start >= change]
            pre = [e for e in ws if e.end < change]
        out["post"][d] = (sum(e.drift for e in post), len(post))
        out["pre"][d] = (sum(e.drift for e in pre), len(pre))
    groups = [
        [e for e in g.values() if e.tested]
        for g in window_groups(rep).values()
        if change is None or max(e.end for e in g.values()) < change
    ]
    groups = [g for g in groups if g]
    out["pre_any"] = (sum(any(e.drift for e in g) for g in groups), len(groups))
    if change is not None:
        expected = EXPECTED[rep.scenario]
        ends = [
            e.end
            for e in rep.evaluations
            if e.detector in expected and e.tested and e.drift and e.end >= change
        ]
        if ends:
            served = rep.served_times
            at_change = int(np.searchsorted(served, change, side="left"))
            out["delay"] = int(np.searchsorted(served, min(ends), side="right")) - at_change
    return out


def report_power(
    results: list[dict[str, Any]],
    events: int,
    seeds: list[int],
    baseline: list[dict[str, Any]],
    figures: dict[str, Any],
) -> list[str]:
    power = figures.setdefault("power", {"events": events, "seeds": len(seeds), "cells": []})
    by_cell: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for res in [*results, *baseline]:
        for rep in res["replays"].values():
            if rep.window in {str(n) for n in POWER_WINDOWS}:
                by_cell.setdefault((res["scenario"], rep.window), []).append(power_stats(rep))
    rows, base_rows = [], []
    for scenario in (*SCENARIOS, "baseline"):
        for size in POWER_WINDOWS:
            stats = by_cell.get((scenario, str(size)))
            if not stats:
                continue

            def pooled(part: str, d: str, stats=stats) -> tuple[int, int]:
                return (sum(s[part][d][0] for s in stats), sum(s[part][d][1] for s in stats))

            pre_alerts = sum(s["pre_any"][0] for s in stats)
            pre_windows = sum(s["pre_any"][1] for s in stats)
            if scenario == "baseline":
                base_rows.append(
                    [
                        f"{size:,}",
                        len(stats),
                        fmt_rate(pre_alerts, pre_windows),
                        fmt_rate(*pooled("pre", "feature")),
                        fmt_rate(*pooled("pre", "prediction")),
                        fmt_rate(*pooled("pre", "performance")),
                        (
                            f"{sum(1 for s in stats if any(s['pre'][d][0] for d in s['pre']))}"
                            f"/{len(stats)}"
                        ),
                    ]
                )
                continue
            delays = [s["delay"] for s in stats]
            found = sorted(d for d in delays if d is not None)
            delay = (
                f"{statistics.median(found):,.0f} [{found[0]:,}-{found[-1]:,}]" if found else "-"
            )
            if len(found) < len(delays):
                delay += f" ({len(delays) - len(found)} of {len(delays)} never)"
            power["cells"].append(
                {
                    "scenario": scenario,
                    "window": size,
                    "expected": list(EXPECTED[scenario]),
                    "replays": len(stats),
                    "post_change": {
                        d: dict(zip(("alerts", "windows"), pooled("post", d)))
                        for d in ("feature", "prediction", "performance")
                    },
                    "median_delay_events": statistics.median(found) if found else None,
                    "never_detected": len(delays) - len(found),
                    "pre_change_alerts": pre_alerts,
                    "pre_change_windows": pre_windows,
                }
            )
            rows.append(
                [
                    f"`{scenario}`",
                    f"{size:,}",
                    " or ".join(EXPECTED[scenario]),
                    fmt_rate(*pooled("post", "feature")),
                    fmt_rate(*pooled("post", "prediction")),
                    fmt_rate(*pooled("post", "performance")),
                    delay,
                    f"{pre_alerts}/{pre_windows}",
                ]
            )
    lines = [
        "## 3. Detection power",
        "",
        (
            f"Seeds {', '.join(map(str, seeds))}; `GeneratorConfig(seed=s, scenario=..., "
            f"events={fmt_int(events)}, change_day={CHANGE_DAY})`; the same model, reference "
            "(the registered sample) and in-process replay of days 9-13 as part 2 (one lake, "
            "model and feature build per scenario and seed, replayed once per window size; "
            "labels posted in the 2,000 replay only). Serving windows of exactly "
            "N events (`WindowConfig(max_events=N, max_seconds=None)`: at this lake size the "
            "default one-hour limit would close every window before 1,000 events); labelled "
            "windows keep their default (10,000 events or a day), so the performance column "
            "does not depend on N."
        ),
        "",
        (
            "TPR = windows that start at or after the change with an alert of that detector / "
            "such windows (pooled over seeds). Delay = impressions served from the change until "
            "the end of the first window, starting before or after the change, with an alert of "
            "the expected detector: median [min-max] over seeds. Day 9 = the pre-change day: "
            "its serving windows with a feature or prediction alert are false alarms."
        ),
        "",
        markdown_table(
            [
                "scenario",
                "window",
                "expected detector",
                "TPR feature",
                "TPR prediction",
                "TPR performance",
                "delay (events)",
                "day-9 windows alerting",
            ],
            rows,
        ),
    ]
    if base_rows:
        lines += [
            "",
            (
                "False alarms at the same window sizes: `baseline` worlds of part 2 (seeds "
                f"{', '.join(str(r['seed']) for r in baseline)}), every window of days 9-13:"
            ),
            "",
            markdown_table(
                [
                    "window",
                    "replays",
                    "any detector",
                    "feature",
                    "prediction",
                    "performance",
                    "replays with >= 1 alert",
                ],
                base_rows,
            ),
        ]
    return lines


# --- part 4: serving with and without the drift service ---------------------------------


def client_worker(conn, bodies: list[bytes]) -> None:
    """A closed-loop httpx client in its own process: it answers ("run", url, warmup, n,
    concurrency) with (seconds, latencies in s, errors), and stops on None."""
    import httpx

    async def batch(client, url: str, n: int, concurrency: int, lat: list[float]) -> int:
        counter = itertools.count()
        errors = 0

        async def worker() -> None:
            nonlocal errors
            while True:
                i = next(counter)
                if i >= n:
                    return
                t0 = time.perf_counter()
                try:
                    r = await client.post(
                        url, content=bodies[i % len(bodies)], headers=JSON_HEADERS
                    )
                    ok = r.status_code == 200
                except httpx.HTTPError:
                    ok = False
                lat.append(time.perf_counter() - t0)
                errors += not ok

        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return errors

    async def run(url: str, warmup: int, n: int, concurrency: int):
        limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
        async with httpx.AsyncClient(timeout=60.0, limits=limits) as client:
            await batch(client, url, warmup, concurrency, [])
            lat: list[float] = []
            t0 = time.perf_counter()
            errors = await batch(client, url, n, concurrency, lat)
            return time.perf_counter() - t0, lat, errors

    while True:
        message = conn.recv()
        if message is None:
            conn.close()
            return
        _, url, warmup, n, concurrency = message
        conn.send(asyncio.run(run(url, warmup, n, concurrency)))


def part_serving(args, root: Path) -> dict[str, Any]:
    import json

    import httpx

    from usecases.ctr.generator import GeneratorConfig
    from kubeloop.demo import DemoConfig, replay_impressions, run_demo
    from kubeloop.demo.drift import start_drift_service, stop_process
    from kubeloop.registry import open_registry
    from kubeloop.serving.local_servers import LocalStack
    from kubeloop.serving.replay import request_body
    from kubeloop.workdir import Workdir

    demo_dir = Workdir.at(root / "demo")
    config = DemoConfig(
        generator=GeneratorConfig(events=args.serve_events),
        serve=False,
        progress=False,
        train_config={"torch": {"max_epochs": 1}, "lightgbm": {"num_threads": args.lgb_threads}},
    )
    log(f"part 4: demo run (serve=False) on {args.serve_events:,} events")
    t = time.perf_counter()
    with stdout_to_stderr():
        report = run_demo(config, demo_dir)
    demo_seconds = time.perf_counter() - t
    version = report["registry"]["version"]
    if version is None:
        raise RuntimeError(f"the demo registered no model: {report['training']['gate']}")
    registry = open_registry(str(demo_dir.registry))
    impressions = replay_impressions(config, list(range(REPLAY_FROM_DAY, 14)), 8 * 512)
    rows = impressions.to_dict("records")
    bodies = [
        json.dumps(request_body(rows[i : i + REQUEST_ROWS])).encode()
        for i in range(0, len(rows) - REQUEST_ROWS + 1, REQUEST_ROWS)
    ]

    on_dir = Workdir.at(root / "stack-on").ensure()
    on_dir.feature_repo.symlink_to(demo_dir.feature_repo, target_is_directory=True)
    reference_dir = root / "drift-reference"
    registry.export(MODEL_NAME, version, reference_dir)

    context = multiprocessing.get_context("spawn")
    conn, child_conn = context.Pipe()
    client = context.Process(target=client_worker, args=(child_conn, bodies), daemon=True)
    service = off = on = None
    cells: dict[str, list[dict[str, Any]]] = {"off": [], "on": []}
    try:
        client.start()
        child_conn.close()
        log("part 4: starting the drift service and two stacks")
        service = start_drift_service(on_dir, reference_dir, MODEL_NAME, None, 180.0)
        env = {"OMP_NUM_THREADS": str(args.omp_threads)} if args.omp_threads else {}
        off = LocalStack.start(
            registry, MODEL_NAME, demo_dir, version, sync_registry=False, env=env
        )
        on = LocalStack.start(
            registry,
            MODEL_NAME,
            on_dir,
            version,
            sync_registry=False,
            env=env,
            logger_urls=[service.url + "/"],
        )
        stacks = {"off": off, "on": on}
        for r in range(args.rounds):
            order = ("off", "on") if r % 2 == 0 else ("on", "off")
            for mode in order:
                stack = stacks[mode]
                url = f"{stack.url}/v1/models/{MODEL_NAME}:predict"
                # Warm the connections and settle the previous round before counting.
                conn.send(("run", url, 0, args.warmup, args.concurrency))
                conn.recv()
                stack.request_logger.flush(timeout=600)
                before = stack.request_logger.stats.as_dict()
                service_cpu = pid_cpu_s(service.pid)
                with Meter() as m:
                    conn.send(("run", url, 0, args.requests, args.concurrency))
                    seconds, lat, errors = conn.recv()
                    t0 = time.perf_counter()
                    drained = stack.request_logger.flush(timeout=600)
                    drain = time.perf_counter() - t0
                after = stack.request_logger.stats.as_dict()
                cells[mode].append(
                    {
                        "seconds": seconds,
                        "lat": lat,
                        "errors": errors,
                        "drain": drain,
                        "drained": drained,
                        "ours": m.cpu / m.wall,
                        "cpu": m.cpu,
                        "other": m.other_cores,
                        "service_cpu": pid_cpu_s(service.pid) - service_cpu,
                        "stats": {k: after[k] - before[k] for k in after},
                    }
                )
                log(
                    f"part 4: round {r + 1}/{args.rounds} {mode}: "
                    f"{args.requests / seconds:.1f} req/s, drain {drain:.2f}s"
                )
        status = httpx.get(f"{service.url}/status", timeout=60).json()
    finally:
        for stack in (on, off):
            if stack is not None:
                stack.stop()
        if service is not None:
            stop_process(service)
        with contextlib.suppress(Exception):
            conn.send(None)
        client.join(10)
        if client.is_alive():
            client.terminate()
            client.join()
    return {
        "cells": cells,
        "status": status,
        "demo_seconds": demo_seconds,
        "version": version,
        "model_kind": report["registry"].get("model_kind"),
        "bodies": len(bodies),
    }


def report_serving(res: dict[str, Any], args, figures: dict[str, Any]) -> list[str]:
    rows = []
    rate, cpu = {}, {}
    for mode, label in (
        ("off", "drift service OFF (no logger_urls)"),
        ("on", "drift service ON (logger_urls -> drift service)"),
    ):
        cells = res["cells"][mode]
        lat = [x * 1000 for c in cells for x in c["lat"]]
        n = args.requests * len(cells)
        seconds = sum(c["seconds"] for c in cells)
        drain = sum(c["drain"] for c in cells)
        rate[mode] = (n / seconds, n / (seconds + drain))
        per_round = [args.requests / c["seconds"] for c in cells]
        cpu[mode] = sum(c["cpu"] for c in cells) * 1000 / n
        rows.append(
            [
                label,
                f"{rate[mode][0]:.1f}",
                f"{min(per_round):.1f}-{max(per_round):.1f}",
                f"{percentile(lat, 50):.1f}",
                f"{percentile(lat, 99):.1f}",
                f"{drain / len(cells):.2f}",
                f"{rate[mode][1]:.1f}",
                f"{statistics.median(c['ours'] for c in cells):.2f}",
                f"{cpu[mode]:.1f}",
                f"{statistics.median(c['other'] for c in cells):.2f}",
                f"{sum(c['service_cpu'] for c in cells) * 1000 / n:.1f}",
                sum(c["errors"] for c in cells),
            ]
        )
    ratio = rate["on"][0] / rate["off"][0]
    figures["serving"] = {
        "req_per_s_on": rate["on"][0],
        "req_per_s_off": rate["off"][0],
        "on_vs_off": ratio,
    }
    paired = [
        on["seconds"] and off["seconds"] / on["seconds"]
        for on, off in zip(res["cells"]["on"], res["cells"]["off"], strict=True)
    ]
    sustained = rate["on"][1] / rate["off"][1]
    stats = {
        k: sum(c["stats"][k] for c in res["cells"]["on"]) for k in res["cells"]["on"][0]["stats"]
    }
    counters = res["status"].get("counters", {})
    keep = [
        k
        for k in sorted(counters)
        if k.split(":")[0]
        in (
            "pairs",
            "events",
            "windows_closed",
            "windows_evaluated",
            "alerts",
            "evaluation_errors",
            "pending_evicted",
            "pairs_mismatched",
        )
    ]
    verdict = "meets" if ratio >= 0.9 else "misses"
    lines = [
        "## 4. Serving with the drift service on and off",
        "",
        (
            f"Model and Feast repo from one `run_demo(DemoConfig(serve=False))` on "
            f"{fmt_int(args.serve_events)} events ({res['demo_seconds']:.0f}s; registered "
            f"{res['version']}, {res['model_kind']}). Two `LocalStack`s of that version run at "
            "once (transformer with Feast SQLite lookups -> router in this process -> KServe "
            "predictor); both keep the router's SQLite request log (LocalStack always has it); "
            "ON adds `logger_urls=[<drift service>/]`, the service started as the drift stage "
            "starts it (`start_drift_service`, default `MonitorConfig`, reference scored by the "
            "model). Both stacks' servers run with "
            + (f"OMP_NUM_THREADS={args.omp_threads}" if args.omp_threads else "no OMP_NUM_THREADS")
            + " (see serving_bench: LightGBM's OpenMP team spins when another process holds a "
            "core). Client: httpx.AsyncClient in its own process, closed loop, concurrency "
            f"{args.concurrency}, {REQUEST_ROWS}-impression requests (v1 instances of ids and "
            f"context; {res['bodies']} distinct bodies from days 9-13), {args.warmup} untimed "
            f"then {args.requests} timed requests per round, {args.rounds} rounds alternating "
            "which stack goes first. After each round the bench waits until the stack's request "
            "logger has written and sent everything (*drain*), so no backlog leaks into the next "
            "round; *sustained* counts that wait. *Our cores*: CPU of this process tree (client, "
            "router, servers, drift service) per second of the round incl. drain; *other load*: "
            "the rest of the machine; *drift service CPU*: the service process alone, per timed "
            "request (0 for OFF: it idles)."
        ),
        "",
        markdown_table(
            [
                "stack",
                "req/s",
                "req/s per round",
                "p50 ms",
                "p99 ms",
                "drain s / round",
                "sustained req/s",
                "our cores",
                "our CPU ms / request",
                "other load (cores)",
                "drift service CPU ms / request",
                "errors",
            ],
            rows,
        ),
        "",
        (
            f"- **ratio on / off: {fmt_ratio(ratio)}** (target >= 0.90x: {verdict}); sustained "
            f"(with the drain): {fmt_ratio(sustained)}. Per round (ON and OFF of the same "
            f"round): {fmt_ratio(min(paired))}-{fmt_ratio(max(paired))}."
        ),
        (
            f"- CPU of the whole process tree per request: {cpu['off']:.1f} ms OFF, "
            f"{cpu['on']:.1f} ms ON (+{(cpu['on'] / cpu['off'] - 1) * 100:.0f}%; the drift "
            "service's own share is in its column, the rest is the router's CloudEvent sender "
            "and the service's HTTP traffic). Where CPU rather than spare cores bounds "
            f"throughput, ON would serve {fmt_ratio(cpu['off'] / cpu['on'])} of OFF."
        ),
        (
            f"- ON logger counters over all rounds: {stats} (send_dropped / send_failures "
            "are events the drift service never saw)."
        ),
        "- drift service counters at the end (warmup requests included): "
        + ", ".join(f"{k} {int(counters[k])}" for k in keep)
        + ". The requests are a random sample of days 9-13 looked up in the fully "
        "materialized online store, not a time-ordered replay: alerts here say nothing "
        "about false alarms (parts 2-3 do).",
    ]
    return lines


# --- main --------------------------------------------------------------------------------


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="small sizes: a smoke run")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    p.add_argument("--json", type=Path, default=DEFAULT_OUT.with_suffix(".json"))
    p.add_argument(
        "--mode",
        default="full",
        help="the run's label in the JSON when not --quick (e.g. 'reduced' with smaller sizes)",
    )
    p.add_argument("--tmp-dir", default=None)
    p.add_argument("--events", type=int, default=None, help="lake size of parts 1-3")
    p.add_argument("--seeds", type=int, default=None, help="baseline seeds of part 2")
    p.add_argument("--power-seeds", type=int, default=None, help="seeds per scenario, part 3")
    p.add_argument(
        "--variant-seeds",
        type=int,
        default=None,
        help="part-2 seeds also replayed with the other reference and part 3's windows",
    )
    p.add_argument("--cost-windows", type=int, default=None, help="windows timed in part 1")
    p.add_argument("--cost-reps", type=int, default=3)
    p.add_argument("--serve-events", type=int, default=None)
    p.add_argument("--requests", type=int, default=None, help="timed requests per round, part 4")
    p.add_argument("--warmup", type=int, default=40)
    p.add_argument("--rounds", type=int, default=None)
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--workers", type=int, default=1, help="processes for parts 2-3")
    p.add_argument("--lgb-threads", type=int, default=1)
    p.add_argument(
        "--omp-threads",
        type=int,
        default=1,
        help="OMP_NUM_THREADS of both stacks' servers in part 4 (0: unset, as shipped)",
    )
    p.add_argument("--parts", default="1234", help="which parts to run, e.g. 14")
    args = p.parse_args(argv)
    defaults = (
        {
            "events": 80_000,
            "seeds": 2,
            "power_seeds": 1,
            "cost_windows": 5,
            "variant_seeds": 1,
            "serve_events": 40_000,
            "requests": 150,
            "rounds": 2,
        }
        if args.quick
        else {
            "events": 200_000,
            "seeds": 20,
            "power_seeds": 3,
            "cost_windows": 20,
            "variant_seeds": 2,
            "serve_events": 60_000,
            "requests": 300,
            "rounds": 6,
        }
    )
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    exit_on_sigterm()
    started = time.perf_counter()
    load_before = load_average()
    started_at = now_utc()
    load_numbers = load_averages()
    figures: dict[str, Any] = {}
    sections: list[list[str]] = []
    with tempfile.TemporaryDirectory(prefix="kubeloop-driftbench-", dir=args.tmp_dir) as tmp:
        root = Path(tmp)
        seeds = list(range(args.seeds))
        first = None
        if "1" in args.parts or "2" in args.parts:
            log(f"building baseline world seed 0 ({args.events:,} events)")
            first = build_world("baseline", 0, args.events, root, args.lgb_threads)
            log(f"built in {sum(first.build_seconds.values()):.1f}s: {first.build_seconds}")
        if "1" in args.parts:
            log(f"part 1: {args.cost_windows} windows x {args.cost_reps} reps")
            sections.append(
                report_cost(part_cost(first, args.cost_windows, args.cost_reps, root), figures)
            )
        baseline_sizes: list[dict[str, Any]] = []
        if "2" in args.parts:
            t = time.perf_counter()

            def configs_for(seed: int) -> list[dict[str, Any]]:
                configs = [replay_config("default")]
                if seed < args.variant_seeds:
                    configs.append(replay_config("default-training", reference="training"))
                    configs += [
                        replay_config(str(n), n, False, labels=False) for n in POWER_WINDOWS
                    ]
                return configs

            results = [replay_all(first, configs_for(0), root, sum(first.build_seconds.values()))]
            log(
                f"part 2: seed 0 replayed in "
                f"{sum(r.seconds for r in results[0]['replays'].values()):.1f}s"
            )
            jobs = [
                {
                    "root": str(root),
                    "scenario": "baseline",
                    "seed": s,
                    "events": args.events,
                    "lgb_threads": args.lgb_threads,
                    "configs": configs_for(s),
                }
                for s in seeds[1:]
            ]
            results += run_jobs(jobs, args.workers, "part 2")
            sections.append(report_false_alarms(results, args.events, figures))
            sections[-1].append(
                f"\nPart 2 took {time.perf_counter() - t:.0f}s (with the replays of seeds "
                f"0-{args.variant_seeds - 1} against the other reference and at the window "
                "sizes of part 3)."
            )
            baseline_sizes = [r for r in results if str(POWER_WINDOWS[0]) in r["replays"]]
        first = None
        if "3" in args.parts:
            t = time.perf_counter()
            power_seeds = list(range(100, 100 + args.power_seeds))
            configs = [replay_config(str(n), n, False, labels=n == 2000) for n in POWER_WINDOWS]
            jobs = [
                {
                    "root": str(root),
                    "scenario": sc,
                    "seed": s,
                    "events": args.events,
                    "lgb_threads": args.lgb_threads,
                    "configs": configs,
                }
                for sc in SCENARIOS
                for s in power_seeds
            ]
            results = run_jobs(jobs, args.workers, "part 3")
            sections.append(
                report_power(results, args.events, power_seeds, baseline_sizes, figures)
            )
            sections[-1].append(f"\nPart 3 took {time.perf_counter() - t:.0f}s.")
        if "4" in args.parts:
            t = time.perf_counter()
            sections.append(report_serving(part_serving(args, root), args, figures))
            sections[-1].append(f"\nPart 4 took {time.perf_counter() - t:.0f}s.")
    header = [
        "# Drift monitoring benchmark",
        "",
        (
            f"Run {datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')}, "
            f"`{' '.join(['bench/drift_bench.py', *(argv if argv is not None else sys.argv[1:])])}`"
            f", {time.perf_counter() - started:.0f}s in all."
        ),
        "",
        *machine_facts(PACKAGES),
        f"- load average (1/5/15 min) before: {load_before}; after: {load_average()}",
        (
            f"- LightGBM trained with {args.lgb_threads} thread(s); parts 2-3 in "
            f"{args.workers} process(es)"
        ),
        "",
    ]
    cond = conditions(
        "drift",
        "quick" if args.quick else args.mode,
        list(argv if argv is not None else sys.argv[1:]),
        PACKAGES,
        load_numbers,
        time.perf_counter() - started,
        started_at,
    )
    write_json(args.json, {"conditions": cond, "parts": args.parts, "summary": figures})
    log(f"wrote {args.json}")
    # The sections are rendered from the replays in memory; the JSON holds their headline
    # figures (what the README renders) and the run's conditions.
    header[2:3] = [f"Headline figures and conditions: {args.json.name}.", "", header[2]]
    text = "\n".join(header + [line for s in sections for line in [*s, ""]])
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    log(f"report written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
