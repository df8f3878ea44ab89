"""The registry download cache must never serve a stale model when version numbers are reused."""

from __future__ import annotations

from pathlib import Path

from tasks import model_registry
from tests.pipeline_support import tiny_config


def register_marker(config, marker: str, directory: Path) -> str:
    """Register a pyfunc whose `hf_model` artifact is a directory holding `marker` (no weights needed)."""
    import mlflow

    from tasks.tracking import configure

    hf_dir = directory / marker
    hf_dir.mkdir(parents=True)
    (hf_dir / "marker.txt").write_text(marker)
    mlflow.set_experiment(experiment_id=configure(config))
    with mlflow.start_run():
        info = mlflow.pyfunc.log_model(name="model", python_model=str(Path(model_registry.__file__).parent / "models" / "serving.py"),
                                       artifacts={model_registry.HF_ARTIFACT: str(hf_dir)})
    return str(mlflow.register_model(info.model_uri, config.mlflow.model_name).version)


def test_recreated_registry_reusing_version_numbers_gets_the_new_model(tmp_path, monkeypatch):
    monkeypatch.setenv("FRESHET_CACHE", str(tmp_path / "cache"))
    config = tiny_config(tmp_path)
    first = register_marker(config, "first-model", tmp_path / "a")
    assert (model_registry.download_model_dir(config, first) / "marker.txt").read_text() == "first-model"
    # The registry is wiped and rebuilt (same tracking URI, same model name): numbering restarts at 1.
    model_registry.client(config).delete_registered_model(config.mlflow.model_name)
    second = register_marker(config, "second-model", tmp_path / "b")
    assert second == first == "1"
    assert (model_registry.download_model_dir(config, second) / "marker.txt").read_text() == "second-model"
    # Both stay cached side by side under distinct keys; a repeat download is served from the cache.
    assert len(list((tmp_path / "cache").glob("model-*"))) == 2
    assert (model_registry.download_model_dir(config, second) / "marker.txt").read_text() == "second-model"
    assert len(list((tmp_path / "cache").glob("model-*"))) == 2
