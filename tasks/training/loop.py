"""The training loop, identical for one process and for every DDP rank, as a `Trainer` read top to bottom:

setup (tokens, model, optimizer, precision, resume) -> per epoch: its batches, optimisation steps
(progress line, checkpoint, SIGTERM), validation and early stopping -> the best weights and the metrics.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from transformers import get_linear_schedule_with_warmup

from tasks.config import PeftConfig, PipelineConfig
from tasks.manifest import StepError
from tasks.models.build import Classifier, build_model
from tasks.models.families import Preflight, lora_targets, model_features, preflight
from tasks.models.inference import predict
from tasks.models.metrics import classification_metrics
from tasks.training.checkpoints import latest_checkpoint, save_checkpoint
from tasks.training.cpu_dropout import MaskStream, use_fast_cpu_dropout
from tasks.training.data import TrainingData, bucketed_batches, pad_batch, rows_in
from tasks.training.distributed import DistributedEnv, StopRequested, inject_fault_drill
from tasks.training.embedding_rows import RowSparseEmbeddingGradient
from tasks.training.precision import PrecisionChoice, choose_precision
from tasks.training.runtime import keep_freed_memory

__all__ = ["FitResult", "Trainer", "add_lora_adapters", "head_modules"]

# The step's logger: the DDP operator streams rank 0's progress lines into the Airflow task log under it.
log = logging.getLogger("freshet.train")

MetricsLogger = Callable[[dict[str, float], int], None]
# Biases and norm scales, by each family's names (BERT LayerNorm, DistilBERT *layer_norm, ModernBERT *norm).
NO_WEIGHT_DECAY = ("bias", "LayerNorm.weight", "layer_norm.weight", "norm.weight")


@dataclass
class FitResult:
    model: Classifier
    tokenizer: Any
    metrics: dict[str, float]
    # What the preflight found (source, family, max length, inputs) and the label map, for the manifest.
    facts: dict[str, Any] = field(default_factory=dict)
    # Rank 0's metric points while training ({"step", "timestamp" in ms, "metrics"}), a resumed run's included: the
    # step replays them into its MLflow run after the commit (tasks/train.py).
    metrics_history: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class Progress:
    """Where the run stands; saved in every checkpoint (as a dict, under "progress") and restored on resume."""

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    best_f1: float = -1.0
    epochs_without_gain: int = 0
    samples_seen: int = 0
    tokens_seen: int = 0
    # A running digest of every sample consumed, in order: a resumed run must end with the same
    # digest as an uninterrupted one (nothing skipped, nothing repeated).
    order_digest: str = ""


@dataclass
class ThroughputWindow:
    """Loss and samples since the last progress line; the loss stays on the device until it is printed."""

    start: float
    loss: torch.Tensor
    samples: int = 0
    micro_batches: int = 0

    def restart(self, now: float) -> None:
        self.start, self.samples, self.micro_batches = now, 0, 0
        self.loss.zero_()


class Trainer:
    """One training run of `fit`: built ready to train (resumed from the last checkpoint if any), then `train()`."""

    # ------------------------------------------------------------------------------------ setup

    def __init__(self, config: PipelineConfig, data: TrainingData, environment: DistributedEnv,
                 checkpoint_dir: Path, init_dir: Path | None, log_metrics: MetricsLogger | None = None) -> None:
        self.settings = config.train
        self.data = data
        self.environment = environment
        self.device = environment.device
        self.checkpoint_dir = checkpoint_dir
        self.log_metrics = log_metrics
        if self.device.type == "cpu":
            keep_freed_memory()
        self.labels = list(data.labels or config.labels)
        self.label_index = {label: index for index, label in enumerate(self.labels)}
        # Before any work: the model directory (or the champion's) must be trainable; errors name the fix.
        self.preflight: Preflight = preflight(self.settings, init_dir, warm_start=init_dir is not None)
        self.tokenizer = self.preflight.tokenizer
        self.pad_id = self.preflight.pad_token_id
        self._encode_training_rows()
        self.model = self._build_model(init_dir)
        self._install_cpu_fast_paths()
        self.ddp_model, self.forward_model = self._wrap_for_training()
        self.trainable = [(name, parameter) for name, parameter in self.model.named_parameters()
                          if parameter.requires_grad]
        self.learning_rate = self._peak_learning_rate(init_dir)
        self.optimizer = self._build_optimizer()
        self.accumulation = self._accumulation_steps()
        self.total_steps = self._count_total_steps()
        self.scheduler = get_linear_schedule_with_warmup(
            self.optimizer, int(self.settings.warmup_fraction * self.total_steps), self.total_steps)
        self.precision = self._choose_precision()
        self.use_bf16, self.native_bf16 = self.precision.use_bf16, self.precision.native_bf16
        self.progress = Progress()
        self.best_state: dict[str, torch.Tensor] | None = None
        self.metrics_history: list[dict[str, Any]] = []
        self.resumed_from = self._resume_from_checkpoint()

    def _encode_training_rows(self) -> None:
        texts = [row["text"] for row in self.data.train]
        self.encoded = self.tokenizer(texts, truncation=True, max_length=self.settings.max_length)["input_ids"]
        self.targets = [self.label_index[row["label"]] for row in self.data.train]
        self.lengths = [len(ids) for ids in self.encoded]
        self.class_weights: torch.Tensor | None = None
        if self.settings.class_balanced_loss:
            # Inverse frequency, normalised to mean 1 over the classes present (absent ones weigh nothing).
            counts = torch.bincount(torch.tensor(self.targets, dtype=torch.long), minlength=len(self.labels)).double()
            weights = torch.where(counts > 0, counts.sum() / counts.clamp(min=1), torch.zeros_like(counts))
            self.class_weights = (weights * (counts > 0).sum() / weights.sum()).float().to(self.device)
        self.class_weight_of = None if self.class_weights is None else self.class_weights.tolist()

    def _build_model(self, init_dir: Path | None) -> Classifier:
        model = build_model(self.settings, self.labels, init_dir=init_dir, pad_token_id=self.pad_id)
        if self.settings.freeze_word_embeddings:
            model.get_input_embeddings().weight.requires_grad_(False)
        if self.settings.peft is not None:
            model = add_lora_adapters(model, self.settings.peft)
        return model.to(self.device)

    def _install_cpu_fast_paths(self) -> None:
        """numpy dropout masks and the row-sparse embedding gradient, where they apply; undone in `_finish`."""
        settings, model = self.settings, self.model
        eager_cpu = self.device.type == "cpu" and not settings.compile
        # Compiled graphs fuse their own dropout, and CUDA's generator is fast: only eager CPU needs it.
        self.dropout_stream: MaskStream | None = None
        self.restore_dropout: Callable[[], None] | None = None
        if settings.fast_cpu_dropout and eager_cpu:
            self.dropout_stream = MaskStream(settings.seed, self.environment.rank)
            self.restore_dropout = use_fast_cpu_dropout(model, self.dropout_stream)
        self.embedding_rows: RowSparseEmbeddingGradient | None = None
        if (settings.row_sparse_embedding_grad and eager_cpu and self.environment.world_size == 1
                and model.get_input_embeddings().weight.requires_grad):
            self.embedding_rows = RowSparseEmbeddingGradient(model.get_input_embeddings())
        self.clip_grad_norm_ = (self.embedding_rows.clip_grad_norm_ if self.embedding_rows is not None
                                else torch.nn.utils.clip_grad_norm_)

    def _wrap_for_training(self) -> tuple[Any, Callable[..., Any]]:
        """(the DDP wrapper, or the model alone; what the forward pass calls, compiled or not)."""
        ddp_model: Any = self.model
        if self.environment.world_size > 1:
            device_ids = [self.environment.local_rank] if self.device.type == "cuda" else None
            ddp_model = torch.nn.parallel.DistributedDataParallel(self.model, device_ids=device_ids)
        # Dynamic shapes: bucketed batches change length every step; static shapes would recompile each time.
        forward_model = torch.compile(ddp_model, dynamic=True) if self.settings.compile else ddp_model
        return ddp_model, forward_model

    def _peak_learning_rate(self, init_dir: Path | None) -> float:
        if init_dir is not None and self.settings.warm_start_learning_rate is not None:
            return self.settings.warm_start_learning_rate
        return self.settings.learning_rate

    def _build_optimizer(self) -> torch.optim.Optimizer:
        # Layer-wise learning-rate decay (0.8) was measured and lost 1-4 points on few labels: one rate for all.
        groups = [
            {"params": [p for n, p in self.trainable if not n.endswith(NO_WEIGHT_DECAY)],
             "weight_decay": self.settings.weight_decay},
            {"params": [p for n, p in self.trainable if n.endswith(NO_WEIGHT_DECAY)], "weight_decay": 0.0},
        ]
        if self.settings.optimizer == "sgd":
            return torch.optim.SGD(groups, lr=self.learning_rate)
        # Fused AdamW has CPU and CUDA kernels: one pass over the parameters instead of a dozen.
        return torch.optim.AdamW(groups, lr=self.learning_rate, fused=True)

    def _accumulation_steps(self) -> int:
        """`gradient_accumulation_steps`, but never more than an epoch's batches: a small day still takes a step."""
        micro_batches_per_epoch = len(self._epoch_batches(0))
        if micro_batches_per_epoch == 0:
            # bucketed_batches gives every rank at least one row; decide never starts a round this small.
            raise StepError(f"train: {len(self.lengths)} training rows cannot give each of the "
                            f"{self.environment.world_size} ranks one row; train on more rows or fewer processes "
                            f"(train.nproc_per_node / train.cpu_processes)")
        configured = self.settings.gradient_accumulation_steps
        if micro_batches_per_epoch < configured and self.environment.is_main:
            log.info("train: %d batches per epoch < train.gradient_accumulation_steps=%d; accumulating %d",
                     micro_batches_per_epoch, configured, micro_batches_per_epoch)
        return min(configured, micro_batches_per_epoch)

    def _count_total_steps(self) -> int:
        """Steps for train.epochs; every epoch has the same batches (the last one may be short, see bucketed_batches)."""
        micro_batches_per_epoch = len(self._epoch_batches(0))
        steps_per_epoch = max(1, micro_batches_per_epoch // self.accumulation)
        return max(1, math.ceil(self.settings.epochs * steps_per_epoch))

    def _choose_precision(self) -> PrecisionChoice:
        """bf16 autocast or fp32 (tasks/training/precision.py), and why; the reason goes into the manifest."""
        choice = choose_precision(self.settings.precision, self.device.type)
        if self.environment.is_main:
            log.info("precision: %s", choice.reason)
        if choice.use_bf16 and not choice.native_bf16 and self.environment.is_main:
            # Emulated bf16 is no speed-up but a trap: measured 4.8 vs 102 samples/s (fp32) on an AVX2-only EPYC.
            log.warning("train.precision=bf16 on a CPU without native bf16 (AVX512-BF16/AMX; this one: %s): "
                        "bf16 is emulated and ~20x slower than fp32; set train.precision to fp32 or auto",
                        torch.backends.cpu.get_cpu_capability())
        return choice

    # ------------------------------------------------------------------------------ checkpoints

    def _resume_from_checkpoint(self) -> int:
        """Restore the last checkpoint, if any; returns the step it was taken at (0: a fresh start)."""
        checkpoint = latest_checkpoint(self.checkpoint_dir)
        if checkpoint is None:
            return 0
        self.model.load_state_dict(checkpoint["model"])
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        self.scheduler.load_state_dict(checkpoint["scheduler"])
        self.progress = replace(self.progress, **checkpoint["progress"])
        self.best_state = checkpoint.get("best_model")
        self.metrics_history = checkpoint.get("metrics_history", [])
        torch.set_rng_state(checkpoint["rng"]["torch"])
        progress = self.progress
        log.info("resumed from checkpoint at step %d (epoch %d, batch %d)",
                 progress.step, progress.epoch, progress.batch_in_epoch)
        return progress.step

    def _save_checkpoint(self) -> None:
        if self.environment.is_main:
            save_checkpoint(self.checkpoint_dir, {
                "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "progress": asdict(self.progress),
                "best_model": self.best_state, "rng": {"torch": torch.get_rng_state()},
                "metrics_history": self.metrics_history,
            })

    # ------------------------------------------------------------------------------------- loop

    def train(self) -> FitResult:
        stopper = StopRequested()
        self.model.train()
        started = time.perf_counter()
        self.window = ThroughputWindow(started, torch.zeros((), device=self.device))
        stopped_early = False
        while self.progress.step < self.total_steps and not stopped_early:
            self._train_epoch(stopper)
            stopped_early = self._end_epoch()
        return self._finish(time.perf_counter() - started, stopped_early)

    def _epoch_batches(self, epoch: int) -> list[list[list[int]]]:
        settings = self.settings
        return bucketed_batches(self.lengths, settings.batch_size, self.environment.world_size, settings.seed, epoch)

    def _train_epoch(self, stopper: StopRequested) -> None:
        """The rest of the current epoch (all of it unless resumed mid-epoch), up to the step budget."""
        batches = self._epoch_batches(self.progress.epoch)
        usable = len(batches) - len(batches) % self.accumulation  # whole accumulation windows only
        while self.progress.batch_in_epoch < usable and self.progress.step < self.total_steps:
            self._optimisation_step(batches)
            self._log_progress()
            if self.progress.step % self.settings.checkpoint_every_steps == 0:
                self._save_checkpoint()
            inject_fault_drill(self.progress.step, self.environment)
            if stopper.any_rank(self.environment):
                self._save_checkpoint()
                raise SystemExit(f"train: stopped by SIGTERM at step {self.progress.step}; checkpoint saved")

    def _optimisation_step(self, batches: list[list[list[int]]]) -> None:
        """One optimizer step over `accumulation` micro-batches; DDP all-reduces on the last one only."""
        self.optimizer.zero_grad(set_to_none=True)
        first = self.progress.batch_in_epoch
        for micro in range(self.accumulation):
            sync = micro == self.accumulation - 1 or self.environment.world_size == 1
            self._forward_backward(batches, first + micro, sync)
        self.clip_grad_norm_(self.model.parameters(), 1.0)
        self.optimizer.step()
        self.scheduler.step()
        # Counted, not assumed: the epoch's last batch may be short.
        global_samples = sum(rows_in(batches[number]) for number in range(first, first + self.accumulation))
        self.progress.step += 1
        self.progress.batch_in_epoch += self.accumulation
        self.progress.samples_seen += global_samples
        self.window.samples += global_samples

    def _forward_backward(self, batches: list[list[list[int]]], batch_number: int, sync: bool) -> None:
        global_batch = batches[batch_number]
        progress = self.progress
        progress.order_digest = hashlib.sha256(f"{progress.order_digest}|{global_batch}".encode()).hexdigest()
        indices = global_batch[self.environment.rank]
        if self.dropout_stream is not None:
            self.dropout_stream.at_batch(progress.epoch, batch_number)
        features = model_features(pad_batch([self.encoded[i] for i in indices], self.pad_id, self.device),
                                  self.preflight.input_names)
        batch_targets = torch.tensor([self.targets[i] for i in indices], device=self.device)
        context = self.ddp_model.no_sync() if not sync else contextlib.nullcontext()
        with context, torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.use_bf16):
            logits = self.forward_model(**features).logits
            # This rank's share of the whole global batch's mean loss (class-weighted with class_balanced_loss):
            # DDP averages the ranks' gradients, so they add up to exactly one process's loss on the whole batch,
            # with a short last batch split unevenly across ranks too.
            loss = torch.nn.functional.cross_entropy(logits.float(), batch_targets, weight=self.class_weights,
                                                     reduction="sum")
            loss = loss * self.environment.world_size / (self._batch_weight(global_batch) * self.accumulation)
            loss.backward()
        self.window.loss += loss.detach()  # no .item() here: a device sync every micro-batch
        self.window.micro_batches += 1
        progress.tokens_seen += sum(self.lengths[i] for i in indices) * self.environment.world_size

    def _batch_weight(self, global_batch: list[list[int]]) -> float:
        """The global batch's rows over all ranks, each counted by its class weight (1 without class weights)."""
        if self.class_weight_of is None:
            return float(rows_in(global_batch))
        return sum(self.class_weight_of[self.targets[index]] for rank_rows in global_batch for index in rank_rows)

    def _log_progress(self) -> None:
        """Rank 0's progress line (and MLflow metrics) every `log_every_steps` steps and at the last one."""
        step, total_steps, window = self.progress.step, self.total_steps, self.window
        if not self.environment.is_main or (step % self.settings.log_every_steps != 0 and step != total_steps):
            return
        now = time.perf_counter()
        rate = window.samples / max(now - window.start, 1e-9)
        mean_loss = window.loss.item() * self.accumulation / max(window.micro_batches, 1)
        global_samples = self.settings.batch_size * self.environment.world_size * self.accumulation
        remaining = (total_steps - step) * global_samples / max(rate, 1e-9)
        learning_rate = self.scheduler.get_last_lr()[0]
        log.info("step %d/%d epoch %d loss %.4f lr %.2e %.1f samples/s eta %.0fs", step, total_steps,
                 self.progress.epoch + 1, mean_loss, learning_rate, rate, remaining)
        self._record_metrics({"loss": mean_loss, "learning_rate": learning_rate, "samples_per_second": rate}, step)
        window.restart(now)

    def _record_metrics(self, values: dict[str, float], step: int) -> None:
        """Rank 0: into the metrics history (kept in every checkpoint, so a resumed run's history is whole) and to
        the `log_metrics` callback, if any."""
        self.metrics_history.append({"step": step, "timestamp": int(time.time() * 1000), "metrics": values})
        if self.log_metrics:
            self.log_metrics(values, step)

    # ------------------------------------------------------------------- validation, early stop

    def _end_epoch(self) -> bool:
        """Validate, keep the best weights, advance to the next epoch; True: stop early."""
        score = self._agreed_validation_score()
        if self.environment.is_main:
            self._record_metrics({"validation_macro_f1": score}, self.progress.step)
        progress, stop_early = self.progress, False
        if math.isnan(score) or score > progress.best_f1:
            progress.best_f1, progress.epochs_without_gain = score, 0
            self.best_state = {key: value.detach().clone() for key, value in self.model.state_dict().items()}
        else:
            progress.epochs_without_gain += 1
            stop_early = progress.epochs_without_gain >= self.settings.early_stopping_patience
        progress.epoch += 1
        progress.batch_in_epoch = 0
        return stop_early

    def _agreed_validation_score(self) -> float:
        """Rank 0's validation macro-F1, broadcast: every rank must agree on early stopping."""
        score = self._validation_score() if self.environment.is_main else 0.0
        if self.environment.world_size > 1:
            shared = torch.tensor([score], device=self.device)
            dist.broadcast(shared, src=0)
            score = float(shared.item())
        return score

    def _validation_score(self) -> float:
        if not self.data.validation:
            return float("nan")
        predictions = predict(self.model, self.tokenizer, [row["text"] for row in self.data.validation],
                              max_length=self.settings.max_length, batch_size=128)
        truth = [self.label_index[row["label"]] for row in self.data.validation]
        self.model.train()
        return classification_metrics(truth, predictions.label_ids, self.labels)["macro_f1"]

    # ----------------------------------------------------------------------------------- finish

    def _finish(self, elapsed: float, stopped_early: bool) -> FitResult:
        """Undo the training-only changes, load the best weights, merge LoRA, report the metrics."""
        if self.restore_dropout is not None:
            self.restore_dropout()
        if self.embedding_rows is not None:
            self.embedding_rows.close()
        model = self.model
        if self.settings.freeze_word_embeddings and self.settings.peft is None:
            model.get_input_embeddings().weight.requires_grad_(True)  # frozen for this run only
        if self.best_state is not None:
            model.load_state_dict(self.best_state)
        parameters_total = sum(parameter.numel() for parameter in model.parameters())
        if self.settings.peft is not None:
            # Fold the adapters into the base weights: the rest of the pipeline loads a plain HF model.
            model = model.merge_and_unload()
        facts = {"model": self.preflight.facts(), "precision": self.precision.facts(),
                 "label_map": {str(index): label for index, label in enumerate(self.labels)}}
        return FitResult(model, self.tokenizer, self._metrics(elapsed, stopped_early, parameters_total), facts,
                         self.metrics_history)

    def _metrics(self, elapsed: float, stopped_early: bool, parameters_total: int) -> dict[str, Any]:
        progress = self.progress
        # A resumed run timed only its own part: a rate over all samples would overstate it.
        timed = elapsed > 0 and self.resumed_from == 0
        return {
            "steps": progress.step, "total_steps": self.total_steps, "epochs_completed": progress.epoch,
            "best_validation_macro_f1": progress.best_f1, "resumed_from_step": self.resumed_from,
            "stopped_early": int(stopped_early), "world_size": self.environment.world_size,
            "train_seconds": elapsed,
            "samples_per_second": (progress.samples_seen / elapsed) if timed else float("nan"),
            "tokens_per_second": (progress.tokens_seen / elapsed) if timed else float("nan"),
            "precision_bf16": int(self.use_bf16),
            "bf16_native": int(self.native_bf16),
            "peak_learning_rate": self.learning_rate,
            "compiled": int(self.settings.compile),
            "fast_cpu_dropout": int(self.dropout_stream is not None),
            "row_sparse_embedding_grad": int(self.embedding_rows is not None),
            "parameters_total": parameters_total,
            "parameters_trainable": sum(parameter.numel() for _, parameter in self.trainable),
            "order_digest": progress.order_digest,
            "samples_seen": progress.samples_seen,
        }


# ------------------------------------------------------------------------------ model helpers


def head_modules(model: Classifier) -> list[str]:
    """The modules outside the encoder that hold weights: the whole classification head (BERT `classifier`,
    DistilBERT `pre_classifier` + `classifier`, DeBERTa `pooler` + `classifier`, ModernBERT `head` + `classifier`)."""
    base = getattr(model, "base_model_prefix", "")
    return [name for name, child in model.named_children()
            if name != base and any(True for _ in child.parameters())]


def add_lora_adapters(model: Classifier, settings: PeftConfig) -> Classifier:
    """LoRA adapters on the target modules (configured, else the family's); the base is frozen, the whole
    classification head trains in full (it starts untrained, so a frozen part of it would stay random)."""
    from peft import LoraConfig, TaskType, get_peft_model

    targets = lora_targets(model, settings.target_modules)
    # peft types lora_alpha as int, but uses it as a float scale (alpha / r): a fractional alpha is fine.
    lora = LoraConfig(task_type=TaskType.SEQ_CLS, r=settings.r, lora_alpha=settings.alpha,  # type: ignore[arg-type]
                      lora_dropout=settings.dropout, target_modules=targets, modules_to_save=head_modules(model))
    return get_peft_model(model, lora)
