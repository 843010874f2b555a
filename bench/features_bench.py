"""Benchmark of the feature path: lake generation, ETL, and Feast online lookups.

    .venv/bin/python bench/features_bench.py                 # 1M and 10M events (minutes)
    .venv/bin/python bench/features_bench.py --quick         # 100k and 300k: a smoke run
    .venv/bin/python bench/features_bench.py --sizes 2000000 --out /tmp/bench.md
    .venv/bin/python bench/features_bench.py --engine both   # DuckDB and Spark local[2]

Part 1: for each size, `generate_lake` and then `build_features` each run in a fresh
spawned interpreter, which reads its own peak RSS (getrusage ru_maxrss) at its end, so the
memory figure belongs to that stage alone. Seconds are measured around the library call
(interpreter start and imports excluded). With `--engine spark|both` the build also runs
on Spark in local mode (the same SQL, compiled by SQLGlot): its seconds include starting the
JVM, and its peak memory is sampled (every 0.1 s) over the process and its children, the
JVM being a child process that ru_maxrss of this one does not see. The report ends with a
sizing note for 1B events a day, from the measured Spark events/s per core.

Part 2: in one more fresh process, a Feast repository (SQLite online store) is applied and
materialized from the features of one size (1M events by default), and online lookups of
the `ctr_model` feature service are timed for 1 and for 100 entity rows. Each iteration
draws random (user_id, ad_id) rows and times, on the same rows and in a rotating order,
the transformer's lookup (`OnlineReader.read`: Feast's online-store read per feature view,
resolved once, plus the request-time state views and features, no DataFrame), kubeloop's
DataFrame wrapper `online_features`, the direct `FeatureStore.get_online_features` call,
and the direct call plus `.to_df()`; so machine noise hits all four alike.

Everything is written under one temporary directory, removed at the end (also on error,
Ctrl-C or SIGTERM). The markdown goes to stdout and to --out.
"""

from __future__ import annotations

# Only the standard library and the bench helpers at module level: spawned children
# import this module again, and their peak RSS should carry only what their stage needs.
import argparse
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Self

from _util import (
    RunClock,
    add_output_arguments,
    conditions_lines,
    exit_on_sigterm,
    fmt_int,
    fmt_ratio,
    log,
    markdown_table,
    measure_or_load,
    peak_rss_mib,
    percentile,
    publish,
    run_fresh,
)

DEFAULT_SIZES = [1_000_000, 10_000_000]
QUICK_SIZES = [100_000, 300_000]
DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "features_bench.md"
DEFAULT_JSON = DEFAULT_OUT.with_suffix(".json")
PACKAGES = ["duckdb", "pyspark", "sqlglot", "feast", "pyarrow", "pandas", "numpy"]
ENGINES = {"duckdb": ["duckdb"], "spark": ["spark"], "both": ["duckdb", "spark"]}
# The sizing note's assumptions: a nightly window, events a day, cores per executor.
SIZING_EVENTS = 1_000_000_000
SIZING_WINDOW_HOURS = 2
SIZING_EXECUTOR_CORES = 4

# Users and ads grow with the event count past the generator's defaults (4,000 users,
# 600 ads, sized for ~300k events), so that events per entity stay realistic:
# 10M events -> 20,000 users and 1,000 ads.
EVENTS_PER_USER = 500
EVENTS_PER_AD = 10_000

SEED = 20260105


# --- child-process stages ---------------------------------------------------------------
# Each returns a plain dict; `rss_imports_mib` is the peak RSS once the stage's modules
# are imported (the floor), `peak_rss_mib` the peak at the end of the stage.


def stage_generate(events: int, users: int, ads: int, lake: str) -> dict:
    from usecases.ctr.generator import GeneratorConfig, generate_lake

    rss_imports = peak_rss_mib()
    config = GeneratorConfig(events=events, users=users, ads=ads)
    started = time.perf_counter()
    summary = generate_lake(config, lake, progress=False)
    seconds = time.perf_counter() - started
    return {
        "seconds": seconds,
        "events": summary.events,
        "detail": f"{summary.partitions} day partitions",
        "rss_imports_mib": rss_imports,
        "peak_rss_mib": peak_rss_mib(),
    }


class TreeRssSampler:
    """Peak RSS of this process plus its children (Spark's JVM), sampled in a thread."""

    def __init__(self, interval: float = 0.1) -> None:
        import threading

        self.interval = interval
        self.peak_mib = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        import psutil

        me = psutil.Process()
        while not self._stop.is_set():
            total = 0
            for proc in [me, *me.children(recursive=True)]:
                try:
                    total += proc.memory_info().rss
                except psutil.Error:
                    pass
            self.peak_mib = max(self.peak_mib, total / (1024 * 1024))
            self._stop.wait(self.interval)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def stage_build(lake: str, out: str, engine: str = "duckdb") -> dict:
    from kubeloop.features.build import FeatureBuildConfig, build_features

    rss_imports = peak_rss_mib()
    config = FeatureBuildConfig(engine=engine)
    session, jvm_seconds = None, 0.0
    with TreeRssSampler() as sampler:
        if engine == "spark":
            # Started apart and timed apart: a cluster job pays it once, whatever the size,
            # so the per-core rate of the sizing note leaves it out.
            from kubeloop.features.spark_job import session_builder

            started = time.perf_counter()
            session = session_builder(config.spark).getOrCreate()
            session.sparkContext.setLogLevel("ERROR")
            jvm_seconds = time.perf_counter() - started
        started = time.perf_counter()
        summary = build_features(lake, Path(out), config, progress=False)
        seconds = time.perf_counter() - started
        if session is not None:
            session.stop()
    record = {
        "seconds": seconds,
        "events": summary.events,
        "detail": f"{summary.rows['user']:,} user rows, {summary.rows['ad']:,} ad rows",
        "rss_imports_mib": rss_imports,
        "peak_rss_mib": peak_rss_mib() if engine == "duckdb" else sampler.peak_mib,
        "engine": engine,
    }
    if engine == "duckdb":
        return {**record, "threads": config.threads, "memory_limit": config.memory_limit}
    cores = int(config.spark.master.removeprefix("local[").removesuffix("]"))
    return {**record, "master": config.spark.master, "cores": cores, "jvm_seconds": jvm_seconds}


def stage_lookup(features: str, repo: str, iters_1: int, iters_100: int, warmup: int) -> dict:
    import gc
    import warnings

    import pyarrow.parquet as pq

    from kubeloop.features.materialize import materialize
    from kubeloop.features.online import OnlineReader, online_features
    from kubeloop.features.store import (
        FeatureStoreSettings,
        apply_definitions,
        open_store,
        write_repo,
    )
    from usecases.ctr import schema

    warnings.simplefilter("ignore")  # Feast's deprecation chatter, once per call site
    # Full (generation 2) garbage collections stop the process for tens of ms once Feast,
    # pandas and protobuf objects are loaded; they stay on, as in a server, but each timed
    # call records whether one ran inside it so the tail can be read.
    full_gcs = [0]
    gc.callbacks.append(
        lambda phase, info: (
            full_gcs.__setitem__(0, full_gcs[0] + 1)
            if phase == "start" and info["generation"] == 2
            else None
        )
    )
    write_repo(repo, FeatureStoreSettings(), features)
    store = open_store(repo)
    apply_definitions(store, features)
    summary = materialize(store, progress=False)
    service = store.get_feature_service(schema.FEATURE_SERVICE)

    def ids(file: str, key: str) -> list[int]:
        column = pq.read_table(Path(features) / file, columns=[key]).column(key)
        return sorted(set(column.to_pylist()))

    users = ids(schema.USER_FEATURES_FILE, "user_id")
    ads = ids(schema.AD_FEATURES_FILE, "ad_id")
    rng = random.Random(SEED)

    def draw(n: int) -> list[dict]:
        return [{"user_id": rng.choice(users), "ad_id": rng.choice(ads)} for _ in range(n)]

    reader = OnlineReader(store)  # resolved once, as the transformer holds it
    calls = {
        "reader": reader.read,
        "wrapper": lambda rows: online_features(store, rows),
        "direct": lambda rows: store.get_online_features(features=service, entity_rows=rows),
        "direct_df": lambda rows: store.get_online_features(
            features=service, entity_rows=rows
        ).to_df(),
    }
    names = list(calls)

    # Same rows, same answer: the wrapper is a faithful view of the direct call.
    rows = draw(5)
    got = calls["wrapper"]([dict(r) for r in rows])
    want = calls["direct_df"]([dict(r) for r in rows])
    # The request-time features are kubeloop's own (no Feast peer): the columns in common.
    for column in want.columns.intersection(got.columns):
        if got[column].astype(object).tolist() != want[column].astype(object).tolist():
            raise AssertionError(f"wrapper and direct lookups differ in column {column!r}")
    if got[want.columns.intersection(got.columns)].isna().any().any():
        raise AssertionError("materialized entities came back with null features")
    read = calls["reader"]([dict(r) for r in rows])
    for column in want.columns:
        if column in read and read[column] != want[column].astype(object).tolist():
            raise AssertionError(f"OnlineReader and direct lookups differ in column {column!r}")

    results = {}
    for n_rows, iters in ((1, iters_1), (100, iters_100)):
        timings: dict[str, list[float]] = {name: [] for name in names}
        gc_hits = dict.fromkeys(names, 0)
        for i in range(warmup + iters):
            rows = draw(n_rows)
            # Rotate the order so that no call is always first (cold caches) or last.
            order = names[i % len(names) :] + names[: i % len(names)]
            for name in order:
                arg = [dict(r) for r in rows]  # a fresh copy each: no call sees another's
                collections = full_gcs[0]
                started = time.perf_counter_ns()
                calls[name](arg)
                elapsed_ms = (time.perf_counter_ns() - started) / 1e6
                if i >= warmup:
                    timings[name].append(elapsed_ms)
                    gc_hits[name] += full_gcs[0] > collections
        results[n_rows] = {
            name: {
                "iterations": len(values),
                "p50": percentile(values, 50),
                "p99": percentile(values, 99),
                "max": max(values),
                "full_gc_calls": gc_hits[name],
            }
            for name, values in timings.items()
        }
    return {
        "latency": results,
        "users_online": summary.entities["user"],
        "ads_online": summary.entities["ad"],
        "materialize_seconds": summary.seconds,
        "online_store": summary.online_store,
        "peak_rss_mib": peak_rss_mib(),
    }


# --- orchestration ----------------------------------------------------------------------


def population(events: int) -> tuple[int, int]:
    """(users, ads) for a lake of `events`: the generator's defaults, scaled up past them."""
    from usecases.ctr.generator import GeneratorConfig

    fields = GeneratorConfig.model_fields
    users = max(fields["users"].default, events // EVENTS_PER_USER)
    ads = max(fields["ads"].default, events // EVENTS_PER_AD)
    return users, ads


def run_throughput(
    sizes: list[int], lookup_size: int, tmp: Path, engines: list[str] = ENGINES["duckdb"]
) -> tuple[list[dict], Path]:
    """Generate and build every size; return one record per (size, stage) and the
    features directory of `lookup_size` (the others are deleted as soon as built)."""
    records = []
    lookup_features = None
    for events in sizes:
        users, ads = population(events)
        root = tmp / f"events-{events}"
        lake, features = root / "lake", root / "features"
        log(f"generate {events:,} events ({users:,} users, {ads:,} ads)")
        gen = run_fresh(stage_generate, events, users, ads, str(lake))
        log(f"  {gen['seconds']:.1f}s, peak RSS {gen['peak_rss_mib']:.0f} MiB")
        stages = [("generate", gen)]
        for engine in engines:
            log(f"build_features on {events:,} events, engine {engine}")
            # DuckDB's tables are the ones Feast is given; Spark's are identical (parity tests).
            out = features if engine == "duckdb" or "duckdb" not in engines else root / engine
            etl = run_fresh(stage_build, str(lake), str(out), engine)
            log(f"  {etl['seconds']:.1f}s, peak RSS {etl['peak_rss_mib']:.0f} MiB")
            stages.append(("ETL" if engine == "duckdb" else f"ETL {engine}", etl))
        shutil.rmtree(lake)
        for stage, record in stages:
            records.append({"size": events, "users": users, "ads": ads, "stage": stage, **record})
        if events == lookup_size:
            lookup_features = features
        else:
            shutil.rmtree(root)
    assert lookup_features is not None
    return records, lookup_features


STAGE_LABELS = {
    "generate": "generate_lake",
    "ETL": "build_features",
    "ETL spark": "build_features (spark)",
}


def _stage_ratio(gen: dict, build: dict, size: int) -> str:
    """One ratio line: build_features's events/s and peak RSS over generate_lake's."""
    speed = fmt_ratio(gen["seconds"] / build["seconds"])
    memory = fmt_ratio(build["peak_rss_mib"] / gen["peak_rss_mib"])
    return f"- {size:,} events: build_features / generate_lake events/s {speed}, peak RSS {memory}"


def throughput_section(records: list[dict]) -> list[str]:
    spark_records = [r for r in records if r["stage"] == "ETL spark"]
    records = [r for r in records if r["stage"] != "ETL spark"]
    etl = next(r for r in records if r["stage"] == "ETL")
    header = [
        "events",
        "users / ads",
        "stage",
        "seconds",
        "events/s",
        "peak RSS (MiB)",
        "RSS after imports (MiB)",
        "output",
    ]
    rows = [
        [
            fmt_int(r["size"]),
            f"{r['users']:,} / {r['ads']:,}",
            "generate_lake" if r["stage"] == "generate" else "build_features",
            f"{r['seconds']:.1f}",
            fmt_int(r["events"] / r["seconds"]),
            fmt_int(r["peak_rss_mib"]),
            fmt_int(r["rss_imports_mib"]),
            r["detail"],
        ]
        for r in records
    ]
    lines = [
        "### Throughput and peak memory",
        "",
        (
            "Each (size, stage) ran in its own fresh process; peak RSS is that process's "
            "ru_maxrss at the end of the stage, imports included (their floor is the "
            "'after imports' column). Seconds are the library call alone. GeneratorConfig "
            "defaults except events, users and ads (baseline scenario, 14 days, seed 7, "
            f"chunk_size 500k); FeatureBuildConfig defaults (DuckDB threads {etl['threads']}, "
            f"memory_limit {etl['memory_limit']})."
        ),
        "",
        markdown_table(header, rows, align="rrlrrrrl"),
        "",
    ]
    sizes = sorted({r["size"] for r in records})
    by = {(r["size"], r["stage"]): r for r in records}
    # build_features against generate_lake at each size, then each stage against itself
    # at the smallest size.
    ratios = [_stage_ratio(by[(size, "generate")], by[(size, "ETL")], size) for size in sizes]
    small = sizes[0]
    for size in sizes[1:]:
        for stage, label in (("generate", "generate_lake"), ("ETL", "build_features")):
            a, b = by[(small, stage)], by[(size, stage)]
            ratios.append(
                f"- {label}, {size:,} vs {small:,} events ({size / small:g}x the events): "
                f"events/s {fmt_ratio(a['seconds'] / b['seconds'] * size / small)}, "
                f"peak RSS {fmt_ratio(b['peak_rss_mib'] / a['peak_rss_mib'])}"
            )
    return [*lines, "Ratios:", "", *ratios, "", *engines_section(records, spark_records)]


def spark_sizing(spark_records: list[dict]) -> dict:
    """The sizing note's figures, from the largest Spark run: events/s per core, and the
    cores, executors and memory 1B events a day need within the nightly window."""
    import math

    r = max(spark_records, key=lambda r: r["size"])
    per_core = r["events"] / r["seconds"] / r["cores"]
    cores = math.ceil(SIZING_EVENTS / (per_core * SIZING_WINDOW_HOURS * 3600))
    executors = math.ceil(cores / SIZING_EXECUTOR_CORES)
    mib_per_core = r["peak_rss_mib"] / r["cores"]
    return {
        "size": r["size"],
        "per_core": per_core,
        "cores": cores,
        "executors": executors,
        "executor_cores": SIZING_EXECUTOR_CORES,
        "executor_memory_gib": math.ceil(mib_per_core * SIZING_EXECUTOR_CORES / 1024),
        "events_per_day": SIZING_EVENTS,
        "window_hours": SIZING_WINDOW_HOURS,
    }


def sizing_line(s: dict) -> str:
    """The sizing note, one paragraph (also rendered into the README)."""
    return (
        f"Sizing, on paper: Spark local built {s['per_core']:,.0f} events/s per core at "
        f"{s['size']:,} events (JVM start excluded). {s['events_per_day'] / 1e9:g}B events a "
        f"day within a {s['window_hours']}-hour nightly window need {s['cores']} cores: "
        f"{s['executors']} executors of {s['executor_cores']} cores and about "
        f"{s['executor_memory_gib']} GiB each (the local run's peak memory per core), "
        "assuming the rate per core holds when the shuffle crosses the network."
    )


def engines_section(records: list[dict], spark_records: list[dict]) -> list[str]:
    if not spark_records:
        return []
    duck = {r["size"]: r for r in records if r["stage"] == "ETL"}
    header = ["events", "engine", "seconds", "events/s", "events/s per core", "peak RSS (MiB)",
              "JVM start (s)"]
    rows = []
    for r in spark_records:
        d = duck.get(r["size"])
        if d is not None:
            rows.append(
                [fmt_int(d["size"]), f"DuckDB, {d['threads']} threads", f"{d['seconds']:.1f}",
                 fmt_int(d["events"] / d["seconds"]),
                 fmt_int(d["events"] / d["seconds"] / d["threads"]), fmt_int(d["peak_rss_mib"]),
                 "-"]
            )
        rows.append(
            [fmt_int(r["size"]), f"Spark {r['master']}", f"{r['seconds']:.1f}",
             fmt_int(r["events"] / r["seconds"]),
             fmt_int(r["events"] / r["seconds"] / r["cores"]), fmt_int(r["peak_rss_mib"]),
             f"{r['jvm_seconds']:.1f}"]
        )
    return [
        "### DuckDB and Spark (local mode)",
        "",
        (
            "The same feature SQL on both engines (Spark's compiled from DuckDB's by SQLGlot; "
            "the parity tests show identical tables). Spark's seconds exclude starting the "
            "JVM (timed apart: 'JVM start'); its peak RSS is the process and its JVM "
            "together, sampled every 0.1 s."
        ),
        "",
        markdown_table(header, rows, align="rlrrrrr"),
        "",
        sizing_line(spark_sizing(spark_records)),
        "",
    ]


def latency_section(lookup: dict, lookup_size: int) -> list[str]:
    labels = {
        "reader": "kubeloop `OnlineReader.read` (the transformer's lookup)",
        "wrapper": "kubeloop `online_features` (DataFrame wrapper)",
        "direct": "`store.get_online_features(features=service)`",
        "direct_df": "direct + `.to_df()`",
    }
    header = [
        "entity rows",
        "call",
        "iterations",
        "p50 (ms)",
        "p99 (ms)",
        "p50 vs direct",
        "p99 vs direct",
        "max (ms)",
        "calls with a full GC",
    ]
    rows = []
    for n_rows, by_call in lookup["latency"].items():
        base = by_call["direct"]
        for name, label in labels.items():
            if name not in by_call:  # a JSON from before the reader was measured
                continue
            r = by_call[name]
            rows.append(
                [
                    str(n_rows),
                    label,
                    str(r["iterations"]),
                    f"{r['p50']:.2f}",
                    f"{r['p99']:.2f}",
                    fmt_ratio(r["p50"] / base["p50"]),
                    fmt_ratio(r["p99"] / base["p99"]),
                    f"{r['max']:.1f}",
                    str(r["full_gc_calls"]),
                ]
            )
    headline = [
        f"- {n} entity row{'s' if int(n) > 1 else ''}: the transformer's lookup "
        f"(`OnlineReader.read`) / direct = "
        f"{fmt_ratio(c['reader']['p50'] / c['direct']['p50'])} at p50, "
        f"{fmt_ratio(c['reader']['p99'] / c['direct']['p99'])} at p99"
        for n, c in lookup["latency"].items()
        if "reader" in c
    ] + [
        f"- {n} entity row{'s' if int(n) > 1 else ''}: wrapper / direct = "
        f"{fmt_ratio(c['wrapper']['p50'] / c['direct']['p50'])} at p50, "
        f"{fmt_ratio(c['wrapper']['p99'] / c['direct']['p99'])} at p99; "
        f"wrapper / (direct + to_df) = "
        f"{fmt_ratio(c['wrapper']['p50'] / c['direct_df']['p50'])} at p50"
        for n, c in lookup["latency"].items()
    ]
    return [
        "### Feast online lookup latency",
        "",
        (
            f"Online store {lookup['online_store']}, materialized from the {lookup_size:,}-event "
            f"features ({lookup['users_online']:,} users, {lookup['ads_online']:,} ads; "
            f"materialize took {lookup['materialize_seconds']:.1f}s). Feature service "
            "`ctr_model` (all user and ad features). Random (user_id, ad_id) rows of known "
            "entities; the calls share each iteration's rows and alternate their order; "
            "warmup iterations are dropped. The garbage collector stays on, as in a server; "
            "'calls with a full GC' counts timed calls during which a generation-2 collection "
            "ran (each a pause of tens of ms), which is what usually sets p99 and max."
        ),
        "",
        markdown_table(header, rows, align="rlrrrrrrr"),
        "",
        *headline,
        "",
    ]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--sizes",
        type=int,
        nargs="+",
        default=None,
        metavar="EVENTS",
        help=f"lake sizes in events (default: {' '.join(map(str, DEFAULT_SIZES))})",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"smoke run: sizes {' '.join(map(str, QUICK_SIZES))}, lookups on the smallest",
    )
    parser.add_argument(
        "--lookup-size",
        type=int,
        default=None,
        metavar="EVENTS",
        help="size whose features are materialized for the lookups "
        "(default: 1000000 if among --sizes, else the smallest)",
    )
    parser.add_argument(
        "--engine",
        choices=sorted(ENGINES),
        default="duckdb",
        help="who runs the feature build: duckdb (default), spark (local[2]) or both",
    )
    parser.add_argument(
        "--iters-1", type=int, default=300, help="timed lookups of 1 entity row (default 300)"
    )
    parser.add_argument(
        "--iters-100", type=int, default=150, help="timed lookups of 100 entity rows (default 150)"
    )
    parser.add_argument(
        "--warmup", type=int, default=20, help="untimed lookups before each series (default 20)"
    )
    add_output_arguments(parser, DEFAULT_JSON, DEFAULT_OUT)
    args = parser.parse_args(argv)
    if args.quick and args.sizes:
        parser.error("--quick and --sizes are exclusive")
    args.sizes = sorted(set(QUICK_SIZES if args.quick else args.sizes or DEFAULT_SIZES))
    if args.lookup_size is None:
        args.lookup_size = 1_000_000 if 1_000_000 in args.sizes else args.sizes[0]
    if args.lookup_size not in args.sizes:
        parser.error(f"--lookup-size {args.lookup_size} is not one of --sizes {args.sizes}")
    if min(args.iters_1, args.iters_100) < 1 or args.warmup < 0:
        parser.error("iterations must be positive and warmup non-negative")
    return args


def run_mode(args: argparse.Namespace) -> str:
    """full (the default sizes), quick, or reduced (other sizes), as the JSON records it."""
    if args.quick:
        return "quick"
    return "full" if args.sizes == sorted(DEFAULT_SIZES) else "reduced"


def render(doc: dict) -> str:
    """The markdown report, rendered from the bench's JSON alone."""
    data = doc["data"]
    return "\n".join(
        [
            "## Feature path benchmark (bench/features_bench.py)",
            "",
            *conditions_lines(doc["conditions"]),
            "",
            *throughput_section(data["records"]),
            *latency_section(data["lookup"], data["lookup_size"]),
        ]
    )


def measure(args: argparse.Namespace) -> dict:
    """Run both parts; returns the JSON document (conditions + data)."""
    clock = RunClock()
    with tempfile.TemporaryDirectory(prefix="kubeloop-bench-", dir=args.tmp_dir) as tmp:
        tmp = Path(tmp)
        records, features = run_throughput(
            args.sizes, args.lookup_size, tmp, ENGINES[getattr(args, "engine", "duckdb")]
        )
        log(f"Feast apply + materialize + lookups on the {args.lookup_size:,}-event features")
        lookup = run_fresh(
            stage_lookup,
            str(features),
            str(tmp / "feature_repo"),
            args.iters_1,
            args.iters_100,
            args.warmup,
        )
    cond = clock.conditions("features", run_mode(args), PACKAGES)
    data = {"records": records, "lookup": lookup, "lookup_size": args.lookup_size}
    spark_records = [r for r in records if r["stage"] == "ETL spark"]
    if spark_records:
        data["sizing"] = spark_sizing(spark_records)
    return {"conditions": cond, "data": data}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    exit_on_sigterm()
    publish(render(measure_or_load(args, measure)), args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
