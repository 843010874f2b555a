# kind.local/kubeloop/spark:0.1.0 -- the feature job's Spark driver and executors: the SparkApplication that the pipeline's features step creates with engine=spark (kubeloop/features/spark_app.py) runs kubeloop/features/spark_driver.py in it.
#
# Build from the repository root (the context must be the repo):
#   docker build -f images/spark.Dockerfile -t kind.local/kubeloop/spark:0.1.0 .
# and load it into kind with: kind load docker-image kind.local/kubeloop/spark:0.1.0 --name kubeloop
#
# Why not FROM apache/spark directly: its Python is Ubuntu jammy's 3.10, and kubeloop needs
# 3.11 (pyproject.toml requires-python). So the base is the same Python as every other
# kubeloop image, and the Spark distribution, its Java and its pod entrypoint are copied out
# of the official image the Spark Operator v2.5.2 itself is built on (its Dockerfile:17, the
# same tag and digest). The Spark there is 4.0.4, the pyspark of requirements.lock.
FROM python:3.11.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    MPLCONFIGDIR=/tmp/matplotlib \
    NUMBA_CACHE_DIR=/tmp/numba \
    JAVA_HOME=/opt/java/openjdk \
    SPARK_HOME=/opt/spark \
    PYSPARK_PYTHON=python3 \
    PYSPARK_DRIVER_PYTHON=python3 \
    PATH=/opt/java/openjdk/bin:/opt/spark/bin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

# What Spark's /opt/entrypoint.sh calls: bash, tini (it execs the driver and executor under
# it), libnss-wrapper (a passwd entry for an arbitrary uid), procps (decom.sh); libgomp1 for
# LightGBM's wheel, which the lock installs. uid/gid 185 is the official image's `spark`
# user, the one the SparkApplication's securityContext runs as.
RUN apt-get update \
    && apt-get install -y --no-install-recommends bash tini libnss-wrapper procps libgomp1 wget ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 185 spark \
    && useradd --system --uid 185 --gid 185 --home-dir /nonexistent --shell /usr/sbin/nologin spark

COPY --from=docker.io/apache/spark:4.0.4@sha256:94ad730f7510002d8a1615de269f27cdeca4d4eef51657384db3fa9246b5a4d8 /opt/java/openjdk /opt/java/openjdk
COPY --from=docker.io/apache/spark:4.0.4@sha256:94ad730f7510002d8a1615de269f27cdeca4d4eef51657384db3fa9246b5a4d8 --chown=185:185 /opt/spark /opt/spark
COPY --from=docker.io/apache/spark:4.0.4@sha256:94ad730f7510002d8a1615de269f27cdeca4d4eef51657384db3fa9246b5a4d8 /opt/entrypoint.sh /opt/decom.sh /opt/

# Hadoop's S3A connector, which the Spark distribution does not ship: hadoop-aws at the
# Hadoop of Spark 4.0.4 (jars/hadoop-client-api-3.4.1.jar) and the AWS SDK v2 bundle that
# hadoop-aws 3.4.1's POM names (hadoop-project 3.4.1: aws-java-sdk-v2.version 2.24.6).
# Each jar is checked against the SHA-1 Maven Central publishes beside it.
ARG HADOOP_AWS_VERSION=3.4.1
ARG AWS_SDK_BUNDLE_VERSION=2.24.6
RUN set -e; cd /opt/spark/jars; \
    for jar in org/apache/hadoop/hadoop-aws/${HADOOP_AWS_VERSION}/hadoop-aws-${HADOOP_AWS_VERSION}.jar \
               software/amazon/awssdk/bundle/${AWS_SDK_BUNDLE_VERSION}/bundle-${AWS_SDK_BUNDLE_VERSION}.jar; do \
      name="$(basename "${jar}")"; \
      wget -q -O "${name}" "https://repo1.maven.org/maven2/${jar}"; \
      echo "$(wget -q -O - "https://repo1.maven.org/maven2/${jar}.sha1" | cut -c1-40)  ${name}" | sha1sum -c -; \
    done; \
    chmod 644 hadoop-aws-*.jar bundle-*.jar

# The driver's own work directory, writable by the spark user (Spark writes there).
RUN mkdir -p /opt/spark/work-dir && chown 185:185 /opt/spark/work-dir

WORKDIR /opt/kubeloop

# Dependencies first (one layer, reused while the lock file is unchanged), as in the
# components image; the lock's pyspark is the Spark of /opt/spark.
COPY requirements.lock ./
RUN pip install --extra-index-url https://download.pytorch.org/whl/cpu -r requirements.lock

# Then the project itself, without touching the locked dependencies. The source tree stays
# at /opt/kubeloop: the SparkApplication's mainApplicationFile is
# local:///opt/kubeloop/kubeloop/features/spark_driver.py.
COPY pyproject.toml README.md ./
COPY kubeloop ./kubeloop
COPY models ./models
COPY components ./components
COPY pipelines ./pipelines
COPY usecases ./usecases
# Then its s3 extra (pyproject.toml): s3fs lets the driver's Python side (the lake's
# validation, the merge of Spark's part files, the upload of the tables) reach the object
# store through fsspec. Its pins are in the lock, so --no-index installs nothing new and
# fails the build if the extra and the lock ever disagree (as in the components image).
RUN pip install --no-deps . \
    && pip install --no-index "kubeloop[s3]" \
    && python -c "import s3fs" \
    && rm -rf build *.egg-info

WORKDIR /opt/spark/work-dir
# Numeric user, so Kubernetes can check runAsNonRoot.
USER 185:185
# Spark's own entrypoint: `driver` runs spark-submit in client mode inside the driver pod,
# `executor` starts the executor backend (the operator's spark-submit sets the arguments).
ENTRYPOINT ["/opt/entrypoint.sh"]
