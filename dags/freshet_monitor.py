"""Production monitoring: the prediction log's recent rows against the serving version's reference (its
predictions on its own test slices): drift of the predicted labels, the confidence and the inputs (length,
out-of-vocabulary words), a label-free macro-F1 estimate from calibrated confidence, and the real macro-F1
once labelled feedback arrives (`python -m tasks.monitor`). Daily, and whenever the prediction log's Asset
is updated. On a breach outside the cooldown, `production_drift` updates the production-drift Asset, which
starts the `freshet` DAG, whose `decide` trains with the reason "production drift: ..."; otherwise it skips.
"""

from __future__ import annotations

from airflow.sdk import DAG, chain

from freshet_airflow import config_path, production_dag_settings, production_schedules, tasks

CONFIG = config_path()

with DAG(
    dag_id="freshet_monitor",
    description="freshet: watch production predictions; a breach starts the pipeline (production drift)",
    tags=["freshet", "monitoring", "mlflow"],
    doc_md=__doc__,
    schedule=production_schedules(CONFIG)["freshet_monitor"],
    **production_dag_settings(CONFIG),
) as dag:
    chain(*tasks(CONFIG, ("monitor", "production_drift")))
