"""Monitor production: recent predictions against the serving version's reference, with a label-free estimate.

Reads the prediction log (`freshet serve`'s rows and batch scoring's, tasks/monitoring/predictions.py) for
the `monitor.window_days` days up to the logical date and judges each model version that made at least
`monitor.min_rows` of them against its reference: its own predictions on its own labelled test slices
(tasks/monitoring/reference.py, built once per version and cached). Per version:

- drift of the predicted-label distribution (PSI), of the top-1 confidence (PSI, bins at the reference's
  deciles) and of the text length (PSI), and the rise of the out-of-vocabulary word share (words not in
  the version's training texts; the tokenizer's unknown-token share is reported beside it);
- the label-free macro-F1 estimate from calibrated confidence (CBPE-style, tasks/monitoring/estimate.py),
  compared with the same estimate on the reference;
- once labelled feedback for the texts has arrived (the valid rows of any crawl source, matched by the
  text's sha256, tasks/monitoring/feedback.py): the real macro-F1 of the version that served them, and the
  estimate on the same rows next to it.

Each measure has a bound (`monitor.max_*`); one beyond it is a breach. A breach is emitted (filed in
`state/monitor/`, tasks/monitoring/breach.py; in Airflow the `production_drift` task then updates the
production-drift Asset, which starts the pipeline, and the next `decide` trains with the reason
"production drift: ...") unless another run emitted one within `monitor.cooldown_hours` of data time; the
manifest says which. Too few predictions, or no reference for a version (registered outside the pipeline),
is reported, not a failure. The report (a table of checks and four plots per version) goes to the run's
folder and MLflow.

    python -m tasks.monitor --config configs/demo.yaml --run-id monitor-2026-11-02 --logical-date 2026-11-02
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from tasks import model_registry
from tasks.checks import Check, Comparison, failed, skipped
from tasks.checks import judge as judge_check  # `judge` here judges a version
from tasks.config import PipelineConfig
from tasks.contract import StepContext, cli, execute, logical_day
from tasks.manifest import Manifest, StepFacts
from tasks.monitoring import breach as breaches
from tasks.monitoring import drift
from tasks.monitoring.estimate import estimate, estimate_from_probabilities
from tasks.monitoring.feedback import feedback_runs, join, labelled_rows
from tasks.monitoring.predictions import log_parts, read_parts, window, with_probabilities
from tasks.monitoring.reference import NoReference, load_or_build
from tasks.monitoring.report import render_html, version_png
from tasks.monitoring.scorer import load_scorer
from tasks.store import ArtifactStore
from tasks.tracking import manifest_timestamp

STEP = "monitor"
log = logging.getLogger("freshet.monitor")
REPORT_FILE = "monitor_report.html"
# Flat manifest metrics: those of the version with the most judged predictions (every version's are in facts).
FLAT = ("rows", "label_psi", "confidence_psi", "length_psi", "oov_rate", "reference_oov_rate", "oov_increase",
        "unk_rate", "estimated_macro_f1", "reference_estimated_macro_f1", "reference_macro_f1", "estimated_f1_drop",
        "feedback_rows", "real_macro_f1", "estimated_macro_f1_labelled", "estimate_error", "real_f1_drop")


def problem_of(item: Check) -> str:
    """A failed check, as the manifest's `failed` list and the log say it."""
    observed = "nan" if item.value is None else f"{item.value:.3f}"
    relation = "<" if item.comparison == ">=" else ">"
    return f"{item.name} {observed} {relation} monitor.{item.setting}={item.bound}"


def check(name: str, setting: str, observed: float | None, bound: float | None, detail: str = "",
          skip: str | None = None, floor: bool = False) -> Check:
    """`floor`: the value must stay at least `bound`; otherwise at most."""
    comparison: Comparison = ">=" if floor else "<="
    value = None if observed is None else float(observed)
    if bound is None:
        return skipped(name, value, bound, comparison, f"monitor.{setting} is null: not a check", setting=setting)
    if skip or value is None or math.isnan(value):
        return skipped(name, value, bound, comparison, skip or "not measured", setting=setting)
    return judge_check(name, value, bound, comparison, detail, setting=setting)


def _number(value: Any) -> float | None:
    if value is None:
        return None
    value = float(value)
    return None if math.isnan(value) else value


def judge(config: PipelineConfig, reference: Any, scorer: Any, rows: Any, labelled: Any) -> dict[str, Any]:
    """Every measure and check of one version's production rows against its reference."""
    expected, reference_estimate, full = performance_estimator(reference, rows)
    measures = drift_measures(config, reference, scorer, rows, expected(rows), reference_estimate, full)
    measures.update(feedback_measures(config, reference, rows, labelled, expected))
    checks = version_checks(config, measures, reference.summary)
    return {"status": "judged", "rows": len(rows), "measures": {key: _plain(value) for key, value in measures.items()},
            "checks": [item.model_dump() for item in checks],
            "failed": [problem_of(item) for item in failed(checks)],
            "variant": reference.summary.get("variant"), "reference": reference.location}


def performance_estimator(reference: Any, rows: Any) -> tuple[Callable[[Any], dict[str, Any]], dict[str, Any], bool]:
    """The label-free estimate of the metrics on a frame of rows, the same estimate on the reference, and whether
    it reads every class's probability (every row has them: batch scoring) rather than the top-1 confidence
    (served rows)."""
    index = {label: position for position, label in enumerate(reference.label_names)}
    columns = [f"probability.{label}" for label in reference.label_names]
    if all(column in rows for column in columns) and bool(rows[columns].notna().all().all()) and len(rows) > 0:
        class_calibration = reference.class_calibration()

        def from_probabilities(selected: Any) -> dict[str, Any]:
            return estimate_from_probabilities(class_calibration, selected[columns].to_numpy(dtype=float))

        return from_probabilities, estimate_from_probabilities(class_calibration, reference.probabilities), True

    def from_confidence(selected: Any) -> dict[str, Any]:
        return estimate(reference.calibration, [index.get(label, -1) for label in selected["label"]],
                        selected["confidence"].to_numpy(dtype=float))

    ref = reference.rows
    return from_confidence, estimate(reference.calibration, [index[label] for label in ref["predicted"]],
                                     ref["confidence"].to_numpy(dtype=float)), False


def drift_measures(config: PipelineConfig, reference: Any, scorer: Any, rows: Any, estimated: Mapping[str, Any],
                   reference_estimate: Mapping[str, Any], full: bool) -> dict[str, Any]:
    """Drift of the predictions, confidences, lengths and vocabulary from the reference, and the estimated metrics."""
    import numpy as np

    settings = config.monitor
    confidence = rows["confidence"].to_numpy(dtype=float)
    texts = [str(text) for text in rows["text"] if isinstance(text, str)] if "text" in rows else []
    ref, summary = reference.rows, reference.summary
    oov = drift.oov_rate(texts, reference.vocabulary) if texts else None
    return {
        "rows": len(rows), "rows_with_text": len(texts), "reference_rows": len(ref),
        "label_psi": drift.label_psi(ref["predicted"].astype(str).tolist(), rows["label"].astype(str).tolist()),
        "confidence_psi": drift.binned_psi(ref["confidence"].to_numpy(), confidence, settings.confidence_bins),
        "length_psi": drift.binned_psi(ref["length"].to_numpy(), np.asarray([len(text) for text in texts]),
                                       settings.length_bins) if texts else None,
        "oov_rate": oov, "reference_oov_rate": summary.get("oov_rate"),
        "oov_increase": None if oov is None or summary.get("oov_rate") is None else oov - summary["oov_rate"],
        "unk_rate": drift.unk_rate(scorer.tokenizer, texts, scorer.max_length) if texts else None,
        "reference_unk_rate": summary.get("unk_rate"),
        "mean_confidence": float(confidence.mean()), "reference_mean_confidence": float(ref["confidence"].mean()),
        "estimate_method": "cbpe" if full else "cbpe-top1",
        "estimated_macro_f1": estimated["macro_f1"], "estimated_accuracy": estimated["accuracy"],
        "reference_estimated_macro_f1": reference_estimate["macro_f1"],
        "reference_macro_f1": summary["real_macro_f1"],
        "estimated_f1_drop": reference_estimate["macro_f1"] - estimated["macro_f1"],
    }


def feedback_measures(config: PipelineConfig, reference: Any, rows: Any, labelled: Any,
                      expected: Callable[[Any], dict[str, Any]]) -> dict[str, Any]:
    """The labels that came back for these rows: how many, and with enough of them the real metrics and the
    estimate's error on the same rows."""
    # lazy: scikit-learn (1.0 s measured), needed only on days when labels came back for the rows
    from tasks.models.metrics import classification_metrics

    index = {label: position for position, label in enumerate(reference.label_names)}
    matched = join(rows, labelled)
    known = matched[matched["true_label"].isin(list(index))] if len(matched) else matched
    measures: dict[str, Any] = {"feedback_rows": len(known),
                                "feedback_coverage": len(known) / len(rows) if len(rows) else 0.0,
                                "feedback_unknown_labels": len(matched) - len(known)}
    if len(known) >= config.monitor.min_feedback_rows:
        truth = [index[label] for label in known["true_label"]]
        known_predicted = [index.get(label, -1) for label in known["label"]]
        real = classification_metrics(truth, known_predicted, reference.label_names)
        on_labelled = expected(known)
        measures.update({"real_macro_f1": real["macro_f1"], "real_accuracy": real["accuracy"],
                         "estimated_macro_f1_labelled": on_labelled["macro_f1"],
                         "estimate_error": on_labelled["macro_f1"] - real["macro_f1"],
                         "real_f1_drop": reference.summary["real_macro_f1"] - real["macro_f1"]})
    return measures


def version_checks(config: PipelineConfig, measures: Mapping[str, Any], summary: Mapping[str, Any]) -> list[Check]:
    """The monitor's checks of one version's measures, each against its `monitor.*` bound."""
    settings = config.monitor
    no_text = "the prediction log keeps no texts (store_text: hash)" if not measures["rows_with_text"] else None
    labelled = measures["feedback_rows"]
    no_feedback = None if labelled >= settings.min_feedback_rows else (
        f"{labelled} labelled rows < monitor.min_feedback_rows={settings.min_feedback_rows}: "
        "real macro-F1 not measured yet")
    reference_note = f"{measures['rows']} predictions vs {measures['reference_rows']} reference rows"
    return [
        check("label_psi", "max_label_psi", measures["label_psi"], settings.max_label_psi, reference_note),
        check("confidence_psi", "max_confidence_psi", measures["confidence_psi"], settings.max_confidence_psi,
              reference_note),
        check("length_psi", "max_length_psi", measures["length_psi"], settings.max_length_psi, reference_note, no_text),
        check("oov_increase", "max_oov_increase", measures["oov_increase"], settings.max_oov_increase,
              f"OOV word share {_fmt(measures['oov_rate'])} vs {_fmt(summary.get('oov_rate'))} on the reference "
              f"({summary.get('vocabulary_words')} training words)", no_text),
        check("estimated_f1_drop", "max_estimated_f1_drop", measures["estimated_f1_drop"],
              settings.max_estimated_f1_drop,
              f"estimated macro-F1 {_fmt(measures['estimated_macro_f1'])} vs "
              f"{_fmt(measures['reference_estimated_macro_f1'])} estimated on the reference "
              f"({measures['estimate_method']})"),
        check("estimated_macro_f1", "min_estimated_macro_f1", measures["estimated_macro_f1"],
              settings.min_estimated_macro_f1, "the absolute floor", floor=True),
        check("real_f1_drop", "max_real_f1_drop", measures.get("real_f1_drop"), settings.max_real_f1_drop,
              f"real macro-F1 {_fmt(measures.get('real_macro_f1'))} on {labelled} labelled rows vs "
              f"{_fmt(summary['real_macro_f1'])} on the reference", no_feedback),
    ]


def _fmt(value: Any) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{float(value):.3f}"


def _plain(value: Any) -> Any:
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def judge_versions(config: PipelineConfig, store: ArtifactStore, context: StepContext, frame: Any, labelled: Any
                   ) -> tuple[dict[str, dict[str, Any]], dict[str, Path]]:
    """Every model version in the window with at least `monitor.min_rows` predictions judged against its own
    reference, with its plots; the others skipped with the reason."""
    settings = config.monitor
    client = model_registry.client(config)
    results: dict[str, dict[str, Any]] = {}
    pictures: dict[str, Path] = {}
    for version, count in frame["model_version"].value_counts().items():
        version = str(version)
        if count < settings.min_rows:
            results[version] = {"status": "skipped", "rows": int(count),
                                "reason": f"{count} predictions < monitor.min_rows={settings.min_rows}: not judged"}
            continue
        try:
            model_version = client.get_model_version(config.mlflow.model_name, version)
            scorer = load_scorer(config, version)
            reference = load_or_build(config, store, scorer, model_version)
        except NoReference as error:
            results[version] = {"status": "skipped", "rows": int(count), "reason": str(error)}
            continue
        rows = frame[frame["model_version"] == version]
        results[version] = judge(config, reference, scorer, rows, labelled)
        picture = context.out_dir / f"monitor_v{version}.png"
        version_png(reference, rows, version, picture, settings.confidence_bins)
        context.add_output(f"plots_v{version}", picture.name, "report")
        pictures[version] = picture
        del scorer  # one version's model in memory at a time
    return results, pictures


class MonitorFacts(StepFacts):
    """The day's verdict and window; per served version its judgement (`versions`); the breach, if any, and
    whether it was emitted (a breach within the cooldown of another is recorded, not emitted)."""

    verdict: str
    window: list[str]
    parts: int
    predictions: int
    feedback_runs: list[str]
    champion: str | None
    primary_version: str | None
    versions: dict[str, dict[str, Any]]
    breach: dict[str, Any] | None
    breach_emitted: bool
    served_versions: dict[str, int]
    endpoints: dict[str, int]


def new_breach(run_id: str, day: dt.date, moment: dt.datetime, fingerprint: str, judged: Mapping[str, dict[str, Any]],
               failed: Sequence[str], champion_version: str | None, near: dict[str, Any] | None,
               cooldown_hours: float) -> dict[str, Any]:
    """The breach of this monitor day (`failed`: its failed checks), `emitted` unless a breach within the
    cooldown holds it back, and then `suppressed` says which."""
    breach: dict[str, Any] = {
        "id": f"breach-{day.isoformat()}-{fingerprint.removeprefix('sha256:')[:10]}", "run_id": run_id,
        "logical_date": day.isoformat(), "at": moment.isoformat(),
        "time": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), "reasons": list(failed),
        "versions": sorted(version for version, result in judged.items() if result["failed"]),
        "champion": champion_version, "emitted": near is None, "suppressed": None}
    if near is not None:
        breach["suppressed"] = (f"held back by the cooldown: breach {near['id']} (monitor day "
                                f"{near['logical_date']}) is {breaches.hours_apart(near, moment):.0f} h of data"
                                f" time away, within monitor.cooldown_hours={cooldown_hours:g}")
    return breach


def verdict_of(empty: bool, primary: str | None, breach: dict[str, Any] | None, failed: Sequence[str]) -> str:
    if empty:
        return "no predictions in the window"
    if primary is None:
        return "no version with enough predictions to judge"
    if breach is None:
        return "no breach"
    if breach["emitted"]:
        return f"BREACH emitted ({breach['id']}): " + "; ".join(failed)
    return f"breach {breach['suppressed']}: " + "; ".join(failed)


def run(config: PipelineConfig, inputs: Mapping[str, Manifest], *, run_id: str, store: ArtifactStore,
        logical_date: str | None = None) -> Manifest:
    settings = config.monitor
    day = logical_day(logical_date) or dt.datetime.now(dt.UTC).date()
    days = window(day, settings.window_days)
    parts = log_parts(store, days)
    feedback = feedback_runs(store, config, day.isoformat())
    champion = model_registry.version_by_alias(config, model_registry.CHAMPION)
    champion_version = str(champion.version) if champion else None
    moment = dt.datetime.combine(day, dt.time(), tzinfo=dt.UTC) if logical_date else dt.datetime.now(dt.UTC)
    # Only a breach within the cooldown changes this run's outcome (it holds a breach back).
    near = breaches.blocking(store, moment, settings.cooldown_hours, exclude_run_id=run_id)
    extra = {"parts": [(part["uri"], part["size"], part["stamp"]) for part in parts],
             "feedback": [entry["fingerprint"] for entry in feedback], "champion": champion_version,
             "cooldown_breach": near["id"] if near else None}

    def body(context: StepContext) -> None:
        frame = with_probabilities(store, read_parts(store, parts))
        labelled = labelled_rows(store, feedback, settings.feedback_sources) if len(frame) else None
        results, pictures = judge_versions(config, store, context, frame, labelled)
        judged = {version: result for version, result in results.items() if result["status"] == "judged"}
        failed = [f"version {version}: {problem}" for version, result in judged.items() for problem in result["failed"]]
        breach = new_breach(run_id, day, moment, context.fingerprint, judged, failed, champion_version, near,
                            settings.cooldown_hours) if failed else None
        emitted = breach is not None and breach["emitted"]
        primary = max(judged, key=lambda version: judged[version]["rows"], default=None)
        verdict = verdict_of(frame.empty, primary, breach, failed)
        notes = [(f"window {days[0]}..{days[-1]}: {len(frame)} predictions in {len(parts)} part(s) of the prediction "
                  f"log; {len(feedback)} run(s) of labelled feedback; champion {champion_version}")]
        (context.out_dir / REPORT_FILE).write_text(render_html(f"freshet monitor, {day}", verdict, results, pictures,
                                                               notes))
        context.add_output("report", REPORT_FILE, "report")
        document = {"verdict": verdict, "window": [str(days[0]), str(days[-1])], "versions": results, "breach": breach}
        (context.out_dir / "monitor.json").write_text(json.dumps(document, indent=2, sort_keys=True, default=str))
        context.add_output("monitor", "monitor.json", "report")
        context.facts.update(MonitorFacts(
            verdict=verdict, window=[str(days[0]), str(days[-1])], parts=len(parts), predictions=len(frame),
            feedback_runs=[entry["run_id"] for entry in feedback], champion=champion_version, primary_version=primary,
            versions=results, breach=breach, breach_emitted=emitted,
            served_versions={str(k): int(v) for k, v in frame["model_version"].value_counts().items()},
            endpoints={str(k): int(v) for k, v in frame["endpoint"].value_counts().items()} if len(frame) else {},
        ).dump())
        context.metrics.update({"predictions": len(frame), "versions_judged": len(judged), "breach": bool(failed),
                                "breach_emitted": emitted})
        context.metrics.update(primary_metrics(judged, primary))
        (log.warning if failed else log.info)("monitor %s: %s", day, verdict)

    def track(manifest: Manifest) -> None:
        log_monitor(store, manifest)

    manifest = execute(STEP, body, config, inputs, run_id=run_id, store=store, logical_date=logical_date,
                       config_sections=(STEP, "mlflow"), extra_fingerprint=extra, track=track)
    facts = MonitorFacts.of(manifest)
    if facts.breach_emitted and facts.breach is not None:
        breaches.publish(store, facts.breach)
    return manifest


def primary_metrics(judged: Mapping[str, Mapping[str, Any]], primary: str | None) -> dict[str, Any]:
    """The flat manifest metrics: those of the version with the most judged predictions (`primary`)."""
    if primary is None:
        return {}
    measures = judged[primary]["measures"]
    return {**{key: measures.get(key) for key in FLAT}, "primary_version": int(primary) if primary.isdigit() else None}


def log_monitor(store: ArtifactStore, manifest: Manifest) -> None:
    """The reports, every judged version's measures (as v<version>.<measure>) and the verdict, into MLflow: from the
    committed manifest and reports alone, at the manifest's time (so a recovery after a kill repeats, not doubles)."""
    import mlflow

    facts = MonitorFacts.of(manifest)
    for ref in manifest.outputs.values():
        mlflow.log_artifact(str(store.local_path(ref.uri)), artifact_path="monitor")
    for version, result in facts.versions.items():
        if result["status"] == "judged":
            mlflow.log_metrics({f"v{version}.{key}": float(value) for key, value in result["measures"].items()
                                if isinstance(value, int | float) and not isinstance(value, bool)},
                               timestamp=manifest_timestamp(manifest))
    mlflow.set_tags({"freshet.monitor.verdict": facts.verdict[:5000],
                     "freshet.monitor.breach": (facts.breach or {}).get("id", "none"),
                     "freshet.monitor.versions": ",".join(facts.versions)})


def main(argv: Sequence[str] | None = None) -> int:
    return cli(STEP, run, argv, __doc__)


if __name__ == "__main__":
    raise SystemExit(main())
