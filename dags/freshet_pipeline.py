"""The continuous-learning pipeline: crawl → validate → clean → augment → train (DDP) → evaluate
→ compress → register → gate → promote. Thin: every task is one factory call; the config file
(FRESHET_CONFIG) decides sources, model, gate policy and where each step runs.
"""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path

import pendulum
from airflow.sdk import DAG, chain

from freshet_airflow import gate, step, train_step

CONFIG = os.environ.get("FRESHET_CONFIG", str(Path(__file__).resolve().parents[1] / "configs" / "demo.yaml"))
DAG_ID = os.environ.get("FRESHET_DAG_ID_OVERRIDE", "freshet")

with DAG(
    dag_id=DAG_ID,
    description="freshet: keep a text classifier fresh as new data arrives",
    schedule="@daily",
    start_date=pendulum.datetime(2026, 11, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    tags=["freshet", "continuous-learning", "mlflow"],
    default_args={"retries": 1, "retry_delay": timedelta(seconds=30), "retry_exponential_backoff": True},
    doc_md=__doc__,
) as dag:
    crawl = step("crawl", CONFIG)
    validate = step("validate", CONFIG, inputs=["crawl"])
    clean = step("clean", CONFIG, inputs=["validate"])
    augment = step("augment", CONFIG, inputs=["clean"])
    train = train_step(CONFIG, inputs=["augment", "clean"], execution_timeout=timedelta(hours=6))
    evaluate = step("evaluate", CONFIG, inputs=["train", "clean"])
    compress = step("compress", CONFIG, inputs=["train", "evaluate", "clean"])
    register = step("register", CONFIG, inputs=["train", "evaluate", "compress", "validate", "clean"])
    promote = step("promote", CONFIG, inputs=["register"], retries=0)
    chain(crawl, validate, clean, augment, train, evaluate, compress, register, gate(compress), promote)
