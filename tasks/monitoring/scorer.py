"""A registered version's serving model, with every class's probability.

The registered pyfunc (`tasks/models/serving.py`) answers a label and its probability only. Our
`TextClassifier` keeps the model it loaded for the version's serving variant (fp32, int8, ONNX, the
distilled student), so that model is run through `tasks.models.inference.predict` (the call its
`predict` makes) and every class's probability is kept: what `freshet serve` answers is what batch
scoring and the monitor's reference see. The pyfunc is loaded from the local copy
`model_registry.download_model_dir` caches (downloaded once per version).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tasks import model_registry
from tasks.config import PipelineConfig
from tasks.models.blend import Blend


@dataclass
class ScoredTexts:
    labels: list[str]
    confidence: np.ndarray  # top-1 probability
    probabilities: np.ndarray  # rows x classes, in `label_names` order
    label_names: list[str]


@dataclass
class Scorer:
    version: str
    variant: str
    label_names: list[str]
    model: Any
    tokenizer: Any
    max_length: int
    batch_size: int = 64
    blend: Blend | None = None  # the lexical blend the version serves with its transformer

    def score(self, texts: Sequence[str]) -> ScoredTexts:
        # lazy: the monitor builds a Scorer from a cached reference without scoring; torch is 1.0 s measured
        from tasks.models.inference import predict

        if not texts:
            empty = np.zeros((0, len(self.label_names)), dtype=np.float32)
            return ScoredTexts([], np.zeros(0), empty, self.label_names)
        result = predict(self.model, self.tokenizer, list(texts), max_length=self.max_length,
                         batch_size=self.batch_size, blend=self.blend)
        return ScoredTexts([self.label_names[int(index)] for index in result.label_ids],
                           result.probabilities.max(axis=1).astype(np.float64), result.probabilities,
                           self.label_names)


def pyfunc_root(model_dir: Path) -> Path:
    """The pyfunc directory (the one with MLmodel) that holds a version's Hugging Face directory."""
    for candidate in (model_dir, *model_dir.parents):
        if (candidate / "MLmodel").exists():
            return candidate
    raise FileNotFoundError(f"no MLmodel above {model_dir}")


def load_scorer(config: PipelineConfig, version: str, batch_size: int = 64) -> Scorer:
    """The serving model of `version` (the variant the gate chose) and its tokenizer."""
    import mlflow

    root = pyfunc_root(model_registry.download_model_dir(config, str(version)))
    pyfunc = mlflow.pyfunc.load_model(str(root))
    inner = pyfunc.unwrap_python_model()
    if not all(hasattr(inner, name) for name in ("model", "tokenizer", "labels", "max_length")):
        raise TypeError(f"model version {config.mlflow.model_name}/{version} is not freshet's TextClassifier; "
                        "batch scoring needs every class's probability")
    return Scorer(version=str(version), variant=str(getattr(inner, "variant", "fp32")),
                  label_names=[str(label) for label in inner.labels], model=inner.model, tokenizer=inner.tokenizer,
                  max_length=int(inner.max_length), batch_size=batch_size, blend=getattr(inner, "blend", None))
