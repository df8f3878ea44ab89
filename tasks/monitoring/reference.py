"""A version's reference: its predictions on its own labelled test slices, what production is compared with.

The version's source run (register's MLflow run) names the manifests it was built from
(`freshet.manifest.<step>` tags); its clean manifest gives the day's dataset and the prior snapshots, so
`tasks.records.evaluation_slices` yields the same frozen / fresh / old test rows the gate scored it on at
promotion. Each row is scored by the version's serving model: predicted label, every class's probability,
top-1 confidence and whether it was right, plus the text's length, its word OOV share against the version's training texts
(the train split of the same snapshots) and the tokenizer's unknown-token share.

A version and its slices never change, so a reference is built once and cached in the artifact store at
`state/monitor/reference/<version>-<key>/` (`reference.parquet` rows and `reference.json`: vocabulary,
rates, calibration, real metrics), keyed by what the version points at (a re-created registry reusing
version numbers gets its own).
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from tasks import model_registry
from tasks.config import PipelineConfig
from tasks.manifest import Manifest, StepError
from tasks.monitoring import drift
from tasks.monitoring.estimate import (
    MIN_SUPPORT,
    Calibration,
    ClassCalibration,
    estimate,
    estimate_from_probabilities,
    fit_calibration,
    fit_class_calibration,
)
from tasks.monitoring.predictions import put_file
from tasks.monitoring.scorer import Scorer
from tasks.records import CleanFacts, evaluation_slices, read_rows, write_parquet
from tasks.store import ArtifactStore

log = logging.getLogger("freshet.monitor.reference")
FOLDER = ("state", "monitor", "reference")
CLEAN_TAG = "freshet.manifest.clean"
SAMPLE_SEED = 0
FORMAT = 2  # a cached reference of another format is rebuilt
PROBABILITY = "probability."


class NoReference(StepError):
    """The version carries no evidence to build a reference from (registered outside the pipeline)."""


@dataclass
class Reference:
    version: str
    rows: pd.DataFrame  # id, text_sha256, label, predicted, confidence, correct, length, oov
    vocabulary: set[str]
    calibration: Calibration
    summary: dict[str, Any]  # rates and real metrics on the reference itself
    location: str

    @property
    def label_names(self) -> list[str]:
        return self.calibration.labels

    @property
    def truth(self) -> np.ndarray:
        index = {label: position for position, label in enumerate(self.label_names)}
        return np.asarray([index.get(label, -1) for label in self.rows["label"]], dtype=int)

    @property
    def probabilities(self) -> np.ndarray:
        return self.rows[[f"{PROBABILITY}{label}" for label in self.label_names]].to_numpy(dtype=float)

    def class_calibration(self) -> ClassCalibration:
        """Each class's probability calibrated one-vs-rest on the reference (CBPE with every probability)."""
        return fit_class_calibration(self.truth, self.probabilities, self.label_names)


def reference_key(config: PipelineConfig, model_version: Any) -> str:
    identity = f"{config.mlflow.tracking_uri}|{model_version.source}|{model_version.creation_timestamp}"
    return hashlib.sha256(identity.encode()).hexdigest()[:16]


def clean_manifest(config: PipelineConfig, model_version: Any) -> Manifest:
    """The clean manifest the version was trained and tested on, from its source run's tags."""
    import fsspec

    client = model_registry.client(config)
    name = f"{config.mlflow.model_name}/{model_version.version}"
    if not model_version.run_id:
        raise NoReference(f"model version {name} has no source run: no test slices to build a reference from")
    uri = client.get_run(model_version.run_id).data.tags.get(CLEAN_TAG)
    if not uri:
        raise NoReference(f"model version {name}: its source run {model_version.run_id} has no {CLEAN_TAG} tag "
                          "(registered outside the pipeline?): no test slices to build a reference from")
    try:
        with fsspec.open(uri, "r") as handle:
            return Manifest.model_validate_json(handle.read())
    except FileNotFoundError as error:
        raise NoReference(f"model version {name}: its clean manifest {uri} is gone") from error


def test_rows(store: ArtifactStore, clean: Manifest, max_rows: int) -> list[dict[str, Any]]:
    """The version's test slices (frozen, fresh, old), each row once, at most `max_rows` (seeded sample)."""
    seen: dict[str, dict[str, Any]] = {}
    for rows in evaluation_slices(clean, store).values():
        for row in rows:
            seen.setdefault(str(row["id"]), row)
    rows = [seen[key] for key in sorted(seen)]
    if len(rows) > max_rows:
        keep = np.sort(np.random.default_rng(SAMPLE_SEED).choice(len(rows), size=max_rows, replace=False))
        rows = [rows[index] for index in keep]
    return rows


def training_texts(store: ArtifactStore, clean: Manifest) -> list[str]:
    """The train split of the day's dataset and of the snapshots before it: what the version learned from."""
    uris = [snapshot.uri for snapshot in CleanFacts.of(clean).prior_snapshots] + [clean.output("dataset").uri]
    return [row["text"] for uri in uris for row in read_rows(store.local_path(uri)) if row.get("split") == "train"]


def text_digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def build(config: PipelineConfig, store: ArtifactStore, scorer: Scorer, model_version: Any) -> Reference:
    settings = config.monitor
    clean = clean_manifest(config, model_version)
    rows = test_rows(store, clean, settings.reference_max_rows)
    if not rows:
        raise NoReference(f"model version {config.mlflow.model_name}/{model_version.version}: its test slices are empty")
    vocabulary = drift.vocabulary(training_texts(store, clean))
    texts = [str(row["text"]) for row in rows]
    scored = scorer.score(texts)
    index = {label: position for position, label in enumerate(scorer.label_names)}
    truth = np.asarray([index.get(str(row["label"]), -1) for row in rows], dtype=int)
    predicted = np.asarray([index[label] for label in scored.labels], dtype=int)
    frame = pd.DataFrame({
        "id": [str(row["id"]) for row in rows], "text_sha256": [text_digest(text) for text in texts],
        "label": [str(row["label"]) for row in rows], "predicted": scored.labels,
        "confidence": scored.confidence, "correct": truth == predicted,
        "length": [len(text) for text in texts],
        **{f"{PROBABILITY}{label}": scored.probabilities[:, position].astype(np.float64)
           for position, label in enumerate(scorer.label_names)},
    })
    calibration = fit_calibration(truth, predicted, scored.confidence, scorer.label_names)
    # lazy: scikit-learn (1.0 s measured), needed only when a version's reference is built, once per version
    from tasks.models.metrics import classification_metrics

    real = classification_metrics(truth.tolist(), predicted, scorer.label_names)
    summary = {
        "version": str(model_version.version), "rows": len(rows), "clean_manifest": clean.uri,
        "built_from_run": clean.run_id, "variant": scorer.variant,
        "real_macro_f1": real["macro_f1"], "real_accuracy": real["accuracy"],
        "estimated": {key: value for key, value in estimate(calibration, predicted, scored.confidence,
                                                               MIN_SUPPORT).items()
                      if key in ("macro_f1", "accuracy", "rows")},
        "estimated_from_probabilities": {
            key: value for key, value in estimate_from_probabilities(
                fit_class_calibration(truth, scored.probabilities, scorer.label_names), scored.probabilities).items()
            if key in ("macro_f1", "accuracy", "rows")},
        "oov_rate": drift.oov_rate(texts, vocabulary),
        "unk_rate": drift.unk_rate(scorer.tokenizer, texts, scorer.max_length),
        "vocabulary_words": len(vocabulary),
        "predicted_labels": frame["predicted"].value_counts().sort_index().to_dict(),
    }
    return Reference(str(model_version.version), frame, vocabulary, calibration, summary, "")


def load_or_build(config: PipelineConfig, store: ArtifactStore, scorer: Scorer, model_version: Any) -> Reference:
    """The version's cached reference, built (and cached) on first use."""
    folder = (*FOLDER, f"v{model_version.version}-{reference_key(config, model_version)}")
    location = store.uri(*folder)
    cached = store.read_json(*folder, "reference.json")
    if (cached is not None and cached.get("format") == FORMAT
            and cached.get("reference_max_rows") == config.monitor.reference_max_rows):
        rows = pd.read_parquet(store.local_path(store.uri(*folder, "reference.parquet")))
        calibration = Calibration(np.asarray(cached["calibration"]["thresholds"]),
                                  np.asarray(cached["calibration"]["values"]),
                                  np.asarray(cached["calibration"]["error_pattern"]), cached["calibration"]["labels"])
        return Reference(str(model_version.version), rows, set(cached["vocabulary"]), calibration,
                         cached["summary"], location)
    log.info("monitor: building the reference of version %s (its test slices, scored by its serving model)",
             model_version.version)
    reference = build(config, store, scorer, model_version)
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as directory:
        local = Path(directory) / "reference.parquet"
        write_parquet(reference.rows.to_dict("records"), local)
        put_file(store, local, *folder, "reference.parquet")
    # The JSON last: a reference without it is rebuilt, so a half-written cache is never read.
    store.write_json({"summary": reference.summary, "calibration": reference.calibration.to_dict(),
                      "vocabulary": sorted(reference.vocabulary),
                      "reference_max_rows": config.monitor.reference_max_rows, "format": FORMAT},
                     *folder, "reference.json")
    reference.location = location
    return reference

