"""The prediction log by day: what `freshet serve` appends and what batch scoring files beside it.

The log is `<artifact_root>/predictions/date=YYYY-MM-DD/part-*.parquet` (tasks/serve/prediction_log.py
owns the schema). Batch scoring adds its champion rows for the logical day it scored as one part named
after its run, `part-batch-<run_id>.parquet`, after its manifest commits, so a rerun replaces its own part
and never doubles it. The monitor reads the parts of its window as one table; batch rows get every class's
probability back from their scoring run's `predictions.parquet` (the log keeps the top one only).
"""

from __future__ import annotations

import datetime as dt
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import fsspec
import pandas as pd

from tasks.contract import read_manifest
from tasks.serve.prediction_log import COLUMNS, FOLDER, arrow_schema
from tasks.store import ArtifactStore, safe_run_id

BATCH_PREFIX = "part-batch-"


def put_file(store: ArtifactStore, local: Path, *parts: str) -> str:
    """Copy a local file into the store at `parts` (by rename on a local root, so readers never see half of
    it); returns its URI."""
    uri = store.uri(*parts)
    fs, path = fsspec.core.url_to_fs(uri)
    if store.is_local:
        folder = Path(path).parent
        folder.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=folder, prefix=".part-", suffix=".tmp")
        os.close(handle)
        try:
            with open(local, "rb") as source, open(temporary, "wb") as target:
                target.write(source.read())
            os.chmod(temporary, 0o644)
            os.replace(temporary, path)
        finally:
            if os.path.exists(temporary):
                os.unlink(temporary)
    else:
        fs.put_file(str(local), path)
    return uri


def window(day: dt.date, days: int) -> list[dt.date]:
    """The `days` days ending on `day`, oldest first."""
    return [day - dt.timedelta(days=offset) for offset in range(days - 1, -1, -1)]


def log_parts(store: ArtifactStore, days: Sequence[dt.date]) -> list[dict[str, Any]]:
    """The log's parts for those days: uri, day, name and what identifies its content (size, mtime)."""
    parts = []
    for day in days:
        fs, folder = fsspec.core.url_to_fs(store.uri(FOLDER, f"date={day.isoformat()}"))
        if not fs.exists(folder):
            continue
        for info in fs.ls(folder, detail=True):
            name = str(info["name"]).rstrip("/").rsplit("/", 1)[-1]
            if name.startswith(".") or not name.endswith(".parquet") or info.get("type") == "directory":
                continue
            stamp = info.get("mtime") or info.get("LastModified") or info.get("ETag") or info.get("created")
            parts.append({"uri": store.uri(FOLDER, f"date={day.isoformat()}", name), "day": day.isoformat(),
                          "name": name, "size": int(info.get("size") or 0), "stamp": str(stamp)})
    return parts


def read_parts(store: ArtifactStore, parts: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """The parts as one frame (the log's columns, plus `day`); empty with those columns when there are none."""
    frames = []
    for part in parts:
        frame = pd.read_parquet(store.local_path(str(part["uri"])))
        frame["day"] = part["day"]
        frames.append(frame)
    if not frames:
        return pd.DataFrame({column: pd.Series(dtype="object") for column in (*COLUMNS, "day")})
    frame = pd.concat(frames, ignore_index=True)
    frame["model_version"] = frame["model_version"].astype(str)
    frame["label"] = frame["label"].astype(str)
    frame["confidence"] = frame["confidence"].astype(float)
    return frame


def batch_part(run_id: str) -> str:
    return f"{BATCH_PREFIX}{safe_run_id(run_id)}.parquet"


def publish_batch(store: ArtifactStore, day: dt.date, run_id: str, rows: Sequence[Mapping[str, Any]]) -> str | None:
    """File a batch run's rows (the log's columns) under its day, replacing the run's earlier part."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if not rows:
        return None
    table = pa.Table.from_pylist([{column: row.get(column) for column in COLUMNS} for row in rows], schema=arrow_schema())
    with tempfile.TemporaryDirectory() as directory:
        local = Path(directory) / "part.parquet"
        pq.write_table(table, local)
        return put_file(store, local, FOLDER, f"date={day.isoformat()}", batch_part(run_id))


def with_probabilities(store: ArtifactStore, frame: pd.DataFrame) -> pd.DataFrame:
    """`frame` with `probability.<label>` columns for its batch-scored rows, from each scoring run's
    predictions (the same text scored by the same run has the same probabilities); served rows get none."""
    if frame.empty or "endpoint" not in frame:
        return frame
    extra = []
    for run_id in sorted(set(frame.loc[frame["endpoint"] == "batch", "request_id"].dropna())):
        manifest = read_manifest(store, str(run_id), "score")
        if manifest is None or "predictions" not in manifest.outputs:
            continue
        scored = pd.read_parquet(store.local_path(manifest.output("predictions").uri))
        columns = [column for column in scored.columns if column.startswith("probability.")]
        part = scored[["text_sha256", *columns]].drop_duplicates("text_sha256")
        extra.append(part.assign(request_id=str(run_id)))
    if not extra:
        return frame
    probabilities = pd.concat(extra, ignore_index=True)
    return frame.merge(probabilities, on=["request_id", "text_sha256"], how="left")
