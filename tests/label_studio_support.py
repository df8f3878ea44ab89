"""The real Label Studio the labelling tests talk to, and scored texts for the label step.

`.ci/services.sh` (through `.ci/label-studio.sh`) installs and starts Label Studio on loopback before `make test`;
when nothing answers as the tests start, `ensure_label_studio` runs the same script once per pytest session. Its
settings come from the same variables with the same defaults.
"""

from __future__ import annotations

import os
import subprocess
from collections import Counter
from pathlib import Path

import httpx
import numpy as np

from tasks.config import PipelineConfig
from tasks.contract import StepContext, execute
from tasks.manifest import Manifest
from tasks.monitoring.feedback import text_digest
from tasks.records import write_parquet
from tasks.score import ScoreFacts
from tasks.store import ArtifactStore

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / ".ci" / "label-studio.sh"
PORT = int(os.environ.get("FRESHET_LABEL_STUDIO_PORT", "8089"))
URL = f"http://127.0.0.1:{PORT}"
TOKEN = os.environ.get("FRESHET_LABEL_STUDIO_TOKEN", "6f7265736865742d63692d6c6162656c2d737475")
TOKEN_ENV = "FRESHET_TEST_LABEL_STUDIO_TOKEN"  # what the tests' configs name in token_env
# The user .ci/label-studio.sh presets (LABEL_STUDIO_USERNAME/PASSWORD): the browser tests log in as it.
EMAIL = "freshet-ci@example.com"
PASSWORD = "freshet-ci-password"
START_TIMEOUT_S = 600  # a fresh machine installs it first (~2 min) and migrates its database (~1-2 min)


def answers() -> bool:
    try:
        health = httpx.get(f"{URL}/health", timeout=5)
        whoami = httpx.get(f"{URL}/api/current-user/whoami", headers={"Authorization": f"Token {TOKEN}"}, timeout=10)
    except httpx.HTTPError:
        return False
    return health.is_success and "UP" in health.text and whoami.is_success


def ensure_label_studio() -> str:
    """The server's URL; started (installed first if missing) by the CI script when it is not answering."""
    if not answers():
        result = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, timeout=START_TIMEOUT_S,
                                check=False)
        assert result.returncode == 0 and answers(), (
            f"{SCRIPT} could not start Label Studio on {URL}:\n{result.stdout}\n{result.stderr}")
    return URL


def scored_day(config: PipelineConfig, store: ArtifactStore, run_id: str, day: str, texts: list[str],
               probabilities: np.ndarray, model_version: str = "3", ids: list[str] | None = None) -> Manifest:
    """A score manifest of `day` through the contract, with the columns tasks/score.py writes (the label step
    reads only predictions.parquet: id, text, label, confidence, probability.<label>, model_version). The ids
    are `<day>:<n>` unless given (the score step keeps the drop file's ids)."""
    labels = list(config.labels)
    ids = ids or [f"{day}:{number}" for number in range(len(texts))]

    def body(context: StepContext) -> None:
        columns = {"id": ids, "text_sha256": [text_digest(text) for text in texts], "text": texts,
                   "label": [labels[int(index)] for index in probabilities.argmax(axis=1)],
                   "confidence": probabilities.max(axis=1).astype(float)}
        for position, label in enumerate(labels):
            columns[f"probability.{label}"] = probabilities[:, position].astype(float)
        columns["model_version"] = [model_version] * len(texts)
        rows = [dict(zip(columns, values)) for values in zip(*columns.values())]
        write_parquet(rows, context.out_dir / "predictions.parquet")
        context.add_output("predictions", "predictions.parquet", "dataset", rows=len(rows), model_version=model_version)
        context.facts.update(ScoreFacts(
            scored=True, reason=f"{len(rows)} rows scored by version {model_version}", input=config.score.input,
            files=[], model=config.mlflow.model_name, model_version=model_version, variant="hf", shadow_version=None,
            labels=dict(Counter(columns["label"])), invalid_rows=[]).dump())
        context.metrics["rows"] = len(rows)

    return execute("score", body, config, {}, run_id=run_id, store=store, logical_date=day,
                   extra_fingerprint={"texts": texts, "ids": ids, "probabilities": probabilities.round(6).tolist()})
