"""Errors a user can act on: each names the file, the field and the fix."""

from __future__ import annotations


class KubeloopError(Exception):
    """Base class for errors reported to the user without a traceback by the CLI."""


class LakeError(KubeloopError):
    """The data lake is missing, empty, corrupt or does not match the event schema."""

    def __init__(self, message: str, *, path: str | None = None, column: str | None = None):
        self.path = path
        self.column = column
        where = []
        if path:
            where.append(f"file {path}")
        if column:
            where.append(f"column {column!r}")
        prefix = f"[{', '.join(where)}] " if where else ""
        super().__init__(prefix + message)


class FeatureStoreError(KubeloopError):
    """The Feast repository or online store could not be used."""


class MissingExtraError(KubeloopError):
    """An optional dependency is not installed; the message names what to install."""

    def __init__(self, module: str, purpose: str, install: str):
        super().__init__(f"{purpose} needs the Python package {module!r}: pip install {install}")
