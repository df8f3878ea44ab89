"""Active learning end to end against a real Label Studio: the label step's selection and queue, the client,
and the `label_studio` crawl source (incremental pulls, edits, conflicts, deleted tasks, a wrong token).

The server is the one `.ci/services.sh` starts (`tests/label_studio_support.py` starts it once per session when
it is not answering). Each module run works in projects of its own, deleted at the end.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import pytest
import yaml

from tasks import crawl, label, validate
from tasks.config import CleanConfig, LabelStudioConnection, PipelineConfig
from tasks.contract import FAULT_DRILL, FAULT_POINTS, read_manifest
from tasks.labelling.label_studio import (
    LabelStudioAuthError,
    LabelStudioClient,
    annotation_label,
    label_config,
    project_labels,
    resolve_task,
)
from tasks.labelling.selection import CONTROL, UNCERTAINTY, Candidate, margins, select
from tasks.manifest import Manifest, StepError
from tasks.pipeline import step as registered_step
from tasks.records import read_rows
from tasks.store import ArtifactStore
from tasks.tracking import TRACKED_TAG
from tests.label_studio_support import TOKEN, TOKEN_ENV, ensure_label_studio, scored_day

LABELS = ["alpha", "beta", "gamma"]
DAY = "2026-11-02"
WORDS = [
    "archive", "backup", "cache", "daemon", "editor", "font", "gateway", "header", "icon", "journal", "kernel",
    "library", "monitor", "network", "office", "printer", "queue", "router", "shell", "terminal", "upload",
    "viewer", "widget", "xml", "yaml", "zip", "audio", "batch", "codec", "driver", "emulator", "firewall", "game",
    "hash", "image", "java", "keyboard", "locale", "mail", "news", "parser",
]


def texts(count: int, seed: int) -> list[str]:
    """Distinct synopsis-like texts, far from near-duplicates of each other."""
    rng = np.random.default_rng(seed)
    return [f"{' '.join(rng.choice(WORDS, size=7, replace=False))} tool {number}" for number in range(count)]


# ----------------------------------------------------------------------------------------- selection (unit)


def candidates_with(margin_by_label: dict[str, list[float]], seed: int = 0) -> list[Candidate]:
    items = [(label_name, margin) for label_name, values in margin_by_label.items() for margin in values]
    return [Candidate(f"c{number}", text, label_name, 0.5 + margin / 2, margin)
            for number, ((label_name, margin), text) in enumerate(zip(items, texts(len(items), seed)))]


def run_select(candidates: list[Candidate], **settings: Any):
    options: dict[str, Any] = {"budget": 10, "control_fraction": 0.0, "pool_factor": 1.0, "seed": 0,
                               "known_texts": [], "near_duplicate_threshold": 0.85, "clean": CleanConfig(),
                               "label_order": LABELS} | settings
    return select(candidates, **options)


def test_margin_is_the_gap_between_the_two_most_probable_classes():
    probabilities = np.array([[0.5, 0.3, 0.2], [0.34, 0.33, 0.33], [0.1, 0.1, 0.8]])
    assert margins(probabilities) == pytest.approx([0.2, 0.01, 0.7])


def test_uncertainty_picks_the_smallest_margins():
    margin_values = list(np.linspace(0.01, 0.9, 30))
    candidates = candidates_with({"alpha": margin_values})
    selection = run_select(candidates, budget=6)
    picked = sorted(pick.candidate.margin for pick in selection.picks)
    assert picked == pytest.approx(sorted(margin_values)[:6])
    assert {pick.selected_by for pick in selection.picks} == {UNCERTAINTY}
    assert sorted(pick.margin_rank for pick in selection.picks) == [1, 2, 3, 4, 5, 6]
    assert all("margin" in pick.reason and "rank" in pick.reason for pick in selection.picks)


def test_control_share_is_random_seeded_and_counted():
    candidates = candidates_with({"alpha": list(np.linspace(0.01, 0.99, 60))})
    first = run_select(candidates, budget=20, control_fraction=0.1, seed=1)
    again = run_select(candidates, budget=20, control_fraction=0.1, seed=1)
    other = run_select(candidates, budget=20, control_fraction=0.1, seed=2)
    control = [pick for pick in first.picks if pick.selected_by == CONTROL]
    assert len(first.picks) == 20 and len(control) == 2
    assert [pick.candidate.id for pick in first.picks] == [pick.candidate.id for pick in again.picks]
    assert {pick.candidate.id for pick in other.picks if pick.selected_by == CONTROL} != {
        pick.candidate.id for pick in control}
    half = run_select(candidates, budget=10, control_fraction=0.5, seed=3)
    assert sum(pick.selected_by == CONTROL for pick in half.picks) == 5
    # Random, not the most uncertain: over a few seeds the control reaches well into the confident half.
    ranks = [pick.margin_rank for seed in range(5) for pick in run_select(
        candidates, budget=10, control_fraction=0.5, seed=seed).picks if pick.selected_by == CONTROL]
    assert max(ranks) > 30


def test_near_duplicates_of_labelled_queued_or_each_other_are_never_picked():
    candidates = candidates_with({"alpha": [0.01, 0.02, 0.03, 0.5, 0.6, 0.7]})
    labelled = candidates[0].text + "."  # the most uncertain text was labelled already (one character differs)
    twin = Candidate("twin", candidates[1].text.upper(), "alpha", 0.5, 0.015)  # the same text, shouted
    selection = run_select([*candidates, twin], budget=4, known_texts=[labelled])
    picked = {pick.candidate.id for pick in selection.picks}
    assert candidates[0].id not in picked
    assert len(picked & {"twin", candidates[1].id}) == 1  # one of the twins, the more uncertain one
    assert "twin" in picked
    assert selection.near_duplicates == 2


def test_class_balance_gives_each_predicted_label_its_turn():
    # alpha holds every one of the 20 smallest margins; balance still asks about beta and gamma.
    candidates = candidates_with({"alpha": list(np.linspace(0.01, 0.2, 20)), "beta": list(np.linspace(0.3, 0.5, 10)),
                                  "gamma": list(np.linspace(0.6, 0.8, 10))})
    selection = run_select(candidates, budget=9, pool_factor=5.0)
    counts = pd.Series([pick.candidate.label for pick in selection.picks]).value_counts().to_dict()
    assert counts == {"alpha": 3, "beta": 3, "gamma": 3}
    clusters = [pick.cluster for pick in selection.picks]
    assert len(set(clusters)) == len(clusters)  # diversity: every pick from another cluster while one is left


# ----------------------------------------------------------------------------------------- resolution (unit)


def annotation(number: int, *choices: str, ground_truth: bool = False, cancelled: bool = False) -> dict[str, Any]:
    result = [{"type": "choices", "value": {"choices": list(choices)}}] if choices else []
    return {"id": number, "result": result, "ground_truth": ground_truth, "was_cancelled": cancelled}


def test_resolution_ground_truth_then_majority_then_conflict():
    def task(*annotations: dict[str, Any]) -> dict[str, Any]:
        return {"id": 7, "data": {"text": "a text"}, "annotations": list(annotations)}

    assert resolve_task(task(annotation(1, "alpha", cancelled=True)), LABELS) is None
    truth = resolve_task(task(annotation(1, "beta"), annotation(2, "beta"), annotation(3, "gamma", ground_truth=True)),
                         LABELS)
    assert truth is not None and (truth.label, truth.how) == ("gamma", "ground_truth")
    majority = resolve_task(task(annotation(1, "beta"), annotation(2, "alpha"), annotation(3, "beta")), LABELS)
    assert majority is not None and (majority.label, majority.how) == ("beta", "majority")
    tie = resolve_task(task(annotation(1, "beta"), annotation(2, "alpha")), LABELS)
    assert tie is not None and tie.label is None and [problem.check for problem in tie.problems] == ["label_conflict"]
    odd = resolve_task(task(annotation(1), annotation(2, "delta"), annotation(3, "alpha", "beta")), LABELS)
    assert odd is not None and odd.label is None
    assert [problem.check for problem in odd.problems] == ["empty_annotation", "unknown_label", "several_labels"]
    assert all(problem.task_id == 7 for problem in odd.problems)


def test_labelling_config_lists_the_label_set_as_single_choices():
    config = label_config(["alpha", 'we"ird & <odd>'])
    assert '<Choices name="label" toName="text" choice="single"' in config
    assert '<Choice value="alpha"/>' in config and "&amp;" in config and "&lt;odd&gt;" in config


# ------------------------------------------------------------------------------- the real server, end to end


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    url = ensure_label_studio()
    previous = os.environ.get(TOKEN_ENV)
    os.environ[TOKEN_ENV] = TOKEN
    yield url
    if previous is None:
        os.environ.pop(TOKEN_ENV, None)
    else:
        os.environ[TOKEN_ENV] = previous


def labelling_config(root: Path, mlflow_uri: str, url: str, project: str, **source: Any) -> PipelineConfig:
    connection = {"url": url, "token_env": TOKEN_ENV, "project": project}
    return PipelineConfig.model_validate({
        "name": "labelled", "labels": LABELS, "artifact_root": str(root / "artifacts"),
        "mlflow": {"tracking_uri": mlflow_uri, "artifact_location": str(root / "mlartifacts")},
        "train": {"model": "tiny"},
        "crawl": {"sources": [{"name": "ls", "kind": "label_studio", "allow_private_network": True, **connection,
                               **source}]},
        "label": {"budget_per_day": 10, "control_fraction": 0.2, "label_studio": connection},
    })


@pytest.fixture(scope="module")
def labelled(server: str, tmp_path_factory: pytest.TempPathFactory, mlflow_uri: str) -> Iterator[dict[str, Any]]:
    """The round trip: 40 scored texts -> label step -> Label Studio (pre-annotated) -> annotations -> crawl."""
    root = tmp_path_factory.mktemp("labelling")
    project = f"freshet-test-{uuid.uuid4().hex[:10]}"
    config = labelling_config(root, mlflow_uri, server, project)
    store = ArtifactStore(config.artifact_root)
    rng = np.random.default_rng(0)
    scored_texts = texts(40, seed=1)
    scored = scored_day(config, store, f"score-{DAY}", DAY, scored_texts, rng.dirichlet([1.0, 1.0, 1.0], size=40))
    queued = label.run(config, {}, run_id=f"label-{DAY}", store=store, logical_date=DAY)
    client = LabelStudioClient(config.label.label_studio, setting="label.label_studio")  # type: ignore[arg-type]
    project_id = client.project(project)["id"]
    tasks = sorted(client.tasks(project_id), key=lambda task: task["id"])
    ids = [task["id"] for task in tasks]
    # What people do in the UI: most tasks get the champion's guess confirmed or corrected, a few are hard.
    plan: dict[int, list[dict[str, Any]]] = {
        ids[0]: [{"label": "beta"}, {"label": "beta"}, {"label": "gamma", "ground_truth": True}],  # ground truth wins
        ids[1]: [{"label": "alpha"}, {"label": "beta"}, {"label": "alpha"}],  # majority
        ids[2]: [{"label": "alpha"}, {"label": "beta"}],  # conflict
        ids[3]: [{"label": "delta"}],  # not a label of the project
        ids[4]: [{"label": None}],  # submitted empty
        ids[5]: [{"label": "beta", "cancelled": True}],  # skipped
    }
    for task in tasks[6:]:
        plan[task["id"]] = [{"label": task["predictions"][0]["result"][0]["value"]["choices"][0]}]
    annotations: dict[int, list[dict[str, Any]]] = {}
    for task_id, entries in plan.items():
        annotations[task_id] = [client.annotate(task_id, entry["label"], ground_truth=entry.get("ground_truth", False),
                                                cancelled=entry.get("cancelled", False)) for entry in entries]
    first = crawl.run(config, {}, run_id="crawl-1", store=store, logical_date=DAY)
    validated = validate.run(config, {"crawl": first}, run_id="crawl-1", store=store, logical_date=DAY)
    yield {"validated": validated, "config": config, "store": store, "client": client, "project_id": project_id, "tasks": tasks,
           "scored": scored, "queued": queued, "first": first, "annotations": annotations, "plan": plan,
           "root": root}
    client.delete_project(project_id)
    client.close()


def rows_of(store: ArtifactStore, manifest, output: str = "records") -> list[dict[str, Any]]:
    return read_rows(store.local_path(manifest.output(output).uri))


def test_the_queue_goes_to_label_studio_with_the_champions_prediction(labelled):
    facts = label.LabelFacts.of(labelled["queued"])
    assert (facts.picked, facts.by_uncertainty, facts.by_control) == (10, 8, 2)
    assert facts.tasks_imported == 10 and facts.model_version == "3" and facts.project_id == labelled["project_id"]
    queue = pd.read_parquet(labelled["store"].local_path(labelled["queued"].output("queue").uri))
    assert set(queue["selected_by"]) == {"uncertainty", "control"} and queue["reason"].str.len().min() > 20
    assert queue.loc[queue["selected_by"] == "uncertainty", "margin"].max() <= queue["margin"].max()
    tasks = labelled["tasks"]
    assert len(tasks) == 10
    by_id = {row["id"]: row for row in queue.to_dict("records")}
    for task in tasks:
        prediction = task["predictions"][0]
        row = by_id[task["data"]["freshet_id"]]
        assert task["data"]["text"] == row["text"] and task["data"]["selected_by"] == row["selected_by"]
        assert prediction["model_version"] == "3" and prediction["score"] == pytest.approx(row["confidence"])
        assert prediction["result"][0]["value"]["choices"] == [row["predicted_label"]]
    written = json.loads(Path(labelled["store"].local_path(labelled["queued"].output("tasks").uri)).read_text())
    assert sorted(task["data"]["freshet_id"] for task in written) == sorted(by_id)


def test_pushing_the_same_queue_again_imports_nothing_twice(labelled):
    config, store = labelled["config"], labelled["store"]
    again = label.run(config, {}, run_id=f"label-{DAY}", store=store, logical_date=DAY)
    assert again.reused
    tasks = json.loads(Path(store.local_path(labelled["queued"].output("tasks").uri)).read_text())
    # As a retry after a kill between the import and the commit would: the tasks are there already.
    facts = label.push(config, tasks, LABELS, label.LabelFacts.of(labelled["queued"]), None)
    assert (facts.tasks_imported, facts.tasks_already_in_project) == (0, 10)
    assert len(labelled["client"].task_ids(labelled["project_id"])) == 10


def test_a_second_day_never_queues_a_text_queued_before(labelled, tmp_path):
    config, store = labelled["config"], labelled["store"]
    first_texts = set(pd.read_parquet(store.local_path(labelled["queued"].output("queue").uri))["text"])
    # Day two's scores hold the same 40 texts again plus 20 new ones.
    day_two = "2026-11-03"
    repeated = [*pd.read_parquet(store.local_path(labelled["scored"].output("predictions").uri))["text"],
                *texts(20, seed=2)]
    scored_day(config, store, f"score-{day_two}", day_two, repeated,
               np.random.default_rng(5).dirichlet([1.0, 1.0, 1.0], size=len(repeated)))
    offline = config.model_copy(update={"label": config.label.model_copy(update={"label_studio": None})})
    second = label.run(offline, {}, run_id=f"label-{day_two}", store=store, logical_date=day_two)
    picked = set(pd.read_parquet(store.local_path(second.output("queue").uri))["text"])
    assert len(picked) == 10 and not picked & first_texts
    facts = label.LabelFacts.of(second)
    # Day one's scores are within the lookback, but day one's label run took them.
    assert facts.score_runs == [f"score-{day_two}"] and facts.near_duplicates >= 10
    # A run the Asset starts the day after (dated that day) finds nothing left to take.
    later = label.run(offline, {}, run_id="label-asset-triggered", store=store, logical_date="2026-11-04")
    assert label.LabelFacts.of(later).score_runs == [] and later.output("queue").rows == 0


def test_the_crawl_pulls_resolved_annotations_as_rows(labelled):
    store, plan, tasks = labelled["store"], labelled["plan"], labelled["tasks"]
    rows = {row["id"]: row for row in rows_of(store, labelled["first"])}
    ids = [task["id"] for task in tasks]
    expected = {f"ls:task-{ids[0]}": "gamma", f"ls:task-{ids[1]}": "alpha"}
    expected |= {f"ls:task-{task_id}": plan[task_id][0]["label"] for task_id in ids[6:]}
    assert {row_id: row["label"] for row_id, row in rows.items()} == expected
    texts_by_task = {f"ls:task-{task['id']}": task["data"]["text"] for task in tasks}
    assert all(row["text"] == texts_by_task[row_id] and row["source"] == "ls" for row_id, row in rows.items())
    quarantined = {(row["id"], row["check"]): row["reason"] for row in rows_of(store, labelled["first"], "quarantine")}
    assert set(quarantined) == {(f"ls:task-{ids[2]}", "label_conflict"), (f"ls:task-{ids[3]}", "unknown_label"),
                                (f"ls:task-{ids[4]}", "empty_annotation")}
    assert f"task {ids[2]}" in quarantined[(f"ls:task-{ids[2]}", "label_conflict")]
    assert "'delta'" in quarantined[(f"ls:task-{ids[3]}", "unknown_label")]


def test_the_pulled_rows_go_through_validate_like_any_sources(labelled):
    store = labelled["store"]
    crawled = {row["id"]: row["label"] for row in rows_of(store, labelled["first"])}
    valid = {row["id"]: row["label"] for row in rows_of(store, labelled["validated"], "valid")}
    assert valid == crawled and len(valid) == 6


def test_a_rerun_pulls_nothing_new_and_an_edit_updates_its_row(labelled):
    config, store, client = labelled["config"], labelled["store"], labelled["client"]
    rerun = crawl.run(config, {}, run_id="crawl-2", store=store, logical_date=DAY)
    assert rerun.output("records").rows == 0 and rerun.output("quarantine").rows == 0
    task_id = labelled["tasks"][7]["id"]
    annotation_id = labelled["annotations"][task_id][0]["id"]
    before = labelled["plan"][task_id][0]["label"]
    after = next(name for name in LABELS if name != before)
    client.update_annotation(annotation_id, after)
    edited = crawl.run(config, {}, run_id="crawl-3", store=store, logical_date=DAY)
    rows = rows_of(store, edited)
    assert [(row["id"], row["label"]) for row in rows] == [(f"ls:task-{task_id}", after)]
    report = json.loads(store.local_path(edited.output("report").uri).read_text())["sources"]["ls"]
    assert (report["records_changed"], report["records_new"]) == (1, 0)


def test_a_deleted_task_is_reported_by_its_id(labelled):
    config, store, client = labelled["config"], labelled["store"], labelled["client"]
    task_id = labelled["tasks"][8]["id"]
    client.delete_task(task_id)
    after = crawl.run(config, {}, run_id="crawl-4", store=store, logical_date=DAY)
    quarantined = rows_of(store, after, "quarantine")
    assert [(row["id"], row["check"]) for row in quarantined] == [(f"ls:task-{task_id}", "deleted_task")]
    assert f"task {task_id} was deleted" in quarantined[0]["reason"]
    assert after.output("records").rows == 0


def test_a_label_studio_json_export_crawls_like_the_project(labelled, tmp_path):
    client, project_id = labelled["client"], labelled["project_id"]
    exported = tmp_path / "export.json"
    assert client.export_json(project_id, exported) >= 7
    config = labelled["config"]
    data = config.to_dict()
    data["artifact_root"] = str(tmp_path / "artifacts")
    data["crawl"]["sources"] = [{"name": "ls-file", "kind": "label_studio", "path": str(exported)}]
    from_file = PipelineConfig.model_validate(data)
    store = ArtifactStore(from_file.artifact_root)
    pulled = crawl.run(from_file, {}, run_id="file-1", store=store, logical_date=DAY)
    server_rows = {row["id"].removeprefix("ls:"): row["label"] for row in rows_of(labelled["store"], labelled["first"])}
    file_rows = {row["id"].removeprefix("ls-file:"): row["label"] for row in rows_of(store, pulled)}
    deleted, edited = f"task-{labelled['tasks'][8]['id']}", f"task-{labelled['tasks'][7]['id']}"
    # A file carries no labelling config: a label outside the set goes on to validate (validate.new_labels).
    unknown = f"task-{labelled['tasks'][3]['id']}"
    assert deleted not in file_rows and file_rows.pop(unknown) == "delta"
    assert file_rows.pop(edited) != server_rows[edited]
    assert file_rows == {key: value for key, value in server_rows.items() if key not in (deleted, edited)}
    again = crawl.run(from_file, {}, run_id="file-2", store=store, logical_date=DAY)
    assert again.output("records").rows == 0  # the file did not change
    # And back: the file imported into another project brings its annotations along.
    other = client.ensure_project(f"{labelled['config'].label.label_studio.project}-copy", LABELS)
    try:
        assert len(client.import_file(other["id"], exported)) == len(json.loads(exported.read_text()))
        copied = {task["data"]["freshet_id"]: [annotation_label(item) for item in task["annotations"]]
                  for task in client.tasks(other["id"])}
        original = {task["data"]["freshet_id"]: [annotation_label(item) for item in task["annotations"]]
                    for task in json.loads(exported.read_text())}
        assert copied == original and len(copied) >= 7
    finally:
        client.delete_project(other["id"])


def test_a_wrong_token_is_an_error_naming_the_setting(labelled, monkeypatch):
    config = labelled["config"]
    monkeypatch.setenv(TOKEN_ENV, "not-the-token")
    refused = rf"refused the API token from \${TOKEN_ENV} \(crawl\.sources\[ls\]\.token_env\)"
    with pytest.raises(StepError, match=refused):
        crawl.run(config, {}, run_id="crawl-bad-token", store=labelled["store"], logical_date=DAY)
    connection = LabelStudioConnection(url=labelled["client"].url, token_env=TOKEN_ENV, project="x")
    with pytest.raises(LabelStudioAuthError, match=r"label\.label_studio\.token_env"):
        LabelStudioClient(connection, setting="label.label_studio").find_project("x")
    monkeypatch.delenv(TOKEN_ENV)
    unset = rf"environment variable {TOKEN_ENV} \(label\.label_studio\.token_env\)"
    with pytest.raises(LabelStudioAuthError, match=unset):
        LabelStudioClient(connection, setting="label.label_studio")


def test_a_crawl_before_the_first_label_run_pulls_nothing_and_a_vanished_project_is_an_error(server, tmp_path,
                                                                                               mlflow_uri):
    """The pipeline may crawl before the label step has created the project (the first day): nothing to pull,
    said in the crawl report. Once a crawl has seen the project, its absence names the setting."""
    project = f"freshet-test-{uuid.uuid4().hex[:10]}"
    config = labelling_config(tmp_path, mlflow_uri, server, project)
    store = ArtifactStore(config.artifact_root)
    before = crawl.run(config, {}, run_id="crawl-before", store=store, logical_date=DAY)
    assert before.output("records").rows == 0
    report = json.loads(store.local_path(before.output("report").uri).read_text())["sources"]["ls"]
    [incident] = report["incidents"]
    assert incident["kind"] == "project_not_created_yet" and "crawl.sources[ls].project" in incident["detail"]
    client = LabelStudioClient(config.label.label_studio, setting="label.label_studio")  # type: ignore[arg-type]
    created = client.ensure_project(project, LABELS)
    try:
        seen = crawl.run(config, {}, run_id="crawl-seen", store=store, logical_date="2026-11-03")
        assert seen.output("records").rows == 0
        client.delete_project(int(created["id"]))
        with pytest.raises(StepError, match=r"no project titled .* \(crawl\.sources\[ls\]\.project\)"):
            crawl.run(config, {}, run_id="crawl-vanished", store=store, logical_date="2026-11-04")
    finally:
        if client.find_project(project) is not None:
            client.delete_project(int(created["id"]))
        client.close()


def test_the_command_on_a_day_without_scored_texts_queues_nothing_and_says_why(labelled, tmp_path, capsys):
    data = labelled["config"].to_dict()
    data["artifact_root"] = str(tmp_path / "artifacts")
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(data))
    assert label.main(["--config", str(path), "--run-id", "label-empty", "--logical-date", DAY]) == 0
    manifest = Manifest.model_validate_json(capsys.readouterr().out.strip().splitlines()[-1])
    facts = label.LabelFacts.of(manifest)
    assert not facts.selected and "nothing to label" in facts.reason and facts.tasks_imported == 0
    assert manifest.output("queue").rows == 0 and manifest.output("tasks").rows == 0


def test_the_label_dag_runs_the_step_daily_and_after_batch_scoring(tmp_path):
    from airflow.dag_processing.dagbag import DagBag
    from airflow.sdk import Asset, AssetOrTimeSchedule

    folder = tmp_path / "dags"
    folder.mkdir()
    shutil.copy(Path(__file__).resolve().parents[1] / "dags" / "freshet_label.py", folder)
    bag = DagBag(dag_folder=str(folder))
    assert bag.import_errors == {}
    dag = bag.dags["freshet_label"]
    assert dag.task_ids == ["label"] and dag.get_task("label").__class__.__name__ == "FreshetStepOperator"
    assert {"freshet", "labelling"} <= set(dag.tags) and dag.max_active_runs == 1
    schedule = dag.timetable
    assert isinstance(schedule, AssetOrTimeSchedule) and getattr(schedule.timetable, "expression", None) == "0 0 * * *"
    assert isinstance(schedule.asset_condition, Asset) and schedule.asset_condition.name == (
        "freshet.freshet_demo.prediction_log")
    assert registered_step("label").dag == "freshet_label" and registered_step("label").module == "tasks.label"


def test_the_project_gains_new_labels_and_keeps_the_ones_people_added(server):
    connection = LabelStudioConnection(url=server, token_env=TOKEN_ENV, project="unused")
    title = f"freshet-test-{uuid.uuid4().hex[:10]}"
    with LabelStudioClient(connection, setting="label.label_studio") as client:
        created = client.ensure_project(title, LABELS)
        try:
            assert project_labels(created) == LABELS
            grown = client.ensure_project(title, [*LABELS, "delta"])
            assert grown["id"] == created["id"] and project_labels(grown) == [*LABELS, "delta"]
            # The pipeline's label set without "delta" (say a team added it in Label Studio): it stays.
            assert project_labels(client.ensure_project(title, LABELS)) == [*LABELS, "delta"]
        finally:
            client.delete_project(created["id"])


def test_a_server_on_a_private_address_needs_the_sources_consent(labelled, tmp_path):
    data = labelled["config"].to_dict()
    data["artifact_root"] = str(tmp_path / "artifacts")
    data["crawl"]["sources"][0]["allow_private_network"] = False
    guarded = PipelineConfig.model_validate(data)
    with pytest.raises(StepError, match=r"loopback address; set allow_private_network: true on the source"):
        crawl.run(guarded, {}, run_id="crawl-guarded", store=ArtifactStore(guarded.artifact_root), logical_date=DAY)


def test_a_crawl_killed_before_its_commit_loses_and_doubles_nothing(labelled, tmp_path):
    # A fresh store over the same project: the first crawl of it has every finished annotation to pull.
    data = labelled["config"].to_dict()
    data["artifact_root"] = str(tmp_path / "artifacts")
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(data))
    config = PipelineConfig.model_validate(data)
    store = ArtifactStore(config.artifact_root)
    command = [sys.executable, "-m", "tasks.crawl", "--config", str(path), "--run-id", "crawl-killed",
               "--logical-date", DAY]
    killed = subprocess.run(command, cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True,
                            env={**os.environ, FAULT_DRILL: "crawl:staged"}, start_new_session=True, timeout=300,
                            check=False)
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert store.read_json("state", "crawl", "ls.json") is None  # nothing committed, no state advanced
    retried = crawl.run(config, {}, run_id="crawl-killed", store=store, logical_date=DAY)
    pulled = {row["id"]: row["label"] for row in rows_of(store, retried)}
    project_now = {row["id"]: row["label"] for row in rows_of(labelled["store"], labelled["first"])}
    for task in labelled["tasks"][7:9]:  # the edit and the deletion since the first crawl
        project_now.pop(f"ls:task-{task['id']}")
    edited = labelled["tasks"][7]["id"]
    assert pulled.pop(f"ls:task-{edited}") != labelled["plan"][edited][0]["label"]
    assert pulled == project_now
    again = crawl.run(config, {}, run_id="crawl-after-kill", store=store, logical_date=DAY)
    assert again.output("records").rows == 0


def test_the_label_step_killed_before_and_after_its_commit_queues_each_text_once(server, tmp_path, mlflow_uri):
    """The kill drill on the label step (tests/test_kill_anywhere.py drills the others, without a Label Studio):
    day one killed at `staged` (its tasks already imported, nothing committed), day two at `tracked` (committed,
    its MLflow run open); each rerun finishes. The project then holds every queued text once, the queue state
    lists it once, and each day's run holds its complete record."""
    project = f"freshet-kill-{uuid.uuid4().hex[:10]}"
    config = labelling_config(tmp_path, mlflow_uri, server, project)
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(config.to_dict()))
    store = ArtifactStore(config.artifact_root)
    days = ("2026-11-05", "2026-11-06")
    rng = np.random.default_rng(7)
    for number, (day, point) in enumerate(zip(days, FAULT_POINTS, strict=True)):
        scored_day(config, store, f"score-{day}", day, texts(30, seed=20 + number), rng.dirichlet([1.0] * 3, size=30))
        command = [sys.executable, "-m", "tasks.label", "--config", str(path), "--run-id", f"label-{day}",
                   "--logical-date", day]
        outcomes = [subprocess.run(command, cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True,
                                   env={**os.environ, **fault}, start_new_session=True, timeout=300, check=False)
                    for fault in ({FAULT_DRILL: f"label:{point}"}, {})]
        assert [outcome.returncode for outcome in outcomes] == [-9, 0], outcomes[-1].stderr[-2000:]
    manifests = [read_manifest(store, f"label-{day}", "label") for day in days]
    assert all(manifest is not None for manifest in manifests)
    queued = [text_id for manifest in manifests
              for text_id in pd.read_parquet(store.local_path(manifest.output("queue").uri))["id"]]
    client = LabelStudioClient(config.label.label_studio, setting="label.label_studio")  # type: ignore[arg-type]
    project_id = client.project(project)["id"]
    try:
        in_project = [task["data"]["freshet_id"] for task in client.tasks(project_id)]
        assert len(queued) == 20 and sorted(in_project) == sorted(queued)
        staged = label.LabelFacts.of(manifests[0])
        assert (staged.tasks_imported, staged.tasks_already_in_project) == (0, 10)  # the killed run had sent them
        assert sorted(entry["id"] for entry in label.read_queue_state(store)["entries"]) == sorted(queued)
        mlflow.set_tracking_uri(mlflow_uri)
        for manifest in manifests:
            [run] = mlflow.search_runs(search_all_experiments=True, output_format="list", filter_string=(
                f"tags.`freshet.step` = 'label' and tags.`freshet.run_id` = '{manifest.run_id}'"))
            assert run.info.status == "FINISHED" and run.data.tags[TRACKED_TAG] == manifest.fingerprint
            assert "label_report.json" in {item.path for item in mlflow.MlflowClient().list_artifacts(run.info.run_id)}
    finally:
        client.delete_project(project_id)
        client.close()
