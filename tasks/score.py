"""Batch scoring: the files of an unlabelled drop folder, scored by the champion (and the challenger in shadow).

`score.input` is an fsspec glob (local path, s3://, gs://) of JSONL, CSV or Parquet files; `{date}` in it is
the logical date (YYYY-MM-DD), so a daily drop folder is `drop/{date}/*.jsonl`. Each file has a text column
(`score.text_field`) and may have an id column (`score.id_field`; else `<file>:<row>`). A row without text is
skipped and counted. The champion (`models:/<name>@champion`) scores every row with its serving variant;
when `challenger` points at another version and `score.shadow` is on, the challenger scores the same rows
in shadow (its answers are recorded next to the champion's, never served).

Output `predictions.parquet`: time, id, text_sha256, text (unless `score.store_text: false`), label,
confidence, `probability.<label>` per class, model, model_version, variant, source_file, and with a
shadow shadow_version, shadow_label, shadow_confidence. It is logged to MLflow as a dataset tagged with
the version(s) (tags `freshet.model_version`, `freshet.shadow_version` on the run too). After the manifest
commits, the champion's rows are filed in the prediction log under the logical day
(`predictions/date=<day>/part-batch-<run_id>.parquet`, `score.log_predictions`), beside what `freshet serve`
logs, which is what the monitor reads. No champion yet, or no file matching: nothing is scored, and the
manifest says why (a normal outcome, not a failure). A rerun with the same files and versions reuses
the manifest.

    python -m tasks.score --config configs/demo.yaml --run-id score-2026-11-02 --logical-date 2026-11-02
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Mapping, Sequence
from pathlib import PurePosixPath
from typing import Any

from tasks import model_registry
from tasks.config import PipelineConfig
from tasks.contract import StepContext, cli, execute, logical_day
from tasks.manifest import ArtifactRef, Manifest, StepError, StepFacts
from tasks.serve.prediction_log import pii_scrubber
from tasks.store import ArtifactStore

STEP = "score"
log = logging.getLogger("freshet.score")
EXAMPLES = 5


class ScoreFacts(StepFacts):
    """Scored or not and why; the files, the versions (champion, shadow) and the served variant; the predicted
    labels' counts; a few ids of rows without text."""

    scored: bool
    reason: str
    input: str | None
    files: list[dict[str, Any]]
    model: str
    model_version: str | None
    variant: str | None
    shadow_version: str | None
    labels: dict[str, int]
    invalid_rows: list[str]


def input_pattern(config: PipelineConfig, logical_date: str | None) -> str | None:
    pattern = config.score.input
    if pattern is None:
        return None
    day = logical_day(logical_date) or dt.datetime.now(dt.UTC).date()
    return pattern.replace("{date}", day.isoformat())


def input_files(pattern: str | None) -> list[dict[str, Any]]:
    """The files the glob matches, sorted, with what identifies their content (size, mtime or ETag)."""
    import fsspec

    if pattern is None:
        return []
    fs, path = fsspec.core.url_to_fs(pattern)
    files = []
    for match in sorted(fs.glob(path)):
        info = fs.info(match)
        if info.get("type") == "directory" or PurePosixPath(match).name.startswith("."):
            continue
        stamp = info.get("mtime") or info.get("LastModified") or info.get("ETag") or info.get("created")
        files.append({"uri": fs.unstrip_protocol(match), "name": PurePosixPath(match).name,
                      "size": int(info.get("size") or 0), "stamp": str(stamp)})
    return files


def file_format(config: PipelineConfig, name: str) -> str:
    if config.score.format != "auto":
        return config.score.format
    suffix = PurePosixPath(name).suffix.lower()
    for kind, suffixes in (("jsonl", (".jsonl", ".ndjson", ".json")), ("csv", (".csv",)), ("parquet", (".parquet",))):
        if suffix in suffixes:
            return kind
    raise StepError(f"{STEP}: cannot tell the format of {name!r} (suffix {suffix or 'none'}); "
                    "name files .jsonl/.csv/.parquet or set score.format")


def read_file(config: PipelineConfig, entry: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Rows {id, text} of one input file (text None when the row has none)."""
    import fsspec
    import pandas as pd

    settings = config.score
    kind = file_format(config, str(entry["name"]))
    with fsspec.open(str(entry["uri"]), "rb") as handle:
        try:
            if kind == "jsonl":
                frame = pd.read_json(handle, lines=True, dtype=False)
            elif kind == "csv":
                frame = pd.read_csv(handle, dtype=str, keep_default_na=False)
            else:
                frame = pd.read_parquet(handle)
        except ValueError as error:
            raise StepError(f"{STEP}: {entry['uri']} is not readable as {kind}: {error}") from error
    if settings.text_field not in frame.columns:
        raise StepError(f"{STEP}: {entry['uri']} has no text column {settings.text_field!r} (score.text_field); "
                        f"columns: {list(frame.columns)}")
    texts = frame[settings.text_field].tolist()
    ids = (frame[settings.id_field].tolist() if settings.id_field in frame.columns
           else [f"{entry['name']}:{number}" for number in range(len(frame))])
    return [{"id": str(row_id), "text": text if isinstance(text, str) and text.strip() else None,
             "source_file": str(entry["uri"])} for row_id, text in zip(ids, texts)]


def versions(config: PipelineConfig) -> tuple[str | None, str | None]:
    """(champion version, shadow version): the challenger only when it is another version and shadow is on."""
    champion = model_registry.version_by_alias(config, model_registry.CHAMPION)
    challenger = model_registry.version_by_alias(config, model_registry.CHALLENGER) if config.score.shadow else None
    champion_version = str(champion.version) if champion else None
    shadow = str(challenger.version) if challenger and str(challenger.version) != champion_version else None
    return champion_version, shadow


def run(config: PipelineConfig, inputs: Mapping[str, Manifest], *, run_id: str, store: ArtifactStore,
        logical_date: str | None = None) -> Manifest:
    pattern = input_pattern(config, logical_date)
    files = input_files(pattern)
    champion, shadow = versions(config)

    def body(context: StepContext) -> None:
        import pandas as pd

        # lazy: the DAG's control tasks import this module for ScoreFacts at every parse; pyarrow (0.5 s
        # measured) belongs to the run
        from tasks.records import write_parquet

        rows, invalid = rows_to_score(config, files)
        reason = nothing_to_score(pattern, files, champion, rows)
        frame = pd.DataFrame({"id": pd.Series(dtype="object"), "text_sha256": pd.Series(dtype="object"),
                              "label": pd.Series(dtype="object"), "confidence": pd.Series(dtype="float64")})
        variant = None
        if reason is None and champion is not None:
            frame, variant, context.metrics["seconds"] = predict(config, rows, champion, shadow)
        write_parquet(pa_table(frame), context.out_dir / "predictions.parquet")
        context.add_output("predictions", "predictions.parquet", "dataset", rows=len(frame),
                           model_version=champion, shadow_version=shadow if len(frame) else None)
        context.metrics.update({"rows": len(frame), "rows_invalid": len(invalid), "files": len(files),
                                "mean_confidence": float(frame["confidence"].mean()) if len(frame) else None})
        if shadow is not None and len(frame):
            context.metrics["shadow_agreement"] = float((frame["label"] == frame["shadow_label"]).mean())
        facts = ScoreFacts(
            scored=reason is None, reason=reason or f"{len(frame)} rows scored by version {champion}"
            + (f", version {shadow} in shadow" if shadow else ""),
            input=pattern, files=files, model=config.mlflow.model_name, model_version=champion,
            variant=variant, shadow_version=shadow,
            labels=frame["label"].value_counts().sort_index().to_dict() if len(frame) else {},
            invalid_rows=[row["id"] for row in invalid[:EXAMPLES]],
        )
        context.facts.update(facts.dump())
        log.info("score: %s", facts.reason)

    def track(manifest: Manifest) -> None:
        import mlflow

        facts = ScoreFacts.of(manifest)
        mlflow.set_tags({"freshet.model_version": str(facts.model_version),
                         "freshet.shadow_version": str(facts.shadow_version),
                         "freshet.score.input": str(facts.input)})
        ref = manifest.output("predictions")
        if ref.rows:
            log_predictions(config, store, ref, facts)

    manifest = execute(STEP, body, config, inputs, run_id=run_id, store=store, logical_date=logical_date,
                       config_sections=(STEP, "mlflow"),
                       extra_fingerprint={"files": [(item["uri"], item["size"], item["stamp"]) for item in files],
                                          "champion": champion, "shadow": shadow},
                       track=track)
    if config.score.log_predictions:
        publish(config, store, manifest)
    return manifest


def rows_to_score(config: PipelineConfig,
                  files: Sequence[Mapping[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The rows with a text (at most `score.max_rows`), and those without one."""
    rows = [row for entry in files for row in read_file(config, entry)]
    invalid = [row for row in rows if row["text"] is None]
    rows = [row for row in rows if row["text"] is not None]
    if config.score.max_rows is not None:
        rows = rows[:config.score.max_rows]
    return rows, invalid


def nothing_to_score(pattern: str | None, files: Sequence[Mapping[str, Any]], champion: str | None,
                     rows: Sequence[Mapping[str, Any]]) -> str | None:
    """Why nothing is scored on this run, or None."""
    if pattern is None:
        return "score.input is not set: nothing to score"
    if not files:
        return f"no file matches {pattern}"
    if champion is None:
        return "no champion yet: nothing scores until the first model is promoted"
    if not rows:
        return f"{len(files)} file(s) matching {pattern} hold no text to score"
    return None


def predict(config: PipelineConfig, rows: Sequence[Mapping[str, Any]], champion: str,
            shadow: str | None) -> tuple[Any, str | None, float]:
    """The champion's predictions (and the shadow version's beside them) as the prediction log's frame, the
    variant that served, and the seconds it took."""
    import numpy as np
    import pandas as pd

    # lazy: the DAG file imports this module at every parse; the scorer brings the model stack (1.1 s measured)
    from tasks.monitoring.feedback import text_digest
    from tasks.monitoring.scorer import load_scorer

    texts = [str(row["text"]) for row in rows]
    started = dt.datetime.now(dt.UTC)
    scorer = load_scorer(config, champion, config.score.batch_size)
    scored = scorer.score(texts)
    columns: dict[str, Any] = {
        "time": [started] * len(rows), "id": [row["id"] for row in rows],
        "text_sha256": [text_digest(text) for text in texts]}
    if config.score.store_text:
        columns["text"] = texts
    columns.update({"label": scored.labels, "confidence": scored.confidence})
    for position, label in enumerate(scored.label_names):
        columns[f"probability.{label}"] = scored.probabilities[:, position].astype(np.float64)
    columns.update({"model": config.mlflow.model_name, "model_version": champion, "variant": scorer.variant,
                    "source_file": [row["source_file"] for row in rows]})
    if shadow is not None:
        shadow_scorer = load_scorer(config, shadow, config.score.batch_size)
        shadowed = shadow_scorer.score(texts)
        columns.update({"shadow_version": shadow, "shadow_label": shadowed.labels,
                        "shadow_confidence": shadowed.confidence})
        del shadow_scorer
    frame = pd.DataFrame(columns)
    return frame, scorer.variant, (dt.datetime.now(dt.UTC) - started).total_seconds()


def pa_table(frame: Any) -> Any:
    import pyarrow as pa

    return pa.Table.from_pandas(frame, preserve_index=False)


def log_predictions(config: PipelineConfig, store: ArtifactStore, ref: ArtifactRef, facts: ScoreFacts) -> None:
    """The predictions as an MLflow dataset (output), tagged with the version(s) that made them."""
    import warnings

    import mlflow
    import mlflow.data
    import pandas as pd

    frame = pd.read_parquet(store.local_path(ref.uri))
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The specified dataset source can be interpreted in multiple ways")
        dataset = mlflow.data.from_pandas(frame, source=ref.uri, name=f"{config.name}.predictions",  # type: ignore[attr-defined]
                                          digest=ref.digest.removeprefix("sha256:")[:36])
    tags = {"freshet.digest": ref.digest, "freshet.model_version": str(facts.model_version)}
    if facts.shadow_version:
        tags["freshet.shadow_version"] = str(facts.shadow_version)
    mlflow.log_input(dataset, context="predictions", tags=tags)


def publish(config: PipelineConfig, store: ArtifactStore, manifest: Manifest) -> str | None:
    """File the champion's rows in the prediction log under the logical day (replacing this run's part)."""
    import pandas as pd

    # lazy: the DAG file imports this module at every parse (pandas and fsspec, 0.3 s measured)
    from tasks.monitoring.predictions import publish_batch

    ref = manifest.output("predictions")
    if not ref.rows:
        return None
    frame = pd.read_parquet(store.local_path(ref.uri))
    settings = config.serve.prediction_log
    texts: list[str | None]
    if "text" not in frame.columns or settings.store_text == "hash":
        texts = [None] * len(frame)
    elif settings.scrub_pii:
        scrub = pii_scrubber()
        texts = [scrub(str(text)) for text in frame["text"]]
    else:
        texts = [str(text) for text in frame["text"]]
    rows = [{"time": time.to_pydatetime() if hasattr(time, "to_pydatetime") else time, "request_id": manifest.run_id,
             "endpoint": "batch", "model": model, "model_version": str(version), "label": label,
             "confidence": float(confidence), "text": text, "text_sha256": digest}
            for time, model, version, label, confidence, text, digest in zip(
                frame["time"], frame["model"], frame["model_version"], frame["label"], frame["confidence"], texts,
                frame["text_sha256"])]
    day = logical_day(manifest.logical_date) or dt.datetime.now(dt.UTC).date()
    uri = publish_batch(store, day, manifest.run_id, rows)
    log.info("score: %d rows filed in the prediction log at %s", len(rows), uri)
    return uri


def main(argv: Sequence[str] | None = None) -> int:
    return cli(STEP, run, argv, __doc__)


if __name__ == "__main__":
    raise SystemExit(main())
