"""`kubeloop canary --context` and `kubectl kubeloop` through the REAL kubernetes client, over
HTTP, against the loopback API server of tests/k8s_api_server.py.

Each command runs as its console script in a subprocess with KUBECONFIG set, as a user runs
it. The kubeconfig's current context is a decoy server holding the same InferenceService:
every verb given ``--context kind-kubeloop`` must reach the right server and leave the decoy
untouched. Between verbs the server's `reconcile` plays KServe's controller, so each verb is
checked against the traffic split KServe would produce, not just against the patch sent.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from k8s_api_server import (
    MERGE_PATCH,
    KubeAPIServer,
    inference_service,
    write_kubeconfig,
)
from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException

BIN = Path(sys.executable).parent
CONTEXT = "kind-kubeloop"
NS = "kubeloop"
PREFIX = "s3://mlpipeline/kubeloop/models"
V1, V2 = f"{PREFIX}/ctr/v1", f"{PREFIX}/ctr/v2"
ISVC_PATH = f"/apis/serving.kserve.io/v1beta1/namespaces/{NS}/inferenceservices/ctr"


def _script(name: str) -> str:
    path = BIN / name
    if not path.exists():
        pytest.skip(f"console script {name} is not installed in {BIN} (pip install -e .)")
    return str(path)


@pytest.fixture
def cluster(tmp_path):
    """(api, decoy, env): the server of context kind-kubeloop with InferenceService ctr at
    v1 (reconciled: revision 00001 has 100%), a decoy server as the current context, and the
    environment of a shell whose KUBECONFIG names both."""
    with KubeAPIServer() as api, KubeAPIServer(token="decoy-token") as decoy:
        for server in (api, decoy):
            server.add_inferenceservice(inference_service("ctr", V1))
            server.reconcile(NS, "ctr")
        kubeconfig = write_kubeconfig(
            tmp_path / "kubeconfig", {"decoy": decoy, CONTEXT: api}, current="decoy"
        )
        env = {**os.environ, "KUBECONFIG": str(kubeconfig)}
        env.pop("KUBERNETES_SERVICE_HOST", None)
        api.clear_requests()
        decoy.clear_requests()
        yield api, decoy, env
        assert decoy.requests == [], "a --context command reached the current context"


def run(env, *argv: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        list(argv), env=env, capture_output=True, text=True, timeout=60, check=False
    )


def patches(api: KubeAPIServer) -> list[tuple[str, dict]]:
    """(content type, body) of every PATCH of the InferenceService, in order."""
    return [(r.content_type, r.json()) for r in api.requests_for("PATCH", ISVC_PATH)]


def traffic(api: KubeAPIServer) -> list[tuple[str, int, str | None]]:
    comp = api.get(NS, "ctr")["status"]["components"]["predictor"]
    return [(t["revisionName"], t["percent"], t.get("tag")) for t in comp["traffic"]]


def rev(n: int) -> str:
    return f"ctr-predictor-{n:05d}"


# --- kubeloop canary --context --------------------------------------------------------------


def test_kubeloop_canary_verbs_with_context_follow_kserve_rollout(cluster):
    api, _, env = cluster
    kubeloop = _script("kubeloop")
    ctx = ["--context", CONTEXT, "--model", "ctr"]

    done = run(env, kubeloop, "canary", "set", "10", "--version", "v2", *ctx)
    assert done.returncode == 0, done.stderr
    assert "canaryTrafficPercent (unset) -> 10" in done.stdout
    assert patches(api) == [
        (MERGE_PATCH, {"spec": {"predictor": {"canaryTrafficPercent": 10, "model": {"storageUri": V2}}}})
    ]  # fmt: skip
    stored = api.get(NS, "ctr")
    assert stored["metadata"]["generation"] == 2
    assert stored["spec"]["predictor"]["model"]["modelFormat"] == {"name": "kubeloop-ctr"}
    api.reconcile(NS, "ctr")
    assert traffic(api) == [(rev(2), 10, None), (rev(1), 90, "prev")]

    done = run(env, kubeloop, "canary", "status", *ctx)
    assert done.returncode == 0, done.stderr
    status = json.loads(done.stdout)
    assert (status["canary_percent"], status["phase"], status["storage_uri"]) == (10, "canary", V2)
    assert [(t["revision"], t["percent"]) for t in status["traffic"]] == [
        (rev(2), 10),
        (rev(1), 90),
    ]
    assert status["context"] == CONTEXT and status["up_to_date"] is True

    # A server-side dry run: the API server sees dryRun=All and nothing changes.
    before = api.get(NS, "ctr")["metadata"]["resourceVersion"]
    done = run(env, kubeloop, "canary", "set", "50", "--dry-run", *ctx)
    assert done.returncode == 0, done.stderr
    assert api.requests_for("PATCH")[-1].query == {"dryRun": ["All"]}
    assert api.get(NS, "ctr")["metadata"]["resourceVersion"] == before

    done = run(env, kubeloop, "canary", "promote", *ctx)
    assert done.returncode == 0, done.stderr
    assert patches(api)[-1] == (
        MERGE_PATCH,
        {"spec": {"predictor": {"canaryTrafficPercent": None}}},
    )
    assert "canaryTrafficPercent" not in api.get(NS, "ctr")["spec"]["predictor"]
    api.reconcile(NS, "ctr")
    comp = api.get(NS, "ctr")["status"]["components"]["predictor"]
    assert traffic(api) == [(rev(2), 100, None)]
    assert (comp["latestRolledoutRevision"], comp["previousRolledoutRevision"]) == (rev(2), rev(1))

    # After a promote, "rollback to v1" in one patch would leave v2 at 100% (a new revision
    # ends KServe's rolled-back case): it is refused and nothing is sent.
    sent = len(patches(api))
    done = run(env, kubeloop, "canary", "rollback", "--version", "v1", *ctx)
    assert done.returncode != 0 and "safe sequence" in done.stderr
    assert len(patches(api)) == sent

    # The safe sequence: pin (KServe moves its pointer back, then the traffic), revert the
    # version (a new revision at 0%), promote it.
    done = run(env, kubeloop, "canary", "rollback", *ctx)
    assert done.returncode == 0, done.stderr
    assert patches(api)[-1] == (MERGE_PATCH, {"spec": {"predictor": {"canaryTrafficPercent": 0}}})
    api.reconcile(NS, "ctr")
    assert traffic(api) == [(rev(2), 0, None), (rev(1), 100, "prev")]
    done = run(env, kubeloop, "canary", "rollback", "--version", "v1", *ctx)
    assert done.returncode == 0, done.stderr
    assert patches(api)[-1] == (MERGE_PATCH, {"spec": {"predictor": {"model": {"storageUri": V1}}}})
    api.reconcile(NS, "ctr")
    assert traffic(api) == [(rev(3), 0, None), (rev(1), 100, "prev")]
    done = run(env, kubeloop, "canary", "promote", *ctx)
    assert done.returncode == 0, done.stderr
    api.reconcile(NS, "ctr")
    assert traffic(api) == [(rev(3), 100, None)]
    stored = api.get(NS, "ctr")
    assert stored["spec"]["predictor"]["model"]["storageUri"] == V1
    assert stored["metadata"]["generation"] == 6


def test_kubeloop_canary_errors_name_the_object_and_context(cluster):
    _, _, env = cluster
    kubeloop = _script("kubeloop")
    done = run(env, kubeloop, "canary", "status", "--context", CONTEXT, "--model", "nope")
    assert done.returncode != 0
    assert 'inferenceservice "nope" not found in namespace "kubeloop"' in done.stderr + done.stdout
    assert f'context "{CONTEXT}"' in done.stderr + done.stdout
    assert "Traceback" not in done.stderr

    done = run(env, kubeloop, "canary", "promote", "--context", "missing", "--model", "ctr")
    assert done.returncode != 0 and 'context "missing" is not in the kubeconfig' in (
        done.stderr + done.stdout
    )


# --- kubectl kubeloop -----------------------------------------------------------------------


def test_kubectl_plugin_canary_verbs_with_context(cluster):
    api, _, env = cluster
    plugin = _script("kubectl-kubeloop")
    ctx = ["--context", CONTEXT, "-n", NS]

    done = run(env, plugin, "canary", "set", "ctr", "20", "--storage-uri", V2, *ctx)
    assert done.returncode == 0, done.stderr
    assert done.stdout == (
        "inferenceservice.serving.kserve.io/ctr patched: canaryTrafficPercent (unset) -> 20, "
        f"storageUri {V1} -> {V2}\n"
    )
    api.reconcile(NS, "ctr")

    done = run(env, plugin, "canary", "status", "ctr", *ctx)
    assert done.returncode == 0, done.stderr
    rows = [line.split() for line in done.stdout.splitlines()]
    assert ["ctr", "True", "canary", "20%"] == rows[1][:4]
    assert [rev(2), "20%", "true"] in [r[:3] for r in rows]
    assert [rev(1), "80%", "false", "prev"] in [r[:4] for r in rows]

    done = run(env, plugin, "canary", "rollback", "ctr", *ctx)
    assert done.returncode == 0, done.stderr
    api.reconcile(NS, "ctr")
    assert traffic(api) == [(rev(2), 0, None), (rev(1), 100, "prev")]

    done = run(env, plugin, "canary", "promote", "ctr", *ctx, "-o", "json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["patch"] == {
        "spec": {"predictor": {"canaryTrafficPercent": None}}
    }
    api.reconcile(NS, "ctr")
    assert traffic(api) == [(rev(2), 100, None)]
    assert [ct for ct, _ in patches(api)] == [MERGE_PATCH] * 3


def test_kubectl_plugin_without_kserve_or_with_a_bad_token(tmp_path):
    plugin = _script("kubectl-kubeloop")
    with KubeAPIServer(kserve_installed=False) as bare, KubeAPIServer(token="right") as api:
        api.add_inferenceservice(inference_service("ctr", V1))
        kubeconfig = write_kubeconfig(
            tmp_path / "kc", {"bare": bare, "stale": f"{api.url}"}, current="bare"
        )
        env = {**os.environ, "KUBECONFIG": str(kubeconfig)}
        done = run(env, plugin, "canary", "status", "ctr")
        assert done.returncode == 1
        assert "is KServe installed?" in done.stderr and 'context "bare"' in done.stderr
        done = run(env, plugin, "--context", "stale", "canary", "promote", "ctr")
        assert done.returncode == 1 and done.stderr.startswith("error: unauthorized")
        assert api.requests_for("PATCH") == []


# --- the server itself behaves like an API server (the real client sees real errors) --------


@pytest.fixture
def custom_api(tmp_path):
    with KubeAPIServer() as api:
        api.add_inferenceservice(inference_service("ctr", V1))
        write_kubeconfig(tmp_path / "kc", {CONTEXT: api})
        from kubernetes import config

        api_client = config.new_client_from_config(str(tmp_path / "kc"), context=CONTEXT)
        yield api, api_client


def test_server_refuses_what_the_api_server_refuses(custom_api):
    api, api_client = custom_api
    custom = k8s.CustomObjectsApi(api_client)
    args = ("serving.kserve.io", "v1beta1", NS, "inferenceservices", "ctr")

    with pytest.raises(ApiException) as err:  # the CRD schema: an integer in 0..100
        custom.patch_namespaced_custom_object(
            *args, {"spec": {"predictor": {"canaryTrafficPercent": "ten"}}}
        )
    assert err.value.status == 422
    body = json.loads(err.value.body)
    assert body["kind"] == "Status" and body["reason"] == "Invalid"
    assert body["details"]["causes"][0]["field"] == "spec.predictor.canaryTrafficPercent"

    stale = {"metadata": {"resourceVersion": "1"}, "spec": {"predictor": {"minReplicas": 2}}}
    with pytest.raises(ApiException) as err:
        custom.patch_namespaced_custom_object(*args, stale)
    assert err.value.status == 409 and json.loads(err.value.body)["reason"] == "Conflict"

    raw = api_client.call_api  # the same client, a hand-chosen content type and body
    for content_type, body, code in [
        ("application/strategic-merge-patch+json", {"spec": {}}, 415),
        ("application/json-patch+json", [{"op": "remove", "path": "/spec"}], 415),
        (MERGE_PATCH, ["not", "an", "object"], 400),
    ]:
        with pytest.raises(ApiException) as err:
            raw(
                ISVC_PATH, "PATCH", header_params={"Content-Type": content_type}, body=body,
                auth_settings=["BearerToken"], _preload_content=False,
            )  # fmt: skip
        assert err.value.status == code, content_type
    assert api.get(NS, "ctr")["metadata"]["generation"] == 1  # nothing was applied

    # A status change through the main resource is dropped (status is a subresource), and a
    # patch that changes nothing bumps nothing.
    rv = api.get(NS, "ctr")["metadata"]["resourceVersion"]
    custom.patch_namespaced_custom_object(*args, {"status": {"url": "http://evil"}})
    assert "status" not in api.get(NS, "ctr")
    assert api.get(NS, "ctr")["metadata"]["resourceVersion"] == rv

    with pytest.raises(ApiException) as err:
        custom.get_namespaced_custom_object(*args[:4], "nope")
    assert err.value.status == 404
    assert json.loads(err.value.body)["details"] == {
        "name": "nope", "group": "serving.kserve.io", "kind": "inferenceservices"
    }  # fmt: skip


def test_events_through_both_api_groups_are_one_store(custom_api):
    api, api_client = custom_api
    core = k8s.CoreV1Api(api_client)
    event = {
        "metadata": {"name": "ctr.e1", "namespace": NS},
        "involvedObject": {"kind": "InferenceService", "name": "ctr", "namespace": NS},
        "reason": "DriftDetected", "type": "Warning", "message": "m", "count": 1,
    }  # fmt: skip
    core.create_namespaced_event(NS, event)
    with pytest.raises(ApiException) as err:
        core.create_namespaced_event(NS, event)
    assert err.value.status == 409 and json.loads(err.value.body)["reason"] == "AlreadyExists"
    with pytest.raises(ApiException) as err:
        core.create_namespaced_event(NS, {**event, "metadata": {"name": "ctr.e2"}, "count": -1})
    assert err.value.status == 422

    events_v1 = k8s.EventsV1Api(api_client)
    events_v1.create_namespaced_event(
        NS,
        {
            "metadata": {"name": "ctr.e3", "namespace": NS},
            "regarding": {"kind": "InferenceService", "name": "ctr", "namespace": NS},
            "reason": "DriftDetected", "type": "Warning", "note": "from events.k8s.io",
            "action": "Detect", "reportingController": "kubeloop-drift-detector",
            "reportingInstance": "pod-1", "eventTime": "2026-01-15T09:00:00.000000Z",
        },
    )  # fmt: skip
    # ctr.e1 came through the core API without eventTime: events.k8s.io shows it as null,
    # which the client's model refuses (kubernetes-client/python#1616), so read it raw.
    answer = events_v1.patch_namespaced_event(
        "ctr.e1", NS, {"note": "patched", "deprecatedCount": 5}, _preload_content=False
    )
    assert json.loads(answer.data)["regarding"]["name"] == "ctr"
    stored = {e["metadata"]["name"]: e for e in api.events(NS)}
    assert stored["ctr.e1"]["message"] == "patched" and stored["ctr.e1"]["count"] == 5
    assert stored["ctr.e3"]["involvedObject"]["name"] == "ctr"

    listed = core.list_namespaced_event(
        NS, field_selector="involvedObject.name=ctr,reason=DriftDetected", limit=1
    )
    names = [listed.items[0].metadata.name]
    while listed.metadata._continue:
        listed = core.list_namespaced_event(
            NS, field_selector="involvedObject.name=ctr,reason=DriftDetected", limit=1,
            _continue=listed.metadata._continue,
        )  # fmt: skip
        names.append(listed.items[0].metadata.name)
    assert names == ["ctr.e1", "ctr.e3"]
    with pytest.raises(ApiException) as err:
        core.list_namespaced_event(NS, field_selector="message=x")
    assert err.value.status == 400
