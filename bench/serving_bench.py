"""Benchmark of the online path: the KServe predictor against BentoML and a bare
kserve.Model serving the same booster, and the cost of the canary router and of the
transformer's Feast lookup.

    .venv/bin/python bench/serving_bench.py                  # 100k events, 1000/300 requests a cell
    .venv/bin/python bench/serving_bench.py --quick          # a smoke run
    .venv/bin/python bench/serving_bench.py --rounds 8 --concurrency 8 --out /tmp/s.md

Prepared once, untimed: a lake (`generate_lake`), features, a Feast repo with a
materialized SQLite online store and a training set (`run_features`), a LightGBM model
(`train_step`), registered (`open_registry(...).register`) and exported
(`registry.export`) as the predictor's model directory. Request rows are impressions of
the training set's last day; their "joined" form (what the transformer sends the
predictor) is built in this process with the transformer's own functions
(`online_features` + `join_online_features`) on the same Feast repo.

Servers, each a real process on loopback with one worker, and what each receives:
  predictor          `python -m models.predictor` (KServe) on the exported directory; gets
                     v1 instances of the joined rows (what the transformer sends it: every
                     model input column by name, nulls included), validates them, applies
                     the model's feature transform and scores with the compiled trees. Its
                     v1/v2 inference requests take kubeloop's inference route (the dataplane
                     calls of KServe's endpoints without FastAPI's router; see
                     kubeloop/serving/model_server.py V2RoutingMiddleware)
  bentoml            `bentoml serve _bentoml_service:BenchCTR`: model.txt + transform.json,
                     same body, same transform, Booster.predict (bench/_bentoml_service.py)
  bare kserve.Model  bench/_bare_kserve.py: Booster.predict on the pre-transformed matrix
                     posted as v1 instances of numbers (no validation, no transform)
  null kserve.Model  bench/_bare_kserve.py --zeros: 0.0 per instance of the joined rows,
                     no model: the most req/s any kserve.Model gets from this client
  proxy, proxy_httpx a raw ASGI app under uvicorn forwarding to the predictor
                     (`--serve-proxy pool|httpx`): the floor of a Python hop, against
                     which the router's added CPU is read
  router             kubeloop's CanaryRouter (primary only, canary percent 0) under uvicorn
                     in its own process, in front of the same predictor; once with the
                     request log (SQLite, as LocalStack runs it), once without
  transformer        `python -m models.transformer` (Feast SQLite online lookup), its
                     predictor host the predictor directly; and a second one whose
                     predictor host is the router with the request log (the local stack)
  predictor (as shipped)  the predictor again, without OMP_NUM_THREADS (see below)
  predictor, 2 workers    the predictor again with KServe's --workers 2
  naive              bench/_naive_kserve.py: one kserve.Model whose predict calls Feast's
                     get_online_features and Booster.predict (the service a user writes
                     first), on the same Feast repo and booster, client bodies
  stack (no log)     transformer -> router without the request log -> predictor

The predictor serves the export's compiled trees (lleaves, built by the export); their
largest difference to Booster.predict on 10k rows is recorded in the setup. Section 4 of
the report holds issue 14's ratios.

OpenMP: LightGBM's Booster.predict runs an OpenMP team of one thread per core unless told
otherwise. On a shared machine the team's barrier waits for a descheduled thread (seen
here: ~8 ms for a 1-row predict that takes 30 us with one thread), which swamps every
other cost. So every server runs with OMP_NUM_THREADS=--omp-threads (default 1), the same
for all; the extra "as shipped" predictor leaves it unset, to show what it costs.

One client for everything (`--client`): kubeloop's KeepAlivePool by default (raw asyncio
HTTP/1.1 keep-alive; httpx.AsyncClient with `--client httpx`, which costs several times
the CPU per request, taken from the servers on this 2-core machine), closed loop at fixed
concurrency, bodies encoded before timing, one connection pool per target. Every cell
(target x rows per request) gets a warmup, then its requests in --rounds slices; each
round visits every cell, in an order that rotates by round, so machine noise falls on all
alike. Each cell-slice starts with a few untimed requests (reopening keep-alive
connections the server closed while idle). Before timing, every target's answer to the same rows is checked equal to
`TrainedModel.predict_proba` in this process.

Also measured per cell: CPU time of each server's processes (from /proc), of this client,
and of the rest of the machine. Then, servers stopped, a fresh process times the steps of
one request's work (JSON decode, validation, DataFrame, transform, booster, Feast lookup).

Everything runs under one temporary directory, removed at the end; every server process
is stopped at the end, also on error, Ctrl-C or SIGTERM. The markdown goes to stdout and
to --out; progress to stderr.
"""

from __future__ import annotations

# Only the standard library and the bench helpers at module level: `--serve-router` runs
# this file as the router's process, and the breakdown's fresh process imports it again.
import argparse
import asyncio
import atexit
import contextlib
import gc
import json
import os
import resource
import signal
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# The bench's run plumbing by module (timing, publishing); its table helpers by name.
import _util
from _util import fmt_int, fmt_ratio, log, markdown_table, percentile

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
DEFAULT_OUT = BENCH_DIR / "results" / "serving_bench.md"
DEFAULT_JSON = DEFAULT_OUT.with_suffix(".json")
PARTIAL_OUT = DEFAULT_OUT.with_name("serving_bench.cells.md")
PARTIAL_JSON = PARTIAL_OUT.with_suffix(".json")
DEFAULT_EVENTS = 100_000
QUICK_EVENTS = 50_000
PACKAGES = ["kserve", "bentoml", "lightgbm", "feast", "httpx", "uvicorn", "fastapi", "pandas"]
MODEL_NAME = "ctr"
SIZES = (1, 64)
POOL_ROWS = 1024  # distinct request rows; bodies cycle over them
HOST = "127.0.0.1"
READY_TIMEOUT = 240.0
STOP_GRACE = 10.0
JSON_HEADERS = {"content-type": "application/json"}
CHECK_TOLERANCE = 1e-12
OMP_ENV = "OMP_NUM_THREADS"
CLIENT_NAMES = {
    "pool": "kubeloop's KeepAlivePool (raw asyncio HTTP/1.1 keep-alive, prebuilt bodies)",
    "httpx": "httpx.AsyncClient",
}


# --- CPU accounting ---------------------------------------------------------------------


def own_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def process_trees(leaders: dict[str, int], table=None) -> dict[str, set[int]]:
    """The live processes of each server: those in its leader's process group plus every
    descendant of the leader (BentoML starts its worker in a session of its own)."""
    table = _util.process_table() if table is None else table
    children: dict[int, list[int]] = {}
    for pid, (ppid, _, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    out = {}
    for name, leader in leaders.items():
        found = {pid for pid, (_, pgrp, _) in table.items() if pgrp == leader}
        stack = [leader]
        while stack:
            pid = stack.pop()
            if pid in table:
                found.add(pid)
                stack.extend(children.get(pid, ()))
        out[name] = found
    return out


def servers_cpu_s(leaders: dict[str, int]) -> dict[str, float]:
    """CPU seconds so far of each server's live processes (see `process_trees`), in
    nanoseconds from their threads' schedstat (`_util.pids_cpu_s`)."""
    return {name: _util.pids_cpu_s(pids) for name, pids in process_trees(leaders).items()}


# --- servers ----------------------------------------------------------------------------


@dataclass
class Target:
    """One endpoint the client measures: a URL, the servers on its path (for CPU
    accounting), and which body kind it takes."""

    key: str
    label: str
    url: str
    servers: list[str]
    body_kind: str  # "joined" | "matrix" | "client"


class Servers:
    """The bench's server processes. `stop()` ends all of them and everything they
    started, whatever happened; it is also registered with atexit."""

    def __init__(self, log_dir: Path, env: dict[str, str]):
        self.log_dir = log_dir
        self.env = env
        self.procs: dict[str, Any] = {}  # name -> kubeloop.serving.processes.ServerProcess
        self._stopped = False
        atexit.register(self.stop)

    def start(
        self, name: str, args: list[str], port: int, health: str, env: dict | None = None
    ) -> None:
        from kubeloop.serving.processes import ServerProcess

        server = ServerProcess(name, args, port, self.log_dir / f"{name}.log", health_path=health)
        self.procs[name] = server
        server_env = {**self.env, **(env or {})}
        server.start({k: v for k, v in server_env.items() if v is not None}, REPO_ROOT)

    def wait(self) -> None:
        from kubeloop.serving.processes import wait_ready

        wait_ready(list(self.procs.values()), READY_TIMEOUT)

    def leaders(self) -> dict[str, int]:
        return {n: s.pid for n, s in self.procs.items() if s.pid is not None}

    def check_alive(self) -> None:
        for server in self.procs.values():
            if not server.alive():
                raise server.died_error()

    def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        with contextlib.suppress(Exception):
            atexit.unregister(self.stop)
        running = [s for s in self.procs.values() if s.process is not None]
        # Everything each server started, found before the leaders go (BentoML's worker
        # lives in a process group of its own).
        members = set().union(*process_trees(self.leaders()).values()) if running else set()
        for server in running:
            server.signal_group(signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE
        for server in running:
            with contextlib.suppress(Exception):
                server.process.wait(max(0.0, deadline - time.monotonic()))
        for server in running:
            server.signal_group(signal.SIGKILL)
            with contextlib.suppress(Exception):
                server.process.wait(5)
        leftovers = members & set(_util.process_table())
        for pid in leftovers:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        if leftovers:
            log(f"killed {len(leftovers)} leftover server processes")


# Every measured target, in report order (its servers: `target_servers`).
TARGET_KEYS = (
    "predictor", "bentoml", "bare", "null", "predictor_omp", "predictor_w2", "router",
    "router_nolog", "proxy", "proxy_httpx", "transformer", "stack", "stack_nolog", "naive",
)  # fmt: skip
# The servers on each target's path (the first one answers the client); the CPU of each
# is the target's server CPU.
TARGET_SERVERS: dict[str, tuple[str, ...]] = {
    "router": ("router", "predictor"),
    "router_nolog": ("router_nolog", "predictor"),
    "proxy": ("proxy", "predictor"),
    "proxy_httpx": ("proxy_httpx", "predictor"),
    "transformer": ("transformer", "predictor"),
    "stack": ("stack", "router", "predictor"),
    "stack_nolog": ("stack_nolog", "router_nolog", "predictor"),
}


def target_servers(key: str) -> tuple[str, ...]:
    """The servers a target needs running (see TARGET_SERVERS; one of its own else)."""
    return TARGET_SERVERS.get(key, (key,))


def select_cells(text: str | None) -> tuple[str, ...]:
    """The targets of `--cells` (comma-separated keys of TARGET_KEYS), in report order,
    the predictor always among them (every ratio of the report is to it); every target
    when `text` is None."""
    if text is None:
        return TARGET_KEYS
    asked = {key.strip() for key in text.split(",") if key.strip()}
    unknown = sorted(asked - set(TARGET_KEYS))
    if unknown:
        raise ValueError(f"--cells: unknown {unknown}; choose among {', '.join(TARGET_KEYS)}")
    return tuple(key for key in TARGET_KEYS if key in asked or key == "predictor")


def start_servers(
    servers: Servers, prepared: dict, root: Path, keys: tuple[str, ...] = TARGET_KEYS
) -> dict[str, Target]:
    """Start the servers of the targets `keys` (all by default), wait until they are
    ready; returns those targets."""
    from kubeloop.serving.local_servers import DEFAULT_SERVER_ARGS
    from kubeloop.serving.processes import free_ports
    from kubeloop.serving.rollout import RolloutState, save_state

    python = sys.executable
    export = str(prepared["export_dir"])
    names = ["predictor", "predictor_omp", "predictor_w2", "bare", "bentoml", "router"]
    names += ["router_nolog", "null", "proxy", "proxy_httpx"]
    names += ["transformer", "stack", "stack_nolog", "naive"]
    port = dict(zip(names, free_ports(len(names)), strict=True))
    kserve_args = list(DEFAULT_SERVER_ARGS)
    predict_path = f"/v1/models/{MODEL_NAME}:predict"
    wanted = {name for key in keys for name in target_servers(key)}

    for name, env in (("predictor", None), ("predictor_omp", {OMP_ENV: None})):
        if name not in wanted:
            continue
        servers.start(
            name,
            [python, "-m", "models.predictor", "--model_name", MODEL_NAME, "--model_dir", export,
             "--http_port", str(port[name]), *kserve_args],
            port[name], "/v2/health/ready", env,
        )  # fmt: skip
    if "predictor_w2" in wanted:
        servers.start(
            "predictor_w2",
            [python, "-m", "models.predictor", "--model_name", MODEL_NAME, "--model_dir", export,
             "--http_port", str(port["predictor_w2"]), "--workers", "2", *kserve_args],
            port["predictor_w2"], "/v2/health/ready",
        )  # fmt: skip
    for name, flags in (("bare", []), ("null", ["--zeros"])):
        if name not in wanted:
            continue
        servers.start(
            name,
            [python, str(BENCH_DIR / "_bare_kserve.py"), "--model_name", MODEL_NAME, *flags,
             "--model_dir", export, "--http_port", str(port[name]), *kserve_args],
            port[name], "/v2/health/ready",
        )  # fmt: skip
    if "bentoml" in wanted:
        servers.start(
            "bentoml",
            [str(Path(python).with_name("bentoml")), "serve", "_bentoml_service:BenchCTR",
             "--working-dir", str(BENCH_DIR), "--host", HOST, "--port", str(port["bentoml"])],
            port["bentoml"], "/readyz",
            {
                "KUBELOOP_BENCH_MODEL_DIR": export,
                "BENTOML_HOME": str(root / "bentoml_home"),
                "BENTOML_DO_NOT_TRACK": "True",
            },
        )  # fmt: skip
    if "naive" in wanted:
        servers.start(
            "naive",
            [python, str(BENCH_DIR / "_naive_kserve.py"), "--model_name", MODEL_NAME,
             "--model_dir", export, "--feature_repo", str(prepared["feature_repo"]),
             "--http_port", str(port["naive"]), *kserve_args],
            port["naive"], "/v2/health/ready",
        )  # fmt: skip
    state_path = root / "rollout.json"
    save_state(RolloutState(model_name=MODEL_NAME, primary_version=prepared["version"]), state_path)
    backend = f"{prepared['version']}=http://{HOST}:{port['predictor']}"
    for name, request_log in (("router", root / "requests.sqlite"), ("router_nolog", None)):
        if name not in wanted:
            continue
        args = [python, str(Path(__file__).resolve()), "--serve-router", "--port", str(port[name]),
                "--state", str(state_path), "--backend", backend]  # fmt: skip
        if request_log is not None:
            args += ["--request-log", str(request_log)]
        servers.start(name, args, port[name], "/v2/health/ready")
    for name, client in (("proxy", "pool"), ("proxy_httpx", "httpx")):
        if name not in wanted:
            continue
        servers.start(
            name,
            [python, str(Path(__file__).resolve()), "--serve-proxy", client, "--port",
             str(port[name]), "--backend", f"http://{HOST}:{port['predictor']}"],
            port[name], "/v2/health/ready",
        )  # fmt: skip
    for name, upstream in (
        ("transformer", "predictor"),
        ("stack", "router"),
        ("stack_nolog", "router_nolog"),
    ):
        if name not in wanted:
            continue
        servers.start(
            name,
            [python, "-m", "models.transformer", "--model_name", MODEL_NAME,
             "--predictor_host", f"{HOST}:{port[upstream]}",
             "--feature_repo", str(prepared["feature_repo"]), "--http_port", str(port[name]),
             *kserve_args],
            port[name], "/v2/health/ready",
        )  # fmt: skip
    log(f"waiting for {len(servers.procs)} servers (logs in {servers.log_dir})")
    servers.wait()

    def url(name: str, path: str = predict_path) -> str:
        return f"http://{HOST}:{port[name]}{path}"

    # key -> label, body kind, path on its first server (the v1 predict route by default).
    described = {
        "predictor": ("kubeloop predictor (KServe)", "joined", None),
        "bentoml": ("BentoML service", "joined", "/predict"),
        "bare": ("bare kserve.Model (floor)", "matrix", None),
        "null": ("null kserve.Model (answers 0.0; no model: the ceiling)", "joined", None),
        "predictor_omp": ("kubeloop predictor, OpenMP threads unset (as shipped)", "joined", None),
        "predictor_w2": ("kubeloop predictor, --workers 2", "joined", None),
        "router": ("router (request log on) -> predictor", "joined", None),
        "router_nolog": ("router (no request log) -> predictor", "joined", None),
        "proxy": ("bare uvicorn proxy hop (KeepAlivePool) -> predictor", "joined", None),
        "proxy_httpx": ("bare uvicorn proxy hop (httpx) -> predictor", "joined", None),
        "transformer": ("transformer -> predictor", "client", None),
        "stack": ("transformer -> router (log) -> predictor", "client", None),
        "stack_nolog": ("transformer -> router (no log) -> predictor", "client", None),
        "naive": (
            "naive one-process service (Feast get_online_features + Booster)",
            "client",
            None,
        ),
    }
    targets = [
        Target(key, label, url(key, path or predict_path), list(target_servers(key)), kind)
        for key in keys
        for label, kind, path in [described[key]]
    ]
    return {t.key: t for t in targets}


# --- the router's own process (--serve-router) -----------------------------------------


def serve_router(args: argparse.Namespace) -> int:
    """Run kubeloop's CanaryRouter under uvicorn with the settings LocalStack uses (there it
    runs in a thread of the otherwise idle `kubeloop serve` process)."""
    import uvicorn

    from kubeloop.serving.request_log.logger import CloudEventLogger
    from kubeloop.serving.request_log.sinks import SQLiteRequestLog
    from kubeloop.serving.router import CanaryRouter
    from kubeloop.serving.router_http import router_server_config

    backends = dict(b.split("=", 1) for b in args.backend)
    request_log = None
    if args.request_log:
        request_log = CloudEventLogger(
            SQLiteRequestLog(args.request_log),
            inference_service=MODEL_NAME,
            source=f"http://localhost:{args.port}/predictor",
        )
    router = CanaryRouter(args.state, backends, request_log=request_log, seed=0)
    config = router_server_config(router.app, host=HOST, port=args.port)
    try:
        uvicorn.Server(config).run()
    finally:
        if request_log is not None:
            request_log.close()
    return 0


def serve_proxy(args: argparse.Namespace) -> int:
    """The floor of a Python hop: a raw ASGI app under uvicorn (the router's settings)
    that forwards each POST body to the predictor and answers what it answered; GETs go
    through too (the readiness probe). No routing table, no edge checks, no request ids,
    no log. `--serve-proxy pool` forwards with kubeloop's KeepAlivePool (the router's
    client), `--serve-proxy httpx` with an httpx.AsyncClient (what one writes first)."""
    import uvicorn

    from kubeloop.serving.http_client import KeepAlivePool, pooled_async_client

    backend = args.backend[0]
    pool = KeepAlivePool(backend, max_connections=64) if args.serve_proxy == "pool" else None
    client = pooled_async_client(timeout=30.0, max_connections=64) if pool is None else None

    async def app(scope, receive, send) -> None:
        if scope["type"] != "http":
            return
        chunks = []
        while True:
            message = await receive()
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        body = b"".join(chunks)
        target = scope["path"]
        headers = [("content-type", "application/json")]
        if pool is not None:
            status, raw, content = await pool.request(scope["method"], target, headers, body)
            kind = next((v for k, v in raw if k == b"content-type"), b"application/json")
        else:
            answer = await client.request(
                scope["method"], backend + target, content=body, headers=headers
            )
            status, content = answer.status_code, answer.content
            kind = answer.headers.get("content-type", "application/json").encode()
        out = [(b"content-type", kind), (b"content-length", str(len(content)).encode())]
        await send({"type": "http.response.start", "status": status, "headers": out})
        await send({"type": "http.response.body", "body": content})

    config = uvicorn.Config(
        app, host=HOST, port=args.port, log_level="warning", access_log=False,
        log_config=None, lifespan="off", timeout_keep_alive=30,
    )  # fmt: skip
    uvicorn.Server(config).run()
    return 0


# --- preparation ------------------------------------------------------------------------


def prepare(events: int, root: Path) -> dict:
    """Lake -> features + Feast repo -> LightGBM -> registry -> export; request rows."""
    import numpy as np
    import pandas as pd

    from kubeloop.features.online import online_features
    from kubeloop.features.pipeline_config import FeaturesStepConfig
    from kubeloop.pipeline.steps import run_features, train_step
    from kubeloop.registry import open_registry
    from kubeloop.training.artifacts import load_model
    from kubeloop.training.transform import model_input_columns
    from models.transformer import join_online_features, open_feature_store
    from usecases.ctr import schema
    from usecases.ctr.generator import GeneratorConfig, generate_lake

    started = time.perf_counter()
    log(f"generate_lake: {events:,} events")
    lake = root / "lake"
    generate_lake(GeneratorConfig(events=events), str(lake), progress=False)
    log("run_features (ETL, Feast apply + materialize, training set)")
    training_set = root / "training_set.parquet"
    feature_repo = root / "feature_repo"
    run_features(
        str(lake), root / "features", feature_repo, training_set, FeaturesStepConfig(progress=False)
    )
    log("train_step lightgbm; register; export")
    model_dir = root / "model"
    trained = train_step("lightgbm", str(training_set), "{}", str(model_dir))
    frame = pd.read_parquet(training_set)
    ts = pd.to_datetime(frame["event_timestamp"], utc=True)
    registry = open_registry(root / "registry")
    record = registry.register(
        MODEL_NAME,
        model_dir,
        {
            "model_kind": "lightgbm",
            "gate": {"passed": True, "reasons": ["serving benchmark"]},
            "feature_service": schema.FEATURE_SERVICE,
            "features": model_input_columns(),
            "training_window": {"start": ts.min(), "end": ts.max() + pd.Timedelta(seconds=1)},
            "data_scenario": "baseline",
            "code_version": "serving-bench",
        },
    )
    export_dir = root / "export" / record.version
    registry.export(MODEL_NAME, record.version, export_dir)

    # Request rows: impressions of the last day, as a client would send them.
    client_cols = ["user_id", "ad_id", *schema.CONTEXT_NUMERIC, *schema.CONTEXT_CATEGORICAL]
    last = frame[ts >= ts.max().normalize()]
    sample = last.sample(n=POOL_ROWS, random_state=11, replace=len(last) < POOL_ROWS)
    client_rows = [
        {c: (str(v) if c in schema.CONTEXT_CATEGORICAL else int(v)) for c, v in row.items()}
        for row in sample[client_cols].to_dict("records")
    ]
    store = open_feature_store(feature_repo)
    joined_rows = join_online_features(client_rows, online_features(store, client_rows))
    model = load_model(export_dir)
    joined_frame = pd.DataFrame.from_records(joined_rows, columns=model_input_columns())
    matrix = model.transform.transform(joined_frame).matrix()
    if not np.isfinite(matrix).all():
        raise RuntimeError("the transformed matrix holds non-finite values")
    # The export's compiled trees (lleaves) against Booster.predict on 10k rows drawn
    # around the request rows (NaN and unseen codes included).
    from models.lightgbm_compiled import load_compiled

    compiled = load_compiled(export_dir)
    parity = None
    if compiled is not None:
        rng = np.random.default_rng(0)
        probe = matrix[rng.integers(0, len(matrix), 10_000)].copy()
        n_num = len(model.info.numeric_features)
        probe[:, :n_num] += rng.normal(0, 0.5, size=(len(probe), n_num))
        probe[rng.random(probe.shape) < 0.05] = np.nan
        want = model.booster.predict(probe, num_iteration=model.info.best_iteration)
        parity = float(np.max(np.abs(compiled.predict(probe) - want)))
    return {
        "feature_repo": feature_repo,
        "export_dir": export_dir,
        "version": record.version,
        "best_iteration": trained["best_iteration"],
        "n_features": matrix.shape[1],
        "training_rows": len(frame),
        "client_rows": client_rows,
        "joined_rows": joined_rows,
        "matrix_rows": matrix.tolist(),
        "expected": [float(p) for p in model.predict_proba(joined_frame)],
        "cold_users": sum(1 for r in joined_rows if r[schema.USER_FEATURES[0]] is None),
        "cold_ads": sum(1 for r in joined_rows if r[schema.AD_FEATURES[0]] is None),
        "seconds": time.perf_counter() - started,
        "compiled_trees": compiled is not None,
        "compiled_max_abs_diff": parity,
    }


def encode_bodies(prepared: dict) -> dict[tuple[str, int], list[bytes]]:
    """(body kind, rows per request) -> JSON bodies over consecutive pool rows."""
    pools = {
        "joined": prepared["joined_rows"],
        "matrix": prepared["matrix_rows"],
        "client": prepared["client_rows"],
    }
    return {
        (kind, size): [
            json.dumps({"instances": pool[i : i + size]}).encode()
            for i in range(0, len(pool) - size + 1, size)
        ]
        for kind, pool in pools.items()
        for size in SIZES
    }


# --- the client -------------------------------------------------------------------------


@dataclass
class Cell:
    target: Target
    size: int
    bodies: list[bytes]
    total: int
    latencies: list[float] = field(default_factory=list)
    wall_s: float = 0.0
    next_body: int = 0
    server_cpu: dict[str, float] = field(default_factory=dict)
    client_cpu_s: float = 0.0
    others_core_s: float = 0.0
    round_rps: list[float] = field(default_factory=list)

    @property
    def key(self) -> str:
        return f"{self.target.key}/{self.size}"


class _Answer:
    """One answer of `PoolClient`, with the httpx attributes the bench reads."""

    __slots__ = ("content", "status_code")

    def __init__(self, status_code: int, content: bytes):
        self.status_code = status_code
        self.content = content

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", "replace")

    def json(self) -> Any:
        return json.loads(self.content)


class PoolClient:
    """The bench's light client (`--client pool`, the default): prebuilt bodies over
    kubeloop's `KeepAlivePool` (raw asyncio HTTP/1.1 keep-alive, httptools parsing), one
    pool per target, the same for every server. httpx spends 1.4-1.8 ms of client CPU per
    request here, more than most servers; on 2 shared cores that CPU is taken from the
    servers, so req/s then reads the client as much as the server."""

    def __init__(self, url: str, concurrency: int):
        from urllib.parse import urlsplit

        from kubeloop.serving.http_client import KeepAlivePool

        parts = urlsplit(url)
        self.url = url
        self.target = parts.path
        self.pool = KeepAlivePool(
            f"{parts.scheme}://{parts.netloc}", max_connections=concurrency, timeout=120.0
        )
        self._headers = list(JSON_HEADERS.items())

    async def post(self, url: str, *, content: bytes, headers: Any = None) -> _Answer:
        if url != self.url:
            raise ValueError(f"this client posts to {self.url}, not {url}")
        status, _, body = await self.pool.request("POST", self.target, self._headers, content)
        return _Answer(status, body)

    async def aclose(self) -> None:
        await self.pool.aclose()


def make_clients(targets: dict[str, Target], kind: str, concurrency: int) -> dict[str, Any]:
    """One client per target: `PoolClient`s, or httpx.AsyncClients (`--client httpx`)."""
    if kind == "pool":
        return {key: PoolClient(t.url, concurrency) for key, t in targets.items()}
    import httpx

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    return {key: httpx.AsyncClient(limits=limits, timeout=120.0) for key in targets}


async def closed_loop(client, cell: Cell, n: int, concurrency: int) -> list[float]:
    """`n` requests to `cell` from `concurrency` workers, each sending its next request as
    soon as its previous answer is in; returns each request's latency (seconds)."""
    latencies: list[float] = []
    issued = 0
    url = cell.target.url

    async def worker() -> None:
        nonlocal issued
        while issued < n:
            issued += 1
            body = cell.bodies[cell.next_body % len(cell.bodies)]
            cell.next_body += 1
            started = time.perf_counter()
            response = await client.post(url, content=body, headers=JSON_HEADERS)
            elapsed = time.perf_counter() - started
            if response.status_code != 200:
                raise RuntimeError(
                    f"{cell.key}: HTTP {response.status_code}: {response.text[:500]}"
                )
            latencies.append(elapsed)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies


async def check_answers(clients: dict, cells: list[Cell], expected: list[float]) -> None:
    """Every target must answer the pool's first rows with the in-process probabilities."""
    for cell in cells:
        response = await clients[cell.target.key].post(
            cell.target.url, content=cell.bodies[0], headers=JSON_HEADERS
        )
        if response.status_code != 200:
            raise RuntimeError(f"{cell.key}: HTTP {response.status_code}: {response.text[:500]}")
        got, want = response.json()["predictions"], expected[: cell.size]
        if cell.target.key == "null":  # no model: one 0.0 per instance
            want = [0.0] * cell.size
        if len(got) != len(want) or any(
            abs(a - b) > CHECK_TOLERANCE for a, b in zip(got, want, strict=True)
        ):
            raise RuntimeError(f"{cell.key}: answered {got[:4]}..., expected {want[:4]}...")


def slices(total: int, rounds: int) -> list[int]:
    base, extra = divmod(total, rounds)
    return [base + (1 if r < extra else 0) for r in range(rounds)]


async def measure(
    targets: dict[str, Target],
    servers: Servers,
    prepared: dict,
    requests: dict[int, int],
    rounds: int,
    warmup: int,
    concurrency: int,
    client_kind: str = "pool",
) -> list[Cell]:
    bodies = encode_bodies(prepared)
    cells = [
        Cell(t, size, bodies[t.body_kind, size], requests[size])
        for size in SIZES
        for t in targets.values()
    ]
    clients = make_clients(targets, client_kind, concurrency)
    leaders = servers.leaders()
    try:
        await check_answers(clients, cells, prepared["expected"])
        log(f"answers checked; warmup: {warmup} requests per cell")
        for cell in cells:
            await closed_loop(clients[cell.target.key], cell, warmup, concurrency)
        gc.collect()
        gc.freeze()  # the client's setup objects: no full collection walks them again
        plan = {cell.key: slices(cell.total, rounds) for cell in cells}
        for r in range(rounds):
            shift = (r * len(cells)) // rounds
            for cell in cells[shift:] + cells[:shift]:
                n = plan[cell.key][r]
                if n == 0:
                    continue
                client = clients[cell.target.key]
                # Reopen what the server closed while idle; untimed.
                await closed_loop(client, cell, concurrency, concurrency)
                cpu0, own0, busy0 = servers_cpu_s(leaders), own_cpu_s(), _util.machine_busy_s()
                started = time.perf_counter()
                latencies = await closed_loop(client, cell, n, concurrency)
                wall = time.perf_counter() - started
                cpu1, own1, busy1 = servers_cpu_s(leaders), own_cpu_s(), _util.machine_busy_s()
                cell.latencies += latencies
                cell.wall_s += wall
                cell.round_rps.append(n / wall)
                ours = own1 - own0
                cell.client_cpu_s += ours
                for name, value in cpu1.items():
                    delta = max(0.0, value - cpu0.get(name, 0.0))
                    cell.server_cpu[name] = cell.server_cpu.get(name, 0.0) + delta
                    ours += delta
                cell.others_core_s += max(0.0, (busy1 - busy0) - ours)
            servers.check_alive()
            done = {c.key: c for c in cells}
            log(
                f"round {r + 1}/{rounds} done; 1-row req/s so far: "
                + ", ".join(
                    f"{k} {len(done[k + '/1'].latencies) / done[k + '/1'].wall_s:.0f}"
                    for k in ("predictor", "bentoml", "bare")
                    if k + "/1" in done
                )
            )
    finally:
        gc.unfreeze()
        for client in clients.values():
            await client.aclose()
    return cells


# --- in-process breakdown (a fresh process) ---------------------------------------------


def time_call(fn, args_list: list, reps: int) -> float:
    """Median CPU seconds (all threads of this process) of `fn(*args)` over `reps` calls
    cycling through `args_list`. CPU, not wall time: on a shared machine it moves much
    less with other load, and it is what the servers' figures are."""
    times = []
    for i in range(reps):
        args = args_list[i % len(args_list)]
        started = time.process_time()
        fn(*args)
        times.append(time.process_time() - started)
    return statistics.median(times)


def breakdown(prepared: dict, reps: dict[int, int], cores: int) -> dict[int, dict[str, float]]:
    """Median CPU seconds of each step of one request's work, by rows per request. Runs in
    a fresh process whose OMP_NUM_THREADS is the servers'."""
    import numpy as np
    import orjson
    import pandas as pd

    from kubeloop.features.online import OnlineReader, online_features
    from kubeloop.serving.protocol import (
        CLIENT_FIELDS,
        MODEL_FIELDS,
        parse_columns,
        parse_request,
    )
    from kubeloop.training.artifacts import load_model
    from kubeloop.usecase import resolve_use_case
    from models.predictor import CTRPredictor
    from models.transformer import join_online_features, open_feature_store

    sys.path.insert(0, str(BENCH_DIR))
    from _bare_kserve import BareLightGBM

    model = load_model(prepared["export_dir"])
    # As the server loads it: the compiled trees of the export when they load here.
    predictor = CTRPredictor(MODEL_NAME, prepared["export_dir"])
    predictor.load()
    served = predictor.model
    reader = OnlineReader(open_feature_store(prepared["feature_repo"]))
    bare = BareLightGBM(MODEL_NAME, prepared["export_dir"])
    bare.load()
    store = open_feature_store(prepared["feature_repo"])
    booster, best = model.booster, model.info.best_iteration
    columns = MODEL_FIELDS.names
    use_case = resolve_use_case(None)
    service = store.get_feature_service(use_case.feature_service)

    def direct_lookup(feast_store, entity_rows):
        """Feast's own call, as its docs show it (the feature service resolved once)."""
        keys = use_case.join_keys
        return feast_store.get_online_features(
            features=service,
            entity_rows=[{k: row[k] for k in keys} for row in entity_rows],
            full_feature_names=False,
        ).to_dict()

    bodies = encode_bodies(prepared)
    out: dict[int, dict[str, float]] = {}
    matrices_by_size = {}
    for size in SIZES:
        joined = [(b,) for b in bodies["joined", size]]
        payloads = [(orjson.loads(b),) for (b,) in joined]
        rows = [(parse_request(p, MODEL_FIELDS).rows,) for (p,) in payloads]
        frames = [(pd.DataFrame.from_records(r, columns=columns),) for (r,) in rows]
        batches = [(model.transform.transform(f),) for (f,) in frames]
        matrices = [(b.matrix(),) for (b,) in batches]
        matrices_by_size[size] = matrices
        scores = [(booster.predict(m, num_iteration=best),) for (m,) in matrices]
        matrix_bodies = [(b,) for b in bodies["matrix", size]]
        matrix_payloads = [(orjson.loads(b),) for (b,) in matrix_bodies]
        client_payloads = [(orjson.loads(b),) for b in bodies["client", size]]
        client_rows = [(parse_request(p, CLIENT_FIELDS).rows,) for (p,) in client_payloads]
        online = [(r, online_features(store, r)) for (r,) in client_rows]
        # The predictor's request plan, its memo of category codes filled by a first
        # sight of every body (as a warm server's is).
        for (payload,) in payloads:
            predictor.predict(payload)
        plan = predictor._plan
        parsed = [(parse_columns(p, MODEL_FIELDS),) for (p,) in payloads]
        steps = {
            "json decode (orjson), joined rows": (orjson.loads, joined),
            "validate: parse_request(MODEL_FIELDS)": (
                lambda p: parse_request(p, MODEL_FIELDS),
                payloads,
            ),
            "validate by column: parse_columns(MODEL_FIELDS) (the predictor's)": (
                lambda p: parse_columns(p, MODEL_FIELDS),
                payloads,
            ),
            "DataFrame.from_records": (
                lambda r: pd.DataFrame.from_records(r, columns=columns),
                rows,
            ),
            # A fresh frame each call: transforming the same frame again would hit
            # pandas' column cache and look cheaper than it is.
            "DataFrame.from_records + FeatureTransform.transform": (
                lambda r: model.transform.transform(pd.DataFrame.from_records(r, columns=columns)),
                rows,
            ),
            "FeatureTransform.transform_columns (the serving fast path)": (
                lambda r: model.transform.transform_columns(
                    {c: [row[c] for row in r] for c in columns}, len(r)
                ),
                rows,
            ),
            "RequestPlan.transform (the predictor's transform of validated columns)": (
                lambda q, transform=plan.transform: transform(q.columns, q.n, q.numbers),
                parsed,
            ),
            "TransformedBatch.matrix": (lambda b: b.matrix(), batches),
            "Booster.predict": (lambda m: booster.predict(m, num_iteration=best), matrices),
            "served model predict_batch (compiled trees when loaded)": (
                served.predict_batch,
                batches,
            ),
            "floats to list": (lambda s: [float(p) for p in np.asarray(s)], scores),
            "CTRPredictor.predict (all of the above but decode)": (predictor.predict, payloads),
            "json decode (orjson), matrix rows": (orjson.loads, matrix_bodies),
            "BareLightGBM.predict": (bare.predict, matrix_payloads),
            "transformer: parse_request(CLIENT_FIELDS)": (
                lambda p: parse_request(p, CLIENT_FIELDS),
                client_payloads,
            ),
            "transformer: online_features (Feast SQLite)": (
                lambda r: online_features(store, r),
                client_rows,
            ),
            "transformer: join_online_features": (join_online_features, online),
            "transformer: OnlineReader.read (Feast online-store read)": (
                reader.read,
                client_rows,
            ),
            "Feast get_online_features direct (feature service, to_dict)": (
                lambda r: direct_lookup(store, r),
                client_rows,
            ),
        }
        out[size] = {}
        for name, (fn, args_list) in steps.items():
            time_call(fn, args_list, max(5, reps[size] // 10))  # warm
            out[size][name] = time_call(fn, args_list, reps[size])
    # Last: an explicit num_threads changes LightGBM's OpenMP setting for later calls.
    for size in SIZES:
        name = f"Booster.predict, num_threads={cores} (OpenMP's default here)"

        def threaded(m):
            return booster.predict(m, num_iteration=best, num_threads=cores)

        time_call(threaded, matrices_by_size[size], max(5, reps[size] // 10))
        out[size][name] = time_call(threaded, matrices_by_size[size], reps[size])
    return out


# --- report -----------------------------------------------------------------------------


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.2f}"


def us(seconds: float) -> str:
    return f"{seconds * 1e6:,.0f}"


def stats(cell: Cell) -> dict[str, float]:
    n = len(cell.latencies)
    return {
        "n": n,
        "rps": n / cell.wall_s,
        "p50": percentile(cell.latencies, 50),
        "p99": percentile(cell.latencies, 99),
        "server_cpu": sum(cell.server_cpu.get(s, 0.0) for s in cell.target.servers) / n,
        "client_cpu": cell.client_cpu_s / n,
        "others": cell.others_core_s / cell.wall_s,
        "rps_min": min(cell.round_rps),
        "rps_max": max(cell.round_rps),
    }


def cell_record(cell: Cell) -> dict[str, Any]:
    """What the JSON keeps of one measured cell: its figures, not its raw latencies."""
    return {
        "label": cell.target.label,
        "size": cell.size,
        "servers": list(cell.target.servers),
        "stats": stats(cell),
        "server_cpu": dict(cell.server_cpu),
    }


def faster_word(ratio: float) -> str:
    if ratio > 1.05:
        return "faster"
    if ratio < 1 / 1.05:
        return "slower"
    return "about as fast"


def peers_section(cells: dict[str, dict]) -> list[str]:
    rows, sentences = [], []
    for size in SIZES:
        base = cells[f"predictor/{size}"]["stats"]
        for key in ("predictor", "bentoml", "bare", "null", "predictor_omp"):
            if f"{key}/{size}" not in cells:  # a run from before that peer
                continue
            cell = cells[f"{key}/{size}"]
            s = cell["stats"]
            rows.append(
                [cell["label"], size, fmt_int(s["n"]),
                 f"{s['rps']:,.0f} ({s['rps_min']:,.0f}–{s['rps_max']:,.0f})", ms(s["p50"]),
                 ms(s["p99"]), ms(s["server_cpu"]), fmt_ratio(s["rps"] / base["rps"]),
                 fmt_ratio(s["p50"] / base["p50"]), fmt_ratio(s["p99"] / base["p99"]),
                 f"{s['others']:.2f}"]
            )  # fmt: skip
            if key != "predictor":
                ratio = s["rps"] / base["rps"]
                sentences.append(
                    f"- {size}-row requests: {cell['label']} serves {fmt_ratio(ratio)} the "
                    f"predictor's requests/s ({faster_word(ratio)} than the predictor); p50 "
                    f"{fmt_ratio(s['p50'] / base['p50'])}, server CPU per request "
                    f"{fmt_ratio(s['server_cpu'] / base['server_cpu'])} the predictor's."
                )
    header = [
        "server", "rows/req", "requests", "req/s (round min–max)", "p50 ms", "p99 ms",
        "server CPU ms/req", "req/s vs predictor", "p50 vs predictor", "p99 vs predictor",
        "other load (cores)",
    ]  # fmt: skip
    return [
        "### 1. The predictor against its peers (same booster, same client)",
        "",
        markdown_table(header, rows),
        "",
        (
            "Ratios are to the kubeloop predictor on the same rows per request. req/s above "
            "1x: the peer is faster; latency above 1x: the peer is slower. *server CPU* is "
            "the CPU time of the server's processes per request; *other load* the cores the "
            "rest of the machine (not the client, not the servers) kept busy meanwhile."
        ),
        "",
        *sentences,
        "",
    ]


def overhead_section(
    cells: dict[str, dict], title: str, keys: list[str], hop_servers: dict[str, list[str]]
) -> list[str]:
    rows = []
    for size in SIZES:
        base_cell = cells[f"predictor/{size}"]
        base = base_cell["stats"]
        rows.append(
            [base_cell["label"] + ", direct", size, ms(base["p50"]), ms(base["p99"]),
             "1.00x", "1.00x", "–", "–", f"{base['rps']:,.0f}", ms(base["server_cpu"])]
        )  # fmt: skip
        for key in keys:
            cell = cells[f"{key}/{size}"]
            s = cell["stats"]
            hop = sum(cell["server_cpu"].get(n, 0.0) for n in hop_servers[key]) / s["n"]
            rows.append(
                [cell["label"], size, ms(s["p50"]), ms(s["p99"]),
                 fmt_ratio(s["p50"] / base["p50"]), fmt_ratio(s["p99"] / base["p99"]),
                 ms(s["p50"] - base["p50"]), ms(hop), f"{s['rps']:,.0f}", ms(s["server_cpu"])]
            )  # fmt: skip
    header = [
        "path", "rows/req", "p50 ms", "p99 ms", "p50 ratio", "p99 ratio", "added p50 ms",
        "added hop CPU ms/req", "req/s", "CPU ms/req, all servers on the path",
    ]  # fmt: skip
    return [title, "", markdown_table(header, rows), ""]


def breakdown_section(steps: dict[str, dict[str, float]], cells: dict[str, dict]) -> list[str]:
    # JSON object keys are strings: the steps are keyed by str(rows per request).
    names = list(steps[str(SIZES[0])])
    rows = [[name, *(us(steps[str(size)][name]) for size in SIZES)] for name in names]
    lines = [
        "### 4. Where one request's time goes (in-process, servers stopped)",
        "",
        (
            "Median CPU µs per call (all threads) in a fresh process with the servers' "
            "OMP_NUM_THREADS, on the same bodies. A server's CPU per request (section 1) minus its `predict()` is "
            "what the serving framework costs per request (uvicorn, FastAPI or BentoML's "
            "app, JSON both ways, KServe's DataPlane, per-request log lines, metrics)."
        ),
        "",
        markdown_table(["step", *(f"{s} row{'s' if s > 1 else ''}" for s in SIZES)], rows),
        "",
    ]
    for size in SIZES:
        step = steps[str(size)]
        pred = cells[f"predictor/{size}"]["stats"]["server_cpu"]
        bare = cells[f"bare/{size}"]["stats"]["server_cpu"]
        bento = cells[f"bentoml/{size}"]["stats"]["server_cpu"]
        p_call = step["CTRPredictor.predict (all of the above but decode)"]
        b_call = step["BareLightGBM.predict"]
        frame_s = step["DataFrame.from_records"]
        frame_transform_s = step["DataFrame.from_records + FeatureTransform.transform"]
        model_work = frame_transform_s + step["TransformedBatch.matrix"] + step["Booster.predict"]
        by_column = "validate by column: parse_columns(MODEL_FIELDS) (the predictor's)"
        validation = step.get(by_column, step["validate: parse_request(MODEL_FIELDS)"])
        fast = "FeatureTransform.transform_columns (the serving fast path)"
        planned = "RequestPlan.transform (the predictor's transform of validated columns)"
        transform = step.get(planned, step.get(fast, frame_transform_s - frame_s))
        served = "served model predict_batch (compiled trees when loaded)"
        lines.append(
            f"- {size} row{'s' if size > 1 else ''}: predictor {ms(pred)} ms CPU/req = "
            f"predict() {ms(p_call)} (validation {ms(validation)}, transform "
            f"{ms(transform)}, model {ms(step.get(served, step['Booster.predict']))}) "
            f"+ {ms(pred - p_call)} outside predict(); bare kserve.Model {ms(bare)} = predict() "
            f"{ms(b_call)} + {ms(bare - b_call)} outside; BentoML {ms(bento)} = DataFrame + "
            f"transform + booster {ms(model_work)} + {ms(bento - model_work)} outside."
        )
    lines.append("")
    return lines


def render(doc: dict) -> str:
    """The markdown report, rendered from the bench's JSON alone."""
    if doc["setup"].get("cells") is not None:
        return render_partial(doc)
    setup, cells, steps = doc["setup"], doc["cells"], doc["breakdown"]
    client_cpu = {size: cells[f"predictor/{size}"]["stats"]["client_cpu"] for size in SIZES}
    text = [
        "## Serving benchmark (bench/serving_bench.py)",
        "",
        *_util.conditions_lines(doc["conditions"]),
        (
            f"- preparation (not timed, {setup['prepare_seconds']:.0f}s): "
            f"{setup['events']:,}-event lake, "
            f"{setup['training_rows']:,} training rows, LightGBM with "
            f"{setup['best_iteration']} trees over {setup['n_features']} transformed "
            f"features, registered and exported as {setup['version']}; "
            f"{setup['request_rows']:,} request rows from the last day "
            f"({setup['cold_users']} with a user and {setup['cold_ads']} with an ad the "
            "online store does not hold)"
        ),
        (
            f"- client: {CLIENT_NAMES[setup.get('client', 'httpx')]}, closed loop, "
            f"concurrency {setup['concurrency']}, the same for every server; per "
            f"cell {setup['requests_1']:,} requests of 1 row or {setup['requests_64']:,} of 64 "
            f"rows, in {setup['rounds']} interleaved rounds, after {setup['warmup']} warmup "
            f"requests; client CPU {ms(client_cpu[1])} ms per 1-row request, "
            f"{ms(client_cpu[64])} ms per 64-row request"
        ),
        (
            f"- servers: one process / worker each on 127.0.0.1, "
            f"OMP_NUM_THREADS={setup['omp_threads']} "
            "(but the 'as shipped' predictor), default logging (KServe: a latency line per "
            "request; BentoML: an access line per request)"
        ),
        "",
        *peers_section(cells),
        *overhead_section(
            cells,
            "### 2. The canary router's overhead (primary only, canary percent 0)",
            [k for k in ("router", "router_nolog", "proxy", "proxy_httpx") if f"{k}/1" in cells],
            {k: [k] for k in ("router", "router_nolog", "proxy", "proxy_httpx")},
        ),
        (
            "The bare proxy hops are the floor of a Python hop on this machine: uvicorn and "
            "one forwarding client, nothing else (`--serve-proxy` in this file). *added hop "
            "CPU* of the router is the figure issue 14 bounds at 0.3 ms."
        ),
        "",
        *overhead_section(
            cells,
            "### 3. The transformer's overhead (Feast SQLite online lookup, then the predictor)",
            ["transformer", "stack"],
            {"transformer": ["transformer"], "stack": ["stack", "router"]},
        ),
        (
            "The direct predictor gets the already-joined rows (what the transformer sends "
            "it); the router gets the same; the transformer gets ids and request context. "
            "*added hop CPU* is the CPU per request of the server(s) added in front of the "
            "predictor."
        ),
        "",
        *goals_section(doc),
        *breakdown_section(steps, cells),
    ]
    return "\n".join(text)


def goal_ratios(doc: dict) -> list[dict[str, Any]]:
    """The ratios issue 14 asks of one run: (what, rows, ours, peer, ratio, goal)."""
    cells, steps = doc["cells"], doc["breakdown"]
    out = []

    # A partial run (--cells) lacks some cells: their rows are left out.
    def rps(key: str, size: int) -> float | None:
        cell = cells.get(f"{key}/{size}")
        return cell["stats"]["rps"] if cell else None

    for size in SIZES:
        out.append(
            {"what": "full path (transformer -> router, log on -> predictor) vs naive "
             "one-process service, req/s", "rows": size, "ours": rps("stack", size),
             "peer": rps("naive", size), "goal": ">= 1.0"}
        )  # fmt: skip
    for size, goal in zip(SIZES, (">= 1.0", ">= 1.5"), strict=True):
        out.append(
            {"what": "predictor alone vs bare kserve.Model, req/s", "rows": size,
             "ours": rps("predictor", size), "peer": rps("bare", size), "goal": goal}
        )  # fmt: skip
    for size in SIZES:
        if f"null/{size}" in cells:
            out.append(
                {"what": "ceiling: null kserve.Model (no model) vs bare kserve.Model, req/s",
                 "rows": size, "ours": rps("null", size), "peer": rps("bare", size),
                 "goal": "(shown)"}
            )  # fmt: skip

    def hop_cpu(key: str, size: int) -> float | None:
        cell = cells.get(f"{key}/{size}")
        return cell["server_cpu"].get(key, 0.0) / cell["stats"]["n"] if cell else None

    for size in SIZES:
        for floor, what in (("proxy", "KeepAlivePool"), ("proxy_httpx", "httpx")):
            if f"{floor}/{size}" in cells:
                out.append(
                    {"what": f"router (log on) CPU per request vs a bare uvicorn proxy hop "
                     f"({what})", "rows": size, "ours": hop_cpu("router", size),
                     "peer": hop_cpu(floor, size), "goal": "router <= 0.30 ms",
                     "lower_is_better": True}
                )  # fmt: skip
    for size in SIZES:
        out.append(
            {"what": "predictor --workers 2 vs 1 worker, req/s", "rows": size,
             "ours": rps("predictor_w2", size), "peer": rps("predictor", size), "goal": "(shown)"}
        )  # fmt: skip
    for size in SIZES:
        out.append(
            {"what": "full path, request log on vs off, req/s", "rows": size,
             "ours": rps("stack", size), "peer": rps("stack_nolog", size), "goal": ">= 0.95"}
        )  # fmt: skip
    reader = "transformer: OnlineReader.read (Feast online-store read)"
    direct = "Feast get_online_features direct (feature service, to_dict)"
    for size in SIZES:
        step = steps.get(str(size), {})
        if reader in step and direct in step:
            out.append(
                {"what": "online lookup CPU per call (median): OnlineReader vs Feast's "
                 "get_online_features", "rows": size, "ours": step[reader],
                 "peer": step[direct], "goal": "<= 1.0", "lower_is_better": True}
            )  # fmt: skip
    out = [row for row in out if row["ours"] is not None and row["peer"] is not None]
    for row in out:
        row["ratio"] = row["ours"] / row["peer"] if row["peer"] else float("nan")
    return out


def goals_section(doc: dict) -> list[str]:
    setup = doc["setup"]
    rows = []
    for r in goal_ratios(doc):
        unit = (
            (lambda v: f"{v * 1e3:.2f} ms") if r.get("lower_is_better") else (lambda v: f"{v:,.0f}")
        )
        rows.append([r["what"], r["rows"], unit(r["ours"]), unit(r["peer"]),
                     fmt_ratio(r["ratio"]), r["goal"]])  # fmt: skip
    parity = setup.get("compiled_max_abs_diff_10k")
    if setup.get("compiled_trees"):
        trees = (
            "compiled trees (lleaves) served; max |compiled - Booster.predict| on 10k rows "
            f"{parity:.1e}"
        )
    else:
        trees = "compiled trees NOT loaded: the predictor served the LightGBM booster"
    load = doc["conditions"].get("load_average_before")
    return [
        "### 4. Issue 14's ratios (this run)",
        "",
        markdown_table(["comparison", "rows/req", "ours", "peer", "ratio", "goal"], rows),
        "",
        f"- {trees}.",
        (
            f"- measured with the machine's load average at {load} before the run (2 cores): "
            "ratios between targets share the noise, absolute figures do not."
        ),
        "",
    ]


def render_partial(doc: dict) -> str:
    """The report of a `--cells` run: every measured cell against the predictor, and the
    issue's ratios its cells give (no breakdown, no overhead sections)."""
    setup, cells = doc["setup"], doc["cells"]
    rows = []
    for size in SIZES:
        base = cells[f"predictor/{size}"]["stats"]
        for key in setup["cells"]:
            s = cells[f"{key}/{size}"]["stats"]
            rows.append(
                [cells[f"{key}/{size}"]["label"], size, fmt_int(s["n"]),
                 f"{s['rps']:,.0f} ({s['rps_min']:,.0f}–{s['rps_max']:,.0f})", ms(s["p50"]),
                 ms(s["p99"]), ms(s["server_cpu"]), ms(s["client_cpu"]),
                 fmt_ratio(s["rps"] / base["rps"]), f"{s['others']:.2f}"]
            )  # fmt: skip
    header = [
        "server", "rows/req", "requests", "req/s (round min–max)", "p50 ms", "p99 ms",
        "server CPU ms/req", "client CPU ms/req", "req/s vs predictor", "other load (cores)",
    ]  # fmt: skip
    return "\n".join(
        [
            f"## Serving benchmark, cells {', '.join(setup['cells'])} (bench/serving_bench.py)",
            "",
            *_util.conditions_lines(doc["conditions"]),
            (
                f"- a partial run (`--cells`): {setup['events']:,}-event lake, client "
                f"{setup.get('client', 'pool')}, concurrency {setup['concurrency']}, "
                f"{setup['requests_1']:,} / {setup['requests_64']:,} requests per cell of 1 / "
                f"64 rows in {setup['rounds']} interleaved rounds; no in-process breakdown"
            ),
            "",
            markdown_table(header, rows),
            "",
            *goals_section(doc),
        ]
    )


# --- main -------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add = parser.add_argument
    add("--events", type=int, default=None, help=f"lake size (default {DEFAULT_EVENTS:,})")
    add("--quick", action="store_true", help="smoke run: small lake, few requests")
    add("--requests-1", type=int, default=None, help="1-row requests per cell (default 1000)")
    add("--requests-64", type=int, default=None, help="64-row requests per cell (default 300)")
    add("--rounds", type=int, default=None, help="interleaved rounds (default 5)")
    add("--warmup", type=int, default=None, help="untimed requests per cell first (default 50)")
    add("--concurrency", type=int, default=4, help="requests in flight (default 4)")
    add(
        "--client",
        choices=tuple(CLIENT_NAMES),
        default="pool",
        help="the client of every cell: pool (KeepAlivePool, raw asyncio HTTP/1.1; default) "
        "or httpx (httpx.AsyncClient)",
    )
    add(
        "--omp-threads",
        type=int,
        default=1,
        help="OMP_NUM_THREADS of every server but the 'as shipped' predictor (default 1; "
        "0 leaves it unset)",
    )
    add(
        "--cells",
        default=None,
        metavar="KEYS",
        help="measure only these targets (comma-separated, e.g. predictor,bare,null; the "
        f"predictor is always measured) and skip the in-process breakdown; one of: "
        f"{', '.join(TARGET_KEYS)}. Writes serving_bench.cells.json/.md unless --json/--out "
        "say otherwise (a partial run never replaces the full run's results)",
    )
    _util.add_output_arguments(parser, DEFAULT_JSON, DEFAULT_OUT)
    # The router's own process, started by the bench itself.
    add("--serve-router", action="store_true", help=argparse.SUPPRESS)
    add("--serve-proxy", choices=("pool", "httpx"), default=None, help=argparse.SUPPRESS)
    add("--port", type=int, help=argparse.SUPPRESS)
    add("--state", type=Path, help=argparse.SUPPRESS)
    add("--backend", action="append", default=[], help=argparse.SUPPRESS)
    add("--request-log", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve_router or args.serve_proxy:
        return args
    if args.quick and args.events:
        parser.error("--quick and --events are exclusive")
    quick = args.quick
    args.events = args.events or (QUICK_EVENTS if quick else DEFAULT_EVENTS)
    args.requests_1 = args.requests_1 or (150 if quick else 1000)
    args.requests_64 = args.requests_64 or (40 if quick else 300)
    args.rounds = args.rounds or (2 if quick else 5)
    args.warmup = args.warmup if args.warmup is not None else (10 if quick else 50)
    if min(args.requests_1, args.requests_64, args.rounds, args.concurrency) < 1:
        parser.error("--requests-*, --rounds and --concurrency must be at least 1")
    if args.omp_threads < 0:
        parser.error("--omp-threads must be 0 or more")
    try:
        args.cells = None if args.cells is None else select_cells(args.cells)
    except ValueError as exc:
        parser.error(str(exc))
    if args.cells is not None:
        args.json = PARTIAL_JSON if args.json == DEFAULT_JSON else args.json
        args.out = PARTIAL_OUT if args.out == DEFAULT_OUT else args.out
    return args


@contextlib.contextmanager
def environ(key: str, value: str | None):
    """os.environ[key] = value (None: unset) for the block."""
    old = os.environ.get(key)
    if value is None:
        os.environ.pop(key, None)
    else:
        os.environ[key] = value
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = old


def run_mode(args: argparse.Namespace) -> str:
    """full (the defaults), quick, or reduced (any other size), as the JSON records it."""
    if args.quick:
        return "quick"
    full = (args.events, args.requests_1, args.requests_64, args.rounds, args.warmup) == (
        DEFAULT_EVENTS,
        1000,
        300,
        5,
        50,
    )
    return "full" if full else "reduced"


def setup_record(args: argparse.Namespace, prepared: dict) -> dict[str, Any]:
    """The sizes and the prepared model the figures belong to."""
    return {
        "events": args.events,
        "prepare_seconds": prepared["seconds"],
        "training_rows": prepared["training_rows"],
        "best_iteration": prepared["best_iteration"],
        "n_features": prepared["n_features"],
        "version": prepared["version"],
        "request_rows": len(prepared["client_rows"]),
        "cold_users": prepared["cold_users"],
        "cold_ads": prepared["cold_ads"],
        "concurrency": args.concurrency,
        "client": args.client,
        "requests_1": args.requests_1,
        "requests_64": args.requests_64,
        "rounds": args.rounds,
        "warmup": args.warmup,
        "omp_threads": str(args.omp_threads) if args.omp_threads else "unset",
        "compiled_trees": prepared["compiled_trees"],
        "compiled_max_abs_diff_10k": prepared["compiled_max_abs_diff"],
    }


def measure_all(args: argparse.Namespace) -> dict:
    """Prepare, start the servers, measure every cell, then the in-process breakdown;
    returns the JSON document."""
    clock = _util.RunClock()
    omp = str(args.omp_threads) if args.omp_threads else None
    cores = len(os.sched_getaffinity(0))
    with tempfile.TemporaryDirectory(prefix="kubeloop-servebench-", dir=args.tmp_dir) as tmp:
        root = Path(tmp)
        prepared = prepare(args.events, root / "prepared")
        env = dict(os.environ)
        env["PYTHONUNBUFFERED"] = "1"
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
        env[OMP_ENV] = omp
        servers = Servers(root / "logs", env)
        try:
            targets = start_servers(servers, prepared, root, args.cells or TARGET_KEYS)
            log("servers ready; measuring")
            cells = asyncio.run(
                measure(
                    targets,
                    servers,
                    prepared,
                    {1: args.requests_1, 64: args.requests_64},
                    args.rounds,
                    args.warmup,
                    args.concurrency,
                    args.client,
                )
            )
        except BaseException:
            for server in servers.procs.values():
                if server.process is not None and server.process.poll() is not None:
                    log(f"{server.died_error()}")
            raise
        finally:
            log("stopping servers")
            servers.stop()
        steps: dict[int, dict[str, float]] = {}
        if args.cells is None:
            log("in-process breakdown (fresh process)")
            reps = {1: 200, 64: 40} if args.quick else {1: 2000, 64: 300}
            with environ(OMP_ENV, omp):
                steps = _util.run_fresh(breakdown, prepared, reps, cores)
        setup = setup_record(args, prepared)
    cond = clock.conditions("serving", run_mode(args), PACKAGES)
    if args.cells is not None:
        setup["cells"] = list(args.cells)
    return {
        "conditions": cond,
        "setup": setup,
        "cells": {c.key: cell_record(c) for c in cells},
        "breakdown": {str(size): step for size, step in steps.items()},
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.serve_router:
        return serve_router(args)
    if args.serve_proxy:
        return serve_proxy(args)
    _util.exit_on_sigterm()
    _util.publish(render(_util.measure_or_load(args, measure_all)), args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
