"""Helpers shared by the bench scripts: machine facts, percentiles, fresh-process runs,
markdown tables. Standard library only, so importing it costs a child process nothing."""

from __future__ import annotations

import multiprocessing
import os
import platform
import resource
import sys
import traceback
from collections.abc import Callable, Iterable, Sequence
from importlib import metadata
from typing import Any


def peak_rss_mib() -> float:
    """Peak resident set size of this process so far, in MiB (Linux reports KiB)."""
    kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # macOS reports bytes, Linux KiB.
    return kib / (1024 * 1024) if sys.platform == "darwin" else kib / 1024


def _child_main(conn, fn: Callable[..., Any], args: tuple, kwargs: dict) -> None:
    try:
        result = fn(*args, **kwargs)
    except BaseException:  # noqa: BLE001 - everything goes back to the parent
        conn.send((False, traceback.format_exc()))
    else:
        conn.send((True, result))
    finally:
        conn.close()


def run_fresh(fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
    """Run `fn(*args, **kwargs)` in a new spawned interpreter and return its result.

    Spawn, not fork: the child starts from an empty interpreter, so its peak RSS
    (which `fn` should read with `peak_rss_mib` at its end) is its own work plus the
    imports it needs, never the parent's memory. `fn` must be a module-level function
    and its result picklable. A failure in the child raises RuntimeError here with the
    child's traceback; if the parent is interrupted, the child is terminated first.
    """
    context = multiprocessing.get_context("spawn")
    receiver, sender = context.Pipe(duplex=False)
    child = context.Process(target=_child_main, args=(sender, fn, args, kwargs), daemon=True)
    child.start()
    sender.close()
    try:
        try:
            ok, payload = receiver.recv()
        except EOFError:
            child.join()
            raise RuntimeError(
                f"{fn.__name__} died in its child process (exit code {child.exitcode})"
            ) from None
        child.join()
    finally:
        if child.is_alive():
            child.terminate()
            child.join()
        receiver.close()
    if not ok:
        raise RuntimeError(f"{fn.__name__} failed in its child process:\n{payload}")
    return payload


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) with linear interpolation between order statistics
    (numpy's default method)."""
    if not values:
        raise ValueError("percentile of no values")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100.0
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[Any]], align: str = "") -> str:
    """A GitHub markdown table. `align` holds one letter per column, l or r (default r
    for every column but the first)."""
    header = list(header)
    align = align or "l" + "r" * (len(header) - 1)
    rule = ["---:" if a == "r" else ":---" for a in align]
    lines = [_row(header), _row(rule)]
    lines += [_row([str(cell) for cell in row]) for row in rows]
    return "\n".join(lines)


def _row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def _memory_gib() -> str:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return f"{int(line.split()[1]) / 1024**2:.1f} GiB"
    except OSError:
        pass
    return "unknown"


def load_average() -> str:
    """1/5/15-minute load averages, or 'n/a' where the OS has none."""
    try:
        return " / ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def machine_facts(packages: Sequence[str]) -> list[str]:
    """Markdown bullet lines: cores, CPU, memory, OS, Python and `packages`' versions."""
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    versions = ", ".join(f"{name} {_version(name)}" for name in packages)
    return [
        (
            f"- cores: {usable} usable ({os.cpu_count()} online), {_cpu_model()}; "
            f"memory {_memory_gib()}"
        ),
        f"- {platform.system()} {platform.release()}; Python {platform.python_version()}",
        f"- {versions}",
    ]


def fmt_int(value: float) -> str:
    return f"{value:,.0f}"


def fmt_ratio(value: float) -> str:
    return f"{value:.2f}x"
