"""Where each stage of a run reads and writes, under one working directory."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import overload


class _Under:
    """A read-only attribute: the path `parts` below the instance's `root`."""

    def __init__(self, *parts: str):
        self.parts = parts

    @overload
    def __get__(self, workdir: None, owner: type) -> _Under: ...
    @overload
    def __get__(self, workdir: Workdir, owner: type) -> Path: ...
    def __get__(self, workdir: Workdir | None, owner: type) -> Path | _Under:
        # On the class (Workdir.lake), the descriptor itself, as a property would be.
        return self if workdir is None else workdir.root.joinpath(*self.parts)


@dataclass(frozen=True)
class Workdir:
    """The layout of a run directory (`kubeloop demo --workdir DIR`).

    Every stage takes its paths from here rather than building them, so the layout
    can be read in one place: lake/, features/, feature_repo/, training/, registry/,
    report.json.
    """

    root: Path

    @classmethod
    def at(cls, root: str | Path) -> Workdir:
        return cls(Path(root).expanduser().resolve())

    # The layout, one path per line (relative to the root; see _Under).
    lake = _Under("lake")
    features = _Under("features")
    feature_repo = _Under("feature_repo")
    training = _Under("training")
    training_set = _Under("training", "training_set.parquet")
    registry = _Under("registry")
    report = _Under("report.json")

    def ensure(self) -> Workdir:
        self.root.mkdir(parents=True, exist_ok=True)
        return self
