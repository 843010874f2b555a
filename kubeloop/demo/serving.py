"""The demo's serving stage: production and a candidate served by real KServe processes,
traffic replayed through them hour by hour, and a progressive rollout
(`kubeloop.serving.progressive`) deciding step by step on what was measured.

The candidate starts in shadow (canary 0%: the router mirrors every request to it and logs
its answer as variant "shadow" under the same request id); at each step the non-serving
version keeps answering in shadow, so every labelled impression is scored by both. After
each replayed hour whose labels bring at least `check_every` new labelled impressions, the
stage joins the labels (delayed feedback: an hour late), builds the paired frame from the
request log (`kubeloop.serving.paired`) and calls `evaluate_step`; an advance moves the
canary percent (the router follows the rollout file), a promote, rollback or inconclusive
ends the experiment and the rest of the traffic is not replayed.

Labels slower than the replay (the use case's `label_delay` at least the replayed span,
`resolve_label_timing`): the policy runs with delayed label timing, so the stage also checks
every `check_every_requests` served requests (health moves the steps then), and once the
traffic ran out it lets the clock run while labels mature (`await_labels`) so that the
promotion's quality test sees them.
"""

from __future__ import annotations

import json
import time
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from kubeloop.serving.progressive import ProgressivePolicy
from kubeloop.serving.replay import ReplayConfig
from kubeloop.usecase import EVENT_ID, EVENT_TIMESTAMP, UseCase, resolve_use_case
from kubeloop.workdir import Workdir

if TYPE_CHECKING:
    import pandas as pd

    from kubeloop.pipeline.local_run import LocalRunResult
    from kubeloop.pipeline.params import TrainingRunParams


class ServingStageConfig(BaseModel):
    """Traffic, policy and check cadence of the demo's online experiment."""

    model_config = ConfigDict(extra="forbid")

    replay: ReplayConfig = Field(default_factory=lambda: ReplayConfig(requests=3000, batch_size=8))
    request_id_prefix: str = Field(
        "ab-",
        pattern=r"^[a-z][a-z0-9-]*$",
        description="prefix of this stage's request ids (stages share one request log)",
    )
    # The pipeline's runner-up never passed the ladder's promotion rule against the
    # champion, so online it has to prove it is better: superiority.
    policy: ProgressivePolicy = Field(
        default_factory=lambda: ProgressivePolicy(requires="superiority")
    )
    check_every: int = Field(
        500, ge=1, description="new labelled impressions between two policy checks"
    )
    check_every_requests: int = Field(
        100,
        ge=1,
        description="with delayed label timing, also check after this many new requests "
        "(the steps move on health while the labels are days away)",
    )
    replay_last_days: int = Field(
        3, ge=1, description="impressions are drawn from the last days of the lake"
    )
    # A fresh server's first calls pay for lazy loading: one use case's candidate's first 4 shadow
    # answers took 0.57-0.88 s against 5-20 ms after, which over a 120-answer shadow step
    # read as a 13x p99 and rolled it back. Flagger-style, health is judged once warm.
    warmup_requests: int = Field(
        10,
        ge=0,
        description="the experiment's first requests, left out of the health guardrails "
        "(both versions' answers; they still count for quality)",
    )
    shadow_drain_s: float = Field(
        30.0, gt=0, description="longest wait for the mirror's queue before a check"
    )
    label_wait_hours: int = Field(
        6,
        ge=1,
        description="with delayed labels (the use case's label_delay), the clock's step "
        "while the experiment waits for labels after the traffic ends",
    )

    @field_validator("policy", mode="before")
    @classmethod
    def _challenger_needs_superiority(cls, value: Any) -> Any:
        # A policy given as settings without `requires` (say only min_labelled) is still
        # the challenger's: superiority, not the policy class's non-inferiority default.
        if isinstance(value, dict) and "requires" not in value:
            return {**value, "requires": "superiority"}
        return value


def stack_server_args(use_case: UseCase) -> list[str]:
    """The predictor's and transformer's arguments for `use_case` (its request fields,
    feature service and model inputs)."""
    from kubeloop.serving.local_servers import DEFAULT_SERVER_ARGS

    return [*DEFAULT_SERVER_ARGS, "--use_case", use_case.name]


def register_challenger(result: LocalRunResult, params: TrainingRunParams) -> str | None:
    """Register the runner-up of the local pipeline run `result` (run with `params`) as a
    candidate: of the models the champion was chosen over, the one with the best holdout
    NE that passes its own gate against the base rate (a runner-up that fails it, say on
    calibration, is not servable), so that the online experiment tests what the ladder
    decided offline. It is gated and registered with the run's own parameters, as the
    pipeline's gate and register steps were."""
    from kubeloop.evaluation.gate import gate
    from kubeloop.evaluation.metrics import EvaluationReport
    from kubeloop.pipeline.steps import register_step, run_gate_config

    arguments = params.arguments()
    config = run_gate_config(params.use_case, arguments["gate_config_json"])
    evaluation = result.evaluation
    others = [kind for kind in evaluation["models"] if kind != result.decision["champion"]]

    def ne(kind: str) -> float:
        value = evaluation["models"][kind].get("normalized_entropy")
        return float("inf") if value is None else float(value)

    run_dir = Path(result.run_dir)
    for kind in sorted(others, key=ne):
        verdict = gate(
            EvaluationReport.model_validate(evaluation["models"][kind]),
            None,
            EvaluationReport.model_validate(evaluation["base_rate"]),
            config,
        )
        challenger_decision = run_dir / "gate" / f"challenger-{kind}.json"
        challenger_decision.write_text(
            json.dumps({"champion": kind, **verdict.model_dump(mode="json")})
        )
        if not verdict.passed:
            continue
        return register_step(
            result.model_dirs[kind],
            kind,
            # kfp.local's layout: the pipeline does not output its training set
            str(run_dir / "features" / "training_set"),
            result.evaluation_dir,
            str(challenger_decision),
            params.registry_uri,
            params.model_name,
            params.scenario,
            f"{run_dir.name}-challenger",
            str(run_dir / "gate" / f"challenger-{kind}-registration.json"),
            arguments["train_config_json"],
            params.use_case,
        )
    return None


def matured(impressions: pd.DataFrame, use_case: UseCase, clock=None) -> pd.DataFrame:
    """The impressions whose label is final at `clock` (all of them when the use case's
    labels come at once, or without a clock), with the label as known then: a positive
    confirmed after the label window counts as negative (`EventSchema.label_delay`)."""
    import pandas as pd

    events = use_case.events
    if events.label_delay is None or clock is None:
        return impressions
    ts = pd.to_datetime(impressions[EVENT_TIMESTAMP], utc=True)
    window_end = ts + events.label_delay
    out = impressions[window_end <= clock]
    if events.label_time is not None:
        confirmed = pd.to_datetime(out[events.label_time], utc=True) <= window_end[out.index]
        out = out.assign(**{events.label: (out[events.label].astype(bool) & confirmed).astype(int)})
    return out


def impression_labels(
    sent: pd.DataFrame, impressions: pd.DataFrame, use_case: UseCase, clock=None
) -> pd.DataFrame:
    """The delayed labels of served impressions known at `clock` (`matured`), keyed as the
    label feed keys them (`<request id>/<position>` for batched requests): request_id,
    label, oracle."""
    import pandas as pd

    label, oracle = use_case.events.label, use_case.events.oracle
    known = matured(impressions, use_case, clock)
    columns = [label] + ([oracle] if oracle and oracle in known else [])
    truth = known.assign(event_id=known[EVENT_ID].astype(str))[[EVENT_ID, *columns]]
    ok = sent[sent["status_code"] == 200].merge(truth, on="event_id")
    if ok.empty:
        return pd.DataFrame(columns=["request_id", "label", "oracle"])
    sizes = ok.groupby("request_id")["event_id"].transform("size")
    keys = ok["request_id"].where(sizes == 1, ok["request_id"] + "/" + ok["position"].astype(str))
    out = pd.DataFrame({"request_id": keys, "label": ok[label].astype(float)})
    if len(columns) > 1:
        out["oracle"] = ok[oracle].astype(float).to_numpy()
    return out


class _Experiment:
    """The progressive experiment's loop state between replayed hours."""

    def __init__(self, stack, rollout, primary, canary, impressions, config, started_at, use_case):
        from kubeloop.serving.progressive import initial_state

        self.stack, self.rollout = stack, rollout
        self.primary, self.canary = primary, canary
        self.impressions, self.config = impressions, config
        self.started_at = started_at
        self.use_case = use_case
        self.clock = None  # the replay's time: what labels are known by (None: all)
        self.label_waits = 0
        self.state = initial_state(config.policy)
        self.sent: list[pd.DataFrame] = []
        self.step_ids: set[str] = set()
        self.warmup_ids: set[str] = set()
        self.labelled_at_check = 0
        self.requests_at_check = 0
        self.steps: list[dict[str, Any]] = []
        self.last = None
        self.checks = 0

    def _drain(self) -> None:
        """Wait (bounded) until every mirrored copy was answered, then flush the log."""
        shadow = getattr(self.stack.router, "shadow", None)
        deadline = time.monotonic() + self.config.shadow_drain_s
        while shadow is not None and time.monotonic() < deadline:
            s = shadow.status()
            if s["submitted"] <= s["mirrored"] + s["failed"] + s["dropped"]:
                break
            time.sleep(0.02)
        for logger in (self.stack.request_logger, getattr(self.stack, "shadow_logger", None)):
            if logger is not None:
                logger.flush(timeout=60)

    def events(self):
        from kubeloop.serving.request_log.sinks import iter_events

        prefix = self.config.request_id_prefix
        return [
            e
            for e in iter_events(self.stack.request_log_path, since=self.started_at)
            if e.id.startswith(prefix)
        ]

    def labelled(self) -> int:
        """Served impressions whose label is known at the clock."""
        served = sum(len(s) for s in self.sent)
        if self.use_case.events.label_delay is None:
            return served
        ts = matured(self.impressions, self.use_case, self.clock)[EVENT_ID].astype(str)
        return int(sum(s["event_id"].isin(set(ts)).sum() for s in self.sent))

    def after_hour(self, sent: pd.DataFrame, clock=None) -> bool:
        """After one replayed hour (`clock`: its end): check when enough new labels came."""
        self.sent.append(sent)
        self.step_ids.update(sent["request_id"])
        self.clock = clock
        return self._maybe_check()

    def _maybe_check(self) -> bool:
        import pandas as pd

        labelled = self.labelled()
        requests = sum(s["request_id"].nunique() for s in self.sent)
        delayed = self.config.policy.label_timing == "delayed"
        if labelled - self.labelled_at_check < self.config.check_every and not (
            delayed and requests - self.requests_at_check >= self.config.check_every_requests
        ):
            return False
        self.labelled_at_check, self.requests_at_check = labelled, requests
        return self.check(pd.concat(self.sent, ignore_index=True))

    def await_labels(self) -> None:
        """The traffic ran out before a decision: with delayed labels, let the clock run on
        (no traffic) while the served impressions' labels mature, checking as they come,
        until the last one is final. Labels known at once: nothing to wait for."""
        import pandas as pd

        delay = self.use_case.events.label_delay
        if delay is None or self.clock is None or not self.sent:
            return
        sent_ids = set(pd.concat(self.sent)["event_id"])
        served = self.impressions[self.impressions[EVENT_ID].astype(str).isin(sent_ids)]
        final = pd.to_datetime(served[EVENT_TIMESTAMP], utc=True).max() + delay
        while not self.state.done and self.clock < final:
            self.clock = min(self.clock + pd.Timedelta(hours=self.config.label_wait_hours), final)
            self.label_waits += 1
            self._maybe_check()
        self.clock = final

    def check(self, sent: pd.DataFrame, last: bool = False) -> bool:
        """One policy check on everything known now; True when the experiment is over.
        `last`: no more traffic will come, so a rollout still running ends inconclusive."""
        from kubeloop.serving.paired import health_stats, paired_frame
        from kubeloop.serving.progressive import end_of_traffic, evaluate_step

        self._drain()
        self.checks += 1
        events = self.events()
        labels = impression_labels(sent, self.impressions, self.use_case, self.clock)
        paired = paired_frame(events, labels, self.primary, self.canary)
        self.warmup_ids = warmup_ids(events, self.config.warmup_requests)
        step_events = [e for e in events if e.id in self.step_ids and e.id not in self.warmup_ids]
        health = health_stats(step_events, self.primary, self.canary)
        decision = evaluate_step(self.state, paired, health, self.config.policy)
        if last:
            decision = end_of_traffic(decision, self.config.policy)
        self.last = decision
        reason = "; ".join(decision.reasons)
        if decision.action != "hold":
            self.steps.append(
                {
                    "step": self.state.step,
                    "percent": self.state.percent,
                    "action": decision.action,
                    "next_percent": decision.percent,
                    "dwell": {
                        "requests": health.served_total,
                        "labelled": len(paired) - self.state.step_started_labelled,
                    },
                    "paired": len(paired),
                    "statistics": decision.statistics.model_dump(mode="json"),
                    "reasons": decision.reasons,
                }
            )
        if decision.action == "advance":
            self.rollout.set_percent(decision.percent, reason=reason)
            self._follow()
            self.step_ids = set()
        elif decision.action == "promote":
            self.rollout.promote(reason=reason)
        elif decision.action in ("rollback", "inconclusive"):
            self.rollout.rollback(reason=reason)
        if decision.action in ("promote", "rollback", "inconclusive"):
            self._follow()
        self.state = decision.state
        return self.state.done

    def _follow(self) -> None:
        """Make the in-process router read the new rollout file before the next request."""
        follower = getattr(self.stack.router, "rollout", None)
        if follower is not None and hasattr(follower, "reload"):
            follower.reload()


def warmup_ids(events, n: int) -> set[str]:
    """The request ids of each version's first `n` answers in log order (what a fresh
    server answers while it loads), to leave out of the health guardrails."""
    from kubeloop.cloudevents import RESPONSE_TYPE

    first: dict[str | None, list[str]] = {}
    for event in events:
        if event.type == RESPONSE_TYPE:
            ids = first.setdefault(event.model_version, [])
            if len(ids) < n:
                ids.append(event.id)
    return {i for ids in first.values() for i in ids}


def run_serving_stage(
    workdir: Workdir,
    model_name: str,
    primary: str,
    canary: str | None,
    impressions,
    config: ServingStageConfig,
    use_case: UseCase | str | None = None,
) -> dict[str, Any]:
    """Serve `primary` (and `canary` in a progressive rollout) for `use_case`, replay
    `impressions` hour by hour, decide with `config.policy` on the labels known as the
    replay's clock moves (delayed labels: `matured`); returns the report's `serving`
    section."""
    from datetime import UTC, datetime

    from kubeloop.features.state_feed import streams_state
    from kubeloop.registry import open_registry
    from kubeloop.serving.local_servers import LocalStack
    from kubeloop.serving.progressive import resolve_label_timing
    from kubeloop.serving.replay import join_feedback, offered_load, replay_through_time
    from kubeloop.serving.request_log.reader import exchanges_frame

    spec = resolve_use_case(use_case)
    config = config.model_copy(
        update={
            "policy": resolve_label_timing(
                config.policy, spec.events.label_delay, replay_span(impressions)
            )
        }
    )
    registry = open_registry(str(workdir.registry))
    started = time.perf_counter()
    started_at = datetime.now(UTC) - timedelta(seconds=1)
    experiment = None
    with LocalStack.start(
        registry, model_name, workdir, primary, canary, 0, server_args=stack_server_args(spec)
    ) as stack:
        url = f"{stack.url}/v1/models/{model_name}:predict"
        if canary is not None:
            experiment = _Experiment(
                stack, stack.rollout, primary, canary, impressions, config, started_at, spec
            )
        sent = replay_through_time(
            url,
            impressions,
            config.replay,
            workdir.feature_repo,
            id_prefix=config.request_id_prefix,
            use_case=spec,
            on_hour=experiment.after_hour if experiment is not None else None,
        )
        shadow = {}
        if experiment is not None:
            experiment.await_labels()
            if not experiment.state.done:  # the traffic and labels ran out: one last look
                experiment.check(sent, last=True)
            shadow = stack.router.shadow.status() if stack.router.shadow is not None else {}
        stack.request_logger.flush()
        exchanges = exchanges_frame(stack.request_log_path, since=started_at)
    exchanges = exchanges[exchanges["request_id"].str.startswith(config.request_id_prefix)]
    served = exchanges[exchanges["variant"] != "shadow"]
    frame = join_feedback(sent, served, impressions, use_case=spec)
    per_request = frame.drop_duplicates("request_id")
    latencies = per_request.loc[~per_request["error"], "latency_ms"]
    counts = per_request["variant"].value_counts().to_dict()
    section: dict[str, Any] = {
        "primary_version": primary,
        "canary_version": canary,
        "requests": {
            "primary": int(counts.get("primary", 0)),
            "canary": int(counts.get("canary", 0)),
            "errors": int(per_request["error"].sum()),
        },
        "impressions": {k: int(v) for k, v in frame["variant"].value_counts().items()},
        "batch_size": config.replay.batch_size,
        # client-side, end to end, per request; read at `offered_load` ("p99 at load X")
        "latency_ms": {
            "p50": float(latencies.quantile(0.5)) if len(latencies) else None,
            "p99": float(latencies.quantile(0.99)) if len(latencies) else None,
        },
        "offered_load": offered_load(sent, config.replay),
        "request_time_state": "per request" if streams_state(spec) else "hourly",
    }
    if experiment is None or experiment.last is None:
        reasons = ["no canary"] if canary is None else ["no check was made"]
        section["decision"] = {"action": "none", "reasons": reasons}
    else:
        section.update(_experiment_summary(experiment, shadow, config))
    section["stages_after"] = {v.version: v.stage.value for v in registry.list(model_name)}
    section["request_log"] = str(stack.request_log_path)
    section["seconds"] = round(time.perf_counter() - started, 3)
    return section


def replay_span(impressions: pd.DataFrame) -> timedelta | None:
    """How long the replayed traffic runs on the replay's clock (first to last impression);
    None without impressions."""
    import pandas as pd

    if not len(impressions):
        return None
    ts = pd.to_datetime(impressions[EVENT_TIMESTAMP], utc=True)
    return (ts.max() - ts.min()).to_pytimedelta()


def _experiment_summary(experiment: _Experiment, shadow: dict, config) -> dict[str, Any]:
    """The report's view of the progressive experiment: shadow counts, steps, SRM, paired
    deltas with their confidence sequence, and the oracle's expected log loss."""
    last = experiment.last
    stats = last.statistics
    return {
        "requires": config.policy.requires,
        "label_timing": config.policy.label_timing,
        "policy": config.policy.model_dump(mode="json"),
        "shadow": {
            "mirrored": shadow.get("mirrored"),
            "failed": shadow.get("failed"),
            "dropped": shadow.get("dropped"),
            "paired": stats.paired,
        },
        "checks": experiment.checks,
        "labels": label_timing(experiment),
        "steps": experiment.steps,
        "srm": stats.srm.model_dump(mode="json") if stats.srm is not None else None,
        "paired": {
            "impressions": stats.paired,
            "delta_logloss": stats.delta_logloss.model_dump(mode="json"),
            "margin_logloss": stats.margin_logloss,
            "relative_delta": stats.relative_delta,
            "production": stats.production.model_dump(mode="json"),
            "candidate": stats.candidate.model_dump(mode="json"),
        },
        "oracle": {
            "expected_logloss": {
                "production": stats.production.expected_logloss,
                "candidate": stats.candidate.expected_logloss,
            },
            "delta": stats.oracle_delta_logloss,
            "relative_gap": (
                stats.oracle_delta_logloss / stats.production.expected_logloss
                if stats.oracle_delta_logloss is not None and stats.production.expected_logloss
                else None
            ),
            "on": "the paired labelled impressions (every served impression both versions scored)",
            **oracle_verdict(last.action, stats, config.policy),
        },
        "decision": {"action": last.action, "percent": last.percent, "reasons": last.reasons},
    }


def label_timing(experiment: _Experiment) -> dict[str, Any]:
    """When the decision's labels were known: the use case's label window, the replay's
    clock at the last check and how many clock steps the experiment waited after its
    traffic (0 when labels come at once)."""
    delay = experiment.use_case.events.label_delay
    return {
        "delay_hours": None if delay is None else delay.total_seconds() / 3600,
        "clock_at_decision": None if experiment.clock is None else experiment.clock.isoformat(),
        "waits_after_traffic": experiment.label_waits,
        "wait_step_hours": experiment.config.label_wait_hours if delay is not None else None,
    }


def oracle_verdict(action: str, statistics, policy: ProgressivePolicy) -> dict[str, Any]:
    """Whether the decision agrees with the oracle at the margin: never promote a candidate
    truly worse than production by more than the margin; a gated candidate (non-inferiority)
    truly better by more than the margin should be promoted, unless the paired labels could
    not decide it: when the confidence sequence's half-width at the decision's sample size
    is wider than the true gap's distance from the margin, even a sequence centred on the
    truth would not have cleared the margin, so "inconclusive" is the test's honest answer
    (agrees None, "undecidable"), not a wrong one."""
    delta, production = statistics.oracle_delta_logloss, statistics.production
    if delta is None or not production.expected_logloss:
        return {"agrees": None, "verdict": "no oracle"}
    gap = delta / production.expected_logloss
    margin = policy.ne_margin
    if gap > margin and action == "promote":
        return {"agrees": False, "verdict": f"promoted a candidate truly worse by {gap:+.2%}"}
    if (
        gap < -margin
        and policy.requires == "non_inferiority"
        and action in ("rollback", "inconclusive")
    ):
        cs = statistics.delta_logloss
        half = (
            (cs.high - cs.estimate) / production.logloss
            if cs.high is not None and cs.estimate is not None and production.logloss
            else None
        )
        if action == "inconclusive" and half is not None and gap + half >= margin:
            return {
                "agrees": None,
                "verdict": (
                    f"undecidable with {cs.n} paired labels: the candidate is truly better by "
                    f"{-gap:.2%}, but the CS half-width is {half:.2%} of production's log loss, "
                    f"so only a true gap below {margin - half:+.2%} could clear the "
                    f"{margin:.2%} margin; inconclusive is the test's honest answer"
                ),
            }
        return {
            "agrees": False,
            "verdict": f"kept production, the candidate truly better by {gap:+.2%}",
        }
    return {
        "agrees": True,
        "verdict": f"{action} with a true gap of {gap:+.2%} (margin {margin:.2%})",
    }
