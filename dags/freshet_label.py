"""Labelling queue: the day's budget of scored texts the champion is least sure of (margin, spread over clusters and
predicted labels, never a near-duplicate of a labelled or queued text), plus a random control share, pushed to
Label Studio with the champion's prediction as pre-annotation (`python -m tasks.label`, run where `runner.mode`
says, like every step). Daily after scoring, and whenever batch scoring updates the prediction log's Asset. The
annotations come back through the pipeline's crawl (a source of kind `label_studio`).
"""

from __future__ import annotations

from airflow.sdk import DAG, chain

from freshet_airflow import config_path, production_dag_settings, production_schedules, tasks

CONFIG = config_path()

with DAG(
    dag_id="freshet_label",
    description="freshet: queue the texts worth labelling in Label Studio (active learning)",
    tags=["freshet", "labelling", "active-learning"],
    doc_md=__doc__,
    schedule=production_schedules(CONFIG)["freshet_label"],
    **production_dag_settings(CONFIG),
) as dag:
    chain(*tasks(CONFIG, ("label",)))
