"""Roll the model back: `champion` returns to the `previous` version, which the demoted version's
tags record with who asked and why (the same function as `freshet rollback`). Trigger it by hand
with the params `reason` (required) and `requested_by`.
"""

from __future__ import annotations

import pendulum
from airflow.sdk import DAG

from freshet_airflow import config_path, task
from freshet_airflow.control import rollback_params

CONFIG = config_path()

with DAG(
    dag_id="freshet_rollback",
    description="freshet: move the champion alias back to the previous model version",
    schedule=None,
    start_date=pendulum.datetime(2026, 11, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    tags=["freshet", "rollback", "mlflow"],
    params=rollback_params(),
    doc_md=__doc__,
) as dag:
    task("rollback", CONFIG)
