"""Decide whether this run trains: enough new data since the last training, drift, or no champion yet.

Every run ingests (crawl → validate → clean → augment record the day's snapshot in the history), but
training is costly, so it runs only when it can change something:

- no champion is registered yet (the first model), or
- at least `schedule.min_new_rows` cleaned rows arrived since the last run that trained (counted over
  the history of snapshots by logical date, so skipped days add up and a backfill sees its own past), or
- validation measured label or length drift (PSI) at or above `schedule.retrain_on_psi`, or
- the production monitor emitted a breach no earlier decide trained on (`freshet_monitor`: drift of the
  served predictions or inputs, or a drop of the estimated or real macro-F1; `monitor.retrain_on_breach`),
  whatever the number of new rows: the reason starts "production drift:" and the manifest's
  `production_drift` facts name the breaches it consumed, so the next decide does not train on them again, or
- the run was started with `force` (the DAG's `force_training` param),

but never when the snapshots waiting to train (this run's, and earlier ones no round trained on) have fewer
train-split rows than training needs (one per training process: a round trains on those train splits, plus
replay and augmentation): then the run ends green without training, whatever the reason above, and the rows
wait for the next day's round. A forced retry after a fix may bring no new rows at all: the waiting ones train.

The verdict and its reason are facts of this step's manifest (and the DAG's XCom), whatever they are.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from tasks import model_registry
from tasks.config import PipelineConfig
from tasks.contract import StepContext, cli, execute, manifest_only, parse_bool, read_manifest
from tasks.manifest import Manifest, StepFacts
from tasks.monitoring import breach as breaches
from tasks.snapshots import last_training, untrained_snapshots
from tasks.store import ArtifactStore

STEP = "decide"
DRIFT_METRICS = ("drift.label_psi", "drift.length_psi")
log = logging.getLogger("freshet.decide")


def training_processes(config: PipelineConfig) -> int:
    """The DDP ranks a round will have, as far as the config tells before the launch: with nproc_per_node
    "auto" the CPU fallback (`cpu_processes`); a GPU host with more GPUs than that is checked again by the trainer."""
    settings = config.train
    per_node = settings.nproc_per_node if isinstance(settings.nproc_per_node, int) else settings.cpu_processes
    return per_node * settings.nnodes


def train_split_rows(store: ArtifactStore, run_id: str, snapshots: Sequence[Mapping[str, Any]]) -> int | None:
    """Rows in the train split of the untrained `snapshots`, this run's included (the new rows a round trains on:
    a forced retry's own snapshot may be empty); None: this run has no snapshot yet."""
    import pyarrow.parquet as pq

    if not any(item["run_id"] == run_id for item in snapshots):
        return None
    return sum(split == "train" for entry in snapshots
               for split in pq.read_table(store.local_path(entry["uri"]), columns=["split"]).column("split").to_pylist())


def production_drift_reason(pending: Sequence[Mapping[str, Any]], new_rows: int) -> str:
    """Why a pending breach trains: the latest breach's failed checks, which breach, and how many others."""
    latest = pending[-1]
    reason = (f"production drift: {'; '.join(latest.get('reasons') or ['breach'])} (breach {latest['id']}, monitor day "
              f"{latest.get('logical_date')}, champion then {latest.get('champion')}")
    if len(pending) > 1:
        reason += f"; {len(pending) - 1} earlier breach(es) also pending"
    return reason + f"; {new_rows} new rows)"


def decide(config: PipelineConfig, *, has_champion: bool, new_rows: int, drift: Mapping[str, float | None],
           force: bool = False, production_drift: Sequence[Mapping[str, Any]] = (),
           train_rows: int | None = None) -> tuple[bool, str]:
    """(train?, why) from the facts; pure, so the policy is testable without a pipeline. `production_drift`: the
    monitor's breaches no earlier decide trained on, oldest first. `train_rows`: this run's train-split rows
    (None: not known, not checked)."""
    settings = config.schedule
    processes = training_processes(config)
    if train_rows is not None and train_rows < processes:
        # A round that cannot train would fail and be retried; waiting for more rows is the normal outcome.
        return False, (f"the snapshots waiting to train have {train_rows} train-split rows, fewer than the "
                       f"{processes} a round needs (one per training process); not training"
                       f"{' even though forced' if force else ''}, "
                       f"the {new_rows} new rows wait for the next round")
    if force:
        return True, "forced by the run's force_training param"
    if not has_champion:
        return True, "no champion yet: the first model is trained whatever the data volume"
    if production_drift:
        return True, production_drift_reason(production_drift, new_rows)
    if new_rows >= settings.min_new_rows:
        return True, f"{new_rows} new rows since the last training >= schedule.min_new_rows={settings.min_new_rows}"
    drifted = {name: value for name, value in drift.items()
               if value is not None and settings.retrain_on_psi is not None and value >= settings.retrain_on_psi}
    if drifted:
        observed = ", ".join(f"{name}={value:.3f}" for name, value in sorted(drifted.items()))
        return True, f"drift {observed} >= schedule.retrain_on_psi={settings.retrain_on_psi} ({new_rows} new rows)"
    largest = max((value for value in drift.values() if value is not None), default=None)
    return False, (f"only {new_rows} new rows since the last training < schedule.min_new_rows={settings.min_new_rows}"
                   f" and no drift (largest PSI {'not measured' if largest is None else f'{largest:.3f}'}"
                   f" < schedule.retrain_on_psi={settings.retrain_on_psi})")


class DecideFacts(StepFacts):
    """Train or not and why; what the round covers (the snapshots since the last training) and the signals
    weighed: the forced flag, the champion, the batch drift, the production-drift breaches pending and consumed."""

    train: bool
    reason: str
    has_champion: bool
    forced: bool
    last_training: dict[str, str | None] | None
    untrained_snapshots: list[dict[str, Any]]
    drift: dict[str, float | None]
    production_drift: dict[str, Any]


def consumed_breaches(store: ArtifactStore, exclude_run_id: str | None = None) -> set[str]:
    """Breach ids that a `decide` of another run trained on."""
    ids: set[str] = set()
    for directory in store.run_directories():
        manifest = read_manifest(store, directory, STEP)
        if manifest is None or manifest.run_id == exclude_run_id:
            continue
        facts = DecideFacts.of(manifest)
        if facts.train:
            ids.update(facts.production_drift.get("consumed", []))
    return ids


def pending_breaches(store: ArtifactStore, run_id: str, logical_date: str | None) -> list[dict[str, Any]]:
    """The monitor's breaches no other run's `decide` trained on, of monitor days up to `logical_date`, oldest
    first."""
    taken = consumed_breaches(store, exclude_run_id=run_id)
    return [item for item in breaches.read_breaches(store) if item["id"] not in taken
            and (logical_date is None or str(item.get("logical_date") or "")[:10] <= logical_date[:10])]


def has_champion(config: PipelineConfig) -> bool:
    return model_registry.version_by_alias(config, model_registry.CHAMPION) is not None


def run(config: PipelineConfig, inputs: Mapping[str, Manifest], *, run_id: str, store: ArtifactStore,
        logical_date: str | None = None, force: bool = False, champion: bool | None = None) -> Manifest:
    """`champion` is injectable (tests); by default the registry is asked."""
    previous = last_training(store, run_id, logical_date)
    since = previous.logical_date if previous else None
    snapshots = untrained_snapshots(store, since, run_id, logical_date)
    champion = has_champion(config) if champion is None else champion
    pending = pending_breaches(store, run_id, logical_date) if config.monitor.retrain_on_breach else []
    train_rows = train_split_rows(store, run_id, snapshots)

    def body(context: StepContext) -> None:
        validation = context.input("validate").metrics
        drift = {name: None if validation.get(name) is None else float(validation[name])  # type: ignore[arg-type]
                 for name in DRIFT_METRICS}
        new_rows = sum(int(entry.get("rows") or 0) for entry in snapshots)
        train, reason = decide(config, has_champion=champion, new_rows=new_rows, drift=drift, force=force,
                               production_drift=pending, train_rows=train_rows)
        context.facts.update(DecideFacts(
            train=train, reason=reason, has_champion=champion, forced=force,
            last_training={"run_id": previous.run_id, "logical_date": previous.logical_date} if previous else None,
            # What a training run should cover: every snapshot since the last one that trained.
            untrained_snapshots=[{key: entry.get(key) for key in ("run_id", "logical_date", "rows", "digest")}
                                 for entry in snapshots],
            drift=drift,
            # A run that trains consumes every pending breach: the new model is the answer to them.
            production_drift={"pending": [item["id"] for item in pending],
                              "consumed": [item["id"] for item in pending] if train else [],
                              "latest": pending[-1] if pending else None},
        ).dump())
        context.metrics.update({"train": train, "rows_since_last_training": new_rows, "train_split_rows": train_rows,
                                "snapshots_since_last_training": len(snapshots),
                                "production_drift": bool(pending)})
        # A skip is logged as a warning so it stands out in the task log; the run itself succeeds.
        (log.info if train else log.warning)("decide: %s: %s", "TRAIN" if train else "SKIP training", reason)

    return execute(STEP, body, config, inputs, run_id=run_id, store=store, logical_date=logical_date,
                   config_sections=("schedule",), track=manifest_only,
                   extra_fingerprint={"snapshots": [entry.get("digest") for entry in snapshots], "since": since,
                                      "champion": champion, "force": force, "train_rows": train_rows,
                                      "breaches": [item["id"] for item in pending]})


FORCE_TRAINING = {"--force-training": {"dest": "force", "type": parse_bool, "default": False, "metavar": "BOOL",
                                        "help": "train whatever the data volume and drift (the DAG's force_training param)"}}


def main(argv: Sequence[str] | None = None) -> int:
    return cli(STEP, run, argv, __doc__, options=FORCE_TRAINING)


if __name__ == "__main__":
    raise SystemExit(main())
