"""The kind end-to-end workflow can fail: each of its assertions (tests/e2e_checks.py) rejects
a wrong cluster state, and the workflow really runs them on the objects it created."""

from __future__ import annotations

import copy
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests import e2e_checks
from tests.e2e_checks import CheckFailed

pytestmark = pytest.mark.cluster

ROOT = Path(__file__).resolve().parent.parent
WORKFLOW = ROOT / ".github" / "workflows" / "kind-e2e.yaml"
FIXTURES = ROOT / "tests" / "fixtures" / "k8s"


def e2e_steps() -> dict[str, str]:
    jobs = yaml.safe_load(WORKFLOW.read_text())["jobs"]
    return {s.get("name", ""): s.get("run", "") for s in jobs["e2e"]["steps"]}


def step(fragment: str) -> str:
    (run,) = [r for name, r in e2e_steps().items() if fragment in name]
    return run


# --- the checks themselves ----------------------------------------------------------------


def _export(tmp_path: Path, name: str, version: str, weights: bytes) -> Path:
    d = tmp_path / name
    d.mkdir()
    (d / "metadata.json").write_text(json.dumps({"name": "ctr", "version": version}))
    (d / "model.txt").write_bytes(weights)
    return d


def test_versions_check_rejects_the_same_model_twice(tmp_path):
    a = _export(tmp_path, "a", "v0001", b"tree 1")
    b = _export(tmp_path, "b", "v0001", b"tree 1")
    with pytest.raises(CheckFailed, match="identical"):
        e2e_checks.check_versions(a, b)
    c = _export(tmp_path, "c", "v0002", b"tree 2")
    assert e2e_checks.check_versions(a, c) == "v0001 -> v0002"


def _isvc_with_split(percent: int, reported: int) -> dict:
    isvc = json.loads((FIXTURES / "recorded-isvc-ctr-canary.json").read_text())["response"]["body"]
    isvc["spec"]["predictor"]["canaryTrafficPercent"] = percent
    for t in isvc["status"]["components"]["predictor"]["traffic"]:
        t["percent"] = reported if t.get("latestRevision") else 100 - reported
    return isvc


def test_traffic_check_reads_the_split_kserve_reports():
    isvc = _isvc_with_split(20, 20)
    revision = e2e_checks.canary_revision(isvc, 20)
    (latest,) = [t for t in isvc["status"]["components"]["predictor"]["traffic"] if t["latestRevision"]]
    assert revision == latest["revisionName"]
    with pytest.raises(CheckFailed, match="expected 20%"):
        e2e_checks.canary_revision(_isvc_with_split(20, 10), 20)
    with pytest.raises(CheckFailed, match="canaryTrafficPercent"):
        e2e_checks.canary_revision(_isvc_with_split(10, 20), 20)
    stale = copy.deepcopy(isvc)
    stale["status"]["components"]["predictor"]["traffic"] = []
    with pytest.raises(CheckFailed, match="empty"):
        e2e_checks.canary_revision(stale, 20)


def test_alerts_check_needs_an_alert_for_the_canary_revision():
    alerts = [
        {"inferenceService": "ctr", "variant": "primary", "revision": "ctr-predictor-00001"},
        {"inferenceService": "ctr", "variant": "canary", "revision": "ctr-predictor-00002"},
    ]
    assert "1 alert(s)" in e2e_checks.check_alerts(alerts, "ctr-predictor-00002")
    with pytest.raises(CheckFailed, match="no alert for revision ctr-predictor-00003"):
        e2e_checks.check_alerts(alerts, "ctr-predictor-00003")
    with pytest.raises(CheckFailed, match="not filed as canary"):
        e2e_checks.check_alerts(alerts[:1], "ctr-predictor-00001")
    with pytest.raises(CheckFailed):
        e2e_checks.check_alerts([], "ctr-predictor-00002")


def test_checks_exit_non_zero_with_one_line(tmp_path):
    path = tmp_path / "alerts.json"
    path.write_text("[]")
    proc = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "e2e_checks.py"), "alerts", str(path),
         "--revision", "ctr-predictor-00002"],
        capture_output=True, text=True, check=False,
    )
    assert proc.returncode == 1
    assert proc.stderr.strip().count("\n") == 0 and "no alert" in proc.stderr


# --- the workflow runs them on what it made ----------------------------------------------


def test_the_canary_is_a_different_registered_version():
    run = step("Train two model versions")
    exports = re.findall(r"kubeloop models export ctr (\S+) (\S+)", run)
    assert len(exports) == 2 and exports[0][0] != exports[1][0], exports
    assert all(v not in ("latest", "production", "canary") for v, _ in exports)
    assert f"e2e_checks.py versions {exports[0][1]} {exports[1][1]}" in run


def test_the_reported_split_is_checked_and_its_revision_kept():
    run = step("Canary v2")
    assert "canary set ctr \"${CANARY_PERCENT}\"" in run
    assert "e2e_checks.py traffic /tmp/isvc.json --percent \"${CANARY_PERCENT}\"" in run
    assert "kubectl -n \"${NAMESPACE}\" get inferenceservice ctr -o json > /tmp/isvc.json" in run
    assert "CANARY_REVISION=" in run


def test_enough_drifted_traffic_reaches_the_canary_to_close_a_window():
    from kubeloop.drift.windows import WindowConfig

    run = step("Drive drifted traffic")
    requests = int(re.search(r"for i in \$\(seq 1 (\d+)\)", run).group(1))
    rows = int(re.search(r"for k in range\((\d+)\)", run).group(1))
    percent = int(yaml.safe_load(WORKFLOW.read_text())["jobs"]["e2e"]["env"]["CANARY_PERCENT"])
    # The canary's requests are Binomial(requests, p); require the window minimum even at
    # three standard deviations below the mean.
    p = percent / 100
    low = requests * p - 3 * (requests * p * (1 - p)) ** 0.5
    assert low * rows >= WindowConfig().min_events
    assert "/flush" in run  # windows close on demand, not after 2,000 rows or an hour
    assert "e2e_checks.py alerts /tmp/alerts.json --revision \"${CANARY_REVISION}\"" in run


def test_workflow_reaches_only_services_that_exist():
    """Every `svc/NAME` the workflow port-forwards is one the pinned KFP install or our own
    manifests create (the old workflow forwarded minio-service, which KFP 2.16 lacks)."""
    inventory = json.loads((ROOT / "tests/fixtures/upstream/inventory.json").read_text())
    kfp = {(s["namespace"], s["name"]) for s in inventory["kfp"]["services"]}
    ours = {("kubeloop", "kubeloop-redis"), ("kubeloop", "kubeloop-drift-detector")}
    text = WORKFLOW.read_text()
    forwards = re.findall(r'kubectl -n (\S+) port-forward svc/([a-z0-9-]+)', text)
    assert forwards
    for ns, name in forwards:
        ns = "kubeloop" if ns == '"${NAMESPACE}"' else ns
        assert (ns, name) in kfp | ours, f"svc/{name} in {ns} is not created by any install"


# --- the rollout controller's checks ----------------------------------------------------------


def _records(pairs: int, *, same_version: bool = False, shadow_only: int = 0) -> dict:
    rows = []
    for i in range(pairs):
        rows.append({"request_id": f"r{i}", "variant": "primary", "version": "v1",
                     "predictions": [0.1], "status_code": 200})
        rows.append({"request_id": f"r{i}", "variant": "shadow",
                     "version": "v1" if same_version else "v2",
                     "predictions": [0.2], "status_code": 200})
    for i in range(shadow_only):
        rows.append({"request_id": f"s{i}", "variant": "shadow", "version": "v2",
                     "predictions": [0.2], "status_code": 200})
    return {"records": rows, "labels": {}}


def test_paired_check_needs_both_answers_of_two_versions():
    assert e2e_checks.check_paired(_records(30), 30) == "30 paired request ids"
    with pytest.raises(CheckFailed, match="expected at least 30"):
        e2e_checks.check_paired(_records(29, shadow_only=5), 30)
    with pytest.raises(CheckFailed, match="shadowed by the version that served"):
        e2e_checks.check_paired(_records(30, same_version=True), 30)
    failed = _records(30)
    for row in failed["records"]:
        if row["variant"] == "shadow":
            row["status_code"] = 502
    with pytest.raises(CheckFailed, match="0 request id"):
        e2e_checks.check_paired(failed, 1)


def test_rollout_check_reads_the_status_json():
    running = {"phase": "running", "step": 0, "percent": 0, "history": [{"action": "start"}]}
    assert "running" in e2e_checks.check_rollout(running, "running", 0)
    with pytest.raises(CheckFailed, match="expected 'aborted'"):
        e2e_checks.check_rollout(running, "aborted", 0)
    with pytest.raises(CheckFailed, match="expected 5%"):
        e2e_checks.check_rollout(running, "running", 5)
    with pytest.raises(CheckFailed, match="phase is 'none'"):
        e2e_checks.check_rollout({"phase": "none"}, "running", 0)
    with pytest.raises(CheckFailed, match="without any recorded step"):
        e2e_checks.check_rollout({**running, "history": []}, "running", 0)


def test_events_check_needs_the_reason_on_the_inferenceservice():
    events = [
        {"reason": "RolloutStarted", "involvedObject": {"kind": "InferenceService", "name": "ctr"}},
        {"reason": "RolloutAborted", "involvedObject": {"kind": "Pod", "name": "x"}},
    ]
    assert "1 RolloutStarted" in e2e_checks.check_events(events, "RolloutStarted")
    with pytest.raises(CheckFailed, match="no RolloutAborted Event"):
        e2e_checks.check_events(events, "RolloutAborted")


def test_the_rollout_step_runs_the_checks_on_what_the_controller_did():
    deploy = step("Deploy kubeloop")
    assert "rollout status deployment/kubeloop-rollout-controller" in deploy
    # The controller waits while the plugin's manual split is checked...
    assert deploy.index("rollout status deployment/kubeloop-rollout-controller") < deploy.index(
        "scale deployment/kubeloop-rollout-controller --replicas=0"
    )
    run = step("Rollout controller")
    # ...and takes over afterwards.
    assert "scale deployment/kubeloop-rollout-controller --replicas=1" in run
    assert "e2e_checks.py rollout /tmp/rollout.json --phase running --percent 0" in run
    assert "e2e_checks.py events /tmp/events.json --reason RolloutStarted" in run
    assert "e2e_checks.py paired /tmp/records.json --min 30" in run
    assert "/requestlog/records" in run and "/feedback" in run
    assert 'test "$(label never-served 1)" = 404' in run
    assert 'test "$(label e2e-2 2)" = 422' in run
    assert "kubectl kubeloop -n \"${NAMESPACE}\" rollout abort ctr" in run
    assert "e2e_checks.py rollout /tmp/rollout.json --phase aborted --percent 0" in run
    assert "e2e_checks.py events /tmp/events.json --reason RolloutAborted" in run
    requests = int(re.search(r"for i in \$\(seq 1 (\d+)\)", run).group(1))
    assert requests >= 30  # enough to pair 30 ids at the shadow stage (all served by v1)
    steps = list(e2e_steps())
    assert steps.index(next(n for n in steps if "Rollout controller" in n)) > steps.index(
        next(n for n in steps if "Drive drifted traffic" in n)
    )
