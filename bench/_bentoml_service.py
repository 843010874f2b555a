"""The BentoML peer of the KServe predictor, for bench/serving_bench.py.

    KUBELOOP_BENCH_MODEL_DIR=<exported dir> bentoml serve _bentoml_service:BenchCTR \\
        --working-dir bench --host 127.0.0.1 --port N

It serves the booster of an exported kubeloop LightGBM version (`model.txt`, opened with
`lightgbm.Booster`) behind `POST /predict`, taking the predictor's v1 body
``{"instances": [{<model_input_columns()>: value or null}, ...]}`` and answering
``{"predictions": [p, ...]}``. Per request it does what the predictor's model does: a
DataFrame of the rows, the version's fitted `FeatureTransform` (transform.json), then
`Booster.predict` on the matrix with the version's best iteration. What it leaves out is
kubeloop's request validation (`kubeloop.serving.protocol.parse_request`); BentoML checks
the body against the method's signature instead. One worker, as the KServe servers run.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import bentoml

MODEL_DIR_ENV = "KUBELOOP_BENCH_MODEL_DIR"


@bentoml.service(workers=1)
class BenchCTR:
    def __init__(self) -> None:
        import lightgbm as lgb

        from kubeloop.training.transform import FeatureTransform, model_input_columns

        model_dir = Path(os.environ[MODEL_DIR_ENV])
        info = json.loads((model_dir / "model.json").read_text(encoding="utf-8"))
        self.best_iteration = int(info["best_iteration"])
        self.booster = lgb.Booster(model_file=str(model_dir / "model.txt"))
        self.transform = FeatureTransform.load(model_dir / "transform.json")
        self.columns = model_input_columns()

    @bentoml.api
    def predict(self, instances: list[dict[str, Any]]) -> dict[str, list[float]]:
        import pandas as pd

        frame = pd.DataFrame.from_records(instances, columns=self.columns)
        matrix = self.transform.transform(frame).matrix()
        scores = self.booster.predict(matrix, num_iteration=self.best_iteration)
        return {"predictions": [float(p) for p in scores]}
