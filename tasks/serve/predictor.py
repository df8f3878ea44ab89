"""The served model's predictor: the registered pyfunc, called once per batch of texts, answering with every
class's probability where the model exposes them (`Predictions`). An ONNX variant runs its onnxruntime session
directly (the fast path), once `verify_fast_path` has checked at load that this reproduces the pyfunc.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

log = logging.getLogger("freshet.serve.predictor")


@dataclass(frozen=True)
class Predictions:
    """A batch's answers; `probabilities` (rows x classes, columns in `label_names` order) is None when the
    model reports only its label's probability."""

    labels: list[str]
    confidences: list[float]
    probabilities: np.ndarray | None
    label_names: list[str]

    def slice(self, start: int, stop: int) -> Predictions:
        probabilities = None if self.probabilities is None else self.probabilities[start:stop]
        return Predictions(self.labels[start:stop], self.confidences[start:stop], probabilities, self.label_names)

    def distributions(self) -> list[dict[str, float]]:
        if self.probabilities is None:
            return [{label: confidence} for label, confidence in zip(self.labels, self.confidences)]
        return [dict(zip(self.label_names, row.tolist())) for row in self.probabilities]


ONNX_CHUNK = 64  # texts per session call, as tasks.models.inference.predict batches them
FAST_PATH_TOLERANCE = 1e-5


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


class Predictor:
    """The registered pyfunc, called once per batch of texts.

    Our `TextClassifier` (tasks/models/serving.py) exposes the model it loaded for the registered variant, and
    every class's probability is kept. An ONNX variant runs its onnxruntime session directly on the
    tokenizer's padded arrays (same tokenizer, truncation and session as the pyfunc's `predict`, without its
    per-call torch round trips: a third of a one-text call); `verify_fast_path` checks at load that this
    reproduces the pyfunc's own computation, else the version is served through
    `tasks.models.inference.predict`, the call the pyfunc makes, as the torch variants are. Any other pyfunc
    is called through its `predict` on a DataFrame.
    """

    def __init__(self, pyfunc_model: Any) -> None:
        self.pyfunc = pyfunc_model
        inner = pyfunc_model.unwrap_python_model()
        exposes_model = all(hasattr(inner, name) for name in ("model", "tokenizer", "labels", "max_length"))
        self._inner: Any = inner if exposes_model else None
        self.label_names: list[str] = [str(label) for label in inner.labels] if self._inner is not None else []
        self.variant: str | None = getattr(inner, "variant", None)
        model = getattr(self._inner, "model", None)
        self._session: Any = getattr(model, "session", None) if hasattr(model, "input_names") else None
        self.fast_path = self._session is not None

    def predict(self, texts: Sequence[str]) -> Predictions:
        if self._inner is None:
            return self._predict_pyfunc(texts)
        probabilities = self._onnx_probabilities(texts) if self.fast_path else self._pyfunc_probabilities(texts)
        return Predictions([self.label_names[int(index)] for index in probabilities.argmax(axis=1)],
                           probabilities.max(axis=1).astype(float).tolist(), probabilities, self.label_names)

    def _pyfunc_probabilities(self, texts: Sequence[str]) -> np.ndarray:
        # lazy: tasks.models.inference imports torch (2.2 s measured), which an ONNX variant served on the fast
        # path never needs.
        from tasks.models.inference import predict

        inner = self._inner
        return predict(inner.model, inner.tokenizer, texts, max_length=inner.max_length,
                       blend=getattr(inner, "blend", None)).probabilities

    def _onnx_probabilities(self, texts: Sequence[str]) -> np.ndarray:
        if len(texts) > ONNX_CHUNK:  # a large request: length-sorted chunks, as inference.predict makes them
            from tasks.models.inference import length_sorted_batches  # lazy: it imports torch (2.2 s)

            inner = self._inner
            lengths = [len(ids) for ids in inner.tokenizer(list(texts), truncation=True,
                                                           max_length=inner.max_length)["input_ids"]]
            probabilities = np.zeros((len(texts), len(self.label_names)), dtype=np.float32)
            for chunk in length_sorted_batches(lengths, ONNX_CHUNK):
                probabilities[chunk] = self._onnx_call([texts[index] for index in chunk])
            return probabilities
        return self._onnx_call(texts)

    def _onnx_call(self, texts: Sequence[str]) -> np.ndarray:
        inner, session = self._inner, self._session
        encoded = inner.tokenizer(list(texts), truncation=True, max_length=inner.max_length, padding=True,
                                  return_tensors="np")
        ids = encoded["input_ids"]
        feed = {name: (encoded[name] if name in encoded else np.zeros_like(ids)).astype(np.int64, copy=False)
                for name in inner.model.input_names}
        probabilities = softmax(session.run(["logits"], feed)[0].astype(np.float32))
        blend = getattr(inner, "blend", None)
        return blend.mix(texts, probabilities) if blend is not None else probabilities

    def verify_fast_path(self, texts: Sequence[str]) -> None:
        """Serve through the session directly only if it gives what the pyfunc's own computation gives."""
        if not self.fast_path:
            return
        direct, reference = self._onnx_probabilities(texts), self._pyfunc_probabilities(texts)
        difference = float(np.abs(direct - reference).max())
        if difference > FAST_PATH_TOLERANCE or (direct.argmax(axis=1) != reference.argmax(axis=1)).any():
            log.warning("serve: calling the ONNX session directly differs from the pyfunc by %.3g; serving through "
                        "tasks.models.inference.predict", difference)
            self.fast_path = False

    def _predict_pyfunc(self, texts: Sequence[str]) -> Predictions:
        import pandas as pd

        frame = self.pyfunc.predict(pd.DataFrame({"text": list(texts)}))
        return Predictions([str(label) for label in frame["label"]], [float(p) for p in frame["probability"]], None, [])
