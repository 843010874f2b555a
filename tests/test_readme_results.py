"""The README's results and benchmark sections are what the committed result files render
to (bench/results/demo_report.json, bench/results/*.json), and a changed figure is caught."""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from kubeloop import report_render

ROOT = Path(__file__).resolve().parent.parent
# The console script, as a user runs it.
KUBELOOP = str(Path(sys.executable).parent / "kubeloop")
SECTIONS = ["results", *(f"bench-{name}" for name in report_render.BENCHES), "demo-fraud"]
FRAUD_REPORT = "bench/results/fraud_demo_report.json"


def _kubeloop(*args: str) -> subprocess.CompletedProcess:
    """`kubeloop ARGS...` through its console script, in a subprocess."""
    return subprocess.run([KUBELOOP, *args], check=False, capture_output=True)


def _checkout_copy(tmp_path: Path) -> Path:
    """README.md and the result files (all under bench/results/), copied to `tmp_path` laid out as in the checkout."""
    shutil.copy(ROOT / "README.md", tmp_path / "README.md")
    shutil.copytree(ROOT / "bench" / "results", tmp_path / "bench" / "results")
    return tmp_path


def test_readme_has_every_marker_pair():
    text = (ROOT / "README.md").read_text()
    missing = [name for name in SECTIONS if report_render.extract_section(text, name) is None]
    assert not missing, f"README.md lacks the markers of {missing}"


def test_readme_sections_equal_their_rendering():
    text = (ROOT / "README.md").read_text()
    stale = report_render.stale_sections(text, report_render.render_sections(ROOT))
    assert not stale, f"README.md differs from its result files in {stale}: run `make report`"


def test_every_bench_has_committed_json():
    for name in report_render.BENCHES:
        doc = json.loads((ROOT / "bench" / "results" / f"{name}_bench.json").read_text())
        cond = doc["conditions"]
        assert cond["bench"] == name
        assert cond["mode"] in {"full", "quick", "reduced"}
        assert cond["machine"]["cores_usable"] >= 1
        assert cond["load_average_before"] is not None


def _mutate_first_number(node):
    """Change the first float found in `node` (depth first), in place; True when done."""
    items = node.items() if isinstance(node, dict) else enumerate(node)
    for key, value in items:
        if isinstance(value, float):
            node[key] = value * 1.5 + 1.0
            return True
        if isinstance(value, dict | list) and _mutate_first_number(value):
            return True
    return False


@pytest.mark.parametrize(
    ("source", "where"),
    [
        ("bench/results/demo_report.json", ("training",)),
        ("bench/results/demo_report.json", ("run", "wall_seconds")),
        ("bench/results/features_bench.json", ("data",)),
        ("bench/results/serving_bench.json", ("cells",)),
        ("bench/results/training_bench.json", ("summary",)),
        ("bench/results/drift_bench.json", ("summary", "cost", "monitor_ms_per_window")),
        ("bench/results/rollout_bench.json", ("summary", "aa", "true_gap")),
        (FRAUD_REPORT, ("training", "models", "lightgbm", "pr_auc")),
        (FRAUD_REPORT, ("serving", "latency_ms", "p99")),
        (FRAUD_REPORT, ("serving", "offered_load", "requests_per_s")),
        (FRAUD_REPORT, ("drift", "seconds")),
        (FRAUD_REPORT, ("run", "wall_seconds")),
        ("bench/results/fraud_demo_new_fraud_pattern.json", ("run", "wall_seconds")),
    ],
)
def test_changed_figure_fails_the_check(tmp_path, source, where):
    root = _checkout_copy(tmp_path)
    path = root / source
    doc = json.loads(path.read_text())
    original = copy.deepcopy(doc)
    parent = doc
    for key in where[:-1]:
        parent = parent[key]
    if isinstance(parent[where[-1]], float):
        parent[where[-1]] = parent[where[-1]] + 61.0
    else:
        assert _mutate_first_number(parent[where[-1]]), f"no figure under {where} in {source}"
    assert doc != original
    path.write_text(json.dumps(doc))
    text = (root / "README.md").read_text()
    assert report_render.stale_sections(text, report_render.render_sections(root))


def test_cli_check_and_render(tmp_path):
    root = _checkout_copy(tmp_path)
    readme = str(root / "README.md")
    ok = _kubeloop("report", "--readme", readme, "--check")
    assert ok.returncode == 0, ok.stderr.decode()
    report = root / report_render.REPORT_PATH
    doc = json.loads(report.read_text())
    doc["run"]["wall_seconds"] += 120
    report.write_text(json.dumps(doc))
    stale = _kubeloop("report", "--readme", readme, "--check")
    assert stale.returncode == 1 and b"results" in stale.stderr
    done = _kubeloop("report", "--readme", readme)
    assert done.returncode == 0, done.stderr.decode()
    again = _kubeloop("report", "--readme", readme, "--check")
    assert again.returncode == 0, again.stderr.decode()


def test_from_run_refuses_an_incomplete_report(tmp_path):
    root = _checkout_copy(tmp_path)
    partial = tmp_path / "partial.json"
    doc = json.loads((root / report_render.REPORT_PATH).read_text())
    doc["run"]["complete"] = False
    partial.write_text(json.dumps(doc))
    readme = str(root / "README.md")
    done = _kubeloop("report", "--readme", readme, "--from-run", str(partial))
    assert done.returncode == 2
    assert b"not a complete demo run" in done.stderr


def test_replace_section_needs_the_markers():
    with pytest.raises(ValueError, match="no <!-- BEGIN kubeloop:results -->"):
        report_render.replace_section("no markers here\n", "results", "x\n")
    text = "a\n<!-- BEGIN kubeloop:results -->\nold\n<!-- END kubeloop:results -->\nb\n"
    new = report_render.replace_section(text, "results", "new\n")
    assert report_render.extract_section(new, "results") == "new\n"
    assert new.startswith("a\n") and new.endswith("b\n")


def test_fraud_section_states_the_figures_of_its_report():
    """The fraud section is the committed fraud demo's: its champion's PR-AUC against the
    oracle's, the serving p99 with the load it was measured at, the wall time."""
    report = json.loads((ROOT / FRAUD_REPORT).read_text())
    section = report_render.extract_section((ROOT / "README.md").read_text(), "demo-fraud")
    champion = report["training"]["champion"]
    model = report["training"]["models"][champion]
    assert f"{champion} (champion)" in section
    assert f"{model['pr_auc']:.3f}" in section and f"{model['oracle_pr_auc']:.3f}" in section
    load = report["serving"]["offered_load"]
    assert f"p99 {report['serving']['latency_ms']['p99']:.0f} ms" in section
    assert f"{load['requests_per_s']:.1f} requests/s" in section
    assert f"{load['concurrency']} concurrent clients" in section
    assert report["run"]["use_case"] == "fraud" and report["run"]["complete"]


def test_scenario_reports_render_their_alert_timing(tmp_path):
    """A committed scenario run (bench/results/<name>_demo_<scenario>.json) is a row of the
    use case's scenario table: each detector's first alert after the change, what followed."""
    root = _checkout_copy(tmp_path)
    baseline = json.loads((root / FRAUD_REPORT).read_text())
    scenario = copy.deepcopy(baseline)
    scenario["data"]["scenario"] = "some_shift"
    scenario["drift"]["first_alert_after_change"] = {
        "feature": {"windows_after_change": 1, "within_one_window": True},
        "performance": {"windows_after_change": 3, "within_one_window": False},
    }
    scenario["drift"]["retrain"] = {"triggered": True, "gate": {"passed": True}}
    scenario["drift"]["rollout"] = {"decision": "promote"}
    target = report_render.report_target(scenario, "ctr")
    assert target.as_posix() == "bench/results/fraud_demo_some_shift.json"
    assert report_render.report_target(baseline, "ctr").as_posix() == FRAUD_REPORT
    (root / target).write_text(json.dumps(scenario))
    section = report_render.render_sections(root)["demo-fraud"]
    (row,) = [line for line in section.splitlines() if line.startswith("| `some_shift`")]
    assert "feature in window 1; performance in window 3 (late)" in row
    assert "| triggered | passed | promote |" in row
    assert "fraud_demo_some_shift.json" in section.splitlines()[0]


def test_from_run_keeps_a_fraud_report_apart_from_ctrs(tmp_path):
    # `--from-run` with another use case's report must not overwrite the default's.
    root = _checkout_copy(tmp_path)
    ctr_before = (root / report_render.REPORT_PATH).read_bytes()
    fraud = json.loads((root / FRAUD_REPORT).read_text())
    source = tmp_path / "fraud_run.json"
    source.write_text(json.dumps(fraud))
    done = _kubeloop("report", "--readme", str(root / "README.md"), "--from-run", str(source))
    assert done.returncode == 0, done.stderr.decode()
    assert (root / report_render.REPORT_PATH).read_bytes() == ctr_before
    assert json.loads((root / FRAUD_REPORT).read_text()) == fraud


def test_demo_summary_states_p99_with_its_offered_load():
    from kubeloop.cli.demo import summary_lines

    fraud = json.loads((ROOT / FRAUD_REPORT).read_text())
    lines = [line for line in summary_lines(fraud) if line.startswith("serving latency:")]
    assert len(lines) == 1
    assert "p99" in lines[0] and "requests/s" in lines[0]
