"""Run the online loop on loopback: real KServe model servers as subprocesses, the canary
router in this process.

    with LocalStack.start(registry, "ctr", workdir, "v0001", "v0002", canary_percent=10) as s:
        httpx.post(f"{s.transformer_url}/v1/models/ctr:predict", json={"instances": [...]})

`LocalStack.start`:

1. records the rollout in `<workdir>/serving/rollout.json` (`LocalRollout.init`; the
   registry's stages follow: primary -> production, canary -> canary),
2. exports each version with `registry.export` to `<workdir>/serving/models/<version>`,
3. starts `python -m models.predictor --model_name NAME --model_dir DIR --http_port N`
   per version and `python -m models.transformer --model_name NAME --predictor_host
   127.0.0.1:<router port> --feature_repo <workdir>/feature_repo --http_port N` (with
   `--enable_grpc false`, so several KServe servers can share the machine), each in its
   own session with its output in `<workdir>/serving/logs/<name>.log`,
4. runs the router (`kubeloop.serving.router`) under uvicorn in a background thread,
   logging to `<workdir>/serving/requests.sqlite` and `logs/router.log`,
5. waits until every server answers `GET /v2/health/ready` with 200; a process that exits
   first raises `LocalStackError` naming it and the tail of its log.

Every server listens on loopback (127.0.0.1) except the public endpoint, which listens on
`host` (loopback by default; `kubeloop serve --host`). Free ports are picked unless given. `stop()` (also on leaving the `with` block, on
KeyboardInterrupt, on a failed start and at interpreter exit) stops the router and sends
SIGTERM, then SIGKILL after a grace period, to each server's whole process group, so no
server outlives the stack. `<workdir>/serving/stack.json` describes a running stack
(URLs, pids) for `kubeloop canary status`.

A canary version set later (`kubeloop canary set 10 --version v0004`) that has no server
yet gets no traffic until the stack has exported it and started its predictor, which it
does in the background when the router first asks for it.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self

from kubeloop.atomic import atomic_write_text
from kubeloop.serving.edge import DEFAULT_MAX_BODY_BYTES, local_url
from kubeloop.serving.processes import (
    HOST,
    LocalStackError,
    ServerProcess,
    free_ports,
    stop_servers,
    wait_ready,
)
from kubeloop.serving.rollout import LocalRollout, RolloutState, serving_dir
from kubeloop.workdir import Workdir

if TYPE_CHECKING:
    from kubeloop.registry.base import ModelRegistry
    from kubeloop.serving.request_log.logger import CloudEventLogger
    from kubeloop.serving.router import CanaryRouter

log = logging.getLogger(__name__)

STACK_FILE = "stack.json"
REQUEST_LOG_FILE = "requests.sqlite"

# Arguments every KServe server gets besides the contract's: without them each server
# would open a gRPC server on the default port 8081 and the second one would fail.
DEFAULT_SERVER_ARGS: tuple[str, ...] = ("--enable_grpc", "false")


class LocalStack:
    """Transformer, router and one predictor per served version on loopback. Build it with
    `LocalStack.start(...)` (a context manager); see the module docstring.

    `port` is the transformer's port (the stack's public URL), `router_port` the router's,
    `predictor_ports` maps versions to ports; any left out are picked free. With
    `transformer=False` the router is the public endpoint. `host` is the address the
    public endpoint listens on (loopback unless asked; the predictors and, behind a
    transformer, the router always listen on loopback), `max_body_bytes` the body limit of
    every server (`kubeloop.serving.edge`). `predictor_module` /
    `transformer_module` name the `python -m` entry points, `server_args` the arguments
    added to both, `env` extra environment (PYTHONPATH is prepended to the current one).
    `sync_registry=False` leaves the registry's stages alone. `logger_urls` receive the
    request log as CloudEvents (the drift detector). With `mirror` (the default), the
    router scores a copy of every request with the non-serving version while there is a
    canary (`kubeloop.serving.shadow`): logged as variant "shadow" in the local log only (the
    drift detector gets the served answers); `shadow_queue_size` bounds the copies waiting.
    """

    def __init__(
        self,
        registry: ModelRegistry,
        model_name: str,
        workdir: Workdir | str | Path,
        primary_version: str,
        canary_version: str | None = None,
        canary_percent: int = 0,
        *,
        port: int | None = None,
        router_port: int | None = None,
        predictor_ports: Mapping[str, int] | None = None,
        transformer: bool = True,
        sticky: bool = False,
        seed: int | None = 0,
        predictor_module: str = "models.predictor",
        transformer_module: str = "models.transformer",
        server_args: Sequence[str] = DEFAULT_SERVER_ARGS,
        python: str = sys.executable,
        env: Mapping[str, str] | None = None,
        cwd: str | Path | None = None,
        ready_timeout: float = 120.0,
        request_log: str | Path | None = None,
        logger_urls: Iterable[str] = (),
        namespace: str = "kubeloop",
        sync_registry: bool = True,
        force: bool = False,
        host: str = HOST,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        mirror: bool = True,
        shadow_queue_size: int = 1024,
    ):
        self.registry = registry
        self.model_name = model_name
        self.workdir = workdir if isinstance(workdir, Workdir) else Workdir.at(workdir)
        self.primary_version = primary_version
        self.canary_version = canary_version
        self.canary_percent = canary_percent
        self.port = port
        self.router_port = router_port
        self.predictor_ports = dict(predictor_ports or {})
        self.with_transformer = transformer
        self.sticky = sticky
        self.seed = seed
        self.predictor_module = predictor_module
        self.transformer_module = transformer_module
        self.server_args = list(server_args)
        self.python = python
        self.extra_env = dict(env or {})
        self.cwd = cwd
        self.ready_timeout = ready_timeout
        self.request_log_path = Path(request_log) if request_log else None
        self.logger_urls = tuple(logger_urls)
        self.namespace = namespace
        self.sync_registry = sync_registry
        self.force = force
        self.host = host
        self.max_body_bytes = max_body_bytes
        self.mirror = mirror
        self.shadow_queue_size = shadow_queue_size
        self.shadow_logger: CloudEventLogger | None = None
        self.feedback: Any = None

        self.serving = serving_dir(self.workdir)
        self.log_dir = self.serving / "logs"
        self.models_dir = self.serving / "models"
        self.predictors: dict[str, ServerProcess] = {}
        self.transformer: ServerProcess | None = None
        self.router: CanaryRouter | None = None
        self.rollout: LocalRollout | None = None
        self.request_logger: CloudEventLogger | None = None
        self._server = None  # uvicorn.Server
        self._thread: threading.Thread | None = None
        self._lock = threading.RLock()
        self._starting: set[str] = set()
        # Versions whose predictor could not be started at run time, with the error.
        self.failed: dict[str, str] = {}
        self._stopped = False
        self._router_log_handler: logging.Handler | None = None

    # Construction -----------------------------------------------------------------------

    @classmethod
    def start(cls, *args: Any, **options: Any) -> LocalStack:
        """Build the stack (the constructor's arguments), start everything and wait until
        it is ready; see the class docstring."""
        stack = cls(*args, **options)
        try:
            stack._start()
        except BaseException:
            stack.stop()
            raise
        return stack

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        for key, value in self.extra_env.items():
            if key == "PYTHONPATH" and env.get("PYTHONPATH"):
                env[key] = value + os.pathsep + env["PYTHONPATH"]
            else:
                env[key] = value
        env.setdefault("PYTHONUNBUFFERED", "1")
        return env

    def _export(self, version: str) -> Path:
        dest = self.models_dir / version
        self.registry.export(self.model_name, version, dest, overwrite=True)
        return dest

    def _predictor(self, version: str, port: int) -> ServerProcess:
        args = [
            self.python,
            "-m",
            self.predictor_module,
            "--model_name",
            self.model_name,
            "--model_dir",
            str(self.models_dir / version),
            "--http_port",
            str(port),
            *self._edge_args(HOST),
            *self.server_args,
        ]
        return ServerProcess(
            f"predictor-{version}", args, port, self.log_dir / f"predictor-{version}.log"
        )

    def _edge_args(self, host: str) -> list[str]:
        """--host and --max_body_bytes where they differ from the servers' defaults (which
        are loopback and DEFAULT_MAX_BODY_BYTES)."""
        args = [] if host == HOST else ["--host", host]
        if self.max_body_bytes != DEFAULT_MAX_BODY_BYTES:
            args += ["--max_body_bytes", str(self.max_body_bytes)]
        return args

    @property
    def router_host(self) -> str:
        """The router listens on `host` when it is the public endpoint, else on loopback."""
        return HOST if self.with_transformer else self.host

    def _start(self) -> None:
        from kubeloop.serving.request_log.logger import CloudEventLogger
        from kubeloop.serving.request_log.sinks import SQLiteRequestLog, open_sink
        from kubeloop.serving.router import CanaryRouter

        self.log_dir.mkdir(parents=True, exist_ok=True)
        atexit.register(self.stop)

        # 1. The rollout (and the registry's stages) first: a refused change stops here.
        self.rollout = LocalRollout(
            self.workdir,
            self.model_name,
            self.registry if self.sync_registry else None,
            force=self.force,
        )
        state = self.rollout.init(
            self.primary_version, self.canary_version, self.canary_percent, sticky=self.sticky
        )

        # 2. Ports.
        versions = [v for v in (state.primary_version, state.canary_version) if v]
        wanted = [v for v in versions if v not in self.predictor_ports]
        picks = iter(free_ports(len(wanted) + 2))
        for version in wanted:
            self.predictor_ports[version] = next(picks)
        self.router_port = self.router_port or next(picks)
        self.port = self.port or next(picks)

        # 3. Export and start the predictors.
        env = self._env()
        for version in versions:
            self._export(version)
            server = self._predictor(version, self.predictor_ports[version])
            self.predictors[version] = server
            server.start(env, self.cwd)

        # 4. The router, in this process.
        sink_path = self.request_log_path or (self.serving / REQUEST_LOG_FILE)
        sink = open_sink(sink_path) if self.request_log_path else SQLiteRequestLog(sink_path)
        self.request_log_path = sink_path
        self.request_logger = CloudEventLogger(
            sink,
            inference_service=self.model_name,
            namespace=self.namespace,
            source=f"http://localhost:{self.router_port}/predictor",
            urls=self.logger_urls,
        )
        shadow, metrics = None, None
        if self.mirror:
            from prometheus_client import CollectorRegistry

            from kubeloop.serving.shadow import HTTPSender, ShadowMirror

            # Shadow answers go to the same log but are never POSTed on: the drift detector
            # pairs a request's halves by id, and a shadow answer shares the served one's id.
            self.shadow_logger = CloudEventLogger(
                sink,
                inference_service=self.model_name,
                namespace=self.namespace,
                source=f"http://localhost:{self.router_port}/shadow",
                close_sink=False,
            )
            metrics = CollectorRegistry()
            shadow = ShadowMirror(
                HTTPSender(),
                request_log=self.shadow_logger,
                queue_size=self.shadow_queue_size,
                registry=metrics,
            )
        self.router = CanaryRouter(
            self.rollout.path,
            {v: s.url for v, s in self.predictors.items()},
            request_log=self.request_logger,
            seed=self.seed,
            local_rollout=self.rollout,
            on_missing_backend=self._start_missing,
            max_body_bytes=self.max_body_bytes,
            shadow=shadow,
            metrics_registry=metrics,
            feedback=self._feedback(sink),
        )
        self._start_router()

        # 5. The transformer, calling the router as its predictor.
        if self.with_transformer:
            args = [
                self.python,
                "-m",
                self.transformer_module,
                "--model_name",
                self.model_name,
                "--predictor_host",
                f"{HOST}:{self.router_port}",
                "--feature_repo",
                str(self.workdir.feature_repo),
                "--http_port",
                str(self.port),
                *self._edge_args(self.host),
                *self.server_args,
            ]
            self.transformer = ServerProcess(
                "transformer", args, self.port, self.log_dir / "transformer.log", host=self.host
            )
            self.transformer.start(env, self.cwd)

        # 6. Wait for all of them.
        servers = list(self.predictors.values())
        if self.transformer is not None:
            servers.append(self.transformer)
        wait_ready(servers, self.ready_timeout, extra_check=self._check_router)
        self._write_stack_file()

    def _feedback(self, sink: Any) -> Any:
        """The label endpoint over the stack's request log (labels in the same SQLite file,
        or beside a JSON Lines log)."""
        from kubeloop.serving.request_log.feedback import FeedbackService

        self.feedback = FeedbackService(sink)
        return self.feedback

    @property
    def feedback_url(self) -> str:
        """Where delayed labels go: the router's `POST /kubeloop/feedback`."""
        return f"{self.router_url}/kubeloop/feedback"

    def _start_router(self) -> None:
        import uvicorn

        assert self.router is not None
        handler = logging.FileHandler(self.log_dir / "router.log")
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        for name in ("uvicorn.error", "kubeloop.serving"):
            logging.getLogger(name).addHandler(handler)
        self._router_log_handler = handler
        from kubeloop.serving.router_http import router_server_config

        config = router_server_config(
            self.router.app,
            host=self.router_host,
            port=int(self.router_port),  # type: ignore[arg-type]
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, name="kubeloop-router", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + 30
        while not self._server.started:
            self._check_router()
            if time.monotonic() > deadline:
                raise LocalStackError(f"the router did not start on port {self.router_port}")
            time.sleep(0.02)

    def _check_router(self) -> None:
        if self._thread is not None and not self._thread.is_alive():
            raise LocalStackError(
                f"the router on port {self.router_port} stopped; see {self.log_dir / 'router.log'}"
            )

    def _start_missing(self, version: str) -> None:
        """Router callback: a state names a version without a predictor. Start one in the
        background; the router routes to it once it is ready."""
        with self._lock:
            if (
                self._stopped
                or version in self._starting
                or version in self.failed
                or (version in self.predictors and self.predictors[version].alive())
            ):
                return
            self._starting.add(version)

        def run() -> None:
            with contextlib.suppress(Exception):  # logged and kept in self.failed
                self.add_version(version)

        threading.Thread(target=run, name=f"start-{version}", daemon=True).start()

    def add_version(self, version: str) -> str:
        """Export `version`, start its predictor, wait until it is ready and route to it.
        Returns its URL. A predictor that fails to start is stopped and forgotten (its log
        stays), and the error is raised; the version keeps getting no traffic."""
        server: ServerProcess | None = None
        try:
            with self._lock:
                current = self.predictors.get(version)
                if current is not None and current.alive():
                    return current.url
                if self._stopped:
                    raise LocalStackError("the stack is stopped")
                port = free_ports(1)[0]
                self.predictor_ports[version] = port
                self._export(version)
                server = self._predictor(version, port)
                self.predictors[version] = server
                server.start(self._env(), self.cwd)
            wait_ready([server], self.ready_timeout)
            assert self.router is not None
            self.router.set_backend(version, server.url)
            self._write_stack_file()
            return server.url
        except Exception as exc:
            with self._lock:
                stopped = self._stopped
                if server is not None and self.predictors.get(version) is server:
                    del self.predictors[version]
            if server is not None and not stopped:
                server.signal_group(signal.SIGKILL)
            if not stopped:
                self.failed[version] = str(exc)
                log.error("could not start the predictor of %s: %s", version, exc)
            raise
        finally:
            with self._lock:
                self._starting.discard(version)

    # Running ----------------------------------------------------------------------------

    @property
    def router_url(self) -> str:
        """Where a client on this machine reaches the router."""
        return local_url(self.router_host, self.router_port)

    @property
    def transformer_url(self) -> str | None:
        """Where a client on this machine reaches the transformer; None without one."""
        return self.transformer.url if self.transformer is not None else None

    @property
    def url(self) -> str:
        """The public endpoint: the transformer, or the router without one."""
        return self.transformer_url or self.router_url

    @property
    def predictor_urls(self) -> dict[str, str]:
        return {v: s.url for v, s in self.predictors.items()}

    def state(self) -> RolloutState:
        assert self.rollout is not None
        return self.rollout.state()

    def pids(self) -> list[int]:
        servers = [*self.predictors.values(), self.transformer]
        return [s.pid for s in servers if s is not None and s.pid is not None]

    def check(self) -> None:
        """Raise LocalStackError if the router or a server that serves traffic died."""
        self._check_router()
        state = self.state()
        serving = [self.predictors.get(state.primary_version)]
        if state.canary_version:
            serving.append(self.predictors.get(state.canary_version))
        serving.append(self.transformer)
        assert self.router is not None
        for server in serving:
            if server is None or server.process is None or server.alive():
                continue
            # A predictor the router was sending traffic to, or the transformer, died.
            if server is self.transformer or server.url in self.router.backends.values():
                raise server.died_error()

    def serve_forever(self, poll: float = 0.5) -> None:
        """Block until interrupted (KeyboardInterrupt) or a server dies (LocalStackError)."""
        while True:
            self.check()
            time.sleep(poll)

    def _write_stack_file(self) -> None:
        data = {
            "model_name": self.model_name,
            "pid": os.getpid(),
            "started_at": datetime.now(UTC).isoformat(),
            "url": self.url,
            "router_url": self.router_url,
            "transformer_url": self.transformer_url,
            "predictors": self.predictor_urls,
            "pids": {s.name: s.pid for s in [*self.predictors.values(), self.transformer] if s},
            "logs": str(self.log_dir),
            "request_log": str(self.request_log_path),
            "feedback_url": self.feedback_url,
        }
        atomic_write_text(self.serving / STACK_FILE, json.dumps(data, indent=2) + "\n")

    # Stopping ---------------------------------------------------------------------------

    def stop(self, grace: float = 10.0) -> None:
        """Stop the router and every server (SIGTERM to each process group, SIGKILL after
        `grace` seconds). Safe to call more than once."""
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
        with contextlib.suppress(Exception):
            atexit.unregister(self.stop)
        if self._server is not None:
            self._server.should_exit = True
        with self._lock:
            servers = [*self.predictors.values(), self.transformer]
        stop_servers([s for s in servers if s is not None], grace)
        if self._thread is not None:
            self._thread.join(10)
        if self.shadow_logger is not None:
            self.shadow_logger.close()  # before the sink it shares is closed
        if self.feedback is not None:
            self.feedback.close()
        if self.request_logger is not None:
            self.request_logger.close()
        if self._router_log_handler is not None:
            for name in ("uvicorn.error", "kubeloop.serving"):
                logging.getLogger(name).removeHandler(self._router_log_handler)
            self._router_log_handler.close()
        with contextlib.suppress(OSError):
            path = self.serving / STACK_FILE
            if path.exists() and json.loads(path.read_text()).get("pid") == os.getpid():
                path.unlink()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def read_stack_file(workdir: Workdir | str | Path) -> dict[str, Any] | None:
    """The description of the stack serving `workdir`, if one is running."""
    path = serving_dir(workdir) / STACK_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    pid = data.get("pid")
    if not isinstance(pid, int):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None  # left behind by a stack that was killed
    except PermissionError:
        pass
    return data
