"""The registered model: an MLflow pyfunc (models-from-code) that maps texts to labels.

It wraps a Hugging Face directory (safetensors) logged as the `hf_model` artifact (weights, config,
tokenizer). `model_config["variant"]` picks what runs: `fp32`, `int8-dynamic` (a quantization recipe
applied at load time), `onnx-fp32` / `onnx-int8` / `distilled-onnx-int8` (the ONNX file logged as
the `onnx_model` artifact, run by onnxruntime), or `distilled` (the student's HF directory logged as
the `student_model` artifact). Older versions carry only `quantization` (None or `int8-dynamic`).
With a `blend` artifact, the probabilities are blended with the lexical model's (tasks/models/blend.py).
No pickled modules.
Input: a DataFrame with a `text` column (or a list of strings). Output: `label`, `probability`.
"""

from __future__ import annotations

import logging
from pathlib import Path

import mlflow
import pandas as pd
from mlflow.pyfunc import PythonModel

log = logging.getLogger("freshet.serving")


class TextClassifier(PythonModel):
    def load_context(self, context) -> None:
        # lazy: register imports this module to log the model; the serving stack (torch, onnxruntime: 3.6 s
        # measured) is for the process that loads it
        from tasks.models.blend import load_blend
        from tasks.models.compression import load_serving_model

        settings = context.model_config or {}
        variant = settings.get("variant") or settings.get("quantization") or "fp32"
        onnx_path = context.artifacts.get("onnx_model")
        model_dir = context.artifacts["hf_model"]
        if variant.endswith(("onnx-fp32", "onnx-int8")):
            if not onnx_path:
                # A version logged without its ONNX file: serve the fp32 weights the variant was gated against.
                log.warning("variant %s has no onnx_model artifact; serving fp32", variant)
                variant = "fp32"
        elif variant == "distilled":
            if context.artifacts.get("student_model"):
                model_dir = context.artifacts["student_model"]
            else:
                log.warning("variant distilled has no student_model artifact; serving fp32")
                variant = "fp32"
        self.model, self.tokenizer = load_serving_model(Path(model_dir), variant,
                                                        Path(onnx_path) if onnx_path else None,
                                                        bool(settings.get("trust_remote_code", False)))
        self.variant = variant
        # The lexical model and weight this version serves blended with the transformer (tasks/models/blend.py).
        self.blend = load_blend(Path(context.artifacts["blend"])) if context.artifacts.get("blend") else None
        self.max_length = int(settings.get("max_length", 128))
        self.labels = [self.model.config.id2label[index] for index in range(self.model.config.num_labels)]

    def predict(self, context, model_input, params=None) -> pd.DataFrame:
        from tasks.models.inference import predict  # lazy: as in load_context (torch, 1.7 s measured)

        texts = model_input["text"].astype(str).tolist() if isinstance(model_input, pd.DataFrame) else [str(t) for t in model_input]
        result = predict(self.model, self.tokenizer, texts, max_length=self.max_length, blend=self.blend)
        return pd.DataFrame({"label": [self.labels[index] for index in result.label_ids],
                             "probability": result.probabilities.max(axis=1).astype("float64")})


mlflow.models.set_model(TextClassifier())
