"""Configuration of the pipeline's features step: ETL, the Feast store and progress."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from kubeloop.features.build import FeatureBuildConfig
from kubeloop.features.store import FeatureStoreSettings


def _default_store() -> FeatureStoreSettings:
    # The as-of engine reads the same Parquet files as Feast's file store and gives
    # identical rows, but Feast 0.47's Dask join drops rows and takes minutes at demo size.
    return FeatureStoreSettings(offline_store="asof")


class FeaturesStepConfig(BaseModel):
    """What the features step needs besides paths."""

    model_config = ConfigDict(extra="forbid")

    build: FeatureBuildConfig = Field(default_factory=FeatureBuildConfig)
    store: FeatureStoreSettings = Field(default_factory=_default_store)
    progress: bool = True
