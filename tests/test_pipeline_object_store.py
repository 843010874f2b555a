"""The pipeline's steps reach the cluster's object store: the ingest and features tasks get
KFP's S3 Secret as environment variables plus the endpoint (the compiled package's
kfp-kubernetes platform config), those variables are what s3fs's botocore reads, and the
components image installs s3fs (the `s3` extra) at the lock's versions."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

from kubeloop.features.spark_app import SparkApplicationSettings
from kubeloop.pipeline.compile import compile_pipeline, load_ir, load_platform_spec

ROOT = Path(__file__).resolve().parents[1]
# The steps that read the lake or write the feature tables themselves; every other step
# reads and writes KFP artifacts only.
STORE_TASKS = {"ingest", "features"}


@pytest.fixture(scope="module")
def package(tmp_path_factory) -> Path:
    return compile_pipeline("training", tmp_path_factory.mktemp("ir") / "training.yaml")


def test_the_lake_and_feature_steps_get_the_s3_secret_as_env(package) -> None:
    store = SparkApplicationSettings()
    executors = load_platform_spec(package)["deploymentSpec"]["executors"]
    assert set(executors) == {f"exec-{task}" for task in STORE_TASKS}
    for name, config in executors.items():
        (secret,) = config["secretAsEnv"]
        # the Secret and keys KFP 2.16 installs (docs/cluster-assumptions.md), which the
        # feature job's SparkApplication reads too
        assert secret["secretName"] == store.s3_secret == "mlpipeline-minio-artifact", name
        assert secret["secretNameParameter"]["runtimeValue"]["constant"] == store.s3_secret
        assert {m["secretKey"]: m["envVar"] for m in secret["keyToEnv"]} == {
            "accesskey": "AWS_ACCESS_KEY_ID",
            "secretkey": "AWS_SECRET_ACCESS_KEY",
        }, name
        assert secret["optional"] is True, name


def test_the_lake_and_feature_steps_get_the_endpoint_and_only_they(package) -> None:
    store = SparkApplicationSettings()
    spec = load_ir(package)
    executors = spec["deploymentSpec"]["executors"]
    for task in spec["root"]["dag"]["tasks"]:
        executor = f"exec-{task}"
        if executor not in executors:
            continue  # a dsl.If's sub-DAG
        env = {e["name"]: e["value"] for e in executors[executor]["container"].get("env", [])}
        if task in STORE_TASKS:
            assert env == {
                "AWS_ENDPOINT_URL": store.s3_endpoint,
                "AWS_DEFAULT_REGION": store.s3_region,
            }, task
        else:
            assert env == {}, task
    # engine=spark reaches the features task, the one with the store: its SparkApplication
    # and its copy of the tables run there
    features = spec["root"]["dag"]["tasks"]["features"]["inputs"]["parameters"]
    assert features["engine"]["componentInputParameter"] == "engine"


def test_s3fs_reads_the_variables_the_steps_get(monkeypatch) -> None:
    """With the env the ingest and features pods get (the Secret's values stand in), s3fs
    signs with those keys and addresses SeaweedFS path-style at the endpoint (a bucket as a
    host name would not resolve in the cluster). No request leaves this machine."""
    pytest.importorskip("s3fs", reason="the s3 extra is not installed")
    import fsspec
    from fsspec.asyn import sync

    store = SparkApplicationSettings()
    for name in ("AWS_PROFILE", "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "minio")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "minio123")
    monkeypatch.setenv("AWS_ENDPOINT_URL", store.s3_endpoint)
    monkeypatch.setenv("AWS_DEFAULT_REGION", store.s3_region)
    fs = fsspec.filesystem("s3", skip_instance_cache=True)
    fs.connect()
    assert fs.s3.meta.endpoint_url == store.s3_endpoint
    assert fs.s3.meta.region_name == store.s3_region
    url = sync(
        fs.loop,
        fs.s3.generate_presigned_url,
        "get_object",
        Params={"Bucket": "mlpipeline", "Key": "kubeloop/lake/part.parquet"},
    )
    assert url.startswith(f"{store.s3_endpoint}/mlpipeline/kubeloop/lake/part.parquet?")
    assert "AWSAccessKeyId=minio" in url or "Credential=minio" in url
    credentials = sync(fs.loop, fs.session.get_credentials)
    assert (credentials.access_key, credentials.method) == ("minio", "env")


def _lock() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "requirements.lock").read_text().splitlines():
        match = re.match(r"([A-Za-z0-9_.-]+)==(\S+)", line)
        if match:
            pins[match[1].lower()] = match[2]
    return pins


def test_the_s3_extra_is_in_the_lock_at_fsspecs_version() -> None:
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    lock = _lock()
    (s3fs,) = [r for r in extras["s3"] if r.startswith("s3fs")]
    assert s3fs == f"s3fs=={lock['s3fs']}"
    # s3fs pins fsspec to its own release
    assert lock["s3fs"] == lock["fsspec"]
    # `make lock` resolves .[dev] only, so dev must take the s3 extra for the lock to keep it
    assert "kubeloop[s3]" in extras["dev"]
    for dependency in ("aiobotocore", "botocore", "aioitertools", "jmespath", "aiohttp"):
        assert dependency in lock, dependency


def test_the_components_image_installs_the_s3_extra() -> None:
    text = (ROOT / "images" / "components.Dockerfile").read_text()
    runs = [ln for ln in re.split(r"\n(?=\S)", text) if ln.startswith("RUN ")]
    lock = next(i for i, r in enumerate(runs) if "-r requirements.lock" in r)
    extra = next(i for i, r in enumerate(runs) if 'pip install --no-index "kubeloop[s3]"' in r)
    assert lock < extra
    assert "import s3fs" in runs[extra]
