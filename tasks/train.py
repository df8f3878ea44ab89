"""Train the candidate classifier: one program for a single process or torchrun DDP.

Inputs: `augment` (new training rows, augmented ones tagged) and `clean` (this snapshot's
validation split and the prior snapshots, from which a replay sample keeps old knowledge alive).
Warm-starts from the registry's champion. gloo on CPU, NCCL on GPU; length-bucketed batches with
dynamic padding; fused AdamW; on CPU, dropout masks from numpy's PCG64 (tasks/cpu_dropout.py), the
word-embedding gradient zeroed and clipped on the touched rows only (tasks/embedding_rows.py, one
process) and freed memory kept for reuse; optional bf16 autocast, torch.compile, frozen word
embeddings and LoRA adapters (peft, merged into the weights before saving); checkpoints every N
steps and on SIGTERM; a restart resumes from the last one. Rank 0 alone writes the model, logs to
MLflow and prints the progress lines (step/total, loss, samples/s, eta) that the DDP operator
streams into the Airflow task log.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import os
import random
import signal
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from tasks.config import PeftConfig, PipelineConfig
from tasks.contract import Manifest, StepContext, StepError, cli, execute, read_manifest, step_fingerprint
from tasks.data import read_rows
from tasks.metrics import classification_metrics
from tasks.modeling import keep_freed_memory, threads_per_rank
from tasks.store import ArtifactStore, atomic_write_text

STEP = "train"
log = logging.getLogger("freshet.train")


@dataclass(frozen=True)
class DistributedEnv:
    rank: int
    local_rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_environment(cls) -> DistributedEnv:
        """DDP when launched by torchrun (WORLD_SIZE set), a single process otherwise."""
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        device = torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
        if world_size > 1 and not dist.is_initialized():
            if device.type == "cuda":
                torch.cuda.set_device(device)
            # torchrun's agent keeps one store across restarts; without a per-attempt prefix a
            # restarted rank reads its dead predecessor's gloo address and cannot connect.
            store, _, _ = next(dist.rendezvous("env://"))
            attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
            dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo",
                                    store=dist.PrefixStore(f"/freshet/attempt_{attempt}", store),
                                    rank=rank, world_size=world_size)
        return cls(rank, local_rank, world_size, device)


# ------------------------------------------------------------------------------------- data


@dataclass(frozen=True)
class TrainingData:
    train: list[dict[str, Any]]
    validation: list[dict[str, Any]]
    counts: dict[str, int]


def gather_training_data(config: PipelineConfig, augment_rows: list[dict[str, Any]],
                         snapshot_rows: list[dict[str, Any]], prior: Sequence[dict[str, Any]],
                         store: ArtifactStore) -> TrainingData:
    """New rows (bounded sample) + their augmentations + a replay sample of earlier snapshots."""
    settings = config.train
    rng = random.Random(settings.seed)
    real = [row for row in augment_rows if not row.get("augmented_from")]
    augmented = [row for row in augment_rows if row.get("augmented_from")]
    if settings.max_train_rows is not None and len(real) > settings.max_train_rows:
        real = rng.sample(real, settings.max_train_rows)
        kept = {row["id"] for row in real}
        augmented = [row for row in augmented if row["augmented_from"] in kept]
    old_train: list[dict[str, Any]] = []
    old_validation: list[dict[str, Any]] = []
    for entry in prior:
        for row in read_rows(store.local_path(entry["uri"])):
            (old_train if row["split"] == "train" else old_validation if row["split"] == "validation" else []).append(row)
    replay_count = min(len(old_train), int(round(settings.replay_fraction * len(real))))
    replay = rng.sample(old_train, replay_count) if replay_count else []
    validation = [row for row in snapshot_rows if row["split"] == "validation"] + old_validation
    if len(validation) > settings.max_validation_rows:
        validation = rng.sample(validation, settings.max_validation_rows)
    train = real + augmented + replay
    if not train:
        raise StepError("train: no training rows (the new batch has no train split and there is no replay data)")
    counts = {"rows_new": len(real), "rows_augmented": len(augmented), "rows_replay": len(replay),
              "rows_train": len(train), "rows_validation": len(validation)}
    return TrainingData(train, validation, counts)


def bucketed_batches(lengths: Sequence[int], batch_size: int, world_size: int, seed: int, epoch: int,
                     bucket_factor: int = 50) -> list[list[list[int]]]:
    """Global batches for one epoch, each split into one per-rank batch of `batch_size`.

    Shuffle, then sort by length inside windows of `bucket_factor` global batches so padding is
    small but order stays random; deterministic in (seed, epoch), so a resumed run replays exactly
    the same order and can skip the batches it already did.
    """
    generator = random.Random(seed * 1_000_003 + epoch)
    order = list(range(len(lengths)))
    generator.shuffle(order)
    global_size = batch_size * world_size
    window = global_size * bucket_factor
    batches: list[list[list[int]]] = []
    for start in range(0, len(order), window):
        chunk = sorted(order[start:start + window], key=lambda index: lengths[index])
        for offset in range(0, len(chunk) - global_size + 1, global_size):
            block = chunk[offset:offset + global_size]
            batches.append([block[rank * batch_size:(rank + 1) * batch_size] for rank in range(world_size)])
    generator.shuffle(batches)
    return batches


# ------------------------------------------------------------------------------ checkpoints


def save_checkpoint(directory: Path, state: dict[str, Any]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"checkpoint-{state['progress']['step']:08d}.pt"
    temporary = path.with_suffix(".pt.tmp")
    torch.save(state, temporary)
    os.replace(temporary, path)
    for old in sorted(directory.glob("checkpoint-*.pt"))[:-2]:  # keep the last two
        old.unlink(missing_ok=True)
    return path


def latest_checkpoint(directory: Path) -> dict[str, Any] | None:
    for path in sorted(directory.glob("checkpoint-*.pt"), reverse=True):
        try:
            return torch.load(path, map_location="cpu", weights_only=False)
        except Exception as error:  # a torn file from a crash: fall back to the previous one
            log.warning("ignoring unreadable checkpoint %s: %s", path, error)
    return None


class StopRequested:
    """SIGTERM (Airflow kill, torchrun restart, pod eviction) asks for a checkpoint, then exit."""

    def __init__(self) -> None:
        self.requested = False
        signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum, frame) -> None:  # noqa: ARG002
        self.requested = True

    def any_rank(self, environment: DistributedEnv) -> bool:
        if environment.world_size == 1:
            return self.requested
        flag = torch.tensor([1.0 if self.requested else 0.0], device=environment.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())


# ------------------------------------------------------------------------------------ loop


@dataclass
class FitResult:
    model: torch.nn.Module
    tokenizer: Any
    metrics: dict[str, float]


def fit(config: PipelineConfig, data: TrainingData, environment: DistributedEnv, checkpoint_dir: Path,
        init_dir: Path | None, log_metrics=None) -> FitResult:
    """The training loop, identical for one process and for every DDP rank."""
    from transformers import get_linear_schedule_with_warmup

    from tasks.cpu_dropout import MaskStream, use_fast_cpu_dropout
    from tasks.embedding_rows import RowSparseEmbeddingGradient
    from tasks.modeling import build_model, load_tokenizer, predict

    settings = config.train
    if environment.device.type == "cpu":
        keep_freed_memory()
    labels = list(config.labels)
    label_index = {label: index for index, label in enumerate(labels)}
    tokenizer = load_tokenizer(init_dir)
    encoded = tokenizer([row["text"] for row in data.train], truncation=True, max_length=settings.max_length)["input_ids"]
    targets = [label_index[row["label"]] for row in data.train]
    lengths = [len(ids) for ids in encoded]

    model = build_model(settings, labels, init_dir=init_dir)
    if settings.freeze_word_embeddings:
        model.get_input_embeddings().weight.requires_grad_(False)
    if settings.peft is not None:
        model = add_lora_adapters(model, settings.peft)
    model = model.to(environment.device)
    # Compiled graphs fuse their own dropout, and CUDA's generator is fast: only eager CPU needs it.
    dropout_stream = None
    restore_dropout = None
    if settings.fast_cpu_dropout and environment.device.type == "cpu" and not settings.compile:
        dropout_stream = MaskStream(settings.seed, environment.rank)
        restore_dropout = use_fast_cpu_dropout(model, dropout_stream)
    embedding_rows = None
    if (settings.row_sparse_embedding_grad and environment.device.type == "cpu" and environment.world_size == 1
            and not settings.compile and model.get_input_embeddings().weight.requires_grad):
        embedding_rows = RowSparseEmbeddingGradient(model.get_input_embeddings())
    clip_grad_norm_ = embedding_rows.clip_grad_norm_ if embedding_rows is not None else torch.nn.utils.clip_grad_norm_
    ddp_model: torch.nn.Module = model
    if environment.world_size > 1:
        ddp_model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[environment.local_rank] if environment.device.type == "cuda" else None
        )
    # Dynamic shapes: bucketed batches change length every step; static shapes would recompile each time.
    forward_model = torch.compile(ddp_model, dynamic=True) if settings.compile else ddp_model
    trainable = [(name, parameter) for name, parameter in model.named_parameters() if parameter.requires_grad]
    no_decay = ("bias", "LayerNorm.weight", "layer_norm.weight")
    groups = [
        {"params": [p for n, p in trainable if not n.endswith(no_decay)], "weight_decay": settings.weight_decay},
        {"params": [p for n, p in trainable if n.endswith(no_decay)], "weight_decay": 0.0},
    ]
    learning_rate = settings.learning_rate
    if init_dir is not None and settings.warm_start_learning_rate is not None:
        learning_rate = settings.warm_start_learning_rate
    if settings.optimizer == "sgd":
        optimizer: torch.optim.Optimizer = torch.optim.SGD(groups, lr=learning_rate)
    else:
        # Fused AdamW has CPU and CUDA kernels: one pass over the parameters instead of a dozen.
        optimizer = torch.optim.AdamW(groups, lr=learning_rate, fused=True)
    micro_batches_per_epoch = len(bucketed_batches(lengths, settings.batch_size, environment.world_size, settings.seed, 0))
    if micro_batches_per_epoch == 0:
        raise StepError(f"train: {len(lengths)} rows is fewer than one global batch "
                        f"({settings.batch_size} x {environment.world_size} ranks); lower train.batch_size")
    steps_per_epoch = max(1, micro_batches_per_epoch // settings.gradient_accumulation_steps)
    total_steps = max(1, math.ceil(settings.epochs * steps_per_epoch))
    scheduler = get_linear_schedule_with_warmup(optimizer, int(settings.warmup_fraction * total_steps), total_steps)
    use_bf16 = settings.precision == "bf16" or (settings.precision == "auto" and environment.device.type == "cuda")
    native_bf16 = environment.device.type == "cuda" or cpu_has_native_bf16()
    if use_bf16 and not native_bf16 and environment.is_main:
        # Emulated bf16 is no speed-up but a trap: measured 4.8 vs 102 samples/s (fp32) on an AVX2-only EPYC.
        log.warning("train.precision=bf16 on a CPU without native bf16 (AVX512-BF16/AMX; this one: %s): "
                    "bf16 is emulated and ~20x slower than fp32; set train.precision to fp32 or auto",
                    torch.backends.cpu.get_cpu_capability())

    state = {"step": 0, "epoch": 0, "batch_in_epoch": 0, "best_f1": -1.0, "epochs_without_gain": 0,
             "samples_seen": 0, "tokens_seen": 0, "order_digest": ""}
    best_state: dict[str, torch.Tensor] | None = None
    resumed_from = 0
    checkpoint = latest_checkpoint(checkpoint_dir)
    if checkpoint is not None:
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        scheduler.load_state_dict(checkpoint["scheduler"])
        state.update(checkpoint["progress"])
        best_state = checkpoint.get("best_model")
        torch.set_rng_state(checkpoint["rng"]["torch"])
        resumed_from = state["step"]
        log.info("resumed from checkpoint at step %d (epoch %d, batch %d)", state["step"], state["epoch"], state["batch_in_epoch"])

    def checkpoint_now() -> None:
        if environment.is_main:
            save_checkpoint(checkpoint_dir, {
                "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "progress": dict(state), "best_model": best_state,
                "rng": {"torch": torch.get_rng_state()},
            })

    def validate_epoch() -> float:
        if not data.validation:
            return float("nan")
        predictions = predict(model, tokenizer, [row["text"] for row in data.validation],
                              max_length=settings.max_length, batch_size=128)
        truth = [label_index[row["label"]] for row in data.validation]
        model.train()
        return classification_metrics(truth, predictions.label_ids, labels)["macro_f1"]

    stopper = StopRequested()
    model.train()
    pad_id = tokenizer.pad_token_id or 0
    started = time.perf_counter()
    window_start, window_samples, window_loss, window_micro = started, 0, torch.zeros((), device=environment.device), 0
    accumulation = settings.gradient_accumulation_steps
    stopped_early = False
    while state["step"] < total_steps and not stopped_early:
        batches = bucketed_batches(lengths, settings.batch_size, environment.world_size, settings.seed, state["epoch"])
        usable = len(batches) - len(batches) % accumulation
        while state["batch_in_epoch"] < usable and state["step"] < total_steps:
            optimizer.zero_grad(set_to_none=True)
            for micro in range(accumulation):
                global_batch = batches[state["batch_in_epoch"] + micro]
                # A running digest of every sample consumed, in order: a resumed run must end with
                # the same digest as an uninterrupted one (nothing skipped, nothing repeated).
                state["order_digest"] = hashlib.sha256(
                    f"{state['order_digest']}|{global_batch}".encode()).hexdigest()
                indices = global_batch[environment.rank]
                if dropout_stream is not None:
                    dropout_stream.at_batch(state["epoch"], state["batch_in_epoch"] + micro)
                features = pad_batch([encoded[i] for i in indices], pad_id, environment.device)
                batch_targets = torch.tensor([targets[i] for i in indices], device=environment.device)
                sync = micro == accumulation - 1 or environment.world_size == 1
                context = ddp_model.no_sync() if not sync else contextlib.nullcontext()
                with context, torch.autocast(environment.device.type, dtype=torch.bfloat16, enabled=use_bf16):
                    logits = forward_model(**features).logits
                    loss = torch.nn.functional.cross_entropy(logits.float(), batch_targets) / accumulation
                    loss.backward()
                window_loss += loss.detach()  # no .item() here: a device sync every micro-batch
                window_micro += 1
                state["tokens_seen"] += sum(lengths[i] for i in indices) * environment.world_size
            clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            state["step"] += 1
            state["batch_in_epoch"] += accumulation
            global_samples = settings.batch_size * environment.world_size * accumulation
            state["samples_seen"] += global_samples
            window_samples += global_samples
            if environment.is_main and (state["step"] % settings.log_every_steps == 0 or state["step"] == total_steps):
                now = time.perf_counter()
                rate = window_samples / max(now - window_start, 1e-9)
                mean_loss = window_loss.item() * accumulation / max(window_micro, 1)
                remaining = (total_steps - state["step"]) * global_samples / max(rate, 1e-9)
                log.info("step %d/%d epoch %d loss %.4f lr %.2e %.1f samples/s eta %.0fs", state["step"], total_steps,
                         state["epoch"] + 1, mean_loss, scheduler.get_last_lr()[0], rate, remaining)
                if log_metrics:
                    log_metrics({"loss": mean_loss, "learning_rate": scheduler.get_last_lr()[0],
                                 "samples_per_second": rate}, state["step"])
                window_start, window_samples = now, 0
                window_loss.zero_()
                window_micro = 0
            if state["step"] % settings.checkpoint_every_steps == 0:
                checkpoint_now()
            _inject_fault(state["step"], environment)
            if stopper.any_rank(environment):
                checkpoint_now()
                raise SystemExit(f"train: stopped by SIGTERM at step {state['step']}; checkpoint saved")
        if state["batch_in_epoch"] >= usable or state["step"] >= total_steps:
            score = validate_epoch() if environment.is_main else 0.0
            if environment.world_size > 1:  # every rank must agree on early stopping
                shared = torch.tensor([score], device=environment.device)
                dist.broadcast(shared, src=0)
                score = float(shared.item())
            if environment.is_main and log_metrics:
                log_metrics({"validation_macro_f1": score}, state["step"])
            if math.isnan(score) or score > state["best_f1"]:
                state["best_f1"], state["epochs_without_gain"] = score, 0
                best_state = {key: value.detach().clone() for key, value in model.state_dict().items()}
            else:
                state["epochs_without_gain"] += 1
                stopped_early = state["epochs_without_gain"] >= settings.early_stopping_patience
            state["epoch"] += 1
            state["batch_in_epoch"] = 0
    elapsed = time.perf_counter() - started
    if restore_dropout is not None:
        restore_dropout()
    if embedding_rows is not None:
        embedding_rows.close()
    if settings.freeze_word_embeddings and settings.peft is None:
        model.get_input_embeddings().weight.requires_grad_(True)  # frozen for this run only
    if best_state is not None:
        model.load_state_dict(best_state)
    parameters_total = sum(parameter.numel() for parameter in model.parameters())
    parameters_trainable = sum(parameter.numel() for _, parameter in trainable)
    if settings.peft is not None:
        # Fold the adapters into the base weights: the rest of the pipeline loads a plain HF model.
        model = model.merge_and_unload()
    metrics = {
        "steps": state["step"], "total_steps": total_steps, "epochs_completed": state["epoch"],
        "best_validation_macro_f1": state["best_f1"], "resumed_from_step": resumed_from,
        "stopped_early": int(stopped_early), "world_size": environment.world_size,
        "train_seconds": elapsed,
        "samples_per_second": (state["samples_seen"] / elapsed) if elapsed > 0 and resumed_from == 0 else float("nan"),
        "tokens_per_second": (state["tokens_seen"] / elapsed) if elapsed > 0 and resumed_from == 0 else float("nan"),
        "precision_bf16": int(use_bf16),
        "bf16_native": int(native_bf16),
        "peak_learning_rate": learning_rate,
        "compiled": int(settings.compile),
        "fast_cpu_dropout": int(dropout_stream is not None),
        "row_sparse_embedding_grad": int(embedding_rows is not None),
        "parameters_total": parameters_total,
        "parameters_trainable": parameters_trainable,
        "order_digest": state["order_digest"],
        "samples_seen": state["samples_seen"],
    }
    return FitResult(model, tokenizer, metrics)


def add_lora_adapters(model: torch.nn.Module, settings: PeftConfig) -> torch.nn.Module:
    """LoRA adapters on `target_modules`; the base is frozen, the classifier head trains in full."""
    from peft import LoraConfig, TaskType, get_peft_model

    linear = sorted({name.rsplit(".", 1)[-1] for name, module in model.named_modules()
                     if isinstance(module, torch.nn.Linear)})
    missing = [name for name in settings.target_modules if name not in linear]
    if missing:
        raise StepError(f"train.peft.target_modules: {missing} are not Linear layers of {type(model).__name__} "
                        f"(its Linear layer names: {linear})")
    lora = LoraConfig(task_type=TaskType.SEQ_CLS, r=settings.r, lora_alpha=settings.alpha,
                      lora_dropout=settings.dropout, target_modules=list(settings.target_modules))
    return get_peft_model(model, lora)


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 natively (oneDNN's check: AVX512-BF16 or AMX)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a build without oneDNN: no fast bf16 path either
        return False


def pad_batch(sequences: Sequence[list[int]], pad_id: int, device: torch.device) -> dict[str, torch.Tensor]:
    """Right-pad token ids to the longest in the batch (what `tokenizer.pad` does, without its overhead)."""
    width = max(len(ids) for ids in sequences)
    input_ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, ids in enumerate(sequences):
        input_ids[row, :len(ids)] = torch.as_tensor(ids, dtype=torch.long)
        attention_mask[row, :len(ids)] = 1
    return {"input_ids": input_ids.to(device), "attention_mask": attention_mask.to(device)}


def _inject_fault(step: int, environment: DistributedEnv) -> None:
    """Fault drill: `FRESHET_FAULT_AT_STEP=N` kills rank `FRESHET_FAULT_RANK` (default 1, else 0)
    at step N on the first attempt only, as a crashed worker would; torchrun's restart resumes."""
    fault_step = os.environ.get("FRESHET_FAULT_AT_STEP")
    if not fault_step or int(fault_step) != step or int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")) > 0:
        return
    if environment.rank == int(os.environ.get("FRESHET_FAULT_RANK", "1" if environment.world_size > 1 else "0")):
        log.error("fault drill: rank %d exits hard at step %d", environment.rank, step)
        os._exit(17)


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ------------------------------------------------------------------------------------- step


def run(config: PipelineConfig, inputs: dict[str, Manifest], *, run_id: str, store: ArtifactStore,
        logical_date: str | None = None) -> Manifest:
    from tasks import registry

    environment = DistributedEnv.from_environment()
    torch.set_num_threads(threads_per_rank())
    champion = registry.version_by_alias(config, registry.CHAMPION) if config.train.warm_start else None
    extra = {"champion_version": str(champion.version) if champion else None, "world_size": environment.world_size}
    sections = ("train", "split")
    fingerprint = step_fingerprint(STEP, config, inputs, logical_date, sections, extra)
    existing = read_manifest(store, run_id, STEP)
    if existing is not None and existing.fingerprint == fingerprint:
        log.info("train: inputs unchanged, reusing %s", existing.uri)
        return existing.model_copy(update={"reused": True})

    clean = inputs["clean"]
    snapshot_rows = read_rows(store.local_path(clean.output("dataset").uri))
    augment_rows = read_rows(store.local_path(inputs["augment"].output("train").uri))
    data = gather_training_data(config, augment_rows, snapshot_rows, clean.facts.get("prior_snapshots", []), store)
    init_dir = registry.download_model_dir(config, champion.version) if champion else None
    checkpoint_dir = store.work_dir(run_id, STEP) / fingerprint.split(":")[-1][:16]

    if not environment.is_main:
        fit(config, data, environment, checkpoint_dir, init_dir)
        dist.barrier()
        manifest = read_manifest(store, run_id, STEP)
        dist.destroy_process_group()
        return manifest

    from tasks.tracking import log_manifest, step_run

    with step_run(config, run_id, STEP, logical_date) as mlflow_run:
        import mlflow

        train_params = config.train.model_dump(mode="json")
        mlflow.log_params({f"train.{key}": value for key, value in train_params.items() if not isinstance(value, dict)}
                          | {f"train.peft.{key}": value for key, value in (train_params["peft"] or {}).items()}
                          | {"champion_version": extra["champion_version"]})

        def body(context: StepContext) -> None:
            result = fit(config, data, environment, checkpoint_dir, init_dir,
                         log_metrics=lambda values, step: mlflow.log_metrics(values, step=step))
            model_dir = context.out_dir / "model"
            result.model.save_pretrained(model_dir, safe_serialization=True)
            result.tokenizer.save_pretrained(model_dir)
            atomic_write_text(context.out_dir / "training_data.json", _json(data.counts))
            context.add_output("model", "model", "model", labels=list(config.labels),
                               warm_started_from=extra["champion_version"])
            context.metrics.update(data.counts)
            context.metrics.update(result.metrics)
            context.metrics["peak_memory_mb"] = peak_memory_mb(environment.device)
            context.facts.update({"champion_version": extra["champion_version"], "mlflow_run_id": mlflow_run.info.run_id})

        manifest = execute(STEP, body, config, inputs, run_id=run_id, store=store, logical_date=logical_date,
                           config_sections=sections, extra_fingerprint=extra)
        log_manifest(manifest)
    if environment.world_size > 1:
        dist.barrier()
        dist.destroy_process_group()
    return manifest


def _json(value: Any) -> str:
    import json

    return json.dumps(value, indent=2, sort_keys=True)


def main(argv: list[str] | None = None) -> int:
    return cli(STEP, run, argv, __doc__)


if __name__ == "__main__":
    raise SystemExit(main())
