"""Model kinds as one spec, found by name through the plug-in table (entry points)."""

from __future__ import annotations

import subprocess
import sys

import pytest
from pydantic import BaseModel

from kubeloop import plugins
from kubeloop.training.config import TrainingConfig
from kubeloop.training.model_kind import ModelKind, kind_names, model_kind, model_kinds


def test_every_kind_is_one_registered_spec_ranked_simplest_first():
    assert kind_names() == ["logistic", "lightgbm", "torch"]
    assert [spec.rank for spec in model_kinds()] == [0, 1, 2]
    for spec in model_kinds():
        assert isinstance(spec, ModelKind) and spec.name == spec.config_class().kind
        assert spec.config_class.model_config["extra"] == "forbid"
        assert issubclass(spec.model_type(), object) and spec.model_type().kind == spec.name
    assert model_kind("lightgbm").kserve_model_file == "model.bst"


def test_unknown_kind_is_one_line_naming_the_known_ones():
    with pytest.raises(plugins.PluginError) as info:
        model_kind("xgboost")
    assert str(info.value) == "unknown model kind 'xgboost'; known: lightgbm, logistic, torch"


def test_naming_the_kinds_imports_no_model_library():
    code = (
        "import sys; from kubeloop.training.model_kind import model_kinds;"
        "from kubeloop.training.config import TrainingConfig;"
        "model_kinds(); TrainingConfig.model_validate({'torch': {'max_epochs': 1}});"
        "print(sorted(m for m in ('torch', 'lightgbm', 'sklearn') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_training_config_validates_each_kind_through_its_spec():
    config = TrainingConfig.model_validate({"torch": {"max_epochs": 2}, "burn_in_days": 0})
    assert config.kind_config("torch").max_epochs == 2
    assert isinstance(config.kind_config("logistic"), BaseModel)  # defaults when absent
    assert TrainingConfig.model_validate_json(config.model_dump_json()) == config
    with pytest.raises(ValueError, match="unknown training setting.*'torhc'.*logistic"):
        TrainingConfig.model_validate({"torhc": {}})
    with pytest.raises(ValueError, match="invalid torch config.*max_epoch"):
        TrainingConfig.model_validate({"torch": {"max_epoch": 2}})
    with pytest.raises(ValueError, match="burn_in_dayz"):
        TrainingConfig.model_validate({"burn_in_dayz": 1})


def test_training_run_params_fail_on_a_typo_before_any_pipeline():
    from kubeloop.pipeline.params import TrainingRunParams

    base = {"lake_uri": "l", "features_uri": "f", "feature_repo": "r", "registry_uri": "g"}
    with pytest.raises(ValueError, match="max_rounds"):
        TrainingRunParams(**base, train_config={"lightgbm": {"max_rounds": 0}})
    with pytest.raises(ValueError, match="ne_marign"):
        TrainingRunParams(**base, gate_config={"ne_marign": 0.1})
    params = TrainingRunParams(**base, train_config={"logistic": {"c_values": [1.0]}})
    assert '"c_values":[1.0]' in params.arguments()["train_config_json"]
    assert params.arguments()["gate_config_json"] == "{}"


def test_import_contracts_hold():
    """pyproject's [tool.importlinter] contracts (also run first by `make test`): the
    engine imports no plug-in folder and has no import cycles."""
    from pathlib import Path

    lint = Path(sys.executable).with_name("lint-imports")
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([str(lint)], check=False, cwd=root, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout[-3000:]
