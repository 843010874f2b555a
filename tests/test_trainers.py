"""Time split, the logistic, LightGBM and PyTorch trainers, and the saved model directory."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from _synthetic import make_training_frame

from kubeloop.evaluation.metrics import roc_auc
from kubeloop.training.artifacts import ModelArtifactError, load_model
from kubeloop.training.split import split_summary, time_split
from kubeloop.training.transform import FeatureTransform, model_input_columns
from models.lightgbm_trainer import LightGBMTrainConfig, train_lightgbm
from models.logistic import LogisticTrainConfig, train_logistic
from models.torch_trainer import TorchTrainConfig, train_torch
from usecases.ctr import schema

LGB = LightGBMTrainConfig(num_threads=1)
TORCH = TorchTrainConfig(num_threads=1, max_epochs=5, patience=2)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def data():
    df = make_training_frame(20_000, seed=0, days=10)
    train, valid, holdout = time_split(df, valid_fraction=0.15, holdout_fraction=0.2)
    return train, valid, holdout, FeatureTransform.fit(train)


@pytest.fixture(scope="module")
def lgb_model(data):
    train, valid, _, transform = data
    return train_lightgbm(train, valid, LGB, transform)


@pytest.fixture(scope="module")
def logistic_model(data):
    train, valid, _, transform = data
    return train_logistic(train, valid, LogisticTrainConfig(), transform)


@pytest.fixture(scope="module")
def torch_model(data):
    train, valid, _, transform = data
    return train_torch(train, valid, TORCH, transform)


# --- time split ---------------------------------------------------------------------


def test_split_is_time_ordered_on_day_boundaries(data):
    train, valid, holdout, _ = data
    assert train["event_timestamp"].max() < valid["event_timestamp"].min()
    assert valid["event_timestamp"].max() < holdout["event_timestamp"].min()
    summary = split_summary(train, valid, holdout)
    assert summary["holdout"]["rows"] == len(holdout)
    assert abs(len(holdout) / 20_000 - 0.2) <= 0.05 and abs(len(valid) / 20_000 - 0.15) <= 0.05


def test_split_day_cut_is_at_midnight():
    df = make_training_frame(5000, seed=2, days=10)
    train, valid, holdout = time_split(df, 0.1, 0.2)
    # ten days allow whole-day parts: no day is shared by two parts
    days = [set(p["event_timestamp"].dt.floor("D")) for p in (train, valid, holdout)]
    assert not (days[0] & days[1]) and not (days[1] & days[2]) and not (days[0] & days[2])
    assert len(days[2]) == 2 and len(days[1]) == 1


def test_split_keeps_every_row_once_and_ties_on_one_side():
    df = make_training_frame(3000, seed=1, days=1)  # one day: falls back to timestamp cuts
    # coarse timestamps make many ties at every cut
    df["event_timestamp"] = df["event_timestamp"].dt.floor("h")
    df = df.sample(frac=1.0, random_state=0)  # input order must not matter
    train, valid, holdout = time_split(df, 0.1, 0.2)
    ids = np.concatenate([p["event_id"].to_numpy() for p in (train, valid, holdout)])
    assert sorted(ids) == sorted(df["event_id"])
    assert train["event_timestamp"].max() < valid["event_timestamp"].min()
    assert valid["event_timestamp"].max() < holdout["event_timestamp"].min()
    assert 0.1 < len(holdout) / len(df) < 0.3


def test_split_rejects_bad_fractions():
    df = make_training_frame(200, seed=1, days=2)
    with pytest.raises(ValueError):
        time_split(df, 0.5, 0.5)
    with pytest.raises(ValueError):
        time_split(df, 0.1, 0.0)


# --- LightGBM -----------------------------------------------------------------------


def test_lightgbm_learns(data, lgb_model):
    _, _, holdout, _ = data
    auc = roc_auc(holdout[schema.LABEL], lgb_model.predict_proba(holdout))
    oracle = roc_auc(holdout[schema.LABEL], holdout[schema.ORACLE])
    assert auc >= 0.9 * oracle, (auc, oracle)
    assert lgb_model.kind == "lightgbm"
    assert 1 <= lgb_model.best_iteration <= LGB.max_rounds
    assert lgb_model.train_seconds > 0
    assert lgb_model.info.valid_log_loss is not None


def test_lightgbm_is_deterministic(data, lgb_model):
    train, valid, holdout, transform = data
    again = train_lightgbm(train, valid, LGB, transform)
    assert np.array_equal(again.predict_proba(holdout), lgb_model.predict_proba(holdout))


def test_lightgbm_save_load_roundtrip(tmp_path, data, lgb_model):
    _, _, holdout, _ = data
    directory = lgb_model.save(tmp_path / "lgb")
    assert {p.name for p in directory.iterdir()} == {"model.txt", "model.json", "transform.json"}
    meta = json.loads((directory / "model.json").read_text())
    assert meta["kind"] == "lightgbm" and meta["best_iteration"] == lgb_model.best_iteration
    loaded = load_model(directory)
    assert type(loaded) is type(lgb_model)
    assert np.array_equal(loaded.predict_proba(holdout), lgb_model.predict_proba(holdout))
    assert loaded.feature_importance() == pytest.approx(lgb_model.feature_importance())


def test_lightgbm_feature_importance(lgb_model):
    imp = lgb_model.feature_importance()
    assert list(imp) == lgb_model.feature_names
    assert sum(imp.values()) == pytest.approx(1.0)
    # slot position drives the synthetic click rate
    assert imp["slot_position"] > 0


def test_predictions_are_the_same_on_the_serving_path(data, lgb_model):
    _, _, holdout, _ = data
    rows = holdout.iloc[:25]
    records = [
        {k: (None if pd.isna(v) else v) for k, v in r.items()}
        for r in rows[model_input_columns()].astype(object).to_dict("records")
    ]
    one_by_one = np.concatenate(
        [lgb_model.predict_batch(lgb_model.transform.transform_records([r])) for r in records]
    )
    assert np.array_equal(one_by_one, lgb_model.predict_proba(rows))


# --- logistic regression -----------------------------------------------------------


def test_logistic_learns_and_matches_lightgbm(data, logistic_model, lgb_model):
    _, _, holdout, _ = data
    auc = roc_auc(holdout[schema.LABEL], logistic_model.predict_proba(holdout))
    oracle = roc_auc(holdout[schema.LABEL], holdout[schema.ORACLE])
    lgb_auc = roc_auc(holdout[schema.LABEL], lgb_model.predict_proba(holdout))
    assert auc >= 0.9 * oracle and auc >= lgb_auc - 0.02, (auc, lgb_auc, oracle)
    assert logistic_model.kind == "logistic" and logistic_model.best_iteration >= 1
    arch = logistic_model.info.architecture
    assert arch["c"] in LogisticTrainConfig().c_values and len(arch["valid_log_loss_by_c"]) == 3
    # the transform's crosses are inputs of the model
    assert "user_segment_x_ad_category" in logistic_model.feature_names


def test_logistic_save_load_roundtrip_without_pickle(tmp_path, data, logistic_model):
    _, _, holdout, _ = data
    directory = logistic_model.save(tmp_path / "logistic")
    assert {p.name for p in directory.iterdir()} == {"logistic.json", "model.json", "transform.json"}
    json.loads((directory / "logistic.json").read_text())  # plain numbers, no pickle
    loaded = load_model(directory)
    assert np.array_equal(loaded.predict_proba(holdout), logistic_model.predict_proba(holdout))
    imp = loaded.feature_importance()
    assert sum(imp.values()) == pytest.approx(1.0) and imp["slot_position"] > 0


def test_logistic_extra_crosses_exact_and_hashed(data):
    train, valid, holdout, transform = data
    exact = train_logistic(
        train, valid, LogisticTrainConfig(c_values=[1.0], extra_crosses=[("device", "ad_category")]),
        transform,
    )
    hashed = train_logistic(
        train,
        valid,
        LogisticTrainConfig(
            c_values=[1.0], extra_crosses=[("user_segment", "advertiser_id")], hash_buckets=16
        ),
        transform,
    )
    assert [c["hashed"] for c in exact.weights["crosses"]] == [False]
    assert [c["hashed"] for c in hashed.weights["crosses"]] == [True]
    assert len(hashed.weights["block_coef"][-1]) == 16
    for model in (exact, hashed):
        p = model.predict_proba(holdout)
        assert np.all((p > 0) & (p < 1))
    with pytest.raises(ValueError, match="extra_crosses"):
        train_logistic(
            train, valid, LogisticTrainConfig(extra_crosses=[("device", "nope")]), transform
        )


def test_logistic_serving_path_matches_batch(data, logistic_model):
    _, _, holdout, _ = data
    rows = holdout.iloc[:25]
    records = [
        {k: (None if pd.isna(v) else v) for k, v in r.items()}
        for r in rows[model_input_columns()].astype(object).to_dict("records")
    ]
    one_by_one = np.concatenate(
        [logistic_model.predict_batch(logistic_model.transform.transform_records([r])) for r in records]
    )
    assert np.allclose(one_by_one, logistic_model.predict_proba(rows), rtol=0, atol=1e-12)


# --- PyTorch ------------------------------------------------------------------------


def test_torch_learns(data, torch_model):
    _, _, holdout, _ = data
    auc = roc_auc(holdout[schema.LABEL], torch_model.predict_proba(holdout))
    oracle = roc_auc(holdout[schema.LABEL], holdout[schema.ORACLE])
    assert auc > 0.6 and auc >= 0.85 * oracle, (auc, oracle)
    assert torch_model.kind == "torch"
    assert 1 <= torch_model.best_iteration <= torch_model.info.epochs <= TORCH.max_epochs
    assert torch.get_num_threads() == 1  # restored after training


def test_torch_save_load_roundtrip(tmp_path, data, torch_model):
    _, _, holdout, _ = data
    directory = torch_model.save(tmp_path / "torch")
    assert {p.name for p in directory.iterdir()} == {"model.pt", "model.json", "transform.json"}
    meta = json.loads((directory / "model.json").read_text())
    assert meta["kind"] == "torch" and meta["architecture"]["cardinalities"]
    loaded = load_model(directory)
    assert np.array_equal(loaded.predict_proba(holdout), torch_model.predict_proba(holdout))
    assert loaded.feature_importance() == torch_model.feature_importance()


def test_torch_is_deterministic(data, torch_model):
    train, valid, holdout, transform = data
    again = train_torch(train, valid, TORCH, transform)
    assert np.array_equal(again.predict_proba(holdout), torch_model.predict_proba(holdout))


def test_torch_feature_importance(torch_model):
    imp = torch_model.feature_importance()
    assert set(imp) == set(torch_model.feature_names)
    assert sum(imp.values()) == pytest.approx(1.0)
    assert "permutation" in torch_model.info.importance_method


# --- artifacts ----------------------------------------------------------------------


def test_load_model_errors(tmp_path):
    with pytest.raises(ModelArtifactError, match="model.json"):
        load_model(tmp_path)
    (tmp_path / "model.json").write_text(
        json.dumps(
            {
                "kind": "xgboost",
                "numeric_features": [],
                "categorical_features": [],
                "best_iteration": 1,
                "train_seconds": 0.0,
                "n_train": 1,
                "n_valid": 1,
                "config": {},
                "importance_method": "",
            }
        )
    )
    FeatureTransform.fit(make_training_frame(200, seed=1, days=2)).save(tmp_path / "transform.json")
    with pytest.raises(ModelArtifactError, match="unknown model kind"):
        load_model(tmp_path)


def test_trainer_configs_forbid_unknown_keys():
    with pytest.raises(ValueError):
        LightGBMTrainConfig(num_leafs=10)
    with pytest.raises(ValueError):
        TorchTrainConfig(epochs=3)
    with pytest.raises(ValueError):
        LogisticTrainConfig(c=1.0)
