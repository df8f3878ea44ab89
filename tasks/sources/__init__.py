"""Crawl source kinds and the fetch engine they share. `crawl.sources[].kind` picks one of SOURCE_KINDS.

- `fetch`: errors, the SSRF guard, per-host pacing, retries, byte caps, redirects (`SourceFetcher`).
- `session`: one source's crawl over the fetcher: conditional GET, de-duplication, quarantine, state.
- `formats`: decoding shared by several kinds. Then one module per kind: `jsonl_feed` (the default),
  `html_site`, `feed`, `json_api`, `local`, `debian_index`, `label_studio` (annotations from Label Studio).

Every kind fetches through `SourceSession`, so robots, the guard, byte caps and the state behave the same.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping
from typing import Any

from tasks.sources.debian_index import crawl_debian_index
from tasks.sources.feed import crawl_feed
from tasks.sources.fetch import SourceFetcher
from tasks.sources.html_site import crawl_html_site
from tasks.sources.json_api import crawl_json_api
from tasks.sources.jsonl_feed import crawl_jsonl_feed
from tasks.sources.label_studio import crawl_label_studio
from tasks.sources.local import crawl_local
from tasks.sources.session import CrawlCheckpoint, SourceCrawl, SourceSession

SOURCE_KINDS: dict[str, Callable[[SourceSession], None]] = {
    "jsonl_feed": crawl_jsonl_feed,
    "html_site": crawl_html_site,
    "feed": crawl_feed,
    "json_api": crawl_json_api,
    "local": crawl_local,
    "debian_index": crawl_debian_index,
    "label_studio": crawl_label_studio,
}


def crawl_source(fetcher: SourceFetcher, previous_state: Mapping[str, Any], until: dt.date | None,
                 run_id: str, logical_date: str | None, checkpoint: CrawlCheckpoint | None = None) -> SourceCrawl:
    """Crawl one source with its kind's crawler; the session's rows, quarantine, state and report.

    With a `checkpoint`, progress is saved as the crawl goes and once more when it fails or is
    interrupted, and a crawl that finds one of this run resumes from it.
    """
    session = SourceSession(fetcher, previous_state, until, run_id, logical_date, checkpoint)
    try:
        SOURCE_KINDS[fetcher.source.kind](session)
        return session.finished()
    except BaseException:
        session.save_checkpoint()
        raise
