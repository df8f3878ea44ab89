"""The continuous-learning pipeline, crawl to promote: the steps of `tasks.pipeline` in its order, with the control
tasks between them (`new_data`, `should_train`, `gate`, `approve`: `freshet_airflow.PIPELINE_TASKS`). Thin: every
task is built the same way, by name (`freshet_airflow.task`); the config file (FRESHET_CONFIG) decides sources,
model, schedule, gate policy, notifications, approval and where each step runs.

Runs daily and, when the `freshet_watch` DAG sees new pages at a source, early (an Airflow Asset).
Every run ingests what is new (`new_data` ends a run whose crawl found nothing, green, with the
reason); `decide` lets it train only on enough new rows since the last training, on drift, or with
no champion yet (trigger with `force_training: true` to train anyway).
"""

from __future__ import annotations

import os

from airflow.sdk import DAG, chain

from freshet_airflow import PIPELINE_TASKS, config_path, pipeline_dag_settings, pipeline_schedule, tasks

CONFIG = config_path()
DAG_ID = os.environ.get("FRESHET_DAG_ID_OVERRIDE", "freshet")

with DAG(
    dag_id=DAG_ID,
    description="freshet: keep a text classifier fresh as new data arrives",
    tags=["freshet", "continuous-learning", "mlflow"],
    doc_md=__doc__,
    schedule=pipeline_schedule(CONFIG),
    **pipeline_dag_settings(CONFIG),
) as dag:
    chain(*tasks(CONFIG, PIPELINE_TASKS))  # `approve` only when approval.required
