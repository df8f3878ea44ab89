"""Watch the pipeline's sources: one index request per source, hourly by default. A page the crawler
has not fetched yet updates the sources' Airflow Asset, which starts the `freshet` DAG early.
"""

from __future__ import annotations

import pendulum
from airflow.sdk import DAG

from freshet_airflow import config_path, task
from freshet_airflow.dag_settings import pipeline_config

CONFIG = config_path()
SETTINGS = pipeline_config(CONFIG).schedule

with DAG(
    dag_id="freshet_watch",
    description="freshet: tell the pipeline when a source publishes new pages",
    schedule=SETTINGS.watch_cron if SETTINGS.watch_source else None,
    start_date=pendulum.datetime(*SETTINGS.start_date.timetuple()[:3], tz="UTC"),
    catchup=False,  # only the present state of a source matters
    max_active_runs=1,
    tags=["freshet", "continuous-learning"],
    doc_md=__doc__,
) as dag:
    task("watch", CONFIG)
