"""tasks.validate on tiny batches: one real validation, then many small assertions on what it wrote."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pyarrow as pa
import pytest
import yaml

from tasks import validate
from tasks.config import PipelineConfig
from tasks.contract import StepContext, execute, read_manifest
from tasks.manifest import Manifest, StepError
from tasks.monitoring import drift
from tasks.records import QUARANTINE_SCHEMA, RECORD_SCHEMA, read_rows, write_parquet
from tasks.snapshots import record_snapshot
from tasks.store import ArtifactStore, digest_path
from tasks.validation.expectations import printable_ratio
from tests.pipeline_support import dataset_inputs

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
    record("binary", "PK\x03\x04\x00\x00\x08\x00\ufffd\ufffdok", "libs"),  # between(printable_ratio)
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
    ("expect_column_values_to_be_between", "printable_ratio", ["binary"]),
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
    assert (metrics["rows_in"], metrics["rows_valid"], metrics["rows_quarantined"]) == (14, 5, 9)
    assert metrics["quarantine_fraction"] == pytest.approx(9 / 14)
    assert metrics["failed.expect_column_values_to_be_between"] == 1
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


def test_mlflow_run_has_the_batch_and_valid_snapshots_as_dataset_inputs(validated: dict[str, Any]) -> None:
    config = validated["config"]
    mlflow.set_tracking_uri(config.mlflow.tracking_uri)
    [run] = mlflow.search_runs(search_all_experiments=True, output_format="list",
                               filter_string="tags.`freshet.step` = 'validate' and tags.`freshet.run_id` = 'run-1'")
    inputs = dataset_inputs(run)
    assert set(inputs) == {"input", "output"}
    for context, ref, name in (("input", validated["crawl"].output("records"), "freshet.records"),
                               ("output", validated["manifest"].output("valid"), "freshet.valid")):
        assert inputs[context][:2] == (name, json.dumps({"uri": ref.uri}))
        assert ref.digest.removeprefix("sha256:").startswith(inputs[context][2]) and inputs[context][3] == ref.digest
    artifacts = {item.path for item in mlflow.MlflowClient().list_artifacts(run.info.run_id)}
    assert {"gx_result.json", "validation_report.html", "quarantine.parquet", "manifest.json"} <= artifacts


def test_html_report_lists_every_expectation_with_bounds_observed_success_and_ids(validated: dict[str, Any]) -> None:
    report = validated["store"].local_path(validated["manifest"].output("validation_report").uri).read_text()
    assert "run-1</code>: <span class=\"passed\">accepted</span>" in report
    assert "http" not in report  # self-contained: opens offline
    rows = {cells[0]: cells for cells in re.findall(
        r"<tr><td>(.*?)</td><td>(.*?)</td><td>(.*?)</td><td>(.*?)</td><td>(.*?)</td><td>(.*?)</td></tr>", report)}
    result = json.loads(validated["store"].local_path(validated["manifest"].output("gx_result").uri).read_text())
    assert len(re.findall(r"<tr><td>expect_", report)) == len(result["results"]) == 9
    lengths = rows["expect_column_value_lengths_to_be_between"]
    assert lengths[1:3] == ("text", "min_value=3<br>max_value=80")
    assert lengths[3].startswith("3 of 14 unexpected") and "failed" in lengths[4]
    assert re.search(r"<summary>3 rows</summary><code>short, long, twice</code>", lengths[5])
    unique_ids = rows["expect_column_values_to_be_unique"]
    assert "<code>dup</code>" in unique_ids[5]  # only the second occurrence is quarantined
    assert "row 6 (null id)" in report  # a row with no id is named by its position
    columns = rows["expect_table_columns_to_match_set"]
    assert "passed" in columns[4] and columns[5] == "0"
    unique_texts = rows["expect_column_proportion_of_unique_values_to_be_between"]
    assert unique_texts[2] == "min_value=0.8<br>max_value=1" and unique_texts[3] == "1"
    assert re.search(r"<tr><td>drift.label_psi</td><td>validate.max_label_psi = 0.25</td><td>&mdash;</td>"
                     r"<td><span class=\"skipped\">skipped</span></td><td>no accepted history yet", report)


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
    assert "quarantined fraction 0.643 (9 of 14 rows) > validate.max_quarantine_fraction=0.2" in message
    assert "expect_column_value_lengths_to_be_between(text): 3 rows, e.g. ids ['short', 'long', 'twice']" in message
    assert "expect_column_values_to_be_in_set(label): 2 rows, e.g. ids ['unknown', 'twice']" in message
    failed_dir = store.local_path(store.step_uri("run-bad", validate.FAILED_STEP))
    assert str(failed_dir) in message
    assert len(read_rows(failed_dir / "quarantine.parquet")) == 10
    assert json.loads((failed_dir / "gx_result.json").read_text())["success"] is False
    report = (failed_dir / "validation_report.html").read_text()
    assert '<span class="failed">rejected</span>' in report and "Why the batch was rejected" in report
    assert "quarantined fraction 0.643 (9 of 14 rows) &gt; validate.max_quarantine_fraction=0.2" in report
    assert validate.RejectedBatchFacts.of(read_manifest(store, "run-bad", validate.FAILED_STEP)).error in message
    # Committed through the contract like a step's outputs (digests, no staging left), once per validate attempt:
    # the retry of the same batch rejects it again and keeps the first record.
    failed = read_manifest(store, "run-bad", validate.FAILED_STEP)
    assert failed is not None and failed.step == validate.FAILED_STEP
    assert {name: ref.digest for name, ref in failed.outputs.items()} == {
        name: digest_path(failed_dir / file) for name, file in (("quarantine", "quarantine.parquet"),
                                                                ("gx_result", "gx_result.json"),
                                                                ("validation_report", "validation_report.html"))}
    assert list(Path(config.artifact_root).glob("runs/run-bad/.*")) == []
    with pytest.raises(StepError, match="quarantined fraction 0.643"):
        validate.run(config, {"crawl": crawl}, run_id="run-bad", store=store)
    assert read_manifest(store, "run-bad", validate.FAILED_STEP) == failed
    assert read_manifest(store, "run-bad", "validate") is None
    mlflow.set_tracking_uri(config.mlflow.tracking_uri)
    [run] = mlflow.search_runs(search_all_experiments=True, output_format="list",
                               filter_string="tags.`freshet.step` = 'validate' and tags.`freshet.run_id` = 'run-bad'")
    assert (run.info.status, run.data.tags["freshet.status"]) == ("FAILED", "rejected")
    assert run.data.metrics["quarantine_fraction"] == pytest.approx(9 / 14)
    assert set(dataset_inputs(run)) == {"input"}  # the rejected batch; there are no valid rows
    artifacts = {item.path for item in mlflow.MlflowClient().list_artifacts(run.info.run_id, validate.FAILED_STEP)}
    assert f"{validate.FAILED_STEP}/validation_report.html" in artifacts


def test_printable_ratio_failure_names_the_ratio(validated: dict[str, Any]) -> None:
    [binary] = [row for row in validated["quarantine"] if row["id"] == "binary"]
    assert binary["value"] == "0.333" and "below validate.min_printable_ratio=0.9" in binary["reason"]
    assert printable_ratio("plain text, ünïcödé — fine\t") == 1.0


def test_first_run_reports_drift_skipped_not_passed(validated: dict[str, Any]) -> None:
    facts = validate.ValidateFacts.of(validated["manifest"])
    checks = {check.name: check for check in facts.batch_checks}
    for name in ("drift.label_psi", "drift.length_psi"):
        assert checks[name].verdict == "skipped" and "first run" in checks[name].detail
        assert validated["manifest"].metrics[name] is None
    assert checks["duplicate_fraction"].verdict == "passed"
    result = json.loads(validated["store"].local_path(validated["manifest"].output("gx_result").uri).read_text())
    assert result["freshet_batch_checks"] == [check.model_dump() for check in facts.batch_checks]


def test_too_many_duplicate_texts_reject_the_batch(tmp_path: Path, tracking: Path) -> None:
    config = make_config(tmp_path, tracking)
    store = ArtifactStore(config.artifact_root)
    rows = [record(f"d{number}", f"text number {number % 7}", "libs") for number in range(10)]  # 3 repeats
    crawl = crawl_manifest(config, store, "run-dups", rows)
    with pytest.raises(StepError, match=r"duplicate_fraction 0\.300 > validate\.max_duplicate_fraction=0\.2"):
        validate.run(config, {"crawl": crawl}, run_id="run-dups", store=store)


def test_new_label_policy_reject_names_the_unknown_labels(tmp_path: Path, tracking: Path) -> None:
    config = make_config(tmp_path, tracking, validate={"max_text_chars": 80, "new_labels": "reject"})
    store = ArtifactStore(config.artifact_root)
    crawl = crawl_manifest(config, store, "run-new", [*MIXED_BATCH[:4], record("g1", "a game", "games"),
                                                      record("g2", "a puzzle", "games"), record("x1", "a font", "fonts")])
    with pytest.raises(StepError, match=r"unknown labels \['fonts', 'games'\] in 3 rows \(validate.new_labels=reject"):
        validate.run(config, {"crawl": crawl}, run_id="run-new", store=store)


# ------------------------------------------------------------------------------------------ drift


def sized_text(number: int, length: int) -> str:
    return (f"item {number} " + "lorem ipsum dolor sit amet " * 4)[:length]


REFERENCE = [record(f"ref-{number}", sized_text(number, 12 + number * 7 % 49), LABELS[number % 3])
             for number in range(400)]


@pytest.fixture(scope="module")
def with_history(tmp_path_factory: pytest.TempPathFactory, tracking: Path) -> dict[str, Any]:
    """A store whose history holds one accepted snapshot: balanced labels, lengths 12..60."""
    config = make_config(tmp_path_factory.mktemp("drift"), tracking)
    store = ArtifactStore(config.artifact_root)
    uri = store.step_uri("history-1", "clean", "dataset.parquet")
    write_parquet(REFERENCE, store.local_path(uri), schema=RECORD_SCHEMA)
    record_snapshot(store, {"run_id": "history-1", "logical_date": "2026-01-01", "uri": uri,
                            "digest": "sha256:reference", "rows": len(REFERENCE)})
    return {"config": config, "store": store}


def validate_against_history(with_history: dict[str, Any], run_id: str, rows: Sequence[Mapping[str, Any]]) -> Manifest:
    config, store = with_history["config"], with_history["store"]
    crawl = crawl_manifest(config, store, run_id, rows)
    return validate.run(config, {"crawl": crawl}, run_id=run_id, store=store, logical_date="2026-01-02")


def test_a_batch_like_the_reference_passes_with_drift_recorded(with_history: dict[str, Any]) -> None:
    batch = [record(f"new-{number}", sized_text(number + 1000, 12 + number * 7 % 49), LABELS[number % 3])
             for number in range(300)]
    manifest = validate_against_history(with_history, "run-same", batch)
    assert 0 <= manifest.metrics["drift.label_psi"] < 0.01 and 0 <= manifest.metrics["drift.length_psi"] < 0.05
    assert validate.ValidateFacts.of(manifest).drift_reference == validate.DriftReference(snapshots=["history-1"], rows=400)


@pytest.mark.parametrize(("check", "make_row"), [
    # Every row one label: the label mix drifts, lengths do not.
    ("drift.label_psi", lambda number: record(f"lab-{number}", sized_text(number + 1000, 12 + number * 7 % 49), "libs")),
    # Every text longer than any reference text: lengths drift, labels do not.
    ("drift.length_psi", lambda number: record(f"len-{number}", sized_text(number + 1000, 65 + number % 15),
                                               LABELS[number % 3])),
])
def test_drift_rejects_the_batch_naming_the_psi_and_bound(with_history: dict[str, Any], check: str, make_row: Any) -> None:
    with pytest.raises(StepError) as caught:
        validate_against_history(with_history, f"run-{check}", [make_row(number) for number in range(300)])
    setting = check.replace("drift.", "max_")
    assert re.search(rf"{re.escape(check)} \d+\.\d{{3}} > validate\.{setting}=0\.25 \(300 valid rows vs 400", str(caught.value))
    other = "drift.length_psi" if check == "drift.label_psi" else "drift.label_psi"
    assert f"{other} " not in str(caught.value)  # only the drifted distribution is named
    failed = read_manifest(with_history["store"], f"run-{check}", validate.FAILED_STEP)
    assert failed.metrics[check] > 0.25 and failed.metrics[other] < 0.25


def test_a_small_batch_skips_drift(with_history: dict[str, Any]) -> None:
    batch = [record(f"small-{number}", sized_text(number + 1000, 70), "libs") for number in range(50)]
    manifest = validate_against_history(with_history, "run-small", batch)  # would drift on both
    checks = {check.name: check for check in validate.ValidateFacts.of(manifest).batch_checks}
    assert checks["drift.label_psi"].verdict == "skipped"
    assert checks["drift.length_psi"].detail == "50 valid rows < validate.drift_min_rows=200"
    assert manifest.metrics["drift.label_psi"] is None


def test_psi_is_zero_for_equal_and_grows_with_shift() -> None:
    # validate's drift checks use the monitor's PSI (tasks.monitoring.drift).
    assert drift.label_psi(["a", "b"] * 50, ["b", "a"] * 10) == pytest.approx(0)
    # Empty bins use an epsilon instead of dividing by zero.
    assert 0 < drift.label_psi(["a", "b"] * 50, ["a"] * 20) < float("inf")
    reference = np.arange(100)
    assert drift.length_psi(reference, np.arange(0, 100, 5), 10) == pytest.approx(0)
    assert drift.length_psi(reference, np.arange(90, 100), 10) > 1


def test_an_empty_batch_is_rejected_unless_the_run_is_forced(tmp_path: Path, tracking: Path) -> None:
    config = make_config(tmp_path, tracking)
    store = ArtifactStore(config.artifact_root)
    crawl = crawl_manifest(config, store, "run-empty", [])
    with pytest.raises(StepError, match=r"0 rows, fewer than validate.min_rows=1 \(did the crawl find nothing new\?\)"):
        validate.run(config, {"crawl": crawl}, run_id="run-empty", store=store)
    # A forced retry after a fix brings no new files: the empty batch passes, no check judges zero rows.
    accepted = validate.run(config, {"crawl": crawl}, run_id="run-empty", store=store, allow_empty=True)
    assert accepted.metrics["rows_in"] == 0 and accepted.output("valid").rows == 0
    assert {check.name: check.verdict for check in validate.ValidateFacts.of(accepted).batch_checks}[
        "duplicate_fraction"] == "skipped"


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
