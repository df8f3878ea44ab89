"""The demo's labelling loop (`freshet demo --label-studio URL`): each day the texts the champion scored go through
`freshet_label` to a Label Studio project with its predictions as pre-annotations, the demo's annotator
(`tasks.demo.annotator`) labels them from the corpus's truth through Label Studio's API, and the day's pipeline
run pulls the annotations back through a crawl source of kind `label_studio` and learns from them.

The summary measures active learning in production: of the day's queue, how many texts the uncertainty
sampling picked and how many the random control, and the champion's accuracy and macro-F1 on each group (its
prediction in the queue vs the label that came back). The uncertainty picks are where the champion is unsure;
its score on the control is an unbiased sample of how it does on the day's texts.

With the loop on, the demo site keeps half of each day's texts unlabelled (`UNLABELLED_FRACTION`): production
sees them (the score drop) but their labels never come from the site, so an annotation is the only way they
reach training, and the summary counts the rows the annotations added. The other half still arrives from the
site with its label (the site stands for the feedback that production gets later); an annotation of one of
those is a second row of a text the batch already has, under another id (`annotations:task-<n>` vs the package
name): clean keeps one row per text (the first in the batch, by id; the labels agree, the annotator answers
from the same truth), and the summary says which copy it kept.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from tasks.config import LabelStudioConnection, LabelStudioSource, PipelineConfig, load_config
from tasks.demo.annotator import AnnotationRound, CorpusTruth, annotate_open_tasks
from tasks.demo.site import is_unlabelled
from tasks.label import LabelFacts
from tasks.labelling.label_studio import LabelStudioClient
from tasks.manifest import Manifest
from tasks.sources.guard import address_refusal, resolve_addresses
from tasks.store import ArtifactStore, atomic_write_text

DEFAULT_TOKEN_ENV = "LABEL_STUDIO_TOKEN"
SOURCE_NAME = "annotations"
SETTING = "label.label_studio"
QUEUE_VIEW = "freshet queue"
# The data manager's columns the queue's tab shows: the champion's pre-annotation next to the text and why it
# was picked (Label Studio hides the prediction columns by default).
QUEUE_COLUMNS = ("id", "total_annotations", "annotations_results", "predictions_score", "predictions_model_versions",
                 "predictions_results", "text", "selected_by")
COLUMN_WIDTHS = {"tasks:annotations_results": 300, "tasks:predictions_results": 300,
                 "tasks:predictions_model_versions": 170, "tasks:predictions_score": 120, "tasks:total_annotations": 60}
GROUPS = (("uncertainty", "uncertainty"), ("control", "random control"))
# The demo's budget where the config sets none: 5% of a day's texts (100 at the default 2000). Each annotation is
# a second row of a text the site publishes the same day, and validate rejects a batch over
# validate.max_duplicate_fraction (0.2, and the synopses repeat ~3% on their own).
BUDGET_SHARE = 0.05
# The share of the demo site's texts published without a label (production traffic only) while the loop runs.
UNLABELLED_FRACTION = 0.5
# A control share large enough to measure the champion on (the product's default is 0.1).
CONTROL_FRACTION = 0.3


class LabellingSetupError(RuntimeError):
    """The demo cannot run its labelling loop on this config; the message names the setting."""


def project_title(home: Path) -> str:
    """The project of a demo home: the same home (also after --fresh) always has the same one."""
    return f"freshet-demo-{hashlib.sha256(str(home.resolve()).encode()).hexdigest()[:10]}"


def on_private_network(url: str) -> bool:
    """Whether the crawler's address guard would refuse `url` without `allow_private_network` (the same rule)."""
    parts = urlsplit(url)
    try:
        addresses = resolve_addresses(parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80))
    except OSError:
        return True  # not resolvable here: a compose service name, on the stack's own network
    return any(address_refusal(address, allow_private_network=False) for address in addresses)


def with_label_studio(config_path: Path, home: Path, url: str, token_env: str, rows_per_day: int) -> Path:
    """The config at `config_path` with the labelling loop added, written to `<home>/config.yaml`:
    `label.label_studio` (this home's project), a crawl source of kind `label_studio` named `annotations` reading
    it, and the demo's budget and control share where the config sets none. The rest stays as written; loading
    it validates it (a ConfigError names the setting)."""
    import yaml

    data = yaml.safe_load(config_path.read_text()) or {}
    connection = {"url": url, "token_env": token_env, "project": project_title(home)}
    data["label"] = {"budget_per_day": max(1, min(100, round(rows_per_day * BUDGET_SHARE))),
                     "control_fraction": CONTROL_FRACTION, **(data.get("label") or {}), "label_studio": connection}
    crawl = data.setdefault("crawl", {})
    sources = [source for source in crawl.get("sources") or [] if source.get("name") != SOURCE_NAME]
    crawl["sources"] = [*sources, {"name": SOURCE_NAME, "kind": "label_studio", **connection,
                                   "allow_private_network": on_private_network(url)}]
    model = (data.get("train") or {}).get("model")
    if isinstance(model, str) and (config_path.parent / model).is_dir():
        data["train"]["model"] = str((config_path.parent / model).resolve())  # read from the config's folder
    target = home / "config.yaml"
    atomic_write_text(target, f"# {config_path} with the labelling loop added by `freshet demo --label-studio`\n"
                      + yaml.safe_dump(data, sort_keys=False))
    load_config(target)
    return target


@dataclass(frozen=True)
class DemoLabelling:
    """The labelling loop of one demo: the project (`label.label_studio`), the crawl source that pulls it, and
    the corpus the annotator answers from."""

    connection: LabelStudioConnection
    source: str
    corpus: Path
    labels: tuple[str, ...]

    @classmethod
    def of(cls, config: PipelineConfig, corpus: Path) -> DemoLabelling | None:
        """The loop the config asks for (None: no `label.label_studio`); refused when its annotations would never
        reach a round."""
        connection = config.label.label_studio
        if connection is None:
            return None
        readers = [source for source in config.crawl.sources if isinstance(source, LabelStudioSource)
                   and source.url == connection.url and source.project == connection.project]
        if not readers:
            raise LabellingSetupError(
                f"label.label_studio sends the queue to project {connection.project!r} at {connection.url}, but no "
                "crawl source of kind label_studio reads it (crawl.sources): the annotations would never reach a "
                "round (docs/labelling.md)")
        return cls(connection, readers[0].name, corpus, tuple(config.labels))

    def client(self) -> LabelStudioClient:
        return LabelStudioClient(self.connection, setting=SETTING)

    def check(self, fresh_home: bool) -> None:
        """Before anything runs: the token is set, the server answers and takes it, and the project is there (the
        crawl source refuses a missing one, and the first days queue nothing). A fresh home starts with a fresh
        project: one of this home's title left by an earlier demo here is deleted first."""
        title = self.connection.project
        with self.client() as client:
            found = client.find_project(title)
            if found is not None and fresh_home and title.startswith("freshet-demo-"):
                client.delete_project(int(found["id"]))
            client.ensure_project(title, self.labels, description="freshet demo: the texts its champion is least "
                                  "sure of, and a random control (freshet_label)")

    def annotate(self) -> AnnotationRound:
        """The annotator's pass over the project's open tasks (after the day's queue was imported)."""
        truth = CorpusTruth.read(self.corpus)
        with self.client() as client:
            annotated = annotate_open_tasks(client, self.connection.project, truth)
            if annotated.tasks:  # the tab lists the project's data columns, known once it has tasks
                show_queue_columns(client, annotated.project_id)
            return annotated

    def project_url(self) -> str | None:
        with self.client() as client:
            found = client.find_project(self.connection.project)
        return None if found is None else f"{self.connection.url}/projects/{found['id']}/data"


def show_queue_columns(client: LabelStudioClient, project_id: int) -> None:
    """A data manager tab that shows each task's pre-annotation (label, score, model version) beside the text
    and why it was picked, as a person would set it up with Columns; made once per project."""
    views = client.json("GET", "/api/dm/views", f"list the tabs of project {project_id}",
                        params={"project": project_id})
    if any((view.get("data") or {}).get("title") == QUEUE_VIEW for view in views):
        return
    columns = client.json("GET", "/api/dm/columns", f"list the columns of project {project_id}",
                          params={"project": project_id}).get("columns", [])
    hidden = [f"{column['target']}:{column['parent'] + '.' if column.get('parent') else ''}{column['id']}"
              for column in columns if column["id"] not in QUEUE_COLUMNS]
    client.json("POST", "/api/dm/views", f"add the tab {QUEUE_VIEW!r} to project {project_id}", json={
        "project": project_id, "data": {"title": QUEUE_VIEW, "hiddenColumns": {"explore": hidden, "labeling": []},
                                        "columnsWidth": COLUMN_WIDTHS}})


# ------------------------------------------------------------------------------------------ summary


def _score(value: float | None) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:.3f}"


def group_scores(queue: Any, labels: Mapping[str, str]) -> dict[str, dict[str, Any]]:
    """Per selection group: texts picked, texts whose label came back, and the champion's accuracy and macro-F1 on
    them (its predicted label in the queue vs the label that came back; None without any)."""
    from sklearn.metrics import f1_score

    scores = {}
    for group, _ in GROUPS:
        picked = queue[queue["selected_by"] == group]
        answered = picked[picked["text"].isin(list(labels))]
        truth = [labels[text] for text in answered["text"]]
        predicted = [str(label) for label in answered["predicted_label"]]
        scores[group] = {
            "picked": len(picked), "labelled": len(answered),
            "accuracy": sum(a == b for a, b in zip(truth, predicted)) / len(truth) if truth else None,
            "macro_f1": float(f1_score(truth, predicted, average="macro", zero_division=0)) if truth else None}
    return scores


def pulled_labels(store: ArtifactStore, crawl: Manifest | None, source: str) -> dict[str, str]:
    """Text -> label of the annotations the pipeline's crawl pulled from `source`."""
    import pandas as pd

    if crawl is None or not crawl.output("records").rows:
        return {}
    records = pd.read_parquet(store.local_path(crawl.output("records").uri), columns=["text", "label", "source"])
    pulled = records[records["source"] == source]
    return dict(zip(pulled["text"].astype(str), pulled["label"].astype(str)))


def kept_rows(store: ArtifactStore, clean: Manifest | None, source: str, texts: Sequence[str]) -> dict[str, Any]:
    """Of the pulled annotations' texts, how clean kept them: as the annotation's own row (by split), as another
    source's row of the same text (the demo site's), or not at all."""
    import pandas as pd

    if clean is None:
        return {"as_annotation": 0, "splits": {}, "as_other_row": 0, "dropped": len(texts), "cleaned": False}
    dataset = pd.read_parquet(store.local_path(clean.output("dataset").uri), columns=["id", "text", "source", "split"])
    own = dataset[dataset["source"] == source]
    others = {" ".join(str(text).split()).casefold() for text in dataset.loc[dataset["source"] != source, "text"]}
    own_texts = {" ".join(str(text).split()).casefold() for text in own["text"]}
    wanted = [" ".join(text.split()).casefold() for text in texts]
    as_annotation = sum(text in own_texts for text in wanted)
    as_other = sum(text in others and text not in own_texts for text in wanted)
    return {"as_annotation": as_annotation, "as_other_row": as_other, "dropped": len(wanted) - as_annotation - as_other,
            "splits": {str(key): int(value) for key, value in own["split"].value_counts().sort_index().items()},
            "cleaned": True}


def summarize_day(store: ArtifactStore, labelling: DemoLabelling, label_run: Manifest | None,
                  pipeline: Mapping[str, Manifest], annotation: AnnotationRound | str | None
                  ) -> tuple[list[str], dict[str, Any]]:
    """Summary lines for the day's labelling (queue, annotator, pull, what clean kept, the champion per group),
    and the day's figures for the table."""
    import pandas as pd

    figures: dict[str, Any] = {}
    if label_run is None:
        return ["  labelling: no freshet_label run recorded"], figures
    facts = LabelFacts.of(label_run)
    if not facts.selected:
        return [f"  labelling: {facts.reason}"], figures
    queue = pd.read_parquet(store.local_path(label_run.output("queue").uri))
    champion = f"champion v{facts.model_version}"
    lines = [(f"  labelling: {facts.picked} of {facts.candidates} scored texts queued in Label Studio (project "
              f"{facts.project!r}) with {champion}'s predictions as pre-annotations: {facts.by_uncertainty} picked by "
              f"uncertainty, {facts.by_control} by the random control ({facts.near_duplicates} near-duplicates of "
              "labelled or queued texts left out)")]
    if isinstance(annotation, AnnotationRound):
        lines.append(f"    the demo's annotator {annotation.describe()}")
    elif annotation is not None:
        lines.append(f"    the demo's annotator FAILED: {annotation}")
    labels = pulled_labels(store, pipeline.get("crawl"), labelling.source)
    texts = [text for text in queue["text"].astype(str) if text in labels]
    only_annotated = sum(is_unlabelled(str(identifier), UNLABELLED_FRACTION) and str(text) in labels
                         for identifier, text in zip(queue["id"], queue["text"]))
    kept = kept_rows(store, pipeline.get("clean"), labelling.source, texts)
    pulled = (f"    the pipeline's crawl pulled {len(labels)} annotation(s) (source {labelling.source}), "
              f"{len(texts)} of them of today's queue")
    if kept["cleaned"] and texts:
        splits = ", ".join(f"{split} {count}" for split, count in kept["splits"].items())
        pulled += (f"; clean kept {kept['as_annotation']} as the annotation's row ({splits})"
                   + (f", {kept['as_other_row']} as the demo site's row of the same text (one row per text)"
                      if kept["as_other_row"] else "")
                   + (f", dropped {kept['dropped']} (clean_report.json says why)" if kept["dropped"] else "")
                   + f"; {only_annotated} of them texts whose label only the annotation gives (new rows)")
    lines.append(pulled)
    scores = group_scores(queue, labels)
    lines.append(f"    {champion}'s prediction vs the annotator's label: " + "; ".join(
        f"{name} {scores[group]['labelled']} of {scores[group]['picked']}: accuracy "
        f"{_score(scores[group]['accuracy'])}, macro-F1 {_score(scores[group]['macro_f1'])}" for group, name in GROUPS))
    figures = {"version": facts.model_version, "queued": facts.picked, "pulled": len(texts),
               "annotated": annotation.annotated if isinstance(annotation, AnnotationRound) else None,
               "kept": kept["as_annotation"] + kept["as_other_row"], "new_rows": only_annotated, "groups": scores}
    return lines, figures


def labelling_table(days: Sequence[Mapping[str, Any]]) -> list[str]:
    """The champion per selection group and day: the in-production measure of what uncertainty sampling finds."""
    title = ("Active learning in production (the champion's pre-annotation vs the annotator's label, per selection "
             "group; the control is a random sample of the day's texts):")
    header = ("| day | champion | uncertainty picks | accuracy | macro-F1 | control picks | accuracy | macro-F1 "
              "| annotated | pulled | kept as rows | new rows |")
    lines = ["", title, "", header, "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for day in days:
        groups = day.get("groups") or {}
        cells = []
        for group, _ in GROUPS:
            scores = groups.get(group) or {}
            cells += [str(scores.get("labelled", "-")), _score(scores.get("accuracy")), _score(scores.get("macro_f1"))]
        counts = ["-" if day.get(key) is None else str(day[key]) for key in ("annotated", "pulled", "kept", "new_rows")]
        lines.append(f"| {day['date']} | {day.get('version') or '-'} | " + " | ".join([*cells, *counts]) + " |")
    return lines
