"""Crawl source kinds and the fetch engine they share. `crawl.sources[].kind` picks one of SOURCE_KINDS, the one
table of what differs per kind: its crawler and what its documents may be.

- `fetch`: the fetcher (`SourceFetcher`): pacing, robots.txt, retries, redirects, content types, byte caps; over
  `guard` (the address guard against server-side request forgery) and `transport` (a deadline and a minimum rate
  for every response); `errors` the crawl's errors, `report` what crawling one source did (`SourceReport`).
- `session`: one source's crawl over the fetcher: conditional GET, de-duplication, quarantine, state.
- `formats`: decoding shared by several kinds (`charsets` text from bytes). Then one module per kind: `jsonl_feed`
  (the default), `html_site`, `feed`, `json_api`, `local`, `debian_index`, `label_studio` (annotations from
  Label Studio).

Every kind fetches through `SourceSession`, so robots, the guard, byte caps and the state behave the same.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from tasks.sources.debian_index import crawl_debian_index
from tasks.sources.feed import crawl_feed
from tasks.sources.fetch import Accepts, SourceFetcher
from tasks.sources.html_site import crawl_html_site
from tasks.sources.json_api import crawl_json_api
from tasks.sources.jsonl_feed import crawl_jsonl_feed
from tasks.sources.label_studio import crawl_label_studio
from tasks.sources.local import crawl_local
from tasks.sources.session import CrawlCheckpoint, SourceCrawl, SourceSession

JSON_MEDIA_TYPES = frozenset({
    "application/json", "application/x-ndjson", "application/ndjson", "application/jsonl",
    "application/x-jsonlines", "text/plain",
})
XML_MEDIA_TYPES = frozenset({"application/xml", "text/xml"})
HTML_MEDIA_TYPES = frozenset({"text/html", "application/xhtml+xml"})
FEED_MEDIA_TYPES = frozenset({"application/rss+xml", "application/atom+xml", "application/rdf+xml"})
COMPRESSED_MEDIA_TYPES = frozenset({"application/gzip", "application/x-gzip", "application/x-xz",
                                    "application/octet-stream"})


@dataclass(frozen=True)
class SourceKind:
    """What differs per source kind: the crawler that reads one source of it, and what its documents may be."""

    crawl: Callable[[SourceSession], None]
    accepts: Accepts


SOURCE_KINDS: dict[str, SourceKind] = {
    "jsonl_feed": SourceKind(crawl_jsonl_feed, Accepts(
        JSON_MEDIA_TYPES, "application/x-ndjson, application/json;q=0.9, text/plain;q=0.5")),
    "html_site": SourceKind(crawl_html_site, Accepts(
        HTML_MEDIA_TYPES | XML_MEDIA_TYPES | {"text/plain", "application/gzip", "application/x-gzip"},
        "text/html, application/xhtml+xml;q=0.9, application/xml;q=0.8, text/plain;q=0.5")),
    "feed": SourceKind(crawl_feed, Accepts(
        FEED_MEDIA_TYPES | XML_MEDIA_TYPES | {"text/plain"},
        "application/rss+xml, application/atom+xml, application/xml;q=0.9, text/xml;q=0.8")),
    "json_api": SourceKind(crawl_json_api, Accepts(
        JSON_MEDIA_TYPES, "application/json, application/x-ndjson;q=0.9, text/plain;q=0.5")),
    "local": SourceKind(crawl_local, Accepts(frozenset(), "")),
    "debian_index": SourceKind(crawl_debian_index, Accepts(
        COMPRESSED_MEDIA_TYPES | {"text/plain"},
        "application/gzip, application/x-xz, text/plain;q=0.5, application/octet-stream;q=0.3")),
    # Its REST API goes through tasks/labelling/label_studio.py, not the fetcher.
    "label_studio": SourceKind(crawl_label_studio, Accepts(frozenset(), "")),
}


def crawl_source(fetcher: SourceFetcher, previous_state: Mapping[str, Any], until: dt.date | None,
                 run_id: str, logical_date: str | None, checkpoint: CrawlCheckpoint | None = None) -> SourceCrawl:
    """Crawl one source with its kind's crawler; the session's rows, quarantine, state and report.

    With a `checkpoint`, progress is saved as the crawl goes and once more when it fails or is
    interrupted, and a crawl that finds one of this run resumes from it.
    """
    session = SourceSession(fetcher, previous_state, until, run_id, logical_date, checkpoint)
    try:
        SOURCE_KINDS[fetcher.source.kind].crawl(session)
        return session.finished()
    except BaseException:
        session.save_checkpoint()
        raise
