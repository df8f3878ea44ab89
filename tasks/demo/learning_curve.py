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
import logging
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tasks.config import PipelineConfig, load_config
from tasks.contract import read_manifest
from tasks.manifest import Manifest
from tasks.store import ArtifactStore

log = logging.getLogger("freshet.learning_curve")
SLICES = ("frozen", "fresh", "old")
MODELS = ("candidate", "champion")
COLUMNS = ("day", "logical_date", "run_id", "rows_arrived", "rows_valid", "rows_clean", "trained", "decision",
           *(f"{model}.{slice_name}.macro_f1" for model in MODELS for slice_name in SLICES),
           "gate", "gate_reasons", "registered_version", "promoted", "champion_version")


def _manifests(store: ArtifactStore, run_id: str) -> dict[str, Manifest]:
    steps = ("crawl", "validate", "clean", "decide", "train", "evaluate", "compress", "register", "promote")
    return {step: manifest for step in steps if (manifest := read_manifest(store, run_id, step)) is not None}


def pipeline_runs(store: ArtifactStore) -> list[str]:
    """Run ids that ingested data (have a validate manifest), oldest logical date first."""
    runs = [(manifest.logical_date or "", manifest.created_at, manifest.run_id) for directory in store.run_directories()
            if (manifest := read_manifest(store, directory, "validate")) is not None]
    return [run_id for *_, run_id in sorted(runs)]


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
        decision = manifests["decide"].facts if "decide" in manifests else None
        gate = manifests["compress"].facts.get("gate") if "compress" in manifests else None
        promoted = bool(manifests["promote"].facts.get("promoted")) if "promote" in manifests else False
        if promoted:
            champion = str(manifests["promote"].facts["champion"])
        row: dict[str, Any] = {
            "day": day, "logical_date": (any_manifest.logical_date or "")[:10], "run_id": run_id,
            "rows_arrived": metric("crawl", "rows_new") if "crawl" in manifests else metric("validate", "rows_in"),
            "rows_valid": metric("validate", "rows_valid"), "rows_clean": metric("clean", "rows_out"),
            # No decide manifest (a pipeline without the step): a train manifest means it trained.
            "trained": bool(decision["train"]) if decision else "train" in manifests,
            "decision": decision["reason"] if decision else "",
            "gate": None if gate is None else ("pass" if gate["passed"] else "reject"),
            "gate_reasons": "" if gate is None else "; ".join(gate["reasons"]),
            "registered_version": manifests["register"].facts.get("version") if "register" in manifests else None,
            "promoted": promoted, "champion_version": champion,
        }
        for model in MODELS:
            for slice_name in SLICES:
                key = f"{model}.{slice_name}.macro_f1"
                row[key] = metric("evaluate", key)
        rows.append(row)
    return rows


def served_score(row: dict[str, Any], slice_name: str) -> float | None:
    """Macro-F1 on a slice of the model that is champion after the run: the candidate if it was promoted,
    else the champion it was compared with (None: nothing was evaluated that day)."""
    key = "candidate" if row["promoted"] else "champion"
    return row.get(f"{key}.{slice_name}.macro_f1")


def criterion(rows: Sequence[dict[str, Any]], max_old_drop: float = 0.01) -> dict[str, Any]:
    """Does the champion keep learning without forgetting? Judged on the champion after each run.

    New data: F1 on each day's fresh split (rows the model never trained on) rising, i.e. a positive
    least-squares slope over the days and the last day above the first. Old data: F1 on the earlier
    days' test splits never more than `max_old_drop` below its best so far.
    """
    fresh = [(row["day"], value) for row in rows if (value := served_score(row, "fresh")) is not None]
    old = [(row["day"], value) for row in rows if (value := served_score(row, "old")) is not None]
    slope = statistics.linear_regression(*zip(*fresh)).slope if len(fresh) >= 2 else None
    best, worst_drop, worst_day = None, 0.0, None
    for day, value in old:
        best = value if best is None else max(best, value)
        if best - value > worst_drop:
            worst_drop, worst_day = best - value, day
    rising = slope is not None and slope > 0 and fresh[-1][1] > fresh[0][1]
    return {
        "fresh_days": len(fresh), "fresh_first": fresh[0][1] if fresh else None,
        "fresh_last": fresh[-1][1] if fresh else None, "fresh_slope_per_day": slope, "fresh_rising": rising,
        "old_days": len(old), "old_best": best, "old_max_drop_below_best": worst_drop if old else None,
        "old_max_drop_day": worst_day, "max_old_drop": max_old_drop,
        "old_within_bound": bool(old) and worst_drop <= max_old_drop,
        "met": rising and bool(old) and worst_drop <= max_old_drop,
    }


def criterion_lines(verdict: dict[str, Any]) -> list[str]:
    if verdict["fresh_days"] < 2 or not verdict["old_days"]:
        return [("Criterion (new-data F1 rising, old-data F1 within "
                f"{verdict['max_old_drop'] * 100:.0f} point of its best): needs at least two evaluated days.")]
    drop_day = f" (day {verdict['old_max_drop_day']})" if verdict["old_max_drop_day"] else ""
    return [
        "Champion after each run (the promoted candidate, else the champion kept):",
        (f"- new data (fresh split): {verdict['fresh_first']:.3f} on the first day -> {verdict['fresh_last']:.3f} on the "
        f"last, trend {verdict['fresh_slope_per_day'] * 100:+.2f} points/day: "
        f"{'rising' if verdict['fresh_rising'] else 'NOT rising'}"),
        (f"- old data (earlier days' test splits): best {verdict['old_best']:.3f}, largest drop below the best so far "
        f"{verdict['old_max_drop_below_best'] * 100:.2f} points{drop_day}: "
        f"{'within' if verdict['old_within_bound'] else 'OUTSIDE'} {verdict['max_old_drop'] * 100:.0f} point"),
        f"- criterion {'met' if verdict['met'] else 'NOT met'}",
    ]


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
             "(earlier snapshots' test splits), for the candidate and for the champion it was compared with. "
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

    from tasks.tracking import configure

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
