"""Watch the sources for new pages: one request per source index, no page bodies, no state written.

The `freshet_watch` DAG calls `pending_pages` often (hourly by default); when a source lists a page
the crawler has not fetched yet, it records an Airflow Asset event and the pipeline DAG runs early
instead of waiting for its daily slot. The crawler's guard, robots check, retries and limits apply.
"""

from __future__ import annotations

import datetime as dt
import logging

import httpx

from tasks.config import PipelineConfig
from tasks.sources import SOURCE_KINDS
from tasks.sources.fetch import HostPacer, SourceFetcher
from tasks.sources.jsonl_feed import fetch_index
from tasks.sources.report import SourceReport
from tasks.sources.session import read_crawl_state
from tasks.sources.transport import open_client
from tasks.store import ArtifactStore

log = logging.getLogger("freshet.watch")


def pending_pages(config: PipelineConfig, store: ArtifactStore, *, until: dt.date | None = None,
                  client: httpx.Client | None = None) -> dict[str, list[str]]:
    """Per source, the URLs of listed pages dated up to `until` that the crawl state does not hold."""
    http = client or open_client(config.crawl)
    pacer = HostPacer(config.crawl.min_interval_s)
    pending: dict[str, list[str]] = {}
    try:
        for source in config.crawl.sources:
            if source.kind != "jsonl_feed":
                continue  # only jsonl_feed sources have a dated page index to watch
            fetcher = SourceFetcher(http, config.crawl, source, SourceReport(source.name, source.url), pacer,
                                    SOURCE_KINDS[source.kind].accepts)
            pages = fetch_index(fetcher)
            known = read_crawl_state(store, source.name).get("pages", {})
            new = [page.url for page in pages
                   if (until is None or page.date <= until) and page.url not in known]
            log.info("watch %s: %d new page(s) listed at %s", source.name, len(new), source.url)
            if new:
                pending[source.name] = new
    finally:
        if client is None:
            http.close()
    return pending
