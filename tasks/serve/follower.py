"""Follow `models:/<name>@<alias>`: resolve the alias, load a new version and check it in the background,
then swap it in atomically; refuse a version that fails to load or to check, and keep serving the old one.

The alias is resolved every `serve.poll_interval_s` and at once when the MLflow registry webhook says it
moved (`nudge`). Rollbacks are alias moves like any other, followed the same way.

The check: register's serving check, applied to the very object that is about to serve. The version's
pipeline run (`freshet.run_id` tag) wrote the compress step's `serving_sample` (fixed texts with the
serving variant's labels and probabilities); the loaded model must reproduce it under the same rule
(`tasks.models.serving_check.compare_serving`: equal labels unless a near tie, probabilities within the sample's
tolerance). Register ran it on a fresh process's load; here it runs on this process's load, the one
that answers requests. A version without a reachable sample (registered outside the pipeline, or an
artifact store this server cannot read) is checked on its logged input example instead: as many
predictions as texts, every label one of the model's, every probability finite and within [0, 1]. A
version whose register-time check is tagged `failed` is refused without loading.

Swap: `current` is one `ServedModel` (version and model together) replaced by one assignment, so a batch
reads it once and answers with the version of the model that computed it; a batch in flight finishes
on the model it started with.
"""

from __future__ import annotations

import collections
import datetime as dt
import json
import logging
import math
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tasks.config import PipelineConfig
from tasks.models.serving_check import compare_serving
from tasks.serve.metrics import ServeMetrics, version_number
from tasks.serve.predictor import Predictor
from tasks.store import ArtifactStore, safe_run_id

log = logging.getLogger("freshet.serve.follower")
SERVING_CHECK_TAG = "freshet.serving_check"
VARIANT_TAG = "freshet.serving_variant"


class RefusedVersion(RuntimeError):
    """A version that did not load or did not pass the check; the message says which and why."""


@dataclass(frozen=True)
class ServedModel:
    name: str
    version: str
    variant: str
    run_id: str | None
    loaded_at: str
    load_seconds: float
    check: dict[str, Any]
    predictor: Predictor
    directory: Path


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds")


def serving_sample(config: PipelineConfig, run_id: str | None) -> dict[str, Any] | None:
    """The compress step's `serving_sample` of pipeline run `run_id`, or None when it cannot be read."""
    if not run_id:
        return None
    try:
        store = ArtifactStore(config.artifact_root)
        manifest = store.read_json("runs", safe_run_id(run_id), "compress", "manifest.json")
        reference = (manifest or {}).get("outputs", {}).get("serving_sample")
        if reference is None:
            return None
        return json.loads(store.local_path(reference["uri"]).read_text())
    except (OSError, ValueError, KeyError, TypeError) as error:  # unreadable: the fallback check, not a refusal
        log.warning("serve: serving sample of run %s unreadable (%s: %s); checking the input example instead",
                    run_id, type(error).__name__, error)
        return None


def check_on_sample(predictor: Predictor, sample: dict[str, Any]) -> dict[str, Any]:
    served = predictor.predict(sample["texts"])
    result = compare_serving(sample, {"labels": served.labels, "probabilities": served.confidences})
    return result | {"kind": "serving_sample", "variant": sample.get("variant")}


def check_on_example(predictor: Predictor, texts: list[str]) -> dict[str, Any]:
    served = predictor.predict(texts)
    problems = []
    if len(served.labels) != len(texts):
        problems.append(f"{len(served.labels)} predictions for {len(texts)} texts")
    known = set(predictor.label_names)
    unknown = sorted({label for label in served.labels if known and label not in known})
    if unknown:
        problems.append(f"labels {unknown} are not among the model's {sorted(known)}")
    bad = [value for value in served.confidences if not (math.isfinite(value) and 0.0 <= value <= 1.0)]
    if bad:
        problems.append(f"probabilities outside [0, 1]: {bad[:3]}")
    message = "; ".join(problems) or (f"predicted the {len(texts)} input-example texts: labels known, "
                                      "probabilities in [0, 1]")
    return {"passed": not problems, "rows": len(texts), "kind": "input_example", "message": message}


def input_example_texts(pyfunc_model: Any) -> list[str]:
    example = None
    try:
        example = pyfunc_model.input_example
    except Exception:
        log.warning("serve: could not read the input example; using two fixed texts", exc_info=True)
    if example is not None and hasattr(example, "columns") and "text" in example.columns:
        return [str(text) for text in example["text"]]
    return ["a sample text to classify", "another one"]


def load_version(config: PipelineConfig, client: Any, version: str, workdir: Path) -> ServedModel:
    """Download, load and check `version`; RefusedVersion says why it will not serve."""
    import mlflow

    name = config.mlflow.model_name
    uri = f"models:/{name}/{version}"
    tags = client.get_model_version(name, version).tags or {}
    if tags.get(SERVING_CHECK_TAG) == "failed":
        raise RefusedVersion(f"{uri}: register's serving check failed for it ({SERVING_CHECK_TAG}=failed: "
                             f"{tags.get(SERVING_CHECK_TAG + '.detail', 'no detail')})")
    started = time.perf_counter()
    directory = Path(tempfile.mkdtemp(prefix=f"v{version}-", dir=workdir))
    try:
        try:
            pyfunc_model = mlflow.pyfunc.load_model(uri, dst_path=str(directory))
            predictor = Predictor(pyfunc_model)
        except Exception as error:
            raise RefusedVersion(f"{uri} failed to load: {type(error).__name__}: {error}") from error
        sample = serving_sample(config, tags.get("freshet.run_id"))
        try:
            check_texts = sample["texts"] if sample is not None else input_example_texts(pyfunc_model)
            predictor.verify_fast_path(check_texts)  # before the check, so the check runs the path that serves
            check = (check_on_sample(predictor, sample) if sample is not None
                     else check_on_example(predictor, check_texts))
        except Exception as error:
            raise RefusedVersion(f"{uri} failed to predict during its check: {type(error).__name__}: "
                                 f"{error}") from error
        if not check["passed"]:
            raise RefusedVersion(f"{uri} failed its serving check ({check['kind']}): {check['message']}")
    except RefusedVersion:
        shutil.rmtree(directory, ignore_errors=True)
        raise
    variant = predictor.variant or tags.get(VARIANT_TAG) or "unknown"
    return ServedModel(name=name, version=str(version), variant=variant, run_id=tags.get("freshet.run_id"),
                       loaded_at=_now(), load_seconds=time.perf_counter() - started, check=check,
                       predictor=predictor, directory=directory)


def check_summary(check: dict[str, Any]) -> dict[str, Any]:
    """The check's verdict for /health: JSON-safe (no NaN), mismatches counted, not listed."""
    summary: dict[str, Any] = {key: check[key] for key in ("passed", "kind", "rows", "message", "variant")
                               if key in check}
    difference = check.get("max_abs_diff")
    if isinstance(difference, float) and math.isfinite(difference):
        summary["max_abs_diff"] = difference
    return summary


def registry_client(config: PipelineConfig) -> Any:
    """An MLflow client on the config's registry. Set globally, as `mlflow.pyfunc.load_model("models:/...")`
    resolves through it; nothing is contacted or created here (a server starts while MLflow is down)."""
    import mlflow

    mlflow.set_tracking_uri(config.mlflow.tracking_uri)
    mlflow.set_registry_uri(config.mlflow.tracking_uri)
    return mlflow.MlflowClient()


class ChampionFollower:
    """Keeps `current` on the version the alias points at, in a background thread."""

    def __init__(self, config: PipelineConfig, metrics: ServeMetrics, client: Any | None = None) -> None:
        self.config = config
        self.alias = config.serve.alias
        self.metrics = metrics
        self.client = client if client is not None else registry_client(config)
        self.current: ServedModel | None = None  # replaced in one assignment: the atomic swap
        self.alias_version: str | None = None
        self.loading: str | None = None
        self.refusals: collections.deque[dict[str, str]] = collections.deque(maxlen=20)
        self._refused_target: str | None = None  # not retried until the alias moves
        self.last_poll_at: str | None = None
        self.last_poll_error: str | None = None
        self._said_missing = False
        self.swaps = 0
        self._workdir = Path(tempfile.mkdtemp(prefix="freshet-serve-"))
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._follow, name="freshet-follower", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=5)

    def nudge(self) -> None:
        """Resolve the alias now (the registry webhook said it moved)."""
        self._wake.set()

    def _follow(self) -> None:
        while not self._stop.is_set():
            try:
                self.poll_once()
            except Exception:  # a bug must not stop the following: say it, poll again
                log.exception("serve: following %s@%s failed; retrying at the next poll",
                              self.config.mlflow.model_name, self.alias)
            self._wake.wait(self.config.serve.poll_interval_s)
            self._wake.clear()
        shutil.rmtree(self._workdir, ignore_errors=True)

    def resolve(self) -> str | None:
        from mlflow.exceptions import MlflowException

        try:
            return str(self.client.get_model_version_by_alias(self.config.mlflow.model_name, self.alias).version)
        except MlflowException as error:
            if error.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"):
                return None
            raise

    def poll_once(self) -> None:
        try:
            target = self.resolve()
        except Exception as error:  # noqa: BLE001 - a registry outage: keep serving, say so, poll again
            self.last_poll_error = f"{type(error).__name__}: {error}"
            self.metrics.registry_errors.inc()
            log.warning("serve: cannot resolve %s@%s: %s", self.config.mlflow.model_name, self.alias, error)
            return
        self.last_poll_at, self.last_poll_error = _now(), None
        if target is None and self.current is None and not self._said_missing:
            self._said_missing = True  # once: a fresh registry is normal until the first promotion
            log.warning("serve: no version of %s holds alias %s yet; waiting for one (polling every %gs)",
                        self.config.mlflow.model_name, self.alias, self.config.serve.poll_interval_s)
        if target != self.alias_version:
            if self.alias_version is not None:
                log.info("serve: %s@%s moved %s -> %s", self.config.mlflow.model_name, self.alias,
                         self.alias_version, target)
            self.alias_version, self._refused_target = target, None
            self.metrics.alias_version.set(version_number(target))
        current = self.current
        if target is None or (current is not None and current.version == target) or target == self._refused_target:
            return
        self._load(target)

    def _load(self, version: str) -> None:
        self.loading = version
        log.info("serve: loading and checking %s version %s", self.config.mlflow.model_name, version)
        try:
            served = load_version(self.config, self.client, version, self._workdir)
        except RefusedVersion as error:
            self._refused_target = version
            self.refusals.append({"version": version, "at": _now(), "reason": str(error)})
            self.metrics.reloads.labels("refused").inc()
            self.metrics.refused_version.set(version_number(version))
            log.error("serve: refused version %s, still serving %s: %s", version,
                      self.current.version if self.current else "nothing", error)
            return
        except Exception as error:  # noqa: BLE001 - the registry failed mid-load: not the version's fault, retry
            self.last_poll_error = f"loading version {version}: {type(error).__name__}: {error}"
            self.metrics.registry_errors.inc()
            log.warning("serve: loading version %s failed (%s); retrying at the next poll", version, error)
            return
        finally:
            self.loading = None
        if self.current is not None and not self._still_the_target(version):
            # The alias moved on while this version loaded (a rollback right after a promotion): never serve it.
            log.info("serve: %s@%s moved while version %s loaded; not swapping it in", self.config.mlflow.model_name,
                     self.alias, version)
            shutil.rmtree(served.directory, ignore_errors=True)
            self._wake.set()
            return
        previous, self.current = self.current, served
        self.swaps += 1
        self.metrics.reloads.labels("swapped").inc()
        self.metrics.refused_version.set(0)
        self.metrics.serving(served.name, served.version, served.variant, self.alias)
        log.info("serve: now serving %s version %s (%s) after %.1fs; check: %s", served.name, served.version,
                 served.variant, served.load_seconds, served.check["message"])
        if previous is not None:
            # In-flight batches hold the old model in memory; its files are no longer needed.
            shutil.rmtree(previous.directory, ignore_errors=True)

    def _still_the_target(self, version: str) -> bool:
        try:
            return self.resolve() == version
        except Exception:  # noqa: BLE001 - the registry is unreachable: the version was the target a moment ago
            return True

    def status(self) -> dict[str, Any]:
        current = self.current
        if current is None:
            state = "loading" if self.loading else ("refused" if self._refused_target else "no_model")
        elif self.alias_version != current.version:
            state = "refused" if self._refused_target == self.alias_version else "updating"
        else:
            state = "serving"
        return {
            "status": state,
            "model": self.config.mlflow.model_name,
            "alias": self.alias,
            "alias_version": self.alias_version,
            "version": current.version if current else None,
            "variant": current.variant if current else None,
            # How a batch is computed: the ONNX session directly (checked against the pyfunc at load), or the pyfunc.
            "calls": (("onnx session" if current.predictor.fast_path else "pyfunc") if current else None),
            "loaded_at": current.loaded_at if current else None,
            "load_seconds": round(current.load_seconds, 3) if current else None,
            "check": check_summary(current.check) if current else None,
            "loading": self.loading,
            "refused": list(self.refusals),
            "swaps": self.swaps,
            "last_poll_at": self.last_poll_at,
            "last_poll_error": self.last_poll_error,
            "poll_interval_s": self.config.serve.poll_interval_s,
        }
