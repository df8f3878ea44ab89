"""What an `airflow dags test` log says about its run: which tasks failed for good, and why.

`dags test` runs the tasks one after the other in its own process and logs each between "[DAG TEST] starting
task_id=X" and "[DAG TEST] end task task_id=X": the task's output, Airflow's "Task failed with exception" with
the traceback, and the state the attempt ended in (`new_state=failed`, or `up_for_retry` when a retry follows).
The exception's last line is the reason: our operators raise it with the step's own error in it (for training,
each failed rank's). A run that never reached a task (a DAG that does not import) is its last error line.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

TASK_STARTS = re.compile(r"\[DAG TEST\] starting task_id=(\S+)")
TASK_ENDS = re.compile(r"\[DAG TEST\] end task task_id=(\S+)")
ATTEMPT_STATE = re.compile(r"\bnew_state=(\w+)")
# A traceback's last line (`ValueError: ...`, `freshet_airflow.operators.StepFailed: ...`,
# `airflow.sdk.exceptions.AirflowTaskTimeout: ...`): a dotted class name at the line's start, then its message.
EXCEPTION_LINE = re.compile(r"^(?:[A-Za-z_]\w*\.)*([A-Z]\w*): ?(.*)$")
# The step CLI's own error line (tasks.contract.cli), wherever a log record puts it.
STEP_ERROR = re.compile(r"(freshet [\w-]+: error: .*?)(?:\s+\[[\w.]+\]\s+loc=\S+)?$")


@dataclass(frozen=True)
class TaskFailure:
    """A task whose last attempt failed: its id, the reason, and how many attempts it made."""

    task_id: str
    error: str
    attempts: int = 1

    def describe(self) -> str:
        tries = f" (after {self.attempts} attempts)" if self.attempts > 1 else ""
        return f"task {self.task_id} failed{tries}: {self.error}"


def attempt_error(lines: list[str]) -> str | None:
    """The reason one attempt failed: the exception line after "Task failed with exception", else the step's
    own error line."""
    reason = None
    for number, line in enumerate(lines):
        if "Task failed with exception" in line:
            for later in lines[number + 1:]:
                if (match := EXCEPTION_LINE.match(later)) is not None:
                    # Our operators' StepFailed says "step X exited with N: <why>"; its class adds nothing.
                    reason = match.group(2) if match.group(1) == "StepFailed" else later.strip()
                    break
    if reason is None:
        own = [match.group(1) for line in lines if (match := STEP_ERROR.search(line))]
        reason = own[-1] if own else None
    return reason


def failed_tasks(log_lines: Iterable[str]) -> list[TaskFailure]:
    """The tasks whose last attempt failed, in the order they ran (retried tasks that then succeeded are not)."""
    attempts: dict[str, int] = {}
    outcome: dict[str, TaskFailure | None] = {}
    task: str | None = None
    block: list[str] = []
    for line in log_lines:
        if (start := TASK_STARTS.search(line)) is not None:
            task, block = start.group(1), []
            continue
        if task is not None and TASK_ENDS.search(line):
            attempts[task] = attempts.get(task, 0) + 1
            states = [match.group(1) for entry in block if (match := ATTEMPT_STATE.search(entry))]
            failed = bool(states) and states[-1] == "failed"
            error = attempt_error(block) if failed else None
            outcome.pop(task, None)  # keep the order of the last attempts
            outcome[task] = TaskFailure(task, error or "no error line in its log", attempts[task]) if failed else None
            task = None
            continue
        if task is not None:
            block.append(line)
    return [failure for failure in outcome.values() if failure is not None]


def last_error_line(log_lines: Iterable[str]) -> str | None:
    """The last exception or error line of a log (for a run that failed before any task ran)."""
    found = None
    for line in log_lines:
        if EXCEPTION_LINE.match(line) or STEP_ERROR.search(line) or "[error" in line:
            found = line.strip()
    return found
