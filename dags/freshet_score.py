"""Batch scoring: the day's unlabelled drop folder (`score.input`, `{date}` = the logical date) scored by the
champion, and by the challenger in shadow when it is another version (`python -m tasks.score`, run where
`runner.mode` says, like every step). The predictions go to the run's folder and MLflow with the version;
the champion's rows are filed in the prediction log, and `predictions_scored` then updates the log's Asset,
which starts `freshet_monitor`. A day with no files, or no champion yet, ends green with the reason.
"""

from __future__ import annotations

from airflow.sdk import DAG, chain

from freshet_airflow import config_path, production_dag_settings, production_schedules, tasks

CONFIG = config_path()

with DAG(
    dag_id="freshet_score",
    description="freshet: batch-score unlabelled texts with the champion (challenger in shadow)",
    tags=["freshet", "scoring", "mlflow"],
    doc_md=__doc__,
    schedule=production_schedules(CONFIG)["freshet_score"],
    **production_dag_settings(CONFIG),
) as dag:
    chain(*tasks(CONFIG, ("score", "predictions_scored")))
