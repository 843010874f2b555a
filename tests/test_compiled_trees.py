"""Compiled LightGBM trees (models/lightgbm_compiled.py): built by the export, equal to
`Booster.predict` within 1e-9 on 10k rows, and the booster serves when they cannot load."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
from test_predictor import TINY_LGB, export_model, tiny_data

from models.lightgbm_compiled import COMPILED_FILE, COMPILED_INFO, load_compiled
from models.lightgbm_trainer import train_lightgbm
from models.predictor import CTRPredictor

pytest.importorskip("lleaves")


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    train, valid, holdout = tiny_data(seed=5)
    model = train_lightgbm(train, valid, TINY_LGB)
    return model, export_model(model, tmp_path_factory.mktemp("compiled")), holdout


def _random_matrix(model, n: int, seed: int) -> np.ndarray:
    """Rows over the model's whole input space: numeric values around and beyond those
    seen, NaN, categorical codes including unknown (0) and never-seen codes."""
    rng = np.random.default_rng(seed)
    n_num = len(model.info.numeric_features)
    cards = model.transform.cardinalities
    numeric = rng.normal(0, 3, size=(n, n_num))
    numeric[rng.random(numeric.shape) < 0.1] = np.nan
    codes = np.column_stack([rng.integers(0, c + 3, size=n) for c in cards]).astype(np.float64)
    return np.hstack([numeric, codes])


def test_export_writes_compiled_trees_for_this_architecture(exported):
    _, export_dir, _ = exported
    assert (export_dir / COMPILED_FILE).stat().st_size > 0
    info = json.loads((export_dir / COMPILED_INFO).read_text())
    assert info["source"] == "model.txt" and info["cpu"] in ("x86-64", "generic")


def test_compiled_trees_equal_booster_predict_on_10k_rows(exported):
    model, export_dir, _ = exported
    compiled = load_compiled(export_dir)
    assert compiled is not None
    matrix = _random_matrix(model, 10_000, seed=0)
    expected = model.booster.predict(matrix, num_iteration=model.info.best_iteration)
    got = compiled.predict(matrix)
    assert got.shape == expected.shape
    assert np.max(np.abs(got - expected)) <= 1e-9


def test_predictor_serves_compiled_trees_and_equals_predict_proba(exported):
    model, export_dir, holdout = exported
    predictor = CTRPredictor("ctr", export_dir)
    predictor.load()
    assert predictor.model.compiled is not None
    names = predictor.input_fields.names
    rows = holdout[names].head(200).astype(object).where(holdout[names].head(200).notna(), None)
    got = predictor.predict_rows(rows.to_dict("records"))
    np.testing.assert_allclose(
        got, model.predict_proba(holdout[names].head(200)), rtol=0, atol=1e-9
    )


def test_booster_serves_when_the_compiled_trees_do_not_match(exported, tmp_path, caplog):
    import shutil

    model, export_dir, holdout = exported
    copy = tmp_path / "copy"
    shutil.copytree(export_dir, copy)
    info = json.loads((copy / COMPILED_INFO).read_text())
    (copy / COMPILED_INFO).write_text(json.dumps({**info, "triple": "riscv64-unknown-linux"}))
    with caplog.at_level(logging.WARNING, logger="kubeloop.serving.compiled_trees"):
        predictor = CTRPredictor("ctr", copy)
        predictor.load()
    assert predictor.model.compiled is None
    assert "serving the LightGBM booster" in caplog.text
    (copy / COMPILED_FILE).unlink()
    assert load_compiled(copy) is None
    names = predictor.input_fields.names
    sample = holdout[names].head(20)
    rows = sample.astype(object).where(sample.notna(), None).to_dict("records")
    np.testing.assert_array_equal(predictor.predict_rows(rows), model.predict_proba(sample))
