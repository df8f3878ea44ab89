"""Labelled feedback: rows whose true label arrived after their text was predicted.

Any crawl source can be a feedback source: its records go through validation like every other, and the
valid rows of every pipeline run (`runs/<run>/validate/valid.parquet`) are the labels known so far. They
are matched with the prediction log by the sha256 of the text (`text_sha256`), so a log that keeps only
hashes (`serve.prediction_log.store_text: hash`) is matched as well. `monitor.feedback_sources` names
the sources that count (default: all); only runs up to the monitor's logical date count, so a backfill
sees what had arrived by then. A text labelled more than once keeps its latest label.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import pandas as pd

from tasks.config import PipelineConfig
from tasks.contract import read_manifest
from tasks.store import ArtifactStore


def feedback_runs(store: ArtifactStore, config: PipelineConfig, until: str | None) -> list[dict[str, Any]]:
    """The validate manifests whose valid rows count as feedback: run id, logical date, uri, fingerprint."""
    found = []
    for directory in store.run_directories():
        manifest = read_manifest(store, directory, "validate")
        if manifest is None or "valid" not in manifest.outputs:
            continue
        if until is not None and (manifest.logical_date or "")[:10] > until[:10]:
            continue
        found.append({"run_id": manifest.run_id, "logical_date": manifest.logical_date,
                      "uri": manifest.output("valid").uri, "fingerprint": manifest.fingerprint})
    return sorted(found, key=lambda entry: (entry["logical_date"] or "", entry["run_id"]))


def text_digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def labelled_rows(store: ArtifactStore, runs: Sequence[dict[str, Any]], sources: Sequence[str] | None) -> pd.DataFrame:
    """text_sha256 -> label (and where it came from), the latest run's label winning."""
    frames = []
    for entry in runs:
        frame = pd.read_parquet(store.local_path(entry["uri"]), columns=["text", "label", "source"])
        if sources is not None:
            frame = frame[frame["source"].isin(list(sources))]
        frame = frame.dropna(subset=["text", "label"])
        frames.append(pd.DataFrame({"text_sha256": [text_digest(str(text)) for text in frame["text"]],
                                    "true_label": frame["label"].astype(str).to_numpy(),
                                    "feedback_source": frame["source"].astype(str).to_numpy(),
                                    "feedback_run": entry["run_id"]}))
    if not frames:
        return pd.DataFrame(columns=["text_sha256", "true_label", "feedback_source", "feedback_run"])
    return pd.concat(frames, ignore_index=True).drop_duplicates("text_sha256", keep="last")


def join(predictions: pd.DataFrame, labelled: pd.DataFrame) -> pd.DataFrame:
    """The predictions whose text has a label, with it (`true_label`)."""
    if predictions.empty or labelled.empty:
        return predictions.iloc[0:0].assign(true_label=pd.Series(dtype="object"))
    return predictions.merge(labelled[["text_sha256", "true_label"]], on="text_sha256", how="inner")
