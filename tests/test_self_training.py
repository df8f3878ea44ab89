"""Self-training in the train step (`train.self_training`): the champion's answers in the prediction log on texts
nobody labelled join a second fit as tagged pseudo-labelled rows, kept only when the validation split says they
help; both fits are reported, the lexical baseline never learns from them, and a labelled text is never one."""

from __future__ import annotations

import json

import pytest

from tasks import evaluate, score, train
from tasks.config import ConfigError, PipelineConfig, load_config
from tasks.records import read_rows
from tasks.register import RegisterFacts
from tasks.score import ScoreFacts
from tasks.store import ArtifactStore
from tasks.train import TrainFacts
from tests.corpus_support import synthetic_corpus
from tests.pipeline_support import LABELS, fake_upstream, run_model_steps, tiny_config

DAYS = ["2026-11-01", "2026-11-02"]


@pytest.fixture(scope="module")
def two_days(tmp_path_factory):
    """Day 1 trains the champion; its scoring of day 2's drop (unlabelled texts and one that gets labelled)
    goes to the prediction log; day 2 trains with self-training on."""
    root = tmp_path_factory.mktemp("self_training")
    data = tiny_config(root, learning_rate=3e-3).to_dict()
    data["train"]["self_training"] = {"min_confidence": 0.0, "max_share": 0.5}
    data["compress"] = {"variants": ["int8-dynamic"], "latency_rounds": 1}
    data["score"] = {"input": str(root / "drop" / "{date}" / "*.jsonl")}
    config = PipelineConfig.model_validate(data)
    store = ArtifactStore(config.artifact_root)
    corpus = synthetic_corpus(600, LABELS, seed=3)
    first_day, second_day, unlabelled = corpus[:300], corpus[300:420], corpus[420:]
    first = run_model_steps(config, store, "day-1", DAYS[0], fake_upstream(config, store, "day-1", DAYS[0],
                                                                            first_day))
    drop = root / "drop" / DAYS[1]
    drop.mkdir(parents=True)
    scored_texts = [row["text"] for row in unlabelled] + [second_day[0]["text"]]  # the last one gets its label
    (drop / "texts.jsonl").write_text("".join(json.dumps({"id": f"u{number}", "text": text}) + "\n"
                                              for number, text in enumerate(scored_texts)))
    scored = score.run(config, {}, run_id=f"score-{DAYS[1]}", store=store, logical_date=DAYS[1])
    upstream = fake_upstream(config, store, "day-2", DAYS[1], [dict(row) for row in second_day])
    trained = train.run(config, {"augment": upstream["augment"], "clean": upstream["clean"]}, run_id="day-2",
                        store=store, logical_date=DAYS[1])
    evaluated = evaluate.run(config, {"train": trained, "clean": upstream["clean"]}, run_id="day-2", store=store,
                             logical_date=DAYS[1])
    return config, store, first, scored, trained, second_day, unlabelled, evaluated


def test_the_champions_logged_answers_on_unlabelled_texts_become_tagged_rows(two_days):
    _, _, first, scored, trained, _, unlabelled, _ = two_days
    facts = TrainFacts.of(trained).self_training
    assert facts is not None
    assert ScoreFacts.of(scored).scored and facts.teacher_version == RegisterFacts.of(first["register"]).version
    assert facts.candidates == len(unlabelled), "every distinct unlabelled text, the labelled one left out"
    real = trained.metrics["rows_new"] + trained.metrics["rows_replay"]  # labelled rows, replayed ones included
    assert 0 < facts.pseudo_rows <= 0.5 * real
    assert facts.validation_macro_f1_without is not None and facts.validation_macro_f1_with is not None
    assert facts.kept == (facts.validation_macro_f1_with > facts.validation_macro_f1_without)
    assert trained.metrics["self_training.kept"] == facts.kept


def test_the_trained_rows_hold_pseudo_labels_only_when_kept_and_never_a_labelled_text(two_days):
    _, store, _, _, trained, second_day, unlabelled, _ = two_days
    rows = read_rows(store.local_path(trained.output("train_rows").uri))
    pseudo = [row for row in rows if row["pseudo_label"]]
    facts = TrainFacts.of(trained).self_training
    assert facts is not None
    assert len(pseudo) == (facts.pseudo_rows if facts.kept else 0)
    labelled = {row["text"] for row in second_day}
    assert not any(row["text"] in labelled for row in pseudo)
    assert all(row["text"] in {item["text"] for item in unlabelled} and row["label"] in LABELS for row in pseudo)


def test_the_baseline_learns_from_labels_only(two_days):
    _, store, _, _, trained, _, _, evaluated = two_days
    rows = read_rows(store.local_path(trained.output("train_rows").uri))
    assert evaluate.EvaluateFacts.of(evaluated).baseline_train_rows == sum(not row["pseudo_label"] for row in rows)


@pytest.mark.parametrize(("setting", "value"), [("min_confidence", 1.5), ("max_share", 2.0), ("window_days", 0)])
def test_nonsense_self_training_settings_are_config_errors_naming_them(tmp_path, setting, value):
    data = tiny_config(tmp_path).to_dict()
    data["train"]["self_training"] = {setting: value}
    path = tmp_path / "bad.yaml"
    path.write_text(json.dumps(data))
    with pytest.raises(ConfigError, match=f"train.self_training.{setting}"):
        load_config(path)
