"""The local rollout state: which version is primary, which is canary and what share of
the traffic the canary gets, with KServe's `canaryTrafficPercent` semantics.

KServe (Knative mode) splits a component's traffic between the last revision rolled out
at 100% (here: the *primary*) and the newest revision (the *canary*), giving the canary
`canaryTrafficPercent` percent:

    set_canary(state, "v0003", 10)   new revision, 10% to it, 90% to the primary
    set_percent(state, 0)            pinned: the canary stays deployed, gets no traffic
    promote(state)                   canaryTrafficPercent removed: the canary becomes the
                                     primary with 100%, the old primary is retired
    rollback(state)                  the canary is removed, 100% back to the primary

The four transitions are pure functions of `RolloutState`. `LocalRollout` applies them to
the state persisted in `<workdir>/serving/rollout.json` (atomic rename, serialised by a
lock file) and keeps the registry's stages in step:

    canary version          -> stage canary      (the canary it displaces -> archived)
    promote                 -> canary version production, old production archived
    rollback                -> canary version archived
    primary (first save)    -> stage production

The registry is changed before the state file is written, so a refused stage change (a
version that failed its gate, say) leaves the rollout as it was. The router
(`kubeloop.serving.router`) re-reads the file when it changes, so a running `kubeloop
serve` follows `kubeloop canary ...` without a restart.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from kubeloop.atomic import atomic_write_text, read_model
from kubeloop.errors import KubeloopError
from kubeloop.usecase import DEFAULT_MODEL_NAME
from kubeloop.workdir import Workdir

if TYPE_CHECKING:
    from kubeloop.registry.base import ModelRegistry

ROLLOUT_FILE = "rollout.json"

# How many decisions the state keeps; older ones are dropped on save.
MAX_HISTORY = 200

Action = Literal["init", "set_canary", "set_percent", "set_sticky", "promote", "rollback"]


class RolloutError(KubeloopError):
    """A rollout change that cannot be made (no canary to promote, a percent out of range,
    a canary equal to the primary), or a rollout file that cannot be read."""


def serving_dir(workdir: Workdir | str | Path) -> Path:
    """`<workdir>/serving`: the rollout state, exported models and process logs."""
    root = workdir.root if isinstance(workdir, Workdir) else Workdir.at(workdir).root
    return root / "serving"


def rollout_path(workdir: Workdir | str | Path) -> Path:
    """Where the rollout state of a workdir is kept: `<workdir>/serving/rollout.json`."""
    return serving_dir(workdir) / ROLLOUT_FILE


def _now() -> datetime:
    return datetime.now(UTC)


class RolloutDecision(BaseModel):
    """One change of the rollout, with the state it left and why it was made."""

    model_config = ConfigDict(extra="forbid")

    at: datetime
    action: Action
    primary_version: str
    canary_version: str | None
    canary_percent: int
    reason: str = ""


class RolloutState(BaseModel):
    """The traffic split of one model.

    `canary_percent` is KServe's canaryTrafficPercent: the share (0..100) of requests sent
    to `canary_version`; the rest go to `primary_version`. Without a canary it is 0.
    `sticky` routes by a hash of the request id instead of at random, so a request id
    always reaches the same variant. `history` lists the decisions, oldest first.
    """

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    model_name: str
    primary_version: str
    canary_version: str | None = None
    canary_percent: int = Field(default=0, ge=0, le=100)
    sticky: bool = False
    updated_at: datetime = Field(default_factory=_now)
    history: list[RolloutDecision] = Field(default_factory=list)

    @field_validator("updated_at")
    @classmethod
    def _utc(cls, value: datetime) -> datetime:
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value

    @model_validator(mode="after")
    def _consistent(self) -> RolloutState:
        if self.canary_version is None and self.canary_percent:
            raise ValueError(
                f"canary_percent is {self.canary_percent} but there is no canary version"
            )
        if self.canary_version is not None and self.canary_version == self.primary_version:
            raise ValueError(f"{self.canary_version} cannot be both primary and canary")
        return self

    @property
    def split(self) -> dict[str, int]:
        """Percent of traffic per variant: {"primary": 90, "canary": 10}."""
        return {"primary": 100 - self.canary_percent, "canary": self.canary_percent}

    def version_of(self, variant: str) -> str | None:
        """The version serving `variant` ("primary" or "canary")."""
        if variant == "primary":
            return self.primary_version
        if variant == "canary":
            return self.canary_version
        raise ValueError(f"unknown variant {variant!r}: expected 'primary' or 'canary'")


def _check_percent(percent: int) -> int:
    if isinstance(percent, bool) or not isinstance(percent, int):
        try:
            as_int = int(percent)
        except (TypeError, ValueError):
            raise RolloutError(f"canary percent must be an integer, not {percent!r}") from None
        if as_int != percent:
            raise RolloutError(f"canary percent must be a whole number, not {percent!r}")
        percent = as_int
    if not 0 <= percent <= 100:
        raise RolloutError(f"canary percent must be between 0 and 100, not {percent}")
    return percent


def _decide(
    state: RolloutState,
    action: Action,
    reason: str | None,
    now: datetime | None,
    **changes: object,
) -> RolloutState:
    at = now or _now()
    data = {**state.model_dump(exclude={"history", "updated_at"}), **changes}
    decision = RolloutDecision(
        at=at,
        action=action,
        primary_version=str(data["primary_version"]),
        canary_version=data["canary_version"],  # type: ignore[arg-type]
        canary_percent=int(data["canary_percent"]),  # type: ignore[arg-type]
        reason=reason or "",
    )
    try:
        return RolloutState.model_validate(
            {**data, "updated_at": at, "history": [*state.history, decision][-MAX_HISTORY:]}
        )
    except ValueError as exc:
        raise RolloutError(str(exc)) from None


def initial_state(
    model_name: str,
    primary_version: str,
    canary_version: str | None = None,
    canary_percent: int = 0,
    *,
    sticky: bool = False,
    reason: str | None = None,
    now: datetime | None = None,
) -> RolloutState:
    """A new state: `primary_version` serving, optionally with a canary at `canary_percent`."""
    percent = _check_percent(canary_percent) if canary_version else 0
    if canary_version is None and canary_percent:
        raise RolloutError(f"canary percent {canary_percent} given without a canary version")
    at = now or _now()
    base = RolloutState(model_name=model_name, primary_version=primary_version, updated_at=at)
    return _decide(
        base,
        "init",
        reason or "rollout started",
        at,
        canary_version=canary_version,
        canary_percent=percent,
        sticky=sticky,
    )


def set_canary(
    state: RolloutState,
    version: str,
    percent: int,
    *,
    reason: str | None = None,
    now: datetime | None = None,
) -> RolloutState:
    """Deploy `version` as the canary with `percent` of the traffic (a new revision with
    canaryTrafficPercent). A canary already there is replaced."""
    percent = _check_percent(percent)
    if version == state.primary_version:
        raise RolloutError(f"{version} is the primary version already; it cannot be the canary")
    replaced = state.canary_version if state.canary_version not in (None, version) else None
    default = f"canary {version} at {percent}%" + (f", replacing {replaced}" if replaced else "")
    return _decide(
        state,
        "set_canary",
        reason or default,
        now,
        canary_version=version,
        canary_percent=percent,
    )


def set_percent(
    state: RolloutState,
    percent: int,
    *,
    reason: str | None = None,
    now: datetime | None = None,
) -> RolloutState:
    """Change the canary's share of the traffic. 0 pins all traffic to the primary while
    the canary stays deployed (KServe's pinned canary)."""
    percent = _check_percent(percent)
    if state.canary_version is None:
        if percent == 0:
            return state
        raise RolloutError(
            f"{state.model_name} has no canary to send {percent}% to: set one with a version"
        )
    default = f"canary {state.canary_version} at {percent}%" + (" (pinned)" if not percent else "")
    return _decide(state, "set_percent", reason or default, now, canary_percent=percent)


def set_sticky(
    state: RolloutState, sticky: bool, *, reason: str | None = None, now: datetime | None = None
) -> RolloutState:
    """Route by request id (sticky) or at random."""
    default = "sticky routing by request id" if sticky else "random routing"
    return _decide(state, "set_sticky", reason or default, now, sticky=bool(sticky))


def promote(
    state: RolloutState, *, reason: str | None = None, now: datetime | None = None
) -> RolloutState:
    """Make the canary the primary with 100% of the traffic and remove the canary (removing
    canaryTrafficPercent in KServe). The old primary is retired."""
    if state.canary_version is None:
        raise RolloutError(f"{state.model_name} has no canary to promote")
    default = f"promoted {state.canary_version}, replacing {state.primary_version}"
    return _decide(
        state,
        "promote",
        reason or default,
        now,
        primary_version=state.canary_version,
        canary_version=None,
        canary_percent=0,
    )


def rollback(
    state: RolloutState, *, reason: str | None = None, now: datetime | None = None
) -> RolloutState:
    """Remove the canary; all traffic goes back to the primary."""
    if state.canary_version is None:
        raise RolloutError(f"{state.model_name} has no canary to roll back")
    default = f"rolled back canary {state.canary_version}; {state.primary_version} serves all"
    return _decide(state, "rollback", reason or default, now, canary_version=None, canary_percent=0)


# --- persistence --------------------------------------------------------------------------


def load_state(path: str | Path) -> RolloutState | None:
    """The state stored at `path`, or None when there is none."""
    return read_model(
        path,
        RolloutState,
        lambda p, why: RolloutError(f"rollout file {p} is not a valid rollout state: {why}"),
    )


def save_state(state: RolloutState, path: str | Path) -> Path:
    """Write `state` to `path` atomically (temporary sibling + rename)."""
    return atomic_write_text(path, state.model_dump_json(indent=2) + "\n")


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


# --- registry sync ------------------------------------------------------------------------


def sync_registry(
    registry: ModelRegistry,
    state: RolloutState,
    previous: RolloutState | None = None,
    *,
    force: bool = False,
) -> list[str]:
    """Bring the registry's stages in line with `state`: the primary in production, the
    canary (if any) in canary, and versions that `previous` served but `state` does not
    archived. Returns a line per stage changed. Raises RegistryError when a change is
    refused (e.g. a version that did not pass its gate, unless `force`)."""
    from kubeloop.registry.records import Stage

    name = state.model_name
    stages = {v.version: v.stage for v in registry.list(name)}
    changes: list[str] = []

    def move(version: str, stage: Stage) -> None:
        current = stages.get(version)
        if current == stage:
            return
        registry.set_stage(name, version, stage, force=force)
        changes.append(f"{name}:{version} {current} -> {stage}")
        stages.update({v.version: v.stage for v in registry.list(name)})

    # Promotion first: moving the canary to production archives the old production.
    move(state.primary_version, Stage.PRODUCTION)
    if state.canary_version is not None:
        move(state.canary_version, Stage.CANARY)
    if previous is not None:
        serving = {state.primary_version, state.canary_version}
        for old in (previous.primary_version, previous.canary_version):
            if (
                old is not None
                and old not in serving
                and stages.get(old)
                in (
                    Stage.PRODUCTION,
                    Stage.CANARY,
                )
            ):
                move(old, Stage.ARCHIVED)
    return changes


# --- the local rollout --------------------------------------------------------------------


class LocalRollout:
    """The rollout of one model in a workdir: load, change, sync the registry, save.

    Every change takes an exclusive lock on `rollout.json.lock`, so two `kubeloop canary`
    commands (or a command and the router's admin endpoint) cannot lose each other's
    update. `registry` may be None to change the state alone (tests, or a workdir without
    a registry).
    """

    def __init__(
        self,
        workdir: Workdir | str | Path,
        model_name: str = DEFAULT_MODEL_NAME,
        registry: ModelRegistry | None = None,
        *,
        path: str | Path | None = None,
        force: bool = False,
    ):
        self.workdir = workdir if isinstance(workdir, Workdir) else Workdir.at(workdir)
        self.model_name = model_name
        self.registry = registry
        self.path = Path(path) if path is not None else rollout_path(self.workdir)
        self.force = force

    def state(self) -> RolloutState:
        """The current state; RolloutError when the workdir has none for this model."""
        state = load_state(self.path)
        if state is None:
            raise RolloutError(
                f"no rollout in {self.path}: start one with `kubeloop serve --workdir"
                f" {self.workdir.root}`"
            )
        if state.model_name != self.model_name:
            raise RolloutError(
                f"{self.path} holds the rollout of {state.model_name!r}, not {self.model_name!r}"
            )
        return state

    def exists(self) -> bool:
        return self.path.exists()

    def _commit(self, new: RolloutState, old: RolloutState | None) -> RolloutState:
        if self.registry is not None:
            sync_registry(self.registry, new, old, force=self.force)
        save_state(new, self.path)
        return new

    def init(
        self,
        primary_version: str,
        canary_version: str | None = None,
        canary_percent: int = 0,
        *,
        sticky: bool = False,
        reason: str | None = None,
    ) -> RolloutState:
        """Start (or restart) the rollout with these versions. A state already there keeps
        its history; the registry is synced as for any change."""
        with _locked(self.path):
            old = load_state(self.path)
            if old is not None and old.model_name != self.model_name:
                old = None
            same = (
                old is not None
                and old.primary_version == primary_version
                and old.canary_version == canary_version
                and old.canary_percent == (canary_percent if canary_version else 0)
                and old.sticky == sticky
            )
            if same:
                assert old is not None
                if self.registry is not None:
                    sync_registry(self.registry, old, None, force=self.force)
                return old
            new = initial_state(
                self.model_name,
                primary_version,
                canary_version,
                canary_percent,
                sticky=sticky,
                reason=reason,
            )
            if old is not None:
                new = new.model_copy(update={"history": [*old.history, *new.history]})
            return self._commit(new, old)

    def _apply(self, change, *args, **kwargs) -> RolloutState:
        with _locked(self.path):
            old = self.state()
            new = change(old, *args, **kwargs)
            if new is old:
                return old
            return self._commit(new, old)

    def set_canary(self, version: str, percent: int, *, reason: str | None = None) -> RolloutState:
        return self._apply(set_canary, version, percent, reason=reason)

    def set_percent(self, percent: int, *, reason: str | None = None) -> RolloutState:
        return self._apply(set_percent, percent, reason=reason)

    def set_sticky(self, sticky: bool, *, reason: str | None = None) -> RolloutState:
        return self._apply(set_sticky, sticky, reason=reason)

    def promote(self, *, reason: str | None = None) -> RolloutState:
        return self._apply(promote, reason=reason)

    def rollback(self, *, reason: str | None = None) -> RolloutState:
        return self._apply(rollback, reason=reason)


def state_summary(state: RolloutState, history: int = 5) -> dict[str, object]:
    """A JSON-able view for `kubeloop canary status` and the run report."""
    data = json.loads(state.model_dump_json(exclude={"history"}))
    data["split"] = state.split
    data["history"] = (
        [json.loads(d.model_dump_json()) for d in state.history[-history:]] if history else []
    )
    return data
