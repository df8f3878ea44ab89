"""Evaluate the candidate against the registry's champion on the test slices, then gate it.

Slices (never containing augmented rows): `frozen` = the test split of the first accepted
snapshot, `fresh` = this snapshot's test split, `old` = the test splits of every earlier snapshot
(forgetting). The champion is scored on the same rows; the gate policy decides (tasks.gate_policy).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
from pydantic import field_serializer

from tasks import model_registry
from tasks.config import GatePolicy, PipelineConfig
from tasks.contract import StepContext, cli, execute
from tasks.gate_policy import (
    BOOTSTRAP_METRICS,
    BestScore,
    GateFacts,
    PairedComparison,
    SliceMetrics,
    Verdict,
    compare_paired,
    judge_candidate,
)
from tasks.label_set import run_labels
from tasks.manifest import Manifest, StepFacts
from tasks.models.blend import Blend, choose_weight, load_blend
from tasks.models.build import load_classifier, model_labels, model_size_bytes
from tasks.models.inference import measure_latency, predict
from tasks.models.lexical import BaselineSkipped, LexicalModel
from tasks.models.metrics import slice_probabilities, slice_scores
from tasks.records import evaluation_slices, read_rows, write_parquet
from tasks.store import ArtifactStore

STEP = "evaluate"
log = logging.getLogger("freshet.evaluate")


class EvaluateFacts(StepFacts):
    """The rows the lexical baseline was fitted on (when it read the candidate's), the gate's verdict on the
    candidate, the champion it was compared with, the run's labels and the classes the champion never had, the
    served blend weight, and why no baseline was fitted (None: one was)."""

    baseline_train_rows: int | None = None
    gate: GateFacts
    champion_version: str | None
    labels: list[str]
    new_classes: list[str]
    blend_weight: float
    baseline_skipped: str | None

    @field_serializer("gate")
    def _candidate_gate(self, gate: GateFacts) -> dict[str, Any]:
        # The candidate's verdict has no serving variant: compress chooses one and adds it to its own.
        return gate.model_dump(exclude={"serving_variant"})


def paired_comparisons(policy: GatePolicy, slices: Mapping[str, Sequence[dict[str, Any]]], labels: Sequence[str],
                       candidate: Mapping[str, Sequence[int]], champion: Mapping[str, Sequence[int]],
                       ) -> dict[str, PairedComparison]:
    """Bootstrap CI and McNemar per non-empty slice, both models' predictions on the same rows."""
    if policy.primary_metric not in BOOTSTRAP_METRICS:
        return {}
    index = {label: position for position, label in enumerate(labels)}
    return {name: compare_paired([index[row["label"]] for row in rows], candidate[name], champion[name], len(labels),
                                 metric=policy.primary_metric, resamples=policy.bootstrap_resamples,
                                 confidence=policy.confidence_level, seed=policy.bootstrap_seed)
            for name, rows in slices.items() if rows}


def confusion_png(matrix: Sequence[Sequence[int]], labels: Sequence[str], title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(1.0 + 0.6 * len(labels), 0.8 + 0.55 * len(labels)))
    axis.imshow(matrix, cmap="Blues")
    axis.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    axis.set_yticks(range(len(labels)), labels)
    axis.set_xlabel("predicted")
    axis.set_ylabel("true")
    axis.set_title(title)
    for row, values in enumerate(matrix):
        for column, value in enumerate(values):
            axis.text(column, row, str(value), ha="center", va="center", fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def _f1(metrics: Mapping[str, Any] | None, name: str) -> str:
    value = (metrics or {}).get(name, {}).get("macro_f1")
    return "-" if value is None else f"{value:.4f}"


def _paired_table(title: str, paired: Mapping[str, PairedComparison], other: str) -> list[str]:
    lines = ["", title, "",
             f"| slice | metric | difference | CI low | CI high | only candidate right | only {other} right | McNemar p |",
             "|---|---|---|---|---|---|---|---|"]
    for name, comparison in paired.items():
        lines.append(f"| {name} | {comparison.metric} | {comparison.difference:+.4f} | {comparison.ci_low:+.4f} | "
                     f"{comparison.ci_high:+.4f} | {comparison.candidate_only_correct} | "
                     f"{comparison.champion_only_correct} | {comparison.mcnemar_p_value:.3g} |")
    return lines


def gate_report(verdict: Verdict, candidate: Mapping[str, Any], champion: Mapping[str, Any] | None,
                champion_version: str | None, title: str,
                paired: Mapping[str, PairedComparison] | None = None, new_classes: Sequence[str] = (), *,
                transformer: Mapping[str, Any] | None = None, baseline: Mapping[str, Any] | None = None,
                over_baseline: Mapping[str, PairedComparison] | None = None,
                blend: Mapping[str, Any] | None = None) -> str:
    """The evaluation report (Markdown): the candidate (what would be served), the transformer alone, the lexical
    baseline and the champion per slice, the paired comparisons, and every gate check."""
    lines = [f"# {title}", "", f"**Verdict: {'PASS' if verdict.passed else 'REJECT'}**", ""]
    if verdict.reasons:
        lines += ["Reasons:", *[f"- {reason}" for reason in verdict.reasons], ""]
    if new_classes and champion is not None:
        lines += [("New classes (the champion never had them; judged on their own rows, left out of the champion "
                   "comparisons): " + ", ".join(new_classes)), ""]
    if blend is not None:
        weight = blend.get("weight", 1.0)
        served = ("the transformer alone" if weight >= 1.0 else "the TF-IDF baseline alone" if weight <= 0.0
                  else f"{weight:.2f} x transformer + {1 - weight:.2f} x TF-IDF baseline")
        lines += [f"Served candidate: {served} ({blend.get('reason', '')}).", ""]
    lines += [f"Champion compared: {('version ' + champion_version) if champion_version else 'none (first run: floors only)'}", "",
              ("| slice | rows | candidate macro-F1 | transformer alone | TF-IDF baseline | champion macro-F1 | "
               "candidate accuracy | candidate ECE |"),
              "|---|---|---|---|---|---|---|---|"]
    for name, metrics in candidate.items():
        ece = metrics.get("ece")
        lines.append(f"| {name} | {metrics['rows']} | {metrics['macro_f1']:.4f} | {_f1(transformer, name)} | "
                     f"{_f1(baseline, name)} | {_f1(champion, name)} | {metrics['accuracy']:.4f} | "
                     f"{'-' if ece is None else f'{ece:.4f}'} |")
    if paired:
        lines += _paired_table("Paired comparison on the same rows (candidate - champion; percentile bootstrap, "
                               "exact McNemar):", paired, "champion")
    if over_baseline:
        lines += _paired_table("Paired comparison with the TF-IDF + logistic-regression baseline fitted on the same "
                               "train rows (candidate - baseline):", over_baseline, "baseline")
    lines += ["", "| check | value | bound | verdict |", "|---|---|---|---|"]
    for check in verdict.checks:
        value = "-" if check.value is None else f"{check.value:.4f}"
        bound = "-" if check.bound is None else f"{check.comparison} {check.bound:.4f}"
        lines.append(f"| {check.name} | {value} | {bound} | {check.verdict} |")
    return "\n".join(lines) + "\n"


def best_champion_so_far(recorded: tuple[float, str] | None, champion: Mapping[str, Any] | None,
                         champion_version: str | None, metric: str) -> BestScore | None:
    """The higher of the registry's record and the current champion's score on today's frozen slice."""
    candidates = [recorded] if recorded else []
    if champion is not None and champion_version is not None and "frozen" in champion:
        candidates.append((champion["frozen"][metric], champion_version))
    if not candidates:
        return None
    value, version = max(candidates)
    return BestScore(value=value, version=version)


def score_champion(config: PipelineConfig, champion_version: str, slices: Mapping[str, list[dict[str, Any]]],
                   labels: list[str], settings: dict[str, Any]) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray],
                                                                           list[str]]:
    """The champion as it is served (with its blend, if it has one) on the candidate's slices: probabilities and
    predicted ids in the run's label set, and the run's classes it never had. A champion from before the label
    set grew predicts over fewer classes: mapped by name."""
    champion_dir = model_registry.download_model_dir(config, champion_version)
    champion_model, tokenizer = load_classifier(champion_dir, trust_remote_code=config.train.trust_remote_code)
    champion_labels = model_labels(champion_model)
    new_classes = [label for label in labels if label not in champion_labels]
    probabilities, label_ids = slice_probabilities(
        champion_model, tokenizer, slices, labels, model_labels=champion_labels,
        blend=load_blend(model_registry.blend_dir(config, champion_version)), **settings)
    return probabilities, label_ids, new_classes


def fit_baseline(config: PipelineConfig, context: StepContext, labels: list[str]
                 ) -> tuple[LexicalModel | None, str, int | None]:
    """The lexical baseline on the candidate's exact train rows (less self-training's pseudo-labelled ones: the
    anchor learns from the same labels), or None and why it could not be fitted; and how many rows it read."""
    if config.evaluate.baseline is None:
        return None, "evaluate.baseline is null", None
    if "train_rows" not in context.input("train").outputs:
        return None, "the train step recorded no train_rows (a model trained before freshet kept them)", None
    rows = [row for row in read_rows(context.input_path("train", "train_rows")) if not row.get("pseudo_label")]
    try:
        return LexicalModel.fit([row["text"] for row in rows], [row["label"] for row in rows], labels,
                                config.evaluate.baseline), "", len(rows)
    except BaselineSkipped as reason:
        log.warning("evaluate: lexical baseline skipped: %s", reason)
        return None, str(reason), len(rows)


def choose_blend(config: PipelineConfig, context: StepContext, lexical: LexicalModel, model: Any, tokenizer: Any,
                 labels: list[str]) -> tuple[Blend | None, dict[str, Any]]:
    """The transformer's weight in the served blend, chosen on the trainer's validation rows (log-loss); None
    where the transformer alone is served (blend off, no validation rows, or weight 1)."""
    if not config.evaluate.blend:
        return None, {"weight": 1.0, "reason": "evaluate.blend is false"}
    rows = (read_rows(context.input_path("train", "validation_rows"))
            if "validation_rows" in context.input("train").outputs else [])
    index = {label: position for position, label in enumerate(labels)}
    rows = [row for row in rows if row["label"] in index]
    if not rows:
        return None, {"weight": 1.0, "reason": "no validation rows to choose a blend weight on"}
    texts = [row["text"] for row in rows]
    transformer = predict(model, tokenizer, texts, max_length=config.train.max_length,
                          batch_size=config.evaluate.batch_size).probabilities
    choice = choose_weight([index[row["label"]] for row in rows], transformer, lexical.predict_proba(texts),
                           config.evaluate.blend_grid)
    facts = {"weight": choice.weight, "validation_rows": len(rows), "validation_log_loss": choice.log_loss,
             "transformer_temperature": choice.transformer_temperature,
             "lexical_temperature": choice.lexical_temperature, "grid": choice.grid,
             "reason": "each model calibrated by a temperature, then the weight of lowest log-loss on the trainer's "
                       "validation rows"}
    if choice.weight >= 1.0:
        return None, facts
    return Blend(choice.weight, lexical, choice.transformer_temperature, choice.lexical_temperature), facts


def known_class_rows(slices: Mapping[str, list[dict[str, Any]]], new_classes: Sequence[str],
                     ) -> dict[str, list[int]]:
    """Per slice, the positions of rows whose class the champion knows: what the champion comparisons read."""
    return {name: [position for position, row in enumerate(rows) if row["label"] not in new_classes]
            for name, rows in slices.items()}


def write_predictions(path: Path, slices: Mapping[str, list[dict[str, Any]]], labels: list[str],
                      candidate: Mapping[str, Any], champion: Mapping[str, Any] | None) -> None:
    """Every slice row with the candidate's prediction and the champion's (None without a champion)."""
    def name_of(label_id: int) -> str | None:  # -1: a champion label the run no longer has
        return labels[label_id] if label_id >= 0 else None

    write_parquet([{"slice": name, "id": row["id"], "text": row["text"], "label": row["label"],
                    "predicted": name_of(predicted),
                    "champion_predicted": name_of(champion[name][position]) if champion else None}
                   for name in slices
                   for position, (row, predicted) in enumerate(zip(slices[name], candidate[name]))], path)


def slice_metrics(candidate: SliceMetrics, champion: SliceMetrics | None,
                  paired: Mapping[str, PairedComparison], transformer: SliceMetrics | None = None,
                  baseline: SliceMetrics | None = None,
                  over_baseline: Mapping[str, PairedComparison] | None = None) -> dict[str, Any]:
    """The manifest's (and MLflow's) flat metrics per slice: the candidate's (what would be served), the
    transformer alone, the lexical baseline, the champion's, and the paired bounds."""
    metrics: dict[str, Any] = {}
    for name, values in candidate.items():
        metrics[f"candidate.{name}.macro_f1"] = values["macro_f1"]
        metrics[f"candidate.{name}.accuracy"] = values["accuracy"]
        metrics[f"{name}.rows"] = values["rows"]
        metrics[f"candidate.{name}.ece"] = values["ece"]
        if transformer:
            metrics[f"transformer.{name}.macro_f1"] = transformer[name]["macro_f1"]
        if baseline:
            metrics[f"baseline.{name}.macro_f1"] = baseline[name]["macro_f1"]
        if champion:
            metrics[f"champion.{name}.macro_f1"] = champion[name]["macro_f1"]
        if name in paired:
            metrics[f"paired.{name}.difference"] = paired[name].difference
            metrics[f"paired.{name}.ci_low"] = paired[name].ci_low
            metrics[f"paired.{name}.ci_high"] = paired[name].ci_high
            metrics[f"paired.{name}.mcnemar_p"] = paired[name].mcnemar_p_value
        if over_baseline and name in over_baseline:
            metrics[f"over_baseline.{name}.difference"] = over_baseline[name].difference
            metrics[f"over_baseline.{name}.ci_low"] = over_baseline[name].ci_low
            metrics[f"over_baseline.{name}.ci_high"] = over_baseline[name].ci_high
    return metrics


@dataclass
class CandidateScores:
    """The candidate as it would be served (blended with the baseline or not), the transformer alone and the
    lexical baseline, per slice; `served` holds the served probabilities, `predicted` their label ids."""

    candidate: SliceMetrics
    predicted: dict[str, list[int]]
    served: dict[str, np.ndarray]
    transformer: SliceMetrics
    baseline: SliceMetrics | None
    baseline_predicted: dict[str, list[int]] | None
    baseline_skipped: str
    blend: Blend | None
    blend_facts: dict[str, Any]
    baseline_train_rows: int | None


def score_candidate(config: PipelineConfig, context: StepContext, model: Any, tokenizer: Any,
                    slices: Mapping[str, list[dict[str, Any]]], labels: list[str],
                    settings: dict[str, Any]) -> CandidateScores:
    bins = config.evaluate.calibration_bins
    transformer_probabilities, _ = slice_probabilities(model, tokenizer, slices, labels,
                                                       model_labels=model_labels(model), **settings)
    lexical, baseline_skipped, baseline_train_rows = fit_baseline(config, context, labels)
    blend: Blend | None = None
    blend_facts: dict[str, Any] = {"weight": 1.0, "reason": f"no lexical baseline: {baseline_skipped}"}
    if lexical is not None:
        blend, blend_facts = choose_blend(config, context, lexical, model, tokenizer, labels)
    texts = {name: [row["text"] for row in rows] for name, rows in slices.items()}
    served = ({name: blend.mix(texts[name], values) for name, values in transformer_probabilities.items()}
              if blend is not None else transformer_probabilities)
    candidate, predicted = slice_scores(slices, served, labels, calibration_bins=bins)
    transformer = (slice_scores(slices, transformer_probabilities, labels, calibration_bins=bins)[0]
                   if blend is not None else candidate)
    baseline, baseline_predicted = (slice_scores(slices, {name: lexical.predict_proba(texts[name]) for name in slices},
                                                 labels, calibration_bins=bins)
                                    if lexical is not None else (None, None))
    return CandidateScores(candidate, predicted, served, transformer, baseline, baseline_predicted, baseline_skipped,
                           blend, blend_facts, baseline_train_rows)


@dataclass
class ChampionComparison:
    """The champion as served on the rows of the classes it knows, and the candidate on the same rows."""

    metrics: SliceMetrics | None = None
    predicted: dict[str, list[int]] | None = None  # every row, for predictions.parquet
    compared: SliceMetrics | None = None  # the candidate on the champion's rows
    paired: dict[str, PairedComparison] = field(default_factory=dict)
    new_classes: list[str] = field(default_factory=list)


def compare_with_champion(config: PipelineConfig, champion_version: str | None,
                          slices: Mapping[str, list[dict[str, Any]]], labels: list[str], settings: dict[str, Any],
                          served: Mapping[str, np.ndarray]) -> ChampionComparison:
    if champion_version is None:
        return ChampionComparison()
    bins = config.evaluate.calibration_bins
    probabilities, ids, new_classes = score_champion(config, champion_version, slices, labels, settings)
    predicted = {name: [int(value) for value in values] for name, values in ids.items()}
    known = known_class_rows(slices, new_classes)
    known_slices = {name: [slices[name][i] for i in known[name]] for name in slices}
    compared, compared_predicted = slice_scores(known_slices, {name: served[name][known[name]] for name in slices},
                                                labels, calibration_bins=bins)
    metrics, _ = slice_scores(known_slices, {name: probabilities[name][known[name]] for name in slices}, labels,
                              calibration_bins=bins, label_ids={name: ids[name][known[name]] for name in slices})
    paired = paired_comparisons(config.evaluate.gate, known_slices, labels, compared_predicted,
                                {name: [predicted[name][i] for i in known[name]] for name in slices})
    return ChampionComparison(metrics, predicted, compared, paired, new_classes)


def record(context: StepContext, scores: CandidateScores, champion: ChampionComparison,
           over_baseline: Mapping[str, PairedComparison] | None, verdict: Verdict, labels: list[str],
           slices: Mapping[str, list[dict[str, Any]]], title: str, champion_version: str | None) -> None:
    """The report files and the manifest's outputs (everything but evaluation.json)."""
    out = context.out_dir
    if scores.blend is not None:
        scores.blend.save(out / "blend")
        context.add_output("blend", "blend", "model", weight=scores.blend.weight)
    (out / "gate.json").write_text(json.dumps(verdict.summary(), indent=2))
    (out / "report.md").write_text(gate_report(
        verdict, scores.candidate, champion.metrics, champion_version, title, champion.paired,
        champion.new_classes, transformer=scores.transformer if scores.blend is not None else None,
        baseline=scores.baseline, over_baseline=over_baseline, blend=scores.blend_facts))
    confusion_png(scores.candidate["frozen"]["confusion_matrix"], labels, "candidate, frozen test",
                  out / "confusion_frozen.png")
    write_predictions(out / "predictions.parquet", slices, labels, scores.predicted, champion.predicted)
    context.add_output("evaluation", "evaluation.json", "report")
    context.add_output("gate", "gate.json", "report")
    context.add_output("report", "report.md", "report")
    context.add_output("confusion_matrix", "confusion_frozen.png", "file")
    context.add_output("predictions", "predictions.parquet", "dataset", rows=sum(len(rows) for rows in slices.values()))


def new_class_fates(facts: EvaluateFacts) -> dict[str, str]:
    """Per class the champion never had: how the gate judged it on its own rows, and the round's verdict (an MLflow
    tag of the evaluate run, so the audit shows what happened to a new label without opening the manifest)."""
    verdict = "gate passed" if facts.gate.passed else "gate rejected the candidate"
    return {label: "; ".join([*(f"{check.name} {check.verdict} ({check.detail})" for check in facts.gate.checks
                               if check.name.startswith(f"new_class:{label}:")), verdict])
            for label in facts.new_classes}


def evaluation_report(scores: CandidateScores, versus: ChampionComparison, champion_version: str | None,
                      labels: list[str], best_frozen: BestScore | None,
                      over_baseline: Mapping[str, PairedComparison] | None, latency: Mapping[str, Any],
                      size_bytes: int) -> dict[str, Any]:
    """evaluation.json: every model's scores per slice, the comparisons, the best champion so far, latency, size."""
    return {
        "candidate": scores.candidate, "transformer": scores.transformer, "baseline": scores.baseline,
        "baseline_skipped": scores.baseline_skipped or None, "blend": scores.blend_facts,
        "champion": versus.metrics, "champion_version": champion_version, "compared": versus.compared,
        "labels": labels, "new_classes": versus.new_classes,
        "best_frozen": best_frozen.model_dump() if best_frozen else None,
        "paired": {name: comparison.model_dump() for name, comparison in versus.paired.items()},
        "over_baseline": {name: comparison.model_dump() for name, comparison in (over_baseline or {}).items()},
        "latency": latency, "size_bytes": size_bytes}


def evaluate_candidate(config: PipelineConfig, context: StepContext, champion_version: str | None,
                       recorded_best: tuple[float, str] | None) -> None:
    """The step's body: score the candidate (and the baseline, and the blend), compare it with the champion on
    the same rows, judge it by the gate policy, and write the report, the facts and the metrics."""
    policy = config.evaluate.gate
    labels = run_labels(config, context.input("clean"), context.store)
    slices = evaluation_slices(context.input("clean"), context.store)
    model, tokenizer = load_classifier(context.input_path("train", "model"),
                                       trust_remote_code=config.train.trust_remote_code)
    settings: dict[str, Any] = {"max_length": config.train.max_length, "batch_size": config.evaluate.batch_size}
    scores = score_candidate(config, context, model, tokenizer, slices, labels, settings)
    versus = compare_with_champion(config, champion_version, slices, labels, settings, scores.served)
    over_baseline = (paired_comparisons(policy, slices, labels, scores.predicted, scores.baseline_predicted)
                     if scores.baseline_predicted is not None else None)
    sample = [row["text"] for row in (slices.get("fresh") or slices.get("frozen") or [])[:16]]
    latency = measure_latency(model, tokenizer, sample, max_length=config.train.max_length)
    best_frozen = best_champion_so_far(recorded_best, versus.metrics, champion_version, policy.primary_metric)
    verdict = judge_candidate(policy, scores.candidate, versus.metrics, paired=versus.paired, latency=latency,
                              best_frozen=best_frozen, new_classes=versus.new_classes, compared=versus.compared,
                              baseline=over_baseline, baseline_skipped=scores.baseline_skipped or None)
    facts = EvaluateFacts(gate=verdict.facts(), champion_version=champion_version, labels=labels,
                          new_classes=versus.new_classes, blend_weight=scores.blend_facts["weight"],
                          baseline_skipped=scores.baseline_skipped or None)
    if scores.baseline_train_rows is not None:
        facts.baseline_train_rows = scores.baseline_train_rows
    context.facts.update(facts.dump())
    size_bytes = model_size_bytes(model)
    (context.out_dir / "evaluation.json").write_text(json.dumps(evaluation_report(
        scores, versus, champion_version, labels, best_frozen, over_baseline, latency, size_bytes), indent=2))
    record(context, scores, versus, over_baseline, verdict, labels, slices, f"Candidate evaluation, run "
           f"{context.run_id}", champion_version)
    context.metrics.update(slice_metrics(scores.candidate, versus.metrics, versus.paired, scores.transformer,
                                         scores.baseline, over_baseline))
    context.metrics.update(latency)
    context.metrics.update({"blend_weight": scores.blend_facts["weight"], "size_bytes": size_bytes,
                            "gate_passed": verdict.passed, "num_labels": len(labels)})


def run(config: PipelineConfig, inputs: dict[str, Manifest], *, run_id: str, store: ArtifactStore,
        logical_date: str | None = None) -> Manifest:
    champion = model_registry.version_by_alias(config, model_registry.CHAMPION)
    champion_version = str(champion.version) if champion else None
    policy = config.evaluate.gate
    recorded_best = None
    if champion_version is not None and policy.max_drop_below_best is not None:
        recorded_best = model_registry.best_champion_score(model_registry.client(config), config.mlflow.model_name,
                                                           f"candidate.frozen.{policy.primary_metric}")

    def body(context: StepContext) -> None:
        evaluate_candidate(config, context, champion_version, recorded_best)

    def track(manifest: Manifest) -> None:
        for name in ("evaluation", "gate", "report", "confusion_matrix"):
            mlflow.log_artifact(str(store.local_path(manifest.output(name).uri)), artifact_path="evaluation")
        if "blend" in manifest.outputs:
            mlflow.log_artifacts(str(store.local_path(manifest.output("blend").uri)), artifact_path="evaluation/blend")
        facts = EvaluateFacts.of(manifest)
        if facts.new_classes:
            mlflow.set_tag("freshet.new_classes", json.dumps(new_class_fates(facts)))

    manifest = execute(STEP, body, config, inputs, run_id=run_id, store=store, logical_date=logical_date,
                       config_sections=("evaluate", "train"),
                       extra_fingerprint={"champion_version": champion_version, "recorded_best": recorded_best},
                       track=track)
    gate = EvaluateFacts.of(manifest).gate
    log.info("gate: %s%s", "PASS" if gate.passed else "REJECT", "" if gate.passed else " - " + "; ".join(gate.reasons))
    return manifest


def main(argv: list[str] | None = None) -> int:
    return cli(STEP, run, argv, __doc__)


if __name__ == "__main__":
    raise SystemExit(main())
