"""Process supervision for the local servers: start a server in its own process group, wait
until it is ready, stop it (SIGTERM to the whole group, SIGKILL after a grace period).

`kubeloop.serving.local_servers.LocalStack` runs the model servers with it, and the demo
runs the drift service with it; each process's output goes to its own log, whose tail
names the cause when a process dies.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from kubeloop.errors import KubeloopError
from kubeloop.serving.edge import local_url

log = logging.getLogger(__name__)

HOST = "127.0.0.1"


class LocalStackError(KubeloopError):
    """A local model server could not be started or stopped working."""


def free_ports(n: int, host: str = HOST) -> list[int]:
    """`n` distinct TCP ports free on `host` right now."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((host, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _tail(path: Path, lines: int = 20) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - 8192))
            text = f.read().decode("utf-8", errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:]) or "(empty log)"


@dataclass
class ServerProcess:
    """One model server subprocess."""

    name: str
    args: list[str]
    port: int
    log_path: Path
    health_path: str = "/v2/health/ready"
    process: subprocess.Popen | None = field(default=None, repr=False)
    host: str = HOST  # the address it listens on

    @property
    def url(self) -> str:
        """Where a client on this machine reaches the server."""
        return local_url(self.host, self.port)

    @property
    def pid(self) -> int | None:
        """The subprocess's pid; None before `start`."""
        return self.process.pid if self.process is not None else None

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self, env: Mapping[str, str], cwd: str | Path | None = None) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as out:
            out.write(f"$ {' '.join(self.args)}\n".encode())
            out.flush()
            self.process = subprocess.Popen(
                self.args,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=dict(env),
                cwd=cwd,
                start_new_session=True,  # own process group: killed as a whole, and a
                # Ctrl+C in the terminal reaches only us, who stop it in order
            )

    def died_error(self) -> LocalStackError:
        code = self.process.returncode if self.process is not None else None
        return LocalStackError(
            f"{self.name} exited with code {code}; its log {self.log_path} ends with:\n"
            + _tail(self.log_path)
        )

    def signal_group(self, sig: int) -> None:
        if self.process is None or self.process.poll() is not None:
            # The leader is gone; members of its group may not be.
            if self.process is not None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(self.process.pid, sig)
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, sig)


def wait_ready(
    servers: Sequence[ServerProcess],
    timeout: float,
    *,
    extra_check=None,
) -> None:
    """Poll each server's health URL until it answers 200; raise LocalStackError naming the
    server (and its log) that exits first or is not ready within `timeout` seconds."""
    import httpx

    pending = list(servers)
    deadline = time.monotonic() + timeout
    delay = 0.05
    with httpx.Client(timeout=2.0) as client:
        while pending:
            for server in list(pending):
                if not server.alive():
                    raise server.died_error()
                try:
                    r = client.get(server.url + server.health_path)
                except httpx.HTTPError:
                    continue
                if r.status_code == 200:
                    pending.remove(server)
            if extra_check is not None:
                extra_check()
            if not pending:
                return
            if time.monotonic() > deadline:
                names = ", ".join(
                    f"{s.name} (GET {s.url}{s.health_path}; log {s.log_path})" for s in pending
                )
                raise LocalStackError(f"not ready after {timeout:.0f}s: {names}")
            time.sleep(delay)
            delay = min(delay * 1.5, 0.5)


def stop_servers(servers: Iterable[ServerProcess], grace: float = 10.0) -> None:
    """Stop `servers` together: SIGTERM to each process group, then SIGKILL to whatever is
    left after `grace` seconds (workers a server forked, a stuck leader)."""
    running = [s for s in servers if s.process is not None]
    for server in running:
        server.signal_group(signal.SIGTERM)
    deadline = time.monotonic() + grace
    for server in running:
        assert server.process is not None
        try:
            server.process.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            log.warning("%s did not stop after SIGTERM; killing it", server.name)
    for server in running:
        server.signal_group(signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            server.process.wait(5)  # type: ignore[union-attr]
