"""The Kubeflow PyTorchJob rendered from the train config: checked against a JSON schema written from
the training-operator CRD's fields (kubeflow.org/v1) and, for the pod template, the kubernetes client's
own models; and the DAG, parsed with `runner.mode: kubernetes` and two nodes, creates it."""

from __future__ import annotations

import json
import re
import uuid
from types import SimpleNamespace

import jsonschema
import pytest
import yaml

from freshet_airflow import dag_settings
from freshet_airflow.kubeflow import PyTorchJobOperator, job_state, render_pytorchjob
from tasks.config import PipelineConfig
from tests.conftest import REPO

DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
REPLICA_SPEC = {
    "type": "object", "required": ["template"], "additionalProperties": False,
    "properties": {
        "replicas": {"type": "integer", "minimum": 0},
        "restartPolicy": {"enum": ["Always", "OnFailure", "Never", "ExitCode"]},
        "template": {"type": "object", "required": ["spec"], "properties": {"spec": {
            "type": "object", "required": ["containers"], "properties": {"containers": {
                "type": "array", "minItems": 1,
                "contains": {"type": "object", "properties": {"name": {"const": "pytorch"}}, "required": ["name"]},
                "items": {"type": "object", "required": ["name", "image"]}}}}}},
    },
}
# kubeflow.org/v1 PyTorchJob (training-operator v1.7+): spec.pytorchReplicaSpecs is required; the
# replica types are Master and Worker; elasticPolicy and nprocPerNode as in pytorch_types.go.
PYTORCHJOB_SCHEMA = {
    "type": "object", "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "kubeflow.org/v1"},
        "kind": {"const": "PyTorchJob"},
        "metadata": {"type": "object", "required": ["name"], "properties": {"name": {"type": "string"},
                                                                           "namespace": {"type": "string"}}},
        "spec": {
            "type": "object", "required": ["pytorchReplicaSpecs"], "additionalProperties": False,
            "properties": {
                "pytorchReplicaSpecs": {"type": "object", "minProperties": 1, "propertyNames": {"enum": ["Master", "Worker"]},
                                        "additionalProperties": REPLICA_SPEC},
                "nprocPerNode": {"type": "string", "pattern": r"^(auto|cpu|gpu|[1-9][0-9]*)$"},
                "elasticPolicy": {"type": "object", "additionalProperties": False, "properties": {
                    "minReplicas": {"type": "integer", "minimum": 1}, "maxReplicas": {"type": "integer", "minimum": 1},
                    "rdzvBackend": {"enum": ["c10d", "etcd", "etcd-v2"]}, "rdzvPort": {"type": "integer"},
                    "rdzvHost": {"type": "string"}, "rdzvId": {"type": "string"}, "standalone": {"type": "boolean"},
                    "nProcPerNode": {"type": "integer"}, "maxRestarts": {"type": "integer", "minimum": 0},
                    "metrics": {"type": "array"}}},
                "runPolicy": {"type": "object", "properties": {
                    "cleanPodPolicy": {"enum": ["All", "Running", "None"]},
                    "backoffLimit": {"type": "integer", "minimum": 0},
                    "activeDeadlineSeconds": {"type": "integer", "minimum": 0},
                    "ttlSecondsAfterFinished": {"type": "integer", "minimum": 0}}},
            },
        },
    },
}


def config(tmp_path, **train) -> PipelineConfig:
    return PipelineConfig.model_validate({
        "name": "Freshet_Demo", "labels": ["a", "b"], "artifact_root": "s3://bucket/freshet",
        "mlflow": {"tracking_uri": "http://mlflow:5000"},
        "crawl": {"sources": [{"name": "s", "url": "https://example.org/feed/"}]},
        "runner": {"mode": "kubernetes", "image": "registry.example/freshet:1.2", "gpus": 4, "namespace": "ml",
                   "env": {"MLFLOW_TRACKING_URI": "http://mlflow:5000"}},
        "train": {"nnodes": 3, "max_restarts": 2, **train},
    })


def render_templates(document: dict, try_number: int = 1) -> dict:
    """What Airflow's Jinja rendering makes of the templated strings, for a scheduled run."""
    from jinja2 import Environment, StrictUndefined

    context = {"run_id": "scheduled__2026-11-02T00:00:00+00:00", "ds": "2026-11-02",
               "ti": SimpleNamespace(id=uuid.UUID("0196f3b2-7c1e-7d43-9a51-3c2f9e8d7a60"), try_number=try_number),
               "dag": SimpleNamespace(dag_id="freshet")}
    text = Environment(undefined=StrictUndefined).from_string(yaml.safe_dump(document)).render(**context)
    return yaml.safe_load(text)


def pod_template_round_trips(template: dict) -> bool:
    """The kubernetes client's V1PodTemplateSpec reads every field back (a misspelt key would be dropped)."""
    from kubernetes.client import ApiClient

    client = ApiClient()
    model = client.deserialize(SimpleNamespace(data=json.dumps(template)), "V1PodTemplateSpec")
    return client.sanitize_for_serialization(model) == template


def test_fixed_size_job_has_one_master_and_n_minus_one_workers(tmp_path):
    job = render_templates(render_pytorchjob(config(tmp_path), inputs=["augment", "clean"], overrides=["train.epochs=1"]))
    jsonschema.validate(job, PYTORCHJOB_SCHEMA)
    replicas = job["spec"]["pytorchReplicaSpecs"]
    assert replicas["Master"]["replicas"] == 1 and replicas["Worker"]["replicas"] == 2
    assert job["spec"]["nprocPerNode"] == "gpu"  # one rank per GPU of the pod
    assert "elasticPolicy" not in job["spec"]
    assert job["metadata"]["namespace"] == "ml"
    assert re.match(DNS_LABEL, job["metadata"]["name"]) and len(job["metadata"]["name"] + "-worker-0") <= 63
    assert job["metadata"]["name"].startswith("freshet-demo-train-")
    container = replicas["Worker"]["template"]["spec"]["containers"][0]
    assert container["image"] == "registry.example/freshet:1.2"
    assert container["command"] == ["torchrun"]
    arguments = container["args"]
    assert arguments[arguments.index("-m") + 1] == "tasks.train"
    assert not any(argument.startswith(("--nnodes", "--rdzv", "--master")) for argument in arguments)  # from PET_* env
    assert arguments[arguments.index("--run-id") + 1] == "scheduled__2026-11-02T00:00:00+00:00"
    assert arguments[arguments.index("--set") + 1] == "train.epochs=1"
    assert [arguments[i + 1] for i, value in enumerate(arguments) if value == "--input"] == ["augment", "clean"]
    assert container["resources"]["limits"] == {"nvidia.com/gpu": "4"}
    env = {item["name"]: item["value"] for item in container["env"]}
    assert env["MLFLOW_TRACKING_URI"] == "http://mlflow:5000" and env["FRESHET_DAG_RUN_ID"].startswith("scheduled__")
    for replica in replicas.values():
        assert pod_template_round_trips(replica["template"])


def test_elastic_job_has_workers_only_and_an_elastic_policy(tmp_path):
    job = render_templates(render_pytorchjob(config(tmp_path, min_nnodes=2, nproc_per_node=8)))
    jsonschema.validate(job, PYTORCHJOB_SCHEMA)
    assert list(job["spec"]["pytorchReplicaSpecs"]) == ["Worker"]
    assert job["spec"]["pytorchReplicaSpecs"]["Worker"]["replicas"] == 3
    assert job["spec"]["elasticPolicy"] == {"rdzvBackend": "c10d", "minReplicas": 2, "maxReplicas": 3, "maxRestarts": 2}
    assert job["spec"]["nprocPerNode"] == "8"


def test_retries_get_distinct_job_names(tmp_path):
    job = render_pytorchjob(config(tmp_path))
    assert render_templates(job, 1)["metadata"]["name"] != render_templates(job, 2)["metadata"]["name"]


def test_the_schema_rejects_what_the_crd_rejects(tmp_path):
    job = render_templates(render_pytorchjob(config(tmp_path)))
    broken = json.loads(json.dumps(job))
    broken["spec"]["pytorchReplicaSpecs"]["Chief"] = broken["spec"]["pytorchReplicaSpecs"].pop("Worker")
    with pytest.raises(jsonschema.ValidationError, match="Chief"):
        jsonschema.validate(broken, PYTORCHJOB_SCHEMA)
    renamed = json.loads(json.dumps(job))
    renamed["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0]["name"] = "trainer"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(renamed, PYTORCHJOB_SCHEMA)


def test_job_state_reads_the_latest_terminal_condition():
    running = {"status": {"conditions": [{"type": "Created", "status": "True"}, {"type": "Running", "status": "True"}]}}
    failed = {"status": {"conditions": [{"type": "Running", "status": "False"}, {"type": "Failed", "status": "True"}]}}
    assert job_state({}) is None and job_state(running) is None
    assert job_state(failed) == "Failed"
    assert job_state({"status": {"conditions": [{"type": "Succeeded", "status": "True"}]}}) == "Succeeded"


def test_min_nnodes_above_nnodes_is_a_config_error(tmp_path):
    with pytest.raises(ValueError, match="min_nnodes"):
        config(tmp_path, nnodes=2, min_nnodes=3)


def test_dag_parses_with_a_pytorchjob_train_task_on_kubernetes(tmp_path, monkeypatch):
    from airflow.dag_processing.dagbag import DagBag

    data = yaml.safe_load((REPO / "configs" / "demo.yaml").read_text())
    data.setdefault("runner", {}).update({"mode": "kubernetes", "image": "freshet:test", "gpus": 1})
    data.setdefault("train", {}).update({"nnodes": 2})
    config_path = tmp_path / "k8s.yaml"
    config_path.write_text(yaml.safe_dump(data))
    monkeypatch.setenv("FRESHET_CONFIG", str(config_path))
    dag_settings.pipeline_config.cache_clear()

    bag = DagBag(dag_folder=str(REPO / "dags"))
    assert bag.import_errors == {}
    task = bag.dags["freshet"].get_task("train")
    assert isinstance(task, PyTorchJobOperator)
    assert task.custom_resource_definition and "yaml_conf" in task.template_fields
    job = render_templates(yaml.safe_load(task.yaml_conf))
    jsonschema.validate(job, PYTORCHJOB_SCHEMA)
    assert job["spec"]["pytorchReplicaSpecs"]["Worker"]["replicas"] == 1
    print(yaml.safe_dump(job, sort_keys=False))  # the rendered manifest, visible with -s
