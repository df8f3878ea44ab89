"""The continuous-learning pipeline: crawl → new_data → validate → clean → augment → decide → train (DDP)
→ evaluate → compress → register → gate → [approve] → promote. Thin: every task is one factory
call; the config file (FRESHET_CONFIG) decides sources, model, schedule, gate policy, notifications,
approval and where each step runs.

Runs daily and, when the `freshet_watch` DAG sees new pages at a source, early (an Airflow Asset).
Every run ingests what is new (`new_data` ends a run whose crawl found nothing, green, with the
reason); `decide` lets it train only on enough new rows since the last training, on drift, or with
no champion yet (trigger with `force_training: true` to train anyway).
"""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path

from airflow.sdk import DAG, chain

from freshet_airflow.factory import (approve, decide, gate, new_data, pipeline_dag_settings, step, train_step,
                                     training_settings)

CONFIG = os.environ.get("FRESHET_CONFIG", str(Path(__file__).resolve().parents[1] / "configs" / "demo.yaml"))
DAG_ID = os.environ.get("FRESHET_DAG_ID_OVERRIDE", "freshet")

with DAG(
    dag_id=DAG_ID,
    description="freshet: keep a text classifier fresh as new data arrives",
    tags=["freshet", "continuous-learning", "mlflow"],
    doc_md=__doc__,
    **pipeline_dag_settings(CONFIG),
) as dag:
    crawl = step("crawl", CONFIG)
    validate = step("validate", CONFIG, inputs=["crawl"])
    clean = step("clean", CONFIG, inputs=["validate"])
    augment = step("augment", CONFIG, inputs=["clean"])
    should_train = decide(CONFIG)
    train = train_step(CONFIG, inputs=["augment", "clean"], execution_timeout=timedelta(hours=6),
                       **training_settings(CONFIG))
    evaluate = step("evaluate", CONFIG, inputs=["train", "clean"])
    compress = step("compress", CONFIG, inputs=["train", "evaluate", "clean"])
    register = step("register", CONFIG, inputs=["train", "evaluate", "compress", "validate", "clean"])
    promote = step("promote", CONFIG, inputs=["register"])
    chain(crawl, new_data(crawl), validate, clean, augment, should_train, train, evaluate, compress, register, gate(compress, CONFIG),
          *approve(CONFIG), promote)
