"""`feed`: RSS/Atom through feedparser; text from title and/or summary, label from the category or a
regex on the entry link; entries dated after the logical date are left for later.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import re

from tasks.config import (
    FeedSource,
)
from tasks.sources.errors import FeedFormatError
from tasks.sources.formats import normalise_text, with_logical_date
from tasks.sources.session import SourceSession

log = logging.getLogger("freshet.crawl")

def _plain(fragment: str) -> str:
    """Feed summaries are HTML fragments: their text only."""
    if "<" not in fragment:
        return normalise_text(fragment)
    import lxml.etree
    import lxml.html

    try:
        return normalise_text(lxml.html.fragment_fromstring(fragment, create_parent="div").text_content())
    except (lxml.etree.ParserError, ValueError):  # an unparseable fragment: better its raw text than no record
        return normalise_text(re.sub(r"<[^>]+>", " ", fragment))


def crawl_feed(session: SourceSession) -> None:
    import feedparser

    source: FeedSource = session.source  # type: ignore[assignment]
    url = with_logical_date(session, source.url)
    fetched = session.fetch_page(url, "feed", required=True)
    if fetched is None or fetched.status == 304 or session.is_unchanged(url, fetched):
        if fetched is not None:
            session.remember(url, fetched)
        return
    parsed = feedparser.parse(fetched.body, response_headers={"content-type": fetched.headers.get("content-type", "")})
    if parsed.bozo and not parsed.entries:
        raise FeedFormatError(source.name, url, f"not an RSS/Atom feed: {parsed.get('bozo_exception')}")
    session.report.pages_listed = len(parsed.entries)
    later = 0
    for position, entry in enumerate(parsed.entries, start=1):
        where = f"{url} entry {position}"
        moment = entry.get("published_parsed") or entry.get("updated_parsed")
        if session.until is not None and moment is not None and dt.date(*moment[:3]) > session.until:
            later += 1
            continue
        raw = json.dumps({key: entry.get(key) for key in ("id", "link", "title", "summary")}, default=str,
                         ensure_ascii=False)
        entry_id = entry.get("id") or entry.get("link")
        if not entry_id:
            session.quarantine(where, "missing_field", "entry has neither id nor link", raw, field_name="id")
            continue
        record_id = f"{source.name}:{entry_id}"
        title, summary = _plain(entry.get("title", "")), _plain(entry.get("summary", ""))
        text = {"title": title, "summary": summary,
                "title_summary": "\n".join(part for part in (title, summary) if part)}[source.text]
        if source.label_from == "category":
            terms = [tag.get("term") for tag in entry.get("tags", []) if tag.get("term")]
            value = terms[0] if terms else None
        else:
            value = entry.get("link")
        if value is not None and source.label_regex is not None:
            match = re.search(source.label_regex, value)
            value = (match.group(1) if match.groups() else match.group(0)) if match else None
        if not text:
            session.quarantine(where, "missing_field", f"entry has no {source.text}", raw, record_id=record_id,
                               field_name="text")
        elif not value or not value.strip():
            session.quarantine(where, "missing_field", f"no label from the entry's {source.label_from}", raw,
                               record_id=record_id, field_name="label")
        else:
            session.emit(record_id, text, value.strip(), url=where)
    session.report.pages_selected = len(parsed.entries) - later
    session.remember(url, fetched)
    log.info("crawl %s: %d feed entries, %d dated after %s left for later", source.name, len(parsed.entries),
             later, session.until)


# ----------------------------------------------------------------------------------------- json_api


