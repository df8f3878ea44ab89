"""Classification metrics on label ids, with the label names they stand for."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_recall_fscore_support

from tasks.models.blend import Blend
from tasks.models.inference import predict


def classification_metrics(truth: Sequence[int], predicted: Sequence[int] | np.ndarray, labels: Sequence[str]) -> dict[str, Any]:
    """Accuracy, macro/weighted F1, per-class precision/recall/F1 and the confusion matrix."""
    indices = list(range(len(labels)))
    truth_array, predicted_array = np.asarray(truth), np.asarray(predicted)
    if truth_array.size == 0:
        return {"rows": 0, "accuracy": float("nan"), "macro_f1": float("nan"), "weighted_f1": float("nan"),
                "per_class": {}, "confusion_matrix": []}
    precision, recall, f1, support = precision_recall_fscore_support(
        truth_array, predicted_array, labels=indices, zero_division=0
    )
    present = [index for index in indices if support[index] > 0]  # classes absent from a slice don't count
    return {
        "rows": int(truth_array.size),
        "accuracy": float(accuracy_score(truth_array, predicted_array)),
        "macro_f1": float(f1_score(truth_array, predicted_array, labels=present, average="macro", zero_division=0)),
        "weighted_f1": float(f1_score(truth_array, predicted_array, labels=indices, average="weighted", zero_division=0)),
        "per_class": {
            labels[index]: {"precision": float(precision[index]), "recall": float(recall[index]),
                            "f1": float(f1[index]), "support": int(support[index])}
            for index in indices
        },
        "confusion_matrix": confusion_matrix(truth_array, predicted_array, labels=indices).tolist(),
    }


def expected_calibration_error(truth: Sequence[int], probabilities: np.ndarray, bins: int = 15) -> float:
    """ECE: row-weighted mean |accuracy - confidence| over equal-width bins of the top probability."""
    truth_array = np.asarray(truth)
    probabilities = np.asarray(probabilities, dtype=np.float64)
    if truth_array.size == 0:
        return float("nan")
    confidence = probabilities.max(axis=1)
    correct = (probabilities.argmax(axis=1) == truth_array).astype(np.float64)
    # Bin i holds confidences in (i/bins, (i+1)/bins]; confidence is >= 1/classes > 0.
    index = np.clip(np.ceil(confidence * bins).astype(int) - 1, 0, bins - 1)
    counts = np.bincount(index, minlength=bins)
    gap = np.abs(np.bincount(index, weights=correct, minlength=bins) - np.bincount(index, weights=confidence, minlength=bins))
    return float(gap.sum() / counts.sum())


def in_label_space(label_ids: np.ndarray, probabilities: np.ndarray, model_labels: Sequence[str],
                   labels: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """A model's predictions over its own labels re-laid onto the run's `labels`, by name.

    A champion trained before a label joined has no column for it (probability 0 there); a model label the
    run does not have maps to -1 (never correct) and its probability is dropped.
    """
    index = {label: position for position, label in enumerate(labels)}
    target = np.asarray([index.get(label, -1) for label in model_labels], dtype=np.int64)
    relaid = np.zeros((probabilities.shape[0], len(labels)), dtype=probabilities.dtype)
    known = target >= 0
    relaid[:, target[known]] = probabilities[:, known]
    return target[label_ids], relaid


def slice_scores(slices: Mapping[str, Sequence[dict[str, Any]]], probabilities: Mapping[str, np.ndarray],
                 labels: Sequence[str], *, calibration_bins: int = 15,
                 label_ids: Mapping[str, np.ndarray] | None = None,
                 ) -> tuple[dict[str, dict[str, Any]], dict[str, list[int]]]:
    """Metrics per slice (with ECE) and the per-row predicted label ids, from each slice's probabilities
    (rows x `labels`); `label_ids` where the prediction is not their argmax (-1: a label the run lacks)."""
    index = {label: position for position, label in enumerate(labels)}
    metrics, predicted = {}, {}
    for name, rows in slices.items():
        ids = label_ids[name] if label_ids is not None else probabilities[name].argmax(axis=1)
        truth = [index[row["label"]] for row in rows]
        metrics[name] = classification_metrics(truth, ids, labels)
        metrics[name]["ece"] = expected_calibration_error(truth, probabilities[name], calibration_bins)
        predicted[name] = [int(value) for value in ids]
    return metrics, predicted


def slice_probabilities(model, tokenizer, slices: Mapping[str, Sequence[dict[str, Any]]], labels: Sequence[str], *,
                        max_length: int, batch_size: int, model_labels: Sequence[str] | None = None,
                        blend: Blend | None = None) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Each slice's probabilities over `labels` and predicted label ids. `model_labels`: the model's own label
    order, when it differs from `labels` (a champion from before the label set grew): mapped onto `labels` by
    name (tasks.models.metrics.in_label_space)."""
    relabel = model_labels is not None and list(model_labels) != list(labels)
    probabilities, label_ids = {}, {}
    for name, rows in slices.items():
        result = predict(model, tokenizer, [row["text"] for row in rows], max_length=max_length, batch_size=batch_size,
                         blend=blend)
        ids, values = result.label_ids, result.probabilities
        if relabel and model_labels is not None:
            ids, values = in_label_space(ids, values, model_labels, labels)
        probabilities[name], label_ids[name] = values, ids
    return probabilities, label_ids


def score(model, tokenizer, slices: Mapping[str, Sequence[dict[str, Any]]], labels: Sequence[str], *,
          max_length: int, batch_size: int, calibration_bins: int = 15, model_labels: Sequence[str] | None = None,
          blend: Blend | None = None) -> tuple[dict[str, dict[str, Any]], dict[str, list[int]]]:
    """Metrics per slice (with ECE) and the per-row predicted label ids (for paired gate statistics)."""
    probabilities, label_ids = slice_probabilities(model, tokenizer, slices, labels, max_length=max_length,
                                                   batch_size=batch_size, model_labels=model_labels, blend=blend)
    return slice_scores(slices, probabilities, labels, calibration_bins=calibration_bins, label_ids=label_ids)
