"""Shared test setup. Airflow reads its config at import time, so its home is set here first."""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

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
# The plugins folder is on sys.path inside Airflow; mirror that for direct imports in tests.
sys.path.insert(0, str(REPO / "plugins"))
