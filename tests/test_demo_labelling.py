"""The demo's labelling loop (`freshet demo --label-studio URL`) against the real Label Studio: two demo days
through the runner's own day loop, with the DAGs' steps run in-process instead of by `airflow dags test` and a
scripted champion instead of a fine-tune (a real 2-day demo costs minutes of training; the label, crawl, validate
and clean steps, the annotator, Label Studio and the summary are the real ones).

Day 1 has no champion, so nothing is scored and nothing queued. Day 2's published texts are scored by the scripted
champion (sure and right on some texts, unsure and often wrong on others), `freshet_label` queues the budget in
the home's project with the predictions as pre-annotations, the demo's annotator labels every open task from the
corpus, and the day's pipeline crawl pulls the annotations back beside the demo site's copy of the same texts.
Then the data manager in headless Chromium, and the preflight that stops a demo whose Label Studio is not there.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml

from tasks import clean, crawl, label, validate
from tasks.config import PipelineConfig, load_config
from tasks.contract import StepContext, execute, read_manifest
from tasks.demo import runner
from tasks.demo.annotator import CorpusTruth
from tasks.demo.labelling import (
    QUEUE_VIEW,
    SOURCE_NAME,
    UNLABELLED_FRACTION,
    DemoLabelling,
    LabellingSetupError,
    group_scores,
    project_title,
    with_label_studio,
)
from tasks.demo.site import is_unlabelled
from tasks.labelling.label_studio import annotation_label
from tasks.score import ScoreFacts, nothing_to_score
from tasks.store import ArtifactStore
from tests.conftest import REPO
from tests.corpus_support import synthetic_corpus
from tests.label_studio_support import EMAIL, PASSWORD, TOKEN, TOKEN_ENV, ensure_label_studio, scored_day
from tests.services import free_port

pytestmark = pytest.mark.slow
LABELS = ["libs", "python", "doc", "utils"]
START = dt.date(2026, 11, 1)
ROWS_PER_DAY = 120
BUDGET, CONTROL_FRACTION = 16, 0.5  # 8 picked by uncertainty, 8 by the random control
CHROMIUM = "/usr/bin/chromium"


def demo_config(home: Path, site_port: int, mlflow_uri: str) -> dict[str, Any]:
    """The demo's shape, small: the demo site on loopback first, the score drop folder, a small labelling budget."""
    return {
        "name": "demo_labelling", "labels": LABELS, "artifact_root": str(home / "artifacts"),
        "mlflow": {"tracking_uri": mlflow_uri, "artifact_location": str(home / "mlartifacts")},
        "crawl": {"sources": [{"name": "debian-demo", "url": f"http://127.0.0.1:{site_port}/",
                               "allow_private_network": True}], "min_interval_s": 0.0},
        "validate": {"max_text_chars": 400},
        "train": {"model": "tiny"},
        "score": {"input": str(home / "score-drop" / "{date}" / "*.jsonl")},
        "label": {"budget_per_day": BUDGET, "control_fraction": CONTROL_FRACTION},
    }


def champion_probabilities(truth: list[str], seed: int) -> np.ndarray:
    """A scripted champion, sure and right on 60% of the texts and torn between the true label and another on the
    rest (either way round): its small margins are where its mistakes are, as a real model's mostly are."""
    rng = np.random.default_rng(seed)
    rows = []
    for true_label in truth:
        probabilities = np.full(len(LABELS), 0.02)
        right = LABELS.index(true_label)
        if rng.random() < 0.6:
            probabilities[right] = rng.uniform(0.75, 0.95)
        else:
            other = int(rng.choice([index for index in range(len(LABELS)) if index != right]))
            first, second = (right, other) if rng.random() < 0.5 else (other, right)
            probabilities[first], probabilities[second] = 0.45, 0.45 - rng.uniform(0.0, 0.1)
        rows.append(probabilities / probabilities.sum())
    return np.array(rows)


def in_process_dags(config: PipelineConfig, store: ArtifactStore, home: Path, truth: CorpusTruth):
    """`runner.run_dag` without Airflow: each DAG's steps in this process, in the DAG's order, under the run ids
    and logical dates Airflow would give them (the runner finds the runs by step and date)."""
    def run_dag(env, logical_date, log_path, dag_id=runner.DAG_ID, conf=None):
        day = logical_date.isoformat()
        if dag_id == "freshet_score":
            published = [json.loads(line) for line in
                         (home / "score-drop" / day / "published.jsonl").read_text().splitlines()]
            if store.read_json("demo-champion.json") is None:  # day 1: nothing trained yet, nothing scored
                def nothing(context: StepContext) -> None:
                    context.facts.update(ScoreFacts(
                        scored=False, reason=nothing_to_score(config.score.input, [{}], None, []) or "",
                        input=config.score.input, files=[], model=config.mlflow.model_name, model_version=None,
                        variant=None, shadow_version=None, labels={}, invalid_rows=[]).dump())

                execute("score", nothing, config, {}, run_id=f"score-{day}", store=store, logical_date=day)
            else:
                texts = [record["text"] for record in published]
                scored_day(config, store, f"score-{day}", day, texts, champion_probabilities(
                    [truth.by_id[record["id"]][1] for record in published], seed=7), model_version="1",
                    ids=[record["id"] for record in published])
        elif dag_id == "freshet_label":
            label.run(config, {}, run_id=f"label-{day}", store=store, logical_date=day)
        elif dag_id == runner.DAG_ID:
            crawled = crawl.run(config, {}, run_id=f"run-{day}", store=store, logical_date=day)
            validated = validate.run(config, {"crawl": crawled}, run_id=f"run-{day}", store=store, logical_date=day)
            clean.run(config, {"validate": validated}, run_id=f"run-{day}", store=store, logical_date=day)
            store.write_json({"version": "1"}, "demo-champion.json")  # as if day 1 trained and promoted v1
        log_path.write_text(f"{dag_id} ran in-process\n")
        return runner.DagOutcome(dag_id, 0, (), log_path)

    return run_dag


@contextlib.contextmanager
def token_in_environment() -> Iterator[None]:
    previous = os.environ.get(TOKEN_ENV)
    os.environ[TOKEN_ENV] = TOKEN
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(TOKEN_ENV, None)
        else:
            os.environ[TOKEN_ENV] = previous


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory, mlflow_uri: str) -> Iterator[dict[str, Any]]:
    url = ensure_label_studio()
    home = tmp_path_factory.mktemp("demo-home")
    corpus = home / "demo" / "corpus.jsonl"
    corpus.parent.mkdir(parents=True)
    rows = [{**row, "day": index // ROWS_PER_DAY} for index, row in
            enumerate(synthetic_corpus(2 * ROWS_PER_DAY, LABELS, seed=11))]
    corpus.write_text("".join(json.dumps(row) + "\n" for row in rows))
    base = home / "base.yaml"
    base.write_text(yaml.safe_dump(demo_config(home, free_port(), mlflow_uri)))
    with token_in_environment(), pytest.MonkeyPatch.context() as patch:
        config_path = with_label_studio(base, home, url, TOKEN_ENV, ROWS_PER_DAY)
        config = load_config(config_path)
        store = ArtifactStore(config.artifact_root)
        labelling = runner.prepare_labelling(config, corpus, runner.uses_demo_site(config), fresh_home=True)
        assert labelling is not None
        truth = CorpusTruth.read(corpus)
        patch.setattr(runner, "run_dag", in_process_dags(config, store, home, truth))
        since = dt.datetime.now(dt.UTC).isoformat()
        plan = runner.DemoPlan(START, ROWS_PER_DAY, first_day=0, days=2)
        days = runner.run_days(config, store, {}, home, plan, corpus, since, None, labelling)
        client = labelling.client()
        project = client.project(labelling.connection.project)
        try:
            yield {"url": url, "home": home, "config": config, "config_path": config_path, "store": store,
                   "labelling": labelling, "days": days, "truth": truth, "rows": rows, "client": client,
                   "project_id": int(project["id"]), "corpus": corpus,
                   "tasks": sorted(client.tasks(int(project["id"])), key=lambda task: task["id"])}
        finally:
            client.delete_project(int(project["id"]))
            client.close()


def day_manifest(demo: dict[str, Any], run_id: str, step: str):
    manifest = read_manifest(demo["store"], run_id, step)
    assert manifest is not None, f"no {step} manifest in run {run_id}"
    return manifest


def queue_of(demo: dict[str, Any]) -> pd.DataFrame:
    queued = day_manifest(demo, "label-2026-11-02", "label")
    return pd.read_parquet(demo["store"].local_path(queued.output("queue").uri))


def test_the_config_adds_the_homes_project_and_a_source_that_pulls_it(demo, monkeypatch):
    config, home = demo["config"], demo["home"]
    connection = config.label.label_studio
    assert connection is not None and connection.project == project_title(home) == demo["labelling"].connection.project
    [source] = [source for source in config.crawl.sources if source.kind == "label_studio"]
    assert (source.name, source.url, source.project, source.token_env) == (SOURCE_NAME, demo["url"],
                                                                           connection.project, TOKEN_ENV)
    assert source.allow_private_network and config.crawl.sources[0].name == "debian-demo"  # the site stays first
    # The config's own budget and control share stay; where it sets none the demo takes 5% of a day, 30% control.
    assert (config.label.budget_per_day, config.label.control_fraction) == (BUDGET, CONTROL_FRACTION)
    bare = demo["home"] / "bare.yaml"
    bare.write_text(yaml.safe_dump({key: value for key, value in yaml.safe_load((home / "base.yaml").read_text())
                                    .items() if key != "label"}))
    defaults = load_config(with_label_studio(bare, home / "other", demo["url"], TOKEN_ENV, 2000)).label
    assert (defaults.budget_per_day, defaults.control_fraction) == (100, 0.3)
    # `make demo` (no --label-studio, no label.label_studio) has no labelling loop at all.
    monkeypatch.setenv("FRESHET_HOME", str(home))
    assert DemoLabelling.of(load_config(REPO / "configs" / "demo.yaml"), demo["corpus"]) is None


def test_day_one_has_no_champion_so_nothing_is_queued(demo):
    summary = "\n".join(demo["days"].summary)
    day_one = summary.split("--- day 2")[0]
    assert "--- day 1, 2026-11-01" in day_one and "labelling: no score run" in day_one
    assert "nothing to label" in day_one
    assert demo["days"].failed is None, summary


def test_the_days_queue_reaches_label_studio_with_the_champions_predictions(demo):
    queue, tasks = queue_of(demo), demo["tasks"]
    assert len(queue) == len(tasks) == BUDGET
    assert queue["selected_by"].value_counts().to_dict() == {"uncertainty": 8, "control": 8}
    by_id = {row["id"]: row for row in queue.to_dict("records")}
    for task in tasks:
        row = by_id[task["data"]["freshet_id"]]
        prediction = task["predictions"][0]
        assert prediction["model_version"] == "1" and prediction["score"] == pytest.approx(row["confidence"])
        assert prediction["result"][0]["value"]["choices"] == [row["predicted_label"]]
        assert task["data"]["selected_by"] == row["selected_by"]


def test_the_annotator_labels_each_task_once_with_the_corpus_truth(demo):
    truth = {row["id"]: row["label"] for row in demo["rows"]}
    for task in demo["tasks"]:
        assert [annotation_label(item) for item in task["annotations"]] == [[truth[task["data"]["freshet_id"]]]]
    summary = "\n".join(demo["days"].summary)
    assert f"the demo's annotator annotated {BUDGET} open task(s) of {BUDGET} in project" in summary
    # As a command, over the same project: every task is finished, nothing is annotated twice.
    done = subprocess.run([sys.executable, "-m", "tasks.demo.annotator", "--url", demo["url"], "--project",
                           demo["labelling"].connection.project, "--corpus", str(demo["corpus"]),
                           "--token-env", TOKEN_ENV], cwd=REPO, capture_output=True, text=True, timeout=120,
                          env={**os.environ, TOKEN_ENV: TOKEN}, check=False)
    assert done.returncode == 0, done.stderr
    assert f"annotated 0 open task(s) of {BUDGET}" in done.stdout


def test_the_annotator_leaves_a_text_the_corpus_does_not_know_open():
    truth = CorpusTruth.of([{"id": "a", "text": "one", "label": "libs"}, {"id": "b", "text": "two", "label": "doc"},
                            {"id": "c", "text": "two", "label": "utils"}])
    assert truth.label_of({"data": {"text": "one", "freshet_id": "zz"}}) == "libs"  # by its text
    assert truth.label_of({"data": {"text": "two", "freshet_id": "c"}}) == "utils"  # the package decides
    assert truth.label_of({"data": {"text": "two", "freshet_id": "zz"}}) is None  # two Sections, no package
    assert truth.label_of({"data": {"text": "three", "freshet_id": "a"}}) is None  # the package's text differs


def test_the_pipeline_pulls_the_annotations_as_rows_of_their_own_ids(demo):
    store, queue = demo["store"], queue_of(demo)
    crawled = day_manifest(demo, "run-2026-11-02", "crawl")
    records = pd.read_parquet(store.local_path(crawled.output("records").uri))
    pulled = records[records["source"] == SOURCE_NAME]
    task_ids = {task["id"] for task in demo["tasks"]}
    assert sorted(pulled["id"]) == sorted(f"{SOURCE_NAME}:task-{task_id}" for task_id in task_ids)
    assert not set(pulled["id"]) & {row["id"] for row in demo["rows"]}, "an annotation's id is a package's"
    truth = {row["text"]: row["label"] for row in demo["rows"]}
    assert set(pulled["text"]) == set(queue["text"])
    assert all(truth[text] == label for text, label in zip(pulled["text"], pulled["label"]))
    # The demo site published the labelled half of those texts with their labels the same day: clean keeps one
    # row per text.
    dataset = pd.read_parquet(store.local_path(day_manifest(demo, "run-2026-11-02", "clean").output("dataset").uri))
    for text in queue["text"]:
        assert (dataset["text"] == text).sum() == 1, text
    report = json.loads(store.local_path(day_manifest(demo, "run-2026-11-02", "clean").output("clean_report").uri)
                        .read_text())
    site_also = sum(not is_unlabelled(identifier, UNLABELLED_FRACTION) for identifier in queue["id"])
    assert report["counts"]["duplicates_in_batch"] >= site_also > 0
    # The next crawl of the project (the demo site has stopped) pulls nothing new.
    data = demo["config"].to_dict()
    data["crawl"]["sources"] = [source for source in data["crawl"]["sources"] if source["name"] == SOURCE_NAME]
    again = crawl.run(PipelineConfig.model_validate(data), {}, run_id="rerun", store=store, logical_date="2026-11-02")
    assert again.output("records").rows == 0


def test_the_summary_compares_the_champion_on_uncertainty_and_control_picks(demo):
    queue = queue_of(demo)
    truth = {row["text"]: row["label"] for row in demo["rows"]}
    expected = {}
    for group in ("uncertainty", "control"):
        picked = queue[queue["selected_by"] == group]
        expected[group] = float(np.mean([truth[text] == predicted
                                         for text, predicted in zip(picked["text"], picked["predicted_label"])]))
    scores = group_scores(queue, truth)
    assert {group: scores[group]["accuracy"] for group in expected} == pytest.approx(expected)
    # The scripted champion is unsure where it is wrong: uncertainty finds its mistakes, the control does not.
    assert expected["uncertainty"] < expected["control"]
    summary = "\n".join(demo["days"].summary)
    day_two = summary.split("--- day 2, 2026-11-02")[1]
    assert f"labelling: {BUDGET} of {ROWS_PER_DAY} scored texts queued in Label Studio" in day_two
    assert "8 picked by uncertainty, 8 by the random control" in day_two
    assert f"the pipeline's crawl pulled {BUDGET} annotation(s) (source {SOURCE_NAME}), {BUDGET} of them of" in day_two
    assert (f"uncertainty 8 of 8: accuracy {scores['uncertainty']['accuracy']:.3f}, macro-F1 "
            f"{scores['uncertainty']['macro_f1']:.3f}") in day_two
    assert f"random control 8 of 8: accuracy {scores['control']['accuracy']:.3f}" in day_two
    first, row = demo["days"].labelled
    assert first == {"date": "2026-11-01"}  # nothing queued: a row of dashes in the table
    assert (row["date"], row["version"], row["queued"], row["annotated"], row["pulled"], row["kept"]) == (
        "2026-11-02", "1", BUDGET, BUDGET, BUDGET, BUDGET)
    table = "\n".join(runner.labelling_table(demo["days"].labelled))
    assert f"| 2026-11-02 | 1 | 8 | {scores['uncertainty']['accuracy']:.3f} |" in table
    assert "| 2026-11-01 | - | - | - | - | - | - | - | - | - | - |" in table
    print("\n".join([*demo["days"].summary, *table.splitlines()]))


# ------------------------------------------------------------------------------------------ the UI


def test_the_project_shows_the_queue_with_its_pre_annotations_in_the_browser(demo, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    client, project_id = demo["client"], demo["project_id"]
    [view] = [view for view in client.json("GET", "/api/dm/views", "list tabs", params={"project": project_id})
              if view["data"]["title"] == QUEUE_VIEW]
    queue = queue_of(demo)
    control = queue[queue["selected_by"] == "control"].iloc[0]
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True,
                                             args=["--no-sandbox", "--disable-gpu", "--no-first-run"])
        page = browser.new_page(viewport={"width": 1600, "height": 1000})
        try:
            page.goto(f"{demo['url']}/user/login/")
            page.locator("input[name=email]").fill(EMAIL)
            page.locator("input[name=password]").fill(PASSWORD)
            page.locator("button[type=submit]").first.click()
            page.wait_for_url(lambda url: "/user/login" not in url, timeout=60_000)
            page.goto(f"{demo['url']}/projects/{project_id}/data?tab={view['id']}")
            expect(page.get_by_text(f"Tasks: {BUDGET} / {BUDGET}")).to_be_visible(timeout=60_000)
            expect(page.get_by_text(f"Submitted annotations: {BUDGET}")).to_be_visible()
            expect(page.get_by_text(f"Predictions: {BUDGET}")).to_be_visible()
            for header in ("Prediction score", "Prediction model versions", "Prediction results", "selected_by"):
                expect(page.get_by_text(header, exact=True).first).to_be_visible()
            # The control pick's row: its text, its prediction's label and score, as the queue has them.
            row = page.locator(".dm-table__row-wrapper, [class*=row-wrapper]").filter(has_text=str(control["text"]))
            expect(row).to_have_count(1)
            expect(row).to_contain_text(f"choices: [{control['predicted_label']}]")
            expect(row).to_contain_text(f"{control['confidence']:.3f}")
            expect(row).to_contain_text("control")
        except Exception:
            page.screenshot(path=str(tmp_path / "FAILED-label-studio.png"))
            (tmp_path / "FAILED-label-studio.txt").write_text(f"{page.url}\n\n{page.locator('body').inner_text()}")
            raise
        path = tmp_path / "label-studio.png"
        page.screenshot(path=str(path))
        browser.close()
    assert path.stat().st_size > 10_000
    if os.environ.get("FRESHET_SAVE_SCREENSHOTS") == "1":
        target = REPO / "docs" / "img"
        target.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, target / "label-studio.png")


# ------------------------------------------------------------------------------------------ preflight


def run_demo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys, *arguments: str) -> tuple[int, str]:
    monkeypatch.setenv("FRESHET_HOME", str(tmp_path / "home"))  # main sets it; restored after the test
    code = runner.main(["--home", str(tmp_path / "home"), *arguments])
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def nothing_ran(tmp_path: Path) -> bool:
    home = tmp_path / "home"
    return not (home / "demo" / "corpus.jsonl").exists() and not (home / "airflow").exists()


def test_an_unreachable_label_studio_stops_the_demo_before_anything_runs(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("LABEL_STUDIO_TOKEN", "any")
    code, output = run_demo(tmp_path, monkeypatch, capsys, "--label-studio", "http://127.0.0.1:9")
    assert code == 2, output
    assert "--label-studio http://127.0.0.1:9" in output and "(label.label_studio.url) is unreachable" in output
    assert nothing_ran(tmp_path)


def test_a_missing_or_refused_token_stops_the_demo_naming_the_variable(tmp_path, monkeypatch, capsys):
    url = ensure_label_studio()
    monkeypatch.delenv("FRESHET_DEMO_TOKEN", raising=False)
    code, output = run_demo(tmp_path, monkeypatch, capsys, "--label-studio", url,
                            "--label-studio-token-env", "FRESHET_DEMO_TOKEN")
    assert code == 2 and "environment variable FRESHET_DEMO_TOKEN (label.label_studio.token_env)" in output, output
    monkeypatch.setenv("FRESHET_DEMO_TOKEN", "not-the-token")
    code, output = run_demo(tmp_path, monkeypatch, capsys, "--label-studio", url,
                            "--label-studio-token-env", "FRESHET_DEMO_TOKEN")
    assert code == 2 and "refused the API token from $FRESHET_DEMO_TOKEN (label.label_studio.token_env)" in output
    assert nothing_ran(tmp_path)


def test_a_config_that_queues_without_pulling_is_refused(tmp_path):
    data = demo_config(tmp_path, 8765, f"sqlite:///{tmp_path}/mlflow.db")
    data["label"]["label_studio"] = {"url": "http://127.0.0.1:8089", "token_env": TOKEN_ENV, "project": "p"}
    config = PipelineConfig.model_validate(data)
    with pytest.raises(LabellingSetupError, match=r"no crawl source of kind label_studio reads it \(crawl\.sources\)"):
        DemoLabelling.of(config, tmp_path / "corpus.jsonl")


def test_texts_the_site_never_labels_reach_training_only_through_their_annotations(demo):
    store, queue = demo["store"], queue_of(demo)
    only_annotated = [text for identifier, text in zip(queue["id"], queue["text"])
                      if is_unlabelled(identifier, UNLABELLED_FRACTION)]
    assert only_annotated, "the queue holds no text of the site's unlabelled half"
    crawled = day_manifest(demo, "run-2026-11-02", "crawl")
    records = pd.read_parquet(store.local_path(crawled.output("records").uri))
    site_texts = set(records.loc[records["source"] != SOURCE_NAME, "text"])
    dataset = pd.read_parquet(store.local_path(day_manifest(demo, "run-2026-11-02", "clean").output("dataset").uri))
    for text in only_annotated:
        assert text not in site_texts
        assert dataset.loc[dataset["text"] == text, "source"].tolist() == [SOURCE_NAME], text
    summary = "\n".join(demo["days"].summary)
    assert f"{len(only_annotated)} of them texts whose label only the annotation gives (new rows)" in summary
