"""Feature engineering: the point-in-time ETL from the event lake to the offline tables
that the Feast repository serves (see kubeloop.features.build)."""

from kubeloop.features.build import FeatureBuildConfig, FeatureBuildSummary, build_features

__all__ = ["FeatureBuildConfig", "FeatureBuildSummary", "build_features"]
