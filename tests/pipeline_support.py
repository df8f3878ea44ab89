"""Shared builders for tests of the model steps: a tiny config and real upstream manifests."""

from __future__ import annotations

from typing import Any

import torch

from tasks import compress, evaluate, promote, register, train
from tasks.clean import prepare
from tasks.config import PipelineConfig
from tasks.contract import StepContext, execute
from tasks.records import RECORD_SCHEMA, CleanFacts, Snapshot, content_hash, split_of, write_parquet
from tasks.snapshots import record_snapshot
from tasks.training.distributed import DistributedEnv
from tasks.validate import DriftReference, ValidateFacts

LABELS = ["alpha", "beta", "gamma"]
CPU = DistributedEnv(rank=0, local_rank=0, world_size=1, device=torch.device("cpu"))


def max_difference(left: dict[str, torch.Tensor], right: dict[str, torch.Tensor]) -> float:
    """The largest absolute difference between two state dicts with the same names."""
    assert left.keys() == right.keys()
    return max(float((left[name].float() - right[name].float()).abs().max()) for name in left)


def tiny_config(root, **train_overrides) -> PipelineConfig:
    # No early stopping unless a test asks for it: the patience is the epoch cap (at most the cap, or the
    # config refuses it).
    if train_overrides.get("epochs", 6) >= 1:
        train_overrides.setdefault("early_stopping_patience", int(train_overrides.get("epochs", 6)))
    return PipelineConfig.model_validate({
        "name": "unit", "labels": LABELS, "artifact_root": str(root / "artifacts"),
        "mlflow": {"tracking_uri": f"sqlite:///{root}/mlflow.db", "artifact_location": str(root / "mlartifacts"),
                   "model_name": "unit-model"},
        "crawl": {"sources": [{"name": "unit", "url": "http://127.0.0.1:9/"}]},
        "train": {"model": "tiny", "batch_size": 16, "epochs": 6, "learning_rate": 1e-2, "max_length": 16,
                  "checkpoint_every_steps": 5, "warmup_fraction": 0.0,
                  **train_overrides},
        "evaluate": {"gate": {"floors": {"frozen.macro_f1": 0.5}, "non_inferiority_margin": 0.05}},
    })


def accepted_batch_facts() -> dict[str, Any]:
    """validate's facts for a batch it accepted as it came: nothing taken in from earlier runs, no expectation
    failed, no history to measure drift against."""
    return ValidateFacts(inbox_batches=[], batch_checks=[], drift_reference=DriftReference(snapshots=[], rows=0),
                         failed_expectations={}).dump()


def fake_upstream(config, store, run_id, day, rows):
    """Real clean/augment/validate manifests written through the contract, as those steps would."""
    for row in rows:
        row["split"] = split_of(row["id"], config.split)
        row["normalized_hash"] = content_hash(prepare(row["text"], config.clean)[0].text)  # as clean writes it
    prior = [entry for entry in (store.read_json("state", "history.json") or []) if entry["logical_date"] < day]

    def clean_body(context: StepContext) -> None:
        write_parquet(rows, context.out_dir / "dataset.parquet")
        context.add_output("dataset", "dataset.parquet", "dataset", rows=len(rows))
        context.facts.update(CleanFacts(prior_snapshots=[Snapshot.model_validate(entry) for entry in prior]).dump())

    def augment_body(context: StepContext) -> None:
        train_rows = [dict(row, augmented_from=None) for row in rows if row["split"] == "train"]
        write_parquet(train_rows, context.out_dir / "train.parquet")
        context.add_output("train", "train.parquet", "dataset", rows=len(train_rows))

    def validate_body(context: StepContext) -> None:
        write_parquet(rows, context.out_dir / "valid.parquet", schema=RECORD_SCHEMA)
        (context.out_dir / "gx.json").write_text("{}")
        context.add_output("valid", "valid.parquet", "dataset", rows=len(rows))
        context.add_output("gx_result", "gx.json", "report")
        context.facts.update(accepted_batch_facts())

    clean = execute("clean", clean_body, config, {}, run_id=run_id, store=store, logical_date=day,
                    extra_fingerprint={"rows": len(rows), "prior": len(prior)})
    record_snapshot(store, {"run_id": run_id, "logical_date": day, "uri": clean.output("dataset").uri,
                            "digest": clean.output("dataset").digest, "rows": len(rows)})
    augment = execute("augment", augment_body, config, {"clean": clean}, run_id=run_id, store=store, logical_date=day)
    validate = execute("validate", validate_body, config, {}, run_id=run_id, store=store, logical_date=day,
                       extra_fingerprint={"rows": len(rows)})
    return {"clean": clean, "augment": augment, "validate": validate}


def step_mlflow_run(tracking_uri: str, step: str, run_id: str):
    """The one MLflow run a step logged for a pipeline run."""
    import mlflow

    mlflow.set_tracking_uri(tracking_uri)
    [run] = mlflow.search_runs(search_all_experiments=True, output_format="list",
                               filter_string=f"tags.`freshet.step` = '{step}' and tags.`freshet.run_id` = '{run_id}'")
    return run


def dataset_inputs(run) -> dict[str, tuple[str, str, str, str]]:
    """context -> (dataset name, source, MLflow digest, our full digest) of a run's dataset inputs."""
    inputs = {}
    for item in run.inputs.dataset_inputs:
        tags = {tag.key: tag.value for tag in item.tags}
        inputs[tags["mlflow.data.context"]] = (item.dataset.name, item.dataset.source, item.dataset.digest,
                                               tags["freshet.digest"])
    return inputs


def run_model_steps(config, store, run_id, day, upstream, *, gated: bool = False):
    """train -> evaluate -> compress -> register -> promote for one run, on tiny data; `gated`: promote only
    when the gate passed, as the DAG does (otherwise every candidate is promoted)."""
    manifests = dict(upstream)
    manifests["train"] = train.run(config, {"augment": upstream["augment"], "clean": upstream["clean"]},
                                   run_id=run_id, store=store, logical_date=day)
    manifests["evaluate"] = evaluate.run(config, {"train": manifests["train"], "clean": upstream["clean"]},
                                         run_id=run_id, store=store, logical_date=day)
    manifests["compress"] = compress.run(config, {k: manifests[k] for k in ("train", "evaluate", "clean")},
                                         run_id=run_id, store=store, logical_date=day)
    manifests["register"] = register.run(config, {k: manifests[k] for k in ("train", "evaluate", "compress", "validate", "clean")},
                                         run_id=run_id, store=store, logical_date=day)
    if gated and not compress.CompressFacts.of(manifests["compress"]).gate.passed:
        return manifests
    manifests["promote"] = promote.run(config, {"register": manifests["register"]}, run_id=run_id, store=store,
                                       logical_date=day)
    return manifests
