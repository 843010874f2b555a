"""Alert stores: round trip and filters, idempotent ids, store URLs, and concurrent writers
(several processes on one SQLite file; threads and processes on PostgreSQL under the
postgres marker, in a table of its own that is dropped afterwards)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from kubeloop.drift.alerts import (
    Alert,
    AlertStoreError,
    AlertWindow,
    PostgresAlertStore,
    SQLiteAlertStore,
    open_alert_store,
    parse_since,
)
from kubeloop.drift.backends import (
    DriftConfigError,
    PostgresAlertStoreConfig,
    SQLiteAlertStoreConfig,
    alert_store_config_from_url,
)

NOW = datetime(2026, 1, 20, 12, 0, tzinfo=UTC)
REPO = Path(__file__).resolve().parents[1]


def make_alert(i: int, *, variant="primary", detector="feature", when=NOW, model="ctr") -> Alert:
    start = datetime(2026, 1, 15, tzinfo=UTC) + timedelta(hours=i)
    return Alert(
        id=Alert.make_id(model, "v0001", variant, detector, i, start),
        time=when,
        model=model,
        version="v0001",
        variant=variant,
        detector=detector,
        statistic=0.2,
        p_value=1e-9,
        threshold=4.5e-8,
        features=["device", "user_country"],
        window=AlertWindow(start=start, end=start + timedelta(minutes=50), n=2000, index=i),
        severity="critical",
        details={"p_values": {"device": 1e-9}, "ratio": float("inf")},
    )


def check_round_trip(store) -> None:
    alerts = [
        make_alert(0, when=NOW - timedelta(hours=3)),
        make_alert(1, variant="canary", when=NOW - timedelta(minutes=30)),
        make_alert(2, detector="performance", when=NOW - timedelta(minutes=10)),
    ]
    assert [store.add(a) for a in alerts] == [True, True, True]
    assert store.add(alerts[0]) is False  # the same window again: stored once
    assert store.count() == 3
    listed = store.list()
    assert [a.id for a in listed] == [a.id for a in alerts]  # oldest first
    got = listed[0]
    assert got.features == ["device", "user_country"] and got.window == alerts[0].window
    assert got.details["p_values"] == {"device": 1e-9}
    assert got.details["ratio"] == "inf"  # JSON has no infinity: kept as text
    assert got.time == alerts[0].time
    assert store.count(since=NOW - timedelta(hours=1)) == 2
    assert [a.variant for a in store.list(variant="canary")] == ["canary"]
    assert [a.detector for a in store.list(detector="performance")] == ["performance"]
    assert store.count(model="other") == 0
    assert [a.id for a in store.list(limit=1)] == [alerts[2].id]


def test_sqlite_round_trip_and_filters(tmp_path):
    with SQLiteAlertStore(tmp_path / "a" / "alerts.db") as store:
        check_round_trip(store)


WRITER = textwrap.dedent(
    """
    import sys
    from datetime import UTC, datetime, timedelta
    from kubeloop.drift.alerts import Alert, AlertWindow, open_alert_store

    url, worker, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    store = open_alert_store(url)
    for i in range(n):
        start = datetime(2026, 1, 1, tzinfo=UTC) + timedelta(minutes=i)
        variant = f"w{worker}"
        store.add(Alert(
            id=Alert.make_id("ctr", "v1", variant, "feature", i, start),
            time=datetime.now(UTC), model="ctr", version="v1", variant=variant,
            detector="feature", statistic=0.1, p_value=1e-7, threshold=1e-6,
            window=AlertWindow(start=start, end=start, n=10, index=i)))
        store.count(variant=variant)  # readers interleave with the writers
    store.close()
    """
)


def run_writers(url: str, workers: int, per_worker: int) -> None:
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, url, str(w), str(per_worker)],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for w in range(workers)
    ]
    for p in procs:
        _, err = p.communicate(timeout=60)
        assert p.returncode == 0, err


def test_sqlite_survives_concurrent_writer_processes(tmp_path):
    url = f"sqlite:///{tmp_path / 'alerts.db'}"
    run_writers(url, workers=4, per_worker=60)
    with open_alert_store(url) as store:
        assert store.count() == 240
        assert {store.count(variant=f"w{w}") for w in range(4)} == {60}
    mode = __import__("sqlite3").connect(tmp_path / "alerts.db").execute("PRAGMA journal_mode")
    assert mode.fetchone()[0] == "wal"


def test_store_urls(tmp_path):
    cfg = alert_store_config_from_url("sqlite:////var/lib/drift/alerts.db")
    assert isinstance(cfg, SQLiteAlertStoreConfig) and cfg.path == Path("/var/lib/drift/alerts.db")
    assert alert_store_config_from_url("sqlite:///rel/x.db").path == Path("rel/x.db")
    with pytest.raises(DriftConfigError, match="names no file"):
        alert_store_config_from_url("sqlite://")
    assert alert_store_config_from_url("runs/demo/drift/alerts.db").path == Path(
        "runs/demo/drift/alerts.db"
    )
    pg = alert_store_config_from_url(
        "postgresql://postgres@127.0.0.1:5432/test?sslmode=disable&table=t1&schema=drift"
    )
    assert isinstance(pg, PostgresAlertStoreConfig)
    assert (pg.table, pg.db_schema) == ("t1", "drift")
    assert pg.dsn == "postgresql://postgres@127.0.0.1:5432/test?sslmode=disable"
    with pytest.raises(DriftConfigError, match="unsupported alert store URL scheme 'mysql'"):
        alert_store_config_from_url("mysql://x/y")
    with pytest.raises(AlertStoreError, match="invalid PostgreSQL identifier"):
        PostgresAlertStore(PostgresAlertStoreConfig(dsn="postgresql://x/y", table="bad-name"))


def test_parse_since():
    assert parse_since("90m", now=NOW) == NOW - timedelta(minutes=90)
    assert parse_since("2d", now=NOW) == NOW - timedelta(days=2)
    assert parse_since("2026-01-20T10:00:00Z") == datetime(2026, 1, 20, 10, tzinfo=UTC)
    assert parse_since(None) is None
    with pytest.raises(AlertStoreError, match="--since"):
        parse_since("yesterday")


def test_cli_lists_alerts_as_json_and_table(tmp_path):
    from typer.testing import CliRunner

    from kubeloop.cli.main import app

    store_path = tmp_path / "demo" / "drift" / "alerts.db"
    with SQLiteAlertStore(store_path) as store:
        store.add(make_alert(0, when=datetime.now(UTC) - timedelta(hours=3)))
        store.add(make_alert(1, variant="canary", when=datetime.now(UTC)))
    runner = CliRunner()
    result = runner.invoke(
        app, ["alerts", "--workdir", str(tmp_path / "demo"), "--since", "1h", "--json"]
    )
    assert result.exit_code == 0, result.output
    data = __import__("json").loads(result.output)
    assert [a["variant"] for a in data] == ["canary"]
    table = runner.invoke(
        app, ["alerts", "--store", f"sqlite:///{store_path}", "--variant", "primary"]
    )
    assert table.exit_code == 0 and "user_country" in table.output and "canary" not in table.output
    empty = runner.invoke(app, ["alerts", "--workdir", str(tmp_path / "none")])
    assert empty.exit_code == 0 and "no drift alerts" in empty.output


@pytest.fixture
def pg_store(postgres_dsn):
    table = f"drift_alerts_test_{uuid.uuid4().hex[:12]}"
    url = f"{postgres_dsn}?table={table}"
    store = open_alert_store(url)
    try:
        yield store, url
    finally:
        store.drop()
        store.close()


@pytest.mark.postgres
def test_postgres_round_trip(pg_store):
    store, _ = pg_store
    check_round_trip(store)


@pytest.mark.postgres
def test_postgres_concurrent_writers(pg_store):
    store, url = pg_store
    run_writers(url, workers=3, per_worker=40)
    errors: list[BaseException] = []

    def thread_writer(k: int) -> None:
        try:
            for i in range(20):
                store.add(make_alert(1000 + 100 * k + i, variant=f"t{k}"))
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=thread_writer, args=(k,)) for k in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert store.count() == 3 * 40 + 3 * 20
