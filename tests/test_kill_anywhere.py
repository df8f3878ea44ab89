"""Kill anywhere: every step, SIGKILLed inside its work, reruns to completion with nothing lost or doubled.

Each step runs as its own process group (`python -m tasks.<step>`, as the Airflow worker runs it) with the
fault drill `FRESHET_FAULT_DRILL=<step>:<point>`: `staged` kills it with its outputs written but not
committed (register and promote have already changed the registry by then), `tracked` kills it after the
commit with its MLflow run still open. Then the same command runs again, as the task's retry or a cleared
task would. Two days: day 1 kills every step at `staged`, day 2 at `tracked`: the pipeline's steps, then
batch scoring of the day's drop folder and the monitor (tests/test_labelling.py drills the label step
against its Label Studio).
Afterwards the registry, the data and MLflow must look as an uninterrupted run leaves them.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tasks import model_registry
from tasks.config import load_config
from tasks.contract import FAULT_DRILL, FAULT_POINTS, read_manifest
from tasks.decide import DecideFacts
from tasks.demo.corpus import write_corpus
from tasks.demo.site import serve
from tasks.pipeline import PIPELINE_STEP_NAMES, STEPS, step
from tasks.promote import PromoteFacts
from tasks.records import read_rows
from tasks.register import RegisterFacts
from tasks.snapshots import read_history
from tasks.store import ArtifactStore
from tasks.tracking import TRACKED_TAG
from tests.conftest import REPO
from tests.corpus_support import synthetic_corpus

pytestmark = pytest.mark.slow
LABELS = ["alpha", "beta", "gamma"]
DAYS = ("2026-11-01", "2026-11-02")
PRODUCTION = ("score", "monitor")  # the production steps drilled here (label: tests/test_labelling.py)
KILLED = (*PIPELINE_STEP_NAMES, *PRODUCTION)  # every one at both points
DROP_ROWS = 40  # unlabelled texts in each day's drop folder


def config_file(root: Path, site_url: str) -> Path:
    path = root / "pipeline.yaml"
    path.write_text(yaml.safe_dump({
        "name": "kill", "labels": LABELS, "artifact_root": str(root / "artifacts"),
        "mlflow": {"tracking_uri": f"sqlite:///{root}/mlflow.db", "artifact_location": str(root / "mlartifacts"),
                   "model_name": "kill-model"},
        "crawl": {"sources": [{"name": "synthetic", "url": site_url, "allow_private_network": True}]},
        "train": {"model": "tiny", "batch_size": 16, "epochs": 8, "learning_rate": 1e-2, "max_length": 16,
                  "warmup_fraction": 0.0, "early_stopping_patience": 8, "checkpoint_every_steps": 10},
        "compress": {"variants": ["int8-dynamic", "onnx-int8"], "latency_rounds": 1},
        "evaluate": {"gate": {"floors": {"frozen.macro_f1": 0.4}, "non_inferiority_margin": 0.2,
                              "min_comparison_rows": 20}},
        "score": {"input": str(root / "drop" / "{date}" / "*.jsonl")},
        "monitor": {"min_rows": DROP_ROWS // 2, "reference_max_rows": 60},
    }))
    return path


def run_step(name: str, config: Path, run_id: str, day: str, fault: str | None = None) -> int:
    """The step's CLI in a new process group (killing the group cannot reach pytest); its exit code."""
    environment = {**os.environ, "FRESHET_LOG_LEVEL": "WARNING"}
    environment.pop(FAULT_DRILL, None)
    if fault:
        environment[FAULT_DRILL] = fault
    inputs = [argument for upstream in step(name).inputs for argument in ("--input", upstream)]
    command = [sys.executable, "-m", f"tasks.{name}", "--config", str(config), "--run-id", run_id,
               "--logical-date", day, *inputs]
    result = subprocess.run(command, cwd=REPO, env=environment, capture_output=True, text=True, timeout=600,
                            start_new_session=True, check=False)
    if fault is None and result.returncode != 0:
        raise AssertionError(f"{name} failed on its rerun:\n{result.stderr[-3000:]}")
    return result.returncode


def kill_and_rerun(name: str, config: Path, run_id: str, day: str, point: str) -> str:
    """Kill the step at `point`, run it again; the outcome for the matrix."""
    code = run_step(name, config, run_id, day, fault=f"{name}:{point}")
    run_step(name, config, run_id, day)
    return ("killed" if code == -signal.SIGKILL else f"exit {code}") + ", rerun finished"


def step_runs(root: Path) -> list[tuple[str, str]]:
    """(run id, step) of every step that ran: the pipeline's two runs and the production DAGs' runs per day."""
    store = ArtifactStore(str(root / "artifacts"))
    ran = [(f"run-{number}", name) for number in (1, 2) for name in PIPELINE_STEP_NAMES
           if read_manifest(store, f"run-{number}", name) is not None]
    return ran + [(f"{name}-{day}", name) for day in DAYS for name in PRODUCTION]


@pytest.fixture(scope="module")
def killed_everywhere(tmp_path_factory):
    root = tmp_path_factory.mktemp("kill")
    corpus = root / "corpus.jsonl"
    write_corpus(synthetic_corpus(420, LABELS, seed=11), corpus)
    unlabelled = synthetic_corpus(DROP_ROWS * len(DAYS), LABELS, seed=12)
    store = ArtifactStore(str(root / "artifacts"))
    matrix: dict[str, dict[str, str]] = {}
    with serve(corpus, dt.date.fromisoformat(DAYS[0]), days=1, initial_fraction=0.6) as site:
        config_path = config_file(root, site.url)
        for number, (day, point) in enumerate(zip(DAYS, FAULT_POINTS, strict=True), start=1):
            run_id = f"run-{number}"
            for spec in STEPS:
                matrix.setdefault(spec.name, {})[point] = kill_and_rerun(spec.name, config_path, run_id, day, point)
                decision = read_manifest(store, run_id, "decide")
                if spec.name == "decide" and decision is not None and not DecideFacts.of(decision).train:
                    break  # the DAG's should_train ends the run here
            drop = root / "drop" / day
            drop.mkdir(parents=True)
            (drop / "texts.jsonl").write_text("".join(
                json.dumps({"id": f"{day}-{index}", "text": row["text"]}) + "\n"
                for index, row in enumerate(unlabelled[(number - 1) * DROP_ROWS:number * DROP_ROWS])))
            for name in PRODUCTION:
                matrix.setdefault(name, {})[point] = kill_and_rerun(name, config_path, f"{name}-{day}", day, point)
    (root / "matrix.json").write_text(json.dumps(matrix, indent=2))
    return load_config(config_path), root, matrix


def test_every_step_was_killed_at_both_points_and_its_rerun_finished(killed_everywhere):
    _, root, matrix = killed_everywhere
    assert matrix == {name: {point: "killed, rerun finished" for point in FAULT_POINTS} for name in KILLED}, (
        f"matrix in {root / 'matrix.json'}")


def test_one_version_per_run_and_the_aliases_an_uninterrupted_run_leaves(killed_everywhere):
    config, _, _ = killed_everywhere
    client = model_registry.client(config)
    name = config.mlflow.model_name
    versions = {run_id: [version.version for version in client.search_model_versions(
        f"name = '{name}' and tags.`freshet.run_id` = '{run_id}'")] for run_id in ("run-1", "run-2")}
    assert {run_id: len(found) for run_id, found in versions.items()} == {"run-1": 1, "run-2": 1}
    store = ArtifactStore(config.artifact_root)
    first, second = (read_manifest(store, run_id, "promote") for run_id in ("run-1", "run-2"))
    assert first is not None and PromoteFacts.of(first).promoted, "day 1 (no champion yet) becomes champion"
    assert second is not None
    aliases = client.get_registered_model(name).aliases
    assert aliases["challenger"] == versions["run-2"][0]
    if PromoteFacts.of(second).promoted:
        assert (aliases["champion"], aliases["previous"]) == (versions["run-2"][0], versions["run-1"][0])
    else:
        assert aliases["champion"] == versions["run-1"][0] and "previous" not in aliases


def test_every_crawled_record_is_accepted_exactly_once(killed_everywhere):
    config, _, _ = killed_everywhere
    store = ArtifactStore(config.artifact_root)
    crawled = [row["id"] for run_id in ("run-1", "run-2")
               for row in read_rows(store.local_path(read_manifest(store, run_id, "crawl").output("records").uri))]
    accepted = [row["id"] for entry in read_history(store) for row in read_rows(store.local_path(entry["uri"]))]
    assert len(crawled) == len(set(crawled)) > 0
    assert sorted(accepted) == sorted(set(accepted)), "a record accepted twice"
    assert set(accepted) <= set(crawled) and len(accepted) >= 0.9 * len(crawled)  # clean drops a few, never adds


def test_no_mlflow_run_is_left_running_and_no_staging_is_left_behind(killed_everywhere):
    import mlflow

    config, _, _ = killed_everywhere
    mlflow.set_tracking_uri(config.mlflow.tracking_uri)
    runs = mlflow.search_runs(experiment_names=[config.mlflow.experiment], output_format="list")
    assert runs and {run.info.status for run in runs} == {"FINISHED"}, [
        (run.data.tags.get("freshet.step"), run.info.status) for run in runs if run.info.status != "FINISHED"]
    leftovers = sorted(str(path) for path in Path(config.artifact_root).glob("runs/*/.*"))
    assert leftovers == []


def test_every_step_run_holds_its_complete_record_once(killed_everywhere):
    """A rerun after a kill finishes the MLflow record of the committed manifest; nothing in it is doubled: every
    metric has one point per step (the manifest's at its commit time, train's history at its own times)."""
    config, root, _ = killed_everywhere
    store = ArtifactStore(config.artifact_root)
    client = model_registry.client(config)
    incomplete, doubled = [], []
    for run_id, name in step_runs(root):
        manifest = read_manifest(store, run_id, name)
        [run] = step_run(config, name, run_id) or [None]
        if manifest is None or run is None or run.data.tags.get(TRACKED_TAG) != manifest.fingerprint:
            incomplete.append((run_id, name))
            continue
        for key in run.data.metrics:
            steps = [point.step for point in client.get_metric_history(run.info.run_id, key)]
            if len(steps) != len(set(steps)):
                doubled.append((run_id, name, key, steps))
    assert (incomplete, doubled) == ([], [])


def test_train_s_run_replays_its_metric_history_at_its_steps(killed_everywhere):
    """Killed before its commit (day 1: the rerun resumes from the checkpoint) and after it (day 2: the rerun
    only records): train's run shows the loss curve the fit logged, once, with its params, tags and label map."""
    config, _, _ = killed_everywhere
    store = ArtifactStore(config.artifact_root)
    client = model_registry.client(config)
    for run_id in ("run-1", "run-2"):
        manifest = read_manifest(store, run_id, "train")
        assert manifest is not None
        history = store.local_path(manifest.output("metrics_history").uri).read_text().splitlines()
        points = [json.loads(line) for line in history]
        logged = sorted((point["step"], point["metrics"]["loss"]) for point in points if "loss" in point["metrics"])
        assert logged and logged[-1][0] == manifest.metrics["steps"]
        [run] = step_run(config, "train", run_id)
        assert sorted((point.step, point.value) for point in client.get_metric_history(run.info.run_id, "loss")) == logged
        assert float(run.data.params["train.epochs"]) == 8 and json.loads(run.data.tags["freshet.labels"]) == LABELS
        assert {"freshet.precision", "freshet.precision_reason"} <= set(run.data.tags)
        assert {"label_map.json", "manifest.json"} <= {item.path for item in client.list_artifacts(run.info.run_id)}


def test_register_s_run_is_the_version_s_source_and_holds_the_evidence(killed_everywhere):
    """Killed after registering (day 1) and after its commit (day 2): the version's source run is register's run,
    and the evidence is in it once."""
    config, _, _ = killed_everywhere
    store = ArtifactStore(config.artifact_root)
    client = model_registry.client(config)
    for run_id in ("run-1", "run-2"):
        manifest = read_manifest(store, run_id, "register")
        assert manifest is not None
        version = client.get_model_version(config.mlflow.model_name, RegisterFacts.of(manifest).version)
        [run] = step_run(config, "register", run_id)
        assert version.run_id == run.info.run_id
        assert run.data.tags[TRACKED_TAG] == manifest.fingerprint and "freshet.evidence" in run.data.tags
        assert any(key.startswith("evaluate.candidate.") for key in run.data.metrics)
        assert {item.path for item in client.list_artifacts(run.info.run_id, "evidence/gate")} == {
            "evidence/gate/gate.json"}
        assert run.inputs.dataset_inputs


def step_run(config, name: str, run_id: str) -> list:
    """The step's MLflow runs for a pipeline run: one, or none for a step without a record."""
    import mlflow

    mlflow.set_tracking_uri(config.mlflow.tracking_uri)
    return mlflow.search_runs(experiment_names=[config.mlflow.experiment], output_format="list",
                              filter_string=f"tags.`freshet.step` = '{name}' and tags.`freshet.run_id` = '{run_id}'")
