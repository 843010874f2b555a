"""Atomic file replacement: a reader sees the old file or the new one, never a mix.

Every file the engine rewrites in place (the run report, registry stages, rollout state,
the local stack file, feature-store settings, training sets) goes through here, so the
temporary name, the permissions and the fsync order are decided once.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    from pydantic import BaseModel

# pydantic is named for type checkers only: writing a file must not import it.
ModelT = TypeVar("ModelT", bound="BaseModel")

# Temporary siblings are hidden and end in .tmp: dataset readers skip dot-files, and the
# registry's recovery finds a killed writer's leftovers by this pattern (`.*.tmp`).
TMP_SUFFIX = ".tmp"
DEFAULT_MODE = 0o644


@contextlib.contextmanager
def atomic_path(
    path: str | os.PathLike[str], *, mode: int = DEFAULT_MODE, durable: bool = True
) -> Iterator[Path]:
    """Yield a temporary sibling of `path` to write; on a clean exit it replaces `path`.

    The sibling lives in the same directory, so the rename never crosses a filesystem.
    With `durable`, the new file is fsynced before the rename and the directory after it,
    so a crash never loses both versions. On an exception the sibling is removed and
    `path` is left as it was.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=TMP_SUFFIX)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        # mkstemp creates 0600; these files are meant to be read by serving and CI users.
        os.chmod(tmp, mode)
        if durable:
            _fsync(tmp, os.O_RDONLY)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if durable:
        _fsync(target.parent, os.O_RDONLY)


def atomic_write_bytes(
    path: str | os.PathLike[str], data: bytes, *, mode: int = DEFAULT_MODE, durable: bool = True
) -> Path:
    """Replace `path` with `data` atomically (see `atomic_path`); returns the path."""
    with atomic_path(path, mode=mode, durable=durable) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def atomic_write_text(
    path: str | os.PathLike[str],
    text: str,
    *,
    mode: int = DEFAULT_MODE,
    durable: bool = True,
    encoding: str = "utf-8",
) -> Path:
    """Replace `path` with `text` atomically (see `atomic_path`); returns the path."""
    return atomic_write_bytes(path, text.encode(encoding), mode=mode, durable=durable)


def _fsync(path: Path, flags: int) -> None:
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_model(
    path: str | os.PathLike[str], model: type[ModelT], error: Callable[[Path, str], Exception]
) -> ModelT | None:
    """Read back a pydantic `model` written here as JSON: None when `path` does not exist,
    `error(path, why)` raised when it is not a valid `model`."""
    target = Path(path)
    try:
        text = target.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    try:
        return model.model_validate_json(text)
    except ValueError as exc:  # pydantic's ValidationError is a ValueError
        raise error(target, str(exc)) from None
