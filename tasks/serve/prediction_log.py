"""The prediction log: one row per served text, appended to day-partitioned Parquet in the artifact store,
`<artifact_root>/predictions/date=YYYY-MM-DD/part-<time>-<uuid>.parquet` (what `freshet_monitor` and any
DAG scheduled on the Airflow Asset read; `pyarrow.dataset` reads the folder as one table).

Rows are buffered in memory and written in batches: every `flush_every_rows` rows or `flush_every_s`
seconds by a background thread, and once more when the server shuts down. A request's rows enter the
buffer before its response is sent, so everything acknowledged is written by the shutdown flush at the
latest. A failed write keeps its rows for the next attempt. On a local root a part appears by rename,
so readers never see half a file; object stores publish a part when its upload completes.

Columns: `time` (UTC), `request_id`, `endpoint`, `model`, `model_version`, `label`, `confidence`,
`text` (null with `store_text: hash`; PII placeholders with `scrub_pii`), `text_sha256` (always).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import os
import random
import tempfile
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import fsspec

from tasks.config import PipelineConfig, PredictionLogConfig
from tasks.serve.metrics import ServeMetrics
from tasks.store import ArtifactStore
from tasks.text import scrub_pii

log = logging.getLogger("freshet.serve.prediction_log")
FOLDER = "predictions"
COLUMNS = ("time", "request_id", "endpoint", "model", "model_version", "label", "confidence", "text", "text_sha256")


def prediction_log_uri(config: PipelineConfig) -> str:
    """Where the log lives, as a URI (`file:///...` for a local root); cheap: creates nothing."""
    root = config.artifact_root.rstrip("/")
    if "://" not in root:
        return Path(os.path.abspath(root)).joinpath(FOLDER).as_uri()  # as ArtifactStore resolves it
    return f"{root}/{FOLDER}"


def arrow_schema() -> Any:
    import pyarrow as pa

    return pa.schema([
        ("time", pa.timestamp("us", tz="UTC")), ("request_id", pa.string()), ("endpoint", pa.string()),
        ("model", pa.string()), ("model_version", pa.string()), ("label", pa.string()),
        ("confidence", pa.float64()), ("text", pa.string()), ("text_sha256", pa.string()),
    ])


def text_digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def pii_scrubber() -> Callable[[str], str]:
    # clean's scrubber, so the log hides what training data hides.
    return lambda text: scrub_pii(text)[0]


class PredictionLog:
    def __init__(self, config: PipelineConfig, metrics: ServeMetrics, *, seed: int | None = None) -> None:
        self.settings: PredictionLogConfig = config.serve.prediction_log
        self.metrics = metrics
        self.store = ArtifactStore(config.artifact_root) if self.settings.enabled else None
        self._scrub = pii_scrubber() if self.settings.enabled and self.settings.scrub_pii else None
        self._sample = random.Random(seed)
        self._pending: list[dict[str, Any]] = []
        self._lock = threading.Lock()  # guards _pending: appended by the event loop, taken by the flusher
        self._flush_lock = threading.Lock()  # one write at a time (the flusher thread, or close)
        self._wake = threading.Event()
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._flush_periodically, name="freshet-prediction-log", daemon=True)
        self.written_rows = 0
        self.parts = 0
        self.last_flush_at: str | None = None
        self.last_error: str | None = None

    # ------------------------------------------------------------------------------- request side

    def record(self, *, endpoint: str, request_id: str, model: str, version: str, texts: Sequence[str],
               labels: Sequence[str], confidences: Sequence[float]) -> int:
        """Buffer a request's rows (or none, when it is not sampled); returns how many were buffered."""
        if self.store is None or self._sample.random() >= self.settings.sample_fraction:
            return 0
        now = dt.datetime.now(dt.UTC)
        rows = [{"time": now, "request_id": request_id, "endpoint": endpoint, "model": model,
                 "model_version": version, "label": label, "confidence": float(confidence),
                 "text": self._stored_text(text), "text_sha256": text_digest(text)}
                for text, label, confidence in zip(texts, labels, confidences)]
        with self._lock:
            room = self.settings.max_pending_rows - len(self._pending)
            if room < len(rows):
                self.metrics.log_dropped.inc(len(rows))
                log.error("serve: prediction log buffer full (%d rows, store failing: %s); %d rows dropped",
                          len(self._pending), self.last_error, len(rows))
                return 0
            self._pending.extend(rows)
            pending = len(self._pending)
        self.metrics.log_pending.set(pending)
        if pending >= self.settings.flush_every_rows:
            self._wake.set()
        return len(rows)

    def _stored_text(self, text: str) -> str | None:
        if self.settings.store_text == "hash":
            return None
        return self._scrub(text) if self._scrub is not None else text

    # ------------------------------------------------------------------------------- writing side

    def start(self) -> None:
        if self.store is not None:
            self._thread.start()

    def close(self, attempts: int = 3) -> None:
        """Stop the flusher and write everything buffered (retrying a failing store a few times)."""
        self._closed.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout=30)
        for attempt in range(attempts):
            if self.flush() or not self.pending:
                return
            time.sleep(0.5 * (attempt + 1))
        if self.pending:
            log.error("serve: %d logged predictions could not be written at shutdown: %s", self.pending,
                      self.last_error)

    @property
    def pending(self) -> int:
        with self._lock:
            return len(self._pending)

    def _flush_periodically(self) -> None:
        while not self._closed.is_set():
            self._wake.wait(self.settings.flush_every_s)
            self._wake.clear()
            if not self._closed.is_set():
                self.flush()

    def flush(self) -> bool:
        """Write what is buffered, one part per day; False (rows kept for the next try) when a write failed."""
        with self._flush_lock:
            with self._lock:
                rows, self._pending = self._pending, []
            if not rows or self.store is None:
                return True
            by_day: dict[str, list[dict[str, Any]]] = defaultdict(list)
            for row in rows:
                by_day[row["time"].strftime("%Y-%m-%d")].append(row)
            unwritten: list[dict[str, Any]] = []
            for day, day_rows in sorted(by_day.items()):
                try:
                    self._write_part(day, day_rows)
                except Exception as error:  # noqa: BLE001 - any store failure: keep the rows, retry
                    unwritten.extend(day_rows)
                    self.last_error = f"{type(error).__name__}: {error}"
                    self.metrics.log_flush_errors.inc()
                    log.warning("serve: writing %d prediction rows for %s failed (kept for the next flush): %s",
                                len(day_rows), day, error)
                    continue
                self.written_rows += len(day_rows)
                self.parts += 1
                self.metrics.log_rows.inc(len(day_rows))
            with self._lock:
                self._pending = unwritten + self._pending
                pending = len(self._pending)
            self.metrics.log_pending.set(pending)
            if not unwritten:
                self.last_flush_at = dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds")
                self.last_error = None
            return not unwritten

    def _write_part(self, day: str, rows: list[dict[str, Any]]) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        assert self.store is not None
        stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S%fZ")
        name = f"part-{stamp}-{uuid.uuid4().hex[:12]}.parquet"
        table = pa.Table.from_pylist(rows, schema=arrow_schema())
        fs, path = fsspec.core.url_to_fs(self.store.uri(FOLDER, f"date={day}", name))
        if self.store.is_local:
            folder = Path(path).parent
            folder.mkdir(parents=True, exist_ok=True)
            handle, temporary = tempfile.mkstemp(dir=folder, prefix=".part-", suffix=".tmp")
            os.close(handle)
            try:
                pq.write_table(table, temporary)
                os.chmod(temporary, 0o644)
                os.replace(temporary, path)  # dot-files are skipped by Parquet readers until then
            finally:
                if os.path.exists(temporary):
                    os.unlink(temporary)
            return
        with tempfile.NamedTemporaryFile(suffix=".parquet") as local:
            pq.write_table(table, local.name)
            fs.put_file(local.name, path)

    def status(self) -> dict[str, Any]:
        return {"enabled": self.store is not None, "uri": self.store.uri(FOLDER) if self.store else None,
                "pending_rows": self.pending, "written_rows": self.written_rows, "parts": self.parts,
                "last_flush_at": self.last_flush_at, "last_error": self.last_error,
                "store_text": self.settings.store_text, "sample_fraction": self.settings.sample_fraction}
