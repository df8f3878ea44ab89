"""Evaluate the candidate against the registry's champion on the test slices, then gate it.

Slices (never containing augmented rows): `frozen` = the test split of the first accepted
snapshot, `fresh` = this snapshot's test split, `old` = the test splits of every earlier snapshot
(forgetting). The champion is scored on the same rows; the gate policy decides (tasks.gate_policy).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import mlflow

from tasks import model_registry
from tasks.config import GatePolicy, PipelineConfig
from tasks.contract import StepContext, cli, execute
from tasks.gate_policy import (
    BOOTSTRAP_METRICS,
    BestScore,
    PairedComparison,
    SliceMetrics,
    Verdict,
    compare_paired,
    judge_candidate,
)
from tasks.label_set import run_labels
from tasks.manifest import Manifest
from tasks.models.build import load_classifier, model_labels, model_size_bytes
from tasks.models.inference import measure_latency
from tasks.models.metrics import score
from tasks.records import evaluation_slices, write_parquet
from tasks.store import ArtifactStore

STEP = "evaluate"
log = logging.getLogger("freshet.evaluate")


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


def gate_report(verdict: Verdict, candidate: Mapping[str, Any], champion: Mapping[str, Any] | None,
                champion_version: str | None, title: str,
                paired: Mapping[str, PairedComparison] | None = None, new_classes: Sequence[str] = ()) -> str:
    lines = [f"# {title}", "", f"**Verdict: {'PASS' if verdict.passed else 'REJECT'}**", ""]
    if verdict.reasons:
        lines += ["Reasons:", *[f"- {reason}" for reason in verdict.reasons], ""]
    if new_classes and champion is not None:
        lines += [("New classes (the champion never had them; scored for the candidate, not compared per class): "
                   + ", ".join(new_classes)), ""]
    lines += [f"Champion compared: {('version ' + champion_version) if champion_version else 'none (first run: floors only)'}", "",
              "| slice | rows | candidate macro-F1 | champion macro-F1 | candidate accuracy | candidate ECE |",
              "|---|---|---|---|---|---|"]
    for name, metrics in candidate.items():
        champion_f1 = champion.get(name, {}).get("macro_f1") if champion else None
        ece = metrics.get("ece")
        lines.append(f"| {name} | {metrics['rows']} | {metrics['macro_f1']:.4f} | "
                     f"{'-' if champion_f1 is None else f'{champion_f1:.4f}'} | {metrics['accuracy']:.4f} | "
                     f"{'-' if ece is None else f'{ece:.4f}'} |")
    if paired:
        lines += ["", "Paired comparison on the same rows (candidate - champion; percentile bootstrap, exact McNemar):", "",
                  "| slice | metric | difference | CI low | CI high | only candidate right | only champion right | McNemar p |",
                  "|---|---|---|---|---|---|---|---|"]
        for name, comparison in paired.items():
            lines.append(f"| {name} | {comparison.metric} | {comparison.difference:+.4f} | {comparison.ci_low:+.4f} | "
                         f"{comparison.ci_high:+.4f} | {comparison.candidate_only_correct} | "
                         f"{comparison.champion_only_correct} | {comparison.mcnemar_p_value:.3g} |")
    lines += ["", "| check | value | threshold | verdict |", "|---|---|---|---|"]
    for check in verdict.checks:
        value = "-" if check.value is None else f"{check.value:.4f}"
        lines.append(f"| {check.name} | {value} | {check.comparison} {check.threshold:.4f} | {check.verdict} |")
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
                   labels: list[str], settings: dict[str, Any]) -> tuple[SliceMetrics, dict[str, Any], list[str]]:
    """The champion on the candidate's slices: its metrics, its predictions (ids in the run's label set) and the
    run's classes it never had. A champion from before the label set grew predicts over fewer classes: mapped
    by name."""
    champion_dir = model_registry.download_model_dir(config, champion_version)
    champion_model, tokenizer = load_classifier(champion_dir, trust_remote_code=config.train.trust_remote_code)
    champion_labels = model_labels(champion_model)
    new_classes = [label for label in labels if label not in champion_labels]
    metrics, predicted = score(champion_model, tokenizer, slices, labels, model_labels=champion_labels, **settings)
    return metrics, predicted, new_classes


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
                  paired: Mapping[str, PairedComparison]) -> dict[str, Any]:
    """The manifest's (and MLflow's) flat metrics per slice: the candidate's, the champion's, the paired bounds."""
    metrics: dict[str, Any] = {}
    for name, values in candidate.items():
        metrics[f"candidate.{name}.macro_f1"] = values["macro_f1"]
        metrics[f"candidate.{name}.accuracy"] = values["accuracy"]
        metrics[f"{name}.rows"] = values["rows"]
        metrics[f"candidate.{name}.ece"] = values["ece"]
        if champion:
            metrics[f"champion.{name}.macro_f1"] = champion[name]["macro_f1"]
        if name in paired:
            metrics[f"paired.{name}.ci_low"] = paired[name].ci_low
            metrics[f"paired.{name}.ci_high"] = paired[name].ci_high
            metrics[f"paired.{name}.mcnemar_p"] = paired[name].mcnemar_p_value
    return metrics


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
        labels = run_labels(config, context.input("clean"), store)
        slices = evaluation_slices(context.input("clean"), store)
        remote = config.train.trust_remote_code
        candidate_model, tokenizer = load_classifier(context.input_path("train", "model"), trust_remote_code=remote)
        settings = {"max_length": config.train.max_length, "batch_size": config.evaluate.batch_size,
                        "calibration_bins": config.evaluate.calibration_bins}
        candidate, candidate_predicted = score(candidate_model, tokenizer, slices, labels,
                                               model_labels=model_labels(candidate_model), **settings)
        champion_metrics, champion_predicted, paired = None, None, {}
        new_classes: list[str] = []
        if champion_version is not None:
            champion_metrics, champion_predicted, new_classes = score_champion(
                config, champion_version, slices, labels, settings)
            paired = paired_comparisons(policy, slices, labels, candidate_predicted, champion_predicted)

        sample = [row["text"] for row in slices["fresh"][:16]] or [row["text"] for row in slices["frozen"][:16]]
        model_size = model_size_bytes(candidate_model)
        latency = measure_latency(candidate_model, tokenizer, sample, max_length=config.train.max_length)
        best_frozen = best_champion_so_far(recorded_best, champion_metrics, champion_version, policy.primary_metric)
        verdict = judge_candidate(policy, candidate, champion_metrics, paired=paired, latency=latency,
                                  best_frozen=best_frozen, new_classes=new_classes)
        evaluation = {"candidate": candidate, "champion": champion_metrics, "champion_version": champion_version,
                      "labels": labels, "new_classes": new_classes,
                      "best_frozen": best_frozen.model_dump() if best_frozen else None,
                      "paired": {name: comparison.model_dump() for name, comparison in paired.items()},
                      "latency": latency, "size_bytes": model_size}
        (context.out_dir / "evaluation.json").write_text(json.dumps(evaluation, indent=2))
        (context.out_dir / "gate.json").write_text(json.dumps(verdict.summary(), indent=2))
        (context.out_dir / "report.md").write_text(
            gate_report(verdict, candidate, champion_metrics, champion_version, f"Candidate evaluation, run {run_id}",
                        paired, new_classes))
        confusion_png(candidate["frozen"]["confusion_matrix"], labels, "candidate, frozen test",
                      context.out_dir / "confusion_frozen.png")
        write_predictions(context.out_dir / "predictions.parquet", slices, labels, candidate_predicted,
                          champion_predicted)
        context.add_output("evaluation", "evaluation.json", "report")
        context.add_output("gate", "gate.json", "report")
        context.add_output("report", "report.md", "report")
        context.add_output("confusion_matrix", "confusion_frozen.png", "file")
        context.add_output("predictions", "predictions.parquet", "dataset",
                           rows=sum(len(rows) for rows in slices.values()))
        context.metrics.update(slice_metrics(candidate, champion_metrics, paired))
        context.metrics.update(latency)
        context.metrics["size_bytes"] = model_size
        context.metrics["gate_passed"] = verdict.passed
        context.metrics["num_labels"] = len(labels)
        context.facts.update({"gate": verdict.summary(), "champion_version": champion_version, "labels": labels,
                              "new_classes": new_classes})

    def track(manifest: Manifest) -> None:
        for name in ("evaluation", "gate", "report", "confusion_matrix"):
            mlflow.log_artifact(str(store.local_path(manifest.output(name).uri)), artifact_path="evaluation")

    manifest = execute(STEP, body, config, inputs, run_id=run_id, store=store, logical_date=logical_date,
                       config_sections=("evaluate", "train"),
                       extra_fingerprint={"champion_version": champion_version, "recorded_best": recorded_best},
                       track=track)
    verdict = manifest.facts["gate"]
    log.info("gate: %s%s", "PASS" if verdict["passed"] else "REJECT",
             "" if verdict["passed"] else " - " + "; ".join(verdict["reasons"]))
    return manifest


def main(argv: list[str] | None = None) -> int:
    return cli(STEP, run, argv, __doc__)


if __name__ == "__main__":
    raise SystemExit(main())
