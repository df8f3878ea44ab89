"""New labels over time (`validate.new_labels: extend`): validation lets a new label in, the label set grows, the
next round grows the champion's head, evaluate and the gate report the class as new, the registry records
every version's label set."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tasks import validate
from tasks.compress import CompressFacts
from tasks.config import PipelineConfig
from tasks.evaluate import EvaluateFacts
from tasks.label_set import extend_labels
from tasks.models.metrics import in_label_space
from tasks.promote import PromoteFacts
from tasks.records import read_rows
from tasks.register import RegisterFacts
from tasks.store import ArtifactStore
from tasks.train import TrainFacts
from tests.corpus_support import synthetic_corpus
from tests.pipeline_support import LABELS, fake_upstream, run_model_steps, tiny_config
from tests.test_validate import REFERENCE, crawl_manifest, make_config, record, sized_text

NEW = "delta"
DAYS = ["2026-11-01", "2026-11-02"]


def test_the_label_set_grows_in_order_of_first_appearance():
    assert extend_labels(["a", "b"], [{"b", "a"}, {"z", "c", "a"}, {"c", "d"}]) == ["a", "b", "c", "z", "d"]


def test_predictions_over_fewer_labels_are_mapped_by_name():
    import numpy as np

    probabilities = np.array([[0.7, 0.3], [0.2, 0.8]], dtype=np.float32)
    label_ids, relaid = in_label_space(np.array([0, 1]), probabilities, ["beta", "alpha"], ["alpha", "beta", "delta"])
    assert label_ids.tolist() == [1, 0]
    assert np.allclose(relaid, [[0.3, 0.7, 0.0], [0.8, 0.2, 0.0]])


def test_validate_extend_accepts_a_new_label_and_keeps_it_out_of_the_label_drift(tmp_path: Path, tracking: Path):
    from tasks.records import RECORD_SCHEMA, write_parquet
    from tasks.snapshots import record_snapshot

    config = make_config(tmp_path, tracking, validate={"max_text_chars": 80, "new_labels": "extend"})
    store = ArtifactStore(config.artifact_root)
    uri = store.step_uri("history-1", "clean", "dataset.parquet")
    write_parquet(REFERENCE, store.local_path(uri), schema=RECORD_SCHEMA)
    record_snapshot(store, {"run_id": "history-1", "logical_date": "2026-01-01", "uri": uri, "digest": "sha256:r",
                            "rows": len(REFERENCE)})
    known = ["libs", "utils", "net"]
    # A third of the batch is the new label: as drift that would be a PSI far above 0.25.
    batch = [record(f"new-{number}", sized_text(number + 1000, 12 + number * 7 % 49),
                    "games" if number % 3 == 0 else known[(number // 3) % 3]) for number in range(300)]
    manifest = validate.run(config, {"crawl": crawl_manifest(config, store, "run-games", batch)}, run_id="run-games",
                            store=store, logical_date="2026-01-02")
    facts = validate.ValidateFacts.of(manifest)
    assert facts.labels == [*known, "games"] and facts.labels_new == ["games"]
    assert manifest.metrics["rows_quarantined"] == 0 and manifest.metrics["labels_new"] == 1
    checks = {check.name: check for check in facts.batch_checks}
    assert checks["drift.label_psi"].verdict == "passed"
    assert "new labels ['games'] (validate.new_labels=extend) left out of the label PSI" in checks[
        "drift.label_psi"].detail


@pytest.fixture(scope="module")
def two_days(tmp_path_factory):
    """Day 1: three labels, becomes champion. Day 2 brings `delta`: the label set grows, the head too."""
    root = tmp_path_factory.mktemp("new_labels")
    data = tiny_config(root).to_dict()
    data["validate"]["new_labels"] = "extend"
    data["train"]["learning_rate"] = 3e-3  # 1e-2 (the unit default) leaves this tiny BERT stuck on 4 classes
    data["compress"] = {"variants": ["int8-dynamic", "distilled"], "latency_rounds": 1, "distill_epochs": 1}
    config = PipelineConfig.model_validate(data)
    store = ArtifactStore(config.artifact_root)
    old = synthetic_corpus(400, LABELS, seed=3)  # seeds this tiny BERT learns fully (some stall at 2 of 3)
    new = synthetic_corpus(320, [*LABELS, NEW], seed=3)
    for row in new:
        row["id"] = "day2-" + row["id"]
    first = run_model_steps(config, store, "day-1", DAYS[0], fake_upstream(config, store, "day-1", DAYS[0], old))
    second = run_model_steps(config, store, "day-2", DAYS[1], fake_upstream(config, store, "day-2", DAYS[1], new))
    return config, store, first, second


def test_day_one_is_the_champion_with_the_configured_labels(two_days):
    _, _, first, _ = two_days
    assert TrainFacts.of(first["train"]).labels == LABELS
    assert PromoteFacts.of(first["promote"]).promoted is True


def test_day_two_grows_the_head_and_the_candidate_predicts_the_new_label(two_days):
    _, store, _, second = two_days
    trained = second["train"]
    facts = TrainFacts.of(trained)
    assert facts.labels == [*LABELS, NEW] and facts.champion_version == "1"
    assert facts.label_map == {"0": "alpha", "1": "beta", "2": "gamma", "3": NEW}
    predictions = read_rows(store.local_path(second["evaluate"].output("predictions").uri))
    new_rows = [row for row in predictions if row["slice"] == "fresh" and row["label"] == NEW]
    assert new_rows and sum(row["predicted"] == NEW for row in new_rows) / len(new_rows) >= 0.5
    # The champion never had the class: it never predicts it.
    assert not any(row["champion_predicted"] == NEW for row in predictions)


def test_the_old_labels_keep_their_rows_when_the_head_grows(two_days):
    import torch

    from tasks import model_registry
    from tasks.models.build import build_model, load_classifier

    config, _, _, _ = two_days
    champion_dir = model_registry.download_model_dir(config, "1")
    champion, _ = load_classifier(champion_dir)
    grown = build_model(config.train, [*LABELS, NEW], init_dir=champion_dir)
    assert torch.equal(grown.classifier.weight[:3], champion.classifier.weight)
    assert torch.equal(grown.classifier.bias[:3], champion.classifier.bias)


def test_evaluate_and_the_gate_report_the_class_as_new_not_as_a_regression(two_days):
    _, store, _, second = two_days
    evaluation = second["evaluate"]
    facts = EvaluateFacts.of(evaluation)
    assert facts.new_classes == [NEW] and facts.labels == [*LABELS, NEW]
    checks = facts.gate.checks
    [new_check] = [check for check in checks if check.name == "new_classes"]
    assert new_check.verdict == "skipped" and NEW in new_check.detail
    assert not any(f"class {NEW}" in check.detail for check in checks if check.name.startswith("max_class"))
    report = store.local_path(evaluation.output("report").uri).read_text()
    assert ("New classes (the champion never had them; judged on their own rows, left out of the champion "
            f"comparisons): {NEW}") in report
    scored = json.loads(store.local_path(evaluation.output("evaluation").uri).read_text())
    assert scored["champion"]["fresh"]["per_class"][NEW]["f1"] == 0.0
    assert scored["candidate"]["fresh"]["per_class"][NEW]["support"] > 0
    # The distilled student learns the grown label set too.
    assert CompressFacts.of(second["compress"]).variants["distilled"].get("applicable", True)


def test_the_registry_records_the_label_set_of_every_version(two_days):
    import mlflow

    config, _, first, second = two_days
    client = mlflow.MlflowClient(config.mlflow.tracking_uri)
    [evaluated] = client.search_runs([client.get_experiment_by_name(config.mlflow.experiment).experiment_id],
                                     "tags.`freshet.step` = 'evaluate' and tags.`freshet.run_id` = 'day-2'")
    fate = json.loads(evaluated.data.tags["freshet.new_classes"])[NEW]  # the audit names the new label's fate
    assert f"new_class:{NEW}:fresh.f1" in fate and fate.endswith(("gate passed", "gate rejected the candidate"))
    name = config.mlflow.model_name
    first_version = client.get_model_version(name, RegisterFacts.of(first["register"]).version)
    assert json.loads(first_version.tags["freshet.labels"]) == LABELS
    registered = RegisterFacts.of(second["register"])
    assert json.loads(client.get_model_version(name, registered.version).tags["freshet.labels"]) == [*LABELS, NEW]
    assert registered.serving_check["passed"] is True


def test_the_new_label_is_judged_on_its_own_rows(two_days):
    _, store, _, second = two_days
    [judged] = [check for check in EvaluateFacts.of(second["evaluate"]).gate.checks
                if check.name == f"new_class:{NEW}:fresh.f1"]
    evaluation = json.loads(store.local_path(second["evaluate"].output("evaluation").uri).read_text())
    own_rows = evaluation["candidate"]["fresh"]["per_class"][NEW]
    assert judged.value == own_rows["f1"]  # the candidate's F1 on the class's own fresh rows
    if own_rows["support"] < 20:  # gate.min_class_support: too few rows to judge, reported with the reason
        assert judged.verdict == "skipped" and "min_class_support=20" in judged.detail
    else:
        assert judged.verdict in ("passed", "failed")
