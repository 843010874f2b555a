"""The manifests against what the pinned upstream installs really do.

The facts come from tests/fixtures/upstream/inventory.json, which scripts/upstream-inventory
reads out of the upstream sources at the tags scripts/cluster-up pins, and from the upstream
lines cited in docs/cluster-assumptions.md. Each test guards one of the defects found by the
review of the cluster path (shared/reviews/cluster-path.md) and fails on the manifests as
they were before the fix.
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.test_cluster_manifests import (  # noqa: F401  (pytest fixtures)
    all_renders,
    charts,
    find,
    overlays,
    pod_specs,
    tools,
)

pytestmark = pytest.mark.cluster

ROOT = Path(__file__).resolve().parent.parent
INVENTORY = json.loads((ROOT / "tests" / "fixtures" / "upstream" / "inventory.json").read_text())
KSERVE_VALUES = ROOT / "manifests" / "platform" / "kserve-values.yaml"


# --- 1. Knative must not resolve the project's images ---------------------------------------


def image_registry(image: str) -> str | None:
    """The registry Knative's resolver sends a tag to (go-containerregistry's reading of a
    reference: the first path part is a registry when it has a dot or a port or is
    localhost, else Docker Hub), or None for a digest, which Knative never resolves."""
    if "@sha256:" in image:
        return None
    first, _, rest = image.partition("/")
    if rest and ("." in first or ":" in first or first == "localhost"):
        return first
    return "index.docker.io"


def knative_served_images(objs: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """(where, image) for every container Knative runs as part of a revision: the serving
    runtimes' containers and the InferenceService components' own containers."""
    out = []
    for o in objs:
        if o["kind"] == "ServingRuntime":
            out += [
                (f"ServingRuntime/{o['metadata']['name']}/{c['name']}", c["image"])
                for c in o["spec"]["containers"]
            ]
        if o["kind"] == "InferenceService":
            for component in ("predictor", "transformer", "explainer"):
                for c in (o["spec"].get(component) or {}).get("containers", []):
                    out.append(
                        (
                            f"InferenceService/{o['metadata']['name']}/{component}/{c['name']}",
                            c["image"],
                        )
                    )
    return out


def unresolved_problems(objs: list[dict[str, Any]]) -> list[str]:
    skipped = set(INVENTORY["knative_serving"]["registries_skipping_tag_resolving"])
    return [
        f"{where}: image {image} would be resolved at {registry} (Knative skips only {sorted(skipped)})"
        for where, image in knative_served_images(objs)
        if (registry := image_registry(image)) is not None and registry not in skipped
    ]


def test_image_registry_follows_docker_reference_rules():
    assert image_registry("kubeloop/predictor:0.1.0") == "index.docker.io"
    assert image_registry("redis:7") == "index.docker.io"
    assert image_registry("kind.local/kubeloop/predictor:0.1.0") == "kind.local"
    assert image_registry("localhost:5001/x:1") == "localhost:5001"
    assert image_registry("ghcr.io/a/b@sha256:" + "0" * 64) is None


def test_knative_never_resolves_a_project_image(all_renders):
    for name, objs in all_renders.items():
        assert knative_served_images(objs), name
        assert unresolved_problems(objs) == [], name


def test_mutation_docker_hub_image_would_be_resolved(overlays):
    objs = copy.deepcopy(overlays["primary"])
    runtime = find(objs, "ServingRuntime", "kubeloop-ctr")
    runtime["spec"]["containers"][0]["image"] = "kubeloop/predictor:0.1.0"
    (problem,) = unresolved_problems(objs)
    assert "index.docker.io" in problem


# --- 2. every Service referenced exists --------------------------------------------------

SVC_HOST = re.compile(r"\b([a-z0-9-]+)\.([a-z0-9-]+)\.svc\.cluster\.local(?::(\d+))?")


def known_services(objs: list[dict[str, Any]]) -> dict[tuple[str, str], set[int]]:
    """(namespace, name) -> ports of every Service the pinned installs and our objects create."""
    known: dict[tuple[str, str], set[int]] = {}
    for source in ("kfp", "net_kourier"):
        for s in INVENTORY[source]["services"]:
            known[(s["namespace"], s["name"])] = {p["port"] for p in s["ports"]}
    for o in objs:
        if o["kind"] == "Service":
            known[(o["metadata"]["namespace"], o["metadata"]["name"])] = {
                p["port"] for p in o["spec"]["ports"]
            }
    known.update(route_tag_services(objs))
    return known


TAG_ROUTING = "serving.kserve.io/enable-tag-routing"


def route_tag_services(objs: list[dict[str, Any]]) -> dict[tuple[str, str], set[int]]:
    """The Services Knative makes for the route tags KServe sets on a predictor when an
    InferenceService has `serving.kserve.io/enable-tag-routing: "true"`: tags `latest` and
    `prev` (kserve v0.20.0 ksvc_reconciler.go:139-152) on the ksvc `<isvc>-predictor`, one
    Service per tag named by the default tag template `{{.Tag}}-{{.Name}}` on port 80
    (knative-v1.21.1 reconcile_resources.go:151-175, resources/service.go:45-69,
    networking config.go:60). They exist only once KServe has reconciled, so no install
    inventory lists them."""
    out: dict[tuple[str, str], set[int]] = {}
    for o in objs:
        meta = o["metadata"]
        if (
            o["kind"] == "InferenceService"
            and (meta.get("annotations") or {}).get(TAG_ROUTING) == "true"
        ):
            for tag in ("latest", "prev"):
                out[(meta["namespace"], f"{tag}-{meta['name']}-predictor")] = {80}
    return out


def dangling_services(text: str, known: dict[tuple[str, str], set[int]], where: str) -> list[str]:
    problems = []
    for name, ns, port in SVC_HOST.findall(text):
        ports = known.get((ns, name))
        if ports is None:
            problems.append(
                f"{where}: {name}.{ns}.svc.cluster.local is a Service no install creates"
            )
        elif port and int(port) not in ports:
            problems.append(f"{where}: {name}.{ns} has no port {port} (it has {sorted(ports)})")
    return problems


def test_no_object_or_script_refers_to_a_service_that_is_not_installed(all_renders):
    for name, objs in all_renders.items():
        known = known_services(objs)
        assert dangling_services(yaml.safe_dump_all(objs), known, name) == []
    known = known_services(all_renders["kustomize/primary"])
    for path in (
        "scripts/cluster-up",
        "helm/kubeloop/values.yaml",
        "README.md",
        ".github/workflows/kind-e2e.yaml",
        "docs/cluster-assumptions.md",
    ):
        assert dangling_services((ROOT / path).read_text(), known, path) == []


def test_mutation_minio_service_is_caught(overlays):
    known = known_services(overlays["primary"])
    (problem,) = dangling_services(
        "http://minio-service.kubeflow.svc.cluster.local:9000", known, "x"
    )
    assert "no install creates" in problem


# --- 3. kubeloop's pods may reach the object store, and nothing more -----------------------


def selector_matches(selector: dict[str, Any] | None, labels: dict[str, str]) -> bool:
    """A Kubernetes label selector (matchLabels and matchExpressions)."""
    if selector is None:
        return False
    for k, v in (selector.get("matchLabels") or {}).items():
        if labels.get(k) != v:
            return False
    for e in selector.get("matchExpressions") or []:
        key, op, values = e["key"], e["operator"], set(e.get("values") or [])
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and key in labels and labels[key] in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True


def ingress_allowed(
    policies: list[dict[str, Any]],
    namespaces: dict[str, dict[str, str]],
    src: tuple[str, dict[str, str]],
    dst: tuple[str, dict[str, str]],
    port: int,
) -> bool:
    """networking.k8s.io/v1 semantics: a pod selected by any Ingress policy is isolated, and
    then admits traffic that at least one selecting policy's rule allows (peers: a
    podSelector alone means the policy's namespace; rules and policies are additive)."""
    src_ns, src_labels = src
    dst_ns, dst_labels = dst
    selecting = [
        p
        for p in policies
        if p["namespace"] == dst_ns
        and selector_matches(p["spec"]["podSelector"], dst_labels)
        and "Ingress" in p["spec"].get("policyTypes", ["Ingress"])
    ]
    if not selecting:
        return True
    for p in selecting:
        for rule in p["spec"].get("ingress") or []:
            ports = rule.get("ports")
            if ports and not any(
                q.get("port") in (None, port) and q.get("protocol", "TCP") == "TCP" for q in ports
            ):
                continue
            peers = rule.get("from")
            if not peers:
                return True
            for peer in peers:
                ns_sel, pod_sel = peer.get("namespaceSelector"), peer.get("podSelector")
                ns_ok = (
                    selector_matches(ns_sel, namespaces.get(src_ns, {}))
                    if ns_sel is not None
                    else src_ns == p["namespace"]
                )
                pod_ok = selector_matches(pod_sel, src_labels) if pod_sel is not None else True
                if ns_ok and pod_ok:
                    return True
    return False


def _namespace_labels(objs: list[dict[str, Any]]) -> dict[str, dict[str, str]]:
    labels = {
        ns: {"kubernetes.io/metadata.name": ns} for ns in ("kubeflow", "default", "kube-system")
    }
    for o in objs:
        if o["kind"] == "Namespace":
            name = o["metadata"]["name"]
            labels[name] = {**o["metadata"].get("labels", {}), "kubernetes.io/metadata.name": name}
    return labels


def _policies(objs: list[dict[str, Any]], ours: bool = True) -> list[dict[str, Any]]:
    upstream = [dict(p) for p in INVENTORY["kfp"]["network_policies"]]
    mine = (
        [
            {
                "namespace": o["metadata"]["namespace"],
                "name": o["metadata"]["name"],
                "spec": o["spec"],
            }
            for o in objs
            if o["kind"] == "NetworkPolicy"
        ]
        if ours
        else []
    )
    return upstream + mine


def _pods(objs: list[dict[str, Any]]) -> dict[str, tuple[str, dict[str, str]]]:
    """The source pods: labels as KServe puts them on revision pods, and our Deployments'."""
    detector = find(objs, "Deployment", "kubeloop-drift-detector")["spec"]["template"]["metadata"]
    redis = find(objs, "Deployment", "kubeloop-redis")["spec"]["template"]["metadata"]
    isvc = find(objs, "InferenceService", "ctr")["metadata"]["name"]
    return {
        "predictor": (
            "kubeloop",
            {"serving.kserve.io/inferenceservice": isvc, "component": "predictor"},
        ),
        "transformer": (
            "kubeloop",
            {"serving.kserve.io/inferenceservice": isvc, "component": "transformer"},
        ),
        "detector": ("kubeloop", detector["labels"]),
        "redis": ("kubeloop", redis["labels"]),
        "pipeline step": ("kubeflow", {"pipelines.kubeflow.org/v2_component": "true"}),
        "elsewhere": ("default", {"app": "anything"}),
    }


def _object_store(objs: list[dict[str, Any]]) -> tuple[tuple[str, dict[str, str]], int]:
    """The seaweedfs pod and the container port behind the Service port our URLs use."""
    (svc,) = [s for s in INVENTORY["kfp"]["services"] if s["name"] == "seaweedfs"]
    url = find(objs, "Deployment", "kubeloop-drift-detector")["spec"]["template"]["spec"]
    (endpoint,) = [
        e["value"]
        for c in url["initContainers"]
        for e in c.get("env", [])
        if e["name"] == "AWS_ENDPOINT_URL"
    ]
    service_port = int(endpoint.rsplit(":", 1)[1])
    (target,) = [p["targetPort"] for p in svc["ports"] if p["port"] == service_port]
    return ("kubeflow", INVENTORY["kfp"]["pod_labels"]["seaweedfs"]), int(target)


def test_kubeloop_pods_reach_the_object_store_and_nothing_more(overlays):
    objs = overlays["primary"]
    namespaces = _namespace_labels(objs)
    store, port = _object_store(objs)
    pods = _pods(objs)
    policies = _policies(objs)

    def allowed(name: str, p: int = port) -> bool:
        return ingress_allowed(policies, namespaces, pods[name], store, p)

    for name in ("predictor", "transformer", "detector", "pipeline step"):
        assert allowed(name), f"{name} cannot reach the object store on {port}"
    for name in ("redis", "elsewhere"):
        assert not allowed(name), f"{name} reaches the object store"
    # Only the S3 port: not the master's or the filer's.
    for other in (9333, 8888, 8111):
        assert not allowed("predictor", other)


def test_without_our_policy_kfps_own_policy_drops_the_storage_initializers(overlays):
    """The blocker itself: KFP's seaweedfs NetworkPolicy alone admits no kubeloop pod."""
    objs = overlays["primary"]
    store, port = _object_store(objs)
    pods = _pods(objs)
    policies = _policies(objs, ours=False)
    namespaces = _namespace_labels(objs)
    assert not ingress_allowed(policies, namespaces, pods["predictor"], store, port)
    assert ingress_allowed(policies, namespaces, pods["pipeline step"], store, port)


def test_network_policy_evaluator_semantics():
    ns = {"a": {"kubernetes.io/metadata.name": "a"}, "b": {"kubernetes.io/metadata.name": "b"}}
    policy = {
        "namespace": "a",
        "name": "p",
        "spec": {
            "podSelector": {"matchLabels": {"app": "db"}},
            "policyTypes": ["Ingress"],
            "ingress": [
                {
                    "from": [{"podSelector": {"matchLabels": {"role": "api"}}}],
                    "ports": [{"port": 5432}],
                }
            ],
        },
    }
    db = ("a", {"app": "db"})
    assert ingress_allowed([policy], ns, ("a", {"role": "api"}), db, 5432)
    assert not ingress_allowed([policy], ns, ("b", {"role": "api"}), db, 5432)  # other namespace
    assert not ingress_allowed([policy], ns, ("a", {"role": "api"}), db, 80)
    assert ingress_allowed([policy], ns, ("b", {}), ("a", {"app": "web"}), 80)  # not selected


# --- 4. Pod Security "restricted", with KServe's and Knative's injected containers ------------


def _deep_merge(base: Any, override: Any) -> Any:
    """Helm's merge of a values file over a chart's values (maps merge, the rest replaces)."""
    if isinstance(base, dict) and isinstance(override, dict):
        out = dict(base)
        for k, v in override.items():
            out[k] = _deep_merge(base.get(k), v) if k in base else copy.deepcopy(v)
        return out
    return copy.deepcopy(override)


def storage_initializer_context() -> dict[str, Any]:
    """The securityContext KServe gives its storage-initializer, with our chart values: the
    chart default deep-merged with manifests/platform/kserve-values.yaml."""
    default = INVENTORY["kserve"]["storage_values"]
    ours = (yaml.safe_load(KSERVE_VALUES.read_text()) or {}).get("kserve", {}).get("storage", {})
    return _deep_merge(default, ours)["containerSecurityContext"]


# Knative 1.21.1's queue-proxy (pkg/reconciler/revision/resources/queue.go: queueSecurityContext).
QUEUE_PROXY_CONTEXT = {
    "allowPrivilegeEscalation": False,
    "readOnlyRootFilesystem": True,
    "runAsNonRoot": True,
    "capabilities": {"drop": ["ALL"]},
    "seccompProfile": {"type": "RuntimeDefault"},
}


def with_injected_containers(
    label: str, pod: dict[str, Any], component: dict[str, Any]
) -> dict[str, Any]:
    """The pod KServe and Knative really run for an InferenceService component: queue-proxy
    (Knative), agent (KServe's logger, a copy of the first container's securityContext:
    agent_injector.go) and storage-initializer (KServe's pod webhook, when the component has a
    storage URI: storage_initializer_injector.go with the ClusterStorageContainer context)."""
    pod = copy.deepcopy(pod)
    first = pod["containers"][0]
    pod["containers"].append({"name": "queue-proxy", "securityContext": QUEUE_PROXY_CONTEXT})
    if component.get("logger"):
        pod["containers"].append(
            {"name": "agent", "securityContext": copy.deepcopy(first.get("securityContext"))}
        )
    has_uri = bool((component.get("model") or {}).get("storageUri")) or any(
        e.get("name") == "STORAGE_URI"
        for c in component.get("containers", [])
        for e in c.get("env", [])
    )
    if has_uri:
        pod.setdefault("initContainers", []).append(
            {"name": "storage-initializer", "securityContext": storage_initializer_context()}
        )
    return pod


RESTRICTED_VOLUMES = {
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "persistentVolumeClaim",
    "projected",
    "secret",
}


def restricted_problems(label: str, pod: dict[str, Any]) -> list[str]:
    """The Pod Security Standards' "restricted" level (which includes "baseline"), for the
    fields our pods can set: kubernetes.io/docs/concepts/security/pod-security-standards."""
    problems = []
    psc = pod.get("securityContext") or {}
    for flag in ("hostNetwork", "hostPID", "hostIPC"):
        if pod.get(flag):
            problems.append(f"{label}: {flag}")
    for v in pod.get("volumes", []):
        kinds = set(v) - {"name"}
        if not kinds <= RESTRICTED_VOLUMES:
            problems.append(f"{label}: volume {v['name']} of type {sorted(kinds)}")
    if (psc.get("seccompProfile") or {}).get("type") == "Unconfined":
        problems.append(f"{label}: pod seccompProfile Unconfined")
    for kind in ("initContainers", "containers", "ephemeralContainers"):
        for c in pod.get(kind, []):
            where = f"{label}/{c['name']}"
            csc = c.get("securityContext") or {}
            if csc.get("privileged"):
                problems.append(f"{where}: privileged")
            if csc.get("allowPrivilegeEscalation") is not False:
                problems.append(f"{where}: allowPrivilegeEscalation is not false")
            non_root = csc.get("runAsNonRoot", psc.get("runAsNonRoot"))
            if non_root is not True:
                problems.append(f"{where}: runAsNonRoot is not true")
            if csc.get("runAsUser", psc.get("runAsUser")) == 0:
                problems.append(f"{where}: runAsUser 0")
            seccomp = (csc.get("seccompProfile") or psc.get("seccompProfile") or {}).get("type")
            if seccomp not in ("RuntimeDefault", "Localhost"):
                problems.append(f"{where}: seccompProfile is {seccomp or 'unset'}")
            caps = csc.get("capabilities") or {}
            if "ALL" not in (caps.get("drop") or []):
                problems.append(f"{where}: capabilities do not drop ALL")
            if set(caps.get("add") or []) - {"NET_BIND_SERVICE"}:
                problems.append(f"{where}: capabilities add {caps['add']}")
            if any(p.get("hostPort") for p in c.get("ports", [])):
                problems.append(f"{where}: hostPort")
    return problems


def full_pods(objs: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    out = []
    isvcs = {o["metadata"]["name"]: o for o in objs if o["kind"] == "InferenceService"}
    for label, pod in pod_specs(objs):
        parts = label.split("/")
        if parts[0] == "InferenceService":
            component = isvcs[parts[2]]["spec"][parts[3]]
            pod = with_injected_containers(label, pod, component)
        out.append((label, pod))
    return out


def test_namespace_enforces_restricted(all_renders):
    for name, objs in all_renders.items():
        ns = find(objs, "Namespace", "kubeloop", namespace="")
        assert ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted", name


def test_every_pod_with_its_injected_containers_meets_restricted(all_renders):
    for name, objs in all_renders.items():
        pods = full_pods(objs)
        injected = {
            c["name"] for _, p in pods for c in p.get("initContainers", []) + p["containers"]
        }
        assert {"queue-proxy", "agent", "storage-initializer"} <= injected, name
        problems = [p for label, pod in pods for p in restricted_problems(label, pod)]
        assert problems == [], name


def test_kserves_default_storage_initializer_fails_restricted(overlays):
    """The defect itself: without our values the storage-initializer has no seccompProfile."""
    default = INVENTORY["kserve"]["storage_values"]["containerSecurityContext"]
    pod = {
        "containers": [{"name": "c", "securityContext": QUEUE_PROXY_CONTEXT}],
        "initContainers": [{"name": "storage-initializer", "securityContext": default}],
    }
    assert restricted_problems("p", pod) == ["p/storage-initializer: seccompProfile is unset"]


# --- 5. smaller facts cluster-up relies on ---------------------------------------------------


def test_cluster_up_reads_keys_the_kfp_secret_has():
    text = (ROOT / "scripts" / "cluster-up").read_text()
    used = set(
        re.findall(r"get secret mlpipeline-minio-artifact -o jsonpath='\{\.data\.(\w+)\}'", text)
    )
    assert used and used <= set(INVENTORY["kfp"]["secrets"]["mlpipeline-minio-artifact"])


def test_kourier_node_port_patch_targets_its_http_port():
    """cluster-up patches /spec/ports/0 of Service kourier; that must be its plain HTTP port,
    the one kind-config.yaml maps to the host."""
    (svc,) = [s for s in INVENTORY["net_kourier"]["services"] if s["name"] == "kourier"]
    assert svc["namespace"] == "kourier-system"
    assert svc["ports"][0]["name"] == "http2" and svc["ports"][0]["port"] == 80
    text = (ROOT / "scripts" / "cluster-up").read_text()
    assert "-n kourier-system patch service/kourier" in text and "/spec/ports/0/nodePort" in text
    node_port = re.search(r'KOURIER_NODE_PORT="(\d+)"', text).group(1)
    kind = yaml.safe_load((ROOT / "kind-config.yaml").read_text())
    assert int(node_port) in [
        m["containerPort"] for n in kind["nodes"] for m in n["extraPortMappings"]
    ]


def test_cluster_up_waits_on_deployments_that_exist():
    """The namespaces cluster-up waits on hold the webhook and controllers named upstream."""
    knative = {(d["namespace"], d["name"]) for d in INVENTORY["knative_serving"]["deployments"]}
    kourier = {(d["namespace"], d["name"]) for d in INVENTORY["net_kourier"]["deployments"]}
    hook = INVENTORY["knative_serving"]["configmap_webhook"]
    assert hook["failurePolicy"] == "Fail"
    assert (hook["service"]["namespace"], hook["service"]["name"]) in knative
    assert ("kourier-system", "3scale-kourier-gateway") in kourier
    # The webhook validates every ConfigMap cluster-up patches.
    text = (ROOT / "scripts" / "cluster-up").read_text()
    patched = set(re.findall(r"-n knative-serving patch configmap/([a-z-]+)", text))
    assert patched
    for name in patched:
        labels = INVENTORY["knative_serving"]["configmaps"][name]["labels"]
        assert selector_matches(hook["objectSelector"], labels), name


# --- 6. the detector keeps its alerts across restarts -----------------------------------------


def test_detector_state_and_alerts_live_on_a_persistent_volume(all_renders):
    """An emptyDir under the detector's state loses every alert and half-filled window when
    the pod restarts: its --state_dir (where the SQLite alert store and windows live) must be
    on a PersistentVolumeClaim the render creates, with one writer at a time (Recreate)."""
    for name, objs in all_renders.items():
        dep = find(objs, "Deployment", "kubeloop-drift-detector")
        spec = dep["spec"]["template"]["spec"]
        (container,) = [c for c in spec["containers"] if c["name"] == "drift-detector"]
        (state_dir,) = [
            a.split("=", 1)[1] for a in container["args"] if a.startswith("--state_dir=")
        ]
        assert not any(a.startswith("--alert_store=") for a in container["args"]), name
        (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == state_dir]
        (volume,) = [v for v in spec["volumes"] if v["name"] == mount["name"]]
        claim = volume.get("persistentVolumeClaim", {}).get("claimName")
        assert claim, f"{name}: {state_dir} is on {sorted(set(volume) - {'name'})}, not a PVC"
        find(objs, "PersistentVolumeClaim", claim)
        assert dep["spec"]["strategy"]["type"] == "Recreate", name
