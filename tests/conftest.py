"""Shared test setup. Airflow reads its config at import time, so its home is set here first."""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
_AIRFLOW_HOME = tempfile.mkdtemp(prefix="freshet-test-airflow-")
os.environ.setdefault("AIRFLOW_HOME", _AIRFLOW_HOME)
os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
os.environ.setdefault("AIRFLOW__CORE__DAGS_FOLDER", str(REPO / "dags"))
os.environ.setdefault("AIRFLOW__CORE__PLUGINS_FOLDER", str(REPO / "plugins"))
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Tiny models on a shared 2-core machine: one thread per process is several times faster than two
# threads fighting another process for the cores.
os.environ.setdefault("FRESHET_THREADS_PER_RANK", "1")
os.environ.setdefault("FRESHET_CACHE", tempfile.mkdtemp(prefix="freshet-test-cache-"))
# train.precision=auto follows the CPU (bf16 where it is native): the tests pin "no native bf16" so what
# they train, and the numbers they compare, are the same on every machine (tests that need the real CPU
# or other flags set FRESHET_CPU_FLAGS themselves).
os.environ.setdefault("FRESHET_CPU_FLAGS", "")
# The plugins folder is on sys.path inside Airflow; mirror that for direct imports in tests.
sys.path.insert(0, str(REPO / "plugins"))


@pytest.fixture(scope="session")
def tracking(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One MLflow database per pytest session, shared by the step test modules (creating one costs seconds)."""
    directory = tmp_path_factory.getbasetemp() / "mlflow"
    directory.mkdir(exist_ok=True)
    return directory


@pytest.fixture(scope="module")
def mlflow_uri(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A tracking database for one test module: creating a fresh one costs seconds per test."""
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow')}/mlflow.db"


# ----------------------------------------------------------------- the model steps, run once per session


def run_model_steps(config, store, run_id, day, upstream):
    """train -> evaluate -> compress -> register -> promote for one run, on tiny data."""
    from tasks import compress, evaluate, promote, register, train

    manifests = dict(upstream)
    manifests["train"] = train.run(config, {"augment": upstream["augment"], "clean": upstream["clean"]},
                                   run_id=run_id, store=store, logical_date=day)
    manifests["evaluate"] = evaluate.run(config, {"train": manifests["train"], "clean": upstream["clean"]},
                                         run_id=run_id, store=store, logical_date=day)
    manifests["compress"] = compress.run(config, {k: manifests[k] for k in ("train", "evaluate", "clean")},
                                         run_id=run_id, store=store, logical_date=day)
    manifests["register"] = register.run(config, {k: manifests[k] for k in ("train", "evaluate", "compress", "validate", "clean")},
                                         run_id=run_id, store=store, logical_date=day)
    manifests["promote"] = promote.run(config, {"register": manifests["register"]}, run_id=run_id, store=store,
                                       logical_date=day)
    return manifests


@pytest.fixture(scope="session")
def two_rounds(tmp_path_factory):
    """Two rounds of the model steps on a tiny BERT: the first makes a champion, the second warm-starts from it."""
    from tasks.demo.corpus import synthetic_corpus
    from tasks.store import ArtifactStore
    from tests.pipeline_support import LABELS, fake_upstream, tiny_config

    root = tmp_path_factory.mktemp("model_steps")
    config = tiny_config(root)
    store = ArtifactStore(config.artifact_root)
    corpus = synthetic_corpus(600, LABELS, seed=1)
    first = run_model_steps(config, store, "run-1", "2026-11-01", fake_upstream(config, store, "run-1", "2026-11-01", corpus[:400]))
    second = run_model_steps(config, store, "run-2", "2026-11-02", fake_upstream(config, store, "run-2", "2026-11-02", corpus[400:]))
    return config, store, first, second
