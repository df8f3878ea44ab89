"""Label step: the day's labelling budget, picked from the texts the champion scored, queued in Label Studio.

Reads the score step's predictions (the `score` input when one is given, else every `runs/<run>/score/` manifest
dated within `label.lookback_days` up to the logical day that no other label run took: an asset-triggered run is
dated the day it runs, after the scores of the day before): each text's predicted label and every class's
probability, from the
monitoring scorer, so nothing here runs a model. `tasks.labelling.selection` picks `label.budget_per_day`
texts: a random control share (`label.control_fraction`), the rest by the smallest margin between the two most
probable classes, spread over TF-IDF clusters and over the predicted labels; never a near-duplicate of a
labelled text (the accepted snapshots) or of one queued on an earlier day (`state/label/queue.json`).

Outputs: `queue.parquet` (each pick with its scores, margin rank, cluster, `selected_by` and the reason),
`tasks.json` (the queue in Label Studio's JSON import format, with the champion's prediction as pre-annotation:
for Label Studio or any tool that reads it), and `label_report.json`. With `label.label_studio` set, the project
is created (or its labels updated) and the queue imported; tasks already in the project (by `freshet_id`) are not
imported twice, so a retry after a kill never doubles a task. After the manifest commits, the queue is added to
`state/label/queue.json`. A day with nothing scored ends green with the reason. The annotations come back
through a crawl source of kind `label_studio`.

    python -m tasks.label --config configs/demo.yaml --run-id label-2026-11-02 --logical-date 2026-11-02
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict

from tasks.config import PipelineConfig, digest_json
from tasks.contract import StepContext, cli, execute, logical_day, read_manifest
from tasks.labelling.label_studio import LabelStudioClient, queue_task, write_tasks_file
from tasks.labelling.selection import Candidate, margins, select
from tasks.manifest import Manifest
from tasks.records import write_parquet
from tasks.snapshots import read_history
from tasks.store import ArtifactStore

STEP = "label"
QUEUE_STATE = ("state", "label", "queue.json")
PROBABILITY_PREFIX = "probability."
log = logging.getLogger("freshet.label")


class LabelFacts(BaseModel):
    """What the label step did; control tasks, the demo and tests read it through this type."""

    model_config = ConfigDict(extra="forbid")

    selected: bool
    reason: str
    score_runs: list[str] = []
    model_version: str | None = None
    candidates: int = 0
    eligible: int = 0
    near_duplicates: int = 0
    picked: int = 0
    by_uncertainty: int = 0
    by_control: int = 0
    picked_by_label: dict[str, int] = {}
    project: str | None = None
    project_id: int | None = None
    tasks_imported: int = 0
    tasks_already_in_project: int = 0

    @classmethod
    def of(cls, manifest: Manifest) -> LabelFacts:
        return cls.model_validate(manifest.facts)


def scored_manifests(store: ArtifactStore, inputs: Mapping[str, Manifest], day: dt.date, run_id: str,
                     lookback_days: int) -> list[Manifest]:
    """The score manifests whose predictions are this run's candidates: the `score` input, else every score run
    that scored rows, dated within `lookback_days` up to the logical day, that no other label run took."""
    if "score" in inputs:
        return [inputs["score"]]
    taken = {score_run for score_run, label_run in read_queue_state(store).get("consumed", {}).items()
             if label_run != run_id}
    earliest = day - dt.timedelta(days=lookback_days - 1)
    found = []
    for directory in store.run_directories():
        manifest = read_manifest(store, directory, "score")
        if manifest is None or "predictions" not in manifest.outputs or not manifest.output("predictions").rows:
            continue
        scored_day = logical_day(manifest.logical_date)
        if scored_day is not None and earliest <= scored_day <= day and manifest.run_id not in taken:
            found.append(manifest)
    return sorted(found, key=lambda manifest: manifest.run_id)


def read_queue_state(store: ArtifactStore) -> dict[str, Any]:
    """`entries`: every text queued so far [{run_id, logical_date, id, text}]; `consumed`: score run -> the label
    run that took its predictions."""
    return dict(store.read_json(*QUEUE_STATE) or {})


def queued_elsewhere(store: ArtifactStore, run_id: str) -> list[dict[str, Any]]:
    # This run's own entries do not count: a rerun must pick the same texts, not avoid them.
    return [entry for entry in read_queue_state(store).get("entries", []) if entry["run_id"] != run_id]


def labelled_texts(store: ArtifactStore) -> list[str]:
    """The texts of every accepted snapshot (they have labels already)."""
    import pyarrow.parquet as pq

    texts: list[str] = []
    for snapshot in read_history(store):
        table = pq.read_table(store.local_path(snapshot["uri"]), columns=["text"])
        texts.extend(str(text) for text in table.column("text").to_pylist() if text)
    return texts


def run(config: PipelineConfig, inputs: Mapping[str, Manifest], *, run_id: str, store: ArtifactStore,
        logical_date: str | None = None, client: LabelStudioClient | None = None) -> Manifest:
    """`client` is injectable (tests pass one with another token); by default one is opened from
    `label.label_studio` when the queue has texts to push."""
    day = logical_day(logical_date) or dt.datetime.now(dt.UTC).date()
    scored = scored_manifests(store, inputs, day, run_id, config.label.lookback_days)
    queued = queued_elsewhere(store, run_id)
    history = [(item["uri"], item.get("digest")) for item in read_history(store)]

    def body(context: StepContext) -> None:
        import pandas as pd

        frames = [pd.read_parquet(store.local_path(manifest.output("predictions").uri)) for manifest in scored]
        frame = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
        reason = nothing_to_label(config, scored, frame, day)
        facts = LabelFacts(selected=False, reason=reason or "", score_runs=[manifest.run_id for manifest in scored])
        if reason is None:
            picks_frame, tasks, facts = pick_texts(config, store, frame, queued, day, facts, client)
        else:
            picks_frame, tasks = pd.DataFrame(columns=QUEUE_COLUMNS), []
        record_queue(context, picks_frame, tasks, facts)

    def track(manifest: Manifest) -> None:
        import mlflow

        facts = LabelFacts.of(manifest)
        mlflow.set_tags({"freshet.model_version": str(facts.model_version),
                         "freshet.label.project": str(facts.project)})
        mlflow.log_artifact(str(store.local_path(manifest.output("report").uri)))

    manifest = execute(STEP, body, config, inputs, run_id=run_id, store=store, logical_date=logical_date,
                       config_sections=(STEP, "clean"),
                       extra_fingerprint={"scored": [manifest.fingerprint for manifest in scored],
                                          "history": history, "queued": digest_json(queued)},
                       track=track)
    publish_queue(store, manifest)
    return manifest


QUEUE_COLUMNS = ["id", "text", "predicted_label", "confidence", "margin", "margin_rank", "cluster", "selected_by",
                 "reason", "model_version"]


def nothing_to_label(config: PipelineConfig, scored: Sequence[Manifest], frame: Any, day: dt.date) -> str | None:
    """Why there is nothing to label today, or None."""
    if not scored:
        return (f"no score run of the {config.label.lookback_days} day(s) up to {day} that another label run "
                "has not taken: nothing to label")
    if "text" not in frame.columns:
        return "the day's predictions keep no text (score.store_text: false): nothing to label"
    if config.label.budget_per_day == 0:
        return "label.budget_per_day is 0"
    return None


def pick_texts(config: PipelineConfig, store: ArtifactStore, frame: Any, queued: Sequence[Mapping[str, Any]],
               day: dt.date, facts: LabelFacts,
               client: LabelStudioClient | None) -> tuple[Any, list[dict[str, Any]], LabelFacts]:
    """The day's picks (by uncertainty and a random control, near-duplicates of known texts left out): the queue,
    its Label Studio tasks and the facts, pushed to Label Studio when one is configured."""
    import numpy as np
    import pandas as pd

    frame = frame.dropna(subset=["text"]).drop_duplicates("id", keep="first").reset_index(drop=True)
    probability_columns = [name for name in frame.columns if name.startswith(PROBABILITY_PREFIX)]
    scored_labels = [name.removeprefix(PROBABILITY_PREFIX) for name in probability_columns]
    frame["margin"] = margins(frame[probability_columns].to_numpy(dtype=np.float64))
    candidates = [Candidate(str(row.id), str(row.text), str(row.label), float(row.confidence),
                            float(row.margin)) for row in frame.itertuples(index=False)]
    versions = dict(zip(frame["id"].astype(str), frame["model_version"].astype(str)))
    selection = select(candidates, budget=config.label.budget_per_day,
                       control_fraction=config.label.control_fraction,
                       pool_factor=config.label.candidate_pool_factor,
                       seed=config.label.seed + day.toordinal(),
                       known_texts=[*labelled_texts(store), *(str(entry["text"]) for entry in queued)],
                       near_duplicate_threshold=config.label.near_duplicate_threshold, clean=config.clean,
                       label_order=[*config.labels, *scored_labels])
    picks_frame = pd.DataFrame([{
        "id": pick.candidate.id, "text": pick.candidate.text, "predicted_label": pick.candidate.label,
        "confidence": pick.candidate.confidence, "margin": pick.candidate.margin,
        "margin_rank": pick.margin_rank, "cluster": pick.cluster, "selected_by": pick.selected_by,
        "reason": pick.reason, "model_version": versions[pick.candidate.id]} for pick in selection.picks],
        columns=QUEUE_COLUMNS)
    tasks = [queue_task(pick.candidate.id, pick.candidate.text, pick.candidate.label,
                        pick.candidate.confidence, versions[pick.candidate.id], selected_by=pick.selected_by,
                        margin=round(pick.candidate.margin, 6), reason=pick.reason)
             for pick in selection.picks]
    counts = picks_frame["selected_by"].value_counts()
    facts = facts.model_copy(update={
        "selected": bool(selection.picks),
        "reason": f"{len(selection.picks)} of {selection.candidates} scored texts queued "
                  f"({int(counts.get('uncertainty', 0))} by uncertainty, "
                  f"{int(counts.get('control', 0))} random control)",
        "model_version": str(frame["model_version"].iloc[-1]) if len(frame) else None,
        "candidates": selection.candidates, "eligible": selection.eligible,
        "near_duplicates": selection.near_duplicates, "picked": len(selection.picks),
        "by_uncertainty": int(counts.get("uncertainty", 0)), "by_control": int(counts.get("control", 0)),
        "picked_by_label": {str(key): int(value) for key, value in
                            picks_frame["predicted_label"].value_counts().sort_index().items()},
    })
    if tasks and config.label.label_studio is not None:
        facts = push(config, tasks, [*config.labels, *scored_labels], facts, client)
    return picks_frame, tasks, facts


def record_queue(context: StepContext, picks_frame: Any, tasks: Sequence[Mapping[str, Any]],
                 facts: LabelFacts) -> None:
    """The queue, its tasks file and the report as the step's outputs; the facts and metrics of the manifest."""
    write_parquet(pa_table(picks_frame), context.out_dir / "queue.parquet")
    context.add_output("queue", "queue.parquet", "dataset", rows=len(picks_frame))
    write_tasks_file(context.out_dir / "tasks.json", tasks)
    context.add_output("tasks", "tasks.json", "file", rows=len(tasks))
    (context.out_dir / "label_report.json").write_text(json.dumps(facts.model_dump(), indent=2, sort_keys=True))
    context.add_output("report", "label_report.json", "report")
    context.facts.update(facts.model_dump())
    context.metrics.update({"picked": facts.picked, "by_uncertainty": facts.by_uncertainty,
                            "by_control": facts.by_control, "candidates": facts.candidates,
                            "near_duplicates": facts.near_duplicates, "tasks_imported": facts.tasks_imported,
                            "mean_margin_picked": float(picks_frame["margin"].mean()) if len(picks_frame) else None})
    log.info("label: %s", facts.reason)


def push(config: PipelineConfig, tasks: Sequence[Mapping[str, Any]], labels: Sequence[str], facts: LabelFacts,
         client: LabelStudioClient | None) -> LabelFacts:
    """Create or update the project and import the tasks it does not hold yet (by `freshet_id`)."""
    connection = config.label.label_studio
    assert connection is not None
    http = client or LabelStudioClient(connection, setting="label.label_studio")
    try:
        project = http.ensure_project(connection.project, list(dict.fromkeys(labels)),
                                      description="Texts freshet's champion is least sure of (freshet_label).")
        project_id = int(project["id"])
        present = {str((task.get("data") or {}).get("freshet_id"))
                   for task in http.tasks(project_id, fields="task_only", page_size=1000)}
        missing = [task for task in tasks if str(task["data"]["freshet_id"]) not in present]
        imported = http.import_tasks(project_id, missing)
    finally:
        if client is None:
            http.close()
    log.info("label: project %r (id %d): %d tasks imported, %d already there", connection.project, project_id,
             len(imported), len(tasks) - len(missing))
    return facts.model_copy(update={"project": connection.project, "project_id": project_id,
                                    "tasks_imported": len(imported),
                                    "tasks_already_in_project": len(tasks) - len(missing)})


def publish_queue(store: ArtifactStore, manifest: Manifest) -> None:
    """Add the committed queue to `state/label/queue.json`, and mark the score runs it took as consumed (replacing
    this run's entries, never doubling them)."""
    import pandas as pd

    frame = pd.read_parquet(store.local_path(manifest.output("queue").uri), columns=["id", "text"])
    state = read_queue_state(store)
    entries = [entry for entry in state.get("entries", []) if entry["run_id"] != manifest.run_id]
    entries.extend({"run_id": manifest.run_id, "logical_date": manifest.logical_date, "id": str(row_id),
                    "text": str(text)} for row_id, text in zip(frame["id"], frame["text"]))
    consumed = {score_run: label_run for score_run, label_run in state.get("consumed", {}).items()
                if label_run != manifest.run_id}
    consumed.update(dict.fromkeys(LabelFacts.of(manifest).score_runs, manifest.run_id))
    store.write_json({"entries": entries, "consumed": consumed}, *QUEUE_STATE)


def pa_table(frame: Any) -> Any:
    import pyarrow as pa

    return pa.Table.from_pandas(frame, preserve_index=False)


def main(argv: Sequence[str] | None = None) -> int:
    return cli(STEP, run, argv, __doc__)


if __name__ == "__main__":
    raise SystemExit(main())
