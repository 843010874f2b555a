"""The canary as one protocol: `CanaryTarget`, with a local and a cluster implementation.

`kubeloop canary status|set|promote|rollback` talks to a `CanaryTarget` and does not know
where the canary runs: `LocalCanary` (here) changes `<workdir>/serving/rollout.json` and the
registry's stages; `kubeloop.cluster.canary.ClusterCanary` patches the InferenceService.
Each verb returns a `CanaryResult`: the text a user reads and the data `--json` prints.
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
        return CanaryResult(
            text=_state_text(state, stack), data={"rollout": state_summary(state), "stack": stack}
        )

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
