"""train → evaluate → compress → register → promote on tiny in-memory data, twice (warm start)."""

from __future__ import annotations

import pytest

from tasks import compress, evaluate, promote, register, registry, train
from tasks.contract import StepError
from tasks.demo_corpus import synthetic_corpus
from tasks.store import ArtifactStore
from tests.pipeline_fixtures import LABELS, fake_upstream, tiny_config


def run_model_steps(config, store, run_id, day, upstream):
    manifests = dict(upstream)
    manifests["train"] = train.run(config, {"augment": upstream["augment"], "clean": upstream["clean"]},
                                   run_id=run_id, store=store, logical_date=day)
    manifests["evaluate"] = evaluate.run(config, {"train": manifests["train"], "clean": upstream["clean"]},
                                         run_id=run_id, store=store, logical_date=day)
    manifests["compress"] = compress.run(config, {k: manifests[k] for k in ("train", "evaluate", "clean")},
                                         run_id=run_id, store=store, logical_date=day)
    manifests["register"] = register.run(config, {k: manifests[k] for k in ("train", "evaluate", "compress", "validate", "clean")},
                                         run_id=run_id, store=store, logical_date=day)
    manifests["promote"] = promote.run(config, {"register": manifests["register"]}, run_id=run_id, store=store,
                                       logical_date=day)
    return manifests


@pytest.fixture(scope="module")
def two_rounds(tmp_path_factory):
    root = tmp_path_factory.mktemp("model_steps")
    config = tiny_config(root)
    store = ArtifactStore(config.artifact_root)
    corpus = synthetic_corpus(600, LABELS, seed=1)
    first = run_model_steps(config, store, "run-1", "2026-11-01", fake_upstream(config, store, "run-1", "2026-11-01", corpus[:400]))
    second = run_model_steps(config, store, "run-2", "2026-11-02", fake_upstream(config, store, "run-2", "2026-11-02", corpus[400:]))
    return config, store, first, second


def test_first_round_trains_gates_on_floors_and_becomes_champion(two_rounds):
    config, _, first, _ = two_rounds
    assert first["train"].metrics["steps"] > 0
    assert first["evaluate"].facts["champion_version"] is None
    gate = first["evaluate"].facts["gate"]
    assert gate["passed"], gate["reasons"]
    assert all(check["name"].startswith("floor:") for check in gate["checks"])
    assert first["promote"].facts["promoted"] is True
    assert first["promote"].facts["champion"] == first["register"].facts["version"] == "1"


def test_second_round_warm_starts_replays_and_compares_with_champion(two_rounds):
    config, _, first, second = two_rounds
    assert second["train"].facts["champion_version"] == "1"
    assert second["train"].metrics["rows_replay"] > 0
    assert second["evaluate"].facts["champion_version"] == "1"
    assert "old" in second["evaluate"].facts["gate"]["checks"][-1]["name"] or any(
        check["name"].startswith("non_inferiority:") for check in second["evaluate"].facts["gate"]["checks"])
    champion = registry.version_by_alias(config, registry.CHAMPION)
    if second["compress"].facts["gate"]["passed"]:
        assert str(champion.version) == "2"
        assert str(registry.version_by_alias(config, registry.PREVIOUS).version) == "1"
    else:
        assert str(champion.version) == "1"


def test_int8_variant_is_re_evaluated_and_smaller(two_rounds):
    _, _, first, _ = two_rounds
    variant = first["compress"].facts["variants"]["int8-dynamic"]
    assert 0 < variant["size_ratio"] < 1
    assert set(variant["macro_f1_delta"]) >= {"frozen", "fresh"}


def test_rerun_is_a_no_op_that_returns_the_same_manifest(two_rounds):
    config, store, first, _ = two_rounds
    again = register.run(config, {k: first[k] for k in ("train", "evaluate", "compress", "validate", "clean")},
                         run_id="run-1", store=store, logical_date="2026-11-01")
    assert again.reused and again.fingerprint == first["register"].fingerprint
    client = registry.client(config)
    assert len(client.search_model_versions("name = 'unit-model'")) == 2


def test_promotion_refuses_when_champion_changed_since_the_gate(two_rounds):
    config, _, first, _ = two_rounds
    current = registry.version_by_alias(config, registry.CHAMPION).version
    with pytest.raises(StepError, match="refusing"):
        promote.move_champion(config, first["register"].facts["version"] if current != "1" else "2",
                              expected_champion="not-the-champion", reason="test")


def test_registered_pyfunc_predicts_labels_from_texts(two_rounds):
    import mlflow

    config, _, _, _ = two_rounds
    registry.client(config)
    model = mlflow.pyfunc.load_model(f"models:/{config.mlflow.model_name}@champion")
    import pandas as pd

    result = model.predict(pd.DataFrame({"text": ["alpha0 alpha1 alpha2", "gamma3 gamma4"]}))
    assert list(result.columns) == ["label", "probability"]
    assert set(result["label"]) <= set(LABELS)


def test_rollback_moves_champion_back_and_records_who_and_why(two_rounds, capsys):
    from tasks.cli import main

    config, _, _, _ = two_rounds
    client = registry.client(config)
    name = config.mlflow.model_name
    client.set_registered_model_alias(name, registry.CHAMPION, "2")
    client.set_registered_model_alias(name, registry.PREVIOUS, "1")
    config_path = config.artifact_root + "/../rollback.yaml"
    import yaml

    with open(config_path, "w") as handle:
        yaml.safe_dump(config.to_dict(), handle)
    assert main(["rollback", "--config", config_path, "--who", "oncall", "--why", "bad outputs in prod"]) == 0
    assert str(registry.version_by_alias(config, registry.CHAMPION).version) == "1"
    assert registry.version_by_alias(config, registry.PREVIOUS) is None
    assert "oncall: bad outputs in prod" in client.get_model_version(name, "2").tags["freshet.rolled_back"]
    assert main(["rollback", "--config", config_path, "--why", "again"]) == 2
    assert "needs both a champion and a previous" in capsys.readouterr().err


def test_distilled_variants_are_trained_stored_safely_and_re_evaluated(two_rounds):
    _, store, first, _ = two_rounds
    manifest = first["compress"]
    variants = manifest.facts["variants"]
    for name in ("distilled", "distilled-onnx-int8"):
        row = variants[name]
        assert row["servable"] and set(row["macro_f1_delta"]) >= {"frozen", "fresh"}
        assert row["layers"] == 1 and row["teacher_layers"] == 2 and row["distill_rows"] > 0
    assert variants["distilled-onnx-int8"]["size_ratio"] < variants["onnx-int8"]["size_ratio"]
    student = store.local_path(manifest.output("distilled_model").uri)
    assert list(student.glob("*.safetensors")) and not list(student.glob("*.bin")) and not list(student.glob("*.pt"))
    assert store.local_path(manifest.output("distilled_onnx_int8").uri).suffix == ".onnx"


def test_register_checks_the_registered_model_in_a_fresh_process(two_rounds):
    config, _, first, second = two_rounds
    client = registry.client(config)
    for manifests in (first, second):
        check = manifests["register"].facts["serving_check"]
        assert check["passed"] is True and check["rows"] > 0, check
        tags = client.get_model_version(config.mlflow.model_name, manifests["register"].facts["version"]).tags
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
    challenger = registry.version_by_alias(config, registry.CHALLENGER).version
    path.write_text(json.dumps(sample))
    try:
        with pytest.raises(StepError, match="serving check failed for models:/unit-model/3"):
            register.run(config, {k: first[k] for k in ("train", "evaluate", "compress", "validate", "clean")},
                         run_id="run-tampered", store=store, logical_date="2026-11-01")
    finally:
        path.write_text(original)
    client = registry.client(config)
    assert client.get_model_version(config.mlflow.model_name, "3").tags["freshet.serving_check"] == "failed"
    assert registry.version_by_alias(config, registry.CHALLENGER).version == challenger  # not moved
