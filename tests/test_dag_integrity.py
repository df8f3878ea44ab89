"""The DAG parses without import errors, has every step wired in order, tags, and parses fast."""

from __future__ import annotations

import time

import pytest

from tests.conftest import REPO

EXPECTED_ORDER = ["crawl", "validate", "clean", "augment", "train", "evaluate", "compress", "register", "gate", "promote"]


@pytest.fixture(scope="module")
def dagbag():
    from airflow.dag_processing.dagbag import DagBag

    started = time.perf_counter()
    bag = DagBag(dag_folder=str(REPO / "dags"))
    return bag, time.perf_counter() - started


def test_no_import_errors_and_quick_parse(dagbag):
    bag, seconds = dagbag
    assert bag.import_errors == {}
    assert seconds < 20, f"DAG folder took {seconds:.1f}s to parse: keep heavy imports out of DAG files"


def test_pipeline_has_every_step_in_order_with_tags(dagbag):
    bag, _ = dagbag
    dag = bag.dags["freshet"]
    assert set(dag.task_ids) == set(EXPECTED_ORDER)
    for upstream, downstream in zip(EXPECTED_ORDER, EXPECTED_ORDER[1:]):
        assert downstream in dag.get_task(upstream).downstream_task_ids, f"{upstream} -> {downstream} missing"
    assert {"freshet", "continuous-learning"} <= set(dag.tags)
    assert dag.max_active_runs == 1
    assert dag.get_task("train").__class__.__name__ == "DDPTrainOperator"


def test_no_torch_or_pandas_imported_by_the_dag_file():
    import subprocess
    import sys

    code = ("import sys; sys.path[:0]=['plugins']; import runpy; runpy.run_path('dags/freshet_pipeline.py');"
            "heavy=[m for m in ('torch','pandas','transformers','mlflow','great_expectations') if m in sys.modules];"
            "print(','.join(heavy))")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "", f"DAG parse imported heavy modules: {result.stdout}"
