"""Helpers for tests of `freshet serve`: a real server process on a free loopback port, a bounded client load,
extra registry versions (a copy that serves, one that cannot load, one that fails its check), MLflow webhooks."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

import httpx
import yaml

from tests.conftest import REPO

SERVE_ENV_VARIABLES = ("FRESHET_SERVE_TOKEN", "FRESHET_SERVE_WEBHOOK_SECRET")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def write_config(config, path: Path) -> Path:
    path.write_text(yaml.safe_dump(config.to_dict()))
    return path


@dataclass
class ServerProcess:
    process: subprocess.Popen
    url: str
    log_path: Path
    signalled_at: float | None = None

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def health(self) -> dict[str, Any]:
        return httpx.get(f"{self.url}/health", timeout=5).json()

    def wait_for(self, condition: Callable[[dict[str, Any]], bool], what: str, timeout_s: float = 90) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        health: dict[str, Any] = {}
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"server exited ({self.process.returncode}) waiting for {what}:\n"
                                     f"{self.log_tail()}")
            try:
                health = self.health()
                if condition(health):
                    return health
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"timed out waiting for {what}; last health {json.dumps(health)[:2000]}\n"
                             f"{self.log_tail()}")

    def stop(self, timeout_s: float = 30) -> int:
        if self.process.poll() is None:
            self.signalled_at = time.monotonic()
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        return self.process.returncode


def start_server(config_path: Path, log_path: Path, *, overrides: tuple[str, ...] = (),
                 env: dict[str, str] | None = None) -> ServerProcess:
    """`python -m tasks.serve` on a free port; returns once it answers /health (the model may still load)."""
    port = free_port()
    environment = {key: value for key, value in os.environ.items() if key not in SERVE_ENV_VARIABLES}
    environment.update(env or {})
    command = [sys.executable, "-m", "tasks.serve", "--config", str(config_path), "--host", "127.0.0.1",
               "--port", str(port), *[part for override in overrides for part in ("--set", override)]]
    with open(log_path, "w") as log:
        process = subprocess.Popen(command, cwd=REPO, env=environment, stdout=log, stderr=subprocess.STDOUT)
    server = ServerProcess(process, f"http://127.0.0.1:{port}", log_path)
    server.wait_for(lambda health: True, "the server to answer /health", timeout_s=120)
    return server


# ------------------------------------------------------------------------------------ client load


@dataclass
class Reply:
    endpoint: str
    text_index: int
    status: int
    version: str | None
    label: str | None
    probability: float | None
    request_id: str | None
    error: str | None = None
    at: float = field(default_factory=time.monotonic)


def one_request(client: httpx.Client, url: str, endpoint: str, text: str, text_index: int,
                headers: dict[str, str]) -> Reply:
    if endpoint == "predict":
        body: dict[str, Any] = {"texts": [text]}
    else:
        body = {"dataframe_records": [{"text": text}]}
    try:
        response = client.post(f"{url}/{endpoint}", json=body, headers=headers)
    except httpx.HTTPError as error:
        return Reply(endpoint, text_index, 0, None, None, None, None, f"{type(error).__name__}: {error}")
    if response.status_code != 200:
        return Reply(endpoint, text_index, response.status_code, response.headers.get("x-freshet-model-version"),
                     None, None, None, response.text[:300])
    document = response.json()
    if endpoint == "predict":
        label, probability = document["labels"][0], document["confidences"][0]
    else:
        label, probability = document["predictions"][0]["label"], document["predictions"][0]["probability"]
    assert response.headers["x-freshet-model-version"] == document["model_version"]
    return Reply(endpoint, text_index, 200, document["model_version"], label, probability, document["request_id"])


class ClientLoad:
    """`clients` threads sending one-text requests back to back (alternating /predict and /invocations) until
    stopped, or until `max_requests` each or `max_seconds` have passed."""

    def __init__(self, url: str, texts: list[str], *, clients: int = 4, headers: dict[str, str] | None = None,
                 max_requests: int = 20_000, max_seconds: float = 240) -> None:
        self.url, self.texts, self.headers = url, texts, headers or {}
        self.max_requests, self.max_seconds = max_requests, max_seconds
        self.replies: list[list[Reply]] = [[] for _ in range(clients)]
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._client, args=(index,), daemon=True) for index in range(clients)]

    def _client(self, index: int) -> None:
        deadline = time.monotonic() + self.max_seconds
        with httpx.Client(timeout=30) as client:
            for count in range(self.max_requests):
                if self._stop.is_set() or time.monotonic() > deadline:
                    return
                text_index = (index * 7 + count) % len(self.texts)
                endpoint = "predict" if count % 2 == 0 else "invocations"
                reply = one_request(client, self.url, endpoint, self.texts[text_index], text_index, self.headers)
                self.replies[index].append(reply)
                if reply.status == 0:  # the server is gone (a shutdown test): stop this client
                    return

    def __enter__(self) -> Self:
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=60)

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def all_replies(self) -> list[Reply]:
        return [reply for replies in self.replies for reply in replies]

    def count(self) -> int:
        return sum(len(replies) for replies in self.replies)


# ------------------------------------------------------------------------------------ registry versions

BROKEN_MODEL_CODE = '''
import mlflow
from mlflow.pyfunc import PythonModel


class Broken(PythonModel):
    def load_context(self, context):
        raise RuntimeError("deliberately broken: this model cannot load")

    def predict(self, context, model_input, params=None):
        return model_input


mlflow.models.set_model(Broken())
'''


def register_unloadable_version(config, directory: Path) -> str:
    """A version whose pyfunc raises while loading (models-from-code, nothing pickled)."""
    import mlflow

    from tasks import tracking

    experiment_id = tracking.configure(config)
    code = directory / "broken_model.py"
    code.write_text(BROKEN_MODEL_CODE)
    with mlflow.start_run(experiment_id=experiment_id, run_name="broken-model-for-serve-test"):
        info = mlflow.pyfunc.log_model(name="model", python_model=str(code), pip_requirements=["mlflow"])
    version = mlflow.register_model(info.model_uri, config.mlflow.model_name)
    return str(version.version)


def register_copy(client, name: str, of_version: str, run_id_tag: str) -> str:
    """A new version of the same model files as `of_version`, claiming pipeline run `run_id_tag`: with the
    run's own tag it serves as that version did; with another run's tag it fails the serving check."""
    source = client.get_model_version(name, of_version)
    version = client.create_model_version(name, source=source.source, run_id=source.run_id,
                                          tags={"freshet.run_id": run_id_tag})
    return str(version.version)


def alias_webhook(name: str, alias: str, version: str, secret: str | None,
                  action: str = "created") -> tuple[bytes, dict[str, str]]:
    """A delivery exactly as MLflow's registry sends it (mlflow.webhooks.delivery)."""
    import datetime as dt

    from mlflow.webhooks.delivery import _generate_hmac_signature

    payload = json.dumps({"entity": "model_version_alias", "action": action,
                          "timestamp": dt.datetime.now(dt.UTC).isoformat(),
                          "data": {"name": name, "alias": alias, "version": version}})
    delivery, timestamp = str(uuid.uuid4()), str(int(time.time()))
    headers = {"Content-Type": "application/json", "X-MLflow-Delivery-Id": delivery, "X-MLflow-Timestamp": timestamp}
    if secret:
        headers["X-MLflow-Signature"] = _generate_hmac_signature(secret, delivery, timestamp, payload)
    return payload.encode(), headers


def read_prediction_log(artifact_root: str) -> list[dict[str, Any]]:
    import pyarrow.dataset as ds

    folder = Path(artifact_root) / "predictions"
    if not folder.exists():
        return []
    return ds.dataset(str(folder), format="parquet", partitioning="hive").to_table().to_pylist()
