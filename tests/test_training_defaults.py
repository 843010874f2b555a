"""A use case's training defaults (`Defaults.training`): what every training run of it
starts from, the run's own config laid over them, a model kind's section key by key."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from test_usecase_boundary import make_use_case

from kubeloop.training.config import TrainingConfig, layered
from kubeloop.usecase import Defaults, load_use_case, use_case_names


def test_the_run_s_settings_win_and_a_kind_s_section_merges_key_by_key():
    defaults = {"valid_fraction": 0.2, "lightgbm": {"num_leaves": 15, "learning_rate": 0.1}}
    given = {"valid_fraction": 0.3, "lightgbm": {"learning_rate": 0.02}, "seed": 7}
    assert layered(defaults, given) == {
        "valid_fraction": 0.3,
        "lightgbm": {"num_leaves": 15, "learning_rate": 0.02},
        "seed": 7,
    }
    assert layered(defaults, {}) == defaults and layered({}, given) == given
    assert defaults["lightgbm"] == {"num_leaves": 15, "learning_rate": 0.1}  # not mutated


def test_over_defaults_reads_a_step_s_json_and_types_each_kind():
    defaults = Defaults(model_name="m", training={"lightgbm": {"num_leaves": 15}}).training
    config = TrainingConfig.over_defaults(defaults, '{"lightgbm": {"max_rounds": 9}}')
    lgb = config.kind_config("lightgbm")
    assert (lgb.num_leaves, lgb.max_rounds) == (15, 9)
    assert TrainingConfig.over_defaults(defaults, None).kind_config("lightgbm").num_leaves == 15
    assert TrainingConfig.over_defaults({}, "").kind_config("lightgbm").num_leaves == 31
    with pytest.raises(ValueError, match="unknown training setting"):
        TrainingConfig.over_defaults({"no_such_setting": 1}, "{}")


def test_defaults_are_frozen_one_level_down():
    defaults = Defaults(model_name="m", training={"lightgbm": {"num_leaves": 15}})
    with pytest.raises(TypeError):
        defaults.training["seed"] = 1  # type: ignore[index]
    with pytest.raises(TypeError):
        defaults.training["lightgbm"]["num_leaves"] = 3  # type: ignore[index]


@pytest.mark.parametrize("name", use_case_names())
def test_every_registered_use_case_s_training_defaults_are_a_valid_config(name):
    spec = load_use_case(name)
    config = TrainingConfig.over_defaults(spec.defaults.training, "{}")
    for kind, section in spec.defaults.training.items():
        if isinstance(section, Mapping):
            typed = config.kind_config(kind)
            assert {k: getattr(typed, k) for k in section} == dict(section)


def _training_set(spec, path, rows: int = 1200, seed: int = 0) -> str:
    """A random training set of `spec`'s schema over four days, its label tied to one
    feature so that a model has something to learn."""
    rng = np.random.default_rng(seed)
    start = datetime(2025, 3, 1, tzinfo=UTC)
    frame = {}
    for field in spec.training_schema():
        if pa.types.is_timestamp(field.type):
            frame[field.name] = [
                start + timedelta(minutes=int(m)) for m in sorted(rng.integers(0, 4 * 1440, rows))
            ]
        elif pa.types.is_string(field.type):
            frame[field.name] = rng.choice(["a", "b", "c"], rows)
        elif pa.types.is_integer(field.type):
            frame[field.name] = rng.integers(0, 10, rows)
        else:
            frame[field.name] = rng.random(rows)
    frame = pd.DataFrame(frame)
    frame["event_id"] = np.arange(rows)
    frame[spec.events.label] = (rng.random(rows) < 0.1 + 0.5 * frame["card_fraud_rate_1h"]).astype(
        int
    )
    table = pa.Table.from_pandas(frame, schema=spec.training_schema(), preserve_index=False)
    out = path / "training.parquet"
    pq.write_table(table, out)
    return str(out)


def test_the_steps_start_from_the_use_case_s_training_defaults(tmp_path):
    """train, evaluate and register split and fit with the defaults under the run's."""
    from kubeloop.pipeline import steps

    base = make_use_case(str(tmp_path / "lake"))
    spec = replace(
        base,
        defaults=Defaults(
            model_name="fraud",
            training={"holdout_fraction": 0.3, "lightgbm": {"max_rounds": 3, "num_leaves": 4}},
        ),
    )
    data = _training_set(spec, tmp_path)
    trained = steps.train_step("lightgbm", data, "{}", str(tmp_path / "m"), spec)
    assert trained["best_iteration"] <= 3
    again = steps.train_step(
        "lightgbm", data, json.dumps({"lightgbm": {"max_rounds": 40, "early_stopping_rounds": 40}}),
        str(tmp_path / "m2"), spec,
    )  # fmt: skip
    assert again["best_iteration"] > 3  # the run's max_rounds over the default's
    # the kind's other default stays: the booster was grown with 4 leaves
    assert "[num_leaves: 4]" in (tmp_path / "m2" / "model.txt").read_text()

    def holdout_rows(use_case, config_json: str) -> int:
        steps.evaluate_step(
            data, {"lightgbm": str(tmp_path / "m")}, str(tmp_path / "reg"), "", config_json,
            str(tmp_path / "eval"), use_case,
        )  # fmt: skip
        evaluation = json.loads((tmp_path / "eval" / steps.EVALUATION_FILE).read_text())
        return evaluation["split"]["holdout"]["rows"]

    with_defaults = holdout_rows(spec, "{}")
    assert with_defaults == holdout_rows(base, '{"holdout_fraction": 0.3}')
    assert with_defaults > holdout_rows(base, "{}")  # the engine's 0.2
