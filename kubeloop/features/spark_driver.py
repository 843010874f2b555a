"""The feature job's driver: what a SparkApplication's `mainApplicationFile` runs.

    spark-submit .../spark_driver.py --lake URI --out URI --use-case NAME --config-json JSON

The operator's spark-submit configures the session (master, executors); this module takes
that session and runs the same `build_features` as `kubeloop features build --engine spark`.
`--out` is a directory or an fsspec URL (in the cluster, s3:// on the object store): the
tables are built in a local directory of the driver pod, then copied there with the
build's summary (`build-summary.json`), which the pipeline step reads back.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    """Build the use case's tables on the submitted Spark session; 1 and one line on error."""
    from kubeloop.errors import KubeloopError
    from kubeloop.features.build import FeatureBuildConfig, build_features

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lake", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--use-case", required=True)
    parser.add_argument("--config-json", default="{}")
    args = parser.parse_args(argv)
    config = FeatureBuildConfig.model_validate_json(args.config_json or "{}")
    config = config.model_copy(update={"engine": "spark"})

    from pyspark.sql import SparkSession

    session = SparkSession.builder.getOrCreate()  # the submitted conf, not local[2]
    try:
        with tempfile.TemporaryDirectory(prefix="kubeloop-features-") as tmp:
            local = Path(tmp) / "features"
            summary = build_features(args.lake, local, config, progress=False, use_case=args.use_case)
            publish(local, args.out, args.use_case, summary.model_dump_json())
    except KubeloopError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    finally:
        session.stop()
    print(summary.model_dump_json())
    return 0


def publish(local: Path, out: str, use_case: str, summary_json: str) -> None:
    """Copy the tables built in `local` and the build's summary to `out`."""
    from fsspec.core import url_to_fs

    from kubeloop.features.spark_job import SUMMARY_FILE, publish_tables
    from kubeloop.usecase import resolve_use_case

    publish_tables(local, out, resolve_use_case(use_case))
    fs, root = url_to_fs(out)
    # Last: its presence says the tables before it are complete.
    with fs.open(f"{root.rstrip('/')}/{SUMMARY_FILE}", "w") as handle:
        handle.write(summary_json)


if __name__ == "__main__":
    sys.exit(main())
