"""One source's crawl session: conditional GETs against the page state, failed pages kept pending with
backoff, de-duplication by id and by content against earlier crawls, quarantine, checkpoints within a
run, the report and the new crawl state, the same for every source kind.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import time
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from tasks.config import (
    SourceConfig,
)
from tasks.manifest import StepError
from tasks.records import content_hash
from tasks.sources.charsets import UndecodableTextError, declared_charset, text_encoding
from tasks.sources.errors import (
    ContentTypeRefusedError,
    CrawlError,
    FeedFormatError,
    GuardRefusedError,
    HttpStatusError,
    ResponseTooLargeError,
    RobotsDisallowedError,
    RobotsUnavailableError,
    SourceUnreachableError,
)
from tasks.sources.fetch import Fetched, SourceFetcher
from tasks.sources.report import SourceReport
from tasks.store import ArtifactStore, atomic_write_text

log = logging.getLogger("freshet.crawl")

CRAWL_STEP = "crawl"  # quarantined rows name the step that set them aside
STATE_PREFIX = ("state", "crawl")
# A page failing crawl after crawl is retried less and less often, but at least weekly.
MAX_FAILED_PAGE_BACKOFF_S = 7 * 24 * 3600.0
FAILED_PAGES_NAMED = 10  # in the error of a source with too many failed pages
# The page is there but not for this crawler (a PDF in a sitemap, a redirect to a private address): skipped
# like robots.txt exclusions, not failed, and not pending, since a retry would be refused again.
POLICY_REFUSALS = (ContentTypeRefusedError, GuardRefusedError)
# Report counters that describe the records of pages done, restored with them from a checkpoint.
RECORD_COUNTERS = ("records_new", "records_changed", "records_unchanged", "records_quarantined", "records_duplicate")


def read_crawl_state(store: ArtifactStore, source: str) -> dict[str, Any]:
    return store.read_json(*STATE_PREFIX, f"{source}.json") or {"generation": 0, "pages": {}, "records": {}}


def _utc_now() -> str:
    return dt.datetime.now(dt.UTC).isoformat()


def _is_future(moment: str | None) -> bool:
    return moment is not None and dt.datetime.fromisoformat(moment) > dt.datetime.now(dt.UTC)


def normalised_content_hash(text: str) -> str:
    """The hash two texts share when they differ only in Unicode form, case or whitespace."""
    return content_hash(" ".join(unicodedata.normalize("NFKC", text).casefold().split()))


@dataclass(frozen=True)
class CrawlCheckpoint:
    """Where one source's progress within a run is saved, and when: every `every_pages` pages done or
    `every_s` seconds, whichever comes first. A checkpoint is resumed only by the same run id (its
    folder), the same step fingerprint (config and logical date) and the same committed state generation.
    """

    path: Path
    fingerprint: str
    every_pages: int
    every_s: float

    def load(self, source: str, generation: int) -> dict[str, Any] | None:
        try:
            progress = json.loads(self.path.read_text())
        except FileNotFoundError:
            return None
        except ValueError as error:
            log.warning("crawl %s: ignoring unreadable checkpoint %s: %s", source, self.path, error)
            return None
        if (progress.get("fingerprint"), progress.get("source"), progress.get("generation")) != (
                self.fingerprint, source, generation):
            log.info("crawl %s: checkpoint %s is from another config, day or crawl state; starting over",
                     source, self.path)
            return None
        return dict(progress)

    def save(self, progress: Mapping[str, Any]) -> None:
        atomic_write_text(self.path, json.dumps({"fingerprint": self.fingerprint, **progress}))



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


def undecodable_reason(fetched: Fetched) -> str | None:
    """Why a text response (text/*, JSON, XML) cannot be decoded (tasks/sources/charsets.py); None: it can, or it is
    not text, or not modified. The kinds then decode it the same way, by its declared charset or the detection."""
    content_type = fetched.headers.get("content-type", "").lower()
    media_type = content_type.split(";", 1)[0].strip()
    if fetched.status == 304 or not (media_type.startswith("text/") or "json" in media_type or "xml" in media_type):
        return None
    try:
        text_encoding(fetched.body, declared_charset(content_type))
    except UndecodableTextError as error:
        return str(error)
    return None


class SourceSession:
    """One source's crawl: the shared fetch path (conditional GET against the page state, errors
    noted in the report), record de-duplication against earlier crawls, quarantine, and the new state.

    Every kind crawls through this, so politeness, robots, the guard, byte caps and state behave the same.
    """

    def __init__(self, fetcher: SourceFetcher, previous_state: Mapping[str, Any], until: dt.date | None,
                 run_id: str, logical_date: str | None, checkpoint: CrawlCheckpoint | None = None) -> None:
        self.fetcher = fetcher
        self.source = fetcher.source
        self.report = fetcher.report
        self.crawl = fetcher.crawl
        self.previous_state = previous_state
        self.until = until
        self.run_id = run_id
        self.logical_date = logical_date
        self.previous_pages: Mapping[str, Mapping[str, Any]] = previous_state.get("pages", {})
        self.page_states: dict[str, dict[str, Any]] = dict(self.previous_pages)
        self.known_hashes: dict[str, str] = dict(previous_state.get("records", {}))
        # Normalised content hash -> the id emitted with it; and the exact hashes of earlier records, which
        # also cover records crawled before the normalised hashes were kept.
        self.ids_by_content: dict[str, str] = dict(previous_state.get("contents", {}))
        self.ids_by_exact_hash = {hash_: record_id for record_id, hash_ in self.known_hashes.items()}
        self.previous_pending: Mapping[str, Mapping[str, Any]] = previous_state.get("pending", {})
        self.failed_now: dict[str, dict[str, Any]] = {}  # pages this run gave up on, as they will be pending
        self.done: set[str] = set()  # URLs processed to the end (remembered) in this run
        self.pages_attempted = 0  # pages (not indexes) this run requested or resumed; the failed share's base
        self.page_in_progress: str | None = None  # fetched, not yet remembered: a checkpoint now would split it
        self.rows: dict[str, dict[str, str]] = {}
        self.quarantined: list[dict[str, str | None]] = []
        self.progress = Progress(self.source.name, self.crawl.progress_every_s)
        self.fetched_at = _utc_now()
        self.checkpoint = checkpoint
        self.resumable: set[str] = set()  # done by an earlier attempt of this run, served from the checkpoint
        self.pages_since_checkpoint = 0
        self.checkpointed_at = time.monotonic()
        if checkpoint is not None:
            progress = checkpoint.load(self.source.name, int(previous_state.get("generation", 0)))
            if progress is not None:
                self.resume(progress)

    # ----------------------------------------------------------------------------- fetching

    def fetch_page(self, url: str, what: str = "page", *, required: bool = False,
                   listing: bool = False) -> Fetched | None:
        """GET `url` conditionally; None when it was skipped (robots, guard, bad response: noted).

        A page that fails (after its retries, for transient failures) is recorded in the report's
        `failed_pages` and kept pending with backoff; it keeps its old state (validators), so a later
        crawl tries it again. Policy refusals (content type, guard) are noted, not failed. `required`
        documents (an index the rest depends on) raise instead, and so does a `listing` (a sitemap)
        that is unreachable after its retries, or robots.txt. A page an earlier attempt of this run
        finished comes from the checkpoint as a 304; a pending page not yet due is deferred (None).
        """
        self.page_in_progress = None  # kinds go page by page: one not remembered by now was given up
        if url in self.resumable:
            self.resumable.discard(url)
            self.report.pages_resumed += 1
            if not required and not listing:
                self.pages_attempted += 1
            # Its content and state came with the checkpoint: to the kind it is a page not modified.
            return self._hand_to_kind(url, Fetched(url, 304, httpx.Headers()))
        pending = self.previous_pending.get(url)
        if pending is not None and not required and not listing and _is_future(pending.get("retry_after")):
            self.report.pages_deferred += 1
            log.info("crawl %s: %s %s still pending (%s), next retry after %s", self.source.name, what, url,
                     pending.get("reason"), pending["retry_after"])
            return None
        page_state = self.page_states.get(url, {})
        validators = {header: page_state[key] for header, key in
                      (("If-None-Match", "etag"), ("If-Modified-Since", "last_modified")) if page_state.get(key)}
        try:
            fetched = self.fetcher.fetch(url, validators)
            if fetched.status != 304 and not fetched.is_success:
                raise HttpStatusError(self.source.name, url, f"{what} answered HTTP {fetched.status}")
        except RobotsUnavailableError:
            raise
        except CrawlError as error:
            if isinstance(error, RobotsDisallowedError):
                log.warning("crawl %s: %s skipped: %s", self.source.name, what, error)
                self.report.note(error)
                return None
            if required or (listing and isinstance(error, SourceUnreachableError)):
                raise
            log.warning("crawl %s: %s skipped: %s", self.source.name, what, error)
            self.report.note(error)
            if not listing:
                self.pages_attempted += 1
                if not isinstance(error, POLICY_REFUSALS):
                    self.page_failed(url, error)
            return None
        if not required and not listing:
            self.pages_attempted += 1
        if fetched.status == 304:
            self.report.pages_not_modified += 1
        else:
            self.report.pages_fetched += 1
        if self._quarantined_as_undecodable(url, fetched, required or listing):
            return None
        return self._hand_to_kind(url, fetched)

    def _quarantined_as_undecodable(self, url: str, fetched: Fetched, needed: bool) -> bool:
        """A text page whose charset cannot be known: quarantined with the reason and remembered (the same bytes are
        not quarantined again tomorrow); a document the crawl needs (an index, a sitemap) raises instead."""
        undecodable = undecodable_reason(fetched)
        if undecodable is None:
            return False
        if needed:
            raise FeedFormatError(self.source.name, url, undecodable)
        log.warning("crawl %s: %s quarantined: %s", self.source.name, url, undecodable)
        self.quarantine(url, "undecodable_text", undecodable, "")
        self.remember(url, fetched)
        return True

    def _hand_to_kind(self, url: str, fetched: Fetched) -> Fetched:
        self.page_in_progress = url
        return fetched

    def page_failed(self, url: str, error: CrawlError) -> None:
        """Keep a page that failed pending, due for a retry after a backoff that doubles per failed crawl."""
        self.report.page_failed(error)
        failures = int(self.previous_pending.get(url, {}).get("failures", 0)) + 1
        backoff_s = min(self.crawl.failed_page_backoff_s * 2 ** (failures - 1), MAX_FAILED_PAGE_BACKOFF_S)
        now = dt.datetime.now(dt.UTC)
        self.failed_now[url] = {
            "reason": error.kind, "detail": error.detail, "attempts": error.attempts, "failures": failures,
            "failed_at": now.isoformat(), "retry_after": (now + dt.timedelta(seconds=backoff_s)).isoformat(),
        }

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
        self.done.add(url)
        self.failed_now.pop(url, None)
        self.page_in_progress = None
        self.pages_since_checkpoint += 1
        if self.checkpoint is not None and (
                self.pages_since_checkpoint >= self.checkpoint.every_pages
                or time.monotonic() - self.checkpointed_at >= self.checkpoint.every_s):
            self.save_checkpoint()

    # ------------------------------------------------------------------------------ records

    def emit(self, record_id: str, text: str, label: str, *, url: str | None = None) -> None:
        """A record, unless an earlier crawl (or this one) already emitted the same id with the same text,
        or another id with the same normalised text (then it is counted as a duplicate of that one).
        `url` (where the record was found) names a duplicate in the report."""
        record = {"id": record_id, "text": text, "label": label, "source": self.source.name,
                  "fetched_at": self.fetched_at, "content_hash": content_hash(text)}
        previous_hash = self.known_hashes.get(record_id)
        if previous_hash == record["content_hash"]:
            self.report.records_unchanged += 1
            return
        normalised = normalised_content_hash(text)
        kept_id = self.ids_by_content.get(normalised) or self.ids_by_exact_hash.get(record["content_hash"])
        if kept_id is not None and kept_id != record_id:
            # The same article under another URL (or id): one copy is data, the others would weigh it twice.
            self.report.duplicate(record_id, url, kept_id)
            return
        if previous_hash is None:
            self.report.records_new += 1
        else:
            self.report.records_changed += 1
        self.known_hashes[record_id] = record["content_hash"]
        self.ids_by_content[normalised] = record_id
        self.rows[record_id] = record

    def quarantine(self, where: str, check: str, detail: str, raw: str, *, record_id: str | None = None,
                   field_name: str | None = None, value: str | None = None) -> None:
        """A malformed record kept with the check it failed; `where` names the URL and line/entry."""
        self.quarantined.append({
            "id": record_id, "source": self.source.name, "step": CRAWL_STEP, "check": check, "field": field_name,
            "value": value, "reason": f"{where}: {detail}", "record_json": raw,
        })
        self.report.records_quarantined += 1

    # --------------------------------------------------------------------------- checkpoints

    def save_checkpoint(self) -> None:
        """Save the pages done so far with their state, rows and quarantine (a consistent cut between pages)."""
        if self.checkpoint is None or self.page_in_progress is not None:
            return
        self.checkpoint.save({
            "source": self.source.name, "run_id": self.run_id,
            "generation": int(self.previous_state.get("generation", 0)), "saved_at": _utc_now(),
            "done": {url: self.page_states[url] for url in sorted(self.done | self.resumable)},
            "rows": list(self.rows.values()), "quarantined": self.quarantined,
            "report": {name: getattr(self.report, name) for name in RECORD_COUNTERS},
            "duplicates": self.report.duplicates,
        })
        self.pages_since_checkpoint = 0
        self.checkpointed_at = time.monotonic()

    def resume(self, progress: Mapping[str, Any]) -> None:
        """Take over the pages an earlier attempt of this run finished: they are not fetched again."""
        self.page_states.update(progress["done"])
        self.resumable = set(progress["done"])
        for row in progress["rows"]:
            self.rows[row["id"]] = row
            self.known_hashes[row["id"]] = row["content_hash"]
            self.ids_by_content[normalised_content_hash(row["text"])] = row["id"]
        self.quarantined = list(progress["quarantined"])
        for name in RECORD_COUNTERS:
            setattr(self.report, name, int(progress["report"].get(name, 0)))
        self.report.duplicates = list(progress.get("duplicates", []))
        log.info("crawl %s: resuming from the checkpoint of %s: %d pages done, %d records", self.source.name,
                 progress.get("saved_at"), len(self.resumable), len(self.rows))

    # ------------------------------------------------------------------------------- outcome

    def check_failed_share(self) -> None:
        """Fail the source when more than `max_failed_page_fraction` of the pages it tried failed."""
        failed, attempted = len(self.failed_now), self.pages_attempted
        if not failed or failed / attempted <= self.crawl.max_failed_page_fraction:
            return
        named = [f"{url} ({entry['reason']}: {entry['detail']})"
                 for url, entry in list(self.failed_now.items())[:FAILED_PAGES_NAMED]]
        more = f"; and {failed - len(named)} more" if failed > len(named) else ""
        raise StepError(f"crawl source {self.source.name!r}: {failed} of {attempted} pages failed, more than "
                        f"max_failed_page_fraction={self.crawl.max_failed_page_fraction:g}: "
                        + "; ".join(named) + more)

    def finished(self) -> SourceCrawl:
        self.check_failed_share()
        # Pending: this run's failures, and earlier ones this run did not get to (deferred or not listed).
        pending = {url: dict(entry) for url, entry in self.previous_pending.items() if url not in self.done}
        pending.update(self.failed_now)
        state = {
            "source": self.source.name, "kind": self.source.kind, "url": source_location(self.source),
            "generation": self.previous_state.get("generation", 0) + 1, "run_id": self.run_id,
            "logical_date": self.logical_date, "updated_at": _utc_now(),
            "pages": self.page_states, "records": self.known_hashes,
            "contents": self.ids_by_content,
            "pending": pending,
        }
        return SourceCrawl(self.rows, self.quarantined, state, self.report)


