# The freshet Airflow image: api-server, scheduler, dag-processor, triggerer and Celery workers.
# Build context is the repo root:  docker build -f docker/airflow.Dockerfile -t freshet-airflow .
#
# Why our own image and not apache/airflow:3.3.2-python3.11 + our lock: requirements.lock already
# pins apache-airflow==3.3.2 together with every other package we run (mlflow, GX, transformers,
# ...; torch is pinned beside it in requirements-torch.txt).
# The official image ships its own constraint set; installing our lock over it re-pins shared
# packages (SQLAlchemy, pydantic, ...) and leaves two sources of truth. Built from the same base
# and the same lock as the step image, Airflow, the steps it runs locally in the Celery worker
# (runner.mode local) and CI all see identical versions.
#
# torch is in here because with runner.mode local the worker runs the steps itself. The GPU
# worker builds this file with TORCH_INDEX_URL=https://pypi.org/simple (CUDA wheel).
FROM python:3.11-slim-bookworm

ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ARG PIP_VERSION=26.3
ARG FRESHET_UID=10001
ARG FRESHET_VERSION=0.0.0+local
ARG VCS_REF=unknown

LABEL org.opencontainers.image.title="freshet-airflow" \
      org.opencontainers.image.description="Apache Airflow 3.3.2 with the freshet DAGs, plugins and pipeline steps" \
      org.opencontainers.image.source="https://github.com/freshet-ml/freshet" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${FRESHET_VERSION}" \
      org.opencontainers.image.revision="${VCS_REF}" \
      org.opencontainers.image.base.name="docker.io/library/python:3.11-slim-bookworm"

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore \
    AIRFLOW_HOME=/opt/airflow

# The directories that compose mounts named volumes on are created here, owned by the runtime
# user, so a fresh volume inherits that ownership (no chown-as-root init container needed).
RUN apt-get update \
 && apt-get install -y --no-install-recommends "tini=0.19.0-1*" \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid "${FRESHET_UID}" freshet \
 && useradd --system --uid "${FRESHET_UID}" --gid freshet --create-home --home-dir /home/freshet \
        --shell /usr/sbin/nologin freshet \
 && mkdir -p /opt/airflow/logs /opt/airflow/auth /var/lib/freshet \
 && chown -R freshet:freshet /opt/airflow /var/lib/freshet

WORKDIR /opt/freshet

# Dependencies first, in their own layers, so code changes rebuild in seconds. The same order as
# `make venv`: pip, then torch alone (requirements.lock leaves torch out, so the build chosen by
# TORCH_INDEX_URL is never swapped), then the lock, then our package without dependencies.
RUN pip install "pip==${PIP_VERSION}"
COPY requirements-torch.txt ./
RUN pip install --index-url "${TORCH_INDEX_URL}" -r requirements-torch.txt
COPY requirements.lock ./
RUN pip install -r requirements.lock

COPY pyproject.toml README.md ./
COPY tasks/ tasks/
COPY plugins/ plugins/
COPY dags/ dags/
COPY configs/ configs/
# Editable here (unlike the step image): compose bind-mounts dags/ and plugins/ over these paths
# for development, and an editable install makes `import freshet_airflow` follow the mount
# instead of a stale copy in site-packages.
RUN pip install --no-deps -e . \
 && pip check
# The compose deployment needs these; fail here with the reason rather than at the first start.
RUN python -c "import airflow.providers.celery, asyncpg, s3fs" \
 || { echo "requirements.lock must pin apache-airflow-providers-celery (CeleryExecutor), asyncpg (Airflow's async engine on PostgreSQL) and s3fs (s3:// artifact root)" >&2; exit 1; }

ENV FRESHET_HOME=/var/lib/freshet \
    HF_HOME=/home/freshet/.cache/huggingface \
    AIRFLOW__CORE__DAGS_FOLDER=/opt/freshet/dags \
    AIRFLOW__CORE__PLUGINS_FOLDER=/opt/freshet/plugins \
    AIRFLOW__CORE__LOAD_EXAMPLES=false

# Numeric, so Kubernetes runAsNonRoot can verify it without an /etc/passwd lookup.
USER ${FRESHET_UID}:${FRESHET_UID}

EXPOSE 8080 8793 8974
ENTRYPOINT ["tini", "--"]
CMD ["airflow", "version"]
