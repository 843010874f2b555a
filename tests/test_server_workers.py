"""`--workers 2` (KServe's multi-worker mode): every worker answers with kubeloop's status
codes (413 for a batch over the limit or a body over the edge's limit, 502 for a predictor
that cannot be reached), not KServe's 400/500 fallbacks, and scores like one worker."""

from __future__ import annotations

import httpx
import numpy as np
import pytest
from test_predictor import (
    MODEL_NAME,
    TINY_LGB,
    export_model,
    free_port,
    json_records,
    start_server,
    tiny_data,
)
from test_transformer import build_feature_repo, client_rows

from kubeloop.serving.protocol import MODEL_FIELDS
from models.lightgbm_trainer import train_lightgbm

WORKERS = ["--workers", "2"]


@pytest.fixture(scope="module")
def model_and_rows():
    train, valid, holdout = tiny_data(seed=3)
    return train_lightgbm(train, valid, TINY_LGB), holdout.head(8)


@pytest.fixture(scope="module")
def predictor_url(model_and_rows, tmp_path_factory):
    model, _ = model_and_rows
    root = tmp_path_factory.mktemp("workers")
    export = export_model(model, root)
    args = ["--model_name", MODEL_NAME, "--model_dir", str(export), "--max_body_bytes", "2000000"]
    with start_server("models.predictor", [*args, *WORKERS], root / "predictor.log") as url:
        yield url


def test_two_workers_score_like_predict_proba(predictor_url, model_and_rows):
    model, rows = model_and_rows
    records = json_records(rows, MODEL_FIELDS.names)
    url = f"{predictor_url}/v1/models/{MODEL_NAME}:predict"
    for _ in range(6):  # new connections: the kernel spreads them over the workers
        with httpx.Client() as client:
            response = client.post(url, json={"instances": records}, timeout=30)
        assert response.status_code == 200, response.text
        assert response.headers["x-model-version"] == "v0001"
        np.testing.assert_allclose(
            response.json()["predictions"],
            model.predict_proba(rows[MODEL_FIELDS.names]),
            rtol=0,
            atol=1e-9,
        )


def test_every_worker_answers_413_not_400(predictor_url, model_and_rows):
    _, rows = model_and_rows
    record = json_records(rows.head(1), MODEL_FIELDS.names)[0]
    url = f"{predictor_url}/v1/models/{MODEL_NAME}:predict"
    for _ in range(6):
        with httpx.Client() as client:
            batch = client.post(url, json={"instances": [record] * 1025}, timeout=30)
            body = client.post(url, content=b"x" * 3_000_000, timeout=30)
            bad = client.post(url, json={"instances": [{**record, "hour": "noon"}]}, timeout=30)
        assert batch.status_code == 413, batch.text
        assert "over this server's limit of 1024" in batch.text
        assert body.status_code == 413, body.text
        assert bad.status_code == 400 and "hour" in bad.text


def test_transformer_workers_answer_502_for_an_unreachable_predictor(tmp_path):
    repo = build_feature_repo(tmp_path / "feast")
    args = [
        "--model_name", MODEL_NAME, "--predictor_host", f"127.0.0.1:{free_port()}",
        "--feature_repo", str(repo), *WORKERS,
    ]  # fmt: skip
    with start_server("models.transformer", args, tmp_path / "transformer.log") as url:
        for _ in range(4):
            with httpx.Client() as client:
                response = client.post(
                    f"{url}/v1/models/{MODEL_NAME}:predict",
                    json={"instances": client_rows()[:1]},
                    timeout=30,
                )
            assert response.status_code == 502, response.text
            assert "unreachable" in response.text
