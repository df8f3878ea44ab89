"""The registered model: an MLflow pyfunc (models-from-code) that maps texts to labels.

It wraps a Hugging Face directory (safetensors) logged as the `hf_model` artifact; `model_config`
says whether to apply the int8 dynamic quantization recipe at load time. No pickled modules.
Input: a DataFrame with a `text` column (or a list of strings). Output: `label`, `probability`.
"""

from __future__ import annotations

from pathlib import Path

import mlflow
import pandas as pd
from mlflow.pyfunc import PythonModel


class TextClassifier(PythonModel):
    def load_context(self, context) -> None:
        from tasks.modeling import load_classifier

        settings = context.model_config or {}
        self.model, self.tokenizer = load_classifier(Path(context.artifacts["hf_model"]), settings.get("quantization"))
        self.max_length = int(settings.get("max_length", 128))
        self.labels = [self.model.config.id2label[index] for index in range(self.model.config.num_labels)]

    def predict(self, context, model_input, params=None) -> pd.DataFrame:  # noqa: ARG002
        from tasks.modeling import predict

        texts = model_input["text"].astype(str).tolist() if isinstance(model_input, pd.DataFrame) else [str(t) for t in model_input]
        result = predict(self.model, self.tokenizer, texts, max_length=self.max_length)
        return pd.DataFrame({"label": [self.labels[index] for index in result.label_ids],
                             "probability": result.probabilities.max(axis=1).astype("float64")})


mlflow.models.set_model(TextClassifier())
