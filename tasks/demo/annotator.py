"""The demo's annotator: labels a Label Studio project's open tasks with the demo corpus's true labels, through
Label Studio's REST API, as a person would through its UI.

It knows what a person sees in the project (each task's text, and the package name the demo gave it as
`freshet_id`) and what a Debian maintainer would know: the package's Section, from the demo corpus. Nothing of
freshet's own state is read: not the queue, not the champion's prediction (a person sees the pre-annotation and
may accept or change it; the annotator answers from the truth either way). A task whose package the corpus does
not know, or whose text no longer matches it, is left open. Tasks that already have a finished annotation are
not touched, so a second pass over the same project annotates nothing.

    python -m tasks.demo.annotator --url http://127.0.0.1:8089 --project freshet-demo-... \\
        --corpus .freshet/demo/corpus.jsonl          # the token in $LABEL_STUDIO_TOKEN (--token-env)
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tasks.config import LabelStudioConnection
from tasks.labelling.label_studio import TEXT_NAME, LabelStudioClient, LabelStudioError

# What the client's errors name: `annotator.url` is --url, `annotator.token_env` --token-env, and so on.
SETTING = "annotator"


@dataclass(frozen=True)
class CorpusTruth:
    """The demo corpus's answers: each package's text and Section, and the Sections each text has."""

    by_id: Mapping[str, tuple[str, str]]
    labels_of_text: Mapping[str, frozenset[str]]

    @classmethod
    def of(cls, rows: Iterable[Mapping[str, Any]]) -> CorpusTruth:
        by_id: dict[str, tuple[str, str]] = {}
        labels_of_text: dict[str, set[str]] = {}
        for row in rows:
            by_id[str(row["id"])] = (str(row["text"]), str(row["label"]))
            labels_of_text.setdefault(str(row["text"]), set()).add(str(row["label"]))
        return cls(by_id, {text: frozenset(labels) for text, labels in labels_of_text.items()})

    @classmethod
    def read(cls, path: Path) -> CorpusTruth:
        """The demo corpus file (JSON lines with id, text, label)."""
        with open(path, encoding="utf-8") as lines:
            return cls.of(json.loads(line) for line in lines if line.strip())

    def label_of(self, task: Mapping[str, Any]) -> str | None:
        """The true label of a task: its package's Section when the package's text is the task's text, else the
        text's Section when the corpus gives that text only one; None when the corpus cannot say."""
        data = task.get("data") or {}
        text = data.get(TEXT_NAME)
        known = self.by_id.get(str(data.get("freshet_id")))
        if known is not None and known[0] == text:
            return known[1]
        labels = self.labels_of_text.get(str(text), frozenset())
        return next(iter(labels)) if len(labels) == 1 else None


@dataclass
class AnnotationRound:
    """One pass of the annotator over a project: the tasks it found open, what it labelled them, and the ones the
    corpus could not answer (left open)."""

    project: str
    project_id: int
    tasks: int = 0
    already_annotated: int = 0
    annotated: int = 0
    unknown: list[int] = field(default_factory=list)
    by_label: Counter[str] = field(default_factory=Counter)

    def describe(self) -> str:
        labels = ", ".join(f"{label} {count}" for label, count in sorted(self.by_label.items()))
        line = (f"annotated {self.annotated} open task(s) of {self.tasks} in project {self.project!r}"
                + (f" ({labels})" if labels else ""))
        if self.unknown:
            line += f"; {len(self.unknown)} left open: the corpus does not know their text (tasks {self.unknown[:5]})"
        return line


def finished(task: Mapping[str, Any]) -> bool:
    """Whether a task has an annotation that was submitted, not skipped."""
    return any(not annotation.get("was_cancelled") for annotation in task.get("annotations") or [])


def annotate_open_tasks(client: LabelStudioClient, project: str, truth: CorpusTruth) -> AnnotationRound:
    """Label every open task of `project` with its true label (one annotation each, as a person submits it)."""
    found = client.project(project)
    result = AnnotationRound(project, int(found["id"]))
    for task in list(client.tasks(result.project_id, fields="all")):
        result.tasks += 1
        if finished(task):
            result.already_annotated += 1
            continue
        label = truth.label_of(task)
        if label is None:
            result.unknown.append(int(task["id"]))
            continue
        client.annotate(int(task["id"]), label)
        result.annotated += 1
        result.by_label[label] += 1
    return result


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tasks.demo.annotator", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", required=True, help="Label Studio's base URL")
    parser.add_argument("--project", required=True, help="the project's title")
    parser.add_argument("--corpus", required=True, type=Path, help="the demo corpus (JSON lines: id, text, label)")
    parser.add_argument("--token-env", default="LABEL_STUDIO_TOKEN", help="environment variable holding the token")
    args = parser.parse_args(argv)
    try:
        truth = CorpusTruth.read(args.corpus)
    except (OSError, ValueError, KeyError) as error:
        print(f"annotator: cannot read the corpus {args.corpus} (--corpus): {error}", file=sys.stderr)
        return 2
    try:
        connection = LabelStudioConnection(url=args.url, token_env=args.token_env, project=args.project)
    except ValueError as error:
        print(f"annotator: --url/--token-env/--project: {error}", file=sys.stderr)
        return 2
    try:
        with LabelStudioClient(connection, setting=SETTING) as client:
            result = annotate_open_tasks(client, args.project, truth)
    except LabelStudioError as error:
        print(f"annotator: {error}", file=sys.stderr)
        return 2
    print(f"annotator: {result.describe()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
