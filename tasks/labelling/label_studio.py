"""Label Studio (Community Edition) over its documented REST API, with httpx.

Not `label-studio-sdk`: it would pin numpy down and bring OpenCV and code formatters into our lock. The calls
used here were checked against Label Studio 1.23 (`label_studio/*/api.py`):

- `GET/POST /api/projects`, `PATCH /api/projects/{id}`: the project, its labelling config made from the label set;
- `POST /api/projects/{id}/import?return_task_ids=true`: tasks, with the champion's prediction as pre-annotation;
- `GET /api/tasks?project=..&fields=all&query=..`: tasks with annotations, filtered on `updated_at` (an annotation
  created or edited bumps its task's `updated_at`), ordered by it, page by page;
- `POST /api/tasks/{id}/annotations`, `PATCH /api/annotations/{id}`, `DELETE /api/tasks/{id}`: what a person
  does in the UI (the tests and the demo's annotator use them);
- `GET /api/projects/{id}/export?exportType=JSON`: the Label Studio JSON file other tools read and write.

Authentication is `Authorization: Token <token>` (the legacy token; the server needs
`LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN=true`). The token comes from an environment variable whose name is a
setting; every error names the setting to fix (the URL, the token variable, the project).
"""

from __future__ import annotations

import datetime as dt
import itertools
import json
import os
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self
from xml.sax.saxutils import quoteattr

import httpx

from tasks.config import LabelStudioConnection
from tasks.manifest import StepError

# The names the labelling config gives its text and its choice, which pre-annotations and annotations refer to.
TEXT_NAME = "text"
CHOICE_NAME = "label"
# Label Studio's Datetime filter format.
FILTER_TIME_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"
MAX_PAGE_SIZE = 1000


class LabelStudioError(StepError):
    """Label Studio refused or failed a call; the message names the setting to look at."""


class LabelStudioAuthError(LabelStudioError):
    """The token is missing or refused."""


def label_config(labels: Sequence[str]) -> str:
    """The labelling config of a single-choice text classification over `labels` (in their order)."""
    choices = "".join(f"<Choice value={quoteattr(label)}/>" for label in labels)
    return (f'<View><Text name="{TEXT_NAME}" value="${TEXT_NAME}"/>'
            f'<Choices name="{CHOICE_NAME}" toName="{TEXT_NAME}" choice="single" showInLine="true">{choices}'
            "</Choices></View>")


def choice_result(label: str) -> list[dict[str, Any]]:
    """An annotation's or prediction's `result` choosing `label`."""
    return [{"from_name": CHOICE_NAME, "to_name": TEXT_NAME, "type": "choices", "value": {"choices": [label]}}]


def queue_task(record_id: str, text: str, label: str, score: float, model_version: str | None,
               **data: Any) -> dict[str, Any]:
    """A task for the import API and the JSON file: the text (and `freshet_id`, which makes a re-import
    idempotent), with the champion's prediction as pre-annotation (`model_version` = the registry version)."""
    task: dict[str, Any] = {"data": {TEXT_NAME: text, "freshet_id": record_id, **data}}
    task["predictions"] = [{"model_version": str(model_version), "score": float(score), "result": choice_result(label)}]
    return task


def write_tasks_file(path: Path, tasks: Sequence[Mapping[str, Any]]) -> None:
    """Label Studio's JSON import format: a list of tasks (data, predictions, annotations)."""
    path.write_text(json.dumps(list(tasks), ensure_ascii=False, indent=1), encoding="utf-8")


def read_tasks_file(path: Path | str, what: str = "Label Studio JSON file") -> list[dict[str, Any]]:
    """A Label Studio JSON export (or import) file: a list of tasks, each with `id` and `data`."""
    try:
        tasks = json.loads(Path(path).read_text(encoding="utf-8"))
    except ValueError as error:
        raise LabelStudioError(f"{what} {path} is not valid JSON: {error}") from error
    if not isinstance(tasks, list) or not all(isinstance(task, dict) and "data" in task for task in tasks):
        raise LabelStudioError(f"{what} {path} is not a list of tasks (objects with `data`)")
    return tasks


def read_token(connection_token_env: str, setting: str) -> str:
    token = os.environ.get(connection_token_env, "").strip()
    if not token:
        raise LabelStudioAuthError(f"the Label Studio API token is not set: put it in the environment variable "
                                   f"{connection_token_env} ({setting}.token_env)")
    return token


class LabelStudioClient:
    """One server, one token. `setting` is where the connection is configured (`label.label_studio`,
    `crawl.sources[name]`), so an error says what to change. `transport` is for tests that need no server."""

    def __init__(self, connection: LabelStudioConnection, *, setting: str, token: str | None = None,
                 transport: httpx.BaseTransport | None = None) -> None:
        self.connection = connection
        self.setting = setting
        self.url = connection.url
        token = token or read_token(connection.token_env, setting)
        self.http = httpx.Client(base_url=connection.url, timeout=connection.timeout_s, transport=transport,
                                 headers={"Authorization": f"Token {token}"})

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self.http.close()

    # ------------------------------------------------------------------------------------------ calls

    def request(self, method: str, path: str, what: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self.http.request(method, path, **kwargs)
        except httpx.TransportError as error:
            raise LabelStudioError(f"Label Studio at {self.url} ({self.setting}.url) is unreachable while trying "
                                   f"to {what}: {type(error).__name__}: {error}") from error
        if response.status_code in (401, 403):
            raise LabelStudioAuthError(
                f"Label Studio at {self.url} refused the API token from ${self.connection.token_env} "
                f"({self.setting}.token_env) while trying to {what}: HTTP {response.status_code} {_detail(response)}")
        if response.is_error:
            raise LabelStudioError(f"Label Studio at {self.url} ({self.setting}): {what}: HTTP {response.status_code} "
                                   f"{_detail(response)}")
        return response

    def json(self, method: str, path: str, what: str, **kwargs: Any) -> Any:
        response = self.request(method, path, what, **kwargs)
        try:
            return response.json()
        except ValueError as error:
            raise LabelStudioError(f"Label Studio at {self.url} ({self.setting}.url): {what}: the answer is not JSON "
                                   f"(is this Label Studio?): {response.text[:200]!r}") from error

    # --------------------------------------------------------------------------------------- projects

    def find_project(self, title: str) -> dict[str, Any] | None:
        """The project with exactly this title (the API's `title` filter matches substrings)."""
        page = self.json("GET", "/api/projects", f"look up project {title!r}",
                         params={"title": title, "page_size": 100})
        matches = [project for project in page.get("results", []) if project.get("title") == title]
        return min(matches, key=lambda project: int(project["id"])) if matches else None

    def project(self, title: str) -> dict[str, Any]:
        found = self.find_project(title)
        if found is None:
            raise LabelStudioError(f"Label Studio at {self.url} has no project titled {title!r} "
                                   f"({self.setting}.project); the label step creates it")
        return found

    def ensure_project(self, title: str, labels: Sequence[str], description: str = "") -> dict[str, Any]:
        """The project titled `title`, created with the labelling config of `labels`; an existing one gets the
        labels it lacks appended (a choice the team added in Label Studio stays: annotations may use it)."""
        found = self.find_project(title)
        if found is None:
            return dict(self.json("POST", "/api/projects", f"create project {title!r}",
                                  json={"title": title, "label_config": label_config(labels),
                                        "description": description}))
        present = project_labels(found)
        wanted = [*present, *(label for label in labels if label not in present)]
        if wanted != present:
            return dict(self.json("PATCH", f"/api/projects/{found['id']}",
                                  f"add the labels {wanted[len(present):]} to project {title!r}",
                                  json={"label_config": label_config(wanted)}))
        return found

    def delete_project(self, project_id: int) -> None:
        self.request("DELETE", f"/api/projects/{project_id}", f"delete project {project_id}")

    # ------------------------------------------------------------------------------------------ tasks

    def import_tasks(self, project_id: int, tasks: Sequence[Mapping[str, Any]]) -> list[int]:
        """Create the tasks (with their predictions); their new ids, in order."""
        if not tasks:
            return []
        answer = self.json("POST", f"/api/projects/{project_id}/import", f"import {len(tasks)} tasks into project "
                           f"{project_id}", params={"return_task_ids": "true"}, json=list(tasks))
        return [int(task_id) for task_id in answer.get("task_ids", [])]

    def tasks(self, project_id: int, *, updated_since: str | None = None, fields: str = "all",
              page_size: int = 100) -> Iterator[dict[str, Any]]:
        """The project's tasks (with annotations and predictions when `fields="all"`), oldest update first;
        with `updated_since` (an ISO time), only those updated after it."""
        query: dict[str, Any] = {"ordering": ["tasks:updated_at"]}
        if updated_since is not None:
            moment = dt.datetime.fromisoformat(updated_since).astimezone(dt.UTC)
            query["filters"] = {"conjunction": "and", "items": [{
                "filter": "filter:tasks:updated_at", "operator": "greater", "type": "Datetime",
                "value": moment.strftime(FILTER_TIME_FORMAT)}]}
        size = min(page_size, MAX_PAGE_SIZE)
        params = {"project": project_id, "fields": fields, "page_size": size, "query": json.dumps(query)}
        yield from self._pages(params, f"list the tasks of project {project_id}")

    def task_ids(self, project_id: int) -> set[int]:
        """Every task id of the project (one small page per thousand tasks)."""
        params = {"project": project_id, "fields": "task_only", "include": "id", "page_size": MAX_PAGE_SIZE}
        return {int(task["id"]) for task in self._pages(params, f"list the task ids of project {project_id}")}

    def _pages(self, params: Mapping[str, Any], what: str) -> Iterator[dict[str, Any]]:
        # Stop at `total`: the page after the last answers 404 ("Invalid page").
        seen = 0
        for page in itertools.count(1):
            answer = self.json("GET", "/api/tasks/", what, params={**params, "page": page})
            batch = answer.get("tasks", [])
            yield from batch
            seen += len(batch)
            if len(batch) < int(params["page_size"]) or seen >= int(answer.get("total", seen)):
                return

    def delete_task(self, task_id: int) -> None:
        self.request("DELETE", f"/api/tasks/{task_id}", f"delete task {task_id}")

    # ------------------------------------------------------------------------------------ annotations

    def annotate(self, task_id: int, label: str | None, *, ground_truth: bool = False,
                 cancelled: bool = False) -> dict[str, Any]:
        """Submit an annotation as a person would in the UI; `label=None` submits an empty one."""
        body = {"result": [] if label is None else choice_result(label), "ground_truth": ground_truth,
                "was_cancelled": cancelled}
        return dict(self.json("POST", f"/api/tasks/{task_id}/annotations", f"annotate task {task_id}", json=body))

    def update_annotation(self, annotation_id: int, label: str) -> dict[str, Any]:
        return dict(self.json("PATCH", f"/api/annotations/{annotation_id}", f"edit annotation {annotation_id}",
                              json={"result": choice_result(label)}))

    # ------------------------------------------------------------------------------------------ files

    def export_json(self, project_id: int, path: Path) -> int:
        """The project's annotated tasks as a Label Studio JSON file; how many tasks it holds."""
        response = self.request("GET", f"/api/projects/{project_id}/export", f"export project {project_id}",
                                params={"exportType": "JSON"})
        path.write_bytes(response.content)
        return len(read_tasks_file(path, "Label Studio export"))

    def import_file(self, project_id: int, path: Path) -> list[int]:
        """Import a Label Studio JSON file (tasks with predictions or annotations made elsewhere)."""
        return self.import_tasks(project_id, [importable_task(task) for task in read_tasks_file(path)])


def importable_task(task: Mapping[str, Any]) -> dict[str, Any]:
    """What the import API takes of an exported task: its data, and its annotations' and predictions' results.
    Ids, users and timestamps belong to the tool the file came from (an export's extra fields fail the import)."""
    imported: dict[str, Any] = {"data": dict(task["data"])}
    annotations = [{"result": item.get("result") or [], "ground_truth": bool(item.get("ground_truth")),
                    "was_cancelled": bool(item.get("was_cancelled"))}
                   for item in task.get("annotations") or [] if isinstance(item, Mapping)]
    predictions = [{"result": item.get("result") or [], "score": item.get("score"),
                    "model_version": item.get("model_version")}
                   for item in task.get("predictions") or [] if isinstance(item, Mapping)]
    if annotations:
        imported["annotations"] = annotations
    if predictions:
        imported["predictions"] = predictions
    return imported


def _detail(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:300]
    if isinstance(body, dict):
        detail = body.get("detail") or body.get("validation_errors") or body
        return str(detail)[:300]
    return str(body)[:300]


def project_labels(project: Mapping[str, Any]) -> list[str]:
    """The choices of the project's labelling config (`parsed_label_config`), in order."""
    parsed = project.get("parsed_label_config") or {}
    control: Mapping[str, Any] = parsed.get(CHOICE_NAME) or next(iter(parsed.values()), {})
    return [str(label) for label in control.get("labels", [])]


# ------------------------------------------------------------------------------------- resolution


@dataclass(frozen=True)
class AnnotationProblem:
    """A bad annotation (or task), with the quarantine check and the reason."""

    task_id: int
    check: str  # empty_annotation, several_labels, unknown_label, label_conflict, deleted_task
    detail: str
    value: str | None = None


@dataclass(frozen=True)
class ResolvedTask:
    """A task's label after its finished annotations are resolved (None: nothing usable), and the problems."""

    task_id: int
    text: str | None
    label: str | None
    how: str  # ground_truth, majority, single, or why there is no label
    problems: tuple[AnnotationProblem, ...] = ()


def annotation_label(annotation: Mapping[str, Any]) -> list[str]:
    """The choices of one annotation (normally one)."""
    return [str(choice) for item in annotation.get("result") or [] if item.get("type") == "choices"
            for choice in (item.get("value") or {}).get("choices", [])]


def resolve_task(task: Mapping[str, Any], known_labels: Sequence[str] | None,
                 text_field: str = TEXT_NAME) -> ResolvedTask | None:
    """One label for a task from its finished (not cancelled) annotations: a ground-truth annotation first,
    else the majority, else a conflict. Empty annotations, several choices in one annotation and labels outside
    the project's `known_labels` are problems of their own (reported) and do not vote. None: nothing finished."""
    task_id = int(task["id"])
    text = (task.get("data") or {}).get(text_field)
    finished = [item for item in task.get("annotations") or [] if not item.get("was_cancelled")]
    if not finished:
        return None
    problems: list[AnnotationProblem] = []
    votes: list[tuple[str, bool, int]] = []  # label, ground truth, annotation id
    for annotation in finished:
        labels, annotation_id = annotation_label(annotation), annotation.get("id")
        if not labels:
            problems.append(AnnotationProblem(task_id, "empty_annotation",
                                              f"annotation {annotation_id} chose no label"))
        elif len(labels) > 1:
            problems.append(AnnotationProblem(task_id, "several_labels",
                                              f"annotation {annotation_id} chose {len(labels)} labels: {labels}",
                                              ", ".join(labels)))
        elif known_labels is not None and labels[0] not in known_labels:
            problems.append(AnnotationProblem(task_id, "unknown_label",
                                              f"annotation {annotation_id} chose {labels[0]!r}, which is not a label "
                                              f"of the project ({', '.join(known_labels)})", labels[0]))
        else:
            votes.append((labels[0], bool(annotation.get("ground_truth")), int(annotation_id or 0)))
    if not votes:
        return ResolvedTask(task_id, text, None, "no usable annotation", tuple(problems))
    ground_truth = sorted({label for label, truth, _ in votes if truth})
    if len(ground_truth) == 1:
        return ResolvedTask(task_id, text, ground_truth[0], "ground_truth", tuple(problems))
    if len(ground_truth) > 1:
        conflict = AnnotationProblem(task_id, "label_conflict", f"ground-truth annotations disagree: {ground_truth}",
                                     ", ".join(ground_truth))
        return ResolvedTask(task_id, text, None, "conflict", (*problems, conflict))
    counts = Counter(label for label, _, _ in votes).most_common()
    if len(counts) > 1 and counts[0][1] == counts[1][1]:
        tied = sorted(label for label, count in counts if count == counts[0][1])
        detail = (f"{len(votes)} annotations, no majority: "
                  + ", ".join(f"annotation {number} chose {label!r}" for label, _, number in votes))
        return ResolvedTask(task_id, text, None, "conflict",
                            (*problems, AnnotationProblem(task_id, "label_conflict", detail, ", ".join(tied))))
    return ResolvedTask(task_id, text, counts[0][0], "majority" if len(votes) > 1 else "single", tuple(problems))
