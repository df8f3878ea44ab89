"""freshet demo on an existing home: it goes on with the next days at the same volume (new packages, the
old ones keep their day), says plainly when nothing is new, and reports only this invocation's runs."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest
import yaml

from tasks.demo.corpus import extend_debian_corpus
from tasks.demo.runner import DemoError, find_run, plan_days, write_demo_state
from tasks.demo.site import build_documents
from tasks.demo.summary import summarize_run
from tasks.store import ArtifactStore

START = dt.date(2026, 11, 1)


def packages(section_sizes: dict[str, int]) -> str:
    return "\n".join(f"Package: {section}-{index:03d}\nDescription: {section} package {index}\nSection: {section}\n"
                     for section, size in section_sizes.items() for index in range(size))


def corpus_rows(path: Path) -> dict[str, dict]:
    return {row["id"]: row for row in map(json.loads, path.read_text().splitlines())}


def test_a_corpus_grows_by_whole_days_of_unpublished_packages(tmp_path):
    source, path = packages({"libs": 20, "doc": 10}), tmp_path / "corpus.jsonl"
    assert extend_debian_corpus(path, ["libs", "doc"], rows_per_day=6, first_day=0, days=2, source_text=source) == 12
    first = corpus_rows(path)
    assert sorted(row["day"] for row in first.values()) == [0] * 6 + [1] * 6

    assert extend_debian_corpus(path, ["libs", "doc"], rows_per_day=6, first_day=2, days=3, source_text=source) == 18
    grown = corpus_rows(path)
    assert {key: grown[key] for key in first} == first, "published days keep their packages"
    assert sorted(row["day"] for key, row in grown.items() if key not in first) == [2] * 6 + [3] * 6 + [4] * 6
    assert extend_debian_corpus(path, ["libs", "doc"], rows_per_day=6, first_day=5, days=1, source_text=source) == 0


def test_the_site_publishes_each_record_on_its_day(tmp_path):
    records = [{"id": f"r{index}", "text": f"text {index}", "label": "a" if index % 2 else "b", "day": index % 3}
               for index in range(9)]
    documents = build_documents(records, START, days=2, initial_fraction=0.0, corrupt_labels_from=None)
    for day in range(3):
        page = documents[f"/feed/{START + dt.timedelta(days=day)}.jsonl"].body.decode().splitlines()
        assert sorted(json.loads(line)["id"] for line in page) == sorted(f"r{i}" for i in range(9) if i % 3 == day)


def test_a_home_goes_on_after_the_days_it_ran_and_refuses_other_settings(tmp_path):
    plan = plan_days(tmp_path, START, 100, 2)
    assert (plan.first_day, plan.days) == (0, 2)
    write_demo_state(tmp_path, plan, 2)
    again = plan_days(tmp_path, START, 100, 3)
    assert (again.first_day, again.days, again.logical_date(again.first_day)) == (2, 3, dt.date(2026, 11, 3))
    with pytest.raises(DemoError, match="--fresh"):
        plan_days(tmp_path, START, 500, 1)


def test_a_home_from_before_the_day_record_is_refused_with_the_way_out(tmp_path):
    (tmp_path / "demo").mkdir()
    (tmp_path / "demo" / "corpus.jsonl").write_text("")
    with pytest.raises(DemoError, match="--fresh"):
        plan_days(tmp_path, START, 100, 1)


def crawl_manifest(store: ArtifactStore, run_id: str, day: str, created_at: str, rows_new: int) -> None:
    store.write_json({"step": "crawl", "run_id": run_id, "uri": "file:///x", "fingerprint": "f", "config_hash": "c",
                      "logical_date": day, "created_at": created_at,
                      "metrics": {"rows_new": rows_new, "rows_quarantined": 0}}, "runs", run_id, "crawl",
                     "manifest.json")


def test_the_summary_reports_this_invocations_run_and_says_when_it_ended_at_new_data(tmp_path):
    store = ArtifactStore(str(tmp_path / "artifacts"))
    crawl_manifest(store, "earlier", "2026-11-01", "2026-11-02T00:00:00+00:00", rows_new=400)
    crawl_manifest(store, "this", "2026-11-01", "2026-12-01T10:00:00+00:00", rows_new=0)
    assert find_run(store, START, since="2026-12-01T09:00:00+00:00") == "this"
    assert find_run(store, START, since="2026-12-01T11:00:00+00:00") is None
    lines = summarize_run(store, "this")
    assert "steps completed: crawl" in lines[0]
    assert any("ended at new_data" in line for line in lines)


# ----------------------------------------------------------------- what the summary says (issue 22)


def test_the_summary_names_a_new_label_as_spelled_and_the_commonest_quarantine_reasons(tmp_path):
    """The real validate step, with `new_labels: extend`, on a batch with a folder-like label holding a space,
    two empty texts and one text of two characters: the summary quotes the label and counts the reasons."""
    from tasks import validate
    from tests.test_validate import crawl_manifest, make_config, record

    config = make_config(tmp_path, tmp_path / "mlflow", validate={"min_text_chars": 3, "max_text_chars": 80,
                                                                   "max_quarantine_fraction": 0.9,
                                                                   "new_labels": "extend"})
    store = ArtifactStore(config.artifact_root)
    rows = [record(f"ok-{index}", f"some useful text {index}", label)
            for index, label in enumerate(["libs", "utils", "net", "shell scripts", "shell scripts"])]
    rows += [record("empty-1", "", "libs"), record("empty-2", "", "net"), record("short", "ab", "utils")]
    validate.run(config, {"crawl": crawl_manifest(config, store, "run-1", rows)}, run_id="run-1", store=store)

    lines = summarize_run(store, "run-1")
    assert 'new label(s) joined the label set (validate.new_labels: extend): "shell scripts"' in "\n".join(lines)
    reasons = lines[lines.index(next(line for line in lines if line.startswith("  quarantine reasons"))) + 1:]
    assert reasons[0].startswith("    3 x validate expect_column_value_lengths_to_be_between on text, e.g. text has"
                                 " 0 characters"), lines


def evaluate_manifest(tmp_path, metrics: dict) -> ArtifactStore:
    """An evaluate manifest committed through the step contract, carrying `metrics` as the step records them (and
    the facts of a candidate the gate passed with no champion to compare with)."""
    from tasks.contract import execute
    from tasks.evaluate import EvaluateFacts
    from tasks.gate_policy import Verdict
    from tests.test_validate import make_config

    config = make_config(tmp_path, tmp_path / "mlflow")
    store = ArtifactStore(config.artifact_root)

    def body(context) -> None:
        context.metrics.update(metrics)
        context.facts.update(EvaluateFacts(gate=Verdict(passed=True, checks=[]).facts(), champion_version=None,
                                           labels=list(config.labels), new_classes=[],
                                           blend_weight=metrics.get("blend_weight", 1.0),
                                           baseline_skipped=None).dump())

    execute("evaluate", body, config, {}, run_id="run-1", store=store, logical_date="2026-11-01")
    return store


def test_the_macro_f1_table_shows_the_lexical_baseline_beside_candidate_and_champion(tmp_path):
    store = evaluate_manifest(tmp_path, {"candidate.frozen.macro_f1": 0.9, "champion.frozen.macro_f1": 0.85,
                                         "baseline.frozen.macro_f1": 0.8, "frozen.rows": 39,
                                         "candidate.fresh.macro_f1": 0.7, "fresh.rows": 12, "blend_weight": 0.75})
    lines = summarize_run(store, "run-1")
    header = next(index for index, line in enumerate(lines) if "macro-F1" in line)
    assert lines[header].split() == ["macro-F1", "candidate", "champion", "baseline"]
    assert lines[header + 1].split() == ["frozen", "0.900", "0.850", "0.800", "(39", "rows)"]
    assert lines[header + 2].split() == ["fresh", "0.700", "-", "-", "(12", "rows)"], "no metric: a dash"
    assert "0.75 x transformer + 0.25 x baseline" in lines[header + 3]


@pytest.mark.slow
def test_a_dag_test_log_names_the_task_that_failed_for_good_and_its_error(tmp_path):
    """A real `airflow dags test` (the demo's run_dag) of a DAG whose step fails twice (one retry): the outcome
    names the task, its attempts and the step's own error, not only "airflow exit 1"."""
    import subprocess
    import sys

    from tasks.demo.runner import airflow_env, run_dag

    dags = tmp_path / "dags"
    dags.mkdir()
    missing = tmp_path / "missing.yaml"
    (dags / "failing.py").write_text(f"""
import datetime as dt
import pendulum
from airflow.sdk import DAG
from freshet_airflow.operators import FreshetStepOperator

with DAG("failing", start_date=pendulum.datetime(2026, 11, 1, tz="UTC"), schedule=None, catchup=False) as dag:
    FreshetStepOperator(task_id="validate", step="validate", retries=1, retry_delay=dt.timedelta(seconds=0),
                        arguments=["--config", "{missing}", "--run-id", "r1", "--logical-date", "2026-11-01"])
""")
    env = {**airflow_env(tmp_path / "home", missing), "AIRFLOW__CORE__DAGS_FOLDER": str(dags)}
    subprocess.run([sys.executable, "-m", "airflow", "db", "migrate"], env=env, check=True, capture_output=True)
    outcome = run_dag(env, START, tmp_path / "dag.log", dag_id="failing")
    assert outcome.failed and outcome.exit_code != 0
    [failure] = outcome.failures
    assert (failure.task_id, failure.attempts) == ("validate", 2)
    assert failure.error == f"step validate exited with 2: freshet validate: error: config file not found: {missing}"
    assert outcome.describe()[0] == f"  failing FAILED (airflow exit {outcome.exit_code}): {failure.describe()}"


def test_the_learning_curve_numbers_days_as_the_demo_does_and_never_claims_a_failed_training(tmp_path):
    """Day 2 ingested nothing (no run in the table), day 3's training failed after decide said train: the table
    says day 3 (as the demo's "this run: day(s) 3..3"), and "no training" with why, not "trained"."""
    from tasks import decide
    from tasks.demo import learning_curve
    from tests.corpus_support import synthetic_corpus
    from tests.pipeline_support import LABELS, tiny_config
    from tests.schedule_support import ingest

    config = tiny_config(tmp_path)
    store = ArtifactStore(config.artifact_root)
    corpus = synthetic_corpus(60, LABELS, seed=3)
    for run_id, day, rows in (("run-1", "2026-11-01", corpus[:30]), ("run-3", "2026-11-03", corpus[30:])):
        manifests = ingest(config, store, run_id, day, rows)
        decide.run(config, {"validate": manifests["validate"]}, run_id=run_id, store=store, logical_date=day,
                   champion=False)  # no champion: decide says train; no train step ran (it failed)
    rows = learning_curve.collect(store, learning_curve.pipeline_runs(store))
    assert [(row["day"], row["logical_date"], row["trained"]) for row in rows] == [
        (1, "2026-11-01", False), (3, "2026-11-03", False)]
    assert rows[1]["decision"].endswith("training did not finish (the run failed)")
    notes = learning_curve.markdown(rows, "t").splitlines()
    assert any(line.startswith("- day 3: no training: no champion yet") for line in notes), notes


def test_the_demo_prints_ui_commands_with_absolute_paths(tmp_path, monkeypatch):
    from tasks.config import load_config
    from tasks.demo.runner import ui_hints
    from tests.test_newcomer_details import own_config

    (tmp_path / "tickets.yaml").write_text(yaml.safe_dump(own_config(tmp_path / "data")))
    config = load_config(tmp_path / "tickets.yaml")
    monkeypatch.chdir(tmp_path)
    hints = "\n".join(ui_hints(config, tmp_path / "tickets.yaml", tmp_path / ".freshet"))
    assert f"ui mlflow --config {tmp_path / 'tickets.yaml'} --home {tmp_path / '.freshet'}" in hints
    assert f"over sqlite:///{tmp_path}/mlflow.db" in hints
    assert "FRESHET_HOME=" not in hints.splitlines()[1], "no command that only works inside the checkout"
