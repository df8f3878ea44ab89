"""What several source kinds decode the same way: `{date}` URLs, capped decompression, XML
roots, and records from JSON items or table rows by configured field paths.
"""

from __future__ import annotations

import json
import logging
import lzma
import zlib
from collections.abc import Callable, Mapping
from typing import Any

from tasks.config import (
    JsonApiSource,
    LocalSource,
)
from tasks.manifest import StepError
from tasks.sources.errors import DecompressionBombError, FeedFormatError
from tasks.sources.session import SourceSession

log = logging.getLogger("freshet.crawl")

DECOMPRESS_CHUNK_BYTES = 1 << 20
GZIP_MAGIC = b"\x1f\x8b"
XZ_MAGIC = b"\xfd7zXZ\x00"


def with_logical_date(session: SourceSession, url: str) -> str:
    """`{date}` in a URL is the logical date, so a source can name the day's document."""
    if "{date}" not in url:
        return url
    if session.until is None:
        raise StepError(f"crawl source {session.source.name!r}: {url} has {{date}} but the crawl has no logical date")
    return url.replace("{date}", session.until.isoformat())


def normalise_text(text: str) -> str:
    """Whitespace collapsed within lines, blank lines dropped."""
    lines = (" ".join(line.split()) for line in text.splitlines())
    return "\n".join(line for line in lines if line)


def lookup(item: Any, path: str) -> Any:
    """A value at a dotted path (`data.items`, `links.0.href`); KeyError when it is not there."""
    if not path:
        return item
    for part in path.split("."):
        if isinstance(item, Mapping) and part in item:
            item = item[part]
        elif isinstance(item, list) and part.isdigit() and int(part) < len(item):
            item = item[int(part)]
        else:
            raise KeyError(part)
    return item


def record_fields(item: Any, source: JsonApiSource | LocalSource
                  ) -> tuple[str, str, str] | tuple[str, str | None, str | None, str]:
    """(id, text, label), or (check, field, value, detail) for the first field that is wrong."""
    if not isinstance(item, Mapping):
        return "not_an_object", None, None, f"a record must be an object, got {type(item).__name__}"
    values = []
    for field_name in (source.id_field, source.text_field, source.label_field):
        try:
            value = lookup(item, field_name)
        except KeyError:
            return "missing_field", field_name, None, f"missing field {field_name!r}"
        if field_name == source.id_field and isinstance(value, int) and not isinstance(value, bool):
            value = str(value)  # numeric ids are common in APIs and tables
        if not isinstance(value, str):
            shown = json.dumps(value, default=str)[:200]
            return "not_a_string", field_name, shown, f"field {field_name!r} must be a string, got {shown}"
        if not value.strip():
            return "empty_field", field_name, "", f"field {field_name!r} is empty"
        values.append(value)
    return values[0], values[1], values[2]


def emit_item(session: SourceSession, item: Any, where: str, source: JsonApiSource | LocalSource) -> bool:
    """Emit a structured record or quarantine it naming the failing field; True when emitted."""
    fields = record_fields(item, source)
    if len(fields) == 4:
        check, field_name, value, detail = fields
        raw_id = item.get(source.id_field) if isinstance(item, Mapping) else None
        record_id = f"{source.name}:{raw_id}" if isinstance(raw_id, str | int) and str(raw_id) else None
        session.quarantine(where, check, detail, json.dumps(item, default=str, ensure_ascii=False)[:10_000],
                           record_id=record_id, field_name=field_name, value=value)
        return False
    record_id, text, label = fields
    session.emit(f"{source.name}:{record_id}", text, label, url=where)
    return True


# ------------------------------------------------------------------------------------ decompression


def decompress_capped(body: bytes, limit: int, source: str, url: str) -> bytes:
    """gzip/xz (by magic bytes) inflated in bounded chunks, refused once past `limit`; plain bytes as is.

    Inflating chunk by chunk means a compression bomb costs at most `limit` bytes of memory before
    it is refused. Concatenated members/streams (allowed by both formats) are all read.
    """
    make: Callable[[], Any]
    if body.startswith(GZIP_MAGIC):
        label, make = "gzip", lambda: zlib.decompressobj(wbits=31)
    elif body.startswith(XZ_MAGIC):
        label, make = "xz", lambda: lzma.LZMADecompressor(format=lzma.FORMAT_XZ)
    else:
        return body
    output: list[bytes] = []
    produced = 0

    def keep(chunk: bytes) -> None:
        nonlocal produced
        produced += len(chunk)
        if produced > limit:
            raise DecompressionBombError(
                source, url, f"{label} data inflates past max_decompressed_bytes={limit} "
                f"({len(body)} compressed bytes); refused as a possible compression bomb")
        output.append(chunk)

    pending = body
    try:
        while pending:
            decompressor: Any = make()
            data = pending
            while not decompressor.eof:
                chunk = decompressor.decompress(data, DECOMPRESS_CHUNK_BYTES)
                keep(chunk)
                if label == "gzip":
                    data = decompressor.unconsumed_tail
                    if not data and not chunk:
                        break  # input used up before the end of the stream
                else:
                    data = b""
                    if decompressor.needs_input:
                        break
            if not decompressor.eof:
                raise FeedFormatError(source, url, f"{label} data is truncated after {produced} bytes")
            # Trailing NUL padding is allowed after an xz stream; anything else is another member/stream.
            pending = decompressor.unused_data.lstrip(b"\0") if label == "xz" else decompressor.unused_data
    except (zlib.error, lzma.LZMAError, EOFError) as error:
        raise FeedFormatError(source, url, f"corrupt {label} data: {error}") from error
    return b"".join(output)


# ---------------------------------------------------------------------------------------- html_site


def xml_root(body: bytes, source: str, url: str) -> Any:
    from lxml import etree

    # No entities, no network, no huge trees: sitemaps come from outside.
    parser = etree.XMLParser(resolve_entities=False, no_network=True, huge_tree=False, load_dtd=False)
    try:
        return etree.fromstring(body, parser=parser)
    except etree.XMLSyntaxError as error:
        raise FeedFormatError(source, url, f"sitemap is not well-formed XML: {error}") from error


