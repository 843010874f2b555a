# kind.local/kubeloop/components-python:0.1.0 -- Kubeflow component image: every pipeline step (components/*.py, lightweight components whose base_image this is) imports the installed kubeloop package.
#
# Build from the repository root (the context must be the repo):
#   docker build -f images/components.Dockerfile -t kind.local/kubeloop/components-python:0.1.0 .
# and load it into kind with: kind load docker-image kind.local/kubeloop/components-python:0.1.0 --name kubeloop
FROM python:3.11.11-slim-bookworm

# OMP_WAIT_POLICY=PASSIVE: with LightGBM's default busy-waiting, threads that wait for a
# shared core spin; the training bench (bench/training_bench.py) measured one 60k-row,
# 20-round training at 3.9-31.9 s under the same load, 1-2 s with passive waiting. The
# OpenMP runtime reads it once when LightGBM loads, so it is set for the whole image.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    OMP_WAIT_POLICY=PASSIVE \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    MPLCONFIGDIR=/tmp/matplotlib \
    NUMBA_CACHE_DIR=/tmp/numba

# libgomp1: OpenMP runtime that LightGBM's wheel links against.
RUN apt-get update \
    && apt-get install -y --no-install-recommends libgomp1 \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --gid 1000 kubeloop \
    && useradd --uid 1000 --gid 1000 --create-home --shell /usr/sbin/nologin kubeloop
# KFP's v2 launcher stages artifacts under /gcs, /minio and /s3 at the file system root; a
# non-root user cannot create them there, so they exist, owned by that user, in the image.
RUN mkdir -p /gcs /minio /s3 && chown 1000:1000 /gcs /minio /s3

WORKDIR /opt/kubeloop

# Dependencies first (one layer, reused while the lock file is unchanged). torch is pinned
# to its CPU build (torch==...+cpu), which lives on PyTorch's own index.
COPY requirements.lock ./
RUN pip install --extra-index-url https://download.pytorch.org/whl/cpu -r requirements.lock

# Then the project itself, without touching the locked dependencies.
COPY pyproject.toml README.md ./
COPY kubeloop ./kubeloop
COPY models ./models
COPY components ./components
COPY pipelines ./pipelines
COPY usecases ./usecases
# The project, then its s3 extra (pyproject.toml): s3fs, through which the ingest and features steps read
# an s3:// lake and copy the Spark job's tables off KFP's SeaweedFS. Its pins are in the
# lock (the dev extra takes them), so --no-index installs nothing new here and fails the
# build if the extra ever asks for something the lock lacks.
RUN pip install --no-deps . \
    && pip install --no-index "kubeloop[s3]" \
    && python -c "import s3fs" \
    && rm -rf build *.egg-info

# Numeric user, so Kubernetes can check runAsNonRoot.
USER 1000:1000
# KFP sets the command of each step (python3 -m kfp.dsl.executor_main ...).
CMD ["python"]
