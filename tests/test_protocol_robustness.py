"""Protocol robustness (issue 10): a real v2 client works in every mode the open inference
protocol allows, and every malformed input from clients nobody here wrote (raw sockets,
requests, httpx; odd headers, chunked and empty bodies, wrong content types, huge
numbers, NaN, wrong shapes and datatypes, the binary tensor extension) gets a 4xx whose
message names the field or header, after which a good request still succeeds. Also: the
served OpenAPI documents the real inputs, v2 metadata reports the served version, and the
example `kubeloop serve` prints works when run exactly as printed.

The predictor and transformer are the real entry points in subprocesses on 127.0.0.1;
every request loop is bounded in count and time.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import requests
from test_predictor import MODEL_NAME, REPO_ROOT, TINY_LGB, export_model, start_server, tiny_data
from test_transformer import build_feature_repo

from kubeloop.serving.protocol import CLIENT_FIELDS, MODEL_FIELDS, WIRE_DATATYPE, example_row
from models.lightgbm_trainer import train_lightgbm

pytestmark = [
    pytest.mark.filterwarnings("ignore::RuntimeWarning"),
    pytest.mark.filterwarnings("ignore::UserWarning"),
    pytest.mark.filterwarnings("ignore::FutureWarning"),
]

TIMEOUT = 20.0
SERVERS = ["predictor", "transformer"]


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    root = tmp_path_factory.mktemp("protocol")
    train, valid, _ = tiny_data()
    export = export_model(train_lightgbm(train, valid, TINY_LGB), root)
    repo = build_feature_repo(root / "feast")
    args = ["--model_name", MODEL_NAME, "--model_dir", str(export)]
    with start_server("models.predictor", args, root / "predictor.log") as predictor:
        transformer_args = [
            "--model_name", MODEL_NAME, "--predictor_host", predictor.removeprefix("http://"),
            "--feature_repo", str(repo),
        ]  # fmt: skip
        with start_server("models.transformer", transformer_args, root / "t.log") as transformer:
            yield {"predictor": predictor, "transformer": transformer}


def _fields(server: str):
    return CLIENT_FIELDS if server == "transformer" else MODEL_FIELDS


def _row(server: str) -> dict:
    return example_row(_fields(server))


def _v2_inputs(server: str, n: int = 1) -> list[dict]:
    row = _row(server)
    return [
        {"name": s.name, "shape": [n], "datatype": WIRE_DATATYPE[s.kind], "data": [row[s.name]] * n}
        for s in _fields(server).fields
    ]


def _binary_body(server: str, device: bytes = b"mobile") -> tuple[bytes, int]:
    """A v2 request in the binary tensor extension: every input as raw bytes after the
    JSON header (BYTES as 4-byte little-endian length + bytes). Returns (body, header
    length)."""
    row = _row(server)
    inputs, blobs = [], []
    for spec in _fields(server).fields:
        datatype = WIRE_DATATYPE[spec.kind]
        if datatype == "BYTES":
            value = device if spec.name == "device" else str(row[spec.name]).encode()
            blob = struct.pack("<I", len(value)) + value
        elif datatype == "INT64":
            blob = struct.pack("<q", row[spec.name])
        else:
            blob = struct.pack("<d", row[spec.name])
        blobs.append(blob)
        inputs.append(
            {
                "name": spec.name,
                "shape": [1],
                "datatype": datatype,
                "parameters": {"binary_data_size": len(blob)},
            }
        )
    header = json.dumps({"inputs": inputs}).encode()
    return header + b"".join(blobs), len(header)


def raw_http(url: str, request: bytes, timeout: float = 10.0) -> tuple[int, dict, bytes]:
    """Send `request` (a whole HTTP/1.1 message) over a raw socket; (status, headers,
    body) of the answer, read until the server closes."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=timeout) as sock:
        sock.sendall(request)
        data = b""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
            head, sep, body = data.partition(b"\r\n\r\n")
            if sep:
                lines = head.decode("latin-1").split("\r\n")
                headers = {
                    k.strip().lower(): v.strip()
                    for k, v in (line.split(":", 1) for line in lines[1:])
                }
                if len(body) >= int(headers.get("content-length", 10**9)):
                    return int(lines[0].split()[1]), headers, body
    raise AssertionError(f"no complete answer to {request[:80]!r}: {data[:200]!r}")


def raw_post(url: str, path: str, body: bytes, headers: list[tuple[str, str]]) -> tuple[int, dict]:
    head = f"POST {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in headers)
    if not any(k.lower() in ("content-length", "transfer-encoding") for k, _ in headers):
        head += f"Content-Length: {len(body)}\r\n"
    status, _, content = raw_http(url, head.encode("latin-1") + b"\r\n" + body)
    return status, json.loads(content) if content else {}


def _assert_still_serves(servers, server: str) -> None:
    with httpx.Client(timeout=TIMEOUT) as client:
        r = client.post(
            f"{servers[server]}/v1/models/{MODEL_NAME}:predict", json={"instances": [_row(server)]}
        )
        assert r.status_code == 200, r.text
        r = client.post(
            f"{servers[server]}/v2/models/{MODEL_NAME}/infer", json={"inputs": _v2_inputs(server)}
        )
        assert r.status_code == 200, r.text


# --- every mode of the protocol ------------------------------------------------------------


@pytest.mark.parametrize("server", SERVERS)
@pytest.mark.parametrize(
    "content_type", [None, "text/plain", "application/json; charset=utf-8", "application/json"]
)
def test_v2_json_in_any_content_type_is_json(servers, server, content_type):
    body = json.dumps({"id": "json-1", "inputs": _v2_inputs(server, 2)}).encode()
    headers = [("Content-Type", content_type)] if content_type else []
    status, answer = raw_post(servers[server], f"/v2/models/{MODEL_NAME}/infer", body, headers)
    assert status == 200, answer
    assert answer["id"] == "json-1" and answer["outputs"][0]["shape"] == [2]


@pytest.mark.parametrize("server", SERVERS)
@pytest.mark.parametrize("content_type", [None, "application/octet-stream", "application/json"])
def test_v2_binary_tensor_extension(servers, server, content_type):
    body, length = _binary_body(server)
    headers = {"inference-header-content-length": str(length)}
    if content_type:
        headers["content-type"] = content_type
    url = f"{servers[server]}/v2/models/{MODEL_NAME}/infer"
    r = requests.post(url, data=body, headers=headers, timeout=TIMEOUT)
    assert r.status_code == 200, r.text
    assert r.json()["outputs"][0]["shape"] == [1]

    bad, length = _binary_body(server, device=b"\xff\xfemob")
    headers["inference-header-content-length"] = str(length)
    r = requests.post(url, data=bad, headers=headers, timeout=TIMEOUT)
    assert r.status_code == 400, r.text
    assert "'device'" in r.json()["error"] and "not UTF-8" in r.json()["error"]
    _assert_still_serves(servers, server)


@pytest.mark.parametrize("server", SERVERS)
def test_request_id_header_is_checked(servers, server):
    body = json.dumps({"instances": [_row(server)]}).encode()
    path = f"/v1/models/{MODEL_NAME}:predict"
    json_header = ("Content-Type", "application/json")
    for value in ("has space", "x" * 129, "tab\there", "é".encode().decode("latin-1")):
        status, answer = raw_post(
            servers[server], path, body, [json_header, ("X-Request-Id", value)]
        )
        assert status == 400, (value, answer)
        assert answer["error"].startswith("x-request-id header:"), answer
    status, answer = raw_post(servers[server], path, body, [json_header, ("X-Request-Id", "ok-1")])
    assert status == 200, answer


def _malformed(server: str) -> list[tuple[str, str, bytes, list[tuple[str, str]], str]]:
    """(case, path, body, headers, a word the error must contain)."""
    v1 = f"/v1/models/{MODEL_NAME}:predict"
    v2 = f"/v2/models/{MODEL_NAME}/infer"
    jh = [("Content-Type", "application/json")]
    row = _row(server)
    first = _fields(server).fields[0].name

    def v1_body(value) -> bytes:
        return json.dumps({"instances": [{**row, first: value}]}).encode()

    def v2_body(**changes) -> bytes:
        inputs = _v2_inputs(server)
        inputs[0] = {**inputs[0], **changes}
        return json.dumps({"inputs": inputs}).encode()

    binary, length = _binary_body(server)
    return [
        ("v1 empty", v1, b"", jh, "body"),
        ("v1 empty, no type", v1, b"", [], "body"),
        ("v2 empty", v2, b"", jh, "body"),
        ("v2 empty, no type", v2, b"", [], "body"),
        ("v1 xml", v1, b"<instances/>", [("Content-Type", "application/xml")], "body"),
        ("v2 form", v2, b"a=1&b=2", [("Content-Type", "application/x-www-form-urlencoded")], "body"),
        ("v1 huge number", v1, v1_body(10**30), jh, first),
        ("v1 1e400", v1, v1_body(1) .replace(b": 1,", b": 1e400,", 1), jh, "body"),
        ("v1 NaN", v1, v1_body(1).replace(b": 1,", b": NaN,", 1), jh, "body"),
        ("v2 NaN", v2, v2_body(data=[1]).replace(b'"data": [1]', b'"data": [NaN]', 1), jh, first),
        ("v2 Infinity", v2, v2_body(data=[1]).replace(b'"data": [1]', b'"data": [Infinity]', 1), jh, first),
        ("v2 huge number", v2, v2_body(data=[10**30]), jh, first),
        ("v2 shape 2-d", v2, v2_body(shape=[1, 1]), jh, "shape"),
        ("v2 shape negative", v2, v2_body(shape=[-1]), jh, "shape"),
        ("v2 shape text", v2, v2_body(shape="x"), jh, "shape"),
        ("v2 datatype FP16", v2, v2_body(datatype="FP16"), jh, first),
        ("v2 datatype BOOL", v2, v2_body(datatype="BOOL"), jh, "datatype"),
        ("v2 data not a list", v2, v2_body(data=5), jh, "data"),
        ("v2 no inputs", v2, b'{"id": "x"}', jh, "inputs"),
        ("v2 id not text", v2, json.dumps({"id": 7, "inputs": _v2_inputs(server)}).encode(), jh, "id"),
        ("v1 deep", v1, b"[" * 20000 + b"]" * 20000, jh, "body"),
        ("v2 deep", v2, b"[" * 20000 + b"]" * 20000, [], "body"),
        ("v2 not UTF-8", v2, b'{"inputs": "\xff"}', [], "body"),
        ("binary length text", v2, binary, [("Inference-Header-Content-Length", "abc")], "inference-header-content-length"),
        ("binary length over", v2, binary, [("Inference-Header-Content-Length", str(len(binary) + 1))], "inference-header-content-length"),
        ("binary cut short", v2, binary[:-3], [("Inference-Header-Content-Length", str(length))], "binary_data_size"),
        ("binary trailing", v2, binary + b"xx", [("Inference-Header-Content-Length", str(length))], "body"),
        ("binary header cut", v2, binary, [("Inference-Header-Content-Length", "5")], "body"),
    ]  # fmt: skip


@pytest.mark.parametrize("server", SERVERS)
def test_malformed_inputs_get_a_4xx_naming_the_field(servers, server):
    started = time.monotonic()
    cases = _malformed(server)
    for case, path, body, headers, word in cases:
        status, answer = raw_post(servers[server], path, body, headers)
        assert 400 <= status < 500, (case, status, answer)
        assert isinstance(answer.get("error"), str), (case, answer)
        assert word.lower() in answer["error"].lower(), (case, answer)
        assert time.monotonic() - started < 120
    # Chunked: a malformed body and a good one.
    chunked = [("Content-Type", "application/json"), ("Transfer-Encoding", "chunked")]
    bad = b'5\r\n{"ins\r\n0\r\n\r\n'
    status, answer = raw_post(servers[server], f"/v1/models/{MODEL_NAME}:predict", bad, chunked)
    assert status == 400 and answer["error"].startswith("body"), answer
    good = json.dumps({"instances": [_row(server)]}).encode()
    body = b"%x\r\n%s\r\n0\r\n\r\n" % (len(good), good)
    status, answer = raw_post(servers[server], f"/v1/models/{MODEL_NAME}:predict", body, chunked)
    assert status == 200, answer
    _assert_still_serves(servers, server)


# --- what the servers say about themselves --------------------------------------------------


@pytest.mark.parametrize("server", SERVERS)
def test_openapi_documents_the_real_inputs_and_the_4xx(servers, server):
    doc = httpx.get(f"{servers[server]}/openapi.json", timeout=TIMEOUT).json()
    schemas = doc["components"]["schemas"]
    names = _fields(server).names
    assert list(schemas["V1Row"]["properties"]) == names
    assert schemas["V1Row"]["required"] == names
    inputs = schemas["V2Request"]["properties"]["inputs"]["items"]["oneOf"]
    assert [i["properties"]["name"]["enum"] for i in inputs] == [[n] for n in names]
    if server == "transformer":
        assert schemas["V1Row"]["properties"]["slot_position"]["minimum"] == 1
    v1 = doc["paths"]["/v1/models/{model_name}:predict"]["post"]
    v2 = doc["paths"]["/v2/models/{model_name}/infer"]["post"]
    assert v1["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith("V1Request")
    assert v2["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith("V2Request")
    for op in (v1, v2):
        assert {"200", "400", "413"} <= set(op["responses"])
    assert not [p for p in doc["paths"] if p.startswith("/v2/repository")]


def test_v2_metadata_reports_the_served_version(servers):
    with httpx.Client(timeout=TIMEOUT) as client:
        base = f"{servers['predictor']}/v2/models/{MODEL_NAME}"
        assert client.get(base).json()["versions"] == ["v0001"]
        assert client.get(f"{base}/versions/v0001").json()["versions"] == ["v0001"]
        assert client.get(f"{base}/versions/v0001/ready").json()["ready"] is True
        r = client.post(f"{base}/versions/v0001/infer", json={"inputs": _v2_inputs("predictor")})
        assert r.status_code == 200 and r.json()["model_version"] == "v0001", r.text
        r = client.get(f"{base}/versions/v0009")
        assert r.status_code == 404 and "v0009" in r.json()["error"]
        transformer = f"{servers['transformer']}/v2/models/{MODEL_NAME}"
        assert client.get(transformer).json()["versions"] == ["v0001"]
        assert client.get(f"{transformer}/versions/v0001/infer").status_code == 404


# --- the example kubeloop serve prints -------------------------------------------------------


def _serve_workdir(root: Path) -> Path:
    """A workdir with a feature repository and one production version of `ctr`."""
    from test_registry import _request

    from kubeloop.registry.backends import open_registry
    from kubeloop.workdir import Workdir

    wd = Workdir.at(root / "wd")
    repo = build_feature_repo(root / "feast")
    wd.root.mkdir(parents=True, exist_ok=True)
    wd.feature_repo.symlink_to(repo, target_is_directory=True)
    train, valid, holdout = tiny_data()
    model_dir = train_lightgbm(train, valid, TINY_LGB).save(root / "model")
    registry = open_registry(wd.registry)
    request = _request(features=MODEL_FIELDS.names)
    version = registry.register(
        MODEL_NAME, model_dir, request, reference=holdout[MODEL_FIELDS.names].head(100)
    )
    registry.promote(MODEL_NAME, version.version)
    return wd.root


def test_the_example_kubeloop_serve_prints_works(tmp_path):
    if shutil.which("curl") is None:
        pytest.skip("curl is not installed: the printed example is a curl command")
    workdir = _serve_workdir(tmp_path)
    kubeloop = Path(sys.executable).with_name("kubeloop")
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [str(kubeloop), "serve", "--workdir", str(workdir), "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        cwd=REPO_ROOT,
    )
    lines: list[str] = []
    try:
        deadline = time.monotonic() + 180
        example = None
        while example is None and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            if line.strip().startswith("curl "):
                example = line.strip()
        assert example is not None, "".join(lines)
        result = subprocess.run(
            ["bash", "-c", example], capture_output=True, text=True, timeout=60, check=False
        )
        assert result.returncode == 0, result.stderr
        answer = json.loads(result.stdout)
        assert len(answer.get("predictions", [])) == 1, answer
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
