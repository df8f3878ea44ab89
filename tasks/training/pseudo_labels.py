"""Self-training's selection: which unlabelled texts join a round with the served model's label.

Per predicted class, the most confident texts at or above `min_confidence`, the same number for every class
(so a model's favourite class does not flood the round), at most `max_share` x the real train rows in all.
The rows are tagged like augmentation (`augmented_from`, `pseudo_label`): they train, and are never evaluated on.

In the pipeline the texts are the champion's answers in the prediction log (what `freshet serve` and batch
scoring filed, calibrated confidence included) over `window_days`, less every text anyone labelled: the teacher
costs nothing, only the second fit does (tasks/train.py keeps it when the validation split says it helps).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Container, Sequence
from typing import Any

import numpy as np

from tasks.config import PseudoLabelConfig
from tasks.monitoring.predictions import log_parts, read_parts, window
from tasks.store import ArtifactStore


def select_pseudo_labels(rows: Sequence[dict[str, Any]], probabilities: np.ndarray, labels: Sequence[str],
                         real_train_rows: int, settings: PseudoLabelConfig) -> list[dict[str, Any]]:
    """Pseudo-labelled copies of the chosen `rows` (each with `id` and `text`); `probabilities` rows x labels."""
    return choose(rows, probabilities.argmax(axis=1), probabilities.max(axis=1), labels, real_train_rows, settings)


def choose(rows: Sequence[dict[str, Any]], predicted: np.ndarray, confidence: np.ndarray, labels: Sequence[str],
           real_train_rows: int, settings: PseudoLabelConfig) -> list[dict[str, Any]]:
    """`select_pseudo_labels` from each row's predicted label id and its confidence."""
    budget = int(settings.max_share * real_train_rows)
    if budget == 0 or not len(rows):
        return []
    per_class = max(1, budget // len(labels))
    chosen: list[int] = []
    for label_id in range(len(labels)):
        confident = np.flatnonzero((predicted == label_id) & (confidence >= settings.min_confidence))
        chosen.extend(confident[np.argsort(-confidence[confident], kind="stable")][:per_class].tolist())
    return [{"id": f"pseudo:{rows[index]['id']}", "text": rows[index]["text"], "label": labels[predicted[index]],
             "augmented_from": rows[index]["id"], "pseudo_label": True, "confidence": float(confidence[index])}
            for index in sorted(chosen)[:budget]]


def window_parts(store: ArtifactStore, day: dt.date, settings: PseudoLabelConfig) -> list[dict[str, Any]]:
    """The prediction log's parts over the `window_days` ending on `day` (what identifies them goes into the train
    step's fingerprint: a grown log is another round)."""
    return log_parts(store, window(day, settings.window_days))


def from_prediction_log(store: ArtifactStore, parts: Sequence[dict[str, Any]], champion_version: str,
                        labels: Sequence[str], labelled: Container[str], text_key: Callable[[str], str],
                        real_train_rows: int, settings: PseudoLabelConfig) -> tuple[list[dict[str, Any]], int]:
    """(pseudo-labelled rows, candidate texts) from the champion's answers in the log's `parts`: one per distinct
    text (by `text_key`, clean's normalised-text hash) that is not `labelled`, whose label is one of `labels`.
    Rows logged as hashes only carry no text and are left out."""
    frame = read_parts(store, parts)
    if frame.empty:
        return [], 0
    frame = frame[(frame["model_version"] == str(champion_version)) & frame["text"].notna()
                  & frame["label"].isin(list(labels))]
    rows: list[dict[str, Any]] = []
    predicted, confidence, seen = [], [], set()
    for text, label, score in zip(frame["text"], frame["label"], frame["confidence"]):
        key = text_key(str(text))
        if key in labelled or key in seen:
            continue
        seen.add(key)
        rows.append({"id": f"log:{key[:16]}", "text": str(text)})
        predicted.append(list(labels).index(label))
        confidence.append(float(score))
    chosen = choose(rows, np.asarray(predicted, dtype=np.int64), np.asarray(confidence, dtype=np.float64), labels,
                    real_train_rows, settings)
    return chosen, len(rows)
