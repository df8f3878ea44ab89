"""The generated configuration reference stays in step with tasks/config.py, and every shipped config
is valid: against the generated JSON Schema and through `load_config`."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import jsonschema
import pytest
import yaml

from tasks import config_reference
from tasks.config import ConfigError, PipelineConfig, load_config

REPO = Path(__file__).resolve().parents[1]
CONFIGS = sorted((REPO / "configs").glob("*.yaml"))
REGENERATE = "python -m tasks.config_reference"


@pytest.mark.parametrize("path", [config_reference.MARKDOWN_PATH, config_reference.SCHEMA_PATH], ids=str)
def test_generated_file_is_up_to_date(path):
    expected = config_reference.generated()[path]
    on_disk = REPO / path
    assert on_disk.exists(), f"{path} is missing: run `{REGENERATE}`"
    assert on_disk.read_text(encoding="utf-8") == expected, (
        f"{path} is stale (tasks/config.py changed): run `{REGENERATE}` and commit the result")


def test_generation_is_deterministic():
    assert config_reference.render_markdown() == config_reference.render_markdown()
    assert config_reference.render_schema() == config_reference.render_schema()
    assert str(REPO) not in config_reference.render_markdown() + config_reference.render_schema()


def test_check_names_the_stale_file_and_the_command(tmp_path, capsys):
    assert config_reference.main(["--root", str(tmp_path)]) == 0
    assert config_reference.main(["--root", str(tmp_path), "--check"]) == 0
    (tmp_path / config_reference.MARKDOWN_PATH).write_text("# edited by hand\n", encoding="utf-8")
    assert config_reference.main(["--root", str(tmp_path), "--check"]) == 1
    message = capsys.readouterr().err
    assert str(config_reference.MARKDOWN_PATH) in message and REGENERATE in message
    assert str(config_reference.SCHEMA_PATH) not in message


def test_reference_covers_every_field():
    markdown = config_reference.render_markdown()
    for section, info in PipelineConfig.model_fields.items():
        key = info.alias or section
        assert f"`{key}`" in markdown
    for kind in ("jsonl_feed", "html_site", "feed", "json_api", "local", "debian_index"):
        assert f"### `crawl.sources[]` kind `{kind}`" in markdown
    assert "| `evaluate.gate.non_inferiority_margin` | `float` (&gt;= 0) | `0.02` |" in markdown
    assert "| `train.nproc_per_node` | `int \\| \"auto\"` | `\"auto\"` |" in markdown
    assert json.loads(config_reference.render_schema())["properties"].keys() == {
        info.alias or name for name, info in PipelineConfig.model_fields.items()}


def _as_json(value):
    """What an editor's YAML schema check sees: YAML dates are plain strings there."""
    return json.loads(json.dumps(value, default=lambda item: item.isoformat() if isinstance(item, dt.date) else item))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda path: path.name)
def test_config_file_validates_against_the_schema(path):
    schema = json.loads((REPO / config_reference.SCHEMA_PATH).read_text(encoding="utf-8"))
    document = _as_json(yaml.safe_load(path.read_text()))
    jsonschema.Draft202012Validator(schema).validate(document)


# Every shipped config reads ${VAR}s (the demo's FRESHET_HOME, the services' URLs); unset, a source URL
# stays "${...}" and fails the http(s) check, so the test sets them to placeholders.
PLACEHOLDER_ENV = {
    "FRESHET_HOME": "/srv/freshet",
    "FRESHET_ARTIFACT_ROOT": "/srv/freshet/artifacts",
    "MLFLOW_TRACKING_URI": "http://127.0.0.1:5000",
    "FRESHET_SITE_URL": "http://127.0.0.1:8765/",
    "FRESHET_DEMO_SITE": "http://127.0.0.1:8765/",
    "FRESHET_TRAIN_QUEUE": "train",
}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda path: path.name)
def test_config_file_loads(path, monkeypatch):
    for name, value in PLACEHOLDER_ENV.items():
        monkeypatch.setenv(name, value)
    config = load_config(path)
    assert "${" not in json.dumps(config.to_dict()), f"{path.name} uses a variable this test does not set"


def test_an_unset_variable_is_an_error_naming_the_setting_and_freshet_home_defaults(tmp_path, monkeypatch):
    monkeypatch.delenv("FRESHET_HOME", raising=False)
    monkeypatch.delenv("FRESHET_TEST_UNSET", raising=False)
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump({"labels": ["a", "b"], "artifact_root": "${FRESHET_HOME}/artifacts",
                                    "mlflow": {"tracking_uri": "sqlite:///${FRESHET_HOME}/mlflow.db"},
                                    "crawl": {"sources": [{"name": "s", "url": "${FRESHET_TEST_UNSET}/feed"}]}}))
    with pytest.raises(ConfigError, match=r"pipeline\.yaml: crawl\.sources\.0\.url: the environment variable "
                                          r"FRESHET_TEST_UNSET is not set"):
        load_config(path)
    monkeypatch.setenv("FRESHET_TEST_UNSET", "http://127.0.0.1:9")
    config = load_config(path)
    assert config.artifact_root == str(tmp_path / ".freshet" / "artifacts")
    assert config.crawl.sources[0].url.startswith("http://127.0.0.1:9/feed")
