"""tasks.validate on tiny batches: one real validation, then many small assertions on what it wrote."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import mlflow
import pyarrow as pa
import pytest
import yaml

from tasks import validate
from tasks.config import PipelineConfig
from tasks.contract import Manifest, StepContext, StepError, execute, read_manifest
from tasks.data import QUARANTINE_SCHEMA, RECORD_SCHEMA, read_rows, write_parquet
from tasks.store import ArtifactStore

LABELS = ["libs", "utils", "net"]


def record(record_id: str | None, text: str | None, label: str | None) -> dict[str, Any]:
    return {"id": record_id, "text": text, "label": label, "source": "t",
            "fetched_at": "2026-11-25T00:00:00Z", "content_hash": "h"}


# One batch exercising every expectation; the comment says which check each row fails.
MIXED_BATCH = [
    record("ok-1", "terminal multiplexer", "utils"),
    record("ok-2", "HTTP client library", "libs"),
    record("ok-3", "network packet capture tool", "net"),
    record("ok-4", "compression library", "libs"),
    record("dup", "first occurrence is kept", "utils"),
    record("dup", "second occurrence goes", "utils"),       # unique(id)
    record(None, "a row without an id", "net"),             # not_null(id)
    record("no-text", None, "libs"),                        # not_null(text)
    record("no-label", "a row without a label", None),      # not_null(label)
    record("short", "ab", "libs"),                          # length(text)
    record("long", "x" * 81, "libs"),                       # length(text)
    record("unknown", "label outside the set", "games"),    # in_set(label)
    record("twice", "z", "games"),                          # length(text) and in_set(label)
]
CRAWL_QUARANTINE = [{"id": "bad-json", "source": "t", "step": "crawl", "check": "crawl.parse", "field": None,
                     "value": "{oops", "reason": "not JSON", "record_json": "{oops"}]


def make_config(root: Path, tracking: Path, **overrides: Any) -> PipelineConfig:
    return PipelineConfig.model_validate({
        "labels": LABELS,
        "artifact_root": str(root / "artifacts"),
        "mlflow": {"tracking_uri": f"sqlite:///{tracking}/mlflow.db",
                   "artifact_location": str(tracking / "mlartifacts")},
        "crawl": {"sources": [{"name": "t", "url": "http://127.0.0.1:1/"}]},
        "validate": {"min_text_chars": 3, "max_text_chars": 80, "max_quarantine_fraction": 0.9},
        **overrides,
    })


def crawl_manifest(config: PipelineConfig, store: ArtifactStore, run_id: str,
                   rows: Sequence[Mapping[str, Any]] | pa.Table,
                   quarantine: Sequence[Mapping[str, Any]] = ()) -> Manifest:
    """A real crawl manifest (through `execute`) whose records are `rows`."""
    def body(ctx: StepContext) -> None:
        schema = None if isinstance(rows, pa.Table) else RECORD_SCHEMA
        write_parquet(rows, ctx.out_dir / "records.parquet", schema=schema)
        ctx.add_output("records", "records.parquet", "dataset", rows=len(rows))
        if quarantine:
            write_parquet(quarantine, ctx.out_dir / "quarantine.parquet", schema=QUARANTINE_SCHEMA)
            ctx.add_output("quarantine", "quarantine.parquet", "dataset", rows=len(quarantine))

    return execute("crawl", body, config, {}, run_id=run_id, store=store, extra_fingerprint={"rows": str(rows)})


@pytest.fixture(scope="module")
def tracking(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One MLflow database per pytest session, shared by the step test modules (creating one costs seconds)."""
    directory = tmp_path_factory.getbasetemp() / "mlflow"
    directory.mkdir(exist_ok=True)
    return directory


@pytest.fixture(scope="module")
def validated(tmp_path_factory: pytest.TempPathFactory, tracking: Path) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("validated")
    config = make_config(root, tracking)
    store = ArtifactStore(config.artifact_root)
    crawl = crawl_manifest(config, store, "run-1", MIXED_BATCH, CRAWL_QUARANTINE)
    manifest = validate.run(config, {"crawl": crawl}, run_id="run-1", store=store)
    return {"config": config, "store": store, "crawl": crawl, "manifest": manifest,
            "valid": read_rows(store.local_path(manifest.output("valid").uri)),
            "quarantine": read_rows(store.local_path(manifest.output("quarantine").uri))}


def quarantined_ids(validated: Mapping[str, Any], check: str, field: str) -> list[str | None]:
    return [row["id"] for row in validated["quarantine"] if row["check"] == check and row["field"] == field]


@pytest.mark.parametrize(("check", "field", "ids"), [
    ("expect_column_values_to_not_be_null", "id", [None]),
    ("expect_column_values_to_not_be_null", "text", ["no-text"]),
    ("expect_column_values_to_not_be_null", "label", ["no-label"]),
    ("expect_column_values_to_be_unique", "id", ["dup"]),
    ("expect_column_value_lengths_to_be_between", "text", ["short", "long", "twice"]),
    ("expect_column_values_to_be_in_set", "label", ["unknown", "twice"]),
])
def test_each_expectation_quarantines_its_rows(validated: dict[str, Any], check: str, field: str, ids: list) -> None:
    assert quarantined_ids(validated, check, field) == ids


def test_valid_rows_are_the_rest_and_duplicate_ids_keep_the_first(validated: dict[str, Any]) -> None:
    assert [row["id"] for row in validated["valid"]] == ["ok-1", "ok-2", "ok-3", "ok-4", "dup"]
    assert next(row for row in validated["valid"] if row["id"] == "dup")["text"] == "first occurrence is kept"


def test_quarantine_rows_carry_value_reason_and_the_original_record(validated: dict[str, Any]) -> None:
    unknown = next(row for row in validated["quarantine"] if row["id"] == "unknown")
    assert unknown["step"] == "validate" and unknown["value"] == "games"
    assert "not one of the configured labels" in unknown["reason"]
    assert json.loads(unknown["record_json"]) == record("unknown", "label outside the set", "games")
    # One quarantine row per failed expectation: "twice" fails two.
    assert sum(row["id"] == "twice" for row in validated["quarantine"]) == 2


def test_crawl_quarantine_is_carried_over(validated: dict[str, Any]) -> None:
    assert validated["quarantine"][0] == CRAWL_QUARANTINE[0]
    assert validated["manifest"].metrics["rows_quarantined_by_crawl"] == 1


def test_metrics_count_rows_and_failures_per_expectation(validated: dict[str, Any]) -> None:
    metrics = validated["manifest"].metrics
    assert (metrics["rows_in"], metrics["rows_valid"], metrics["rows_quarantined"]) == (13, 5, 8)
    assert metrics["quarantine_fraction"] == pytest.approx(8 / 13)
    assert metrics["failed.expect_column_values_to_be_in_set"] == 2
    assert metrics["failed.expect_column_values_to_not_be_null"] == 3
    assert metrics["failed.expect_column_values_to_be_unique"] == 1
    assert metrics["failed.expect_table_columns_to_match_set"] == 0


def test_gx_result_is_plain_json_with_failing_ids(validated: dict[str, Any]) -> None:
    result_ref = validated["manifest"].output("gx_result")
    result = json.loads(validated["store"].local_path(result_ref.uri).read_text())
    assert result["success"] is False and result_ref.meta == {"success": False}
    in_set = next(item for item in result["results"]
                  if item["expectation_config"]["type"] == "expect_column_values_to_be_in_set")
    assert [index["id"] for index in in_set["result"]["unexpected_index_list"]] == ["unknown", "twice"]


def test_mlflow_run_has_the_valid_dataset_as_input(validated: dict[str, Any]) -> None:
    config = validated["config"]
    mlflow.set_tracking_uri(config.mlflow.tracking_uri)
    [run] = mlflow.search_runs(search_all_experiments=True, output_format="list",
                               filter_string="tags.`freshet.step` = 'validate' and tags.`freshet.run_id` = 'run-1'")
    [dataset_input] = run.inputs.dataset_inputs
    assert dataset_input.dataset.source == json.dumps({"uri": validated["manifest"].output("valid").uri})
    assert {tag.key: tag.value for tag in dataset_input.tags}["mlflow.data.context"] == "validate"
    artifacts = {item.path for item in mlflow.MlflowClient().list_artifacts(run.info.run_id)}
    assert {"gx_result.json", "quarantine.parquet", "manifest.json"} <= artifacts


def test_rerun_with_same_inputs_is_reused(validated: dict[str, Any]) -> None:
    again = validate.run(validated["config"], {"crawl": validated["crawl"]}, run_id="run-1", store=validated["store"])
    assert again.reused and again.fingerprint == validated["manifest"].fingerprint


def test_too_many_quarantined_rows_reject_the_batch_and_keep_the_evidence(tmp_path: Path, tracking: Path) -> None:
    config = make_config(tmp_path, tracking, validate={"max_text_chars": 80, "max_quarantine_fraction": 0.2})
    store = ArtifactStore(config.artifact_root)
    crawl = crawl_manifest(config, store, "run-bad", MIXED_BATCH)
    with pytest.raises(StepError) as caught:
        validate.run(config, {"crawl": crawl}, run_id="run-bad", store=store)
    message = str(caught.value)
    assert "quarantined fraction 0.615 (8 of 13 rows) > validate.max_quarantine_fraction=0.2" in message
    assert "expect_column_value_lengths_to_be_between(text): 3 rows, e.g. ids ['short', 'long', 'twice']" in message
    assert "expect_column_values_to_be_in_set(label): 2 rows, e.g. ids ['unknown', 'twice']" in message
    failed_dir = store.local_path(store.step_uri("run-bad", validate.FAILED_STEP))
    assert str(failed_dir) in message
    assert len(read_rows(failed_dir / "quarantine.parquet")) == 9
    assert json.loads((failed_dir / "gx_result.json").read_text())["success"] is False
    assert read_manifest(store, "run-bad", validate.FAILED_STEP).facts["error"] in message
    assert read_manifest(store, "run-bad", "validate") is None
    mlflow.set_tracking_uri(config.mlflow.tracking_uri)
    [run] = mlflow.search_runs(search_all_experiments=True, output_format="list",
                               filter_string="tags.`freshet.step` = 'validate' and tags.`freshet.run_id` = 'run-bad'")
    assert (run.info.status, run.data.tags["freshet.status"]) == ("FAILED", "rejected")
    assert run.data.metrics["quarantine_fraction"] == pytest.approx(8 / 13)


def test_an_empty_batch_is_rejected(tmp_path: Path, tracking: Path) -> None:
    config = make_config(tmp_path, tracking)
    store = ArtifactStore(config.artifact_root)
    crawl = crawl_manifest(config, store, "run-empty", [])
    with pytest.raises(StepError, match=r"0 rows, fewer than validate.min_rows=1 \(did the crawl find nothing new\?\)"):
        validate.run(config, {"crawl": crawl}, run_id="run-empty", store=store)


def test_missing_columns_reject_the_batch(tmp_path: Path, tracking: Path) -> None:
    config = make_config(tmp_path, tracking)
    store = ArtifactStore(config.artifact_root)
    crawl = crawl_manifest(config, store, "run-schema", pa.table({"id": ["a"], "text": ["some text"]}))
    with pytest.raises(StepError, match=r"missing columns \['content_hash', 'fetched_at', 'label', 'source'\]"):
        validate.run(config, {"crawl": crawl}, run_id="run-schema", store=store)


def write_config_file(config: PipelineConfig, path: Path) -> Path:
    path.write_text(yaml.safe_dump(config.to_dict()))
    return path


def test_cli_prints_the_manifest_last(tmp_path: Path, tracking: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = make_config(tmp_path, tracking)
    crawl_manifest(config, ArtifactStore(config.artifact_root), "run-cli", MIXED_BATCH[:4])
    config_file = write_config_file(config, tmp_path / "pipeline.yaml")
    assert validate.main(["--config", str(config_file), "--run-id", "run-cli", "--input", "crawl"]) == 0
    manifest = Manifest.model_validate_json(capsys.readouterr().out.strip().splitlines()[-1])
    assert manifest.step == "validate" and manifest.output("valid").rows == 4


def test_cli_exits_2_with_a_clear_message_on_bad_input(tmp_path: Path, tracking: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    config_file = write_config_file(make_config(tmp_path, tracking), tmp_path / "pipeline.yaml")
    assert validate.main(["--config", str(config_file), "--run-id", "no-such-run", "--input", "crawl"]) == 2
    assert "freshet validate: error: input 'crawl': no manifest for run 'no-such-run'" in capsys.readouterr().err
