"""tasks.augment: tagged, deterministic EDA augmentation of the train split, balanced under a cap."""

from __future__ import annotations

import json
import random
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml

from tasks import augment
from tasks.clean import DATASET_SCHEMA
from tasks.config import AugmentConfig, PipelineConfig
from tasks.contract import Manifest, StepContext, execute
from tasks.data import content_hash, read_rows, write_parquet
from tasks.store import ArtifactStore

LABELS = ["libs", "utils", "net"]


def row(record_id: str, label: str, split: str = "train", words: int = 5) -> dict[str, Any]:
    text = " ".join(f"{record_id}w{index}" for index in range(words))
    return {"id": record_id, "text": text, "label": label, "source": "t", "fetched_at": "2026-11-25T00:00:00Z",
            "content_hash": content_hash(text), "split": split, "normalized_hash": content_hash(text)}


def train_set(sizes: Mapping[str, int]) -> list[dict[str, Any]]:
    return [row(f"{label}-{number}", label) for label, size in sizes.items() for number in range(size)]


def settings(**overrides: Any) -> AugmentConfig:
    return AugmentConfig(**{"swap_probability": 0.2, "delete_probability": 0.2, "augmentations_per_row": 2,
                            "balance_to_fraction_of_largest": 1.0, "max_augmented_fraction": 1.0, **overrides})


def augmented(rows: Sequence[Mapping[str, Any]], config: AugmentConfig) -> augment.AugmentResult:
    return augment.augment_rows(rows, LABELS, config, augment.default_augmenters(config))


# ---------------------------------------------------------------------------------- augmenters


def test_random_swap_keeps_the_words() -> None:
    text = "one two three four five"
    swapped = augment.RandomSwap(0.2).augment(text, random.Random(1))
    assert swapped != text and sorted(swapped.split()) == sorted(text.split())
    assert augment.RandomSwap(0.2).augment("single", random.Random(1)) is None


def test_random_deletion_keeps_at_least_one_word() -> None:
    assert len(augment.RandomDeletion(1.0).augment("one two three", random.Random(1)).split()) == 1
    assert augment.RandomDeletion(0.0).augment("one two three", random.Random(1)) == "one two three"


# ------------------------------------------------------------------------------------ balancing


def test_minority_classes_are_topped_up_toward_the_target() -> None:
    result = augmented(train_set({"libs": 10, "utils": 4, "net": 2}), settings(balance_to_fraction_of_largest=0.8))
    assert {label: counts["target"] for label, counts in result.classes.items()} == {"libs": 10, "utils": 8, "net": 8}
    # utils needs 4 more (<= 2 per row); net would need 6 but 2 rows x 2 augmentations = 4.
    assert {label: counts["augmented"] for label, counts in result.classes.items()} == {"libs": 0, "utils": 4, "net": 4}
    assert Counter(item["augmented_from"] is None for item in result.rows) == {True: 16, False: 8}


def test_the_cap_bounds_the_total_and_is_shared_by_deficit() -> None:
    result = augmented(train_set({"libs": 20, "utils": 4, "net": 2}), settings(max_augmented_fraction=0.25))
    # Wanted: utils 8, net 4 -> capped at floor(0.25 x 26) = 6, shared 4 : 2.
    assert [result.classes[label]["augmented"] for label in LABELS] == [0, 4, 2]


def test_quotas_share_a_cap_with_largest_remainders() -> None:
    quotas = augment.augmentation_quotas({"a": 10, "b": 1, "c": 1}, {"a": 10, "b": 4, "c": 3},
                                         settings(augmentations_per_row=5, max_augmented_fraction=0.25))
    assert quotas == {"a": 0, "b": 2, "c": 1}  # wanted 3 and 2, cap 3


def test_no_augmentation_without_balancing() -> None:
    result = augmented(train_set({"libs": 10, "utils": 4, "net": 2}), settings(balance_to_fraction_of_largest=0.0))
    assert len(result.rows) == 16


def test_augmented_rows_are_tagged_and_differ_from_their_source() -> None:
    rows = train_set({"libs": 6, "utils": 2, "net": 0})
    result = augmented(rows, settings())
    originals = {item["id"]: item for item in rows}
    new = [item for item in result.rows if item["augmented_from"] is not None]
    assert new and result.classes["net"] == {"real": 0, "target": 6, "augmented": 0, "final": 0}
    for item in new:
        source = originals[item["augmented_from"]]
        assert item["id"].startswith(f"{source['id']}#aug") and item["label"] == source["label"]
        assert item["text"] != source["text"] and item["content_hash"] == content_hash(item["text"])
    assert len({item["text"] for item in result.rows}) == len(result.rows)


def test_results_identical_to_the_original_are_skipped() -> None:
    one_word_rows = [row(f"u-{number}", "utils", words=1) for number in range(3)]
    result = augmented(train_set({"libs": 6}) + one_word_rows, settings())
    assert result.classes["utils"]["augmented"] == 0 and result.skipped == 6


def test_augmentation_is_deterministic_per_seed_and_id() -> None:
    rows = train_set({"libs": 8, "utils": 3, "net": 2})
    first, again = augmented(rows, settings()), augmented(list(reversed(rows)), settings())
    def pairs(result: augment.AugmentResult) -> list[tuple[str, str]]:
        return sorted((item["id"], item["text"]) for item in result.rows)

    assert pairs(first) == pairs(again)
    reseeded = augmented(rows, settings(seed=7))
    assert {item["text"] for item in reseeded.rows} != {item["text"] for item in first.rows}


# -------------------------------------------------------------------------------------- the step


def make_config(root: Path, tracking: Path) -> PipelineConfig:
    return PipelineConfig.model_validate({
        "labels": LABELS,
        "artifact_root": str(root / "artifacts"),
        "mlflow": {"tracking_uri": f"sqlite:///{tracking}/mlflow.db",
                   "artifact_location": str(tracking / "mlartifacts")},
        "crawl": {"sources": [{"name": "t", "url": "http://127.0.0.1:1/"}]},
        "augment": {"augmentations_per_row": 1, "balance_to_fraction_of_largest": 1.0, "max_augmented_fraction": 0.5},
    })


def clean_manifest(config: PipelineConfig, store: ArtifactStore, run_id: str,
                   rows: Sequence[Mapping[str, Any]]) -> Manifest:
    """A real clean manifest (through `execute`) whose dataset is `rows`."""
    def body(ctx: StepContext) -> None:
        write_parquet(rows, ctx.out_dir / "dataset.parquet", schema=DATASET_SCHEMA)
        ctx.add_output("dataset", "dataset.parquet", "dataset", rows=len(rows))

    return execute("clean", body, config, {}, run_id=run_id, store=store)


DATASET = [
    *train_set({"libs": 8, "utils": 2, "net": 2}),
    row("held-out-1", "net", split="validation"),
    row("held-out-2", "net", split="test"),
]


@pytest.fixture(scope="module")
def tracking(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One MLflow database per pytest session, shared by the step test modules (creating one costs seconds)."""
    directory = tmp_path_factory.getbasetemp() / "mlflow"
    directory.mkdir(exist_ok=True)
    return directory


@pytest.fixture(scope="module")
def step(tmp_path_factory: pytest.TempPathFactory, tracking: Path) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("augmented")
    config = make_config(root, tracking)
    store = ArtifactStore(config.artifact_root)
    upstream = clean_manifest(config, store, "aug-1", DATASET)
    manifest = augment.run(config, {"clean": upstream}, run_id="aug-1", store=store)
    return {"root": root, "config": config, "store": store, "upstream": upstream, "manifest": manifest,
            "train": read_rows(store.local_path(manifest.output("train").uri))}


def test_only_the_train_split_is_used_and_augmented(step: dict[str, Any]) -> None:
    assert {item["split"] for item in step["train"]} == {"train"}
    assert not any(item["id"].startswith("held-out") or str(item["augmented_from"]).startswith("held-out")
                   for item in step["train"])


def test_step_output_counts_and_report(step: dict[str, Any]) -> None:
    metrics = step["manifest"].metrics
    # Targets 8 each; 1 augmentation per row gives utils and net 2 each; the cap (6) is not reached.
    assert (metrics["rows_real"], metrics["rows_augmented"], metrics["classes_balanced"]) == (12, 4, 1)
    assert (metrics["rows_final.utils"], metrics["rows_augmented.net"], metrics["rows_real.libs"]) == (4, 2, 8)
    report = json.loads(step["store"].local_path(step["manifest"].output("augment_report").uri).read_text())
    assert report["classes"]["net"] == {"real": 2, "target": 8, "augmented": 2, "final": 4}
    assert sum(1 for item in step["train"] if item["augmented_from"]) == 4


def test_rerun_is_reused(step: dict[str, Any]) -> None:
    again = augment.run(step["config"], {"clean": step["upstream"]}, run_id="aug-1", store=step["store"])
    assert again.reused and again.output("train").digest == step["manifest"].output("train").digest


def test_cli_prints_the_manifest_last_and_rejects_a_missing_input(step: dict[str, Any],
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    config_file = step["root"] / "pipeline.yaml"
    config_file.write_text(yaml.safe_dump(step["config"].to_dict()))
    assert augment.main(["--config", str(config_file), "--run-id", "aug-1", "--input", "clean"]) == 0
    manifest = Manifest.model_validate_json(capsys.readouterr().out.strip().splitlines()[-1])
    assert manifest.step == "augment" and manifest.reused

    assert augment.main(["--config", str(config_file), "--run-id", "aug-2", "--input", "clean"]) == 2
    assert "freshet augment: error: input 'clean': no manifest for run 'aug-2'" in capsys.readouterr().err
