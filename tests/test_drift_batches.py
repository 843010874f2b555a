"""Batched ingestion (issue 14 item 4): a batch of requests or CloudEvents is one
transaction and gives exactly what one call per request gives; a rolled-back batch leaves
nothing behind, in the database or in the monitor's memory."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from test_drift_detectors import T0, make_frame, records, scores_of, small_config

from kubeloop.drift import DriftMonitor, Reference, ServedRequest
from kubeloop.drift.detectors.base import DriftError
from kubeloop.drift.events import BadEventError, InferenceEvent


@pytest.fixture(scope="module")
def reference() -> Reference:
    features = make_frame(4000, seed=1)
    metrics = {"normalized_entropy": 0.9, "log_loss": 0.18, "calibration_ratio": 1.0}
    return Reference("ctr", "v0001", features, scores_of(features), metrics)


def _requests(frame, scores, size=8):
    rows = records(frame)
    return [
        ServedRequest(rows[s : s + size], list(scores[s : s + size]), f"r{s}", event_time=T0 + s)
        for s in range(0, len(rows), size)
    ]


def _verdicts(evaluations):
    return [
        (e.detector, e.window_index, e.n, e.result.is_drift, round(e.result.p_value, 12))
        for e in evaluations
    ]


def test_a_batch_gives_what_one_call_per_request_gives(reference, tmp_path):
    frame = make_frame(1200, seed=21, drift=True)
    requests = _requests(frame, scores_of(frame))
    one, many = [], []
    with DriftMonitor(
        reference, tmp_path / "a", config=small_config(), on_evaluation=[one.append]
    ) as m:
        for r in requests:
            m.observe(r.instances, r.predictions, request_id=r.request_id, event_time=r.event_time)
        counters_one = m.status()["counters"]
    with DriftMonitor(
        reference, tmp_path / "b", config=small_config(), on_evaluation=[many.append]
    ) as m:
        alerts = []
        for start in range(0, len(requests), 40):  # batches straddle window boundaries
            alerts += m.observe_many(requests[start : start + 40])
        counters_many = m.status()["counters"]
        assert m.add_labels({"r8/3": 1, "r1192/7": 0}).matched == 2
    assert _verdicts(many) == _verdicts(one) and len(one) == 8  # 2 windows x 4 detectors
    assert alerts and all(a.detector for a in alerts)
    assert counters_many == counters_one


def test_a_bad_request_rolls_the_whole_batch_back(reference, tmp_path):
    frame = make_frame(700, seed=22)
    requests = _requests(frame, scores_of(frame), size=100)
    with DriftMonitor(reference, tmp_path / "s", config=small_config()) as m:
        m.observe_many(requests[:4])  # 400 rows: an open window of 400
        bad = ServedRequest(records(frame)[:2], [0.1], "bad", event_time=T0 + 999)
        with pytest.raises(DriftError, match="2 instances but 1 predictions"):
            m.observe_many([requests[4], bad])
        assert m.status()["open_windows"][0]["n"] == 400
        # The monitor's in-memory copy of the open window was not left ahead of the
        # store either: the next rows close a window of exactly 500.
        evaluations = []
        m.on_evaluation.append(evaluations.append)
        m.observe_many(requests[4:5])
    assert {e.n for e in evaluations} == {500}


def _event(kind, event_id, **kw):
    return InferenceEvent(
        id=event_id, kind=kind, source="/p", time=datetime.fromtimestamp(T0, UTC),
        inference_service="ctr", namespace="ns", component="predictor",
        endpoint=None, variant="primary", model_version=None, **kw,
    )  # fmt: skip


def test_halves_in_one_batch_pair_without_the_pending_table(reference, tmp_path):
    rows = records(make_frame(3, seed=23))
    with DriftMonitor(reference, tmp_path / "s", config=small_config()) as m:
        results = m.ingest_many(
            [
                _event("request", "a", instances=rows),
                _event("response", "b", predictions=[0.2]),  # its request comes later
                _event("response", "a", predictions=[0.1, 0.2, 0.3]),
                _event("request", "c", instances=rows),
                _event("response", "c", predictions=[0.1]),  # 3 instances, 1 prediction
            ]
        )
        assert [type(r).__name__ for r in results] == [
            "IngestResult", "IngestResult", "IngestResult", "IngestResult", "BadEventError",
        ]  # fmt: skip
        assert [getattr(r, "paired", None) for r in results[:4]] == [False, False, True, False]
        assert isinstance(results[4], BadEventError) and results[4].reason == "mismatched_pair"
        status = m.status()
        assert status["pending_halves"] == 1  # only b's response waits
        assert status["open_windows"][0]["n"] == 3
        with pytest.raises(BadEventError):
            m.ingest(_event("response", "d", predictions=[0.5, 0.5]))
            m.ingest(_event("request", "d", instances=rows))
    # b's response survives a restart and pairs with its request.
    with DriftMonitor(reference, tmp_path / "s", config=small_config()) as m:
        paired = m.ingest(_event("request", "b", instances=rows[:1]))
        assert paired.paired and paired.rows == 1


def test_group_commit_answers_each_event_after_its_batch(reference, tmp_path):
    import threading

    from kubeloop.drift.service import GroupCommit

    rows = records(make_frame(1, seed=24))
    with DriftMonitor(reference, tmp_path / "s", config=small_config()) as m:
        calls = []
        real = m.ingest_many
        gate = threading.Event()

        def slow_ingest_many(events):
            calls.append(len(events))
            gate.wait(5)  # the first transaction "commits" slowly: the others queue up
            return real(events)

        m.ingest_many = slow_ingest_many
        writer = GroupCommit(m)
        results: dict[str, object] = {}

        def send(i: int) -> None:
            kind, body = ("request", {"instances": rows}) if i % 2 else ("response", {})
            body = body or {"predictions": [0.5]}
            results[f"{i}"] = writer.submit(_event(kind, f"e{i // 2}", **body))

        threads = [threading.Thread(target=send, args=(i,)) for i in range(16)]
        for t in threads[:1]:
            t.start()
        while not calls:  # the first event is in its transaction
            threading.Event().wait(0.01)
        for t in threads[1:]:
            t.start()
        while writer._queue.qsize() < 15:
            threading.Event().wait(0.01)
        gate.set()
        for t in threads:
            t.join(10)
        writer.close()
        assert calls == [1, 15]  # one transaction for the 15 that waited
        assert sum(getattr(r, "paired", False) for r in results.values()) == 8
        assert m.status()["pending_halves"] == 0
        m.ingest_many = lambda events: (_ for _ in ()).throw(RuntimeError("disk full"))
        with pytest.raises(RuntimeError, match="disk full"):
            writer.submit(_event("request", "x", instances=rows))
        writer.close()
