"""Our Airflow operators: run one step's `python -m tasks.<step>` command in the worker, and the
DDP training operator that launches it under torchrun.

Nothing heavy is imported at module level (DAG files are parsed constantly); nothing is resolved in
`__init__` (it runs at every parse) — GPUs and cores are counted in `execute`.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
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


class StepFailed(RuntimeError):
    """A step's process exited non-zero; the message carries the step's own error (and, for training, each
    failed rank's), so the task's exception says why without reading the whole log."""


# The last line of a Python traceback: `ValueError: ...`, `torch.cuda.OutOfMemoryError: ...`.
EXCEPTION_LINE = re.compile(r"^\s*(?:[A-Za-z_][\w.]*\.)?[A-Z]\w*(?:Error|Exception|Exit|Interrupt)\b:?.*$")
# torch elastic's wrapper around a failed rank: never the reason itself.
LAUNCHER_NOISE = ("ChildFailedError", "error_file:", "To enable traceback")


def step_error_lines(step: str, lines: Sequence[str]) -> list[str]:
    """The step's own error lines: tasks.contract.cli prints `freshet <step>: error: <message>` on a
    ConfigError or StepError (the log may prefix them with a timestamp)."""
    mark = f"freshet {step}: error:"
    found: list[str] = []
    for line in lines:
        if mark in line and (own := line[line.index(mark):].strip()) not in found:
            found.append(own)
    return found


def last_exception_line(lines: Sequence[str]) -> str | None:
    """The final `SomeError: message` line of the output, torch elastic's wrapper lines excepted."""
    for line in reversed(lines):
        if EXCEPTION_LINE.match(line) and not any(noise in line for noise in LAUNCHER_NOISE):
            return line.strip()
    return None


def failure_reason(step: str, lines: Sequence[str]) -> str:
    """Why a step's process failed, from its output: its own error lines, else the last exception line."""
    own = step_error_lines(step, lines)
    if own:
        return " | ".join(own[-3:])
    return last_exception_line(lines) or "no error line in its output; see the task log above"


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
            raise StepFailed(f"step {self.step} exited with {returncode}: {self.failure_message(lines)}")
        manifest = parse_manifest("".join(lines), self.step)
        self.log.info("%s manifest: %s", self.step, json.dumps(manifest.get("metrics", {}), sort_keys=True))
        return manifest

    def failure_message(self, lines: Sequence[str]) -> str:
        return failure_reason(self.step, lines)

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


@dataclass(frozen=True)
class RankFailure:
    """What one failed rank left in torchrun's log directory: the exception its error file holds (written by
    `@record` on tasks.train's main) with the traceback's last lines, or its own error line from its stderr."""

    local_rank: int
    message: str
    traceback_tail: tuple[str, ...] = ()
    from_error_file: bool = False

    def describe(self) -> str:
        source = " (its error file)" if self.from_error_file else ""
        tail = f"; traceback ends: {' / '.join(self.traceback_tail)}" if self.traceback_tail else ""
        return f"rank {self.local_rank}{source}: {self.message}{tail}"


def read_error_file(path: Path, local_rank: int, tail_lines: int = 4) -> RankFailure:
    """A torch elastic error file: {"message": {"message": "ValueError: ...", "extraInfo": {"py_callstack": ...}}}."""
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        return RankFailure(local_rank, f"unreadable error file {path}: {error}")
    message = data.get("message")
    if not isinstance(message, dict):  # the format torch elastic uses for a non-Python failure
        return RankFailure(local_rank, str(message), from_error_file=True)
    callstack = str((message.get("extraInfo") or {}).get("py_callstack") or "")
    # The frames just above the exception line, without the ^^^ markers.
    frames = [line.strip() for line in callstack.splitlines() if line.strip() and not set(line.strip()) <= set("^~")]
    return RankFailure(local_rank, str(message.get("message")), tuple(frames[:-1][-tail_lines:]), from_error_file=True)


def rank_failures(log_dir: Path, step: str) -> list[RankFailure]:
    """Each failed local rank of torchrun's last attempt under `log_dir` (<run>/attempt_<n>/<local rank>/): its
    error file, else its own error line from its redirected stderr.log (a StepError is printed, not raised)."""
    attempts = sorted(log_dir.glob("*/attempt_*"), key=lambda path: int(path.name.removeprefix("attempt_")))
    if not attempts:
        return []
    failures = []
    for rank_dir in sorted((path for path in attempts[-1].iterdir() if path.name.isdigit()), key=lambda p: int(p.name)):
        rank = int(rank_dir.name)
        if (rank_dir / "error.json").exists():
            failures.append(read_error_file(rank_dir / "error.json", rank))
        elif (rank_dir / "stderr.log").exists():
            lines = (rank_dir / "stderr.log").read_text(errors="replace").splitlines()
            own = step_error_lines(step, lines)
            reason = own[-1] if own else last_exception_line(lines)
            if reason:
                failures.append(RankFailure(rank, reason))
    return failures


class DDPTrainOperator(FreshetStepOperator):
    """Launches `torchrun -m tasks.train` (gloo on CPU, NCCL on GPU, chosen by the trainer).

    nproc "auto" = the GPUs present, else `cpu_processes`; threads per rank = cores / ranks, so a
    CPU run can never oversubscribe (2 ranks x 2 threads on 2 cores is ~8x slower).

    A failed rank's reason reaches the task's exception, never only torch elastic's "ChildFailedError ...
    error_file: <N/A>": torchrun writes each rank's error file (tasks.train's main is decorated with `@record`)
    into a log directory of this execution, and the ranks other than 0 (not shown in the log) have their
    stderr there too.
    """

    ui_color = "#f6d8b8"
    module = "tasks.train"  # the program torchrun launches

    def __init__(self, *, nproc_per_node: int | str = "auto", cpu_processes: int = 1, nnodes: int = 1,
                 rdzv_endpoint: str | None = None, max_restarts: int = 0, **kwargs: Any) -> None:
        super().__init__(step="train", **kwargs)
        self.nproc_per_node = nproc_per_node
        self.cpu_processes = cpu_processes
        self.nnodes = nnodes
        self.rdzv_endpoint = rdzv_endpoint
        self.max_restarts = max_restarts
        self._nproc: int | None = None
        self._log_dir: Path | None = None

    def nproc(self) -> int:
        if self._nproc is None:
            self._nproc = resolve_nproc(self.nproc_per_node, self.cpu_processes)
        return self._nproc

    def command(self) -> list[str]:
        launcher = torchrun_arguments(self.nproc(), self.nnodes, self.rdzv_endpoint, self.max_restarts)
        # rdzv-id is templated at render time for the arguments, but these are built at execute time.
        launcher = [part.replace("{{ run_id }}", self.env.get("FRESHET_DAG_RUN_ID", "freshet")) for part in launcher]
        if self._log_dir is not None:
            launcher.append(f"--log-dir={self._log_dir}")
            if self.nproc() > 1:  # rank 0 prints to the task log; the others' stderr goes to the log dir
                launcher.append("--redirects=" + ",".join(f"{rank}:2" for rank in range(1, self.nproc())))
        return [sys.executable, *launcher, "-m", self.module, *self.arguments]

    def execute(self, context: Any) -> dict[str, Any]:
        with tempfile.TemporaryDirectory(prefix="freshet-torchrun-") as log_dir:
            self._log_dir = Path(log_dir)
            try:
                return super().execute(context)
            finally:
                self._log_dir = None

    def failure_message(self, lines: Sequence[str]) -> str:
        failures = rank_failures(self._log_dir, self.step) if self._log_dir is not None else []
        for failure in failures:
            self.log.error("train %s", failure.describe())
        own = step_error_lines(self.step, lines)
        # Rank 0's own error line is in `lines` and, for an exception, in its error file too: say it once.
        reasons = [*own[-3:], *(failure.describe() for failure in failures
                                if not any(failure.message in line for line in own))]
        return " | ".join(reasons) if reasons else failure_reason(self.step, lines)

    def process_env(self) -> dict[str, str]:
        threads = str(max(1, available_cores() // self.nproc()))
        return {**super().process_env(), "OMP_NUM_THREADS": threads, "FRESHET_THREADS_PER_RANK": threads}
