"""The feature job's driver: what a SparkApplication's `mainApplicationFile` runs.

    spark-submit .../spark_driver.py --lake URI --out DIR --use-case NAME --config-json JSON

The operator's spark-submit configures the session (master, executors); this module takes
that session and runs the same `build_features` as `kubeloop features build --engine spark`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    """Build the use case's tables on the submitted Spark session; 1 and one line on error."""
    from kubeloop.errors import KubeloopError
    from kubeloop.features.build import FeatureBuildConfig, build_features

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lake", required=True)
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--use-case", required=True)
    parser.add_argument("--config-json", default="{}")
    args = parser.parse_args(argv)
    config = FeatureBuildConfig.model_validate_json(args.config_json or "{}")
    config = config.model_copy(update={"engine": "spark"})

    from pyspark.sql import SparkSession

    session = SparkSession.builder.getOrCreate()  # the submitted conf, not local[2]
    try:
        summary = build_features(args.lake, args.out, config, progress=False, use_case=args.use_case)
    except KubeloopError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    finally:
        session.stop()
    print(summary.model_dump_json())
    return 0


if __name__ == "__main__":
    sys.exit(main())
