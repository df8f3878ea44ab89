"""The step contract: typed config with overrides, idempotent execution, atomic commits, CLI errors."""

from __future__ import annotations

import pytest
import yaml

from tasks.config import ConfigError, load_config
from tasks.contract import StepContext, execute, read_manifest
from tasks.manifest import StepError
from tasks.store import ArtifactStore

BASE = {
    "labels": ["a", "b"],
    "artifact_root": "${FRESHET_TEST_ROOT}/artifacts",
    "mlflow": {"tracking_uri": "sqlite:///x.db"},
    "crawl": {"sources": [{"name": "s", "url": "http://127.0.0.1:1"}]},
}


@pytest.fixture
def config_file(tmp_path, monkeypatch):
    monkeypatch.setenv("FRESHET_TEST_ROOT", str(tmp_path))
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(BASE))
    return path


def test_env_vars_expand_and_overrides_are_typed(config_file, tmp_path):
    config = load_config(config_file, ["train.epochs=3", "train.nproc_per_node=2", "evaluate.gate.floors={fresh.macro_f1: 0.7}"])
    assert config.artifact_root == f"{tmp_path}/artifacts"
    assert config.train.epochs == 3.0 and config.train.nproc_per_node == 2
    assert config.evaluate.gate.floors == {"fresh.macro_f1": 0.7}
    assert config.crawl.sources[0].url.endswith("/")


@pytest.mark.parametrize(("override", "named"), [
    ("train.epochs=many", "train.epochs"),
    ("train.unknown_knob=1", "train.unknown_knob"),
    ("labels=[a, a]", "labels"),
    ("crawl.sources=[{name: s, url: ftp://x}]", "crawl.sources.0.jsonl_feed.url"),  # the kind it was read as
])
def test_bad_config_names_the_field(config_file, override, named):
    with pytest.raises(ConfigError, match=named.replace(".", r"\.")):
        load_config(config_file, [override])


def test_missing_or_malformed_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    (tmp_path / "bad.yaml").write_text("labels: [a, b\n")
    with pytest.raises(ConfigError, match="bad.yaml: not valid YAML"):
        load_config(tmp_path / "bad.yaml")


def test_config_hash_changes_with_content(config_file):
    assert load_config(config_file).config_hash == load_config(config_file).config_hash
    assert load_config(config_file).config_hash != load_config(config_file, ["train.epochs=9"]).config_hash


def _writer(calls: list[int], payload: str):
    def body(context: StepContext) -> None:
        calls.append(1)
        (context.out_dir / "out.txt").write_text(payload)
        context.add_output("out", "out.txt", "file")
        context.metrics["length"] = len(payload)
    return body


def test_rerun_with_same_inputs_returns_the_stored_manifest_without_recomputing(config_file):
    config = load_config(config_file)
    store = ArtifactStore(config.artifact_root)
    calls: list[int] = []
    first = execute("demo", _writer(calls, "x"), config, {}, run_id="r1", store=store, config_sections=("clean",))
    again = execute("demo", _writer(calls, "x"), config, {}, run_id="r1", store=store, config_sections=("clean",))
    assert calls == [1] and again.reused and again.fingerprint == first.fingerprint
    assert again.model_dump(exclude={"reused"}) == first.model_dump(exclude={"reused"})
    changed = execute("demo", _writer(calls, "y"), config, {"up": first}, run_id="r1", store=store)
    assert calls == [1, 1] and changed.fingerprint != first.fingerprint
    assert store.local_path(changed.output("out").uri).read_text() == "y"


def test_a_failing_step_leaves_the_previous_commit_intact(config_file):
    config = load_config(config_file)
    store = ArtifactStore(config.artifact_root)
    good = execute("demo", _writer([], "kept"), config, {}, run_id="r2", store=store)

    def broken(context: StepContext) -> None:
        (context.out_dir / "out.txt").write_text("half-written")
        raise StepError("row 7: field text is empty")

    with pytest.raises(StepError, match="row 7"):
        execute("demo", broken, config, {"up": good}, run_id="r2", store=store)
    assert read_manifest(store, "r2", "demo").fingerprint == good.fingerprint
    assert store.local_path(good.output("out").uri).read_text() == "kept"
    leftovers = [p.name for p in store.local_path(good.uri).parents[1].iterdir() if "staging" in p.name]
    assert leftovers == []


def test_missing_output_file_is_an_error_naming_it(config_file):
    config = load_config(config_file)

    def forgetful(context: StepContext) -> None:
        context.add_output("model", "model", "model")

    with pytest.raises(StepError, match="output 'model' was not written"):
        execute("demo", forgetful, config, {}, run_id="r3", store=ArtifactStore(config.artifact_root))


def test_step_cli_reports_a_missing_upstream_manifest(config_file, capsys):
    from tasks import evaluate

    code = evaluate.main(["--config", str(config_file), "--run-id", "nope", "--input", "train", "--input", "clean"])
    assert code == 2
    assert "input 'train': no manifest for run 'nope'" in capsys.readouterr().err


def test_freshet_command_lists_steps(capsys):
    from tasks.cli import main

    assert main(["--help"]) == 0
    assert "rollback" in capsys.readouterr().out
    assert main(["step", "bogus"]) == 2
