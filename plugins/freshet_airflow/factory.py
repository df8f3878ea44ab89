"""The step-runner factory: one `step(...)` call per task, the runner chosen by config.

`local` runs the step in the worker (FreshetStepOperator / DDPTrainOperator), `docker` runs our
image with DockerOperator, `kubernetes` runs it as a pod with KubernetesPodOperator. The command
is `python -m tasks.<step> ...` (or torchrun for training) in all three; the manifest comes back
the way each operator expects: stdout's last line, or /airflow/xcom/return.json in a pod.
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Sequence
from typing import Any

from freshet_airflow.operators import (
    AIRFLOW_IDENTITY_ENV,
    DDPTrainOperator,
    FreshetStepOperator,
    parse_manifest,
    step_arguments,
    torchrun_arguments,
)

log = logging.getLogger(__name__)
POD_XCOM_FILE = "/airflow/xcom/return.json"


@functools.lru_cache(maxsize=8)
def pipeline_config(config_path: str):
    from tasks.config import load_config

    return load_config(config_path)


def _container_operator(config, task_id: str, command: list[str], *, gpus: int = 0, **kwargs: Any):
    runner = config.runner
    environment = {**AIRFLOW_IDENTITY_ENV, **runner.env, "FRESHET_THREADS_PER_RANK": "auto"}
    if runner.mode == "docker":
        from airflow.providers.docker.operators.docker import DockerOperator
        from docker.types import DeviceRequest

        return DockerOperator(
            task_id=task_id, image=runner.image, command=command, environment=environment,
            docker_url=runner.docker_url, network_mode=runner.network_mode, auto_remove="success",
            mount_tmp_dir=False, do_xcom_push=True, xcom_all=False,
            device_requests=[DeviceRequest(count=gpus, capabilities=[["gpu"]])] if gpus else None,
            **kwargs,
        )
    from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator
    from kubernetes.client import models as k8s

    resources = k8s.V1ResourceRequirements(limits={"nvidia.com/gpu": str(gpus)}) if gpus else None
    return KubernetesPodOperator(
        task_id=task_id, name=f"freshet-{task_id}", namespace=runner.namespace, image=runner.image,
        cmds=[command[0]], arguments=[*command[1:], "--xcom-file", POD_XCOM_FILE],
        env_vars=environment, do_xcom_push=True, get_logs=True, container_resources=resources,
        on_finish_action="delete_pod", **kwargs,
    )


def step(name: str, config_path: str, *, inputs: Sequence[str] = (), overrides: Sequence[str] = (),
         **operator_kwargs: Any):
    """The task for step `name`, run the way the pipeline config's `runner.mode` says."""
    config = pipeline_config(config_path)
    if config.runner.mode == "local":
        return FreshetStepOperator(task_id=name, step=name, arguments=step_arguments(name, config_path, inputs, overrides),
                                   env=config.runner.env, **operator_kwargs)
    command = ["python", "-m", f"tasks.{name}",
               *step_arguments(name, config.runner.container_config_path, inputs, overrides)]
    return _container_operator(config, name, command, **operator_kwargs)


def train_step(config_path: str, *, inputs: Sequence[str] = (), overrides: Sequence[str] = (), **operator_kwargs: Any):
    """The DDP training task: torchrun in the worker, in our image, or in a GPU pod."""
    config = pipeline_config(config_path)
    settings = config.train
    if config.runner.train_queue:
        operator_kwargs.setdefault("queue", config.runner.train_queue)
    if config.runner.mode == "local":
        return DDPTrainOperator(
            task_id="train", arguments=step_arguments("train", config_path, inputs, overrides), env=config.runner.env,
            nproc_per_node=settings.nproc_per_node, cpu_processes=settings.cpu_processes, nnodes=settings.nnodes,
            rdzv_endpoint=settings.rdzv_endpoint, max_restarts=settings.max_restarts, **operator_kwargs,
        )
    gpus = config.runner.gpus
    nproc = ("gpu" if gpus else settings.cpu_processes) if settings.nproc_per_node == "auto" else settings.nproc_per_node
    command = ["python", *torchrun_arguments(nproc, settings.nnodes, settings.rdzv_endpoint, settings.max_restarts),
               "-m", "tasks.train", *step_arguments("train", config.runner.container_config_path, inputs, overrides)]
    return _container_operator(config, "train", command, gpus=gpus, **operator_kwargs)


def gate_passed(manifest: dict[str, Any] | str) -> bool:
    """ShortCircuit callable: True lets promotion run; False skips it and the log says why."""
    if isinstance(manifest, str):
        manifest = parse_manifest(manifest, "compress") if not manifest.lstrip().startswith("{") else json.loads(manifest)
    gate = manifest["facts"]["gate"]
    if gate["passed"]:
        log.info("gate PASSED (serving variant %s); promoting", gate.get("serving_variant"))
    else:
        log.warning("gate REJECTED the candidate; promotion skipped. Reasons: %s", "; ".join(gate["reasons"]))
    for check in gate["checks"]:
        log.info("  %-45s %-8s %s", check["name"], check["verdict"], check["detail"])
    return bool(gate["passed"])


def gate(compress_task, **operator_kwargs: Any):
    from airflow.providers.standard.operators.python import ShortCircuitOperator

    return ShortCircuitOperator(task_id="gate", python_callable=gate_passed, op_args=[compress_task.output],
                                **operator_kwargs)
