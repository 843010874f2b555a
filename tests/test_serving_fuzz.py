"""Request validation (kubeloop/serving/protocol.py) and fuzzing of both model servers.

The first half unit-tests the pure validation functions, with examples and with
hypothesis properties (any JSON is either a valid batch or an InvalidInput naming the
field; valid rows come back unchanged). The second half runs the real predictor and
transformer entry points (subprocesses, `--max_batch_size 32`) and sends them
hypothesis-generated malformed bodies: every answer must be a 4xx that agrees with the
pure functions (or a 200 where the body happened to be valid), never a 5xx, never a hang
(10 s client timeout), and valid requests still succeed afterwards.
"""

from __future__ import annotations

import json
import math
import uuid

import httpx
import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from kserve.errors import InvalidInput
from kserve.protocol.infer_type import InferInput, InferRequest
from test_predictor import MODEL_NAME, TINY_LGB, export_model, start_server, tiny_data, v2_inputs
from test_transformer import build_feature_repo, client_rows

from kubeloop.serving.protocol import (
    CLIENT_FIELDS,
    MAX_REPORTED_ERRORS,
    MODEL_FIELDS,
    FieldSpec,
    ParsedRequest,
    RequestTooLarge,
    UpstreamError,
    parse_request,
    parse_v1,
    parse_v2,
    probabilities_from_response,
    resolve_request_id,
)
from models.lightgbm_trainer import train_lightgbm

pytestmark = [
    pytest.mark.filterwarnings("ignore::RuntimeWarning"),
    pytest.mark.filterwarnings("ignore::UserWarning"),
    pytest.mark.filterwarnings("ignore::FutureWarning"),
]

FUZZ_LIMIT = 32
HTTP_TIMEOUT = 10.0
FUZZ = settings(
    max_examples=50,
    deadline=None,
    database=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12)
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)


def _value_for(spec: FieldSpec) -> st.SearchStrategy:
    if spec.kind == "string":
        valid = st.text(max_size=16)
    elif spec.kind == "int":
        valid = st.integers(
            spec.minimum if spec.minimum is not None else -(2**63),
            spec.maximum if spec.maximum is not None else 2**63 - 1,
        )
    else:
        valid = st.integers(-(2**40), 2**40) | st.floats(allow_nan=False, allow_infinity=False)
    return (valid | st.none()) if spec.nullable else valid


def valid_rows(fields, max_rows: int = 4) -> st.SearchStrategy:
    row = st.fixed_dictionaries({spec.name: _value_for(spec) for spec in fields.fields})
    return st.lists(row, max_size=max_rows)


# --- the pure functions: examples ------------------------------------------------------


def test_the_error_names_the_field_as_in_the_issue():
    rows = [dict(r) for r in client_rows()[:4]]
    rows[3]["hour"] = "x"
    with pytest.raises(InvalidInput) as info:
        parse_v1({"instances": rows}, CLIENT_FIELDS)
    assert str(info.value) == "instances[3].hour: expected integer 0..23, got 'x'"


@pytest.mark.parametrize(
    ("spec", "good", "bad"),
    [
        (FieldSpec("hour", "int", 0, 23), [0, 23], [-1, 24, 5.0, True, "5", None, [5]]),
        (FieldSpec("hour", "int", 0, 23, nullable=True), [None, 7], [False, 7.5]),
        (
            FieldSpec("x", "number", nullable=True),
            [0, -3, 2.5, 2**63 - 1, None],
            [True, "1", 2**63, math.inf, math.nan],
        ),
        (FieldSpec("device", "string"), ["", "mobile", "é" * 256], [None, 5, "x" * 257, b"mobile"]),
    ],
)
def test_field_specs_accept_exactly_their_values(spec, good, bad):
    assert all(spec.accepts(v) for v in good), [v for v in good if not spec.accepts(v)]
    assert not any(spec.accepts(v) for v in bad), [v for v in bad if spec.accepts(v)]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ([1, 2], "body: expected a JSON object"),
        (b"{nope", "body: not valid JSON"),
        ({}, "instances: missing"),
        (
            {"instances": {"user_id": 1}},
            "instances: expected a list of row objects, got {'user_id': 1}",
        ),
        ({"instances": [], "extra": 1}, "'extra': unknown top-level field"),
        ({"instances": [], "request_id": "has space"}, "request_id: expected a string of 1..128"),
        ({"instances": [5]}, "instances[0]: expected an object with the fields of"),
        ({"instances": [{}]}, "instances[0]: missing fields user_id, ad_id, hour"),
        ({"instances": [{**client_rows()[0], "bogus": 1}]}, "instances[0]: unknown field 'bogus'"),
        (
            {"instances": [{**client_rows()[0], "user_id": -1}]},
            "instances[0].user_id: expected integer 0..",
        ),
        (
            {"instances": [{**client_rows()[0], "device": None}]},
            "instances[0].device: expected string",
        ),
    ],
)
def test_v1_errors(body, message):
    with pytest.raises(InvalidInput) as info:
        parse_request(body, CLIENT_FIELDS)
    assert message in str(info.value)


def test_errors_are_capped_but_counted():
    rows = [{**r, "hour": 99} for r in client_rows()] * 3
    with pytest.raises(InvalidInput) as info:
        parse_v1({"instances": rows}, CLIENT_FIELDS)
    text = str(info.value)
    assert text.count("expected integer 0..23, got 99") == MAX_REPORTED_ERRORS
    assert text.endswith(f"({len(rows)} errors in all)")


def test_oversized_batches_are_request_too_large():
    rows = client_rows()
    with pytest.raises(RequestTooLarge, match=r"instances: batch of 7 rows .* limit of 6"):
        parse_v1({"instances": rows}, CLIENT_FIELDS, max_batch_size=6)
    assert len(parse_v1({"instances": rows}, CLIENT_FIELDS, max_batch_size=7)) == 7
    request = InferRequest(MODEL_NAME, _infer_inputs(v2_inputs(rows, CLIENT_FIELDS)))
    with pytest.raises(RequestTooLarge, match=r"inputs\['user_id'\].shape: batch of 7"):
        parse_v2(request, CLIENT_FIELDS, max_batch_size=6)
    assert RequestTooLarge.status_code == 413 and issubclass(RequestTooLarge, InvalidInput)


def _infer_inputs(inputs: list[dict]) -> list[InferInput]:
    return [InferInput(i["name"], i["shape"], i["datatype"], i["data"]) for i in inputs]


def test_v2_errors():
    rows = client_rows()[:3]
    good = v2_inputs(rows, CLIENT_FIELDS)
    parsed = parse_v2(InferRequest(MODEL_NAME, _infer_inputs(good), request_id="q"), CLIENT_FIELDS)
    assert parsed == ParsedRequest("v2", rows, "q")

    def error(inputs: list[dict]) -> str:
        with pytest.raises(InvalidInput) as info:
            parse_v2(InferRequest(MODEL_NAME, _infer_inputs(inputs)), CLIENT_FIELDS)
        return str(info.value)

    assert "inputs['hour']: missing (expected datatype INT64" in error(
        [i for i in good if i["name"] != "hour"]
    )
    assert "inputs['hour']: given more than once" in error([*good, good[2]])
    assert "inputs['nope']: unknown input" in error([*good, {**good[0], "name": "nope"}])

    def changed(name: str, **changes) -> list[dict]:
        return [{**i, **changes} if i["name"] == name else i for i in good]

    assert "inputs['weekday'].shape: expected [n]" in error(changed("weekday", shape=[3, 1]))
    assert "inputs['ad_id'].shape: expected [3] like inputs['user_id'], got [2]" in error(
        changed("ad_id", shape=[2], data=[10, 11])
    )
    assert "inputs['device'].datatype: expected one of BYTES, got 'INT64'" in error(
        changed("device", datatype="INT64")
    )
    assert "inputs['hour'].data[1]: expected integer 0..23, got 30" in error(
        changed("hour", data=[1, 30, 2])
    )
    assert "inputs['slot_position'].data: expected a flat list of 3 values, got 1" in error(
        changed("slot_position", data=[1])
    )


def test_v2_binary_inputs_are_read():
    rows = client_rows()[:3]
    inputs = []
    for spec in CLIENT_FIELDS.fields:
        column = [r[spec.name] for r in rows]
        array = np.array(column, dtype=object if spec.kind == "string" else np.int64)
        infer_input = InferInput(spec.name, [3], "BYTES" if spec.kind == "string" else "INT64")
        infer_input.set_data_from_numpy(array, binary_data=True)
        inputs.append(infer_input)
    assert parse_v2(InferRequest(MODEL_NAME, inputs), CLIENT_FIELDS).rows == rows


def test_request_id_precedence():
    assert resolve_request_id("body", {"x-request-id": "header"}) == "body"
    assert resolve_request_id(None, {"x-request-id": "header"}) == "header"
    generated = resolve_request_id(None, {})
    assert str(uuid.UUID(generated)) == generated


def test_predictor_answers_are_checked():
    assert probabilities_from_response({"predictions": [0.5, 1]}) == [0.5, 1.0]
    for bad in ({"predictions": ["x"]}, {"oops": 1}, [0.5]):
        with pytest.raises(UpstreamError):
            probabilities_from_response(bad)


# --- the pure functions: properties ------------------------------------------------------


@settings(max_examples=200, deadline=None, database=None)
@given(body=json_values | st.fixed_dictionaries({"instances": st.lists(json_values, max_size=4)}))
def test_any_json_is_a_batch_or_an_invalid_input(body):
    for fields in (CLIENT_FIELDS, MODEL_FIELDS):
        try:
            parsed = parse_request(body, fields, max_batch_size=3)
        except InvalidInput as exc:
            assert str(exc)  # names something; never another exception type
        else:
            assert isinstance(parsed, ParsedRequest) and len(parsed) <= 3


@settings(max_examples=100, deadline=None, database=None)
@given(client=valid_rows(CLIENT_FIELDS), model=valid_rows(MODEL_FIELDS))
def test_valid_rows_come_back_unchanged(client, model):
    assert parse_v1({"instances": client}, CLIENT_FIELDS).rows == client
    assert parse_v1(json.loads(json.dumps({"instances": model})), MODEL_FIELDS).rows == model
    request = InferRequest(MODEL_NAME, _infer_inputs(v2_inputs(client, CLIENT_FIELDS)))
    assert parse_v2(request, CLIENT_FIELDS).rows == client


# --- the running servers -------------------------------------------------------------------


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    """{"predictor": url, "transformer": url}, both with --max_batch_size 32."""
    root = tmp_path_factory.mktemp("fuzz")
    train, valid, holdout = tiny_data()
    export = export_model(train_lightgbm(train, valid, TINY_LGB), root)
    repo = build_feature_repo(root / "feast")
    limit = ["--max_batch_size", str(FUZZ_LIMIT)]
    predictor_args = ["--model_name", MODEL_NAME, "--model_dir", str(export), *limit]
    with start_server("models.predictor", predictor_args, root / "predictor.log") as predictor:
        host = predictor.removeprefix("http://")
        transformer_args = [
            "--model_name",
            MODEL_NAME,
            "--predictor_host",
            host,
            "--feature_repo",
            str(repo),
            *limit,
        ]
        with start_server(
            "models.transformer", transformer_args, root / "transformer.log"
        ) as transformer:
            yield {"predictor": predictor, "transformer": transformer, "holdout": holdout}


@pytest.fixture(scope="module")
def client():
    with httpx.Client(timeout=HTTP_TIMEOUT) as c:
        yield c


def _model_rows(holdout, n: int = 3) -> list[dict]:
    from test_predictor import json_records

    return json_records(holdout.head(n), MODEL_FIELDS.names)


def _fields(server: str):
    return CLIENT_FIELDS if server == "transformer" else MODEL_FIELDS


def _expect(content: bytes, server: str) -> tuple[int, str | None]:
    """(status, error message) the pure functions predict for a v1 body (decoded from
    the same bytes, as the server decodes them: orjson turns integers over 64 bits into
    floats or refuses them)."""
    try:
        parse_request(content, _fields(server), max_batch_size=FUZZ_LIMIT)
    except RequestTooLarge as exc:
        return 413, str(exc)
    except InvalidInput as exc:
        return 400, str(exc)
    return 200, None


def _post_v1(client, servers, server: str, content: bytes, headers=None) -> httpx.Response:
    url = f"{servers[server]}/v1/models/{MODEL_NAME}:predict"
    return client.post(
        url, content=content, headers=headers or {"content-type": "application/json"}
    )


def _check(response: httpx.Response, status: int, message: str | None) -> None:
    event(f"HTTP {response.status_code}")
    assert response.status_code < 500, response.text
    assert response.status_code == status, (response.status_code, response.text, message)
    if message is not None:
        assert response.json()["error"] == message


SERVERS = st.sampled_from(["predictor", "transformer"])


@FUZZ
@given(
    server=SERVERS,
    body=json_values | st.fixed_dictionaries({"instances": st.lists(json_values, max_size=3)}),
)
def test_random_json_bodies(servers, client, server, body):
    content = json.dumps(body).encode()
    status, message = _expect(content, server)
    _check(_post_v1(client, servers, server, content), status, message)


MUTATIONS = st.sampled_from(["set", "delete", "unknown", "replace_row", "request_id"])


@FUZZ
@given(server=SERVERS, data=st.data(), mutation=MUTATIONS, value=json_values)
def test_mutated_valid_bodies(servers, client, server, data, mutation, value):
    rows = client_rows()[:4] if server == "transformer" else _model_rows(servers["holdout"], 4)
    body: dict = {"instances": [dict(r) for r in rows]}
    index = data.draw(st.integers(0, len(rows) - 1))
    field = data.draw(st.sampled_from(_fields(server).names))
    if mutation == "set":
        body["instances"][index][field] = value
    elif mutation == "delete":
        del body["instances"][index][field]
    elif mutation == "unknown":
        body["instances"][index][data.draw(st.text(min_size=1, max_size=8))] = value
    elif mutation == "replace_row":
        body["instances"][index] = value
    else:
        body["request_id"] = value
    content = json.dumps(body).encode()
    status, message = _expect(content, server)
    response = _post_v1(client, servers, server, content)
    _check(response, status, message)
    if status == 400 and mutation in ("set", "delete"):
        assert f"instances[{index}].{field}" in message or f"instances[{index}]: missing" in message


@settings(FUZZ, max_examples=6)
@given(server=SERVERS, extra=st.integers(1, 40))
def test_big_batches(servers, client, server, extra):
    row = client_rows()[0] if server == "transformer" else _model_rows(servers["holdout"], 1)[0]
    n = FUZZ_LIMIT + extra
    response = _post_v1(client, servers, server, json.dumps({"instances": [row] * n}).encode())
    assert response.status_code == 413, response.text
    assert f"batch of {n} rows is over this server's limit of {FUZZ_LIMIT}" in response.text


def _expect_v2(content: bytes, server: str) -> tuple[int, str | None]:
    """(status, error message) for a v2 JSON body: 422 where KServe's pydantic model of
    the request refuses it, else what the pure functions say."""
    from kserve.protocol.rest.v2_datamodels import InferenceRequest
    from pydantic import ValidationError

    try:
        request = InferenceRequest.model_validate(json.loads(content))
    except ValidationError:
        return 422, None
    try:
        parse_v2(
            InferRequest.from_inference_request(request, MODEL_NAME),
            _fields(server),
            max_batch_size=FUZZ_LIMIT,
        )
    except RequestTooLarge as exc:
        return 413, str(exc)
    except InvalidInput as exc:
        return 400, str(exc)
    return 200, None


V2_MUTATIONS = st.sampled_from(
    ["shape", "datatype", "data", "value", "name", "drop", "duplicate", "id", "inputs"]
)


@FUZZ
@given(server=SERVERS, data=st.data(), mutation=V2_MUTATIONS, value=json_values)
def test_mutated_v2_bodies(servers, client, server, data, mutation, value):
    rows = client_rows()[:3] if server == "transformer" else _model_rows(servers["holdout"], 3)
    inputs = v2_inputs(rows, _fields(server))
    body: dict = {"inputs": inputs}
    i = data.draw(st.integers(0, len(inputs) - 1))
    if mutation == "shape":
        inputs[i]["shape"] = data.draw(st.lists(st.integers(-3, 40), max_size=3) | json_values)
    elif mutation == "datatype":
        inputs[i]["datatype"] = data.draw(
            st.sampled_from(["INT64", "INT32", "FP64", "FP32", "FP16", "BYTES", "BOOL", "x"])
        )
    elif mutation == "data":
        inputs[i]["data"] = data.draw(st.lists(json_scalars, max_size=5) | json_values)
    elif mutation == "value":
        inputs[i]["data"][data.draw(st.integers(0, len(rows) - 1))] = value
    elif mutation == "name":
        inputs[i]["name"] = data.draw(st.text(max_size=8) | st.sampled_from(_fields(server).names))
    elif mutation == "drop":
        del inputs[i]
    elif mutation == "duplicate":
        inputs.append(dict(inputs[i]))
    elif mutation == "id":
        body["id"] = value
    else:
        body["inputs"] = value
    content = json.dumps(body).encode()
    status, message = _expect_v2(content, server)
    url = f"{servers[server]}/v2/models/{MODEL_NAME}/infer"
    response = client.post(url, content=content, headers={"content-type": "application/json"})
    _check(response, status, message)


@FUZZ
@given(
    server=SERVERS,
    v2=st.booleans(),
    content=st.binary(max_size=64) | json_values.map(lambda v: json.dumps(v).encode()),
    content_type=st.sampled_from(
        [
            None,
            "application/json",
            "application/json; charset=utf-8",
            "text/plain",
            "application/octet-stream",
        ]
    ),
    binary_header=st.none()
    | st.integers(-5, 80).map(str)
    | st.sampled_from(["", "abc", "1e3", "0x10"]),
)
def test_random_bytes_and_headers(
    servers, client, server, v2, content, content_type, binary_header
):
    path = f"/v2/models/{MODEL_NAME}/infer" if v2 else f"/v1/models/{MODEL_NAME}:predict"
    headers = {}
    if content_type:
        headers["content-type"] = content_type
    if binary_header is not None:
        headers["inference-header-content-length"] = binary_header
    response = client.post(servers[server] + path, content=content, headers=headers)
    event(f"HTTP {response.status_code}")
    assert 400 <= response.status_code < 500 or response.status_code == 200, (
        response.status_code,
        response.text,
    )


def test_servers_still_serve_after_fuzzing(servers, client):
    rows = client_rows()
    response = _post_v1(client, servers, "transformer", json.dumps({"instances": rows}).encode())
    assert response.status_code == 200 and len(response.json()["predictions"]) == len(rows)
    records = _model_rows(servers["holdout"], 5)
    response = _post_v1(client, servers, "predictor", json.dumps({"instances": records}).encode())
    assert response.status_code == 200 and len(response.json()["predictions"]) == 5
    v2 = client.post(
        f"{servers['transformer']}/v2/models/{MODEL_NAME}/infer",
        json={"inputs": v2_inputs(rows, CLIENT_FIELDS)},
    )
    assert v2.status_code == 200 and v2.json()["outputs"][0]["shape"] == [len(rows)]
