"""Train the candidate classifier: one program for a single process or torchrun DDP.

Inputs: `augment` (new training rows, augmented ones tagged) and `clean` (this snapshot's
validation split and the prior snapshots, from which a replay sample keeps old knowledge alive).
Warm-starts from the registry's champion. gloo on CPU, NCCL on GPU; length-bucketed batches with
dynamic padding; fused AdamW; on CPU, dropout masks from numpy's PCG64 (tasks/training/cpu_dropout.py),
the word-embedding gradient zeroed and clipped on the touched rows only (tasks/training/embedding_rows.py,
one process) and freed memory kept for reuse; optional bf16 autocast, torch.compile, frozen word
embeddings and LoRA adapters (peft, merged into the weights before saving); checkpoints every N
steps and on SIGTERM; a restart resumes from the last one. Rank 0 alone writes the model and prints the
progress lines (step/total, loss, samples/s, eta) that the DDP operator streams into the Airflow task log;
it runs the round through the contract's `execute`, whose `track` records it in MLflow after the commit,
the metric history kept while training (metrics_history.jsonl, in every checkpoint too) replayed at its
steps, so a run recovered after a kill shows what an uninterrupted one does.
"""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow.parquet as pq
import torch
import torch.distributed as dist
from pydantic import BaseModel, ConfigDict
from torch.distributed.elastic.multiprocessing.errors import record

from tasks import model_registry
from tasks.clean import prepare
from tasks.config import PipelineConfig, PseudoLabelConfig
from tasks.contract import StepContext, cli, execute, logical_day, read_manifest, reusable, step_fingerprint
from tasks.label_set import run_labels
from tasks.manifest import Manifest, StepError, StepFacts
from tasks.models.families import resolve_model_source
from tasks.records import CleanFacts, content_hash, latest_versions, read_rows, write_parquet
from tasks.snapshots import last_training, read_history, untrained_snapshots
from tasks.store import ArtifactStore, atomic_write_text
from tasks.tracking import log_metric_history
from tasks.training.data import TrainingData
from tasks.training.distributed import DistributedEnv
from tasks.training.pseudo_labels import from_prediction_log, window_parts
from tasks.training.runtime import threads_per_rank

if TYPE_CHECKING:
    from tasks.training.loop import FitResult

__all__ = ["STEP", "TrainFacts", "fit", "gather_training_data", "main", "run"]

STEP = "train"
log = logging.getLogger("freshet.train")


# ------------------------------------------------------------------------------------- data


def gather_training_data(config: PipelineConfig, augment_rows: list[dict[str, Any]],
                         snapshot_rows: list[dict[str, Any]], prior: Sequence[dict[str, Any]],
                         store: ArtifactStore, labels: Sequence[str] | None = None,
                         waiting: Sequence[dict[str, Any]] = ()) -> TrainingData:
    """New rows (bounded sample) + their augmentations + a replay sample of earlier snapshots.

    `waiting`: earlier snapshots no round has trained on yet (a day too small to train, or whose training
    failed): their rows are new rows of this round, not a replay sample."""
    settings = config.train
    rng = random.Random(settings.seed)
    waiting_uris = {entry["uri"] for entry in waiting}
    # An id accepted again (a new text, an edited label) counts once, in its latest version.
    earlier = [*prior, *(entry for entry in waiting if entry["uri"] not in {item["uri"] for item in prior})]
    earlier.sort(key=lambda entry: (entry.get("logical_date") or "", entry["run_id"]))
    latest = latest_versions(store, [entry["uri"] for entry in earlier], (row["id"] for row in snapshot_rows))
    waited = [row for entry in waiting for row in latest[entry["uri"]]]
    real = [row for row in augment_rows if not row.get("augmented_from")]
    real += [row for row in waited if row["split"] == "train"]
    augmented = [row for row in augment_rows if row.get("augmented_from")]
    if settings.max_train_rows is not None and len(real) > settings.max_train_rows:
        real = rng.sample(real, settings.max_train_rows)
        kept = {row["id"] for row in real}
        augmented = [row for row in augmented if row["augmented_from"] in kept]
    old_train: list[dict[str, Any]] = []
    old_validation: list[dict[str, Any]] = []
    for entry in prior:
        if entry["uri"] in waiting_uris:
            continue
        for row in latest[entry["uri"]]:
            if row["split"] == "train":
                old_train.append(row)
            elif row["split"] == "validation":
                old_validation.append(row)
    replay_count = min(len(old_train), round(settings.replay_fraction * len(real)))
    replay = rng.sample(old_train, replay_count) if replay_count else []
    validation = ([row for row in snapshot_rows if row["split"] == "validation"] + old_validation
                  + [row for row in waited if row["split"] == "validation"])
    if len(validation) > settings.max_validation_rows:
        validation = rng.sample(validation, settings.max_validation_rows)
    train = real + augmented + replay
    if not train:
        raise StepError("train: no training rows (the new batch has no train split and there is no replay data)")
    counts = {"rows_new": len(real), "rows_waiting": sum(row["split"] == "train" for row in waited),
              "rows_augmented": len(augmented), "rows_replay": len(replay),
              "rows_train": len(train), "rows_validation": len(validation)}
    return TrainingData(train, validation, counts, list(labels) if labels is not None else None)


# ------------------------------------------------------------------------------------ loop


def fit(config: PipelineConfig, data: TrainingData, environment: DistributedEnv, checkpoint_dir: Path,
        init_dir: Path | None, log_metrics=None) -> FitResult:
    """The training loop (tasks/training/loop.py), identical for one process and for every DDP rank."""
    # lazy: the loop pulls in transformers (2.8 s measured), which neither `run`'s reuse path nor the
    # importers of gather_training_data need.
    from tasks.training.loop import Trainer

    return Trainer(config, data, environment, checkpoint_dir, init_dir, log_metrics).train()


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ------------------------------------------------------------------------------------- facts


class PrecisionFacts(BaseModel):
    """bf16 autocast or fp32, whether the device has native bf16, and why (tasks/training/precision.py)."""

    model_config = ConfigDict(extra="forbid")

    precision: str
    native_bf16: bool
    reason: str


class TrainedModelFacts(BaseModel):
    """What the preflight found in the model trained from (tasks/models/families.py)."""

    model_config = ConfigDict(extra="forbid")

    source: str
    model_dir: str | None
    model_type: str
    family: str
    max_length_limit: int | None
    max_length_from: str
    input_names: list[str]
    pad_token_id: int


class SelfTrainingFacts(BaseModel):
    """Self-training's second fit on the champion's confident answers: how many texts the prediction log offered,
    how many rows were pseudo-labelled, both fits' best validation macro-F1 and whether the second one was kept."""

    model_config = ConfigDict(extra="forbid")

    candidates: int
    pseudo_rows: int
    teacher_version: str
    kept: bool
    validation_macro_f1_without: float | None
    validation_macro_f1_with: float | None = None
    reason: str = ""


class TrainFacts(StepFacts):
    """The champion warm-started from (None: trained from `train.model`), the labels in the classifier's order and
    the label map, the model and precision found, and self-training's outcome when it is on."""

    champion_version: str | None
    labels: list[str]
    label_map: dict[str, str]
    model: TrainedModelFacts
    precision: PrecisionFacts
    self_training: SelfTrainingFacts | None = None
    mlflow_run_id: str | None = None  # manifests made before the contract opened train's run (it is found by its tags)


# ------------------------------------------------------------------------------------- step


SECTIONS = ("train", "split")
METRICS_HISTORY = "metrics_history.jsonl"


def run(config: PipelineConfig, inputs: dict[str, Manifest], *, run_id: str, store: ArtifactStore,
        logical_date: str | None = None) -> Manifest:
    environment = DistributedEnv.from_environment()
    torch.set_num_threads(threads_per_rank())
    plan = plan_round(config, inputs, store, run_id, logical_date, environment)
    if not environment.is_main:
        return follow_rank_zero(config, inputs, plan, environment, store, run_id, logical_date)

    def body(context: StepContext) -> None:
        result, trained, self_training = fit_round(config, read_round(config, inputs, store, plan), environment,
                                                   checkpoint_dir(store, run_id, context.fingerprint))
        write_trained_model(context, config, result, trained, plan, self_training)
        context.metrics["peak_memory_mb"] = peak_memory_mb(environment.device)

    def track(manifest: Manifest) -> None:
        track_training(config, store, manifest)

    manifest = execute(STEP, body, config, inputs, run_id=run_id, store=store, logical_date=logical_date,
                       config_sections=SECTIONS, extra_fingerprint=plan.fingerprint_extra, track=track)
    if environment.world_size > 1 and not manifest.reused:
        dist.barrier()  # the other ranks read the manifest once it is committed
        dist.destroy_process_group()
    return manifest


@dataclass(frozen=True)
class RoundPlan:
    """What decides a round before any row is read: the champion to warm-start from, the labels, the snapshots
    waiting to train, self-training's teacher, and what of these goes into the fingerprint."""

    champion_version: str | None
    labels: list[str]
    waiting: list[dict[str, Any]]
    teacher: Teacher | None
    fingerprint_extra: dict[str, Any]


def plan_round(config: PipelineConfig, inputs: dict[str, Manifest], store: ArtifactStore, run_id: str,
               logical_date: str | None, environment: DistributedEnv) -> RoundPlan:
    champion = model_registry.version_by_alias(config, model_registry.CHAMPION) if config.train.warm_start else None
    if champion is not None and not _same_model_source(config, champion):
        champion = None  # another encoder now: start from it; evaluate still compares with the champion
    champion_version = str(champion.version) if champion else None
    labels = run_labels(config, inputs["clean"], store)
    waiting = waiting_snapshots(store, run_id, logical_date)
    extra: dict[str, Any] = {"champion_version": champion_version, "world_size": environment.world_size}
    if waiting:  # earlier snapshots no round trained on join as new rows (unchanged fingerprints otherwise)
        extra["waiting"] = [entry.get("digest") for entry in waiting]
    if labels != list(config.labels):  # grown by validate.new_labels: extend (unchanged fingerprints otherwise)
        extra["labels"] = labels
    teacher = self_training_teacher(config, store, logical_date)
    if teacher is not None:
        extra["self_training"] = {"teacher": teacher.version,
                                  "log": [[part["name"], part["size"], part["stamp"]] for part in teacher.parts]}
    return RoundPlan(champion_version, labels, waiting, teacher, extra)


@dataclass(frozen=True)
class Round:
    """A round's rows, the champion's weights to start from and self-training's rows: read only when it trains."""

    data: TrainingData
    init_dir: Path | None
    pseudo: SelfTrainingRows | None


def read_round(config: PipelineConfig, inputs: dict[str, Manifest], store: ArtifactStore, plan: RoundPlan) -> Round:
    data = _read_training_data(config, inputs, store, plan.labels, plan.waiting)
    init_dir = model_registry.download_model_dir(config, plan.champion_version) if plan.champion_version else None
    pseudo = (self_training_rows(config, store, plan.teacher, data, plan.labels) if plan.teacher is not None
              else None)
    return Round(data, init_dir, pseudo)


def follow_rank_zero(config: PipelineConfig, inputs: dict[str, Manifest], plan: RoundPlan,
                     environment: DistributedEnv, store: ArtifactStore, run_id: str,
                     logical_date: str | None) -> Manifest:
    """A rank other than 0: train in step with the others (unless rank 0's `execute` reuses the committed
    manifest), then return the manifest rank 0 committed."""
    fingerprint = step_fingerprint(STEP, config, inputs, logical_date, SECTIONS, plan.fingerprint_extra)
    reused = reusable(store, run_id, STEP, fingerprint)
    if reused is not None:
        return reused.model_copy(update={"reused": True})
    fit_round(config, read_round(config, inputs, store, plan), environment, checkpoint_dir(store, run_id, fingerprint))
    dist.barrier()
    manifest = read_manifest(store, run_id, STEP)
    dist.destroy_process_group()
    if manifest is None:
        raise StepError(f"train rank {environment.rank}: rank 0 committed no manifest at "
                        f"{store.step_uri(run_id, STEP, 'manifest.json')}")
    return manifest


def checkpoint_dir(store: ArtifactStore, run_id: str, fingerprint: str) -> Path:
    """Where a round's checkpoints live: outside staging, so a restarted round resumes; one folder per fingerprint."""
    return store.work_dir(run_id, STEP) / fingerprint.split(":")[-1][:16]


def track_training(config: PipelineConfig, store: ArtifactStore, manifest: Manifest) -> None:
    """Train's MLflow record, from the committed manifest and artifacts alone: the train settings as params, the
    labels and precision as tags, the label map, and the metric history of the fit(s) at their steps."""
    import mlflow

    facts = TrainFacts.of(manifest)
    mlflow.log_params(_mlflow_params(config, facts.champion_version))
    mlflow.set_tags({"freshet.labels": json.dumps(facts.labels), "freshet.precision": facts.precision.precision,
                     "freshet.precision_reason": facts.precision.reason})
    mlflow.log_artifact(str(store.local_path(manifest.output("label_map").uri)))
    history = store.local_path(manifest.output("metrics_history").uri).read_text().splitlines()
    log_metric_history(json.loads(line) for line in history if line)


@dataclass(frozen=True)
class Teacher:
    """Self-training's teacher: the champion version, the prediction log's parts it answered in, the settings."""

    version: str
    parts: list[dict[str, Any]]
    settings: PseudoLabelConfig


@dataclass(frozen=True)
class SelfTrainingRows:
    """The champion's confident answers on texts nobody labelled, chosen for a second fit, and how many texts the
    prediction log offered."""

    rows: list[dict[str, Any]]
    candidates: int
    champion_version: str
    min_confidence: float


def self_training_teacher(config: PipelineConfig, store: ArtifactStore, logical_date: str | None) -> Teacher | None:
    """None: `train.self_training` off, no champion yet, or no logical date to end the log's window."""
    settings = config.train.self_training
    day = logical_day(logical_date)
    if settings is None or day is None:
        return None
    champion = model_registry.version_by_alias(config, model_registry.CHAMPION)
    return (Teacher(str(champion.version), window_parts(store, day, settings), settings) if champion is not None
            else None)


def self_training_rows(config: PipelineConfig, store: ArtifactStore, teacher: Teacher, data: TrainingData,
                       labels: Sequence[str]) -> SelfTrainingRows:
    """The round's pseudo-labelled rows: the teacher's logged answers on texts no accepted snapshot holds."""
    def text_key(text: str) -> str:  # clean's normalised-text hash, so a logged text matches its labelled row
        return content_hash(prepare(text, config.clean)[0].text)

    labelled = {value for entry in read_history(store) for value in pq.read_table(
        store.local_path(entry["uri"]), columns=["normalized_hash"]).column("normalized_hash").to_pylist()}
    rows, candidates = from_prediction_log(
        store, teacher.parts, teacher.version, labels, labelled, text_key,
        sum(not row.get("augmented_from") for row in data.train), teacher.settings)
    return SelfTrainingRows(rows, candidates, teacher.version, teacher.settings.min_confidence)


def fit_round(config: PipelineConfig, round_: Round, environment: DistributedEnv,
              checkpoints: Path) -> tuple[FitResult, TrainingData, SelfTrainingFacts | None]:
    """The round's fit; with self-training rows, a second fit on them too, kept only when its best validation
    macro-F1 is higher. Returns the kept fit (its metric history holds both fits', the second one's prefixed
    `self_training.`), the rows it trained on and the self-training facts (None: off)."""
    data, pseudo = round_.data, round_.pseudo
    result = fit(config, data, environment, checkpoints, round_.init_dir)
    if pseudo is None:
        return result, data, None
    without = result.metrics.get("best_validation_macro_f1")
    if not pseudo.rows:
        return result, data, SelfTrainingFacts(
            candidates=pseudo.candidates, pseudo_rows=0, teacher_version=pseudo.champion_version, kept=False,
            validation_macro_f1_without=without,
            reason=(f"no text of the prediction log's {pseudo.candidates} unlabelled ones reached "
                    f"train.self_training.min_confidence={pseudo.min_confidence}"
                    if pseudo.candidates else "the prediction log holds no unlabelled text of the champion"))
    augmented = TrainingData(data.train + pseudo.rows, data.validation,
                             {**data.counts, "rows_pseudo": len(pseudo.rows)}, data.labels)
    second = fit(config, augmented, environment, checkpoints / "self_training", round_.init_dir)
    with_pseudo = second.metrics.get("best_validation_macro_f1")
    kept = bool(without is not None and with_pseudo is not None and with_pseudo > without)
    facts = SelfTrainingFacts(
        candidates=pseudo.candidates, pseudo_rows=len(pseudo.rows), teacher_version=pseudo.champion_version,
        kept=kept, validation_macro_f1_without=without, validation_macro_f1_with=with_pseudo,
        reason=(f"validation macro-F1 {with_pseudo} with the {len(pseudo.rows)} pseudo-labelled rows vs {without} "
                f"without: {'kept' if kept else 'not kept'}"))
    history = result.metrics_history + [{**point, "metrics": {f"self_training.{name}": value for name, value
                                                              in point["metrics"].items()}}
                                        for point in second.metrics_history]
    chosen, rows = (second, augmented) if kept else (result, data)
    return replace(chosen, metrics_history=history), rows, facts


def write_trained_model(context: StepContext, config: PipelineConfig, result: FitResult, data: TrainingData,
                        plan: RoundPlan, self_training: SelfTrainingFacts | None) -> None:
    """The model (safetensors + tokenizer), the rows it trained and validated on, the label map, the metric
    history (what `track_training` replays into MLflow), and the metrics and facts."""
    labels, champion_version = plan.labels, plan.champion_version
    model_dir = context.out_dir / "model"
    result.model.save_pretrained(model_dir, safe_serialization=True)
    result.tokenizer.save_pretrained(model_dir)
    atomic_write_text(context.out_dir / "training_data.json", _json(data.counts))
    # The exact rows: evaluate fits the lexical baseline on the same train rows and picks the blend weight on the
    # same validation rows.
    write_parquet([_trained_row(row) for row in data.train], context.out_dir / "train_rows.parquet")
    write_parquet([_trained_row(row) for row in data.validation], context.out_dir / "validation_rows.parquet")
    label_map = {"labels": labels, "id2label": {str(index): label for index, label in enumerate(labels)},
                 "new_vs_config": [label for label in labels if label not in config.labels]}
    atomic_write_text(context.out_dir / "label_map.json", _json(label_map))
    atomic_write_text(context.out_dir / METRICS_HISTORY,
                      "".join(json.dumps(point, sort_keys=True) + "\n" for point in result.metrics_history))
    context.add_output("model", "model", "model", labels=labels, warm_started_from=champion_version)
    context.add_output("label_map", "label_map.json", "report")
    context.add_output("train_rows", "train_rows.parquet", "dataset", rows=len(data.train))
    context.add_output("validation_rows", "validation_rows.parquet", "dataset", rows=len(data.validation))
    context.add_output("metrics_history", METRICS_HISTORY, "file", points=len(result.metrics_history))
    context.metrics.update(data.counts)
    context.metrics.update(result.metrics)
    if self_training is not None:
        context.metrics.update({f"self_training.{key}": value for key, value in self_training.model_dump(
            include={"candidates", "pseudo_rows", "kept", "validation_macro_f1_without", "validation_macro_f1_with"}
        ).items() if value is not None})
    # An unset self_training stays absent from the facts (self-training off), not null.
    context.facts.update(TrainFacts(champion_version=champion_version, labels=labels, **result.facts,
                                    **({"self_training": self_training} if self_training else {})).dump())


def _same_model_source(config: PipelineConfig, champion: Any) -> bool:
    """Whether the champion was trained from the encoder `train.model` names now (versions registered before
    register recorded `freshet.model_source` count as the same)."""
    recorded = (champion.tags or {}).get("freshet.model_source")
    current = resolve_model_source(config.train).describe()
    if recorded is None or recorded == current:
        return True
    log.warning("train: the champion (version %s) was trained from %s, but train.model now names %s: training "
                "from train.model instead of warm-starting (the gate still compares with the champion)",
                champion.version, recorded, current)
    return False


def waiting_snapshots(store: ArtifactStore, run_id: str, logical_date: str | None) -> list[dict[str, Any]]:
    """Earlier snapshots since the last round that trained (what decide counted as new rows with this run's)."""
    previous = last_training(store, run_id, logical_date)
    return [entry for entry in untrained_snapshots(store, previous.logical_date if previous else None, run_id,
                                                   logical_date) if entry["run_id"] != run_id]


def _read_training_data(config: PipelineConfig, inputs: dict[str, Manifest], store: ArtifactStore,
                        labels: Sequence[str], waiting: Sequence[dict[str, Any]]) -> TrainingData:
    clean = inputs["clean"]
    snapshot_rows = read_rows(store.local_path(clean.output("dataset").uri))
    augment_rows = read_rows(store.local_path(inputs["augment"].output("train").uri))
    prior = [snapshot.model_dump() for snapshot in CleanFacts.of(clean).prior_snapshots]
    return gather_training_data(config, augment_rows, snapshot_rows, prior, store, labels, waiting)


def _mlflow_params(config: PipelineConfig, champion_version: str | None) -> dict[str, Any]:
    """The train section, flat (`train.peft.*` for the nested LoRA settings), and the warm start's source."""
    train_params = config.train.model_dump(mode="json")
    flat = {f"train.{key}": value for key, value in train_params.items() if not isinstance(value, dict)}
    peft = {f"train.peft.{key}": value for key, value in (train_params["peft"] or {}).items()}
    return flat | peft | {"champion_version": champion_version}


def _trained_row(row: dict[str, Any]) -> dict[str, Any]:
    return {"id": row["id"], "text": row["text"], "label": row["label"],
            "augmented_from": row.get("augmented_from") or None, "pseudo_label": bool(row.get("pseudo_label"))}


def _json(value: Any) -> str:
    return json.dumps(value, indent=2, sort_keys=True)


@record  # a rank's uncaught exception goes to its torch elastic error file, which the training operator reads
def main(argv: list[str] | None = None) -> int:
    return cli(STEP, run, argv, __doc__)


if __name__ == "__main__":
    raise SystemExit(main())
