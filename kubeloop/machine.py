"""Facts about the machine and checkout a figure was measured on: cores, CPU, memory, load
and commit. The run report and every bench record them the same way, so that a reader can
judge a wall time measured on a shared machine. Standard library only: a bench's child
process imports it for nothing."""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path
from typing import Any


def cores_usable() -> int | None:
    """Cores this process may run on (its affinity), else the cores online."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def cpu_model() -> str | None:
    """The CPU's model name from /proc/cpuinfo, else what `platform` says, else None."""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def memory_gib() -> str | None:
    """Total memory as "23.4 GiB" from /proc/meminfo, or None where it cannot be read."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemTotal:"):
                    return f"{int(line.split()[1]) / 1024**2:.1f} GiB"
    except OSError:
        pass
    return None


def load_average() -> list[float] | None:
    """The 1/5/15-minute load averages, or None where the OS has none."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (OSError, AttributeError):
        return None


def machine_facts() -> dict[str, Any]:
    """Cores usable and online, CPU model, memory, OS and Python."""
    return {
        "cores_usable": cores_usable(),
        "cores_online": os.cpu_count(),
        "cpu": cpu_model(),
        "memory": memory_gib(),
        "python": platform.python_version(),
        "platform": f"{platform.system()} {platform.release()}",
    }


def git_commit(repo: Path | None = None) -> dict[str, Any]:
    """The commit the code ran from (`git rev-parse HEAD` in `repo`, by default the checkout
    holding this package) and whether tracked files differed from it (`dirty`: the servers
    and steps a run starts run the working tree, not HEAD). Both are None outside a git
    checkout (an installed wheel)."""
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
