"""Champion history from MLflow alone: promotions and a rollback on a real local registry (SQLite)."""

from __future__ import annotations

import datetime as dt
import json
import time

import pytest
import yaml

from tasks import model_registry, promote
from tasks.cli import main
from tasks.manifest import StepError
from tests.pipeline_support import tiny_config


def instant() -> str:
    """A moment strictly between two registry operations (timestamps are microsecond ISO strings)."""
    time.sleep(0.01)
    moment = dt.datetime.now(dt.UTC).isoformat()
    time.sleep(0.01)
    return moment


@pytest.fixture(scope="module")
def timeline(tmp_path_factory):
    """v1, v2, v3 promoted in turn, then a rollback to v2; instants recorded between the moves."""
    root = tmp_path_factory.mktemp("history")
    config = tiny_config(root)
    client = model_registry.client(config)
    name = config.mlflow.model_name
    client.create_registered_model(name)
    for _ in range(3):
        client.create_model_version(name, source=str(root / "nowhere"))
    moments = {"before": instant()}
    promote.move_champion(config, "1", None, reason="first gate pass", who="airflow run-1")
    moments["v1"] = instant()
    promote.move_champion(config, "2", "1", reason="passed the gate in run-2", who="airflow run-2")
    moments["v2"] = instant()
    promote.move_champion(config, "3", "2", reason="passed the gate in run-3", who="airflow run-3")
    moments["v3"] = instant()
    promote.rollback(config, who="oncall", why="bad outputs in prod")
    moments["rolled_back"] = instant()
    config_path = root / "pipeline.yaml"
    config_path.write_text(yaml.safe_dump(config.to_dict()))
    return config, client, name, moments, config_path


@pytest.mark.parametrize(("moment", "expected"), [
    ("before", None), ("v1", "1"), ("v2", "2"), ("v3", "3"), ("rolled_back", "2")])
def test_champion_at_answers_from_mlflow_alone(timeline, moment, expected):
    _, client, name, moments, _ = timeline
    assert model_registry.champion_at(client, name, moments[moment]) == expected


def test_tenure_bounds_are_half_open_and_naive_times_mean_utc(timeline):
    _, client, name, _, _ = timeline
    rows = model_registry.history(client, name)
    second = next(row for row in rows if row["version"] == "3")
    assert model_registry.champion_at(client, name, second["since"]) == "3"  # at the instant of promotion: the new one
    assert model_registry.champion_at(client, name, second["until"]) == "2"  # at the instant of the rollback: restored
    naive = dt.datetime.fromisoformat(second["since"]).astimezone(dt.UTC).replace(tzinfo=None)
    assert model_registry.champion_at(client, name, naive + dt.timedelta(microseconds=1)) == "3"


def test_history_keeps_every_tenure_with_who_why_and_rollback(timeline):
    _, client, name, _, _ = timeline
    rows = model_registry.history(client, name)
    assert [(row["version"], row["kind"]) for row in rows] == [
        ("1", "promotion"), ("2", "promotion"), ("3", "promotion"), ("2", "rollback")]
    assert rows[0]["until"] == rows[1]["since"] and rows[1]["until"] == rows[2]["since"]
    assert rows[2]["ended_by"] == "rollback by oncall: bad outputs in prod"
    assert (rows[3]["by"], rows[3]["why"], rows[3]["until"]) == ("oncall", "bad outputs in prod", None)
    assert rows[1]["by"] == "airflow run-2" and rows[1]["ended_by"].startswith("promotion of version 3")
    tags = client.get_model_version(name, "3").tags
    assert (tags["freshet.rolled_back_by"], tags["freshet.rolled_back_why"]) == ("oncall", "bad outputs in prod")
    assert tags["freshet.champion_until"] == rows[2]["until"]
    # v2 is champion again: its latest tenure is open, the earlier `until` is gone.
    assert "freshet.champion_until" not in client.get_model_version(name, "2").tags
    assert str(model_registry.version_by_alias(timeline[0], model_registry.CHAMPION).version) == "2"


def test_versions_promoted_before_the_tenure_log_still_answer(tmp_path):
    config = tiny_config(tmp_path)
    client = model_registry.client(config)
    name = config.mlflow.model_name
    client.create_registered_model(name)
    client.create_model_version(name, source=str(tmp_path / "nowhere"),
                                tags={"freshet.champion_since": "2026-11-01T00:00:00+00:00",
                                      "freshet.champion_until": "2026-11-02T00:00:00+00:00"})
    assert model_registry.champion_at(client, name, "2026-11-01T12:00:00") == "1"
    assert model_registry.champion_at(client, name, "2026-11-02T00:00:00Z") is None


def test_history_command_prints_the_timeline_and_the_champion_at_a_time(timeline, capsys):
    _, _, name, moments, config_path = timeline
    assert main(["history", "--config", str(config_path)]) == 0
    table = capsys.readouterr().out
    assert "rollback" in table and "oncall" in table and "bad outputs in prod" in table and "(current)" in table
    assert main(["history", "--config", str(config_path), "--at", moments["v1"]]) == 0
    assert capsys.readouterr().out.strip() == f"{name}@champion at {moments['v1']}: version 1"
    assert main(["history", "--config", str(config_path), "--at", moments["before"], "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["champion"] is None
    assert main(["history", "--config", str(config_path), "--at", "yesterday"]) == 2
    assert "not an ISO 8601 time" in capsys.readouterr().err


def test_rollback_refuses_without_who_and_why_or_when_the_champion_moved(timeline):
    config = timeline[0]
    with pytest.raises(StepError, match="who rolls back and why"):
        promote.rollback(config, who="oncall", why=" ")
    with pytest.raises(StepError, match="needs both a champion and a previous"):  # `previous` is spent by the rollback
        promote.rollback(config, who="oncall", why="again", expected_champion="2")


def test_rollback_refuses_a_champion_the_caller_did_not_mean(tmp_path):
    config = tiny_config(tmp_path)
    client = model_registry.client(config)
    client.create_registered_model(config.mlflow.model_name)
    for _ in range(2):
        client.create_model_version(config.mlflow.model_name, source=str(tmp_path / "nowhere"))
    promote.move_champion(config, "1", None, reason="first")
    promote.move_champion(config, "2", "1", reason="second")
    with pytest.raises(StepError, match="champion of unit-model is version 2, not 1"):
        promote.rollback(config, who="oncall", why="wrong target", expected_champion="1")
    assert promote.rollback(config, who="oncall", why="right target", expected_champion="2")["champion"] == "1"


def test_best_champion_score_counts_only_versions_that_held_champion_and_were_not_rolled_back(tmp_path):
    config = tiny_config(tmp_path)
    client = model_registry.client(config)
    name = config.mlflow.model_name
    client.create_registered_model(name)
    for score in ("0.80", "0.86", "0.90", "0.82"):
        client.create_model_version(name, source=str(tmp_path / "nowhere"),
                                    tags={"metric.candidate.frozen.macro_f1": score})
    metric = "candidate.frozen.macro_f1"
    assert model_registry.best_champion_score(client, name, metric) is None  # nobody has been champion
    promote.move_champion(config, "1", None, reason="first")
    promote.move_champion(config, "2", "1", reason="second")
    assert model_registry.best_champion_score(client, name, metric) == (0.86, "2")
    promote.rollback(config, who="oncall", why="bad outputs")
    # v2 was rolled back and v3 (0.90) never passed the gate: neither sets the bar.
    assert model_registry.best_champion_score(client, name, metric) == (0.80, "1")
    promote.move_champion(config, "4", "1", reason="fourth")
    assert model_registry.best_champion_score(client, name, metric) == (0.82, "4")
