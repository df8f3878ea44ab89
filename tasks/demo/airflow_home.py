"""The demo's Airflow: standalone-style settings on SQLite under `<home>/airflow`, with this checkout's DAGs and
plugins and the pipeline config as FRESHET_CONFIG; the metadata DB and the training pool. Used by the demo to run
DAGs and by `freshet ui airflow` to show them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tasks.config import PipelineConfig

REPO = Path(__file__).resolve().parents[2]


def airflow_env(home: Path, config_path: Path) -> dict[str, str]:
    """Airflow standalone-style settings on SQLite, sized for a 2-core laptop."""
    return {
        **os.environ,
        "FRESHET_HOME": str(home),
        "FRESHET_CONFIG": str(config_path),
        "AIRFLOW_HOME": str(home / "airflow"),
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__PARALLELISM": "4",
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True",
        "AIRFLOW__API_AUTH__JWT_SECRET": os.environ.get("AIRFLOW__API_AUTH__JWT_SECRET", "freshet-demo-" + "x" * 64),
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), str(REPO / "plugins"), os.environ.get("PYTHONPATH")])),
        "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
        "TOKENIZERS_PARALLELISM": "false",
    }


def prepare_airflow(env: dict[str, str], config: PipelineConfig) -> None:
    """Migrate the metadata DB and create the training pool (the scheduler leaves tasks of a missing pool queued)."""
    airflow = [sys.executable, "-m", "airflow"]
    subprocess.run([*airflow, "db", "migrate"], env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    if config.schedule.training_pool:
        subprocess.run([*airflow, "pools", "set", config.schedule.training_pool, str(config.schedule.training_pool_slots),
                        "freshet: training jobs (one GPU job at a time)"],
                       env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
