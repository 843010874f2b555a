"""The default registry backend: a BentoML model store on a local directory.

Layout under the registry root:

    models/<name>/<version>/kubeloop.json       the ModelVersion record (minus stage)
    models/<name>/<version>/model.yaml          BentoML's record; metadata["kubeloop"]
                                                 repeats kubeloop.json for `bentoml models
                                                 get`, minus None values (BentoML's metadata
                                                 rejects None), so kubeloop reads the JSON
    models/<name>/<version>/model/...           the model files, as the trainer wrote them
    models/<name>/<version>/reference.parquet   reference sample for drift detection
    models/<name>/latest                        BentoML's pointer (kept in step)
    stages/<name>.json                          committed versions, their stages, history
    .lock                                       serialises writers (flock)

`models/` has the layout of `$BENTOML_HOME/models`, so `BENTOML_HOME=<root> bentoml
models list` shows the same versions. kubeloop never reads or sets BENTOML_HOME: the
store object is built for the registry's own path.

Atomicity. `stages/<name>.json` is the single source of truth for which versions exist
and what stage each is in, and it only ever changes by `os.replace` of a complete,
fsynced file. Registration builds the version in a BentoML staging directory (outside
the store), copies it into the store, and only then commits it by rewriting the stages
file. A failure before the commit removes the copied directory; an interruption that
prevents even that (a killed process) leaves a directory no stages file mentions, which
readers never look at; a killed write of the stages file leaves a temporary
`stages/.<name>.json.*.tmp`. Opening the registry removes both when no writer holds the
lock (see `BentoMLRegistry.clean_stale`), and so does the next registration. A stage
change, including the archiving of the version it displaces, is one rewrite of the same
file, so there is never a moment with two production versions or none between "archive
old" and "promote new".
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field

from kubeloop.atomic import atomic_write_text, read_model
from kubeloop.registry.backends import BentoMLRegistryConfig
from kubeloop.registry.base import ModelRegistry
from kubeloop.registry.records import (
    RESERVED_FILES,
    ModelVersion,
    RegistrationRequest,
    RegistryError,
    Stage,
    StageChange,
    default_model_file,
    detect_code_version,
    format_version,
    plan_stage_change,
    resolve_ref,
    validate_name,
    version_number,
)

if TYPE_CHECKING:
    import pandas as pd

MODEL_SUBDIR = "model"
REFERENCE_FILE = "reference.parquet"
RECORD_FILE = "kubeloop.json"
METADATA_KEY = "kubeloop"


class _NameState(BaseModel):
    """Contents of stages/<name>.json."""

    model_config = ConfigDict(extra="forbid")

    name: str
    stages: dict[str, Stage] = Field(default_factory=dict)
    history: list[StageChange] = Field(default_factory=list)


def _now() -> datetime:
    return datetime.now(UTC)


def _atomic_write_text(path: Path, text: str) -> None:
    """Replace `path` with `text`: readers see the old or the new file, and a crash never
    loses both (kubeloop.atomic fsyncs the file before the rename, the directory after)."""
    atomic_write_text(path, text)


def _without_none(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_without_none(v) for v in value if v is not None]
    return value


def _model_files(model_dir: Path) -> list[str]:
    if not model_dir.is_dir():
        raise RegistryError(f"model directory {model_dir} does not exist or is not a directory")
    files = sorted(p.relative_to(model_dir).as_posix() for p in model_dir.rglob("*") if p.is_file())
    if not files:
        raise RegistryError(f"model directory {model_dir} holds no files")
    clash = sorted(set(RESERVED_FILES) & set(files))
    if clash:
        raise RegistryError(
            f"model directory {model_dir} has {', '.join(clash)} at its top level; these names"
            " are reserved for the export's metadata and reference sample"
        )
    return files


def _main_file(declared: str | None, kind: str, files: list[str], model_dir: Path) -> str | None:
    if declared is not None:
        if declared not in files:
            raise RegistryError(
                f"model_file {declared!r} is not in {model_dir} (files: {', '.join(files)})"
            )
        return declared
    usual = default_model_file(kind)
    if usual is not None and usual in files:
        return usual
    top_level = [f for f in files if "/" not in f]
    return top_level[0] if len(top_level) == 1 else None


@contextmanager
def _staged_model(
    store: Any,
    name: str,
    version: str,
    *,
    kind: str,
    labels: dict[str, str],
    metadata: dict[str, Any],
) -> Iterator[Path]:
    """Yield an empty staging directory for a new BentoML model; on clean exit write its
    model.yaml and copy it into `store`, on any exception leave the store untouched.

    This is what `bentoml.models.create` does, minus two side effects unwelcome inside a
    pipeline step: it posts a usage event to BentoML (an HTTP call per registration) and
    creates ~/bentoml through BentoML's global configuration. The staging directory is
    removed here right away rather than when BentoML's finalizer runs.
    """
    from bentoml._internal.models.model import Model, ModelContext
    from bentoml._internal.tag import Tag

    model = Model.create(
        Tag(name, version),
        module="",
        api_version="v1",
        signatures={},
        labels=labels,
        metadata=metadata,
        context=ModelContext(framework_name=kind, framework_versions={}),
    )
    staging = Path(model.path)
    try:
        # The store copies the staging directory's mode (mkdtemp's 0700) onto the version.
        os.chmod(staging, 0o755)
        yield staging
        model.flush()
        model.save(store)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


class BentoMLRegistry(ModelRegistry):
    """Model registry on a BentoML model store rooted at `config.path`.

    See the module docstring for the layout and how registration and stage changes stay
    atomic. Writers on one machine (or on a shared file system with working flock)
    are serialised by a lock file; readers take no lock.
    """

    def __init__(self, config: BentoMLRegistryConfig):
        self.config = config
        self.root = Path(config.path).expanduser().absolute()
        self.clean_stale()

    @classmethod
    def at(cls, path: str | Path) -> BentoMLRegistry:
        """The registry rooted at `path` (created on first registration)."""
        return cls(BentoMLRegistryConfig(path=Path(path)))

    def __repr__(self) -> str:
        return f"BentoMLRegistry({str(self.root)!r})"

    @property
    def models_dir(self) -> Path:
        """The BentoML model store directory."""
        return self.root / "models"

    @property
    def stages_dir(self) -> Path:
        return self.root / "stages"

    def _store(self) -> Any:
        from bentoml._internal.models.model import ModelStore

        return ModelStore(self.models_dir)

    # debris of killed writers

    def _debris(self) -> list[Path]:
        """Temporary files of `_atomic_write_text` (stages/.*.tmp, models/<name>/.*.tmp)."""
        found = list(self.stages_dir.glob(".*.tmp")) if self.stages_dir.is_dir() else []
        if self.models_dir.is_dir():
            found += [p for d in self.models_dir.iterdir() if d.is_dir() for p in d.glob(".*.tmp")]
        return found

    def _stored_names(self) -> list[str]:
        """Names with a stages file or a directory in the store (a first registration
        that was killed has only the latter)."""
        stored = set(self._names())
        if self.models_dir.is_dir():
            stored |= {p.name for p in self.models_dir.iterdir() if p.is_dir()}
        return sorted(stored)

    def _committed_or_none(self, name: str) -> Mapping[str, Stage] | None:
        try:
            return (self._read_state(name) or _NameState(name=name)).stages
        except RegistryError:
            return None  # a corrupt stages file is reported by whoever reads it

    def _has_orphans(self) -> bool:
        for name in self._stored_names():
            committed = self._committed_or_none(name)
            name_dir = self.models_dir / name
            if committed is None or not name_dir.is_dir():
                continue
            if any(p.is_dir() and p.name not in committed for p in name_dir.iterdir()):
                return True
        return False

    def clean_stale(self) -> bool:
        """Remove what a killed writer left: temporary files and uncommitted version
        directories. Returns whether it cleaned (False when there was nothing to clean,
        or a writer is at work).

        Every write happens under the writer lock, so a temporary file or an uncommitted
        version directory is stale exactly when nobody holds the lock: a writer that is
        still writing holds it, and a killed one released it with its file descriptor.
        So this takes the lock without waiting and leaves everything alone if it is held.
        Called when the registry is opened; cheap when there is nothing to clean (no lock
        is taken then), and silent where the registry is read-only.
        """
        try:
            if not self.root.is_dir() or not (self._debris() or self._has_orphans()):
                return False
            with self._try_lock() as locked:
                if not locked:
                    return False
                for path in self._debris():
                    path.unlink(missing_ok=True)
                for name in self._stored_names():
                    committed = self._committed_or_none(name)
                    if committed is not None:
                        self._collect_orphans(name, committed)
                return True
        except OSError:
            # A reader without write access (serving, CI) must still be able to open it.
            return False

    @contextmanager
    def _try_lock(self) -> Iterator[bool]:
        """The writer lock if it is free right now (yields True), else yields False."""
        try:
            import fcntl
        except ImportError:  # not POSIX: no way to tell a live writer, so never clean
            yield False
            return
        with open(self.root / ".lock", "a+") as fh:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                yield False
                return
            try:
                yield True
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    @contextmanager
    def _lock(self) -> Iterator[None]:
        self.root.mkdir(parents=True, exist_ok=True)
        try:
            import fcntl
        except ImportError:  # not POSIX: single writer assumed
            yield
            return
        with open(self.root / ".lock", "a+") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    # state file

    def _state_path(self, name: str) -> Path:
        return self.stages_dir / f"{name}.json"

    def _read_state(self, name: str) -> _NameState | None:
        return read_model(
            self._state_path(name),
            _NameState,
            lambda path, why: RegistryError(f"registry state file {path} is corrupt: {why}"),
        )

    def _write_state(self, state: _NameState) -> None:
        _atomic_write_text(self._state_path(state.name), state.model_dump_json(indent=2) + "\n")

    def _require_state(self, name: str) -> _NameState:
        validate_name(name)
        state = self._read_state(name)
        if state is None or not state.stages:
            known = ", ".join(self._names()) or "none"
            raise RegistryError(
                f"no model named {name!r} is registered in {self.root} (known: {known})"
            )
        return state

    def _names(self) -> list[str]:
        if not self.stages_dir.is_dir():
            return []
        return sorted(p.stem for p in self.stages_dir.glob("*.json") if not p.name.startswith("."))

    # version directories

    def _version_dir(self, name: str, version: str) -> Path:
        return self.models_dir / name / version

    def _load(self, name: str, version: str, stage: Stage) -> ModelVersion:
        path = self._version_dir(name, version)
        try:
            record = json.loads((path / RECORD_FILE).read_text(encoding="utf-8"))
            return ModelVersion.model_validate({**record, "stage": stage})
        except Exception as exc:
            raise RegistryError(
                f"{name}:{version} is committed in {self._state_path(name)} but its files at"
                f" {path} are missing or unreadable: {exc}"
            ) from exc

    def _remove_version_dir(self, name: str, version: str, committed: Mapping[str, Stage]) -> None:
        shutil.rmtree(self._version_dir(name, version), ignore_errors=True)
        self._sync_latest(name, committed)

    def _sync_latest(self, name: str, committed: Mapping[str, Stage]) -> None:
        # BentoML's own `latest` pointer, so that `bentoml models get NAME` agrees with us.
        name_dir = self.models_dir / name
        if committed:
            _atomic_write_text(name_dir / "latest", max(committed, key=version_number))
        elif name_dir.is_dir() and not any(p.is_dir() for p in name_dir.iterdir()):
            shutil.rmtree(name_dir)

    def _collect_orphans(self, name: str, committed: Mapping[str, Stage]) -> None:
        # Only called under the writer lock, so no registration is in flight and every
        # uncommitted directory is debris from an interrupted one.
        name_dir = self.models_dir / name
        if not name_dir.is_dir():
            return
        orphans = [p.name for p in name_dir.iterdir() if p.is_dir() and p.name not in committed]
        for version in orphans:
            self._remove_version_dir(name, version, committed)

    # ModelRegistry

    def _add_version(
        self, name: str, src: Path, request: RegistrationRequest, reference: pd.DataFrame | None
    ) -> ModelVersion:
        """Copy `src` into the store as the next version of `name` (stage candidate).

        The version becomes visible only when stages/<name>.json is rewritten, after every
        file is in place; see the module docstring.
        """
        files = _model_files(src)
        main_file = _main_file(request.model_file, request.model_kind, files, src)
        code_version = request.code_version or detect_code_version()

        with self._lock():
            state = self._read_state(name) or _NameState(name=name)
            self._collect_orphans(name, state.stages)
            version = format_version(max(map(version_number, state.stages), default=0) + 1)
            record = ModelVersion(
                **request.model_dump(exclude={"code_version", "model_file"}),
                name=name,
                version=version,
                stage=Stage.CANDIDATE,
                created_at=_now(),
                code_version=code_version,
                model_file=main_file,
                files=files,
                reference_rows=0 if reference is None else len(reference),
            )
            labels = {
                "managed_by": "kubeloop",
                "model_kind": record.model_kind,
                "feature_service": record.feature_service,
                "data_scenario": record.data_scenario,
            }
            # Standard JSON: pydantic writes NaN and infinities as null.
            document = record.model_dump_json(indent=2, exclude={"stage"}) + "\n"
            metadata = {METADATA_KEY: _without_none(json.loads(document))}
            committed = _NameState(
                name=name,
                stages={**state.stages, version: Stage.CANDIDATE},
                history=[
                    *state.history,
                    StageChange(
                        version=version,
                        from_stage=None,
                        to_stage=Stage.CANDIDATE,
                        at=record.created_at,
                        reason="registered",
                    ),
                ],
            )
            try:
                with _staged_model(
                    self._store(),
                    name,
                    version,
                    kind=record.model_kind,
                    labels=labels,
                    metadata=metadata,
                ) as staging:
                    shutil.copytree(src, staging / MODEL_SUBDIR)
                    if reference is not None:
                        reference.to_parquet(staging / REFERENCE_FILE, index=False)
                    (staging / RECORD_FILE).write_text(document, encoding="utf-8")
                # The files are in the store now; this write is what makes them a version.
                self._write_state(committed)
            except BaseException:
                # Under the lock nobody else writes this version's directory, so whatever
                # is there (a complete copy or part of one) is ours to remove.
                self._remove_version_dir(name, version, state.stages)
                raise
            with contextlib.suppress(OSError):  # cosmetic: the version is committed
                self._sync_latest(name, committed.stages)
        return record

    def list(self, name: str | None = None) -> list[ModelVersion]:
        """Versions of `name` (or of all names) by name, then version."""
        if name is not None:
            validate_name(name)
        out: list[ModelVersion] = []
        for n in [name] if name is not None else self._names():
            state = self._read_state(n)
            if state is None:
                continue
            for version in sorted(state.stages, key=version_number):
                out.append(self._load(n, version, state.stages[version]))
        return out

    def get(self, name: str, version: str | None = None) -> ModelVersion:
        state = self._require_state(name)
        resolved = resolve_ref(name, state.stages, version)
        return self._load(name, resolved, state.stages[resolved])

    def set_stage(
        self, name: str, version: str, stage: Stage | str, *, force: bool = False
    ) -> ModelVersion:
        """Move `version` to `stage` and archive whatever it displaces, in one rewrite of
        stages/<name>.json."""
        try:
            target = Stage(stage)
        except ValueError:
            raise RegistryError(
                f"unknown stage {stage!r}; stages are: {', '.join(s.value for s in Stage)}"
            ) from None
        with self._lock():
            state = self._require_state(name)
            resolved = resolve_ref(name, state.stages, version)
            record = self._load(name, resolved, state.stages[resolved])
            served_before = any(
                h.version == resolved and h.to_stage == Stage.PRODUCTION for h in state.history
            )
            new = plan_stage_change(
                name,
                state.stages,
                resolved,
                target,
                gate_passed=record.gate.passed,
                served_before=served_before,
                force=force,
            )
            if new == state.stages:
                return record
            at = _now()
            changes = [
                StageChange(
                    version=v,
                    from_stage=state.stages[v],
                    to_stage=s,
                    at=at,
                    reason=("set_stage" + (" (forced)" if force else ""))
                    if v == resolved
                    else f"displaced by {resolved}",
                )
                for v, s in new.items()
                if s != state.stages[v]
            ]
            self._write_state(_NameState(name=name, stages=new, history=[*state.history, *changes]))
        return record.model_copy(update={"stage": target})

    def model_path(self, name: str, version: str | None = None) -> Path:
        state = self._require_state(name)
        return self._version_dir(name, resolve_ref(name, state.stages, version)) / MODEL_SUBDIR

    def reference(self, name: str, version: str | None = None) -> pd.DataFrame:
        import pandas as pd

        return pd.read_parquet(self._reference_path(name, version))

    def _reference_path(self, name: str, version: str | None) -> Path:
        state = self._require_state(name)
        resolved = resolve_ref(name, state.stages, version)
        path = self._version_dir(name, resolved) / REFERENCE_FILE
        if not path.is_file():
            raise RegistryError(f"{name}:{resolved} was registered without a reference sample")
        return path

    def history(self, name: str) -> list[StageChange]:
        """Every stage change of `name`'s versions, oldest first (registrations included)."""
        return list(self._require_state(name).history)

    def reference_file(self, name: str, version: str | None = None) -> Path | None:
        # The export copies the stored Parquet file instead of round-tripping it.
        if not self.get(name, version).reference_rows:
            return None
        return self._reference_path(name, version)


__all__ = ["BentoMLRegistry"]
