"""Model registry: metadata round trip, version order, stage rules, atomic registration,
stage changes and exports, the backend factory and the `kubeloop models` commands."""

from __future__ import annotations

import json
import random
import shutil
import tempfile
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from kubeloop.errors import KubeloopError
from kubeloop.registry import (
    BentoMLRegistryConfig,
    ModelVersion,
    RegistrationRequest,
    RegistryError,
    Stage,
    make_registry,
    open_registry,
    plan_stage_change,
    registry_summary,
)
from kubeloop.registry.bentoml_store import BentoMLRegistry
from kubeloop.registry.records import detect_code_version

FEATURES = ["hour", "device", "user_ctr_7d"]


@pytest.fixture(autouse=True)
def _isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Private temp dir (BentoML stages models there) and HOME, so a test can check that
    nothing is left behind or written outside the registry."""
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("KUBELOOP_REGISTRY", raising=False)
    return tmp


def _model_dir(root: Path, kind: str = "lightgbm", payload: str = "tree 0") -> Path:
    root.mkdir(parents=True)
    if kind == "lightgbm":
        (root / "model.txt").write_text(payload)
    else:
        (root / "model.pt").write_bytes(payload.encode())
    (root / "model.json").write_text(json.dumps({"kind": kind}))
    (root / "transform.json").write_text("{}")
    return root


def _request(**overrides) -> RegistrationRequest:
    fields = {
        "model_kind": "lightgbm",
        "metrics": {"auc": 0.7312, "normalized_entropy": 0.8841, "log_loss": 0.41},
        "gate": {"passed": True, "reasons": ["NE 0.8841 beats production 0.8900."]},
        "feature_service": "ctr_model",
        "features": FEATURES,
        "training_window": {"start": "2024-03-01T00:00:00Z", "end": "2024-03-15T00:00:00Z"},
        "data_scenario": "baseline",
        "code_version": "abc123",
        "pipeline_run_id": "run-42",
        "params": {"num_leaves": 31},
    }
    fields.update(overrides)
    return RegistrationRequest.model_validate(fields)


def _reference(n: int = 5) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "hour": list(range(n)),
            "device": ["mobile", "desktop", "tablet", "mobile", "desktop"][:n],
            "user_ctr_7d": [0.01 * i for i in range(n)],
            "event_timestamp": pd.date_range("2024-03-01", periods=n, freq="h", tz="UTC"),
        }
    )


@pytest.fixture()
def registry(tmp_path: Path) -> BentoMLRegistry:
    return BentoMLRegistry.at(tmp_path / "registry")


def _register(registry, tmp_path: Path, tag: str = "a", **overrides) -> ModelVersion:
    kind = overrides.get("model_kind", "lightgbm")
    model_dir = _model_dir(tmp_path / f"model-{tag}", kind=kind, payload=f"model {tag}")
    return registry.register("ctr", model_dir, _request(**overrides), reference=_reference())


def _snapshot(root: Path) -> dict[str, bytes | None]:
    if not root.exists():
        return {}
    return {
        p.relative_to(root).as_posix(): p.read_bytes() if p.is_file() else None
        for p in sorted(root.rglob("*"))
        if p.name != ".lock"
    }


# registration and reads


def test_register_roundtrip_keeps_every_field(registry, tmp_path):
    model_dir = _model_dir(tmp_path / "m")
    request = _request()
    v = registry.register("ctr", model_dir, request, reference=_reference())

    assert (v.name, v.version, v.stage) == ("ctr", "v0001", Stage.CANDIDATE)
    dumped = v.model_dump()
    for field, value in request.model_dump(exclude={"model_file"}).items():
        assert dumped[field] == value, field
    assert v.model_file == "model.txt"
    assert v.files == ["model.json", "model.txt", "transform.json"]
    assert v.reference_rows == 5
    assert v.created_at.tzinfo is not None
    assert v.training_window.start == datetime(2024, 3, 1, tzinfo=UTC)

    assert registry.get("ctr", "v0001") == v
    assert registry.get("ctr") == v
    assert registry.list() == [v]
    assert registry.list("ctr") == [v]
    assert registry.list("other") == []

    stored = registry.model_path("ctr", "v0001")
    assert sorted(p.name for p in stored.iterdir()) == v.files
    assert (stored / "model.txt").read_text() == "tree 0"

    # The record is BentoML's own model metadata, readable with BentoML's API.
    import bentoml
    from bentoml._internal.models.model import ModelStore

    bento = bentoml.models.get("ctr:v0001", _model_store=ModelStore(registry.models_dir))
    assert bento.info.metadata["kubeloop"]["metrics"]["auc"] == pytest.approx(0.7312)
    assert bento.info.labels["model_kind"] == "lightgbm"
    # Nothing was written outside the registry (BentoML's global home stays untouched).
    assert not (tmp_path / "home" / "bentoml").exists()


def test_optional_fields_and_undefined_metrics_roundtrip(registry, tmp_path):
    model_dir = tmp_path / "m"
    model_dir.mkdir()
    (model_dir / "weights.bin").write_bytes(b"w")
    (model_dir / "config.json").write_text("{}")
    request = _request(
        model_kind="custom",
        metrics={"auc": None, "ne": float("nan")},
        pipeline_run_id=None,
        params={"layers": [64, None], "note": None},
    )
    v = registry.register("ctr", model_dir, request)
    assert v.model_file is None and v.pipeline_run_id is None
    loaded = registry.get("ctr")
    assert loaded.metrics == {"auc": None, "ne": None}  # NaN is stored as JSON null
    assert loaded.params == {"layers": [64, None], "note": None}


def test_versions_increase_in_creation_order(registry, tmp_path):
    versions = [_register(registry, tmp_path, tag=str(i)) for i in range(3)]
    assert [v.version for v in versions] == ["v0001", "v0002", "v0003"]
    assert [v.created_at for v in versions] == sorted(v.created_at for v in versions)
    assert registry.get("ctr").version == "v0003"
    assert registry.get("ctr", "latest").version == "v0003"
    assert [v.version for v in registry.list("ctr")] == ["v0001", "v0002", "v0003"]
    assert (registry.models_dir / "ctr" / "latest").read_text() == "v0003"


def test_reference_sample_roundtrip(registry, tmp_path):
    v = _register(registry, tmp_path)
    pd.testing.assert_frame_equal(registry.reference("ctr", v.version), _reference())
    assert registry.has_reference("ctr")

    bare = registry.register("ctr", _model_dir(tmp_path / "bare"), _request())
    assert bare.reference_rows == 0
    with pytest.raises(RegistryError, match="without a reference sample"):
        registry.reference("ctr", bare.version)


def test_registration_validates_its_inputs(registry, tmp_path):
    model_dir = _model_dir(tmp_path / "m")
    with pytest.raises(RegistryError, match="lacks feature columns: user_ctr_7d"):
        registry.register("ctr", model_dir, _request(), reference=_reference()[["hour", "device"]])
    with pytest.raises(RegistryError, match="does not exist"):
        registry.register("ctr", tmp_path / "missing", _request())
    with pytest.raises(RegistryError, match="invalid model name"):
        registry.register("CTR model", model_dir, _request())
    with pytest.raises(RegistryError, match="model_file 'weights.bin'"):
        registry.register("ctr", model_dir, _request(model_file="weights.bin"))
    with pytest.raises(RegistryError, match="invalid registration request"):
        registry.register("ctr", model_dir, {**_request().model_dump(), "colour": "red"})
    (model_dir / "metadata.json").write_text("{}")
    with pytest.raises(RegistryError, match="reserved"):
        registry.register("ctr", model_dir, _request())
    assert registry.list() == []


def test_request_accepts_the_gate_decision_and_numpy_metrics():
    import numpy as np

    request = _request(
        metrics={"auc": np.float32(0.5), "ne": None},
        gate={"passed": False, "reasons": ["worse"], "candidate_ne": 0.9, "reference_ne": 0.8},
    )
    assert request.metrics == {"auc": 0.5, "ne": None}
    assert request.gate.details == {"candidate_ne": 0.9, "reference_ne": 0.8}
    with pytest.raises(ValueError, match="not a number"):
        _request(metrics={"reliability": [0.1, 0.2]})
    with pytest.raises(ValueError, match="not after start"):
        _request(training_window={"start": "2024-03-02", "end": "2024-03-01"})


def test_code_version_defaults_to_git_or_package(registry, tmp_path):
    assert detect_code_version()
    v = registry.register("ctr", _model_dir(tmp_path / "m"), _request(code_version=None))
    assert v.code_version == detect_code_version()


# stages


def test_one_production_and_one_canary_per_name(registry, tmp_path):
    v1, v2, v3 = (_register(registry, tmp_path, tag=str(i)).version for i in range(3))
    assert registry.production("ctr") is None and registry.canary("ctr") is None

    registry.set_stage("ctr", v1, "production")
    registry.set_stage("ctr", v2, Stage.CANARY)
    assert registry.production("ctr").version == v1
    assert registry.canary("ctr").version == v2

    # Canary -> production archives the old production and leaves no canary.
    assert registry.promote("ctr", v2).stage == Stage.PRODUCTION
    stages = {v.version: v.stage for v in registry.list("ctr")}
    assert stages == {v1: Stage.ARCHIVED, v2: Stage.PRODUCTION, v3: Stage.CANDIDATE}
    assert registry.canary("ctr") is None

    # A new canary displaces the old canary, not production.
    registry.set_stage("ctr", v3, "canary")
    registry.set_stage("ctr", v1, "canary")
    stages = {v.version: v.stage for v in registry.list("ctr")}
    assert stages == {v1: Stage.CANARY, v2: Stage.PRODUCTION, v3: Stage.ARCHIVED}
    assert registry.get("ctr", "production").version == v2
    assert registry.get("ctr", "canary").version == v1

    summary = registry_summary(registry)["ctr"]
    assert (summary["production"], summary["canary"]) == (v2, v1)
    reasons = [h.reason for h in registry.history("ctr")]
    assert reasons.count("registered") == 3 and f"displaced by {v2}" in reasons


def test_transition_rules(registry, tmp_path):
    v1, v2, v3 = (_register(registry, tmp_path, tag=str(i)).version for i in range(3))
    failing = _register(registry, tmp_path, tag="f", gate={"passed": False, "reasons": ["bad"]})

    registry.set_stage("ctr", v1, "production")
    assert registry.set_stage("ctr", v1, "production").stage == Stage.PRODUCTION  # no-op
    with pytest.raises(RegistryError, match="cannot go from production to canary"):
        registry.set_stage("ctr", v1, "canary")
    with pytest.raises(RegistryError, match="cannot go from candidate to candidate|cannot go"):
        registry.set_stage("ctr", v1, "candidate")
    with pytest.raises(RegistryError, match="did not pass its evaluation gate"):
        registry.set_stage("ctr", failing.version, "canary")
    with pytest.raises(RegistryError, match="unknown stage 'live'"):
        registry.set_stage("ctr", v2, "live")
    with pytest.raises(RegistryError, match="has no version 'v0099'"):
        registry.set_stage("ctr", "v0099", "production")
    with pytest.raises(RegistryError, match="no model named 'nope'"):
        registry.set_stage("nope", v1, "production")

    # An archived version that never served must go through canary again ...
    registry.set_stage("ctr", v2, "archived")
    with pytest.raises(RegistryError, match="never in production"):
        registry.set_stage("ctr", v2, "production")
    registry.set_stage("ctr", v2, "canary")
    # ... while a former production version can be rolled back to directly.
    registry.set_stage("ctr", v3, "production")
    assert registry.get("ctr", v1).stage == Stage.ARCHIVED
    registry.set_stage("ctr", v1, "production")
    assert registry.production("ctr").version == v1

    # force skips the gate and the table, never the one-production rule.
    registry.set_stage("ctr", failing.version, "production", force=True)
    assert [v.version for v in registry.list("ctr") if v.stage == Stage.PRODUCTION] == [
        failing.version
    ]


def test_plan_stage_change_keeps_invariants_under_random_walks():
    rng = random.Random(7)
    for _ in range(200):
        stages = {f"v{i:04d}": Stage.CANDIDATE for i in range(1, 6)}
        served: set[str] = set()
        for _ in range(20):
            version, target = rng.choice(list(stages)), rng.choice(list(Stage))
            try:
                stages = plan_stage_change(
                    "ctr",
                    stages,
                    version,
                    target,
                    gate_passed=rng.random() > 0.2,
                    served_before=version in served,
                    force=rng.random() < 0.1,
                )
            except RegistryError:
                continue
            if target == Stage.PRODUCTION:
                served.add(version)
            values = list(stages.values())
            assert values.count(Stage.PRODUCTION) <= 1
            assert values.count(Stage.CANARY) <= 1
            assert stages[version] == target


def test_interrupted_stage_change_leaves_stages_unchanged(registry, tmp_path, monkeypatch):
    v1, v2 = (_register(registry, tmp_path, tag=str(i)).version for i in range(2))
    registry.set_stage("ctr", v1, "production")
    before = registry.list("ctr")
    writes = []

    def fail(state):
        writes.append(dict(state.stages))
        raise OSError("disk full")

    monkeypatch.setattr(BentoMLRegistry, "_write_state", lambda self, state: fail(state))
    with pytest.raises(OSError):
        registry.set_stage("ctr", v2, "production")
    # Archiving v1 and promoting v2 were one write, which did not happen.
    assert writes == [{v1: Stage.ARCHIVED, v2: Stage.PRODUCTION}]
    assert registry.list("ctr") == before
    assert registry.production("ctr").version == v1


# atomic registration


def _fail_in_staging(monkeypatch):
    """Raise after the model files are copied to BentoML's staging directory, before its
    model.yaml (the metadata) is written."""
    from bentoml._internal.models.model import Model

    def boom(self):
        assert (Path(self.path) / "model" / "model.txt").is_file()
        raise RuntimeError("injected: before metadata")

    monkeypatch.setattr(Model, "flush", boom)
    return RuntimeError


def _fail_in_store(exc_type):
    def inject(monkeypatch, registry: BentoMLRegistry):
        """Raise once the version's model files are in the store, before the stages file
        (which makes the version exist) is written."""

        def boom(self, state):
            version = max(state.stages)
            assert (self.models_dir / "ctr" / version / "model" / "model.txt").is_file()
            raise exc_type("injected: before commit")

        monkeypatch.setattr(BentoMLRegistry, "_write_state", boom)
        return exc_type

    return inject


def _interrupt_store_copy(monkeypatch, registry: BentoMLRegistry):
    """Interrupt BentoML's copy into the store after the model file is written there
    (BentoML's own cleanup only handles Exception, not an interrupt)."""
    real = shutil.copytree

    def partial(src, dst, *args, **kwargs):
        if Path(dst).is_relative_to(registry.models_dir):
            Path(dst, "model").mkdir(parents=True)
            shutil.copyfile(Path(src, "model", "model.txt"), Path(dst, "model", "model.txt"))
            raise KeyboardInterrupt
        return real(src, dst, *args, **kwargs)

    monkeypatch.setattr(shutil, "copytree", partial)
    return KeyboardInterrupt


@pytest.mark.parametrize(
    "inject",
    [
        lambda mp, reg: _fail_in_staging(mp),
        _interrupt_store_copy,
        _fail_in_store(RuntimeError),
        _fail_in_store(KeyboardInterrupt),
    ],
    ids=["staging", "store-copy-interrupt", "store", "store-interrupt"],
)
def test_failed_registration_leaves_no_partial_version(
    registry, tmp_path, monkeypatch, inject, _isolated
):
    first = _register(registry, tmp_path, tag="first")
    files_before = _snapshot(registry.root)
    list_before, latest_before = registry.list(), registry.get("ctr")

    with monkeypatch.context() as mp:
        exc_type = inject(mp, registry)
        with pytest.raises(exc_type):
            _register(registry, tmp_path, tag="second")

    assert registry.list() == list_before
    assert registry.get("ctr") == latest_before == first
    assert _snapshot(registry.root) == files_before
    assert list(_isolated.iterdir()) == []  # no staging directory left behind
    # The registry still works and the failed attempt did not use up a version.
    assert _register(registry, tmp_path, tag="third").version == "v0002"


def test_failed_first_registration_leaves_an_empty_registry(registry, tmp_path, monkeypatch):
    _fail_in_store(RuntimeError)(monkeypatch, registry)
    with pytest.raises(RuntimeError):
        _register(registry, tmp_path)
    assert registry.list() == []
    assert [p for p in registry.root.rglob("*") if p.is_file()] == [registry.root / ".lock"]
    with pytest.raises(RegistryError, match="no model named 'ctr'"):
        registry.get("ctr")


def test_killed_registration_is_invisible_and_cleaned_up(registry, tmp_path, monkeypatch):
    _register(registry, tmp_path, tag="first")
    # A killed process gets neither to the commit nor to the cleanup.
    with monkeypatch.context() as mp:
        _fail_in_store(RuntimeError)(mp, registry)
        mp.setattr(BentoMLRegistry, "_remove_version_dir", lambda self, *a: None)
        with pytest.raises(RuntimeError):
            _register(registry, tmp_path, tag="killed")
    orphan = registry.models_dir / "ctr" / "v0002"
    assert orphan.is_dir()
    assert [v.version for v in registry.list()] == ["v0001"]
    with pytest.raises(RegistryError, match="has no version 'v0002'"):
        registry.get("ctr", "v0002")

    again = _register(registry, tmp_path, tag="again")
    assert again.version == "v0002"
    assert (registry.model_path("ctr", "v0002") / "model.txt").read_text() == "model again"


# export


def test_export_layout_for_kserve(registry, tmp_path):
    v = _register(registry, tmp_path)
    dest = tmp_path / "exports" / "ctr" / v.version
    written = registry.export("ctr", v.version, str(dest))

    assert written == str(dest)
    assert sorted(p.name for p in dest.iterdir()) == [
        "metadata.json",
        "model.bst",
        "model.json",
        "model.txt",
        "reference.parquet",
        "transform.json",
    ]
    # lgbserver loads the single top-level *.bst; it is the LightGBM booster file.
    assert (dest / "model.bst").read_bytes() == (dest / "model.txt").read_bytes()
    assert ModelVersion.model_validate_json((dest / "metadata.json").read_text()) == v
    pd.testing.assert_frame_equal(pd.read_parquet(dest / "reference.parquet"), _reference())
    assert sorted(p.name for p in dest.parent.iterdir()) == [v.version]  # no staging left


def test_export_is_a_free_function_over_any_registry(registry, tmp_path):
    """`export(registry, ...)` (which the method calls) needs only the ModelRegistry
    interface: a backend without a reference file gets its sample rewritten."""
    from kubeloop.registry import export

    v = _register(registry, tmp_path)
    copied = Path(export(registry, "ctr", v.version, tmp_path / "copied"))
    registry.reference_file = lambda name, version=None: None  # a backend with no local file
    rewritten = Path(export(registry, "ctr", v.version, tmp_path / "rewritten"))
    for dest in (copied, rewritten):
        pd.testing.assert_frame_equal(pd.read_parquet(dest / "reference.parquet"), _reference())
        assert (dest / "model.bst").is_file()  # lightgbm's spec names lgbserver's file


def test_export_torch_has_no_booster_alias(registry, tmp_path):
    v = _register(registry, tmp_path, model_kind="torch")
    dest = tmp_path / "out"
    registry.export("ctr", "latest", dest)
    assert v.model_file == "model.pt"
    assert sorted(p.name for p in dest.iterdir()) == [
        "metadata.json",
        "model.json",
        "model.pt",
        "reference.parquet",
        "transform.json",
    ]


def test_export_refuses_occupied_dest_unless_overwrite(registry, tmp_path):
    v1 = _register(registry, tmp_path, tag="1")
    v2 = _register(registry, tmp_path, tag="2")
    dest = tmp_path / "out"
    registry.export("ctr", v1.version, dest)
    with pytest.raises(RegistryError, match="not empty"):
        registry.export("ctr", v2.version, dest)
    registry.export("ctr", v2.version, dest, overwrite=True)
    assert json.loads((dest / "metadata.json").read_text())["version"] == v2.version
    assert (dest / "model.txt").read_text() == "model 2"
    assert sorted(p.name for p in tmp_path.glob(".out*")) == []


def test_failed_export_leaves_no_partial_dest(registry, tmp_path, monkeypatch):
    v1 = _register(registry, tmp_path, tag="1")
    v2 = _register(registry, tmp_path, tag="2")
    fresh, existing = tmp_path / "fresh", tmp_path / "existing"
    registry.export("ctr", v1.version, existing)
    before = _snapshot(existing)

    def boom(self, **kwargs):
        raise OSError("injected: metadata.json")

    monkeypatch.setattr(ModelVersion, "model_dump_json", boom)
    with pytest.raises(OSError):
        registry.export("ctr", v2.version, fresh)
    with pytest.raises(OSError):
        registry.export("ctr", v2.version, existing, overwrite=True)

    assert not fresh.exists()
    assert _snapshot(existing) == before  # the previous export survives a failed overwrite
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_export_to_fsspec_url(registry, tmp_path, monkeypatch):
    import fsspec

    v = _register(registry, tmp_path)
    fs = fsspec.filesystem("memory")
    written = registry.export("ctr", v.version, "memory://bucket/ctr/v0001")
    assert written == "memory:///bucket/ctr/v0001"
    assert sorted(p.rsplit("/", 1)[1] for p in fs.ls("/bucket/ctr/v0001", detail=False)) == [
        "metadata.json",
        "model.bst",
        "model.json",
        "model.txt",
        "reference.parquet",
        "transform.json",
    ]
    assert json.loads(fs.cat("/bucket/ctr/v0001/metadata.json"))["version"] == v.version

    calls = []
    real_put = type(fs).put_file

    def flaky(self, lpath, rpath, **kwargs):
        calls.append(rpath)
        if len(calls) == 3:
            raise OSError("injected: upload failed")
        return real_put(self, lpath, rpath, **kwargs)

    monkeypatch.setattr(type(fs), "put_file", flaky)
    with pytest.raises(OSError):
        registry.export("ctr", v.version, "memory://bucket/ctr/broken")
    assert not fs.exists("/bucket/ctr/broken")
    fs.rm("/bucket", recursive=True)


# backends


def test_backend_factory(tmp_path):
    registry = make_registry({"type": "bentoml", "path": str(tmp_path / "r")})
    assert isinstance(registry, BentoMLRegistry)
    assert registry.root == tmp_path / "r"
    assert open_registry(f"file://{tmp_path}/r").root == tmp_path / "r"
    assert make_registry(BentoMLRegistryConfig(path=tmp_path)).root == tmp_path
    # one-line error from the plug-in table, naming the registered backends
    with pytest.raises(RegistryError, match="unknown registry type 'mlflow'; known: bentoml$"):
        make_registry({"type": "mlflow", "path": "x"})
    with pytest.raises(RegistryError, match="Extra inputs are not permitted"):
        make_registry({"type": "bentoml", "path": "x", "bucket": "y"})
    with pytest.raises(RegistryError, match="needs a local directory"):
        make_registry({"path": "s3://bucket/registry"})
    assert issubclass(RegistryError, KubeloopError)


# CLI


def _cli(*args: str, env: dict[str, str] | None = None):
    from kubeloop.cli.models import app

    return CliRunner().invoke(app, list(args), env=env)


def test_cli_list_show_promote_export(registry, tmp_path):
    v1 = _register(registry, tmp_path, tag="1")
    v2 = _register(registry, tmp_path, tag="2")
    reg = ["--registry", str(registry.root)]

    result = _cli("list", *reg)
    assert result.exit_code == 0, result.output
    assert "v0001" in result.output and "0.7312" in result.output and "0.8841" in result.output

    result = _cli("list", "--name", "ctr", "--json", *reg)
    assert [ModelVersion.model_validate(d) for d in json.loads(result.output)] == [v1, v2]

    result = _cli("show", "ctr", *reg)
    assert result.exit_code == 0, result.output
    assert "v0002" in result.output and "baseline" in result.output

    result = _cli("show", "ctr", "v0001", "--json", *reg)
    assert ModelVersion.model_validate_json(result.output) == v1

    result = _cli("promote", "ctr", "v0001", *reg)
    assert result.exit_code == 0, result.output
    assert "ctr:v0001: candidate -> production" in result.output
    result = _cli("promote", "ctr", "v0002", "--stage", "canary", *reg)
    assert "ctr:v0002: candidate -> canary" in result.output
    result = _cli("promote", "ctr", "canary", *reg)
    assert result.output.splitlines() == [
        "ctr:v0002: canary -> production",
        "ctr:v0001: production -> archived",
    ]

    dest = tmp_path / "exported"
    result = _cli("export", "ctr", "production", str(dest), *reg)
    assert result.exit_code == 0, result.output
    assert result.output.strip() == str(dest)
    assert json.loads((dest / "metadata.json").read_text())["version"] == "v0002"


def test_cli_errors_and_default_registry(registry, tmp_path, monkeypatch):
    _register(registry, tmp_path)

    result = _cli("show", "ctr", "v0009", env={"KUBELOOP_REGISTRY": str(registry.root)})
    assert isinstance(result.exception, RegistryError)
    assert "has no version 'v0009'" in str(result.exception)

    result = _cli(
        "promote", "ctr", "v0001", "--stage", "gone", env={"KUBELOOP_REGISTRY": str(registry.root)}
    )
    assert isinstance(result.exception, RegistryError)

    # Without --registry or the variable: runs/demo/registry under the current directory.
    monkeypatch.chdir(tmp_path)
    result = _cli("list")
    assert result.exit_code == 0
    assert "no model versions registered" in result.output
    assert not (tmp_path / "runs").exists()  # reading creates nothing
