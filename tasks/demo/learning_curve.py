"""The learning curve over consecutive runs: what arrived each day and what the models made of it.

One row per pipeline run (by logical date), read from the step manifests in the artifact store:
rows arrived (crawl), valid and cleaned rows, the training decision, macro-F1 on the frozen, fresh and
old test slices for the candidate and the champion it was compared with, the gate verdict, the
registered version and the champion after the run. Written as CSV, Markdown and a PNG chart, and
logged to MLflow as a `learning-curve` run (per-day metrics with step = day number, files as artifacts).

    python -m tasks.demo.learning_curve --config configs/demo.yaml [--out DIR] [--run-id ID ...]
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import logging
import math
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tasks.compress import CompressFacts
from tasks.config import PipelineConfig, load_config
from tasks.contract import read_manifest
from tasks.decide import DecideFacts
from tasks.evaluate import EvaluateFacts
from tasks.manifest import Manifest
from tasks.promote import PromoteFacts
from tasks.register import RegisterFacts
from tasks.store import ArtifactStore
from tasks.tracking import configure

log = logging.getLogger("freshet.learning_curve")
SLICES = ("frozen", "fresh", "old")
MODELS = ("candidate", "champion", "baseline")
# Candidate - champion and candidate - baseline on the same rows of each slice, with the paired bootstrap CI.
COMPARISONS = tuple(f"{kind}.{slice_name}.{field}" for kind in ("paired", "over_baseline") for slice_name in SLICES
                    for field in ("difference", "ci_low", "ci_high"))
COLUMNS = ("day", "logical_date", "run_id", "rows_arrived", "rows_valid", "rows_clean", "trained", "decision",
           *(f"{model}.{slice_name}.macro_f1" for model in MODELS for slice_name in SLICES), *COMPARISONS,
           "blend_weight", "gate", "gate_reasons", "registered_version", "promoted", "compared_version",
           "champion_version")


def _manifests(store: ArtifactStore, run_id: str) -> dict[str, Manifest]:
    steps = ("crawl", "validate", "clean", "decide", "train", "evaluate", "compress", "register", "promote")
    return {step: manifest for step in steps if (manifest := read_manifest(store, run_id, step)) is not None}


def pipeline_runs(store: ArtifactStore) -> list[str]:
    """Run ids that ingested data (have a validate manifest), oldest logical date first."""
    runs = [(manifest.logical_date or "", manifest.created_at, manifest.run_id) for directory in store.run_directories()
            if (manifest := read_manifest(store, directory, "validate")) is not None]
    return [run_id for *_, run_id in sorted(runs)]


def calendar_day(first_date: str, logical_date: str, fallback: int) -> int:
    """Day 1 is the first run's logical date; a day with no run here (nothing ingested) keeps its number, as the
    demo counts days ("this run: day(s) 4..4" is day 4 here too)."""
    try:
        return (dt.date.fromisoformat(logical_date) - dt.date.fromisoformat(first_date)).days + 1
    except ValueError:
        return fallback


def collect(store: ArtifactStore, run_ids: Sequence[str]) -> list[dict[str, Any]]:
    """One row per run, in the given order; the champion version is carried across runs that did not promote."""
    rows: list[dict[str, Any]] = []
    champion: str | None = None
    for day, run_id in enumerate(run_ids, start=1):
        manifests = _manifests(store, run_id)
        if not manifests:
            raise FileNotFoundError(f"learning curve: run {run_id!r} has no step manifests under {store.uri('runs')}")
        any_manifest = next(iter(manifests.values()))
        metric = lambda step, name, manifests=manifests: manifests[step].metrics.get(name) if step in manifests else None
        decision = DecideFacts.of(manifests["decide"]) if "decide" in manifests else None
        gate = CompressFacts.of(manifests["compress"]).gate if "compress" in manifests else None
        promotion = PromoteFacts.of(manifests["promote"]) if "promote" in manifests else None
        promoted = promotion is not None and promotion.promoted
        if promotion is not None and promotion.promoted:
            champion = str(promotion.champion)
        logical_date = (any_manifest.logical_date or "")[:10]
        row: dict[str, Any] = {
            "day": calendar_day(rows[0]["logical_date"] if rows else logical_date, logical_date, day),
            "logical_date": logical_date, "run_id": run_id,
            "rows_arrived": metric("crawl", "rows_new") if "crawl" in manifests else metric("validate", "rows_in"),
            "rows_valid": metric("validate", "rows_valid"), "rows_clean": metric("clean", "rows_out"),
            # Trained means a train manifest: a round decide started whose training failed did not train.
            "trained": "train" in manifests,
            "decision": "" if not decision else decision.reason + (
                "; training did not finish (the run failed)" if decision.train and "train" not in manifests else ""),
            "gate": None if gate is None else ("pass" if gate.passed else "reject"),
            "gate_reasons": "" if gate is None else "; ".join(gate.reasons),
            "registered_version": RegisterFacts.of(manifests["register"]).version if "register" in manifests else None,
            "promoted": promoted, "champion_version": champion,
        }
        for key in (*(f"{model}.{name}.macro_f1" for model in MODELS for name in SLICES), *COMPARISONS,
                    "blend_weight"):
            row[key] = _measured(metric("evaluate", key))
        row["compared_version"] = (EvaluateFacts.of(manifests["evaluate"]).champion_version if "evaluate" in manifests
                                   else None)
        rows.append(row)
    return rows


def _measured(value: Any) -> Any:
    """None for NaN: a champion scored on no row of a slice (every row a class it never had) has no score."""
    return None if isinstance(value, float) and math.isnan(value) else value


def served_score(row: dict[str, Any], slice_name: str) -> float | None:
    """Macro-F1 on a slice of the model that is champion after the run: the candidate if it was promoted,
    else the champion it was compared with, on the rows of the classes it knows (None: nothing evaluated)."""
    key = "candidate" if row["promoted"] else "champion"
    return row.get(f"{key}.{slice_name}.macro_f1")


def promotions(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each promotion over an earlier champion: the new champion against the one it replaced, on the same rows of
    that day's fresh slice (the classes both know), with the paired bootstrap interval evaluate computed."""
    return [{"day": row["day"], "version": row["champion_version"], "replaced": row["compared_version"],
             "difference": row["paired.fresh.difference"], "ci_low": row["paired.fresh.ci_low"],
             "ci_high": row["paired.fresh.ci_high"]}
            for row in rows if row["promoted"] and row["compared_version"] is not None
            and row.get("paired.fresh.difference") is not None]


def against_baseline(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The champion after each evaluated run against the TF-IDF baseline fitted on that round's train rows, on the
    fresh slice: with the paired interval for a promoted candidate, as a point difference for a kept champion."""
    compared = []
    for row in rows:
        baseline, served = row.get("baseline.fresh.macro_f1"), served_score(row, "fresh")
        if baseline is None or served is None:
            continue
        paired = row["promoted"] and row.get("over_baseline.fresh.difference") is not None
        compared.append({"day": row["day"], "difference": served - baseline,
                         "ci_low": row["over_baseline.fresh.ci_low"] if paired else None,
                         "ci_high": row["over_baseline.fresh.ci_high"] if paired else None})
    return compared


MIN_TREND_DAYS = 3  # two points always make a line: a trend needs at least three


def criterion(rows: Sequence[dict[str, Any]], max_old_drop: float = 0.01) -> dict[str, Any]:
    """Does the champion keep learning without forgetting? Like with like only.

    - Each promotion: the new champion against the one it replaced on the same rows (that day's fresh slice):
      met unless the interval says it is worse (CI high < 0).
    - The baseline: the champion after each run against the TF-IDF baseline on the same rows: met unless the
      interval (or, for a kept champion, the point difference) says the baseline is better.
    - Old data: F1 on the earlier days' test splits never more than `max_old_drop` below its best so far.
    - The trend of the fresh F1 over days is reported from three days on, and never decides: each day's fresh
      slice holds other rows, so its level moves with the day's difficulty.
    """
    fresh = [(row["day"], value) for row in rows if (value := served_score(row, "fresh")) is not None]
    old = [(row["day"], value) for row in rows if (value := served_score(row, "old")) is not None]
    slope = statistics.linear_regression(*zip(*fresh)).slope if len(fresh) >= MIN_TREND_DAYS else None
    best, worst_drop, worst_day = None, 0.0, None
    for day, value in old:
        best = value if best is None else max(best, value)
        if best - value > worst_drop:
            worst_drop, worst_day = best - value, day
    steps, baseline = promotions(rows), against_baseline(rows)
    worse_steps = [step for step in steps if step["ci_high"] < 0]
    below_baseline = [item for item in baseline
                      if (item["ci_high"] < 0 if item["ci_high"] is not None else item["difference"] < 0)]
    old_ok = not old or worst_drop <= max_old_drop
    return {
        "fresh_days": len(fresh), "fresh_first": fresh[0][1] if fresh else None,
        "fresh_last": fresh[-1][1] if fresh else None, "fresh_slope_per_day": slope,
        "promotions": steps, "promotions_worse": len(worse_steps),
        "against_baseline": baseline, "days_below_baseline": len(below_baseline),
        "old_days": len(old), "old_best": best, "old_max_drop_below_best": worst_drop if old else None,
        "old_max_drop_day": worst_day, "max_old_drop": max_old_drop, "old_within_bound": old_ok,
        "met": bool(fresh) and not worse_steps and not below_baseline and old_ok,
    }


def _interval(item: dict[str, Any]) -> str:
    if item.get("ci_low") is None:
        return f"{item['difference'] * 100:+.1f} points (kept champion, point difference)"
    return f"{item['difference'] * 100:+.1f} points (95% CI {item['ci_low'] * 100:+.1f}..{item['ci_high'] * 100:+.1f})"


def criterion_lines(verdict: dict[str, Any]) -> list[str]:
    if not verdict["fresh_days"]:
        return [("Criterion (each promotion no worse than the champion it replaced, the champion never below the "
                 "TF-IDF baseline, old-data F1 within a point of its best): no evaluated day yet.")]
    lines = ["Champion after each run, compared like with like (same rows, paired 95% bootstrap interval):"]
    lines += [f"- day {step['day']}: v{step['version']} vs v{step['replaced']} it replaced, on day {step['day']}'s "
              f"fresh slice: {_interval(step)}{'  WORSE' if step['ci_high'] < 0 else ''}"
              for step in verdict["promotions"]]
    lines += [f"- day {item['day']}: champion vs TF-IDF + LR on the same train rows, fresh slice: {_interval(item)}"
              for item in verdict["against_baseline"]]
    if verdict["old_days"]:
        drop_day = f" (day {verdict['old_max_drop_day']})" if verdict["old_max_drop_day"] else ""
        lines.append(f"- old data (earlier days' test splits): best {verdict['old_best']:.3f}, largest drop below the "
                     f"best so far {verdict['old_max_drop_below_best'] * 100:.2f} points{drop_day}: "
                     f"{'within' if verdict['old_within_bound'] else 'OUTSIDE'} {verdict['max_old_drop'] * 100:.0f} "
                     "point")
    if verdict["fresh_slope_per_day"] is not None:
        lines.append(f"- fresh F1 over {verdict['fresh_days']} days: {verdict['fresh_first']:.3f} -> "
                     f"{verdict['fresh_last']:.3f}, trend {verdict['fresh_slope_per_day'] * 100:+.2f} points/day "
                     "(each day's slice holds other rows: informative, not judged)")
    else:
        lines.append(f"- no trend claimed from {verdict['fresh_days']} day(s): it takes at least {MIN_TREND_DAYS}")
    lines.append(f"- criterion {'met' if verdict['met'] else 'NOT met'}")
    return lines


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value).replace("|", "\\|")


def write_csv(rows: Sequence[dict[str, Any]], path: Path) -> None:
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows({key: "" if row.get(key) is None else row.get(key) for key in COLUMNS} for row in rows)


def markdown(rows: Sequence[dict[str, Any]], title: str) -> str:
    header = ["day", "date", "rows arrived", "valid", "clean", "trained",
              *(f"{model} {slice_name}" for model in MODELS for slice_name in SLICES), "gate", "registered", "champion"]
    lines = [f"# {title}", "",
             ("Macro-F1 per test slice: frozen (first snapshot's test split), fresh (this day's test split), old "
             "(earlier snapshots' test splits), for the candidate, for the champion it was compared with (on the "
             "rows of the classes it knows) and for the TF-IDF + LR baseline fitted on the candidate's train rows. "
             "The last column is the champion version after the run."), "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [row["day"], row["logical_date"], row["rows_arrived"], row["rows_valid"], row["rows_clean"],
                 row["trained"],
                 *(row[f"{model}.{slice_name}.macro_f1"] for model in MODELS for slice_name in SLICES),
                 row["gate"], row["registered_version"],
                 f"{row['champion_version'] or '-'}{' (promoted)' if row['promoted'] else ''}"]
        lines.append("| " + " | ".join(_cell(cell) for cell in cells) + " |")
    lines += ["", *criterion_lines(criterion(rows))]
    notes = [f"- day {row['day']}: {'trained' if row['trained'] else 'no training'}: {row['decision']}"
             + (f"; gate rejected: {row['gate_reasons']}" if row["gate"] == "reject" else "")
             for row in rows if row["decision"] or row["gate"] == "reject"]
    return "\n".join([*lines, "", *notes, ""]) if notes else "\n".join([*lines, ""])


def plot(rows: Sequence[dict[str, Any]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")  # headless: workers and CI have no display
    import matplotlib.pyplot as plt

    days = [row["day"] for row in rows]
    figure, (scores, volume) = plt.subplots(2, 1, figsize=(9, 7), sharex=True, height_ratios=(3, 1))
    colors = {"frozen": "tab:blue", "fresh": "tab:green", "old": "tab:orange"}
    for slice_name in SLICES:
        for model, style in (("candidate", "-o"), ("champion", "--s")):
            points = [(row["day"], row[f"{model}.{slice_name}.macro_f1"]) for row in rows
                      if row[f"{model}.{slice_name}.macro_f1"] is not None]
            if points:
                scores.plot(*zip(*points), style, color=colors[slice_name], label=f"{model} {slice_name}",
                            alpha=1.0 if model == "candidate" else 0.6)
    for row in rows:
        if row["promoted"]:
            scores.axvline(row["day"], color="tab:gray", alpha=0.25, linewidth=6)
        if row["gate"] == "reject":
            scores.annotate("rejected", (row["day"], 0.96), ha="center", color="tab:red", fontsize=8)
        elif not row["trained"]:
            scores.annotate("no training", (row["day"], 0.96), ha="center", color="tab:gray", fontsize=8)
    scores.set_ylim(0, 1)
    scores.set_ylabel("macro-F1")
    scores.set_title(f"{title} (grey band: promoted)")
    scores.legend(fontsize=8, ncol=2, loc="lower right")
    scores.grid(alpha=0.3)
    volume.bar(days, [row["rows_arrived"] or 0 for row in rows], color="tab:gray")
    volume.set_ylabel("rows arrived")
    volume.set_xlabel("day")
    volume.set_xticks(days, [f"{row['day']}\n{row['logical_date']}" for row in rows], fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def write_report(rows: Sequence[dict[str, Any]], out_dir: Path, title: str) -> dict[str, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"csv": out_dir / "learning_curve.csv", "markdown": out_dir / "learning_curve.md",
             "png": out_dir / "learning_curve.png"}
    write_csv(rows, paths["csv"])
    paths["markdown"].write_text(markdown(rows, title))
    plot(rows, paths["png"], title)
    return paths


def log_to_mlflow(config: PipelineConfig, rows: Sequence[dict[str, Any]], paths: dict[str, Path]) -> str:
    """A `learning-curve` run in the pipeline's experiment; returns its MLflow run id."""
    import mlflow

    experiment_id = configure(config)
    tags = {"freshet.kind": "learning_curve", "freshet.runs": ",".join(row["run_id"] for row in rows)}
    with mlflow.start_run(experiment_id=experiment_id, run_name="learning-curve", tags=tags) as run:
        for row in rows:
            numeric = {key: float(row[key]) for key in COLUMNS
                       if isinstance(row.get(key), int | float) and not isinstance(row.get(key), bool) and key != "day"}
            numeric.update(trained=float(row["trained"]), promoted=float(row["promoted"]))
            if row["gate"] is not None:
                numeric["gate_passed"] = float(row["gate"] == "pass")
            mlflow.log_metrics(numeric, step=row["day"])
        verdict = criterion(rows)
        mlflow.log_metrics({f"criterion.{key}": float(value) for key, value in verdict.items()
                            if isinstance(value, int | float) and value is not None})
        mlflow.set_tag("freshet.learning_curve.criterion", "met" if verdict["met"] else "not met")
        for path in paths.values():
            mlflow.log_artifact(str(path))
        return run.info.run_id


def build(config: PipelineConfig, store: ArtifactStore, run_ids: Sequence[str] | None, out_dir: Path,
          *, track: bool = True) -> tuple[list[dict[str, Any]], dict[str, Path]]:
    run_ids = list(run_ids) if run_ids else pipeline_runs(store)
    if not run_ids:
        raise FileNotFoundError(f"learning curve: no pipeline runs under {store.uri('runs')}")
    rows = collect(store, run_ids)
    paths = write_report(rows, out_dir, f"{config.name}: learning curve over {len(rows)} day(s)")
    if track:
        log_to_mlflow(config, rows, paths)
    return rows, paths


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tasks.demo.learning_curve", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True)
    parser.add_argument("--out", default=None, help="output folder (default: <artifact_root>/reports/learning_curve)")
    parser.add_argument("--run-id", dest="run_ids", action="append", default=[], help="runs in order (default: all)")
    parser.add_argument("--no-mlflow", action="store_true")
    args = parser.parse_args(argv)
    config = load_config(args.config)
    store = ArtifactStore(config.artifact_root)
    default_out = store.local_path(store.uri("reports", "learning_curve")) if store.is_local else Path("learning_curve")
    out_dir = Path(args.out) if args.out else default_out
    _, paths = build(config, store, args.run_ids, out_dir, track=not args.no_mlflow)
    print(paths["markdown"].read_text())
    print(f"learning curve: {', '.join(str(path) for path in paths.values())}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
