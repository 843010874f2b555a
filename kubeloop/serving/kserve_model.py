"""The base every kubeloop KServe server shares: v2 model metadata and request-id handling.

The predictor (`models/predictor.py`) and the transformer (`models/transformer.py`) are
both `ServedModel`s: their v2 metadata (`GET /v2/models/<name>`) names their input fields
(`input_fields`) and one FP64 output, and every answer echoes the request's `x-request-id`
(and, where the server knows it, the model version in `x-model-version`).
"""

from __future__ import annotations

import argparse
import inspect
import time
from timeit import default_timer
from typing import Any, ClassVar

import kserve
from kserve.logging import trace_logger
from kserve.metrics import POST_HIST_TIME, PRE_HIST_TIME, PREDICT_HIST_TIME, get_labels
from kserve.model import InferenceVerb, get_latency_ms

from kubeloop.serving.protocol import (
    DEFAULT_MAX_BATCH_SIZE,
    OUTPUT_NAME,
    REQUEST_ID_HEADER,
    WIRE_DATATYPE,
    FieldSet,
    lower_headers,
)
from kubeloop.usecase import DEFAULT_MODEL_NAME

MODEL_VERSION_HEADER = "x-model-version"


class ServedModel(kserve.Model):
    """A `kserve.Model` with kubeloop's v2 metadata and request-id handling.

    Subclasses set `input_fields` (the fields a request carries), may override
    `served_version()` (the version named in `x-model-version`) and `finish_response`
    (a last change to the response, knowing the request id).
    """

    input_fields: ClassVar[FieldSet]

    # --- v2 metadata endpoint (/v2/models/<name>) ---------------------------------------

    def get_input_types(self) -> list[dict]:
        """One v2 tensor per input field, batch dimension only."""
        return [
            {"name": f.name, "datatype": WIRE_DATATYPE[f.kind], "shape": [-1]}
            for f in self.input_fields.fields
        ]

    def get_output_types(self) -> list[dict]:
        """The one output: the click probability of each row."""
        return [{"name": OUTPUT_NAME, "datatype": "FP64", "shape": [-1]}]

    # --- the request path ---------------------------------------------------------------

    def served_version(self) -> str | None:
        """The model version this server answers with (None: no x-model-version header)."""
        return None

    def finish_response(self, body: Any, response: Any, request_id: str | None) -> Any:
        """The response as sent; the default leaves it as KServe made it."""
        return response

    async def __call__(
        self,
        body: Any,
        headers: dict[str, str] | None = None,
        verb: InferenceVerb = InferenceVerb.PREDICT,
    ):
        # A private lower-cased copy: preprocess may write the resolved request id into it,
        # and it is read back from there.
        headers = lower_headers(headers)
        if verb == InferenceVerb.PREDICT:
            response, response_headers = await self._predict_call(body, headers)
        else:
            response, response_headers = await super().__call__(body, headers, verb)
        request_id = headers.get(REQUEST_ID_HEADER)
        response = self.finish_response(body, response, request_id)
        if request_id:
            response_headers[REQUEST_ID_HEADER] = request_id
        version = self.served_version()
        if version:
            response_headers[MODEL_VERSION_HEADER] = version
        return response, response_headers

    async def _predict_call(self, body: Any, headers: dict[str, str]) -> tuple[Any, dict]:
        """kserve 0.20's `Model.__call__` for the PREDICT verb (kserve v0.20.0
        `python/kserve/kserve/model.py` `__call__`): preprocess, validate, predict,
        postprocess, each hook awaited when it is a coroutine function, the pre/predict/
        post histograms observed (also when a hook raises), and the latency line when
        `enable_latency_logging`. The same calls, with the histograms' label children and
        the hooks' coroutine checks looked up once instead of per request."""
        request_id = headers.get("x-request-id", "N.A.") if headers else "N.A."
        pre, during, post = self._histograms()
        response_headers: dict[str, str] = {}
        payload, preprocess_ms = await self._timed(pre, self.preprocess, body, headers)
        payload = self.validate(payload)
        extra = (response_headers,) if self.required_response_headers else ()
        response, predict_ms = await self._timed(during, self.predict, payload, headers, *extra)
        response, postprocess_ms = await self._timed(
            post, self.postprocess, response, headers, *extra
        )
        if self.enable_latency_logging is True:
            trace_logger.info(
                f"requestId: {request_id}, preprocess_ms: {preprocess_ms}, "
                f"explain_ms: 0, predict_ms: {predict_ms}, "
                f"postprocess_ms: {postprocess_ms}"
            )
        return response, response_headers

    def _histograms(self) -> tuple[Any, Any, Any]:
        children = _HISTOGRAMS.get(self.name)
        if children is None:
            labels = get_labels(self.name)
            children = _HISTOGRAMS[self.name] = tuple(
                h.labels(**labels) for h in (PRE_HIST_TIME, PREDICT_HIST_TIME, POST_HIST_TIME)
            )
        return children

    async def _timed(self, histogram: Any, hook: Any, *args: Any) -> tuple[Any, float]:
        """`hook(*args)` (awaited if a coroutine function) and its milliseconds, observed
        in `histogram` also when it raises (KServe's `with HIST.time():`)."""
        started, start = default_timer(), time.time()
        try:
            result = await self._run(hook, *args)
            return result, get_latency_ms(start, time.time())
        finally:
            histogram.observe(max(default_timer() - started, 0))

    async def _run(self, hook: Any, *args: Any) -> Any:
        function = getattr(hook, "__func__", hook)
        is_coroutine = _COROUTINE.get(function)
        if is_coroutine is None:
            is_coroutine = _COROUTINE[function] = inspect.iscoroutinefunction(hook)
        return await hook(*args) if is_coroutine else hook(*args)


# function -> whether it is a coroutine function (KServe asks per call; functions are few).
_COROUTINE: dict[Any, bool] = {}
# model name -> the label children of KServe's pre/predict/post histograms (module-level:
# a model is pickled to KServe's worker processes, metric children are not picklable).
_HISTOGRAMS: dict[str, tuple[Any, Any, Any]] = {}


# Where KServe's storage initializer puts what an InferenceService's storageUri names.
STORAGE_MOUNT = "/mnt/models"


def server_parser(
    prog: str, description: str, *, directory: tuple[str, str] | None = None
) -> argparse.ArgumentParser:
    """The command line of a kubeloop KServe server: KServe's ModelServer arguments, then
    the server's own (added by the caller), then `finish_server_parser`. `directory`
    (option name, help) adds the option naming the directory the server reads, which
    defaults to KServe's storage mount."""
    parser = argparse.ArgumentParser(
        prog=prog, description=description, parents=[kserve.model_server.parser]
    )
    if directory is not None:
        name, help_text = directory
        parser.add_argument(name, default=STORAGE_MOUNT, help=help_text)
    return parser


def finish_server_parser(
    parser: argparse.ArgumentParser, *, use_case_help: str | None = None
) -> argparse.ArgumentParser:
    """Add what every kubeloop server takes: --max_batch_size and the edge's arguments
    (bind address, body limit); the model name defaults to ctr. With `use_case_help`,
    also `--use_case` (spelled `--use-case` too; default None: the engine's default)."""
    from kubeloop.serving.model_server import add_server_arguments

    if use_case_help is not None:
        parser.add_argument(
            "--use_case", "--use-case", dest="use_case", default=None, help=use_case_help
        )

    parser.add_argument(
        "--max_batch_size",
        type=int,
        default=DEFAULT_MAX_BATCH_SIZE,
        help="largest batch (rows) one request may hold; larger ones get HTTP 413",
    )
    add_server_arguments(parser)
    parser.set_defaults(model_name=DEFAULT_MODEL_NAME)
    return parser
