"""Step runners: one task per step, run the way `runner.mode` says.

`local` runs the step in the worker (FreshetStepOperator / DDPTrainOperator), `docker` runs our
image with DockerOperator, `kubernetes` runs it as a pod with KubernetesPodOperator (or, for
multi-node training, a Kubeflow PyTorchJob). The command is `python -m tasks.<step> ...` (or torchrun
for training) in all three; the manifest comes back the way each operator expects: stdout's last
line, or /airflow/xcom/return.json in a pod.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from airflow.sdk import BaseOperator

from freshet_airflow.dag_settings import pipeline_config, retry_policy, training_settings
from freshet_airflow.operators import (
    AIRFLOW_IDENTITY_ENV,
    DDPTrainOperator,
    FreshetStepOperator,
    step_arguments,
    torchrun_arguments,
)
from tasks.config import PipelineConfig
from tasks.pipeline import step as pipeline_step

POD_XCOM_FILE = "/airflow/xcom/return.json"
# Step flags rendered from the run's params (Airflow renders a boolean param as True/False).
STEP_OPTIONS: dict[str, tuple[str, ...]] = {"validate": ("--allow-empty={{ params.force_training }}",),
                                             "decide": ("--force-training={{ params.force_training }}",)}


def _container_operator(config: PipelineConfig, task_id: str, command: list[str], *, gpus: int = 0, **kwargs: Any):
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


def step(name: str, config_path: str, *, overrides: Sequence[str] = (), **operator_kwargs: Any) -> BaseOperator:
    """The task for step `name` (its inputs from tasks.pipeline), run the way the config's `runner.mode` says."""
    if name == "train":
        return train_step(config_path, overrides=overrides, **operator_kwargs)
    config = pipeline_config(config_path)
    inputs = pipeline_step(name).inputs
    options = list(STEP_OPTIONS.get(name, ()))
    for key, value in retry_policy(config, name).items():
        operator_kwargs.setdefault(key, value)
    if config.runner.mode == "local":
        return FreshetStepOperator(task_id=name, step=name, arguments=[*step_arguments(name, config_path, inputs, overrides), *options],
                                   env=config.runner.env, **operator_kwargs)
    command = ["python", "-m", f"tasks.{name}",
               *step_arguments(name, config.runner.container_config_path, inputs, overrides), *options]
    return _container_operator(config, name, command, **operator_kwargs)


def train_step(config_path: str, *, overrides: Sequence[str] = (), **operator_kwargs: Any) -> BaseOperator:
    """The DDP training task: torchrun in the worker, in our image, or in a GPU pod; pooled, resume-friendly
    retries and a time limit (schedule settings)."""
    config = pipeline_config(config_path)
    inputs = pipeline_step("train").inputs
    for key, value in training_settings(config_path).items():
        operator_kwargs.setdefault(key, value)
    settings = config.train
    if config.runner.train_queue:
        operator_kwargs.setdefault("queue", config.runner.train_queue)
    if config.runner.train_executor:
        operator_kwargs.setdefault("executor", config.runner.train_executor)
    if config.runner.mode == "local":
        return DDPTrainOperator(
            task_id="train", arguments=step_arguments("train", config_path, inputs, overrides), env=config.runner.env,
            nproc_per_node=settings.nproc_per_node, cpu_processes=settings.cpu_processes, nnodes=settings.nnodes,
            rdzv_endpoint=settings.rdzv_endpoint, max_restarts=settings.max_restarts, **operator_kwargs,
        )
    if config.runner.mode == "kubernetes" and settings.nnodes > 1:
        # One pod per node, rendezvous managed by the Kubeflow training operator (a PyTorchJob).
        import yaml

        # lazy: the cncf.kubernetes provider (0.65 s measured) only for the multi-node PyTorchJob
        from freshet_airflow.kubeflow import PyTorchJobOperator, render_pytorchjob

        manifest = render_pytorchjob(config, inputs=inputs, overrides=overrides)
        return PyTorchJobOperator(task_id="train", yaml_conf=yaml.safe_dump(manifest, sort_keys=False),
                                  namespace=config.runner.namespace, **operator_kwargs)
    gpus = config.runner.gpus
    nproc = ("gpu" if gpus else settings.cpu_processes) if settings.nproc_per_node == "auto" else settings.nproc_per_node
    command = ["python", *torchrun_arguments(nproc, settings.nnodes, settings.rdzv_endpoint, settings.max_restarts),
               "-m", "tasks.train", *step_arguments("train", config.runner.container_config_path, inputs, overrides)]
    return _container_operator(config, "train", command, gpus=gpus, **operator_kwargs)


