"""Benchmark of drift monitoring: what the detector costs, how often it cries wolf, how
fast it finds real drift, and what turning it on costs the serving path.

    .venv/bin/python bench/drift_bench.py                    # the full run (see README)
    .venv/bin/python bench/drift_bench.py --quick            # a smoke run
    .venv/bin/python bench/drift_bench.py --parts 1 --cost-reps 1 --profile /tmp/drift.prof
                                                             # part 1 only, with a profile
    .venv/bin/python bench/drift_bench.py --seeds 30 --windows 5000 --out /tmp/drift.md

A "world" is one seeded lake replayed the way the demo replays it, in this process:
`generate_lake(GeneratorConfig(seed=s, scenario=..., events=N))` (14 days, change on day
10), `run_features(..., FeaturesStepConfig(progress=False))`, `train_step("lightgbm", ...)`
with the demo's first-training config (`DemoConfig.first_training()`: `until` = day 9).
The reference is exactly what `register_step` registers: `reference_sample` of the valid +
holdout rows of the model's own split (the last `reference_days` before `until`), scored by
the model (the prediction and estimate checks), with the version's metrics from
`evaluate_frame` on the holdout (the performance check). The traffic is days 9..13 of the
training set (the point-in-time features Feast would have served for those impressions),
scored by the model's `predict_proba`, fed in time order to `DriftMonitor.observe` in
requests of 8 consecutive impressions (as the demo's replayer batches them), event time =
the request's first impression. Then `flush()`, every click as a delayed label
(`add_labels`), `flush()`.

Part 1 (cost): one baseline world; the first N windows of 2,000 events through
`DriftMonitor.observe_many` (time limits off, so every window holds exactly 2,000 events),
against alibi-detect's `TabularDrift` (+ `KSDrift` for the scores) built and called
directly on the very arrays the monitor's detectors tested (recorded during its pass).
Part 2 (false alarms): baseline worlds over --seeds seeds (0..N-1), default `MonitorConfig()`
with windows of --windows events or one hour once they hold 1,000 events (6 h at most): per detector kind, windows with an alert and
replays with an alert, for the seeds the defaults were tuned on and for the others.
Part 3 (power and the label-free estimate): covariate_shift, concept_drift, new_ads over
--power-seeds seeds from 200 (never tuned on): TPR over post-change windows of the detectors
each scenario must trip, whether the first post-change window alerted, the delay, and the
error of the label-free NE estimate before and after the change (where it fails: concept
drift).
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
import math
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
    # 40% of impressions on never-seen ads: their features move, and the first hours'
    # ads have no feature rows at all (a data-quality finding).
    "new_ads": ("feature", "data_quality"),
    # Every input is unchanged: only the delayed labels can show it.
    "concept_drift": ("performance",),
}
DEFAULT_WINDOW = 2000
# Requests per `observe_many` call (one transaction): what the drift service's group commit
# writes when requests arrive faster than one transaction commits (kubeloop.drift.service).
BATCH_REQUESTS = 32
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

    from kubeloop.demo import DemoConfig
    from kubeloop.drift.reference import Reference
    from kubeloop.evaluation.metrics import evaluate_frame
    from kubeloop.features.pipeline_config import FeaturesStepConfig
    from kubeloop.pipeline.steps import load_splits, reference_sample, run_features, train_step
    from kubeloop.training.artifacts import load_model
    from kubeloop.training.config import TrainingConfig
    from kubeloop.training.transform import model_input_columns
    from usecases.ctr import schema
    from usecases.ctr.generator import GeneratorConfig, generate_lake

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
        # Exactly what `register_step` registers with this model: a `reference_sample` of
        # the valid + holdout rows of the model's own split (the days just before deployment).
        _, valid, held = load_splits(training_set, train_config)
        pool = pd.concat([valid, held], ignore_index=True)
        sample = reference_sample(pool, features, train_config)
        pool_ts = pd.to_datetime(pool["event_timestamp"], utc=True)
        last = int((pool_ts.max() - day0).days)
        first = max(int((pool_ts.min() - day0).days), last - train_config.reference_days + 1)
        references = {
            "registered": Reference(
                MODEL_NAME, VERSION, sample, model.predict_proba(sample), metrics
            )
        }
        reference_days = {"registered": f"{first}-{last}"}

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
    figures: dict[str, Any] | None = None  # estimated / realized NE and AUC, when computed


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
    clicks: Any = None  # np.ndarray: the clicks of the impressions, in replay order
    predictions: Any = None  # np.ndarray: the model's scores, in replay order


def monitor_config(max_events: int | None, hour_limit: bool):
    from kubeloop.drift.config import MonitorConfig
    from kubeloop.drift.windows import WindowConfig

    if max_events in (None, WindowConfig().max_events) and hour_limit:
        return MonitorConfig()  # the defaults, untouched
    if hour_limit:
        window = WindowConfig(max_events=max_events or DEFAULT_WINDOW)
    else:  # every window holds exactly max_events events
        window = WindowConfig(
            max_events=max_events or DEFAULT_WINDOW, max_seconds=None, max_open_seconds=None
        )
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
    batch: int | None = None,
) -> Replay:
    """Feed the world's traffic to a fresh DriftMonitor in 8-impression requests, in time
    order, `batch` requests per `observe_many` call (one transaction each, as the drift
    service's group commit writes them; 1 = `observe`, a transaction per request); then
    flush, post every label (unless `labels` is off), flush. With `limit`, only the first
    `limit` impressions and no flush (open windows stay untested)."""
    import numpy as np

    from kubeloop.drift.monitor import DriftMonitor, ServedRequest

    evaluations: list[Evaluated] = []

    def keep(e) -> None:
        r = e.result
        figures = None
        if r.skipped is None and e.detector in ("estimated_performance", "performance"):
            figures = {
                k: r.details.get(k) for k in ("estimated", "realized", "reference_estimated")
            }
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
                figures,
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
    batch = batch or BATCH_REQUESTS
    try:
        pending: list[Any] = []
        for i in range(0, n, REQUEST_ROWS):
            j = min(i + REQUEST_ROWS, n)
            request_id = f"r{i}"
            t = float(world.times[i])
            served[i:j] = t
            ids.extend([request_id] if j - i == 1 else [f"{request_id}/{k}" for k in range(j - i)])
            pending.append(
                ServedRequest(
                    world.instances[i:j],
                    world.predictions[i:j],
                    request_id=request_id,
                    event_time=t,
                )
            )
            if len(pending) >= batch or j >= n:
                t0 = time.perf_counter()
                if len(pending) == 1:
                    monitor.observe(
                        pending[0].instances,
                        pending[0].predictions,
                        request_id=pending[0].request_id,
                        event_time=pending[0].event_time,
                    )
                else:
                    monitor.observe_many(pending)
                observe += time.perf_counter() - t0
                pending = []
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
        clicks=world.clicks[:n],
        predictions=world.predictions[:n],
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


def profile_pass(world: World, events: int, config, root: Path, out: Path) -> None:
    """One more (untimed) monitor pass of part 1 under cProfile, its stats dumped to `out`
    (read them with `python -m pstats`): where the monitor's time per window goes."""
    import cProfile

    profiler = cProfile.Profile()
    profiler.enable()
    try:
        replay_world(world, config, root / "cost-profile", "cost", limit=events, probe=Probe(False))
    finally:
        profiler.disable()
    out.parent.mkdir(parents=True, exist_ok=True)
    profiler.dump_stats(out)
    log(f"part 1: cProfile stats of one monitor pass written to {out}")


def part_cost(
    world: World, windows: int, reps: int, root: Path, profile: Path | None = None
) -> dict[str, Any]:
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

    def monitor_pass(
        tag: str, record: bool, batch: int | None = None
    ) -> tuple[Probe, Replay, Meter]:
        probe = Probe(record)
        with Meter() as m:
            r = replay_world(
                world, config, root / f"cost-{tag}", "cost", limit=events, probe=probe, batch=batch
            )
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
    if profile is not None:  # after the timed passes: profiling slows what runs beside it
        profile_pass(world, events, config, root, profile)
    # One pass with a transaction per request (`observe`), for what batching saves.
    probe, r, _ = monitor_pass("single", False, batch=1)
    single = {"observe": r.observe_seconds, "tests": probe.seconds}
    return {
        "windows": windows,
        "events": events,
        "batch": BATCH_REQUESTS,
        "single": single,
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

    single = cost["single"]["observe"]
    rows = [
        row(
            f"DriftMonitor.observe_many ({cost['batch']} requests per transaction), whole "
            "replay (windowing, SQLite state, encoding, matching, every serving check)",
            mon_total,
        ),
        row(
            "  of which inside the two detectors' test() (alibi build + predict, correction)",
            mon_tests,
        ),
        row(
            "  the rest: windowing, state persistence, encoding, reference matching, "
            "estimate and data-quality checks",
            mon_total - mon_tests,
        ),
        row("DriftMonitor.observe, one transaction per request (1 pass)", single),
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
        "requests_per_transaction": cost["batch"],
        "monitor_ms_per_window_one_transaction_per_request": single * 1000 / windows,
        "one_transaction_per_request_vs_alibi_predict": single / feat_pred,
        "monitor_tests_ms_per_window": mon_tests * 1000 / windows,
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
            f"{REQUEST_ROWS}, {cost['batch']} requests per `observe_many` transaction) of one "
            "baseline world; `MonitorConfig()` with the window's time limits off "
            "(`max_seconds=None, max_open_seconds=None`) so every window holds 2,000 events. "
            "Figures are the "
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
            f"- **ratio monitor / alibi-detect's TabularDrift.predict alone: "
            f"{fmt_ratio(mon_total / feat_pred)}** (goal: at most 2x); against build + "
            f"predict: {fmt_ratio(mon_total / feat)}; against both tests the monitor runs: "
            f"{fmt_ratio(mon_total / both)}; with a transaction per request: "
            f"{fmt_ratio(single / feat_pred)}."
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


# --- parts 2 and 3: alarms, power and the label-free estimate ----------------------------

KINDS = ("feature", "prediction", "estimated_performance", "data_quality", "performance")
SERVE_KINDS = KINDS[:4]
# Seeds the defaults were tuned on (kubeloop.drift.config): every other seed validates.
TUNED_BASELINE_SEEDS = (0, 1, 2, 3)
TUNED_SCENARIO_SEEDS = (100,)
POWER_SEED0 = 200  # the power seeds start here: none of them was tuned on


def run_world_job(job: dict[str, Any]) -> dict[str, Any]:
    """Build one world and replay it through the default monitor (windows of
    `job["window"]` events or one hour once they hold 1,000 events (6 h at most)). Module-level, plain data in and out, so a spawned
    worker can run it."""
    root = Path(job["root"])
    with Meter() as build:
        world = build_world(job["scenario"], job["seed"], job["events"], root, job["lgb_threads"])
    config = monitor_config(job["window"], hour_limit=True)
    state = root / f"state-{world.scenario}-{world.seed}-{job['window']}"
    replay = replay_world(world, config, state, str(job["window"]))
    return {
        "scenario": world.scenario,
        "seed": world.seed,
        "build": world.build_seconds,
        "build_wall": build.wall,
        "impressions": len(world.instances),
        "reference_days": world.reference_days,
        "replay": replay,
    }


def iter_jobs(jobs: list[dict[str, Any]], workers: int, what: str):
    """Run `run_world_job` over `jobs` (in `workers` spawned processes, one pool for all of
    them, so no worker idles between parts); yields the results in job order."""
    if workers <= 1:
        for i, job in enumerate(jobs):
            t = time.perf_counter()
            result = run_world_job(job)
            log(
                f"{what}: {i + 1}/{len(jobs)} ({job['scenario']} seed {job['seed']}) "
                f"{time.perf_counter() - t:.1f}s"
            )
            yield result
        return
    context = multiprocessing.get_context("spawn")
    with context.Pool(workers) as pool:
        for i, result in enumerate(pool.imap(run_world_job, jobs)):
            log(f"{what}: {i + 1}/{len(jobs)} ({result['scenario']} seed {result['seed']})")
            yield result


def tested(replay: Replay, detector: str) -> list[Evaluated]:
    return [e for e in replay.evaluations if e.detector == detector and e.tested]


def fmt_rate(k: int, n: int) -> str:
    return f"{k}/{n} = {k / n:.3f}" if n else "n/a"


def alarm_stats(replays: list[Replay]) -> dict[str, Any]:
    """False alarms of baseline replays (every alert is false): per detector kind, windows
    tested, windows with an alert, replays with an alert; and the same for any kind."""
    by_kind: dict[str, dict[str, int]] = {}
    for kind in KINDS:
        windows = alerts = replays_with = 0
        for rep in replays:
            ws = tested(rep, kind)
            windows += len(ws)
            k = sum(e.drift for e in ws)
            alerts += k
            replays_with += k > 0
        by_kind[kind] = {"windows": windows, "alerts": alerts, "replays_with_alert": replays_with}
    serve_windows = serve_alerts = any_replays = 0
    for rep in replays:
        groups: dict[int, list[Evaluated]] = {}
        for e in rep.evaluations:
            if e.detector in SERVE_KINDS and e.tested:
                groups.setdefault(e.index, []).append(e)
        serve_windows += len(groups)
        serve_alerts += sum(any(e.drift for e in g) for g in groups.values())
        any_replays += any(e.drift for e in rep.evaluations if e.tested)
    return {
        "replays": len(replays),
        "serving_windows": serve_windows,
        "serving_windows_with_alert": serve_alerts,
        "labelled_windows": by_kind["performance"]["windows"],
        "labelled_windows_with_alert": by_kind["performance"]["alerts"],
        "replays_with_alert": any_replays,
        "by_detector": by_kind,
    }


def smallest_ratio(replays: list[Replay], kind: str) -> float | None:
    """The smallest p-value / threshold over the tested windows (> 1: no alert; how far)."""
    ratios = [e.p_value / e.threshold for r in replays for e in tested(r, kind) if e.threshold > 0]
    return min(ratios) if ratios else None


def report_false_alarms(
    results: list[dict[str, Any]], events: int, config, figures: dict[str, Any]
) -> list[str]:
    replays = [r["replay"] for r in results]
    main = alarm_stats(replays)
    untuned = [r["replay"] for r in results if r["seed"] not in TUNED_BASELINE_SEEDS]
    tuned = [r["replay"] for r in results if r["seed"] in TUNED_BASELINE_SEEDS]
    budget = config.false_alarm_budget()
    figures["false_alarms"] = {
        "events": events,
        "seeds": len(results),
        "tuned_seeds": sorted(r["seed"] for r in results if r["seed"] in TUNED_BASELINE_SEEDS),
        **main,
        "untuned": alarm_stats(untuned),
        "tuned": alarm_stats(tuned),
        "budget": budget,
        "smallest_p_over_threshold": {k: smallest_ratio(replays, k) for k in SERVE_KINDS},
    }
    rows = []
    for label, st in (("all seeds", main), ("tuned seeds", alarm_stats(tuned)),
                      ("untuned seeds", alarm_stats(untuned))):  # fmt: skip
        rows.append(
            [
                label,
                st["replays"],
                fmt_rate(st["serving_windows_with_alert"], st["serving_windows"]),
                *(
                    fmt_rate(st["by_detector"][k]["alerts"], st["by_detector"][k]["windows"])
                    for k in KINDS
                ),
                fmt_rate(st["replays_with_alert"], st["replays"]),
            ]
        )
    days = sorted({r["reference_days"]["registered"] for r in results})
    per_seed = [
        [
            r["seed"],
            fmt_int(r["impressions"]),
            *(sum(e.drift for e in tested(r["replay"], k)) for k in KINDS),
            f"{r['build_wall']:.1f}",
            f"{r['replay'].seconds:.1f}",
        ]
        for r in results
    ]
    return [
        "## 2. False alarms on `baseline`",
        "",
        (
            f"{len(results)} seeds (0-{len(results) - 1}; the defaults were tuned on seeds "
            f"{', '.join(map(str, TUNED_BASELINE_SEEDS))}, the others validate), "
            f"`GeneratorConfig(seed=s, events={fmt_int(events)})`, LightGBM trained with `until` "
            "= day 9; days 9-13 replayed (a Wednesday to a Sunday). Reference: exactly what "
            "`register_step` registers (`reference_sample` of the valid + holdout rows of the "
            f"model's own split: days {', '.join(days)}, a Monday and a Tuesday, so the weekend "
            "windows are matched on the hour only). Default `MonitorConfig()`: windows of 2,000 "
            "events or one hour once they hold 1,000 events (6 h at most), labelled windows of 10,000 or a day; false-alarm budget "
            f"{budget['expected_windows_between_false_alarms']:,.0f} serving windows between "
            "false alarms."
        ),
        "",
        markdown_table(
            ["seeds", "replays", "serving windows, any detector", *KINDS, "replays with an alert"],
            rows,
        ),
        "",
        "Smallest p-value / threshold over all tested windows (above 1: no alert): "
        + ", ".join(
            f"{k} {v:.3g}"
            for k, v in figures["false_alarms"]["smallest_p_over_threshold"].items()
            if v is not None
        )
        + ".",
        "",
        "<details><summary>per seed</summary>",
        "",
        markdown_table(["seed", "impressions", *KINDS, "build s", "replay s"], per_seed),
        "",
        "</details>",
    ]


def window_rows(rep: Replay, kind: str) -> list[tuple[Evaluated, int, int]]:
    """Each tested window of `kind` with its [first, last) impression in replay order.
    Serving windows are consecutive in feed order; labelled windows too (labels are
    posted in replay order)."""
    out, at = [], 0
    for e in sorted((e for e in rep.evaluations if e.detector == kind), key=lambda e: e.index):
        if e.tested:
            out.append((e, at, at + e.n))
        at += e.n
    return out


def estimate_errors(rep: Replay) -> dict[str, list[tuple[bool, float]]]:
    """(after the change?, realized NE - estimated NE) per window: labelled windows (the
    estimate on the very rows the labels score) and serving windows (realized NE from the
    replay's clicks of the window's impressions)."""
    from kubeloop.drift.estimate import realized

    change = rep.change_at
    out: dict[str, list[tuple[bool, float]]] = {"labelled": [], "serving": []}
    for e, _, _ in window_rows(rep, "performance"):
        f = e.figures or {}
        est, real = (f.get("estimated") or {}), (f.get("realized") or {})
        if est.get("normalized_entropy") is not None and real.get("normalized_entropy") is not None:
            post = change is not None and e.start >= change
            out["labelled"].append((post, real["normalized_entropy"] - est["normalized_entropy"]))
    for e, a, b in window_rows(rep, "estimated_performance"):
        est = (e.figures or {}).get("estimated") or {}
        if est.get("normalized_entropy") is None:
            continue
        real = realized(rep.predictions[a:b], rep.clicks[a:b]).normalized_entropy
        if math.isfinite(real):  # a window without a click has no NE
            post = change is not None and e.start >= change
            out["serving"].append((post, real - est["normalized_entropy"]))
    return out


def power_cell(scenario: str, replays: list[Replay]) -> dict[str, Any]:
    """Detection after the change: the share of post-change windows (starting at or after
    it) where an expected detector alerted; whether the first such window alerted; the
    delay in served impressions from the change to the end of the first alerting window;
    and alerts before the change."""
    import numpy as np

    expected = EXPECTED[scenario]
    post_alerts = post_windows = first_hits = pre_alerts = 0
    delays: list[int] = []
    never = 0
    by_seed: list[dict[str, Any]] = []
    for rep in replays:
        change = rep.change_at
        groups: dict[tuple[str, int], list[Evaluated]] = {}
        for e in rep.evaluations:
            if e.detector in expected and e.tested:
                kind = "labels" if e.detector == "performance" else "serve"
                groups.setdefault((kind, e.index), []).append(e)
        post = sorted(
            (g for g in groups.values() if g[0].start >= change), key=lambda g: g[0].start
        )
        post_windows += len(post)
        post_alerts += sum(any(e.drift for e in g) for g in post)
        hit = bool(post) and any(e.drift for e in post[0])
        first_hits += hit
        by_seed.append(
            {
                "seed": rep.seed,
                "first_post_change_window_alerted": hit,
                "first_post_change_window_events": post[0][0].n if post else None,
                "first_post_change_window_hours": (
                    (post[0][0].end - post[0][0].start) / 3600 if post else None
                ),
                "detectors_alerted": sorted({e.detector for e in post[0] if e.drift})
                if post
                else [],
            }
        )
        pre_alerts += sum(e.drift for e in rep.evaluations if e.tested and e.end < change)
        ends = [e.end for g in groups.values() for e in g if e.drift and e.end >= change]
        if ends:
            at_change = int(np.searchsorted(rep.served_times, change, side="left"))
            delays.append(
                int(np.searchsorted(rep.served_times, min(ends), side="right")) - at_change
            )
        else:
            never += 1
    return {
        "scenario": scenario,
        "expected": list(expected),
        "replays": len(replays),
        "post_change_windows": post_windows,
        "post_change_alerts": post_alerts,
        "tpr": post_alerts / post_windows if post_windows else None,
        "first_post_change_window_alerted": first_hits,
        "median_delay_events": statistics.median(delays) if delays else None,
        "never_detected": never,
        "pre_change_alerts": pre_alerts,
        "first_post_change_window_by_seed": by_seed,
    }


def estimate_cell(scenario: str, replays: list[Replay]) -> dict[str, Any]:
    out: dict[str, Any] = {"scenario": scenario}
    for kind in ("labelled", "serving"):
        errs = [x for rep in replays for x in estimate_errors(rep)[kind]]
        for phase, keep in (("before", False), ("after", True)):
            values = [v for post, v in errs if post is keep]
            out[f"{kind}_{phase}"] = (
                {
                    "windows": len(values),
                    "mean_error_ne": statistics.fmean(values),
                    "mean_abs_error_ne": statistics.fmean(abs(v) for v in values),
                    "max_abs_error_ne": max(abs(v) for v in values),
                }
                if values
                else {"windows": 0}
            )
    return out


def tuned_note(seeds: list[int]) -> str:
    """Which of the part 3 seeds the defaults were tuned on."""
    tuned = [s for s in seeds if s in TUNED_SCENARIO_SEEDS]
    where = ", ".join(map(str, TUNED_SCENARIO_SEEDS))
    if not tuned:
        return f"none tuned on: the defaults were tuned on seed {where}"
    return f"seed(s) {', '.join(map(str, tuned))} tuned on; the defaults were tuned on {where}"


def report_power(
    results: list[dict[str, Any]],
    events: int,
    seeds: list[int],
    window: int,
    figures: dict[str, Any],
) -> list[str]:
    by_scenario: dict[str, list[Replay]] = {}
    for r in results:
        by_scenario.setdefault(r["scenario"], []).append(r["replay"])
    cells = [power_cell(sc, by_scenario[sc]) for sc in SCENARIOS if sc in by_scenario]
    estimates = [estimate_cell(sc, by_scenario[sc]) for sc in SCENARIOS if sc in by_scenario]
    figures["power"] = {"events": events, "seeds": seeds, "window": window, "cells": cells}
    figures["estimate"] = {"cells": estimates}
    rows = [
        [
            c["scenario"],
            ", ".join(c["expected"]),
            c["replays"],
            fmt_rate(c["post_change_alerts"], c["post_change_windows"]),
            f"{c['first_post_change_window_alerted']}/{c['replays']}",
            fmt_int(c["median_delay_events"]) if c["median_delay_events"] is not None else "never",
            c["pre_change_alerts"],
        ]
        for c in cells
    ]

    def err(cell: dict[str, Any], key: str) -> str:
        x = cell[key]
        if not x.get("windows"):
            return "-"
        return f"{x['mean_error_ne']:+.3f} (max abs {x['max_abs_error_ne']:.3f}, {x['windows']} windows)"

    est_rows = [
        [e["scenario"], err(e, "labelled_before"), err(e, "labelled_after"),
         err(e, "serving_before"), err(e, "serving_after")]
        for e in estimates
    ]  # fmt: skip
    return [
        "## 3. Detection after the change, and the label-free estimate",
        "",
        (
            f"Seeds {', '.join(map(str, seeds))} per scenario ({tuned_note(seeds)}), "
            f"`GeneratorConfig(seed=s, scenario=..., events={fmt_int(events)}, change_day="
            f"{CHANGE_DAY})`, the same model, reference and default monitor as part 2 "
            f"(windows of {window:,} events or one hour once they hold 1,000 events (6 h at most)). A post-change window starts at or "
            "after the change; TPR = post-change windows where an expected detector alerted."
        ),
        "",
        markdown_table(
            [
                "scenario",
                "expected detectors",
                "replays",
                "TPR (post-change windows)",
                "first post-change window alerted",
                "first-alert delay (median, events)",
                "alerts before the change",
            ],
            rows,
        ),
        "",
        (
            "The first post-change window of every replay (events, hours of event time it "
            "spans, the detectors that alerted on it):"
        ),
        "",
        markdown_table(
            ["scenario", "seed", "alerted", "events", "hours", "detectors"],
            [
                [
                    c["scenario"],
                    f["seed"],
                    "yes" if f["first_post_change_window_alerted"] else "**no**",
                    fmt_int(f["first_post_change_window_events"])
                    if f["first_post_change_window_events"] is not None
                    else "-",
                    f"{f['first_post_change_window_hours']:.1f}"
                    if f["first_post_change_window_hours"] is not None
                    else "-",
                    ", ".join(f["detectors_alerted"]) or "-",
                ]
                for c in cells
                for f in c["first_post_change_window_by_seed"]
            ],
        ),
        "",
        (
            "Label-free estimate (`kubeloop.drift.estimate`): realized NE - estimated NE, mean "
            "(largest absolute, windows), on labelled windows of 10,000 events (the estimate "
            "on the very rows the labels score) and on serving windows (realized NE from the "
            "replay's clicks; a 2,000-event window's realized NE is itself noisy). Under "
            "concept drift the scores stay calibrated to the old world, so the estimate "
            "cannot see the loss rise: that is where it fails, and why the labelled "
            "performance check stays."
        ),
        "",
        markdown_table(
            [
                "scenario",
                "labelled, before",
                "labelled, after",
                "serving, before",
                "serving, after",
            ],
            est_rows,
        ),
    ]


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

    from kubeloop.demo import DemoConfig, replay_impressions, run_demo
    from kubeloop.demo.drift import start_drift_service, stop_process
    from kubeloop.registry import open_registry
    from kubeloop.serving.local_servers import LocalStack
    from kubeloop.serving.replay import request_body
    from kubeloop.workdir import Workdir
    from usecases.ctr.generator import GeneratorConfig

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
    p.add_argument("--seeds", type=int, default=None, help="baseline seeds of part 2 (0..N-1)")
    p.add_argument(
        "--power-seeds",
        type=int,
        default=None,
        help=f"seeds per scenario, part 3 ({POWER_SEED0}..)",
    )
    p.add_argument(
        "--power-seed0",
        type=int,
        default=POWER_SEED0,
        help=f"first seed of part 3 (default {POWER_SEED0}: never tuned on)",
    )
    p.add_argument("--scenarios", default=",".join(SCENARIOS), help="scenarios of part 3")
    p.add_argument(
        "--windows",
        type=int,
        default=DEFAULT_WINDOW,
        help="events per serving window in parts 2-3 (or the time limits, whichever first)",
    )
    p.add_argument("--cost-windows", type=int, default=None, help="windows timed in part 1")
    p.add_argument("--cost-reps", type=int, default=3)
    p.add_argument(
        "--profile",
        type=Path,
        default=None,
        help=(
            "part 1: also run one monitor pass under cProfile and dump its stats here "
            "(e.g. --parts 1 --cost-reps 1 --profile /tmp/drift.prof for a quick look)"
        ),
    )
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
    p.add_argument(
        "--parts",
        default="123",
        help=(
            "which parts to run, e.g. 13; part 4 (serving with the drift service on vs off) "
            "is not in the default run: bench/serving_bench.py measures it, with its peers"
        ),
    )
    args = p.parse_args(argv)
    defaults = (
        {
            "events": 80_000,
            "seeds": 2,
            "power_seeds": 1,
            "cost_windows": 5,
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
    sections: list[tuple[str, list[str]]] = []
    done: list[str] = []

    def save(final: bool = False) -> None:
        """Write the JSON and the markdown of the parts done so far: a run cut short (the
        timeout, Ctrl-C) leaves every finished part on disk, and says which."""
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
        write_json(
            args.json,
            {
                "conditions": cond,
                "parts": args.parts,
                "parts_done": "".join(sorted(done)),
                "finished": final,
                "summary": figures,
            },
        )
        log(f"wrote {args.json}")
        # The sections are rendered from the replays in memory; the JSON holds their headline
        # figures (what the README renders) and the run's conditions.
        header[2:3] = [f"Headline figures and conditions: {args.json.name}.", "", header[2]]
        text = "\n".join(header + [line for _, s in sorted(sections) for line in [*s, ""]])
        if final:
            print(text)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
        log(f"report written to {args.out}")

    with tempfile.TemporaryDirectory(prefix="kubeloop-driftbench-", dir=args.tmp_dir) as tmp:
        root = Path(tmp)
        seeds = list(range(args.seeds))
        first = None
        if "1" in args.parts:  # part 2 replays this world too (seed 0)
            log(f"building baseline world seed 0 ({args.events:,} events)")
            first = build_world("baseline", 0, args.events, root, args.lgb_threads)
            log(f"built in {sum(first.build_seconds.values()):.1f}s: {first.build_seconds}")
        if "1" in args.parts:
            log(f"part 1: {args.cost_windows} windows x {args.cost_reps} reps")
            cost = part_cost(first, args.cost_windows, args.cost_reps, root, args.profile)
            sections.append(("1", report_cost(cost, figures)))
            done.append("1")
            save()
        # Parts 2 and 3 share one pool of workers; part 3's worlds go first, so both
        # headline figures land early in a run cut short.
        power_seeds = list(range(args.power_seed0, args.power_seed0 + args.power_seeds))

        def job(scenario: str, seed: int) -> dict[str, Any]:
            return {
                "root": str(root),
                "scenario": scenario,
                "seed": seed,
                "events": args.events,
                "lgb_threads": args.lgb_threads,
                "window": args.windows,
            }

        scenarios = [sc for sc in SCENARIOS if sc in args.scenarios.split(",")]
        jobs3 = [job(sc, s) for sc in scenarios for s in power_seeds] if "3" in args.parts else []
        results2: list[dict[str, Any]] = []
        if "2" in args.parts and first is not None:  # seed 0 is built already (part 1)
            t = time.perf_counter()
            replay = replay_world(
                first,
                monitor_config(args.windows, hour_limit=True),
                root / "state-baseline-0",
                str(args.windows),
            )
            results2.append(
                {
                    "scenario": "baseline",
                    "seed": 0,
                    "build": first.build_seconds,
                    "build_wall": sum(first.build_seconds.values()),
                    "impressions": len(first.instances),
                    "reference_days": first.reference_days,
                    "replay": replay,
                }
            )
            log(f"part 2: seed 0 replayed in {time.perf_counter() - t:.1f}s")
        first = None
        jobs2 = (
            [job("baseline", seed) for seed in seeds[len(results2) :]] if "2" in args.parts else []
        )
        t = time.perf_counter()
        results3: list[dict[str, Any]] = []
        for result in iter_jobs(jobs3 + jobs2, args.workers, "parts 3 and 2"):
            if len(results3) < len(jobs3):
                results3.append(result)
                if len(results3) == len(jobs3):
                    lines = report_power(results3, args.events, power_seeds, args.windows, figures)
                    lines.append(f"\nPart 3 took {time.perf_counter() - t:.0f}s.")
                    sections.append(("3", lines))
                    done.append("3")
                    save()
            else:
                results2.append(result)
        if "2" in args.parts:
            config = monitor_config(args.windows, hour_limit=True)
            lines = report_false_alarms(results2, args.events, config, figures)
            lines.append(
                f"\nParts 2 and 3 took {time.perf_counter() - t:.0f}s together "
                f"({args.workers} worker process(es))."
            )
            sections.append(("2", lines))
            done.append("2")
            save()
        first = None
        if "4" in args.parts:
            t = time.perf_counter()
            lines = report_serving(part_serving(args, root), args, figures)
            lines.append(f"\nPart 4 took {time.perf_counter() - t:.0f}s.")
            sections.append(("4", lines))
            done.append("4")
    save(final=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
