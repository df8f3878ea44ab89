"""Request bodies to lists of texts: MLflow's scoring-server formats for `/invocations`, `{"texts": [...]}`
for `/predict`. Every refusal is a `BadRequest` whose message names the problem and where it is.

MLflow's formats (https://mlflow.org/docs/latest/deployment/deploy-model-locally): a JSON object with
exactly one of `dataframe_split` (`{"columns": [...], "data": [[...], ...]}`), `dataframe_records`
(`[{"text": ...}, ...]`), `inputs` or `instances` (a list of texts, a list of records, or
`{"text": [...]}`), plus an optional `params` (accepted, unused: the model takes none); or CSV with a
`text` column. Texts are read from the `text` column, the registered signature's only input.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from typing import Any

TEXT_COLUMN = "text"
MLFLOW_FORMATS = ("dataframe_split", "dataframe_records", "inputs", "instances")
JSON_TYPES = ("application/json",)
CSV_TYPES = ("text/csv",)


class BadRequest(ValueError):
    """A request the server refuses, with the HTTP status and a message for the caller."""

    def __init__(self, status: int, message: str, code: str = "BAD_REQUEST") -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code


def _kind(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def decode_json(body: bytes) -> Any:
    if not body.strip():
        raise BadRequest(400, "empty request body: send a JSON object")
    try:
        return json.loads(body)
    except UnicodeDecodeError as error:
        raise BadRequest(400, f"request body is not UTF-8: {error}") from error
    except json.JSONDecodeError as error:
        raise BadRequest(400, f"invalid JSON: {error.msg} at line {error.lineno} column {error.colno}") from error


def checked_texts(values: Any, where: str, max_texts: int) -> list[str]:
    """`values` as a non-empty list of at most `max_texts` strings, or a BadRequest naming `where`."""
    if not isinstance(values, list):
        raise BadRequest(422, f"{where} must be a list of texts, got {_kind(values)}", "INVALID_PARAMETER_VALUE")
    if not values:
        raise BadRequest(422, f"{where} is empty: send at least one text", "INVALID_PARAMETER_VALUE")
    if len(values) > max_texts:
        raise BadRequest(413, f"{where} has {len(values)} texts; at most {max_texts} per request "
                              "(serve.max_request_texts)", "REQUEST_LIMIT_EXCEEDED")
    for position, value in enumerate(values):
        if not isinstance(value, str):
            raise BadRequest(422, f"{where}[{position}] is {_kind(value)}, not text", "INVALID_PARAMETER_VALUE")
    return values


def texts_from_predict(document: Any, max_texts: int) -> list[str]:
    """`{"texts": [...]}`."""
    if not isinstance(document, dict) or "texts" not in document:
        raise BadRequest(400, f'expected a JSON object {{"texts": [...]}}, got {_describe(document)}')
    unknown = sorted(set(document) - {"texts"})
    if unknown:
        raise BadRequest(400, f"unknown keys {unknown}: the body is {{\"texts\": [...]}}")
    return checked_texts(document["texts"], "texts", max_texts)


def _describe(document: Any) -> str:
    return f"an object with keys {sorted(document)}" if isinstance(document, dict) else _kind(document)


def _records(records: Any, where: str) -> list[Any]:
    if not isinstance(records, list):
        raise BadRequest(422, f"{where} must be a list of records, got {_kind(records)}", "INVALID_PARAMETER_VALUE")
    texts = []
    for position, record in enumerate(records):
        if not isinstance(record, dict):
            raise BadRequest(422, f"{where}[{position}] is {_kind(record)}, not a record like {{\"text\": ...}}",
                             "INVALID_PARAMETER_VALUE")
        if TEXT_COLUMN not in record:
            raise BadRequest(422, f"{where}[{position}] has no {TEXT_COLUMN!r} field (has {sorted(record)})",
                             "INVALID_PARAMETER_VALUE")
        texts.append(record[TEXT_COLUMN])
    return texts


def _split(frame: Any) -> list[Any]:
    where = "dataframe_split"
    if not isinstance(frame, dict) or "data" not in frame:
        raise BadRequest(422, f'{where} must be an object {{"columns": [...], "data": [[...], ...]}}',
                         "INVALID_PARAMETER_VALUE")
    columns, rows = frame.get("columns"), frame["data"]
    if not isinstance(rows, list):
        raise BadRequest(422, f"{where}.data must be a list of rows, got {_kind(rows)}", "INVALID_PARAMETER_VALUE")
    if columns is None:
        position, width = 0, 1
    elif not isinstance(columns, list) or TEXT_COLUMN not in columns:
        raise BadRequest(422, f"{where}.columns must name a {TEXT_COLUMN!r} column, got {columns!r}",
                         "INVALID_PARAMETER_VALUE")
    else:
        position, width = columns.index(TEXT_COLUMN), len(columns)
    texts = []
    for index, row in enumerate(rows):
        if not isinstance(row, list) or len(row) != width:
            raise BadRequest(422, f"{where}.data[{index}] must be a row of {width} value(s), got {row!r:.80}",
                             "INVALID_PARAMETER_VALUE")
        texts.append(row[position])
    return texts


def _tensor_input(value: Any, where: str) -> list[Any]:
    """`inputs` / `instances`: texts, records, or a `{"text": [...]}` column."""
    if isinstance(value, dict):
        if TEXT_COLUMN not in value:
            raise BadRequest(422, f"{where} has no {TEXT_COLUMN!r} column (has {sorted(value)})",
                             "INVALID_PARAMETER_VALUE")
        column = value[TEXT_COLUMN]
        return [column] if isinstance(column, str) else column
    if isinstance(value, list) and value and all(isinstance(item, dict) for item in value):
        return _records(value, where)
    return value


def texts_from_scoring(document: Any, max_texts: int) -> list[str]:
    """MLflow's JSON scoring payloads."""
    if not isinstance(document, dict):
        raise BadRequest(400, f"expected a JSON object with one of {list(MLFLOW_FORMATS)}, got {_kind(document)}")
    formats = [key for key in MLFLOW_FORMATS if key in document]
    unknown = sorted(set(document) - set(MLFLOW_FORMATS) - {"params"})
    if len(formats) != 1 or unknown:
        raise BadRequest(400, f"the body must have exactly one of {list(MLFLOW_FORMATS)} (and optionally params); "
                              f"got keys {sorted(document)}")
    key = formats[0]
    value = document[key]
    if key == "dataframe_split":
        texts = _split(value)
    elif key == "dataframe_records":
        texts = _records(value, key)
    else:
        texts = _tensor_input(value, key)
    return checked_texts(texts, key, max_texts)


def texts_from_csv(body: bytes, max_texts: int) -> list[str]:
    """CSV with a header row naming a `text` column (what `pandas.DataFrame.to_csv(index=False)` writes)."""
    try:
        reader = csv.DictReader(io.StringIO(body.decode("utf-8")))
        rows = list(reader)
    except UnicodeDecodeError as error:
        raise BadRequest(400, f"CSV body is not UTF-8: {error}") from error
    except csv.Error as error:
        raise BadRequest(400, f"invalid CSV: {error}") from error
    if not reader.fieldnames or TEXT_COLUMN not in reader.fieldnames:
        raise BadRequest(422, f"CSV header must name a {TEXT_COLUMN!r} column, got {reader.fieldnames}",
                         "INVALID_PARAMETER_VALUE")
    return checked_texts([row[TEXT_COLUMN] for row in rows], "CSV rows", max_texts)


def media_type(content_type: str | None) -> str:
    return (content_type or "application/json").split(";", 1)[0].strip().lower()


def texts_from_invocation(body: bytes, content_type: str | None, max_texts: int) -> list[str]:
    kind = media_type(content_type)
    if kind in JSON_TYPES:
        return texts_from_scoring(decode_json(body), max_texts)
    if kind in CSV_TYPES:
        return texts_from_csv(body, max_texts)
    raise BadRequest(415, f"content type {kind!r} is not supported; send one of {[*JSON_TYPES, *CSV_TYPES]}",
                     "UNSUPPORTED_MEDIA_TYPE")


def predictions_records(labels: Sequence[str], confidences: Sequence[float]) -> list[dict[str, Any]]:
    """What `mlflow models serve` returns for this pyfunc: one {label, probability} record per text."""
    return [{"label": label, "probability": confidence} for label, confidence in zip(labels, confidences)]
