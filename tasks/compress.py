"""Compress the candidate into several variants, re-evaluate each, and pick the serving variant.

Variants: PyTorch int8 dynamic quantization (a recipe applied at load time to the fp32 safetensors,
so nothing pickled is stored), ONNX fp32 (TorchScript exporter, dynamic batch/sequence axes) and
onnxruntime dynamic int8 (both stored as `.onnx` outputs: a safe format), global magnitude
pruning of the Linear weights (measured only: dense storage gains nothing, so it is never served),
and distillation: a student with `compress.distill_layers` of the teacher's encoder layers (copied as
its initialisation) trained on the teacher's logits plus the labels over the train split of this and
earlier snapshots, served as is (`distilled`, a safetensors directory) or through ONNX int8
(`distilled-onnx-int8`). Each is scored on the same slices as the fp32 candidate and timed in its own
interleaved blocks. The serving variant is the smallest (then fastest) servable variant that loses at
most `gate.max_compressed_drop` on every slice, else fp32. A variant that cannot apply to the model's
family (the student's layer copy on ModernBERT) or fails to build (an exporter that cannot trace it) is
reported as such, with the reason, and the choice is made among the others. The serving variant's predictions on a
fixed sample of test rows are written as `serving_sample`: register checks the registered model
reproduces them in a fresh process. The manifest carries the final gate verdict (candidate checks
plus compressed checks).
"""

from __future__ import annotations

import functools
import json
import logging
import math
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import mlflow

from tasks.config import PipelineConfig
from tasks.contract import StepContext, cli, execute
from tasks.evaluate import EvaluateFacts
from tasks.gate_policy import GateFacts, SliceMetrics, final_verdict, judge_compressed
from tasks.label_set import run_labels
from tasks.manifest import Manifest, StepError, StepFacts
from tasks.models.blend import Blend, load_blend
from tasks.models.build import load_classifier, quantize_int8
from tasks.models.compression import (
    OnnxClassifier,
    build_student,
    distill,
    export_onnx,
    prune_magnitude,
    quantize_onnx_int8,
    teacher_logits,
)
from tasks.models.families import LayerCopyNotApplicable
from tasks.models.inference import interleaved_latency, predict
from tasks.models.metrics import score
from tasks.records import CleanFacts, evaluation_slices, read_rows
from tasks.store import ArtifactStore

STEP = "compress"
FP32, INT8, ONNX_FP32, ONNX_INT8, PRUNED = "fp32", "int8-dynamic", "onnx-fp32", "onnx-int8", "pruned"
DISTILLED, DISTILLED_ONNX_INT8 = "distilled", "distilled-onnx-int8"
SERVABLE = (FP32, INT8, ONNX_FP32, ONNX_INT8, DISTILLED, DISTILLED_ONNX_INT8)
# ONNX variants: the step output holding the file (register logs it as the `onnx_model` artifact).
ONNX_OUTPUTS = {ONNX_FP32: ("onnx_fp32", "onnx/model.onnx"), ONNX_INT8: ("onnx_int8", "onnx/model.int8.onnx"),
                DISTILLED_ONNX_INT8: ("distilled_onnx_int8", "onnx/student.int8.onnx")}
# The student's HF directory (register logs it as the `student_model` artifact when `distilled` serves).
STUDENT_OUTPUT = ("distilled_model", "student")
SIZE_TIE = 0.01  # size ratios this close count as equal; latency decides
log = logging.getLogger("freshet.compress")


def _saved_size(model) -> int:
    """Bytes on disk of the model's state dict as torch would store it."""
    import torch

    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "weights.pt"
        torch.save(model.state_dict(), path)
        return path.stat().st_size


def _safetensors_size(model) -> int:
    with tempfile.TemporaryDirectory() as directory:
        model.save_pretrained(directory)
        return sum(path.stat().st_size for path in Path(directory).glob("*.safetensors"))


def select_serving_variant(variants: Mapping[str, Mapping[str, Any]], max_drop: float,
                           servable: tuple[str, ...] = SERVABLE) -> str:
    """The smallest (then fastest at batch 1) servable variant within `max_drop` on every slice; else fp32.

    A variant row needs `size_ratio`, `latency_ratio_batch1` and `macro_f1_delta` (slice -> delta vs
    fp32, negative = worse). fp32 itself competes at ratio 1, so a variant no smaller and no faster
    than fp32 is never picked. Sizes within SIZE_TIE of each other tie and latency decides.
    """
    def within(row: Mapping[str, Any]) -> bool:
        if not row.get("applicable", True):
            return False
        deltas = [delta for delta in row.get("macro_f1_delta", {}).values() if not math.isnan(delta)]  # NaN: empty slice
        return bool(deltas) and all(-delta <= max_drop + 1e-12 for delta in deltas)

    candidates = [(1.0, 1.0, 0, FP32)] + [
        (float(row["size_ratio"]), float(row["latency_ratio_batch1"]), 1, name)
        for name, row in variants.items() if name in servable and name != FP32 and within(row)]
    # Round sizes onto a SIZE_TIE grid so near-equal sizes compare by latency; fp32 wins exact ties.
    return min(candidates, key=lambda item: (round(item[0] / SIZE_TIE), item[1], item[2]))[3]


def distillation_rows(config: PipelineConfig, clean: Manifest, store: ArtifactStore,
                      labels: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Train-split rows of this snapshot and every earlier one (by id, latest wins), a seeded sample.

    Only the train split: the student must never see the validation or test rows it is judged on.
    """
    import random

    known = set(labels if labels is not None else config.labels)
    uris = [snapshot.uri for snapshot in CleanFacts.of(clean).prior_snapshots] + [clean.output("dataset").uri]
    rows: dict[str, dict[str, Any]] = {}
    for uri in uris:
        for row in read_rows(store.local_path(uri)):
            if row["split"] == "train" and row["label"] in known:
                rows[row["id"]] = row
    ordered = [rows[key] for key in sorted(rows)]
    if len(ordered) > config.compress.distill_max_rows:
        ordered = random.Random(config.train.seed).sample(ordered, config.compress.distill_max_rows)
    return ordered


def distill_student(config: PipelineConfig, teacher, tokenizer, rows: list[dict[str, Any]],
                    labels: Sequence[str] | None = None):
    """The student model and the facts of its training (layers, rows, loss, seconds)."""
    import time

    if not rows:
        raise StepError("compress: distillation needs train-split rows, and the clean dataset (with its prior "
                        "snapshots) has none with a configured label")
    settings = config.compress
    started = time.perf_counter()
    texts = [row["text"] for row in rows]
    index = {label: position for position, label in enumerate(labels if labels is not None else config.labels)}
    layers = settings.distill_layers or max(1, teacher.config.num_hidden_layers // 2)
    student = build_student(teacher, layers, settings.distill_hidden_size)
    soft = teacher_logits(teacher, tokenizer, texts, max_length=config.train.max_length)
    stats = distill(student, tokenizer, texts, [index[row["label"]] for row in rows], soft,
                    max_length=config.train.max_length, epochs=settings.distill_epochs,
                    batch_size=settings.distill_batch_size, learning_rate=settings.distill_learning_rate,
                    temperature=settings.distill_temperature, alpha=settings.distill_alpha, seed=config.train.seed)
    facts = {"layers": student.config.num_hidden_layers, "teacher_layers": teacher.config.num_hidden_layers,
             "hidden_size": student.config.hidden_size, "distill_rows": len(rows), "distill_loss": stats["loss"],
             "distill_steps": int(stats["steps"]), "distill_seconds": time.perf_counter() - started,
             "temperature": settings.distill_temperature, "alpha": settings.distill_alpha}
    return student, facts


# --------------------------------------------------------------------------------------- variants


def _unavailable(status: str, reason: str) -> dict[str, Any]:
    """The compression-table row of a variant that was not built: never servable, the reason stated."""
    return {"applicable": False, "status": status, "reason": reason, "passed": False, "servable": False}


class VariantBuild:
    """What every variant builder reads: the fp32 candidate, its directory and the step's staging area; the
    ONNX export and the distilled student are built once, for the variants that share them."""

    def __init__(self, config: PipelineConfig, context: StepContext, store: ArtifactStore, model_dir: Path,
                 fp32_model: Any, tokenizer: Any, labels: Sequence[str] | None = None) -> None:
        self.config, self.context, self.store = config, context, store
        self.model_dir, self.fp32_model, self.tokenizer = model_dir, fp32_model, tokenizer
        self.labels = list(labels if labels is not None else config.labels)
        self.opset = config.compress.onnx_opset

    @functools.cached_property
    def onnx_fp32_path(self) -> Path:
        return export_onnx(self.fp32_model, self.tokenizer, self.context.out_dir / ONNX_OUTPUTS[ONNX_FP32][1],
                           opset=self.opset)

    @functools.cached_property
    def student(self) -> tuple[Any, dict[str, Any]]:
        """The distilled student, saved as a step output (safetensors), and the facts of its training."""
        student, facts = distill_student(self.config, self.fp32_model, self.tokenizer,
                                         distillation_rows(self.config, self.context.input("clean"), self.store,
                                                           self.labels), self.labels)
        output, relative = STUDENT_OUTPUT
        student.save_pretrained(self.context.out_dir / relative)
        self.tokenizer.save_pretrained(self.context.out_dir / relative)
        self.context.add_output(output, relative, "model", layers=facts["layers"])
        return student, facts

    def onnx_variant(self, variant: str, path: Path) -> Any:
        output, relative = ONNX_OUTPUTS[variant]
        self.context.add_output(output, relative, "file", variant=variant, opset=self.opset)
        return OnnxClassifier(path, self.fp32_model.config)


# A builder returns (model, size in bytes, facts for the compression table).
Built = tuple[Any, int, dict[str, Any]]


def build_int8(build: VariantBuild) -> Built:
    model = quantize_int8(load_classifier(build.model_dir, trust_remote_code=build.config.train.trust_remote_code)[0])
    return model, _saved_size(model), {}  # packed int8 state dict (the recipe is applied at load)


def build_onnx_fp32(build: VariantBuild) -> Built:
    path = build.onnx_fp32_path
    return build.onnx_variant(ONNX_FP32, path), path.stat().st_size, {}


def build_onnx_int8(build: VariantBuild) -> Built:
    path = quantize_onnx_int8(build.onnx_fp32_path, build.context.out_dir / ONNX_OUTPUTS[ONNX_INT8][1])
    return build.onnx_variant(ONNX_INT8, path), path.stat().st_size, {}


def build_pruned(build: VariantBuild) -> Built:
    amount = build.config.compress.prune_amount
    model, sparsity = prune_magnitude(
        load_classifier(build.model_dir, trust_remote_code=build.config.train.trust_remote_code)[0], amount)
    return model, _safetensors_size(model), {"sparsity": sparsity, "amount": amount}  # dense: zeros cost as weights


def build_distilled(build: VariantBuild) -> Built:
    student, facts = build.student
    size = sum(path.stat().st_size for path in (build.context.out_dir / STUDENT_OUTPUT[1]).glob("*.safetensors"))
    return student, size, facts


def build_distilled_onnx_int8(build: VariantBuild) -> Built:
    student, facts = build.student
    student_fp32 = export_onnx(student, build.tokenizer, build.context.out_dir / "onnx/student.onnx", opset=build.opset)
    path = quantize_onnx_int8(student_fp32, build.context.out_dir / ONNX_OUTPUTS[DISTILLED_ONNX_INT8][1])
    student_fp32.unlink()  # only the int8 file is a variant
    return build.onnx_variant(DISTILLED_ONNX_INT8, path), path.stat().st_size, facts


# In the order they are built, timed and reported.
VARIANT_BUILDERS: dict[str, Callable[[VariantBuild], Built]] = {
    INT8: build_int8, ONNX_FP32: build_onnx_fp32, ONNX_INT8: build_onnx_int8, PRUNED: build_pruned,
    DISTILLED: build_distilled, DISTILLED_ONNX_INT8: build_distilled_onnx_int8,
}


def build_variants(build: VariantBuild, enabled: Sequence[str]) -> tuple[
        dict[str, Any], dict[str, int], dict[str, dict[str, Any]], dict[str, dict[str, Any]]]:
    """Every enabled variant built: the models (fp32 first), their sizes, their extra facts, and the variants
    that could not be built with the reason (not applicable to the family, or failed): said, not crashed."""
    models: dict[str, Any] = {FP32: build.fp32_model}
    sizes: dict[str, int] = {}
    extra: dict[str, dict[str, Any]] = {}
    unavailable: dict[str, dict[str, Any]] = {}
    for variant, builder in VARIANT_BUILDERS.items():
        if variant not in enabled:
            continue
        try:
            models[variant], sizes[variant], extra[variant] = builder(build)
        except LayerCopyNotApplicable as reason:  # the family has no layers to copy
            unavailable[variant] = _unavailable("not applicable", str(reason))
        except Exception as error:  # a variant that cannot be built is reported, not fatal to the step
            log.exception("compress: variant %s could not be built", variant)
            unavailable[variant] = _unavailable("failed", f"{type(error).__name__}: {error}")
        if variant in unavailable:
            log.warning("compress: %s %s: %s", variant, unavailable[variant]["status"], unavailable[variant]["reason"])
    if "onnx_fp32_path" in vars(build) and ONNX_FP32 not in enabled:
        build.onnx_fp32_path.unlink()  # exported only to quantize it
    return models, sizes, extra, unavailable


def measured_against_fp32(latency: Mapping[str, float], fp32_latency: Mapping[str, float], size: int, fp32_size: int,
                          metrics: SliceMetrics, reference: SliceMetrics) -> dict[str, Any]:
    """A variant's size, latency and macro-F1 beside the fp32 model's, as ratios and deltas."""
    return {
        "size_ratio": size / fp32_size,
        "latency_ratio_batch1": latency["latency_ms_batch1_p50"] / fp32_latency["latency_ms_batch1_p50"],
        "latency_ratio_batch32": latency["latency_ms_batch32_p50"] / fp32_latency["latency_ms_batch32_p50"],
        "macro_f1": {name: value["macro_f1"] for name, value in metrics.items()},
        "macro_f1_delta": {name: metrics[name]["macro_f1"] - reference[name]["macro_f1"] for name in metrics},
        "latency_ms": dict(latency), "fp32_latency_ms": dict(fp32_latency),
        "size_bytes": size, "fp32_size_bytes": fp32_size,
    }


def write_serving_sample(context: StepContext, config: PipelineConfig, model: Any, variant: str, tokenizer: Any,
                         slices: Mapping[str, list[dict[str, Any]]], labels: list[str], blend: Blend | None) -> None:
    """What the served model must reproduce (register's and serve's check): the same texts through the same
    `predict` call, batching and the lexical blend included."""
    rows = (slices.get("frozen") or slices.get("fresh") or [])[: config.compress.serving_check_rows]
    texts = [row["text"] for row in rows]
    expected = predict(model, tokenizer, texts, max_length=config.train.max_length, blend=blend)
    (context.out_dir / "serving_sample.json").write_text(json.dumps({
        "variant": variant, "tolerance": config.compress.serving_check_tolerance,
        "ids": [row["id"] for row in rows], "texts": texts,
        "labels": [labels[int(index)] for index in expected.label_ids],
        "probabilities": expected.probabilities.astype(float).tolist()}))
    context.add_output("serving_sample", "serving_sample.json", "report", rows=len(rows))


def run(config: PipelineConfig, inputs: dict[str, Manifest], *, run_id: str, store: ArtifactStore,
        logical_date: str | None = None) -> Manifest:
    def body(context: StepContext) -> None:
        labels = run_labels(config, context.input("clean"), store)
        model_dir = context.input_path("train", "model")
        evaluation = json.loads(context.input_path("evaluate", "evaluation").read_text())
        reference = evaluation["candidate"]
        slices = evaluation_slices(context.input("clean"), store)
        fp32_model, tokenizer = load_classifier(model_dir, trust_remote_code=config.train.trust_remote_code)
        # Every variant is served with the candidate's lexical blend, so each is measured with it too.
        blend = (load_blend(context.input_path("evaluate", "blend"))
                 if "blend" in context.input("evaluate").outputs else None)
        settings: dict[str, Any] = {"max_length": config.train.max_length, "batch_size": config.evaluate.batch_size,
                                    "blend": blend}
        sample = [row["text"] for row in (slices.get("fresh") or slices.get("frozen") or [])[
            : config.compress.latency_sample_rows]]
        fp32_size = sum(path.stat().st_size for path in Path(model_dir).glob("*.safetensors")) or _saved_size(fp32_model)
        enabled = config.compress.variants

        build = VariantBuild(config, context, store, model_dir, fp32_model, tokenizer, labels)
        models, sizes, extra, unavailable = build_variants(build, enabled)

        latency = interleaved_latency(models, tokenizer, sample, max_length=config.train.max_length,
                                      rounds=config.compress.latency_rounds)
        variants: dict[str, dict[str, Any]] = {}
        checks = []
        for variant, model in models.items():
            if variant == FP32:
                continue
            metrics, _ = score(model, tokenizer, slices, labels, **settings)
            verdict = judge_compressed(config.evaluate.gate, metrics, reference, variant)
            checks.extend(verdict.checks)
            variants[variant] = {
                "passed": verdict.passed, "servable": variant in SERVABLE,
                **measured_against_fp32(latency[variant], latency[FP32], sizes[variant], fp32_size, metrics, reference),
                **extra.get(variant, {}),
            }
        variants.update(unavailable)
        serving_variant = select_serving_variant(variants, config.evaluate.gate.max_compressed_drop)
        if config.compress.serving_check_rows:
            write_serving_sample(context, config, models[serving_variant], serving_variant, tokenizer, slices, labels,
                                 blend)
        gate = final_verdict(EvaluateFacts.of(context.input("evaluate")).gate, checks, serving_variant)
        record_compression(context, variants, serving_variant, gate)

    def track(manifest: Manifest) -> None:
        mlflow.log_artifact(str(store.local_path(manifest.output("compression").uri)), artifact_path="compression")
        mlflow.log_artifact(str(store.local_path(manifest.output("gate").uri)), artifact_path="gate")

    return execute(STEP, body, config, inputs, run_id=run_id, store=store, logical_date=logical_date,
                   config_sections=("compress", "evaluate"), track=track)


class CompressFacts(StepFacts):
    """The final gate verdict, the served variant (its ONNX file or student model, in this step's outputs),
    every variant's figures, and the champion the candidate was compared with."""

    gate: GateFacts
    serving_variant: str
    serving_artifact: str | None
    serving_model: str | None
    variants: dict[str, dict[str, Any]]
    champion_version: str | None


def record_compression(context: StepContext, variants: Mapping[str, Mapping[str, Any]], serving_variant: str,
                       gate: GateFacts) -> None:
    """The compression table and the final gate verdict as reports, each variant's ratios and deltas as metrics,
    the served variant (and its artifact or model) as facts."""
    serving_artifact = ONNX_OUTPUTS[serving_variant][0] if serving_variant in ONNX_OUTPUTS else None
    serving_model = STUDENT_OUTPUT[0] if serving_variant == DISTILLED else None
    (context.out_dir / "compression.json").write_text(json.dumps(
        {"variants": variants, "serving_variant": serving_variant, "serving_artifact": serving_artifact,
         "serving_model": serving_model}, indent=2))
    (context.out_dir / "gate.json").write_text(json.dumps(gate.model_dump(), indent=2))
    context.add_output("compression", "compression.json", "report")
    context.add_output("gate", "gate.json", "report")
    for variant, facts in variants.items():
        if not facts.get("applicable", True):
            continue
        context.metrics[f"{variant}.size_ratio"] = facts["size_ratio"]
        context.metrics[f"{variant}.latency_ratio_batch1"] = facts["latency_ratio_batch1"]
        context.metrics[f"{variant}.latency_ratio_batch32"] = facts["latency_ratio_batch32"]
        for name, delta in facts["macro_f1_delta"].items():
            context.metrics[f"{variant}.{name}.macro_f1_delta"] = delta
    context.metrics["serving_variant"] = serving_variant
    context.metrics["gate_passed"] = gate.passed
    context.facts.update(CompressFacts(
        gate=gate, serving_variant=serving_variant, serving_artifact=serving_artifact, serving_model=serving_model,
        variants={name: dict(figures) for name, figures in variants.items()},
        champion_version=EvaluateFacts.of(context.input("evaluate")).champion_version).dump())


def main(argv: list[str] | None = None) -> int:
    return cli(STEP, run, argv, __doc__)


if __name__ == "__main__":
    raise SystemExit(main())
