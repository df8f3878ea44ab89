"""The smaller things a newcomer trips on in the first week (issue 22): the registered model is named after the
pipeline, MLflow writes nothing into the working directory, the UI commands work for any config from anywhere,
`freshet history` shows who moved the champion in full, and `freshet demo --help` offers the forced round."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import yaml

from tasks import promote
from tasks.cli import main
from tasks.config import load_config
from tests.conftest import REPO
from tests.pipeline_support import tiny_config

LABELS = ["billing", "outage"]


def own_config(folder, **mlflow) -> dict:
    """The README's own-data shape: a local folder source, a relative SQLite tracking URI, no model name."""
    return {"name": "tickets", "labels": LABELS, "artifact_root": "artifacts",
            "mlflow": {"tracking_uri": "sqlite:///mlflow.db", **mlflow},
            "crawl": {"sources": [{"name": "tickets", "kind": "local", "path": str(folder)}]},
            "train": {"model": "tiny"}}


def test_the_registered_model_is_named_after_the_pipeline_unless_the_config_names_it(tmp_path, monkeypatch):
    path = tmp_path / "tickets.yaml"
    path.write_text(yaml.safe_dump(own_config(tmp_path / "data")))
    assert load_config(path).mlflow.model_name == "tickets"
    path.write_text(yaml.safe_dump(own_config(tmp_path / "data", model_name="support-tickets")))
    assert load_config(path).mlflow.model_name == "support-tickets"
    monkeypatch.setenv("FRESHET_HOME", str(tmp_path / "home"))
    assert load_config(REPO / "configs" / "demo.yaml").mlflow.model_name == "freshet-debian-sections"


def test_a_step_run_from_any_directory_leaves_no_mlruns_there(tmp_path):
    """`sqlite:///mlflow.db` without artifact_location: MLflow's client would create the experiment with
    `./mlruns` as its artifact root; the crawl's report goes to `mlartifacts` beside the database instead."""
    for label in LABELS:
        (tmp_path / "data" / label).mkdir(parents=True)
        (tmp_path / "data" / label / "one.txt").write_text(f"a {label} ticket about the invoice and the outage")
    (tmp_path / "tickets.yaml").write_text(yaml.safe_dump(own_config(tmp_path / "data")))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    result = subprocess.run([sys.executable, "-m", "tasks.cli", "step", "crawl", "--config", "tickets.yaml",
                             "--run-id", "r1", "--logical-date", "2026-11-01"],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "mlflow.db").exists(), "the tracking URI the config names was used"
    assert not (tmp_path / "mlruns").exists(), sorted(path.name for path in tmp_path.iterdir())
    assert list((tmp_path / "mlartifacts").rglob("crawl_report.json")), "the step's artifacts beside the database"


def test_the_ui_commands_resolve_the_configs_stores_from_any_directory(tmp_path, monkeypatch, capsys):
    config_dir, elsewhere = tmp_path / "tickets", tmp_path / "elsewhere"
    config_dir.mkdir()
    elsewhere.mkdir()
    (config_dir / "tickets.yaml").write_text(yaml.safe_dump(own_config(config_dir / "data")))
    monkeypatch.chdir(elsewhere)
    monkeypatch.setenv("FRESHET_HOME", str(tmp_path / "home"))  # `freshet ui` sets it from --home, as the demo does
    assert main(["ui", "mlflow", "--config", str(config_dir / "tickets.yaml"), "--print"]) == 0
    command = capsys.readouterr().out.split()
    assert command[command.index("--backend-store-uri") + 1] == f"sqlite:///{config_dir}/mlflow.db"
    assert command[command.index("--default-artifact-root") + 1] == str(config_dir / "mlartifacts")
    # The demo names the directory the steps ran in when it is not the config's.
    assert main(["ui", "mlflow", "--config", str(config_dir / "tickets.yaml"), "--relative-to", str(elsewhere),
                 "--print"]) == 0
    assert f"sqlite:///{elsewhere}/mlflow.db" in capsys.readouterr().out.split()
    assert main(["ui", "airflow", "--config", str(config_dir / "tickets.yaml"), "--home", str(tmp_path / "home"),
                 "--print"]) == 0
    printed = capsys.readouterr().out
    assert f"AIRFLOW_HOME={tmp_path / 'home' / 'airflow'}" in printed
    assert f"FRESHET_CONFIG={config_dir / 'tickets.yaml'}" in printed and printed.rstrip().endswith("standalone")


def test_history_shows_who_moved_the_champion_in_full(tmp_path, capsys):
    config = tiny_config(tmp_path)
    from tasks import model_registry

    client = model_registry.client(config)
    client.create_registered_model(config.mlflow.model_name)
    client.create_model_version(config.mlflow.model_name, source=str(tmp_path / "nowhere"))
    who = "airflow dag_id=freshet run_id=manual__2026-11-01T00:00:00+00:00"
    promote.move_champion(config, "1", None, reason="first gate pass", who=who)
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(config.to_dict()))
    assert main(["history", "--config", str(path)]) == 0
    header, row = capsys.readouterr().out.splitlines()[1:3]
    assert f" {who} first gate pass" in row
    assert row.index(who) == header.index("by"), "the column is as wide as its longest value"


def test_the_demo_offers_a_forced_round_in_its_help(capsys):
    with pytest.raises(SystemExit) as exited:
        main(["demo", "--help"])
    assert exited.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "--force-training" in text and "force_training=true" in text
    assert "1 when a run failed" in text
