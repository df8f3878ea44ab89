"""`json_api`: JSON (records at a dotted path) or JSON-lines pages, paginated by a next link (body field
or `Link: rel=next`) or a page/offset parameter.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import httpx

from tasks.config import (
    JsonApiSource,
)
from tasks.sources.charsets import decode_text
from tasks.sources.errors import FeedFormatError
from tasks.sources.fetch import Fetched
from tasks.sources.formats import emit_item, lookup, with_logical_date
from tasks.sources.session import SourceSession

log = logging.getLogger("freshet.crawl")

def _with_query(url: str, **params: str) -> str:
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query, keep_blank_values=True)) | params
    return urlunsplit(parts._replace(query=urlencode(query)))


def _json_page_records(session: SourceSession, source: JsonApiSource, url: str, body: bytes
                       ) -> tuple[Iterator[tuple[str, Any]], Any]:
    """((where, item) per record, the decoded document or None for JSON lines)."""
    if source.format == "jsonl":
        def lines() -> Iterator[tuple[str, Any]]:
            for number, raw in enumerate(body.split(b"\n"), start=1):
                if not raw.strip():
                    continue
                text = decode_text(raw)
                try:
                    yield f"{url} line {number}", json.loads(text)
                except ValueError as error:
                    session.quarantine(f"{url} line {number}", "invalid_json", f"not valid JSON: {error}", text)
        return lines(), None
    try:
        document = json.loads(decode_text(body))
    except ValueError as error:
        raise FeedFormatError(source.name, url, f"not valid JSON: {error}") from error
    try:
        records = lookup(document, source.records_path)
    except KeyError as error:
        raise FeedFormatError(source.name, url, f"no records at {source.records_path!r} (missing {error})") from error
    if not isinstance(records, list):
        raise FeedFormatError(source.name, url, f"records at {source.records_path or '(top level)'!r} are not a list")
    return ((f"{url} record {number}", item) for number, item in enumerate(records, start=1)), document


def _next_link(source: JsonApiSource, url: str, fetched: Fetched, document: Any) -> str | None:
    link = None
    if document is not None:
        try:
            link = lookup(document, source.next_path)
        except KeyError:
            link = None
    if not link:
        link = httpx.Response(200, headers=fetched.headers).links.get("next", {}).get("url")
    return str(httpx.URL(url).join(link)) if isinstance(link, str) and link else None


def crawl_json_api(session: SourceSession) -> None:
    source: JsonApiSource = session.source  # type: ignore[assignment]
    base = with_logical_date(session, source.url)
    url: str | None = base
    visited: set[str] = set()
    for number in range(source.max_pages):
        if source.pagination == "page":
            url = _with_query(base, **{source.page_param: str(source.first_page + number)},
                              **({source.limit_param: str(source.page_size)} if source.limit_param else {}))
        elif source.pagination == "offset":
            url = _with_query(base, **{source.offset_param: str(number * source.page_size)},
                              **({source.limit_param: str(source.page_size)} if source.limit_param else {}))
        if url is None or url in visited:
            break
        visited.add(url)
        fetched = session.fetch_page(url, f"page {number + 1}", required=number == 0)
        if fetched is None:
            break  # a skipped page leaves the rest of the pagination for the next crawl
        page_state = session.page_states.get(url, {})
        if fetched.status == 304 or session.is_unchanged(url, fetched):
            count, next_url = page_state.get("records", 0), page_state.get("next")
        else:
            items, document = _json_page_records(session, source, url, fetched.body)
            count = 0
            for where, item in items:
                count += 1
                emit_item(session, item, where, source)
            next_url = _next_link(source, url, fetched, document) if source.pagination == "next_link" else None
        session.remember(url, fetched, records=count, next=next_url)
        session.progress.update(number + 1, None)
        if source.pagination == "none":
            break
        if source.pagination == "next_link":
            url = next_url
        elif count < source.page_size:
            break  # a short (or empty) page is the last one
    else:
        log.warning("crawl %s: max_pages=%d reached; later pages are left unread", source.name, source.max_pages)
    session.report.pages_selected = len(visited)


# -------------------------------------------------------------------------------------------- local


