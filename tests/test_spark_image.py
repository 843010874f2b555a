"""The Spark driver image (images/spark.Dockerfile) agrees with the SparkApplication that runs
it, with the lock, and with the places that build and load it.

No container engine runs here, so the image is never built in `make test`; what can drift
apart is checked instead: its name (Dockerfile header, SparkApplicationSettings, the
committed template, cluster-up's build/load list, the kind workflow's build matrix and
`kind load`), the driver file the application runs (copied to the path mainApplicationFile
names, and a real module), the Python (the components image's, inside pyproject's
requires-python), the Spark (the official image's tag = SPARK_VERSION = the lock's pyspark =
the template's sparkVersion), the Hadoop of hadoop-aws (the one pyspark's jars were built
with), and the uid (the one the template's securityContext runs as).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from kubeloop.features import spark_app
from kubeloop.features.spark_app import (
    IMAGE,
    SPARK_VERSION,
    TEMPLATE_FILE,
    SparkApplicationSettings,
)
from tests.test_cluster_manifests import dockerfile_problems

pytestmark = pytest.mark.cluster

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "images" / "spark.Dockerfile"
WORKFLOW = ROOT / ".github" / "workflows" / "kind-e2e.yaml"


def _instructions(text: str) -> list[tuple[str, str]]:
    out = []
    for raw in re.sub(r"\\\n", " ", text).splitlines():
        line = raw.strip()
        if line and not line.startswith("#"):
            instr, _, arg = line.partition(" ")
            out.append((instr.upper(), arg.strip()))
    return out


def _python_version(text: str) -> str | None:
    m = re.search(r"^FROM python:(\d+\.\d+\.\d+)-", text, re.MULTILINE)
    return m.group(1) if m else None


def spark_image_problems(text: str, application: dict) -> list[str]:
    """What in the Dockerfile `text` disagrees with the SparkApplication `application`."""
    problems = []
    spec = application["spec"]
    instructions = _instructions(text)
    if f"-t {spec['image']} ." not in text:
        problems.append(f"the header's build command does not name {spec['image']}")
    # The driver file: local:///opt/kubeloop/<repo path>, copied from the repo there.
    path = spec["mainApplicationFile"].removeprefix("local://")
    workdirs = [a for i, a in instructions if i == "WORKDIR"]
    copies = [a.split() for i, a in instructions if i == "COPY" and not a.startswith("--from")]
    root = "/opt/kubeloop/"
    if not path.startswith(root) or root.rstrip("/") not in workdirs:
        problems.append(f"{path} is not under the project's WORKDIR {root}")
    else:
        rel = path.removeprefix(root)
        top = rel.split("/", 1)[0]
        if not any(c[:-1] == [top] and c[-1] in (f"./{top}", top) for c in copies):
            problems.append(f"the image does not COPY {top} to {root}{top}")
        if not (ROOT / rel).is_file():
            problems.append(f"{rel}, the driver file, does not exist in the repository")
    # Python: the components image's, and one pyproject allows.
    python = _python_version(text)
    components = _python_version((ROOT / "images" / "components.Dockerfile").read_text())
    if python is None or python != components:
        problems.append(f"Python {python} is not the components image's {components}")
    requires = re.search(r'^requires-python = ">=(\d+)\.(\d+),<(\d+)\.(\d+)"',
                         (ROOT / "pyproject.toml").read_text(), re.MULTILINE)
    if python and requires:
        lo, hi = tuple(map(int, requires.group(1, 2))), tuple(map(int, requires.group(3, 4)))
        if not lo <= tuple(map(int, python.split(".")[:2])) < hi:
            problems.append(f"Python {python} is outside pyproject's requires-python")
    # Spark: the official image's tag is the application's sparkVersion and the lock's pyspark.
    tags = set(re.findall(r"--from=docker\.io/apache/spark:([0-9.]+)@sha256:[0-9a-f]{64}", text))
    lock = re.search(r"^pyspark==([0-9.]+)", (ROOT / "requirements.lock").read_text(), re.MULTILINE)
    if tags != {spec["sparkVersion"]} or not lock or lock.group(1) != spec["sparkVersion"]:
        problems.append(
            f"Spark image tags {sorted(tags)}, sparkVersion {spec['sparkVersion']} and the lock's "
            f"pyspark {lock and lock.group(1)} must be one version, pinned by digest"
        )
    for needed in ("/opt/spark /opt/spark", "/opt/entrypoint.sh", "/opt/java/openjdk"):
        if needed not in text:
            problems.append(f"nothing copies {needed.split()[0]} from the Spark image")
    if ("ENTRYPOINT", '["/opt/entrypoint.sh"]') not in instructions:
        problems.append("the ENTRYPOINT is not Spark's /opt/entrypoint.sh (driver/executor)")
    # The uid the pods run as.
    users = [a for i, a in instructions if i == "USER"]
    uid = spec["driver"]["securityContext"]["runAsUser"]
    if not users or users[-1].split(":")[0] != str(uid):
        problems.append(f"the image's last USER {users[-1:]} is not the pods' runAsUser {uid}")
    return problems


def _template() -> dict:
    return yaml.safe_load((ROOT / TEMPLATE_FILE).read_text())


def test_the_image_is_a_well_formed_project_image() -> None:
    assert dockerfile_problems(DOCKERFILE) == []


def test_the_image_agrees_with_the_spark_application() -> None:
    template = _template()
    assert template["spec"]["image"] == IMAGE == SparkApplicationSettings().image
    assert template["spec"]["sparkVersion"] == SPARK_VERSION
    assert spark_image_problems(DOCKERFILE.read_text(), template) == []


def test_the_driver_file_is_the_driver_module() -> None:
    from kubeloop.features import spark_driver

    rel = spark_app.DRIVER_FILE.removeprefix("local:///opt/kubeloop/")
    assert (ROOT / rel).resolve() == Path(spark_driver.__file__).resolve()
    assert callable(spark_driver.main)


def test_hadoop_aws_is_built_for_the_hadoop_of_the_spark_jars() -> None:
    wanted = re.search(r"^ARG HADOOP_AWS_VERSION=([0-9.]+)$", DOCKERFILE.read_text(), re.MULTILINE)
    assert wanted
    pyspark = pytest.importorskip("pyspark")
    jars = sorted((Path(pyspark.__file__).parent / "jars").glob("hadoop-client-api-*.jar"))
    assert jars, "pyspark ships no hadoop-client-api jar"
    assert jars[0].name == f"hadoop-client-api-{wanted.group(1)}.jar"


def test_cluster_up_and_the_workflow_build_and_load_it() -> None:
    cluster_up = (ROOT / "scripts" / "cluster-up").read_text()
    assert f"docker build -f images/spark.Dockerfile -t {IMAGE} ." in cluster_up
    # The instructions cluster-up prints at the end (its header only shows the pattern).
    load = cluster_up[cluster_up.index("kind load docker-image --name ${CLUSTER}"):]
    load = load.split("kubectl apply")[0]
    assert IMAGE in load
    jobs = yaml.safe_load(WORKFLOW.read_text())["jobs"]
    matrix = jobs["build-images"]["strategy"]["matrix"]["include"]
    assert {"dockerfile": "spark", "image": IMAGE} in matrix
    (load_step,) = [s["run"] for s in jobs["e2e"]["steps"] if s.get("name") == "Load images into kind"]
    assert IMAGE in load_step


@pytest.mark.parametrize(
    "old,new,expected",
    [
        ("FROM python:3.11.11-slim-bookworm", "FROM python:3.10.14-slim-bookworm", "components image"),
        ("apache/spark:4.0.4@", "apache/spark:4.0.3@", "must be one version"),
        ("COPY kubeloop ./kubeloop", "COPY usecases ./kubeloop-src", "does not COPY kubeloop"),
        ('ENTRYPOINT ["/opt/entrypoint.sh"]', 'ENTRYPOINT ["python"]', "ENTRYPOINT"),
        ("USER 185:185", "USER 1000:1000", "runAsUser 185"),
        ("-t kind.local/kubeloop/spark:0.1.0 .", "-t kind.local/kubeloop-spark:latest .", "header"),
    ],
)
def test_a_disagreeing_dockerfile_is_caught(old, new, expected) -> None:
    text = DOCKERFILE.read_text()
    assert old in text
    problems = spark_image_problems(text.replace(old, new), _template())
    assert any(expected in p for p in problems), problems


def test_a_driver_file_the_image_lacks_is_caught() -> None:
    template = _template()
    template["spec"]["mainApplicationFile"] = "local:///opt/kubeloop/kubeloop/features/driver.py"
    problems = spark_image_problems(DOCKERFILE.read_text(), template)
    assert any("does not exist" in p for p in problems), problems
