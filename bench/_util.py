"""Helpers shared by the bench scripts: machine facts, percentiles, fresh-process runs,
markdown tables. Standard library and `kubeloop.machine` only, so importing it costs a child
process nothing."""

from __future__ import annotations

import functools
import multiprocessing
import os
import resource
import sys
import traceback
from collections.abc import Callable, Iterable, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

from kubeloop import machine


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


def load_average() -> str:
    """1/5/15-minute load averages, or 'n/a' where the OS has none."""
    values = machine.load_average()
    return " / ".join(f"{x:.2f}" for x in values) if values else "n/a"


def machine_facts(packages: Sequence[str]) -> list[str]:
    """Markdown bullet lines: cores, CPU, memory, OS, Python and `packages`' versions."""
    m = machine.machine_facts()
    versions = ", ".join(f"{name} {_version(name)}" for name in packages)
    return [*_machine_lines(m), f"- {versions}"]


def _machine_lines(m: dict[str, Any]) -> list[str]:
    return [
        (
            f"- cores: {m['cores_usable']} usable ({m['cores_online']} online), "
            f"{m['cpu'] or 'unknown CPU'}; memory {m['memory'] or 'unknown'}"
        ),
        f"- {m['platform']}; Python {m['python']}",
    ]


def fmt_int(value: float) -> str:
    return f"{value:,.0f}"


def fmt_ratio(value: float) -> str:
    return f"{value:.2f}x"


def load_averages() -> list[float] | None:
    """1/5/15-minute load averages as numbers (for the JSON), or None where the OS has none."""
    return machine.load_average()


def build_training_set(work: Path) -> Path:
    """Build the features of the lake at `work`/lake with the pipeline's feature step
    (quietly, tables and Feast repo under `work`); the training set's path."""
    # Imported here: importing this module must not import the engine (see the docstring).
    from kubeloop.features.pipeline_config import FeaturesStepConfig
    from kubeloop.pipeline.steps import run_features

    training_set = work / "training_set.parquet"
    quiet = FeaturesStepConfig(progress=False)
    run_features(str(work / "lake"), work / "features", work / "feature_repo", training_set, quiet)
    return training_set


def git_commit() -> dict[str, Any]:
    """HEAD of the checkout the bench runs from and whether tracked files differ from it."""
    return machine.git_commit(Path(__file__).resolve().parent.parent)


def conditions(
    bench: str,
    mode: str,
    argv: Sequence[str],
    packages: Sequence[str],
    load_before: list[float] | None,
    seconds: float,
    started_at: str,
) -> dict[str, Any]:
    """The conditions of a bench run, for its JSON: what ran (mode: full, quick or a reduced
    mode named by the bench), when, for how long, on which machine and under what load."""
    return {
        "bench": bench,
        "mode": mode,
        "command": " ".join([f"bench/{bench}_bench.py", *argv]),
        "started_at": started_at,
        "seconds": round(seconds, 1),
        "machine": machine.machine_facts(),
        "packages": {name: _version(name) for name in packages},
        "commit": git_commit(),
        "load_average_before": load_before,
        "load_average_after": load_averages(),
    }


def conditions_lines(cond: dict[str, Any]) -> list[str]:
    """Markdown bullet lines of `conditions(...)`: the header of every bench report."""
    m = cond["machine"]

    def load(values: list[float] | None) -> str:
        return " / ".join(f"{x:.2f}" for x in values) if values else "n/a"

    versions = ", ".join(f"{k} {v}" for k, v in cond["packages"].items())
    return [
        (
            f"Run {cond['started_at']}, {cond['seconds'] / 60:.1f} min, mode **{cond['mode']}**, "
            f"command `{cond['command']}`."
        ),
        "",
        *_machine_lines(m),
        f"- {versions}",
        *_commit_line(cond.get("commit")),
        (
            f"- load average (1/5/15 min) before: {load(cond['load_average_before'])}; "
            f"after: {load(cond['load_average_after'])}"
        ),
    ]


def _commit_line(commit: dict[str, Any] | None) -> list[str]:
    # Runs recorded before the commit was kept have no line at all.
    if not commit or not commit.get("sha"):
        return []
    dirty = " (tracked files modified)" if commit.get("dirty") else ""
    return [f"- commit {commit['sha'][:10]}{dirty}"]


def write_json(path: Any, doc: dict[str, Any]) -> dict[str, Any]:
    """Write a bench's results as JSON and return them as read back, so the markdown is
    rendered from exactly what was written (no figure reaches the markdown otherwise)."""
    import json
    from pathlib import Path

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # default=str: paths and timestamps in a bench's records become their text.
    path.write_text(json.dumps(doc, indent=2, sort_keys=False, default=str) + "\n")
    return json.loads(path.read_text())


def now_utc() -> str:
    """The current UTC time, to the minute, as the bench reports print it."""
    from datetime import UTC, datetime

    return datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")


def log(message: str) -> None:
    """A progress line on stderr, stamped with the wall-clock time (stdout is the report)."""
    from datetime import datetime

    stamp = datetime.now().strftime("%H:%M:%S")
    print(f"[{stamp}] {message}", file=sys.stderr, flush=True)


def machine_busy_s() -> float:
    """CPU seconds the whole machine has been busy (all cores), from /proc/stat."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:9]]
    idle = fields[3] + fields[4]  # idle + iowait
    return (sum(fields) - idle) / os.sysconf("SC_CLK_TCK")


def _terminate(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)


def exit_on_sigterm() -> None:
    """Turn SIGTERM into SystemExit, so a stopped bench unwinds through its finally blocks
    (servers stopped, run_fresh children ended, temporary directories removed)."""
    import signal

    signal.signal(signal.SIGTERM, _terminate)


def publish(text: str, out: Any) -> None:
    """Print a bench's rendered markdown and write it to `out`."""
    from pathlib import Path

    out = Path(out)
    print(text)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text + "\n")
    log(f"wrote {out}")


def add_output_arguments(parser: Any, default_json: Any, default_out: Any) -> None:
    """The options every bench takes: --out (markdown), --json, --tmp-dir and --render."""
    from pathlib import Path

    parser.add_argument(
        "--out", type=Path, default=default_out, help=f"markdown output (default: {default_out})"
    )
    parser.add_argument(
        "--tmp-dir", type=Path, default=None, help="where the temporary working directory goes"
    )
    parser.add_argument(
        "--json", type=Path, default=default_json, help=f"JSON output (default: {default_json})"
    )
    parser.add_argument(
        "--render",
        type=Path,
        default=None,
        metavar="JSON",
        help="measure nothing: render the markdown from this JSON of an earlier run",
    )


def measure_or_load(args: Any, measure: Callable[[Any], dict[str, Any]]) -> dict[str, Any]:
    """The results to render: read back from --render, or measured now and written to --json."""
    import json

    if args.render:
        return json.loads(args.render.read_text())
    doc = write_json(args.json, measure(args))
    log(f"wrote {args.json}")
    return doc


def _proc_stat(pid: int | str) -> list[str] | None:
    """The fields of /proc/<pid>/stat after the command name (from field 3, state, on)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            text = f.read().decode("ascii", "replace")
    except OSError:
        return None
    # The command name may hold spaces and parentheses: split after its closing ")".
    return text[text.rfind(")") + 2 :].split()


def _cpu_of(fields: list[str]) -> float:
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def _schedstat_ns(path: str) -> int:
    """The first field of a schedstat file: the task's time on a CPU, in nanoseconds."""
    with open(path, "rb") as f:
        return int(f.read().split(maxsplit=1)[0])


@functools.cache
def _has_schedstat() -> bool:
    """Whether this kernel has /proc/<pid>/task/<tid>/schedstat (CONFIG_SCHED_INFO)."""
    try:
        _schedstat_ns(f"/proc/self/task/{os.getpid()}/schedstat")
    except (OSError, ValueError, IndexError):
        return False
    return True


def _threads_cpu_s(pid: int | str) -> float | None:
    """CPU seconds of `pid`'s live threads from their schedstat files (nanoseconds);
    None when the process is gone."""
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return None
    total = 0
    for tid in tids:
        try:
            total += _schedstat_ns(f"/proc/{pid}/task/{tid}/schedstat")
        except (OSError, ValueError, IndexError):
            continue  # the thread ended between the listing and the read
    return total / 1e9


def pid_cpu_s(pid: int | str | None) -> float:
    """CPU seconds (user + system) of one live process; 0 when it is gone.

    From the schedstat file of each of its threads, in nanoseconds: /proc/<pid>/stat counts
    clock ticks (10 ms here), which is most of the figure for a cell of a few hundred
    requests at a fraction of a millisecond each. /proc/<pid>/schedstat alone would be the
    main thread only (a request log's writer thread is another). The stat figure is the
    fallback on kernels without schedstat. A thread that ends between two readings takes
    its time since the first one with it: the servers measured here keep their threads
    (event loop, executor pools, log writers) for their lifetime."""
    if pid is None:
        return 0.0
    if _has_schedstat():
        seconds = _threads_cpu_s(pid)
        return 0.0 if seconds is None else seconds
    fields = _proc_stat(pid)
    return _cpu_of(fields) if fields else 0.0


def pids_cpu_s(pids: Iterable[int]) -> float:
    """The summed `pid_cpu_s` of `pids` (a server's process tree)."""
    return sum(pid_cpu_s(pid) for pid in pids)


def process_table() -> dict[int, tuple[int, int, float]]:
    """pid -> (parent pid, process group, CPU seconds user + system) of every live process.
    The CPU figure counts clock ticks (cheap for the whole machine): measure a server's
    CPU with `pid_cpu_s` / `pids_cpu_s`, in nanoseconds."""
    table = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit() and (fields := _proc_stat(entry.name)):
            table[int(entry.name)] = (int(fields[1]), int(fields[2]), _cpu_of(fields))
    return table


class RunClock:
    """When a bench run began and the machine's load then; `conditions` closes the record."""

    def __init__(self) -> None:
        import time

        self.started = time.perf_counter()
        self.started_at = now_utc()
        self.load_before = load_averages()

    def conditions(self, bench: str, mode: str, packages: Sequence[str]) -> dict[str, Any]:
        """`conditions(...)` of this run, measured up to now, for the bench's JSON."""
        import time

        return conditions(
            bench,
            mode,
            sys.argv[1:],
            packages,
            self.load_before,
            time.perf_counter() - self.started,
            self.started_at,
        )
