"""The learning-curve report over a tiny three-day pipeline: two days train (the second compares with
the champion), the third brings too few rows and only ingests. Real steps, tiny random BERT."""

from __future__ import annotations

import csv

import pytest

from tasks import decide
from tasks.config import CompressConfig, ScheduleConfig
from tasks.demo import learning_curve
from tasks.store import ArtifactStore
from tests.corpus_support import synthetic_corpus
from tests.pipeline_support import LABELS, run_model_steps, tiny_config
from tests.schedule_support import ingest

DAYS = {"run-1": "2026-11-01", "run-2": "2026-11-02", "run-3": "2026-11-03"}


def run_day(config, store, run_id, day, rows):
    manifests = ingest(config, store, run_id, day, rows)
    decision = decide.run(config, {"validate": manifests["validate"]}, run_id=run_id, store=store, logical_date=day)
    if decision.facts["train"]:
        run_model_steps(config, store, run_id, day, manifests, gated=True)


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    root = tmp_path_factory.mktemp("learning_curve")
    config = tiny_config(root, epochs=4).model_copy(update={
        "schedule": ScheduleConfig(min_new_rows=50), "compress": CompressConfig(variants=["int8-dynamic"])})
    store = ArtifactStore(config.artifact_root)
    corpus = synthetic_corpus(620, LABELS, seed=7)
    for run_id, rows in zip(DAYS, (corpus[:400], corpus[400:600], corpus[600:620])):
        run_day(config, store, run_id, DAYS[run_id], rows)
    rows, paths = learning_curve.build(config, store, None, root / "report")
    return config, store, rows, paths


def test_one_row_per_day_in_date_order_with_what_arrived(report):
    _, _, rows, _ = report
    assert [row["run_id"] for row in rows] == list(DAYS)
    assert [row["logical_date"] for row in rows] == list(DAYS.values())
    assert [row["rows_arrived"] for row in rows] == [400, 200, 20]  # no crawl manifest here: validate's rows_in
    assert [row["trained"] for row in rows] == [True, True, False]
    assert "only 20 new rows" in rows[2]["decision"]


def test_scores_gate_and_champion_come_from_the_manifests(report):
    _, store, rows, _ = report
    from tasks.contract import read_manifest

    first, second, third = rows
    evaluation = read_manifest(store, "run-2", "evaluate")
    assert second["candidate.fresh.macro_f1"] == evaluation.metrics["candidate.fresh.macro_f1"]
    assert second["champion.frozen.macro_f1"] == evaluation.metrics["champion.frozen.macro_f1"] is not None
    assert first["champion.frozen.macro_f1"] is None  # nothing to compare with on day 1
    assert first["gate"] == "pass" and first["promoted"] and first["champion_version"] == "1"
    assert second["registered_version"] == "2" and second["gate"] in ("pass", "reject")
    assert second["champion_version"] == ("2" if second["gate"] == "pass" else "1")
    assert third["gate"] is None and third["candidate.frozen.macro_f1"] is None
    assert third["champion_version"] == second["champion_version"]  # carried over a day without training


def test_files_and_mlflow_run(report):
    import mlflow

    config, _, rows, paths = report
    with open(paths["csv"]) as handle:
        table = list(csv.DictReader(handle))
    assert [line["run_id"] for line in table] == list(DAYS)
    assert float(table[0]["candidate.frozen.macro_f1"]) == pytest.approx(rows[0]["candidate.frozen.macro_f1"])
    markdown = paths["markdown"].read_text()
    assert markdown.count("\n| ") == 1 + len(rows) and "no training: only 20 new rows" in markdown
    assert paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and paths["png"].stat().st_size > 10_000

    client = mlflow.MlflowClient()
    (run,) = client.search_runs([client.get_experiment_by_name(config.mlflow.experiment).experiment_id],
                                filter_string="tags.`freshet.kind` = 'learning_curve'")
    history = client.get_metric_history(run.info.run_id, "candidate.frozen.macro_f1")
    assert [(point.step, point.value) for point in history] == [(1, pytest.approx(rows[0]["candidate.frozen.macro_f1"])),
                                                                (2, pytest.approx(rows[1]["candidate.frozen.macro_f1"]))]
    artifacts = {item.path for item in client.list_artifacts(run.info.run_id)}
    assert artifacts == {"learning_curve.csv", "learning_curve.md", "learning_curve.png"}


def curve_row(day, fresh, old, promoted=True):
    model = "candidate" if promoted else "champion"
    return {"day": day, "promoted": promoted, f"{model}.fresh.macro_f1": fresh, f"{model}.old.macro_f1": old}


def test_criterion_rising_fresh_and_old_within_a_point_of_its_best():
    rows = [curve_row(1, 0.60, None), curve_row(2, 0.70, 0.71), curve_row(3, 0.68, 0.705, promoted=False),
            curve_row(4, 0.78, 0.72)]
    verdict = learning_curve.criterion(rows)
    assert verdict["fresh_rising"] and verdict["fresh_slope_per_day"] > 0
    assert verdict["old_best"] == 0.72 and verdict["old_max_drop_below_best"] == pytest.approx(0.005)
    assert verdict["met"]
    assert "criterion met" in "\n".join(learning_curve.criterion_lines(verdict))


def test_criterion_fails_on_forgetting_or_flat_new_data():
    forgetting = learning_curve.criterion([curve_row(1, 0.6, None), curve_row(2, 0.7, 0.80), curve_row(3, 0.8, 0.785)])
    assert forgetting["fresh_rising"] and not forgetting["old_within_bound"] and not forgetting["met"]
    assert forgetting["old_max_drop_day"] == 3
    assert "OUTSIDE 1 point" in "\n".join(learning_curve.criterion_lines(forgetting))
    flat = learning_curve.criterion([curve_row(1, 0.7, None), curve_row(2, 0.75, 0.8), curve_row(3, 0.7, 0.8)])
    assert not flat["fresh_rising"] and not flat["met"]
    assert "needs at least two" in learning_curve.criterion_lines(learning_curve.criterion([curve_row(1, 0.7, None)]))[0]
