"""Kill anywhere: every step, SIGKILLed inside its work, reruns to completion with nothing lost or doubled.

Each step runs as its own process group (`python -m tasks.<step>`, as the Airflow worker runs it) with the
fault drill `FRESHET_FAULT_DRILL=<step>:<point>`: `staged` kills it with its outputs written but not
committed (register and promote have already changed the registry by then), `tracked` kills it after the
commit with its MLflow run still open. Then the same command runs again, as the task's retry or a cleared
task would. Two days: day 1 kills every step at `staged`, day 2 every tracked step at `tracked`. Afterwards
the registry, the data and MLflow must look as an uninterrupted run leaves them.
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
from tasks.contract import FAULT_DRILL, read_manifest
from tasks.demo.corpus import write_corpus
from tasks.demo.site import serve
from tasks.pipeline import STEPS
from tasks.records import read_rows
from tasks.snapshots import read_history
from tasks.store import ArtifactStore
from tests.conftest import REPO
from tests.corpus_support import synthetic_corpus

pytestmark = pytest.mark.slow
LABELS = ["alpha", "beta", "gamma"]
DAYS = ("2026-11-01", "2026-11-02")
TRACKED = ("crawl", "validate", "clean", "augment", "evaluate", "compress")  # steps whose run the contract opens


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
    }))
    return path


def run_step(step: str, config: Path, run_id: str, day: str, fault: str | None = None) -> int:
    """The step's CLI in a new process group (killing the group cannot reach pytest); its exit code."""
    environment = {**os.environ, "FRESHET_LOG_LEVEL": "WARNING"}
    environment.pop(FAULT_DRILL, None)
    if fault:
        environment[FAULT_DRILL] = fault
    inputs = [argument for name in next(spec for spec in STEPS if spec.name == step).inputs
              for argument in ("--input", name)]
    command = [sys.executable, "-m", f"tasks.{step}", "--config", str(config), "--run-id", run_id,
               "--logical-date", day, *inputs]
    result = subprocess.run(command, cwd=REPO, env=environment, capture_output=True, text=True, timeout=600,
                            start_new_session=True, check=False)
    if fault is None and result.returncode != 0:
        raise AssertionError(f"{step} failed on its rerun:\n{result.stderr[-3000:]}")
    return result.returncode


@pytest.fixture(scope="module")
def killed_everywhere(tmp_path_factory):
    root = tmp_path_factory.mktemp("kill")
    corpus = root / "corpus.jsonl"
    write_corpus(synthetic_corpus(420, LABELS, seed=11), corpus)
    matrix: dict[str, dict[str, str]] = {}
    with serve(corpus, dt.date.fromisoformat(DAYS[0]), days=1, initial_fraction=0.6) as site:
        config_path = config_file(root, site.url)
        for number, day in enumerate(DAYS, start=1):
            run_id = f"run-{number}"
            point = "staged" if number == 1 else "tracked"
            for spec in STEPS:
                killed = point == "staged" or spec.name in TRACKED
                if killed:
                    code = run_step(spec.name, config_path, run_id, day, fault=f"{spec.name}:{point}")
                    matrix.setdefault(spec.name, {})[point] = "killed" if code == -signal.SIGKILL else f"exit {code}"
                run_step(spec.name, config_path, run_id, day)
                if killed:
                    matrix[spec.name][point] += ", rerun finished"
                decision = read_manifest(ArtifactStore(str(root / "artifacts")), run_id, "decide")
                if spec.name == "decide" and decision is not None and not decision.facts["train"]:
                    break  # the DAG's should_train ends the run here
    (root / "matrix.json").write_text(json.dumps(matrix, indent=2))
    return load_config(config_path), root, matrix


def test_every_step_was_killed_inside_its_work_and_its_rerun_finished(killed_everywhere):
    _, root, matrix = killed_everywhere
    assert {step: outcomes["staged"] for step, outcomes in matrix.items()} == {
        spec.name: "killed, rerun finished" for spec in STEPS}, f"matrix in {root / 'matrix.json'}"
    assert {step: outcomes["tracked"] for step, outcomes in matrix.items() if "tracked" in outcomes} == {
        step: "killed, rerun finished" for step in TRACKED}


def test_one_version_per_run_and_the_aliases_an_uninterrupted_run_leaves(killed_everywhere):
    config, _, _ = killed_everywhere
    client = model_registry.client(config)
    name = config.mlflow.model_name
    versions = {run_id: [version.version for version in client.search_model_versions(
        f"name = '{name}' and tags.`freshet.run_id` = '{run_id}'")] for run_id in ("run-1", "run-2")}
    assert {run_id: len(found) for run_id, found in versions.items()} == {"run-1": 1, "run-2": 1}
    store = ArtifactStore(config.artifact_root)
    first, second = (read_manifest(store, run_id, "promote") for run_id in ("run-1", "run-2"))
    assert first is not None and first.facts["promoted"], "day 1 (no champion yet) becomes champion"
    assert second is not None
    aliases = client.get_registered_model(name).aliases
    assert aliases["challenger"] == versions["run-2"][0]
    if second.facts["promoted"]:
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
