"""The KServe predictor: one exported model version behind KServe's v1 and v2 protocols.

    python -m models.predictor --model_name ctr --model_dir /mnt/models --http_port 8080

`--model_dir` is a directory written by `kubeloop models export` (or `TrainedModel.save`):
the model files, `transform.json`, `model.json` and, from an export, `metadata.json` (the
registry record: name, version, stage, kind). The predictor applies the model's own
feature transform to the raw columns of each row, so what it scores is exactly what
`TrainedModel.predict_proba` scores offline.

Requests (validated by `kubeloop.serving.protocol`, every bad field named in a 400):

* v1 ``{"instances": [{<model_input_columns()>: value or null}, ...]}`` ->
  ``{"predictions": [p, ...]}``, plus ``"decisions": [0 or 1, ...]`` (p at or above the
  version's stored decision threshold) when the version has one
* v2 one input per column of `model_input_columns()`, shape [n] -> output
  ``probability`` FP64 [n]

Every response carries `x-request-id` (the request's, or a new one) and
`x-model-version` (the registry version, when metadata.json names one). A v1 response
also names that version in its body, ``{"predictions": [...], "model_version": "v0002"}``:
KServe's logger forwards the response BODY to the drift detector but no response header
(kserve v0.20.0 `pkg/logger/handler.go:171-201`), and the v1 endpoint returns the dict as
is (`python/kserve/kserve/protocol/rest/v1_endpoints.py:84-100`, `dataplane.py:407-437`).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
from kserve.errors import ModelNotReady
from kserve.protocol.infer_type import InferRequest, InferResponse

from kubeloop.plugins import PluginError
from kubeloop.serving.kserve_model import ServedModel, finish_server_parser, server_parser
from kubeloop.serving.model_server import make_model_server
from kubeloop.serving.protocol import (
    DEFAULT_MAX_BATCH_SIZE,
    REQUEST_ID_HEADER,
    lower_headers,
    model_fields,
    parse_columns,
    resolve_request_id,
    v2_response,
)
from kubeloop.training.artifacts import ModelArtifactError, TrainedModel, read_model_info
from kubeloop.training.model_kind import model_kind
from models.request_plan import RequestPlan

METADATA_FILE = "metadata.json"


class CTRPredictor(ServedModel):
    """Click-through-rate predictor over a kubeloop model directory.

    `model` injects an already loaded `TrainedModel` (tests), which makes the predictor
    ready at once; otherwise `load()` reads `model_dir`. `use_case` (a spec, a registered
    name, or None for the default) gives the request fields (its model inputs).
    """

    # Its v1 predict and v2 infer requests take kubeloop's inference route (the same
    # dataplane calls as KServe's endpoints, without FastAPI's routing; see
    # kubeloop.serving.model_server.V2RoutingMiddleware).
    inference_route = True

    def __init__(
        self,
        name: str,
        model_dir: str | Path,
        model: TrainedModel | None = None,
        *,
        max_batch_size: int = DEFAULT_MAX_BATCH_SIZE,
        use_case: Any = None,
    ):
        super().__init__(name)
        self.input_fields = model_fields(use_case)
        self.model_dir = Path(model_dir)
        self.max_batch_size = max_batch_size
        self.model: TrainedModel | None = model
        self.metadata: dict[str, Any] = {}
        # The request plan of the loaded model's transform (built on first use).
        self._plan: RequestPlan | None = None
        self._plan_of: Any = None
        if model is not None:
            self.ready = True

    # --- KServe's worker processes (`--workers N`) get the predictor pickled -------------

    def __getstate__(self) -> dict[str, Any]:
        # Compiled trees are machine code behind ctypes: a model loaded from model_dir
        # travels as its directory and is loaded again in the worker.
        state = dict(self.__dict__)
        state.update(_plan=None, _plan_of=None)  # built again on first use
        if state.get("_from_dir"):
            state.update(model=None, ready=False, metadata={})
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        if self.model is None and self.__dict__.get("_from_dir"):
            self.load()

    # --- what was loaded ---------------------------------------------------------------

    @property
    def model_kind(self) -> str | None:
        return self.model.info.kind if self.model is not None else None

    @property
    def model_version(self) -> str | None:
        """Registry version (e.g. "v0003") from metadata.json, None without one."""
        version = self.metadata.get("version")
        return str(version) if version is not None else None

    @property
    def decision_threshold(self) -> float | None:
        """The version's decision threshold (a use case with a `DecisionPolicy`: chosen
        offline on the validation split, stored in its metrics), None without one."""
        value = self.metadata.get("metrics", {}).get("decision_threshold")
        return float(value) if value is not None else None

    @property
    def registered_name(self) -> str | None:
        name = self.metadata.get("name")
        return str(name) if name is not None else None

    def load(self) -> bool:
        """Load the model directory and its metadata.json (if any); sets `ready`."""
        if self.model is None:
            # The kind's predictor hook (its spec in the plug-in table) loads and sets up
            # the model for small online batches, whatever the kind.
            kind = read_model_info(self.model_dir).kind
            try:
                spec = model_kind(kind)
            except PluginError as exc:
                raise ModelArtifactError(f"{self.model_dir}: {exc}") from None
            self.model = spec.load_for_serving(self.model_dir)
            self._from_dir = True
        else:
            self.model = self.model.for_serving()
        unknown = [
            c for c in self.model.transform.input_columns if c not in self.input_fields.names
        ]
        if unknown:
            raise ModelArtifactError(
                f"{self.model_dir}: the model reads columns {unknown} that requests cannot "
                "carry (not in model_input_columns()); retrain it with this kubeloop version"
            )
        path = self.model_dir / METADATA_FILE
        if path.is_file():
            try:
                metadata = json.loads(path.read_text(encoding="utf-8"))
            except json.JSONDecodeError as exc:
                raise ModelArtifactError(f"{path} is not valid JSON: {exc}") from exc
            if not isinstance(metadata, dict):
                raise ModelArtifactError(f"{path} must hold a JSON object")
            kind = metadata.get("model_kind")
            if kind is not None and kind != self.model.info.kind:
                raise ModelArtifactError(
                    f"{path} says model_kind {kind!r} but model.json says "
                    f"{self.model.info.kind!r}: the export is inconsistent"
                )
            self.metadata = metadata
        self.ready = True
        return self.ready

    # --- readiness and versions ---------------------------------------------------------

    async def healthy(self) -> bool:
        """Ready and really answering: the loaded model scores a probe row (every field
        null, which the model's transform imputes)."""
        if not self.ready or self.model is None:
            return False
        try:
            probability = self.predict_rows([dict.fromkeys(self.input_fields.names)])[0]
        except Exception:  # noqa: BLE001 - a model that cannot score is not ready
            return False
        return 0.0 <= probability <= 1.0

    @property
    def local_versions(self) -> list[str]:
        """The version served here (v2 versioned paths answer for it)."""
        return [self.model_version] if self.model_version else []

    def served_versions(self) -> list[str]:
        """The `versions` of the v2 model metadata."""
        return self.local_versions

    # --- inference (v2 metadata and request ids: ServedModel) ----------------------------

    def served_version(self) -> str | None:
        """The version named in x-model-version."""
        return self.model_version

    def validate(self, payload: Any) -> Any:
        # predict() validates both protocols itself, naming every bad field.
        return payload

    def predict_rows(self, rows: list[dict[str, Any]]) -> list[float]:
        """Click probabilities of validated rows (dicts keyed by model_input_columns())."""
        if self.model is None:
            raise ModelNotReady(self.name, "the model is not loaded")
        columns = {name: [row[name] for row in rows] for name in self.input_fields.names}
        return self.predict_columns(columns, len(rows))

    def predict_columns(
        self, columns: dict[str, list[Any]], n: int, numbers: np.ndarray | None = None
    ) -> list[float]:
        """Click probabilities of `n` validated rows given by column (one list per field;
        `numbers`: their `ParsedColumns.numbers`, when validation built it)."""
        if self.model is None:
            raise ModelNotReady(self.name, "the model is not loaded")
        if not n:
            return []
        # Numpy end to end, no DataFrame per request: the transform's fast path (equal to
        # its training path, see tests/test_transform.py), through the request plan that
        # memoizes its category codes (equal to it, tests/test_request_plan.py).
        transform = self.model.transform
        if self._plan_of is not transform:
            self._plan, self._plan_of = RequestPlan.of(transform, self.input_fields), transform
        if self._plan is not None:
            batch = self._plan.transform(columns, n, numbers)
        else:
            batch = transform.transform_columns(columns, n)
        return self.model.predict_batch(batch).tolist()

    def predict(
        self,
        payload: dict | InferRequest | bytes,
        headers: dict[str, str] | None = None,
    ) -> dict | InferResponse:
        """Score a v1 body or a v2 InferRequest (see the module docstring)."""
        parsed = parse_columns(payload, self.input_fields, max_batch_size=self.max_batch_size)
        request_id = resolve_request_id(parsed.request_id, lower_headers(headers))
        if headers is not None:
            # __call__ echoes it in the response headers.
            headers[REQUEST_ID_HEADER] = request_id
        probabilities = self.predict_columns(parsed.columns, parsed.n, parsed.numbers)
        if isinstance(payload, InferRequest):
            return v2_response(
                probabilities,
                payload,
                self.name,
                request_id=request_id,
                model_version=self.model_version,
            )
        body: dict[str, Any] = {"predictions": probabilities}
        threshold = self.decision_threshold
        if threshold is not None:
            # The action at the stored threshold (1: alert), beside the score it came from.
            body["decisions"] = [int(p >= threshold) for p in probabilities]
        if self.model_version:
            # The drift detector files the logged response under this version.
            body["model_version"] = self.model_version
        return body


def build_parser() -> argparse.ArgumentParser:
    """KServe's ModelServer arguments plus the predictor's own."""
    parser = server_parser(
        "python -m models.predictor",
        "Serve a kubeloop model directory with KServe (v1 and v2 protocols).",
        directory=(
            "--model_dir",
            (
                "exported model version directory (model files, transform.json, "
                "model.json, optional metadata.json)"
            ),
        ),
    )
    return finish_server_parser(
        parser,
        use_case_help="use case whose model inputs the requests carry (default: the engine's "
        "default)",
    )


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if args.max_batch_size < 1:
        raise SystemExit("--max_batch_size must be at least 1")
    predictor = CTRPredictor(
        args.model_name,
        args.model_dir,
        max_batch_size=args.max_batch_size,
        use_case=args.use_case,
    )
    predictor.load()
    server = make_model_server(args, predictor.input_fields, max_batch_size=args.max_batch_size)
    server.start([predictor])


if __name__ == "__main__":
    main()
