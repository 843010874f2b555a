"""report.json's `run` section (wall time, machine, load, commit) and the drift section's
windows evaluated / skipped / failed per detector."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from kubeloop.drift.monitor import window_counts
from kubeloop.report import finish_run_section, git_commit, start_run_section

ROOT = Path(__file__).resolve().parent.parent


def test_window_counts_split_evaluated_skipped_failed():
    counters = {
        "windows_evaluated:feature": 7.0,
        "windows_skipped:feature": 2.0,
        "windows_failed:prediction": 1.0,
        "windows_closed:serve": 9.0,  # not an outcome
        "windows_too_small:serve": 2.0,  # not an outcome either
        "alerts:feature": 3.0,
    }
    counts = window_counts(counters, ("feature", "prediction", "performance"))
    assert counts == {
        "feature": {"evaluated": 7, "skipped": 2, "failed": 0},
        "performance": {"evaluated": 0, "skipped": 0, "failed": 0},
        "prediction": {"evaluated": 0, "skipped": 0, "failed": 1},
    }


def test_run_section_has_wall_time_machine_load_and_commit():
    run = start_run_section()
    done = finish_run_section(run)
    assert "started_monotonic" not in done
    assert done["wall_seconds"] >= 0
    assert done["machine"]["cores_usable"] >= 1
    assert len(done["load_average_before"]) == 3 and len(done["load_average_after"]) == 3
    head = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True, check=False
    ).stdout.strip()
    if head:  # a git checkout: the commit is HEAD, with a dirty flag
        assert done["commit"]["sha"] == head
        assert isinstance(done["commit"]["dirty"], bool)


def test_git_commit_outside_a_checkout_is_none(tmp_path):
    assert git_commit(tmp_path) == {"sha": None, "dirty": None}


def test_committed_report_has_the_run_and_window_figures():
    report = json.loads((ROOT / "bench" / "results" / "demo_report.json").read_text())
    run = report["run"]
    assert run["complete"] is True
    assert run["wall_seconds"] > 0
    assert run["machine"]["cores_usable"] >= 1
    assert len(run["commit"]["sha"]) == 40 and isinstance(run["commit"]["dirty"], bool)
    stage_seconds = (
        report["training"]["pipeline_seconds"]
        + report["serving"]["seconds"]
        + report["drift"]["seconds"]
    )
    assert stage_seconds <= run["wall_seconds"]
    windows = report["drift"]["windows"]
    # every detector kind of the monitor, the label-free estimate and data quality included
    assert set(windows) == {
        "feature",
        "prediction",
        "performance",
        "estimated_performance",
        "data_quality",
    }
    for counts in windows.values():
        assert set(counts) == {"evaluated", "skipped", "failed"}
    # "no alert" means evaluated windows without an alert, not windows never evaluated
    assert all(windows[k]["evaluated"] > 0 for k in ("feature", "prediction", "data_quality"))
    assert windows["estimated_performance"]["evaluated"] > 0
