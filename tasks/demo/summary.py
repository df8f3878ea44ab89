"""The demo's summary in words: what each day's run did (data, decision, training, scores, gate, release, new
labels) and what production saw (batch scoring, the monitor), read from the runs' manifests through the steps'
facts types."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Sequence
from typing import Any

from tasks.compress import CompressFacts
from tasks.contract import read_manifest
from tasks.decide import DecideFacts
from tasks.evaluate import EvaluateFacts
from tasks.manifest import Manifest
from tasks.monitor import MonitorFacts
from tasks.pipeline import PIPELINE_STEP_NAMES as STEP_NAMES
from tasks.promote import PromoteFacts
from tasks.register import RegisterFacts
from tasks.score import ScoreFacts
from tasks.store import ArtifactStore
from tasks.train import TrainFacts
from tasks.validate import ValidateFacts


def _f1(value) -> str:
    return "   -  " if value is None else f"{value:.3f}"


def describe_model(train: Manifest) -> str:
    """Which encoder a train step used and how it trained (family, max length, inputs, precision and why)."""
    facts = TrainFacts.of(train)
    return (f"  model: {facts.model.source} ({facts.model.family}, max length limit {facts.model.max_length_limit}, "
            f"inputs {', '.join(facts.model.input_names)}); precision {facts.precision.precision}: "
            f"{facts.precision.reason}")


def training_lines(train: Manifest) -> list[str]:
    """The encoder and precision, the steps, rows and speed, and the champion it warm-started from."""
    metrics = train.metrics
    return [describe_model(train),
            (f"  trained {metrics.get('steps')} steps on {metrics.get('rows_train')} rows ({metrics.get('rows_replay')}"
            f" replayed), {metrics.get('samples_per_second', 0):.0f} samples/s, warm start from version"
            f" {TrainFacts.of(train).champion_version}")]


def quoted(labels: Sequence[str]) -> str:
    return ", ".join(json.dumps(label, ensure_ascii=False) for label in labels)


def quarantine_reasons(store: ArtifactStore, manifests: dict[str, Manifest], top: int = 3) -> list[str]:
    """The commonest reasons in the run's quarantine (validate's, which carries the crawl's; the crawl's alone
    when validate did not commit), with counts: the console says why, not only how many."""
    import pyarrow.parquet as pq

    owner = next((manifests[step] for step in ("validate", "crawl")
                  if step in manifests and "quarantine" in manifests[step].outputs), None)
    if owner is None or not owner.outputs["quarantine"].rows:
        return []
    path = store.local_path(owner.output("quarantine").uri)
    table = pq.read_table(str(path), columns=[name for name in ("step", "check", "field", "reason")
                                              if name in pq.read_schema(str(path)).names])
    # One group per check on a field (a duplicate id's reason names the id, so reasons alone would not group).
    groups: dict[tuple[Any, ...], list[str]] = {}
    for row in table.to_pylist():
        groups.setdefault((row.get("step"), row.get("check"), row.get("field")), []).append(str(row.get("reason")))
    ranked = sorted(groups.items(), key=lambda item: -len(item[1]))
    lines = [f"  quarantine reasons ({table.num_rows} row(s); {path}):"]
    for (step, check, field), reasons in ranked[:top]:
        same = len(set(reasons)) == 1
        lines.append(f"    {len(reasons)} x {reasons[0]}" if same else
                     f"    {len(reasons)} x {step} {check} on {field}, e.g. {reasons[0]}")
    if len(ranked) > top:
        lines.append(f"    ... and {sum(len(reasons) for _, reasons in ranked[top:])} more under"
                     f" {len(ranked) - top} other reason(s)")
    return lines


def macro_f1_table(evaluation: Manifest) -> list[str]:
    """Candidate (what would be served) vs champion per slice, beside the lexical baseline fitted on the same
    train rows ("-" where the evaluate step recorded none)."""
    lines = ["  macro-F1      candidate  champion  baseline"]
    for slice_name in ("frozen", "fresh", "old"):
        scores = {model: evaluation.metrics.get(f"{model}.{slice_name}.macro_f1")
                  for model in ("candidate", "champion", "baseline")}
        if scores["candidate"] is not None:
            lines.append(f"    {slice_name:<11} {_f1(scores['candidate'])}     {_f1(scores['champion'])}    "
                         f"{_f1(scores['baseline'])}   ({evaluation.metrics.get(f'{slice_name}.rows')} rows)")
    blend = evaluation.metrics.get("blend_weight")
    if isinstance(blend, int | float) and not isinstance(blend, bool):
        lines.append(f"  candidate = {blend:.2f} x transformer + {1 - blend:.2f} x baseline (blend weight from the"
                     " validation rows)")
    return lines


def summarize_run(store: ArtifactStore, run_id: str) -> list[str]:
    manifests: dict[str, Manifest] = {step: m for step in STEP_NAMES if (m := read_manifest(store, run_id, step))}
    lines = [f"run {run_id}: steps completed: {', '.join(manifests) or 'none'}"]
    lines += data_lines(store, manifests)
    decision = read_manifest(store, run_id, "decide")
    lines += decision_lines(decision)
    if "train" in manifests:
        lines += training_lines(manifests["train"])
    if "evaluate" in manifests:
        lines += macro_f1_table(manifests["evaluate"])
    if "compress" in manifests:
        lines += gate_lines(manifests["compress"])
    lines += release_lines(manifests)
    return lines + new_label_fates(manifests, decision)


def data_lines(store: ArtifactStore, manifests: dict[str, Manifest]) -> list[str]:
    """What the day brought: crawled, quarantined (and why), new labels, cleaned, augmented."""
    lines: list[str] = []
    crawl = manifests.get("crawl")
    if (crawl is not None and "validate" not in manifests and not crawl.metrics.get("rows_new")
            and not crawl.metrics.get("rows_quarantined")):
        lines.append("  ended at new_data: the crawl found nothing new")
    if crawl is not None:
        lines.append(f"  rows crawled {crawl.metrics.get('rows_new')} (pages fetched {crawl.metrics.get('pages_fetched')},"
                     f" not modified {crawl.metrics.get('pages_not_modified')})")
    if "validate" in manifests:
        lines.append(f"  quarantined by validation {manifests['validate'].metrics.get('rows_quarantined')},"
                     f" valid {manifests['validate'].metrics.get('rows_valid')}")
        new_labels = ValidateFacts.of(manifests["validate"]).labels_new
        if new_labels:
            # Quoted: a folder name with spaces or odd characters becomes a label as it is spelled.
            lines.append(f"  new label(s) joined the label set (validate.new_labels: extend): {quoted(new_labels)}")
    lines += quarantine_reasons(store, manifests)
    if "clean" in manifests:
        metrics = manifests["clean"].metrics
        lines.append(f"  cleaned rows {metrics.get('rows_out')} (train {metrics.get('rows_train')},"
                     f" validation {metrics.get('rows_validation')}, test {metrics.get('rows_test')})")
    if "augment" in manifests:
        lines.append(f"  augmented rows {manifests['augment'].metrics.get('rows_augmented')}")
    return lines


def decision_lines(decision: Manifest | None) -> list[str]:
    """Whether the round trained and why."""
    if decision is None:
        return []
    facts = DecideFacts.of(decision)
    return [f"  training: {'yes' if facts.train else 'no'} - {facts.reason}",
            *([] if facts.train else ["  ended at should_train"])]


def gate_lines(compress: Manifest) -> list[str]:
    """The final gate verdict, each compressed variant's figures (or why the family cannot have it), the served one."""
    facts = CompressFacts.of(compress)
    lines = [f"  gate: {'PASS' if facts.gate.passed else 'REJECT'}"
             + ("" if facts.gate.passed else " - " + "; ".join(facts.gate.reasons))]
    for variant, figures in facts.variants.items():
        if not figures.get("applicable", True):  # the family cannot have it (or it failed to build): why
            lines.append(f"  {variant}: {figures.get('status')} - {figures.get('reason')}")
            continue
        lines.append(f"  {variant}: size x{figures['size_ratio']:.2f}, latency x{figures['latency_ratio_batch1']:.2f}"
                     f" (batch 1) x{figures['latency_ratio_batch32']:.2f} (batch 32), macro-F1 delta"
                     f" {figures['macro_f1_delta'].get('frozen', float('nan')):+.4f} (frozen)")
    lines.append(f"  serving variant: {facts.serving_variant}")
    return lines


def release_lines(manifests: dict[str, Manifest]) -> list[str]:
    """The registered version, and whether it became champion (or why not)."""
    lines: list[str] = []
    if "register" in manifests:
        lines.append(f"  registered version {RegisterFacts.of(manifests['register']).version}")
    if "promote" in manifests:
        facts = PromoteFacts.of(manifests["promote"])
        lines.append(f"  promoted: champion -> {facts.champion}, previous -> {facts.previous}" if facts.promoted
                     else f"  not promoted: {'; '.join(facts.reasons)}")
    elif "register" in manifests:
        lines.append("  promotion skipped by the gate")
    return lines


def new_label_fates(manifests: dict[str, Manifest], decision: Manifest | None) -> list[str]:
    """What happened to each label the champion did not know: joined, trained, judged on its own rows, served,
    or where it stopped and why."""
    validated = ValidateFacts.of(manifests["validate"]) if "validate" in manifests else None
    evaluation = EvaluateFacts.of(manifests["evaluate"]) if "evaluate" in manifests else None
    promotion = PromoteFacts.of(manifests["promote"]) if "promote" in manifests else None
    labels = list(dict.fromkeys([*((validated.labels_new or []) if validated else []),
                                 *(evaluation.new_classes if evaluation else [])]))
    lines = []
    for label in labels:
        if "train" not in manifests:
            decided = DecideFacts.of(decision) if decision is not None else None
            why = decided.reason if decided is not None and not decided.train else "the round did not train"
            lines.append(f"  new label {quoted([label])}: joined, not trained yet ({why})")
            continue
        checks = [check for check in evaluation.gate.checks
                  if check.name.startswith(f"new_class:{label}:")] if evaluation else []
        judged = "; ".join(f"{check.detail}: {check.verdict}" for check in checks) or "no test rows of it yet"
        served = (f"served by champion v{promotion.champion}" if promotion is not None and promotion.promoted
                  else "not served: the gate kept the champion" if "compress" in manifests
                  else "not served: the round stopped before the gate")
        lines.append(f"  new label {quoted([label])}: trained; {judged}; {served}")
    return lines


def _psi(value: Any) -> str:
    return "-" if value is None else f"{value:.3f}"


def summarize_production(store: ArtifactStore, logical_date: dt.date, score_run: str | None,
                         monitor_run: str | None) -> tuple[list[str], dict[str, Any]]:
    """Summary lines for the day's batch scoring and monitor runs, and the day's monitor figures."""
    lines: list[str] = []
    figures: dict[str, Any] = {"date": logical_date.isoformat()}
    scored = read_manifest(store, score_run, "score") if score_run else None
    if scored is not None:
        facts = ScoreFacts.of(scored)
        figures.update(version=facts.model_version, rows=scored.metrics.get("rows"))
        if facts.scored:
            lines.append(f"  scored before its labels were used: {scored.metrics.get('rows')} newly published texts"
                         f" in one batch request, served by version {facts.model_version} ({facts.variant})"
                         + (f", version {facts.shadow_version} in shadow (agreement"
                            f" {scored.metrics.get('shadow_agreement', 0):.3f})" if facts.shadow_version else ""))
        else:
            lines.append(f"  batch scoring: {facts.reason}")
    watched = read_manifest(store, monitor_run, "monitor") if monitor_run else None
    if watched is None:
        return lines, figures
    metrics, watch = watched.metrics, MonitorFacts.of(watched)
    primary = watch.primary_version
    figures.update(metrics, verdict=watch.verdict)
    if primary is None:
        lines.append(f"  monitor: {watch.verdict}")
        return lines, figures
    reference = watch.versions[primary]["measures"]
    lines.append(f"  monitor, version {primary} vs its reference ({reference.get('reference_rows')} test rows):"
                 f" label PSI {_psi(metrics.get('label_psi'))}, confidence PSI {_psi(metrics.get('confidence_psi'))},"
                 f" length PSI {_psi(metrics.get('length_psi'))}, OOV {_psi(metrics.get('oov_rate'))}"
                 f" (rise {_psi(metrics.get('oov_increase'))})")
    real = metrics.get("real_macro_f1")
    lines.append(f"    macro-F1 estimated without labels {_f1(metrics.get('estimated_macro_f1'))}"
                 + (f", on the {metrics.get('feedback_rows')} texts whose labels arrived"
                    f" {_f1(metrics.get('estimated_macro_f1_labelled'))} vs real {_f1(real)}"
                    f" (error {metrics.get('estimate_error', 0):+.3f})" if real is not None
                    else " (real macro-F1: labels not in yet)"))
    lines.append(f"    {watch.verdict}")
    return lines, figures


def monitor_table(days: list[dict[str, Any]]) -> list[str]:
    """The monitor's figures per demo day, as a table."""
    title = ("Production monitor per day (the champion's predictions on the day's texts before their labels; "
             "real macro-F1 once they arrived):")
    header = ("| day | served by | texts | label PSI | confidence PSI | length PSI | OOV rise | estimated F1 | real F1 "
              "| breach |")
    lines = ["", title, "", header, "|---|---|---|---|---|---|---|---|---|---|"]
    for day in days:
        breach = ("emitted" if day.get("breach_emitted") else "held back (cooldown)" if day.get("breach")
                  else "no" if day.get("label_psi") is not None else "-")
        lines.append(f"| {day['date']} | {day.get('version') or '-'} | {day.get('rows') or 0} |"
                     f" {_psi(day.get('label_psi'))} | {_psi(day.get('confidence_psi'))} | {_psi(day.get('length_psi'))} |"
                     f" {_psi(day.get('oov_increase'))} | {_psi(day.get('estimated_macro_f1_labelled') or day.get('estimated_macro_f1'))}"
                     f" | {_psi(day.get('real_macro_f1'))} | {breach} |")
    return lines
