"""One source's crawl session: conditional GETs against the page state, de-duplication against earlier
crawls, quarantine, the report and the new crawl state, the same for every source kind.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from tasks.config import (
    SourceConfig,
)
from tasks.records import content_hash
from tasks.sources.fetch import (
    CrawlError,
    Fetched,
    HttpStatusError,
    ResponseTooLargeError,
    RobotsDisallowedError,
    SourceFetcher,
    SourceReport,
    SourceUnreachableError,
)
from tasks.store import ArtifactStore

log = logging.getLogger("freshet.crawl")

CRAWL_STEP = "crawl"  # quarantined rows name the step that set them aside
STATE_PREFIX = ("state", "crawl")



def read_crawl_state(store: ArtifactStore, source: str) -> dict[str, Any]:
    return store.read_json(*STATE_PREFIX, f"{source}.json") or {"generation": 0, "pages": {}, "records": {}}


def _utc_now() -> str:
    return dt.datetime.now(dt.UTC).isoformat()



@dataclass
class SourceCrawl:
    """The outcome of crawling one source: emitted rows, quarantine, new state, report."""

    rows: dict[str, dict[str, str]]
    quarantined: list[dict[str, str | None]]
    state: dict[str, Any]
    report: SourceReport


def source_location(source: SourceConfig) -> str:
    """The URL (or file:// URI) that names a source in reports and state."""
    return str(getattr(source, "location", None) or source.url)


class Progress:
    """Periodic progress lines on the task log ("fetched 120/450 pages"); stdout is the manifest's."""

    def __init__(self, source: str, every_s: float) -> None:
        self.source = source
        self.every_s = every_s
        self.last_logged = time.monotonic()

    def update(self, done: int, total: int | None, what: str = "pages", force: bool = False) -> None:
        now = time.monotonic()
        if force or now - self.last_logged >= self.every_s:
            self.last_logged = now
            log.info("crawl %s: fetched %d%s %s", self.source, done, "" if total is None else f"/{total}", what)


class SourceSession:
    """One source's crawl: the shared fetch path (conditional GET against the page state, errors
    noted in the report), record de-duplication against earlier crawls, quarantine, and the new state.

    Every kind crawls through this, so politeness, robots, the guard, byte caps and state behave the same.
    """

    def __init__(self, fetcher: SourceFetcher, previous_state: Mapping[str, Any], until: dt.date | None,
                 run_id: str, logical_date: str | None) -> None:
        self.fetcher = fetcher
        self.source = fetcher.source
        self.report = fetcher.report
        self.crawl = fetcher.crawl
        self.previous_state = previous_state
        self.until = until
        self.run_id = run_id
        self.logical_date = logical_date
        self.page_states: dict[str, dict[str, Any]] = dict(previous_state.get("pages", {}))
        self.known_hashes: dict[str, str] = dict(previous_state.get("records", {}))
        self.rows: dict[str, dict[str, str]] = {}
        self.quarantined: list[dict[str, str | None]] = []
        self.progress = Progress(self.source.name, self.crawl.progress_every_s)
        self.fetched_at = _utc_now()

    # ----------------------------------------------------------------------------- fetching

    def fetch_page(self, url: str, what: str = "page", *, required: bool = False) -> Fetched | None:
        """GET `url` conditionally; None when it was skipped (robots, guard, bad response: noted).

        A page that is skipped keeps its old state, so the next crawl tries it again. `required`
        pages (an index the rest depends on) raise instead. An unreachable host always raises.
        """
        page_state = self.page_states.get(url, {})
        validators = {header: page_state[key] for header, key in
                      (("If-None-Match", "etag"), ("If-Modified-Since", "last_modified")) if page_state.get(key)}
        try:
            fetched = self.fetcher.fetch(url, validators)
            if fetched.status != 304 and not fetched.is_success:
                raise HttpStatusError(self.source.name, url, f"{what} answered HTTP {fetched.status}")
        except SourceUnreachableError:
            raise
        except CrawlError as error:
            if required and not isinstance(error, RobotsDisallowedError):
                raise
            log.warning("crawl %s: %s skipped: %s", self.source.name, what, error)
            self.report.note(error)
            return None
        if fetched.status == 304:
            self.report.pages_not_modified += 1
        else:
            self.report.pages_fetched += 1
        return fetched

    def read_file(self, path: Path) -> Fetched | None:
        """A local file through the same rules: a byte cap, and "not modified" when size and mtime match."""
        url = path.resolve().as_uri()
        try:
            stat = path.stat()
        except OSError as error:
            self.report.note(CrawlError(self.source.name, url, f"cannot read: {error}"))
            return None
        version = f"{stat.st_size}:{stat.st_mtime_ns}"
        if self.page_states.get(url, {}).get("version") == version:
            self.report.pages_not_modified += 1
            return Fetched(url, 304, httpx.Headers({"x-file-version": version}))
        limit = self.crawl.max_response_bytes
        if stat.st_size > limit:
            self.report.note(ResponseTooLargeError(self.source.name, url,
                                                   f"file size {stat.st_size} exceeds {limit} bytes"))
            return None
        body = path.read_bytes()
        self.report.pages_fetched += 1
        self.report.bytes += len(body)
        return Fetched(url, 200, httpx.Headers({"x-file-version": version}), body)

    def is_unchanged(self, url: str, fetched: Fetched) -> bool:
        """A 304, or a 200 whose body is byte-identical to the last crawl's."""
        if fetched.status == 304:
            return True
        if hashlib.sha256(fetched.body).hexdigest() == self.page_states.get(url, {}).get("sha256"):
            self.report.pages_unchanged += 1
            return True
        return False

    def remember(self, url: str, fetched: Fetched, **extra: Any) -> None:
        """Advance a page's state (validators, body digest, kind-specific extras) after it was processed."""
        if fetched.status == 304:
            state = dict(self.page_states.get(url, {}))
        else:
            state = {"etag": fetched.headers.get("etag"), "last_modified": fetched.headers.get("last-modified"),
                     "sha256": hashlib.sha256(fetched.body).hexdigest()}
            if fetched.headers.get("x-file-version"):
                state["version"] = fetched.headers["x-file-version"]
        state.update(extra)
        self.page_states[url] = state

    # ------------------------------------------------------------------------------ records

    def emit(self, record_id: str, text: str, label: str) -> None:
        """A record, unless an earlier crawl (or this one) already emitted the same id with the same text."""
        record = {"id": record_id, "text": text, "label": label, "source": self.source.name,
                  "fetched_at": self.fetched_at, "content_hash": content_hash(text)}
        previous_hash = self.known_hashes.get(record_id)
        if previous_hash == record["content_hash"]:
            self.report.records_unchanged += 1
            return
        if previous_hash is None:
            self.report.records_new += 1
        else:
            self.report.records_changed += 1
        self.known_hashes[record_id] = record["content_hash"]
        self.rows[record_id] = record

    def quarantine(self, where: str, check: str, detail: str, raw: str, *, record_id: str | None = None,
                   field_name: str | None = None, value: str | None = None) -> None:
        """A malformed record kept with the check it failed; `where` names the URL and line/entry."""
        self.quarantined.append({
            "id": record_id, "source": self.source.name, "step": CRAWL_STEP, "check": check, "field": field_name,
            "value": value, "reason": f"{where}: {detail}", "record_json": raw,
        })
        self.report.records_quarantined += 1

    def finished(self) -> SourceCrawl:
        state = {
            "source": self.source.name, "kind": self.source.kind, "url": source_location(self.source),
            "generation": self.previous_state.get("generation", 0) + 1, "run_id": self.run_id,
            "logical_date": self.logical_date, "updated_at": _utc_now(),
            "pages": self.page_states, "records": self.known_hashes,
        }
        return SourceCrawl(self.rows, self.quarantined, state, self.report)


