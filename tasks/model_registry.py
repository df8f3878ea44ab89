"""MLflow Model Registry access: champion resolution, model download and the champion history
(aliases and version tags, never stages)."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

from tasks.config import PipelineConfig
from tasks.tracking import configure

CHAMPION = "champion"
CHALLENGER = "challenger"
PREVIOUS = "previous"
HF_ARTIFACT = "hf_model"
BLEND_ARTIFACT = "blend"  # the lexical model and weight served with the transformer
log = logging.getLogger("freshet.registry")


def client(config: PipelineConfig):
    import mlflow

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
    artifacts = _pyfunc_artifacts(cache)
    if HF_ARTIFACT not in artifacts:
        raise FileNotFoundError(f"model version {config.mlflow.model_name}/{version} has no {HF_ARTIFACT} artifact")
    return cache / artifacts[HF_ARTIFACT]["path"]


def _pyfunc_artifacts(pyfunc_dir: Path) -> dict[str, Any]:
    import yaml

    return yaml.safe_load((pyfunc_dir / "MLmodel").read_text())["flavors"]["python_function"].get("artifacts", {})


def blend_dir(config: PipelineConfig, version: str) -> Path | None:
    """The lexical blend a version serves with its transformer (tasks/models/blend.py), or None: versions
    registered without one serve the transformer alone."""
    model_dir = download_model_dir(config, version)
    pyfunc_dir = next(parent for parent in model_dir.parents if (parent / "MLmodel").exists())
    artifact = _pyfunc_artifacts(pyfunc_dir).get(BLEND_ARTIFACT)
    return pyfunc_dir / artifact["path"] if artifact else None


# ------------------------------------------------------------------------------ champion history
# Each version carries the JSON list of its tenures as `champion` (a version can hold it several times:
# promoted, replaced, rolled back to), so "which version was champion at T" needs MLflow alone.
# `freshet.champion_since` / `freshet.champion_until` keep the latest tenure's bounds for quick reading.
TENURES_TAG = "freshet.champion_tenures"
SINCE_TAG, UNTIL_TAG = "freshet.champion_since", "freshet.champion_until"


def _instant(value) -> dt.datetime:
    """An aware UTC datetime from a datetime or an ISO 8601 string (naive means UTC)."""
    if isinstance(value, dt.datetime):
        moment = value
    else:
        moment = dt.datetime.fromisoformat(str(value).strip())
    return moment.replace(tzinfo=dt.UTC) if moment.tzinfo is None else moment.astimezone(dt.UTC)


def tenures(model_version) -> list[dict[str, str | None]]:
    """A version's tenures as champion, oldest first (versions promoted before the log: one, from their tags)."""
    tags = model_version.tags or {}
    if tags.get(TENURES_TAG):
        return json.loads(tags[TENURES_TAG])
    if tags.get(SINCE_TAG):
        return [{"since": tags[SINCE_TAG], "until": tags.get(UNTIL_TAG), "kind": "promotion", "by": None,
                 "why": tags.get("freshet.promotion_reason"), "ended_by": tags.get("freshet.rolled_back")}]
    return []


def start_tenure(mlflow_client, name: str, version: str, when: str, *, kind: str, by: str, why: str) -> None:
    """Record that `version` became champion at `when` (the alias itself is moved by the caller)."""
    model_version = mlflow_client.get_model_version(name, version)
    entries = tenures(model_version)
    entries.append({"since": when, "until": None, "kind": kind, "by": by, "why": why, "ended_by": None})
    mlflow_client.set_model_version_tag(name, version, TENURES_TAG, json.dumps(entries))
    mlflow_client.set_model_version_tag(name, version, SINCE_TAG, when)
    if UNTIL_TAG in (model_version.tags or {}):  # the end of an earlier tenure, not of this one
        mlflow_client.delete_model_version_tag(name, version, UNTIL_TAG)


def end_tenure(mlflow_client, name: str, version: str, when: str, ended_by: str) -> None:
    """Close `version`'s open tenure at `when`, saying what ended it."""
    entries = tenures(mlflow_client.get_model_version(name, version))
    if entries and entries[-1]["until"] is None:
        entries[-1].update(until=when, ended_by=ended_by)
    else:  # champion set outside freshet: keep an honest record of the end only
        entries.append({"since": None, "until": when, "kind": "unknown", "by": None, "why": None, "ended_by": ended_by})
    mlflow_client.set_model_version_tag(name, version, TENURES_TAG, json.dumps(entries))
    mlflow_client.set_model_version_tag(name, version, UNTIL_TAG, when)


def all_versions(mlflow_client, name: str) -> list:
    versions, token = [], None
    while True:
        page = mlflow_client.search_model_versions(f"name = '{name}'", max_results=1000, page_token=token)
        versions.extend(page)
        token = getattr(page, "token", None)
        if not token:
            return versions


def history(mlflow_client, name: str) -> list[dict[str, str | None]]:
    """Every tenure of every version of `name` as champion, ordered by start (the timeline)."""
    rows = [{"version": str(version.version), **entry} for version in all_versions(mlflow_client, name)
            for entry in tenures(version)]
    epoch = dt.datetime.min.replace(tzinfo=dt.UTC)
    return sorted(rows, key=lambda row: (_instant(row["since"]) if row["since"] else epoch, int(str(row["version"]))))


def champion_at(mlflow_client, name: str, when) -> str | None:
    """The version of `name` that held `champion` at `when` (datetime or ISO string), or None.

    A tenure covers [since, until): at the instant of a promotion the new version is the champion.
    """
    moment = _instant(when)
    for row in reversed(history(mlflow_client, name)):
        started = row["since"] and _instant(row["since"]) <= moment
        if started and (row["until"] is None or moment < _instant(row["until"])):
            return row["version"]
    return None


def best_champion_score(mlflow_client, name: str, metric: str) -> tuple[float, str] | None:
    """(score, version): the highest `metric` recorded (register's `metric.<name>` tags) by any version
    that has held `champion`; versions rolled back by a person are left out. None: nothing recorded yet."""
    scores = []
    for version in all_versions(mlflow_client, name):
        tags = version.tags or {}
        value = tags.get(f"metric.{metric}")
        if value is None or not tenures(version) or tags.get("freshet.rolled_back"):
            continue
        try:
            scores.append((float(value), str(version.version)))
        except ValueError:  # a hand-edited tag: not evidence, but say so
            log.warning("registry: %s version %s tag metric.%s=%r is not a number; left out of the best score",
                        name, version.version, metric, value)
    return max(scores, default=None)
