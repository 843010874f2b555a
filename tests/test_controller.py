"""The rollout controller against the loopback Kubernetes API server (tests/k8s_api_server.py),
through the REAL kubernetes client over HTTP.

A simulated request log (`Traffic`) plays the transformer and the request log: each pass it
serves a batch at the split the InferenceService has NOW (after the server's `reconcile`
played KServe), the non-serving model scoring in shadow (except at 100%, where KServe has no
`prev` tag), and labels every impression. The controller must walk shadow -> 5 -> 25 -> 50
-> 100 -> promote for a better candidate, roll back at once on a failed guardrail, and stop
on `kubectl kubeloop rollout abort`; every patch must be the plugin's merge patch, every step
an Event, and every request it made must be allowed by its Role in manifests/base.
"""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
import yaml
from k8s_api_server import MERGE_PATCH, KubeAPIServer, inference_service, write_kubeconfig

from kubeloop.cluster.canary import ClusterCanary
from kubeloop.cluster.controller import STATE_KEY, build_loop, rollout_event
from kubeloop.cluster.isvc import InferenceServiceClient
from kubeloop.serving.progressive import ProgressivePolicy
from kubeloop.serving.rollout_loop import records_frame

# Offline checks of the cluster path: the kind workflow's offline job runs them too.
pytestmark = pytest.mark.cluster

ROOT = Path(__file__).resolve().parents[1]
NS = "kubeloop"
CONTEXT = "kind-kubeloop"
V1 = "s3://mlpipeline/kubeloop/models/ctr/v1"
V2 = "s3://mlpipeline/kubeloop/models/ctr/v2"
CM = "kubeloop-rollout-ctr"
POLICY = ProgressivePolicy(
    min_requests=50,
    min_labelled=300,
    min_paired=200,
    tuned_n=2000,
    budget_labelled=200_000,
    min_requests_for_health=20,
)


class Traffic:
    """A request log that grows by one batch per fetch, served at the ISVC's split now."""

    def __init__(
        self, api: KubeAPIServer, *, seed: int, better: bool = True, failing: bool = False
    ):
        self.api = api
        self.rng = np.random.default_rng(seed)
        self.rows: list[dict] = []
        self.labels: dict[str, int] = {}
        self.better = better
        self.failing = failing
        self.n = 0

    def percent(self) -> int:
        spec = self.api.get(NS, "ctr")["spec"]["predictor"]
        return int(spec.get("canaryTrafficPercent") or 0)

    def batch(self, size: int = 600) -> None:
        percent = self.percent()
        n_candidate = round(size * percent / 100)  # the split is exactly the set percent
        now = datetime.now(UTC).isoformat()
        for i in range(size):
            rid = f"r{self.n}"
            self.n += 1
            q = float(self.rng.uniform(0.02, 0.3))
            y = int(self.rng.random() < q)
            p_prod = float(np.clip(q * np.exp(self.rng.normal(0, 0.6)), 1e-3, 0.9))
            noise = 0.1 if self.better else 0.6
            bias = 1.0 if getattr(self, "worse", False) else 0.0
            p_cand = float(np.clip(q * np.exp(bias + self.rng.normal(0, noise)), 1e-3, 0.9))
            by_candidate = i < n_candidate
            cand_status = 500 if self.failing else 200
            served = (
                [("canary", "v2", p_cand, cand_status)]
                if by_candidate
                else [("primary", "v1", p_prod, 200)]
            )
            if by_candidate and percent < 100:
                served.append(("shadow", "v1", p_prod, 200))
            elif not by_candidate:
                served.append(("shadow", "v2", p_cand, cand_status))
            for variant, version, p, status in served:
                self.rows.append(
                    {
                        "request_id": rid,
                        "variant": variant,
                        "version": version,
                        "predictions": [p] if status == 200 else None,
                        "status_code": status,
                        "latency_ms": 5.0,
                        "time": now,
                    }
                )
            self.labels[rid] = y

    def fetch(self, since):
        self.batch()
        return records_frame(list(self.rows)), dict(self.labels)


@pytest.fixture
def cluster(tmp_path):
    with KubeAPIServer() as api:
        api.add_inferenceservice(inference_service("ctr", V1))
        api.reconcile(NS, "ctr")
        api.add_object(
            "configmaps",
            {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": CM, "namespace": NS}},
        )
        kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", {CONTEXT: api})
        client = InferenceServiceClient(NS, context=CONTEXT, kubeconfig=str(kubeconfig))
        # A person rolls out v2 as the canary (what `kubectl kubeloop canary set` sends).
        client.set_canary("ctr", 10, V2)
        api.reconcile(NS, "ctr")
        api.clear_requests()
        yield api, client, kubeconfig


def controller(client, records):
    target = ClusterCanary(CONTEXT, NS, "ctr", client=client)
    return build_loop(client, "ctr", target, records=records, policy=POLICY, instance="pod-1")


def isvc_patches(api) -> list:
    out = []
    for r in api.requests_for("PATCH", "/inferenceservices/ctr"):
        assert r.content_type == MERGE_PATCH
        body = r.json()
        assert set(body) == {"spec"} and set(body["spec"]) == {"predictor"}
        assert set(body["spec"]["predictor"]) == {"canaryTrafficPercent"}
        out.append(body["spec"]["predictor"]["canaryTrafficPercent"])
    return out


def reasons(api) -> list[str]:
    events = sorted(api.events(NS), key=lambda e: e["metadata"]["creationTimestamp"])
    rollout = [e for e in events if e["reason"].startswith("Rollout")]
    # creationTimestamp has whole seconds: order by the history the record keeps instead.
    return [e["reason"] for e in rollout]


def record_of(api) -> dict:
    return json.loads(api.object("configmaps", NS, CM)["data"][STATE_KEY])


def run(api, loop, passes: int) -> list[dict]:
    seen = []
    for _ in range(passes):
        record = loop.reconcile_once()
        api.reconcile(NS, "ctr")  # KServe follows the patch
        seen.append({"phase": record.phase, "percent": record.state.percent})
        if record.done:
            break
    return seen


def test_a_better_candidate_walks_every_step_and_is_promoted(cluster) -> None:
    api, client, _ = cluster
    loop = controller(client, Traffic(api, seed=1))
    seen = run(api, loop, 20)
    assert seen[-1]["phase"] == "promoted", seen
    # The plugin's merge patches, one per step: shadow, 5, 25, 50, 100, then promote (null).
    assert isvc_patches(api) == [0, 5, 25, 50, 100, None]
    status = client.status("ctr")
    assert status.canary_percent is None and status.storage_uri == V2
    record = record_of(api)
    assert [h["action"] for h in record["history"]] == [
        "start", "advance", "advance", "advance", "advance", "promote",
    ]  # fmt: skip
    assert [h["percent"] for h in record["history"]] == [0, 5, 25, 50, 100, 100]
    assert record["production_version"] == "v1" and record["candidate_version"] == "v2"
    assert record["last"]["statistics"]["delta_logloss"]["high"] < 0  # proven better
    # Every step is an Event on the InferenceService.
    events = [e for e in api.events(NS) if e["reason"].startswith("Rollout")]
    assert sorted(e["reason"] for e in events) == sorted(
        ["RolloutStarted", *["RolloutAdvanced"] * 4, "RolloutPromoted"]
    )
    for e in events:
        assert (
            e["involvedObject"]["name"] == "ctr"
            and e["involvedObject"]["kind"] == "InferenceService"
        )
        assert e["reportingComponent"] == "kubeloop-rollout-controller"
        assert e["metadata"]["annotations"]["kubeloop.io/candidate"] == V2
    # A later pass with the candidate promoted does nothing.
    api.clear_requests()
    loop.reconcile_once()
    assert api.requests_for("PATCH") == [] and api.requests_for("POST") == []


def test_a_failed_guardrail_rolls_back_at_once(cluster) -> None:
    api, client, _ = cluster
    loop = controller(client, Traffic(api, seed=2, failing=True))
    seen = run(api, loop, 5)
    assert seen[-1] == {"phase": "rolled_back", "percent": 0}, seen
    assert len(seen) == 2  # start, then the first evaluation rolls back
    assert isvc_patches(api) == [0]  # the start pinned 0; rollback to 0 needs no second patch
    record = record_of(api)
    assert record["history"][-1]["action"] == "rollback"
    assert "error rate" in record["history"][-1]["reasons"][-1]
    (event,) = [e for e in api.events(NS) if e["reason"] == "RolloutRolledBack"]
    assert event["type"] == "Warning" and "error rate" in event["message"]
    assert client.status("ctr").canary_percent == 0


def test_a_candidate_proven_worse_is_rolled_back_in_shadow(cluster) -> None:
    api, client, _ = cluster
    traffic = Traffic(api, seed=3, better=False)
    traffic.worse = True
    loop = controller(client, traffic)
    seen = run(api, loop, 10)
    assert seen[-1] == {"phase": "rolled_back", "percent": 0}, seen
    assert isvc_patches(api) == [0]  # it never served a request
    record = record_of(api)
    assert "proven worse" in record["history"][-1]["reasons"][-1]
    assert record["last"]["statistics"]["delta_logloss"]["low"] > 0


def test_a_guardrail_failing_at_a_canary_step_rolls_back_from_it(cluster) -> None:
    api, client, _ = cluster

    class FailsUnderLoad(Traffic):
        def fetch(self, since):
            # Healthy in shadow and at 5%; its answers fail once it serves 25%.
            self.failing = self.percent() >= 25
            return super().fetch(since)

    loop = controller(client, FailsUnderLoad(api, seed=7))
    seen = run(api, loop, 20)
    assert seen[-1] == {"phase": "rolled_back", "percent": 0}, seen
    assert isvc_patches(api) == [0, 5, 25, 0]
    record = record_of(api)
    assert [h["action"] for h in record["history"]][-1] == "rollback"
    assert record["history"][-1]["reasons"][-1].startswith("candidate error rate")
    assert client.status("ctr").canary_percent == 0


def test_rollout_status_and_abort_through_the_plugin(cluster) -> None:
    from kubeloop.cluster.plugin import main

    api, client, kubeconfig = cluster
    loop = controller(client, Traffic(api, seed=4))
    run(api, loop, 3)  # start, then some steps
    percent_before = client.status("ctr").canary_percent
    assert percent_before and percent_before > 0
    out, err = io.StringIO(), io.StringIO()
    argv = ["--kubeconfig", str(kubeconfig), "--context", CONTEXT]
    assert main(["rollout", "status", "ctr", *argv], stdout=out, stderr=err) == 0, err.getvalue()
    text = out.getvalue()
    assert "step" in text and "delta LL" in text and "reasons" in text and V2 in text
    out = io.StringIO()
    assert main(["rollout", "status", "ctr", "-o", "json", *argv], stdout=out, stderr=err) == 0
    data = json.loads(out.getvalue())
    assert data["phase"] == "running" and data["decision"]["reasons"]
    api.clear_requests()
    out = io.StringIO()
    assert main(["rollout", "abort", "ctr", *argv], stdout=out, stderr=err) == 0, err.getvalue()
    assert isvc_patches(api) == [0]
    assert record_of(api)["phase"] == "aborted"
    assert any(e["reason"] == "RolloutAborted" for e in api.events(NS))
    # The controller leaves an aborted rollout alone.
    api.clear_requests()
    loop.reconcile_once()
    assert api.requests_for("PATCH") == []
    # Aborting twice is a one-line error.
    err = io.StringIO()
    assert main(["rollout", "abort", "ctr", *argv], stdout=io.StringIO(), stderr=err) == 1
    assert err.getvalue().startswith("error: nothing to abort")


# --- least privilege --------------------------------------------------------------------------


def _role() -> list[dict]:
    docs = list(yaml.safe_load_all((ROOT / "manifests/base/rollout-controller.yaml").read_text()))
    (role,) = [d for d in docs if d and d["kind"] == "Role"]
    return role["rules"]


_VERB = {"GET": "get", "PATCH": "patch", "POST": "create", "PUT": "update", "DELETE": "delete"}


def _allowed(rules: list[dict], method: str, path: str) -> bool:
    parts = path.strip("/").split("/")
    if parts[0] == "api":  # /api/v1/namespaces/NS/RESOURCE[/NAME]
        group, rest = "", parts[2:]
    else:  # /apis/GROUP/VERSION/namespaces/NS/RESOURCE[/NAME]
        group, rest = parts[1], parts[3:]
    assert rest[0] == "namespaces" and rest[1] == NS, path
    resource = rest[2]
    name = rest[3] if len(rest) > 3 else None
    verb = _VERB[method] if name is not None or method != "GET" else "list"
    for rule in rules:
        if group in rule["apiGroups"] and resource in rule["resources"] and verb in rule["verbs"]:
            names = rule.get("resourceNames")
            if not names or name in names:
                return True
    return False


def test_every_request_of_the_controller_is_allowed_by_its_role(cluster) -> None:
    api, client, _ = cluster
    rules = _role()
    loop = controller(client, Traffic(api, seed=5))
    run(api, loop, 20)
    ClusterCanary(CONTEXT, NS, "ctr", client=client).progress()
    made = {(r.method, r.path) for r in api.requests}
    assert made, "the controller made no request"
    denied = [m for m in made if not _allowed(rules, *m)]
    assert denied == []
    # And the Role grants nothing it does not use: no list/watch/delete, no other name.
    for rule in rules:
        assert not {"list", "watch", "delete", "deletecollection", "*"} & set(rule["verbs"])
        if rule["resources"] != ["events"]:
            assert rule.get("resourceNames"), rule


def test_rollout_event_names_are_unique_per_step(cluster) -> None:
    api, client, _ = cluster
    loop = controller(client, Traffic(api, seed=6))
    run(api, loop, 3)
    record = loop.store.load()
    isvc = client.get("ctr")
    names = {rollout_event(record, step, isvc)["metadata"]["name"] for step in record.history}
    assert len(names) == len(record.history)


def test_the_heartbeat_follows_the_passes(tmp_path) -> None:
    import threading

    from kubeloop.cluster.controller_cli import run_forever
    from kubeloop.errors import KubeloopError

    beat = tmp_path / "heartbeat"
    stop = threading.Event()
    outcomes = iter([KubeloopError("the request log is away"), RuntimeError("bug")])

    class Loop:
        passes = 0

        def reconcile_once(self):
            self.passes += 1
            outcome = next(outcomes, None)
            if outcome is None:
                stop.set()
                return
            if isinstance(outcome, RuntimeError) and beat.exists():
                beat.unlink()  # see whether a crashing pass touches it
            raise outcome

    loop = Loop()
    run_forever(loop, 0, stop, str(beat))
    assert loop.passes == 3
    # The crashing pass left it alone, the clean last pass touched it again.
    assert beat.exists()


def test_a_step_waits_until_kserve_serves_its_split(cluster) -> None:
    api, client, _ = cluster
    traffic = Traffic(api, seed=8)
    loop = controller(client, traffic)
    record = loop.reconcile_once()  # start: canaryTrafficPercent 10 -> 0, not reconciled yet
    assert record.settled is False
    api.clear_requests()
    for _ in range(2):
        record = loop.reconcile_once()
    # KServe still reports the old 10% split: nothing is judged or patched meanwhile.
    assert record.settled is False and record.last is None
    assert api.requests_for("PATCH") == []
    assert (
        "waiting for the split" in ClusterCanary(CONTEXT, NS, "ctr", client=client).progress().text
    )
    api.reconcile(NS, "ctr")
    record = loop.reconcile_once()
    # Settled, judged (one batch: the shadow stage passed) and moved on to 5%, whose split
    # KServe has yet to serve.
    assert record.last is not None and record.history[-1].action == "advance"
    assert record.state.percent == 5 and record.settled is False
    # Nothing was read while settling (one batch in all), and the SRM test of the step saw
    # exactly the requests served once the 0% split was in place.
    assert traffic.n == 600
    assert record.last.statistics.srm.total == 600


def test_reverting_the_spec_after_a_rollback_is_not_a_new_rollout(tmp_path) -> None:
    with KubeAPIServer() as api:
        api.add_inferenceservice(inference_service("ctr", V1))
        api.reconcile(NS, "ctr")
        api.add_object(
            "configmaps",
            {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": CM, "namespace": NS}},
        )
        kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", {CONTEXT: api})
        client = InferenceServiceClient(NS, context=CONTEXT, kubeconfig=str(kubeconfig))
        loop = controller(client, Traffic(api, seed=9, failing=True))
        assert loop.reconcile_once() is None  # idle: v1 serves everything, remembered
        client.set_canary("ctr", 10, V2)  # a person rolls out v2
        api.reconcile(NS, "ctr")
        seen = run(api, loop, 5)
        assert seen[-1]["phase"] == "rolled_back"
        assert record_of(api)["production"] == V1
        # The second step of rejecting it: the spec back to v1 (KServe: a new v1 revision at 0%).
        client.rollback("ctr", V1)
        api.reconcile(NS, "ctr")
        api.clear_requests()
        record = loop.reconcile_once()
        assert record.candidate == V2 and record.phase == "rolled_back"
        assert api.requests_for("PATCH") == [] and api.requests_for("POST") == []
        # A new version after that is a new rollout again, against v1.
        client.set_canary("ctr", 0, "s3://mlpipeline/kubeloop/models/ctr/v3")
        api.reconcile(NS, "ctr")
        record = loop.reconcile_once()
        assert record.candidate.endswith("/v3") and record.production == V1
