"""tasks.clean: normalisation rules, exact and near de-duplication within a batch and against history,
leakage control, PII scrubbing, stable splits."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml

from tasks import clean
from tasks.config import CleanConfig, PipelineConfig
from tasks.contract import StepContext, execute
from tasks.manifest import Manifest, StepError
from tasks.records import RECORD_SCHEMA, CleanFacts, content_hash, read_rows, split_of, write_parquet
from tasks.snapshots import read_history, record_snapshot
from tasks.store import ArtifactStore
from tasks.text import PII_RULES, jaccard, normalise, scrub_pii, shingles
from tests.pipeline_support import accepted_batch_facts, dataset_inputs, step_mlflow_run

LABELS = ["libs", "utils", "net"]


def record(record_id: str, text: str, label: str) -> dict[str, Any]:
    return {"id": record_id, "text": text, "label": label, "source": "t",
            "fetched_at": "2026-11-25T00:00:00Z", "content_hash": content_hash(text)}


def make_config(root: Path, tracking: Path, **overrides: Any) -> PipelineConfig:
    return PipelineConfig.model_validate({
        "labels": LABELS,
        "artifact_root": str(root / "artifacts"),
        "mlflow": {"tracking_uri": f"sqlite:///{tracking}/mlflow.db",
                   "artifact_location": str(tracking / "mlartifacts")},
        "crawl": {"sources": [{"name": "t", "url": "http://127.0.0.1:1/"}]},
        **overrides,
    })


def validate_manifest(config: PipelineConfig, store: ArtifactStore, run_id: str,
                      rows: Sequence[Mapping[str, Any]], logical_date: str | None = None) -> Manifest:
    """A real validate manifest (through `execute`) whose valid rows are `rows`."""
    def body(ctx: StepContext) -> None:
        write_parquet(rows, ctx.out_dir / "valid.parquet", schema=RECORD_SCHEMA)
        ctx.add_output("valid", "valid.parquet", "dataset", rows=len(rows))
        ctx.facts.update(accepted_batch_facts())

    return execute("validate", body, config, {}, run_id=run_id, store=store, logical_date=logical_date,
                   extra_fingerprint={"rows": str(rows)})


# ------------------------------------------------------------------------------- normalisation


@pytest.mark.parametrize(("raw", "expected", "rules"), [
    ("<p>Fast&nbsp;<b>JSON</b> parser &amp; printer</p>", "Fast JSON parser & printer",
     {"markup_stripped", "unicode_changed", "whitespace_collapsed"}),
    ("line one<br/>line two", "line one line two", {"markup_stripped"}),
    ("<script>alert(1)</script>safe text<!-- note -->", "safe text", {"markup_stripped", "whitespace_collapsed"}),
    ("written by <jane@debian.org>, uses vector<T>", "written by <jane@debian.org>, uses vector<T>", set()),
    ("&lt;b&gt; is an encoded tag", "<b> is an encoded tag", {"markup_stripped"}),
    ("ﬁle ｆｕｌｌwidth ①", "file fullwidth 1", {"unicode_changed"}),
    ("bell\x07 and null\x00 and zero\u200bwidth", "bell and null and zerowidth", {"control_chars_removed"}),
    ("  tabs\tand\n\nnewlines  ", "tabs and newlines", {"whitespace_collapsed"}),
])
def test_normalise(raw: str, expected: str, rules: set[str]) -> None:
    normalised = normalise(raw, CleanConfig())
    assert normalised.text == expected
    assert normalised.changed_by == rules


def test_normalise_options() -> None:
    options = CleanConfig(strip_markup=False, unicode_form="NFC", lowercase=True)
    assert normalise("<b>ＡBC</b>", options).text == "<b>ａbc</b>"


# ---------------------------------------------------------------------------------- one batch

BATCH = [
    record("a", "<b>Terminal</b> multiplexer", "utils"),
    record("b", "Terminal   multiplexer", "utils"),         # duplicate of a after normalisation
    record("c", "HTTP client library", "libs"),
    record("d", "http client library", "libs"),             # not an exact duplicate, but a near-duplicate
    record("e", "packet capture", "net"),
    record("f", "packet  capture", "libs"),                 # same text as e, other label: both quarantined
    record("g", "<i>ab</i>", "libs"),                       # too short once the markup is gone
    # Distinct texts ("bulk text number 1" and "... 2" would be near-duplicates of each other).
    *(record(f"bulk-{number}", f"bulk text {content_hash(str(number))[:16]}", "libs") for number in range(40)),
]


@pytest.fixture(scope="module")
def cleaned(tmp_path_factory: pytest.TempPathFactory, tracking: Path) -> dict[str, Any]:
    config = make_config(tmp_path_factory.mktemp("cleaned"), tracking)
    store = ArtifactStore(config.artifact_root)
    upstream = validate_manifest(config, store, "clean-1", BATCH)
    manifest = clean.run(config, {"validate": upstream}, run_id="clean-1", store=store)
    return {"config": config, "store": store, "upstream": upstream, "manifest": manifest,
            "dataset": read_rows(store.local_path(manifest.output("dataset").uri)),
            "quarantine": read_rows(store.local_path(manifest.output("quarantine").uri)),
            "report": json.loads(store.local_path(manifest.output("clean_report").uri).read_text())}


def test_in_batch_duplicates_keep_the_first(cleaned: dict[str, Any]) -> None:
    by_id = {row["id"]: row for row in cleaned["dataset"]}
    assert "b" not in by_id and by_id["a"]["text"] == "Terminal multiplexer"
    # c and d differ only in case: not exact duplicates, but near-duplicates (shingles are casefolded).
    assert "c" in by_id and "d" not in by_id
    assert cleaned["report"]["counts"]["near_duplicates_in_batch"] == 1
    assert cleaned["report"]["counts"]["duplicates_in_batch"] == 1
    assert cleaned["report"]["examples"]["duplicates_in_batch"] == ["b"]


def test_label_conflicts_quarantine_every_member(cleaned: dict[str, Any]) -> None:
    conflicts = [row for row in cleaned["quarantine"] if row["check"] == "clean.label_conflict"]
    assert [(row["id"], row["value"]) for row in conflicts] == [("e", "net"), ("f", "libs")]
    assert "['e', 'f']" in conflicts[0]["reason"]
    assert json.loads(conflicts[1]["record_json"])["text"] == "packet  capture"


def test_too_short_after_cleaning_is_quarantined(cleaned: dict[str, Any]) -> None:
    [short] = [row for row in cleaned["quarantine"] if row["check"] == "clean.too_short"]
    assert (short["id"], short["field"], short["value"]) == ("g", "text", "ab")


def test_every_input_row_is_kept_quarantined_or_counted(cleaned: dict[str, Any]) -> None:
    counts = cleaned["report"]["counts"]
    removed = sum(counts[rule] for rule in clean.REMOVAL_RULES)
    assert len(cleaned["dataset"]) + removed == len(BATCH)
    assert sum(counts[rule] for rule in clean.QUARANTINE_RULES) == len(cleaned["quarantine"])
    assert len(cleaned["dataset"]) == 1 + 1 + 40  # a, c and the bulk rows


def test_dataset_has_stable_splits_and_normalised_hashes(cleaned: dict[str, Any]) -> None:
    config = cleaned["config"]
    for row in cleaned["dataset"]:
        assert row["split"] == split_of(row["id"], config.split)
        assert row["normalized_hash"] == content_hash(row["text"])
    metrics = cleaned["manifest"].metrics
    assert sum(metrics[f"rows_{split}"] for split in ("train", "validation", "test")) == metrics["rows_out"]
    assert metrics["rows_train"] > 0 and metrics["markup_stripped"] == 2


def test_mlflow_run_has_the_valid_and_cleaned_snapshots_as_dataset_inputs(cleaned: dict[str, Any]) -> None:
    run = step_mlflow_run(cleaned["config"].mlflow.tracking_uri, "clean", "clean-1")
    inputs = {context: (name, source, digest) for context, (name, source, _, digest) in dataset_inputs(run).items()}
    valid, dataset = cleaned["upstream"].output("valid"), cleaned["manifest"].output("dataset")
    assert inputs == {"input": ("freshet.valid", json.dumps({"uri": valid.uri}), valid.digest),
                      "output": ("freshet.dataset", json.dumps({"uri": dataset.uri}), dataset.digest)}


def test_rerun_is_reused_and_the_snapshot_recorded_once(cleaned: dict[str, Any]) -> None:
    again = clean.run(cleaned["config"], {"validate": cleaned["upstream"]}, run_id="clean-1", store=cleaned["store"])
    assert again.reused and again.fingerprint == cleaned["manifest"].fingerprint
    assert [(entry["run_id"], entry["digest"]) for entry in read_history(cleaned["store"])] == [
        ("clean-1", cleaned["manifest"].output("dataset").digest)]


# ------------------------------------------------------------------------------------- history


def test_history_duplicates_are_removed_and_known_ids_updated(tmp_path: Path, tracking: Path) -> None:
    config = make_config(tmp_path, tracking)
    store = ArtifactStore(config.artifact_root)
    day_one = [record("p1", "text seen on day one", "libs"), record("p2", "old text of p2", "net")]
    first = clean.run(config, {"validate": validate_manifest(config, store, "clean-d1", day_one, "2026-01-01")},
                      run_id="clean-d1", store=store, logical_date="2026-01-01")
    day_two = [
        record("p3", "text seen on  day one", "libs"),  # the same text once normalised, new id
        record("p2", "new text of p2", "net"),          # known id, changed text: an update
        record("p4", "brand new text", "utils"),
    ]
    second = clean.run(config, {"validate": validate_manifest(config, store, "clean-d2", day_two, "2026-01-02")},
                       run_id="clean-d2", store=store, logical_date="2026-01-02")
    assert [row["id"] for row in read_rows(store.local_path(second.output("dataset").uri))] == ["p2", "p4"]
    assert (second.metrics["duplicates_of_history"], second.metrics["updates_of_history"]) == (1, 1)
    assert CleanFacts.of(first).prior_snapshots == []
    assert [entry.run_id for entry in CleanFacts.of(second).prior_snapshots] == ["clean-d1"]
    assert [entry["run_id"] for entry in read_history(store)] == ["clean-d1", "clean-d2"]


def test_an_edited_label_supersedes_the_earlier_version_everywhere(tmp_path: Path, tracking: Path) -> None:
    """An annotation edited after it was pulled comes back under its id with the same text and another label:
    clean keeps it, and training and evaluation read only its latest version (nothing doubled, nothing lost)."""
    from tasks.records import evaluation_slices
    from tasks.train import gather_training_data

    config = make_config(tmp_path, tracking)
    store = ArtifactStore(config.artifact_root)
    train_id, test_id = id_in("train"), id_in("test")
    day_one = [record(train_id, "a train row whose label is edited later", "libs"),
               record(test_id, "a test row whose label is edited later", "libs"),
               record(id_in("test", 1), "a test row that stays as it was", "utils")]
    first = clean.run(config, {"validate": validate_manifest(config, store, "edit-d1", day_one, "2026-01-01")},
                      run_id="edit-d1", store=store, logical_date="2026-01-01")
    day_two = [record(train_id, day_one[0]["text"], "net"), record(test_id, day_one[1]["text"], "net"),
               record("someone-else", day_one[2]["text"], "utils")]  # a known text under another id: a duplicate
    second = clean.run(config, {"validate": validate_manifest(config, store, "edit-d2", day_two, "2026-01-02")},
                       run_id="edit-d2", store=store, logical_date="2026-01-02")
    dataset = read_rows(store.local_path(second.output("dataset").uri))
    assert [(row["id"], row["label"]) for row in dataset] == [(train_id, "net"), (test_id, "net")]
    assert (second.metrics["relabels_of_history"], second.metrics["duplicates_of_history"]) == (2, 1)

    slices = evaluation_slices(second, store)
    assert [(row["id"], row["label"]) for row in slices["fresh"]] == [(test_id, "net")]
    assert [row["id"] for row in slices["old"]] == [id_in("test", 1)]
    assert {row["id"]: row["label"] for row in slices["frozen"]} == {test_id: "net", id_in("test", 1): "utils"}
    assert evaluation_slices(first, store)["frozen"][0]["label"] == "libs"  # day one's own evaluation unchanged
    replayed = config.model_copy(update={"train": config.train.model_copy(update={"replay_fraction": 1.0})})
    prior = [entry.model_dump() for entry in CleanFacts.of(second).prior_snapshots]  # history entries, as train reads
    data = gather_training_data(replayed, dataset, dataset, prior, store)
    assert [(row["id"], row["label"]) for row in data.train if row["id"] == train_id] == [(train_id, "net")]


def test_history_duplicate_after_normalisation(tmp_path: Path, tracking: Path) -> None:
    config = make_config(tmp_path, tracking)
    store = ArtifactStore(config.artifact_root)
    first_batch = [record("q1", "seen before", "libs")]
    clean.run(config, {"validate": validate_manifest(config, store, "clean-h1", first_batch, "2026-02-01")},
              run_id="clean-h1", store=store, logical_date="2026-02-01")
    batch = [record("q2", "<b>seen</b> before", "libs"), record("q3", "seen before", "net")]
    second = clean.run(config, {"validate": validate_manifest(config, store, "clean-h2", batch, "2026-02-02")},
                       run_id="clean-h2", store=store, logical_date="2026-02-02")
    report = json.loads(store.local_path(second.output("clean_report").uri).read_text())
    # q2 and q3 share a text but disagree on labels: quarantined, never compared with history.
    assert report["counts"]["label_conflicts"] == 2 and second.metrics["rows_out"] == 0

    third_batch = [record("q4", "seen   before", "net")]
    third = clean.run(config, {"validate": validate_manifest(config, store, "clean-h3", third_batch, "2026-02-03")},
                      run_id="clean-h3", store=store, logical_date="2026-02-03")
    assert third.metrics["duplicates_of_history"] == 1 and third.metrics["rows_out"] == 0
    # Known text, other label: still dropped as known data, but the disagreement is counted.
    assert third.metrics["history_label_disagreements"] == 1


def test_a_missing_history_snapshot_is_a_named_error(tmp_path: Path, tracking: Path) -> None:
    config = make_config(tmp_path, tracking)
    store = ArtifactStore(config.artifact_root)
    gone = store.step_uri("lost-run", "clean", "dataset.parquet")
    record_snapshot(store, {"run_id": "lost-run", "logical_date": "2026-03-01", "uri": gone,
                            "digest": "sha256:0", "rows": 1})
    upstream = validate_manifest(config, store, "clean-m", BATCH[:2], "2026-03-02")
    with pytest.raises(StepError, match=f"snapshot of run 'lost-run' is listed in the history but missing at {gone}"):
        clean.run(config, {"validate": upstream}, run_id="clean-m", store=store, logical_date="2026-03-02")


# ------------------------------------------------------------------- near-duplicates and leakage

BASE = "fast incremental parser for structured configuration files with schema checks"
ABOVE = BASE.replace("parser", "parsor")             # one letter: Jaccard 0.87
BELOW = BASE.replace("structured", "structural")     # two letters: Jaccard 0.848
PARAPHRASE = BASE.replace("fast", "vast").replace("files", "tiles").replace("schema", "scheme")  # 0.738


def similarity(left: str, right: str) -> float:
    return jaccard(shingles(left, "char5"), shingles(right, "char5"))


def id_in(split: str, skip: int = 0) -> str:
    """A record id that the default split config puts in `split`."""
    config = PipelineConfig.model_fields["split"].default
    return [f"r{number}" for number in range(500) if split_of(f"r{number}", config) == split][skip]


def clean_batch(rows: Sequence[Mapping[str, Any]], history: clean.History | None = None,
                **clean_options: Any) -> clean.CleanResult:
    config = make_config(Path("/nonexistent"), Path("/nonexistent"), clean=clean_options)
    return clean.clean_rows(rows, config, history or clean.History({}, set()))


def test_near_duplicates_are_removed_at_the_threshold_and_not_below() -> None:
    assert similarity(BASE, ABOVE) >= 0.85 > similarity(BASE, BELOW) > 0.84
    result = clean_batch([record(id_in("train"), BASE, "libs"), record(id_in("train", 1), ABOVE, "libs"),
                          record(id_in("train", 2), BELOW, "libs")], near_duplicate_threshold=0.85)
    assert [row["id"] for row in result.dataset] == [id_in("train"), id_in("train", 2)]
    assert result.counts["near_duplicates_in_batch"] == 1
    assert result.examples["near_duplicates_in_batch"] == [id_in("train", 1)]
    # Off: all three stay.
    assert len(clean_batch([record("x", BASE, "libs"), record("y", ABOVE, "libs")],
                           near_duplicate_threshold=None, leakage_threshold=None).dataset) == 2


def test_near_duplicates_with_different_labels_are_quarantined() -> None:
    result = clean_batch([record("n1", BASE, "libs"), record("n2", ABOVE, "net"), record("n3", "unrelated text", "net")])
    conflicts = [row for row in result.quarantine if row["check"] == "clean.near_duplicate_label_conflict"]
    assert [(row["id"], row["value"]) for row in conflicts] == [("n1", "libs"), ("n2", "net")]
    assert "['libs', 'net']" in conflicts[0]["reason"]
    assert [row["id"] for row in result.dataset] == ["n3"]
    assert result.counts["near_duplicate_label_conflicts"] == 2


def test_leakage_removes_the_train_row_never_the_test_row() -> None:
    assert 0.7 <= similarity(BASE, PARAPHRASE) < 0.85  # not a near-duplicate, but too close to share splits
    train, test = id_in("train"), id_in("test")
    # The train row comes first in the batch: it still goes, the test row stays.
    result = clean_batch([record(train, PARAPHRASE, "libs"), record(test, BASE, "libs")])
    assert [(row["id"], row["split"]) for row in result.dataset] == [(test, "test")]
    assert result.counts["leakage_removed"] == 1 and result.examples["leakage_removed"] == [train]
    assert len(clean_batch([record(train, PARAPHRASE, "libs"), record(test, BASE, "libs")],
                           leakage_threshold=None).dataset) == 2


def test_leakage_and_near_duplicates_against_history(tmp_path: Path, tracking: Path) -> None:
    config = make_config(tmp_path, tracking)
    store = ArtifactStore(config.artifact_root)
    day_one = [record(id_in("test"), BASE, "libs"), record(id_in("train"), "another accepted description", "net"),
               record(id_in("train", 4), "third accepted row of the history", "utils")]
    clean.run(config, {"validate": validate_manifest(config, store, "clean-l1", day_one, "2026-04-01")},
              run_id="clean-l1", store=store, logical_date="2026-04-01")
    day_two = [
        record(id_in("train", 1), PARAPHRASE, "libs"),                       # leaks the history test row
        record(id_in("validation"), "an unrelated evaluation text", "libs"),  # kept
        record(id_in("train", 2), "another accepted descriptions", "net"),   # near-duplicate of history
        record(id_in("train", 3), "third accepted row of the historx", "libs"),  # ... with another label
    ]
    second = clean.run(config, {"validate": validate_manifest(config, store, "clean-l2", day_two, "2026-04-02")},
                       run_id="clean-l2", store=store, logical_date="2026-04-02")
    dataset = read_rows(store.local_path(second.output("dataset").uri))
    assert [row["id"] for row in dataset] == [id_in("validation")]
    assert (second.metrics["leakage_removed"], second.metrics["near_duplicates_of_history"],
            second.metrics["near_duplicate_label_conflicts"]) == (1, 1, 1)
    [conflict] = read_rows(store.local_path(second.output("quarantine").uri))
    assert conflict["id"] == id_in("train", 3) and id_in("train", 4) in conflict["reason"]


def test_the_history_version_of_an_updated_id_is_not_its_near_duplicate() -> None:
    history = clean.History({}, {"u1"}, [{"id": "u1", "text": BASE, "label": "libs", "split": "train"}])
    result = clean_batch([record("u1", ABOVE, "libs")], history)
    assert [row["id"] for row in result.dataset] == ["u1"] and result.counts["updates_of_history"] == 1


# ------------------------------------------------------------------------------------ PII


@pytest.mark.parametrize(("raw", "expected", "kind"), [
    ("mail jane.doe+x@example.co.uk now", "mail <EMAIL> now", "pii_email"),
    ("call +44 20 7946 0958 or (555) 123-4567", "call <PHONE> or <PHONE>", "pii_phone"),
    ("server 192.168.10.254.", "server <IPV4>.", "pii_ipv4"),
    ("hosts 2001:db8::8a2e:370:7334 and ::1 and fe80::", "hosts <IPV6> and <IPV6> and <IPV6>", "pii_ipv6"),
])
def test_pii_is_scrubbed_by_kind(raw: str, expected: str, kind: str) -> None:
    text, counts = scrub_pii(raw)
    assert text == expected
    assert counts[kind] == expected.count("<") and sum(counts.values()) == counts[kind]


@pytest.mark.parametrize("text", ["version 1.2.3 released 2026-11-25 at 12:30:45", "uses std::vector and Foo::Bar",
                                  "ISBN 978 3 16", "port 8080 on 300.1.2.3"])
def test_pii_scrubbing_leaves_look_alikes(text: str) -> None:
    assert scrub_pii(text) == (text, dict.fromkeys(PII_RULES, 0))


def test_pii_scrubbing_is_off_by_default_and_counted_when_on() -> None:
    rows = [record("p1", "contact admin@example.org or admin2@example.org", "libs")]
    assert clean_batch(rows).dataset[0]["text"] == rows[0]["text"]
    result = clean_batch(rows, scrub_pii=True)
    assert result.dataset[0]["text"] == "contact <EMAIL> or <EMAIL>"
    assert result.counts["pii_email"] == 2 and result.examples["pii_email"] == ["p1"]


# ----------------------------------------------------------------------------------------- CLI


def test_cli_prints_the_manifest_last_and_rejects_a_missing_input(tmp_path: Path, tracking: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    config = make_config(tmp_path, tracking)
    validate_manifest(config, ArtifactStore(config.artifact_root), "clean-cli", BATCH[:3])
    config_file = tmp_path / "pipeline.yaml"
    config_file.write_text(yaml.safe_dump(config.to_dict()))
    assert clean.main(["--config", str(config_file), "--run-id", "clean-cli", "--input", "validate"]) == 0
    manifest = Manifest.model_validate_json(capsys.readouterr().out.strip().splitlines()[-1])
    assert manifest.step == "clean" and manifest.output("dataset").rows == 2

    assert clean.main(["--config", str(config_file), "--run-id", "clean-cli", "--input", "crawl"]) == 2
    assert "freshet clean: error: input 'crawl': no manifest for run 'clean-cli'" in capsys.readouterr().err
