"""The fraud use case's InferenceService (manifests/usecases/fraud): a kustomization over
the same base as the primary overlay, beside `ctr`. Rendered with the real kubectl the
cluster checks use (tests/test_cluster_manifests.py's `tools`)."""

from __future__ import annotations

import copy

import yaml

from tests.test_cluster_manifests import (  # noqa: F401  (pytest fixtures)
    MANIFESTS,
    NAMESPACE,
    key,
    kustomize,
    overlays,
    tools,
)
from tests.test_cluster_upstream import dangling_services, known_services


def test_fraud_inference_service_is_a_second_one_beside_ctr(tools, overlays):  # noqa: F811
    """Every other object renders exactly as the primary overlay's (so applying both
    leaves one stack), and the InferenceService differs only in its name and what is the
    use case's."""
    rendered = kustomize(tools, MANIFESTS / "usecases" / "fraud")
    primary = {key(o): o for o in overlays["primary"]}
    fraud = {key(o): o for o in rendered}
    ctr_key = ("InferenceService", NAMESPACE, "ctr")
    fraud_key = ("InferenceService", NAMESPACE, "fraud")
    assert set(fraud) - set(primary) == {fraud_key} and set(primary) - set(fraud) == {ctr_key}
    assert all(fraud[k] == primary[k] for k in fraud if k != fraud_key)
    isvc, ctr = fraud[fraud_key]["spec"], primary[ctr_key]["spec"]
    # KServe appends the model's args to the ServingRuntime's (MergeRuntimeContainers).
    assert isvc["predictor"]["model"]["args"] == ["--use_case=fraud"]
    assert isvc["predictor"]["model"]["storageUri"] == "s3://mlpipeline/kubeloop/models/fraud/v1"
    args = isvc["transformer"]["containers"][0]["args"]
    assert "--use_case=fraud" in args
    assert any(a.startswith("--shadow_hosts=latest-fraud-predictor.") for a in args)
    expected = copy.deepcopy(ctr)
    expected["predictor"]["model"]["args"] = ["--use_case=fraud"]
    expected["predictor"]["model"]["storageUri"] = isvc["predictor"]["model"]["storageUri"]
    expected["transformer"]["containers"][0]["args"] = args
    expected["transformer"]["containers"][0]["env"][0]["value"] = (
        "s3://mlpipeline/kubeloop/feature-repo-fraud"
    )
    assert isvc == expected
    # Its shadow hosts are the route-tag Services of this InferenceService, not ctr's.
    assert dangling_services(yaml.safe_dump_all(rendered), known_services(rendered), "fraud") == []


def test_helm_values_for_fraud_render_both_inference_services(tools, overlays):  # noqa: F811
    """`--set useCases.fraud.enabled=true` renders exactly the primary overlay plus the
    fraud kustomization's InferenceService (the chart is generated from both; the default
    values leave fraud out), and its values move its model and feature repository."""
    from tests.test_cluster_manifests import helm_template, normalise_helm

    fraud_key = ("InferenceService", NAMESPACE, "fraud")
    expected = {key(o): o for o in overlays["primary"]}
    expected[fraud_key] = {key(o): o for o in kustomize(tools, MANIFESTS / "usecases" / "fraud")}[
        fraud_key
    ]
    on = {
        key(o): normalise_helm(o)
        for o in helm_template(tools, ["--set", "useCases.fraud.enabled=true"])
    }
    assert sorted(on) == sorted(expected)
    for k, obj in expected.items():
        assert on[k] == obj, f"{'/'.join(k)} differs"
    assert fraud_key not in {key(o) for o in helm_template(tools, [])}
    moved = {
        key(o): o
        for o in helm_template(
            tools,
            [
                "--set", "useCases.fraud.enabled=true",
                "--set", "useCases.fraud.storageUri=s3://bucket/fraud/v7",
                "--set", "useCases.fraud.featureRepoUri=s3://bucket/repo",
            ],
        )
    }[fraud_key]["spec"]  # fmt: skip
    assert moved["predictor"]["model"]["storageUri"] == "s3://bucket/fraud/v7"
    assert moved["transformer"]["containers"][0]["env"][0]["value"] == "s3://bucket/repo"
