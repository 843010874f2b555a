"""The KServe transformer: request context + one Feast online lookup -> predictor request.

    python -m models.transformer --model_name ctr --predictor_host HOST:PORT \\
        --feature_repo DIR --http_port 8080 [--use_case NAME]
        [--online_store sqlite|redis --redis_url URL]

A client sends the use case's request fields (entity ids and request context), v1
``{"instances": [{<field>: value, ...}, ...], "request_id": optional}`` or the same fields
as v2 inputs. `preprocess` validates them (`kubeloop.serving.protocol.client_fields`), looks
up every entity feature of the batch in ONE call to the use case's feature service, and
builds the predictor request: one row per instance with every column of the use case's
`model_input_columns()`. An entity the online store does not hold gets
nulls, which the model's feature transform imputes exactly as in training (a cold-start
entity in the training set has no feature row either). KServe's `predict` posts that to
`<predictor_host>/v1/models/<model_name>:predict` (or the v2 infer path with
`--predictor_protocol v2`); `postprocess` returns ``{"predictions": [...]}``, or a v2
response with output `probability` when the client spoke v2.

Request ids: the body's `request_id` (v2: the request `id`), else the client's
`x-request-id` header, else a new UUID, is sent to the predictor hop as `x-request-id`
(with KServe's other forwarded headers, `x-b3-traceid` and `authorization`) and echoed in
the response's `x-request-id`. The router between transformer and predictors routes and
logs by it. It also goes as `ce-id`: KServe's logger on the predictor takes a request's
CloudEvent id from that header and makes a new UUID without it (kserve v0.20.0
`pkg/logger/handler.go:143,210-216`), and KServe's own client forwards only x-request-id,
x-b3-traceid and authorization; without it, labels and shadow answers could not be joined
to the logged answer.

Shadow (issue 12): with `--shadow_hosts` (the predictor's `latest-`/`prev-` route tags) and
`--request_log_url`, every predictor request is also scored, off the caller's path, by the
shadow host that serves the other version (`kubeloop.serving.shadow`), and its answer is
POSTed to the request log with variant "shadow" and the same request id. The caller's
answer never depends on it; `kubeloop_shadow_requests_total{result}` on /metrics counts
mirrored, failed and dropped copies.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import warnings
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import numpy as np
import orjson
import pandas as pd
from kserve.constants.constants import INFERENCE_CONTENT_LENGTH_HEADER
from kserve.errors import InvalidInput, ModelNotReady
from kserve.predictor_config import PredictorConfig
from kserve.protocol.infer_type import InferInput, InferRequest, InferResponse

from kubeloop.errors import FeatureStoreError
from kubeloop.features.request_time import request_time_us
from kubeloop.serving.http_client import KeepAlivePool, UpstreamHTTPError
from kubeloop.serving.kserve_model import ServedModel, finish_server_parser, server_parser
from kubeloop.serving.model_server import make_model_server
from kubeloop.serving.protocol import (
    DEFAULT_MAX_BATCH_SIZE,
    REQUEST_ID_HEADER,
    WIRE_DATATYPE,
    RequestTooLarge,
    UpstreamError,
    client_fields,
    decisions_from_response,
    example_row,
    lower_headers,
    model_fields,
    parse_request,
    probabilities_from_response,
    resolve_request_id,
    v2_response,
)
from kubeloop.usecase import UseCase, resolve_use_case

if TYPE_CHECKING:
    from feast import FeatureStore

PROTOCOLS = ("v1", "v2")
# Keep-alive connections to the predictor at most (KServe's client pools up to 100).
PREDICTOR_CONNECTIONS = 100
# Readiness and metadata calls must answer fast, whatever the predictor timeout is.
PROBE_TIMEOUT_SECONDS = 2.0


def open_feature_store(
    repo_dir: str | Path, online_store: str | None = None, redis_url: str | None = None
) -> FeatureStore:
    """Open the Feast repository `repo_dir`, optionally pointing its online store elsewhere
    than its feature_store.yaml says (the cluster: `online_store="redis"` and the
    in-cluster Redis URL)."""
    from feast import FeatureStore

    from kubeloop.errors import FeatureStoreError
    from kubeloop.features.store import online_store_config, read_settings, repo_config

    repo = Path(repo_dir).expanduser().resolve()
    settings = read_settings(repo)
    if online_store is not None:
        options = {"connection_string": redis_url} if online_store == "redis" else {}
        settings = settings.model_copy(
            update={"online_store": online_store_config(online_store, **options)}
        )
    if redis_url is not None and settings.online_store.type != "redis":
        raise FeatureStoreError(
            f"--redis_url was given but the online store is {settings.online_store.type!r}: "
            "add --online_store redis"
        )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return FeatureStore(repo_path=str(repo), config=repo_config(repo, settings))


def _json_scalar(value: Any) -> Any:
    """A pandas/numpy cell as a JSON value (None for every kind of missing)."""
    if value is None or value is pd.NA or value is pd.NaT:
        return None
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def join_online_features(
    rows: list[dict[str, Any]],
    online: pd.DataFrame | Mapping[str, list[Any]],
    *,
    use_case: UseCase | str | None = None,
) -> list[dict[str, Any]]:
    """Predictor rows: the request context of `rows[i]` plus the features of `online`'s
    row i, keyed by the use case's `model_input_columns()` in its order. `online` is
    `OnlineReader.read`'s columns (the transformer) or `online_features`' DataFrame."""
    spec = resolve_use_case(use_case)
    if isinstance(online, pd.DataFrame):
        answered = len(online)
        features = {
            name: [_json_scalar(v) for v in online[name].tolist()] for name in spec.feature_columns
        }
    else:
        answered = len(online[spec.feature_columns[0]]) if spec.feature_columns else len(rows)
        features = {name: [_json_scalar(v) for v in online[name]] for name in spec.feature_columns}
    if answered != len(rows):
        raise UpstreamError(
            f"the online store answered {answered} rows for {len(rows)} entity rows"
        )
    out = []
    for i, row in enumerate(rows):
        joined = {}
        for name in model_fields(spec).names:
            joined[name] = features[name][i] if name in features else row[name]
        out.append(joined)
    return out


def predictor_infer_request(
    rows: list[dict[str, Any]],
    model_name: str,
    request_id: str | None,
    *,
    use_case: UseCase | str | None = None,
) -> InferRequest:
    """The v2 form of a predictor request: one input per model column, shape [n]."""
    inputs = [
        InferInput(
            name=spec.name,
            shape=[len(rows)],
            datatype=WIRE_DATATYPE[spec.kind],
            data=[row[spec.name] for row in rows],
        )
        for spec in model_fields(use_case).fields
    ]
    return InferRequest(model_name=model_name, infer_inputs=inputs, request_id=request_id)


class FeastTransformer(ServedModel):
    """Feast online lookup in front of the kubeloop predictor.

    `store` injects an opened Feast `FeatureStore` (tests), which makes the transformer
    ready at once; otherwise `load()` opens `feature_repo` (with `online_store` /
    `redis_url` overriding its online store). `protocol` is the protocol of the
    predictor hop ("v1" or "v2"); clients may use either. `use_case` (a spec, a registered
    name, or None for the default) gives the request fields and the feature service.
    """

    def __init__(
        self,
        name: str,
        predictor_host: str,
        feature_repo: str | Path | None,
        store: FeatureStore | None = None,
        protocol: str = "v1",
        *,
        max_batch_size: int = DEFAULT_MAX_BATCH_SIZE,
        online_store: str | None = None,
        redis_url: str | None = None,
        predictor_use_ssl: bool = False,
        predictor_timeout_seconds: int = 60,
        predictor_retries: int = 0,
        predictor_health_check: bool = False,
        use_case: UseCase | str | None = None,
        shadow: Any = None,
        shadow_targets: Any = None,
    ):
        super().__init__(name)
        # kubeloop.serving.shadow.ShadowMirror and ShadowTargets (None: no shadow stage).
        self.shadow = shadow
        self.shadow_targets = shadow_targets
        self.use_case = resolve_use_case(use_case)
        self.input_fields = client_fields(self.use_case)
        if protocol not in PROTOCOLS:
            raise ValueError(f"protocol {protocol!r} is not one of {PROTOCOLS}")
        self.predictor_host = predictor_host
        self.feature_repo = Path(feature_repo) if feature_repo is not None else None
        self.protocol = protocol
        self.max_batch_size = max_batch_size
        self.online_store = online_store
        self.redis_url = redis_url
        self.store = store
        # The model's own predictor settings, not KServe's process-wide context variable:
        # the transformer then works the same in a ModelServer, a thread or a test.
        self._predictor_config = PredictorConfig(
            predictor_host=predictor_host,
            predictor_protocol=protocol,
            predictor_use_ssl=predictor_use_ssl,
            predictor_request_timeout_seconds=predictor_timeout_seconds,
            predictor_request_retries=predictor_retries,
            predictor_health_check=predictor_health_check,
        )
        # Feast's SQLite store shares one connection; lookups run one at a time, off the
        # event loop.
        self._lookups = ThreadPoolExecutor(max_workers=1, thread_name_prefix="feast-online")
        # kubeloop.features.online.OnlineReader: the feature views resolved once.
        self._reader: Any = None
        # (event loop, KeepAlivePool) of the predictor hop (`_predictor_pool`).
        self._pool: tuple[Any, KeepAlivePool] | None = None
        if store is not None:
            self.ready = True

    @property
    def predictor_config(self) -> PredictorConfig:
        return self._predictor_config

    # KServe's worker processes (`--workers N`) get the transformer pickled: the lookup
    # thread, the reader and KServe's HTTP client are made again there, and a store
    # opened from feature_repo is opened again (its connections are per process).
    def __getstate__(self) -> dict[str, Any]:
        if self.shadow is not None:
            raise TypeError("a transformer with a shadow mirror runs one worker")
        state = dict(self.__dict__)
        # The use case travels by its registered name (its spec holds mapping proxies).
        state.update(
            _lookups=None,
            _reader=None,
            _http_client_instance=None,
            _pool=None,
            use_case=self.use_case.name,
        )
        if self.feature_repo is not None:
            state.update(store=None, ready=False)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.use_case = resolve_use_case(self.use_case)
        self._lookups = ThreadPoolExecutor(max_workers=1, thread_name_prefix="feast-online")
        if self.store is None and self.feature_repo is not None:
            self.load()

    def load(self) -> bool:
        """Open the feature repository and check the feature service is registered."""
        from kubeloop.errors import FeatureStoreError

        if self.store is None:
            if self.feature_repo is None:
                raise FeatureStoreError("no feature repository: pass feature_repo or a store")
            self.store = open_feature_store(self.feature_repo, self.online_store, self.redis_url)
        try:
            self.store.get_feature_service(self.use_case.feature_service)
        except Exception as exc:  # Feast's FeatureServiceNotFoundException and kin
            raise FeatureStoreError(
                f"feature service {self.use_case.feature_service!r} is not registered in the "
                f"repository {self.feature_repo}: run `kubeloop features apply` ({exc})"
            ) from exc
        self.ready = True
        return self.ready

    def stop(self) -> None:
        self._lookups.shutdown(wait=False)
        super().stop()

    # --- readiness and versions ---------------------------------------------------------

    async def healthy(self) -> bool:
        """Ready and really answering: one online lookup of a probe row succeeds within
        PROBE_TIMEOUT_SECONDS (the predictor too is checked when KServe's
        --enable_predictor_health_check is on)."""
        if not self.ready or self.store is None:
            return False
        try:
            await asyncio.wait_for(
                self.lookup([example_row(self.input_fields)]), timeout=PROBE_TIMEOUT_SECONDS
            )
        except (TimeoutError, UpstreamError, ModelNotReady, RuntimeError):
            return False  # RuntimeError: the lookup pool is shut down (stopping)
        return True

    async def served_versions(self) -> list[str] | None:
        """The versions the predictor hop reports in its v2 metadata (through the router:
        the primary's), None when it does not answer."""
        url = f"{self._predictor_config.predictor_base_url}/v2/models/{self.name}"
        try:
            async with httpx.AsyncClient(timeout=PROBE_TIMEOUT_SECONDS) as client:
                response = await client.get(url)
            versions = response.json().get("versions") if response.status_code == 200 else None
        except (httpx.HTTPError, ValueError, AttributeError):
            return None
        if isinstance(versions, list) and all(isinstance(v, str) for v in versions):
            return versions
        return None

    # --- the request path (v2 metadata and request ids: ServedModel) ---------------------

    def finish_response(self, body: Any, response: Any, request_id: str | None) -> Any:
        """A v2 request gets a v2 answer, whatever protocol the predictor hop spoke."""
        if isinstance(body, InferRequest) and isinstance(response, dict):
            return v2_response(response["predictions"], body, self.name, request_id=request_id)
        return response

    def _read(self, rows: list[dict[str, Any]], now: int | None = None) -> dict[str, list[Any]]:
        from kubeloop.features.online import OnlineReader

        if self._reader is None or self._reader.store is not self.store:
            self._reader = OnlineReader(self.store, self.use_case)
        return self._reader.read(rows, now)

    async def lookup(
        self, rows: list[dict[str, Any]], now: int | None = None
    ) -> dict[str, list[Any]]:
        """One online read of every entity feature for `rows` (input order), as columns of
        `online_columns()`: Feast's online-store read, the feature views resolved once,
        on the lookup thread (never on the event loop). The use case's request-time
        features are computed at `now` (epoch microseconds; None: the clock)."""
        if self.store is None:
            raise ModelNotReady(self.name, "the feature store is not open")
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._lookups, self._read, rows, now)
        except Exception as exc:  # Redis down, Feast errors: not the client's fault
            raise UpstreamError(
                f"online feature lookup failed: {type(exc).__name__}: {exc}"
            ) from exc

    async def preprocess(
        self, payload: dict | InferRequest | bytes, headers: dict[str, str] | None = None
    ) -> dict | InferRequest:
        """Validate the client request, look up its features, build the predictor request."""
        parsed = parse_request(payload, self.input_fields, max_batch_size=self.max_batch_size)
        request_id = resolve_request_id(parsed.request_id, lower_headers(headers))
        if headers is not None:
            headers[REQUEST_ID_HEADER] = request_id
        # A replay of past traffic says when its request happened; live traffic is now.
        try:
            now = request_time_us(headers)
        except FeatureStoreError as exc:  # the client's header: a 400, nothing looked up
            raise InvalidInput(str(exc)) from exc
        online = await self.lookup(parsed.rows, now)
        rows = join_online_features(parsed.rows, online, use_case=self.use_case)
        if self.protocol == "v2":
            return predictor_infer_request(rows, self.name, request_id, use_case=self.use_case)
        return {"instances": rows}

    async def _http_predict(
        self,
        payload: dict | InferRequest,
        headers: dict[str, str] | None = None,
        response_headers: dict[str, str] | None = None,
    ):
        """KServe's HTTP hop to the predictor, plus `ce-id`: the id KServe's logger gives the
        logged request and response (see the module docstring)."""
        given = headers or {}
        predict_headers = {"Content-Type": "application/json"}
        for key in ("x-request-id", "x-b3-traceid", "authorization"):
            if key in given:
                predict_headers[key] = given[key]
        if given.get(REQUEST_ID_HEADER):
            predict_headers["ce-id"] = given[REQUEST_ID_HEADER]
        pool = self._predictor_pool()
        if pool is not None:
            return await self._pooled_predict(pool, payload, predict_headers, response_headers)
        return await self._http_client.infer(
            self.predictor_config.predictor_base_url,
            model_name=self.name,
            data=payload,
            headers=predict_headers,
            response_headers=response_headers,
        )

    def _predictor_pool(self) -> KeepAlivePool | None:
        """The keep-alive pool to the predictor for this event loop, or None where KServe's
        own client carries the hop: TLS, retries asked for (its transport retries), or a
        client already given to the model (`_http_client_instance`, as tests inject)."""
        config = self._predictor_config
        if config.predictor_use_ssl or config.predictor_request_retries:
            return None
        if self._http_client_instance is not None:
            return None
        loop = asyncio.get_running_loop()
        if self._pool is None or self._pool[0] is not loop:
            pool = KeepAlivePool(
                config.predictor_base_url,
                max_connections=PREDICTOR_CONNECTIONS,
                timeout=float(config.predictor_request_timeout_seconds),
            )
            self._pool = (loop, pool)
        return self._pool[1]

    async def _pooled_predict(
        self,
        pool: KeepAlivePool,
        payload: dict | InferRequest,
        headers: dict[str, str],
        response_headers: dict[str, str] | None,
    ) -> Any:
        """The exchange of KServe's `InferenceRESTClient.infer` (the same request and
        answer, the same HTTPStatusError for a non-2xx answer) over `pool`: httpx cost
        1.5-2 ms of CPU per hop on this kind of machine, the pool a tenth of that
        (kubeloop.serving.http_client)."""
        if isinstance(payload, InferRequest):
            target = f"/v2/models/{self.name}/infer"
            data, json_length = payload.to_rest()
            if json_length:
                headers = {
                    **headers,
                    INFERENCE_CONTENT_LENGTH_HEADER: str(json_length),
                    "Content-Type": "application/octet-stream",
                }
            body = data if isinstance(data, bytes) else orjson.dumps(data)
        else:
            target = f"/v1/models/{self.name}:predict"
            body = orjson.dumps(payload)
        status, raw_headers, content = await pool.request(
            "POST", target, list(headers.items()), body
        )
        answer_headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in raw_headers}
        if not 200 <= status < 300:
            url = f"{self._predictor_config.predictor_base_url}{target}"
            request = httpx.Request("POST", url)
            raise httpx.HTTPStatusError(
                f"{status} from {url}: {content[:500].decode('utf-8', 'replace')}",
                request=request,
                response=httpx.Response(status, content=content, request=request),
            )
        if response_headers is not None:
            response_headers.update(answer_headers)
        if isinstance(payload, InferRequest):
            length = answer_headers.get(INFERENCE_CONTENT_LENGTH_HEADER, len(content))
            return InferResponse.from_bytes(content, int(length))
        try:
            return orjson.loads(content)
        except orjson.JSONDecodeError as exc:
            raise UpstreamError(f"the predictor answered invalid JSON: {exc}") from None

    def _mirror(self, payload: dict | InferRequest, headers: dict | None, result: Any) -> None:
        """Hand a copy of the predictor request to the shadow mirror (never waits; the
        caller's answer is already in hand)."""
        if self.shadow is None or self.shadow_targets is None:
            return
        # The version that answered: kubeloop's v1 body field, or the v2 response's own.
        served = (
            result.get("model_version")
            if isinstance(result, dict)
            else getattr(result, "model_version", None)
        )
        target = self.shadow_targets.pick(str(served) if served is not None else None)
        request_id = (headers or {}).get(REQUEST_ID_HEADER)
        if target is None or not request_id:
            return
        from kubeloop.serving.shadow import ShadowRequest

        body = payload if isinstance(payload, dict) else payload.to_rest()
        url, version = target
        self.shadow.submit(
            ShadowRequest(
                request_id=request_id,
                version=version,
                url=url,
                body=orjson.dumps(body),
                served_variant=str(served),
            )
        )

    async def predict(
        self,
        payload: dict | InferRequest,
        headers: dict[str, str] | None = None,
        response_headers: dict[str, str] | None = None,
    ):
        """KServe's forwarding to predictor_host, with its failures turned into answers
        that say whose fault they are (4xx from the predictor stay 4xx, the rest 502); a
        copy goes to the shadow model when one is configured."""
        try:
            result = await super().predict(payload, headers, response_headers)
            self._mirror(payload, headers, result)
            return result
        except httpx.HTTPStatusError as exc:
            status = exc.response.status_code
            if status == 413:
                raise RequestTooLarge(f"the predictor refused the batch: {exc}") from exc
            if 400 <= status < 500:
                raise InvalidInput(f"the predictor rejected the request: {exc}") from exc
            raise UpstreamError(f"the predictor failed: {exc}") from exc
        except (httpx.HTTPError, UpstreamHTTPError) as exc:
            raise UpstreamError(
                f"the predictor at {self.predictor_host} is unreachable: "
                f"{type(exc).__name__}: {exc}"
            ) from exc

    async def postprocess(
        self,
        result: Any,
        headers: dict[str, str] | None = None,
        response_headers: dict[str, str] | None = None,
    ) -> dict:
        """The client's answer: the predictor's probabilities and, when its version has a
        decision threshold, its decisions at that threshold."""
        probabilities = probabilities_from_response(result)
        answer: dict[str, Any] = {"predictions": probabilities}
        decisions = decisions_from_response(result, len(probabilities))
        if decisions is not None:
            answer["decisions"] = decisions
        return answer


def build_parser() -> argparse.ArgumentParser:
    """KServe's ModelServer arguments plus the transformer's own."""
    from kubeloop.features.store import online_store_names

    parser = server_parser(
        "python -m models.transformer",
        "Serve the Feast online lookup in front of the kubeloop predictor.",
    )
    parser.add_argument(
        "--feature_repo",
        default="/mnt/models",
        help="Feast repository (feature_store.yaml + registry) written by kubeloop",
    )
    parser.add_argument(
        "--use_case",
        "--use-case",
        dest="use_case",
        default=None,
        help="use case whose request fields and feature service to serve (default: the "
        "engine's default use case)",
    )
    parser.add_argument(
        "--online_store",
        choices=online_store_names(),
        default=None,
        help="online store to read (default: the one feature_store.yaml names)",
    )
    parser.add_argument(
        "--redis_url",
        "--redis-url",
        dest="redis_url",
        default=None,
        help="Redis of the online store: redis://host:port/db or Feast's host:port form",
    )
    parser.add_argument(
        "--shadow_hosts",
        default=None,
        help="comma-separated predictor hosts to score copies in shadow (the route tags "
        "latest-<isvc>-predictor.<ns>,prev-<isvc>-predictor.<ns>); needs --request_log_url",
    )
    parser.add_argument(
        "--request_log_url",
        default=None,
        help="where shadow answers are POSTed as CloudEvents (the request log's /requestlog)",
    )
    parser.add_argument(
        "--shadow_queue_size", type=int, default=1024, help="copies waiting before drops"
    )
    return finish_server_parser(parser)


def predictor_protocol(args: argparse.Namespace) -> str:
    """--predictor_protocol, or the deprecated --protocol when only that one was set."""
    protocol = args.predictor_protocol if args.predictor_protocol != "v1" else args.protocol
    if protocol not in PROTOCOLS:
        raise SystemExit(f"predictor protocol {protocol!r} is not supported; use v1 or v2")
    return protocol


# FeastTransformer's keyword arguments that main() takes from the command line, by the
# option (argparse dest) each comes from.
TRANSFORMER_OPTIONS = {
    "max_batch_size": "max_batch_size",
    "online_store": "online_store",
    "redis_url": "redis_url",
    "predictor_use_ssl": "predictor_use_ssl",
    "predictor_timeout_seconds": "predictor_request_timeout_seconds",
    "predictor_retries": "predictor_request_retries",
    "predictor_health_check": "enable_predictor_health_check",
    "use_case": "use_case",
}


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if not args.predictor_host:
        raise SystemExit("--predictor_host HOST:PORT is required")
    if args.max_batch_size < 1:
        raise SystemExit("--max_batch_size must be at least 1")
    shadow = targets = None
    if args.shadow_hosts:
        if args.workers > 1:
            raise SystemExit("--shadow_hosts runs one worker (--workers 1): the mirror's queue")
        if not args.request_log_url:
            raise SystemExit("--shadow_hosts needs --request_log_url (where shadow answers go)")
        import os

        from prometheus_client import REGISTRY

        from kubeloop.serving.shadow import transformer_mirror

        shadow, targets = transformer_mirror(
            args.model_name,
            [h.strip() for h in args.shadow_hosts.split(",") if h.strip()],
            args.request_log_url,
            namespace=os.environ.get("POD_NAMESPACE", "kubeloop"),
            source=os.environ.get("POD_NAME"),
            protocol=predictor_protocol(args),
            queue_size=args.shadow_queue_size,
            registry=REGISTRY,  # what KServe's /metrics serves
        )
    options = {key: getattr(args, dest) for key, dest in TRANSFORMER_OPTIONS.items()}
    transformer = FeastTransformer(
        args.model_name,
        args.predictor_host,
        args.feature_repo,
        protocol=predictor_protocol(args),
        shadow=shadow,
        shadow_targets=targets,
        **options,
    )
    transformer.load()
    server = make_model_server(
        args,
        transformer.input_fields,
        max_batch_size=args.max_batch_size,
        predictor_config=transformer.predictor_config,
    )
    server.start([transformer])


if __name__ == "__main__":
    main()
