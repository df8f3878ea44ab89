"""Batch scoring, the production monitor and the production-drift trigger, on a real champion in a real MLflow.

One tiny BERT is trained, registered and promoted on a corpus it cannot learn perfectly (cue words are often
another label's, so its macro-F1 is ~0.75 and its confidence means something). Then each day's unlabelled
texts are dropped in the score folder and batch-scored by the champion (filed in the prediction log), the
day's labels arrive as validated rows (the monitor's feedback), and the monitor judges the day: five
unshifted days, one whose label mix is shifted (every text of one label), one hourly rerun of it inside the
cooldown. A breach makes the next `decide` train with the reason "production drift", once. The last tests
run the real `freshet_score` and `freshet_monitor` DAGs and check their Asset events.
"""

from __future__ import annotations

import datetime as dt

import pytest

from tasks import decide, model_registry, monitor, score
from tasks.config import ScheduleConfig
from tasks.contract import read_manifest
from tasks.decide import DecideFacts
from tasks.monitor import MonitorFacts
from tasks.monitoring import breach as breaches
from tasks.monitoring.predictions import log_parts, read_parts
from tasks.promote import PromoteFacts
from tasks.score import ScoreFacts
from tasks.store import ArtifactStore
from tests.monitor_support import ambiguous_corpus, drop_day, labels_arrive, monitor_config

UNSHIFTED = ("2026-11-02", "2026-11-03", "2026-11-04", "2026-11-05", "2026-11-06")
SHIFTED = "2026-11-07"
ROWS_PER_DAY = 2000


def day_rows(day: str, **shift) -> list[dict[str, str]]:
    return ambiguous_corpus(ROWS_PER_DAY, seed=int(day.replace("-", "")), prefix=f"prod-{day}", **shift)


def one_day(config, store, day: str, rows, suffix: str = "") -> dict:
    """What production does with a day: score the drop, the labels arrive, the monitor judges it."""
    drop_day(config, day, rows)
    scored = score.run(config, {}, run_id=f"score-{day}", store=store, logical_date=day)
    labels_arrive(config, store, f"labels-{day}", day, rows)
    judged = monitor.run(config, {}, run_id=f"monitor-{day}{suffix}", store=store, logical_date=day)
    return {"score": scored, "monitor": judged}


@pytest.fixture(scope="module")
def production(tmp_path_factory):
    from tests.pipeline_support import fake_upstream, run_model_steps
    from tests.schedule_support import ingest

    root = tmp_path_factory.mktemp("monitored")
    config = monitor_config(root)
    store = ArtifactStore(config.artifact_root)
    training = ambiguous_corpus(2400, seed=1, prefix="train")
    steps = run_model_steps(config, store, "run-1", "2026-11-01",
                            fake_upstream(config, store, "run-1", "2026-11-01", training))
    promoted = PromoteFacts.of(steps["promote"])
    assert promoted.promoted, promoted
    days = {day: one_day(config, store, day, day_rows(day)) for day in UNSHIFTED}
    days[SHIFTED] = one_day(config, store, SHIFTED, day_rows(SHIFTED, only="alpha"))
    # An hour later the monitor runs again (the prediction log's Asset): the same breach, inside the cooldown.
    later = monitor.run(config, {}, run_id=f"monitor-{SHIFTED}-later", store=store, logical_date=SHIFTED)

    # The pipeline runs with too few new rows to train on them alone: only the breach can make it train.
    strict = config.model_copy(update={"schedule": ScheduleConfig(min_new_rows=100)})
    decisions = {}
    for number, day in ((8, "2026-11-08"), (9, "2026-11-09")):
        upstream = ingest(strict, store, f"pipe-{number}", day, ambiguous_corpus(10, seed=number, prefix="new"))
        decisions[day] = decide.run(strict, {"validate": upstream["validate"]}, run_id=f"pipe-{number}",
                                    store=store, logical_date=day, champion=True)
        if DecideFacts.of(decisions[day]).train:
            stand_in_training(strict, store, f"pipe-{number}", day)
    again = decide.run(strict, {"validate": read_manifest(store, "pipe-8", "validate")}, run_id="pipe-8", store=store,
                       logical_date="2026-11-08", champion=True)
    return {"config": config, "store": store, "root": root, "steps": steps, "days": days, "later": later,
            "decisions": decisions, "decide_again": again}


def stand_in_training(config, store, run_id: str, day: str) -> None:
    """The train manifest the run's training leaves (what decide counts new rows since)."""
    from tasks.contract import StepContext, execute

    def body(context: StepContext) -> None:
        (context.out_dir / "model.txt").write_text("stands in for the model trained on the breach")
        context.add_output("model", "model.txt", "model")

    execute("train", body, config, {}, run_id=run_id, store=store, logical_date=day)


def figures(manifest) -> dict:
    metrics = manifest.metrics
    return {key: metrics.get(key) for key in ("label_psi", "confidence_psi", "length_psi", "oov_increase",
                                              "estimated_macro_f1_labelled", "real_macro_f1", "estimate_error")}


def test_unshifted_days_raise_no_alarm_and_the_shifted_day_does(production):
    days = production["days"]
    false_alarms = [day for day in UNSHIFTED if days[day]["monitor"].metrics["breach"]]
    print({day: figures(days[day]["monitor"]) for day in days})
    assert false_alarms == [], {day: MonitorFacts.of(days[day]["monitor"]).verdict for day in false_alarms}
    for day in UNSHIFTED:
        facts = MonitorFacts.of(days[day]["monitor"])
        assert facts.primary_version == "1" and facts.versions["1"]["rows"] == ROWS_PER_DAY
        assert facts.verdict == "no breach" and not breaches_of(facts)
    shifted = days[SHIFTED]["monitor"]
    judged = MonitorFacts.of(shifted)
    assert shifted.metrics["breach"] and judged.breach_emitted
    failed = {check["name"] for check in judged.versions["1"]["checks"] if check["verdict"] == "failed"}
    assert "label_psi" in failed, judged.verdict
    assert shifted.metrics["label_psi"] > 0.25 > max(days[day]["monitor"].metrics["label_psi"] for day in UNSHIFTED)
    (emitted,) = breaches.read_breaches(production["store"])
    assert judged.breach is not None
    assert emitted["id"] == judged.breach["id"] and emitted["logical_date"] == SHIFTED
    assert production["store"].read_json(*breaches.LATEST)["id"] == emitted["id"]


def breaches_of(facts: MonitorFacts) -> list:
    return [facts.breach] if facts.breach else []


def test_the_label_free_estimate_is_within_3_points_of_the_real_macro_f1(production):
    for day in UNSHIFTED:
        metrics = production["days"][day]["monitor"].metrics
        assert metrics["feedback_rows"] == ROWS_PER_DAY  # every text's label arrived
        # A fair test: the classifier is far from perfect, and its raw confidence is off (ECE ~0.1).
        assert 0.6 < metrics["real_macro_f1"] < 0.9, metrics
        assert abs(metrics["estimate_error"]) <= 0.03, (day, metrics["estimated_macro_f1_labelled"],
                                                        metrics["real_macro_f1"])
    evaluation = production["steps"]["evaluate"].metrics
    assert evaluation["candidate.frozen.ece"] > 0.03, "the raw confidence is calibrated already: a trivial test"


def test_a_breach_makes_the_next_decide_train_once_and_the_cooldown_holds(production):
    later = production["later"]
    held = MonitorFacts.of(later)
    assert later.metrics["breach"] and not held.breach_emitted, held.verdict
    assert held.breach is not None and "held back by the cooldown" in held.breach["suppressed"]
    assert len(breaches.read_breaches(production["store"])) == 1, "the cooldown let a second breach out"

    trained, after = production["decisions"]["2026-11-08"], production["decisions"]["2026-11-09"]
    breach = MonitorFacts.of(production["days"][SHIFTED]["monitor"]).breach
    assert breach is not None
    breach_id = breach["id"]
    decision, skipped = DecideFacts.of(trained), DecideFacts.of(after)
    assert decision.train and decision.reason.startswith("production drift: version 1: label_psi")
    assert breach_id in decision.reason
    assert decision.production_drift["consumed"] == [breach_id]
    assert trained.metrics["production_drift"] is True
    assert not skipped.train, skipped.reason
    assert skipped.production_drift == {"pending": [], "consumed": [], "latest": None}
    assert "only 10 new rows" in skipped.reason
    # The same run again (a retry): the same breach, so the stored manifest, not a second consumption.
    assert production["decide_again"].reused and production["decide_again"].facts == trained.facts


def test_batch_scoring_writes_the_version_and_is_idempotent_per_run(production):
    config, store = production["config"], production["store"]
    day = UNSHIFTED[0]
    first = production["days"][day]["score"]
    assert ScoreFacts.of(first).model_version == "1" and first.metrics["rows"] == ROWS_PER_DAY
    import pandas as pd

    predictions = pd.read_parquet(store.local_path(first.output("predictions").uri))
    assert {"id", "text_sha256", "text", "label", "confidence", "model_version", "probability.alpha",
            "probability.beta", "probability.gamma"} <= set(predictions.columns)
    assert predictions["model_version"].eq("1").all()
    probabilities = predictions[["probability.alpha", "probability.beta", "probability.gamma"]].to_numpy()
    assert abs(probabilities.sum(axis=1) - 1).max() < 1e-4
    assert (abs(probabilities.max(axis=1) - predictions["confidence"]) < 1e-6).all()

    again = score.run(config, {}, run_id=f"score-{day}", store=store, logical_date=day)
    assert again.reused and again.fingerprint == first.fingerprint
    logged = read_parts(store, log_parts(store, [dt.date.fromisoformat(day)]))
    assert len(logged) == ROWS_PER_DAY and set(logged["endpoint"]) == {"batch"}, "a rerun doubled the log"

    from tests.pipeline_support import step_mlflow_run

    run = step_mlflow_run(config.mlflow.tracking_uri, "score", f"score-{day}")
    assert run.data.tags["freshet.model_version"] == "1"
    (dataset,) = [item for item in run.inputs.dataset_inputs
                  if {tag.key: tag.value for tag in item.tags}.get("mlflow.data.context") == "predictions"]
    assert {tag.key: tag.value for tag in dataset.tags}["freshet.model_version"] == "1"
    assert dataset.dataset.name == f"{config.name}.predictions"


def test_the_challenger_scores_in_shadow_when_it_is_another_version(production):
    config, store = production["config"], production["store"]
    client = model_registry.client(config)
    name = config.mlflow.model_name
    champion = client.get_model_version(name, "1")
    copy = client.create_model_version(name, source=champion.source, run_id=champion.run_id)
    client.set_registered_model_alias(name, model_registry.CHALLENGER, copy.version)
    try:
        day = "2026-11-20"
        drop_day(config, day, ambiguous_corpus(120, seed=20, prefix="shadow"))
        scored = score.run(config, {}, run_id=f"score-{day}", store=store, logical_date=day)
    finally:
        client.set_registered_model_alias(name, model_registry.CHALLENGER, "1")
    import pandas as pd

    predictions = pd.read_parquet(store.local_path(scored.output("predictions").uri))
    assert ScoreFacts.of(scored).shadow_version == str(copy.version)
    assert predictions["shadow_version"].eq(str(copy.version)).all()
    assert scored.metrics["shadow_agreement"] == 1.0  # the same weights: the shadow agrees everywhere
    logged = read_parts(store, log_parts(store, [dt.date.fromisoformat(day)]))
    assert set(logged["model_version"]) == {"1"}, "the shadow's answers must not enter the prediction log"


def test_nothing_to_score_or_monitor_is_a_reason_not_a_failure(production):
    config, store = production["config"], production["store"]
    quiet = score.run(config, {}, run_id="score-quiet", store=store, logical_date="2026-12-25")
    unscored = ScoreFacts.of(quiet)
    assert quiet.metrics["rows"] == 0 and not unscored.scored
    assert unscored.reason.startswith("no file matches")
    watched = monitor.run(config, {}, run_id="monitor-quiet", store=store, logical_date="2026-12-25")
    assert MonitorFacts.of(watched).verdict == "no predictions in the window" and not watched.metrics["breach"]


def test_monitor_reruns_reuse_their_manifest_and_its_report_is_in_mlflow(production):
    config, store = production["config"], production["store"]
    day = UNSHIFTED[1]
    first = production["days"][day]["monitor"]
    again = monitor.run(config, {}, run_id=f"monitor-{day}", store=store, logical_date=day)
    assert again.reused and again.fingerprint == first.fingerprint
    assert {"report", "monitor", "plots_v1"} <= set(first.outputs)
    from mlflow import MlflowClient

    from tests.pipeline_support import step_mlflow_run

    run = step_mlflow_run(config.mlflow.tracking_uri, "monitor", f"monitor-{day}")
    names = {item.path for item in MlflowClient().list_artifacts(run.info.run_id, "monitor")}
    assert {"monitor/monitor_report.html", "monitor/monitor_v1.png", "monitor/monitor.json"} <= names
    assert run.data.metrics["v1.label_psi"] == pytest.approx(first.metrics["label_psi"])
    # The reference was built once (cached in the store) and names where it came from.
    reference = MonitorFacts.of(first).versions["1"]["reference"]
    assert reference.startswith(store.uri("state", "monitor", "reference"))


def test_the_score_and_monitor_dags_update_their_assets_only_when_there_is_news(production, monkeypatch):
    """Real `freshet_score` and `freshet_monitor` DAG runs (each step in its own process, as in a worker): the
    prediction log's Asset is updated when rows were scored; the production-drift Asset only on a breach."""
    import yaml
    from airflow.dag_processing.dagbag import DagBag
    from airflow.models.asset import AssetEvent, AssetModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    from freshet_airflow import assets, dag_settings
    from freshet_airflow.control import breach_of
    from tests.airflow_support import migrate_airflow_db
    from tests.conftest import REPO

    config, store, root = production["config"], production["store"], production["root"]
    migrate_airflow_db()
    config_path = root / "pipeline.yaml"
    config_path.write_text(yaml.safe_dump(config.to_dict()))
    dag_settings.pipeline_config.cache_clear()
    monkeypatch.setenv("FRESHET_CONFIG", str(config_path))
    monkeypatch.setenv("FRESHET_LOG_LEVEL", "WARNING")

    def events(asset) -> list[dict]:
        with create_session() as session:
            return [event.extra for event in session.scalars(
                select(AssetEvent).join(AssetModel, AssetEvent.asset_id == AssetModel.id)
                .where(AssetModel.name == asset.name))]

    score_dag = DagBag(dag_folder=str(REPO / "dags" / "freshet_score.py")).dags["freshet_score"]
    monitor_dag = DagBag(dag_folder=str(REPO / "dags" / "freshet_monitor.py")).dags["freshet_monitor"]
    logged, drifted = assets.prediction_log_asset(config), assets.production_drift_asset(config)
    before = len(events(drifted))

    quiet, shifted = "2026-11-12", "2026-11-13"
    # A quiet day through the score DAG: the prediction log's Asset is updated with what was filed.
    drop_day(config, quiet, day_rows(quiet))
    scored = score_dag.test(logical_date=dt.datetime(2026, 11, 12, tzinfo=dt.UTC))
    assert {ti.task_id: ti.state for ti in scored.get_task_instances()} == {
        "score": "success", "predictions_scored": "success"}
    (event,) = events(logged)[-1:]
    assert event["rows"] == ROWS_PER_DAY and event["model_version"] == "1" and event["endpoint"] == "batch"
    # Its monitor run breaches nothing, so its production_drift task would skip (no event); a DAG run costs a
    # process per step, so that one is checked on the step's manifest, and the breach through the DAG.
    quiet_judged = monitor.run(config, {}, run_id=f"monitor-{quiet}", store=store, logical_date=quiet)
    assert breach_of(quiet_judged.model_dump()) is None and not quiet_judged.metrics["breach"]
    assert breach_of(production["later"].model_dump()) is None, "a breach held back by the cooldown emits nothing"

    # A day of texts in words the champion never saw, six days after the last breach (outside the cooldown).
    rows = day_rows(shifted, foreign=True)
    drop_day(config, shifted, rows)
    labels_arrive(config, store, f"labels-{shifted}", shifted, rows)
    score.run(config, {}, run_id=f"score-{shifted}", store=store, logical_date=shifted)
    judged = monitor_dag.test(logical_date=dt.datetime(2026, 11, 13, tzinfo=dt.UTC))
    assert {ti.task_id: ti.state for ti in judged.get_task_instances()} == {
        "monitor": "success", "production_drift": "success"}
    (event,) = events(drifted)[before:]
    latest = store.read_json(*breaches.LATEST)
    assert event["id"] == latest["id"] and latest["logical_date"] == shifted
    assert any("oov_increase" in reason for reason in event["reasons"]), event
