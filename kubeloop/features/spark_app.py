"""The feature build as a Kubeflow Spark Operator SparkApplication, and its submission.

KFP v2 has no ResourceOp (kubeflow/pipelines#9703), so a pipeline step creates the custom
resource itself with the Kubernetes client: `render_application` builds the object (the
same function renders manifests/spark/feature-job.yaml, which the offline tests validate
against the operator's CRD schema), `run_application` creates it, polls its status until
the operator reports a final state, and turns a failure into one line holding the
operator's error message, which for a failed driver is the driver's error.

What the driver runs is `kubeloop.features.spark_driver`: the same `build_features` with
`engine: spark`, in the driver's SparkSession (the operator's spark-submit sets the master
and the executors), so the cluster writes the same tables as the local engines.

States and fields are the operator's at the pinned tag (v2.5.2,
api/v1beta2/sparkapplication_types.go: ApplicationStateType, ApplicationState.ErrorMessage;
see docs/cluster-assumptions.md).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from kubeloop.errors import KubeloopError

GROUP = "sparkoperator.k8s.io"
VERSION = "v1beta2"
PLURAL = "sparkapplications"
SPARK_VERSION = "4.0.4"  # the pyspark of requirements.lock
IMAGE = "kind.local/kubeloop/spark:0.1.0"  # images/spark.Dockerfile
DRIVER_FILE = "local:///opt/kubeloop/kubeloop/features/spark_driver.py"
# Final states of ApplicationStateType; every other state is still on its way.
COMPLETED = "COMPLETED"
FAILED_STATES = ("FAILED", "SUBMISSION_FAILED")


class SparkApplicationError(KubeloopError):
    """The feature job's SparkApplication failed, or did not finish in time."""


class SparkApplicationSettings(BaseModel):
    """Where and how big the feature job runs in the cluster."""

    model_config = ConfigDict(extra="forbid")

    namespace: str = Field("kubeflow", description="the pipeline runner's own namespace")
    image: str = Field(IMAGE, description="images/spark.Dockerfile")
    service_account: str = Field(
        "spark-operator-spark", description="the driver's account (the operator chart makes it)"
    )
    driver_cores: int = Field(1, ge=1)
    driver_memory: str = "1g"
    executor_instances: int = Field(2, ge=1)
    executor_cores: int = Field(1, ge=1)
    executor_memory: str = "1g"
    timeout_s: float = Field(3600.0, gt=0, description="give up waiting after this long")
    poll_s: float = Field(5.0, gt=0, description="seconds between status reads")
    # The object store: KFP 2.16's SeaweedFS, with the credentials of KFP's own Secret, the
    # same store and Secret the InferenceServices and the drift detector read.
    s3_endpoint: str = Field(
        "http://seaweedfs.kubeflow.svc.cluster.local:9000", description="S3 API endpoint URL"
    )
    s3_region: str = "us-east-1"
    s3_secret: str = Field("mlpipeline-minio-artifact", description="Secret with the S3 keys")
    s3_access_key_field: str = "accesskey"
    s3_secret_key_field: str = "secretkey"
    work_uri: str = Field(
        "s3://mlpipeline/kubeloop/spark",
        description="each run's Spark part files (<work_uri>/<name>/parts) and published "
        "tables (<work_uri>/<name>/features), on storage every driver and executor reaches",
    )

    def parts_uri(self, name: str) -> str:
        """Where the executors of application `name` write Spark's part files."""
        return f"{self.work_uri.rstrip('/')}/{name}/parts"

    def features_uri(self, name: str) -> str:
        """Where the driver of application `name` publishes the feature tables."""
        return f"{self.work_uri.rstrip('/')}/{name}/features"


def _pod_security() -> dict[str, Any]:
    # The restricted Pod Security profile, as for every other kubeloop pod.
    return {
        "runAsNonRoot": True,
        "runAsUser": 185,
        "runAsGroup": 185,
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def _object_store_conf(settings: SparkApplicationSettings) -> tuple[dict[str, str], dict[str, str]]:
    """(hadoopConf, sparkConf) that let the driver and executors read and write s3a:// on
    the cluster's object store. The keys reach the pods as environment variables from the
    Secret (Spark's own spark.kubernetes.{driver,executor}.secretKeyRef.<ENV>, which is what
    the operator turns its deprecated envSecretKeyRefs into), and S3A reads them there; the
    driver's Python side (s3fs through botocore) reads the same variables and
    AWS_ENDPOINT_URL."""
    hadoop = {
        "fs.s3a.impl": "org.apache.hadoop.fs.s3a.S3AFileSystem",
        "fs.s3a.endpoint": settings.s3_endpoint,
        "fs.s3a.endpoint.region": settings.s3_region,
        # SeaweedFS serves buckets as paths, not as host names.
        "fs.s3a.path.style.access": "true",
        "fs.s3a.connection.ssl.enabled": str(settings.s3_endpoint.startswith("https:")).lower(),
        "fs.s3a.aws.credentials.provider":
            "software.amazon.awssdk.auth.credentials.EnvironmentVariableCredentialsProvider",
    }
    keys = {
        "AWS_ACCESS_KEY_ID": f"{settings.s3_secret}:{settings.s3_access_key_field}",
        "AWS_SECRET_ACCESS_KEY": f"{settings.s3_secret}:{settings.s3_secret_key_field}",
    }
    spark = {}
    for role in ("driver", "executor"):
        for env, ref in keys.items():
            spark[f"spark.kubernetes.{role}.secretKeyRef.{env}"] = ref
    spark["spark.kubernetes.driverEnv.AWS_ENDPOINT_URL"] = settings.s3_endpoint
    spark["spark.kubernetes.driverEnv.AWS_DEFAULT_REGION"] = settings.s3_region
    return hadoop, spark


def render_application(
    name: str,
    lake_uri: str,
    features_uri: str,
    use_case: str,
    build_config_json: str,
    settings: SparkApplicationSettings,
) -> dict[str, Any]:
    """The SparkApplication of one feature build (a plain dict, as the client sends it)."""
    labels = {"app.kubernetes.io/part-of": "kubeloop", "app.kubernetes.io/component": "features"}
    hadoop_conf, store_conf = _object_store_conf(settings)
    cores = settings.executor_instances * settings.executor_cores
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "SparkApplication",
        "metadata": {"name": name, "namespace": settings.namespace, "labels": dict(labels)},
        "spec": {
            "type": "Python",
            "pythonVersion": "3",
            "mode": "cluster",
            "image": settings.image,
            "imagePullPolicy": "IfNotPresent",
            "mainApplicationFile": DRIVER_FILE,
            "arguments": [
                "--lake", lake_uri,
                "--out", features_uri,
                "--use-case", use_case,
                "--config-json", build_config_json,
            ],
            "sparkVersion": SPARK_VERSION,
            "sparkConf": {
                "spark.sql.session.timeZone": "UTC",
                "spark.sql.parquet.outputTimestampType": "TIMESTAMP_MICROS",
                "spark.ui.enabled": "false",
                # Two shuffle partitions per executor core: the aggregated tables are small
                # next to the events (Spark's default of 200 is tiny tasks here).
                "spark.sql.shuffle.partitions": str(2 * cores),
                "spark.sql.adaptive.enabled": "true",
                # Spark's _SUCCESS files are not Parquet; the merge reads part files only.
                "spark.hadoop.mapreduce.fileoutputcommitter.marksuccessfuljobs": "false",
                **store_conf,
            },
            "hadoopConf": hadoop_conf,
            # A failed build is reported to the pipeline step, which fails the run; the
            # pipeline's own retry policy decides on another attempt, not the operator.
            "restartPolicy": {"type": "Never"},
            "driver": {
                "cores": settings.driver_cores,
                "memory": settings.driver_memory,
                "serviceAccount": settings.service_account,
                "labels": dict(labels),
                "securityContext": _pod_security(),
            },
            "executor": {
                "instances": settings.executor_instances,
                "cores": settings.executor_cores,
                "memory": settings.executor_memory,
                "labels": dict(labels),
                "securityContext": _pod_security(),
            },
        },
    }


TEMPLATE_FILE = "manifests/spark/feature-job.yaml"


def example_application() -> dict[str, Any]:
    """The SparkApplication committed as TEMPLATE_FILE: default settings, placeholder run."""
    return render_application(
        "kubeloop-features-example",
        "s3://kubeloop/lake",
        "s3://kubeloop/features",
        "ctr",
        '{"engine":"spark"}',
        SparkApplicationSettings(),
    )


def template_text() -> str:
    """TEMPLATE_FILE's content: a header comment and `example_application()` as YAML."""
    import yaml

    header = (
        "# The feature job as the pipeline's features step submits it with engine=spark\n"
        "# (kubeloop/features/spark_app.py render_application; the step fills in the run's\n"
        "# name, lake, output and build config). Not part of any kustomization: it is created\n"
        "# per run. Validated offline against the Spark Operator's CRD schema\n"
        "# (tests/test_spark_application.py). Regenerate: UPDATE_GOLDEN=1 pytest that file.\n"
    )
    return header + yaml.safe_dump(example_application(), sort_keys=False)


def application_outcome(obj: dict[str, Any]) -> tuple[str, str]:
    """(state, error message) of a SparkApplication as read from the API server."""
    state = ((obj.get("status") or {}).get("applicationState") or {})
    return state.get("state", "") or "", state.get("errorMessage", "") or ""


def run_application(
    api,
    body: dict[str, Any],
    settings: SparkApplicationSettings,
    *,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> dict[str, Any]:
    """Create `body` with `api` (a kubernetes.client.CustomObjectsApi), wait for a final
    state and return the last object read. Raises SparkApplicationError with the operator's
    error message when it failed, or when `settings.timeout_s` passes first."""
    name, namespace = body["metadata"]["name"], body["metadata"]["namespace"]
    api.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body)
    deadline = clock() + settings.timeout_s
    while True:
        obj = api.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
        state, message = application_outcome(obj)
        if state == COMPLETED:
            return obj
        if state in FAILED_STATES:
            first = message.strip().splitlines()[0] if message.strip() else "no error message"
            raise SparkApplicationError(
                f"SparkApplication {namespace}/{name} {state}: {first} "
                f"(the driver's log: kubectl logs -n {namespace} {name}-driver)"
            )
        if clock() >= deadline:
            raise SparkApplicationError(
                f"SparkApplication {namespace}/{name} still {state or 'not started'} after "
                f"{settings.timeout_s:.0f}s; raise spark_application.timeout_s or look at "
                f"kubectl describe sparkapplication -n {namespace} {name}"
            )
        sleep(settings.poll_s)
