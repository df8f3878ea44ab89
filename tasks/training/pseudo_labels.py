"""Self-training's selection: which unlabelled texts join a round with the served model's label.

Per predicted class, the most confident texts at or above `min_confidence`, the same number for every class
(so a model's favourite class does not flood the round), at most `max_share` x the real train rows in all.
The rows are tagged like augmentation (`augmented_from`, `pseudo_label`): they train, and are never evaluated on.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from tasks.config import PseudoLabelConfig


def select_pseudo_labels(rows: Sequence[dict[str, Any]], probabilities: np.ndarray, labels: Sequence[str],
                         real_train_rows: int, settings: PseudoLabelConfig) -> list[dict[str, Any]]:
    """Pseudo-labelled copies of the chosen `rows` (each with `id` and `text`); `probabilities` rows x labels."""
    budget = int(settings.max_share * real_train_rows)
    if budget == 0 or not len(rows):
        return []
    predicted, confidence = probabilities.argmax(axis=1), probabilities.max(axis=1)
    per_class = max(1, budget // len(labels))
    chosen: list[int] = []
    for label_id in range(len(labels)):
        confident = np.flatnonzero((predicted == label_id) & (confidence >= settings.min_confidence))
        chosen.extend(confident[np.argsort(-confidence[confident], kind="stable")][:per_class].tolist())
    return [{"id": f"pseudo:{rows[index]['id']}", "text": rows[index]["text"], "label": labels[predicted[index]],
             "augmented_from": rows[index]["id"], "pseudo_label": True, "confidence": float(confidence[index])}
            for index in sorted(chosen)[:budget]]
