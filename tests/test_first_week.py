"""A newcomer's first week on a folder source, through the real DAG (`freshet demo --config`, `airflow dags test`):
the README's own-data config on a tiny local BERT. Day 1 fails in training (the model folder's tokenizer has no
pad token): the command exits 1 and names the failed task and the step's own error, and nothing claims the round
trained. After the fix, with no new file at all, `--force-training` trains the waiting rows and registers version 1.
Day 3
is small, with a new label folder, a Latin-1 file and an empty file; a config naming a missing model folder is
refused at once. One test, one home: each day costs a real DAG run."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import yaml

from tests.conftest import REPO
from tests.corpus_support import synthetic_corpus
from tests.model_families import build_family_dir
from tests.test_own_data_and_model import readme_section

pytestmark = pytest.mark.slow
LABELS = ["billing", "outage", "praise"]


def write_files(root, rows) -> None:
    for row in rows:
        folder = root / "data" / "tickets" / row["label"]
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{row['id']}.txt").write_text(row["text"])


def freshet(tmp_path, *arguments: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "FRESHET_HOME": str(tmp_path / ".freshet"), "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    return subprocess.run([sys.executable, "-m", "tasks.cli", *arguments], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=900, check=False)


def test_a_failed_day_exits_non_zero_naming_task_and_error_then_a_forced_retry_after_the_fix_succeeds(tmp_path):
    config_text, _ = readme_section()
    config = yaml.safe_load(config_text)
    # Kept small: no retry of the failing training, one compressed variant.
    config.update(schedule={"train_retries": 0}, compress={"variants": ["int8-dynamic"]})
    (tmp_path / "tickets.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    write_files(tmp_path, synthetic_corpus(180, LABELS, seed=8))
    model_dir = build_family_dir("bert", tmp_path / config["train"]["model"])
    tokenizer_config = model_dir / "tokenizer_config.json"
    settings = json.loads(tokenizer_config.read_text())
    tokenizer_config.write_text(json.dumps({**settings, "pad_token": None}))  # passes the load-time preflight

    failed = freshet(tmp_path, "demo", "--config", "tickets.yaml", "--days", "1")
    output = failed.stdout + failed.stderr
    assert failed.returncode == 1, output[-4000:]
    assert "--- day 1, 2026-11-01" in output and "FAILED" in output
    assert "task train failed: step train exited with 1: freshet train: error: train.model: the tokenizer" in output
    assert "has no pad token" in output and "ChildFailedError" not in output
    assert "- day 1: trained" not in output, "the learning curve must not claim the failed round trained"

    tokenizer_config.write_text(json.dumps(settings))  # the fix, and no new file: the retry trains what waits
    forced = freshet(tmp_path, "demo", "--config", "tickets.yaml", "--days", "1", "--force-training")
    output = forced.stdout + forced.stderr
    assert forced.returncode == 0, output[-4000:]
    assert "--- day 2, 2026-11-02" in output and "rows crawled 0" in output and "ended at new_data" not in output
    assert "training: yes - forced by the run's force_training param" in output
    assert "registered version 1" in output
    assert "registry: tickets aliases" in output, "the registered model is named after the pipeline"
    assert not (tmp_path / "mlruns").exists()
    a_small_day_with_a_new_label_latin1_and_empty_files(tmp_path)
    a_missing_model_folder_is_refused_naming_both_readings(tmp_path, config)


def a_small_day_with_a_new_label_latin1_and_empty_files(tmp_path) -> None:
    """Day 3 brings 10 files: a new label folder with a space in its name, one file in Latin-1, one empty. Nothing
    crashes: the small day ends green with the reason and its rows wait, the Latin-1 text arrives exactly, the empty
    file is quarantined with a reason the console shows, and the new label is named as spelled."""
    from tasks.contract import read_manifest
    from tasks.records import read_rows
    from tasks.store import ArtifactStore

    scripts = tmp_path / "data" / "tickets" / "shell scripts"
    scripts.mkdir()
    for index in range(7):
        (scripts / f"s{index}.txt").write_text(f"bash script number {index} to rotate logs and clean temp files")
    latin1 = "Bibliothèque Perl pour lire les journaux, très utilisée"
    (scripts / "latin1.txt").write_bytes(latin1.encode("latin-1"))
    (tmp_path / "data" / "tickets" / "billing" / "empty.txt").write_text("")
    (tmp_path / "data" / "tickets" / "praise" / "one.txt").write_text("thanks, the new invoice page is great")
    small = freshet(tmp_path, "demo", "--config", "tickets.yaml", "--days", "1")
    output = small.stdout + small.stderr
    assert small.returncode == 0, output[-4000:]
    assert "training: no - only" in output and "ended at should_train" in output
    assert 'new label(s) joined the label set (validate.new_labels: extend): "shell scripts"' in output
    assert 'new label "shell scripts": joined, not trained yet (only' in output
    assert "quarantined" in output and "empty" in output.lower()

    store = ArtifactStore(str(tmp_path / "artifacts"))
    validated = [manifest for run in store.run_directories()
                 if (manifest := read_manifest(store, run, "validate")) and (manifest.logical_date or "") >= "2026-11-03"]
    texts = {row["text"] for manifest in validated for row in read_rows(store.local_path(manifest.output("valid").uri))}
    assert latin1 in texts and not any("Ã" in text or "\ufffd" in text for text in texts)


def a_missing_model_folder_is_refused_naming_both_readings(tmp_path, config) -> None:
    missing = dict(config, train={**config["train"], "model": "models/not-here"})
    (tmp_path / "missing.yaml").write_text(yaml.safe_dump(missing, sort_keys=False))
    refused = freshet(tmp_path, "demo", "--config", "missing.yaml", "--days", "1")
    message = refused.stdout + refused.stderr
    assert refused.returncode == 2, message[-2000:]
    assert "train.model" in message and "not-here" in message and "hub" in message
