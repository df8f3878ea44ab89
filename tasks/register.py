"""Register every candidate as a model version with alias `challenger`, whatever the verdict.

The version holds a pyfunc (tasks/models/serving.py) over the candidate's Hugging Face directory, with a
signature and an input example, and carries the evidence as tags: gate verdict and reasons, data
digests, the GX result digest, config hash, git commit and the Airflow dag/run/try ids. A retry of
the same run finds its version by tag and creates no second one. The version's source run (this step's
run) also holds the evidence itself: the candidate's metrics per slice, the gate verdict and report with
the confusion matrix, the compression table, the validation report, the data snapshots as dataset
inputs and the Airflow run's tags, so the version page reaches all of it in one hop. The model is logged
into that run before the commit (a version is made from a run's model); the evidence is recorded by the
contract's `track` after it, from the committed manifests and artifacts, so a kill in between loses nothing.

Serving check: the new version is loaded by its `models:/<name>/<version>` URI in a fresh Python
process (nothing of this process's imports or state) and must reproduce the compress step's
predictions of the serving variant on its fixed sample (`serving_sample`): equal labels (unless the
expected top two are within the tolerance) and the predicted label's probability within the
tolerance. The result is the version tag `freshet.serving_check`; a failure fails the step before
the version gets `challenger`.
"""

from __future__ import annotations

import json
import logging
import math
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from tasks import model_registry
from tasks.compress import CompressFacts
from tasks.config import PipelineConfig
from tasks.contract import StepContext, cli, execute
from tasks.gate_policy import GateFacts
from tasks.manifest import ArtifactRef, Manifest, StepError, StepFacts, airflow_identity
from tasks.models.serving_check import compare_serving
from tasks.records import CleanFacts
from tasks.store import ArtifactStore
from tasks.tracking import log_dataset, manifest_timestamp
from tasks.train import TrainFacts

STEP = "register"
SECTIONS = ("mlflow", "train")
log = logging.getLogger("freshet.register")


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True,
                              cwd=Path(__file__).resolve().parent).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


# What the served pyfunc imports, pinned to this environment. Declared rather than inferred: MLflow's
# inference loads the model in a subprocess to watch its imports, which costs ~30 s per version.
SERVING_PACKAGES = ("mlflow", "torch", "transformers", "tokenizers", "safetensors", "onnxruntime", "numpy", "pandas",
                    "pydantic", "pyyaml")


def serving_requirements() -> list[str]:
    from importlib.metadata import PackageNotFoundError, version

    pins = []
    for package in SERVING_PACKAGES:
        try:
            pins.append(f"{package}=={version(package)}")
        except PackageNotFoundError:
            continue
    return pins


class RegisterFacts(StepFacts):
    """The registered version, the gate verdict it was registered with, the champion that verdict compared it
    with, and the fresh-process serving check."""

    name: str
    version: str
    gate: GateFacts
    compared_champion: str | None
    serving_check: dict[str, Any]


def evidence_tags(config: PipelineConfig, inputs: dict[str, Manifest], run_id: str, fingerprint: str) -> dict[str, str]:
    compressed, trained = CompressFacts.of(inputs["compress"]), TrainFacts.of(inputs["train"])
    gate = compressed.gate
    tags = {
        "freshet.run_id": run_id,
        "freshet.fingerprint": fingerprint,
        "freshet.gate": "passed" if gate.passed else "rejected",
        "freshet.gate_reasons": "; ".join(gate.reasons) or "all checks passed",
        "freshet.serving_variant": gate.serving_variant or "fp32",
        "freshet.compared_champion": str(compressed.champion_version),
        "freshet.config_hash": config.config_hash,
        "freshet.git_commit": git_commit(),
        "freshet.data.validated_digest": inputs["validate"].output("valid").digest,
        "freshet.data.clean_digest": inputs["clean"].output("dataset").digest,
        "freshet.model_digest": inputs["train"].output("model").digest,
        # The label set of this version, in the order of the classifier's rows (it grows with new_labels: extend).
        "freshet.labels": json.dumps(trained.labels),
        "freshet.model_source": trained.model.source,
        "freshet.gx_result_digest": inputs["validate"].output("gx_result").digest,
    }
    for name, value in airflow_identity().items():
        tags[f"airflow.{name}"] = value
    for key, metric in inputs["evaluate"].metrics.items():
        if key.startswith(("candidate.", "champion.")):
            tags[f"metric.{key}"] = f"{metric:.4f}" if isinstance(metric, float) else str(metric)
    return tags


# What the version's run holds so an auditor reaches it from the version page in one hop:
# (input step, output name, artifact folder in the run).
EVIDENCE_ARTIFACTS = (
    ("evaluate", "evaluation", "evidence/evaluation"),
    ("evaluate", "report", "evidence/evaluation"),
    ("evaluate", "confusion_matrix", "evidence/evaluation"),
    ("compress", "gate", "evidence/gate"),
    ("compress", "compression", "evidence/compression"),
    ("validate", "validation_report", "evidence/validation"),
    ("validate", "gx_result", "evidence/validation"),
)


def log_evidence(config: PipelineConfig, store: ArtifactStore, inputs: dict[str, Manifest], manifest: Manifest) -> None:
    """Into the active (register) run, which the model version names as its source: the candidate's metrics
    per slice, the final gate verdict and report with the confusion matrix, the compression table, the
    validation report, and the data snapshots it was trained and tested on as dataset inputs. From the committed
    input manifests and artifacts only (register's `track`, repeated as it is by a recovery after a kill)."""
    import mlflow
    import pandas as pd

    metrics = {f"{step}.{key}": float(value) for step in ("evaluate", "compress")
               for key, value in inputs[step].metrics.items()
               if isinstance(value, int | float) and not isinstance(value, bool) and not math.isnan(value)}
    mlflow.log_metrics(metrics, timestamp=manifest_timestamp(manifest))
    for step, output, folder in EVIDENCE_ARTIFACTS:
        if output in inputs[step].outputs:
            mlflow.log_artifact(str(store.local_path(inputs[step].output(output).uri)), artifact_path=folder)
    dataset = inputs["clean"].output("dataset")  # this day's train/validation/test splits
    log_dataset(pd.read_parquet(store.local_path(dataset.uri)), dataset, name=f"{config.name}.dataset",
                context="training")
    for snapshot in CleanFacts.of(inputs["clean"]).prior_snapshots:  # replayed, and the old test slices
        ref = ArtifactRef(uri=snapshot.uri, kind="dataset", digest=snapshot.digest, rows=snapshot.rows)
        log_dataset(pd.read_parquet(store.local_path(ref.uri)), ref, name=f"{config.name}.dataset",
                    context=f"earlier snapshot {snapshot.logical_date or snapshot.run_id}")
    mlflow.set_tags({"freshet.evidence": "metrics, evidence/ artifacts and dataset inputs of this run",
                     **{f"freshet.manifest.{step}": inputs[step].uri for step in inputs}})


def find_version(client, name: str, run_id: str, fingerprint: str):
    versions = client.search_model_versions(f"name = '{name}' and tags.`freshet.run_id` = '{run_id}'")
    return next((version for version in versions if version.tags.get("freshet.fingerprint") == fingerprint), None)


# Runs in the fresh process: only mlflow and pandas, the model brings its own code (code_paths).
SERVING_CHECK_SCRIPT = """
import json, sys
import mlflow, pandas as pd
uri, source, target = sys.argv[1:4]
with open(source) as handle:
    texts = json.load(handle)["texts"]
result = mlflow.pyfunc.load_model(uri).predict(pd.DataFrame({"text": texts}))
with open(target, "w") as handle:
    json.dump({"labels": [str(label) for label in result["label"]],
               "probabilities": [float(value) for value in result["probability"]]}, handle)
"""


def absolute_tracking_uri(uri: str) -> str:
    """A relative `sqlite:///file.db` (relative to this process's working directory) made absolute, for a
    process started in another directory; other URIs unchanged."""
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri.startswith(prefix + "/") and uri != prefix + ":memory:":
        return prefix + str(Path(uri[len(prefix):]).resolve())
    return uri


def check_serving(config: PipelineConfig, model_uri: str, sample: dict[str, Any], *,
                  timeout_s: float = 900) -> dict[str, Any]:
    """Load `model_uri` with `mlflow.pyfunc.load_model` in a fresh process and compare with `sample`."""
    with tempfile.TemporaryDirectory(prefix="freshet-serving-check-") as directory:
        source, target = Path(directory) / "sample.json", Path(directory) / "served.json"
        source.write_text(json.dumps({"texts": sample["texts"]}))
        # The check runs in a temporary directory: a relative sqlite:///mlflow.db would name another database.
        tracking_uri = absolute_tracking_uri(config.mlflow.tracking_uri)
        env = dict(os.environ, MLFLOW_TRACKING_URI=tracking_uri, MLFLOW_REGISTRY_URI=tracking_uri)
        # cwd outside the repository: the model must load from what the registry holds.
        process = subprocess.run([sys.executable, "-c", SERVING_CHECK_SCRIPT, model_uri, str(source), str(target)],
                                 cwd=directory, env=env, capture_output=True, text=True, timeout=timeout_s, check=False)
        if process.returncode != 0:
            tail = process.stderr.strip().splitlines()[-5:]
            return {"passed": False, "rows": len(sample["texts"]), "max_abs_diff": float("nan"), "mismatches": [],
                    "message": f"loading or predicting in a fresh process failed (exit {process.returncode}): "
                               + " | ".join(tail)}
        return compare_serving(sample, json.loads(target.read_text()))


def run(config: PipelineConfig, inputs: dict[str, Manifest], *, run_id: str, store: ArtifactStore,
        logical_date: str | None = None) -> Manifest:
    def body(context: StepContext) -> None:
        client = model_registry.client(config)
        name = config.mlflow.model_name
        tags = evidence_tags(config, inputs, run_id, context.fingerprint)
        version = find_version(client, name, run_id, context.fingerprint)
        if version is None:
            version = register_version(config, context, client, tags)
        else:
            log.info("register: run %s already registered as version %s", run_id, version.version)
        check = serving_check(config, context, client, name, str(version.version))
        client.set_registered_model_alias(name, model_registry.CHALLENGER, version.version)
        (context.out_dir / "registration.json").write_text(json.dumps({"name": name, "version": str(version.version),
                                                                       "tags": tags}, indent=2))
        context.add_output("registration", "registration.json", "report")
        context.metrics["version"] = int(version.version)
        compressed = CompressFacts.of(inputs["compress"])
        context.facts.update(RegisterFacts(serving_check=check, name=name, version=str(version.version),
                                           gate=compressed.gate, compared_champion=compressed.champion_version).dump())

    def track(manifest: Manifest) -> None:
        log_evidence(config, store, inputs, manifest)

    return execute(STEP, body, config, inputs, run_id=run_id, store=store, logical_date=logical_date,
                   config_sections=SECTIONS, track=track)


def register_version(config: PipelineConfig, context: StepContext, client, tags: dict[str, str]):
    """Log the serving pyfunc in the step's MLflow run (the version's source run, where `track` records the
    evidence after the commit) and register it as a new version with the evidence tags and a description."""
    import mlflow
    import pandas as pd
    from mlflow.models import infer_signature

    gate = CompressFacts.of(context.input("compress")).gate
    example = pd.DataFrame({"text": ["a sample text to classify", "another one"]})
    signature = infer_signature(example, pd.DataFrame({"label": [config.labels[0]] * 2, "probability": [0.5, 0.5]}))
    with context.mlflow_run():
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=str(Path(__file__).parent / "models" / "serving.py"),
            artifacts=served_artifacts(context, dict(context.inputs)),
            code_paths=[str(Path(__file__).resolve().parent)],
            model_config={"variant": gate.serving_variant or "fp32", "max_length": config.train.max_length,
                          **({"trust_remote_code": True} if config.train.trust_remote_code else {})},
            signature=signature,
            input_example=example,
            pip_requirements=serving_requirements(),
        )
        version = mlflow.register_model(info.model_uri, config.mlflow.model_name, tags=tags)
    verdict = "passed the gate" if gate.passed else "REJECTED by the gate: " + tags["freshet.gate_reasons"]
    client.update_model_version(config.mlflow.model_name, version.version, description=(
        f"Candidate from freshet run {context.run_id} ({context.logical_date}); {verdict}. "
        f"Serving variant: {tags['freshet.serving_variant']}. Evidence in the tags and in the run's MLflow artifacts."))
    return version


def served_artifacts(context: StepContext, inputs: dict[str, Manifest]) -> dict[str, str]:
    """What the pyfunc serves: the Hugging Face directory, the ONNX file or distilled student the gate chose, and
    the lexical blend."""
    compressed = CompressFacts.of(inputs["compress"])
    artifacts = {model_registry.HF_ARTIFACT: str(context.input_path("train", "model"))}
    if compressed.serving_artifact:  # the ONNX file the chosen variant serves
        artifacts["onnx_model"] = str(context.input_path("compress", compressed.serving_artifact))
    if compressed.serving_model:  # the distilled student's HF directory
        artifacts["student_model"] = str(context.input_path("compress", compressed.serving_model))
    if "blend" in inputs["evaluate"].outputs:  # the lexical model served blended with the transformer
        artifacts[model_registry.BLEND_ARTIFACT] = str(context.input_path("evaluate", "blend"))
    return artifacts


def serving_check(config: PipelineConfig, context: StepContext, client, name: str, version: str) -> dict[str, Any]:
    """Run (or, on a retry that already passed, reuse) the fresh-process check; tag the version; raise on failure."""
    compress = context.input("compress")
    if "serving_sample" not in compress.outputs:
        client.set_model_version_tag(name, version, "freshet.serving_check", "skipped: no serving_sample from compress")
        return {"passed": None, "message": "skipped: compress wrote no serving_sample"}
    existing = client.get_model_version(name, version).tags
    if existing.get("freshet.serving_check") == "passed":
        return {"passed": True, "message": "passed on an earlier try",
                "rows": int(existing.get("freshet.serving_check.rows", 0))}
    sample = json.loads(context.input_path("compress", "serving_sample").read_text())
    uri = f"models:/{name}/{version}"
    result = check_serving(config, uri, sample)
    client.set_model_version_tag(name, version, "freshet.serving_check", "passed" if result["passed"] else "failed")
    client.set_model_version_tag(name, version, "freshet.serving_check.detail", result["message"][:4000])
    client.set_model_version_tag(name, version, "freshet.serving_check.rows", str(result["rows"]))
    client.set_model_version_tag(name, version, "freshet.serving_check.max_abs_diff", f"{result['max_abs_diff']:.3g}")
    report = result | {"model_uri": uri, "variant": sample["variant"]}
    (context.out_dir / "serving_check.json").write_text(json.dumps(report, indent=2))
    context.add_output("serving_check", "serving_check.json", "report")
    if not result["passed"]:
        raise StepError(f"register: serving check failed for {uri} (variant {sample['variant']}): the registered "
                        f"model, loaded in a fresh process, does not reproduce the compress step's predictions: "
                        f"{result['message']}")
    log.info("register: %s reproduces the %s predictions on %d rows (max |dp| %.2g)", uri, sample["variant"],
             result["rows"], result["max_abs_diff"])
    return result


def main(argv: list[str] | None = None) -> int:
    return cli(STEP, run, argv, __doc__)


if __name__ == "__main__":
    raise SystemExit(main())
