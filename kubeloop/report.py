"""The run report: one JSON section per stage, rewritten atomically after each stage."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from kubeloop.atomic import atomic_write_text
from kubeloop.machine import git_commit, load_average, machine_facts

__all__ = [
    "finish_run_section",
    "git_commit",
    "read_report",
    "start_run_section",
    "write_section",
]


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
    atomic_write_text(path, json.dumps(report, indent=2, sort_keys=False, default=str) + "\n")
    return report


def start_run_section() -> dict[str, Any]:
    """The report's `run` section at the start of a run: the machine, its load, the commit."""
    import time
    from datetime import UTC, datetime

    return {
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "started_monotonic": time.monotonic(),
        "machine": machine_facts(),
        "load_average_before": load_average(),
        "commit": git_commit(),
    }


def finish_run_section(run: dict[str, Any]) -> dict[str, Any]:
    """`run` completed at the end of a run: total wall time and the load average after."""
    import time
    from datetime import UTC, datetime

    done = {k: v for k, v in run.items() if k != "started_monotonic"}
    done["finished_at"] = datetime.now(UTC).isoformat(timespec="seconds")
    done["wall_seconds"] = round(time.monotonic() - run["started_monotonic"], 3)
    done["load_average_after"] = load_average()
    return done
