"""The progressive rollout over a local workdir: the same `RolloutLoop` as the cluster's
controller, driving rollout.json (which the router follows) from the stack's request log
and the labels posted to its feedback endpoint; `kubeloop canary progress|abort|controller`."""

from __future__ import annotations

import json

import numpy as np
from typer.testing import CliRunner

from kubeloop.serving.canary import LocalCanary
from kubeloop.serving.progressive import ProgressivePolicy
from kubeloop.serving.request_log.events import Exchange
from kubeloop.serving.request_log.feedback import Label, LabelStore
from kubeloop.serving.request_log.logger import CloudEventLogger
from kubeloop.serving.request_log.sinks import SQLiteRequestLog
from kubeloop.serving.rollout import LocalRollout, load_state, rollout_path, serving_dir

POLICY = ProgressivePolicy(
    min_requests=50, min_labelled=300, min_paired=200, tuned_n=2000, min_requests_for_health=20
)


class LocalTraffic:
    """Serves one batch per call at the split rollout.json holds now, shadowing the other
    version, and labels every impression (as the demo's delayed feedback would)."""

    def __init__(self, workdir, seed: int, worse: bool = False):
        self.workdir = workdir
        self.path = serving_dir(workdir) / "requests.sqlite"
        self.sink = SQLiteRequestLog(self.path)
        self.labels = LabelStore(self.path)
        self.rng = np.random.default_rng(seed)
        self.worse = worse
        self.n = 0

    def batch(self, size: int = 600) -> None:
        state = load_state(rollout_path(self.workdir))
        logger = CloudEventLogger(self.sink, inference_service="ctr", close_sink=False)
        n_canary = round(size * state.canary_percent / 100) if state.canary_version else 0
        labels = []
        for i in range(size):
            rid = f"r{self.n}"
            self.n += 1
            q = float(self.rng.uniform(0.02, 0.3))
            y = int(self.rng.random() < q)
            p1 = float(np.clip(q * np.exp(self.rng.normal(0, 0.6)), 1e-3, 0.9))
            bias = 1.0 if self.worse else 0.0
            p2 = float(np.clip(q * np.exp(bias + self.rng.normal(0, 0.1)), 1e-3, 0.9))
            answers = {"v1": p1, "v2": p2}
            served = state.canary_version if i < n_canary else state.primary_version
            variant = "canary" if i < n_canary else "primary"
            other = next((v for v in ("v1", "v2") if v != served), None)
            for v, name in ((served, variant), (other, "shadow")):
                if v is None or (name == "shadow" and state.canary_version is None):
                    continue
                logger.log(
                    Exchange(
                        request_body=b'{"instances": [{}]}',
                        response_body=json.dumps({"predictions": [answers[v]]}).encode(),
                        status_code=200,
                        variant=name,
                        model_version=v,
                        latency_ms=4.0,
                        request_id=rid,
                    )
                )
            labels.append(Label(rid, rid, None, y, f"e{rid}", "test"))
        logger.close()
        self.labels.put(labels)


def test_the_local_loop_walks_the_steps_and_promotes(tmp_path) -> None:
    LocalRollout(tmp_path, "ctr").init("v1", "v2", 10)
    traffic = LocalTraffic(tmp_path, seed=11)
    canary = LocalCanary(tmp_path, "ctr", registry=False)
    loop = canary.loop(policy=POLICY)
    percents = []
    for _ in range(15):
        record = loop.reconcile_once()
        state = load_state(rollout_path(tmp_path))
        percents.append((record.phase, state.canary_version, state.canary_percent))
        if record.done:
            break
        traffic.batch()
    assert percents[-1] == ("promoted", None, 0), percents
    steps = [p for _, version, p in percents if version == "v2"]
    assert [p for i, p in enumerate(steps) if i == 0 or p != steps[i - 1]] == [0, 5, 25, 50, 100]
    assert load_state(rollout_path(tmp_path)).primary_version == "v2"
    # At 100% production still answers in shadow locally, so that step dwells on labels too.
    record = loop.store.load()
    assert [h.action for h in record.history][-1] == "promote"
    progress = canary.progress()
    assert "promoted" in progress.text and progress.data["phase"] == "promoted"


def test_local_abort_and_the_cli(tmp_path) -> None:
    from kubeloop.cli.main import app

    LocalRollout(tmp_path, "ctr").init("v1", "v2", 10)
    traffic = LocalTraffic(tmp_path, seed=12)
    runner = CliRunner()
    args = ["--workdir", str(tmp_path), "--no-registry"]
    # One pass of the local controller: the rollout starts in shadow.
    result = runner.invoke(app, ["canary", "controller", "--once", *args])
    assert result.exit_code == 0, result.output
    assert load_state(rollout_path(tmp_path)).canary_percent == 0
    traffic.batch()
    result = runner.invoke(app, ["canary", "progress", "--workdir", str(tmp_path), "--json"])
    assert result.exit_code == 0 and json.loads(result.output)["phase"] == "running"
    result = runner.invoke(app, ["canary", "abort", *args, "--reason", "test"])
    assert result.exit_code == 0, result.output
    state = load_state(rollout_path(tmp_path))
    assert state.canary_version is None and state.history[-1].reason == "test"
    assert LocalCanary(tmp_path, "ctr", registry=False).progress().data["phase"] == "aborted"
    result = runner.invoke(app, ["canary", "abort", *args])
    assert result.exit_code != 0 and "nothing to abort" in str(result.exception)


def test_a_worse_candidate_is_rolled_back_locally(tmp_path) -> None:
    LocalRollout(tmp_path, "ctr").init("v1", "v2", 10)
    traffic = LocalTraffic(tmp_path, seed=13, worse=True)
    loop = LocalCanary(tmp_path, "ctr", registry=False).loop(policy=POLICY)
    for _ in range(10):
        record = loop.reconcile_once()
        if record.done:
            break
        traffic.batch()
    assert record.phase == "rolled_back"
    assert load_state(rollout_path(tmp_path)).canary_version is None
    assert "proven worse" in record.history[-1].reasons[-1]
