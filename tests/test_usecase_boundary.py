"""The use-case seam: the engine knows no use case by its columns, and a second use case,
defined only here, runs through the engine's stages without an edit to kubeloop/.

The tiny use case is card-transaction fraud on a real (hand-written) Parquet lake: its own
entities (`card`, `merchant`), label (`is_fraud`), request context (`amount_band`,
`channel`), no oracle column and no generator. Its lake goes through validation, the ETL
(its own SQL), Feast apply + materialize + online lookup, the point-in-time training set,
the shared transform, the protocol's request fields, evaluation and the CLI with
`--use-case` (the name resolved through a `kubeloop.usecases` entry point)."""

from __future__ import annotations

import re
import runpy
from datetime import UTC, date, datetime, timedelta
from importlib import metadata
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from kubeloop import plugins
from kubeloop.errors import LakeError
from kubeloop.usecase import (
    FEATURE_TIMESTAMP,
    TIMESTAMP,
    Defaults,
    EntitySpec,
    EventSchema,
    LakeSource,
    MetricsSpec,
    TransformRules,
    UseCase,
    UseCaseError,
)

REPO = Path(__file__).resolve().parents[1]
CTR_COLUMNS = ("ad_id", "slot_position", "true_ctr", "user_ctr_1d")


# --- the engine names no CTR column ---------------------------------------------------


def _engine_text_files() -> list[Path]:
    out = []
    for path in sorted((REPO / "kubeloop").rglob("*")):
        if not path.is_file() or "__pycache__" in path.parts:
            continue
        try:
            path.read_text()
        except UnicodeDecodeError:
            continue  # not a text file
        out.append(path)
    return out


def test_engine_contains_no_ctr_column_name():
    # Whole identifiers only: `bad_id` is not `ad_id`.
    pattern = re.compile(r"\b(" + "|".join(CTR_COLUMNS) + r")\b")
    files = _engine_text_files()
    assert len(files) > 50  # the scan really reads the engine
    hits = [
        f"{path.relative_to(REPO)}:{n}: {line.strip()}"
        for path in files
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if pattern.search(line)
    ]
    assert hits == [], "CTR columns belong in usecases/ctr/:\n" + "\n".join(hits)


def test_the_scan_would_see_a_ctr_column(tmp_path):
    # The pattern itself finds each name (so an empty result above means something).
    pattern = re.compile(r"\b(" + "|".join(CTR_COLUMNS) + r")\b")
    for name in CTR_COLUMNS:
        assert pattern.search(f'frame["{name}"]')
    assert not pattern.search('raise BadEventError("bad_id", ...)')


def test_every_image_ships_every_package():
    """A use case is found by name inside the images too (KFP components, servers, drift
    detector): each Dockerfile that installs the project copies every package that
    pyproject.toml's package discovery includes."""
    import tomllib

    config = tomllib.loads((REPO / "pyproject.toml").read_text())
    packages = [p.rstrip("*") for p in config["tool"]["setuptools"]["packages"]["find"]["include"]]
    assert "usecases" in packages
    dockerfiles = sorted((REPO / "images").glob("*.Dockerfile"))
    assert dockerfiles
    for path in dockerfiles:
        text = path.read_text()
        if "pip install --no-deps ." not in text:
            continue
        missing = [p for p in packages if f"COPY {p} ./{p}" not in text]
        assert missing == [], f"{path.name} does not copy {missing}"


# --- a second use case, defined here ---------------------------------------------------

EVENTS = pa.schema(
    [
        ("event_id", pa.int64()),
        ("event_timestamp", TIMESTAMP),
        ("card_id", pa.int64()),
        ("merchant_id", pa.int64()),
        ("merchant_category", pa.string()),
        ("amount_band", pa.int64()),
        ("channel", pa.string()),
        ("is_fraud", pa.int64()),
    ]
)
CARD_SCHEMA = pa.schema(
    [
        ("card_id", pa.int64()),
        (FEATURE_TIMESTAMP, TIMESTAMP),
        ("card_txns_1h", pa.int64()),
        ("card_fraud_rate_1h", pa.float64()),
    ]
)
MERCHANT_SCHEMA = pa.schema(
    [
        ("merchant_id", pa.int64()),
        (FEATURE_TIMESTAMP, TIMESTAMP),
        ("merchant_category", pa.string()),
        ("merchant_txns_1h", pa.int64()),
    ]
)
# One row per entity and hour with events, stamped at the hour's end: it summarises only
# events strictly before its timestamp.
CARD_SQL = """
SELECT
    card_id,
    date_trunc('hour', event_timestamp) + INTERVAL 1 HOUR AS feature_timestamp,
    CAST(count(*) AS BIGINT) AS card_txns_1h,
    (sum(is_fraud) + $prior_positives) / (count(*) + $prior_strength) AS card_fraud_rate_1h
FROM events
GROUP BY card_id, date_trunc('hour', event_timestamp)
ORDER BY card_id, feature_timestamp
"""
MERCHANT_SQL = """
SELECT
    merchant_id,
    date_trunc('hour', event_timestamp) + INTERVAL 1 HOUR AS feature_timestamp,
    arg_max(merchant_category, (event_timestamp, event_id)) AS merchant_category,
    CAST(count(*) AS BIGINT) AS merchant_txns_1h
FROM events
GROUP BY merchant_id, date_trunc('hour', event_timestamp)
ORDER BY merchant_id, feature_timestamp
"""


def make_use_case(lake: str) -> UseCase:
    """The fraud use case over the lake at `lake`."""
    return UseCase(
        name="tiny_fraud",
        description="Card fraud on a hand-written lake (tests only).",
        events=EventSchema(
            columns=EVENTS,
            entity_keys=("card_id", "merchant_id"),
            label="is_fraud",
            oracle=None,
            context_numeric=("amount_band",),
            context_categorical=("channel",),
            context_ranges={"amount_band": (0, 9)},
        ),
        entities=(
            EntitySpec("card", "card_id", "card_stats", CARD_SCHEMA, CARD_SQL, "A card."),
            EntitySpec("merchant", "merchant_id", "merchant_stats", MERCHANT_SCHEMA, MERCHANT_SQL),
        ),
        feature_service="fraud_model",
        transform=TransformRules(
            categorical=("channel", "merchant_category"),
            numeric=(("*_txns_*", "log1p"), ("*_rate_*", "rate")),
            crosses=(("channel", "merchant_category"),),
        ),
        source=LakeSource(lake),
        defaults=Defaults(model_name="fraud"),
        metrics=MetricsSpec(slices=("channel",), seen_entities=("merchant",)),
    )


START = date(2025, 3, 1)
DAYS = 4


def fraud_events(n_per_day: int = 60, seed: int = 3) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for d in range(DAYS):
        midnight = datetime.combine(START + timedelta(days=d), datetime.min.time(), UTC)
        for _ in range(n_per_day):
            merchant = int(rng.integers(0, 5))
            channel = ("web", "pos")[int(rng.integers(0, 2))]
            rows.append(
                {
                    "event_timestamp": midnight + timedelta(seconds=int(rng.integers(0, 86_400))),
                    "card_id": int(rng.integers(0, 12)),
                    "merchant_id": merchant,
                    "merchant_category": ("food", "travel", "games")[merchant % 3],
                    "amount_band": int(rng.integers(0, 10)),
                    "channel": channel,
                    "is_fraud": int(rng.random() < (0.4 if channel == "web" else 0.1)),
                }
            )
    frame = pd.DataFrame(rows).sort_values("event_timestamp", ignore_index=True)
    frame.insert(0, "event_id", np.arange(len(frame), dtype=np.int64))
    return frame


def write_fraud_lake(root: Path, events: pd.DataFrame) -> Path:
    """The lake in the engine's layout, written by the engine's own writer."""
    from kubeloop.data.lake import resolve, write_day

    fs, inner = resolve(str(root))
    days = events["event_timestamp"].dt.date
    for day in sorted(days.unique()):
        table = pa.Table.from_pandas(events[days == day], schema=EVENTS, preserve_index=False)
        write_day(fs, f"{inner}/events", day, [table], schema=EVENTS)
    return root


@pytest.fixture(scope="module")
def fraud(tmp_path_factory):
    root = tmp_path_factory.mktemp("fraud")
    events = fraud_events()
    lake = write_fraud_lake(root / "lake", events)
    return make_use_case(str(lake)), events, root


def test_a_use_case_spec_checks_itself():
    with pytest.raises(UseCaseError, match="lacks the columns"):
        EventSchema(columns=EVENTS, entity_keys=("card_id",), label="chargeback")
    with pytest.raises(UseCaseError, match="context_ranges"):
        EventSchema(
            columns=EVENTS,
            entity_keys=("card_id",),
            label="is_fraud",
            context_numeric=("amount_band",),
        )
    with pytest.raises(UseCaseError, match="feature_schema must start"):
        EntitySpec("card", "card_id", "card_stats", MERCHANT_SCHEMA, CARD_SQL)
    with pytest.raises(UseCaseError, match="generator"):
        _ = make_use_case("/nowhere").synthetic


def test_second_use_case_runs_validation_etl_feast_and_training_set(fraud, registered, tmp_path):
    from kubeloop.data.validate import validate_lake
    from kubeloop.evaluation.metrics import evaluate_frame
    from kubeloop.features.build import FeatureBuildConfig, build_features
    from kubeloop.features.materialize import materialize
    from kubeloop.features.online import online_features
    from kubeloop.features.store import (
        FeatureStoreSettings,
        apply_definitions,
        open_store,
        write_repo,
    )
    from kubeloop.features.training_set import build_training_set
    from kubeloop.serving.protocol import client_fields, model_fields
    from kubeloop.training.model_kind import model_kind
    from kubeloop.training.split import time_split
    from kubeloop.training.transform import FeatureTransform

    use_case, events, _ = fraud
    lake = use_case.source.path

    manifest = validate_lake(lake, use_case=use_case)
    assert manifest.rows == len(events) and len(manifest.days) == DAYS

    features = tmp_path / "features"
    config = FeatureBuildConfig(ctr_prior=0.2, prior_strength=2.0, threads=1, memory_limit="256MB")
    built = build_features(lake, features, config, progress=False, use_case=use_case)
    assert sorted(p.name for p in features.iterdir()) == [
        "card_stats.parquet",
        "merchant_stats.parquet",
    ]
    cards = pq.read_table(features / "card_stats.parquet")
    assert cards.schema.remove_metadata().equals(CARD_SCHEMA)
    assert built.rows == {"card": cards.num_rows, "merchant": built.rows["merchant"]}
    # The use case's SQL ran: one card's first row counts its events of that hour.
    first = cards.to_pandas().sort_values(["card_id", FEATURE_TIMESTAMP]).iloc[0]
    hour_end = first[FEATURE_TIMESTAMP]
    mine = events[
        (events["card_id"] == first["card_id"])
        & (events["event_timestamp"] < hour_end)
        & (events["event_timestamp"] >= hour_end - pd.Timedelta(hours=1))
    ]
    assert first["card_txns_1h"] == len(mine)
    assert first["card_fraud_rate_1h"] == pytest.approx(
        (mine["is_fraud"].sum() + 0.4) / (len(mine) + 2)
    )

    repo = tmp_path / "repo"
    write_repo(repo, FeatureStoreSettings(offline_store="asof"), features, use_case=use_case.name)
    # The generated module that `feast -c repo apply` imports builds the same objects (it
    # names the use case, resolved through its entry point: the `registered` fixture).
    module = runpy.run_path(str(repo / "kubeloop_definitions.py"))
    assert {"card", "merchant", "card_stats", "merchant_stats", "fraud_model"} <= set(module)
    store = open_store(repo)
    objects = apply_definitions(store, features, use_case=use_case)
    assert [o.name for o in objects] == [
        "card",
        "merchant",
        "card_stats",
        "merchant_stats",
        "fraud_model",
    ]
    loaded = materialize(store, progress=False, use_case=use_case)
    assert loaded.entities == {"card": 12, "merchant": 5}

    online = online_features(store, [{"card_id": 1, "merchant_id": 2}], use_case=use_case)
    assert list(online.columns) == [
        "card_id", "merchant_id", "card_txns_1h", "card_fraud_rate_1h",
        "merchant_category", "merchant_txns_1h",
    ]  # fmt: skip
    assert online["merchant_category"].iloc[0] == "games"

    out = tmp_path / "training.parquet"
    summary = build_training_set(store, lake, out, progress=False, use_case=use_case)
    frame = pd.read_parquet(out)
    assert summary.rows == len(events) and list(frame.columns) == use_case.training_columns
    # Point in time: an event never sees its own hour (features come from earlier hours).
    assert frame["card_txns_1h"].isna().any()
    assert (
        frame.groupby("event_id")["is_fraud"].first() == events.set_index("event_id")["is_fraud"]
    ).all()

    train, valid, holdout = time_split(frame, 0.2, 0.25)
    transform = FeatureTransform.fit(train, use_case=use_case)
    assert transform.label == "is_fraud" and transform.cyclic_hours == []
    assert transform.numeric_rules["card_txns_1h"].kind == "log1p"
    assert transform.numeric_rules["card_fraud_rate_1h"].kind == "rate"
    assert "channel_x_merchant_category" in transform.categorical_names
    batch = transform.transform(holdout)
    assert batch.numeric.shape[0] == len(holdout) and np.isfinite(batch.numeric).all()

    assert client_fields(use_case).names == ["card_id", "merchant_id", "amount_band", "channel"]
    assert model_fields(use_case).names == use_case.model_input_columns()

    # The first rung of the ladder trains on it unchanged (the label comes with the transform).
    model = model_kind("logistic").train(train, valid, None, transform)
    report = evaluate_frame(holdout, model.predict_proba(holdout), train, use_case=use_case)
    assert report.n == len(holdout) and report.auc is not None
    assert report.oracle_auc is None and set(report.slices) == {"channel", "merchant"}


def test_a_bad_lake_is_reported_against_the_use_cases_schema(fraud, tmp_path):
    from kubeloop.data.validate import validate_lake

    use_case, events, _ = fraud
    broken = write_fraud_lake(tmp_path / "lake", events.iloc[:30])
    part = next((broken / "events").rglob("*.parquet"))
    pq.write_table(pq.read_table(part).drop(["channel"]), part)
    with pytest.raises(LakeError, match="channel"):
        validate_lake(str(broken), use_case=use_case)
    # The default (ctr) use case rejects this lake too: it is not an impression log.
    with pytest.raises(LakeError):
        validate_lake(use_case.source.path)


@pytest.fixture
def registered(fraud, monkeypatch):
    """The fraud use case under the name `tiny_fraud`, as an installed entry point would
    declare it (module-level object: `make_use_case` over the fixture's lake)."""
    use_case, _, _ = fraud
    monkeypatch.setitem(globals(), "TINY_FRAUD", use_case)
    original = plugins._entry_points
    declared = dict(original(plugins.USECASES))
    declared["tiny_fraud"] = metadata.EntryPoint(
        name="tiny_fraud", value=f"{__name__}:TINY_FRAUD", group="kubeloop.usecases"
    )

    def entry_points(group):
        return declared if group is plugins.USECASES else original(group)

    monkeypatch.setattr(plugins, "_entry_points", entry_points)
    plugins.load.cache_clear()
    yield use_case
    plugins.load.cache_clear()


def test_commands_take_the_use_case_by_name(registered, tmp_path, capsys):
    from kubeloop.cli.main import app
    from kubeloop.usecase import load_use_case

    assert load_use_case("tiny_fraud") is registered
    lake = registered.source.path
    runner = CliRunner()
    result = runner.invoke(app, ["data", "validate", "--lake", lake, "--use-case", "tiny_fraud"])
    assert result.exit_code == 0, result.output
    assert "is valid" in result.output
    # Without --lake, the lake the use case names (its LakeSource).
    result = runner.invoke(app, ["data", "validate", "--use-case", "tiny_fraud"])
    assert result.exit_code == 0 and f"lake {lake} is valid" in result.output, result.output
    out = tmp_path / "features"
    result = runner.invoke(
        app,
        ["features", "build", "--lake", lake, "--out", str(out), "--use-case", "tiny_fraud",
         "--no-progress", "--threads", "1", "--memory-limit", "256MB"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "card feature rows" in result.output and (out / "merchant_stats.parquet").exists()
    result = runner.invoke(app, ["data", "describe", "--lake", lake, "--use-case", "tiny_fraud"])
    assert result.exit_code == 0, result.output
    assert "is_fraud rate" in result.output
    result = runner.invoke(app, ["usecases"])
    assert "tiny_fraud: Card fraud" in result.output and "ctr (default)" in result.output
    # A synthetic-only command says so in one line (through `main`, the console script).
    lines = _main_error(
        ["data", "generate", "--lake", str(tmp_path / "x"), "--use-case", "tiny_fraud"], capsys
    )
    assert len(lines) == 1 and "no generator" in lines[0]
    # A generated use case has no lake of its own to default to.
    lines = _main_error(["data", "validate"], capsys)
    assert len(lines) == 1 and "--lake is required" in lines[0]


def test_pipeline_steps_resolve_the_use_case_by_name(registered, tmp_path):
    """What each KFP component does, with the use case as its string parameter."""
    from kubeloop.pipeline import steps
    from kubeloop.pipeline.params import TrainingRunParams
    from kubeloop.workdir import Workdir

    params = TrainingRunParams.for_workdir(Workdir.at(tmp_path / "run"), use_case="tiny_fraud")
    assert params.lake_uri == registered.source.path  # a LakeSource is read where it is
    assert params.model_name == "fraud" and params.arguments()["use_case"] == "tiny_fraud"

    name, out = "tiny_fraud", tmp_path / "steps"
    lake = steps.ingest_step(params.lake_uri, "{}", False, str(out / "data.json"), name)
    features = steps.features_step(
        lake,
        str(out / "features"),
        str(out / "repo"),
        '{"store": {"offline_store": "asof"}, "progress": false}',
        str(out / "training.parquet"),
        str(out / "features.json"),
        name,
    )
    assert features["feature_views"] == ["card_stats", "merchant_stats"]
    trained = steps.train_step(
        "logistic", str(out / "training.parquet"), "{}", str(out / "m"), name
    )
    assert trained["kind"] == "logistic"
    flat = steps.evaluate_step(
        str(out / "training.parquet"),
        {"logistic": str(out / "m")},
        str(out / "registry"),
        "",
        "{}",
        str(out / "eval"),
        name,
    )
    assert "logistic_auc" in flat and "oracle_auc" not in flat  # no oracle column
    assert (out / "eval" / "roc.png").exists()
    _, champion = steps.gate_step(str(out / "eval"), "{}", str(out / "decision.json"), name)
    assert champion == "logistic"


def _main_error(argv: list[str], capsys) -> list[str]:
    from kubeloop.cli.main import main

    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2
    return capsys.readouterr().err.strip().splitlines()


def test_an_unknown_use_case_is_one_line(tmp_path, capsys):
    lines = _main_error(["data", "validate", "--lake", str(tmp_path), "--use-case", "nope"], capsys)
    assert len(lines) == 1 and "unknown use case 'nope'; known: ctr" in lines[0]


def test_default_model_name_is_the_default_use_cases_model():
    # Serving and rollout commands default to DEFAULT_MODEL_NAME without loading a plug-in;
    # it must stay the model the default use case trains, or `kubeloop canary status`
    # would look for a model the demo never registered.
    from kubeloop.usecase import DEFAULT_MODEL_NAME, DEFAULT_USE_CASE, load_use_case

    assert load_use_case(DEFAULT_USE_CASE).defaults.model_name == DEFAULT_MODEL_NAME
