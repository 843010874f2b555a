"""The run report: one JSON section per stage, rewritten atomically after each stage."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any


def read_report(path: Path) -> dict[str, Any]:
    """Return the report at `path`, or an empty one when no stage has written yet."""
    if not path.exists():
        return {}
    return json.loads(path.read_text())


def write_section(path: Path, section: str, figures: dict[str, Any]) -> dict[str, Any]:
    """Set one stage's section and rewrite the report atomically (a reader never sees
    half a file, and an interrupted write leaves the previous report)."""
    report = read_report(path)
    report[section] = figures
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".report-", suffix=".json")
    with os.fdopen(fd, "w") as fh:
        json.dump(report, fh, indent=2, sort_keys=False, default=str)
        fh.write("\n")
    os.replace(tmp, path)
    return report
