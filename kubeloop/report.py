"""The run report: one JSON section per stage, rewritten atomically after each stage."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from kubeloop.atomic import atomic_write_text


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


def load_average() -> list[float] | None:
    """The 1/5/15-minute load averages, or None where the OS has none."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (OSError, AttributeError):
        return None


def machine_facts() -> dict[str, Any]:
    """Cores this process may use, cores online, CPU model, Python and the load average now:
    what a reader needs to judge a wall time measured on a shared machine."""
    import platform

    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "cores_usable": usable,
        "cores_online": os.cpu_count(),
        "cpu": _cpu_model() or platform.processor() or None,
        "python": platform.python_version(),
        "platform": f"{platform.system()} {platform.release()}",
    }


def _cpu_model() -> str | None:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def git_commit(repo: Path | None = None) -> dict[str, Any]:
    """The commit the code ran from (`git rev-parse HEAD` in `repo`, by default the checkout
    holding this package) and whether tracked files differed from it (`dirty`). Both are
    None outside a git checkout (an installed wheel)."""
    import subprocess

    where = repo or Path(__file__).resolve().parent.parent

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(
                ["git", "-C", str(where), *args],
                check=False,
                capture_output=True,
                text=True,
                timeout=30,
            )
        except (OSError, subprocess.TimeoutExpired):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    sha = git("rev-parse", "HEAD")
    if sha is None:
        return {"sha": None, "dirty": None}
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"sha": sha, "dirty": None if status is None else bool(status)}


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
