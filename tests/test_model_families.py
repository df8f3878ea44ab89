"""Bring your own encoder: a tiny randomly initialised model of each family, in a local Hugging Face directory
with its own tokenizer (tests/model_families.py), through the real steps: train (one process; two gloo ranks
for some families), evaluate, compress (every variant), register with the fresh-process serving check, and
the registered pyfunc's predictions.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pandas as pd
import pytest
import yaml

from tasks.compress import CompressFacts
from tasks.config import PipelineConfig
from tasks.contract import read_manifest
from tasks.register import RegisterFacts
from tasks.store import ArtifactStore
from tasks.train import TrainFacts
from tests.conftest import REPO
from tests.corpus_support import synthetic_corpus
from tests.model_families import FAMILIES, build_family_dir
from tests.pipeline_support import LABELS, fake_upstream, tiny_config

DAY = "2026-11-01"
ALL_VARIANTS = ["int8-dynamic", "onnx-fp32", "onnx-int8", "pruned", "distilled", "distilled-onnx-int8"]
# Families whose layers the student cannot copy (tasks/models/families.py says why).
NO_LAYER_COPY = {"modernbert"}


@pytest.fixture(scope="session")
def family_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("families")
    return {family: build_family_dir(family, root / family) for family in FAMILIES}


def family_config(root, model_dir, family: str, tracking_uri: str | None = None, **train) -> PipelineConfig:
    """The unit config on `model_dir`, sized so a family runs every step in seconds."""
    base = tiny_config(root, **{"model": str(model_dir), "epochs": 4, "learning_rate": 5e-3, "max_length": 16,
                                **train}).to_dict()
    base["mlflow"]["model_name"] = f"family-{family}"
    if tracking_uri:  # one database for the module: creating one costs seconds
        base["mlflow"]["tracking_uri"] = tracking_uri
    base["evaluate"] = {"batch_size": 64, "gate": {"floors": {"frozen.macro_f1": 0.0}, "bootstrap_resamples": 100}}
    base["compress"] = {"variants": ALL_VARIANTS, "latency_rounds": 1, "latency_sample_rows": 4, "distill_epochs": 1,
                        "distill_max_rows": 200, "serving_check_rows": 8}
    return PipelineConfig.model_validate(base)


@pytest.fixture(scope="module")
def rows():
    return synthetic_corpus(200, LABELS, seed=4)


@pytest.fixture(scope="module")
def pipeline(family_dirs, rows, tmp_path_factory, mlflow_uri):
    """family -> (config, manifests) of train, evaluate, compress and register on that family; each run once.

    The register step's own fresh-process check is deferred here: one fresh process checks every family's
    version below, with the same comparison (a fresh Python that imports MLflow, torch and transformers
    costs ~20 s on 2 cores; test_register runs the step's own check).
    """
    from tasks import compress, evaluate, register, train

    done: dict[str, tuple[PipelineConfig, dict]] = {}

    def run(family: str):
        if family not in done:
            root = tmp_path_factory.mktemp(f"pipeline-{family}")
            config = family_config(root, family_dirs[family], family, mlflow_uri)
            store = ArtifactStore(config.artifact_root)
            run_id = f"run-{family}"  # one MLflow database: a step's MLflow run is found by run id and step
            up = fake_upstream(config, store, run_id, DAY, [dict(row) for row in rows])
            steps = dict(up)
            steps["train"] = train.run(config, {"augment": up["augment"], "clean": up["clean"]}, run_id=run_id,
                                       store=store, logical_date=DAY)
            steps["evaluate"] = evaluate.run(config, {"train": steps["train"], "clean": up["clean"]}, run_id=run_id,
                                             store=store, logical_date=DAY)
            steps["compress"] = compress.run(config, {name: steps[name] for name in ("train", "evaluate", "clean")},
                                             run_id=run_id, store=store, logical_date=DAY)
            with pytest.MonkeyPatch.context() as patch:
                patch.setattr(register, "check_serving", lambda *args, **kwargs: {
                    "passed": True, "rows": 0, "max_abs_diff": 0.0, "mismatches": [],
                    "message": "deferred to test_every_family_reproduces_its_serving_sample_in_a_fresh_process"})
                steps["register"] = register.run(config, {name: steps[name] for name in
                                                          ("train", "evaluate", "compress", "validate", "clean")},
                                                 run_id=run_id, store=store, logical_date=DAY)
            done[family] = (config, steps)
        return done[family]

    return run


@pytest.mark.parametrize("family", list(FAMILIES))
def test_family_trains_evaluates_compresses_registers_and_serves(family, pipeline, rows):
    import mlflow

    config, steps = pipeline(family)
    trained, compressed, registered = steps["train"], steps["compress"], steps["register"]
    facts = TrainFacts.of(trained)
    assert facts.model.model_type == family and facts.model.max_length_limit == 128
    # What the forward takes (DistilBERT's and ModernBERT's take no token_type_ids), whatever the tokenizer returns.
    assert ("token_type_ids" in facts.model.input_names) == (family not in ("distilbert", "modernbert"))
    assert facts.labels == LABELS and "label_map" in trained.outputs
    compression = CompressFacts.of(compressed)
    variants = compression.variants
    assert set(variants) == set(ALL_VARIANTS)
    for name, row in variants.items():
        if family in NO_LAYER_COPY and name.startswith("distilled"):
            assert row["applicable"] is False and row["status"] == "not applicable" and "layer" in row["reason"]
        else:
            assert row.get("applicable", True), (name, row)
            assert row["size_ratio"] > 0 and set(row["macro_f1"]) == {"frozen", "fresh"}
    assert compression.serving_variant in {"fp32", *[name for name, row in variants.items()
                                                    if row.get("applicable", True)]}
    mlflow.set_tracking_uri(config.mlflow.tracking_uri)
    registered_version = RegisterFacts.of(registered).version
    served = mlflow.pyfunc.load_model(f"models:/{config.mlflow.model_name}/{registered_version}")
    result = served.predict(pd.DataFrame({"text": [row["text"] for row in rows[:6]]}))
    assert set(result["label"]) <= set(LABELS) and result["probability"].between(0, 1).all()
    version = mlflow.MlflowClient().get_model_version(config.mlflow.model_name, registered_version)
    assert json.loads(version.tags["freshet.labels"]) == LABELS


# Loads each version by its models:/ URI in this fresh process and predicts the compress step's sample texts.
FRESH_PROCESS_SCRIPT = """
import json, sys
import mlflow, pandas as pd
source, target = sys.argv[1:3]
out = {}
for uri, texts in json.load(open(source)).items():
    result = mlflow.pyfunc.load_model(uri).predict(pd.DataFrame({"text": texts}))
    out[uri] = {"labels": [str(label) for label in result["label"]],
                "probabilities": [float(value) for value in result["probability"]]}
json.dump(out, open(target, "w"))
"""


def test_every_family_reproduces_its_serving_sample_in_a_fresh_process(pipeline, tmp_path, mlflow_uri):
    """register's serving check (same comparison), for all families in one fresh process."""
    from tasks.models.serving_check import compare_serving

    samples = {}
    for family in FAMILIES:
        config, steps = pipeline(family)
        store = ArtifactStore(config.artifact_root)
        uri = f"models:/{config.mlflow.model_name}/{RegisterFacts.of(steps['register']).version}"
        samples[uri] = json.loads(store.local_path(steps["compress"].output("serving_sample").uri).read_text())
    source, target = tmp_path / "texts.json", tmp_path / "served.json"
    source.write_text(json.dumps({uri: sample["texts"] for uri, sample in samples.items()}))
    env = {**os.environ, "MLFLOW_TRACKING_URI": mlflow_uri, "MLFLOW_REGISTRY_URI": mlflow_uri}
    result = subprocess.run([sys.executable, "-c", FRESH_PROCESS_SCRIPT, str(source), str(target)], cwd=tmp_path,
                            env=env, capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 0, result.stderr[-4000:]
    served = json.loads(target.read_text())
    for uri, sample in samples.items():
        check = compare_serving(sample, served[uri])
        assert check["passed"], (uri, sample["variant"], check["message"])


@pytest.mark.slow
@pytest.mark.parametrize("family", list(FAMILIES))
def test_family_trains_with_two_gloo_ranks(family, family_dirs, rows, tmp_path):
    config = family_config(tmp_path, family_dirs[family], family, batch_size=8, warm_start=False, epochs=2)
    store = ArtifactStore(config.artifact_root)
    fake_upstream(config, store, "ddp", DAY, [dict(row) for row in rows])
    config_path = tmp_path / "config.yaml"
    config_path.write_text(yaml.safe_dump(config.to_dict()))
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", "-m", "tasks.train",
               "--config", str(config_path), "--run-id", "ddp", "--input", "augment", "--input", "clean",
               "--logical-date", DAY]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "FRESHET_THREADS_PER_RANK": "1"}
    result = subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    manifest = read_manifest(store, "ddp", "train")
    assert manifest is not None and manifest.metrics["world_size"] == 2
    assert TrainFacts.of(manifest).model.model_type == family


def test_default_lora_targets_follow_the_family(family_dirs):
    from transformers import AutoModelForSequenceClassification

    from tasks.models.families import lora_targets

    expected = {"bert": ["query", "value"], "distilbert": ["q_lin", "v_lin"], "roberta": ["query", "value"],
                "xlm-roberta": ["query", "value"], "deberta-v2": ["query_proj", "value_proj"],
                "electra": ["query", "value"], "modernbert": ["Wqkv"]}
    for family, directory in family_dirs.items():
        model = AutoModelForSequenceClassification.from_pretrained(str(directory), num_labels=3)
        assert lora_targets(model, None) == expected[family], family
        assert lora_targets(model, expected[family][:1]) == expected[family][:1]


def test_lora_trains_a_non_bert_family_and_its_whole_head(family_dirs, rows, tmp_path):
    """DistilBERT: default targets q_lin/v_lin, and its two-layer head (pre_classifier + classifier) trains."""
    from tasks.train import fit
    from tasks.training.data import TrainingData
    from tests.pipeline_support import CPU

    config = family_config(tmp_path, family_dirs["distilbert"], "distilbert", epochs=1, peft={"r": 4})
    result = fit(config, TrainingData(rows[:120], rows[120:], {}), CPU, tmp_path / "checkpoints", None)
    hidden = 32
    head = (hidden * hidden + hidden) + (hidden * len(LABELS) + len(LABELS))  # pre_classifier + classifier
    adapters = 2 * 2 * (4 * hidden + hidden * 4)  # 2 layers x (q_lin, v_lin) x (A + B)
    assert result.metrics["parameters_trainable"] == adapters + head
    assert not any("lora" in name for name in result.model.state_dict())
