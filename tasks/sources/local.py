"""`local`: a file or folder (glob) of CSV, JSON lines, Parquet or text files (label = folder name),
read with the same byte cap and "not modified" by size and mtime.
"""

from __future__ import annotations

import csv
import io
import json
import logging
from pathlib import Path

from tasks.config import (
    LocalSource,
)
from tasks.sources.charsets import BYTE_ORDER_MARKS, UndecodableTextError, decode_text
from tasks.sources.errors import CrawlError
from tasks.sources.formats import emit_item, normalise_text
from tasks.sources.session import SourceSession

log = logging.getLogger("freshet.crawl")

TEXT_SUFFIXES = frozenset({".txt", ".text", ".md"})
FORMAT_BY_SUFFIX = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet",
                    **{suffix: "text" for suffix in TEXT_SUFFIXES}}


def _local_items(session: SourceSession, source: LocalSource, path: Path, root: Path, body: bytes, file_format: str,
                 url: str) -> None:
    if file_format == "text":
        relative = path.relative_to(root).as_posix() if path != root else path.name
        label = path.parent.name if path != root and path.parent != root else None
        record_id = f"{source.name}:{relative}"
        try:
            text = normalise_text(decode_text(body, encoding=source.encoding))
        except UndecodableTextError as error:
            # The file, not the crawl, is bad: quarantined with the reason, like an empty one.
            session.quarantine(url, "undecodable_text", str(error), json.dumps({"path": relative}),
                               record_id=record_id, field_name="text")
            return
        raw = json.dumps({"path": relative, "text": text[:10_000]}, ensure_ascii=False)
        if not label:
            session.quarantine(url, "missing_field", "a text file needs a label folder (root/<label>/<file>)", raw,
                               record_id=record_id, field_name="label")
        elif not text:
            session.quarantine(url, "missing_field", "the file has no text", raw, record_id=record_id,
                               field_name="text")
        else:
            session.emit(record_id, text, label, url=url)
        return
    if file_format == "csv":
        try:
            content = decode_text(body, encoding=source.encoding)
        except UndecodableTextError as error:
            session.quarantine(url, "undecodable_text", str(error), "")
            return
        reader = csv.DictReader(io.StringIO(content.removeprefix("\ufeff"), newline=""))
        for number, row in enumerate(reader, start=2):  # line 1 is the header
            emit_item(session, row, f"{url} line {number}", source)
    elif file_format == "jsonl":
        for number, line in _jsonl_lines(session, source, body, url):
            if line.strip():
                try:
                    text = decode_text(line, encoding=source.encoding) if isinstance(line, bytes) else line
                except UndecodableTextError as error:
                    session.quarantine(f"{url} line {number}", "undecodable_text", str(error), "")
                    continue
                try:
                    item = json.loads(text)
                except ValueError as error:
                    session.quarantine(f"{url} line {number}", "invalid_json", f"not valid JSON: {error}", text)
                    continue
                emit_item(session, item, f"{url} line {number}", source)
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            rows = pq.read_table(io.BytesIO(body)).to_pylist()
        except (pa.ArrowException, OSError) as error:
            session.quarantine(url, "invalid_parquet", f"cannot read Parquet: {error}", "")
            return
        for number, row in enumerate(rows, start=1):
            emit_item(session, row, f"{url} row {number}", source)


def _jsonl_lines(session: SourceSession, source: LocalSource, body: bytes, url: str
                 ) -> list[tuple[int, bytes | str]]:
    """(line number, line): bytes decoded line by line (a file may mix a stray Latin-1 line into UTF-8), except
    where the whole file has one charset by construction (a byte-order mark, a configured encoding)."""
    if source.encoding == "auto" and not any(body.startswith(mark) for mark, _ in BYTE_ORDER_MARKS):
        return list(enumerate(body.split(b"\n"), start=1))
    try:
        text = decode_text(body, encoding=source.encoding)
    except UndecodableTextError as error:
        session.quarantine(url, "undecodable_text", str(error), "")
        return []
    return list(enumerate(text.removeprefix("\ufeff").split("\n"), start=1))


def crawl_local(session: SourceSession) -> None:
    source: LocalSource = session.source  # type: ignore[assignment]
    root = Path(source.path).expanduser()
    if not root.exists():
        raise CrawlError(source.name, source.url, "the path does not exist")
    files = [root] if root.is_file() else sorted(
        path for path in root.glob(source.glob)
        if path.is_file() and not any(part.startswith(".") for part in path.relative_to(root).parts))
    known = [(path, source.format if source.format != "auto" else FORMAT_BY_SUFFIX.get(path.suffix.lower()))
             for path in files]
    readable = [(path, file_format) for path, file_format in known if file_format is not None]
    if len(readable) < len(known):
        log.info("crawl %s: %d files of unknown format skipped", source.name, len(known) - len(readable))
    session.report.pages_listed, session.report.pages_selected = len(files), len(readable)
    for number, (path, file_format) in enumerate(readable, start=1):
        fetched = session.read_file(path)
        if fetched is None:
            continue
        if fetched.status != 304 and not session.is_unchanged(fetched.url, fetched):
            _local_items(session, source, path, root if root.is_dir() else root.parent, fetched.body, file_format,
                         fetched.url)
        session.remember(fetched.url, fetched)
        session.progress.update(number, len(readable), "files")


# ------------------------------------------------------------------------------------- debian_index


