"""The fraud use case on Kubernetes (manifests/usecases/fraud): its InferenceService beside
`ctr` from the same base, and its own drift detector and rollout controller, reachable by
fraud's pods and only theirs; the chart renders the same with useCases.fraud.enabled.
Rendered with the real kubectl and helm the cluster checks use
(tests/test_cluster_manifests.py's `tools`)."""

from __future__ import annotations

import copy
import json
import re
from typing import Any

import pytest
import yaml

from tests.test_cluster_manifests import (  # noqa: F401  (pytest fixtures)
    MANIFESTS,
    NAMESPACE,
    PIPELINES_NAMESPACE,
    _rules,
    find,
    helm_template,
    key,
    kustomize,
    normalise_helm,
    overlays,
    pod_specs,
    security_problems,
    tools,
    validate,
)
from tests.test_cluster_upstream import dangling_services, known_services

pytestmark = pytest.mark.cluster

FRAUD_ISVC = ("InferenceService", NAMESPACE, "fraud")
DETECTOR, CONTROLLER = "kubeloop-drift-detector", "kubeloop-rollout-controller"
# fraud's copy of each base object it needs one of: (kind, base name) -> fraud's name
COPIES = {
    ("Deployment", DETECTOR): f"{DETECTOR}-fraud",
    ("PersistentVolumeClaim", f"{DETECTOR}-state"): f"{DETECTOR}-fraud-state",
    ("Service", DETECTOR): f"{DETECTOR}-fraud",
    ("NetworkPolicy", DETECTOR): f"{DETECTOR}-fraud",
    ("ServiceAccount", CONTROLLER): f"{CONTROLLER}-fraud",
    ("Role", CONTROLLER): f"{CONTROLLER}-fraud",
    ("RoleBinding", CONTROLLER): f"{CONTROLLER}-fraud",
    ("ConfigMap", "kubeloop-rollout-ctr"): "kubeloop-rollout-fraud",
    ("Deployment", CONTROLLER): f"{CONTROLLER}-fraud",
    ("NetworkPolicy", CONTROLLER): f"{CONTROLLER}-fraud",
}
ACCESS = {
    ("NetworkPolicy", NAMESPACE, "kubeloop-redis-fraud"),
    ("NetworkPolicy", PIPELINES_NAMESPACE, "kubeloop-object-store-access-fraud"),
    ("Role", NAMESPACE, "kubeloop-pipeline-runner-fraud"),
    ("RoleBinding", NAMESPACE, "kubeloop-pipeline-runner-fraud"),
}
FRAUD_DETECTOR_URL = f"http://{DETECTOR}-fraud.{NAMESPACE}.svc.cluster.local/"
MONITOR_CONFIG = MANIFESTS / "usecases" / "fraud" / "monitor.json"


@pytest.fixture(scope="module")
def fraud(tools):  # noqa: F811
    return kustomize(tools, MANIFESTS / "usecases" / "fraud")


@pytest.fixture(scope="module")
def config_map(fraud) -> dict[str, Any]:
    """fraud's MonitorConfig ConfigMap (its name carries kustomize's content hash)."""
    (found,) = [
        o
        for o in fraud
        if o["kind"] == "ConfigMap"
        and o["metadata"]["name"].startswith(f"{DETECTOR}-fraud-config-")
    ]
    return found


@pytest.fixture(scope="module")
def fraud_only(config_map) -> set[tuple[str, str, str]]:
    return {
        FRAUD_ISVC,
        *((k, NAMESPACE, n) for (k, _), n in COPIES.items()),
        *ACCESS,
        key(config_map),
    }


def _for_fraud(value: Any) -> Any:
    """A base object's values as fraud's copy has them: names, labels, hosts and arguments
    of ctr's detector and controller turned into fraud's."""
    text = json.dumps(value)
    for old, new in (
        (f'"{DETECTOR}', f'"{DETECTOR}-fraud'),
        (f"{DETECTOR}.{NAMESPACE}", f"{DETECTOR}-fraud.{NAMESPACE}"),
        (f'"{CONTROLLER}', f'"{CONTROLLER}-fraud'),
        ("kubeloop-rollout-ctr", "kubeloop-rollout-fraud"),
        ("--inference_service=ctr", "--inference_service=fraud"),
        ('"--name=ctr"', '"--name=fraud"'),
        ("/models/ctr/v1", "/models/fraud/v1"),
        ('"serving.kserve.io/inferenceservice": "ctr"', '"serving.kserve.io/inferenceservice": "fraud"'),
        ('"resourceNames": ["ctr"]', '"resourceNames": ["fraud"]'),
    ):  # fmt: skip
        text = text.replace(old, new)
    return json.loads(text)


def test_fraud_inference_service_is_a_second_one_beside_ctr(fraud, fraud_only, overlays):  # noqa: F811
    """Every shared object renders exactly as the primary overlay's (so applying both
    leaves one stack); the InferenceService differs only in its name, what is the use
    case's, and the drift detector it logs to (fraud's own)."""
    primary = {key(o): o for o in overlays["primary"]}
    rendered = {key(o): o for o in fraud}
    ctr_key = ("InferenceService", NAMESPACE, "ctr")
    assert set(rendered) - set(primary) == fraud_only
    assert set(primary) - set(rendered) == {ctr_key}
    assert all(rendered[k] == primary[k] for k in rendered if k not in fraud_only)
    isvc, ctr = rendered[FRAUD_ISVC]["spec"], primary[ctr_key]["spec"]
    # KServe appends the model's args to the ServingRuntime's (MergeRuntimeContainers).
    assert isvc["predictor"]["model"]["args"] == ["--use_case=fraud"]
    assert isvc["predictor"]["model"]["storageUri"] == "s3://mlpipeline/kubeloop/models/fraud/v1"
    args = isvc["transformer"]["containers"][0]["args"]
    assert "--use_case=fraud" in args
    assert any(a.startswith("--shadow_hosts=latest-fraud-predictor.") for a in args)
    assert f"--request_log_url={FRAUD_DETECTOR_URL}requestlog" in args
    assert isvc["predictor"]["logger"]["url"] == FRAUD_DETECTOR_URL
    expected = copy.deepcopy(ctr)
    expected["predictor"]["model"]["args"] = ["--use_case=fraud"]
    expected["predictor"]["model"]["storageUri"] = isvc["predictor"]["model"]["storageUri"]
    expected["predictor"]["logger"]["url"] = FRAUD_DETECTOR_URL
    expected["transformer"]["containers"][0]["args"] = args
    expected["transformer"]["containers"][0]["env"][0]["value"] = (
        "s3://mlpipeline/kubeloop/feature-repo-fraud"
    )
    assert isvc == expected
    # Its shadow hosts and detector are Services of the render, not ctr's.
    assert dangling_services(yaml.safe_dump_all(fraud), known_services(fraud), "fraud") == []


def test_fraud_detector_and_controller_are_the_bases_for_fraud(fraud, config_map, overlays):  # noqa: F811
    """Each copy equals the base's object with only fraud's names, labels, reference,
    model and URLs, and the detector reads fraud's MonitorConfig; it runs as the base's
    account (Events, get on InferenceServices: nothing named)."""
    primary = {key(o): o for o in overlays["primary"]}
    rendered = {key(o): o for o in fraud}
    for (kind, base_name), name in COPIES.items():
        expected = _for_fraud(primary[(kind, NAMESPACE, base_name)])
        if (kind, base_name) == ("Deployment", DETECTOR):
            pod = expected["spec"]["template"]["spec"]
            pod["serviceAccountName"] = DETECTOR
            (container,) = pod["containers"]
            container["args"].append("--config=/etc/kubeloop-drift/monitor.json")
            container["volumeMounts"].append(
                {"name": "config", "mountPath": "/etc/kubeloop-drift", "readOnly": True}
            )
            pod["volumes"].append(
                {"name": "config", "configMap": {"name": config_map["metadata"]["name"]}}
            )
        assert rendered[(kind, NAMESPACE, name)] == expected, f"{kind}/{name}"
    controller = find(fraud, "Deployment", f"{CONTROLLER}-fraud")["spec"]["template"]["spec"]
    args = dict(a.split("=", 1) for a in controller["containers"][0]["args"])
    assert args["--name"] == "fraud" and args["--state-configmap"] == "kubeloop-rollout-fraud"
    assert args["--records-url"] == f"{FRAUD_DETECTOR_URL}requestlog/records"
    detector = find(fraud, "Deployment", f"{DETECTOR}-fraud")["spec"]["template"]["spec"]
    assert "--inference_service=fraud" in detector["containers"][0]["args"]
    fetch = detector["initContainers"][0]["args"][0]
    assert (
        fetch
        == find(fraud, "InferenceService", "fraud")["spec"]["predictor"]["model"]["storageUri"]
    )
    # fraud's controller may touch fraud's InferenceService and ConfigMap only; pipeline
    # runs may patch fraud (the base's Role names ctr).
    assert _rules(find(fraud, "Role", f"{CONTROLLER}-fraud")) == sorted(
        [
            (("",), ("configmaps",), ("kubeloop-rollout-fraud",), ("get", "patch")),
            (("",), ("events",), (), ("create",)),
            (("serving.kserve.io",), ("inferenceservices",), ("fraud",), ("get", "patch")),
        ]
    )
    assert _rules(find(fraud, "Role", "kubeloop-pipeline-runner-fraud")) == [
        (("serving.kserve.io",), ("inferenceservices",), ("fraud",), ("patch",))
    ]
    binding = find(fraud, "RoleBinding", "kubeloop-pipeline-runner-fraud")
    assert binding["roleRef"]["name"] == "kubeloop-pipeline-runner-fraud"
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "kubeloop-pipeline-runner", "namespace": "kubeflow"}
    ]


def test_fraud_detector_reads_the_use_cases_monitor_config(config_map):
    """monitor.json is the MonitorConfig the demo gives fraud's detector (its categorical
    inputs and entity groups); a change to fraud's features must regenerate it."""
    from kubeloop.demo.drift import monitor_config
    from kubeloop.drift.config import MonitorConfig
    from kubeloop.usecase import load_use_case

    current = monitor_config(load_use_case("fraud"))
    assert json.loads(MONITOR_CONFIG.read_text()) == current, (
        "manifests/usecases/fraud/monitor.json is stale; regenerate it:\n"
        "  .venv/bin/python -c 'import json; from kubeloop.demo.drift import monitor_config;"
        " from kubeloop.usecase import load_use_case;"
        ' print(json.dumps(monitor_config(load_use_case("fraud")), indent=2))\''
        " > manifests/usecases/fraud/monitor.json"
    )
    assert json.loads(config_map["data"]["monitor.json"]) == current
    MonitorConfig.model_validate(current)


def test_every_fraud_object_validates_and_its_pods_are_locked_down(fraud):
    problems = [f"{'/'.join(key(o))}: {p}" for o in fraud for p in validate(o)]
    fraud_pods = [(label, pod) for label, pod in pod_specs(fraud) if "fraud" in label]
    assert len(fraud_pods) == 4  # predictor, transformer, detector, controller
    for label, pod in fraud_pods:
        problems += security_problems(label, pod)
    assert problems == []


def _selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    wanted = selector.get("matchLabels", {})
    if any(labels.get(k) != v for k, v in wanted.items()):
        return False
    for expression in selector.get("matchExpressions", []):
        if expression["operator"] == "Exists" and expression["key"] not in labels:
            return False
        if (
            expression["operator"] == "In"
            and labels.get(expression["key"]) not in expression["values"]
        ):
            return False
    return True


def admitted(objs, target: tuple[str, dict], source: tuple[str, dict], port: int) -> bool:
    """Whether a pod (namespace, labels) `source` may open `port` on pod `target`: some
    NetworkPolicy selecting the target admits it (policies add up)."""
    (target_ns, target_labels), (source_ns, source_labels) = target, source
    namespace_labels = {"kubernetes.io/metadata.name": source_ns}
    for policy in (o for o in objs if o["kind"] == "NetworkPolicy"):
        if policy["metadata"]["namespace"] != target_ns:
            continue
        if not _selects(policy["spec"]["podSelector"], target_labels):
            continue
        for rule in policy["spec"].get("ingress", []):
            if port not in [p["port"] for p in rule.get("ports", [])]:
                continue
            for peer in rule.get("from", []):
                same_ns = "namespaceSelector" not in peer and source_ns == target_ns
                ns_ok = same_ns or (
                    "namespaceSelector" in peer
                    and _selects(peer["namespaceSelector"], namespace_labels)
                )
                pods_ok = "podSelector" not in peer or _selects(peer["podSelector"], source_labels)
                if ns_ok and pods_ok:
                    return True
    return False


def _pod(objs, name: str, namespace: str = NAMESPACE) -> tuple[str, dict]:
    labels = find(objs, "Deployment", name, namespace)["spec"]["template"]["metadata"]["labels"]
    return namespace, labels


def _isvc_pod(model: str, component: str) -> tuple[str, dict]:
    # The labels KServe puts on an InferenceService's pods.
    return NAMESPACE, {"serving.kserve.io/inferenceservice": model, "component": component}


def test_network_policies_admit_fraud_to_its_own_detector_and_to_redis(fraud):
    seaweedfs = (PIPELINES_NAMESPACE, {"app": "seaweedfs"})
    redis = _pod(fraud, "kubeloop-redis")
    ctr_detector, fraud_detector = _pod(fraud, DETECTOR), _pod(fraud, f"{DETECTOR}-fraud")
    ctr_controller = _pod(fraud, CONTROLLER)
    fraud_controller = _pod(fraud, f"{CONTROLLER}-fraud")
    for component in ("predictor", "transformer"):
        # each InferenceService logs to its own detector, and only there
        assert admitted(fraud, fraud_detector, _isvc_pod("fraud", component), 8080)
        assert not admitted(fraud, ctr_detector, _isvc_pod("fraud", component), 8080)
        assert admitted(fraud, ctr_detector, _isvc_pod("ctr", component), 8080)
        assert not admitted(fraud, fraud_detector, _isvc_pod("ctr", component), 8080)
    assert admitted(fraud, redis, _isvc_pod("fraud", "transformer"), 6379)
    assert admitted(fraud, redis, _isvc_pod("ctr", "transformer"), 6379)
    assert not admitted(fraud, redis, _isvc_pod("fraud", "predictor"), 6379)
    assert admitted(fraud, fraud_detector, fraud_controller, 8080)
    assert not admitted(fraud, fraud_detector, ctr_controller, 8080)
    assert not admitted(fraud, ctr_detector, fraud_controller, 8080)
    assert admitted(fraud, seaweedfs, fraud_detector, 8333)
    assert admitted(fraud, seaweedfs, ctr_detector, 8333)
    # nobody reaches the controllers
    assert not admitted(fraud, fraud_controller, fraud_detector, 8080)
    # The two detectors' Services select their own pods only.
    for name, own, other in (
        (DETECTOR, ctr_detector, fraud_detector),
        (f"{DETECTOR}-fraud", fraud_detector, ctr_detector),
    ):
        selector = find(fraud, "Service", name)["spec"]["selector"]
        assert _selects({"matchLabels": selector}, own[1])
        assert not _selects({"matchLabels": selector}, other[1])


def test_the_admission_check_can_fail(fraud):
    """Without fraud's Redis policy its transformer is refused: the check above is real."""
    objs = [o for o in fraud if key(o) != ("NetworkPolicy", NAMESPACE, "kubeloop-redis-fraud")]
    assert not admitted(objs, _pod(objs, "kubeloop-redis"), _isvc_pod("fraud", "transformer"), 6379)


def test_helm_values_for_fraud_render_its_objects_beside_ctr(tools, fraud, fraud_only, overlays):  # noqa: F811
    """`--set useCases.fraud.enabled=true` renders exactly the primary overlay plus the
    objects the fraud kustomization adds (the chart is generated from both; the default
    values leave fraud out); fraud's controller follows rolloutController.enabled, and the
    values move fraud's model (served and the detector's reference), feature repository
    and images."""
    expected = {key(o): o for o in overlays["primary"]}
    expected.update({key(o): o for o in fraud if key(o) in fraud_only})
    on = {
        key(o): normalise_helm(o)
        for o in helm_template(tools, ["--set", "useCases.fraud.enabled=true"])
    }
    assert sorted(on) == sorted(expected)
    for k, obj in expected.items():
        assert on[k] == obj, f"{'/'.join(k)} differs"
    assert not fraud_only & {key(o) for o in helm_template(tools, [])}
    without_controller = {
        key(o)
        for o in helm_template(
            tools,
            ["--set", "useCases.fraud.enabled=true", "--set", "rolloutController.enabled=false"],
        )
    }
    assert not {k for k in without_controller if re.search("rollout", k[2])}
    assert FRAUD_ISVC in without_controller
    moved = {
        key(o): o
        for o in helm_template(
            tools,
            [
                "--set", "useCases.fraud.enabled=true",
                "--set", "useCases.fraud.storageUri=s3://bucket/fraud/v7",
                "--set", "useCases.fraud.featureRepoUri=s3://bucket/repo",
                "--set", "images.driftDetector=registry.example/drift:9",
            ],
        )
    }  # fmt: skip
    spec = moved[FRAUD_ISVC]["spec"]
    assert spec["predictor"]["model"]["storageUri"] == "s3://bucket/fraud/v7"
    assert spec["transformer"]["containers"][0]["env"][0]["value"] == "s3://bucket/repo"
    detector = moved[("Deployment", NAMESPACE, f"{DETECTOR}-fraud")]["spec"]["template"]["spec"]
    assert detector["initContainers"][0]["args"][0] == "s3://bucket/fraud/v7"
    assert detector["containers"][0]["image"] == "registry.example/drift:9"
    controller = moved[("Deployment", NAMESPACE, f"{CONTROLLER}-fraud")]["spec"]["template"]
    assert controller["spec"]["containers"][0]["image"] == "registry.example/drift:9"
