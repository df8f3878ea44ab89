"""Our Airflow operators: run one step's `python -m tasks.<step>` command in the worker, and the
DDP training operator that launches it under torchrun.

Nothing heavy is imported at module level (DAG files are parsed constantly); nothing is resolved in
`__init__` (it runs at every parse) — GPUs and cores are counted in `execute`.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from typing import Any

from airflow.sdk import BaseOperator

# Asset-triggered runs have no logical date in Airflow 3: their data day is the day they run.
LOGICAL_DAY = "{{ ds if ds is defined else dag_run.run_after | ds }}"


def step_arguments(step: str, config_path: str, inputs: Sequence[str], overrides: Sequence[str] = ()) -> list[str]:
    """The step CLI arguments, identical in the worker, in a container and in a pod."""
    arguments = ["--config", config_path, "--run-id", "{{ run_id }}", "--logical-date", LOGICAL_DAY]
    for name in inputs:
        arguments += ["--input", name]
    for override in overrides:
        arguments += ["--set", override]
    return arguments


AIRFLOW_IDENTITY_ENV = {
    "FRESHET_DAG_ID": "{{ dag.dag_id }}",
    "FRESHET_DAG_RUN_ID": "{{ run_id }}",
    "FRESHET_TRY_NUMBER": "{{ ti.try_number }}",
}


def parse_manifest(output: str | dict | None, step: str) -> dict[str, Any]:
    """The manifest from a step's output: the last stdout line that is this step's manifest JSON."""
    if isinstance(output, dict):
        return output
    for line in reversed((output or "").splitlines()):
        line = line.strip()
        if line.startswith("{") and '"step"' in line:
            try:
                manifest = json.loads(line)
            except json.JSONDecodeError:
                continue
            if manifest.get("step") == step:
                return manifest
    raise ValueError(f"step {step!r} printed no manifest line; last output: {(output or '')[-500:]!r}")


class FreshetStepOperator(BaseOperator):
    """Runs `python -m tasks.<step> ...` as a child process group of the worker.

    Its output streams into the task log; the manifest (last stdout line) is returned, so it lands
    in XCom. Killing the task ends the whole process group, so no child outlives it.
    """

    template_fields: Sequence[str] = ("arguments", "env")
    ui_color = "#d7ecf7"

    def __init__(self, *, step: str, arguments: list[str], env: dict[str, str] | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.step = step
        self.arguments = arguments
        self.env = {**AIRFLOW_IDENTITY_ENV, **(env or {})}
        self._process: subprocess.Popen[str] | None = None

    def command(self) -> list[str]:
        return [sys.executable, "-m", f"tasks.{self.step}", *self.arguments]

    def process_env(self) -> dict[str, str]:
        # Progress bars redraw one line with carriage returns: in a line-based task log they are noise.
        return {**os.environ, **{key: str(value) for key, value in self.env.items()}, "PYTHONUNBUFFERED": "1",
                "TQDM_DISABLE": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1"}

    def execute(self, context: Any) -> dict[str, Any]:
        command = self.command()
        self.log.info("running: %s", " ".join(command))
        lines: list[str] = []
        self._process = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=self.process_env(),
            start_new_session=True,  # its own process group, so on_kill reaches every descendant
        )
        assert self._process.stdout is not None
        for line in self._process.stdout:
            lines.append(line)
            self.log.info("%s", line.rstrip())
        returncode = self._process.wait()
        if returncode != 0:
            errors = [line.strip() for line in lines if "error" in line.lower()][-3:]
            raise RuntimeError(f"step {self.step} exited with {returncode}: {' | '.join(errors) or 'see the log above'}")
        manifest = parse_manifest("".join(lines), self.step)
        self.log.info("%s manifest: %s", self.step, json.dumps(manifest.get("metrics", {}), sort_keys=True))
        return manifest

    def on_kill(self) -> None:
        process = self._process
        if process is None or process.poll() is not None:
            return
        group = os.getpgid(process.pid)
        os.killpg(group, signal.SIGTERM)  # the trainer checkpoints on SIGTERM
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(group, signal.SIGKILL)


def available_cores() -> int:
    return len(os.sched_getaffinity(0))


def resolve_nproc(nproc_per_node: int | str, cpu_processes: int) -> int:
    """"auto": one rank per GPU present, else the configured number of CPU processes."""
    if nproc_per_node != "auto":
        return int(nproc_per_node)
    try:
        import torch

        gpus = torch.cuda.device_count()
    except ImportError:
        gpus = 0
    return gpus or cpu_processes


def torchrun_arguments(nproc: int | str, nnodes: int, rdzv_endpoint: str | None, max_restarts: int) -> list[str]:
    arguments = ["-m", "torch.distributed.run", f"--nproc-per-node={nproc}", f"--nnodes={nnodes}",
                 f"--max-restarts={max_restarts}", "--local-ranks-filter=0"]
    if nnodes == 1 and not rdzv_endpoint:
        arguments.append("--standalone")
    else:
        arguments += ["--rdzv-backend=c10d", f"--rdzv-endpoint={rdzv_endpoint}", "--rdzv-id={{ run_id }}"]
    return arguments


class DDPTrainOperator(FreshetStepOperator):
    """Launches `torchrun -m tasks.train` (gloo on CPU, NCCL on GPU, chosen by the trainer).

    nproc "auto" = the GPUs present, else `cpu_processes`; threads per rank = cores / ranks, so a
    CPU run can never oversubscribe (2 ranks x 2 threads on 2 cores is ~8x slower).
    """

    ui_color = "#f6d8b8"

    def __init__(self, *, nproc_per_node: int | str = "auto", cpu_processes: int = 1, nnodes: int = 1,
                 rdzv_endpoint: str | None = None, max_restarts: int = 0, **kwargs: Any) -> None:
        super().__init__(step="train", **kwargs)
        self.nproc_per_node = nproc_per_node
        self.cpu_processes = cpu_processes
        self.nnodes = nnodes
        self.rdzv_endpoint = rdzv_endpoint
        self.max_restarts = max_restarts
        self._nproc: int | None = None

    def nproc(self) -> int:
        if self._nproc is None:
            self._nproc = resolve_nproc(self.nproc_per_node, self.cpu_processes)
        return self._nproc

    def command(self) -> list[str]:
        launcher = torchrun_arguments(self.nproc(), self.nnodes, self.rdzv_endpoint, self.max_restarts)
        # rdzv-id is templated at render time for the arguments, but these are built at execute time.
        launcher = [part.replace("{{ run_id }}", self.env.get("FRESHET_DAG_RUN_ID", "freshet")) for part in launcher]
        return [sys.executable, *launcher, "-m", "tasks.train", *self.arguments]

    def process_env(self) -> dict[str, str]:
        threads = str(max(1, available_cores() // self.nproc()))
        return {**super().process_env(), "OMP_NUM_THREADS": threads, "FRESHET_THREADS_PER_RANK": threads}
