"""The floor of bench/serving_bench.py: a bare `kserve.Model` around the same booster.

    python bench/_bare_kserve.py --model_name ctr --model_dir <exported dir> \\
        --http_port N --enable_grpc false

`POST /v1/models/<name>:predict` takes ``{"instances": [[x0, x1, ...], ...]}``, rows of
the ALREADY TRANSFORMED feature matrix (`FeatureTransform.transform(...).matrix()`), and
answers ``{"predictions": [p, ...]}`` from `Booster.predict` with the version's best
iteration. No validation, no DataFrame, no feature transform: what is left is KServe's
server (uvicorn, FastAPI, its DataPlane, JSON both ways) and the booster. A plain
`kserve.ModelServer` with the same options as the predictor's (kubeloop's error handlers
and DataPlane are left out; they do nothing on a good request).

With `--zeros` it serves `NullModel` instead: no booster, 0.0 per instance.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import kserve
import lightgbm as lgb
import numpy as np

from kubeloop.serving.protocol import model_server_options


class NullModel(kserve.Model):
    """`--zeros`: the ceiling of any kserve.Model under the bench's client. Its predict
    answers 0.0 per instance of whatever body it gets (the bench sends it the predictor's
    joined rows): KServe's server and JSON both ways, no model at all."""

    def load(self) -> bool:
        self.ready = True
        return self.ready

    def predict(self, payload, headers=None):
        return {"predictions": [0.0] * len(payload["instances"])}


class BareLightGBM(kserve.Model):
    def __init__(self, name: str, model_dir: str | Path):
        super().__init__(name)
        self.model_dir = Path(model_dir)
        self.booster: lgb.Booster | None = None
        self.best_iteration = 0

    def load(self) -> bool:
        info = json.loads((self.model_dir / "model.json").read_text(encoding="utf-8"))
        self.best_iteration = int(info["best_iteration"])
        self.booster = lgb.Booster(model_file=str(self.model_dir / "model.txt"))
        self.ready = True
        return self.ready

    def predict(self, payload, headers=None):
        matrix = np.asarray(payload["instances"], dtype=np.float64)
        scores = self.booster.predict(matrix, num_iteration=self.best_iteration)
        return {"predictions": scores.tolist()}


def main() -> None:
    parser = argparse.ArgumentParser(parents=[kserve.model_server.parser])
    parser.add_argument("--model_dir", required=True)
    parser.add_argument("--zeros", action="store_true", help="serve NullModel instead")
    args = parser.parse_args()
    model = (
        NullModel(args.model_name) if args.zeros else BareLightGBM(args.model_name, args.model_dir)
    )
    model.load()
    kserve.ModelServer(**model_server_options(args)).start([model])


if __name__ == "__main__":
    main()
