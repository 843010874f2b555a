"""Pairing the two models' answers on the same impressions, from the request log.

The served answer is logged with variant "primary" or "canary"; the non-serving model's
mirrored answer is logged with the SAME request id, variant "shadow" and its own
model_version. So an impression is paired when both versions answered its request id, and
a label joined to it scores both models on it.

Impression keys follow the label feed's convention (kubeloop.demo.drift.post_labels, the
feedback endpoint): a request that scored one impression is keyed by its request id, a
batched one by `<request id>/<position>`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

if TYPE_CHECKING:
    import pandas as pd

    from kubeloop.serving.request_log.events import LoggedEvent

SHADOW = "shadow"
SERVED_VARIANTS = ("primary", "canary")
PAIRED_COLUMNS = ["request_id", "label", "p_production", "p_candidate", "served"]


def answers_frame(records: pd.DataFrame | Iterable[LoggedEvent]) -> pd.DataFrame:
    """One row per logged answer: request_id, variant, version, predictions, status_code,
    latency_ms. `records` is either `exchanges_frame(...)` or request-log events (only the
    response events are read: each carries its own variant and model version, so a shadow
    answer sharing a request id with the served one is never mistaken for it)."""
    import pandas as pd

    from kubeloop.cloudevents import RESPONSE_TYPE

    columns = ["request_id", "variant", "version", "predictions", "status_code", "latency_ms"]
    if isinstance(records, pd.DataFrame):
        return records.reindex(columns=columns)
    rows = []
    for event in records:
        if event.type != RESPONSE_TYPE:
            continue
        try:
            body = event.json()
        except ValueError:
            body = None
        predictions = None
        if isinstance(body, dict):
            predictions = body.get("predictions", body.get("outputs"))
        rows.append(
            {
                "request_id": event.id,
                "variant": event.variant,
                "version": event.model_version,
                "predictions": predictions,
                "status_code": event.status_code,
                "latency_ms": event.latency_ms,
            }
        )
    return pd.DataFrame(rows, columns=columns)


def _scores(predictions: Any) -> list[float] | None:
    """The click probabilities of one answer (v1 list of floats, or a v2 outputs list whose
    first tensor holds them); None when the answer has none."""
    if not isinstance(predictions, list) or not predictions:
        return None
    first = predictions[0]
    if isinstance(first, dict) and "data" in first:
        predictions = first["data"]
    try:
        return [float(x) for x in predictions]
    except (TypeError, ValueError):
        return None


def impression_scores(answers: pd.DataFrame) -> pd.DataFrame:
    """Explode answers into one row per impression: key, request_id, variant, version,
    prediction (successful answers with scores only)."""
    import pandas as pd

    rows = []
    ok = answers[answers["status_code"].fillna(0).astype(int) == 200]
    for request_id, variant, version, predictions in ok[
        ["request_id", "variant", "version", "predictions"]
    ].itertuples(index=False):
        scores = _scores(predictions)
        if scores is None:
            continue
        single = len(scores) == 1
        for position, score in enumerate(scores):
            key = request_id if single else f"{request_id}/{position}"
            rows.append((key, request_id, variant, version, score))
    return pd.DataFrame(rows, columns=["key", "request_id", "variant", "version", "prediction"])


def _labels_frame(labels: pd.DataFrame | Mapping[str, float]) -> pd.DataFrame:
    import pandas as pd

    if isinstance(labels, pd.DataFrame):
        frame = labels.rename(columns={"key": "request_id"})
        keep = [c for c in ("request_id", "label", "oracle") if c in frame]
        return frame[keep].drop_duplicates("request_id", keep="last")
    return pd.DataFrame({"request_id": list(labels), "label": list(labels.values())})


def paired_frame(
    records: pd.DataFrame | Iterable[LoggedEvent],
    labels: pd.DataFrame | Mapping[str, float],
    production_version: str,
    candidate_version: str,
) -> pd.DataFrame:
    """One row per labelled impression that both versions scored: request_id (the impression
    key), label, p_production, p_candidate, served ("production" | "candidate": which
    version's answer reached the caller), plus `oracle` when `labels` has that column.

    `labels` is a frame with request_id (impression key), label and optionally oracle, or a
    mapping key -> label. Rows keep the log's order, so a prefix is "what was known then"."""
    import pandas as pd

    scores = impression_scores(answers_frame(records))
    scores = scores[scores["version"].isin([production_version, candidate_version])]
    # The first answer of a version per impression wins (a retried request logs twice).
    scores = scores.drop_duplicates(["key", "version"], keep="first")
    wide = scores.pivot(index="key", columns="version", values="prediction")
    served_rows = scores[scores["variant"].isin(SERVED_VARIANTS)].drop_duplicates("key")
    served = served_rows.set_index("key")["version"]
    order = scores.drop_duplicates("key").set_index("key").index
    if production_version not in wide or candidate_version not in wide:
        empty = pd.DataFrame(columns=PAIRED_COLUMNS)
        return empty
    frame = pd.DataFrame(
        {
            "request_id": order,
            "p_production": wide[production_version].reindex(order).to_numpy(),
            "p_candidate": wide[candidate_version].reindex(order).to_numpy(),
            "served_version": served.reindex(order).to_numpy(),
        }
    )
    frame = frame.dropna(subset=["p_production", "p_candidate"])
    frame["served"] = np.where(
        frame["served_version"] == candidate_version, "candidate", "production"
    )
    frame = frame.drop(columns="served_version")
    joined = frame.merge(_labels_frame(labels), on="request_id", how="inner")
    joined = joined[joined["label"].notna()]
    columns = PAIRED_COLUMNS + (["oracle"] if "oracle" in joined else [])
    return joined[columns].reset_index(drop=True)


class ModelHealth(BaseModel):
    """One version's answers in a window: what it served, what it answered in shadow,
    how many failed, and its latency."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    version: str | None
    served: int = Field(0, description="requests whose answer reached the caller")
    shadow: int = Field(0, description="mirrored requests it answered in shadow")
    errors: int = Field(0, description="answers (served or shadow) with a status other than 200")
    error_rate: float = 0.0
    latency_p99_ms: float | None = None


class HealthStats(BaseModel):
    """Both versions' health over the current step, and the split the SRM test checks."""

    model_config = ConfigDict(extra="forbid")

    production: ModelHealth
    candidate: ModelHealth

    @property
    def served_total(self) -> int:
        """Requests served by either version (the SRM test's n)."""
        return self.production.served + self.candidate.served


def _health(answers: pd.DataFrame, version: str) -> ModelHealth:
    mine = answers[answers["version"] == version]
    answered = len(mine)
    status = mine["status_code"].fillna(599).astype(int)
    errors = int((status != 200).sum())
    latency = mine["latency_ms"].dropna().astype(float)
    return ModelHealth(
        version=version,
        served=int(mine["variant"].isin(SERVED_VARIANTS).sum()),
        shadow=int((mine["variant"] == SHADOW).sum()),
        errors=errors,
        error_rate=errors / answered if answered else 0.0,
        latency_p99_ms=float(np.percentile(latency, 99)) if len(latency) else None,
    )


def health_stats(
    records: pd.DataFrame | Iterable[LoggedEvent], production_version: str, candidate_version: str
) -> HealthStats:
    """Per-version served/shadow counts, error rates and p99 latency of `records` (pass only
    the current step's records: each step has its own split and its own guardrails)."""
    answers = answers_frame(records)
    return HealthStats(
        production=_health(answers, production_version),
        candidate=_health(answers, candidate_version),
    )
