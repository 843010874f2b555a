"""The drift detector service over HTTP: KServe-logger CloudEvents (binary mode, built with
the cloudevents SDK as KServe's Go SDK sends them) are paired and windowed; bad events get
a 400 naming the defect and a counter, never a crash, and good events are still accepted
afterwards; labels, /healthz, /metrics, Kubernetes Events (with a fake API) and the
command line the manifests use."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pytest
from cloudevents.conversion import to_binary, to_structured
from cloudevents.http import CloudEvent
from fastapi.testclient import TestClient

from kubeloop.cloudevents import REQUEST_TYPE, RESPONSE_TYPE
from kubeloop.drift import DriftMonitor, MonitorConfig, Reference, open_alert_store
from kubeloop.drift.service import DriftMetrics, KubeAlertPoster, _parser, build_app

T0 = datetime(2026, 1, 15, 9, tzinfo=UTC)
COLUMNS = ["hour", "device", "advertiser_id", "user_ctr_7d"]


def frame(n: int, seed: int, drift: bool = False) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "hour": rng.integers(0, 24, n),
            "device": rng.choice(["mobile", "desktop"], n, p=[0.9, 0.1] if drift else [0.5, 0.5]),
            "advertiser_id": rng.integers(1, 6, n),
            "user_ctr_7d": rng.beta(2, 40, n),
        }
    )


def score(row) -> float:
    """The fake model: its scores depend on the hour only."""
    return 0.05 + 0.01 * row["hour"] / 24


@pytest.fixture
def service(tmp_path):
    ref_frame = frame(2000, seed=1)
    reference = Reference("ctr", "v0001", ref_frame, ref_frame.apply(score, axis=1).to_numpy())
    config = MonitorConfig.model_validate(
        {
            "window": {"max_events": 200, "max_seconds": None, "min_events": 50},
            "feature_detector": {"type": "scipy", "p_val": 1e-6},
            "prediction_detector": {"type": "scipy", "p_val": 1e-4},
        }
    )
    store = open_alert_store(f"sqlite:///{tmp_path / 'alerts.db'}")
    monitor = DriftMonitor(reference, tmp_path / "state", config=config, alert_store=store)
    metrics = DriftMetrics()
    app = build_app(monitor, inference_service="ctr", metrics=metrics)
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client, monitor
    monitor.close()


def event(
    kind: str, event_id: str, data: dict, *, endpoint="default", time=T0, **extra
) -> CloudEvent:
    attrs = {
        "id": event_id,
        "type": REQUEST_TYPE if kind == "request" else RESPONSE_TYPE,
        "source": "http://localhost:9081/",
        "specversion": "1.0",
        "time": time.isoformat().replace("+00:00", "Z"),
        "inferenceservicename": "ctr",
        "namespace": "kubeloop",
        "component": "predictor",
        "endpoint": endpoint,
        "datacontenttype": "application/json",
        **extra,
    }
    return CloudEvent(attrs, data)


def post(client, ce: CloudEvent, *, structured: bool = False):
    headers, body = (to_structured if structured else to_binary)(ce)
    return client.post("/", headers=headers, content=body)


def send_pair(client, event_id, rows, scores, **kw):
    r1 = post(client, event("request", event_id, {"instances": rows}, **kw))
    r2 = post(client, event("response", event_id, {"predictions": list(scores)}, **kw))
    return r1, r2


def metric(client, series: str) -> float:
    """Value of `name{label="value",...}` in /metrics (label order does not matter)."""
    from prometheus_client.parser import text_string_to_metric_families

    name, _, rest = series.partition("{")
    wanted = dict(re.findall(r'(\w+)="([^"]*)"', rest))
    for family in text_string_to_metric_families(client.get("/metrics").text):
        for sample in family.samples:
            if sample.name == name and sample.labels == wanted:
                return float(sample.value)
    return 0.0


def test_pairs_request_and_response_in_either_order(service):
    client, monitor = service
    rows = frame(2, seed=3).to_dict("records")
    r1, r2 = send_pair(client, "a", rows, [0.1, 0.2])
    assert r1.status_code == 200 and r1.json()["paired"] is False
    assert r2.status_code == 200 and r2.json()["paired"] is True
    # Response first, in structured mode, on the canary endpoint.
    r3 = post(client, event("response", "b", {"predictions": [[0.9, 0.1]]}, endpoint="canary"),
              structured=True)  # fmt: skip
    r4 = post(client, event("request", "b", {"instances": rows[:1]}, endpoint="canary"))
    assert (r3.json()["paired"], r4.json()["paired"]) == (False, True)
    windows = {(w["variant"], w["n"]) for w in monitor.status()["open_windows"]}
    assert windows == {("primary", 2), ("canary", 1)}
    assert metric(client, 'kubeloop_drift_events_total{type="request",variant="canary"}') == 1


@pytest.mark.parametrize(
    ("headers", "body", "reason", "says"),
    [
        ({"content-type": "application/json"}, b'{"instances": [{}]}', "missing_header", "ce-id"),
        (
            {"ce-id": "x", "ce-type": REQUEST_TYPE, "ce-source": "/s", "ce-specversion": "1.0",
             "content-type": "text/plain"},
            b"hour=3", "content_type", "not JSON",
        ),
        (
            {"ce-id": "x", "ce-type": REQUEST_TYPE, "ce-source": "/s", "ce-specversion": "1.0",
             "content-type": "application/json"},
            b"\xff\xfe{", "undecodable_body", "not UTF-8",
        ),
        (
            {"ce-id": "x", "ce-type": REQUEST_TYPE, "ce-source": "/s", "ce-specversion": "1.0",
             "content-type": "application/json"},
            b'{"instances": [', "undecodable_body", "not valid JSON",
        ),
        (
            {"ce-id": "x", "ce-type": REQUEST_TYPE, "ce-source": "/s", "ce-specversion": "1.0",
             "content-type": "application/json"},
            b'{"inputs": []}', "malformed_body", "V2",
        ),
        (
            {"ce-id": "x", "ce-type": RESPONSE_TYPE, "ce-source": "/s", "ce-specversion": "1.0",
             "content-type": "application/json"},
            b'{"predictions": ["high"]}', "malformed_body", "not a number",
        ),
        (
            {"ce-id": "x", "ce-type": "com.example.other", "ce-source": "/s",
             "ce-specversion": "1.0", "content-type": "application/json"},
            b"{}", "unknown_type", "neither",
        ),
        (
            {"ce-id": "x", "ce-type": REQUEST_TYPE, "ce-source": "/s", "ce-specversion": "1.0",
             "ce-time": "yesterday", "content-type": "application/json"},
            b'{"instances": [{"hour": 1}]}', "bad_time", "RFC 3339",
        ),
    ],
)  # fmt: skip
def test_bad_events_get_400_and_a_counter(service, headers, body, reason, says):
    client, _ = service
    response = client.post("/", headers=headers, content=body)
    assert response.status_code == 400
    assert response.json()["reason"] == reason and says in response.json()["error"]
    assert metric(client, f'kubeloop_drift_bad_events_total{{reason="{reason}"}}') == 1
    # The service is still fine: a good pair is accepted afterwards.
    r1, r2 = send_pair(client, "good", frame(1, seed=4).to_dict("records"), [0.3])
    assert (r1.status_code, r2.status_code, r2.json()["paired"]) == (200, 200, True)
    assert client.get("/healthz").json()["status"] == "ok"


def test_mismatched_pair_and_foreign_service_are_refused(service):
    client, _ = service
    rows = frame(2, seed=5).to_dict("records")
    post(client, event("request", "m", {"instances": rows}))
    bad = post(client, event("response", "m", {"predictions": [0.1]}))
    assert bad.status_code == 400 and bad.json()["reason"] == "mismatched_pair"
    status = client.get("/status").json()
    assert status["pending_halves"] == 0 and status["counters"]["pairs_mismatched"] == 1
    other = event("request", "o", {"instances": rows})
    other["inferenceservicename"] = "fraud"
    refused = post(client, other)
    assert refused.status_code == 400 and "fraud" in refused.json()["error"]


def test_windows_alerts_metrics_and_labels(service):
    client, monitor = service
    base, drifted = frame(200, seed=6), frame(200, seed=7, drift=True)
    for i, row in enumerate(base.to_dict("records")):
        send_pair(client, f"q{i}", [row], [score(row)], time=T0 + timedelta(seconds=i))
    for i, row in enumerate(drifted.to_dict("records")):
        send_pair(client, f"d{i}", [row], [score(row)], time=T0 + timedelta(seconds=200 + i))
    assert (
        metric(
            client,
            'kubeloop_drift_windows_evaluated_total{detector="feature",variant="primary",outcome="tested"}',
        )
        == 2
    )
    assert metric(client, 'kubeloop_drift_alerts_total{detector="feature",variant="primary"}') == 1
    assert (
        metric(client, 'kubeloop_drift_alerts_total{detector="prediction",variant="primary"}') == 0
    )
    p_line = 'kubeloop_drift_last_p_value{detector="feature",variant="primary",version="v0001"}'
    assert metric(client, p_line) < 1e-6
    (alert,) = monitor.alert_store.list(detector="feature")
    assert alert.features == ["device"] and alert.window.start == T0 + timedelta(seconds=200)

    labels = {"labels": [{"request_id": "q0", "click": 1}, {"request_id": "zz", "click": 0}]}
    result = client.post("/labels", json=labels).json()
    assert (result["matched"], result["unknown"]) == (1, 1)
    assert metric(client, 'kubeloop_drift_labels_total{result="matched"}') == 1
    assert (
        client.post("/labels", json={"labels": [{"request_id": "q1", "click": 3}]}).status_code
        == 400
    )
    assert client.post("/labels", content=b"nope").status_code == 400
    text = client.get("/metrics").text
    for name in ("kubeloop_drift_events_total", "kubeloop_drift_bad_events_total",
                 "kubeloop_drift_windows_evaluated_total", "kubeloop_drift_alerts_total",
                 "kubeloop_drift_last_p_value", "kubeloop_drift_errors_total"):  # fmt: skip
        assert f"# TYPE {name.removesuffix('_total')}" in text


class FakeCore:
    def __init__(self, fail: bool = False):
        self.fail, self.events = fail, []

    def create_namespaced_event(self, namespace, body):
        if self.fail:
            raise RuntimeError("API server unreachable")
        self.events.append((namespace, body))
        return body


class FakeCustom:
    def get_namespaced_custom_object(self, group, version, namespace, plural, name):
        return {"metadata": {"name": name, "namespace": namespace, "uid": "u-1"}}


@pytest.mark.parametrize("fail", [False, True])
def test_alerts_become_kubernetes_events_and_failures_are_counted(tmp_path, fail):
    reference = Reference("ctr", "v0001", frame(1000, seed=1), None)
    config = {"window": {"max_events": 100, "max_seconds": None, "min_events": 50},
              "feature_detector": {"type": "scipy", "p_val": 1e-6}}  # fmt: skip
    monitor = DriftMonitor(reference, tmp_path / "s", config=config)
    core = FakeCore(fail=fail)
    kube = KubeAlertPoster("kubeloop", "ctr", core_api=core, custom_api=FakeCustom())
    app = build_app(monitor, kube=kube)
    with TestClient(app) as client:
        for i, row in enumerate(frame(100, seed=9, drift=True).to_dict("records")):
            send_pair(client, f"k{i}", [row], [0.05])
        kube.join()
        posted = metric(client, 'kubeloop_drift_kube_events_total{result="posted"}')
        failed = metric(client, 'kubeloop_drift_kube_events_total{result="failed"}')
        assert client.get("/healthz").status_code == 200
    kube.close()
    monitor.close()
    if fail:
        assert (posted, failed) == (0, 1)
    else:
        assert (posted, failed) == (1, 0)
        ((namespace, body),) = core.events
        assert namespace == "kubeloop" and body["reason"] == "DriftDetected"
        assert body["involvedObject"]["uid"] == "u-1" and "device" in body["message"]


def test_command_line_of_the_manifest(tmp_path):
    args = _parser().parse_args(
        [
            "--port=8080",
            "--reference_dir=/mnt/models",
            "--inference_service=ctr",
            "--namespace=kubeloop",
        ]
    )
    assert (args.port, str(args.reference_dir), args.inference_service) == (
        8080,
        "/mnt/models",
        "ctr",
    )
    assert args.kube is None and args.score_reference is True
    args = _parser().parse_args(["--reference-dir", str(tmp_path), "--kube", "--detector", "scipy"])
    assert args.kube is True and args.backend == "scipy"
    args = _parser().parse_args(["--reference-dir", str(tmp_path), "--backend", "alibi"])
    assert args.backend == "alibi"


def test_reference_from_an_exported_directory(tmp_path):
    from kubeloop.registry.records import ModelVersion

    features = frame(300, seed=2)
    features.to_parquet(tmp_path / "reference.parquet")
    record = ModelVersion(
        name="ctr", version="v0003", stage="production", created_at=T0, model_kind="lightgbm",
        metrics={"log_loss": 0.18, "normalized_entropy": 0.89}, gate={"passed": True},
        feature_service="ctr_model", features=COLUMNS,
        training_window={"start": T0 - timedelta(days=9), "end": T0},
        data_scenario="baseline", code_version="test", files=["model.txt"],
    )  # fmt: skip
    (tmp_path / "metadata.json").write_text(record.model_dump_json())
    ref = Reference.from_dir(tmp_path)  # no loadable model here: scores are learned online
    assert (ref.model, ref.version, ref.predictions) == ("ctr", "v0003", None)
    assert list(ref.features.columns) == COLUMNS and ref.metrics["normalized_entropy"] == 0.89
    json.loads((tmp_path / "metadata.json").read_text())
