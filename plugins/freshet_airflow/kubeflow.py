"""Multi-node training on Kubernetes as a Kubeflow PyTorchJob (kubeflow.org/v1, training-operator).

`runner.mode: kubernetes` with `train.nnodes > 1`: the train config renders one PyTorchJob (one pod
per node, `nproc_per_node` ranks each, our image, `torchrun -m tasks.train ...`) and the operator
creates it, then waits for its Succeeded / Failed condition. The training operator injects the
rendezvous settings as `PET_*` variables (PET_NNODES, PET_NODE_RANK, PET_MASTER_ADDR, or the c10d
endpoint under `elasticPolicy`) and torchrun reads them, so the command names no addresses. The
train manifest lands in the artifact store like every step's; downstream steps read it from there.

Imported only from `factory.train_step` in that mode: the kubernetes client stays out of DAG parsing
for every other runner.
"""

from __future__ import annotations

import copy
import re
import time
from collections.abc import Sequence
from typing import Any

import yaml
from airflow.providers.cncf.kubernetes.operators.resource import KubernetesCreateResourceOperator

from freshet_airflow.operators import AIRFLOW_IDENTITY_ENV, step_arguments

API_VERSION = "kubeflow.org/v1"
KIND = "PyTorchJob"
# The training operator finds the training container by this name.
CONTAINER_NAME = "pytorch"


def job_name(pipeline_name: str) -> str:
    """DNS-1123, unique per task try (a retry must not collide with the failed job), and short: the
    per-replica service names (`<job>-worker-0`) must stay within 63 characters. The tail of the
    try's UUID7 is its random part; manual runs in Airflow 3 may have no logical date to use."""
    base = re.sub(r"[^a-z0-9-]+", "-", pipeline_name.lower()).strip("-")[:20] or "freshet"
    return f"{base}-train-{{{{ (ti.id | string)[-12:] }}}}-{{{{ ti.try_number }}}}"


def nproc_per_node(config) -> str:
    settings = config.train
    if settings.nproc_per_node != "auto":
        return str(settings.nproc_per_node)
    return "gpu" if config.runner.gpus else str(settings.cpu_processes)


def render_pytorchjob(config, *, inputs: Sequence[str] = (), overrides: Sequence[str] = ()) -> dict[str, Any]:
    """The PyTorchJob for this pipeline's train step, as a plain dict (the CRD body)."""
    from kubernetes.client import ApiClient
    from kubernetes.client import models as k8s

    settings, runner = config.train, config.runner
    arguments = ["--local-ranks-filter=0", "-m", "tasks.train",
                 *step_arguments("train", runner.container_config_path, inputs, overrides)]
    environment = {**AIRFLOW_IDENTITY_ENV, **runner.env, "FRESHET_THREADS_PER_RANK": "auto", "PYTHONUNBUFFERED": "1"}
    container = k8s.V1Container(
        name=CONTAINER_NAME, image=runner.image, image_pull_policy="IfNotPresent",
        command=["torchrun"], args=arguments,
        env=[k8s.V1EnvVar(name=key, value=str(value)) for key, value in environment.items()],
        resources=k8s.V1ResourceRequirements(limits={"nvidia.com/gpu": str(runner.gpus)}) if runner.gpus else None,
    )
    # Typed kubernetes models catch a misspelt pod field here, not in the cluster.
    template = ApiClient().sanitize_for_serialization(k8s.V1PodTemplateSpec(
        metadata=k8s.V1ObjectMeta(labels={"app.kubernetes.io/name": "freshet", "app.kubernetes.io/component": "train"}),
        spec=k8s.V1PodSpec(containers=[container]),
    ))

    def replicas(count: int) -> dict[str, Any]:
        # A copy each: shared objects would dump as YAML anchors, unreadable in the rendered-template view.
        return {"replicas": count, "restartPolicy": "OnFailure", "template": copy.deepcopy(template)}

    elastic = settings.min_nnodes is not None and settings.min_nnodes < settings.nnodes
    spec: dict[str, Any] = {
        "nprocPerNode": nproc_per_node(config),
        "runPolicy": {"cleanPodPolicy": "None", "backoffLimit": settings.max_restarts},
    }
    if elastic:
        # Elastic: workers only; torchrun's c10d rendezvous admits between min and max nodes.
        spec["elasticPolicy"] = {"rdzvBackend": "c10d", "minReplicas": settings.min_nnodes,
                                 "maxReplicas": settings.nnodes, "maxRestarts": settings.max_restarts}
        spec["pytorchReplicaSpecs"] = {"Worker": replicas(settings.nnodes)}
    else:
        spec["pytorchReplicaSpecs"] = {"Master": replicas(1)}
        if settings.nnodes > 1:
            spec["pytorchReplicaSpecs"]["Worker"] = replicas(settings.nnodes - 1)
    return {
        "apiVersion": API_VERSION, "kind": KIND,
        "metadata": {"name": job_name(config.name), "namespace": runner.namespace,
                     "labels": {"app.kubernetes.io/name": "freshet", "freshet/pipeline": config.name}},
        "spec": spec,
    }


def job_state(job: dict[str, Any]) -> str | None:
    """"Succeeded" / "Failed" once the job has finished (its latest true condition), else None."""
    for condition in reversed((job.get("status") or {}).get("conditions") or []):
        if condition.get("status") == "True" and condition.get("type") in ("Succeeded", "Failed"):
            return condition["type"]
    return None


class PyTorchJobOperator(KubernetesCreateResourceOperator):
    """Creates the rendered PyTorchJob and waits until it succeeds or fails (then raises, with its message)."""

    ui_color = "#f6d8b8"

    def __init__(self, *, poll_interval_s: float = 30.0, **kwargs: Any) -> None:
        kwargs.setdefault("custom_resource_definition", True)
        super().__init__(**kwargs)
        self.poll_interval_s = poll_interval_s
        self._job: tuple[str, str, str, str, str] | None = None

    def execute(self, context: Any) -> dict[str, str]:  # type: ignore[override]  # the job's state goes to XCom
        super().execute(context)
        body = yaml.safe_load(self.yaml_conf)
        group, version, namespace, plural = self.get_crd_fields(body)
        name = body["metadata"]["name"]
        self._job = (group, version, namespace, plural, name)
        self.log.info("PyTorchJob %s/%s created; waiting for it to finish", namespace, name)
        while True:
            job = self.custom_object_client.get_namespaced_custom_object(group, version, namespace, plural, name)
            state = job_state(job)
            if state == "Succeeded":
                return {"pytorchjob": name, "namespace": namespace}
            if state == "Failed":
                message = next((c.get("message", "") for c in reversed(job["status"]["conditions"])
                                if c.get("type") == "Failed"), "")
                raise RuntimeError(f"PyTorchJob {namespace}/{name} failed: {message}")
            time.sleep(self.poll_interval_s)

    def on_kill(self) -> None:
        if self._job is not None:
            group, version, namespace, plural, name = self._job
            self.custom_object_client.delete_namespaced_custom_object(group, version, namespace, plural, name)
