"""The registry's records and rules: the version record, the stage rules and version
references, shared by every backend and by the export (which imports nothing else of the
registry, so `base` may import it without a cycle).

A registered version is an opaque directory of model files (whatever the trainer wrote:
`model.txt` for LightGBM, `model.pt` + `model.json` for PyTorch) plus a `ModelVersion`
record and, optionally, a reference sample of training features for drift detection.

Stages and the rules between them (enforced by `plan_stage_change`, shared by every
backend so that they cannot disagree):

    candidate  -> canary, production, archived
    canary     -> production, archived
    production -> archived
    archived   -> canary; production only for a version that has served in production
                  before (a rollback to a known-good model)

`candidate` is only ever the stage a version is registered in. At most one version of a
name is in production and at most one in canary: moving a version into either slot
archives the version that held it. Versions whose gate did not pass cannot become canary
or production unless forced; `force` also skips the transition table, never the
one-production/one-canary invariant.
"""

from __future__ import annotations

import functools
import re
import subprocess
from collections.abc import Mapping
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from kubeloop.errors import KubeloopError


class RegistryError(KubeloopError):
    """A registry operation cannot be done: unknown name or version, illegal stage
    transition, invalid model directory, or an export destination that is in the way."""


class Stage(StrEnum):
    """Lifecycle stage of a registered version."""

    CANDIDATE = "candidate"
    CANARY = "canary"
    PRODUCTION = "production"
    ARCHIVED = "archived"


ALLOWED_TRANSITIONS: dict[Stage, frozenset[Stage]] = {
    Stage.CANDIDATE: frozenset({Stage.CANARY, Stage.PRODUCTION, Stage.ARCHIVED}),
    Stage.CANARY: frozenset({Stage.PRODUCTION, Stage.ARCHIVED}),
    Stage.PRODUCTION: frozenset({Stage.ARCHIVED}),
    # archived -> production is further limited to versions that served before.
    Stage.ARCHIVED: frozenset({Stage.CANARY, Stage.PRODUCTION}),
}

# Stages that hold at most one version per name.
SINGLE_SLOT_STAGES = (Stage.PRODUCTION, Stage.CANARY)

# Version references that name a role rather than a version.
VERSION_ALIASES = ("latest", "production", "canary")


def default_model_file(kind: str) -> str | None:
    """The main file of a `kind` model directory (its spec's `weights_file`), used when a
    registration does not name one; None for a kind nobody registered."""
    from kubeloop.training.model_kind import is_known, model_kind

    return model_kind(kind).weights_file if is_known(kind) else None


# BentoML tag rules, narrowed to lowercase: KServe and file systems both cope with these.
_NAME_RE = re.compile(r"^[a-z0-9](?:[a-z0-9._-]{0,61}[a-z0-9])?$")
_KIND_RE = re.compile(r"^[a-z][a-z0-9_-]*$")

# Files a version adds beside the model files when exported, so a model directory may
# not use these names at its top level.
RESERVED_FILES = ("metadata.json", "reference.parquet")


def _utc(value: datetime) -> datetime:
    # Naive timestamps in this project are UTC (see kubeloop.schema.TIMESTAMP).
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value


def validate_name(name: str) -> str:
    """Return `name` if it can name a model in every backend, else raise RegistryError."""
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise RegistryError(
            f"invalid model name {name!r}: use 1-63 lowercase letters, digits, '-', '_' or '.',"
            " starting and ending with a letter or digit"
        )
    return name


class GateDecision(BaseModel):
    """Outcome of the evaluation gate: whether the model may be served, and why (not).

    Accepts the evaluation gate's own decision object (or its dict) as is: fields other
    than `passed` and `reasons` (e.g. the NE figures it compared) are kept in `details`.
    """

    model_config = ConfigDict(extra="forbid")

    passed: bool
    reasons: list[str] = Field(default_factory=list)
    details: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _fold_details(cls, value: Any) -> Any:
        if isinstance(value, BaseModel) and not isinstance(value, GateDecision):
            value = value.model_dump(mode="json")
        if isinstance(value, Mapping):
            known = {"passed", "reasons", "details"}
            extra = {k: v for k, v in value.items() if k not in known}
            if extra:
                value = {k: v for k, v in value.items() if k in known}
                value["details"] = {**value.get("details", {}), **extra}
        return value


class TrainingWindow(BaseModel):
    """Half-open interval [start, end) of event time the training set was drawn from."""

    model_config = ConfigDict(extra="forbid")

    start: datetime
    end: datetime

    @field_validator("start", "end")
    @classmethod
    def _as_utc(cls, value: datetime) -> datetime:
        return _utc(value)

    @model_validator(mode="after")
    def _ordered(self) -> TrainingWindow:
        if self.end <= self.start:
            raise ValueError(f"training window end {self.end} is not after start {self.start}")
        return self


def _check_kind(value: str) -> str:
    if not _KIND_RE.match(value):
        from kubeloop.training.model_kind import kind_names

        raise ValueError(
            f"model_kind {value!r} must be a lowercase identifier such as "
            + " or ".join(repr(k) for k in kind_names())
        )
    return value


def _plain_floats(value: Any) -> Any:
    # Metrics usually come straight from numpy/sklearn (np.float32 is not a float); None
    # stands for undefined (e.g. AUC on a single-class holdout).
    if not isinstance(value, Mapping):
        return value
    out: dict[str, float | None] = {}
    for key, number in value.items():
        if number is None:
            out[str(key)] = None
            continue
        try:
            out[str(key)] = float(number)
        except (TypeError, ValueError):
            raise ValueError(
                f"metric {key!r} is {type(number).__name__}, not a number; metrics hold"
                " scalars only (put structured results in params)"
            ) from None
    return out


def _check_features(value: list[str]) -> list[str]:
    if not value:
        raise ValueError("features must list at least one feature")
    if len(set(value)) != len(value):
        raise ValueError("features contains duplicates")
    return value


class RegistrationRequest(BaseModel):
    """Everything a caller states about a model when registering it.

    `metrics` are numbers (or None where undefined) keyed by name; the CLI shows `auc`
    and `ne`/`normalized_entropy` when present. `gate` is the evaluation gate's decision. `features` are the model's
    input columns, served by Feast feature service `feature_service`. `code_version`
    defaults to the git commit of the kubeloop checkout (suffixed `+dirty` when tracked
    files are modified) or, outside a checkout, to `kubeloop==<package version>`; pass it
    explicitly from a container (e.g. the image tag). `model_file` names the main file in
    the model directory; when omitted it is the kind's usual file (its spec's
    `weights_file`: model.txt, model.pt, logistic.json) if present, else the only top-level file, if there is one. `params` holds training parameters.
    """

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    model_kind: str
    metrics: dict[str, float | None] = Field(default_factory=dict)
    gate: GateDecision
    feature_service: str
    features: list[str]
    training_window: TrainingWindow
    data_scenario: str
    code_version: str | None = None
    pipeline_run_id: str | None = None
    params: dict[str, Any] = Field(default_factory=dict)
    model_file: str | None = None

    _kind = field_validator("model_kind")(_check_kind)
    _metrics = field_validator("metrics", mode="before")(_plain_floats)
    _features = field_validator("features")(_check_features)


class ModelVersion(RegistrationRequest):
    """One registered version: the registration request plus what the registry assigned.

    `version` is `v0001`, `v0002`, ... per name, increasing with registration order, so
    sorting by `version_number` sorts by creation. `stage` is the stage when the record was
    read. `files` lists the model directory's files (relative paths); `reference_rows` is
    the size of the stored reference sample (0 when none was given). `code_version` is
    always set here (the request's, or the detected one).
    """

    name: str
    version: str
    stage: Stage
    created_at: datetime
    code_version: str
    files: list[str]
    reference_rows: int = 0

    @field_validator("created_at")
    @classmethod
    def _created_utc(cls, value: datetime) -> datetime:
        return _utc(value)

    @property
    def ref(self) -> str:
        """`name:version`, the BentoML-style tag of this version."""
        return f"{self.name}:{self.version}"

    @property
    def version_number(self) -> int:
        """The integer in the version string, for ordering."""
        return version_number(self.version)


class StageChange(BaseModel):
    """One entry of a name's stage history."""

    model_config = ConfigDict(extra="forbid")

    version: str
    from_stage: Stage | None
    to_stage: Stage
    at: datetime
    reason: str


def format_version(number: int) -> str:
    """The version string of the `number`-th registration of a name."""
    return f"v{number:04d}"


def version_number(version: str) -> int:
    """Inverse of `format_version`; raises RegistryError for anything else."""
    if not re.fullmatch(r"v\d{4,}", version or ""):
        raise RegistryError(f"invalid version {version!r}: expected v0001, v0002, ...")
    return int(version[1:])


def plan_stage_change(
    name: str,
    stages: Mapping[str, Stage],
    version: str,
    target: Stage,
    *,
    gate_passed: bool,
    served_before: bool,
    force: bool = False,
) -> dict[str, Stage]:
    """Return the stage of every version of `name` after moving `version` to `target`.

    `stages` maps each version to its current stage. The result differs from it in
    `version` and, when `target` is production or canary, in the version that held that
    slot (now archived). Backends apply the whole result in one atomic write, so no reader
    sees two production versions or a moment without the old one between the two changes.
    Raises RegistryError for an unknown version or a transition the module docstring
    forbids. Moving a version to the stage it is in returns `stages` unchanged, so retried
    pipeline steps are harmless.
    """
    if version not in stages:
        raise RegistryError(f"model {name!r} has no version {version!r}")
    current = Stage(stages[version])
    target = Stage(target)
    new = {v: Stage(s) for v, s in stages.items()}
    if current == target:
        return new
    if not force:
        if target not in ALLOWED_TRANSITIONS[current]:
            allowed = ", ".join(sorted(ALLOWED_TRANSITIONS[current])) or "nothing"
            raise RegistryError(
                f"{name}:{version} cannot go from {current} to {target}"
                f" (a {current} version can go to: {allowed}); use force to override"
            )
        if current == Stage.ARCHIVED and target == Stage.PRODUCTION and not served_before:
            raise RegistryError(
                f"{name}:{version} was never in production, so it cannot return to it"
                " directly: promote it to canary first, or use force"
            )
        if target in SINGLE_SLOT_STAGES and not gate_passed:
            raise RegistryError(
                f"{name}:{version} did not pass its evaluation gate, so it cannot become"
                f" {target}; use force to override"
            )
    if target in SINGLE_SLOT_STAGES:
        for other, stage in new.items():
            if other != version and stage == target:
                new[other] = Stage.ARCHIVED
    new[version] = target
    return new


@functools.lru_cache(maxsize=1)
def detect_code_version() -> str:
    """Git commit of the kubeloop checkout this code runs from, else the package version.

    Only a checkout counts: an installed copy under site-packages may sit inside some
    other repository (a virtualenv in a project), whose commit says nothing about kubeloop.
    """
    package_dir = Path(__file__).resolve().parents[1]
    if "site-packages" not in package_dir.parts:
        try:
            commit = subprocess.run(
                ["git", "-C", str(package_dir), "rev-parse", "HEAD"],
                capture_output=True,
                text=True,
                timeout=5,
                check=True,
            ).stdout.strip()
            dirty = subprocess.run(
                ["git", "-C", str(package_dir), "status", "--porcelain", "--untracked-files=no"],
                capture_output=True,
                text=True,
                timeout=5,
                check=True,
            ).stdout.strip()
            if commit:
                return f"{commit}+dirty" if dirty else commit
        except (OSError, subprocess.SubprocessError):
            pass
    try:
        from importlib.metadata import version

        return f"kubeloop=={version('kubeloop')}"
    except Exception:  # noqa: BLE001 - metadata may be missing in a bare source tree
        return "unknown"


def resolve_ref(name: str, stages: Mapping[str, Stage], ref: str | None) -> str:
    """The version that `ref` names among the versions of `name` (`stages` maps each
    version to its stage).

    `ref` is a version string (`v0003`, or short: `3`, `v3`), None or "latest" (the
    newest registration), or "production"/"canary" (the version in that stage). Raises
    RegistryError when there is no such version.
    """
    if not stages:
        raise RegistryError(f"no model named {name!r} is registered")
    if ref is None or ref == "latest":
        return max(stages, key=version_number)
    if ref in (Stage.PRODUCTION, Stage.CANARY):
        for version, stage in stages.items():
            if stage == ref:
                return version
        raise RegistryError(f"model {name!r} has no {ref} version")
    if ref in stages:
        return ref
    if re.fullmatch(r"v?\d+", ref) and format_version(int(ref.lstrip("v"))) in stages:
        return format_version(int(ref.lstrip("v")))  # "3" and "v3" mean v0003
    known = ", ".join(sorted(stages, key=version_number))
    raise RegistryError(f"model {name!r} has no version {ref!r} (known: {known})")
