"""The canary as one protocol: `CanaryTarget`, with a local and a cluster implementation.

`kubeloop canary status|set|promote|rollback` talks to a `CanaryTarget` and does not know
where the canary runs: `LocalCanary` (here) changes `<workdir>/serving/rollout.json` and the
registry's stages; `kubeloop.cluster.canary.ClusterCanary` patches the InferenceService.
Each verb returns a `CanaryResult`: the text a user reads and the data `--json` prints.

`progress` and `abort` are the progressive rollout's (`kubeloop.serving.rollout_loop`): its
step, statistics and reasons, and "roll back now and end it". Locally its record is
`<workdir>/serving/progressive.json`; in the cluster the controller's ConfigMap.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from pydantic import BaseModel, ConfigDict, Field

if TYPE_CHECKING:
    from kubeloop.serving.rollout import LocalRollout, RolloutState


class CanaryResult(BaseModel):
    """What a canary verb did or found: the text a user reads, the data `--json` prints and
    any warnings (printed to stderr)."""

    model_config = ConfigDict(extra="forbid")

    text: str
    data: dict[str, Any]
    warnings: list[str] = Field(default_factory=list)


class CanaryTarget(Protocol):
    """Where a model's canary runs: a local rollout or an InferenceService."""

    def status(self) -> CanaryResult:
        """The traffic split now."""

    def set(
        self, percent: int, *, version: str | None = None, reason: str | None = None
    ) -> CanaryResult:
        """Send `percent` of the traffic to the canary (`version`: deploy that one first)."""

    def promote(self, *, reason: str | None = None) -> CanaryResult:
        """Make the canary the primary with all of the traffic."""

    def rollback(self, *, version: str | None = None, reason: str | None = None) -> CanaryResult:
        """All traffic back to the primary (`version`: where the target can, revert to it)."""

    def progress(self) -> CanaryResult:
        """The progressive rollout: step, statistics and reasons."""

    def abort(self, *, reason: str | None = None) -> CanaryResult:
        """Roll the progressive rollout back now and end it."""


class LocalCanary:
    """The canary of a workdir's local rollout (`kubeloop serve` follows it)."""

    def __init__(
        self, workdir: Path, model: str, *, registry: bool = True, force: bool = False
    ) -> None:
        from kubeloop.serving.rollout import LocalRollout
        from kubeloop.workdir import Workdir

        wd = Workdir.at(workdir)
        opened = None
        if registry:
            from kubeloop.registry.backends import open_registry

            opened = open_registry(wd.registry)
        self.rollout: LocalRollout = LocalRollout(wd, model, opened, force=force)

    def status(self) -> CanaryResult:
        """The rollout state and whether a local stack is serving it."""
        from kubeloop.serving.local_servers import read_stack_file
        from kubeloop.serving.rollout import state_summary

        state = self.rollout.state()
        stack = read_stack_file(self.rollout.workdir)
        live = _router_status(stack)
        text = _state_text(state, stack)
        shadow = (live or {}).get("shadow")
        if shadow:
            text += (
                f"\nshadow   mirrored {shadow['mirrored']}, failed {shadow['failed']}, "
                f"dropped {shadow['dropped']} (queue {shadow['queued']}/{shadow['queue_size']})"
            )
        data = {"rollout": state_summary(state), "stack": stack}
        if live is not None:
            data["router"] = live
        return CanaryResult(text=text, data=data)

    def set(
        self, percent: int, *, version: str | None = None, reason: str | None = None
    ) -> CanaryResult:
        """A new canary `version` at `percent`, or the current canary's share changed."""
        if version is None:
            return _change(self.rollout.set_percent(percent, reason=reason))
        if self.rollout.registry is not None:
            version = self.rollout.registry.get(self.rollout.model_name, version).version
        return _change(self.rollout.set_canary(version, percent, reason=reason))

    def promote(self, *, reason: str | None = None) -> CanaryResult:
        """The canary becomes the primary (the registry's stages follow)."""
        return _change(self.rollout.promote(reason=reason))

    def rollback(self, *, version: str | None = None, reason: str | None = None) -> CanaryResult:
        """The canary is removed; `version` is not used locally (the primary is kept)."""
        return _change(self.rollout.rollback(reason=reason))

    def loop(self, *, policy: Any = None, sink: Any = None, labels: Any = None) -> Any:
        """The progressive rollout of this workdir (`RolloutLoop`): the record in
        serving/progressive.json, answers and labels from the stack's request log (`sink`,
        `labels`: the local stack's, else opened from serving/requests.sqlite)."""
        from kubeloop.serving.rollout import serving_dir
        from kubeloop.serving.rollout_loop import PROGRESS_FILE, FileStore, RolloutLoop, SinkRecords

        serving = serving_dir(self.rollout.workdir)
        records = None
        if sink is not None or (serving / "requests.sqlite").exists():
            from kubeloop.serving.request_log.feedback import LabelStore
            from kubeloop.serving.request_log.sinks import SQLiteRequestLog

            sink = sink or SQLiteRequestLog(serving / "requests.sqlite")
            labels = labels or LabelStore(serving / "requests.sqlite")
            records = SinkRecords(sink, labels)

        def candidate() -> str | None:
            return self.rollout.state().canary_version if self.rollout.exists() else None

        return RolloutLoop(
            self.rollout.model_name,
            self,
            FileStore(serving / PROGRESS_FILE),
            records,  # type: ignore[arg-type]
            current_candidate=candidate,
            policy=policy,
            current_production=lambda: (
                self.rollout.state().primary_version if self.rollout.exists() else None
            ),
            names_are_versions=True,
            shadow_at_full=True,
        )

    def progress(self) -> CanaryResult:
        """The progressive rollout's record (serving/progressive.json)."""
        from kubeloop.serving.rollout_loop import record_summary, render_record

        record = self.loop().store.load()
        return CanaryResult(text=render_record(record), data=record_summary(record))

    def abort(self, *, reason: str | None = None) -> CanaryResult:
        """Roll back now (the canary is removed) and end the progressive rollout."""
        from kubeloop.serving.rollout_loop import record_summary

        record = self.loop().abort(reason or "aborted with `kubeloop canary abort`")
        return CanaryResult(
            text=f"{record.model}: rollout of {record.candidate} aborted; "
            f"{self.rollout.state().primary_version} serves all",
            data=record_summary(record),
        )


def _router_status(stack: dict[str, Any] | None) -> dict[str, Any] | None:
    """The running router's counters (requests, shadow mirror, feedback), None when no
    stack answers."""
    url = (stack or {}).get("router_url")
    if not url:
        return None
    import httpx

    try:
        response = httpx.get(f"{url}/kubeloop/rollout", timeout=2.0)
        return response.json() if response.status_code == 200 else None
    except (httpx.HTTPError, ValueError):
        return None


def _change(state: RolloutState) -> CanaryResult:
    from kubeloop.serving.rollout import state_summary

    split = state.split
    canary = f", canary {state.canary_version} {split['canary']}%" if state.canary_version else ""
    text = f"{state.model_name}: primary {state.primary_version} {split['primary']}%{canary}"
    return CanaryResult(text=text, data={"rollout": state_summary(state)})


def _state_text(state: RolloutState, stack: dict[str, Any] | None) -> str:
    split = state.split
    lines = [
        f"model    {state.model_name}",
        f"primary  {state.primary_version}  {split['primary']}%",
    ]
    if state.canary_version:
        pinned = "  (pinned)" if not state.canary_percent else ""
        lines.append(f"canary   {state.canary_version}  {split['canary']}%{pinned}")
    else:
        lines.append("canary   -")
    lines.append(f"routing  {'sticky by request id' if state.sticky else 'random'}")
    lines.append(f"updated  {state.updated_at.isoformat()}")
    if stack:
        lines.append(f"serving  {stack.get('url')} (router {stack.get('router_url')})")
    else:
        lines.append("serving  not running (start it with `kubeloop serve`)")
    lines += [
        f"  {d.at.isoformat(timespec='seconds')} {d.action}: {d.reason}" for d in state.history[-5:]
    ]
    return "\n".join(lines)


def result_json(result: CanaryResult) -> str:
    """The JSON `--json` prints for a result."""
    return json.dumps(result.data, indent=2, default=str)
