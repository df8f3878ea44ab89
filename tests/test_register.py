"""Register: the version's pyfunc predicts labels from texts, and the fresh-process serving check."""

from __future__ import annotations

import pytest

from tasks import model_registry, register
from tasks.manifest import StepError
from tasks.register import RegisterFacts
from tests.pipeline_support import LABELS


def test_registered_pyfunc_predicts_labels_from_texts(two_rounds):
    import mlflow

    config, _, _, _ = two_rounds
    model_registry.client(config)
    model = mlflow.pyfunc.load_model(f"models:/{config.mlflow.model_name}@champion")
    import pandas as pd

    result = model.predict(pd.DataFrame({"text": ["alpha0 alpha1 alpha2", "gamma3 gamma4"]}))
    assert list(result.columns) == ["label", "probability"]
    assert set(result["label"]) <= set(LABELS)


def test_register_checks_the_registered_model_in_a_fresh_process(two_rounds):
    config, _, first, second = two_rounds
    client = model_registry.client(config)
    for manifests in (first, second):
        registered = RegisterFacts.of(manifests["register"])
        check = registered.serving_check
        assert check["passed"] is True and check["rows"] > 0, check
        tags = client.get_model_version(config.mlflow.model_name, registered.version).tags
        assert tags["freshet.serving_check"] == "passed" and float(tags["freshet.serving_check.max_abs_diff"]) <= 1e-3


def test_register_fails_when_the_registered_model_does_not_reproduce_the_evaluation(two_rounds):
    """Runs last in this module: it registers a third version (never given an alias)."""
    import json

    config, store, first, _ = two_rounds
    path = store.local_path(first["compress"].output("serving_sample").uri)
    original = path.read_text()
    sample = json.loads(original)
    sample["labels"] = [next(label for label in LABELS if label != expected) for expected in sample["labels"]]
    sample["probabilities"] = [[1.0] + [0.0] * (len(row) - 1) for row in sample["probabilities"]]
    challenger = model_registry.version_by_alias(config, model_registry.CHALLENGER).version
    path.write_text(json.dumps(sample))
    try:
        with pytest.raises(StepError, match="serving check failed for models:/unit-model/3"):
            register.run(config, {k: first[k] for k in ("train", "evaluate", "compress", "validate", "clean")},
                         run_id="run-tampered", store=store, logical_date="2026-11-01")
    finally:
        path.write_text(original)
    client = model_registry.client(config)
    assert client.get_model_version(config.mlflow.model_name, "3").tags["freshet.serving_check"] == "failed"
    assert model_registry.version_by_alias(config, model_registry.CHALLENGER).version == challenger  # not moved


def test_the_champion_version_page_reaches_every_piece_of_evidence_in_one_hop(two_rounds):
    """An auditor with the stock MLflow client and `models:/<name>@champion` alone: the version names its
    source run, and that run holds the metrics, gate verdict and report, confusion matrix, compression
    table, validation report and the data snapshots."""
    import mlflow

    config, _, first, second = two_rounds
    mlflow.set_tracking_uri(config.mlflow.tracking_uri)
    client = mlflow.MlflowClient()
    version = client.get_model_version_by_alias(config.mlflow.model_name, "champion")
    source = client.get_run(version.run_id)  # the one hop

    assert {"evaluate.candidate.frozen.macro_f1", "evaluate.candidate.fresh.macro_f1"} <= set(source.data.metrics)
    assert any(key.startswith("compress.") and key.endswith("size_ratio") for key in source.data.metrics)
    folders = ("evidence/evaluation", "evidence/gate", "evidence/compression", "evidence/validation")
    artifacts = {item.path for folder in folders for item in client.list_artifacts(source.info.run_id, folder)}
    assert {"evidence/evaluation/evaluation.json", "evidence/evaluation/report.md", "evidence/gate/gate.json",
            "evidence/compression/compression.json"} <= artifacts, artifacts
    # The fixture's validate is a stand-in (its GX result only); the e2e test checks the real report.
    assert any(path.startswith("evidence/validation/") for path in artifacts)
    assert any(path.endswith(".png") for path in artifacts), "the confusion matrix"
    gate = client.download_artifacts(source.info.run_id, "evidence/gate/gate.json")
    with open(gate) as handle:
        assert "passed" in handle.read()
    names = {dataset_input.dataset.name for dataset_input in source.inputs.dataset_inputs}
    assert f"{config.name}.dataset" in names
    digests = {tag.value for dataset_input in source.inputs.dataset_inputs for tag in dataset_input.tags
               if tag.key == "freshet.digest"}
    # Other test modules move the alias on this shared registry: compare with the round that made it.
    made_by = first if version.tags["freshet.run_id"] == first["register"].run_id else second
    assert made_by["clean"].output("dataset").digest in digests
