"""MLflow Model Registry access: champion resolution and model download (aliases, never stages)."""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

from tasks.config import PipelineConfig

CHAMPION = "champion"
CHALLENGER = "challenger"
PREVIOUS = "previous"
HF_ARTIFACT = "hf_model"


def client(config: PipelineConfig):
    import mlflow

    from tasks.tracking import configure

    configure(config)
    return mlflow.MlflowClient()


def version_by_alias(config: PipelineConfig, alias: str):
    """The model version holding `alias`, or None when the model or the alias does not exist yet."""
    from mlflow.exceptions import MlflowException

    try:
        return client(config).get_model_version_by_alias(config.mlflow.model_name, alias)
    except MlflowException as error:
        if error.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"):
            return None
        raise


def download_model_dir(config: PipelineConfig, version: str) -> Path:
    """The Hugging Face directory inside a registered version's pyfunc, cached locally."""
    import mlflow

    model_version = client(config).get_model_version(config.mlflow.model_name, version)
    # Key on what the version points at, not its number: a re-created registry reuses "1", "2", ...
    identity = f"{config.mlflow.tracking_uri}|{model_version.source}|{model_version.creation_timestamp}"
    key = hashlib.sha256(identity.encode()).hexdigest()[:16]
    cache = Path(os.environ.get("FRESHET_CACHE", Path(tempfile.gettempdir()) / "freshet-cache")) / f"model-{key}"
    if not (cache / "MLmodel").exists():
        staging = Path(tempfile.mkdtemp(prefix=".download-", dir=cache.parent if cache.parent.exists() else None))
        mlflow.artifacts.download_artifacts(
            artifact_uri=f"models:/{config.mlflow.model_name}/{version}", dst_path=str(staging)
        )
        cache.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.replace(staging, cache)
        except OSError:  # another process cached it first
            pass
    import yaml

    artifacts = yaml.safe_load((cache / "MLmodel").read_text())["flavors"]["python_function"].get("artifacts", {})
    if HF_ARTIFACT not in artifacts:
        raise FileNotFoundError(f"model version {config.mlflow.model_name}/{version} has no {HF_ARTIFACT} artifact")
    return cache / artifacts[HF_ARTIFACT]["path"]
