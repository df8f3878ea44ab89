"""Register every candidate as a model version with alias `challenger`, whatever the verdict.

The version holds a pyfunc (tasks/serving.py) over the candidate's Hugging Face directory, with a
signature and an input example, and carries the evidence as tags: gate verdict and reasons, data
digests, the GX result digest, config hash, git commit and the Airflow dag/run/try ids. A retry of
the same run finds its version by tag and creates no second one.
"""

from __future__ import annotations

import json
import logging
import subprocess
from pathlib import Path

from tasks import registry
from tasks.config import PipelineConfig
from tasks.contract import Manifest, StepContext, airflow_identity, cli, execute, step_fingerprint
from tasks.store import ArtifactStore

STEP = "register"
SECTIONS = ("mlflow", "train")
log = logging.getLogger("freshet.register")


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True,
                              cwd=Path(__file__).resolve().parent).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def evidence_tags(config: PipelineConfig, inputs: dict[str, Manifest], run_id: str, fingerprint: str) -> dict[str, str]:
    gate = inputs["compress"].facts["gate"]
    tags = {
        "freshet.run_id": run_id,
        "freshet.fingerprint": fingerprint,
        "freshet.gate": "passed" if gate["passed"] else "rejected",
        "freshet.gate_reasons": "; ".join(gate["reasons"]) or "all checks passed",
        "freshet.serving_variant": gate.get("serving_variant", "fp32"),
        "freshet.compared_champion": str(inputs["compress"].facts.get("champion_version")),
        "freshet.config_hash": config.config_hash,
        "freshet.git_commit": git_commit(),
        "freshet.data.validated_digest": inputs["validate"].output("valid").digest,
        "freshet.data.clean_digest": inputs["clean"].output("dataset").digest,
        "freshet.model_digest": inputs["train"].output("model").digest,
        "freshet.gx_result_digest": inputs["validate"].output("gx_result").digest,
    }
    for name, value in airflow_identity().items():
        tags[f"airflow.{name}"] = value
    for key, value in inputs["evaluate"].metrics.items():
        if key.startswith(("candidate.", "champion.")):
            tags[f"metric.{key}"] = f"{value:.4f}" if isinstance(value, float) else str(value)
    return tags


def find_version(client, name: str, run_id: str, fingerprint: str):
    versions = client.search_model_versions(f"name = '{name}' and tags.`freshet.run_id` = '{run_id}'")
    return next((version for version in versions if version.tags.get("freshet.fingerprint") == fingerprint), None)


def run(config: PipelineConfig, inputs: dict[str, Manifest], *, run_id: str, store: ArtifactStore,
        logical_date: str | None = None) -> Manifest:
    fingerprint = step_fingerprint(STEP, config, inputs, logical_date, SECTIONS)

    def body(context: StepContext) -> None:
        import mlflow
        import pandas as pd
        from mlflow.models import infer_signature

        from tasks.tracking import step_run

        client = registry.client(config)
        name = config.mlflow.model_name
        tags = evidence_tags(config, inputs, run_id, fingerprint)
        version = find_version(client, name, run_id, fingerprint)
        if version is None:
            compress_facts = inputs["compress"].facts
            gate = compress_facts["gate"]
            variant = gate.get("serving_variant", "fp32")
            artifacts = {registry.HF_ARTIFACT: str(context.input_path("train", "model"))}
            if compress_facts.get("serving_artifact"):  # the ONNX file the chosen variant serves
                artifacts["onnx_model"] = str(context.input_path("compress", compress_facts["serving_artifact"]))
            example = pd.DataFrame({"text": ["a sample text to classify", "another one"]})
            signature = infer_signature(example, pd.DataFrame({"label": [config.labels[0]] * 2, "probability": [0.5, 0.5]}))
            with step_run(config, run_id, STEP, logical_date):
                info = mlflow.pyfunc.log_model(
                    name="model",
                    python_model=str(Path(__file__).with_name("serving.py")),
                    artifacts=artifacts,
                    code_paths=[str(Path(__file__).resolve().parent)],
                    model_config={"variant": variant, "max_length": config.train.max_length},
                    signature=signature,
                    input_example=example,
                )
                version = mlflow.register_model(info.model_uri, name, tags=tags)
            verdict = "passed the gate" if gate["passed"] else "REJECTED by the gate: " + tags["freshet.gate_reasons"]
            client.update_model_version(name, version.version, description=(
                f"Candidate from freshet run {run_id} ({logical_date}); {verdict}. "
                f"Serving variant: {tags['freshet.serving_variant']}. Evidence in the tags and in the run's MLflow artifacts."))
        else:
            log.info("register: run %s already registered as version %s", run_id, version.version)
        client.set_registered_model_alias(name, registry.CHALLENGER, version.version)
        (context.out_dir / "registration.json").write_text(json.dumps({"name": name, "version": str(version.version),
                                                                       "tags": tags}, indent=2))
        context.add_output("registration", "registration.json", "report")
        context.metrics["version"] = int(version.version)
        context.facts.update({"name": name, "version": str(version.version), "gate": inputs["compress"].facts["gate"],
                              "compared_champion": inputs["compress"].facts.get("champion_version")})

    return execute(STEP, body, config, inputs, run_id=run_id, store=store, logical_date=logical_date,
                   config_sections=SECTIONS)


def main(argv: list[str] | None = None) -> int:
    return cli(STEP, run, argv, __doc__)


if __name__ == "__main__":
    raise SystemExit(main())
