"""bench/_util.py's per-process CPU measure: nanoseconds from every live thread's
schedstat (a log writer's thread included), the clock-tick figure of /proc/<pid>/stat
where the kernel has no schedstat, and 0 for a process that is gone."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

BENCH_DIR = Path(__file__).resolve().parent.parent / "bench"


@pytest.fixture(scope="module")
def util():
    sys.path.insert(0, str(BENCH_DIR))  # the benches import their helpers as `_util`
    try:
        import _util

        yield _util
    finally:
        sys.path.remove(str(BENCH_DIR))


def _burn(seconds: float) -> None:
    """Spend `seconds` of this thread's own CPU time (not wall time)."""
    start = time.thread_time()
    while time.thread_time() - start < seconds:
        pass


def test_a_second_threads_cpu_is_counted(util):
    before = util.pid_cpu_s(os.getpid())
    burnt, done = threading.Event(), threading.Event()

    def run() -> None:
        _burn(0.05)
        burnt.set()
        done.wait()  # stay alive while the main thread reads

    worker = threading.Thread(target=run)
    worker.start()
    burnt.wait()
    measured = util.pid_cpu_s(os.getpid()) - before
    done.set()
    worker.join()
    # Only /proc/<pid>/schedstat (the main thread, which mostly slept) would miss it.
    assert measured >= 0.05


def test_not_rounded_to_clock_ticks(util):
    if not util._has_schedstat():
        pytest.skip("this kernel has no schedstat")
    readings = set()
    for _ in range(5):
        _burn(0.001)
        readings.add(util.pid_cpu_s(os.getpid()))
    ticks = os.sysconf("SC_CLK_TCK")
    # Tick-counted figures are whole multiples of 1/ticks; nanosecond ones almost never.
    assert any(abs(r * ticks - round(r * ticks)) > 1e-6 for r in readings)


# Spends 0.2 s of CPU, then stays alive to be read.
BURN_THEN_SLEEP = """
import time
start = time.process_time()
while time.process_time() - start < 0.2:
    pass
time.sleep(30)
"""


def test_matches_the_tick_figure(util):
    # A fresh one-thread process: in the test process, threads earlier tests started and
    # ended count in /proc/<pid>/stat but not in the live threads' schedstat.
    child = subprocess.Popen([sys.executable, "-c", BURN_THEN_SLEEP])
    try:
        deadline = time.monotonic() + 30
        while util._cpu_of(util._proc_stat(child.pid)) < 0.2 and time.monotonic() < deadline:
            time.sleep(0.05)
        precise = util.pid_cpu_s(child.pid)
        ticks = util._cpu_of(util._proc_stat(child.pid))
    finally:
        child.kill()
        child.wait()
    assert ticks >= 0.2
    assert abs(precise - ticks) < 0.05  # stat rounds the same runtime to 10 ms ticks


def test_fallback_without_schedstat(util, monkeypatch):
    monkeypatch.setattr(util, "_has_schedstat", lambda: False)
    value = util.pid_cpu_s(os.getpid())
    assert value == util._cpu_of(util._proc_stat(os.getpid()))


def test_gone_and_none(util):
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    assert util.pid_cpu_s(child.pid) == 0.0
    assert util.pid_cpu_s(None) == 0.0
    assert util.pids_cpu_s([child.pid, os.getpid()]) == pytest.approx(
        util.pid_cpu_s(os.getpid()), abs=0.01
    )
