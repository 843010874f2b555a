"""The KServe predictor (models/predictor.py): no training/serving skew over v1 and v2.

The HTTP tests start the real entry point, `python -m models.predictor`, as a subprocess
(a real kserve.ModelServer with uvicorn on a free loopback port), on a directory written
by the registry's `export_version`, and compare what comes back over HTTP with the
offline `TrainedModel.predict_proba` of the same rows. The torch test runs the same
predictor class in process (its __call__, KServe's request path minus HTTP).

The server helpers here (`start_server`, `export_model`, `json_records`) are shared by
tests/test_transformer.py and tests/test_serving_fuzz.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest
from _synthetic import make_training_frame
from kserve.protocol.infer_type import InferInput, InferRequest, InferResponse

from kubeloop.registry.export import export_version
from kubeloop.registry.records import ModelVersion
from kubeloop.serving.protocol import MODEL_FIELDS, WIRE_DATATYPE
from kubeloop.training.model_kind import model_kind
from kubeloop.training.split import time_split
from models.lightgbm_trainer import LightGBMTrainConfig, train_lightgbm
from models.predictor import CTRPredictor

REPO_ROOT = Path(__file__).resolve().parents[1]
MODEL_NAME = "ctr"
TINY_LGB = LightGBMTrainConfig(
    num_threads=1, max_rounds=25, min_data_in_leaf=20, min_data_per_group=20, num_leaves=15
)


# --- helpers shared with the other serving tests ---------------------------------------


def tiny_data(seed: int = 1) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """A small synthetic training set, split in time (train, valid, holdout)."""
    frame = make_training_frame(4000, seed=seed, days=7, n_users=300, n_ads=60)
    return time_split(frame, valid_fraction=0.2, holdout_fraction=0.2)


def export_model(model, root: Path, version: str = "v0001") -> Path:
    """Save `model` and export it as the registry would (model files, model.bst for
    LightGBM, reference.parquet, metadata.json); returns the export directory."""
    model_dir = model.save(root / "model")
    record = ModelVersion(
        name=MODEL_NAME,
        version=version,
        stage="production",
        created_at=datetime(2024, 3, 8, tzinfo=UTC),
        model_kind=model.info.kind,
        gate={"passed": True, "reasons": ["test"]},
        feature_service="ctr_model",
        features=MODEL_FIELDS.names,
        training_window={"start": "2024-03-01T00:00:00Z", "end": "2024-03-08T00:00:00Z"},
        data_scenario="baseline",
        code_version="test",
        model_file=model_kind(model.info.kind).weights_file,
        files=sorted(p.name for p in model_dir.iterdir()),
    )
    reference = pd.DataFrame({"hour": [1, 2]})
    return Path(export_version(record, model_dir, root / "export", reference=reference))


def json_value(value):
    """A DataFrame cell as the JSON value a client would send (None for missing)."""
    if value is None or value is pd.NA:
        return None
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return None if math.isnan(value) else float(value)
    return value


def json_records(frame: pd.DataFrame, columns: list[str]) -> list[dict]:
    """Rows of `frame` as JSON-ready dicts with exact float values (no to_json rounding)."""
    return [
        {name: json_value(value) for name, value in zip(columns, row)}
        for row in frame[columns].itertuples(index=False, name=None)
    ]


def v2_inputs(records: list[dict], fields=MODEL_FIELDS) -> list[dict]:
    """The v2 JSON `inputs` of `records`: one input per field, shape [n]."""
    return [
        {
            "name": spec.name,
            "shape": [len(records)],
            "datatype": WIRE_DATATYPE[spec.kind],
            "data": [r[spec.name] for r in records],
        }
        for spec in fields.fields
    ]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def start_server(
    module: str, args: list[str], log_path: Path, timeout: float = 90.0
) -> Iterator[str]:
    """Run `python -m module ARGS --http_port P --enable_grpc false` and yield its base
    URL once /v2/health/ready answers; the process is stopped on exit."""
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}
    command = [
        sys.executable,
        "-m",
        module,
        *args,
        "--http_port",
        str(port),
        "--enable_grpc",
        "false",
    ]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, cwd=REPO_ROOT, env=env
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(
                    f"{module} exited with {proc.returncode}:\n{log_path.read_text()[-3000:]}"
                )
            try:
                if httpx.get(f"{url}/v2/health/ready", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"{module} not ready in {timeout}s:\n{log_path.read_text()[-3000:]}"
                )
            time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


# --- fixtures --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def data():
    return tiny_data()


@pytest.fixture(scope="module")
def lgb_model(data):
    train, valid, _ = data
    return train_lightgbm(train, valid, TINY_LGB)


@pytest.fixture(scope="module")
def export_dir(lgb_model, tmp_path_factory):
    return export_model(lgb_model, tmp_path_factory.mktemp("lgb"))


@pytest.fixture(scope="module")
def predictor_url(export_dir, tmp_path_factory):
    log = tmp_path_factory.mktemp("logs") / "predictor.log"
    args = ["--model_name", MODEL_NAME, "--model_dir", str(export_dir)]
    with start_server("models.predictor", args, log) as url:
        yield url


@pytest.fixture(scope="module")
def rows(data):
    """Holdout rows, cold-start (all-null) users and missing devices included."""
    holdout = data[2]
    sample = holdout.head(60)
    cold = holdout[holdout["user_impressions_7d"].isna()].head(3)
    missing_device = holdout[holdout["device"].isna()].head(2)
    return pd.concat([sample, cold, missing_device], ignore_index=True)


# --- the export directory and the class ------------------------------------------------


def test_export_directory_loads_with_metadata(export_dir, lgb_model, rows):
    assert {"model.txt", "model.bst", "transform.json", "model.json", "metadata.json"} <= {
        p.name for p in export_dir.iterdir()
    }
    predictor = CTRPredictor(MODEL_NAME, export_dir)
    assert not predictor.ready
    assert predictor.load() and predictor.ready
    assert predictor.model_version == "v0001"
    assert predictor.model_kind == "lightgbm"
    assert predictor.registered_name == MODEL_NAME
    records = json_records(rows, MODEL_FIELDS.names)
    got = predictor.predict({"instances": records})["predictions"]
    np.testing.assert_array_equal(got, lgb_model.predict_proba(rows[MODEL_FIELDS.names]))


def test_injected_model_is_ready_and_scores_both_protocols(lgb_model, rows):
    predictor = CTRPredictor(MODEL_NAME, "/nonexistent", model=lgb_model)
    assert predictor.ready
    records = json_records(rows.head(5), MODEL_FIELDS.names)
    v1 = predictor.predict({"instances": records})
    request = InferRequest(
        MODEL_NAME,
        [InferInput(i["name"], i["shape"], i["datatype"], i["data"]) for i in v2_inputs(records)],
        request_id="r-1",
    )
    v2 = predictor.predict(request)
    assert isinstance(v2, InferResponse) and v2.id == "r-1"
    (output,) = v2.outputs
    assert (output.name, output.datatype, output.shape) == ("probability", "FP64", [5])
    assert output.data == v1["predictions"]
    assert predictor.predict({"instances": []}) == {"predictions": []}


def test_metadata_kind_mismatch_is_refused(export_dir, tmp_path):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(export_dir, bad)
    text = (bad / "metadata.json").read_text().replace('"lightgbm"', '"torch"')
    (bad / "metadata.json").write_text(text)
    with pytest.raises(Exception, match="model_kind 'torch'"):
        CTRPredictor(MODEL_NAME, bad).load()


# --- over HTTP: a real kserve.ModelServer ------------------------------------------------


def test_readiness_endpoints(predictor_url):
    assert httpx.get(f"{predictor_url}/v2/health/ready").json() == {"ready": True}
    assert httpx.get(f"{predictor_url}/v1/models/{MODEL_NAME}").json() == {
        "name": MODEL_NAME,
        "ready": True,
    }
    metadata = httpx.get(f"{predictor_url}/v2/models/{MODEL_NAME}").json()
    assert [i["name"] for i in metadata["inputs"]] == MODEL_FIELDS.names
    assert metadata["outputs"] == [{"name": "probability", "datatype": "FP64", "shape": [-1]}]


def test_v1_over_http_equals_offline_predict_proba(predictor_url, lgb_model, rows):
    records = json_records(rows, MODEL_FIELDS.names)
    response = httpx.post(
        f"{predictor_url}/v1/models/{MODEL_NAME}:predict",
        json={"instances": records},
        headers={"x-request-id": "req-v1"},
        timeout=30,
    )
    assert response.status_code == 200, response.text
    assert response.headers["x-request-id"] == "req-v1"
    assert response.headers["x-model-version"] == "v0001"
    predictions = response.json()["predictions"]
    assert all(isinstance(p, float) and 0.0 < p < 1.0 for p in predictions)
    # Bit-identical: JSON carries floats exactly and the transform is element-wise.
    np.testing.assert_array_equal(predictions, lgb_model.predict_proba(rows[MODEL_FIELDS.names]))


def test_v2_over_http_equals_offline_predict_proba(predictor_url, lgb_model, rows):
    records = json_records(rows, MODEL_FIELDS.names)
    response = httpx.post(
        f"{predictor_url}/v2/models/{MODEL_NAME}/infer",
        json={"id": "req-v2", "inputs": v2_inputs(records)},
        timeout=30,
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["id"] == "req-v2" and body["model_version"] == "v0001"
    (output,) = body["outputs"]
    assert (output["name"], output["datatype"], output["shape"]) == (
        "probability",
        "FP64",
        [len(records)],
    )
    np.testing.assert_array_equal(output["data"], lgb_model.predict_proba(rows[MODEL_FIELDS.names]))


def test_bad_requests_get_400_naming_the_field_and_the_server_keeps_serving(predictor_url, rows):
    url = f"{predictor_url}/v1/models/{MODEL_NAME}:predict"
    good = json_records(rows.head(4), MODEL_FIELDS.names)

    bad_hour = [dict(r) for r in good]
    bad_hour[3]["hour"] = "x"
    response = httpx.post(url, json={"instances": bad_hour})
    assert response.status_code == 400
    assert "instances[3].hour: expected integer 0..23 or null, got 'x'" in response.json()["error"]

    no_device = [dict(r) for r in good]
    del no_device[1]["device"]
    response = httpx.post(url, json={"instances": no_device})
    assert response.status_code == 400 and "instances[1].device: missing" in response.text

    response = httpx.post(
        url, content=b'{"instances": [', headers={"content-type": "application/json"}
    )
    assert response.status_code == 400 and "not valid JSON" in response.text

    v2 = v2_inputs(good)
    v2[0]["datatype"] = "FP64"
    response = httpx.post(f"{predictor_url}/v2/models/{MODEL_NAME}/infer", json={"inputs": v2})
    assert response.status_code == 400
    assert "inputs['hour'].datatype: expected one of INT64" in response.text

    ok = httpx.post(url, json={"instances": good})
    assert ok.status_code == 200 and len(ok.json()["predictions"]) == 4


def test_oversized_batch_gets_413_at_the_default_limit(predictor_url, rows):
    record = json_records(rows.head(1), MODEL_FIELDS.names)[0]
    url = f"{predictor_url}/v1/models/{MODEL_NAME}:predict"
    response = httpx.post(url, json={"instances": [record] * 1025}, timeout=30)
    assert response.status_code == 413
    assert "instances: batch of 1025 rows is over this server's limit of 1024" in response.text
    assert httpx.post(url, json={"instances": [record] * 1024}, timeout=30).status_code == 200


def test_body_request_id_wins_over_the_header(predictor_url, rows):
    record = json_records(rows.head(1), MODEL_FIELDS.names)[0]
    response = httpx.post(
        f"{predictor_url}/v1/models/{MODEL_NAME}:predict",
        json={"instances": [record], "request_id": "from-body"},
        headers={"x-request-id": "from-header"},
    )
    assert response.status_code == 200
    assert response.headers["x-request-id"] == "from-body"
    # No request id in the body; the served version is, for KServe's logger (which forwards
    # the response body, not its headers) and so for the drift detector.
    assert list(response.json()) == ["predictions", "model_version"]
    assert response.json()["model_version"] == "v0001"


# --- torch, in process ------------------------------------------------------------------


def test_torch_model_through_the_predictor_equals_predict_proba(data, rows, tmp_path):
    torch = pytest.importorskip("torch")
    from models.torch_trainer import TorchTrainConfig, train_torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train, valid, _ = data
        model = train_torch(train, valid, TorchTrainConfig(num_threads=1, max_epochs=2, patience=1))
        predictor = CTRPredictor(MODEL_NAME, export_model(model, tmp_path))
        predictor.load()
        assert predictor.model_kind == "torch"
        records = json_records(rows, MODEL_FIELDS.names)

        async def call():
            v1, headers = await predictor({"instances": records}, {"X-Request-ID": "t-1"})
            v2, _ = await predictor(
                InferRequest(
                    MODEL_NAME,
                    [
                        InferInput(i["name"], i["shape"], i["datatype"], i["data"])
                        for i in v2_inputs(records)
                    ],
                )
            )
            return v1, headers, v2

        v1, headers, v2 = asyncio.run(call())
        expected = model.predict_proba(rows[MODEL_FIELDS.names])
        assert headers["x-request-id"] == "t-1"
        np.testing.assert_array_equal(v1["predictions"], expected)
        np.testing.assert_array_equal(v2.outputs[0].data, expected)
    finally:
        torch.set_num_threads(previous)


# --- logistic regression, through its spec's predictor hook ------------------------------


def test_logistic_model_through_the_predictor_equals_predict_proba(data, rows, tmp_path):
    from models.logistic import LogisticTrainConfig, train_logistic

    train, valid, _ = data
    model = train_logistic(train, valid, LogisticTrainConfig(c_values=[1.0]))
    export = export_model(model, tmp_path)
    assert not (export / "model.bst").exists()  # no stock KServe server to name a file for
    predictor = CTRPredictor(MODEL_NAME, export)
    predictor.load()
    assert predictor.model_kind == "logistic"
    records = json_records(rows, MODEL_FIELDS.names)

    async def call():
        v1, _ = await predictor({"instances": records})
        return v1

    v1 = asyncio.run(call())
    np.testing.assert_array_equal(v1["predictions"], model.predict_proba(rows[MODEL_FIELDS.names]))
    assert v1["model_version"] == "v0001"
