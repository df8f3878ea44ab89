"""The learning-curve report over a tiny three-day pipeline: two days train (the second compares with
the champion), the third brings too few rows and only ingests. Real steps, tiny random BERT."""

from __future__ import annotations

import csv

import pytest

from tasks import decide
from tasks.config import CompressConfig, ScheduleConfig
from tasks.decide import DecideFacts
from tasks.demo import learning_curve
from tasks.store import ArtifactStore
from tests.corpus_support import synthetic_corpus
from tests.pipeline_support import LABELS, run_model_steps, tiny_config
from tests.schedule_support import ingest

DAYS = {"run-1": "2026-11-01", "run-2": "2026-11-02", "run-3": "2026-11-03"}


def run_day(config, store, run_id, day, rows):
    manifests = ingest(config, store, run_id, day, rows)
    decision = decide.run(config, {"validate": manifests["validate"]}, run_id=run_id, store=store, logical_date=day)
    if DecideFacts.of(decision).train:
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


def curve_row(day, fresh, old, promoted=True, *, step=None, baseline=None, over_baseline=None):
    """A row as `collect` makes it: `step` = (difference, ci_low, ci_high) against the champion it replaced,
    `over_baseline` the same against the TF-IDF baseline, `baseline` its fresh macro-F1."""
    model = "candidate" if promoted else "champion"
    row = {key: None for key in learning_curve.COLUMNS} | {
        "day": day, "promoted": promoted, f"{model}.fresh.macro_f1": fresh, f"{model}.old.macro_f1": old,
        "compared_version": str(day - 1) if day > 1 else None, "champion_version": str(day),
        "baseline.fresh.macro_f1": baseline}
    for kind, values in (("paired", step), ("over_baseline", over_baseline)):
        if values is not None:
            row |= dict(zip((f"{kind}.fresh.difference", f"{kind}.fresh.ci_low", f"{kind}.fresh.ci_high"), values))
    return row


def test_criterion_compares_like_with_like_and_old_within_a_point_of_its_best():
    rows = [curve_row(1, 0.60, None, baseline=0.58, over_baseline=(0.02, -0.01, 0.05)),
            curve_row(2, 0.70, 0.71, step=(0.04, 0.01, 0.07), baseline=0.69, over_baseline=(0.01, -0.02, 0.04)),
            curve_row(3, 0.68, 0.705, promoted=False, baseline=0.66),
            curve_row(4, 0.78, 0.72, step=(0.02, -0.01, 0.05))]
    verdict = learning_curve.criterion(rows)
    assert [step["day"] for step in verdict["promotions"]] == [2, 4] and verdict["promotions_worse"] == 0
    assert [item["day"] for item in verdict["against_baseline"]] == [1, 2, 3] and verdict["days_below_baseline"] == 0
    assert verdict["old_best"] == 0.72 and verdict["old_max_drop_below_best"] == pytest.approx(0.005)
    assert verdict["fresh_slope_per_day"] > 0 and verdict["met"]
    lines = "\n".join(learning_curve.criterion_lines(verdict))
    assert "v2 vs v1 it replaced, on day 2's fresh slice: +4.0 points (95% CI +1.0..+7.0)" in lines
    assert "day 3: champion vs TF-IDF + LR on the same train rows, fresh slice: +2.0 points (kept champion" in lines
    assert "informative, not judged" in lines and "criterion met" in lines


def test_criterion_fails_on_a_worse_promotion_the_baseline_or_forgetting():
    worse = learning_curve.criterion([curve_row(1, 0.6, None), curve_row(2, 0.5, 0.6, step=(-0.08, -0.12, -0.03))])
    assert worse["promotions_worse"] == 1 and not worse["met"]
    assert "WORSE" in "\n".join(learning_curve.criterion_lines(worse))
    below = learning_curve.criterion([curve_row(1, 0.6, None, baseline=0.7, over_baseline=(-0.1, -0.14, -0.06))])
    assert below["days_below_baseline"] == 1 and not below["met"]
    kept_below = learning_curve.criterion([curve_row(1, 0.6, None, promoted=False, baseline=0.65)])
    assert kept_below["days_below_baseline"] == 1 and not kept_below["met"]
    forgetting = learning_curve.criterion([curve_row(1, 0.6, None), curve_row(2, 0.7, 0.80), curve_row(3, 0.8, 0.785)])
    assert not forgetting["old_within_bound"] and not forgetting["met"] and forgetting["old_max_drop_day"] == 3
    assert "OUTSIDE 1 point" in "\n".join(learning_curve.criterion_lines(forgetting))


def test_no_trend_from_two_points_and_no_score_on_classes_the_champion_never_knew():
    two = learning_curve.criterion([curve_row(1, 0.88, None), curve_row(2, 0.70, 0.9, step=(0.01, -0.02, 0.04))])
    assert two["fresh_slope_per_day"] is None and two["met"]  # a lower fresh F1 on other rows is not a verdict
    assert "no trend claimed from 2 day(s)" in "\n".join(learning_curve.criterion_lines(two))
    # Day 2's fresh slice is all a new class the kept champion never had: evaluate scored it on no row (NaN).
    day2 = curve_row(2, None, 0.9, promoted=False)
    day2["champion.fresh.macro_f1"] = learning_curve._measured(float("nan"))
    verdict = learning_curve.criterion([curve_row(1, 0.88, None), day2])
    assert verdict["fresh_days"] == 1 and verdict["fresh_last"] == 0.88 and verdict["met"]
    assert "no evaluated day yet" in learning_curve.criterion_lines(learning_curve.criterion([]))[0]
