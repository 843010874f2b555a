"""The naive one-process service of bench/serving_bench.py: what a user writes first.

    python bench/_naive_kserve.py --model_name ctr --model_dir <exported dir> \\
        --feature_repo <feast repo> --http_port N --enable_grpc false

One `kserve.Model` whose `predict` takes the client's rows (entity ids + request
context, v1 ``{"instances": [{...}, ...]}``), calls Feast's
`FeatureStore.get_online_features` with the feature service for the batch (through
`kubeloop.features.online.online_features`, which also computes the use case's
request-time features from its state views, as any service must), joins the
answer to the context in a DataFrame, applies the model's feature transform (its training
path, `FeatureTransform.transform`) and answers ``{"predictions": [...]}`` from
`Booster.predict`. No validation, no request ids, no logging; everything in one process
and on the event loop, as the simplest service would be.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import kserve
import lightgbm as lgb
import pandas as pd

from kubeloop.serving.protocol import model_server_options
from kubeloop.training.transform import FeatureTransform
from kubeloop.usecase import resolve_use_case


class NaiveService(kserve.Model):
    def __init__(self, name: str, model_dir: str | Path, feature_repo: str | Path):
        super().__init__(name)
        self.model_dir = Path(model_dir)
        self.feature_repo = Path(feature_repo)

    def load(self) -> bool:
        # kubeloop's opener only resolves the repository's config; the store is Feast's.
        from kubeloop.features.store import open_store

        info = json.loads((self.model_dir / "model.json").read_text(encoding="utf-8"))
        self.best_iteration = int(info["best_iteration"])
        self.booster = lgb.Booster(model_file=str(self.model_dir / "model.txt"))
        self.transform = FeatureTransform.load(self.model_dir / "transform.json")
        self.use_case = resolve_use_case(None)
        self.store = open_store(self.feature_repo)
        self.ready = True
        return self.ready

    def predict(self, payload, headers=None):
        from kubeloop.features.online import online_features

        rows = payload["instances"]
        keys = self.use_case.join_keys
        # Feast's get_online_features with the feature service (and, for a use case with
        # request-time features, its state views and the use case's compute at now).
        features = online_features(self.store, rows, use_case=self.use_case)
        frame = pd.concat([pd.DataFrame.from_records(rows).drop(columns=keys), features], axis=1)
        matrix = self.transform.transform(frame).matrix()
        scores = self.booster.predict(matrix, num_iteration=self.best_iteration, num_threads=1)
        return {"predictions": scores.tolist()}


def main() -> None:
    parser = argparse.ArgumentParser(parents=[kserve.model_server.parser])
    parser.add_argument("--model_dir", required=True)
    parser.add_argument("--feature_repo", required=True)
    args = parser.parse_args()
    model = NaiveService(args.model_name, args.model_dir, args.feature_repo)
    model.load()
    kserve.ModelServer(**model_server_options(args)).start([model])


if __name__ == "__main__":
    main()
