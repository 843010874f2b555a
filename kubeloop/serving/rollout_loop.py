"""The rollout loop: one reconcile step of a progressive rollout, wherever it runs.

`RolloutLoop.reconcile_once()` is what the rollout controller does every interval
(`kubeloop.cluster.controller` in the cluster; the same loop runs over a local workdir):

1. read the rollout record (`RolloutRecord`, from a `StateStore`: a ConfigMap in the
   cluster, `<workdir>/serving/progressive.json` locally); start a new one when the target
   has a canary the record does not know (someone set one: `canary set ... --storage-uri`);
2. read the answers and labels since the rollout began (`RecordsSource`: the request log's
   `GET /requestlog/records`, or the local sink), build the paired frame and the current
   step's health (`kubeloop.serving.paired`), and call `kubeloop.serving.progressive.
   evaluate_step`;
3. apply the decision to the target with the canary verbs (`CanaryTarget`: `set` percent,
   `promote`, `rollback`; in the cluster these are `kubeloop.cluster.isvc`'s merge patches,
   the same the kubectl plugin sends);
4. record every step that changes something (start, advance, promote, rollback,
   inconclusive, abort) through a `Recorder` (Kubernetes Events in the cluster) and save
   the record.

A moved percent takes effect only once the target serves it (KServe reconciles the route;
the router re-reads rollout.json): until `split_ready(percent)` says so, the step is
"settling", nothing is judged, and the step's window (its requests, its SRM test) starts
when the split is in place, so answers served at the old split never count against the new
one.

A hold changes nothing and records nothing but the record's `last` decision, so
`rollout status` shows the current statistics and reasons. The record is small (bounded
history) so it fits a ConfigMap.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import KW_ONLY, dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field

from kubeloop.serving.progressive import (
    ProgressivePolicy,
    StepDecision,
    StepState,
    evaluate_step,
    initial_state,
)

if TYPE_CHECKING:
    import pandas as pd

    from kubeloop.serving.canary import CanaryTarget

log = logging.getLogger(__name__)

Phase = Literal["running", "promoted", "rolled_back", "inconclusive", "aborted"]
TERMINAL: tuple[Phase, ...] = ("promoted", "rolled_back", "inconclusive", "aborted")
MAX_HISTORY = 50
_PHASE_OF = {"promote": "promoted", "rollback": "rolled_back", "inconclusive": "inconclusive"}


def _now() -> datetime:
    return datetime.now(UTC)


class StepRecord(BaseModel):
    """One recorded step: what was done, at which percent, and why."""

    model_config = ConfigDict(extra="forbid")

    at: datetime
    action: Literal["start", "advance", "promote", "rollback", "inconclusive", "abort"]
    step: int
    percent: int
    paired: int = 0
    delta_logloss: float | None = None
    cs_low: float | None = None
    cs_high: float | None = None
    reasons: list[str] = Field(default_factory=list)


class RolloutRecord(BaseModel):
    """The state of one rollout: kept between reconciles (ConfigMap or file)."""

    model_config = ConfigDict(extra="forbid")

    model: str
    candidate: str = Field(description="what the rollout rolls out: storage URI or version")
    production: str | None = Field(
        None, description="what served before it (same kind of name), when known"
    )
    production_version: str | None = None
    candidate_version: str | None = None
    phase: Phase = "running"
    started_at: datetime
    step_started_at: datetime
    settled: bool = Field(
        True, description="the target serves the step's percent (the step's window is open)"
    )
    state: StepState
    policy: ProgressivePolicy
    last: StepDecision | None = None
    history: list[StepRecord] = Field(default_factory=list)

    @property
    def done(self) -> bool:
        return self.phase in TERMINAL


class StateStore(Protocol):
    """Where the rollout record lives."""

    def load(self) -> RolloutRecord | None: ...

    def save(self, record: RolloutRecord) -> None: ...


class RecordsSource(Protocol):
    """The request log's answers (one row per answer: request_id, variant, version,
    predictions, status_code, latency_ms, time) since a time, and every label."""

    def fetch(self, since: datetime) -> tuple[pd.DataFrame, dict[str, int]]: ...


class Recorder(Protocol):
    """Records a step (Kubernetes Events in the cluster)."""

    def record(self, record: RolloutRecord, step: StepRecord) -> None: ...


class NullRecorder:
    """Records nothing (the record's own history still keeps every step)."""

    def record(self, record: RolloutRecord, step: StepRecord) -> None:
        return None


def infer_versions(answers: pd.DataFrame) -> tuple[str | None, str | None]:
    """(production, candidate) from the log: the version answering most as "primary", and
    the other version answering most as "canary" or "shadow"."""
    if answers.empty:
        return None, None
    primary = answers[answers["variant"] == "primary"]["version"].dropna()
    production = str(primary.mode().iloc[0]) if len(primary) else None
    others = answers[answers["variant"].isin(["canary", "shadow"])]["version"].dropna()
    others = others[others != production]
    candidate = str(others.mode().iloc[0]) if len(others) else None
    return production, candidate


def step_policy(policy: ProgressivePolicy, percent: int, shadow_at_full: bool) -> ProgressivePolicy:
    """The policy for one step. Where production cannot score in shadow at 100% (KServe
    drops the `prev` route tag there), the 100% step's dwell counts requests only: no new
    paired impressions can arrive, and the quality test concluded before this step. For
    the same reason, with delayed labels an unproven candidate stops below 100% there: at
    100% its traffic would no longer be paired, and the labels it waits for would stop
    coming."""
    if shadow_at_full:
        return policy
    update: dict[str, int] = {}
    if percent >= 100:
        update["min_labelled"] = 0
    if policy.label_timing == "delayed":
        below = max((p for p in policy.schedule if p < 100), default=0)
        update["unproven_max_percent"] = min(policy.unproven_max_percent, below)
    return policy.model_copy(update=update) if update else policy


@dataclass(eq=False)
class RolloutLoop:
    """One progressive rollout driven over a `CanaryTarget` (module docstring).

    `current_candidate()` names the canary the target has now (None: no canary), so a new
    one starts a new rollout; `current_production()` names what serves while there is no
    canary (remembered from idle passes, so a spec reverted to it after a rejection is not
    taken for a new candidate). With `names_are_versions` (locally) those names are the
    model versions; otherwise (storage URIs) the versions are read off the log. `shadow_at_full` says whether production keeps scoring in
    shadow at 100% (locally yes; KServe: no). `clock` is injectable for tests.
    """

    model: str
    target: CanaryTarget
    store: StateStore
    source: RecordsSource
    _: KW_ONLY
    current_candidate: Callable[[], str | None]
    recorder: Recorder | None = None
    """None: a `NullRecorder`."""
    policy: ProgressivePolicy | None = None
    """None: the default `ProgressivePolicy`."""
    production_version: str | None = None
    candidate_version: str | None = None
    shadow_at_full: bool = True
    split_ready: Callable[[int], bool] | None = None
    current_production: Callable[[], str | None] | None = None
    names_are_versions: bool = False
    clock: Callable[[], datetime] = _now
    # What served with no canary, seen on an idle pass.
    _stable: str | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        self.recorder = self.recorder or NullRecorder()
        self.policy = self.policy or ProgressivePolicy()

    # --- the steps ----------------------------------------------------------------------

    def _step(self, record: RolloutRecord, action: str, reasons: list[str]) -> StepRecord:
        last = record.last
        cs = last.statistics.delta_logloss if last is not None else None
        step = StepRecord(
            at=self.clock(),
            action=action,  # type: ignore[arg-type]
            step=record.state.step,
            percent=record.state.percent,
            paired=last.statistics.paired if last is not None else 0,
            delta_logloss=cs.estimate if cs is not None else None,
            cs_low=cs.low if cs is not None else None,
            cs_high=cs.high if cs is not None else None,
            reasons=reasons,
        )
        record.history = [*record.history, step][-MAX_HISTORY:]
        return step

    def start(self, candidate: str, production: str | None = None) -> RolloutRecord:
        """Begin a rollout of `candidate` at the schedule's first step (the shadow stage)."""
        now = self.clock()
        state = initial_state(self.policy)
        record = RolloutRecord(
            model=self.model,
            candidate=candidate,
            production=production,
            production_version=self.production_version
            or (production if self.names_are_versions else None),
            candidate_version=self.candidate_version
            or (candidate if self.names_are_versions else None),
            started_at=now,
            step_started_at=now,
            settled=self.split_ready is None,
            state=state,
            policy=self.policy,
        )
        self.target.set(state.percent, reason=f"rollout of {candidate}: step 0")
        step = self._step(
            record,
            "start",
            [f"rollout of {candidate} started at step 0 ({state.percent}%)"],
        )
        self.store.save(record)
        self.recorder.record(record, step)
        return record

    def reconcile_once(self) -> RolloutRecord | None:
        """One pass (module docstring); the record after it, None when nothing rolls out."""
        record = self.store.load()
        candidate = self.current_candidate()
        if candidate is None:
            if self.current_production is not None:
                self._stable = self.current_production()
            return record
        if record is None or record.candidate != candidate:
            production = self._stable
            if record is not None and record.done:
                production = record.candidate if record.phase == "promoted" else record.production
                if candidate == production:
                    # The spec went back to what served before (the second step of rejecting
                    # a canary: `canary rollback --storage-uri OLD`): nothing to roll out.
                    return record
            if production is None and self.current_production is not None:
                production = self._stable or self.current_production()
            return self.start(candidate, production=production or self._stable)
        if record.done:
            return record
        return self._evaluate(record)

    def _settle(self, record: RolloutRecord) -> bool:
        """True once the target serves the step's percent; the step's window opens then."""
        if record.settled:
            return True
        assert self.split_ready is not None
        if not self.split_ready(record.state.percent):
            return False
        record.settled = True
        record.step_started_at = self.clock()
        return True

    def _evaluate(self, record: RolloutRecord) -> RolloutRecord:
        from kubeloop.serving.paired import health_stats, paired_frame

        if not self._settle(record):
            return record  # nothing changed: no write

        answers, labels = self.source.fetch(record.started_at)
        if record.production_version is None or record.candidate_version is None:
            production, candidate = infer_versions(answers)
            record.production_version = record.production_version or production
            record.candidate_version = record.candidate_version or candidate
        prod, cand = record.production_version, record.candidate_version
        if prod is None or cand is None:
            record.last = None
            self.store.save(record)
            return record
        paired = paired_frame(answers, labels, prod, cand)
        times = _utc_times(answers)
        current = answers[times >= record.step_started_at] if len(answers) else answers
        health = health_stats(current, prod, cand)
        policy = step_policy(record.policy, record.state.percent, self.shadow_at_full)
        decision = evaluate_step(record.state, paired, health, policy)
        record.last = decision
        action = decision.action
        if action == "hold":
            self.store.save(record)
            return record
        if action == "advance":
            self.target.set(decision.percent, reason="; ".join(decision.reasons))
            record.state = decision.state
            record.step_started_at = self.clock()
            record.settled = self.split_ready is None
        elif action == "promote":
            self.target.promote(reason="; ".join(decision.reasons))
            record.state = decision.state.model_copy(update={"percent": 100})
        else:  # rollback, inconclusive: production keeps (or gets back) all the traffic
            self.target.rollback(reason="; ".join(decision.reasons))
            record.state = decision.state.model_copy(update={"percent": 0})
        if action in _PHASE_OF:
            record.phase = _PHASE_OF[action]  # type: ignore[assignment]
        step = self._step(record, action, decision.reasons)
        self.store.save(record)
        self.recorder.record(record, step)
        return record

    def abort(self, reason: str = "aborted by a user") -> RolloutRecord:
        """Roll back now and end the rollout (`rollout abort`)."""
        record = self.store.load()
        if record is None or record.done:
            from kubeloop.errors import KubeloopError

            what = "no rollout" if record is None else f"the rollout is {record.phase}"
            raise KubeloopError(f"nothing to abort for {self.model}: {what}")
        self.target.rollback(reason=reason)
        record.state = record.state.model_copy(update={"percent": 0, "done": True})
        record.phase = "aborted"
        step = self._step(record, "abort", [reason])
        self.store.save(record)
        self.recorder.record(record, step)
        return record


def _utc_times(answers: pd.DataFrame) -> Any:
    import pandas as pd

    if not len(answers):
        return pd.Series([], dtype="datetime64[ns, UTC]")
    return pd.to_datetime(answers["time"], utc=True, format="ISO8601")


def record_summary(record: RolloutRecord | None) -> dict[str, Any]:
    """What `rollout status` prints as JSON: phase, step, percent, versions, the last
    decision's statistics and reasons, and the steps so far."""
    if record is None:
        return {"phase": "none"}
    last = record.last
    return {
        "model": record.model,
        "candidate": record.candidate,
        "production": record.production,
        "production_version": record.production_version,
        "candidate_version": record.candidate_version,
        "phase": record.phase,
        "step": record.state.step,
        "percent": record.state.percent,
        "schedule": record.policy.schedule,
        "started_at": record.started_at.isoformat(),
        "step_started_at": record.step_started_at.isoformat(),
        "settled": record.settled,
        "decision": last.model_dump(mode="json", exclude={"state"}) if last else None,
        "history": [s.model_dump(mode="json") for s in record.history],
    }


def render_record(record: RolloutRecord | None) -> str:
    """`rollout status` as text: the step, the statistics and the reasons."""
    if record is None:
        return "no rollout recorded"
    schedule = " -> ".join(
        f"[{p}%]" if i == record.state.step else f"{p}%"
        for i, p in enumerate(record.policy.schedule)
    )
    lines = [
        f"model       {record.model}",
        (
            f"candidate   {record.candidate} ({record.candidate_version or '?'}) vs production "
            f"{record.production_version or '?'}"
        ),
        f"phase       {record.phase}",
        f"step        {record.state.step} at {record.state.percent}%   {schedule}"
        + ("" if record.settled or record.done else "   (waiting for the split)"),
        f"started     {record.started_at.isoformat(timespec='seconds')}",
    ]
    last = record.last
    if last is not None:
        s = last.statistics
        cs = s.delta_logloss

        def num(x: float | None, fmt: str = "+.5f") -> str:
            return "-" if x is None else format(x, fmt)

        lines += [
            f"decision    {last.action} (percent {last.percent})",
            f"paired      {s.paired} labelled impressions (CTR {num(s.ctr, '.4f')})",
            (
                f"delta LL    {num(cs.estimate)}  CS [{num(cs.low)}, {num(cs.high)}]  margin "
                f"{num(s.margin_logloss, '.5f')}  relative {num(s.relative_delta, '+.3%')}"
            ),
            (
                f"NE          production {num(s.production.ne, '.4f')}  candidate "
                f"{num(s.candidate.ne, '.4f')}"
            ),
            f"SRM         p-value {num(s.srm.p_value if s.srm else None, '.3g')}",
            (
                f"guardrails  error-rate increase {num(s.error_rate_increase, '+.2%')}  p99 ratio "
                f"{num(s.latency_p99_ratio, '.2f')}"
            ),
            "reasons",
            *[f"  - {r}" for r in last.reasons],
        ]
    if record.history:
        lines.append("steps")
        lines += [
            f"  {h.at.isoformat(timespec='seconds')} {h.action:<12} step {h.step} {h.percent:>3}%"
            f"  {h.reasons[-1] if h.reasons else ''}"
            for h in record.history[-10:]
        ]
    return "\n".join(lines)


# --- the local side -----------------------------------------------------------------------

PROGRESS_FILE = "progressive.json"


class FileStore:
    """The record in a JSON file, written atomically (`<workdir>/serving/progressive.json`)."""

    def __init__(self, path: Any):
        from pathlib import Path

        self.path = Path(path)

    def load(self) -> RolloutRecord | None:
        from kubeloop.atomic import read_model
        from kubeloop.errors import KubeloopError

        return read_model(
            self.path,
            RolloutRecord,
            lambda p, why: KubeloopError(f"rollout record {p} is not valid: {why}"),
        )

    def save(self, record: RolloutRecord) -> None:
        from kubeloop.atomic import atomic_write_text

        atomic_write_text(self.path, record.model_dump_json(indent=2) + "\n")


class SinkRecords:
    """Answers from a request-log sink and labels from a `LabelStore` (the local stack's
    SQLite log holds both)."""

    def __init__(self, sink: Any, labels: Any):
        self.sink = sink
        self.labels = labels

    def fetch(self, since: datetime) -> tuple[pd.DataFrame, dict[str, int]]:
        from kubeloop.serving.request_log.feedback import answer_records

        return records_frame(answer_records(self.sink, since=since)), self.labels.labels()


def records_frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """The answers of `answer_records` (or `GET /requestlog/records`) as a frame."""
    import pandas as pd

    columns = [
        "request_id",
        "variant",
        "version",
        "predictions",
        "status_code",
        "latency_ms",
        "time",
    ]
    frame = pd.DataFrame(rows, columns=columns)
    frame["status_code"] = frame["status_code"].astype("Int64")
    frame["latency_ms"] = frame["latency_ms"].astype("float64")
    return frame
