"""The drift detector service as the cluster runs it: a real `python -m kubeloop.drift.service`
process fed KServe-logger CloudEvents over HTTP.

- With ``--kube`` it posts its alerts as Events through the REAL kubernetes client, to the
  loopback API server of tests/k8s_api_server.py: the create path, and the 409 -> patch path
  (a second detector, on fresh state, raises the same alert: the Event's count goes up), and
  ``kubectl kubeloop alerts`` lists them with the variant and the Knative revision.
- With a PostgreSQL alert store, alerts written by the service are read back by
  ``kubeloop alerts --store``.
- SIGKILL mid-stream, at a random point: after a restart on the same state, nothing that was
  acknowledged (answered 2xx) is lost and nothing half-written is visible.
"""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest
from cloudevents.conversion import to_binary
from cloudevents.http import CloudEvent
from k8s_api_server import KubeAPIServer, inference_service, write_kubeconfig

from kubeloop.cloudevents import REQUEST_TYPE, RESPONSE_TYPE

BIN = Path(sys.executable).parent
ROOT = Path(__file__).resolve().parent.parent
T0 = datetime(2026, 1, 15, 9, tzinfo=UTC)
NS = "kubeloop"
V1, V2 = "s3://mlpipeline/kubeloop/models/ctr/v1", "s3://mlpipeline/kubeloop/models/ctr/v2"
CANARY_REVISION = "ctr-predictor-00002"
# KServe's logger sets ce-source to the pod name; Knative names the pods of a revision
# <revision>-deployment-<pod-template-hash>-<5 chars>.
CANARY_POD = f"{CANARY_REVISION}-deployment-7f9c8d6b5-x2x7q"
WINDOW = 100  # rows per window: small, so a short stream closes several
BATCH = 5  # instances per request: fewer HTTP round trips for the same windows


def frame(n: int, seed: int, drift: bool = False) -> pd.DataFrame:
    """Model inputs; with ``drift``, the device mix moves from 50/50 to 90/10."""
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "hour": rng.integers(0, 24, n),
            "device": rng.choice(["mobile", "desktop"], n, p=[0.9, 0.1] if drift else [0.5, 0.5]),
            "advertiser_id": rng.integers(1, 6, n),
            "user_ctr_7d": rng.beta(2, 40, n),
        }
    )


@pytest.fixture(scope="module")
def reference_dir(tmp_path_factory) -> Path:
    """An exported model version without model files (scores are learned online)."""
    from kubeloop.registry.records import ModelVersion

    path = tmp_path_factory.mktemp("reference")
    features = frame(2000, seed=1)
    features.to_parquet(path / "reference.parquet")
    record = ModelVersion(
        name="ctr", version="v0001", stage="production", created_at=T0, model_kind="lightgbm",
        metrics={"log_loss": 0.18}, gate={"passed": True}, feature_service="ctr_model",
        features=list(features.columns), training_window={"start": T0 - timedelta(days=9), "end": T0},
        data_scenario="baseline", code_version="test", files=["model.txt"],
    )  # fmt: skip
    (path / "metadata.json").write_text(record.model_dump_json())
    (path / "monitor.json").write_text(
        json.dumps(
            {
                "window": {"max_events": WINDOW, "max_seconds": None, "min_events": 50},
                "feature_detector": {"type": "scipy", "p_val": 1e-6},
                "prediction_detector": {"type": "scipy", "p_val": 1e-4},
            }
        )
    )
    return path


def stream(n_base: int, n_drift: int, *, prefix: str = "q") -> list[CloudEvent]:
    """Request and response CloudEvents (request first) of requests of BATCH instances from
    the canary revision's pod: ``n_base`` rows like the reference, then ``n_drift`` drifted."""
    rows = pd.concat([frame(n_base, seed=6), frame(n_drift, seed=7, drift=True)])
    records = rows.to_dict("records")
    events = []
    for i in range(0, len(records), BATCH):
        batch = records[i : i + BATCH]
        at = (T0 + timedelta(seconds=i)).isoformat().replace("+00:00", "Z")
        common = {
            "id": f"{prefix}{i}", "source": CANARY_POD, "specversion": "1.0", "time": at,
            "inferenceservicename": "ctr", "namespace": NS, "component": "predictor",
            "endpoint": "", "metadata": "{}", "datacontenttype": "application/json",
        }  # fmt: skip
        scores = [0.05 + 0.01 * row["hour"] / 24 for row in batch]
        events.append(CloudEvent({**common, "type": REQUEST_TYPE}, {"instances": batch}))
        events.append(
            CloudEvent(
                {**common, "type": RESPONSE_TYPE},
                {"predictions": scores, "model_version": "v0002"},
            )
        )
    return events


class DriftService:
    """`python -m kubeloop.drift.service` on a free loopback port, in its own process group."""

    def __init__(self, reference_dir: Path, state_dir: Path, store: str, env: dict, *extra):
        from kubeloop.serving.processes import free_ports

        self.port = free_ports(1)[0]
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = state_dir.parent / f"drift-{state_dir.name}-{self.port}.log"
        args = [
            sys.executable, "-m", "kubeloop.drift.service", "--host", "127.0.0.1",
            "--port", str(self.port), "--reference_dir", str(reference_dir),
            "--state_dir", str(state_dir), "--alert_store", store,
            "--config", str(reference_dir / "monitor.json"), "--no_score_reference",
            "--inference_service", "ctr", "--namespace", NS, "--log_level", "warning", *extra,
        ]  # fmt: skip
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                args, cwd=ROOT, env=env, stdout=log, stderr=log, start_new_session=True
            )
        self._wait_ready()

    def _wait_ready(self, timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"drift service exited: {self.log.read_text()[-3000:]}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        self.kill()
        raise AssertionError(f"drift service not ready in {timeout}s: {self.log.read_text()}")

    def kill(self) -> None:
        """SIGKILL, as the kubelet does after the grace period or the OOM killer at once."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=30)

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.kill()

    def status(self) -> dict:
        return httpx.get(f"{self.url}/status", timeout=10).json()


def send_all(url: str, events: list[CloudEvent]) -> list[str]:
    """POST every event in binary mode; returns the alert ids the service answered."""
    alerts: list[str] = []
    with httpx.Client(timeout=30) as client:
        for ce in events:
            headers, body = to_binary(ce)
            response = client.post(f"{url}/", headers=headers, content=body)
            assert response.status_code == 200, response.text
            alerts += response.json()["alerts"]
    return alerts


def clean_env(**extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "KUBERNETES_SERVICE_HOST"}
    env["HOSTNAME"] = "kubeloop-drift-detector-0"
    return {**env, **extra}


def script(name: str) -> str:
    path = BIN / name
    if not path.exists():
        pytest.skip(f"console script {name} is not installed in {BIN} (pip install -e .)")
    return str(path)


def kubeloop_alerts(store: str) -> list[dict]:
    done = subprocess.run(
        [script("kubeloop"), "alerts", "--store", store, "--json"],
        capture_output=True, text=True, timeout=60, check=False, env=clean_env(),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


# --- Kubernetes Events through the real client ------------------------------------------------


@pytest.fixture
def cluster(tmp_path):
    """The API server with InferenceService ctr in a 10% canary of v2 (revision 00002) as
    KServe reports it, and a kubeconfig whose current context is that server."""
    from kubeloop.cluster.isvc import InferenceServiceClient

    with KubeAPIServer() as api:
        api.add_inferenceservice(inference_service("ctr", V1))
        api.reconcile(NS, "ctr")
        kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", {"kind-kubeloop": api})
        InferenceServiceClient(NS, kubeconfig=str(kubeconfig)).set_canary("ctr", 10, V2)
        api.reconcile(NS, "ctr")
        api.clear_requests()
        yield api, kubeconfig


def wait_for(predicate, timeout: float = 20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError("timed out")


@pytest.mark.slow
def test_alerts_become_events_created_then_counted_and_kubectl_lists_them(
    cluster, reference_dir, tmp_path
):
    api, kubeconfig = cluster
    env = clean_env(KUBECONFIG=str(kubeconfig))
    events = stream(WINDOW, WINDOW)

    first = DriftService(
        reference_dir, tmp_path / "a", f"sqlite:///{tmp_path / 'a.db'}", env, "--kube"
    )
    try:
        raised = send_all(first.url, events)
        (posted,) = wait_for(lambda: api.events(NS))
    finally:
        first.stop()
    assert len(raised) == 1, raised  # one feature-drift alert on the drifted window
    isvc = api.get(NS, "ctr")
    assert posted["involvedObject"] == {
        "apiVersion": "serving.kserve.io/v1beta1", "kind": "InferenceService", "name": "ctr",
        "namespace": NS, "uid": isvc["metadata"]["uid"],
    }  # fmt: skip
    annotations = posted["metadata"]["annotations"]
    assert annotations["kubeloop.io/variant"] == "canary"  # from the ISVC status, via the pod
    assert annotations["kubeloop.io/revision"] == CANARY_REVISION
    assert annotations["kubeloop.io/features"] == "device"
    assert (posted["reason"], posted["type"], posted["count"]) == ("DriftDetected", "Warning", 1)
    assert posted["reportingInstance"] == "kubeloop-drift-detector-0"
    (create,) = api.requests_for("POST", "/events")
    assert (create.path, create.content_type, create.status) == (
        f"/api/v1/namespaces/{NS}/events", "application/json", 200,
    )  # fmt: skip
    assert create.json()["metadata"]["name"] == posted["metadata"]["name"]

    # A second detector on fresh state (a replacement pod without the first one's volume)
    # raises the same alert: same Event name, so 409 AlreadyExists, then patches.
    api.clear_requests()
    second = DriftService(
        reference_dir, tmp_path / "b", f"sqlite:///{tmp_path / 'b.db'}", env, "--kube"
    )
    try:
        assert send_all(second.url, events) == raised
        wait_for(lambda: api.events(NS)[0]["count"] == 2)
    finally:
        second.stop()
    (event,) = api.events(NS)
    assert event["metadata"]["name"] == posted["metadata"]["name"]  # one Event, not two
    assert event["message"] == posted["message"]
    calls = [(r.method, r.status) for r in api.requests if "/events" in r.path]
    assert calls == [("POST", 409), ("PATCH", 200), ("PATCH", 200)]
    for patch in api.requests_for("PATCH", "/events"):
        assert patch.content_type == "application/strategic-merge-patch+json"
    assert api.requests_for("PATCH", "/events")[-1].json() == {"count": 2}

    done = subprocess.run(
        [script("kubectl-kubeloop"), "alerts", "ctr", "-o", "json"],
        capture_output=True, text=True, timeout=60, check=False, env=env,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    (summary,) = json.loads(done.stdout)
    assert summary["variant"] == "canary" and summary["revision"] == CANARY_REVISION
    assert (summary["detector"], summary["features"], summary["count"]) == (
        "feature",
        ["device"],
        2,
    )
    assert summary["version"] == "v0002" and summary["windowSize"] == WINDOW
    listed = api.requests_for("GET", "/events")[-1]
    assert listed.param("fieldSelector") == (
        "involvedObject.name=ctr,involvedObject.kind=InferenceService,reason=DriftDetected"
    )
    table = subprocess.run(
        [script("kubectl-kubeloop"), "alerts"], capture_output=True, text=True, timeout=60,
        check=False, env=env,
    )  # fmt: skip
    assert table.returncode == 0, table.stderr
    header, row = table.stdout.splitlines()
    assert header.split()[:5] == ["LAST", "SEEN", "INFERENCESERVICE", "VARIANT", "REVISION"]
    assert row.split()[1:5] == ["ctr", "canary", CANARY_REVISION, "feature"]


# --- PostgreSQL as the alert store ------------------------------------------------------------


@pytest.mark.postgres
@pytest.mark.slow
def test_service_writes_alerts_to_postgres_and_kubeloop_alerts_reads_them(
    postgres_dsn, reference_dir, tmp_path
):
    from kubeloop.drift.alerts import open_alert_store

    url = f"{postgres_dsn}?table=live_{uuid.uuid4().hex[:10]}"
    service = DriftService(reference_dir, tmp_path / "pg", url, clean_env(), "--no-kube")
    try:
        raised = send_all(service.url, stream(WINDOW, 2 * WINDOW))
    finally:
        service.stop()
    try:
        listed = kubeloop_alerts(url)
        assert raised and sorted(a["id"] for a in listed) == sorted(raised)
        assert {(a["variant"], a["revision"], a["detector"]) for a in listed} == {
            ("primary", CANARY_REVISION, "feature")
        }  # no --kube: no ISVC status, so the variant falls back to ce-endpoint
        assert all(a["model"] == "ctr" and a["features"] == ["device"] for a in listed)
        assert not (tmp_path / "pg" / "alerts.db").exists()  # nothing went to SQLite
    finally:
        with open_alert_store(url) as store:
            store.drop()


# --- SIGKILL mid-stream -----------------------------------------------------------------------


def _send_until_killed(service: DriftService, events: list[CloudEvent], kill_at: int, rng):
    """Send events in order; while event ``kill_at`` is in flight, SIGKILL the service after
    a random few milliseconds. Returns (acknowledged event indexes, acknowledged alert ids,
    index of the event in flight at the kill)."""
    acked: list[int] = []
    alerts: list[str] = []
    with httpx.Client(timeout=10) as client:
        for i, ce in enumerate(events):
            headers, body = to_binary(ce)
            if i == kill_at:
                delay = rng.uniform(0, 0.004)
                threading.Timer(
                    delay, lambda: os.killpg(service.process.pid, signal.SIGKILL)
                ).start()
            try:
                response = client.post(f"{service.url}/", headers=headers, content=body)
            except httpx.HTTPError:
                service.process.wait(timeout=30)
                return acked, alerts, i
            assert response.status_code == 200, response.text
            acked.append(i)
            alerts += response.json()["alerts"]
    raise AssertionError("the service survived SIGKILL")


@pytest.mark.slow
def test_sigkill_mid_stream_loses_nothing_acknowledged(reference_dir, tmp_path):
    seed = random.SystemRandom().randrange(2**32)
    rng = random.Random(seed)
    why = f"(seed {seed}; rerun with it to reproduce)"
    events = stream(WINDOW, 3 * WINDOW, prefix="k")
    # Past the first drifted window, so acknowledged alerts exist, and before the end.
    kill_at = rng.randrange(2 * (2 * WINDOW // BATCH) + 1, len(events) - 4)
    state, store = tmp_path / "state", f"sqlite:///{tmp_path / 'alerts.db'}"

    service = DriftService(reference_dir, state, store, clean_env(), "--no-kube")
    acked, acked_alerts, in_flight = _send_until_killed(service, events, kill_at, rng)
    assert service.process.returncode == -signal.SIGKILL, why
    assert acked_alerts, why

    service = DriftService(reference_dir, state, store, clean_env(), "--no-kube")
    try:
        status = service.status()
        counters = status["counters"]
        halves = counters.get("events:request", 0) + counters.get("events:response", 0)
        # Everything acknowledged is there; of the event in flight, all or nothing.
        assert len(acked) <= halves <= len(acked) + 1, why
        pairs = counters.get("pairs", 0)
        acked_pairs = sum(1 for i in acked if i % 2 == 1)
        assert acked_pairs <= pairs <= acked_pairs + (in_flight % 2), why
        # No half-written pair: each committed pair left pending, got its rows counted,
        # buffered in the window and awaiting their labels; the other halves are pending.
        assert status["pending_halves"] == halves - 2 * pairs, why
        rows = sum(v for k, v in counters.items() if k.startswith("rows:"))
        assert rows == pairs * BATCH, why
        assert status["awaiting_labels"] == rows, why
        buffered = sum(w["n"] for w in status["open_windows"] if w["kind"] == "serve")
        assert buffered == rows % WINDOW, why

        # Every acknowledged alert survived; at most the in-flight event's own alert is new.
        stored = {a["id"] for a in kubeloop_alerts(store)}
        assert set(acked_alerts) <= stored, why
        assert len(stored - set(acked_alerts)) <= 1, why

        # The service goes on from where it was: the rest of the stream, from the next pair.
        rest = events[in_flight + 1 + (in_flight % 2 == 0) :]
        send_all(service.url, rest)
        after = service.status()
        assert after["pending_halves"] == status["pending_halves"], why
    finally:
        service.stop()
    for db in (state / "drift_state.db", tmp_path / "alerts.db"):
        with sqlite3.connect(db) as conn:
            assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",), db
