"""Where each stage of a run reads and writes, under one working directory."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


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

    @property
    def lake(self) -> Path:
        return self.root / "lake"

    @property
    def features(self) -> Path:
        return self.root / "features"

    @property
    def feature_repo(self) -> Path:
        return self.root / "feature_repo"

    @property
    def training(self) -> Path:
        return self.root / "training"

    @property
    def training_set(self) -> Path:
        return self.training / "training_set.parquet"

    @property
    def registry(self) -> Path:
        return self.root / "registry"

    @property
    def report(self) -> Path:
        return self.root / "report.json"

    def ensure(self) -> Workdir:
        self.root.mkdir(parents=True, exist_ok=True)
        return self
