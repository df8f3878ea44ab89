# The freshet step image: runs one pipeline step as `python -m tasks.<step> --config ... --run-id ...`
# (or `torchrun ... -m tasks.train ...`) under the docker or kubernetes runner. The operator gives the
# command; the image only provides the pinned environment and our code.
#
#   docker build -t freshet:latest .                                  # CPU torch (default)
#   docker build -t freshet:gpu --build-arg TORCH_INDEX_URL=https://pypi.org/simple .
#                                          # PyPI's Linux x86_64 torch wheel is the CUDA build
#
# For production, pin the base by digest as well (python:3.11-slim-bookworm@sha256:...).
#
# Two stages: `wheel` builds the freshet wheel from the code; the image installs that wheel, so what runs
# is what `pip install` of the package gives (every module, the `freshet` command), never the source tree.

# ---------------------------------------------------------------------------------------- the wheel
FROM python:3.11-slim-bookworm AS wheel

ARG PIP_VERSION=26.3
# The build backend pinned here, not fetched unpinned by build isolation (pyproject says setuptools>=68).
ARG SETUPTOOLS_VERSION=84.2.1

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore

WORKDIR /src
RUN pip install "pip==${PIP_VERSION}" "setuptools==${SETUPTOOLS_VERSION}"
COPY pyproject.toml README.md ./
COPY tasks/ tasks/
COPY plugins/ plugins/
RUN pip wheel --no-deps --no-build-isolation --wheel-dir /wheels .

# ---------------------------------------------------------------------------------------- the image
FROM python:3.11-slim-bookworm

# Where torch comes from. The CPU index keeps the image ~2 GB smaller than the CUDA build; a GPU
# image is one --build-arg away, with no other change to the file.
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ARG PIP_VERSION=26.3
ARG FRESHET_UID=10001
ARG FRESHET_VERSION=0.0.0+local
ARG VCS_REF=unknown

LABEL org.opencontainers.image.title="freshet-step" \
      org.opencontainers.image.description="freshet pipeline steps (python -m tasks.<step>) and DDP training (torchrun -m tasks.train)" \
      org.opencontainers.image.source="https://github.com/freshet-ml/freshet" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${FRESHET_VERSION}" \
      org.opencontainers.image.revision="${VCS_REF}" \
      org.opencontainers.image.base.name="docker.io/library/python:3.11-slim-bookworm"

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore

# tini as PID 1: forwards SIGTERM to the step (checkpoint-on-signal in training) and reaps
# torchrun's children. The code stays root-owned and read-only for the runtime user.
RUN apt-get update \
 && apt-get install -y --no-install-recommends "tini=0.19.0-1*" \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid "${FRESHET_UID}" freshet \
 && useradd --system --uid "${FRESHET_UID}" --gid freshet --create-home --home-dir /home/freshet \
        --shell /usr/sbin/nologin freshet \
 && mkdir -p /var/lib/freshet /airflow/xcom \
 && chown freshet:freshet /var/lib/freshet /airflow/xcom

WORKDIR /opt/freshet

# Dependencies first, in their own layers, so code changes rebuild in seconds. The same order as
# `make venv`: pip, then torch alone (requirements.lock leaves torch out, so the build chosen by
# TORCH_INDEX_URL is never swapped), then the lock, then our wheel without dependencies.
RUN pip install "pip==${PIP_VERSION}"
COPY requirements-torch.txt ./
RUN pip install --index-url "${TORCH_INDEX_URL}" -r requirements-torch.txt
COPY requirements.lock ./
RUN pip install -r requirements.lock

# The package from the wheel stage into site-packages. No code is copied into /opt/freshet (the working
# directory), so `python -m tasks.<step>` imports the installed package, not a shadowing source tree.
# configs/ is there for `--config /opt/freshet/configs/...` (runner.container_config_path, compose's serve).
COPY configs/ configs/
COPY --from=wheel /wheels/ /tmp/wheels/
RUN pip install --no-deps /tmp/wheels/freshet-*.whl \
 && pip check

ENV FRESHET_HOME=/var/lib/freshet \
    HF_HOME=/home/freshet/.cache/huggingface

# Numeric, so Kubernetes runAsNonRoot can verify it without an /etc/passwd lookup.
USER ${FRESHET_UID}:${FRESHET_UID}

ENTRYPOINT ["tini", "--"]
# No default step: the operator always passes `python -m tasks.<step> ...`.
CMD ["python", "-c", "print('freshet step image: run python -m tasks.<step> --config ... --run-id ...')"]
