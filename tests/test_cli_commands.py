"""Every command the README promises, run as a user runs it: the `kubeloop` console script
in a subprocess, checked for what the user cares about (exit code, what it prints, the
files it writes). One tiny demo run provides the registry, rollout and alerts that
`models`, `canary`, `alerts` and `serve` then work on (each on its own copy)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Self
from urllib.parse import parse_qs, urlparse

import pytest
import yaml

KUBELOOP = str(Path(sys.executable).with_name("kubeloop"))

# The smallest demo that still runs every stage (data, the training pipeline, registry,
# serving on real KServe servers with replayed traffic, the drift service fed by the
# request log): 6 days with a covariate shift on day 4, the first training on days 0-2,
# a few dozen requests per replay. Whether the drift stage then retrains is the closed
# loop's business (tests/test_closed_loop.py); at this size it evaluates its windows.
TINY_DEMO = {
    "generator": {
        "events": 12_000,
        "days": 6,
        "users": 300,
        "ads": 60,
        "seed": 5,
        "scenario": "covariate_shift",
        "change_day": 4,
    },
    "train_until_day": 3,
    "train_config": {
        "torch": {"max_epochs": 1, "importance_rows": 200},
        "lightgbm": {"max_rounds": 30},
    },
    "gate_config": {"calibration_bounds": [0.5, 2.0]},
    "serving": {
        "replay": {"requests": 30, "batch_size": 8, "concurrency": 4},
        "policy": {"min_labelled": 50},
        "replay_last_days": 1,
    },
    "drift": {
        "impressions_per_day": 600,
        "canary_replay": {"requests": 40, "batch_size": 8, "concurrency": 4},
        "canary_policy": {"min_labelled": 50},
        "retrain_window_days": 3,
        "canary_last_days": 1,
    },
}
SECTIONS = {"run", "data", "features", "training", "registry", "serving", "drift"}


def kubeloop(
    *args: str, cwd: Path | None = None, timeout: float = 120, env: dict | None = None
) -> subprocess.CompletedProcess:
    """Run the console script; wide COLUMNS so that rich does not wrap what we grep."""
    return subprocess.run(
        [KUBELOOP, *args],
        check=False,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
        env={**os.environ, "COLUMNS": "200", **(env or {})},
    )


def assert_ok(done: subprocess.CompletedProcess) -> str:
    assert done.returncode == 0, f"rc={done.returncode}\n{done.stdout}\n{done.stderr}"
    assert "Traceback" not in done.stderr
    return done.stdout


def assert_one_line_error(done: subprocess.CompletedProcess, *needles: str) -> str:
    """A user error: exit 2, no traceback, exactly one line on stderr naming `needles`."""
    assert done.returncode == 2, f"rc={done.returncode}\n{done.stdout}\n{done.stderr}"
    assert "Traceback" not in done.stderr and "Traceback" not in done.stdout
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("error: "), lines[0]
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


# --------------------------------------------------------------------------- pipeline


def test_pipeline_compile_to_a_file_and_to_a_directory(tmp_path: Path) -> None:
    out = tmp_path / "pkg" / "training.yaml"
    stdout = assert_ok(kubeloop("pipeline", "compile", "--out", str(out)))
    assert str(out) in stdout
    spec = next(yaml.safe_load_all(out.read_text()))
    assert spec["pipelineInfo"]["name"] == "kubeloop-training"
    assert {"lake_uri", "registry_uri"} <= set(spec["root"]["inputDefinitions"]["parameters"])

    # A directory (the case that raised kfp's ValueError) gets NAME_pipeline.yaml inside.
    folder = tmp_path / "build"
    folder.mkdir()
    stdout = assert_ok(kubeloop("pipeline", "compile", "--out", str(folder)))
    written = folder / "training_pipeline.yaml"
    assert str(written) in stdout and written.read_text() == out.read_text()


class FakeKfp:
    """A loopback HTTP server speaking enough of the KFP v2beta1 REST API for kfp.Client:
    healthz, experiments (list by filter, create), runs and recurring runs (create).
    It keeps the experiments it created and records every request with its JSON body."""

    def __init__(self) -> None:
        self.requests: list[dict] = []
        self.experiments: list[dict] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # keep the test output clean
                pass

            def _reply(self, status: int, body: dict) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _handle(self) -> None:
                url = urlparse(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                body = json.loads(raw) if raw else None
                fake.requests.append(
                    {
                        "method": self.command,
                        "path": url.path,
                        "query": parse_qs(url.query),
                        "content_type": self.headers.get("Content-Type"),
                        "body": body,
                    }
                )
                status, reply = fake.route(self.command, url.path, parse_qs(url.query), body)
                self._reply(status, reply)

            do_GET = do_POST = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def route(self, method: str, path: str, query: dict, body: dict | None) -> tuple[int, dict]:
        """The answer to one request, as the KFP API server gives it."""
        base = "/apis/v2beta1"
        if (method, path) == ("GET", f"{base}/healthz"):
            return 200, {"multi_user": False, "pipeline_store": "database"}
        if (method, path) == ("GET", f"{base}/experiments"):
            wanted = json.loads(query["filter"][0])["predicates"][0]["stringValue"]
            found = [e for e in self.experiments if e["display_name"] == wanted]
            return 200, {"experiments": found, "total_size": len(found)} if found else {}
        if (method, path) == ("POST", f"{base}/experiments"):
            experiment = {**body, "experiment_id": f"exp-{len(self.experiments) + 1}"}
            self.experiments.append(experiment)
            return 200, experiment
        if (method, path) == ("POST", f"{base}/recurringruns"):
            return 200, {**body, "recurring_run_id": "rr-1", "status": "ENABLED"}
        if (method, path) == ("POST", f"{base}/runs"):
            return 200, {**body, "run_id": "run-1", "state": "PENDING"}
        return 404, {"error": f"not served by the fake: {method} {path}", "code": 5}

    def __enter__(self) -> Self:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def posted(self, path_end: str) -> list[dict]:
        return [r for r in self.requests if r["method"] == "POST" and r["path"].endswith(path_end)]


def test_pipeline_submit_schedule_creates_a_cron_recurring_run(tmp_path: Path) -> None:
    package = tmp_path / "training.yaml"
    with FakeKfp() as kfp:
        done = kubeloop(
            "pipeline", "submit", "--host", kfp.url, "--package", str(package),
            "--schedule", "0 0 3 * * *", "--experiment", "retraining",
            "--run-name", "nightly", "--lake-uri", "s3://bucket/lake",
        )  # fmt: skip
        stdout = assert_ok(done)
        # An existing experiment is found by name, not created twice.
        again = kubeloop(
            "pipeline", "submit", "--host", kfp.url, "--package", str(package),
            "--schedule", "0 30 4 * * *", "--experiment", "retraining",
        )  # fmt: skip
        assert_ok(again)

    assert package.exists()  # compiled first, since it was missing
    assert json.loads(stdout[stdout.index("{") :]) == {
        "recurring_run_id": "rr-1",
        "experiment_id": "exp-1",
    }
    created = kfp.posted("/experiments")
    assert len(created) == 1 and created[0]["body"]["display_name"] == "retraining"
    assert created[0]["content_type"].startswith("application/json")

    first, second = (r["body"] for r in kfp.posted("/recurringruns"))
    assert first["trigger"]["cron_schedule"]["cron"] == "0 0 3 * * *"
    assert second["trigger"]["cron_schedule"]["cron"] == "0 30 4 * * *"
    assert first["experiment_id"] == second["experiment_id"] == "exp-1"
    assert first["display_name"] == "nightly" and first["mode"] == "ENABLE"
    assert first["service_account"] == "kubeloop-pipeline-runner"
    # With kfp-kubernetes settings (the S3 Secret as env) kfp.Client sends the pipeline spec
    # and its platform spec side by side.
    assert first["pipeline_spec"]["pipeline_spec"]["pipelineInfo"]["name"] == "kubeloop-training"
    assert "kubernetes" in first["pipeline_spec"]["platform_spec"]["platforms"]
    parameters = first["runtime_config"]["parameters"]
    assert parameters["lake_uri"] == "s3://bucket/lake"
    assert parameters["registry_uri"] == "/registry"


def test_pipeline_submit_without_schedule_creates_one_run(tmp_path: Path) -> None:
    with FakeKfp() as kfp:
        stdout = assert_ok(
            kubeloop(
                "pipeline",
                "submit",
                "--host",
                kfp.url,
                "--package",
                str(tmp_path / "p.yaml"),
                "--namespace",
                "team",
            )
        )
    assert json.loads(stdout[stdout.index("{") :]) == {"run_id": "run-1"}
    (run,) = kfp.posted("/runs")
    assert run["body"]["pipeline_spec"]["pipeline_spec"]["pipelineInfo"]["name"] == "kubeloop-training"
    assert "kubernetes" in run["body"]["pipeline_spec"]["platform_spec"]["platforms"]
    assert kfp.posted("/recurringruns") == []


# --------------------------------------------------------------------------- bad input


@pytest.fixture()
def empty_dir(tmp_path: Path) -> Path:
    (tmp_path / "file.txt").write_text("not a lake")
    return tmp_path


# Each command with input a user can get wrong: one line naming what is wrong, exit 2.
BAD_INPUT = [
    (["pipeline", "compile", "--out", "{d}/pkg.txt"], ["--out", ".yaml"]),
    (["pipeline", "compile", "--name", "nosuch", "--out", "{d}/p.yaml"], ["'nosuch'", "training"]),
    (["pipeline", "run"], ["--local"]),
    (["pipeline", "submit"], ["--host"]),
    (["data", "generate", "--lake", "{d}/lake", "--events", "-5"], ["--events"]),
    (["data", "validate", "--lake", "{d}/nolake"], ["{d}/nolake", "kubeloop data generate"]),
    (["data", "describe", "--lake", "{d}/nolake"], ["{d}/nolake"]),
    (["features", "build", "--lake", "{d}/file.txt", "--out", "{d}/f", "--no-progress"],
     ["{d}/file.txt"]),
    (["features", "training-set", "--repo", "{d}/norepo", "--lake", "{d}", "--out", "{d}/t"],
     ["{d}/norepo"]),
    (["models", "show", "ctr", "--registry", "{d}/reg"], ["'ctr'", "{d}/reg"]),
    (["models", "promote", "ctr", "v0009", "--registry", "{d}/reg"], ["'ctr'"]),
    (["demo", "--workdir", "{d}/w", "--events", "lots"], ["--events"]),
    (["demo", "--workdir", "{d}/w", "--config", "{d}/file.txt"], ["--config", "mapping"]),
    (["demo", "--workdir", "{d}/w", "--config", "{d}/none.yaml"], ["--config", "none.yaml"]),
    (["serve", "--workdir", "{d}/w"], ["production"]),
    (["canary", "set", "150", "--workdir", "{d}/w"], ["percent", "100"]),
    (["alerts", "--detector", "nosuch", "--workdir", "{d}"], ["--detector"]),
    (["features", "apply", "--repo", "{d}/r", "--features", "{d}/nofeatures"], ["{d}/nofeatures"]),
    (["features", "apply", "--repo", "{d}/r", "--features", "{d}", "--offline-store", "x"],
     ["--offline-store"]),
    (["features", "materialize", "--repo", "{d}/norepo"], ["{d}/norepo"]),
    (["features", "online", "--repo", "{d}/norepo", "--key", "user_id=1", "--key", "ad_id=1"],
     ["{d}/norepo"]),
    (["models", "export", "ctr", "latest", "{d}/out", "--registry", "{d}/reg"], ["'ctr'"]),
    (["canary", "promote", "--workdir", "{d}/w"], []),
    (["canary", "rollback", "--workdir", "{d}/w"], []),
    (["nosuch"], ["nosuch", "kubeloop --help"]),
]  # fmt: skip


def test_models_kinds_lists_the_ladder() -> None:
    rows = json.loads(assert_ok(kubeloop("models", "kinds", "--json")))
    assert [(r["kind"], r["rank"]) for r in rows] == [("logistic", 0), ("lightgbm", 1), ("torch", 2)]


@pytest.mark.parametrize(
    ("args", "needles"),
    BAD_INPUT,
    ids=[" ".join(a[:2]) + f"-{i}" for i, (a, _) in enumerate(BAD_INPUT)],
)
def test_bad_input_is_one_line_with_exit_2(
    empty_dir: Path, args, needles, capsys: pytest.CaptureFixture, monkeypatch
) -> None:
    """In-process through `main`, the console script's own entry point: one subprocess per
    case would cost seconds each for the imports alone."""
    from kubeloop.cli.main import main

    monkeypatch.chdir(empty_dir)
    d = str(empty_dir)
    with pytest.raises(SystemExit) as exited:
        main([a.replace("{d}", d) for a in args])
    captured = capsys.readouterr()
    done = subprocess.CompletedProcess(args, exited.value.code, captured.out, captured.err)
    assert_one_line_error(done, *(n.replace("{d}", d) for n in needles))


BOOM = """
import sys
from kubeloop.cli import main

@main.app.command("boom")
def boom() -> None:
    raise KeyError("a bug")

main.main(sys.argv[1:])
"""


@pytest.mark.parametrize("debug", [False, True])
def test_a_bug_is_one_line_and_the_traceback_one_variable_away(debug: bool) -> None:
    env = {**os.environ, "KUBELOOP_TRACEBACK": "1" if debug else ""}
    done = subprocess.run(
        [sys.executable, "-c", BOOM, "boom"], check=False, capture_output=True, text=True,
        timeout=60, env=env,
    )  # fmt: skip
    assert done.returncode == 1
    if debug:
        assert "Traceback" in done.stderr and "KeyError: 'a bug'" in done.stderr
    else:
        assert "Traceback" not in done.stderr
        (line,) = done.stderr.strip().splitlines()
        assert line.startswith("error: unexpected KeyError") and "KUBELOOP_TRACEBACK=1" in line


def test_a_corrupt_registry_is_named_in_one_line(tmp_path: Path) -> None:
    stages = tmp_path / "reg" / "stages"
    stages.mkdir(parents=True)
    (stages / "ctr.json").write_text("{not json")
    line = assert_one_line_error(
        kubeloop("models", "list", "--registry", str(tmp_path / "reg")), str(stages / "ctr.json")
    )
    assert "corrupt" in line


# --------------------------------------------------------------------------- demo and
# the commands that work on what it leaves: models, canary, alerts, serve


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess]:
    """`kubeloop demo` at the tiny size, once for the module: its run directory and result."""
    root = tmp_path_factory.mktemp("demo")
    config = root / "tiny.yaml"
    config.write_text(yaml.safe_dump(TINY_DEMO))
    workdir = root / "run"
    done = kubeloop(
        "demo", "--workdir", str(workdir), "--config", str(config), "--no-progress",
        cwd=root, timeout=600,
    )  # fmt: skip
    return workdir, done


@pytest.fixture()
def workdir(demo_run, tmp_path: Path) -> Path:
    """A private copy of the demo's run directory, for a command that changes it."""
    source, done = demo_run
    if done.returncode != 0:
        pytest.fail(f"the demo failed, rc={done.returncode}: {done.stderr[-2000:]}")
    copy = tmp_path / "run"
    shutil.copytree(source, copy)
    return copy


@pytest.mark.slow
def test_demo_runs_every_stage_and_writes_the_report(demo_run) -> None:
    workdir, done = demo_run
    stdout = assert_ok(done)
    assert f"report: {workdir / 'report.json'}" in stdout.replace("\n", "")
    report = json.loads((workdir / "report.json").read_text())
    assert SECTIONS <= set(report)
    # Quiet by default: a summary, not kfp.local's executor logs (those go to a file).
    assert "KFP Executor" not in stdout + done.stderr
    assert '"training"' not in stdout  # nor the whole report as JSON
    assert any(line.startswith("training: ") and "(champion)" in line for line in stdout.splitlines())
    assert "KFP Executor" in (workdir / "kfp_local" / "pipeline.log").read_text()
    assert report["run"]["complete"] is True and report["run"]["wall_seconds"] > 0
    assert report["data"]["events"] == 12_000 and report["data"]["partitions"] == 6
    assert report["features"]["training_rows"] > 0
    assert report["training"]["champion"] in report["training"]["models"]
    # the model ladder: logistic regression (rank 0) beside LightGBM and PyTorch
    ranks = {kind: m["rank"] for kind, m in report["training"]["models"].items()}
    assert ranks == {"logistic": 0, "lightgbm": 1, "torch": 2}
    assert report["registry"]["version"] == "v0001"
    serving = report["serving"]
    assert serving["primary_version"] == "v0001" and serving["requests"]["errors"] == 0
    assert sum(serving["requests"].values()) >= TINY_DEMO["serving"]["replay"]["requests"]
    drift = report["drift"]
    assert drift["replayed_impressions"] > 0
    assert any(w["evaluated"] > 0 for w in drift["windows"].values())
    for name in ("lake", "features", "feature_repo", "registry", "serving", "drift"):
        assert (workdir / name).exists(), name


@pytest.mark.slow
def test_models_list_show_promote_export(workdir: Path, tmp_path: Path) -> None:
    registry = str(workdir / "registry")
    listed = json.loads(assert_ok(kubeloop("models", "list", "--json", "--registry", registry)))
    # The first training's champion is production; a canary the demo's A/B rolled back
    # (there is one when a second rung passes the gate) is archived, never left staged.
    stages = {v["version"]: v["stage"] for v in listed}
    assert stages["v0001"] == "production"
    assert [v for v, st in stages.items() if st == "production"] == ["v0001"]
    assert set(stages.values()) <= {"production", "archived"}
    table = assert_ok(kubeloop("models", "list", "--registry", registry))
    assert "v0001" in table and "production" in table

    shown = json.loads(
        assert_ok(kubeloop("models", "show", "ctr", "production", "--json", "--registry", registry))
    )
    assert shown["version"] == "v0001" and shown["gate"]["passed"] is True

    dest = tmp_path / "export"
    assert_ok(kubeloop("models", "export", "ctr", "production", str(dest), "--registry", registry))
    assert (dest / "metadata.json").exists()
    assert json.loads((dest / "metadata.json").read_text())["version"] == "v0001"

    assert_ok(kubeloop("models", "promote", "ctr", "v0001", "--stage", "archived",
                       "--force", "--registry", registry))  # fmt: skip
    after = json.loads(assert_ok(kubeloop("models", "list", "--json", "--registry", registry)))
    assert after[0]["stage"] == "archived"


def _register_second(workdir: Path) -> str:
    """A second version of the demo's model (its files, its record) to be a canary."""
    from kubeloop.registry import RegistrationRequest, open_registry

    registry = open_registry(workdir / "registry")
    first = registry.get("ctr", "v0001")
    fields = first.model_dump(include=set(RegistrationRequest.model_fields) - {"model_file"})
    reference = registry.reference("ctr", "v0001")
    return registry.register("ctr", registry.model_path("ctr", "v0001"), fields, reference).version


@pytest.mark.slow
def test_canary_local_set_status_rollback_promote(workdir: Path) -> None:
    wd = str(workdir)

    def status() -> dict:
        return json.loads(assert_ok(kubeloop("canary", "status", "--json", "--workdir", wd)))

    assert status()["rollout"]["primary_version"] == "v0001"
    second = _register_second(workdir)

    out = assert_ok(kubeloop("canary", "set", "20", "--version", second, "--workdir", wd))
    assert second in out and "20" in out
    rollout = status()["rollout"]
    assert (rollout["canary_version"], rollout["canary_percent"]) == (second, 20)
    assert "not running" in assert_ok(kubeloop("canary", "status", "--workdir", wd))

    assert_ok(kubeloop("canary", "rollback", "--workdir", wd, "--reason", "test"))
    assert status()["rollout"]["canary_version"] is None

    assert_ok(kubeloop("canary", "set", "50", "--version", second, "--workdir", wd))
    assert_ok(kubeloop("canary", "promote", "--workdir", wd))
    rollout = status()["rollout"]
    assert rollout["primary_version"] == second and rollout["canary_version"] is None
    shown = json.loads(
        assert_ok(
            kubeloop(
                "models",
                "show",
                "ctr",
                "production",
                "--json",
                "--registry",
                str(workdir / "registry"),
            )
        )
    )
    assert shown["version"] == second


def _alert(workdir: Path) -> None:
    from datetime import UTC, datetime, timedelta

    from kubeloop.cli.alerts import default_store
    from kubeloop.drift.alerts import Alert, AlertWindow, open_alert_store

    start = datetime(2026, 1, 9, tzinfo=UTC)
    alert = Alert(
        id="a1", time=datetime.now(UTC), model="ctr", version="v0001", variant="primary",
        revision="ctr-predictor-00001", detector="feature", statistic=0.4, p_value=1e-6,
        threshold=0.01, features=["device", "user_country"],
        window=AlertWindow(start=start, end=start + timedelta(hours=6), n=800),
        severity="critical",
    )  # fmt: skip
    with open_alert_store(default_store(workdir)) as store:
        store.add(alert)


@pytest.mark.slow
def test_alerts_lists_the_stores_alerts(workdir: Path) -> None:
    wd = str(workdir)
    before = json.loads(assert_ok(kubeloop("alerts", "--json", "--workdir", wd)))
    _alert(workdir)
    after = json.loads(assert_ok(kubeloop("alerts", "--json", "--workdir", wd)))
    assert len(after) == len(before) + 1
    new = next(a for a in after if a["id"] == "a1")
    assert new["variant"] == "primary" and new["revision"] == "ctr-predictor-00001"
    table = assert_ok(kubeloop("alerts", "--workdir", wd, "--detector", "feature"))
    assert "ctr-predictor-00001" in table and "device" in table
    assert json.loads(
        assert_ok(kubeloop("alerts", "--json", "--workdir", wd, "--variant", "canary"))
    ) == [a for a in before if a["variant"] == "canary"]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class _Lines:
    """The lines a child process prints, collected by a thread, waited for by content."""

    def __init__(self, stream) -> None:
        self.lines: list[str] = []
        self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._thread.start()

    def _read(self, stream) -> None:
        for line in stream:
            self.lines.append(line.rstrip("\n"))

    def wait_for(self, text: str, timeout: float, proc: subprocess.Popen) -> None:
        deadline = time.monotonic() + timeout
        while not any(text in line for line in self.lines):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"no {text!r} (rc={proc.poll()}):\n" + "\n".join(self.lines))
            time.sleep(0.1)

    def after(self, prefix: str) -> str:
        return next(line for line in self.lines if line.strip().startswith(prefix)).strip()

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)


@pytest.mark.slow
def test_serve_answers_the_printed_example_and_stops_on_ctrl_c(workdir: Path) -> None:
    port = _free_port()
    proc = subprocess.Popen(
        [KUBELOOP, "serve", "--workdir", str(workdir), "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "COLUMNS": "200"},
    )
    out = _Lines(proc.stdout)
    try:
        out.wait_for("Ctrl+C to stop.", timeout=180, proc=proc)
        endpoint = out.after("endpoint").split()[-1]
        assert endpoint == f"http://127.0.0.1:{port}/v1/models/ctr:predict"
        # The curl example it prints, sent as printed.
        curl = out.after("curl ")
        body = curl[curl.index("-d '") + 4 : curl.rindex("'")]
        request = urllib.request.Request(
            endpoint, data=body.encode(), headers={"content-type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=30) as answer:
            assert answer.status == 200
            predictions = json.loads(answer.read())["predictions"]
        assert len(predictions) == len(json.loads(body)["instances"])
        assert all(0.0 < float(p) < 1.0 for p in predictions)
    finally:
        proc.send_signal(signal.SIGINT)  # what Ctrl+C sends
        rc = proc.wait(timeout=60)
        out.join(timeout=10)
    assert rc == 0, "\n".join(out.lines)
    assert "stopped." in out.lines
    assert not any("Traceback" in line for line in out.lines)
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=2):
        pass  # nothing listens any more


@pytest.mark.slow
def test_pipeline_run_local_trains_gates_and_registers(workdir: Path) -> None:
    from kubeloop.registry import open_registry

    before = [v.version for v in open_registry(workdir / "registry").list("ctr")]
    done = kubeloop("pipeline", "run", "--local", "--workdir", str(workdir), timeout=600)
    stdout = assert_ok(done)
    # kfp.local logs each task's outputs to stdout too; the command's JSON comes last.
    result = json.loads(stdout[stdout.rindex('{\n  "decision"') :])
    decision = result["decision"]
    assert decision["champion"] in {"logistic", "lightgbm", "torch"} and decision["reasons"]
    assert result["seconds"] > 0

    versions = [v.version for v in open_registry(workdir / "registry").list("ctr")]
    # A passed gate registers the champion as the next version; a failed one registers nothing.
    following = f"v{len(before) + 1:04d}"
    assert versions == ([*before, following] if decision["passed"] else before)
    runs = [p for p in (workdir / "kfp_local").iterdir() if p.is_dir()]  # not pipeline.log
    assert len(runs) == 2  # the demo's run and this one
