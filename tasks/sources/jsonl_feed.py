"""`jsonl_feed`: robots.txt, the page index `feed/index.json`, then every JSON-lines page dated on or
before the logical date (the demo site publishes this way).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx

from tasks.config import JsonlFeedSource, SourceConfig
from tasks.manifest import StepError
from tasks.records import content_hash
from tasks.sources.errors import FeedFormatError, HttpStatusError, RobotsDisallowedError
from tasks.sources.fetch import SourceFetcher
from tasks.sources.session import CRAWL_STEP, SourceSession

log = logging.getLogger("freshet.crawl")


@dataclass(frozen=True)
class IndexedPage:
    date: dt.date
    url: str


def parse_index(body: bytes, index_url: str, source: str) -> list[IndexedPage]:
    """The pages a feed index lists, oldest first; URLs resolved against the index URL."""
    try:
        document = json.loads(body)
    except ValueError as error:
        raise FeedFormatError(source, index_url, f"index is not JSON: {error}") from error
    entries = document.get("pages") if isinstance(document, dict) else None
    if not isinstance(entries, list):
        raise FeedFormatError(source, index_url, "index has no 'pages' list")
    pages = []
    for position, entry in enumerate(entries):
        try:
            date = dt.date.fromisoformat(entry["date"])
            pages.append(IndexedPage(date, str(httpx.URL(index_url).join(entry["url"]))))
        except (KeyError, TypeError, ValueError, httpx.InvalidURL) as error:
            raise FeedFormatError(source, index_url,
                                  f"pages[{position}] needs 'date' (YYYY-MM-DD) and 'url': {error}") from error
    return sorted(pages, key=lambda page: (page.date, page.url))


def _field_problem(item: Mapping[str, Any], source: JsonlFeedSource) -> tuple[str, str, str | None, str] | None:
    """(check, field, value, detail) for the first required field that is missing or not a string."""
    for field_name in (source.id_field, source.text_field, source.label_field):
        if field_name not in item:
            return "missing_field", field_name, None, f"missing field {field_name!r}"
        value = item[field_name]
        if not isinstance(value, str):
            shown = json.dumps(value)[:200]
            return "not_a_string", field_name, shown, f"field {field_name!r} must be a string, got {shown}"
        if field_name == source.id_field and not value:
            return "empty_id", field_name, "", f"field {field_name!r} is empty"
    return None


@dataclass
class PageRecords:
    records: list[dict[str, str]] = field(default_factory=list)
    quarantined: list[dict[str, str | None]] = field(default_factory=list)


def parse_page(body: bytes, page_url: str, source: JsonlFeedSource, fetched_at: str) -> PageRecords:
    """Records of a JSON-lines page; malformed lines go to quarantine with the check they failed."""
    parsed = PageRecords()

    def quarantine(line_number: int, raw: str, check: str, detail: str, *, record_id: str | None = None,
                   field_name: str | None = None, value: str | None = None) -> None:
        parsed.quarantined.append({
            "id": record_id, "source": source.name, "step": CRAWL_STEP, "check": check, "field": field_name,
            "value": value, "reason": f"{page_url} line {line_number}: {detail}", "record_json": raw,
        })

    for line_number, raw_bytes in enumerate(body.split(b"\n"), start=1):
        if not raw_bytes.strip():
            continue
        try:
            raw = raw_bytes.decode("utf-8")
        except UnicodeDecodeError as error:
            quarantine(line_number, raw_bytes.decode("utf-8", errors="replace"), "invalid_utf8", str(error))
            continue
        try:
            item = json.loads(raw)
        except ValueError as error:
            quarantine(line_number, raw, "invalid_json", f"not valid JSON: {error}")
            continue
        if not isinstance(item, dict):
            quarantine(line_number, raw, "not_an_object", f"a record must be a JSON object, got {type(item).__name__}")
            continue
        raw_id = item.get(source.id_field)
        record_id = f"{source.name}:{raw_id}" if isinstance(raw_id, str) and raw_id else None
        problem = _field_problem(item, source)
        if problem is not None:
            check, field_name, value, detail = problem
            quarantine(line_number, raw, check, detail, record_id=record_id, field_name=field_name, value=value)
            continue
        text = item[source.text_field]
        parsed.records.append({
            "id": str(record_id), "text": text, "label": item[source.label_field], "source": source.name,
            "fetched_at": fetched_at, "content_hash": content_hash(text),
        })
    return parsed


def jsonl_feed_source(source: SourceConfig) -> JsonlFeedSource:
    if not isinstance(source, JsonlFeedSource):
        raise StepError(f"crawl source {source.name!r} is of kind {source.kind!r}, not jsonl_feed")
    return source


def fetch_index(fetcher: SourceFetcher) -> list[IndexedPage]:
    """The pages the source's `feed/index.json` lists, oldest first (the crawl and the watcher both read it)."""
    source = jsonl_feed_source(fetcher.source)
    index_url = str(httpx.URL(source.url).join("feed/index.json"))
    index = fetcher.fetch(index_url)
    if not index.is_success:
        raise HttpStatusError(source.name, index_url, f"feed index answered HTTP {index.status}")
    return parse_index(index.body, index.url, source.name)


def crawl_jsonl_feed(session: SourceSession) -> None:
    """`feed/index.json`, then every JSON-lines page dated up to the logical date."""
    source, report, until = jsonl_feed_source(session.source), session.report, session.until
    try:
        pages = fetch_index(session.fetcher)
    except RobotsDisallowedError as error:
        log.warning("crawl %s: %s", source.name, error)
        report.note(error)
        return
    selected = [page for page in pages if until is None or page.date <= until]
    report.pages_listed, report.pages_selected = len(pages), len(selected)
    log.info("crawl %s: %d of %d pages dated up to %s", source.name, len(selected), len(pages), until or "any day")

    for number, page in enumerate(selected, start=1):
        fetched = session.fetch_page(page.url, f"page {number}/{len(selected)}")
        if fetched is None:
            continue
        if fetched.status == 304:
            outcome = "not modified"
        elif session.is_unchanged(page.url, fetched):
            outcome = "unchanged"
        else:
            parsed = parse_page(fetched.body, page.url, source, session.fetched_at)
            session.quarantined.extend(parsed.quarantined)
            report.records_quarantined += len(parsed.quarantined)
            for record in parsed.records:
                session.emit(record["id"], record["text"], record["label"], url=page.url)
            outcome = f"{len(parsed.records)} records, {len(parsed.quarantined)} quarantined"
        session.remember(page.url, fetched, date=page.date.isoformat())
        log.info("crawl %s: page %d/%d %s: %s", source.name, number, len(selected), page.date, outcome)
        session.progress.update(number, len(selected))


