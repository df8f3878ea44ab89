"""`label_studio`: the finished annotations of a Label Studio project (or of a Label Studio JSON export file).

Incremental: the crawl state keeps a cursor (the newest task `updated_at` seen; an annotation created or edited
bumps its task's), and each crawl asks only for tasks updated since (less `CURSOR_OVERLAP_S`, so a save
committed late is not missed; what was already pulled is recognised by its label and not emitted twice). A
file is re-read only when it changed, and its tasks are compared the same way.

One record per task, id `<source>:task-<task id>`: an annotation edited after it was pulled emits the same id
with the new label (an update of the row, not a second row). Cancelled (skipped) annotations are ignored. Several
annotations resolve to the ground-truth one, else the majority (`tasks.labelling.label_studio.resolve_task`).
Quarantined, by task id with the reason: an empty annotation, several labels in one annotation, a label the
project's config does not have, annotators who disagree with no majority, a task without text, and a task
deleted from the project after an earlier crawl saw it. Each problem is reported once, until the task changes.
A label that is in the project but not in the pipeline's `labels` goes on to validate (`validate.new_labels`).

The API goes through `LabelStudioClient` (token from `token_env`), not the crawler's page fetcher: it is an
authenticated API, not a site to crawl politely. The SSRF guard still applies to the server's address.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import httpx

from tasks.config import LabelStudioSource
from tasks.labelling.label_studio import (
    AnnotationProblem,
    LabelStudioClient,
    LabelStudioError,
    project_labels,
    resolve_task,
)
from tasks.records import content_hash
from tasks.sources.errors import FeedFormatError
from tasks.sources.session import SourceSession, source_location

log = logging.getLogger("freshet.crawl")

CURSOR_OVERLAP_S = 60.0


def record_id(source: LabelStudioSource, task_id: int) -> str:
    """The stable id of a task's record: the same task always updates the same row."""
    return f"{source.name}:task-{task_id}"


def crawl_label_studio(session: SourceSession) -> None:
    source: LabelStudioSource = session.source  # type: ignore[assignment]
    location = source_location(source)
    previous: Mapping[str, Any] = session.page_states.get(location, {})
    state: dict[str, Any] = {"cursor": previous.get("cursor"), "tasks": list(previous.get("tasks", [])),
                             "labels": dict(previous.get("labels", {})), "problems": dict(previous.get("problems", {})),
                             "project_id": previous.get("project_id")}
    if source.url is not None:
        tasks, present, known_labels = _from_server(session, source, state)
    else:
        read = _from_file(session, source, location, state)
        if read is None:
            return
        tasks, present, known_labels = read
    for task in tasks:
        _take_task(session, source, location, task, known_labels, state)
    for task_id in sorted(set(map(int, state["tasks"])) - present):
        _report(session, source, location, state, AnnotationProblem(
            task_id, "deleted_task", f"task {task_id} was deleted from the project after an earlier crawl saw it"
            + (f" (its label {state['labels'][record_id(source, task_id)]!r} was pulled before)"
               if record_id(source, task_id) in state["labels"] else "")), {"id": task_id})
    state["tasks"] = sorted(present)
    session.page_states[location] = {**session.page_states.get(location, {}), **state}
    session.done.add(location)
    session.report.pages_selected = len(tasks)


def _from_server(session: SourceSession, source: LabelStudioSource, state: dict[str, Any]
                 ) -> tuple[list[dict[str, Any]], set[int], list[str] | None]:
    session.fetcher.check_guard(httpx.URL(str(source.url)))
    since = None
    if state["cursor"]:
        since = (dt.datetime.fromisoformat(state["cursor"]) - dt.timedelta(seconds=CURSOR_OVERLAP_S)).isoformat()
    with LabelStudioClient(source.connection(), setting=f"crawl.sources[{source.name}]") as client:
        found = client.find_project(source.project)
        if found is None and state["project_id"] is None:
            # Never seen: the label step creates the project on its first run, so a pipeline run before it has
            # nothing to pull. Once a crawl has seen the project, its absence is an error naming the setting.
            detail = (f"no project titled {source.project!r} on {source.url} yet (crawl.sources[{source.name}]"
                      ".project): nothing to pull until the label step creates it")
            session.report.incidents.append({"kind": "project_not_created_yet", "url": str(source.url),
                                             "detail": detail})
            log.warning("crawl %s: %s", source.name, detail)
            return [], set(), None
        project = found if found is not None else client.project(source.project)
        state["project_id"] = int(project["id"])
        present = client.task_ids(int(project["id"]))
        tasks = list(client.tasks(int(project["id"]), updated_since=since, page_size=source.page_size))
    session.report.pages_fetched += 1
    stamps = [str(task["updated_at"]) for task in tasks if task.get("updated_at")]
    if stamps:
        newest = max(dt.datetime.fromisoformat(stamp) for stamp in stamps)
        state["cursor"] = max(newest, dt.datetime.fromisoformat(state["cursor"])).isoformat() \
            if state["cursor"] else newest.isoformat()
    log.info("crawl %s: project %r (id %s): %d tasks, %d updated since %s", source.name, source.project,
             project["id"], len(present), len(tasks), since or "the start")
    return tasks, present, project_labels(project) or None


def _from_file(session: SourceSession, source: LabelStudioSource, location: str, state: dict[str, Any]
               ) -> tuple[list[dict[str, Any]], set[int], None] | None:
    fetched = session.read_file(Path(str(source.path)).expanduser())
    if fetched is None:
        return None  # unreadable or too large: noted in the report
    if fetched.status == 304:
        return [], set(map(int, state["tasks"])), None
    try:
        tasks = json.loads(fetched.body)
    except ValueError as error:
        raise FeedFormatError(source.name, location, f"not a Label Studio JSON export: {error}") from error
    if not isinstance(tasks, list) or not all(isinstance(task, dict) and "id" in task for task in tasks):
        raise FeedFormatError(source.name, location, "not a Label Studio JSON export (a list of tasks with `id`)")
    state["version"] = fetched.headers.get("x-file-version")
    return tasks, {int(task["id"]) for task in tasks}, None


def _take_task(session: SourceSession, source: LabelStudioSource, location: str, task: Mapping[str, Any],
               known_labels: list[str] | None, state: dict[str, Any]) -> None:
    try:
        resolved = resolve_task(task, known_labels, source.text_field)
    except (KeyError, TypeError, ValueError) as error:
        raise LabelStudioError(f"crawl source {source.name!r}: task {task.get('id')!r} at {location} is not a "
                               f"Label Studio task: {error}") from error
    if resolved is None:
        return  # not annotated yet, or every annotation was cancelled
    for problem in resolved.problems:
        _report(session, source, location, state, problem, task)
    if resolved.label is None:
        return
    if not isinstance(resolved.text, str) or not resolved.text.strip():
        _report(session, source, location, state, AnnotationProblem(
            resolved.task_id, "missing_text", f"task {resolved.task_id} has no text in data.{source.text_field}"), task)
        return
    identifier = record_id(source, resolved.task_id)
    if state["labels"].get(identifier) == resolved.label and \
            session.known_hashes.get(identifier) == content_hash(resolved.text):
        session.report.records_unchanged += 1
        return
    if identifier in state["labels"]:
        # emit() compares texts only; a new label on the same text is an update of the row: the session
        # forgets the text's hash so the row is emitted, and it is counted as changed, not new.
        session.known_hashes.pop(identifier, None)
        new_before = session.report.records_new
        session.emit(identifier, resolved.text, resolved.label, url=f"{location} task {resolved.task_id}")
        if session.report.records_new > new_before:
            session.report.records_new -= 1
            session.report.records_changed += 1
    else:
        session.emit(identifier, resolved.text, resolved.label, url=f"{location} task {resolved.task_id}")
    if identifier in session.rows:
        log.debug("crawl %s: task %d labelled %r (%s)", source.name, resolved.task_id, resolved.label, resolved.how)
    state["labels"][identifier] = resolved.label


def _report(session: SourceSession, source: LabelStudioSource, location: str, state: dict[str, Any],
            problem: AnnotationProblem, task: Mapping[str, Any]) -> None:
    """Quarantine a problem by task id, once: the same problem of an unchanged task is not reported again."""
    key = f"{problem.task_id}:{problem.check}"
    signature = hashlib.sha256(problem.detail.encode()).hexdigest()[:16]
    if state["problems"].get(key) == signature:
        return
    state["problems"][key] = signature
    log.warning("crawl %s: task %d quarantined (%s): %s", source.name, problem.task_id, problem.check, problem.detail)
    session.quarantine(f"{location} task {problem.task_id}", problem.check, problem.detail,
                       json.dumps(task, ensure_ascii=False, default=str)[:10_000],
                       record_id=record_id(source, problem.task_id), field_name="label", value=problem.value)
